//! The payment provider over a real `tally-payment` process: idempotent
//! charges (also under concurrent retries and across restarts), refunds,
//! voids, and fault injection by config, environment and metadata.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;
use tally_api::payment::v1 as pb;
use tally_api::payment::v1::payment_service_client::PaymentServiceClient;
use tally_testkit::{Process, READY_TIMEOUT, bin_path, free_port};
use tonic::Code;
use tonic::transport::Channel;

const SERVICE: &str = "tally.payment.v1.PaymentService";

struct Provider {
    proc: Process,
    addr: String,
    config: PathBuf,
}

fn write_config(dir: &Path, port: u16, payment: &str) -> PathBuf {
    let text = format!(
        "[server]\nlisten_addr = \"127.0.0.1:{port}\"\ndrain_timeout_secs = 2\n\n\
         [storage]\nbackend = \"embedded\"\npath = \"{}\"\n\n[payment]\n{payment}\n",
        dir.join("payment.redb").display()
    );
    let path = dir.join("payment.toml");
    std::fs::write(&path, text).expect("write config");
    path
}

async fn spawn(config: &Path, addr: &str, env: &[(&str, &str)]) -> Process {
    let mut cmd = Command::new(bin_path("tally-payment"));
    cmd.arg("--config").arg(config);
    for (k, v) in env {
        cmd.env(k, v);
    }
    let mut p = Process::spawn_command(cmd);
    p.wait_healthy(addr, SERVICE, READY_TIMEOUT).await;
    p
}

impl Provider {
    async fn start(dir: &Path, payment: &str, env: &[(&str, &str)]) -> Self {
        let port = free_port();
        let addr = format!("127.0.0.1:{port}");
        let config = write_config(dir, port, payment);
        let proc = spawn(&config, &addr, env).await;
        Self { proc, addr, config }
    }

    async fn restart(&mut self) {
        self.proc.terminate(Duration::from_secs(30));
        self.proc = spawn(&self.config, &self.addr, &[]).await;
    }

    fn client(&self) -> PaymentServiceClient<Channel> {
        let channel = Channel::from_shared(format!("http://{}", self.addr))
            .expect("uri")
            .connect_lazy();
        PaymentServiceClient::new(channel)
    }
}

fn charge_req(key: &str, customer: &str, amount: u64) -> pb::ChargeRequest {
    pb::ChargeRequest {
        idempotency_key: key.into(),
        customer_id: customer.into(),
        amount_cents: amount,
        currency: "usd".into(),
    }
}

fn with_fault<T>(msg: T, fault: &str) -> tonic::Request<T> {
    let mut req = tonic::Request::new(msg);
    req.metadata_mut()
        .insert("x-payment-fault", fault.parse().expect("header"));
    req
}

fn status(c: &pb::Charge) -> pb::ChargeStatus {
    pb::ChargeStatus::try_from(c.status).unwrap_or(pb::ChargeStatus::Unspecified)
}

async fn charge(client: &mut PaymentServiceClient<Channel>, req: pb::ChargeRequest) -> pb::Charge {
    client
        .charge(req)
        .await
        .expect("charge")
        .into_inner()
        .charge
        .expect("charge body")
}

async fn list(client: &mut PaymentServiceClient<Channel>, customer: &str) -> Vec<pb::Charge> {
    client
        .list_charges(pb::ListChargesRequest {
            customer_id: customer.into(),
        })
        .await
        .expect("list")
        .into_inner()
        .charges
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn charges_once_per_key_even_across_retries_races_and_restarts() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut provider = Provider::start(dir.path(), "", &[]).await;
    let mut client = provider.client();

    let first = charge(&mut client, charge_req("k-1", "alice", 900)).await;
    assert_eq!(status(&first), pb::ChargeStatus::Succeeded);
    let again = charge(&mut client, charge_req("k-1", "alice", 900)).await;
    assert_eq!(first.charge_id, again.charge_id);

    let mut tasks = Vec::new();
    for _ in 0..10 {
        let mut c = provider.client();
        tasks.push(tokio::spawn(async move {
            charge(&mut c, charge_req("k-race", "alice", 500))
                .await
                .charge_id
        }));
    }
    let mut ids = Vec::new();
    for t in tasks {
        ids.push(t.await.expect("join"));
    }
    ids.dedup();
    assert_eq!(ids.len(), 1, "racing retries must share one charge");
    assert_eq!(list(&mut client, "alice").await.len(), 2);

    let err = client
        .charge(charge_req("k-1", "alice", 100))
        .await
        .expect_err("key reuse");
    assert_eq!(err.code(), Code::FailedPrecondition);

    provider.restart().await;
    let mut client = provider.client();
    let after = charge(&mut client, charge_req("k-1", "alice", 900)).await;
    assert_eq!(after.charge_id, first.charge_id, "keys survive a restart");
    assert_eq!(list(&mut client, "alice").await.len(), 2);

    let err = client
        .charge(charge_req("", "alice", 900))
        .await
        .expect_err("empty key");
    assert_eq!(err.code(), Code::InvalidArgument);
    let err = client
        .charge(charge_req("k-0", "alice", 0))
        .await
        .expect_err("zero amount");
    assert_eq!(err.code(), Code::InvalidArgument);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refunds_and_voids_are_idempotent() {
    let dir = tempfile::tempdir().expect("tempdir");
    let provider = Provider::start(dir.path(), "", &[]).await;
    let mut client = provider.client();

    let c = charge(&mut client, charge_req("k-r", "bob", 2900)).await;
    let refund = |key: &str, id: &str, charge_key: &str| pb::RefundRequest {
        idempotency_key: key.into(),
        charge_id: id.into(),
        charge_idempotency_key: charge_key.into(),
    };
    for _ in 0..2 {
        let r = client
            .refund(refund("r-1", &c.charge_id, ""))
            .await
            .expect("refund")
            .into_inner()
            .charge
            .expect("charge");
        assert_eq!(status(&r), pb::ChargeStatus::Refunded);
        assert_eq!(r.refund_idempotency_key, "r-1");
    }

    // Declined charges take no money and cannot be refunded by id.
    let d = charge(&mut client, charge_req("k-d", "decline-bob", 100)).await;
    assert_eq!(status(&d), pb::ChargeStatus::Declined);
    let err = client
        .refund(refund("r-d", &d.charge_id, ""))
        .await
        .expect_err("declined");
    assert_eq!(err.code(), Code::FailedPrecondition);

    // Settling a key that never charged voids it: a late charge takes nothing.
    let v = client
        .refund(refund("r-v", "", "k-never"))
        .await
        .expect("void")
        .into_inner()
        .charge
        .expect("charge");
    assert_eq!(status(&v), pb::ChargeStatus::Voided);
    let late = charge(&mut client, charge_req("k-never", "bob", 900)).await;
    assert_eq!(status(&late), pb::ChargeStatus::Voided);
    assert_eq!(late.amount_cents, 0);

    let err = client
        .refund(refund("r-x", "ch_missing", ""))
        .await
        .expect_err("missing");
    assert_eq!(err.code(), Code::NotFound);
    let err = client
        .refund(refund("r-y", "", ""))
        .await
        .expect_err("no target");
    assert_eq!(err.code(), Code::InvalidArgument);

    let kept: Vec<_> = list(&mut client, "bob")
        .await
        .into_iter()
        .filter(|c| status(c) == pb::ChargeStatus::Succeeded)
        .collect();
    assert!(kept.is_empty(), "{kept:#?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn faults_by_metadata_rate_and_environment() {
    let dir = tempfile::tempdir().expect("tempdir");
    let provider = Provider::start(dir.path(), "allow_fault_headers = true", &[]).await;
    let mut client = provider.client();

    let declined = client
        .charge(with_fault(charge_req("f-1", "carol", 900), "decline"))
        .await
        .expect("a decline is an answer, not an error")
        .into_inner()
        .charge
        .expect("charge");
    assert_eq!(status(&declined), pb::ChargeStatus::Declined);
    assert!(!declined.decline_reason.is_empty());

    let err = client
        .charge(with_fault(charge_req("f-2", "carol", 900), "outage"))
        .await
        .expect_err("outage");
    assert_eq!(err.code(), Code::Unavailable);
    assert_eq!(
        list(&mut client, "carol").await.len(),
        1,
        "outage charged nothing"
    );
    // The same key after the outage charges normally.
    let ok = charge(&mut client, charge_req("f-2", "carol", 900)).await;
    assert_eq!(status(&ok), pb::ChargeStatus::Succeeded);

    let dir2 = tempfile::tempdir().expect("tempdir");
    let always = Provider::start(dir2.path(), "decline_rate = 1.0", &[]).await;
    let mut c2 = always.client();
    let d = charge(&mut c2, charge_req("f-3", "dan", 900)).await;
    assert_eq!(status(&d), pb::ChargeStatus::Declined);
    // Headers are ignored unless allowed.
    let err = c2
        .charge(with_fault(charge_req("f-4", "dan", 900), "outage"))
        .await;
    assert!(err.is_ok(), "fault headers must be off by default: {err:?}");

    let dir3 = tempfile::tempdir().expect("tempdir");
    let down = Provider::start(
        dir3.path(),
        "",
        &[("TALLY_PAYMENT_PAYMENT__OUTAGE", "true")],
    )
    .await;
    let mut c3 = down.client();
    let err = c3
        .charge(charge_req("f-5", "erin", 900))
        .await
        .expect_err("outage from env");
    assert_eq!(err.code(), Code::Unavailable);
    assert!(
        list(&mut c3, "erin").await.is_empty(),
        "reads answer during an outage"
    );
}
