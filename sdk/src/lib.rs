//! A typed client for Tally: one [`Client`] for the user and poll services that
//! puts a deadline (`grpc-timeout`) and the caller's credentials on every call
//! and hands back the generated message types.
//!
//! ```no_run
//! # async fn demo() -> Result<(), tally_sdk::Error> {
//! use tally_sdk::{Client, Credentials};
//! let client = Client::connect("http://127.0.0.1:50051", "http://127.0.0.1:50052").await?;
//! let login = client.login("ada@example.com", "correct horse battery").await?;
//! let me = client.with_credentials(Credentials::Bearer(login.access_token));
//! let poll = me.create_poll("Tea or coffee?", ["tea", "coffee"], None).await?;
//! # let _ = poll; Ok(()) }
//! ```

#![deny(missing_docs)]
#![cfg_attr(not(test), deny(clippy::unwrap_used, clippy::expect_used))]

mod error;
mod poll;
mod user;

pub use error::{Error, code_name};
pub use poll::ListFilter;

use std::time::Duration;
use tonic::metadata::{AsciiMetadataValue, MetadataValue};
use tonic::transport::{Channel, Endpoint};

use tally_api::poll::v1::poll_service_client::PollServiceClient;
use tally_api::user::v1::user_service_client::UserServiceClient;

/// The deadline every call gets unless [`Client::with_timeout`] changes it.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);

/// How the caller proves who it is.
#[derive(Clone, PartialEq, Eq)]
pub enum Credentials {
    /// An access token from `Login`, sent as `authorization: Bearer <jwt>`.
    Bearer(String),
    /// An API key secret, sent as `x-api-key: <secret>`.
    ApiKey(String),
}

impl std::fmt::Debug for Credentials {
    // Never print secrets.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Credentials::Bearer(_) => f.write_str("Bearer(<redacted>)"),
            Credentials::ApiKey(_) => f.write_str("ApiKey(<redacted>)"),
        }
    }
}

/// Client for the Tally user and poll services.
///
/// Cheap to clone: clones share the underlying HTTP/2 connections.
#[derive(Clone, Debug)]
pub struct Client {
    user: UserServiceClient<Channel>,
    poll: PollServiceClient<Channel>,
    timeout: Duration,
    credentials: Option<Credentials>,
}

/// Turns `host:port` into `http://host:port`; full URIs pass unchanged.
pub fn normalize_addr(addr: &str) -> String {
    if addr.contains("://") {
        addr.to_string()
    } else {
        format!("http://{addr}")
    }
}

fn endpoint(addr: &str) -> Result<Endpoint, Error> {
    let uri = normalize_addr(addr);
    Endpoint::from_shared(uri.clone())
        .map(|e| e.connect_timeout(Duration::from_secs(5)).tcp_nodelay(true))
        .map_err(|source| Error::InvalidAddress { addr: uri, source })
}

async fn connect_channel(addr: &str) -> Result<Channel, Error> {
    let ep = endpoint(addr)?;
    ep.connect().await.map_err(|source| Error::Connect {
        addr: normalize_addr(addr),
        source,
    })
}

impl Client {
    /// Connects to both services now; fails fast when either is unreachable.
    ///
    /// Addresses may be `http://host:port` or just `host:port`.
    pub async fn connect(user_addr: &str, poll_addr: &str) -> Result<Self, Error> {
        let user = connect_channel(user_addr).await?;
        let poll = connect_channel(poll_addr).await?;
        Ok(Self::from_channels(user, poll))
    }

    /// Like [`Client::connect`] but connects on first use, so a call to one
    /// service works while the other is down (that call fails UNAVAILABLE).
    /// Call it inside a Tokio runtime.
    pub fn connect_lazy(user_addr: &str, poll_addr: &str) -> Result<Self, Error> {
        let user = endpoint(user_addr)?.connect_lazy();
        let poll = endpoint(poll_addr)?.connect_lazy();
        Ok(Self::from_channels(user, poll))
    }

    /// Builds a client over existing channels (e.g. through a mesh sidecar).
    pub fn from_channels(user: Channel, poll: Channel) -> Self {
        Self {
            user: UserServiceClient::new(user),
            poll: PollServiceClient::new(poll),
            timeout: DEFAULT_TIMEOUT,
            credentials: None,
        }
    }

    /// The same client with another per-call deadline.
    pub fn with_timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// The same client acting with `credentials` on every call.
    pub fn with_credentials(&self, credentials: Credentials) -> Self {
        let mut c = self.clone();
        c.credentials = Some(credentials);
        c
    }

    /// The same client without credentials.
    pub fn anonymous(&self) -> Self {
        let mut c = self.clone();
        c.credentials = None;
        c
    }

    /// The per-call deadline.
    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    /// The credentials sent with each call, if any.
    pub fn credentials(&self) -> Option<&Credentials> {
        self.credentials.as_ref()
    }

    /// Wraps `message` in a request with this client's deadline and credentials,
    /// for calls made through [`Client::user_raw`] or [`Client::poll_raw`].
    pub fn request<T>(&self, message: T) -> Result<tonic::Request<T>, Error> {
        let mut req = tonic::Request::new(message);
        req.set_timeout(self.timeout);
        match &self.credentials {
            None => {}
            Some(Credentials::Bearer(token)) => {
                let value: AsciiMetadataValue = format!("Bearer {token}")
                    .parse()
                    .map_err(|_| Error::InvalidCredentials("bearer token"))?;
                req.metadata_mut().insert("authorization", value);
            }
            Some(Credentials::ApiKey(secret)) => {
                let value: AsciiMetadataValue = MetadataValue::try_from(secret.as_str())
                    .map_err(|_| Error::InvalidCredentials("API key"))?;
                req.metadata_mut().insert("x-api-key", value);
            }
        }
        Ok(req)
    }

    /// The generated user-service client, for calls without a typed wrapper.
    pub fn user_raw(&self) -> UserServiceClient<Channel> {
        self.user.clone()
    }

    /// The generated poll-service client, for calls without a typed wrapper.
    pub fn poll_raw(&self) -> PollServiceClient<Channel> {
        self.poll.clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn client() -> Client {
        Client::connect_lazy("127.0.0.1:1", "127.0.0.1:2").expect("valid addresses")
    }

    #[tokio::test]
    async fn requests_carry_deadline_and_bearer_token() {
        let c = client()
            .with_timeout(Duration::from_millis(1500))
            .with_credentials(Credentials::Bearer("abc.def.ghi".into()));
        let req = c.request(()).expect("request");
        let md = req.metadata();
        assert_eq!(md.get("authorization").unwrap(), "Bearer abc.def.ghi");
        assert_eq!(md.get("grpc-timeout").unwrap(), "1500000u");
        assert!(md.get("x-api-key").is_none());
    }

    #[tokio::test]
    async fn requests_carry_api_key() {
        let c = client().with_credentials(Credentials::ApiKey("tk_k1_secret".into()));
        let req = c.request(()).expect("request");
        assert_eq!(req.metadata().get("x-api-key").unwrap(), "tk_k1_secret");
        assert!(req.metadata().get("authorization").is_none());
    }

    #[tokio::test]
    async fn anonymous_requests_have_no_credentials() {
        let c = client()
            .with_credentials(Credentials::ApiKey("x".into()))
            .anonymous();
        let req = c.request(()).expect("request");
        assert!(req.metadata().get("x-api-key").is_none());
        assert!(req.metadata().get("authorization").is_none());
    }

    #[tokio::test]
    async fn credentials_with_newlines_are_rejected_not_sent() {
        let c = client().with_credentials(Credentials::Bearer("a\nb".into()));
        let err = c.request(()).expect_err("invalid header value");
        assert!(matches!(err, Error::InvalidCredentials(_)));
    }

    #[test]
    fn bad_address_is_an_error() {
        let err = Client::connect_lazy("http://exa mple:1", "127.0.0.1:2").expect_err("bad uri");
        assert!(matches!(err, Error::InvalidAddress { .. }), "{err}");
    }

    #[test]
    fn credentials_debug_hides_secrets() {
        let s = format!("{:?}", Credentials::ApiKey("tk_secret".into()));
        assert!(!s.contains("tk_secret"));
    }

    #[test]
    fn addresses_without_scheme_get_http() {
        assert_eq!(normalize_addr("127.0.0.1:5"), "http://127.0.0.1:5");
        assert_eq!(normalize_addr("https://h:5"), "https://h:5");
    }
}
