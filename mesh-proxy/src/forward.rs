//! Inbound's innermost service: plaintext HTTP/2 to the local app, carrying the caller's
//! verified identity in `x-tally-peer-spiffe-id` (any value the caller sent is replaced).

use crate::balance::{ClientSettings, HttpClient, http2_client, send};
use crate::defaults::PEER_ID_HEADER;
use crate::transport::plaintext::Plaintext;
use crate::{BoxFuture, PeerId, ProxyError, Req, Rsp};
use http::HeaderValue;
use std::net::SocketAddr;
use std::sync::Arc;
use std::task::{Context, Poll};

#[derive(Clone)]
pub struct Forward {
    addr: String,
    client: HttpClient,
}

impl Forward {
    pub fn new(local_app: SocketAddr, settings: &ClientSettings) -> Self {
        let addr = local_app.to_string();
        Self {
            client: http2_client(&addr, "", Arc::new(Plaintext), settings),
            addr,
        }
    }
}

impl tower::Service<Req> for Forward {
    type Response = Rsp;
    type Error = ProxyError;
    type Future = BoxFuture<Result<Rsp, ProxyError>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), ProxyError>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, mut req: Req) -> Self::Future {
        req.headers_mut().remove(PEER_ID_HEADER);
        if let Some(PeerId(Some(id))) = req.extensions().get::<PeerId>()
            && let Ok(v) = HeaderValue::from_str(id)
        {
            req.headers_mut().insert(PEER_ID_HEADER, v);
        }
        let (client, addr) = (self.client.clone(), self.addr.clone());
        Box::pin(async move {
            send(&client, &addr, req)
                .await
                .map_err(crate::error::from_local_app_error)
        })
    }
}
