//! Adapters behind the user service's ports: the chassis store, argon2id and
//! Ed25519 JWT signing, and a time limit around the session store.

pub mod password;
pub mod sessions;
pub mod signing;
pub mod store;
