//! Running a hook's external command: argv without a shell, a timeout, the
//! exit status and the tail of stderr, with the token scrubbed from it.
//!
//! This module owns process handling for the hooks (`FileHook`'s reload
//! command, `CommandHook`'s command). It must not interpret the directive,
//! invoke a shell, or let a token reach its output: whatever the command
//! prints on stderr is scrubbed of the secret before it is kept, even when
//! the kept tail cuts through an occurrence of it.

use std::process::Stdio;
use std::time::{Duration, Instant};

use tokio::io::AsyncReadExt;
use tokio::process::Command;

/// How many bytes of stderr a [`CommandRun`] keeps (the end of it).
pub const STDERR_TAIL_BYTES: usize = 4096;

/// Replaces a secret in command output.
const REDACTED: &str = "<redacted>";

/// A command to run: program and arguments, no shell.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CommandSpec {
    /// `argv[0]` (looked up in `PATH` if it has no slash) and its arguments.
    pub argv: Vec<String>,
    /// The command is killed when it has not exited after this long.
    pub timeout: Duration,
}

impl CommandSpec {
    /// A command from its argv and timeout.
    pub fn new(argv: Vec<String>, timeout: Duration) -> Self {
        CommandSpec { argv, timeout }
    }
}

/// How a command ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CommandRun {
    /// The exit code; `None` when killed by a signal.
    pub exit_code: Option<i32>,
    /// True when it exited with status 0.
    pub success: bool,
    /// The last [`STDERR_TAIL_BYTES`] of its stderr (lossy UTF-8), with the
    /// token replaced by `<redacted>`.
    pub stderr_tail: String,
    /// How long it ran.
    pub elapsed: Duration,
}

/// Why a command did not run to an exit status.
#[derive(Debug, thiserror::Error)]
pub enum CommandError {
    /// The argv is empty.
    #[error("empty command")]
    Empty,
    /// It could not be started.
    #[error("cannot start {program:?}: {source}")]
    Spawn {
        /// `argv[0]`.
        program: String,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// Waiting for it or reading its stderr failed.
    #[error("waiting for {program:?}: {source}")]
    Wait {
        /// `argv[0]`.
        program: String,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// It did not exit within its timeout and was killed.
    #[error(
        "{program:?} did not exit within {timeout:?} and was killed; stderr tail: {stderr_tail:?}"
    )]
    Timeout {
        /// `argv[0]`.
        program: String,
        /// The timeout.
        timeout: Duration,
        /// Its stderr so far, scrubbed.
        stderr_tail: String,
    },
}

/// Runs `spec` with the extra environment `env` (added to the shim's own),
/// stdin and stdout null, stderr captured. `secret` (if non-empty) is
/// scrubbed from the captured stderr. A command that does not exit within
/// its timeout is killed (only the process itself: a reload command must not
/// leave children holding its stderr, they are not waited for).
pub async fn run(
    spec: &CommandSpec,
    env: &[(&str, &str)],
    secret: &str,
) -> Result<CommandRun, CommandError> {
    let Some(program) = spec.argv.first() else {
        return Err(CommandError::Empty);
    };
    let mut command = Command::new(program);
    command
        .args(&spec.argv[1..])
        .envs(env.iter().copied())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    let started = Instant::now();
    let deadline = tokio::time::Instant::now() + spec.timeout;
    let mut child = command.spawn().map_err(|source| CommandError::Spawn {
        program: program.clone(),
        source,
    })?;
    let mut stderr = child.stderr.take();
    let mut tail = Tail::new(STDERR_TAIL_BYTES.saturating_add(secret.len()));
    let mut chunk = vec![0u8; 8192];
    let mut status = None;
    let timer = tokio::time::sleep_until(deadline);
    tokio::pin!(timer);
    let wait_error = |source| CommandError::Wait {
        program: program.clone(),
        source,
    };
    loop {
        if status.is_some() && stderr.is_none() {
            break;
        }
        tokio::select! {
            exit = child.wait(), if status.is_none() => {
                status = Some(exit.map_err(wait_error)?);
            }
            read = read_some(&mut stderr, &mut chunk), if stderr.is_some() => {
                match read {
                    Ok(0) | Err(_) => stderr = None,
                    Ok(n) => tail.push(&chunk[..n]),
                }
            }
            () = &mut timer => {
                if status.is_some() {
                    // Exited, but something still holds its stderr open.
                    break;
                }
                let _ = child.start_kill();
                let _ = child.wait().await;
                return Err(CommandError::Timeout {
                    program: program.clone(),
                    timeout: spec.timeout,
                    stderr_tail: tail.finish(secret, stderr.is_none()),
                });
            }
        }
    }
    let eof = stderr.is_none();
    let Some(status) = status else {
        // Unreachable: the loop ends only with a status.
        return Err(wait_error(std::io::Error::other("no exit status")));
    };
    Ok(CommandRun {
        exit_code: status.code(),
        success: status.success(),
        stderr_tail: tail.finish(secret, eof),
        elapsed: started.elapsed(),
    })
}

async fn read_some(
    stderr: &mut Option<tokio::process::ChildStderr>,
    buf: &mut [u8],
) -> std::io::Result<usize> {
    match stderr {
        Some(s) => s.read(buf).await,
        None => Ok(0),
    }
}

/// The last bytes of a stream, remembering whether earlier bytes were
/// dropped.
struct Tail {
    cap: usize,
    bytes: Vec<u8>,
    dropped: bool,
}

impl Tail {
    fn new(cap: usize) -> Self {
        Tail {
            cap,
            bytes: Vec::new(),
            dropped: false,
        }
    }

    fn push(&mut self, data: &[u8]) {
        self.bytes.extend_from_slice(data);
        if self.bytes.len() > self.cap {
            let excess = self.bytes.len() - self.cap;
            self.bytes.drain(..excess);
            self.dropped = true;
        }
    }

    /// The kept tail, scrubbed of `secret`, at most [`STDERR_TAIL_BYTES`].
    /// `complete`: the stream ended (no secret can be cut at the end).
    fn finish(self, secret: &str, complete: bool) -> String {
        let scrubbed = scrub(&self.bytes, secret.as_bytes(), self.dropped, !complete);
        let start = scrubbed.len().saturating_sub(STDERR_TAIL_BYTES);
        String::from_utf8_lossy(&scrubbed[start..]).into_owned()
    }
}

/// Replaces every occurrence of `secret` in `bytes` with `<redacted>`. When
/// `cut_front` (bytes before these were dropped) a proper suffix of the
/// secret at the very start is replaced too; when `cut_back` (the stream was
/// cut off) so is a proper prefix at the very end.
fn scrub(bytes: &[u8], secret: &[u8], cut_front: bool, cut_back: bool) -> Vec<u8> {
    if secret.is_empty() {
        return bytes.to_vec();
    }
    let mut rest = bytes;
    let mut out = Vec::with_capacity(bytes.len());
    if cut_front {
        if let Some(k) = (1..secret.len())
            .rev()
            .find(|&k| rest.starts_with(&secret[secret.len() - k..]))
        {
            out.extend_from_slice(REDACTED.as_bytes());
            rest = &rest[k..];
        }
    }
    let mut back = Vec::new();
    if cut_back {
        if let Some(k) = (1..secret.len())
            .rev()
            .find(|&k| k <= rest.len() && rest.ends_with(&secret[..k]))
        {
            back.extend_from_slice(REDACTED.as_bytes());
            rest = &rest[..rest.len() - k];
        }
    }
    let mut i = 0;
    while i < rest.len() {
        if rest[i..].starts_with(secret) {
            out.extend_from_slice(REDACTED.as_bytes());
            i += secret.len();
        } else {
            out.push(rest[i]);
            i += 1;
        }
    }
    out.extend_from_slice(&back);
    out
}

/// Replaces every occurrence of `secret` in `text` (for error messages that
/// came from outside, e.g. an embedding callback).
pub(crate) fn scrub_str(text: &str, secret: &str) -> String {
    if secret.is_empty() {
        text.to_string()
    } else {
        text.replace(secret, REDACTED)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // Property: every complete occurrence of the secret is replaced, and a
    // secret cut at either edge of the kept window leaves no fragment.
    #[test]
    fn scrub_removes_whole_and_cut_secrets() {
        let s = b"TOPSECRET";
        assert_eq!(
            scrub(b"a TOPSECRET b TOPSECRET", s, false, false),
            b"a <redacted> b <redacted>".to_vec()
        );
        assert_eq!(
            scrub(b"SECRET tail", s, true, false),
            b"<redacted> tail".to_vec()
        );
        assert_eq!(
            scrub(b"SECRET tail", s, false, false),
            b"SECRET tail".to_vec(),
            "nothing was cut at the front: not a fragment"
        );
        assert_eq!(
            scrub(b"head TOPSE", s, false, true),
            b"head <redacted>".to_vec()
        );
        assert_eq!(scrub(b"abc", b"", true, true), b"abc".to_vec());
    }

    // Property: the tail keeps the end of a long stream, at most
    // STDERR_TAIL_BYTES, and wherever the window's edge cuts through an
    // occurrence of the secret, no fragment of it is left.
    #[test]
    fn tail_keeps_end_without_secret_fragments() {
        let secret = "Q".repeat(50) + "ecret-token-z";
        for pre in 0..(2 * secret.len()) {
            let mut tail = Tail::new(STDERR_TAIL_BYTES + secret.len());
            let mut stream = "x".repeat(10_000 + pre);
            for _ in 0..200 {
                stream.push_str(&secret);
                stream.push('\n');
            }
            for chunk in stream.as_bytes().chunks(7) {
                tail.push(chunk);
            }
            let out = tail.finish(&secret, true);
            assert!(out.len() <= STDERR_TAIL_BYTES);
            assert!(out.ends_with("<redacted>\n"), "{out}");
            let left = out.replace("<redacted>", "");
            assert!(
                left.chars().all(|c| c == '\n' || c == 'x'),
                "a fragment of the secret leaked at offset {pre}: {left:?}"
            );
        }
        let mut cut = Tail::new(STDERR_TAIL_BYTES + secret.len());
        cut.push(format!("died printing {}", &secret[..20]).as_bytes());
        assert_eq!(cut.finish(&secret, false), "died printing <redacted>");
    }
}
