//! Child processes under test: spawned in their own process group, output
//! captured to a log file, signalled as a group, killed on drop.

use std::ffi::{OsStr, OsString};
use std::fmt;
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context};
use nix::sys::signal::{killpg, Signal};
use nix::sys::wait::{waitid, Id, WaitPidFlag, WaitStatus};
use nix::unistd::Pid;
use serde::de::DeserializeOwned;

use crate::log_file;
use crate::orphan;
use crate::ready::ReadyFile;

/// How often exit is polled while waiting for it.
const EXIT_POLL: Duration = Duration::from_millis(10);

/// Lines of log shown in error messages.
const ERROR_TAIL_LINES: usize = 40;

/// What to run: program, arguments, environment, working directory.
#[derive(Clone, Debug)]
pub struct ProcessSpec {
    name: String,
    program: PathBuf,
    args: Vec<OsString>,
    env: Vec<(OsString, Option<OsString>)>,
    cwd: Option<PathBuf>,
    ready_file: Option<PathBuf>,
}

impl ProcessSpec {
    /// Runs `program`; `name` ("node-1") names the process in logs and errors.
    /// The child inherits this process's environment, plus [`Self::env`].
    pub fn new(name: impl Into<String>, program: impl Into<PathBuf>) -> ProcessSpec {
        ProcessSpec {
            name: name.into(),
            program: program.into(),
            args: Vec::new(),
            env: Vec::new(),
            cwd: None,
            ready_file: None,
        }
    }

    /// Appends one argument.
    pub fn arg(mut self, arg: impl AsRef<OsStr>) -> ProcessSpec {
        self.args.push(arg.as_ref().to_owned());
        self
    }

    /// Appends arguments.
    pub fn args<I, S>(mut self, args: I) -> ProcessSpec
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        self.args
            .extend(args.into_iter().map(|a| a.as_ref().to_owned()));
        self
    }

    /// Sets an environment variable for the child.
    pub fn env(mut self, key: impl AsRef<OsStr>, value: impl AsRef<OsStr>) -> ProcessSpec {
        self.env
            .push((key.as_ref().to_owned(), Some(value.as_ref().to_owned())));
        self
    }

    /// Removes an inherited environment variable from the child.
    pub fn env_remove(mut self, key: impl AsRef<OsStr>) -> ProcessSpec {
        self.env.push((key.as_ref().to_owned(), None));
        self
    }

    /// Working directory of the child (default: the harness's test
    /// directory when spawned through [`crate::Harness::spawn`], else ours).
    pub fn cwd(mut self, dir: impl Into<PathBuf>) -> ProcessSpec {
        self.cwd = Some(dir.into());
        self
    }

    /// The ready file this process writes once it serves. It is deleted
    /// before every (re)start, so [`Process::wait_ready`] never reads a
    /// stale one.
    pub fn ready_file(mut self, path: impl Into<PathBuf>) -> ProcessSpec {
        self.ready_file = Some(path.into());
        self
    }

    /// The process's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The program run.
    pub fn program(&self) -> &Path {
        &self.program
    }

    /// The working directory, if set.
    pub fn current_dir(&self) -> Option<&Path> {
        self.cwd.as_deref()
    }

    /// The ready file, if set.
    pub fn ready_file_path(&self) -> Option<&Path> {
        self.ready_file.as_deref()
    }

    pub(crate) fn set_default_cwd(&mut self, dir: &Path) {
        if self.cwd.is_none() {
            self.cwd = Some(dir.to_path_buf());
        }
    }

    /// `program arg1 arg2` for logs.
    fn command_line(&self) -> String {
        let mut line = self.program.display().to_string();
        for arg in &self.args {
            line.push(' ');
            line.push_str(&arg.to_string_lossy());
        }
        line
    }
}

/// A running (or exited) child process.
///
/// Stdout and stderr go to one log file; each (re)start appends a new
/// segment headed by a `==== [tern-tests ...]` marker line. The child leads
/// its own process group and every signal goes to the whole group, so shell
/// wrappers and grandchildren are covered. The group is SIGKILLed on drop,
/// including while a test panics; if the test process itself is killed, a
/// watchdog (see `orphan.rs`) kills it.
///
/// All methods take `&self`, so a `Process` can be shared (`Arc<Process>`).
pub struct Process {
    spec: ProcessSpec,
    log_path: PathBuf,
    inner: Mutex<Inner>,
}

struct Inner {
    child: Child,
    pid: Pid,
    status: Option<ExitStatus>,
    starts: u32,
    stopped: bool,
}

impl fmt::Debug for Process {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let inner = self.lock();
        f.debug_struct("Process")
            .field("name", &self.spec.name)
            .field("pid", &inner.pid)
            .field("status", &inner.status)
            .field("log", &self.log_path)
            .finish()
    }
}

impl Process {
    /// Starts `spec`, appending its output to `log_path`.
    pub fn spawn(spec: ProcessSpec, log_path: impl Into<PathBuf>) -> anyhow::Result<Process> {
        let log_path = log_path.into();
        let child = launch(&spec, &log_path, 1)?;
        let pid = pid_of(&child);
        Ok(Process {
            spec,
            log_path,
            inner: Mutex::new(Inner {
                child,
                pid,
                status: None,
                starts: 1,
                stopped: false,
            }),
        })
    }

    /// The name given in the spec.
    pub fn name(&self) -> &str {
        &self.spec.name
    }

    /// The spec this process was started from.
    pub fn spec(&self) -> &ProcessSpec {
        &self.spec
    }

    /// The pid of the current child (also its process-group id). After the
    /// child exited and was reaped this pid is stale.
    pub fn pid(&self) -> Pid {
        self.lock().pid
    }

    /// How many times this process was started (1 + restarts).
    pub fn starts(&self) -> u32 {
        self.lock().starts
    }

    /// Whether the child has not exited (a SIGSTOPped child is running).
    /// Reaps it if it has exited.
    pub fn is_running(&self) -> bool {
        let mut inner = self.lock();
        self.refresh(&mut inner).is_none()
    }

    /// The exit status, if the child has exited.
    pub fn exit_status(&self) -> Option<ExitStatus> {
        let mut inner = self.lock();
        self.refresh(&mut inner)
    }

    /// SIGKILLs the process group and reaps the child; returns its status
    /// (or the status it had already exited with).
    pub fn kill(&self) -> ExitStatus {
        let mut inner = self.lock();
        if let Some(status) = self.refresh(&mut inner) {
            return status;
        }
        self.marker("SIGKILL by test");
        self.reap(&mut inner)
    }

    /// Sends `signal` to the process group. Errors if the child has exited.
    pub fn signal(&self, signal: Signal) -> anyhow::Result<()> {
        let mut inner = self.lock();
        if let Some(status) = self.refresh(&mut inner) {
            bail!(
                "cannot send {signal} to {} (pid {}): it already exited with {}",
                self.spec.name,
                inner.pid,
                describe(status)
            );
        }
        killpg(inner.pid, signal).with_context(|| {
            format!("sending {signal} to {} (pid {})", self.spec.name, inner.pid)
        })?;
        match signal {
            Signal::SIGSTOP => inner.stopped = true,
            Signal::SIGCONT => inner.stopped = false,
            _ => {}
        }
        Ok(())
    }

    /// Freezes the process group (SIGSTOP): a hung node whose sockets stay
    /// open.
    pub fn stop(&self) -> anyhow::Result<()> {
        self.marker("SIGSTOP by test");
        self.signal(Signal::SIGSTOP)
    }

    /// Resumes a stopped process group (SIGCONT).
    pub fn cont(&self) -> anyhow::Result<()> {
        self.signal(Signal::SIGCONT)?;
        self.marker("SIGCONT by test");
        Ok(())
    }

    /// Graceful stop: SIGTERM (and SIGCONT if stopped) to the group, wait up
    /// to `grace`, then SIGKILL. Returns the exit status.
    pub fn terminate(&self, grace: Duration) -> ExitStatus {
        if let Some(status) = self.begin_terminate() {
            return status;
        }
        match self.wait_exit(grace) {
            Ok(status) => status,
            Err(_) => self.escalate(grace),
        }
    }

    /// Async [`Self::terminate`].
    pub async fn terminate_async(&self, grace: Duration) -> ExitStatus {
        if let Some(status) = self.begin_terminate() {
            return status;
        }
        match self.wait_exit_async(grace).await {
            Ok(status) => status,
            Err(_) => self.escalate(grace),
        }
    }

    /// Waits up to `deadline` for the child to exit by itself. The error
    /// names the process and shows its log tail.
    pub fn wait_exit(&self, deadline: Duration) -> anyhow::Result<ExitStatus> {
        let start = Instant::now();
        loop {
            if let Some(status) = self.exit_status() {
                return Ok(status);
            }
            let elapsed = start.elapsed();
            if elapsed >= deadline {
                return Err(self.not_exited(elapsed));
            }
            std::thread::sleep(EXIT_POLL.min(deadline - elapsed));
        }
    }

    /// Async [`Self::wait_exit`].
    pub async fn wait_exit_async(&self, deadline: Duration) -> anyhow::Result<ExitStatus> {
        let start = Instant::now();
        loop {
            if let Some(status) = self.exit_status() {
                return Ok(status);
            }
            let elapsed = start.elapsed();
            if elapsed >= deadline {
                return Err(self.not_exited(elapsed));
            }
            tokio::time::sleep(EXIT_POLL.min(deadline - elapsed)).await;
        }
    }

    /// Starts the same spec again, appending a new segment to the same log.
    /// A child still running is SIGKILLed first (call [`Self::terminate`]
    /// before for a graceful restart). The ready file, if any, is deleted
    /// before the new start.
    pub fn restart(&self) -> anyhow::Result<()> {
        let mut inner = self.lock();
        if self.refresh(&mut inner).is_none() {
            self.marker("SIGKILL by test before restart");
            self.reap(&mut inner);
        }
        let starts = inner.starts + 1;
        let child = launch(&self.spec, &self.log_path, starts)?;
        inner.pid = pid_of(&child);
        inner.child = child;
        inner.status = None;
        inner.starts = starts;
        inner.stopped = false;
        Ok(())
    }

    /// Waits for the spec's ready file to parse as `T`; fails early if the
    /// process exits, and on timeout names the file and shows the log tail.
    pub fn wait_ready<T: DeserializeOwned>(&self, deadline: Duration) -> anyhow::Result<T> {
        self.ready()?.wait(Some(self), deadline)
    }

    /// Async [`Self::wait_ready`].
    pub async fn wait_ready_async<T: DeserializeOwned>(
        &self,
        deadline: Duration,
    ) -> anyhow::Result<T> {
        self.ready()?.wait_async(Some(self), deadline).await
    }

    /// The log file (all segments).
    pub fn log_path(&self) -> &Path {
        &self.log_path
    }

    /// The whole log so far.
    pub fn log_text(&self) -> String {
        log_file::read_all(&self.log_path)
    }

    /// The last `lines` lines of the log (bounded read).
    pub fn log_tail(&self, lines: usize) -> String {
        log_file::tail(&self.log_path, lines)
    }

    fn ready(&self) -> anyhow::Result<ReadyFile> {
        self.spec
            .ready_file
            .as_ref()
            .map(ReadyFile::new)
            .ok_or_else(|| anyhow!("process {} has no ready file in its spec", self.spec.name))
    }

    fn begin_terminate(&self) -> Option<ExitStatus> {
        let mut inner = self.lock();
        if let Some(status) = self.refresh(&mut inner) {
            return Some(status);
        }
        self.marker("SIGTERM by test");
        let _ = killpg(inner.pid, Signal::SIGTERM);
        if inner.stopped {
            let _ = killpg(inner.pid, Signal::SIGCONT);
            inner.stopped = false;
        }
        None
    }

    fn escalate(&self, grace: Duration) -> ExitStatus {
        let mut inner = self.lock();
        if let Some(status) = self.refresh(&mut inner) {
            return status;
        }
        self.marker(&format!("no exit {grace:?} after SIGTERM: SIGKILL by test"));
        self.reap(&mut inner)
    }

    fn not_exited(&self, elapsed: Duration) -> anyhow::Error {
        anyhow!(
            "timed out after {:.1}s waiting for process {} (pid {}) to exit; log {} ends with:\n{}",
            elapsed.as_secs_f64(),
            self.spec.name,
            self.pid(),
            self.log_path.display(),
            self.log_tail(ERROR_TAIL_LINES)
        )
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn marker(&self, text: &str) {
        let _ = log_file::write_marker(&self.log_path, text);
    }

    /// The exit status if the child has exited (reaping it), else `None`.
    fn refresh(&self, inner: &mut Inner) -> Option<ExitStatus> {
        if inner.status.is_some() {
            return inner.status;
        }
        // WNOWAIT: look without reaping, so that the pid (and so the process
        // group id) stays reserved by the zombie while `reap` kills any
        // group members left behind.
        let flags = WaitPidFlag::WEXITED | WaitPidFlag::WNOHANG | WaitPidFlag::WNOWAIT;
        match waitid(Id::Pid(inner.pid), flags) {
            Ok(WaitStatus::StillAlive) => None,
            _ => Some(self.reap(inner)),
        }
    }

    /// SIGKILLs the group, reaps the child and records its status. The
    /// child is either alive or an unreaped zombie here, so the group id
    /// cannot have been reused by an unrelated process.
    fn reap(&self, inner: &mut Inner) -> ExitStatus {
        if let Some(status) = inner.status {
            return status;
        }
        let _ = killpg(inner.pid, Signal::SIGKILL);
        let status = inner.child.wait().unwrap_or_else(|e| {
            // Only if someone else reaped our child; never panic here (Drop).
            self.marker(&format!("cannot reap pid {}: {e}", inner.pid));
            ExitStatus::from_raw(Signal::SIGKILL as i32)
        });
        if let Some(guard) = orphan::global() {
            guard.remove(inner.pid.as_raw());
        }
        inner.status = Some(status);
        inner.stopped = false;
        self.marker(&format!(
            "{} (pid {}) exited: {}",
            self.spec.name,
            inner.pid,
            describe(status)
        ));
        status
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        let mut inner = self.lock();
        if inner.status.is_none() {
            self.marker("SIGKILL on drop");
            self.reap(&mut inner);
        }
    }
}

/// `exit code 3` / `killed by signal 9 (SIGKILL)`.
pub fn describe(status: ExitStatus) -> String {
    match (status.code(), status.signal()) {
        (Some(code), _) => format!("exit code {code}"),
        (None, Some(signal)) => match Signal::try_from(signal) {
            Ok(name) => format!("killed by signal {signal} ({name})"),
            Err(_) => format!("killed by signal {signal}"),
        },
        (None, None) => format!("{status}"),
    }
}

fn pid_of(child: &Child) -> Pid {
    Pid::from_raw(i32::try_from(child.id()).unwrap_or(i32::MAX))
}

fn launch(spec: &ProcessSpec, log_path: &Path, start: u32) -> anyhow::Result<Child> {
    if let Some(ready) = &spec.ready_file {
        ReadyFile::new(ready).remove()?;
    }
    let cwd = spec
        .cwd
        .as_ref()
        .map(|d| format!(" (in {})", d.display()))
        .unwrap_or_default();
    log_file::write_marker(
        log_path,
        &format!(
            "start #{start} of {}: {}{cwd}",
            spec.name,
            spec.command_line()
        ),
    )
    .with_context(|| format!("writing log {}", log_path.display()))?;
    let stdout = log_file::open_append(log_path)?;
    let stderr = stdout.try_clone()?;
    let mut command = Command::new(&spec.program);
    command
        .args(&spec.args)
        .stdin(Stdio::null())
        .stdout(stdout)
        .stderr(stderr)
        .process_group(0);
    for (key, value) in &spec.env {
        match value {
            Some(value) => command.env(key, value),
            None => command.env_remove(key),
        };
    }
    if let Some(dir) = &spec.cwd {
        command.current_dir(dir);
    }
    let child = command
        .spawn()
        .with_context(|| format!("cannot start {}: `{}`{cwd}", spec.name, spec.command_line()))?;
    if let Some(guard) = orphan::global() {
        guard.add(pid_of(&child).as_raw());
    }
    log_file::write_marker(log_path, &format!("{} has pid {}", spec.name, child.id()))?;
    Ok(child)
}
