//! Cache benchmark (not a test): a read-heavy mix of GetResults, GetPoll and
//! a few CastVotes against the real `tally-polling` binary, once without a
//! cache and once with `[cache] backend = "redis"` (a real redis-server),
//! printing hit rate, client latency p50/p99 and the store reads saved.
//!
//! Run it with `bash scripts/bench-cache` (`--smoke` for a few seconds). It
//! starts its own `tally-user`, `tally-polling` and `redis-server` from
//! `target/<profile>/` (build with `cargo build --workspace --bins` first).
//! Store reads are polling's `tally_store_operation_seconds_count` for `get`
//! and `scan`, read from its /metrics before and after the load.

use clap::Parser;
use hdrhistogram::Histogram;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;
use tally_api::poll::v1 as pb;
use tally_api::poll::v1::poll_service_client::PollServiceClient;
use tally_api::user::v1 as userpb;
use tally_api::user::v1::user_service_client::UserServiceClient;
use tally_testkit::{Process, READY_TIMEOUT, RedisServer, free_port};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::time::Instant;
use tonic::Request;
use tonic::transport::Channel;

/// Voting accounts (each votes at most once per poll).
const VOTERS: usize = 5;
/// Password of every benchmark account.
const PASSWORD: &str = "correct horse battery staple";

#[derive(Debug, Clone, Parser)]
#[command(about = "Read-heavy load against polling, without and with the Redis cache")]
struct Args {
    /// Seconds of load per mode.
    #[arg(long, default_value_t = 10)]
    seconds: u64,
    /// Concurrent clients.
    #[arg(long, default_value_t = 8)]
    clients: usize,
    /// Polls the reads spread over (skewed: low indexes are hot).
    #[arg(long, default_value_t = 20)]
    polls: usize,
    /// Share of operations that are votes, in percent.
    #[arg(long, default_value_t = 2)]
    write_percent: u32,
    /// A very short run (2 s, 4 clients, 5 polls): checks the harness only.
    #[arg(long)]
    smoke: bool,
}

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// `target/<profile>/<name>`: this example runs from `target/<profile>/examples/`.
fn binary(name: &str) -> Result<PathBuf, BoxError> {
    let exe = std::env::current_exe()?;
    let dir = exe
        .parent()
        .and_then(Path::parent)
        .ok_or("example outside target/<profile>/examples")?;
    let path = dir.join(name);
    if !path.is_file() {
        return Err(format!(
            "{} missing: run `cargo build --workspace --bins`",
            path.display()
        )
        .into());
    }
    Ok(path)
}

async fn start(
    name: &str,
    health: &str,
    dir: &Path,
    extra: &str,
) -> Result<(Process, String), BoxError> {
    let port = free_port();
    let state = dir.join(name);
    std::fs::create_dir_all(&state)?;
    let config = dir.join(format!("{name}.toml"));
    std::fs::write(
        &config,
        format!(
            "[server]\nlisten_addr = \"127.0.0.1:{port}\"\ndrain_timeout_secs = 1\n[storage]\nbackend = \"embedded\"\npath = \"{}\"\n{extra}",
            state.join("store.redb").display()
        ),
    )?;
    let mut cmd = Command::new(binary(name)?);
    cmd.arg("--config")
        .arg(&config)
        .env("NO_COLOR", "1")
        .env("RUST_LOG", "warn");
    let mut p = Process::spawn_command(cmd);
    let addr = format!("127.0.0.1:{port}");
    p.wait_healthy(&addr, health, READY_TIMEOUT).await;
    Ok((p, addr))
}

fn bearer<T>(msg: T, token: &str) -> Result<Request<T>, BoxError> {
    let mut req = Request::new(msg);
    req.metadata_mut()
        .insert("authorization", format!("Bearer {token}").parse()?);
    Ok(req)
}

async fn account(users: &mut UserServiceClient<Channel>, email: &str) -> Result<String, BoxError> {
    users
        .sign_up(userpb::SignUpRequest {
            email: email.into(),
            password: PASSWORD.into(),
            display_name: "Bench".into(),
        })
        .await?;
    let login = users
        .login(userpb::LoginRequest {
            email: email.into(),
            password: PASSWORD.into(),
        })
        .await?;
    Ok(login.into_inner().access_token)
}

/// Sums every sample line of polling's /metrics starting with one of `prefixes`.
async fn metric(addr: std::net::SocketAddr, prefixes: &[&str]) -> Result<f64, BoxError> {
    let mut conn = tokio::net::TcpStream::connect(addr).await?;
    conn.write_all(b"GET /metrics HTTP/1.1\r\nHost: polling\r\nConnection: close\r\n\r\n")
        .await?;
    let mut text = String::new();
    conn.read_to_string(&mut text).await?;
    Ok(text
        .lines()
        .filter(|l| prefixes.iter().any(|p| l.starts_with(p)))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum())
}

const STORE_READS: &[&str] = &[
    "tally_store_operation_seconds_count{op=\"get\"",
    "tally_store_operation_seconds_count{op=\"scan\"",
];

/// What one mode measured.
struct Report {
    mode: &'static str,
    ops: u64,
    reads: u64,
    errors: u64,
    latency: Histogram<u64>,
    store_reads: f64,
    hits: f64,
    misses: f64,
    seconds: f64,
}

/// Skewed choice: index 0 is the hottest.
fn hot(n: usize) -> usize {
    let x: f64 = rand::random();
    ((x * x * x) * n as f64) as usize % n.max(1)
}

async fn run_mode(
    mode: &'static str,
    cache_toml: &str,
    args: &Args,
    dir: &Path,
    user_addr: &str,
    owner: &str,
    voters: &[String],
) -> Result<Report, BoxError> {
    let metrics_addr: std::net::SocketAddr = ([127, 0, 0, 1], free_port()).into();
    let mode_dir = dir.join(mode);
    std::fs::create_dir_all(&mode_dir)?;
    let (mut polling, addr) = start(
        "tally-polling",
        "tally.poll.v1.PollService",
        &mode_dir,
        &format!("[outbound]\nuser = \"http://{user_addr}\"\n[telemetry]\nmetrics_addr = \"{metrics_addr}\"\n{cache_toml}"),
    )
    .await?;
    let channel = Channel::from_shared(format!("http://{addr}"))?
        .connect()
        .await?;
    let mut polls = PollServiceClient::new(channel.clone());
    let mut ids = Vec::new();
    for i in 0..args.polls {
        let req = pb::CreatePollRequest {
            question: format!("Bench poll {i}?"),
            options: vec!["yes".into(), "no".into()],
            closes_at: None,
        };
        let poll = polls
            .create_poll(bearer(req, owner)?)
            .await?
            .into_inner()
            .poll
            .ok_or("no poll")?;
        ids.push((poll.poll_id, poll.options[0].option_id.clone()));
    }
    let before = metric(metrics_addr, STORE_READS).await?;
    let started = Instant::now();
    let deadline = started + Duration::from_secs(args.seconds);
    let mut tasks = Vec::new();
    for c in 0..args.clients {
        let mut polls = PollServiceClient::new(channel.clone());
        let (ids, owner, voters) = (ids.clone(), owner.to_string(), voters.to_vec());
        let write_percent = args.write_percent;
        tasks.push(tokio::spawn(async move {
            let mut h = Histogram::<u64>::new(3)?;
            let (mut ops, mut reads, mut errors) = (0u64, 0u64, 0u64);
            while Instant::now() < deadline {
                let (poll_id, option_id) = &ids[hot(ids.len())];
                let roll = rand::random::<u32>() % 100;
                let t0 = Instant::now();
                let ok = if roll < write_percent {
                    let voter = &voters[(c + ops as usize) % voters.len()];
                    let req = pb::CastVoteRequest {
                        poll_id: poll_id.clone(),
                        option_id: option_id.clone(),
                        idempotency_key: format!("{c}-{ops}"),
                    };
                    // A voter's second vote on a poll is refused: still a write.
                    match polls.cast_vote(bearer(req, voter)?).await {
                        Ok(_) => true,
                        Err(s) => s.code() == tonic::Code::AlreadyExists,
                    }
                } else if roll < 70 {
                    reads += 1;
                    let req = pb::GetResultsRequest {
                        poll_id: poll_id.clone(),
                    };
                    polls.get_results(bearer(req, &owner)?).await.is_ok()
                } else {
                    reads += 1;
                    let req = pb::GetPollRequest {
                        poll_id: poll_id.clone(),
                    };
                    polls.get_poll(bearer(req, &owner)?).await.is_ok()
                };
                h.record(u64::try_from(t0.elapsed().as_micros()).unwrap_or(u64::MAX))?;
                ops += 1;
                errors += u64::from(!ok);
            }
            Ok::<_, BoxError>((h, ops, reads, errors))
        }));
    }
    let mut report = Report {
        mode,
        ops: 0,
        reads: 0,
        errors: 0,
        latency: Histogram::new(3)?,
        store_reads: 0.0,
        hits: 0.0,
        misses: 0.0,
        seconds: 0.0,
    };
    for t in tasks {
        let (h, ops, reads, errors) = t.await??;
        report.latency.add(h)?;
        report.ops += ops;
        report.reads += reads;
        report.errors += errors;
    }
    report.seconds = started.elapsed().as_secs_f64();
    report.store_reads = metric(metrics_addr, STORE_READS).await? - before;
    report.hits = metric(metrics_addr, &["tally_cache_hits_total{"]).await?;
    report.misses = metric(metrics_addr, &["tally_cache_misses_total{"]).await?;
    polling.stop(Duration::from_secs(10)).await;
    Ok(report)
}

fn print(r: &Report) {
    let looked_up = r.hits + r.misses;
    let hit_rate = if looked_up > 0.0 {
        100.0 * r.hits / looked_up
    } else {
        0.0
    };
    println!(
        "{:<8} {:>8} {:>9.0} {:>9} {:>9} {:>8.1}% {:>11.0} {:>10.3} {:>6}",
        r.mode,
        r.ops,
        r.ops as f64 / r.seconds,
        r.latency.value_at_quantile(0.5),
        r.latency.value_at_quantile(0.99),
        hit_rate,
        r.store_reads,
        r.store_reads / r.reads.max(1) as f64,
        r.errors
    );
}

#[tokio::main]
async fn main() -> Result<(), BoxError> {
    let mut args = Args::parse();
    if args.smoke {
        (args.seconds, args.clients, args.polls) = (2, 4, 5);
    }
    if args.polls == 0 || args.clients == 0 || args.write_percent > 100 {
        return Err("--polls and --clients must be at least 1, --write-percent at most 100".into());
    }
    let redis = RedisServer::start().await;
    let dir = tempfile::tempdir()?;
    let (_user, user_addr) =
        start("tally-user", "tally.user.v1.UserService", dir.path(), "").await?;
    let mut users = UserServiceClient::new(
        Channel::from_shared(format!("http://{user_addr}"))?
            .connect()
            .await?,
    );
    let owner = account(&mut users, "owner@bench.example").await?;
    let mut voters = Vec::new();
    for i in 0..VOTERS {
        voters.push(account(&mut users, &format!("voter{i}@bench.example")).await?);
    }
    let load = uptime_load();
    println!(
        "cache benchmark: {} s per mode, {} clients, {} polls, {} % votes; 1-min load {load}",
        args.seconds, args.clients, args.polls, args.write_percent
    );
    let none = run_mode("none", "", &args, dir.path(), &user_addr, &owner, &voters).await?;
    let cache_toml = format!("[cache]\nbackend = \"redis\"\nurl = \"{}\"\n", redis.url());
    let cached = run_mode(
        "redis",
        &cache_toml,
        &args,
        dir.path(),
        &user_addr,
        &owner,
        &voters,
    )
    .await?;
    println!(
        "{:<8} {:>8} {:>9} {:>9} {:>9} {:>9} {:>11} {:>10} {:>6}",
        "cache",
        "ops",
        "ops/s",
        "p50 µs",
        "p99 µs",
        "hit rate",
        "store reads",
        "reads/read",
        "errors"
    );
    print(&none);
    print(&cached);
    let per_read = |r: &Report| r.store_reads / r.reads.max(1) as f64;
    let saved = if per_read(&none) > 0.0 {
        100.0 * (1.0 - per_read(&cached) / per_read(&none))
    } else {
        0.0
    };
    println!("store reads saved per client read: {saved:.1} %");
    println!("(debug builds and a shared machine make these figures indicative only)");
    Ok(())
}

fn uptime_load() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|s| s.split_whitespace().next().map(str::to_string))
        .unwrap_or_else(|| "unknown".into())
}
