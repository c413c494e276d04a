//! The Tern agent shim, as a library: what runs beside one agent and
//! follows the coordinators' failover and hand-back directives.
//!
//! It owns the pure directive tracker (epoch fencing, deduplication,
//! conflict detection: [`Tracker`]), the durable state file of that tracker
//! ([`save`], [`load`], [`load_or_new`], [`write_atomic`]), the redirect
//! hooks that tell the agent where to connect ([`RedirectHook`]:
//! [`FileHook`], [`CommandHook`], [`CallbackHook`]), and the pure arithmetic
//! that spreads reconnects ([`Backoff`], [`RateLimiter`]).
//!
//! It must not decide failovers (coordinators do), speak OpAMP to the agent
//! (hooks hand the endpoint to the agent's own configuration), or log or
//! print a handover token. The session with the coordinators (gRPC stream,
//! coordinator fallback list) is not built yet.

mod backoff;
mod command;
mod directive;
mod hook;
mod persist;

pub use backoff::{Admission, Backoff, BackoffError, RateLimit, RateLimiter};
pub use command::{CommandError, CommandRun, CommandSpec, STDERR_TAIL_BYTES};
pub use directive::{
    AppliedAck, ApplyOutcome, ApplyStatus, Current, Decision, Directive, DirectiveKind, Tracker,
    TrackerError, TrackerState, INTERRUPTED_REASON, TRACKER_FORMAT_VERSION,
};
pub use hook::{
    render_directive_file, CallbackError, CallbackFuture, CallbackHook, CommandHook, FileFormat,
    FileHook, HookError, HookFuture, HookReport, RedirectHook, DIRECTIVE_FILE_FORMAT,
};
pub use persist::{load, load_or_new, save, write_atomic, PersistError, SECRET_FILE_MODE};
