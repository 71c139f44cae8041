//! Adapters behind the user service's ports: the chassis store, argon2id and
//! Ed25519 JWT signing.

pub mod password;
pub mod signing;
pub mod store;
