//! A child process for tests: output captured to files (read them when a test
//! fails), stopped on drop.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::Duration;
use tokio::time::Instant;

/// How often exits are polled.
const EXIT_POLL: Duration = Duration::from_millis(50);

/// A running child whose stdout and stderr go to files in a temp directory.
pub struct Process {
    name: String,
    child: Child,
    _dir: tempfile::TempDir,
    stdout_path: PathBuf,
    stderr_path: PathBuf,
    exit: Option<ExitStatus>,
}

impl Process {
    /// Spawns `program` with `args`.
    pub fn spawn<I, S>(program: impl AsRef<Path>, args: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: AsRef<std::ffi::OsStr>,
    {
        let mut cmd = Command::new(program.as_ref());
        cmd.args(args);
        Self::spawn_command(cmd)
    }

    /// Spawns a prepared command (set args, env and cwd on it first); stdin
    /// is closed and stdout/stderr are captured.
    pub fn spawn_command(mut cmd: Command) -> Self {
        let name = Path::new(cmd.get_program())
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| "process".into());
        let dir = tempfile::Builder::new()
            .prefix(&format!("{name}-out-"))
            .tempdir()
            .expect("temp dir for process output");
        let stdout_path = dir.path().join("stdout.log");
        let stderr_path = dir.path().join("stderr.log");
        let stdout = File::create(&stdout_path).expect("stdout file");
        let stderr = File::create(&stderr_path).expect("stderr file");
        cmd.stdin(Stdio::null()).stdout(stdout).stderr(stderr);
        let child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("cannot spawn {:?}: {e}", cmd.get_program()));
        Self {
            name,
            child,
            _dir: dir,
            stdout_path,
            stderr_path,
            exit: None,
        }
    }

    /// The child's process id, e.g. to signal it from outside.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Where the child's stdout is captured.
    pub fn stdout_path(&self) -> &Path {
        &self.stdout_path
    }

    /// Where the child's stderr is captured.
    pub fn stderr_path(&self) -> &Path {
        &self.stderr_path
    }

    /// Everything written to stdout so far.
    pub fn stdout(&self) -> String {
        std::fs::read_to_string(&self.stdout_path).unwrap_or_default()
    }

    /// Everything written to stderr so far.
    pub fn stderr(&self) -> String {
        std::fs::read_to_string(&self.stderr_path).unwrap_or_default()
    }

    /// Both outputs, labelled, for assertion messages.
    pub fn output(&self) -> String {
        format!(
            "--- {} stdout ---\n{}\n--- {} stderr ---\n{}",
            self.name,
            self.stdout(),
            self.name,
            self.stderr()
        )
    }

    /// The exit status, if the process has exited.
    pub fn try_exit(&mut self) -> Option<ExitStatus> {
        if self.exit.is_none() {
            self.exit = self.child.try_wait().ok().flatten();
        }
        self.exit
    }

    /// True until the child has exited (reaps it if it has).
    pub fn is_running(&mut self) -> bool {
        self.try_exit().is_none()
    }

    /// Sends a signal (e.g. `libc::SIGTERM`) if the process still runs.
    pub fn signal(&mut self, signal: i32) {
        if self.is_running() {
            // SAFETY: kill(2) on our own unreaped child.
            #[allow(unsafe_code)]
            unsafe {
                libc::kill(self.child.id() as i32, signal);
            }
        }
    }

    /// Waits up to `timeout` for the process to exit.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(s) = self.try_exit() {
                return Some(s);
            }
            if Instant::now() >= deadline {
                return None;
            }
            // Synchronous on purpose: `terminate` and `Drop` call it.
            #[allow(clippy::disallowed_methods)]
            std::thread::sleep(EXIT_POLL);
        }
    }

    /// SIGTERM, then waits up to `timeout`; panics (after SIGKILL) if it
    /// does not exit in time.
    pub fn terminate(&mut self, timeout: Duration) -> ExitStatus {
        self.signal(libc::SIGTERM);
        match self.wait_exit(timeout) {
            Some(s) => s,
            None => {
                self.kill();
                panic!(
                    "{} did not exit within {timeout:?} of SIGTERM\n{}",
                    self.name,
                    self.output()
                );
            }
        }
    }

    /// Graceful stop for async tests: SIGTERM, then waits (without blocking
    /// the runtime) up to `timeout` for the drain; SIGKILL if it lingers.
    pub async fn stop(&mut self, timeout: Duration) -> Option<ExitStatus> {
        self.signal(libc::SIGTERM);
        if let Some(s) = self.exited(timeout).await {
            return Some(s);
        }
        self.kill();
        self.exit
    }

    /// Waits, without blocking the runtime, up to `timeout` for the process
    /// to exit by itself (e.g. a command run to its end); `None` if it still
    /// runs.
    pub async fn exited(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(s) = self.try_exit() {
                return Some(s);
            }
            if Instant::now() >= deadline {
                return None;
            }
            tokio::time::sleep(EXIT_POLL).await;
        }
    }

    /// SIGKILL and reap.
    pub fn kill(&mut self) {
        if self.is_running() {
            let _ = self.child.kill();
            self.exit = self.child.wait().ok();
        }
    }

    /// Polls stdout until it contains `needle`; panics if the process exits
    /// first or `timeout` passes, showing its output.
    pub async fn wait_for_stdout(&mut self, needle: &str, timeout: Duration) -> String {
        let deadline = Instant::now() + timeout;
        loop {
            let out = self.stdout();
            if out.contains(needle) {
                return out;
            }
            if let Some(status) = self.try_exit() {
                // One last read: the line may have landed just before exit.
                let out = self.stdout();
                if out.contains(needle) {
                    return out;
                }
                panic!(
                    "{} exited ({status}) before printing {needle:?}\n{}",
                    self.name,
                    self.output()
                );
            }
            assert!(
                Instant::now() < deadline,
                "{} did not print {needle:?} within {timeout:?}\n{}",
                self.name,
                self.output()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Polls until `service` at `addr` is SERVING; panics with the process's
    /// output if it exits or `timeout` passes.
    pub async fn wait_healthy(&mut self, addr: &str, service: &str, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        loop {
            if crate::is_serving(addr, service).await {
                return;
            }
            if let Some(status) = self.try_exit() {
                panic!(
                    "{} exited ({status}) before {service:?} at {addr} was SERVING\n{}",
                    self.name,
                    self.output()
                );
            }
            assert!(
                Instant::now() < deadline,
                "{service:?} at {addr} was not SERVING within {timeout:?}\n{}",
                self.output()
            );
            tokio::time::sleep(Duration::from_millis(150)).await;
        }
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        if self.is_running() {
            self.signal(libc::SIGTERM);
            if self.wait_exit(Duration::from_secs(10)).is_none() {
                self.kill();
            }
        }
    }
}
