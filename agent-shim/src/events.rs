//! What a session reports about itself while it runs: connections,
//! registrations, directives and what was decided about them, outcomes and
//! reports. The fleet simulator aggregates these into its status and events
//! files; an embedder may watch them too.
//!
//! Events are plain values with no secret in them (no token, no key), so
//! their `Debug` is safe to print. This module decides nothing.

use std::sync::Arc;

use serde::Serialize;

use crate::directive::DirectiveKind;

/// A directive's action, as the coordinators sent it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Action {
    /// Stay with the home region.
    Stay,
    /// Failover to a standby region.
    Redirect,
    /// Hand-back to the home region.
    ReturnHome,
}

impl Action {
    /// The name used in events and logs.
    pub fn as_str(&self) -> &'static str {
        match self {
            Action::Stay => "stay",
            Action::Redirect => "redirect",
            Action::ReturnHome => "return_home",
        }
    }
}

/// What the session made of a directive it received.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "seen", rename_all = "snake_case")]
pub enum Seen {
    /// New: it is being applied.
    Apply,
    /// New, and nothing to do: a STAY while the agent is surely at home
    /// (recorded as attached at home without running the hook).
    NoOp,
    /// The directive already applied or in flight.
    Duplicate,
    /// The directive already applied or in flight, with refreshed details
    /// (token, expiry, endpoint, base URL): recorded for later retries.
    Refreshed,
    /// Older than the newest epoch seen; ignored.
    Stale {
        /// The newest epoch seen.
        newest_seen: u64,
    },
    /// Same epoch as the newest seen, other content; ignored, logged as an
    /// error.
    Conflict,
    /// Expired when received (the fence still moved).
    Expired,
    /// For another agent; ignored.
    WrongAgent,
    /// Not understood (e.g. an unspecified action); ignored.
    Malformed {
        /// Why.
        reason: String,
    },
}

impl Seen {
    /// A short name for files and logs.
    pub fn as_str(&self) -> &'static str {
        match self {
            Seen::Apply => "apply",
            Seen::NoOp => "noop",
            Seen::Duplicate => "duplicate",
            Seen::Refreshed => "refreshed",
            Seen::Stale { .. } => "stale",
            Seen::Conflict => "conflict",
            Seen::Expired => "expired",
            Seen::WrongAgent => "wrong_agent",
            Seen::Malformed { .. } => "malformed",
        }
    }
}

/// How applying a directive ended, as reported.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "outcome", rename_all = "snake_case")]
pub enum Outcome {
    /// Verified attached to the target.
    Attached,
    /// Failed; `reason` holds no token.
    Failed {
        /// Why.
        reason: String,
    },
}

/// One thing that happened in a session.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SessionEventKind {
    /// A connection to a coordinator could not be made or used before the
    /// directive stream opened.
    ConnectFailed {
        /// `host:port`.
        coordinator: String,
        /// Why.
        reason: String,
    },
    /// `ListCoordinators` answered; the fallback list was cached.
    CoordinatorsCached {
        /// How many coordinators it names.
        count: usize,
        /// The epoch it answered with.
        epoch: u64,
    },
    /// `Register` succeeded.
    Registered {
        /// `host:port`.
        coordinator: String,
        /// The fingerprint the coordinator registered.
        fingerprint: String,
        /// The epoch it answered with.
        epoch: u64,
    },
    /// The directive stream is open (the agent's heartbeat).
    Watching {
        /// `host:port`.
        coordinator: String,
        /// The newest epoch the shim had seen when it opened the stream.
        known_epoch: u64,
    },
    /// The directive stream ended or broke.
    Disconnected {
        /// `host:port`.
        coordinator: String,
        /// Why.
        reason: String,
    },
    /// A directive arrived.
    Directive {
        /// Its epoch.
        epoch: u64,
        /// Its action.
        action: Action,
        /// Its target region (the home region for STAY).
        target_region: String,
        /// What the session made of it.
        seen: Seen,
    },
    /// A directive's application starts (after jitter and rate limit, just
    /// before the hook runs).
    Applying {
        /// Its epoch.
        epoch: u64,
        /// Redirect or return home (a STAY applied is a return home).
        kind: DirectiveKind,
        /// Its target region.
        target_region: String,
    },
    /// A directive's application ended and was recorded.
    Applied {
        /// Its epoch.
        epoch: u64,
        /// Redirect or return home (a STAY applied is a return home).
        kind: DirectiveKind,
        /// Its target region.
        target_region: String,
        /// How it ended.
        outcome: Outcome,
    },
    /// A coordinator acknowledged a report.
    Reported {
        /// The epoch reported on.
        epoch: u64,
        /// `host:port`.
        coordinator: String,
        /// What was reported.
        outcome: Outcome,
    },
    /// The leaf files changed: a renewed leaf will be registered.
    LeafRenewed {
        /// The new fingerprint.
        fingerprint: String,
    },
}

/// An event of one agent's session.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionEvent {
    /// When, ms since the Unix epoch.
    pub at_ms: u64,
    /// The agent.
    pub agent_id: Arc<str>,
    /// What happened.
    pub kind: SessionEventKind,
}

/// Where a session sends its events.
pub type EventSender = tokio::sync::mpsc::UnboundedSender<SessionEvent>;
