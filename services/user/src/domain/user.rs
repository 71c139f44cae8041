//! The records the service keeps: users and API keys as stored, with the
//! secrets only in hashed form.

use super::scope::Scope;
use serde::{Deserialize, Serialize};

/// A registered user.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UserRecord {
    pub user_id: String,
    /// Canonical email (see [`super::email::Email`]).
    pub email: String,
    pub display_name: String,
    /// argon2id PHC string.
    pub password_hash: String,
    /// Unix seconds.
    pub created_at: i64,
}

/// An API key as stored: the secret's hash, never the secret.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ApiKeyRecord {
    pub key_id: String,
    pub user_id: String,
    pub name: String,
    /// Wire names of the scopes, e.g. `polls:read`.
    pub scopes: Vec<String>,
    /// Hex SHA-256 of the whole secret.
    pub secret_hash: String,
    /// Unix seconds.
    pub created_at: i64,
    pub revoked: bool,
}

impl ApiKeyRecord {
    pub fn scopes(&self) -> Vec<Scope> {
        self.scopes.iter().filter_map(|s| Scope::parse(s)).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn api_key_scopes_parse_back_and_skip_unknown() {
        let k = ApiKeyRecord {
            key_id: "k".into(),
            user_id: "u".into(),
            name: "n".into(),
            scopes: vec!["polls:read".into(), "old:scope".into()],
            secret_hash: "h".into(),
            created_at: 0,
            revoked: false,
        };
        assert_eq!(k.scopes(), vec![Scope::PollsRead]);
    }
}
