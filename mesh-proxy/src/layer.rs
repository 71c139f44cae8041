//! How a layer is written. A layer is a small struct with one concern; its per-call logic is
//! an `async fn handle(&self, req, next)` where `next` is the service below it. The tower
//! plumbing (readiness, cloning the inner service, `oneshot`, boxing) is written once, here:
//! `Stack` chains layers, `Layers` composes them outermost first, `Boxed` erases a route's
//! type, `Service` turns a finished stack into the tower service the listeners run, and
//! `Tower` puts a tower service at the bottom of a stack.
//!
//! Not tower's `Layer`/`Service` pair for the layers themselves: a tower service must name its
//! future type, which stable Rust only allows by boxing every layer's future and cloning its
//! inner service on every call. Here a call borrows the stack, so a whole route compiles to one
//! future that is boxed once where the route's type is erased, and once at the listener.

use crate::{Req, Rsp};
use futures::future::BoxFuture;
use std::future::Future;
use std::sync::Arc;
use std::task::{Context, Poll};
use tower::ServiceExt;

/// A service inside a stack: always ready, called by shared reference.
pub trait Next: Send + Sync + 'static {
    type Error: Send + 'static;
    fn call(&self, req: Req) -> impl Future<Output = Result<Rsp, Self::Error>> + Send;
}

/// One concern of a stack, around the service `N` below it.
pub trait Layer<N: Next>: Send + Sync + 'static {
    type Error: Send + 'static;
    fn handle(&self, req: Req, next: &N) -> impl Future<Output = Result<Rsp, Self::Error>> + Send;
}

/// A layer over the service below it.
pub struct Stack<L, N> {
    layer: L,
    next: N,
}

impl<L: Layer<N>, N: Next> Next for Stack<L, N> {
    type Error = L::Error;
    fn call(&self, req: Req) -> impl Future<Output = Result<Rsp, L::Error>> + Send {
        self.layer.handle(req, &self.next)
    }
}

/// Composes layers in the order a call meets them: `Layers::new().push(a).push(b).over(svc)`
/// is `a`, then `b`, then `svc`.
pub struct Layers<W>(W);

/// The layers pushed so far, as a function from the innermost service to the stack.
pub trait Wrap<N> {
    type Out;
    fn wrap(self, inner: N) -> Self::Out;
}

/// No layer at all.
pub struct Identity;

impl<N> Wrap<N> for Identity {
    type Out = N;
    fn wrap(self, inner: N) -> N {
        inner
    }
}

/// `L` directly over the service, then the layers of `W` around that.
pub struct Inside<W, L>(W, L);

impl<N, W: Wrap<Stack<L, N>>, L> Wrap<N> for Inside<W, L> {
    type Out = W::Out;
    fn wrap(self, inner: N) -> W::Out {
        self.0.wrap(Stack {
            layer: self.1,
            next: inner,
        })
    }
}

impl Layers<Identity> {
    pub fn new() -> Self {
        Layers(Identity)
    }
}

impl Default for Layers<Identity> {
    fn default() -> Self {
        Self::new()
    }
}

impl<W> Layers<W> {
    /// Adds `layer` below the layers pushed before it.
    pub fn push<L>(self, layer: L) -> Layers<Inside<W, L>> {
        Layers(Inside(self.0, layer))
    }

    /// Puts the layers over `inner`.
    pub fn over<N>(self, inner: N) -> W::Out
    where
        W: Wrap<N>,
    {
        self.0.wrap(inner)
    }
}

/// Object-safe form of `Next`, for `Boxed`.
trait DynNext<E>: Send + Sync {
    fn call_boxed(&self, req: Req) -> BoxFuture<'_, Result<Rsp, E>>;
}

impl<N: Next> DynNext<N::Error> for N {
    fn call_boxed(&self, req: Req) -> BoxFuture<'_, Result<Rsp, N::Error>> {
        Box::pin(self.call(req))
    }
}

/// A stack of any type with error `E` (one box per call; cloning is a reference count).
pub struct Boxed<E>(Arc<dyn DynNext<E>>);

impl<E> Clone for Boxed<E> {
    fn clone(&self) -> Self {
        Self(self.0.clone())
    }
}

impl<E: Send + 'static> Boxed<E> {
    pub fn new<N: Next<Error = E>>(inner: N) -> Self {
        Self(Arc::new(inner))
    }
}

impl<E: Send + 'static> Next for Boxed<E> {
    type Error = E;
    fn call(&self, req: Req) -> impl Future<Output = Result<Rsp, E>> + Send {
        self.0.call_boxed(req)
    }
}

/// A finished stack as a tower service: always ready, cloned by reference count, one boxed
/// future per call.
pub struct Service<N>(Arc<N>);

impl<N> Clone for Service<N> {
    fn clone(&self) -> Self {
        Self(self.0.clone())
    }
}

impl<N: Next> Service<N> {
    pub fn new(stack: N) -> Self {
        Self(Arc::new(stack))
    }
}

impl<N: Next> tower::Service<Req> for Service<N> {
    type Response = Rsp;
    type Error = N::Error;
    type Future = BoxFuture<'static, Result<Rsp, N::Error>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), N::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Req) -> Self::Future {
        let stack = self.0.clone();
        Box::pin(async move { stack.call(req).await })
    }
}

/// A tower service (cheap to clone, always ready) at the bottom of a stack.
pub struct Tower<S>(pub S);

impl<S> Next for Tower<S>
where
    S: tower::Service<Req, Response = Rsp> + Clone + Send + Sync + 'static,
    S::Future: Send,
    S::Error: Send + 'static,
{
    type Error = S::Error;
    fn call(&self, req: Req) -> impl Future<Output = Result<Rsp, S::Error>> + Send {
        self.0.clone().oneshot(req)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::body;
    use parking_lot::Mutex;

    /// Records its name on the way in, then calls the next service.
    struct Mark(&'static str, Arc<Mutex<Vec<&'static str>>>);

    impl<N: Next<Error = ()>> Layer<N> for Mark {
        type Error = ();
        async fn handle(&self, req: Req, next: &N) -> Result<Rsp, ()> {
            self.1.lock().push(self.0);
            next.call(req).await
        }
    }

    struct Leaf(Arc<Mutex<Vec<&'static str>>>);

    impl Next for Leaf {
        type Error = ();
        async fn call(&self, _req: Req) -> Result<Rsp, ()> {
            self.0.lock().push("leaf");
            Ok(Rsp::new(body::empty()))
        }
    }

    #[tokio::test]
    async fn layers_run_in_the_order_they_are_pushed() {
        let seen = Arc::new(Mutex::new(Vec::new()));
        let stack = Layers::new()
            .push(Mark("outer", seen.clone()))
            .push(Mark("inner", seen.clone()))
            .over(Leaf(seen.clone()));
        let mut svc = Service::new(Boxed::new(stack));
        let req = Req::new(body::empty());
        tower::Service::call(&mut svc, req).await.unwrap();
        assert_eq!(*seen.lock(), ["outer", "inner", "leaf"]);
    }
}
