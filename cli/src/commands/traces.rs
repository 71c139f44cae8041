//! `tally traces` and `tally trace <id>`: what the embedded OTLP receiver of a running
//! `tally up` holds, as a list of recent traces or one trace as an indented tree.

use super::CliError;
use super::output::Out;
use clap::Args;
use std::net::SocketAddr;
use std::path::PathBuf;
use tally::traces::{query, tree};

/// Traces listed by default.
pub const DEFAULT_LIMIT: usize = 20;

/// Where the receiver is.
#[derive(Debug, Args)]
pub struct ReceiverAddr {
    /// The `--data-dir` of the running `tally up` (it writes the receiver's address there).
    #[arg(long, default_value = ".tally")]
    pub data_dir: PathBuf,
    /// The receiver's address, instead of reading it from the data directory.
    #[arg(long, env = "TALLY_TRACES_ADDR")]
    pub traces_addr: Option<SocketAddr>,
}

impl ReceiverAddr {
    fn resolve(&self) -> Result<SocketAddr, CliError> {
        match self.traces_addr {
            Some(a) => Ok(a),
            None => query::address_in(&self.data_dir).map_err(|e| CliError::Usage(e.to_string())),
        }
    }
}

/// `tally traces`.
#[derive(Debug, Args)]
pub struct TracesArgs {
    #[command(flatten)]
    pub addr: ReceiverAddr,
    /// Most traces listed (newest first).
    #[arg(long, default_value_t = DEFAULT_LIMIT)]
    pub limit: usize,
}

/// `tally trace <id>`.
#[derive(Debug, Args)]
pub struct TraceArgs {
    /// The trace id (32 hex digits) or a unique prefix of it.
    pub id: String,
    #[command(flatten)]
    pub addr: ReceiverAddr,
}

fn failed(e: query::QueryError) -> CliError {
    CliError::Usage(e.to_string())
}

pub async fn list(json: bool, args: TracesArgs) -> Result<(), CliError> {
    let addr = args.addr.resolve()?;
    let mut traces = query::list(addr).await.map_err(failed)?;
    traces.truncate(args.limit);
    let text = if traces.is_empty() {
        "no traces yet".to_string()
    } else {
        tree::render_list(&traces).trim_end().to_string()
    };
    Out::new(json).print(serde_json::json!({ "traces": traces }), text);
    Ok(())
}

pub async fn show(json: bool, args: TraceArgs) -> Result<(), CliError> {
    let addr = args.addr.resolve()?;
    let spans = query::trace(addr, &args.id).await.map_err(failed)?;
    let id = spans
        .first()
        .map_or(args.id.as_str(), |s| s.trace_id.as_str());
    let text = format!(
        "trace {id} ({} spans)\n{}",
        spans.len(),
        tree::render(&spans).trim_end()
    );
    Out::new(json).print(serde_json::json!({ "trace_id": id, "spans": spans }), text);
    Ok(())
}
