//! The canary split through real sidecars: a caller whose route lists a stable and a canary
//! endpoint set sends exactly `weight` of every 100 calls to the canary, and the weight
//! changes at runtime through the admin API, with the admin token only.

mod support;

use support::*;

/// A caller sidecar with `stable` as the route's endpoints and `canary` as its canary set.
async fn split_mesh(stable: &Upstream, canary: &Upstream, weight: u8) -> (Proxy, Vec<Proxy>) {
    let pki = Pki::new();
    let callee_id = pki.identity("test", SVC);
    let client = pki.identity("test", "client");
    let mut callees = Vec::new();
    for app in [stable.addr, canary.addr] {
        let cfg = format!(
            "[admin]\nlisten = \"127.0.0.1:0\"\n{}\n[inbound]\nlisten = \"127.0.0.1:0\"\nlocal_app = \"{app}\"\n",
            callee_id.toml()
        );
        callees.push(Proxy::start(&cfg).await);
    }
    let cfg = format!(
        "[admin]\nlisten = \"127.0.0.1:0\"\n{}\n[outbound]\nlisten = \"127.0.0.1:0\"\n\n\
         [services.{SVC}]\nendpoints = [\"{}\"]\n[services.{SVC}.canary]\nendpoints = [\"{}\"]\nweight = {weight}\n",
        client.toml(),
        callees[0].inbound.unwrap(),
        callees[1].inbound.unwrap(),
    );
    (Proxy::start(&cfg).await, callees)
}

async fn calls(caller: &Proxy, n: usize) {
    let client = Client::connect(caller.outbound.unwrap()).await;
    for _ in 0..n {
        assert_eq!(
            client.call(SVC, PATH, &[], &[b"x"]).await.status(),
            Some(OK)
        );
    }
}

#[tokio::test]
async fn the_canary_gets_exactly_its_weight_and_the_weight_moves_at_runtime() {
    init();
    let stable = Upstream::start("stable").await;
    let canary = Upstream::start("canary").await;
    let (caller, _callees) = split_mesh(&stable, &canary, 0).await;

    calls(&caller, 100).await;
    assert_eq!((stable.calls(), canary.calls()), (100, 0), "weight 0");

    let (status, body) = admin(caller.admin, "GET", "/split", "").await;
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("\"weight\": 0"), "{body}");

    let update = r#"{"service":"echo","weight":25}"#;
    let host = vec![("host".to_string(), caller.admin.to_string())];
    let (status, _) = admin_with(caller.admin, "PUT", "/split", update, &host).await;
    assert_eq!(status, 401, "a weight change needs the admin token");
    calls(&caller, 100).await;
    assert_eq!(canary.calls(), 0, "the refused change did nothing");

    let put_split = |body: &'static str| admin(caller.admin, "PUT", "/split", body);
    let (status, body) = put_split(update).await;
    assert_eq!(status, 200, "{body}");
    calls(&caller, 100).await;
    assert_eq!((stable.calls(), canary.calls()), (275, 25), "weight 25");

    // Out of range, an unknown service, then all calls to the canary.
    let (status, body) = put_split(r#"{"service":"echo","weight":101}"#).await;
    assert_eq!(status, 400, "{body}");
    let (status, body) = put_split(r#"{"service":"nope","weight":5}"#).await;
    assert_eq!(status, 404, "{body}");
    let (status, body) = put_split(r#"{"service":"echo","weight":100}"#).await;
    assert_eq!(status, 200, "{body}");
    calls(&caller, 50).await;
    assert_eq!((stable.calls(), canary.calls()), (275, 75), "weight 100");
}

#[tokio::test]
async fn a_canary_sharing_a_stable_endpoint_is_refused_at_start() {
    init();
    let cfg = "[admin]\nlisten = \"127.0.0.1:0\"\n[outbound]\nlisten = \"127.0.0.1:0\"\n\
               [services.echo]\nendpoints = [\"127.0.0.1:1\"]\n\
               [services.echo.canary]\nendpoints = [\"127.0.0.1:1\"]\n";
    let c = tally_proxy::config::Config::parse("t.toml", cfg).unwrap();
    let e = c.validate("t.toml").unwrap_err().to_string();
    assert!(e.contains("services.echo.canary.endpoints"), "{e}");
}
