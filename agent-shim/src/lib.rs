//! The Tern agent shim, as a library: what runs beside one agent (or a
//! simulated fleet of them) and follows the coordinators' failover and
//! hand-back directives.
//!
//! It owns:
//!
//! - the pure directive tracker (epoch fencing, deduplication, conflict
//!   detection: [`Tracker`]) and its durable state file ([`save`],
//!   [`load`], [`load_or_new`], [`write_atomic`]);
//! - the redirect hooks that tell the agent where to connect
//!   ([`RedirectHook`]: [`FileHook`], [`CommandHook`], [`CallbackHook`]);
//! - the pure arithmetic that spreads reconnects ([`Backoff`],
//!   [`RateLimiter`]);
//! - the session with the coordinators ([`Session`], configured by
//!   [`ShimConfig`]): mutual TLS as the agent (its own leaf, [`LeafSource`])
//!   to any coordinator, home region first, then the cached fallback list
//!   ([`candidates`], `coordinators.json`); registration, again after a leaf
//!   renewal; the directive stream (the agent's heartbeat); applying each
//!   directive through the tracker, jitter, the rate limiter and the hook;
//!   verifying at the target region that the agent is attached
//!   ([`RegionClient`]); reporting the outcome; its events
//!   ([`SessionEvent`]);
//! - fleet mode ([`fleet`]): many simulated agents in one process, each with
//!   its own identity issued in-process ([`AgentCa`]), for load tests and
//!   demos, with a status file and an events file.
//!
//! It must not decide failovers (coordinators do), speak OpAMP to the agent
//! (hooks hand the endpoint to the agent's own configuration), or log or
//! print a handover token or a private key.

mod backoff;
mod command;
mod config;
mod coordinators;
mod directive;
mod events;
pub mod fleet;
mod hook;
mod identity;
mod persist;
mod region;
mod session;

pub use backoff::{Admission, Backoff, BackoffError, RateLimit, RateLimiter};
pub use command::{CommandError, CommandRun, CommandSpec, STDERR_TAIL_BYTES};
pub use config::{
    normalize_address, validate_agent_id, ConfigError, ConfigRef, ShimConfig, Timing,
};
pub use coordinators::{
    candidates, candidates_spread, load_cache, save_cache, CoordinatorCache, CoordinatorInfo,
    COORDINATORS_FILE, COORDINATORS_FILE_FORMAT,
};
pub use directive::{
    AppliedAck, ApplyOutcome, ApplyStatus, Current, Decision, Directive, DirectiveKind, Tracker,
    TrackerError, TrackerState, INTERRUPTED_REASON, TRACKER_FORMAT_VERSION,
};
pub use events::{Action, EventSender, Outcome, Seen, SessionEvent, SessionEventKind};
pub use fleet::{AgentCa, FleetConfig, FleetError, FleetHandle, FleetStatus};
pub use hook::{
    render_directive_file, CallbackError, CallbackFuture, CallbackHook, CommandHook, FileFormat,
    FileHook, HookError, HookFuture, HookReport, RedirectHook, DIRECTIVE_FILE_FORMAT,
};
pub use identity::{fingerprint_of_der, LeafError, LeafIdentity, LeafSource, PemSource};
pub use persist::{load, load_or_new, save, write_atomic, PersistError, SECRET_FILE_MODE};
pub use region::{AgentAttachment, AttachReply, RegionClient, RegionError};
pub use session::{
    install_crypto_provider, run, Session, SessionError, SharedLimiter, TRACKER_FILE,
};
