//! Where keys and API-key answers come from: the user service over gRPC (generated client and
//! types, over any transport: a tonic channel, or the proxy's own outbound stack), or a JWKS
//! file for setups without a user service. Both sit behind small ports so the caches are
//! testable without a server.

use crate::SourceError;
use async_trait::async_trait;
use serde::Deserialize;
use std::path::PathBuf;
use std::time::Duration;
use tally_api::user::v1 as userpb;
use tally_api::user::v1::user_service_client::UserServiceClient;
use tonic::Code;

/// Largest JWKS file read.
pub const MAX_JWKS_BYTES: usize = 1024 * 1024;

/// Boxed error of a transport.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// A transport failure (a concrete type: the generated client's bounds need one).
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct TransportError(pub BoxError);

/// Any HTTP/2 transport the generated client can speak gRPC over.
pub type GrpcTransport = tower::util::BoxCloneSyncService<
    http::Request<tonic::body::Body>,
    http::Response<tonic::body::Body>,
    TransportError,
>;

/// Port: the current public keys.
#[async_trait]
pub trait JwksSource: Send + Sync + 'static {
    /// The key set; an error means the source could not be read.
    async fn fetch_jwks(&self) -> Result<Vec<userpb::Jwk>, SourceError>;
}

/// What the user service says about an API key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiKeyIdentity {
    /// The user who owns the key.
    pub user_id: String,
    /// The key's id (not its secret).
    pub key_id: String,
    /// The scopes the key grants, e.g. `polls:read`.
    pub scopes: Vec<String>,
}

/// Port: resolves API-key secrets.
#[async_trait]
pub trait ApiKeyResolver: Send + Sync + 'static {
    /// `Ok(None)` when the key is unknown or revoked; an error when no answer was had.
    async fn verify_api_key(&self, secret: &str) -> Result<Option<ApiKeyIdentity>, SourceError>;
}

/// Both ports over `tally.user.v1.UserService`.
#[derive(Clone)]
pub struct UserDirectory {
    client: UserServiceClient<GrpcTransport>,
    timeout: Duration,
}

impl UserDirectory {
    /// Over a tonic channel to the user service (or to the caller's sidecar).
    pub fn new(channel: tonic::transport::Channel, timeout: Duration) -> Self {
        let transport = GrpcTransport::new(
            tower::ServiceBuilder::new()
                .map_err(|e: tonic::transport::Error| TransportError(Box::new(e)))
                .service(channel),
        );
        Self {
            client: UserServiceClient::new(transport),
            timeout,
        }
    }

    /// Over any transport; requests go to `origin` (e.g. `http://user` for a mesh route).
    pub fn over(transport: GrpcTransport, origin: http::Uri, timeout: Duration) -> Self {
        Self {
            client: UserServiceClient::with_origin(transport, origin),
            timeout,
        }
    }

    fn request<T>(&self, msg: T) -> tonic::Request<T> {
        let mut req = tonic::Request::new(msg);
        req.set_timeout(self.timeout);
        req
    }

    /// Runs one call under the directory's deadline (the transport may not enforce it).
    async fn bounded<T>(
        &self,
        call: impl Future<Output = Result<tonic::Response<T>, tonic::Status>>,
    ) -> Result<T, SourceError> {
        match tokio::time::timeout(self.timeout, call).await {
            Ok(rsp) => Ok(rsp?.into_inner()),
            Err(_) => Err(SourceError::Timeout(self.timeout)),
        }
    }
}

#[async_trait]
impl JwksSource for UserDirectory {
    async fn fetch_jwks(&self) -> Result<Vec<userpb::Jwk>, SourceError> {
        let mut client = self.client.clone();
        let req = self.request(userpb::GetJwksRequest {});
        Ok(self.bounded(client.get_jwks(req)).await?.keys)
    }
}

#[async_trait]
impl ApiKeyResolver for UserDirectory {
    async fn verify_api_key(&self, secret: &str) -> Result<Option<ApiKeyIdentity>, SourceError> {
        let mut client = self.client.clone();
        let req = self.request(userpb::VerifyApiKeyRequest {
            secret: secret.to_string(),
        });
        match self.bounded(client.verify_api_key(req)).await {
            Ok(rsp) => Ok(Some(ApiKeyIdentity {
                user_id: rsp.user_id,
                key_id: rsp.key_id,
                scopes: rsp.scopes,
            })),
            Err(SourceError::Rpc(s))
                if matches!(
                    s.code(),
                    Code::Unauthenticated | Code::InvalidArgument | Code::NotFound
                ) =>
            {
                Ok(None)
            }
            Err(e) => Err(e),
        }
    }
}

/// A JWKS JSON document (RFC 7517) on disk.
pub struct FileJwks(pub PathBuf);

/// The fields of one JSON Web Key that an Ed25519 verification key has.
#[derive(Deserialize)]
struct FileJwk {
    #[serde(default)]
    kty: String,
    #[serde(default)]
    crv: String,
    #[serde(default)]
    kid: String,
    #[serde(default)]
    x: String,
    #[serde(default)]
    alg: String,
    #[serde(default, rename = "use")]
    use_: String,
}

#[derive(Deserialize)]
struct FileJwkSet {
    keys: Vec<FileJwk>,
}

/// Parses a JWKS JSON document.
pub fn parse_jwks_json(text: &[u8]) -> Result<Vec<userpb::Jwk>, String> {
    let set: FileJwkSet =
        serde_json::from_slice(text).map_err(|e| format!("not a JWKS document: {e}"))?;
    Ok(set
        .keys
        .into_iter()
        .map(|k| userpb::Jwk {
            kty: k.kty,
            crv: k.crv,
            kid: k.kid,
            x: k.x,
            alg: k.alg,
            r#use: k.use_,
        })
        .collect())
}

#[async_trait]
impl JwksSource for FileJwks {
    async fn fetch_jwks(&self) -> Result<Vec<userpb::Jwk>, SourceError> {
        let path = &self.0;
        let text = tokio::fs::read(path)
            .await
            .map_err(|e| SourceError::File(format!("{}: {e}", path.display())))?;
        if text.len() > MAX_JWKS_BYTES {
            return Err(SourceError::File(format!(
                "{}: larger than {MAX_JWKS_BYTES} bytes",
                path.display()
            )));
        }
        parse_jwks_json(&text).map_err(|e| SourceError::File(format!("{}: {e}", path.display())))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn reads_a_jwks_file_and_refuses_garbage() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("jwks.json");
        std::fs::write(
            &path,
            r#"{"keys":[{"kty":"OKP","crv":"Ed25519","kid":"k1","x":"abc","use":"sig"}]}"#,
        )
        .expect("write");
        let keys = FileJwks(path.clone()).fetch_jwks().await.expect("read");
        assert_eq!(keys.len(), 1);
        assert_eq!(keys[0].kid, "k1");
        assert_eq!(keys[0].r#use, "sig");
        std::fs::write(&path, "not json").expect("write");
        assert!(FileJwks(path).fetch_jwks().await.is_err());
        let missing = FileJwks(dir.path().join("none.json")).fetch_jwks().await;
        assert!(matches!(missing, Err(SourceError::File(_))));
    }
}
