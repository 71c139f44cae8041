//! `tally-floor-relay`: one side of the benchmark's floor relay pair (see `tally_bench::floor`).
//! Prints `{"listen":"ADDR"}` on stdout once bound, then relays until killed.

use clap::{Parser, ValueEnum};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::str::FromStr;
use tally_bench::floor::{self, Mode};
use tally_certs::SpiffeId;
use tally_certs::tls::IdentityPaths;

#[derive(Clone, Copy, Debug, ValueEnum)]
enum Side {
    Outbound,
    Inbound,
}

#[derive(Parser, Debug)]
#[command(
    name = "tally-floor-relay",
    about = "The benchmark's minimal mTLS HTTP/2 relay"
)]
struct Args {
    #[arg(long, value_enum)]
    side: Side,
    /// Address to listen on (port 0: any).
    #[arg(long, default_value = "127.0.0.1:0")]
    listen: SocketAddr,
    /// Next hop: the inbound relay (outbound side) or the local app (inbound side).
    #[arg(long)]
    upstream: SocketAddr,
    /// SPIFFE id the other side must present, exactly.
    #[arg(long)]
    expect: String,
    #[arg(long)]
    bundle: PathBuf,
    #[arg(long)]
    cert: PathBuf,
    #[arg(long)]
    key: PathBuf,
}

fn main() -> ExitCode {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let a = Args::parse();
    let expect = match SpiffeId::from_str(&a.expect) {
        Ok(id) => id,
        Err(e) => {
            eprintln!("tally-floor-relay: --expect: {e}");
            return ExitCode::from(2);
        }
    };
    let mode = match a.side {
        Side::Outbound => Mode::Outbound {
            upstream: a.upstream,
            expect,
        },
        Side::Inbound => Mode::Inbound {
            upstream: a.upstream,
            expect,
        },
    };
    let paths = IdentityPaths {
        bundle: a.bundle,
        cert: a.cert,
        key: a.key,
    };
    // One thread serves everything: the floor is one worker.
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("tally-floor-relay: runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    rt.block_on(async move {
        match floor::start(a.listen, &paths, mode).await {
            Ok((bound, task)) => {
                println!("{{\"listen\":\"{bound}\"}}");
                let _ = task.await;
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("tally-floor-relay: {e}");
                ExitCode::FAILURE
            }
        }
    })
}
