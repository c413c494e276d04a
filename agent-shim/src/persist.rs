//! Durable files: the atomic write discipline, and the tracker's state file.
//!
//! [`write_atomic`] replaces a file so that a reader (or a crash) sees either
//! the old complete content or the new complete content, never a partial
//! file: write a temporary file in the same directory, fsync it, rename it
//! over the target, fsync the directory. The tracker's state file
//! ([`save`] / [`load`] / [`load_or_new`]) uses it, so epoch fencing survives
//! a restart or a power loss, and so does the file hook.
//!
//! This module only reads and writes files; it decides nothing (the tracker
//! does) and never logs file contents (the state file holds a token).

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use crate::directive::{Tracker, TrackerError};

/// File mode for files that hold a token (owner read/write only; Unix).
pub const SECRET_FILE_MODE: u32 = 0o600;

/// Why a state file could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum PersistError {
    /// The file system refused.
    #[error("{action} {path}: {source}")]
    Io {
        /// What was being done ("write", "read").
        action: &'static str,
        /// The file.
        path: PathBuf,
        /// The error.
        #[source]
        source: io::Error,
    },
    /// The file's content is not a valid tracker state.
    #[error("state file {path}: {source}")]
    State {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: TrackerError,
    },
    /// The file holds the state of another agent.
    #[error("state file {path} belongs to agent {found:?}, not {expected:?}")]
    OtherAgent {
        /// The file.
        path: PathBuf,
        /// The agent in the file.
        found: String,
        /// The agent this shim runs for.
        expected: String,
    },
}

static TEMP_COUNTER: AtomicU64 = AtomicU64::new(0);

/// Replaces `path` with `bytes` atomically and durably: temp file in the same
/// directory (created with `mode` on Unix, e.g. [`SECRET_FILE_MODE`]), write,
/// fsync, rename over `path`, fsync the directory. On error the temp file is
/// removed and `path` is left as it was.
pub fn write_atomic(path: &Path, bytes: &[u8], mode: u32) -> io::Result<()> {
    let file_name = path.file_name().ok_or_else(|| {
        io::Error::new(
            io::ErrorKind::InvalidInput,
            "the path has no file name to write",
        )
    })?;
    let dir = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let (tmp_path, mut file) = create_temp(&dir, file_name, mode)?;
    let written = file
        .write_all(bytes)
        .and_then(|()| file.sync_all())
        .and_then(|()| {
            drop(file);
            fs::rename(&tmp_path, path)
        });
    if let Err(e) = written {
        let _ = fs::remove_file(&tmp_path);
        return Err(e);
    }
    sync_dir(&dir)
}

/// Creates a new, unique temporary file beside the target.
fn create_temp(dir: &Path, file_name: &std::ffi::OsStr, mode: u32) -> io::Result<(PathBuf, File)> {
    let pid = std::process::id();
    loop {
        let n = TEMP_COUNTER.fetch_add(1, Ordering::Relaxed);
        let mut name = std::ffi::OsString::from(".");
        name.push(file_name);
        name.push(format!(".tmp.{pid}.{n}"));
        let tmp_path = dir.join(name);
        let mut options = OpenOptions::new();
        options.write(true).create_new(true);
        set_mode(&mut options, mode);
        match options.open(&tmp_path) {
            Ok(file) => return Ok((tmp_path, file)),
            // Left over by a crashed process that had the same pid: next name.
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => continue,
            Err(e) => return Err(e),
        }
    }
}

#[cfg(unix)]
fn set_mode(options: &mut OpenOptions, mode: u32) {
    use std::os::unix::fs::OpenOptionsExt;
    options.mode(mode);
}

#[cfg(not(unix))]
fn set_mode(_options: &mut OpenOptions, _mode: u32) {}

/// Makes a rename in `dir` durable.
#[cfg(unix)]
fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

#[cfg(not(unix))]
fn sync_dir(_dir: &Path) -> io::Result<()> {
    Ok(())
}

/// Writes the tracker's state to `path` atomically, mode 0600 (it holds the
/// current directive's token).
pub fn save(path: &Path, tracker: &Tracker) -> Result<(), PersistError> {
    let json = tracker.to_json().map_err(|source| PersistError::State {
        path: path.to_path_buf(),
        source,
    })?;
    write_atomic(path, json.as_bytes(), SECRET_FILE_MODE).map_err(|source| PersistError::Io {
        action: "write",
        path: path.to_path_buf(),
        source,
    })
}

/// Reads the tracker's state from `path`, as after a restart (see
/// [`Tracker::from_json`]). `Ok(None)` when the file does not exist.
pub fn load(path: &Path) -> Result<Option<Tracker>, PersistError> {
    let text = match fs::read_to_string(path) {
        Ok(text) => text,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(source) => {
            return Err(PersistError::Io {
                action: "read",
                path: path.to_path_buf(),
                source,
            })
        }
    };
    Tracker::from_json(&text)
        .map(Some)
        .map_err(|source| PersistError::State {
            path: path.to_path_buf(),
            source,
        })
}

/// The tracker for `agent_id` from `path`, or a new one if the file does not
/// exist. A file of another agent is an error (a misconfiguration: two shims
/// sharing a state file would break each other's fencing).
pub fn load_or_new(path: &Path, agent_id: &str) -> Result<Tracker, PersistError> {
    match load(path)? {
        None => Ok(Tracker::new(agent_id)),
        Some(t) if t.agent_id() == agent_id => Ok(t),
        Some(t) => Err(PersistError::OtherAgent {
            path: path.to_path_buf(),
            found: t.agent_id().to_string(),
            expected: agent_id.to_string(),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // Property: write_atomic replaces the content, leaves no temp file behind,
    // and creates the file with the requested mode.
    #[test]
    fn replaces_and_cleans_up() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("f.json");
        write_atomic(&path, b"one", SECRET_FILE_MODE).expect("write");
        write_atomic(&path, b"two", SECRET_FILE_MODE).expect("write");
        assert_eq!(fs::read(&path).expect("read"), b"two");
        let names: Vec<_> = fs::read_dir(dir.path())
            .expect("ls")
            .map(|e| e.expect("entry").file_name())
            .collect();
        assert_eq!(names, vec![std::ffi::OsString::from("f.json")]);
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = fs::metadata(&path).expect("meta").permissions().mode();
            assert_eq!(mode & 0o777, SECRET_FILE_MODE);
        }
    }

    // Property: a failed write (missing directory) leaves nothing behind and
    // reports the error.
    #[test]
    fn failure_reports_error() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("missing").join("f.json");
        assert!(write_atomic(&path, b"x", SECRET_FILE_MODE).is_err());
        assert!(!path.exists());
    }
}
