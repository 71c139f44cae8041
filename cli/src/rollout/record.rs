//! The record of a rollout: its state, its thresholds and, per step, the latest evidence
//! and verdict. Saved as JSON after every reading, so `tally rollout status` (another
//! process) shows a running rollout too.

use super::judge::{Thresholds, Verdict};
use super::metrics::Evidence;
use serde::{Deserialize, Serialize};
use std::fmt::Write;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Why the record could not be saved or loaded.
#[derive(Debug, thiserror::Error)]
pub enum RecordError {
    #[error("{path}: {what}")]
    Io { path: PathBuf, what: String },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum State {
    Running,
    Promoted,
    RolledBack,
}

/// One weight step and what was seen during it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Step {
    pub weight: u8,
    pub seconds: f64,
    /// The canary since the step began.
    pub canary: Evidence,
    /// The stable version since the rollout began.
    pub stable: Evidence,
    pub verdict: String,
}

impl Step {
    pub fn new(weight: u8) -> Self {
        Self {
            weight,
            seconds: 0.0,
            canary: Evidence::default(),
            stable: Evidence::default(),
            verdict: "waiting".into(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Record {
    pub service: String,
    pub state: State,
    pub reason: Option<String>,
    pub thresholds: Thresholds,
    pub started_unix: u64,
    pub steps: Vec<Step>,
}

fn now_unix() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

impl Record {
    pub fn new(service: &str, thresholds: Thresholds) -> Self {
        Self {
            service: service.to_string(),
            state: State::Running,
            reason: None,
            thresholds,
            started_unix: now_unix(),
            steps: Vec::new(),
        }
    }

    /// The latest reading of the current step.
    pub fn observe(&mut self, canary: Evidence, stable: Evidence, v: &Verdict, elapsed: Duration) {
        if let Some(s) = self.steps.last_mut() {
            s.canary = canary;
            s.stable = stable;
            s.seconds = elapsed.as_secs_f64();
            s.verdict = match v {
                Verdict::TooFewCalls => "too few calls".into(),
                Verdict::Healthy => "healthy".into(),
                Verdict::Breach(r) => format!("breach: {r}"),
            };
        }
    }

    pub fn finish(&mut self, state: State, reason: Option<String>) {
        self.state = state;
        self.reason = reason;
    }

    pub fn save(&self, data_dir: &Path) -> Result<(), RecordError> {
        let path = super::record_path(data_dir, &self.service);
        let io = |what: String| RecordError::Io {
            path: path.clone(),
            what,
        };
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(|e| io(e.to_string()))?;
        }
        let text = serde_json::to_string_pretty(self).map_err(|e| io(e.to_string()))?;
        // Written whole, then renamed: a reader never sees half a record.
        let tmp = path.with_extension("json.tmp");
        std::fs::write(&tmp, text).map_err(|e| io(e.to_string()))?;
        std::fs::rename(&tmp, &path).map_err(|e| io(e.to_string()))
    }

    pub fn load(data_dir: &Path, service: &str) -> Result<Self, RecordError> {
        let path = super::record_path(data_dir, service);
        let io = |what: String| RecordError::Io {
            path: path.clone(),
            what,
        };
        let text = std::fs::read_to_string(&path).map_err(|e| {
            io(format!(
                "{e} (no rollout of `{service}` has started with this --data-dir)"
            ))
        })?;
        serde_json::from_str(&text).map_err(|e| io(e.to_string()))
    }

    /// The text `tally rollout status` prints.
    pub fn render(&self) -> String {
        let mut out = String::new();
        let state = match self.state {
            State::Running => "running",
            State::Promoted => "promoted",
            State::RolledBack => "rolled back",
        };
        let _ = writeln!(out, "rollout of {}: {state}", self.service);
        if let Some(r) = &self.reason {
            let _ = writeln!(out, "  reason: {r}");
        }
        let t = &self.thresholds;
        let _ = writeln!(
            out,
            "  thresholds: at least {} canary calls per step; error rate at most stable +{:.1} points; p99 at most {}x stable (+{:.0} ms slack)",
            t.min_calls,
            t.max_error_rate_increase * 100.0,
            t.max_p99_ratio,
            t.p99_slack_ms
        );
        let _ = writeln!(
            out,
            "  {:>6} {:>7}  {:>22}  {:>22}  verdict",
            "weight", "seconds", "canary calls/err/p99", "stable calls/err/p99"
        );
        let ev = |e: &Evidence| {
            format!(
                "{}/{}/{}",
                e.calls,
                e.errors,
                e.p99_ms.map(|p| format!("{p:.1}ms")).unwrap_or("-".into())
            )
        };
        for s in &self.steps {
            let _ = writeln!(
                out,
                "  {:>5}% {:>7.1}  {:>22}  {:>22}  {}",
                s.weight,
                s.seconds,
                ev(&s.canary),
                ev(&s.stable),
                s.verdict
            );
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_record_round_trips_and_renders_its_evidence() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut r = Record::new("analytics", Thresholds::default());
        r.steps.push(Step::new(5));
        let canary = Evidence {
            calls: 12,
            errors: 12,
            p99_ms: Some(2.0),
        };
        r.observe(
            canary,
            Evidence::default(),
            &Verdict::Breach("error rate 100.0%".into()),
            Duration::from_secs(2),
        );
        r.finish(State::RolledBack, Some("error rate 100.0%".into()));
        r.save(dir.path()).expect("save");
        let back = Record::load(dir.path(), "analytics").expect("load");
        assert_eq!(back, r);
        let text = back.render();
        assert!(text.contains("rollout of analytics: rolled back"), "{text}");
        assert!(text.contains("12/12/2.0ms"), "{text}");
        assert!(Record::load(dir.path(), "user").is_err());
    }
}
