//! The proxy's audit log, through a real sidecar pair: an inbound call the
//! policy denies is recorded with the caller's SPIFFE ID, the path and the
//! reason, and the log's hash chain verifies.

mod support;

use support::*;

#[tokio::test]
async fn a_denied_inbound_call_is_audited_with_the_caller() {
    init();
    let up = Upstream::start("a").await;
    let dir = tempfile::tempdir().expect("tmp");
    let log = dir.path().join("audit/echo-proxy.log");
    let pki = Pki::new();
    let callee = Proxy::start(&format!(
        "[admin]\nlisten = \"127.0.0.1:0\"\naudit_file = \"{}\"\n{}\n[inbound]\nlisten = \"127.0.0.1:0\"\nlocal_app = \"{}\"\n\
         [[inbound.authz]]\nservice = \"test.Echo\"\nallow = [\"spiffe://tally.local/ns/test/sa/someone-else\"]\n",
        log.display(),
        pki.identity("test", SVC).toml(),
        up.addr
    ))
    .await;
    let client = pki.identity("test", "client");
    let caller = Proxy::start(&format!(
        "[admin]\nlisten = \"127.0.0.1:0\"\n{}\n[outbound]\nlisten = \"127.0.0.1:0\"\n\n[services.{SVC}]\nendpoints = [\"{}\"]\n",
        client.toml(),
        callee.inbound.expect("inbound")
    ))
    .await;

    let r = Client::connect(caller.outbound.expect("outbound"))
        .await
        .call(SVC, PATH, &[], &[b"x"])
        .await;
    assert_eq!(r.status(), Some(PERMISSION_DENIED));
    assert_eq!(up.calls(), 0);

    let last = tally_audit::verify(&log)
        .expect("the chain verifies")
        .expect("an entry");
    assert_eq!(last.event.action, "authz.deny");
    assert_eq!(last.event.actor, client.spiffe());
    assert_eq!(last.event.target, PATH);
    assert_eq!(last.event.outcome, "denied");
}
