//! Keeps one instance running: spawns its binary with its config, sends its
//! output to its log file, restarts it with backoff when it dies, and stops it
//! with SIGTERM (then SIGKILL after a grace period) when `tally up` stops.

use super::health;
use super::plan::Instance;
use super::say;
use parking_lot::Mutex;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tokio::process::{Child, Command};
use tokio::sync::watch;
use tokio::time::Instant;

/// First wait before a restart; doubles per crash up to [`MAX_BACKOFF`].
const INITIAL_BACKOFF: Duration = Duration::from_millis(500);
const MAX_BACKOFF: Duration = Duration::from_secs(30);
/// A run this long resets the backoff.
const STABLE_AFTER: Duration = Duration::from_secs(30);
/// How long a stopping instance may drain before it is killed.
const STOP_GRACE: Duration = Duration::from_secs(20);
/// How long a restarted instance may take to report SERVING.
const RESTART_READY_TIMEOUT: Duration = Duration::from_secs(120);

/// File mode mask of every child: files it creates are the owner's alone.
#[cfg(target_os = "linux")]
const CHILD_UMASK: libc::mode_t = 0o077;

/// Environment variables of the `tally` CLI that children must not inherit:
/// `TALLY_USER_ADDR` would read as key `addr` under the user service's
/// `TALLY_USER_` override prefix and fail its config validation.
const CLI_ENV: &[&str] = &[
    "TALLY_USER_ADDR",
    "TALLY_POLL_ADDR",
    "TALLY_TOKEN",
    "TALLY_API_KEY",
    "TALLY_PASSWORD",
];

/// What the supervisor knows about its instance, shared with `tally up`.
#[derive(Default)]
pub struct State {
    pid: AtomicU32,
    exits: AtomicU32,
    last_exit: Mutex<Option<String>>,
}

impl State {
    /// The current process id (0 when not running).
    pub fn pid(&self) -> u32 {
        self.pid.load(Ordering::SeqCst)
    }

    /// How many times the instance has exited on its own.
    pub fn exits(&self) -> u32 {
        self.exits.load(Ordering::SeqCst)
    }

    /// How the last exit looked, e.g. `exit status: 1`.
    pub fn last_exit(&self) -> Option<String> {
        self.last_exit.lock().clone()
    }

    fn record_exit(&self, how: String) {
        self.pid.store(0, Ordering::SeqCst);
        self.exits.fetch_add(1, Ordering::SeqCst);
        *self.last_exit.lock() = Some(how);
    }
}

/// A running supervisor.
pub struct Handle {
    pub instance: Arc<Instance>,
    pub state: Arc<State>,
    stop: watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
}

impl Handle {
    /// Asks the supervisor to stop its instance (non-blocking).
    pub fn request_stop(&self) {
        let _ = self.stop.send(true);
    }

    /// Waits until the instance has stopped.
    pub async fn join(self) {
        let _ = self.task.await;
    }
}

/// Starts supervising `instance`, run from `binary`.
pub fn start(instance: Instance, binary: PathBuf) -> Handle {
    let instance = Arc::new(instance);
    let state = Arc::new(State::default());
    let (stop, stop_rx) = watch::channel(false);
    let task = tokio::spawn(supervise(instance.clone(), binary, state.clone(), stop_rx));
    Handle {
        instance,
        state,
        stop,
        task,
    }
}

fn now_unix() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

fn spawn(instance: &Instance, binary: &PathBuf) -> std::io::Result<Child> {
    use std::io::Write;
    let mut log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&instance.log_path)?;
    writeln!(
        log,
        "--- tally up: starting {} {} (unix time {}) ---",
        binary.display(),
        instance
            .args
            .iter()
            .map(|a| a.to_string_lossy())
            .collect::<Vec<_>>()
            .join(" "),
        now_unix()
    )?;
    let mut cmd = Command::new(binary);
    cmd.args(&instance.args)
        .stdin(std::process::Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log)
        .env("NO_COLOR", "1")
        .envs(instance.env.iter().map(|(k, v)| (k, v)))
        .kill_on_drop(true);
    for var in CLI_ENV {
        cmd.env_remove(var);
    }
    #[cfg(unix)]
    {
        // Own process group: a terminal's Ctrl-C reaches only `tally up`,
        // which then stops the children in order.
        cmd.process_group(0);
    }
    #[cfg(target_os = "linux")]
    {
        // SAFETY: prctl and umask are async-signal-safe and touch only the
        // child between fork and exec. If `tally up` itself is killed, the
        // child gets SIGTERM instead of running on as an orphan; what it
        // creates (redis-server's AOF with sessions) is private to the owner.
        #[allow(unsafe_code)]
        unsafe {
            cmd.pre_exec(|| {
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM);
                libc::umask(CHILD_UMASK);
                Ok(())
            });
        }
    }
    let child = cmd.spawn()?;
    if let Some(pid) = child.id() {
        let _ = std::fs::write(&instance.pid_path, format!("{pid}\n"));
    }
    Ok(child)
}

/// SIGTERM, wait up to `grace`, then SIGKILL.
async fn terminate(child: &mut Child, grace: Duration) -> String {
    #[cfg(unix)]
    if let Some(pid) = child.id().and_then(|p| i32::try_from(p).ok()) {
        // SAFETY: plain kill(2) on our own child's pid, which is still ours:
        // it has not been reaped (we hold the Child and have not waited).
        #[allow(unsafe_code)]
        unsafe {
            libc::kill(pid, libc::SIGTERM);
        }
    }
    match tokio::time::timeout(grace, child.wait()).await {
        Ok(Ok(status)) => status.to_string(),
        Ok(Err(e)) => format!("wait failed: {e}"),
        Err(_) => {
            let _ = child.kill().await;
            format!("killed after {}s without stopping", grace.as_secs())
        }
    }
}

async fn announce_when_serving(
    instance: Arc<Instance>,
    restarts: u32,
    mut stop: watch::Receiver<bool>,
) {
    let Some(probe) = instance.probe.clone() else {
        return;
    };
    let deadline = Instant::now() + RESTART_READY_TIMEOUT;
    loop {
        if *stop.borrow() {
            return;
        }
        if health::check(&probe).await {
            say(&format!(
                "{} is {} again on {} (restart {restarts})",
                instance.name,
                probe.ready_word(),
                probe.addr
            ));
            return;
        }
        if Instant::now() > deadline {
            say(&format!(
                "{} did not become {} within {}s after restart {restarts}; see {}",
                instance.name,
                probe.ready_word(),
                RESTART_READY_TIMEOUT.as_secs(),
                instance.log_path.display()
            ));
            return;
        }
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_millis(250)) => {}
            _ = stop.changed() => return,
        }
    }
}

async fn supervise(
    instance: Arc<Instance>,
    binary: PathBuf,
    state: Arc<State>,
    mut stop: watch::Receiver<bool>,
) {
    let mut backoff = INITIAL_BACKOFF;
    let mut restarts = 0u32;
    loop {
        if *stop.borrow() {
            break;
        }
        match spawn(&instance, &binary) {
            Ok(mut child) => {
                state.pid.store(child.id().unwrap_or(0), Ordering::SeqCst);
                if restarts > 0 {
                    tokio::spawn(announce_when_serving(
                        instance.clone(),
                        restarts,
                        stop.clone(),
                    ));
                }
                let started = Instant::now();
                tokio::select! {
                    status = child.wait() => {
                        if *stop.borrow() {
                            break;
                        }
                        let how = match status {
                            Ok(s) => s.to_string(),
                            Err(e) => format!("wait failed: {e}"),
                        };
                        state.record_exit(how.clone());
                        if started.elapsed() >= STABLE_AFTER {
                            backoff = INITIAL_BACKOFF;
                        }
                        say(&format!(
                            "{} exited ({how}); restarting in {:.1}s (log: {})",
                            instance.name,
                            backoff.as_secs_f64(),
                            instance.log_path.display()
                        ));
                    }
                    _ = stop.changed() => {
                        let how = terminate(&mut child, STOP_GRACE).await;
                        state.pid.store(0, Ordering::SeqCst);
                        say(&format!("{} stopped ({how})", instance.name));
                        break;
                    }
                }
            }
            Err(e) => {
                state.record_exit(format!("could not start: {e}"));
                say(&format!(
                    "cannot start {} ({}): {e}; retrying in {:.1}s",
                    instance.name,
                    binary.display(),
                    backoff.as_secs_f64()
                ));
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(backoff) => {}
            _ = stop.changed() => break,
        }
        backoff = (backoff * 2).min(MAX_BACKOFF);
        restarts += 1;
    }
    let _ = std::fs::remove_file(&instance.pid_path);
}

/// Start order within a plan: by stage, and within a stage sidecars
/// (wave 0) before the services they front (wave 1).
pub fn wave(inst: &Instance) -> (usize, u8) {
    (inst.stage, u8::from(inst.sidecar_of.is_none()))
}

/// Stops every instance, the last started first, and waits for them: a
/// service drains before its sidecar stops, so its last calls still go out.
pub async fn stop_all(mut handles: Vec<Handle>) {
    handles.sort_by_key(|h| std::cmp::Reverse(wave(&h.instance)));
    while let Some(w) = handles.first().map(|h| wave(&h.instance)) {
        let split = handles
            .iter()
            .position(|h| wave(&h.instance) != w)
            .unwrap_or(handles.len());
        let rest = handles.split_off(split);
        for h in &handles {
            h.request_stop();
        }
        for h in handles {
            h.join().await;
        }
        handles = rest;
    }
}
