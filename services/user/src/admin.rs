//! The operator edge: `tally.user.v1.UserAdminService` (signing-key
//! rotation), open only to callers presenting the admin token.
//!
//! The token lives in the file `[user] admin_token_file` names: created with
//! 32 random bytes (hex) and mode 0600 on first start, refused at start when
//! group or others can read it. Callers send it as `tally-admin-token`
//! metadata; it is compared in constant time.

use crate::app::AppError;
use crate::grpc::status;
use crate::keys::KeyRotation;
use std::path::Path;
use std::sync::Arc;
use tally_api::user::v1 as pb;
use tally_api::user::v1::user_admin_service_server::{UserAdminService, UserAdminServiceServer};
use tonic::{Request, Response, Status};

/// Metadata carrying the admin token.
pub const ADMIN_TOKEN_HEADER: &str = "tally-admin-token";
/// Random bytes in a generated token.
const TOKEN_BYTES: usize = 32;
/// Mode of the token file.
const TOKEN_FILE_MODE: u32 = 0o600;

/// Why the admin token could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum AdminTokenError {
    #[error("cannot use admin token file {path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
    #[error(
        "admin token file {path} has mode {mode:04o}, open to other users; \
         fix it with `chmod 600 {path}`"
    )]
    TooOpen { path: String, mode: u32 },
    #[error("admin token file {0} is empty; delete it to have a new token generated")]
    Empty(String),
}

/// Reads the token at `path`, creating the file with a new token when missing.
pub fn load_or_create_token(path: &Path) -> Result<String, AdminTokenError> {
    let shown = path.display().to_string();
    let io = |source| AdminTokenError::Io {
        path: shown.clone(),
        source,
    };
    if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
        let mut b = std::fs::DirBuilder::new();
        b.recursive(true);
        #[cfg(unix)]
        std::os::unix::fs::DirBuilderExt::mode(&mut b, 0o700);
        b.create(parent).map_err(io)?;
    }
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, TOKEN_FILE_MODE);
    match options.open(path) {
        Ok(mut f) => {
            use std::io::Write;
            let mut bytes = [0u8; TOKEN_BYTES];
            rand::RngCore::fill_bytes(&mut rand::rng(), &mut bytes);
            let token = hex::encode(bytes);
            f.write_all(format!("{token}\n").as_bytes())
                .and_then(|()| f.sync_all())
                .map_err(io)?;
            return Ok(token);
        }
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
        Err(e) => return Err(io(e)),
    }
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(path).map_err(io)?.permissions().mode() & 0o7777;
        if mode & 0o077 != 0 {
            return Err(AdminTokenError::TooOpen { path: shown, mode });
        }
    }
    let token = std::fs::read_to_string(path)
        .map_err(io)?
        .trim()
        .to_string();
    if token.is_empty() {
        return Err(AdminTokenError::Empty(shown));
    }
    Ok(token)
}

/// The tonic implementation of `UserAdminService`.
pub struct UserAdminGrpc {
    keys: Arc<KeyRotation>,
    /// `None`: no admin token configured, every call is refused.
    token: Option<String>,
}

impl UserAdminGrpc {
    pub fn new(keys: Arc<KeyRotation>, token: Option<String>) -> Self {
        Self { keys, token }
    }

    pub fn into_server(self) -> UserAdminServiceServer<Self> {
        UserAdminServiceServer::new(self)
    }

    fn authorize<T>(&self, req: &Request<T>) -> Result<(), Status> {
        let Some(expected) = &self.token else {
            return Err(status(AppError::PermissionDenied(
                "operator calls are disabled: set `[user] admin_token_file`".into(),
            )));
        };
        let presented = req
            .metadata()
            .get(ADMIN_TOKEN_HEADER)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .trim();
        if presented.is_empty()
            || !crate::domain::constant_time_eq(presented.as_bytes(), expected.as_bytes())
        {
            return Err(status(AppError::PermissionDenied(format!(
                "a valid admin token is required in `{ADMIN_TOKEN_HEADER}`"
            ))));
        }
        Ok(())
    }
}

#[tonic::async_trait]
impl UserAdminService for UserAdminGrpc {
    async fn rotate_signing_key(
        &self,
        req: Request<pb::RotateSigningKeyRequest>,
    ) -> Result<Response<pb::RotateSigningKeyResponse>, Status> {
        let actor = tally_chassis::audit::actor(&req);
        if let Err(e) = self.authorize(&req) {
            tally_chassis::audit::record(tally_chassis::audit::Event::new(
                actor,
                "keys.rotate",
                "signing-key",
                format!("denied: {:?}", e.code()),
            ));
            return Err(e);
        }
        let rotated = self.keys.rotate().await.map_err(status);
        tally_chassis::audit::record(
            tally_chassis::audit::Event::new(
                format!("{actor} (admin token)"),
                "keys.rotate",
                "signing-key",
                tally_chassis::audit::outcome(&rotated),
            )
            .with_detail(
                rotated
                    .as_ref()
                    .map(|r| format!("active {}", r.active_kid))
                    .unwrap_or_default(),
            ),
        );
        let r = rotated?;
        Ok(Response::new(pb::RotateSigningKeyResponse {
            active_kid: r.active_kid,
            previous_kid: r.previous_kid,
            previous_retires_at: Some(prost_types::Timestamp {
                seconds: r.previous_retires_at,
                nanos: 0,
            }),
            published_kids: r.published,
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_token_file_is_created_0600_reused_and_refused_when_open() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub/admin-token");
        let t1 = load_or_create_token(&path).unwrap();
        assert_eq!(t1.len(), 2 * TOKEN_BYTES);
        assert_eq!(load_or_create_token(&path).unwrap(), t1);
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
            assert_eq!(mode, 0o600);
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o640)).unwrap();
            let e = load_or_create_token(&path).unwrap_err().to_string();
            assert!(e.contains(&format!("chmod 600 {}", path.display())), "{e}");
        }
    }
}
