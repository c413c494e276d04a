//! The directive tracker: which redirect directives a shim applies, and which
//! it ignores.
//!
//! A coordinator tells a shim "connect to region T at endpoint E, presenting
//! token K; fencing epoch N" (a [`Directive`]). Directives arrive from any
//! surviving coordinator, possibly late, repeated or out of order; the
//! [`Tracker`] decides what each one means ([`Decision`]) and remembers what
//! was applied and where the agent is attached, under these rules:
//!
//! - a directive for another agent is ignored (`WrongAgent`) and changes
//!   nothing;
//! - a directive older than the newest epoch seen is ignored (`Stale`), even
//!   if it was never applied: the newer decision superseded it;
//! - a directive of the newest epoch seen is either the very same directive
//!   again (`Duplicate`), or the same decision with refreshed details
//!   (`Refreshed`: same kind and target region, but another token, expiry,
//!   endpoint or base URL; coordinators re-stage tokens before they expire
//!   and learn regions' endpoints late), or another decision (`Conflict`:
//!   another kind or target region in one epoch; coordinators issue one
//!   decision per agent and epoch, so a conflict is a bug to report loudly,
//!   and neither version is applied again);
//! - a refresh replaces the directive kept for its epoch (a later retry uses
//!   the new token); it is handed out again (`Apply`) when the epoch's
//!   directive failed or was never handed out (seen only expired), and is
//!   not when it is in flight or attached; an expired refresh changes
//!   nothing (`Expired`);
//! - a directive of a newer epoch raises the fence, then is applied (`Apply`)
//!   unless it has expired (`Expired`: the fence still moves, so nothing
//!   older can be applied afterwards).
//!
//! So the epochs of `Apply` decisions never decrease (an epoch is handed
//! out again only as a refresh of a failed application, never with another
//! target), and nothing older than the newest epoch seen is ever applied. The fence holds across
//! restarts through [`Tracker::to_json`] / [`Tracker::from_json`] (the file
//! side is in `persist`).
//!
//! This module is pure: no I/O, no clock (time comes in as milliseconds since
//! the Unix epoch), no randomness, no logging. It must never print a token:
//! `Directive`'s `Debug` is hand-written and redacts it.

use std::fmt;

use serde::{Deserialize, Serialize};

/// Version of the tracker's JSON form written by [`Tracker::to_json`].
pub const TRACKER_FORMAT_VERSION: u32 = 1;

/// What a directive asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DirectiveKind {
    /// Failover: leave the (lost) serving region for a standby region.
    Redirect,
    /// Hand-back: go home, the home region has been healthy for its dwell
    /// time.
    ReturnHome,
}

impl DirectiveKind {
    /// The name used in files, environment variables and the CLI.
    pub fn as_str(&self) -> &'static str {
        match self {
            DirectiveKind::Redirect => "redirect",
            DirectiveKind::ReturnHome => "return_home",
        }
    }
}

impl fmt::Display for DirectiveKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One redirect directive, as issued by a coordinator for one agent.
///
/// Two directives are "the same" when every field is equal (`PartialEq`).
/// `Debug` prints `token: <redacted>`.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Directive {
    /// Fencing epoch of the decision behind the directive; only grows.
    pub epoch: u64,
    /// The agent it is for: the agent's identity as the coordinators know it.
    pub agent_id: String,
    /// Failover or hand-back.
    pub kind: DirectiveKind,
    /// The region to connect to.
    pub target_region: String,
    /// The target region's OpAMP endpoint, e.g. `wss://eu.example/v1/opamp`.
    pub endpoint: String,
    /// The target region's endpoint base URL (`https://host:port`), where
    /// the session checks that the agent is attached before reporting it.
    /// Empty when the directive names none.
    #[serde(default)]
    pub base_url: String,
    /// The handover token to present to the target. Opaque to the shim and a
    /// secret: never logged, never in `Debug`.
    pub token: String,
    /// When the coordinators issued it, ms since the Unix epoch.
    pub issued_at_ms: u64,
    /// When it stops being valid (the token's expiry), ms since the Unix
    /// epoch. A directive is expired at `now_ms >= expires_at_ms`.
    pub expires_at_ms: u64,
}

impl Directive {
    /// True when the directive is no longer valid at `now_ms`.
    pub fn is_expired(&self, now_ms: u64) -> bool {
        now_ms >= self.expires_at_ms
    }
}

impl fmt::Debug for Directive {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Directive")
            .field("epoch", &self.epoch)
            .field("agent_id", &self.agent_id)
            .field("kind", &self.kind)
            .field("target_region", &self.target_region)
            .field("endpoint", &self.endpoint)
            .field("base_url", &self.base_url)
            .field("token", &format_args!("<redacted>"))
            .field("issued_at_ms", &self.issued_at_ms)
            .field("expires_at_ms", &self.expires_at_ms)
            .finish()
    }
}

/// What an offered directive means for this shim. Only `Apply` asks the
/// caller to act; every other decision is a normal, reportable outcome.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// New (newest epoch so far), for this agent, not expired (or a refresh
    /// of the newest epoch's directive whose application failed): run the
    /// redirect hook with it, then report with [`Tracker::applied`].
    Apply(Directive),
    /// The same directive (same epoch, same content) as the one already
    /// applied or in flight. Nothing to do.
    Duplicate,
    /// Its epoch is older than the newest epoch seen: superseded, ignored.
    Stale {
        /// The newest epoch this shim has seen.
        newest_seen: u64,
    },
    /// Same epoch as the newest seen, same kind and target region, other
    /// details (token, expiry, endpoint, base URL): recorded, nothing to do
    /// now (the directive of that epoch is in flight or attached).
    Refreshed,
    /// Same epoch as the newest seen, another kind or target region. Must
    /// never happen: the caller reports it loudly. Nothing is applied.
    Conflict,
    /// Expired at the time it was offered. If it was the newest epoch so far,
    /// the fence still moved to it.
    Expired,
    /// Addressed to another agent; ignored, nothing changed.
    WrongAgent,
}

/// How applying a directive ended, as reported by the caller.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "outcome", rename_all = "snake_case")]
pub enum ApplyOutcome {
    /// The agent is verified attached to the directive's target region.
    Attached,
    /// The redirect failed. `reason` must not contain the token.
    Failed {
        /// Why, for operators.
        reason: String,
    },
}

/// Where the current directive stands.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "status", rename_all = "snake_case")]
pub enum ApplyStatus {
    /// Handed to the caller by `Apply` (or `retry`); no outcome yet.
    Pending,
    /// Applied, and the agent is attached to its target.
    Attached,
    /// Applying it failed (or the shim restarted while applying it); it may
    /// be retried with [`Tracker::retry`] while it is current and unexpired.
    Failed {
        /// Why.
        reason: String,
    },
}

/// The most recent directive handed out for application, and its status.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Current {
    /// The directive.
    pub directive: Directive,
    /// Where its application stands.
    pub status: ApplyStatus,
}

/// The answer to [`Tracker::applied`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AppliedAck {
    /// The outcome was recorded.
    Recorded,
    /// A newer directive has been handed out since; the outcome of the older
    /// one is ignored (the newer one decides where the agent ends up).
    Superseded {
        /// The epoch of the current directive.
        current: u64,
    },
    /// The epoch is the current directive's, but it is not in flight (its
    /// outcome was already recorded); ignored.
    NotInFlight,
    /// No directive of that epoch was ever handed out; ignored.
    Unknown,
}

/// Reason recorded for a directive that was in flight when the tracker was
/// saved, and found pending when loaded again (the shim restarted while
/// applying it). It can be retried with [`Tracker::retry`].
pub const INTERRUPTED_REASON: &str = "interrupted: the shim restarted while applying it";

/// A snapshot of the tracker, for status output and the session.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TrackerState {
    /// The agent this tracker is for.
    pub agent_id: String,
    /// The region the agent is attached to, as last verified (`Attached`).
    /// `None`: no directive has moved it; it is where it was enrolled (home).
    pub serving_region: Option<String>,
    /// The epoch of the directive that attached it to `serving_region`.
    pub serving_epoch: Option<u64>,
    /// The newest epoch seen in a directive for this agent (applied or
    /// expired); older directives are ignored.
    pub newest_seen: Option<u64>,
    /// The most recent directive handed out for application.
    pub current: Option<Current>,
    /// How many conflicting directives were offered (should stay 0).
    pub conflicts: u64,
}

impl TrackerState {
    /// The directive in flight (handed out, no outcome yet), if any.
    pub fn pending(&self) -> Option<&Directive> {
        match &self.current {
            Some(Current {
                directive,
                status: ApplyStatus::Pending,
            }) => Some(directive),
            _ => None,
        }
    }
}

/// Why a tracker's JSON form was refused.
#[derive(Debug, thiserror::Error)]
pub enum TrackerError {
    /// Not valid JSON, or not the tracker's shape.
    #[error("tracker state is not valid: {0}")]
    Json(#[from] serde_json::Error),
    /// Written by another version of the shim.
    #[error("tracker state has format version {found}, this shim reads {expected}")]
    Version {
        /// Version in the file.
        found: u32,
        /// Version this build reads.
        expected: u32,
    },
    /// Parsed, but the parts contradict each other (edited by hand?).
    #[error("tracker state is inconsistent: {0}")]
    Inconsistent(&'static str),
}

/// The epoch-fencing directive tracker for one agent. See the module docs
/// for the rules.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Tracker {
    version: u32,
    agent_id: String,
    /// The newest directive seen for this agent (applied or expired): it is
    /// the fence, and the reference for `Duplicate`, `Refreshed` and
    /// `Conflict`.
    newest: Option<Directive>,
    current: Option<Current>,
    serving_region: Option<String>,
    serving_epoch: Option<u64>,
    conflicts: u64,
}

impl Tracker {
    /// A tracker that has seen nothing yet, for `agent_id`.
    pub fn new(agent_id: impl Into<String>) -> Self {
        Tracker {
            version: TRACKER_FORMAT_VERSION,
            agent_id: agent_id.into(),
            newest: None,
            current: None,
            serving_region: None,
            serving_epoch: None,
            conflicts: 0,
        }
    }

    /// The agent this tracker is for.
    pub fn agent_id(&self) -> &str {
        &self.agent_id
    }

    /// The newest epoch seen for this agent.
    pub fn newest_seen(&self) -> Option<u64> {
        self.newest.as_ref().map(|d| d.epoch)
    }

    /// Decides what an offered directive means at `now_ms` (ms since the
    /// Unix epoch) and records it. Only `Apply` asks the caller to act.
    pub fn offer(&mut self, now_ms: u64, directive: Directive) -> Decision {
        if directive.agent_id != self.agent_id {
            return Decision::WrongAgent;
        }
        if let Some(newest) = &self.newest {
            if directive.epoch < newest.epoch {
                return Decision::Stale {
                    newest_seen: newest.epoch,
                };
            }
            if directive.epoch == newest.epoch {
                if directive.kind != newest.kind || directive.target_region != newest.target_region
                {
                    self.conflicts = self.conflicts.saturating_add(1);
                    return Decision::Conflict;
                }
                let refresh = directive != *newest;
                if refresh && directive.is_expired(now_ms) {
                    return Decision::Expired;
                }
                if refresh {
                    self.newest = Some(directive.clone());
                }
                let status = self
                    .current
                    .as_mut()
                    .filter(|c| c.directive.epoch == directive.epoch)
                    .map(|c| {
                        if refresh {
                            c.directive = directive.clone();
                        }
                        c.status.clone()
                    });
                return match status {
                    Some(ApplyStatus::Failed { .. }) if refresh => self.hand_out(directive),
                    Some(_) if refresh => Decision::Refreshed,
                    Some(_) => Decision::Duplicate,
                    // Seen before only as expired. Still expired, unless
                    // refreshed or the caller's clock went back.
                    None if directive.is_expired(now_ms) => Decision::Expired,
                    None => self.hand_out(directive),
                };
            }
        }
        // A newer epoch: the fence moves, whether or not it is applicable.
        self.newest = Some(directive.clone());
        if directive.is_expired(now_ms) {
            return Decision::Expired;
        }
        self.hand_out(directive)
    }

    fn hand_out(&mut self, directive: Directive) -> Decision {
        self.current = Some(Current {
            directive: directive.clone(),
            status: ApplyStatus::Pending,
        });
        Decision::Apply(directive)
    }

    /// Records how applying the directive of `epoch` ended. `Attached` moves
    /// the serving region to the directive's target.
    pub fn applied(&mut self, epoch: u64, outcome: ApplyOutcome) -> AppliedAck {
        let Some(current) = self.current.as_mut() else {
            return AppliedAck::Unknown;
        };
        if epoch < current.directive.epoch {
            return AppliedAck::Superseded {
                current: current.directive.epoch,
            };
        }
        if epoch > current.directive.epoch {
            return AppliedAck::Unknown;
        }
        if current.status != ApplyStatus::Pending {
            return AppliedAck::NotInFlight;
        }
        match outcome {
            ApplyOutcome::Attached => {
                current.status = ApplyStatus::Attached;
                self.serving_region = Some(current.directive.target_region.clone());
                self.serving_epoch = Some(epoch);
            }
            ApplyOutcome::Failed { reason } => {
                current.status = ApplyStatus::Failed { reason };
            }
        }
        AppliedAck::Recorded
    }

    /// Hands the current directive out again when its application failed (or
    /// was interrupted by a restart), it is still the newest epoch seen, and
    /// it has not expired at `now_ms`. It becomes pending again. Returns
    /// `None` otherwise. The caller spaces retries with `Backoff`.
    pub fn retry(&mut self, now_ms: u64) -> Option<Directive> {
        let newest_seen = self.newest_seen();
        let current = self.current.as_mut()?;
        if !matches!(current.status, ApplyStatus::Failed { .. })
            || Some(current.directive.epoch) != newest_seen
            || current.directive.is_expired(now_ms)
        {
            return None;
        }
        current.status = ApplyStatus::Pending;
        Some(current.directive.clone())
    }

    /// A snapshot of the tracker.
    pub fn state(&self) -> TrackerState {
        TrackerState {
            agent_id: self.agent_id.clone(),
            serving_region: self.serving_region.clone(),
            serving_epoch: self.serving_epoch,
            newest_seen: self.newest_seen(),
            current: self.current.clone(),
            conflicts: self.conflicts,
        }
    }

    /// The tracker as JSON (format version [`TRACKER_FORMAT_VERSION`]). It
    /// contains the current directive's token: store it readable by the shim
    /// only (`persist` writes it with mode 0600).
    pub fn to_json(&self) -> Result<String, TrackerError> {
        Ok(serde_json::to_string_pretty(self)?)
    }

    /// A tracker from [`Tracker::to_json`]'s output, as it is after a
    /// restart: a directive that was pending is marked failed with
    /// [`INTERRUPTED_REASON`] (whether the hook ran is unknown), so
    /// [`Tracker::retry`] can apply it again. The fence is kept.
    pub fn from_json(json: &str) -> Result<Tracker, TrackerError> {
        let mut tracker: Tracker = serde_json::from_str(json)?;
        if tracker.version != TRACKER_FORMAT_VERSION {
            return Err(TrackerError::Version {
                found: tracker.version,
                expected: TRACKER_FORMAT_VERSION,
            });
        }
        tracker.check()?;
        if let Some(current) = tracker.current.as_mut() {
            if current.status == ApplyStatus::Pending {
                current.status = ApplyStatus::Failed {
                    reason: INTERRUPTED_REASON.to_string(),
                };
            }
        }
        Ok(tracker)
    }

    fn check(&self) -> Result<(), TrackerError> {
        let for_us = |d: &Directive| d.agent_id == self.agent_id;
        if let Some(newest) = &self.newest {
            if !for_us(newest) {
                return Err(TrackerError::Inconsistent(
                    "newest directive is for another agent",
                ));
            }
        }
        if let Some(current) = &self.current {
            if !for_us(&current.directive) {
                return Err(TrackerError::Inconsistent(
                    "current directive is for another agent",
                ));
            }
            match self.newest_seen() {
                Some(n) if current.directive.epoch <= n => {}
                _ => {
                    return Err(TrackerError::Inconsistent(
                        "current directive is newer than the newest seen",
                    ))
                }
            }
        }
        if self.serving_epoch.is_some() != self.serving_region.is_some() {
            return Err(TrackerError::Inconsistent(
                "serving region and serving epoch must be set together",
            ));
        }
        if let (Some(serving), Some(current)) = (self.serving_epoch, &self.current) {
            if serving > current.directive.epoch {
                return Err(TrackerError::Inconsistent(
                    "serving epoch is newer than the current directive",
                ));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: u64 = 1_000_000;

    fn directive(epoch: u64) -> Directive {
        Directive {
            epoch,
            agent_id: "agent-1".into(),
            kind: DirectiveKind::Redirect,
            target_region: "us".into(),
            endpoint: "wss://us.example/v1/opamp".into(),
            base_url: "https://us.example".into(),
            token: format!("secret-token-{epoch}"),
            issued_at_ms: NOW - 1_000,
            expires_at_ms: NOW + 3_600_000,
        }
    }

    // Property: a fresh directive of a newer epoch for this agent is handed
    // out for application, and becomes the pending one.
    #[test]
    fn new_directive_is_applied() {
        let mut t = Tracker::new("agent-1");
        assert_eq!(t.offer(NOW, directive(3)), Decision::Apply(directive(3)));
        let s = t.state();
        assert_eq!(s.newest_seen, Some(3));
        assert_eq!(s.pending(), Some(&directive(3)));
        assert_eq!(s.serving_region, None, "nothing attached yet");
    }

    // Property: offering the directive already applied or in flight again is
    // a Duplicate, in flight, attached or failed alike, and changes nothing.
    #[test]
    fn same_directive_again_is_duplicate() {
        let mut t = Tracker::new("agent-1");
        t.offer(NOW, directive(3));
        let before = t.clone();
        assert_eq!(t.offer(NOW, directive(3)), Decision::Duplicate);
        assert_eq!(t, before, "a duplicate changes nothing");
        t.applied(3, ApplyOutcome::Attached);
        assert_eq!(t.offer(NOW, directive(3)), Decision::Duplicate);
        let mut f = Tracker::new("agent-1");
        f.offer(NOW, directive(4));
        f.applied(
            4,
            ApplyOutcome::Failed {
                reason: "boom".into(),
            },
        );
        assert_eq!(
            f.offer(NOW, directive(4)),
            Decision::Duplicate,
            "retrying a failed directive is retry()'s job, not offer()'s"
        );
    }

    // Property: a directive older than the newest epoch seen is Stale and
    // reports the newest epoch, whether the newer one was applied or expired.
    #[test]
    fn older_epoch_is_stale() {
        let mut t = Tracker::new("agent-1");
        t.offer(NOW, directive(5));
        assert_eq!(
            t.offer(NOW, directive(4)),
            Decision::Stale { newest_seen: 5 }
        );
        let mut expired = directive(9);
        expired.expires_at_ms = NOW;
        assert_eq!(t.offer(NOW, expired), Decision::Expired);
        assert_eq!(
            t.offer(NOW, directive(7)),
            Decision::Stale { newest_seen: 9 },
            "an expired newer directive still fences older ones"
        );
    }

    // Property: same epoch, another kind or target region is a Conflict;
    // nothing is applied, the applied directive stays current, and it is
    // counted.
    #[test]
    fn same_epoch_other_decision_is_conflict() {
        let mut t = Tracker::new("agent-1");
        t.offer(NOW, directive(5));
        let mut other = directive(5);
        other.target_region = "ap".into();
        assert_eq!(t.offer(NOW, other.clone()), Decision::Conflict);
        let mut other_kind = directive(5);
        other_kind.kind = DirectiveKind::ReturnHome;
        assert_eq!(t.offer(NOW, other_kind), Decision::Conflict);
        let s = t.state();
        assert_eq!(s.conflicts, 2);
        assert_eq!(s.pending(), Some(&directive(5)));
        assert_eq!(t.offer(NOW, directive(5)), Decision::Duplicate);
    }

    // Property: same epoch and decision with another token, expiry,
    // endpoint or base URL is a refresh: it replaces the kept directive
    // (so a retry uses it), is not handed out again while in flight or
    // attached, is handed out again when the epoch's directive failed, and
    // an expired refresh changes nothing.
    #[test]
    fn same_decision_refreshed() {
        let mut t = Tracker::new("agent-1");
        t.offer(NOW, directive(5));
        let mut fresh = directive(5);
        fresh.token = "refreshed-token".into();
        fresh.expires_at_ms += 1_000;
        assert_eq!(
            t.offer(NOW, fresh.clone()),
            Decision::Refreshed,
            "in flight"
        );
        assert_eq!(t.state().pending(), Some(&fresh));
        assert_eq!(t.offer(NOW, fresh.clone()), Decision::Duplicate);
        let mut stale_refresh = fresh.clone();
        stale_refresh.token = "late".into();
        stale_refresh.expires_at_ms = NOW;
        assert_eq!(t.offer(NOW, stale_refresh), Decision::Expired);
        assert_eq!(t.state().pending(), Some(&fresh), "unchanged");

        t.applied(
            5,
            ApplyOutcome::Failed {
                reason: "refused".into(),
            },
        );
        let mut fresher = fresh.clone();
        fresher.token = "fresher-token".into();
        assert_eq!(
            t.offer(NOW, fresher.clone()),
            Decision::Apply(fresher.clone())
        );
        t.applied(5, ApplyOutcome::Attached);
        let mut endpoint = fresher.clone();
        endpoint.endpoint = "wss://us2.example/v1/opamp".into();
        assert_eq!(
            t.offer(NOW, endpoint.clone()),
            Decision::Refreshed,
            "attached"
        );
        assert_eq!(t.state().current.map(|c| c.directive), Some(endpoint));
        assert_eq!(t.state().conflicts, 0);

        let mut late = Tracker::new("agent-1");
        let mut expired = directive(7);
        expired.expires_at_ms = NOW;
        assert_eq!(late.offer(NOW, expired), Decision::Expired);
        assert_eq!(late.offer(NOW, directive(7)), Decision::Apply(directive(7)));
    }

    // Property: an expired directive is never applied, the boundary
    // (now == expires_at) included, but it still moves the fence.
    #[test]
    fn expired_is_not_applied() {
        let mut t = Tracker::new("agent-1");
        let mut d = directive(2);
        d.expires_at_ms = NOW;
        assert_eq!(t.offer(NOW, d.clone()), Decision::Expired);
        assert_eq!(t.offer(NOW + 1, d), Decision::Expired, "still expired");
        let s = t.state();
        assert_eq!(s.newest_seen, Some(2));
        assert_eq!(s.current, None);
        assert_eq!(
            t.offer(NOW, directive(1)),
            Decision::Stale { newest_seen: 2 }
        );
        assert_eq!(t.offer(NOW, directive(3)), Decision::Apply(directive(3)));
    }

    // Property: a directive for another agent is ignored and changes nothing,
    // not even the fence.
    #[test]
    fn other_agent_is_wrong_agent() {
        let mut t = Tracker::new("agent-1");
        let mut d = directive(50);
        d.agent_id = "agent-2".into();
        assert_eq!(t.offer(NOW, d), Decision::WrongAgent);
        assert_eq!(t, Tracker::new("agent-1"));
    }

    // Property: Attached moves the serving region to the target; Failed does
    // not; outcomes for older, unknown or finished epochs are ignored.
    #[test]
    fn outcomes_update_serving_region() {
        let mut t = Tracker::new("agent-1");
        assert_eq!(t.applied(1, ApplyOutcome::Attached), AppliedAck::Unknown);
        t.offer(NOW, directive(1));
        assert_eq!(t.applied(1, ApplyOutcome::Attached), AppliedAck::Recorded);
        assert_eq!(t.state().serving_region.as_deref(), Some("us"));
        assert_eq!(t.state().serving_epoch, Some(1));
        assert_eq!(
            t.applied(1, ApplyOutcome::Attached),
            AppliedAck::NotInFlight
        );

        let mut home = directive(2);
        home.kind = DirectiveKind::ReturnHome;
        home.target_region = "eu".into();
        t.offer(NOW, home.clone());
        assert_eq!(
            t.applied(1, ApplyOutcome::Attached),
            AppliedAck::Superseded { current: 2 }
        );
        assert_eq!(t.applied(3, ApplyOutcome::Attached), AppliedAck::Unknown);
        assert_eq!(
            t.applied(
                2,
                ApplyOutcome::Failed {
                    reason: "refused".into()
                }
            ),
            AppliedAck::Recorded
        );
        let s = t.state();
        assert_eq!(s.serving_region.as_deref(), Some("us"), "failed: unchanged");
        assert_eq!(
            s.current.map(|c| c.status),
            Some(ApplyStatus::Failed {
                reason: "refused".into()
            })
        );
        assert_eq!(t.retry(NOW), Some(home));
        assert_eq!(t.applied(2, ApplyOutcome::Attached), AppliedAck::Recorded);
        assert_eq!(t.state().serving_region.as_deref(), Some("eu"));
    }

    // Property: retry hands out only a failed directive that is still the
    // newest epoch seen and unexpired.
    #[test]
    fn retry_only_failed_current_unexpired() {
        let mut t = Tracker::new("agent-1");
        assert_eq!(t.retry(NOW), None, "nothing to retry");
        t.offer(NOW, directive(1));
        assert_eq!(t.retry(NOW), None, "in flight, not failed");
        t.applied(1, ApplyOutcome::Failed { reason: "x".into() });
        assert_eq!(t.retry(NOW + 3_600_000), None, "expired");
        let mut newer = directive(2);
        newer.expires_at_ms = NOW;
        assert_eq!(t.offer(NOW, newer), Decision::Expired);
        assert_eq!(t.retry(NOW), None, "superseded by a newer epoch");
    }

    // Property: Debug never shows the token, in any formatting of a
    // directive or of the states that contain one.
    #[test]
    fn debug_redacts_token() {
        let mut t = Tracker::new("agent-1");
        t.offer(NOW, directive(7));
        for text in [
            format!("{:?}", directive(7)),
            format!("{:#?}", directive(7)),
            format!("{:?}", t),
            format!("{:?}", t.state()),
            format!("{:?}", Decision::Apply(directive(7))),
        ] {
            assert!(!text.contains("secret-token-7"), "token leaked: {text}");
            assert!(text.contains("<redacted>"), "{text}");
        }
    }

    // Property: the JSON form round-trips, refuses other versions and
    // inconsistent states, and turns an in-flight directive into a failed
    // (retryable) one.
    #[test]
    fn json_round_trip() {
        let mut t = Tracker::new("agent-1");
        t.offer(NOW, directive(1));
        t.applied(1, ApplyOutcome::Attached);
        let back = Tracker::from_json(&t.to_json().expect("json")).expect("parse");
        assert_eq!(back, t);

        t.offer(NOW, directive(2));
        let mut back = Tracker::from_json(&t.to_json().expect("json")).expect("parse");
        assert_eq!(
            back.state().current.map(|c| c.status),
            Some(ApplyStatus::Failed {
                reason: INTERRUPTED_REASON.into()
            })
        );
        assert_eq!(back.retry(NOW), Some(directive(2)));

        let v2 = t
            .to_json()
            .expect("json")
            .replace("\"version\": 1", "\"version\": 2");
        assert!(matches!(
            Tracker::from_json(&v2),
            Err(TrackerError::Version { found: 2, .. })
        ));
        let other = t.to_json().expect("json").replacen(
            "\"agent_id\": \"agent-1\"",
            "\"agent_id\": \"agent-9\"",
            1,
        );
        assert!(matches!(
            Tracker::from_json(&other),
            Err(TrackerError::Inconsistent(_))
        ));
        assert!(Tracker::from_json("{").is_err());
    }
}
