//! Typed calls to `tally.user.v1.UserService`.

use super::{Client, Error};
use tally_api::user::v1 as pb;

impl Client {
    /// Creates an account.
    pub async fn sign_up(
        &self,
        email: &str,
        password: &str,
        display_name: &str,
    ) -> Result<pb::User, Error> {
        let req = self.request(pb::SignUpRequest {
            email: email.to_string(),
            password: password.to_string(),
            display_name: display_name.to_string(),
        })?;
        let res = self.user_raw().sign_up(req).await?.into_inner();
        res.user.ok_or(Error::MissingField("user"))
    }

    /// Logs in; the answer holds the session token and the access token.
    pub async fn login(&self, email: &str, password: &str) -> Result<pb::LoginResponse, Error> {
        let req = self.request(pb::LoginRequest {
            email: email.to_string(),
            password: password.to_string(),
        })?;
        Ok(self.user_raw().login(req).await?.into_inner())
    }

    /// Revokes a session.
    pub async fn logout(&self, session_token: &str) -> Result<(), Error> {
        let req = self.request(pb::LogoutRequest {
            session_token: session_token.to_string(),
        })?;
        self.user_raw().logout(req).await?;
        Ok(())
    }

    /// A fresh access token for a live session.
    pub async fn refresh_access_token(
        &self,
        session_token: &str,
    ) -> Result<pb::RefreshAccessTokenResponse, Error> {
        let req = self.request(pb::RefreshAccessTokenRequest {
            session_token: session_token.to_string(),
        })?;
        Ok(self
            .user_raw()
            .refresh_access_token(req)
            .await?
            .into_inner())
    }

    /// The calling user's profile.
    pub async fn profile(&self) -> Result<pb::User, Error> {
        let req = self.request(pb::GetProfileRequest {})?;
        let res = self.user_raw().get_profile(req).await?.into_inner();
        res.user.ok_or(Error::MissingField("user"))
    }

    /// Changes the calling user's display name.
    pub async fn update_profile(&self, display_name: &str) -> Result<pb::User, Error> {
        let req = self.request(pb::UpdateProfileRequest {
            display_name: display_name.to_string(),
        })?;
        let res = self.user_raw().update_profile(req).await?.into_inner();
        res.user.ok_or(Error::MissingField("user"))
    }

    /// The public keys that verify access tokens.
    pub async fn jwks(&self) -> Result<pb::GetJwksResponse, Error> {
        let req = self.request(pb::GetJwksRequest {})?;
        Ok(self.user_raw().get_jwks(req).await?.into_inner())
    }

    /// Creates an API key; the secret in the answer is shown only once.
    pub async fn create_api_key<I, S>(
        &self,
        name: &str,
        scopes: I,
    ) -> Result<pb::CreateApiKeyResponse, Error>
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        let req = self.request(pb::CreateApiKeyRequest {
            name: name.to_string(),
            scopes: scopes.into_iter().map(Into::into).collect(),
        })?;
        Ok(self.user_raw().create_api_key(req).await?.into_inner())
    }

    /// The calling user's API keys (never their secrets).
    pub async fn list_api_keys(&self) -> Result<Vec<pb::ApiKey>, Error> {
        let req = self.request(pb::ListApiKeysRequest {})?;
        Ok(self
            .user_raw()
            .list_api_keys(req)
            .await?
            .into_inner()
            .api_keys)
    }

    /// Revokes one of the calling user's API keys.
    pub async fn revoke_api_key(&self, key_id: &str) -> Result<(), Error> {
        let req = self.request(pb::RevokeApiKeyRequest {
            key_id: key_id.to_string(),
        })?;
        self.user_raw().revoke_api_key(req).await?;
        Ok(())
    }

    /// Resolves an API key secret to its owner and scopes.
    pub async fn verify_api_key(&self, secret: &str) -> Result<pb::VerifyApiKeyResponse, Error> {
        let req = self.request(pb::VerifyApiKeyRequest {
            secret: secret.to_string(),
        })?;
        Ok(self.user_raw().verify_api_key(req).await?.into_inner())
    }
}
