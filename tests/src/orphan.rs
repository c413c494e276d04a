//! The orphan guard: kills the process groups of our children if the test
//! process itself dies without running destructors (SIGKILL, Ctrl-C, a
//! runner's timeout).
//!
//! `Drop` of [`crate::Process`] covers panics. For the rest, one small `sh`
//! watchdog per test process, in its own process group (so Ctrl-C does not
//! reach it), reads `add <pgid>` / `del <pgid>` lines on its stdin; when the
//! pipe closes, because this process exited or died, it SIGKILLs every group
//! still registered. It needs no `unsafe` (no `pre_exec`/`PR_SET_PDEATHSIG`).
//! If `sh` is missing the guard is disabled and only `Drop` protects.

use std::io::Write;
use std::os::unix::process::CommandExt;
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::{Mutex, OnceLock};

const SCRIPT: &str = r#"
pgs=" "
while read -r op pg; do
  case "$op" in
    add) pgs="$pgs$pg " ;;
    del) new=" "; for p in $pgs; do [ "$p" = "$pg" ] || new="$new$p "; done; pgs="$new" ;;
  esac
done
for p in $pgs; do kill -s KILL -- "-$p" 2>/dev/null; done
"#;

/// A watchdog process and the write end of its command pipe.
pub(crate) struct OrphanGuard {
    stdin: Mutex<Option<ChildStdin>>,
    /// Only reaped by tests; the process-wide watchdog outlives us.
    #[cfg_attr(not(test), allow(dead_code))]
    child: Mutex<Option<Child>>,
}

impl OrphanGuard {
    /// Starts a watchdog; `None` if it cannot be started.
    pub(crate) fn start() -> Option<OrphanGuard> {
        let mut child = Command::new("sh")
            .arg("-c")
            .arg(SCRIPT)
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .process_group(0)
            .spawn()
            .map_err(|e| eprintln!("[tern-tests] orphan guard disabled: cannot start sh: {e}"))
            .ok()?;
        let stdin = child.stdin.take();
        Some(OrphanGuard {
            stdin: Mutex::new(stdin),
            child: Mutex::new(Some(child)),
        })
    }

    /// From now on, kill group `pgid` if this process dies.
    pub(crate) fn add(&self, pgid: i32) {
        self.send(&format!("add {pgid}\n"));
    }

    /// Group `pgid` is gone (reaped); forget it.
    pub(crate) fn remove(&self, pgid: i32) {
        self.send(&format!("del {pgid}\n"));
    }

    fn send(&self, line: &str) {
        let mut stdin = self.stdin.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(pipe) = stdin.as_mut() {
            if pipe.write_all(line.as_bytes()).is_err() {
                // The watchdog is gone; nothing more it can do for us.
                *stdin = None;
            }
        }
    }

    /// Closes the pipe (the watchdog kills what is registered and exits) and
    /// reaps the watchdog. The process-wide guard never does this.
    #[cfg(test)]
    pub(crate) fn close_and_wait(&self) {
        self.stdin.lock().unwrap_or_else(|e| e.into_inner()).take();
        if let Some(mut child) = self.child.lock().unwrap_or_else(|e| e.into_inner()).take() {
            let _ = child.wait();
        }
    }
}

/// The process-wide guard, started on first use.
pub(crate) fn global() -> Option<&'static OrphanGuard> {
    static GUARD: OnceLock<Option<OrphanGuard>> = OnceLock::new();
    GUARD.get_or_init(OrphanGuard::start).as_ref()
}

#[cfg(test)]
mod tests {
    use super::*;
    use nix::sys::signal::kill;
    use nix::unistd::Pid;

    // Property: when the guard's pipe closes (as when the test process dies),
    // every still-registered process group is killed, unregistered ones are not.
    #[test]
    fn closing_the_pipe_kills_registered_groups() {
        let guard = OrphanGuard::start().expect("sh is available");
        let spawn = || {
            Command::new("sleep")
                .arg("30")
                .process_group(0)
                .spawn()
                .unwrap()
        };
        let mut doomed = spawn();
        let mut spared = spawn();
        let doomed_pid = i32::try_from(doomed.id()).unwrap();
        let spared_pid = i32::try_from(spared.id()).unwrap();
        guard.add(doomed_pid);
        guard.add(spared_pid);
        guard.remove(spared_pid);
        guard.close_and_wait();
        let status = doomed.wait().unwrap();
        assert!(!status.success(), "killed by the guard: {status:?}");
        assert!(
            kill(Pid::from_raw(spared_pid), None).is_ok(),
            "spared still runs"
        );
        spared.kill().unwrap();
        spared.wait().unwrap();
    }
}
