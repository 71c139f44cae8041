//! `tally audit`: checks and follows the hash-chained audit logs every
//! service and proxy writes under `<data-dir>/audit/` ([`tally_audit`]).

use anyhow::{Context, bail};
use std::path::{Path, PathBuf};
use std::time::Duration;
use tally::up::AUDIT_DIR;
use tally_audit::Entry;

/// How often `tail` looks for new entries.
pub const FOLLOW_INTERVAL: Duration = Duration::from_millis(500);
/// Entries `tail` prints before following.
pub const DEFAULT_TAIL_LINES: usize = 10;

#[derive(Debug, clap::Args)]
pub struct AuditArgs {
    /// The `tally up` data directory whose `audit/` logs are read.
    #[arg(long, default_value = ".tally", global = true)]
    pub data_dir: PathBuf,
    #[command(subcommand)]
    pub command: AuditCommand,
}

#[derive(Debug, clap::Subcommand)]
pub enum AuditCommand {
    /// Check the hash chain of audit logs (default: every log in
    /// <data-dir>/audit); fails naming the first modified or removed entry.
    Verify {
        /// Log files; none means every `*.log` in <data-dir>/audit.
        files: Vec<PathBuf>,
    },
    /// Print the last entries of an instance's audit log and follow it
    /// (Ctrl-C stops); the chain is checked at every read.
    Tail {
        /// An instance name (`polling-proxy`, `user`) or a log file path.
        log: String,
        /// How many entries to print first.
        #[arg(short = 'n', long, default_value_t = DEFAULT_TAIL_LINES)]
        lines: usize,
        /// Print and exit instead of following.
        #[arg(long)]
        no_follow: bool,
    },
}

fn every_log(dir: &Path) -> anyhow::Result<Vec<PathBuf>> {
    let mut logs: Vec<PathBuf> = std::fs::read_dir(dir)
        .with_context(|| format!("cannot read {}", dir.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().and_then(|e| e.to_str()) == Some("log"))
        .collect();
    logs.sort();
    Ok(logs)
}

fn line(json: bool, e: &Entry) -> String {
    if json {
        return serde_json::to_string(e).unwrap_or_default();
    }
    let detail = if e.event.detail.is_empty() {
        String::new()
    } else {
        format!(" ({})", e.event.detail)
    };
    format!(
        "#{} {} {} {} {} {}{detail}",
        e.seq, e.ts_ms, e.event.actor, e.event.action, e.event.target, e.event.outcome
    )
}

/// Runs `tally audit ...`.
pub async fn run(json: bool, args: AuditArgs) -> anyhow::Result<()> {
    let dir = args.data_dir.join(AUDIT_DIR);
    match args.command {
        AuditCommand::Verify { files } => {
            let files = if files.is_empty() {
                every_log(&dir)?
            } else {
                files
            };
            if files.is_empty() {
                bail!("no audit logs in {}", dir.display());
            }
            let mut broken = 0;
            for f in &files {
                match tally_audit::verify(f) {
                    Ok(last) => {
                        println!("ok {} ({} entries)", f.display(), last.map_or(0, |e| e.seq))
                    }
                    Err(e) => {
                        broken += 1;
                        println!("BROKEN {e}");
                    }
                }
            }
            if broken > 0 {
                bail!("{broken} of {} audit logs failed verification", files.len());
            }
            Ok(())
        }
        AuditCommand::Tail {
            log,
            lines,
            no_follow,
        } => {
            let path = if log.contains('/') || log.ends_with(".log") {
                PathBuf::from(&log)
            } else {
                dir.join(format!("{log}.log"))
            };
            let all = tally_audit::entries_after(&path, 0)?;
            let mut last = all.last().map_or(0, |e| e.seq);
            for e in &all[all.len().saturating_sub(lines)..] {
                println!("{}", line(json, e));
            }
            if no_follow {
                return Ok(());
            }
            loop {
                tokio::time::sleep(FOLLOW_INTERVAL).await;
                for e in tally_audit::entries_after(&path, last)? {
                    println!("{}", line(json, &e));
                    last = e.seq;
                }
            }
        }
    }
}
