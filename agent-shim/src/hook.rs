//! Redirect hooks: how a directive reaches the agent.
//!
//! The shim does not speak OpAMP to the agent; a [`RedirectHook`] tells the
//! agent (or its supervisor) the new endpoint and token. Three are built in:
//!
//! - [`FileHook`]: writes the directive to a file, atomically (temp file,
//!   fsync, rename, fsync of the directory; mode 0600), in one of two
//!   [`FileFormat`]s, then optionally runs a reload command;
//! - [`CommandHook`]: runs a command with the directive in `TERN_*`
//!   environment variables;
//! - [`CallbackHook`]: calls an async closure, for embedding the shim as a
//!   library.
//!
//! A hook's success means "the agent was told", not "the agent is
//! attached": verifying the attachment, and reporting it to the tracker, is
//! the session's job. Hooks must not decide whether to apply a directive (the
//! tracker does) and must never log or return the token: logs carry the
//! agent, epoch and target region only, and command output and callback
//! errors are scrubbed of the token.
//!
//! # The directive file
//!
//! `FileFormat::Json` (one object, UTF-8, newline-terminated):
//!
//! ```json
//! {
//!   "format": "tern-directive/v1",
//!   "epoch": 12,
//!   "agent_id": "7f3a…",
//!   "kind": "redirect",
//!   "target_region": "us",
//!   "endpoint": "wss://us.example/v1/opamp",
//!   "token": "…",
//!   "issued_at_ms": 1767225600000,
//!   "expires_at_ms": 1767229200000
//! }
//! ```
//!
//! `kind` is `redirect` or `return_home`; times are ms since the Unix epoch.
//!
//! `FileFormat::Env` (one `KEY=value` per line, no quoting, no spaces around
//! `=`), readable by systemd's `EnvironmentFile=` and by a POSIX shell's `.`:
//!
//! ```text
//! TERN_FORMAT=tern-directive/v1
//! TERN_EPOCH=12
//! TERN_AGENT_ID=7f3a…
//! TERN_KIND=redirect
//! TERN_TARGET_REGION=us
//! TERN_ENDPOINT=wss://us.example/v1/opamp
//! TERN_TOKEN=…
//! TERN_ISSUED_AT_MS=1767225600000
//! TERN_EXPIRES_AT_MS=1767229200000
//! ```
//!
//! Because values are unquoted, the env format refuses (with
//! [`HookError::Unrepresentable`], naming the field, never the value) a value
//! that is empty or holds anything outside printable ASCII or any of
//! `` " ' \ $ ` `` and space; use the JSON format for such values.
//!
//! The reload command (argv, no shell) runs after the file is in place, with
//! `TERN_DIRECTIVE_FILE` (the file's path), `TERN_EPOCH` and
//! `TERN_TARGET_REGION` added to its environment; not the token.

use std::future::Future;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;

use tracing::Instrument;

use crate::command::{self, CommandError, CommandRun, CommandSpec};
use crate::directive::Directive;
use crate::persist::{write_atomic, SECRET_FILE_MODE};

/// The value of `format` (JSON) and `TERN_FORMAT` (env) in a directive file.
pub const DIRECTIVE_FILE_FORMAT: &str = "tern-directive/v1";

/// The future a hook returns.
pub type HookFuture<'a> = Pin<Box<dyn Future<Output = Result<HookReport, HookError>> + Send + 'a>>;

/// What a successful hook did.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct HookReport {
    /// The file written, if the hook writes one.
    pub file: Option<PathBuf>,
    /// The command run (reload or hook command), if any, and how it ended
    /// (always successfully here: a failing command is a `HookError`).
    pub command: Option<CommandRun>,
}

/// Why a hook failed. Never contains the token.
#[derive(Debug, thiserror::Error)]
pub enum HookError {
    /// The directive file could not be written; the old file is intact.
    #[error("writing the directive file {path}: {source}")]
    Write {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// A directive field cannot be written in the chosen file format.
    #[error("directive field {field} cannot be written in the env format (use the JSON format)")]
    Unrepresentable {
        /// The field's name.
        field: &'static str,
    },
    /// The command could not be run, or timed out.
    #[error(transparent)]
    Command(#[from] CommandError),
    /// The command ran and exited unsuccessfully.
    #[error("{program:?} failed with exit code {exit_code:?}; stderr tail: {stderr_tail:?}")]
    CommandFailed {
        /// `argv[0]`.
        program: String,
        /// Its exit code (`None`: killed by a signal).
        exit_code: Option<i32>,
        /// The end of its stderr, token scrubbed.
        stderr_tail: String,
    },
    /// The embedding callback returned an error (message scrubbed of the
    /// token).
    #[error("callback failed: {0}")]
    Callback(String),
}

/// Tells the agent about a directive. Implementations must be safe to call
/// again with the same directive (a retry after a failure or a restart).
pub trait RedirectHook: Send + Sync {
    /// Applies `directive`: on `Ok`, the agent has been told.
    fn apply<'a>(&'a self, directive: &'a Directive) -> HookFuture<'a>;
}

/// The layout of the directive file (see the module docs).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum FileFormat {
    /// One JSON object.
    #[default]
    Json,
    /// `KEY=value` lines.
    Env,
}

/// Writes the directive to a file atomically, then runs an optional reload
/// command.
#[derive(Debug, Clone)]
pub struct FileHook {
    path: PathBuf,
    format: FileFormat,
    reload: Option<CommandSpec>,
}

impl FileHook {
    /// A hook writing `path` in `format`, with no reload command.
    pub fn new(path: impl Into<PathBuf>, format: FileFormat) -> Self {
        FileHook {
            path: path.into(),
            format,
            reload: None,
        }
    }

    /// Runs `reload` after each write; the hook fails if it fails.
    pub fn with_reload(mut self, reload: CommandSpec) -> Self {
        self.reload = Some(reload);
        self
    }

    /// The file this hook writes.
    pub fn path(&self) -> &Path {
        &self.path
    }

    async fn run(&self, directive: &Directive) -> Result<HookReport, HookError> {
        let bytes = render_directive_file(directive, self.format)?;
        let path = self.path.clone();
        let written =
            tokio::task::spawn_blocking(move || write_atomic(&path, &bytes, SECRET_FILE_MODE))
                .await
                .unwrap_or_else(|join| Err(std::io::Error::other(join.to_string())));
        written.map_err(|source| HookError::Write {
            path: self.path.clone(),
            source,
        })?;
        tracing::info!(file = %self.path.display(), "directive file written");
        let mut report = HookReport {
            file: Some(self.path.clone()),
            command: None,
        };
        if let Some(reload) = &self.reload {
            let file = self.path.to_string_lossy();
            let epoch = directive.epoch.to_string();
            let env = [
                ("TERN_DIRECTIVE_FILE", file.as_ref()),
                ("TERN_EPOCH", epoch.as_str()),
                ("TERN_TARGET_REGION", directive.target_region.as_str()),
            ];
            let run = command::run(reload, &env, &directive.token).await?;
            report.command = Some(checked(reload, run)?);
            tracing::info!("reload command succeeded");
        }
        Ok(report)
    }
}

impl RedirectHook for FileHook {
    fn apply<'a>(&'a self, directive: &'a Directive) -> HookFuture<'a> {
        Box::pin(self.run(directive).instrument(hook_span("file", directive)))
    }
}

/// Runs a command with the directive in its environment: `TERN_TARGET_REGION`,
/// `TERN_ENDPOINT`, `TERN_TOKEN`, `TERN_EPOCH`, and also `TERN_AGENT_ID`,
/// `TERN_KIND` (`redirect` or `return_home`) and `TERN_EXPIRES_AT_MS`, added
/// to the shim's own environment. Exit status 0 is success.
#[derive(Debug, Clone)]
pub struct CommandHook {
    spec: CommandSpec,
}

impl CommandHook {
    /// A hook running `spec`.
    pub fn new(spec: CommandSpec) -> Self {
        CommandHook { spec }
    }

    async fn run(&self, directive: &Directive) -> Result<HookReport, HookError> {
        let epoch = directive.epoch.to_string();
        let expires = directive.expires_at_ms.to_string();
        let env = [
            ("TERN_TARGET_REGION", directive.target_region.as_str()),
            ("TERN_ENDPOINT", directive.endpoint.as_str()),
            ("TERN_TOKEN", directive.token.as_str()),
            ("TERN_EPOCH", epoch.as_str()),
            ("TERN_AGENT_ID", directive.agent_id.as_str()),
            ("TERN_KIND", directive.kind.as_str()),
            ("TERN_EXPIRES_AT_MS", expires.as_str()),
        ];
        let run = command::run(&self.spec, &env, &directive.token).await?;
        let run = checked(&self.spec, run)?;
        tracing::info!("hook command succeeded");
        Ok(HookReport {
            file: None,
            command: Some(run),
        })
    }
}

impl RedirectHook for CommandHook {
    fn apply<'a>(&'a self, directive: &'a Directive) -> HookFuture<'a> {
        Box::pin(
            self.run(directive)
                .instrument(hook_span("command", directive)),
        )
    }
}

/// The error type a [`CallbackHook`]'s closure returns.
pub type CallbackError = Box<dyn std::error::Error + Send + Sync>;

/// The future a [`CallbackHook`]'s closure returns.
pub type CallbackFuture = Pin<Box<dyn Future<Output = Result<(), CallbackError>> + Send>>;

type Callback = dyn Fn(Directive) -> CallbackFuture + Send + Sync;

/// Calls an async closure with (a copy of) the directive, for programs that
/// embed the shim. The closure's error message is scrubbed of the token.
#[derive(Clone)]
pub struct CallbackHook {
    callback: Arc<Callback>,
}

impl CallbackHook {
    /// A hook calling `callback`.
    pub fn new<F, Fut>(callback: F) -> Self
    where
        F: Fn(Directive) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<(), CallbackError>> + Send + 'static,
    {
        CallbackHook {
            callback: Arc::new(move |d| Box::pin(callback(d)) as CallbackFuture),
        }
    }
}

impl std::fmt::Debug for CallbackHook {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CallbackHook").finish_non_exhaustive()
    }
}

impl RedirectHook for CallbackHook {
    fn apply<'a>(&'a self, directive: &'a Directive) -> HookFuture<'a> {
        Box::pin(async move {
            (self.callback)(directive.clone()).await.map_err(|e| {
                HookError::Callback(command::scrub_str(&e.to_string(), &directive.token))
            })?;
            Ok(HookReport::default())
        })
    }
}

/// The span of one hook run: agent, epoch and target region, never the
/// token.
fn hook_span(hook: &'static str, directive: &Directive) -> tracing::Span {
    tracing::info_span!(
        "shim.hook",
        hook,
        agent = %directive.agent_id,
        epoch = directive.epoch,
        region = %directive.target_region
    )
}

/// A finished command as a hook result: success, or `CommandFailed`.
fn checked(spec: &CommandSpec, run: CommandRun) -> Result<CommandRun, HookError> {
    if run.success {
        return Ok(run);
    }
    Err(HookError::CommandFailed {
        program: spec.argv.first().cloned().unwrap_or_default(),
        exit_code: run.exit_code,
        stderr_tail: run.stderr_tail,
    })
}

/// The directive file's bytes in `format`.
pub fn render_directive_file(
    directive: &Directive,
    format: FileFormat,
) -> Result<Vec<u8>, HookError> {
    match format {
        FileFormat::Json => {
            let value = serde_json::json!({
                "format": DIRECTIVE_FILE_FORMAT,
                "epoch": directive.epoch,
                "agent_id": directive.agent_id,
                "kind": directive.kind.as_str(),
                "target_region": directive.target_region,
                "endpoint": directive.endpoint,
                "token": directive.token,
                "issued_at_ms": directive.issued_at_ms,
                "expires_at_ms": directive.expires_at_ms,
            });
            Ok(format!("{value:#}\n").into_bytes())
        }
        FileFormat::Env => {
            let epoch = directive.epoch.to_string();
            let issued = directive.issued_at_ms.to_string();
            let expires = directive.expires_at_ms.to_string();
            let lines: [(&'static str, &str); 9] = [
                ("TERN_FORMAT", DIRECTIVE_FILE_FORMAT),
                ("TERN_EPOCH", &epoch),
                ("TERN_AGENT_ID", &directive.agent_id),
                ("TERN_KIND", directive.kind.as_str()),
                ("TERN_TARGET_REGION", &directive.target_region),
                ("TERN_ENDPOINT", &directive.endpoint),
                ("TERN_TOKEN", &directive.token),
                ("TERN_ISSUED_AT_MS", &issued),
                ("TERN_EXPIRES_AT_MS", &expires),
            ];
            let mut text = String::new();
            for (key, value) in lines {
                if !env_safe(value) {
                    return Err(HookError::Unrepresentable { field: key });
                }
                text.push_str(key);
                text.push('=');
                text.push_str(value);
                text.push('\n');
            }
            Ok(text.into_bytes())
        }
    }
}

/// A value that needs no quoting in systemd's `EnvironmentFile=` or a POSIX
/// shell: non-empty printable ASCII without space, quotes, backslash, `$` or
/// backtick.
fn env_safe(value: &str) -> bool {
    !value.is_empty()
        && value
            .bytes()
            .all(|b| b.is_ascii_graphic() && !matches!(b, b'"' | b'\'' | b'\\' | b'$' | b'`'))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::directive::DirectiveKind;

    fn directive() -> Directive {
        Directive {
            epoch: 12,
            agent_id: "agent-1".into(),
            kind: DirectiveKind::ReturnHome,
            target_region: "eu".into(),
            endpoint: "wss://eu.example/v1/opamp?x=1&y=2".into(),
            base_url: "https://eu.example".into(),
            token: "tok.en_-~+/=".into(),
            issued_at_ms: 1,
            expires_at_ms: 2,
        }
    }

    // Property: the env format writes every field as KEY=value in the
    // documented order, and refuses (naming only the field) a value that
    // would need quoting.
    #[test]
    fn env_format() {
        let text = String::from_utf8(
            render_directive_file(&directive(), FileFormat::Env).expect("render"),
        )
        .expect("utf8");
        assert_eq!(
            text,
            "TERN_FORMAT=tern-directive/v1\nTERN_EPOCH=12\nTERN_AGENT_ID=agent-1\n\
             TERN_KIND=return_home\nTERN_TARGET_REGION=eu\n\
             TERN_ENDPOINT=wss://eu.example/v1/opamp?x=1&y=2\nTERN_TOKEN=tok.en_-~+/=\n\
             TERN_ISSUED_AT_MS=1\nTERN_EXPIRES_AT_MS=2\n"
        );
        let mut bad = directive();
        bad.token = "has space secret".into();
        let err = render_directive_file(&bad, FileFormat::Env).expect_err("must refuse");
        assert!(matches!(
            err,
            HookError::Unrepresentable {
                field: "TERN_TOKEN"
            }
        ));
        assert!(!err.to_string().contains("secret"));
        bad.token = "line\nbreak".into();
        assert!(render_directive_file(&bad, FileFormat::Env).is_err());
    }

    // Property: the JSON format is one object with every field and the
    // format marker.
    #[test]
    fn json_format() {
        let bytes = render_directive_file(&directive(), FileFormat::Json).expect("render");
        let v: serde_json::Value = serde_json::from_slice(&bytes).expect("json");
        assert_eq!(v["format"], DIRECTIVE_FILE_FORMAT);
        assert_eq!(v["epoch"], 12);
        assert_eq!(v["kind"], "return_home");
        assert_eq!(v["token"], "tok.en_-~+/=");
        assert_eq!(v["endpoint"], "wss://eu.example/v1/opamp?x=1&y=2");
        assert_eq!(v["expires_at_ms"], 2);
    }
}
