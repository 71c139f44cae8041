//! `tally user ...`: sign up, log in, show the profile, manage API keys.

use super::CliError;
use super::connect::{self, CredentialArgs, Deadline, UserAddr};
use super::output::{self, Out};
use clap::{Args, Subcommand};

/// `tally user`: every subcommand calls the user service.
#[derive(Debug, Args)]
pub struct UserArgs {
    #[command(flatten)]
    pub user: UserAddr,
    #[command(flatten)]
    pub deadline: Deadline,
    #[command(subcommand)]
    pub command: UserCommand,
}

#[derive(Debug, Subcommand)]
pub enum UserCommand {
    /// Create an account.
    Signup {
        #[arg(long)]
        email: String,
        /// At least 10 characters.
        #[arg(long, env = "TALLY_PASSWORD", hide_env_values = true)]
        password: String,
        #[arg(long)]
        display_name: String,
    },
    /// Log in and print the access token.
    Login {
        #[arg(long)]
        email: String,
        #[arg(long, env = "TALLY_PASSWORD", hide_env_values = true)]
        password: String,
        /// Print only the access token, e.g. `export TALLY_TOKEN=$(tally user login ... --token-only)`.
        #[arg(long)]
        token_only: bool,
    },
    /// Show the logged-in user's profile (needs --token).
    Profile {
        #[command(flatten)]
        credentials: CredentialArgs,
    },
    /// Revoke a session.
    Logout {
        /// The session token printed by `tally user login`.
        #[arg(long)]
        session_token: String,
    },
    /// Manage API keys (needs --token).
    ApiKey(ApiKeyArgs),
}

/// `tally user api-key`: every subcommand acts as the logged-in user.
#[derive(Debug, Args)]
pub struct ApiKeyArgs {
    #[command(flatten)]
    pub credentials: CredentialArgs,
    #[command(subcommand)]
    pub command: ApiKeyCommand,
}

#[derive(Debug, Subcommand)]
pub enum ApiKeyCommand {
    /// Create a key; its secret is shown only once.
    Create {
        #[arg(long)]
        name: String,
        /// Scope to grant, repeatable: polls:read, polls:write, votes:write.
        #[arg(long = "scope", required = true)]
        scopes: Vec<String>,
    },
    /// List your keys.
    List,
    /// Revoke a key.
    Revoke { key_id: String },
}

pub async fn run(json: bool, args: UserArgs) -> Result<(), CliError> {
    let client = |credentials| connect::client(Some(&args.user), None, &args.deadline, credentials);
    let out = Out::new(json);
    match args.command {
        UserCommand::Signup {
            email,
            password,
            display_name,
        } => {
            let user = client(None)?
                .sign_up(&email, &password, &display_name)
                .await?;
            out.print(
                output::user_json(&user),
                format!(
                    "signed up {}\n{}",
                    user.display_name,
                    output::user_text(&user)
                ),
            );
        }
        UserCommand::Login {
            email,
            password,
            token_only,
        } => {
            let login = client(None)?.login(&email, &password).await?;
            if token_only {
                use std::io::Write;
                let _ = writeln!(std::io::stdout().lock(), "{}", login.access_token);
            } else {
                out.print(output::login_json(&login), output::login_text(&login));
            }
        }
        UserCommand::Profile { credentials } => {
            let user = client(Some(credentials.required()?))?.profile().await?;
            out.print(output::user_json(&user), output::user_text(&user));
        }
        UserCommand::Logout { session_token } => {
            client(None)?.logout(&session_token).await?;
            out.print(serde_json::json!({"logged_out": true}), "logged out".into());
        }
        UserCommand::ApiKey(ApiKeyArgs {
            credentials,
            command,
        }) => {
            let client = client(Some(credentials.required()?))?;
            match command {
                ApiKeyCommand::Create { name, scopes } => {
                    let res = client.create_api_key(&name, scopes).await?;
                    let key = res.api_key.unwrap_or_default();
                    out.print(
                        serde_json::json!({"api_key": output::api_key_json(&key), "secret": res.secret}),
                        format!(
                            "{}\nsecret (shown once, send as x-api-key or --api-key): {}",
                            output::api_key_text(&key),
                            res.secret
                        ),
                    );
                }
                ApiKeyCommand::List => {
                    let keys = client.list_api_keys().await?;
                    let text = if keys.is_empty() {
                        "no API keys".to_string()
                    } else {
                        keys.iter()
                            .map(output::api_key_text)
                            .collect::<Vec<_>>()
                            .join("\n")
                    };
                    out.print(
                        serde_json::json!({"api_keys": keys.iter().map(output::api_key_json).collect::<Vec<_>>()}),
                        text,
                    );
                }
                ApiKeyCommand::Revoke { key_id } => {
                    client.revoke_api_key(&key_id).await?;
                    out.print(
                        serde_json::json!({"revoked": key_id}),
                        format!("revoked API key {key_id}"),
                    );
                }
            }
        }
    }
    Ok(())
}
