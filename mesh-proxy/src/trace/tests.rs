//! Unit tests of the trace layer: propagation, new traces, the hop span extension.
use super::*;
use http::HeaderValue;
use parking_lot::Mutex;
use std::sync::Arc;

const PARENT: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

/// Records the `traceparent` each call arrived with.
#[derive(Clone, Default)]
struct Leaf(Arc<Mutex<Vec<Option<String>>>>);

impl Next for Leaf {
    type Error = ();
    async fn call(&self, req: Req) -> Result<Rsp, ()> {
        let seen = req
            .headers()
            .get("traceparent")
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);
        self.0.lock().push(seen);
        Ok(Rsp::new(body::empty()))
    }
}

fn on(direction: Direction) -> TraceLayer {
    let provider = SdkTracerProvider::builder().build();
    TraceLayer {
        tracer: Some(provider.tracer("test")),
        direction,
    }
}

fn request(traceparent: Option<&'static str>) -> Req {
    let mut req = Req::new(body::empty());
    *req.uri_mut() = "http://polling/tally.poll.v1.PollService/CastVote"
        .parse()
        .unwrap();
    if let Some(tp) = traceparent {
        req.headers_mut()
            .insert("traceparent", HeaderValue::from_static(tp));
    }
    req
}

fn parts(tp: &str) -> Vec<String> {
    tp.split('-').map(str::to_string).collect()
}

#[tokio::test]
async fn off_passes_calls_through_untouched() {
    let leaf = Leaf::default();
    let layer = TraceLayer {
        tracer: None,
        direction: Direction::Inbound,
    };
    layer.handle(request(Some(PARENT)), &leaf).await.unwrap();
    layer.handle(request(None), &leaf).await.unwrap();
    assert_eq!(*leaf.0.lock(), [Some(PARENT.to_string()), None]);
}

#[tokio::test]
async fn a_hop_continues_the_callers_trace_with_its_own_span() {
    let leaf = Leaf::default();
    on(Direction::Inbound)
        .handle(request(Some(PARENT)), &leaf)
        .await
        .unwrap();
    let seen = leaf.0.lock()[0].clone().expect("traceparent sent on");
    let (p, s) = (parts(PARENT), parts(&seen));
    assert_eq!(s[1], p[1], "same trace");
    assert_ne!(s[2], p[2], "the proxy's own span is the parent downstream");
    assert_eq!(s[3], "01", "sampled");
}

#[tokio::test]
async fn a_call_without_context_starts_its_own_trace() {
    let leaf = Leaf::default();
    for _ in 0..2 {
        on(Direction::Outbound)
            .handle(request(None), &leaf)
            .await
            .unwrap();
    }
    let seen = leaf.0.lock().clone();
    let a = parts(seen[0].as_deref().expect("new trace"));
    let b = parts(seen[1].as_deref().expect("new trace"));
    assert_ne!(a[1], b[1], "each call its own trace");
}

#[tokio::test]
async fn a_hop_behind_the_gateway_is_a_child_of_the_gateway_span() {
    use opentelemetry::trace::Tracer as _;
    let provider = SdkTracerProvider::builder().build();
    let tracer = provider.tracer("test");
    let edge = Context::new().with_span(tracer.start("gateway"));
    let edge_trace = format!("{:032x}", edge.span().span_context().trace_id());
    let leaf = Leaf::default();
    // A header the edge kept (a trusted proxy's) is already the gateway span's parent.
    let mut req = request(Some(PARENT));
    req.extensions_mut().insert(GatewaySpan(edge));
    on(Direction::Outbound).handle(req, &leaf).await.unwrap();
    let seen = leaf.0.lock()[0].clone().expect("traceparent sent on");
    assert_eq!(parts(&seen)[1], edge_trace);
}

#[test]
fn the_service_name_follows_the_proxy_role() {
    let mut cfg: crate::config::Config = toml::from_str(
        "[admin]\nlisten = \"127.0.0.1:9901\"\n[outbound]\nlisten = \"127.0.0.1:4140\"\n",
    )
    .unwrap();
    assert_eq!(service_name(&cfg), SERVICE_NAME);
    cfg.telemetry.service_name = Some("edge".into());
    assert_eq!(service_name(&cfg), "edge");
}

/// Whether each call reached the inner layers with a [`HopSpan`].
#[derive(Clone, Default)]
struct SeesHop(Arc<Mutex<Vec<bool>>>);

impl Next for SeesHop {
    type Error = ();
    async fn call(&self, req: Req) -> Result<Rsp, ()> {
        self.0
            .lock()
            .push(req.extensions().get::<HopSpan>().is_some());
        Ok(Rsp::new(body::empty()))
    }
}

#[tokio::test]
async fn only_a_recorded_span_is_handed_to_the_inner_layers() {
    let leaf = SeesHop::default();
    on(Direction::Outbound)
        .handle(request(None), &leaf)
        .await
        .unwrap();
    let off = SdkTracerProvider::builder()
        .with_sampler(Sampler::AlwaysOff)
        .build();
    let unsampled = TraceLayer {
        tracer: Some(off.tracer("test")),
        direction: Direction::Outbound,
    };
    unsampled.handle(request(None), &leaf).await.unwrap();
    // A caller's unsampled trace stays unsampled (parent-based).
    let parent_off = SdkTracerProvider::builder()
        .with_sampler(Sampler::ParentBased(Box::new(Sampler::AlwaysOn)))
        .build();
    TraceLayer {
        tracer: Some(parent_off.tracer("test")),
        direction: Direction::Inbound,
    }
    .handle(
        request(Some(
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00",
        )),
        &leaf,
    )
    .await
    .unwrap();
    assert_eq!(*leaf.0.lock(), [true, false, false]);
}
