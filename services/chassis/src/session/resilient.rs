//! The session port behind the resilient stack of `crate::resilience`: each
//! call has a deadline, reads (`get`, `ping`) are retried once, a breaker
//! opens after consecutive outages so calls fail fast with
//! [`SessionError::Unavailable`] while the backend is down, and a bulkhead
//! bounds the calls in flight. `open` puts it in front of Redis.

use super::{Session, SessionError, SessionStore};
use crate::resilience::{self, Call, ResilienceError, Resilient, Settings, SettingsError};
use async_trait::async_trait;
use futures::future::BoxFuture;
use std::sync::Arc;
use std::time::Duration;
use tower_resilience::circuitbreaker::CircuitState;

/// One session-port call, as the stack sees it.
#[derive(Clone)]
pub(crate) enum SessionCall {
    /// Stores a new session; never retried.
    Create {
        /// The session id to store it under.
        id: String,
        /// The session record.
        session: Session,
        /// How long the backend keeps it.
        ttl: Duration,
    },
    /// Looks up the session with this id.
    Get(String),
    /// Revokes the session with this id.
    Revoke(String),
    /// Checks the backend answers, for health.
    Ping,
}

impl Call for SessionCall {
    fn idempotent(&self) -> bool {
        matches!(self, SessionCall::Get(_) | SessionCall::Ping)
    }
}

/// What a call returned.
pub(crate) enum SessionReply {
    /// A create or ping succeeded.
    Done,
    /// The answer to a get: the session, if it exists.
    Found(Option<Session>),
    /// The answer to a revoke: whether a session was removed.
    Revoked(bool),
}

fn is_outage(e: &SessionError) -> bool {
    matches!(e, SessionError::Unavailable(_))
}

/// A [`SessionStore`] whose calls go through the resilient stack.
#[derive(Clone)]
pub struct ResilientSessions {
    stack: Resilient<SessionCall, SessionReply, SessionError>,
}

impl ResilientSessions {
    /// Wraps `inner`; `name` labels its metrics (e.g. `redis-sessions`).
    pub fn new(
        name: &str,
        inner: Arc<dyn SessionStore>,
        settings: &Settings,
    ) -> Result<Self, SettingsError> {
        let svc = tower::service_fn(move |call: SessionCall| {
            let inner = inner.clone();
            let fut: BoxFuture<'static, Result<SessionReply, SessionError>> =
                Box::pin(async move {
                    match call {
                        SessionCall::Create { id, session, ttl } => inner
                            .create(&id, &session, ttl)
                            .await
                            .map(|()| SessionReply::Done),
                        SessionCall::Get(id) => inner.get(&id).await.map(SessionReply::Found),
                        SessionCall::Revoke(id) => {
                            inner.revoke(&id).await.map(SessionReply::Revoked)
                        }
                        SessionCall::Ping => inner.ping().await.map(|()| SessionReply::Done),
                    }
                });
            fut
        });
        Ok(Self {
            stack: Resilient::new(name, settings, svc, is_outage)?,
        })
    }

    /// The breaker's state now (open: calls fail fast).
    pub fn breaker(&self) -> CircuitState {
        self.stack.state()
    }

    async fn call(&self, call: SessionCall) -> Result<SessionReply, SessionError> {
        self.stack.call(call).await.map_err(|e| match e {
            ResilienceError::Application(e) => e,
            other => SessionError::Unavailable(resilience::describe(self.stack.name(), &other)),
        })
    }
}

fn unexpected() -> SessionError {
    SessionError::Corrupt("the session stack answered another call".into())
}

#[async_trait]
impl SessionStore for ResilientSessions {
    async fn create(&self, id: &str, session: &Session, ttl: Duration) -> Result<(), SessionError> {
        match self
            .call(SessionCall::Create {
                id: id.to_string(),
                session: session.clone(),
                ttl,
            })
            .await?
        {
            SessionReply::Done => Ok(()),
            _ => Err(unexpected()),
        }
    }

    async fn get(&self, id: &str) -> Result<Option<Session>, SessionError> {
        match self.call(SessionCall::Get(id.to_string())).await? {
            SessionReply::Found(s) => Ok(s),
            _ => Err(unexpected()),
        }
    }

    async fn revoke(&self, id: &str) -> Result<bool, SessionError> {
        match self.call(SessionCall::Revoke(id.to_string())).await? {
            SessionReply::Revoked(r) => Ok(r),
            _ => Err(unexpected()),
        }
    }

    async fn ping(&self) -> Result<(), SessionError> {
        // Through the stack: while the breaker is open this fails fast, and
        // after its open wait the ping is the probe that can close it.
        match self.call(SessionCall::Ping).await? {
            SessionReply::Done => Ok(()),
            _ => Err(unexpected()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::session::MockSessionStore;

    fn session() -> Session {
        Session {
            user_id: "u1".into(),
            created_at: 1,
            expires_at: 2,
        }
    }

    #[tokio::test(start_paused = true)]
    async fn an_unreachable_store_fails_fast_once_the_breaker_opens() {
        let mut mock = MockSessionStore::new();
        mock.expect_create()
            .times(resilience::DEFAULT_CONSECUTIVE_FAILURES)
            .returning(|_, _, _| Err(SessionError::Unavailable("connection refused".into())));
        let s = ResilientSessions::new("test-sessions", Arc::new(mock), &Settings::default())
            .expect("stack");
        for _ in 0..resilience::DEFAULT_CONSECUTIVE_FAILURES {
            let e = s
                .create("a", &session(), Duration::from_secs(60))
                .await
                .expect_err("down");
            assert!(e.to_string().contains("connection refused"), "{e}");
        }
        assert_eq!(s.breaker(), CircuitState::Open);
        // The mock would panic on a further call: these fail fast.
        let e = s
            .create("b", &session(), Duration::from_secs(60))
            .await
            .expect_err("open");
        assert!(matches!(e, SessionError::Unavailable(_)), "{e}");
        assert!(e.to_string().contains("circuit breaker open"), "{e}");
        assert!(s.ping().await.is_err(), "health sees the open breaker");
    }

    #[tokio::test(start_paused = true)]
    async fn reads_are_retried_and_answers_pass_through() {
        let mut mock = MockSessionStore::new();
        let mut seq = mockall::Sequence::new();
        mock.expect_get()
            .times(1)
            .in_sequence(&mut seq)
            .returning(|_| Err(SessionError::Unavailable("blip".into())));
        mock.expect_get()
            .times(1)
            .in_sequence(&mut seq)
            .returning(|_| Ok(Some(session())));
        mock.expect_revoke().times(1).returning(|_| Ok(true));
        let s = ResilientSessions::new("test-reads", Arc::new(mock), &Settings::default())
            .expect("stack");
        assert_eq!(s.get("a").await.expect("retried"), Some(session()));
        assert!(s.revoke("a").await.expect("revoke"));
    }

    /// Real time (the breaker's open window runs on the std clock): health
    /// pings alone must be able to close the breaker once the backend is back.
    #[tokio::test]
    async fn health_pings_alone_recover_the_breaker() {
        let up = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let mut mock = MockSessionStore::new();
        let flag = up.clone();
        mock.expect_ping().returning(move || {
            if flag.load(std::sync::atomic::Ordering::SeqCst) {
                Ok(())
            } else {
                Err(SessionError::Unavailable("refused".into()))
            }
        });
        let settings = Settings {
            open_wait: Duration::from_millis(50),
            ..Settings::default()
        };
        let s = ResilientSessions::new("test-ping", Arc::new(mock), &settings).expect("stack");
        while s.breaker() != CircuitState::Open {
            assert!(s.ping().await.is_err());
        }
        up.store(true, std::sync::atomic::Ordering::SeqCst);
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        while s.ping().await.is_err() {
            assert!(tokio::time::Instant::now() < deadline, "never recovered");
            tokio::task::yield_now().await;
        }
        assert_eq!(s.breaker(), CircuitState::Closed);
    }
}
