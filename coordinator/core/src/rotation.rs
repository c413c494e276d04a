//! Pin rotation: replacing one pinned certificate thumbprint with another, in
//! phases, so that no peer ever refuses what the pin's owner presents.
//!
//! It owns the state machine of one rotation (`Rotation`), used for the two
//! kinds of pins Tern rotates:
//! - `PinSubject::Transport(node)`: a coordinator's own transport
//!   certificate, pinned by every other coordinator through the member table
//!   (peers are `Peer::Node`);
//! - `PinSubject::Federation(region)`: a region's federation client
//!   certificate, pinned by every other region's control plane (peers are
//!   `Peer::Region`).
//!
//! It also owns the scheduling arithmetic: when a rotation falls due
//! (`rotation_due_at`), whether one may start now (`may_start`) and when an
//! expiry alert is due (`expiry_alert`).
//!
//! It must not do I/O, read a clock or draw random numbers: time comes in as
//! `Millis`, jitter as a caller-supplied number. It does not bump the epoch,
//! write audit records or touch the member table: the replicated state
//! embeds `Rotation`s, applies one transition per committed command, bumps
//! the epoch for every event that `Event::is_phase_change()`, and audits
//! every applied or refused transition. Every transition either applies and
//! returns the `Event` it recorded, or returns a `RotationError` and changes
//! nothing.
//!
//! # Phases
//!
//! What every peer is told to trust (`Rotation::trusted`) and what the owner
//! is told to present (`Rotation::presented`), and who must confirm the
//! phase before `advance` may leave it:
//!
//! | phase             | peers trust | owner presents | must confirm                 | next         |
//! |-------------------|-------------|----------------|------------------------------|--------------|
//! | `PendingApproval` | old         | old            | a second administrator       | `Staged`     |
//! | `Staged`          | old + new   | old            | peers: "I trust both"        | `Presenting` |
//! | `Presenting`      | old + new   | new            | owner: "I present new"; peers: "I accepted new" | `Retiring` |
//! | `Retiring`        | new         | new            | peers: "I no longer trust old" | `Completed` |
//! | `Completed`       | new         | new            | (finished)                   |              |
//! | `Reverting`       | old + new   | old            | owner: "I present old again" | `Withdrawing`|
//! | `Withdrawing`     | old         | old            | peers: "I no longer trust new" | `RolledBack` |
//! | `RolledBack`      | old         | old            | (finished)                   |              |
//!
//! The "standby" is the absence of a running rotation: before a
//! proposal and after `Completed` or `RolledBack`. `PendingApproval` changes
//! nothing anywhere; it only waits.
//!
//! A confirmation names the rotation (`id`) and the phase it confirms; it is
//! accepted only for the current phase of the same rotation, once per party.
//! A peer (or owner) that has not confirmed the current phase blocks
//! `advance`. An administrator may exclude a peer: it is then no longer
//! waited for (its confirmations are still recorded), the exclusion is kept
//! with who did it and when, shown by `status`, and it may refuse the owner
//! from then on: that is the price the administrator accepted.
//!
//! # Rollback and retirement
//!
//! The old pin is retired when the advance to `Retiring` is committed: from
//! that moment any peer may drop the old thumbprint, before its
//! confirmation reaches the log, so presenting the old certificate again
//! could be refused. Rollback is therefore allowed exactly in
//! `PendingApproval` (it cancels: straight to `RolledBack`), `Staged` (to
//! `Withdrawing`: the owner never presented the new certificate) and
//! `Presenting` (to `Reverting`: the owner goes back to the old certificate
//! first, and only once it has confirmed that do peers drop the new pin). It
//! is refused in `Retiring`, while already rolling back, and once finished.
//!
//! # Identities
//!
//! Actors are strings as in the audit trail: an administrator identity,
//! `node:<id>` or `tern` (automation). Identities are compared trimmed and
//! ASCII case-insensitively. Approving and excluding need an administrator
//! (not `tern`, not `node:*`); under four-eyes the approver must differ from
//! the proposer.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::ids::{NodeId, RegionName, Thumbprint};
use crate::time::Millis;

/// Raise an expiry alert when a certificate expires within this many
/// milliseconds (14 days) and no rotation is running.
pub const EXPIRY_ALERT_MS: u64 = 14 * 24 * 60 * 60 * 1000;

/// A rotation starts no earlier than this percentage of the lifetime.
pub const DUE_FROM_PERCENT: u64 = 70;

/// A rotation starts no later than this percentage of the lifetime.
pub const DUE_BY_PERCENT: u64 = 90;

/// The actor name of Tern's own automatic decisions.
pub const AUTOMATION_ACTOR: &str = "tern";

/// Which kind of pin a rotation replaces.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PinKind {
    /// A coordinator's transport certificate, pinned by the other
    /// coordinators.
    Transport,
    /// A region's federation client certificate, pinned by the other
    /// regions' control planes.
    Federation,
}

impl PinKind {
    pub fn as_str(&self) -> &'static str {
        match self {
            PinKind::Transport => "transport",
            PinKind::Federation => "federation",
        }
    }
}

impl fmt::Display for PinKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Whether a rotation of a kind of pin needs a second administrator.
#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
#[serde(rename_all = "snake_case")]
pub enum ApprovalPolicy {
    /// A proposal is staged at once.
    #[default]
    Auto,
    /// A proposal waits in `PendingApproval` until an administrator other
    /// than the proposer approves it (`tern rotate approve`), as Ampora's
    /// `PendingApproval` does for federation peer edits.
    FourEyes,
}

impl ApprovalPolicy {
    pub fn as_str(&self) -> &'static str {
        match self {
            ApprovalPolicy::Auto => "auto",
            ApprovalPolicy::FourEyes => "four-eyes",
        }
    }
}

/// Whose certificate is pinned: the owner of the pin being rotated.
///
/// Written `transport:<node id>` or `federation:<region>`; serialized as that
/// string, so it can key a JSON map.
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub enum PinSubject {
    /// A coordinator's transport certificate.
    Transport(NodeId),
    /// A region's federation client certificate.
    Federation(RegionName),
}

impl PinSubject {
    pub fn kind(&self) -> PinKind {
        match self {
            PinSubject::Transport(_) => PinKind::Transport,
            PinSubject::Federation(_) => PinKind::Federation,
        }
    }

    /// Whether `peer` is the kind of party that pins this subject's
    /// certificate (coordinators for transport, regions for federation).
    pub fn pinned_by_kind_of(&self, peer: &Peer) -> bool {
        matches!(
            (self, peer),
            (PinSubject::Transport(_), Peer::Node(_))
                | (PinSubject::Federation(_), Peer::Region(_))
        )
    }

    /// Whether `peer` is the owner itself.
    fn is(&self, peer: &Peer) -> bool {
        match (self, peer) {
            (PinSubject::Transport(a), Peer::Node(b)) => a == b,
            (PinSubject::Federation(a), Peer::Region(b)) => a == b,
            _ => false,
        }
    }
}

impl fmt::Display for PinSubject {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PinSubject::Transport(n) => write!(f, "transport:{n}"),
            PinSubject::Federation(r) => write!(f, "federation:{r}"),
        }
    }
}

impl fmt::Debug for PinSubject {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}", self.to_string())
    }
}

impl FromStr for PinSubject {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.split_once(':') {
            Some(("transport", n)) => n
                .parse()
                .map(PinSubject::Transport)
                .map_err(|_| format!("transport pin subject needs a node id, got {n:?}")),
            Some(("federation", r)) => r
                .parse()
                .map(PinSubject::Federation)
                .map_err(|e| e.to_string()),
            _ => Err(format!(
                "pin subject must be transport:<node id> or federation:<region>, got {s:?}"
            )),
        }
    }
}

impl TryFrom<String> for PinSubject {
    type Error = String;
    fn try_from(s: String) -> Result<Self, Self::Error> {
        s.parse()
    }
}

impl From<PinSubject> for String {
    fn from(s: PinSubject) -> String {
        s.to_string()
    }
}

/// A party that pins the owner's certificate and confirms phases.
///
/// Written `node:<id>` or `region:<name>`; serialized as that string, so it
/// can key a JSON map.
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub enum Peer {
    /// Another coordinator (transport pins).
    Node(NodeId),
    /// Another region's control plane (federation pins); its coordinator
    /// confirms on its behalf.
    Region(RegionName),
}

impl fmt::Display for Peer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Peer::Node(n) => write!(f, "node:{n}"),
            Peer::Region(r) => write!(f, "region:{r}"),
        }
    }
}

impl fmt::Debug for Peer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}", self.to_string())
    }
}

impl FromStr for Peer {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.split_once(':') {
            Some(("node", n)) => n
                .parse()
                .map(Peer::Node)
                .map_err(|_| format!("node peer needs a node id, got {n:?}")),
            Some(("region", r)) => r.parse().map(Peer::Region).map_err(|e| e.to_string()),
            _ => Err(format!(
                "peer must be node:<id> or region:<name>, got {s:?}"
            )),
        }
    }
}

impl TryFrom<String> for Peer {
    type Error = String;
    fn try_from(s: String) -> Result<Self, Self::Error> {
        s.parse()
    }
}

impl From<Peer> for String {
    fn from(p: Peer) -> String {
        p.to_string()
    }
}

/// Where a rotation stands. See the module doc for the table.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Phase {
    /// Proposed under four-eyes; nothing changed anywhere yet.
    PendingApproval,
    /// Every peer adds the new pin next to the old one; the owner still
    /// presents the old certificate.
    Staged,
    /// The owner presents the new certificate; peers trust both.
    Presenting,
    /// Peers drop the old pin. The point of no return: no rollback.
    Retiring,
    /// Finished: only the new pin is trusted.
    Completed,
    /// Rolled back from `Presenting`: the owner presents the old certificate
    /// again; peers still trust both.
    Reverting,
    /// Rolling back: peers drop the new pin; the owner presents the old one.
    Withdrawing,
    /// Finished: only the old pin is trusted, as before the rotation.
    RolledBack,
}

impl Phase {
    /// Every phase, in the order of the module doc's table.
    pub const ALL: [Phase; 8] = [
        Phase::PendingApproval,
        Phase::Staged,
        Phase::Presenting,
        Phase::Retiring,
        Phase::Completed,
        Phase::Reverting,
        Phase::Withdrawing,
        Phase::RolledBack,
    ];

    pub fn as_str(&self) -> &'static str {
        match self {
            Phase::PendingApproval => "pending_approval",
            Phase::Staged => "staged",
            Phase::Presenting => "presenting",
            Phase::Retiring => "retiring",
            Phase::Completed => "completed",
            Phase::Reverting => "reverting",
            Phase::Withdrawing => "withdrawing",
            Phase::RolledBack => "rolled_back",
        }
    }

    /// Completed or rolled back: the pin is in standby again.
    pub fn is_finished(&self) -> bool {
        matches!(self, Phase::Completed | Phase::RolledBack)
    }

    /// Approved and not finished: peers or the owner may be acting on it.
    pub fn is_active(&self) -> bool {
        !self.is_finished() && *self != Phase::PendingApproval
    }

    /// The old pin has been retired (or is being): no rollback any more.
    pub fn old_retired(&self) -> bool {
        matches!(self, Phase::Retiring | Phase::Completed)
    }

    /// Whether peers confirm this phase (and block `advance` until they do).
    pub fn peers_confirm(&self) -> bool {
        matches!(
            self,
            Phase::Staged | Phase::Presenting | Phase::Retiring | Phase::Withdrawing
        )
    }

    /// Whether the owner confirms this phase (and blocks `advance` until it
    /// does).
    pub fn owner_confirms(&self) -> bool {
        matches!(self, Phase::Presenting | Phase::Reverting)
    }

    /// The phase `advance` leads to, if any. `PendingApproval` is left by
    /// `approve`, not `advance`.
    pub fn next(&self) -> Option<Phase> {
        match self {
            Phase::Staged => Some(Phase::Presenting),
            Phase::Presenting => Some(Phase::Retiring),
            Phase::Retiring => Some(Phase::Completed),
            Phase::Reverting => Some(Phase::Withdrawing),
            Phase::Withdrawing => Some(Phase::RolledBack),
            Phase::PendingApproval | Phase::Completed | Phase::RolledBack => None,
        }
    }

    /// What a peer's confirmation of this phase asserts.
    pub fn peer_step(&self) -> &'static str {
        match self {
            Phase::Staged => "trusts both the old and the new pin",
            Phase::Presenting => "accepted the owner presenting the new certificate",
            Phase::Retiring => "no longer trusts the old pin",
            Phase::Withdrawing => "no longer trusts the new pin",
            _ => "nothing to confirm",
        }
    }
}

impl fmt::Display for Phase {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// An administrator's exclusion of a peer from a rotation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Exclusion {
    /// The administrator who excluded it.
    pub by: String,
    /// Leader time of the exclusion.
    pub at: Millis,
    /// The phase the rotation was in.
    pub phase: Phase,
}

/// What a rotation is waiting for before it can advance.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Waiting {
    /// An administrator other than the proposer must approve.
    Approval,
    /// The owner must confirm the current phase.
    Owner,
    /// This peer must confirm the current phase (or be excluded).
    Peer(Peer),
}

impl fmt::Display for Waiting {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Waiting::Approval => f.write_str("approval by a second administrator"),
            Waiting::Owner => f.write_str("the owner"),
            Waiting::Peer(p) => write!(f, "{p}"),
        }
    }
}

/// What an applied transition did. Recorded in the rotation's history and
/// returned to the caller for its audit record.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum Event {
    /// The rotation was proposed; it entered `phase` (`PendingApproval`
    /// under four-eyes, `Staged` under auto).
    Proposed {
        policy: ApprovalPolicy,
        phase: Phase,
    },
    /// A second administrator approved: `PendingApproval` -> `Staged`.
    Approved,
    /// A peer confirmed `phase`.
    Confirmed { peer: Peer, phase: Phase },
    /// The owner confirmed `phase`.
    OwnerConfirmed { phase: Phase },
    /// An administrator excluded a peer: it is no longer waited for.
    Excluded { peer: Peer },
    /// Every party confirmed `from`: the rotation moved on to `to`.
    Advanced { from: Phase, to: Phase },
    /// Rolled back from `from` into `to`.
    RollbackStarted { from: Phase, to: Phase },
}

impl Event {
    /// Whether the event entered a new phase (which is what changes who
    /// trusts or presents what): the replicated state bumps its epoch for
    /// these.
    pub fn is_phase_change(&self) -> bool {
        self.entered().is_some()
    }

    /// The phase this event entered, if it changed the phase.
    pub fn entered(&self) -> Option<Phase> {
        match self {
            Event::Proposed { phase, .. } => Some(*phase),
            Event::Approved => Some(Phase::Staged),
            Event::Advanced { to, .. } | Event::RollbackStarted { to, .. } => Some(*to),
            Event::Confirmed { .. } | Event::OwnerConfirmed { .. } | Event::Excluded { .. } => None,
        }
    }
}

impl fmt::Display for Event {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Event::Proposed { policy, phase } => write!(
                f,
                "rotation proposed ({} approval), now {phase}",
                policy.as_str()
            ),
            Event::Approved => {
                f.write_str("rotation approved by a second administrator, now staged")
            }
            Event::Confirmed { peer, phase } => {
                write!(f, "{peer} confirmed {phase}: it {}", phase.peer_step())
            }
            Event::OwnerConfirmed { phase } => match phase {
                Phase::Presenting => {
                    f.write_str("the owner confirmed it presents the new certificate")
                }
                Phase::Reverting => {
                    f.write_str("the owner confirmed it presents the old certificate again")
                }
                other => write!(f, "the owner confirmed {other}"),
            },
            Event::Excluded { peer } => write!(
                f,
                "{peer} excluded: no longer waited for; it may refuse the owner's certificate"
            ),
            Event::Advanced { from, to } => write!(f, "{from} -> {to}"),
            Event::RollbackStarted { from, to } => write!(f, "rollback from {from}, now {to}"),
        }
    }
}

/// One applied transition, in the rotation's own history.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HistoryEntry {
    /// Leader time of the committed entry.
    pub at: Millis,
    /// Who asked (administrator, `node:<id>` or `tern`).
    pub actor: String,
    pub event: Event,
}

/// Why a transition was refused. A refused transition changed nothing.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
#[serde(tag = "refusal", rename_all = "snake_case")]
pub enum RotationError {
    #[error("the new thumbprint {new} is the one already pinned")]
    SameThumbprint { new: Thumbprint },
    #[error("{peer} cannot pin a {kind} certificate (transport pins are held by node:<id>, federation pins by region:<name>)")]
    PeerKindMismatch { peer: Peer, kind: PinKind },
    #[error("{peer} is the owner of the pin; it presents the certificate, it does not pin it")]
    OwnerIsPeer { peer: Peer },
    #[error("an actor identity is required")]
    MissingIdentity,
    #[error("{identity:?} is not an administrator: automation and coordinators cannot approve or exclude")]
    NotAnAdministrator { identity: String },
    #[error("{identity:?} proposed this rotation and cannot approve it: four-eyes needs a different administrator")]
    SelfApproval { identity: String },
    #[error("the approval policy of this rotation is auto: there is nothing to approve")]
    ApprovalNotRequired,
    #[error("the rotation is {phase}, not pending approval")]
    NotPendingApproval { phase: Phase },
    #[error("the rotation is pending approval by a second administrator")]
    AwaitingApproval,
    #[error("this names rotation {given}, but the current rotation is {current}")]
    WrongRotation { current: u64, given: u64 },
    #[error("the rotation is {actual}, not {expected}")]
    StalePhase { expected: Phase, actual: Phase },
    #[error("{peer} is not a peer of this rotation")]
    UnknownPeer { peer: Peer },
    #[error("peers have nothing to confirm in phase {phase}")]
    NoPeerStep { phase: Phase },
    #[error("the owner has nothing to confirm in phase {phase}")]
    NoOwnerStep { phase: Phase },
    #[error("{peer} already confirmed {phase}")]
    PeerAlreadyConfirmed { peer: Peer, phase: Phase },
    #[error("the owner already confirmed {phase}")]
    OwnerAlreadyConfirmed { phase: Phase },
    #[error("{peer} is already excluded")]
    AlreadyExcluded { peer: Peer },
    #[error("cannot leave {phase}: waiting for {}", list(waiting))]
    Blocked { phase: Phase, waiting: Vec<Waiting> },
    #[error("the old pin is retired (phase {phase}): rollback is no longer possible; finish the rotation or start a new one")]
    OldPinRetired { phase: Phase },
    #[error("the rotation is already rolling back (phase {phase})")]
    AlreadyRollingBack { phase: Phase },
    #[error("the rotation is finished ({phase})")]
    Finished { phase: Phase },
}

fn list<T: fmt::Display>(items: &[T]) -> String {
    items
        .iter()
        .map(|i| i.to_string())
        .collect::<Vec<_>>()
        .join(", ")
}

/// What a proposal names. `id` is chosen by the replicated state and unique
/// among all rotations (e.g. the log index of the proposing entry); every
/// confirmation and approval names it, so a late message about an earlier
/// rotation of the same pin is refused.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RotationRequest {
    pub id: u64,
    pub subject: PinSubject,
    /// The thumbprint pinned now.
    pub old: Thumbprint,
    /// The thumbprint of the certificate that replaces it.
    pub new: Thumbprint,
    /// Every party that pins the owner's certificate. Fixed for the
    /// rotation's life.
    pub peers: BTreeSet<Peer>,
    pub policy: ApprovalPolicy,
    /// An administrator, or `tern` for a scheduled rotation.
    pub proposed_by: String,
}

/// One rotation of one pin. Built by `Rotation::propose`, changed only by
/// its transition methods.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Rotation {
    id: u64,
    subject: PinSubject,
    old: Thumbprint,
    new: Thumbprint,
    policy: ApprovalPolicy,
    proposed_by: String,
    approved_by: Option<String>,
    started_at: Millis,
    phase: Phase,
    phase_since: Millis,
    /// The phase rollback left from, once rolled back.
    rolled_back_from: Option<Phase>,
    peers: BTreeSet<Peer>,
    /// The last phase each peer confirmed (in this rotation).
    confirmed: BTreeMap<Peer, Phase>,
    /// The last phase the owner confirmed (in this rotation).
    owner_confirmed: Option<Phase>,
    excluded: BTreeMap<Peer, Exclusion>,
    history: Vec<HistoryEntry>,
}

impl Rotation {
    /// Starts a rotation: `PendingApproval` under four-eyes, `Staged` under
    /// auto. Refused when the new thumbprint is the old one, a peer is the
    /// owner or the wrong kind of party, or the proposer is unnamed.
    pub fn propose(req: RotationRequest, now: Millis) -> Result<Rotation, RotationError> {
        let proposed_by = identity(&req.proposed_by)?;
        if req.old == req.new {
            return Err(RotationError::SameThumbprint { new: req.new });
        }
        if let Some(peer) = req.peers.iter().find(|p| !req.subject.pinned_by_kind_of(p)) {
            return Err(RotationError::PeerKindMismatch {
                peer: peer.clone(),
                kind: req.subject.kind(),
            });
        }
        if let Some(peer) = req.peers.iter().find(|p| req.subject.is(p)) {
            return Err(RotationError::OwnerIsPeer { peer: peer.clone() });
        }
        let phase = match req.policy {
            ApprovalPolicy::Auto => Phase::Staged,
            ApprovalPolicy::FourEyes => Phase::PendingApproval,
        };
        let event = Event::Proposed {
            policy: req.policy,
            phase,
        };
        Ok(Rotation {
            id: req.id,
            subject: req.subject,
            old: req.old,
            new: req.new,
            policy: req.policy,
            proposed_by: proposed_by.clone(),
            approved_by: None,
            started_at: now,
            phase,
            phase_since: now,
            rolled_back_from: None,
            peers: req.peers,
            confirmed: BTreeMap::new(),
            owner_confirmed: None,
            excluded: BTreeMap::new(),
            history: vec![HistoryEntry {
                at: now,
                actor: proposed_by,
                event,
            }],
        })
    }

    /// A second administrator approves a rotation pending approval:
    /// `PendingApproval` -> `Staged`. Refused under the auto policy, when not
    /// pending, for another rotation's id, for automation or coordinator
    /// identities, and for the proposer itself.
    pub fn approve(&mut self, id: u64, by: &str, now: Millis) -> Result<Event, RotationError> {
        let by = identity(by)?;
        self.check_id(id)?;
        self.check_running()?;
        if self.policy == ApprovalPolicy::Auto {
            return Err(RotationError::ApprovalNotRequired);
        }
        if self.phase != Phase::PendingApproval {
            return Err(RotationError::NotPendingApproval { phase: self.phase });
        }
        administrator(&by)?;
        if same_identity(&by, &self.proposed_by) {
            return Err(RotationError::SelfApproval { identity: by });
        }
        self.approved_by = Some(by.clone());
        self.enter(Phase::Staged, now);
        Ok(self.record(now, by, Event::Approved))
    }

    /// A peer confirms it has carried out the current phase (see
    /// `Phase::peer_step`). Excluded peers may still confirm; it is recorded
    /// but not waited for. Refused for another rotation's id, a phase other
    /// than the current one, a phase with no peer step, an unknown peer or a
    /// repeated confirmation.
    pub fn confirm(
        &mut self,
        id: u64,
        peer: &Peer,
        phase: Phase,
        by: &str,
        now: Millis,
    ) -> Result<Event, RotationError> {
        let by = identity(by)?;
        self.check_id(id)?;
        self.check_running()?;
        if !self.peers.contains(peer) {
            return Err(RotationError::UnknownPeer { peer: peer.clone() });
        }
        self.check_phase(phase)?;
        if !phase.peers_confirm() {
            return Err(RotationError::NoPeerStep { phase });
        }
        if self.confirmed.get(peer) == Some(&phase) {
            return Err(RotationError::PeerAlreadyConfirmed {
                peer: peer.clone(),
                phase,
            });
        }
        self.confirmed.insert(peer.clone(), phase);
        Ok(self.record(
            now,
            by,
            Event::Confirmed {
                peer: peer.clone(),
                phase,
            },
        ))
    }

    /// The owner confirms the current phase: in `Presenting` that it presents
    /// the new certificate, in `Reverting` that it presents the old one
    /// again. Refused in other phases, for another rotation's id, a stale
    /// phase or a repeated confirmation.
    pub fn confirm_owner(
        &mut self,
        id: u64,
        phase: Phase,
        by: &str,
        now: Millis,
    ) -> Result<Event, RotationError> {
        let by = identity(by)?;
        self.check_id(id)?;
        self.check_running()?;
        self.check_phase(phase)?;
        if !phase.owner_confirms() {
            return Err(RotationError::NoOwnerStep { phase });
        }
        if self.owner_confirmed == Some(phase) {
            return Err(RotationError::OwnerAlreadyConfirmed { phase });
        }
        self.owner_confirmed = Some(phase);
        Ok(self.record(now, by, Event::OwnerConfirmed { phase }))
    }

    /// An administrator excludes a peer: it no longer blocks `advance`. The
    /// exclusion is kept (who, when, in which phase) and reported by
    /// `status`. Refused once finished, for non-administrators, unknown or
    /// already excluded peers.
    pub fn exclude(&mut self, peer: &Peer, by: &str, now: Millis) -> Result<Event, RotationError> {
        let by = identity(by)?;
        self.check_running()?;
        administrator(&by)?;
        if !self.peers.contains(peer) {
            return Err(RotationError::UnknownPeer { peer: peer.clone() });
        }
        if self.excluded.contains_key(peer) {
            return Err(RotationError::AlreadyExcluded { peer: peer.clone() });
        }
        self.excluded.insert(
            peer.clone(),
            Exclusion {
                by: by.clone(),
                at: now,
                phase: self.phase,
            },
        );
        Ok(self.record(now, by, Event::Excluded { peer: peer.clone() }))
    }

    /// Leaves the current phase, which must be `expected` (so that two
    /// proposals computed from the same state cannot advance twice), once
    /// every party in `waiting_for` has confirmed it. Advancing from
    /// `Retiring` completes the rotation; from `Withdrawing` it finishes the
    /// rollback.
    pub fn advance(
        &mut self,
        expected: Phase,
        by: &str,
        now: Millis,
    ) -> Result<Event, RotationError> {
        let by = identity(by)?;
        self.check_running()?;
        if self.phase != expected {
            return Err(RotationError::StalePhase {
                expected,
                actual: self.phase,
            });
        }
        let Some(to) = self.phase.next() else {
            return Err(RotationError::AwaitingApproval);
        };
        let waiting = self.waiting_for();
        if !waiting.is_empty() {
            return Err(RotationError::Blocked {
                phase: self.phase,
                waiting,
            });
        }
        let from = self.phase;
        self.enter(to, now);
        Ok(self.record(now, by, Event::Advanced { from, to }))
    }

    /// Rolls back, while the old pin is not retired: from `PendingApproval`
    /// straight to `RolledBack` (nothing was changed anywhere), from `Staged`
    /// to `Withdrawing` (the owner never presented the new certificate), from
    /// `Presenting` to `Reverting` (the owner goes back to the old
    /// certificate before any peer drops the new pin). Refused from
    /// `Retiring` on, while already rolling back, and once finished.
    pub fn rollback(&mut self, by: &str, now: Millis) -> Result<Event, RotationError> {
        let by = identity(by)?;
        let from = self.phase;
        let to = match from {
            Phase::PendingApproval => Phase::RolledBack,
            Phase::Staged => Phase::Withdrawing,
            Phase::Presenting => Phase::Reverting,
            Phase::Retiring => return Err(RotationError::OldPinRetired { phase: from }),
            Phase::Reverting | Phase::Withdrawing => {
                return Err(RotationError::AlreadyRollingBack { phase: from })
            }
            Phase::Completed | Phase::RolledBack => {
                return Err(RotationError::Finished { phase: from })
            }
        };
        self.rolled_back_from = Some(from);
        self.enter(to, now);
        Ok(self.record(now, by, Event::RollbackStarted { from, to }))
    }

    pub fn id(&self) -> u64 {
        self.id
    }

    pub fn subject(&self) -> &PinSubject {
        &self.subject
    }

    pub fn kind(&self) -> PinKind {
        self.subject.kind()
    }

    pub fn old(&self) -> Thumbprint {
        self.old
    }

    pub fn new_thumbprint(&self) -> Thumbprint {
        self.new
    }

    pub fn policy(&self) -> ApprovalPolicy {
        self.policy
    }

    pub fn proposed_by(&self) -> &str {
        &self.proposed_by
    }

    pub fn approved_by(&self) -> Option<&str> {
        self.approved_by.as_deref()
    }

    pub fn started_at(&self) -> Millis {
        self.started_at
    }

    pub fn phase(&self) -> Phase {
        self.phase
    }

    /// Leader time at which the current phase was entered.
    pub fn phase_since(&self) -> Millis {
        self.phase_since
    }

    /// The phase rollback left from, once rolled back.
    pub fn rolled_back_from(&self) -> Option<Phase> {
        self.rolled_back_from
    }

    pub fn peers(&self) -> &BTreeSet<Peer> {
        &self.peers
    }

    /// The last phase each peer confirmed in this rotation.
    pub fn confirmations(&self) -> &BTreeMap<Peer, Phase> {
        &self.confirmed
    }

    /// The last phase the owner confirmed in this rotation.
    pub fn owner_confirmed(&self) -> Option<Phase> {
        self.owner_confirmed
    }

    pub fn excluded(&self) -> &BTreeMap<Peer, Exclusion> {
        &self.excluded
    }

    pub fn is_excluded(&self, peer: &Peer) -> bool {
        self.excluded.contains_key(peer)
    }

    /// Every applied transition, oldest first (one per committed command).
    pub fn history(&self) -> &[HistoryEntry] {
        &self.history
    }

    /// The pins every peer must hold now for the owner's certificate: the
    /// set to publish to peers (the member table's thumbprints for a
    /// transport pin, the federation peer entry's pins for a federation pin).
    /// The same for every peer: a peer's own progress is in `known_trust`.
    pub fn trusted(&self) -> BTreeSet<Thumbprint> {
        match self.phase {
            Phase::PendingApproval | Phase::Withdrawing | Phase::RolledBack => {
                BTreeSet::from([self.old])
            }
            Phase::Staged | Phase::Presenting | Phase::Reverting => {
                BTreeSet::from([self.old, self.new])
            }
            Phase::Retiring | Phase::Completed => BTreeSet::from([self.new]),
        }
    }

    /// Whether a peer must accept `thumbprint` now.
    pub fn is_trusted(&self, thumbprint: &Thumbprint) -> bool {
        self.trusted().contains(thumbprint)
    }

    /// The certificate the owner must present now.
    pub fn presented(&self) -> Thumbprint {
        match self.phase {
            Phase::Presenting | Phase::Retiring | Phase::Completed => self.new,
            Phase::PendingApproval
            | Phase::Staged
            | Phase::Reverting
            | Phase::Withdrawing
            | Phase::RolledBack => self.old,
        }
    }

    /// Every certificate the owner may be presenting at this moment: what it
    /// was last told, and anything it was told since its last committed
    /// confirmation (it may have acted before its confirmation committed).
    pub fn may_be_presented(&self) -> BTreeSet<Thumbprint> {
        match (self.phase, self.owner_confirmed) {
            (Phase::Presenting, Some(Phase::Presenting)) => BTreeSet::from([self.new]),
            (Phase::Presenting, _) => BTreeSet::from([self.old, self.new]),
            (Phase::Reverting, Some(Phase::Reverting)) => BTreeSet::from([self.old]),
            (Phase::Reverting, _) => BTreeSet::from([self.old, self.new]),
            _ => BTreeSet::from([self.presented()]),
        }
    }

    /// What `peer` is known to trust, from its last committed confirmation
    /// in this rotation (before any: the old pin only).
    pub fn known_trust(&self, peer: &Peer) -> BTreeSet<Thumbprint> {
        match self.confirmed.get(peer) {
            Some(Phase::Staged | Phase::Presenting) => BTreeSet::from([self.old, self.new]),
            Some(Phase::Retiring) => BTreeSet::from([self.new]),
            _ => BTreeSet::from([self.old]),
        }
    }

    /// Who must still confirm before `advance` (or `approve`) can leave the
    /// current phase; empty when nothing blocks it, and once finished.
    pub fn waiting_for(&self) -> Vec<Waiting> {
        if self.phase == Phase::PendingApproval {
            return vec![Waiting::Approval];
        }
        let mut out = Vec::new();
        if self.phase.owner_confirms() && self.owner_confirmed != Some(self.phase) {
            out.push(Waiting::Owner);
        }
        out.extend(self.blocking_peers().into_iter().map(Waiting::Peer));
        out
    }

    /// Peers, not excluded, that have not confirmed the current phase while
    /// it has a peer step.
    pub fn blocking_peers(&self) -> BTreeSet<Peer> {
        if !self.phase.peers_confirm() {
            return BTreeSet::new();
        }
        self.peers
            .iter()
            .filter(|p| {
                !self.excluded.contains_key(*p) && self.confirmed.get(*p) != Some(&self.phase)
            })
            .cloned()
            .collect()
    }

    /// A summary for `tern rotate status` and the admin API.
    pub fn status(&self) -> RotationStatus {
        RotationStatus {
            id: self.id,
            subject: self.subject.clone(),
            phase: self.phase,
            phase_since: self.phase_since,
            old: self.old,
            new: self.new,
            trusted: self.trusted(),
            presented: self.presented(),
            waiting_for: self.waiting_for(),
            excluded: self.excluded.clone(),
            policy: self.policy,
            proposed_by: self.proposed_by.clone(),
            approved_by: self.approved_by.clone(),
            started_at: self.started_at,
        }
    }

    fn check_id(&self, given: u64) -> Result<(), RotationError> {
        if given != self.id {
            return Err(RotationError::WrongRotation {
                current: self.id,
                given,
            });
        }
        Ok(())
    }

    fn check_running(&self) -> Result<(), RotationError> {
        if self.phase.is_finished() {
            return Err(RotationError::Finished { phase: self.phase });
        }
        Ok(())
    }

    fn check_phase(&self, phase: Phase) -> Result<(), RotationError> {
        if phase != self.phase {
            return Err(RotationError::StalePhase {
                expected: phase,
                actual: self.phase,
            });
        }
        Ok(())
    }

    fn enter(&mut self, phase: Phase, now: Millis) {
        self.phase = phase;
        self.phase_since = now;
    }

    fn record(&mut self, at: Millis, actor: String, event: Event) -> Event {
        self.history.push(HistoryEntry {
            at,
            actor,
            event: event.clone(),
        });
        event
    }
}

/// A rotation as shown to operators.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RotationStatus {
    pub id: u64,
    pub subject: PinSubject,
    pub phase: Phase,
    pub phase_since: Millis,
    pub old: Thumbprint,
    pub new: Thumbprint,
    /// What every peer must trust now.
    pub trusted: BTreeSet<Thumbprint>,
    /// What the owner must present now.
    pub presented: Thumbprint,
    /// Who blocks the next phase.
    pub waiting_for: Vec<Waiting>,
    /// Excluded peers: they may refuse the owner's certificate.
    pub excluded: BTreeMap<Peer, Exclusion>,
    pub policy: ApprovalPolicy,
    pub proposed_by: String,
    pub approved_by: Option<String>,
    pub started_at: Millis,
}

impl fmt::Display for RotationStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} rotation {}: {} since {} ms (old {} -> new {}; presenting {}; trusted {})",
            self.subject,
            self.id,
            self.phase,
            self.phase_since.0,
            self.old.short(),
            self.new.short(),
            self.presented.short(),
            self.trusted
                .iter()
                .map(|t| t.short())
                .collect::<Vec<_>>()
                .join("+"),
        )?;
        if !self.waiting_for.is_empty() {
            write!(f, "; waiting for {}", list(&self.waiting_for))?;
        }
        if !self.excluded.is_empty() {
            let ex: Vec<String> = self
                .excluded
                .iter()
                .map(|(p, e)| format!("{p} by {} in {}", e.by, e.phase))
                .collect();
            write!(f, "; EXCLUDED (may refuse the owner): {}", ex.join(", "))?;
        }
        Ok(())
    }
}

/// The identity, trimmed; refused when empty.
fn identity(by: &str) -> Result<String, RotationError> {
    let by = by.trim();
    if by.is_empty() {
        return Err(RotationError::MissingIdentity);
    }
    Ok(by.to_string())
}

/// Automation (`tern`) and coordinators (`node:<id>`) are not administrators.
fn administrator(by: &str) -> Result<(), RotationError> {
    let lower = by.trim().to_ascii_lowercase();
    if lower == AUTOMATION_ACTOR || lower.starts_with("node:") {
        return Err(RotationError::NotAnAdministrator {
            identity: by.to_string(),
        });
    }
    Ok(())
}

fn same_identity(a: &str, b: &str) -> bool {
    a.trim().eq_ignore_ascii_case(b.trim())
}

/// When a certificate valid from `not_before` to `not_after` falls due for
/// rotation: a point in [70 %, 90 %] of its lifetime, spread uniformly by
/// `jitter` (0 gives 70 %, `u64::MAX` gives 90 %). Exact for lifetimes of 5
/// ms and more; shorter ones give a point no later than 90 %. A certificate
/// whose `not_after` is not after `not_before` is due at `not_before`.
pub fn rotation_due_at(not_before: Millis, not_after: Millis, jitter: u64) -> Millis {
    let life = u128::from(not_after.saturating_since(not_before));
    let lo = (life * u128::from(DUE_FROM_PERCENT)).div_ceil(100);
    let hi = life * u128::from(DUE_BY_PERCENT) / 100;
    let offset = if hi < lo {
        hi
    } else {
        // jitter * (span + 1) < 2^128; the shift maps it onto 0..=span.
        lo + ((u128::from(jitter) * (hi - lo + 1)) >> 64)
    };
    // offset <= life, which came from a u64.
    not_before.plus(u64::try_from(offset).unwrap_or(u64::MAX))
}

/// A jitter derived from a certificate's thumbprint: the same on every
/// replica, different for every certificate.
pub fn jitter_of(thumbprint: &Thumbprint) -> u64 {
    let mut b = [0u8; 8];
    b.copy_from_slice(&thumbprint.0[..8]);
    u64::from_be_bytes(b)
}

/// What stands in the way of starting a rotation, as the caller sees it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Blockers {
    /// Regions committed Unreachable now.
    pub unreachable: BTreeSet<RegionName>,
    /// Agents are being handed over (failover) anywhere.
    pub handover_in_progress: bool,
    /// Agents are being handed back anywhere.
    pub handback_in_progress: bool,
    /// A rotation of this pin exists and is not finished (pending approval
    /// included).
    pub rotation_running: bool,
    /// Automation is paused by an administrator.
    pub paused: bool,
}

impl Blockers {
    /// Whether anything blocks a start, whether due or not (used for manual
    /// starts too).
    pub fn check(&self) -> Result<(), WhyNot> {
        if self.rotation_running {
            return Err(WhyNot::RotationRunning);
        }
        if self.paused {
            return Err(WhyNot::Paused);
        }
        if !self.unreachable.is_empty() {
            return Err(WhyNot::RegionUnreachable {
                regions: self.unreachable.iter().cloned().collect(),
            });
        }
        if self.handover_in_progress {
            return Err(WhyNot::HandoverInProgress);
        }
        if self.handback_in_progress {
            return Err(WhyNot::HandbackInProgress);
        }
        Ok(())
    }
}

/// Why an automatic rotation does not start now.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
#[serde(tag = "why_not", rename_all = "snake_case")]
pub enum WhyNot {
    #[error("not due before {} ms", due_at.0)]
    NotDue { due_at: Millis },
    #[error("a rotation of this pin is already running")]
    RotationRunning,
    #[error("automation is paused")]
    Paused,
    #[error("regions are unreachable: {}", list(regions))]
    RegionUnreachable { regions: Vec<RegionName> },
    #[error("a handover is in progress")]
    HandoverInProgress,
    #[error("a hand-back is in progress")]
    HandbackInProgress,
}

/// Whether an automatic rotation may start at `now`: it is due
/// (`now >= due_at`) and nothing in `blockers` stands in the way. The first
/// reason is returned, in this order: not due, rotation running, paused,
/// unreachable regions, handover, hand-back.
pub fn may_start(now: Millis, due_at: Millis, blockers: &Blockers) -> Result<(), WhyNot> {
    if now < due_at {
        return Err(WhyNot::NotDue { due_at });
    }
    blockers.check()
}

/// Whether to alert: the certificate expires within `EXPIRY_ALERT_MS` (or
/// has expired) and no rotation is running. Pass `rotation_running` true
/// only for an approved rotation (`Phase::is_active`): one still waiting for
/// approval does not silence the alert.
pub fn expiry_alert(now: Millis, not_after: Millis, rotation_running: bool) -> bool {
    !rotation_running && not_after.saturating_since(now) <= EXPIRY_ALERT_MS
}

#[cfg(test)]
mod tests {
    use super::*;

    const OLD: Thumbprint = Thumbprint([0x01; 32]);
    const NEW: Thumbprint = Thumbprint([0x02; 32]);
    const T0: Millis = Millis(1_000);

    fn region(s: &str) -> RegionName {
        s.parse().expect("region")
    }

    fn rp(s: &str) -> Peer {
        Peer::Region(region(s))
    }

    fn federation(policy: ApprovalPolicy, peers: &[&str]) -> Rotation {
        Rotation::propose(
            RotationRequest {
                id: 7,
                subject: PinSubject::Federation(region("eu")),
                old: OLD,
                new: NEW,
                peers: peers.iter().map(|p| rp(p)).collect(),
                policy,
                proposed_by: "alice".into(),
            },
            T0,
        )
        .expect("valid proposal")
    }

    fn set(ts: &[Thumbprint]) -> BTreeSet<Thumbprint> {
        ts.iter().copied().collect()
    }

    /// Runs a transition that must be refused with `want`, and checks that
    /// the refusal changed nothing.
    fn refused(
        r: &mut Rotation,
        want: RotationError,
        f: impl FnOnce(&mut Rotation) -> Result<Event, RotationError>,
    ) {
        let before = r.clone();
        assert_eq!(f(r), Err(want));
        assert_eq!(*r, before, "a refused transition changed the rotation");
    }

    fn confirm_all(r: &mut Rotation, peers: &[&str], phase: Phase, t: u64) {
        for p in peers {
            r.confirm(7, &rp(p), phase, "node:9", Millis(t))
                .expect("confirmation accepted");
        }
    }

    // Property: under the auto policy a proposal is staged at once: every
    // peer is told to trust both pins while the owner still presents the old
    // certificate; the proposal is the first history entry and a phase
    // change.
    #[test]
    fn auto_proposal_is_staged_at_once() {
        let r = federation(ApprovalPolicy::Auto, &["us", "ap"]);
        assert_eq!(r.phase(), Phase::Staged);
        assert_eq!(r.trusted(), set(&[OLD, NEW]));
        assert_eq!(r.presented(), OLD);
        assert_eq!(r.may_be_presented(), set(&[OLD]));
        assert_eq!(r.history().len(), 1);
        assert!(r.history()[0].event.is_phase_change());
        assert_eq!(r.history()[0].event.entered(), Some(Phase::Staged));
        assert_eq!(
            r.waiting_for(),
            vec![Waiting::Peer(rp("ap")), Waiting::Peer(rp("us"))]
        );
    }

    // Property: under four-eyes a proposal changes nothing anywhere (old
    // trusted and presented) and cannot advance until approved.
    #[test]
    fn four_eyes_proposal_waits_for_approval() {
        let mut r = federation(ApprovalPolicy::FourEyes, &["us"]);
        assert_eq!(r.phase(), Phase::PendingApproval);
        assert_eq!(r.trusted(), set(&[OLD]));
        assert_eq!(r.presented(), OLD);
        assert_eq!(r.waiting_for(), vec![Waiting::Approval]);
        assert!(r.blocking_peers().is_empty());
        refused(&mut r, RotationError::AwaitingApproval, |r| {
            r.advance(Phase::PendingApproval, "tern", T0)
        });
        refused(
            &mut r,
            RotationError::NoPeerStep {
                phase: Phase::PendingApproval,
            },
            |r| r.confirm(7, &rp("us"), Phase::PendingApproval, "node:2", T0),
        );
    }

    // Property: four-eyes: the proposer cannot approve its own rotation,
    // not even spelled differently; automation and coordinators cannot
    // approve; a second administrator can, once, which stages the rotation.
    #[test]
    fn four_eyes_needs_a_second_administrator() {
        let mut r = federation(ApprovalPolicy::FourEyes, &["us"]);
        for same in ["alice", " ALICE "] {
            refused(
                &mut r,
                RotationError::SelfApproval {
                    identity: same.trim().into(),
                },
                |r| r.approve(7, same, T0),
            );
        }
        for not_admin in ["tern", "node:3"] {
            refused(
                &mut r,
                RotationError::NotAnAdministrator {
                    identity: not_admin.into(),
                },
                |r| r.approve(7, not_admin, T0),
            );
        }
        refused(&mut r, RotationError::MissingIdentity, |r| {
            r.approve(7, "  ", T0)
        });
        refused(
            &mut r,
            RotationError::WrongRotation {
                current: 7,
                given: 6,
            },
            |r| r.approve(6, "bob", T0),
        );
        let ev = r.approve(7, "bob", Millis(2_000)).expect("bob approves");
        assert_eq!(ev, Event::Approved);
        assert!(ev.is_phase_change());
        assert_eq!(r.phase(), Phase::Staged);
        assert_eq!(r.phase_since(), Millis(2_000));
        assert_eq!(r.approved_by(), Some("bob"));
        assert_eq!(r.trusted(), set(&[OLD, NEW]));
        refused(
            &mut r,
            RotationError::NotPendingApproval {
                phase: Phase::Staged,
            },
            |r| r.approve(7, "carol", T0),
        );
    }

    // Property: a scheduled rotation proposed by automation under four-eyes
    // is approved by any administrator.
    #[test]
    fn automation_proposal_is_approved_by_an_administrator() {
        let mut r = Rotation::propose(
            RotationRequest {
                id: 1,
                subject: PinSubject::Transport(1),
                old: OLD,
                new: NEW,
                peers: BTreeSet::from([Peer::Node(2)]),
                policy: ApprovalPolicy::FourEyes,
                proposed_by: "tern".into(),
            },
            T0,
        )
        .expect("valid");
        r.approve(1, "alice", T0).expect("alice approves");
        assert_eq!(r.phase(), Phase::Staged);
    }

    // Property: under the auto policy there is nothing to approve.
    #[test]
    fn approval_refused_under_auto_policy() {
        let mut r = federation(ApprovalPolicy::Auto, &["us"]);
        refused(&mut r, RotationError::ApprovalNotRequired, |r| {
            r.approve(7, "bob", T0)
        });
    }

    // Property: a proposal is refused when the new thumbprint is the old
    // one, a peer is the owner or the wrong kind of party, or the proposer
    // is unnamed.
    #[test]
    fn bad_proposals_are_refused() {
        let req = RotationRequest {
            id: 1,
            subject: PinSubject::Transport(1),
            old: OLD,
            new: NEW,
            peers: BTreeSet::from([Peer::Node(2)]),
            policy: ApprovalPolicy::Auto,
            proposed_by: "alice".into(),
        };
        let with = |f: &dyn Fn(&mut RotationRequest)| {
            let mut r = req.clone();
            f(&mut r);
            Rotation::propose(r, T0)
        };
        assert_eq!(
            with(&|r| r.new = OLD),
            Err(RotationError::SameThumbprint { new: OLD })
        );
        assert_eq!(
            with(&|r| {
                r.peers.insert(rp("us"));
            }),
            Err(RotationError::PeerKindMismatch {
                peer: rp("us"),
                kind: PinKind::Transport
            })
        );
        assert_eq!(
            with(&|r| {
                r.peers.insert(Peer::Node(1));
            }),
            Err(RotationError::OwnerIsPeer {
                peer: Peer::Node(1)
            })
        );
        assert_eq!(
            with(&|r| r.proposed_by = String::new()),
            Err(RotationError::MissingIdentity)
        );
        let fed = with(&|r| {
            r.subject = PinSubject::Federation(region("eu"));
            r.peers = BTreeSet::from([rp("eu")]);
        });
        assert_eq!(fed, Err(RotationError::OwnerIsPeer { peer: rp("eu") }));
        assert!(
            with(&|r| r.peers.clear()).is_ok(),
            "a lone owner may rotate"
        );
    }

    // Property: the full forward path: each phase tells peers and the owner
    // exactly what the module table says, a peer or owner that has not
    // confirmed blocks the next phase, and after completion the old
    // thumbprint is trusted by no one (every peer's known trust is the new
    // pin only).
    #[test]
    fn full_rotation_retires_the_old_pin() {
        let peers = ["us", "ap"];
        let mut r = federation(ApprovalPolicy::Auto, &peers);
        // Staged: one peer confirmed, the other blocks.
        confirm_all(&mut r, &["us"], Phase::Staged, 2_000);
        assert_eq!(r.known_trust(&rp("us")), set(&[OLD, NEW]));
        assert_eq!(r.known_trust(&rp("ap")), set(&[OLD]));
        refused(
            &mut r,
            RotationError::Blocked {
                phase: Phase::Staged,
                waiting: vec![Waiting::Peer(rp("ap"))],
            },
            |r| r.advance(Phase::Staged, "tern", Millis(2_500)),
        );
        confirm_all(&mut r, &["ap"], Phase::Staged, 3_000);
        let ev = r
            .advance(Phase::Staged, "tern", Millis(3_000))
            .expect("advance");
        assert_eq!(
            ev,
            Event::Advanced {
                from: Phase::Staged,
                to: Phase::Presenting
            }
        );
        // Presenting: the owner presents the new certificate; both trusted.
        assert_eq!(r.presented(), NEW);
        assert_eq!(r.trusted(), set(&[OLD, NEW]));
        assert_eq!(r.may_be_presented(), set(&[OLD, NEW]));
        confirm_all(&mut r, &peers, Phase::Presenting, 4_000);
        refused(
            &mut r,
            RotationError::Blocked {
                phase: Phase::Presenting,
                waiting: vec![Waiting::Owner],
            },
            |r| r.advance(Phase::Presenting, "tern", Millis(4_000)),
        );
        r.confirm_owner(7, Phase::Presenting, "node:1", Millis(4_100))
            .expect("owner confirms");
        assert_eq!(r.may_be_presented(), set(&[NEW]));
        r.advance(Phase::Presenting, "tern", Millis(4_200))
            .expect("advance to retiring");
        // Retiring: the old pin is dropped.
        assert_eq!(r.trusted(), set(&[NEW]));
        assert!(r.phase().old_retired());
        confirm_all(&mut r, &peers, Phase::Retiring, 5_000);
        r.advance(Phase::Retiring, "tern", Millis(5_100))
            .expect("complete");
        assert_eq!(r.phase(), Phase::Completed);
        assert!(r.phase().is_finished());
        assert_eq!(r.presented(), NEW);
        assert!(!r.is_trusted(&OLD));
        for p in &peers {
            assert!(
                !r.known_trust(&rp(p)).contains(&OLD),
                "{p} still trusts old"
            );
        }
        assert!(r.waiting_for().is_empty());
        // Every applied transition is in the history; phase changes are
        // exactly the proposal and the three advances.
        let changes: Vec<Phase> = r
            .history()
            .iter()
            .filter_map(|h| h.event.entered())
            .collect();
        assert_eq!(
            changes,
            vec![
                Phase::Staged,
                Phase::Presenting,
                Phase::Retiring,
                Phase::Completed
            ]
        );
        assert_eq!(r.history().len(), 1 + 2 + 1 + 2 + 1 + 1 + 2 + 1);
        refused(
            &mut r,
            RotationError::Finished {
                phase: Phase::Completed,
            },
            |r| r.advance(Phase::Completed, "tern", Millis(6_000)),
        );
        refused(
            &mut r,
            RotationError::Finished {
                phase: Phase::Completed,
            },
            |r| r.rollback("alice", Millis(6_000)),
        );
    }

    // Property: an unconfirmed peer blocks the next phase until an
    // administrator excludes it; the exclusion is recorded (who, when,
    // phase), reported by status, and automation cannot exclude.
    #[test]
    fn unconfirmed_peer_blocks_until_excluded() {
        let mut r = federation(ApprovalPolicy::Auto, &["us", "ap"]);
        confirm_all(&mut r, &["us"], Phase::Staged, 2_000);
        assert_eq!(r.blocking_peers(), BTreeSet::from([rp("ap")]));
        refused(
            &mut r,
            RotationError::NotAnAdministrator {
                identity: "tern".into(),
            },
            |r| r.exclude(&rp("ap"), "tern", Millis(2_100)),
        );
        refused(&mut r, RotationError::UnknownPeer { peer: rp("xx") }, |r| {
            r.exclude(&rp("xx"), "alice", Millis(2_100))
        });
        let ev = r
            .exclude(&rp("ap"), "alice", Millis(2_200))
            .expect("exclude");
        assert_eq!(ev, Event::Excluded { peer: rp("ap") });
        assert!(!ev.is_phase_change());
        assert!(r.blocking_peers().is_empty());
        assert_eq!(
            r.excluded()[&rp("ap")],
            Exclusion {
                by: "alice".into(),
                at: Millis(2_200),
                phase: Phase::Staged
            }
        );
        let shown = r.status().to_string();
        assert!(
            shown.contains("EXCLUDED") && shown.contains("region:ap by alice in staged"),
            "{shown}"
        );
        refused(
            &mut r,
            RotationError::AlreadyExcluded { peer: rp("ap") },
            |r| r.exclude(&rp("ap"), "bob", Millis(2_300)),
        );
        r.advance(Phase::Staged, "tern", Millis(2_400))
            .expect("the excluded peer no longer blocks");
        // An excluded peer may still confirm; it is recorded, not required.
        r.confirm(7, &rp("ap"), Phase::Presenting, "node:3", Millis(2_500))
            .expect("recorded");
        assert_eq!(r.confirmations()[&rp("ap")], Phase::Presenting);
    }

    // Property: confirmations count only for the current phase of the same
    // rotation, once per party, from a peer of the rotation, in a phase
    // where that party has a step; each refusal changes nothing.
    #[test]
    fn confirmations_are_checked() {
        let mut r = federation(ApprovalPolicy::Auto, &["us"]);
        let us = rp("us");
        refused(
            &mut r,
            RotationError::WrongRotation {
                current: 7,
                given: 6,
            },
            |r| r.confirm(6, &us, Phase::Staged, "node:2", T0),
        );
        refused(
            &mut r,
            RotationError::StalePhase {
                expected: Phase::Presenting,
                actual: Phase::Staged,
            },
            |r| r.confirm(7, &us, Phase::Presenting, "node:2", T0),
        );
        refused(&mut r, RotationError::UnknownPeer { peer: rp("ap") }, |r| {
            r.confirm(7, &rp("ap"), Phase::Staged, "node:2", T0)
        });
        refused(&mut r, RotationError::MissingIdentity, |r| {
            r.confirm(7, &us, Phase::Staged, "", T0)
        });
        refused(
            &mut r,
            RotationError::NoOwnerStep {
                phase: Phase::Staged,
            },
            |r| r.confirm_owner(7, Phase::Staged, "node:1", T0),
        );
        let ev = r.confirm(7, &us, Phase::Staged, "node:2", T0).expect("ok");
        assert!(!ev.is_phase_change());
        refused(
            &mut r,
            RotationError::PeerAlreadyConfirmed {
                peer: us.clone(),
                phase: Phase::Staged,
            },
            |r| r.confirm(7, &us, Phase::Staged, "node:2", T0),
        );
        r.advance(Phase::Staged, "tern", T0).expect("advance");
        refused(
            &mut r,
            RotationError::StalePhase {
                expected: Phase::Staged,
                actual: Phase::Presenting,
            },
            |r| r.confirm(7, &us, Phase::Staged, "node:2", T0),
        );
        r.confirm_owner(7, Phase::Presenting, "node:1", T0)
            .expect("owner");
        refused(
            &mut r,
            RotationError::OwnerAlreadyConfirmed {
                phase: Phase::Presenting,
            },
            |r| r.confirm_owner(7, Phase::Presenting, "node:1", T0),
        );
        r.rollback("alice", T0).expect("rollback");
        assert_eq!(r.phase(), Phase::Reverting);
        refused(
            &mut r,
            RotationError::NoPeerStep {
                phase: Phase::Reverting,
            },
            |r| r.confirm(7, &us, Phase::Reverting, "node:2", T0),
        );
    }

    // Property: advance names the phase it leaves; a stale one (e.g. a
    // second proposal computed from the same state) is refused.
    #[test]
    fn advance_with_a_stale_phase_is_refused() {
        let mut r = federation(ApprovalPolicy::Auto, &[]);
        r.advance(Phase::Staged, "tern", T0)
            .expect("nobody to wait for");
        refused(
            &mut r,
            RotationError::StalePhase {
                expected: Phase::Staged,
                actual: Phase::Presenting,
            },
            |r| r.advance(Phase::Staged, "tern", T0),
        );
        refused(&mut r, RotationError::MissingIdentity, |r| {
            r.advance(Phase::Presenting, "", T0)
        });
    }

    // Property: rollback from Staged withdraws the new pin: the owner keeps
    // presenting the old certificate throughout, peers are told to trust the
    // old pin only, and once they confirmed the rotation ends with trust
    // restored to the old pin only.
    #[test]
    fn rollback_from_staged_restores_the_old_pin_only() {
        let mut r = federation(ApprovalPolicy::Auto, &["us", "ap"]);
        confirm_all(&mut r, &["us"], Phase::Staged, 2_000);
        let ev = r.rollback("alice", Millis(2_100)).expect("rollback");
        assert_eq!(
            ev,
            Event::RollbackStarted {
                from: Phase::Staged,
                to: Phase::Withdrawing
            }
        );
        assert!(ev.is_phase_change());
        assert_eq!(r.presented(), OLD);
        assert_eq!(r.may_be_presented(), set(&[OLD]));
        assert_eq!(r.trusted(), set(&[OLD]));
        refused(
            &mut r,
            RotationError::AlreadyRollingBack {
                phase: Phase::Withdrawing,
            },
            |r| r.rollback("alice", Millis(2_200)),
        );
        confirm_all(&mut r, &["us"], Phase::Withdrawing, 2_300);
        refused(
            &mut r,
            RotationError::Blocked {
                phase: Phase::Withdrawing,
                waiting: vec![Waiting::Peer(rp("ap"))],
            },
            |r| r.advance(Phase::Withdrawing, "tern", Millis(2_400)),
        );
        confirm_all(&mut r, &["ap"], Phase::Withdrawing, 2_500);
        r.advance(Phase::Withdrawing, "tern", Millis(2_600))
            .expect("rolled back");
        assert_eq!(r.phase(), Phase::RolledBack);
        assert_eq!(r.rolled_back_from(), Some(Phase::Staged));
        assert_eq!(r.trusted(), set(&[OLD]));
        assert_eq!(r.presented(), OLD);
        for p in ["us", "ap"] {
            assert_eq!(r.known_trust(&rp(p)), set(&[OLD]));
        }
    }

    // Property: rollback from Presenting reverts the owner first: peers
    // keep trusting both pins until the owner confirmed it presents the old
    // certificate again; only then are they told to drop the new pin.
    #[test]
    fn rollback_from_presenting_reverts_the_owner_first() {
        let mut r = federation(ApprovalPolicy::Auto, &["us"]);
        confirm_all(&mut r, &["us"], Phase::Staged, 2_000);
        r.advance(Phase::Staged, "tern", Millis(2_100))
            .expect("presenting");
        r.confirm_owner(7, Phase::Presenting, "node:1", Millis(2_200))
            .expect("owner presents new");
        r.rollback("bob", Millis(2_300)).expect("rollback");
        assert_eq!(r.phase(), Phase::Reverting);
        assert_eq!(r.presented(), OLD);
        assert_eq!(r.trusted(), set(&[OLD, NEW]), "peers keep the new pin");
        assert_eq!(r.may_be_presented(), set(&[OLD, NEW]));
        assert_eq!(r.waiting_for(), vec![Waiting::Owner]);
        refused(
            &mut r,
            RotationError::Blocked {
                phase: Phase::Reverting,
                waiting: vec![Waiting::Owner],
            },
            |r| r.advance(Phase::Reverting, "tern", Millis(2_400)),
        );
        r.confirm_owner(7, Phase::Reverting, "node:1", Millis(2_500))
            .expect("owner presents old again");
        assert_eq!(r.may_be_presented(), set(&[OLD]));
        r.advance(Phase::Reverting, "tern", Millis(2_600))
            .expect("withdrawing");
        assert_eq!(r.trusted(), set(&[OLD]));
        confirm_all(&mut r, &["us"], Phase::Withdrawing, 2_700);
        r.advance(Phase::Withdrawing, "tern", Millis(2_800))
            .expect("rolled back");
        assert_eq!(r.phase(), Phase::RolledBack);
        assert_eq!(r.trusted(), set(&[OLD]));
        assert_eq!(r.presented(), OLD);
    }

    // Property: rollback of a rotation pending approval cancels it at once
    // (nothing was changed anywhere).
    #[test]
    fn rollback_pending_approval_cancels() {
        let mut r = federation(ApprovalPolicy::FourEyes, &["us"]);
        r.rollback("alice", Millis(2_000)).expect("cancel");
        assert_eq!(r.phase(), Phase::RolledBack);
        assert_eq!(r.trusted(), set(&[OLD]));
        refused(
            &mut r,
            RotationError::Finished {
                phase: Phase::RolledBack,
            },
            |r| r.approve(7, "bob", Millis(2_100)),
        );
        refused(
            &mut r,
            RotationError::Finished {
                phase: Phase::RolledBack,
            },
            |r| r.exclude(&rp("us"), "bob", Millis(2_100)),
        );
    }

    // Property: once Retiring is committed the old pin is retired and
    // rollback is refused; the rotation can only finish.
    #[test]
    fn rollback_refused_once_the_old_pin_is_retired() {
        let mut r = federation(ApprovalPolicy::Auto, &[]);
        r.advance(Phase::Staged, "tern", T0).expect("presenting");
        r.confirm_owner(7, Phase::Presenting, "node:1", T0)
            .expect("owner");
        r.advance(Phase::Presenting, "tern", T0).expect("retiring");
        refused(
            &mut r,
            RotationError::OldPinRetired {
                phase: Phase::Retiring,
            },
            |r| r.rollback("alice", T0),
        );
        refused(&mut r, RotationError::MissingIdentity, |r| {
            r.rollback(" ", T0)
        });
    }

    // Property: a rotation survives JSON (the replicated state's snapshot
    // and row format), including as the value of a map keyed by subject;
    // peers and subjects round-trip through their string forms and bad ones
    // are refused.
    #[test]
    fn serde_round_trip() {
        let mut r = federation(ApprovalPolicy::FourEyes, &["us", "ap"]);
        r.approve(7, "bob", T0).expect("approve");
        r.exclude(&rp("ap"), "bob", T0).expect("exclude");
        confirm_all(&mut r, &["us"], Phase::Staged, 2_000);
        let map = BTreeMap::from([(r.subject().clone(), r.clone())]);
        let json = serde_json::to_string(&map).expect("serialize");
        let back: BTreeMap<PinSubject, Rotation> = serde_json::from_str(&json).expect("parse");
        assert_eq!(back, map);
        let err = RotationError::Blocked {
            phase: Phase::Staged,
            waiting: vec![Waiting::Owner, Waiting::Peer(rp("us"))],
        };
        let json = serde_json::to_string(&err).expect("serialize");
        assert_eq!(
            serde_json::from_str::<RotationError>(&json).expect("parse"),
            err
        );
        for s in ["transport:12", "federation:eu-west"] {
            assert_eq!(s.parse::<PinSubject>().expect("subject").to_string(), s);
        }
        for s in ["node:12", "region:eu-west"] {
            assert_eq!(s.parse::<Peer>().expect("peer").to_string(), s);
        }
        for bad in ["transport:x", "federation:EU", "node", "region:", "x:1"] {
            assert!(bad.parse::<PinSubject>().is_err() && bad.parse::<Peer>().is_err());
        }
    }

    // Property: status names the phase, the thumbprints and who blocks.
    #[test]
    fn status_reports_what_blocks() {
        let r = federation(ApprovalPolicy::Auto, &["us"]);
        let s = r.status();
        assert_eq!(s.waiting_for, vec![Waiting::Peer(rp("us"))]);
        let shown = s.to_string();
        assert!(
            shown.starts_with("federation:eu rotation 7: staged"),
            "{shown}"
        );
        assert!(shown.contains("waiting for region:us"), "{shown}");
        assert!(!shown.contains("EXCLUDED"), "{shown}");
    }

    // Property: the due time spans exactly [70 %, 90 %] of the lifetime
    // across the jitter range, and degenerate lifetimes stay inside it.
    #[test]
    fn due_time_endpoints() {
        let nb = Millis(1_000);
        assert_eq!(rotation_due_at(nb, Millis(1_100), 0), Millis(1_070));
        assert_eq!(rotation_due_at(nb, Millis(1_100), u64::MAX), Millis(1_090));
        assert_eq!(
            rotation_due_at(nb, Millis(1_100), u64::MAX / 2),
            Millis(1_080)
        );
        assert_eq!(rotation_due_at(nb, nb, 5), nb);
        assert_eq!(
            rotation_due_at(nb, Millis(10), 5),
            nb,
            "not_after before not_before"
        );
        assert_eq!(rotation_due_at(nb, Millis(1_001), u64::MAX), nb);
        let ninety_days = 90 * 24 * 3600 * 1000;
        let due = rotation_due_at(Millis(0), Millis(ninety_days), 0);
        assert_eq!(due, Millis(63 * 24 * 3600 * 1000));
        assert_eq!(jitter_of(&Thumbprint([0xff; 32])), u64::MAX);
        assert_eq!(jitter_of(&OLD), 0x0101_0101_0101_0101);
    }

    // Property: an automatic rotation starts only when due, and never while
    // a rotation of the pin runs, automation is paused, a region is
    // Unreachable, or a handover or hand-back is in progress.
    #[test]
    fn may_start_refuses_under_each_blocker() {
        let due = Millis(5_000);
        let clear = Blockers::default();
        assert_eq!(may_start(Millis(5_000), due, &clear), Ok(()));
        assert_eq!(
            may_start(Millis(4_999), due, &clear),
            Err(WhyNot::NotDue { due_at: due })
        );
        let cases: Vec<(Blockers, WhyNot)> = vec![
            (
                Blockers {
                    rotation_running: true,
                    ..Blockers::default()
                },
                WhyNot::RotationRunning,
            ),
            (
                Blockers {
                    paused: true,
                    ..Blockers::default()
                },
                WhyNot::Paused,
            ),
            (
                Blockers {
                    unreachable: BTreeSet::from([region("us")]),
                    ..Blockers::default()
                },
                WhyNot::RegionUnreachable {
                    regions: vec![region("us")],
                },
            ),
            (
                Blockers {
                    handover_in_progress: true,
                    ..Blockers::default()
                },
                WhyNot::HandoverInProgress,
            ),
            (
                Blockers {
                    handback_in_progress: true,
                    ..Blockers::default()
                },
                WhyNot::HandbackInProgress,
            ),
        ];
        for (b, why) in cases {
            assert_eq!(may_start(Millis(9_000), due, &b), Err(why.clone()), "{why}");
            assert_eq!(b.check(), Err(why));
        }
    }

    // Property: the expiry alert fires within 14 days of expiry (and after
    // it) unless a rotation is running, and not before.
    #[test]
    fn expiry_alert_window() {
        let not_after = Millis(100 * EXPIRY_ALERT_MS);
        let edge = Millis(not_after.0 - EXPIRY_ALERT_MS);
        assert!(!expiry_alert(Millis(edge.0 - 1), not_after, false));
        assert!(expiry_alert(edge, not_after, false));
        assert!(expiry_alert(not_after.plus(1), not_after, false), "expired");
        assert!(!expiry_alert(edge, not_after, true));
    }
}
