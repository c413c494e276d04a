//! Ready files: a process binds port 0, then writes a JSON file saying where
//! it listens; the test waits for that file instead of guessing ports or
//! sleeping.

use std::io;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{anyhow, Context};
use serde::de::DeserializeOwned;

use crate::process::{describe, Process};
use crate::wait::{wait_until, wait_until_async, Check};

/// Poll period for ready files.
const POLL: Duration = Duration::from_millis(20);

/// Log lines shown when a wait fails.
const TAIL_LINES: usize = 60;

/// A JSON file some process writes once it is ready.
///
/// Writers should write a temporary file and rename it; a half-written file
/// that does not parse yet is simply polled again.
#[derive(Clone, Debug)]
pub struct ReadyFile {
    path: PathBuf,
}

impl ReadyFile {
    /// The ready file at `path`.
    pub fn new(path: impl Into<PathBuf>) -> ReadyFile {
        ReadyFile { path: path.into() }
    }

    /// Where the file is expected.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Deletes the file if it exists (before a restart).
    pub fn remove(&self) -> anyhow::Result<()> {
        match std::fs::remove_file(&self.path) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(e).with_context(|| format!("removing {}", self.path.display())),
        }
    }

    /// One look: `Ok(None)` if absent, `Err` with the parse error if it
    /// does not parse (yet).
    pub fn try_read<T: DeserializeOwned>(&self) -> anyhow::Result<Option<T>> {
        match std::fs::read(&self.path) {
            Ok(bytes) => serde_json::from_slice(&bytes).map(Some).with_context(|| {
                format!(
                    "{} does not parse as {} (content: {:?})",
                    self.path.display(),
                    std::any::type_name::<T>(),
                    String::from_utf8_lossy(&bytes)
                )
            }),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e).with_context(|| format!("reading {}", self.path.display())),
        }
    }

    /// Waits up to `deadline` (polling every 20 ms) until the file exists and
    /// parses as `T`. With `process`, fails as soon as it exits, and every
    /// error carries its log tail.
    pub fn wait<T: DeserializeOwned>(
        &self,
        process: Option<&Process>,
        deadline: Duration,
    ) -> anyhow::Result<T> {
        wait_until(&self.what(process), deadline, POLL, || self.check(process))
            .map_err(|e| self.with_log(e, process))
    }

    /// Async [`Self::wait`].
    pub async fn wait_async<T: DeserializeOwned>(
        &self,
        process: Option<&Process>,
        deadline: Duration,
    ) -> anyhow::Result<T> {
        let what = self.what(process);
        wait_until_async(&what, deadline, POLL, || async { self.check(process) })
            .await
            .map_err(|e| self.with_log(e, process))
    }

    fn what(&self, process: Option<&Process>) -> String {
        match process {
            Some(p) => format!("ready file {} of {}", self.path.display(), p.name()),
            None => format!("ready file {}", self.path.display()),
        }
    }

    fn check<T: DeserializeOwned>(&self, process: Option<&Process>) -> Check<T> {
        match self.try_read::<T>() {
            Ok(Some(value)) => return Check::Ready(value),
            Ok(None) => {}
            Err(e) => return Check::Pending(format!("{e:#}")),
        }
        if let Some(status) = process.and_then(Process::exit_status) {
            return Check::Fatal(anyhow!(
                "{} (pid {}) exited with {} before writing {}",
                process.map(Process::name).unwrap_or_default(),
                process.map(|p| p.pid().as_raw()).unwrap_or_default(),
                describe(status),
                self.path.display()
            ));
        }
        Check::Pending(format!("{} does not exist yet", self.path.display()))
    }

    fn with_log(&self, error: anyhow::Error, process: Option<&Process>) -> anyhow::Error {
        match process {
            Some(p) => anyhow!(
                "{error:#}\n---- log of {} ({}), last {TAIL_LINES} lines ----\n{}",
                p.name(),
                p.log_path().display(),
                p.log_tail(TAIL_LINES)
            ),
            None => error,
        }
    }
}
