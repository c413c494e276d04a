//! The per-test harness: seed, temp dir, addresses, and the failure report
//! (seed, reproduce command, kept dir, log tails) printed when a test fails.

use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use anyhow::{bail, Context};
use rand::rngs::StdRng;

use crate::log_file;
use crate::loopback::LoopbackAllocator;
use crate::process::{Process, ProcessSpec};
use crate::seed::Seed;

/// Environment variable: `1` keeps every test directory, passed or failed.
pub const KEEP_DIRS_ENV: &str = "TERN_KEEP_TEST_DIRS";

/// Lines of each process log printed when a test fails.
pub const FAILURE_TAIL_LINES: usize = 200;

/// Everything one multi-process test needs besides its processes.
///
/// Create it first in the test and let it drop last (declare it before the
/// processes and relays). On drop, if the thread is panicking (a failed
/// assertion or `unwrap`), it prints the seed line with the reproduce
/// command, keeps the temp dir and prints its path, and prints the last
/// [`FAILURE_TAIL_LINES`] lines of every process log it knows of. Otherwise
/// the dir is deleted, unless `TERN_KEEP_TEST_DIRS=1`. Tests that return a
/// `Result` instead of panicking should end with [`Harness::conclude`].
#[derive(Debug)]
pub struct Harness {
    test_name: String,
    seed: Seed,
    dir: PathBuf,
    keep_always: bool,
    loopback: LoopbackAllocator,
    logs: Mutex<Vec<(String, PathBuf)>>,
    reported: Mutex<bool>,
}

impl Harness {
    /// Sets up test `test_name` (the `#[test]` function's name, used in the
    /// reproduce command): seed from `TERN_TEST_SEED` or random (printed),
    /// a fresh temp dir, an address block. Panics if the dir cannot be made.
    pub fn new(test_name: &str) -> Harness {
        let seed = Seed::for_test(test_name);
        let dir = tempfile::Builder::new()
            .prefix(&format!("tern-{test_name}-"))
            .tempdir()
            .unwrap_or_else(|e| panic!("cannot create a temp dir for {test_name}: {e}"))
            .keep();
        let keep_always = std::env::var(KEEP_DIRS_ENV).is_ok_and(|v| v == "1");
        eprintln!("[tern-tests] test dir: {}", dir.display());
        Harness {
            test_name: test_name.to_owned(),
            loopback: LoopbackAllocator::new(seed.value(), test_name),
            seed,
            dir,
            keep_always,
            logs: Mutex::new(Vec::new()),
            reported: Mutex::new(false),
        }
    }

    /// The test's name.
    pub fn test_name(&self) -> &str {
        &self.test_name
    }

    /// The test's seed.
    pub fn seed(&self) -> &Seed {
        &self.seed
    }

    /// `self.seed().rng()`: the seeded generator.
    pub fn rng(&self) -> StdRng {
        self.seed.rng()
    }

    /// The test's temp dir.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// `dir/relative`, creating the parent directories.
    pub fn path(&self, relative: impl AsRef<Path>) -> PathBuf {
        let path = self.dir.join(relative);
        if let Some(parent) = path.parent() {
            let _ = std::fs::create_dir_all(parent);
        }
        path
    }

    /// A fresh loopback address for this test (`127.a.b.c`).
    pub fn next_ip(&self) -> IpAddr {
        self.loopback.next_ip()
    }

    /// The address allocator.
    pub fn loopback(&self) -> &LoopbackAllocator {
        &self.loopback
    }

    /// Starts `spec` with its log at `dir/logs/<name>.log` (its working
    /// directory defaults to the test dir) and registers the log for the
    /// failure report. Names must be unique within the test.
    pub fn spawn(&self, mut spec: ProcessSpec) -> anyhow::Result<Process> {
        let log = self.dir.join("logs").join(format!("{}.log", spec.name()));
        if lock(&self.logs).iter().any(|(name, _)| name == spec.name()) {
            bail!(
                "a process named {} already exists in this test",
                spec.name()
            );
        }
        spec.set_default_cwd(&self.dir);
        let name = spec.name().to_owned();
        let process = Process::spawn(spec, &log)
            .with_context(|| format!("test {} starting {name}", self.test_name))?;
        self.register_log(&name, &log);
        Ok(process)
    }

    /// Adds a log file to the failure report (for processes not started
    /// through [`Harness::spawn`]).
    pub fn register_log(&self, name: &str, path: &Path) {
        lock(&self.logs).push((name.to_owned(), path.to_path_buf()));
    }

    /// The failure report: seed line, dir, and each log's tail.
    pub fn failure_report(&self) -> String {
        let mut out = format!(
            "\n==================== tern-tests: `{}` FAILED ====================\n{}\n\
             test dir kept: {}\n",
            self.test_name,
            self.seed.banner(),
            self.dir.display()
        );
        for (name, path) in lock(&self.logs).iter() {
            out.push_str(&format!(
                "---- log of {name} ({}), last {FAILURE_TAIL_LINES} lines ----\n",
                path.display()
            ));
            out.push_str(&log_file::tail(path, FAILURE_TAIL_LINES));
        }
        out.push_str(&format!(
            "==================== end of report; reproduce: {} ====================\n",
            self.seed.reproduce_command()
        ));
        out
    }

    /// Runs one test body under a new harness named `name`, prints its
    /// wall time tagged `[suite]`, and fails the test (with the harness's
    /// failure report) when the body returns an error.
    pub fn run(suite: &str, name: &str, body: impl FnOnce(&Harness) -> anyhow::Result<()>) {
        let h = Harness::new(name);
        let started = std::time::Instant::now();
        let outcome = body(&h);
        eprintln!(
            "[{suite}] {name}: wall time {:.1}s",
            started.elapsed().as_secs_f64()
        );
        if let Err(e) = h.conclude(outcome) {
            panic!("test failed: {e:?}");
        }
    }

    /// For tests returning `Result`: on `Err`, prints the failure report
    /// and keeps the dir (as a panic would); returns `outcome` unchanged.
    pub fn conclude<T>(&self, outcome: anyhow::Result<T>) -> anyhow::Result<T> {
        if outcome.is_err() {
            self.report_failure();
        }
        outcome
    }

    fn report_failure(&self) {
        let mut reported = lock(&self.reported);
        if !*reported {
            *reported = true;
            eprintln!("{}", self.failure_report());
        }
    }
}

impl Drop for Harness {
    fn drop(&mut self) {
        if std::thread::panicking() {
            self.report_failure();
        }
        let failed = *lock(&self.reported);
        if failed || self.keep_always {
            eprintln!("[tern-tests] kept test dir: {}", self.dir.display());
        } else {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|e| e.into_inner())
}
