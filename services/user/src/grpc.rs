//! The gRPC edge: `tally.user.v1.UserService` over [`UserApp`]. It reads the
//! bearer token from metadata, converts messages, and maps [`AppError`] to
//! status codes; no rule lives here.

use crate::app::{AppError, UserApp};
use crate::domain::token::{AccessClaims, jwks_json};
use crate::domain::user::{ApiKeyRecord, UserRecord};
use std::net::{IpAddr, Ipv6Addr};
use std::sync::Arc;
use tally_api::user::v1 as pb;
use tally_api::user::v1::user_service_server::UserService;
use tonic::metadata::MetadataMap;
use tonic::{Request, Response, Status};

/// The tonic service implementation.
#[derive(Clone)]
pub struct UserGrpc {
    app: Arc<UserApp>,
    trusted_proxies: Arc<[IpAddr]>,
}

impl UserGrpc {
    /// `trusted_proxies`: peers whose `x-forwarded-for` names the client.
    pub fn new(app: Arc<UserApp>, trusted_proxies: Vec<IpAddr>) -> Self {
        Self {
            app,
            trusted_proxies: trusted_proxies.into(),
        }
    }

    /// The address the login throttle counts the call against.
    fn client_ip<T>(&self, req: &Request<T>) -> IpAddr {
        let peer = req
            .remote_addr()
            .map_or(IpAddr::V6(Ipv6Addr::UNSPECIFIED), |a| a.ip());
        let forwarded = req
            .metadata()
            .get_all(crate::domain::client_ip::FORWARDED_FOR)
            .iter()
            .filter_map(|v| v.to_str().ok());
        crate::domain::client_ip::client_ip(forwarded, peer, &self.trusted_proxies)
    }

    pub fn into_server(self) -> pb::user_service_server::UserServiceServer<Self> {
        pb::user_service_server::UserServiceServer::new(self)
    }

    fn caller(&self, md: &MetadataMap) -> Result<AccessClaims, Status> {
        let token = bearer(md)?;
        self.app.authenticate(token).map_err(status)
    }
}

/// Maps an application error to its gRPC status.
pub fn status(e: AppError) -> Status {
    match e {
        AppError::Invalid(v) => Status::invalid_argument(v.to_string()),
        AppError::AlreadyExists(m) => Status::already_exists(m),
        AppError::Unauthenticated(m) => Status::unauthenticated(m),
        AppError::NotFound(m) => Status::not_found(m),
        AppError::ResourceExhausted(m) => Status::resource_exhausted(m),
        e @ AppError::Throttled(wait) => crate::retry_info::resource_exhausted(e.to_string(), wait),
        AppError::PermissionDenied(m) => Status::permission_denied(m),
        AppError::Unavailable(m) => Status::unavailable(m),
        AppError::Internal(m) => {
            tracing::error!(error = %m, "internal error");
            Status::internal("internal error")
        }
    }
}

/// The token from `authorization: Bearer <jwt>`.
fn bearer(md: &MetadataMap) -> Result<&str, Status> {
    let missing = || Status::unauthenticated("missing `authorization: Bearer <access token>`");
    let raw = md.get("authorization").ok_or_else(missing)?;
    let raw = raw
        .to_str()
        .map_err(|_| Status::unauthenticated("authorization header is not ASCII"))?;
    let (scheme, token) = raw.trim().split_once(' ').ok_or_else(missing)?;
    let token = token.trim();
    if !scheme.eq_ignore_ascii_case("bearer") || token.is_empty() {
        return Err(missing());
    }
    Ok(token)
}

fn ts(secs: i64) -> Option<prost_types::Timestamp> {
    Some(prost_types::Timestamp {
        seconds: secs,
        nanos: 0,
    })
}

fn user_pb(u: &UserRecord) -> pb::User {
    pb::User {
        user_id: u.user_id.clone(),
        email: u.email.clone(),
        display_name: u.display_name.clone(),
        created_at: ts(u.created_at),
    }
}

fn key_pb(k: &ApiKeyRecord) -> pb::ApiKey {
    pb::ApiKey {
        key_id: k.key_id.clone(),
        name: k.name.clone(),
        scopes: k.scopes.clone(),
        created_at: ts(k.created_at),
        revoked: k.revoked,
    }
}

#[tonic::async_trait]
impl UserService for UserGrpc {
    async fn sign_up(
        &self,
        req: Request<pb::SignUpRequest>,
    ) -> Result<Response<pb::SignUpResponse>, Status> {
        let traceparent = req
            .metadata()
            .get("traceparent")
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_string();
        let r = req.into_inner();
        let user = self
            .app
            .sign_up(&r.email, &r.password, &r.display_name, &traceparent)
            .await
            .map_err(status)?;
        Ok(Response::new(pb::SignUpResponse {
            user: Some(user_pb(&user)),
        }))
    }

    async fn login(
        &self,
        req: Request<pb::LoginRequest>,
    ) -> Result<Response<pb::LoginResponse>, Status> {
        let client = self.client_ip(&req);
        let r = req.into_inner();
        let g = self
            .app
            .login(&r.email, &r.password, client)
            .await
            .map_err(status)?;
        Ok(Response::new(pb::LoginResponse {
            session_token: g.session_token,
            access_token: g.access.token,
            access_token_expires_at: ts(g.access.expires_at),
            session_expires_at: ts(g.session_expires_at),
            user: Some(user_pb(&g.user)),
        }))
    }

    async fn logout(
        &self,
        req: Request<pb::LogoutRequest>,
    ) -> Result<Response<pb::LogoutResponse>, Status> {
        self.app
            .logout(&req.into_inner().session_token)
            .await
            .map_err(status)?;
        Ok(Response::new(pb::LogoutResponse {}))
    }

    async fn refresh_access_token(
        &self,
        req: Request<pb::RefreshAccessTokenRequest>,
    ) -> Result<Response<pb::RefreshAccessTokenResponse>, Status> {
        let t = self
            .app
            .refresh(&req.into_inner().session_token)
            .await
            .map_err(status)?;
        Ok(Response::new(pb::RefreshAccessTokenResponse {
            access_token: t.token,
            access_token_expires_at: ts(t.expires_at),
        }))
    }

    async fn get_profile(
        &self,
        req: Request<pb::GetProfileRequest>,
    ) -> Result<Response<pb::GetProfileResponse>, Status> {
        let caller = self.caller(req.metadata())?;
        let user = self.app.profile(&caller).await.map_err(status)?;
        Ok(Response::new(pb::GetProfileResponse {
            user: Some(user_pb(&user)),
        }))
    }

    async fn update_profile(
        &self,
        req: Request<pb::UpdateProfileRequest>,
    ) -> Result<Response<pb::UpdateProfileResponse>, Status> {
        let caller = self.caller(req.metadata())?;
        let r = req.into_inner();
        let user = self
            .app
            .update_profile(&caller, &r.display_name)
            .await
            .map_err(status)?;
        Ok(Response::new(pb::UpdateProfileResponse {
            user: Some(user_pb(&user)),
        }))
    }

    async fn get_jwks(
        &self,
        _req: Request<pb::GetJwksRequest>,
    ) -> Result<Response<pb::GetJwksResponse>, Status> {
        let keys = self.app.jwks();
        Ok(Response::new(pb::GetJwksResponse {
            jwks_json: jwks_json(&keys),
            keys: keys
                .into_iter()
                .map(|k| pb::Jwk {
                    kty: k.kty,
                    crv: k.crv,
                    kid: k.kid,
                    x: k.x,
                    alg: k.alg,
                    r#use: k.use_,
                })
                .collect(),
        }))
    }

    async fn create_api_key(
        &self,
        req: Request<pb::CreateApiKeyRequest>,
    ) -> Result<Response<pb::CreateApiKeyResponse>, Status> {
        let caller = self.caller(req.metadata())?;
        let r = req.into_inner();
        let created = self
            .app
            .create_api_key(&caller, &r.name, &r.scopes)
            .await
            .map_err(status)?;
        Ok(Response::new(pb::CreateApiKeyResponse {
            api_key: Some(key_pb(&created.key)),
            secret: created.secret,
        }))
    }

    async fn list_api_keys(
        &self,
        req: Request<pb::ListApiKeysRequest>,
    ) -> Result<Response<pb::ListApiKeysResponse>, Status> {
        let caller = self.caller(req.metadata())?;
        let keys = self.app.list_api_keys(&caller).await.map_err(status)?;
        Ok(Response::new(pb::ListApiKeysResponse {
            api_keys: keys.iter().map(key_pb).collect(),
        }))
    }

    async fn revoke_api_key(
        &self,
        req: Request<pb::RevokeApiKeyRequest>,
    ) -> Result<Response<pb::RevokeApiKeyResponse>, Status> {
        let caller = self.caller(req.metadata())?;
        self.app
            .revoke_api_key(&caller, &req.into_inner().key_id)
            .await
            .map_err(status)?;
        Ok(Response::new(pb::RevokeApiKeyResponse {}))
    }

    async fn verify_api_key(
        &self,
        req: Request<pb::VerifyApiKeyRequest>,
    ) -> Result<Response<pb::VerifyApiKeyResponse>, Status> {
        let v = self
            .app
            .verify_api_key(&req.into_inner().secret)
            .await
            .map_err(status)?;
        Ok(Response::new(pb::VerifyApiKeyResponse {
            user_id: v.user_id,
            key_id: v.key_id,
            scopes: crate::domain::scope::to_strings(&v.scopes),
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tonic::metadata::MetadataValue;

    fn md(v: &str) -> MetadataMap {
        let mut m = MetadataMap::new();
        m.insert("authorization", MetadataValue::try_from(v).unwrap());
        m
    }

    #[test]
    fn bearer_parsing() {
        assert_eq!(bearer(&md("Bearer abc")).unwrap(), "abc");
        assert_eq!(bearer(&md("bearer   abc ")).unwrap(), "abc");
        for bad in ["abc", "Basic abc", "Bearer ", "Bearer"] {
            assert_eq!(
                bearer(&md(bad)).unwrap_err().code(),
                tonic::Code::Unauthenticated,
                "{bad}"
            );
        }
        assert_eq!(
            bearer(&MetadataMap::new()).unwrap_err().code(),
            tonic::Code::Unauthenticated
        );
    }

    #[test]
    fn errors_map_to_status_codes() {
        use crate::domain::ValidationError;
        use tonic::Code;
        let cases = [
            (
                AppError::Invalid(ValidationError::new("email", "bad")),
                Code::InvalidArgument,
            ),
            (AppError::AlreadyExists("x".into()), Code::AlreadyExists),
            (AppError::Unauthenticated("x".into()), Code::Unauthenticated),
            (AppError::NotFound("x".into()), Code::NotFound),
            (
                AppError::ResourceExhausted("x".into()),
                Code::ResourceExhausted,
            ),
            (AppError::Unavailable("x".into()), Code::Unavailable),
            (
                AppError::Throttled(std::time::Duration::from_secs(3)),
                Code::ResourceExhausted,
            ),
            (
                AppError::PermissionDenied("x".into()),
                Code::PermissionDenied,
            ),
            (AppError::Internal("secret detail".into()), Code::Internal),
        ];
        for (e, code) in cases {
            let s = status(e);
            assert_eq!(s.code(), code);
            assert!(!s.message().contains("secret detail"));
        }
        let s = status(AppError::Invalid(ValidationError::new("email", "bad")));
        assert!(s.message().starts_with("email:"));
    }
}
