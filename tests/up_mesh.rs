//! `tally up` with the mesh (the default): real services, a real `tally-proxy`
//! beside each, real mutual TLS with certificates from the platform's CA.
//! Calls between services are observed in the sidecars' own metrics and
//! access logs; callers without a valid identity are refused.

use std::path::{Path, PathBuf};
use std::time::Duration;
use tally_api::analytics::v1::GetPollResultsRequest;
use tally_api::analytics::v1::analytics_service_client::AnalyticsServiceClient;
use tally_api::user::v1::GetJwksRequest;
use tally_api::user::v1::user_service_client::UserServiceClient;
use tally_certs::{CertAuthority, SpiffeId};
use tally_sdk::{Client, Credentials};
use tally_testkit::{Process, TallyUp, bin_path, free_port_range};
use tokio::time::Instant;

const READY: Duration = tally_testkit::TALLY_UP_READY_TIMEOUT;

/// The address of one listener (`inbound`, `outbound`, `admin`) of a
/// service's sidecar.
fn sidecar_addr(up: &TallyUp, service: &str, listener: &str) -> String {
    up.listen(&format!("{service}-proxy"), listener)
}

/// The metrics page of a service's sidecar.
async fn metrics(up: &TallyUp, service: &str) -> Metrics {
    Metrics(http_get(&sidecar_addr(up, service, "admin"), "/metrics").await)
}

/// A Prometheus text page.
struct Metrics(String);

impl Metrics {
    /// The sum of `tally_proxy_<name>` samples whose labels contain every
    /// one of `labels` (each written `key="value"`).
    fn sum(&self, name: &str, labels: &[&str]) -> f64 {
        let prefix = format!("tally_proxy_{name}{{");
        self.0
            .lines()
            .filter(|l| l.starts_with(&prefix))
            .filter(|l| labels.iter().all(|want| l.contains(want)))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum()
    }

    /// OK calls this sidecar let in from `caller`'s sidecar.
    fn ok_calls_from(&self, caller: &str) -> f64 {
        let caller = format!(r#"caller="spiffe://tally.local/ns/tally/sa/{caller}""#);
        self.sum(
            "requests_total",
            &[r#"direction="inbound""#, &caller, r#"grpc_status="OK""#],
        )
    }
}

/// `GET path` on an admin listener; the body of its 200 answer.
async fn http_get(addr: &str, path: &str) -> String {
    let r = tally_testkit::http_get(addr, path).await;
    assert_eq!(r.status, 200, "{path}: {}\n{}", r.head, r.body);
    r.body
}

async fn eventually<T, F, Fut>(what: &str, timeout: Duration, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, String>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        match f().await {
            Ok(v) => return v,
            Err(last) => {
                assert!(Instant::now() < deadline, "{what}: still {last}");
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_call_between_services_goes_through_the_sidecars() {
    let up = TallyUp::start(&[]).await;

    // The plumbing: polling's outbound addresses are its own sidecar, whose
    // routes lead to the targets' inbound sidecars.
    let polling = up.config("polling");
    let out = format!("http://{}", sidecar_addr(&up, "polling", "outbound"));
    assert_eq!(polling["outbound"]["user"].as_str(), Some(out.as_str()));
    assert_eq!(polling["outbound"]["billing"].as_str(), Some(out.as_str()));
    let proxy = up.config("polling-proxy");
    assert_eq!(
        proxy["services"]["user"]["endpoints"][0].as_str(),
        Some(sidecar_addr(&up, "user", "inbound").as_str())
    );
    assert_eq!(
        proxy["inbound"]["local_app"].as_str(),
        Some(up.addr("polling").as_str())
    );

    // The product works end to end: the client talks to the services' own
    // ports; polling and analytics verify tokens with user's JWKS, fetched
    // through the mesh.
    let client = Client::connect(&up.addr("user"), &up.addr("polling"))
        .await
        .expect("connect");
    let token = up.sign_up("mia@example.com").await;
    let mia = client.with_credentials(Credentials::Bearer(token.clone()));
    let poll = mia
        .create_poll("Through the mesh?", ["yes", "no"], None)
        .await
        .expect("create poll");
    mia.cast_vote(&poll.poll_id, &poll.options[0].option_id, "mia-1")
        .await
        .expect("vote");
    assert_eq!(
        mia.get_results(&poll.poll_id)
            .await
            .expect("results")
            .total_votes,
        1
    );

    // An API key makes polling ask user on every call (VerifyApiKey).
    let key = mia
        .create_api_key("mesh", ["polls:read", "polls:write"])
        .await
        .expect("api key");
    let keyed = client.with_credentials(Credentials::ApiKey(key.secret));
    keyed
        .create_poll("Keyed?", ["a", "b"], None)
        .await
        .expect("create poll with an API key");

    // Polling's sidecar counted its calls to user, and user's sidecar saw
    // them arrive from polling's identity.
    let m = metrics(&up, "polling").await;
    let to_user = m.sum(
        "requests_total",
        &[
            r#"direction="outbound""#,
            r#"route="user""#,
            r#"grpc_status="OK""#,
        ],
    );
    assert!(to_user >= 1.0, "polling-proxy metrics:\n{}", m.0);
    let m = metrics(&up, "user").await;
    let from_polling = m.ok_calls_from("polling");
    assert!(from_polling >= 1.0, "user-proxy metrics:\n{}", m.0);
    let log = up.log("polling-proxy");
    assert!(
        log.lines().any(|l| l.contains("direction=\"outbound\"")
            && l.contains("/tally.user.v1.UserService/VerifyApiKey")
            && l.contains("grpc_status=\"OK\"")),
        "polling-proxy access log has no VerifyApiKey call:\n{log}"
    );

    // Analytics catches up through polling's feed, carried by the mesh.
    let channel =
        tonic::transport::Endpoint::from_shared(format!("http://{}", up.addr("analytics")))
            .expect("uri")
            .connect()
            .await
            .expect("connect analytics");
    let analytics = AnalyticsServiceClient::new(channel);
    let poll_id = poll.poll_id.clone();
    let total = eventually("analytics counts the vote", READY, || {
        let mut analytics = analytics.clone();
        let token = token.clone();
        let poll_id = poll_id.clone();
        async move {
            let mut req = tonic::Request::new(GetPollResultsRequest { poll_id });
            req.metadata_mut().insert(
                "authorization",
                format!("Bearer {token}").parse().expect("ascii"),
            );
            match analytics.get_poll_results(req).await {
                Ok(r) if r.get_ref().total_votes == 1 => Ok(r.into_inner().total_votes),
                Ok(r) => Err(format!("{} votes", r.get_ref().total_votes)),
                Err(s) => Err(format!("{:?}: {}", s.code(), s.message())),
            }
        }
    })
    .await;
    assert_eq!(total, 1);
    let m = metrics(&up, "polling").await;
    let feed_calls = m.sum(
        "requests_total",
        &[
            r#"direction="inbound""#,
            r#"route="tally.events.v1.EventFeedService""#,
            r#"caller="spiffe://tally.local/ns/tally/sa/analytics""#,
        ],
    );
    assert!(feed_calls >= 1.0, "polling-proxy metrics:\n{}", m.0);

    // Billing reaches payment only through the mesh as well.
    let m = metrics(&up, "payment").await;
    let from_billing = m.ok_calls_from("billing");
    assert!(from_billing >= 1.0, "payment-proxy metrics:\n{}", m.0);

    // No call was denied: the shipped policy lets through what the platform needs.
    for s in tally_testkit::TALLY_UP_SERVICES {
        let m = metrics(&up, s).await;
        assert_eq!(
            m.sum("authz_denied_total", &[]),
            0.0,
            "{s}-proxy denied calls:\n{}",
            m.0
        );
    }
}

/// A `tally-proxy` that plays the outbound sidecar of some workload, with the
/// given certificate files, routing `user` to user's inbound sidecar.
struct Caller {
    _process: Process,
    outbound: String,
    _dir: tempfile::TempDir,
}

impl Caller {
    /// Writes `cert_pem`/`key_pem`/`bundle_pem` and starts the proxy as `service`.
    async fn start(
        service: &str,
        cert_pem: &str,
        key_pem: &str,
        bundle_pem: &str,
        user_inbound: &str,
    ) -> Self {
        let dir = tempfile::tempdir().expect("tmp");
        let file = |name: &str, text: &str| -> PathBuf {
            let p = dir.path().join(name);
            std::fs::write(&p, text).expect("write");
            p
        };
        let bundle = file("bundle.pem", bundle_pem);
        let cert = file("cert.pem", cert_pem);
        let key = file("key.pem", key_pem);
        let config = format!(
            r#"
[admin]
listen = "127.0.0.1:0"
[outbound]
listen = "127.0.0.1:0"
[identity]
bundle = "{}"
cert = "{}"
key = "{}"
namespace = "tally"
service = "{service}"
[services.user]
endpoints = ["{user_inbound}"]
"#,
            bundle.display(),
            cert.display(),
            key.display()
        );
        let config_path = file("proxy.toml", &config);
        let mut process = Process::spawn(
            bin_path("tally-proxy"),
            ["--config".to_string(), config_path.display().to_string()],
        );
        let out = process.wait_for_stdout("\"outbound\"", READY).await;
        let line = out
            .lines()
            .find(|l| l.contains("\"outbound\""))
            .expect("address line");
        let addrs: serde_json::Value = serde_json::from_str(line).expect("json line");
        let outbound = addrs["outbound"].as_str().expect("outbound").to_string();
        Self {
            _process: process,
            outbound,
            _dir: dir,
        }
    }

    /// GetJwks through this sidecar, as an app would call it.
    async fn get_jwks(&self) -> Result<(), tonic::Status> {
        let channel = tonic::transport::Endpoint::from_shared(format!("http://{}", self.outbound))
            .expect("uri")
            .origin("http://user".parse().expect("origin"))
            .connect()
            .await
            .expect("connect to the caller's sidecar");
        let mut req = tonic::Request::new(GetJwksRequest {});
        req.set_timeout(Duration::from_secs(20));
        UserServiceClient::new(channel)
            .get_jwks(req)
            .await
            .map(|_| ())
    }
}

fn proxy_error(status: &tonic::Status) -> String {
    status
        .metadata()
        .get("tally-proxy-error")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_string()
}

fn issue(ca: &CertAuthority, service: &str) -> (String, String) {
    let id = SpiffeId::new("tally.local", "tally", service).expect("id");
    let cert = ca.issue(&id, Duration::from_secs(3600)).expect("issue");
    (cert.cert_pem, cert.key_pem)
}

fn platform_ca(data: &Path) -> (CertAuthority, String) {
    let dir = data.join("mesh").join("ca");
    let ca = CertAuthority::load(&dir).expect("the platform CA");
    let bundle = std::fs::read_to_string(dir.join("bundle.pem")).expect("bundle");
    (ca, bundle)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_service_cannot_be_reached_without_a_valid_identity() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let up = TallyUp::start(&[]).await;
    let user_inbound = sidecar_addr(&up, "user", "inbound");
    let (ca, bundle) = platform_ca(up.data());
    let handshake_failures =
        |m: &Metrics| m.sum("tls_handshake_failures_total", &[r#"direction="inbound""#]);
    let before = handshake_failures(&metrics(&up, "user").await);

    // The control: a certificate of polling from the platform CA gets through.
    let (cert, key) = issue(&ca, "polling");
    let polling = Caller::start("polling", &cert, &key, &bundle, &user_inbound).await;
    polling
        .get_jwks()
        .await
        .expect("polling's identity may fetch the JWKS");

    // (a) Plaintext to user's inbound sidecar: no TLS, no answer.
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{user_inbound}"))
        .expect("uri")
        .connect_timeout(Duration::from_secs(10))
        .timeout(Duration::from_secs(20));
    let plaintext = match channel.connect().await {
        Ok(ch) => UserServiceClient::new(ch)
            .get_jwks(GetJwksRequest {})
            .await
            .map(|_| ()),
        Err(e) => Err(tonic::Status::unavailable(e.to_string())),
    };
    let err = plaintext.expect_err("plaintext must be refused");
    assert_ne!(err.code(), tonic::Code::PermissionDenied, "{err:?}");
    assert!(
        proxy_error(&err).is_empty(),
        "a plaintext caller gets no gRPC answer from the sidecar: {err:?}"
    );

    // (b) A certificate from another CA (the caller trusts the platform's
    // root too, so only the server side can refuse it).
    let foreign = CertAuthority::generate("tally.local").expect("foreign CA");
    let (cert, key) = issue(&foreign, "polling");
    let both = format!("{bundle}{}", foreign.cert_pem());
    let impostor = Caller::start("polling", &cert, &key, &both, &user_inbound).await;
    let err = impostor
        .get_jwks()
        .await
        .expect_err("a foreign certificate must be refused");
    assert_eq!(err.code(), tonic::Code::Unavailable, "{err:?}");
    assert!(
        matches!(
            proxy_error(&err).as_str(),
            "connect-failed" | "upstream-failed"
        ),
        "{err:?}"
    );

    let after = eventually(
        "user's sidecar counts the refused handshakes",
        READY,
        || {
            let up = &up;
            async move {
                let n = handshake_failures(&metrics(up, "user").await);
                if n >= before + 2.0 {
                    Ok(n)
                } else {
                    Err(format!("{n} handshake failures (before: {before})"))
                }
            }
        },
    )
    .await;
    assert!(after >= before + 2.0);

    // (c) A valid certificate of a service the policy does not name.
    let (cert, key) = issue(&ca, "payment");
    let payment = Caller::start("payment", &cert, &key, &bundle, &user_inbound).await;
    let err = payment
        .get_jwks()
        .await
        .expect_err("payment may not call user");
    assert_eq!(err.code(), tonic::Code::PermissionDenied, "{err:?}");
    assert_eq!(proxy_error(&err), "unauthorized", "{err:?}");
    let m = metrics(&up, "user").await;
    assert!(
        m.sum(
            "authz_denied_total",
            &[r#"caller="spiffe://tally.local/ns/tally/sa/payment""#]
        ) >= 1.0,
        "user-proxy metrics:\n{}",
        m.0
    );
    // And the user service never saw any of these calls: everything its
    // sidecar let in came from the identities in the policy.
    // (The gateway fetches the JWKS too.)
    let allowed = ["polling", "notification", "analytics", "billing", "gateway"]
        .map(|s| format!("caller=\"spiffe://tally.local/ns/tally/sa/{s}\""));
    for line in m.0.lines().filter(|l| {
        l.starts_with("tally_proxy_requests_total{") && l.contains(r#"direction="inbound""#)
    }) {
        let ok = line.contains(r#"grpc_status="OK""#);
        assert!(
            !ok || allowed.iter().any(|a| line.contains(a.as_str())),
            "an unexpected caller got through: {line}"
        );
    }

    // Operators still reach the service directly on its own port.
    assert!(tally_testkit::is_serving(&up.addr("user"), "tally.user.v1.UserService").await);
    drop((polling, impostor, payment));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_mesh_runs_the_services_without_sidecars() {
    let data = tempfile::tempdir().expect("tmp");
    open_to_others(data.path());
    let up = TallyUp::builder()
        .data_dir(data.path())
        .args(["--no-mesh"])
        // A gRPC and a metrics port per service.
        .ports(12)
        .start()
        .await;
    let base = up.base_port();
    let out = up.ready_output();
    assert!(out.contains("ready: 6 instances"), "{out}");
    assert!(out.contains("no browser gateway"), "{out}");
    assert!(!out.contains("gateway :"), "{out}");
    assert!(!out.contains("-proxy"), "{out}");
    assert!(
        !data.path().join("mesh").exists(),
        "no certificates without a mesh"
    );
    assert!(
        !data.path().join("admin-token").exists(),
        "no proxies, no admin token"
    );
    assert_eq!(mode(data.path()), 0o700, "the data directory is private");
    let polling: toml::Table = std::fs::read_to_string(data.path().join("config/polling.toml"))
        .expect("config")
        .parse()
        .expect("toml");
    assert_eq!(
        polling["outbound"]["user"].as_str(),
        Some(format!("http://127.0.0.1:{base}").as_str()),
        "polling calls user directly"
    );
    let client = Client::connect(
        &format!("127.0.0.1:{base}"),
        &format!("127.0.0.1:{}", base + 1),
    )
    .await
    .expect("connect");
    let token = up.sign_up("nomesh@example.com").await;
    client
        .with_credentials(Credentials::Bearer(token))
        .create_poll("Direct?", ["y", "n"], None)
        .await
        .expect("polling verifies the token with user directly");
}

/// Makes a data directory readable by others, as a careless one might be,
/// so that `tally up` making it private is seen.
fn open_to_others(dir: &Path) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755)).expect("chmod");
}

fn mode(p: &Path) -> u32 {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(p).expect("stat").permissions().mode() & 0o777
}

/// Checks the admin token of a running `tally up` (printed, private, named
/// by every proxy's config) and returns it.
fn admin_token(data: &Path, out: &str) -> String {
    let path = data.join("admin-token");
    assert!(
        out.contains(&path.display().to_string()),
        "tally up says where the admin token is: {out}"
    );
    assert_eq!(mode(&path), 0o600, "only the owner reads the token");
    assert_eq!(
        mode(data),
        0o700,
        "only the owner enters the data directory"
    );
    let token = std::fs::read_to_string(&path).expect("token");
    assert!(token.len() >= 32, "{token}");
    let mut proxies = 0;
    for entry in std::fs::read_dir(data.join("config")).expect("configs") {
        let file = entry.expect("entry").path();
        let name = file
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or_default();
        if !(name.ends_with("-proxy.toml") || name == "gateway.toml") {
            continue;
        }
        let cfg: toml::Table = std::fs::read_to_string(&file)
            .expect("config")
            .parse()
            .expect("toml");
        assert_eq!(
            cfg["admin"]["token_file"].as_str(),
            Some(path.display().to_string().as_str()),
            "{name}"
        );
        proxies += 1;
    }
    assert_eq!(proxies, 7, "six sidecars and the gateway");
    token
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn certificates_are_short_lived_renewed_and_the_ca_reused() {
    let data = tempfile::tempdir().expect("tmp");
    open_to_others(data.path());
    let base = free_port_range(tally_testkit::TALLY_UP_PORTS);
    let start = |validity: &str| {
        TallyUp::builder()
            .data_dir(data.path())
            .base_port(base)
            .args(["--cert-validity", validity])
            .start()
    };
    // One minute, the shortest: renewed at 70%, i.e. after about 42 s.
    let mut first = start("1m").await;
    let out = first.ready_output().to_string();
    let token = admin_token(data.path(), &out);
    let ca_pem = std::fs::read_to_string(data.path().join("mesh/ca/ca.pem")).expect("CA");
    let cert_path = data.path().join("mesh/certs/user.pem");
    let summary = |p: &Path| {
        let pem = std::fs::read(p).expect("cert");
        tally_certs::inspect_pem(&pem).expect("inspect").remove(0)
    };
    let issued = summary(&cert_path);
    let lifetime = issued
        .not_after
        .duration_since(issued.not_before)
        .expect("ordered");
    // 1 minute plus the 60 s clock-skew allowance before now.
    assert!(lifetime <= Duration::from_secs(121), "{lifetime:?}");
    assert_eq!(
        issued.spiffe_id.map(|i| i.to_string()).as_deref(),
        Some("spiffe://tally.local/ns/tally/sa/user")
    );
    first
        .wait_for_stdout("renewed the mesh certificate of user", READY)
        .await;
    let renewed = summary(&cert_path);
    assert!(renewed.not_after > issued.not_after, "a later certificate");
    // The platform keeps working on the renewed certificates: polling's
    // health needs user's JWKS through the mesh, checked again and again.
    let user_sidecar_metrics = first.admin_addr("user-proxy");
    let count = |text: &str| Metrics(text.to_string()).ok_calls_from("polling");
    let seen = count(&http_get(&user_sidecar_metrics, "/metrics").await);
    eventually("calls keep succeeding after the renewal", READY, || {
        let addr = user_sidecar_metrics.clone();
        async move {
            let n = count(&http_get(&addr, "/metrics").await);
            if n > seen {
                Ok(())
            } else {
                Err(format!("{n} OK calls from polling"))
            }
        }
    })
    .await;
    assert!(
        tally_testkit::is_serving(
            &format!("127.0.0.1:{}", base + 1),
            "tally.poll.v1.PollService"
        )
        .await
    );
    first.signal(libc::SIGTERM);
    let status = first
        .wait_exit(Duration::from_secs(120))
        .unwrap_or_else(|| panic!("tally up did not exit\n{}", first.output()));
    assert!(status.success(), "{status}\n{}", first.output());

    // A restart reuses the CA.
    let second = start("24h").await;
    let out = second.ready_output();
    assert!(!out.contains("creating the mesh CA"), "{out}");
    assert_ne!(
        admin_token(data.path(), out),
        token,
        "a new token each start"
    );
    assert_eq!(
        std::fs::read_to_string(data.path().join("mesh/ca/ca.pem")).expect("CA"),
        ca_pem
    );
    let day = summary(&cert_path);
    assert!(
        day.not_after
            .duration_since(day.not_before)
            .expect("ordered")
            > Duration::from_secs(23 * 3600)
    );
}
