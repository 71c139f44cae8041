//! Inbound's innermost service: plaintext HTTP/2 to the local app, carrying the caller's
//! verified identity in `x-tally-peer-spiffe-id` (any value the caller sent is replaced).
//! A call the app provably never received (its connection was being replaced, it refused the
//! stream, a failed connect) is sent again, so the mesh does not fail calls because of its own
//! connection to the app. The body streams through a replay body for that. While the app
//! refuses connections (it is restarting), the call is held and reconnected for up to
//! `LOCAL_APP_HOLD`, so a restart costs the caller latency, not an error.

use crate::balance::{ClientSettings, HttpClient, http2_client, send};
use crate::defaults::{
    LOCAL_APP_ATTEMPTS, LOCAL_APP_HOLD, LOCAL_APP_HOLD_BACKOFF_MAX, LOCAL_APP_RECONNECT_BACKOFF,
    PEER_ID_HEADER,
};
use crate::error::{from_local_app_error, local_app_never_saw};
use crate::layer::Next;
use crate::observe::CallInfo;
use crate::replay::Replay;
use crate::transport::plaintext::Plaintext;
use crate::{PeerId, ProxyError, Req, Rsp};
use http::HeaderValue;
use http_body_util::BodyExt;
use std::net::SocketAddr;
use std::sync::Arc;

pub struct Forward {
    addr: String,
    client: HttpClient,
    /// Request bytes kept to send a call again (`max_retry_buffer_bytes`).
    replay_limit: usize,
}

impl Forward {
    pub fn new(local_app: SocketAddr, settings: &ClientSettings, replay_limit: usize) -> Self {
        let addr = local_app.to_string();
        Self {
            client: http2_client(&addr, "", Arc::new(Plaintext), settings),
            addr,
            replay_limit,
        }
    }
}

impl Next for Forward {
    type Error = ProxyError;

    async fn call(&self, mut req: Req) -> Result<Rsp, ProxyError> {
        req.headers_mut().remove(PEER_ID_HEADER);
        if let Some(PeerId(Some(id))) = req.extensions().get::<PeerId>()
            && let Ok(v) = HeaderValue::from_str(id)
        {
            req.headers_mut().insert(PEER_ID_HEADER, v);
        }
        let (parts, body) = req.into_parts();
        let replay = Replay::new(body, self.replay_limit);
        let mut attempt = 1;
        let started = tokio::time::Instant::now();
        loop {
            let req = Req::from_parts(parts.clone(), replay.body().boxed_unsync());
            let e = match send(&self.client, &self.addr, req).await {
                Ok(rsp) => return Ok(rsp),
                Err(e) => e,
            };
            let holding = e.is_connect() && started.elapsed() < LOCAL_APP_HOLD;
            if (attempt >= LOCAL_APP_ATTEMPTS && !holding)
                || !local_app_never_saw(&e)
                || !replay.is_replayable()
            {
                return Err(from_local_app_error(e));
            }
            tracing::debug!(error = %e, detail = ?e, attempt, "local app never received the call; sending it again");
            if let Some(i) = parts.extensions.get::<CallInfo>() {
                i.add_retry();
            }
            if e.is_connect() {
                let pause = LOCAL_APP_RECONNECT_BACKOFF.saturating_mul(attempt);
                tokio::time::sleep(pause.min(LOCAL_APP_HOLD_BACKOFF_MAX)).await;
            }
            attempt += 1;
        }
    }
}
