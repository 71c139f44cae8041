//! Test harness: runs the real `tally-user` and `tally-polling` binaries
//! (testkit's `ServiceProcess`) on free ports with their own data
//! directories, waits until their health says SERVING, and kills them when
//! dropped.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use tally_api::poll::v1 as pollpb;
use tally_api::poll::v1::poll_service_client::PollServiceClient;
use tally_api::user::v1 as userpb;
use tally_api::user::v1::user_service_client::UserServiceClient;
use tonic::transport::Channel;
use tonic::{Code, Request, Status};

pub const PASSWORD: &str = "correct horse battery staple";

/// `tally-user`, built next to this test binary by `cargo build --workspace --bins`.
pub fn user_binary() -> PathBuf {
    tally_testkit::bin_path("tally-user")
}

/// One running service process (the testkit's), killed when dropped.
pub type Service = tally_testkit::ServiceProcess;

/// A user service and a polling service wired to it.
pub struct Stack {
    pub dir: tempfile::TempDir,
    pub user: Service,
    pub polling: Service,
}

impl Stack {
    /// Starts both; `polling_extra` is appended to polling's config (e.g. a
    /// `[polling]` section).
    pub async fn start(polling_extra: &str) -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let user_dir = dir.path().join("user");
        let polling_dir = dir.path().join("polling");
        std::fs::create_dir_all(&user_dir).expect("mkdir");
        std::fs::create_dir_all(&polling_dir).expect("mkdir");
        let user = Service::start(
            "tally-user",
            user_binary(),
            "tally.user.v1.UserService",
            &user_dir,
            &format!(
                "[storage]\nbackend = \"embedded\"\npath = {:?}\n",
                user_dir.join("user.redb")
            ),
        )
        .await;
        let polling = Service::start(
            "tally-polling",
            PathBuf::from(env!("CARGO_BIN_EXE_tally-polling")),
            "tally.poll.v1.PollService",
            &polling_dir,
            &format!(
                "[storage]\nbackend = \"embedded\"\npath = {:?}\n[outbound]\nuser = \"http://{}\"\n{polling_extra}\n",
                Self::polling_db(&polling_dir),
                user.addr
            ),
        )
        .await;
        Stack { dir, user, polling }
    }

    fn polling_db(dir: &Path) -> PathBuf {
        dir.join("polling.redb")
    }

    /// The polling service's database file.
    pub fn polling_db_path(&self) -> PathBuf {
        Self::polling_db(&self.polling.data_dir)
    }

    pub async fn users(&self) -> UserServiceClient<Channel> {
        UserServiceClient::new(self.user.channel().await)
    }

    pub async fn polls(&self) -> PollServiceClient<Channel> {
        PollServiceClient::new(self.polling.channel().await)
    }

    /// Signs up and logs in a user; returns (user_id, access token).
    pub async fn account(&self, email: &str) -> (String, String) {
        let mut users = self.users().await;
        let user = users
            .sign_up(userpb::SignUpRequest {
                email: email.into(),
                password: PASSWORD.into(),
                display_name: "Tester".into(),
            })
            .await
            .expect("sign up")
            .into_inner()
            .user
            .expect("user");
        let login = users
            .login(userpb::LoginRequest {
                email: email.into(),
                password: PASSWORD.into(),
            })
            .await
            .expect("login")
            .into_inner();
        (user.user_id, login.access_token)
    }

    /// Creates an API key for the holder of `token`; returns its secret.
    pub async fn api_key(&self, token: &str, scopes: &[&str]) -> (String, String) {
        let mut users = self.users().await;
        let resp = users
            .create_api_key(bearer(
                userpb::CreateApiKeyRequest {
                    name: "test key".into(),
                    scopes: scopes.iter().map(|s| s.to_string()).collect(),
                },
                token,
            ))
            .await
            .expect("create api key")
            .into_inner();
        (resp.api_key.expect("api key").key_id, resp.secret)
    }
}

/// A request with `authorization: Bearer <token>`.
pub fn bearer<T>(msg: T, token: &str) -> Request<T> {
    let mut req = Request::new(msg);
    req.metadata_mut().insert(
        "authorization",
        format!("Bearer {token}").parse().expect("ascii token"),
    );
    req
}

/// A request with `x-api-key: <secret>`.
pub fn api_key<T>(msg: T, secret: &str) -> Request<T> {
    let mut req = Request::new(msg);
    req.metadata_mut()
        .insert("x-api-key", secret.parse().expect("ascii secret"));
    req
}

/// A create request with `n` options.
pub fn create_req(question: &str, n: usize) -> pollpb::CreatePollRequest {
    pollpb::CreatePollRequest {
        question: question.into(),
        options: (0..n).map(|i| format!("Option {i}")).collect(),
        closes_at: None,
    }
}

/// Asserts the call failed with `code` and returns the status.
#[track_caller]
pub fn expect_code<T: std::fmt::Debug>(result: Result<T, Status>, code: Code) -> Status {
    match result {
        Err(s) if s.code() == code => s,
        other => panic!("expected {code:?}, got {other:?}"),
    }
}
