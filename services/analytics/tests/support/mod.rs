//! Test harness shared by the analytics and notification tests: runs the real
//! `tally-user`, `tally-polling`, `tally-analytics` and `tally-notification`
//! binaries (built by `cargo build --workspace --bins`) on free ports, each
//! with its own data directory, restartable on the same port and data, and
//! optionally a real `redis-server` or a real Kafka-protocol broker (`tansu`)
//! as the event transport.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;
use tally_api::analytics::v1::analytics_service_client::AnalyticsServiceClient;
use tally_api::events::v1 as evpb;
use tally_api::events::v1::consumer_admin_service_client::ConsumerAdminServiceClient;
use tally_api::events::v1::event_feed_service_client::EventFeedServiceClient;
use tally_api::notification::v1::notification_service_client::NotificationServiceClient;
use tally_sdk::{Client, Credentials};
use tally_testkit::{KafkaBroker, Process, READY_TIMEOUT, RedisServer, bin_path, free_port};
use tokio::time::Instant;
use tonic::transport::{Channel, Endpoint};
use tonic::{Code, Request};

pub const PASSWORD: &str = "correct horse battery staple";
/// Deadline of one test call.
pub const CALL_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a read model may take to catch up on a loaded machine.
pub const CATCH_UP_TIMEOUT: Duration = Duration::from_secs(180);

/// One service binary, restartable on the same port, config and data.
pub struct Service {
    pub name: String,
    binary: String,
    config: PathBuf,
    pub addr: String,
    health: String,
    process: Option<Process>,
    /// Output of earlier runs (kept across restarts for failure messages).
    history: String,
}

impl Service {
    pub fn new(dir: &Path, name: &str, binary: &str, health: &str, port: u16, body: &str) -> Self {
        let state = dir.join(name);
        std::fs::create_dir_all(&state).expect("state dir");
        let text = format!(
            "[server]\nlisten_addr = \"127.0.0.1:{port}\"\ndrain_timeout_secs = 2\n\n\
             [storage]\nbackend = \"embedded\"\npath = \"{}\"\n\n\
             [telemetry]\nlog_format = \"pretty\"\n\n{body}",
            state.join(format!("{name}.redb")).display()
        );
        let config = dir.join(format!("{name}.toml"));
        std::fs::write(&config, text).expect("write config");
        Self {
            name: name.to_string(),
            binary: binary.to_string(),
            config,
            addr: format!("127.0.0.1:{port}"),
            health: health.to_string(),
            process: None,
            history: String::new(),
        }
    }

    /// Starts the process without waiting.
    pub fn spawn(&mut self) {
        self.stop_record();
        let mut cmd = Command::new(bin_path(&self.binary));
        cmd.arg("--config").arg(&self.config).env("NO_COLOR", "1");
        self.process = Some(Process::spawn_command(cmd));
    }

    /// Waits until the service reports SERVING.
    pub async fn wait_ready(&mut self) {
        let (addr, health) = (self.addr.clone(), self.health.clone());
        let history = self.history.clone();
        let process = self.process.as_mut().expect("spawned");
        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            if tally_testkit::is_serving(&addr, &health).await {
                return;
            }
            if let Some(status) = process.try_exit() {
                panic!(
                    "{} exited ({status}) before SERVING\n{history}\n{}",
                    self.name,
                    process.output()
                );
            }
            assert!(
                Instant::now() < deadline,
                "{} was not SERVING within {READY_TIMEOUT:?}\n{}",
                self.name,
                process.output()
            );
            tokio::time::sleep(Duration::from_millis(150)).await;
        }
    }

    /// Starts and waits until SERVING.
    pub async fn start(&mut self) {
        self.spawn();
        self.wait_ready().await;
    }

    /// SIGKILL (no drain, no cleanup), keeping its output.
    pub fn kill(&mut self) {
        if let Some(p) = self.process.as_mut() {
            p.kill();
        }
        self.stop_record();
    }

    fn stop_record(&mut self) {
        if let Some(mut p) = self.process.take() {
            p.kill();
            self.history.push_str(&p.output());
        }
    }

    pub fn is_running(&mut self) -> bool {
        self.process.as_mut().is_some_and(|p| p.is_running())
    }

    pub fn uri(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Every run's output, for failure messages.
    pub fn output(&self) -> String {
        let current = self
            .process
            .as_ref()
            .map(|p| p.output())
            .unwrap_or_default();
        format!("{}{current}", self.history)
    }

    /// A lazily connecting channel (survives restarts of the service).
    pub fn channel(&self) -> Channel {
        lazy_channel(&self.uri(), None)
    }
}

/// A lazily connecting channel; `stream_window` shrinks the HTTP/2 receive
/// window (tests of slow readers use it so the server feels back-pressure
/// after a few messages).
pub fn lazy_channel(uri: &str, stream_window: Option<u32>) -> Channel {
    Endpoint::from_shared(uri.to_string())
        .expect("uri")
        .connect_timeout(Duration::from_secs(5))
        .initial_stream_window_size(stream_window)
        .connect_lazy()
}

/// What to run besides user and polling.
#[derive(Default, Clone)]
pub struct StackOptions {
    /// Use Redis Streams as the event transport (starts a redis-server).
    pub redis: bool,
    /// Use a Kafka-protocol broker as the event transport (starts tansu).
    pub kafka: bool,
    /// Run analytics with these extra `[analytics]` lines.
    pub analytics: Option<String>,
    /// Run notification with these extra `[notification]` lines.
    pub notification: Option<String>,
    /// `[retry] max_attempts` of the consumers (the default when unset).
    pub retry_max_attempts: Option<u32>,
}

/// The services under test, in a temp directory.
pub struct Stack {
    pub user: Service,
    pub polling: Service,
    pub analytics: Option<Service>,
    pub notification: Option<Service>,
    pub redis: Option<RedisServer>,
    pub kafka: Option<KafkaBroker>,
    pub dir: tempfile::TempDir,
    /// The `[outbound]` and `[events]` sections consumers get.
    consumer_sections: String,
}

impl Stack {
    pub async fn start(opts: StackOptions) -> Self {
        let dir = tempfile::Builder::new()
            .prefix("tally-events-")
            .tempdir()
            .expect("temp dir");
        let redis = match opts.redis {
            true => Some(RedisServer::start().await),
            false => None,
        };
        let kafka = match opts.kafka {
            true => Some(KafkaBroker::start().await),
            false => None,
        };
        let events = match (&redis, &kafka) {
            (Some(r), _) => format!(
                "[events]\ntransport = \"redis\"\nurl = \"{}\"\nclaim_idle_ms = 2000\nblock_ms = 200\n\n",
                r.url()
            ),
            (None, Some(k)) => format!(
                "[events]\ntransport = \"kafka\"\nbrokers = [\"{}\"]\npartitions = 3\nfetch_wait_ms = 200\n\n",
                k.address()
            ),
            (None, None) => String::new(),
        };
        let (user_port, polling_port) = (free_port(), free_port());
        let mut user = Service::new(
            dir.path(),
            "user",
            "tally-user",
            "tally.user.v1.UserService",
            user_port,
            "",
        );
        let outbound = format!(
            "[outbound]\nuser = \"http://127.0.0.1:{user_port}\"\npolling = \"http://127.0.0.1:{polling_port}\"\n\n"
        );
        let mut polling = Service::new(
            dir.path(),
            "polling",
            "tally-polling",
            "tally.poll.v1.PollService",
            polling_port,
            &format!("[outbound]\nuser = \"http://127.0.0.1:{user_port}\"\n\n{events}"),
        );
        let consumer_sections = format!("{outbound}{events}");
        // Shared chassis tables first (top level), then the service's section.
        let max_attempts = opts
            .retry_max_attempts
            .map(|n| format!("max_attempts = {n}\n"))
            .unwrap_or_default();
        let shared = format!(
            "[auth]\njwks_refetch_interval_secs = 1\n[retry]\ninitial_backoff_ms = 50\nmax_backoff_ms = 500\n{max_attempts}\n"
        );
        let consumer_knobs = "health_interval_secs = 1\n";
        let analytics = opts.analytics.as_ref().map(|extra| {
            Service::new(
                dir.path(),
                "analytics",
                "tally-analytics",
                "tally.analytics.v1.AnalyticsService",
                free_port(),
                &format!(
                    "{outbound}{events}{shared}[analytics]\ninstance = \"a1\"\n{consumer_knobs}{extra}\n"
                ),
            )
        });
        let notification = opts.notification.as_ref().map(|extra| {
            Service::new(
                dir.path(),
                "notification",
                "tally-notification",
                "tally.notification.v1.NotificationService",
                free_port(),
                &format!(
                    "{outbound}{events}{shared}[notification]\ninstance = \"n1\"\n{consumer_knobs}{extra}\n"
                ),
            )
        });
        user.start().await;
        polling.start().await;
        let mut stack = Self {
            user,
            polling,
            analytics,
            notification,
            redis,
            kafka,
            dir,
            consumer_sections,
        };
        for svc in [stack.analytics.as_mut(), stack.notification.as_mut()]
            .into_iter()
            .flatten()
        {
            svc.spawn();
        }
        for svc in [stack.analytics.as_mut(), stack.notification.as_mut()]
            .into_iter()
            .flatten()
        {
            svc.wait_ready().await;
        }
        stack
    }

    /// Another notification replica (its own store and consumer), not started.
    pub fn notification_replica(&self, instance: &str) -> Service {
        Service::new(
            self.dir.path(),
            &format!("notification-{instance}"),
            "tally-notification",
            "tally.notification.v1.NotificationService",
            free_port(),
            &format!(
                "{}[notification]\ninstance = \"{instance}\"\nhealth_interval_secs = 1\n",
                self.consumer_sections
            ),
        )
    }

    pub fn analytics(&self) -> &Service {
        self.analytics.as_ref().expect("analytics runs")
    }

    pub fn notification(&self) -> &Service {
        self.notification.as_ref().expect("notification runs")
    }

    /// An anonymous SDK client (lazy channels: survives restarts).
    pub fn client(&self) -> Client {
        Client::connect_lazy(&self.user.uri(), &self.polling.uri())
            .expect("client")
            .with_timeout(CALL_TIMEOUT)
    }

    /// Signs up and logs in `email`; returns (user id, access token).
    pub async fn account(&self, email: &str) -> (String, String) {
        let client = self.client();
        let user = client
            .sign_up(email, PASSWORD, email)
            .await
            .unwrap_or_else(|e| panic!("sign up {email}: {e}"));
        let login = client
            .login(email, PASSWORD)
            .await
            .unwrap_or_else(|e| panic!("login {email}: {e}"));
        (user.user_id, login.access_token)
    }

    /// An SDK client acting as the holder of `token`.
    pub fn as_user(&self, token: &str) -> Client {
        self.client()
            .with_credentials(Credentials::Bearer(token.to_string()))
    }

    /// Polling's outbox head (its newest event offset).
    pub async fn polling_head(&self) -> u64 {
        let feed = EventFeedServiceClient::new(self.polling.channel());
        retry("GetHead", || {
            let mut feed = feed.clone();
            async move { feed.get_head(evpb::GetHeadRequest {}).await }
        })
        .await
        .into_inner()
        .head_offset
    }
}

/// The (single) consumer status of the service at `svc`.
pub async fn consumer_status(svc: &Service) -> Option<evpb::ConsumerStatus> {
    let mut admin = ConsumerAdminServiceClient::new(svc.channel());
    let mut req = Request::new(evpb::ListConsumersRequest {});
    req.set_timeout(CALL_TIMEOUT);
    admin
        .list_consumers(req)
        .await
        .ok()
        .and_then(|r| r.into_inner().consumers.into_iter().next())
}

/// Waits until the service's consumer has processed everything polling has
/// published (offset at polling's head and lag 0).
pub async fn wait_caught_up(stack: &Stack, svc: &Service) -> evpb::ConsumerStatus {
    let deadline = Instant::now() + CATCH_UP_TIMEOUT;
    loop {
        let head = stack.polling_head().await;
        if let Some(status) = consumer_status(svc).await
            && status.offset >= head
            && status.lag == 0
        {
            return status;
        }
        assert!(
            Instant::now() < deadline,
            "{} did not catch up with polling (head {head}) within {CATCH_UP_TIMEOUT:?}: {:?}\n{}",
            svc.name,
            consumer_status(svc).await,
            svc.output()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Retries `call` while it fails with a transient code (a process restarting).
pub async fn retry<T, F, Fut>(what: &str, mut call: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, tonic::Status>>,
{
    let deadline = Instant::now() + CATCH_UP_TIMEOUT;
    loop {
        match call().await {
            Ok(v) => return v,
            Err(s)
                if matches!(
                    s.code(),
                    Code::Unavailable
                        | Code::Unknown
                        | Code::DeadlineExceeded
                        | Code::Cancelled
                        | Code::Aborted
                ) && Instant::now() < deadline =>
            {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(s) => panic!("{what} failed: {s:?}"),
        }
    }
}

/// A request carrying `token` and a deadline.
pub fn bearer<T>(msg: T, token: &str) -> Request<T> {
    let mut req = Request::new(msg);
    req.set_timeout(CALL_TIMEOUT);
    req.metadata_mut().insert(
        "authorization",
        format!("Bearer {token}").parse().expect("ascii token"),
    );
    req
}

pub fn analytics_client(svc: &Service) -> AnalyticsServiceClient<Channel> {
    AnalyticsServiceClient::new(svc.channel())
}

pub fn notification_client(
    svc: &Service,
    stream_window: Option<u32>,
) -> NotificationServiceClient<Channel> {
    NotificationServiceClient::new(lazy_channel(&svc.uri(), stream_window))
}

pub fn admin_client(svc: &Service) -> ConsumerAdminServiceClient<Channel> {
    ConsumerAdminServiceClient::new(svc.channel())
}
