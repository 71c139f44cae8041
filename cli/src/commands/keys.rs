//! `tally keys rotate`: make a new access-token signing key active in the
//! user service (`UserAdminService.RotateSigningKey`); the old key stays in
//! the JWKS until the tokens it signed have expired.

use super::CliError;
use super::connect::{Deadline, UserAddr};
use super::output::Out;
use clap::{Args, Subcommand};
use std::path::PathBuf;
use std::time::Duration;
use tally_api::user::v1 as pb;
use tally_api::user::v1::user_admin_service_client::UserAdminServiceClient;
use tally_sdk as sdk;

/// Metadata the user service reads the admin token from.
const ADMIN_TOKEN_HEADER: &str = "tally-admin-token";
/// Longest wait for a connection to the user service.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

#[derive(Debug, Args)]
pub struct KeysArgs {
    #[command(flatten)]
    pub user: UserAddr,
    #[command(flatten)]
    pub deadline: Deadline,
    #[command(subcommand)]
    pub command: KeysCommand,
}

#[derive(Debug, Subcommand)]
pub enum KeysCommand {
    /// Rotate the access-token signing key (the old one stays published for the overlap).
    Rotate {
        /// The user service's admin token file (`[user] admin_token_file`;
        /// under `tally up`: <data-dir>/data/user/admin-token).
        #[arg(long, env = "TALLY_ADMIN_TOKEN_FILE")]
        admin_token_file: PathBuf,
    },
}

pub async fn run(json: bool, args: KeysArgs) -> Result<(), CliError> {
    let out = Out::new(json);
    let user_addr = args.user.user_addr;
    match args.command {
        KeysCommand::Rotate { admin_token_file } => {
            let token = std::fs::read_to_string(&admin_token_file)
                .map_err(|e| {
                    CliError::Usage(format!(
                        "cannot read the admin token file {}: {e}",
                        admin_token_file.display()
                    ))
                })?
                .trim()
                .to_string();
            let addr = if user_addr.contains("://") {
                user_addr.clone()
            } else {
                format!("http://{user_addr}")
            };
            let channel = tonic::transport::Endpoint::from_shared(addr.clone())
                .map_err(|source| sdk::Error::InvalidAddress {
                    addr: addr.clone(),
                    source,
                })?
                .connect_timeout(CONNECT_TIMEOUT)
                .timeout(Duration::from_secs_f64(args.deadline.timeout))
                .connect_lazy();
            let mut req = tonic::Request::new(pb::RotateSigningKeyRequest {});
            let value = token
                .parse()
                .map_err(|_| sdk::Error::InvalidCredentials("admin token"))?;
            req.metadata_mut().insert(ADMIN_TOKEN_HEADER, value);
            let r = UserAdminServiceClient::new(channel)
                .rotate_signing_key(req)
                .await
                .map_err(sdk::Error::Status)?
                .into_inner();
            let retires = r.previous_retires_at.map_or(0, |t| t.seconds);
            out.print(
                serde_json::json!({
                    "active_kid": r.active_kid,
                    "previous_kid": r.previous_kid,
                    "previous_retires_at": retires,
                    "published_kids": r.published_kids,
                }),
                format!(
                    "signing key rotated: new tokens use kid {}; kid {} stays published until {} \
                     (Unix time); published: {}",
                    r.active_kid,
                    r.previous_kid,
                    retires,
                    r.published_kids.join(", ")
                ),
            );
        }
    }
    Ok(())
}
