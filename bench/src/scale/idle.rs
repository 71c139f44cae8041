//! The idle-connection steps: one setup, connections opened up to each step's count and
//! held, then the pair's memory and its CPU while nothing happens. Client connections are
//! plaintext HTTP/2 to the outbound side, as an application holds them; peer connections
//! are mTLS HTTP/2 to the inbound side, as other sidecars hold them. Each made one call
//! first, so both ends have set the connection up fully.

use super::peer::{PeerConn, PeerDialer};
use super::{Dimension, OtherCpu, ScaleOptions, ScalePoint, base_shape, ours};
use crate::echo::EchoProcess;
use crate::error::BenchError;
use crate::limits::idle_connections_within;
use crate::load::{Target, grpc_channel, one_unary};
use crate::pki::Pki;
use crate::procstat;
use crate::run::wait_path;
use crate::setup::{Kind, Running};
use futures::StreamExt as _;
use std::time::Duration;

/// Pause after opening connections before measuring (handshake tasks finish, buffers settle).
const SETTLE: Duration = Duration::from_millis(500);

/// The connections held so far, of either kind.
#[derive(Default)]
struct Held {
    client: Vec<tonic::transport::Channel>,
    peer: Vec<PeerConn>,
}

impl Held {
    fn len(&self) -> usize {
        self.client.len() + self.peer.len()
    }
}

/// `dim` is `IdleConnections` (client side) or `IdlePeerConnections` (mTLS, inbound side).
pub(super) async fn walk(
    opts: &ScaleOptions,
    dim: Dimension,
    kind: Kind,
    echo: &EchoProcess,
    pki: &Pki,
) -> Result<Vec<ScalePoint>, BenchError> {
    let mut running =
        Running::start_shaped(kind, echo.addr, pki, &opts.programs, &base_shape()).await?;
    let pids = running.pids();
    let target = Target::connect(running.entry, &running.authority, opts.connections).await?;
    wait_path(&target).await?;
    let dialer = match (dim, running.peer_entry) {
        (Dimension::IdlePeerConnections, Some(addr)) => {
            Some(PeerDialer::new(addr, pki, &running.authority)?)
        }
        (Dimension::IdlePeerConnections, None) => {
            return Err(BenchError::Options {
                option: "--scale-dims idle-mtls".into(),
                problem: format!("setup {kind} has no mTLS listener for peers"),
            });
        }
        _ => None,
    };
    let cap = idle_connections_within(opts.nofile) as usize;
    let mut held = Held::default();
    let mut out = Vec::new();
    for x in dim.steps(opts.quick) {
        let want = (x as usize).min(cap);
        let mut failed = 0;
        let mut first_error = None;
        if want < x as usize {
            failed += x - want as u64;
            first_error = Some(format!(
                "open-file limit {} allows {cap} idle connections",
                opts.nofile
            ));
        }
        if held.len() < want {
            let (n, seq) = (want - held.len(), held.len() as u64);
            let (bad, err) = match &dialer {
                Some(d) => {
                    let (mut more, bad, err) = d.open(n, seq).await;
                    held.peer.append(&mut more);
                    (bad, err)
                }
                None => {
                    let (mut more, bad, err) = open_idle(&running, n, seq).await;
                    held.client.append(&mut more);
                    (bad, err)
                }
            };
            failed += bad;
            first_error = first_error.or(err);
        }
        tokio::time::sleep(SETTLE).await;
        let ours = ours(&pids, echo);
        let other = OtherCpu::start(&ours);
        let cpu0 = procstat::cpu_total(&pids);
        tokio::time::sleep(opts.hold).await;
        let cpu = procstat::cpu_total(&pids).saturating_sub(cpu0);
        let mem = procstat::memory_total(&pids);
        running.check_alive()?;
        // The path still works with the connections held.
        if let Err(e) = wait_path(&target).await {
            failed += 1;
            first_error.get_or_insert(e.to_string());
        }
        out.push(ScalePoint {
            dimension: dim.title().into(),
            setup: kind.to_string(),
            x,
            rss_kib: mem.rss_kib,
            hwm_kib: mem.hwm_kib,
            cpu: Some(cpu.as_secs_f64() * 1e3 / opts.hold.as_secs_f64().max(0.001)),
            rate: None,
            ok: held.len() as u64,
            failed,
            first_error,
            other_cpu_cores: other.cores(&ours),
            load: procstat::load_average().unwrap_or(0.0),
        });
    }
    drop(held);
    drop(target);
    running.stop();
    Ok(out)
}

/// Opens idle connections in parallel batches of this many.
const OPEN_BATCH: usize = 256;

/// Opens `n` connections to `running`'s entry, each making one checked call; returns the
/// connections that succeeded and the first error.
async fn open_idle(
    running: &Running,
    n: usize,
    first_seq: u64,
) -> (Vec<tonic::transport::Channel>, u64, Option<String>) {
    let entry = running.entry;
    let authority = running.authority.clone();
    let results: Vec<Result<tonic::transport::Channel, String>> =
        futures::stream::iter(0..n as u64)
            .map(|i| {
                let authority = authority.clone();
                async move {
                    let ch = grpc_channel(entry, &authority)
                        .await
                        .map_err(|e| e.to_string())?;
                    one_unary(ch.clone(), first_seq + i).await?;
                    Ok(ch)
                }
            })
            .buffer_unordered(OPEN_BATCH)
            .collect()
            .await;
    let mut ok = Vec::with_capacity(n);
    let mut failed = 0;
    let mut first = None;
    for r in results {
        match r {
            Ok(ch) => ok.push(ch),
            Err(e) => {
                failed += 1;
                first.get_or_insert(e);
            }
        }
    }
    (ok, failed, first)
}
