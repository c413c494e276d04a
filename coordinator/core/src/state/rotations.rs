//! Pin rotations in the replicated state: which rotations run, the approval
//! policy per pin kind, and how each committed rotation step changes who
//! trusts what. The phases themselves are [`crate::rotation::Rotation`]'s;
//! this module only applies one step per committed command, keeps the
//! member table's pins equal to what the running transport rotation says
//! peers trust, and refuses what must not happen (two rotations of one pin,
//! a coordinator confirming for another, an automatic start while a region
//! is out or agents are moving).

use serde::{Deserialize, Serialize};

use super::{Placement, ReplicatedState, RowKey};
use crate::command::Rejection;
use crate::health::RegionState;
use crate::ids::{NodeId, RegionName, Thumbprint};
use crate::member::{Member, MemberRole};
use crate::rotation::{
    ApprovalPolicy, Blockers, Peer, Phase, PinKind, PinSubject, Rotation, RotationRequest,
    AUTOMATION_ACTOR,
};
use crate::time::Millis;

/// Finished rotations kept for `tern rotate status` (the newest ones).
pub const FINISHED_ROTATIONS_KEPT: usize = 20;

/// One step of a pin rotation, as proposed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum RotateOp {
    /// Start rotating `subject`'s pin to `new`. The old thumbprint, the
    /// peers and the approval policy come from the state. The rotation's id
    /// is the log index of the entry.
    Start {
        subject: PinSubject,
        new: Thumbprint,
    },
    /// A second administrator approves a four-eyes rotation.
    Approve { id: u64 },
    /// A peer confirms it carried out `phase` (a coordinator, for itself).
    Confirm { id: u64, peer: Peer, phase: Phase },
    /// The owner confirms `phase` (presents the new, or again the old,
    /// certificate).
    ConfirmOwner { id: u64, phase: Phase },
    /// An administrator stops waiting for `peer`.
    Exclude { id: u64, peer: Peer },
    /// Leave `expected` (refused unless it is the current phase and
    /// nobody is waited for).
    Advance { id: u64, expected: Phase },
    /// Roll back while the old pin is not retired.
    Rollback { id: u64 },
}

impl RotateOp {
    /// The rotation the step is about (`None` for a start).
    pub fn id(&self) -> Option<u64> {
        match self {
            RotateOp::Start { .. } => None,
            RotateOp::Approve { id }
            | RotateOp::Confirm { id, .. }
            | RotateOp::ConfirmOwner { id, .. }
            | RotateOp::Exclude { id, .. }
            | RotateOp::Advance { id, .. }
            | RotateOp::Rollback { id } => Some(*id),
        }
    }
}

/// Whether `actor` is a coordinator (`node:<id>`) serving `region`.
fn region_coordinator(
    members: &std::collections::BTreeMap<NodeId, Member>,
    actor: &str,
    region: &RegionName,
) -> bool {
    actor
        .trim()
        .strip_prefix("node:")
        .and_then(|n| n.parse::<NodeId>().ok())
        .and_then(|id| members.get(&id))
        .is_some_and(|m| m.role == MemberRole::Region && &m.region == region)
}

fn conflict(message: impl Into<String>) -> Rejection {
    Rejection::Conflict {
        message: message.into(),
    }
}

impl ReplicatedState {
    /// Every rotation kept: running ones and the newest finished ones.
    pub fn rotations(&self) -> &std::collections::BTreeMap<u64, Rotation> {
        &self.rotations
    }

    /// The running rotation of `subject`, if any.
    pub fn running_rotation(&self, subject: &PinSubject) -> Option<&Rotation> {
        self.rotations
            .values()
            .find(|r| r.subject() == subject && !r.phase().is_finished())
    }

    /// The approval policy of a pin kind (default: auto).
    pub fn rotation_policy(&self, kind: PinKind) -> ApprovalPolicy {
        match kind {
            PinKind::Transport => self.meta.transport_approval,
            PinKind::Federation => self.meta.federation_approval,
        }
    }

    /// What stands in the way of an automatic rotation start now.
    pub fn rotation_blockers(&self) -> Blockers {
        Blockers {
            unreachable: self
                .regions
                .iter()
                .filter(|(_, r)| r.state == RegionState::Unreachable)
                .map(|(n, _)| n.clone())
                .collect(),
            handover_in_progress: self
                .agents
                .values()
                .any(|a| matches!(a.placement, Placement::Redirected { .. })),
            handback_in_progress: self
                .agents
                .values()
                .any(|a| matches!(a.placement, Placement::Returning { .. })),
            rotation_running: self.rotations.values().any(|r| !r.phase().is_finished()),
            paused: self.meta.paused,
        }
    }

    pub(super) fn set_rotation_policy(
        &mut self,
        kind: PinKind,
        policy: ApprovalPolicy,
    ) -> Result<String, Rejection> {
        let field = match kind {
            PinKind::Transport => &mut self.meta.transport_approval,
            PinKind::Federation => &mut self.meta.federation_approval,
        };
        let before = *field;
        *field = policy;
        self.dirty.insert(RowKey::Meta);
        self.bump_epoch();
        Ok(format!(
            "{kind} pin rotations: approval {} -> {}",
            before.as_str(),
            policy.as_str()
        ))
    }

    pub(super) fn rotate(
        &mut self,
        log_index: u64,
        at: Millis,
        actor: &str,
        op: &RotateOp,
    ) -> Result<String, Rejection> {
        let (id, event) = match op {
            RotateOp::Start { subject, new } => {
                let rotation = self.start_rotation(log_index, at, actor, subject, *new)?;
                let id = rotation.id();
                let event = rotation
                    .history()
                    .last()
                    .map(|h| h.event.clone())
                    .ok_or_else(|| conflict("a new rotation has no history"))?;
                self.rotations.insert(id, rotation);
                (id, event)
            }
            other => {
                let id = other.id().unwrap_or_default();
                let members = &self.members;
                let rotation = self
                    .rotations
                    .get_mut(&id)
                    .ok_or_else(|| conflict(format!("no rotation {id}")))?;
                let own_node = |n: NodeId| actor.eq_ignore_ascii_case(&format!("node:{n}"));
                let event = match other {
                    RotateOp::Approve { id } => rotation.approve(*id, actor, at),
                    RotateOp::Confirm { id, peer, phase } => {
                        match peer {
                            Peer::Node(n) => {
                                if !own_node(*n) {
                                    return Err(conflict(format!(
                                        "only node {n} confirms for itself (not {actor})"
                                    )));
                                }
                            }
                            Peer::Region(r) => {
                                // A region's coordinator confirms what its
                                // control plane was given; the owner
                                // region's coordinator confirms `presenting`,
                                // which it sees by a green ping.
                                let owner_presenting = *phase == Phase::Presenting
                                    && matches!(rotation.subject(), PinSubject::Federation(o)
                                        if region_coordinator(members, actor, o));
                                if !region_coordinator(members, actor, r) && !owner_presenting {
                                    return Err(conflict(format!(
                                        "only a coordinator of region {r} confirms for it{} (not {actor})",
                                        if *phase == Phase::Presenting {
                                            ", or of the owner region"
                                        } else {
                                            ""
                                        }
                                    )));
                                }
                            }
                        }
                        rotation.confirm(*id, peer, *phase, actor, at)
                    }
                    RotateOp::ConfirmOwner { id, phase } => {
                        match rotation.subject() {
                            PinSubject::Transport(n) => {
                                if !own_node(*n) {
                                    return Err(conflict(format!(
                                        "only node {n} confirms what it presents (not {actor})"
                                    )));
                                }
                            }
                            PinSubject::Federation(o) => {
                                if !region_coordinator(members, actor, o) {
                                    return Err(conflict(format!(
                                        "only a coordinator of region {o} confirms what it presents (not {actor})"
                                    )));
                                }
                            }
                        }
                        rotation.confirm_owner(*id, *phase, actor, at)
                    }
                    RotateOp::Exclude { peer, .. } => rotation.exclude(peer, actor, at),
                    RotateOp::Advance { expected, .. } => rotation.advance(*expected, actor, at),
                    RotateOp::Rollback { .. } => rotation.rollback(actor, at),
                    RotateOp::Start { .. } => return Err(conflict("a start names no rotation")),
                }
                .map_err(|e| conflict(e.to_string()))?;
                (id, event)
            }
        };
        self.dirty.insert(RowKey::Rotation(id));
        let (subject, phase, trusted, new) = {
            let r = &self.rotations[&id];
            (
                r.subject().clone(),
                r.phase(),
                r.trusted(),
                r.new_thumbprint(),
            )
        };
        if event.is_phase_change() {
            self.bump_epoch();
            match &subject {
                PinSubject::Transport(node) => {
                    if let Some(m) = self.members.get_mut(node) {
                        if m.thumbprints != trusted {
                            m.thumbprints = trusted;
                            self.dirty.insert(RowKey::Member(*node));
                        }
                    }
                }
                PinSubject::Federation(region) => {
                    self.set_federation_pins(region, trusted, phase.is_finished(), new);
                }
            }
        }
        if phase.is_finished() {
            self.prune_finished_rotations();
        }
        Ok(format!("{subject} rotation {id}: {event} (phase {phase})"))
    }

    fn start_rotation(
        &self,
        log_index: u64,
        at: Millis,
        actor: &str,
        subject: &PinSubject,
        new: Thumbprint,
    ) -> Result<Rotation, Rejection> {
        if let Some(r) = self.running_rotation(subject) {
            return Err(conflict(format!(
                "{subject} is already being rotated (rotation {}, {})",
                r.id(),
                r.phase()
            )));
        }
        if actor.eq_ignore_ascii_case(AUTOMATION_ACTOR) || actor.starts_with("node:") {
            self.rotation_blockers()
                .check()
                .map_err(|why| conflict(format!("an automatic rotation may not start: {why}")))?;
        }
        let (old, peers) = match subject {
            PinSubject::Transport(node) => {
                let m = self
                    .members
                    .get(node)
                    .ok_or_else(|| conflict(format!("node {node} is not a member")))?;
                let [old] = m.thumbprints.iter().copied().collect::<Vec<_>>()[..] else {
                    return Err(conflict(format!(
                        "node {node} has {} pinned thumbprints; a rotation starts from one",
                        m.thumbprints.len()
                    )));
                };
                if let Some(other) = self.members.values().find(|o| o.thumbprints.contains(&new)) {
                    return Err(conflict(format!(
                        "{} is already pinned for node {}",
                        new.short(),
                        other.node_id
                    )));
                }
                let peers = self
                    .members
                    .keys()
                    .filter(|id| *id != node)
                    .map(|id| Peer::Node(*id))
                    .collect();
                (old, peers)
            }
            PinSubject::Federation(region) => {
                let f = self.federation.get(region).ok_or_else(|| {
                    conflict(format!(
                        "region {region} has published no federation certificate"
                    ))
                })?;
                let [old] = f.pins.iter().copied().collect::<Vec<_>>()[..] else {
                    return Err(conflict(format!(
                        "region {region} has {} federation pins; a rotation starts from one",
                        f.pins.len()
                    )));
                };
                if !f.certs.contains_key(&new) {
                    return Err(conflict(format!(
                        "{} is not a published federation certificate of region {region}: \
                         its coordinator publishes it first",
                        new.short()
                    )));
                }
                let peers: std::collections::BTreeSet<Peer> = self
                    .members
                    .values()
                    .filter(|m| m.role == MemberRole::Region && &m.region != region)
                    .map(|m| Peer::Region(m.region.clone()))
                    .collect();
                (old, peers)
            }
        };
        Rotation::propose(
            RotationRequest {
                id: log_index,
                subject: subject.clone(),
                old,
                new,
                peers,
                policy: self.rotation_policy(subject.kind()),
                proposed_by: actor.to_string(),
            },
            at,
        )
        .map_err(|e| conflict(e.to_string()))
    }

    fn prune_finished_rotations(&mut self) {
        let finished: Vec<u64> = self
            .rotations
            .iter()
            .filter(|(_, r)| r.phase().is_finished())
            .map(|(id, _)| *id)
            .collect();
        let excess = finished.len().saturating_sub(FINISHED_ROTATIONS_KEPT);
        for id in finished.into_iter().take(excess) {
            self.rotations.remove(&id);
            self.dirty.insert(RowKey::Rotation(id));
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use super::*;
    use crate::command::{Batch, Command, Outcome, Proposal};
    use crate::member::{Member, MemberRole};

    const OLD: Thumbprint = Thumbprint([1; 32]);
    const NEW: Thumbprint = Thumbprint([9; 32]);

    struct World {
        s: ReplicatedState,
        index: u64,
    }

    impl World {
        /// Three region coordinators, node n pinned by thumbprint [n; 32].
        fn new() -> World {
            let mut w = World {
                s: ReplicatedState::default(),
                index: 0,
            };
            for (id, region) in [(1, "eu"), (2, "us"), (3, "ap")] {
                let member = Member {
                    node_id: id,
                    region: region.parse().expect("region"),
                    role: MemberRole::Region,
                    address: format!("127.0.0.{id}:7400"),
                    thumbprints: [Thumbprint([id as u8; 32])].into(),
                    control_plane: Some(format!("https://127.0.1.{id}:443")),
                };
                w.ok(
                    "admin:ops",
                    Command::UpsertMember {
                        member,
                        expect_epoch: None,
                    },
                );
            }
            w
        }

        fn apply(&mut self, actor: &str, command: Command) -> Outcome {
            self.index += 1;
            let batch = Batch {
                at: Millis(1_000 * self.index),
                proposals: vec![Proposal {
                    request_id: format!("r{}", self.index).parse().expect("id"),
                    actor: actor.into(),
                    command,
                }],
            };
            self.s
                .apply(self.index, &batch)
                .outcomes
                .pop()
                .expect("outcome")
        }

        fn ok(&mut self, actor: &str, command: Command) {
            let out = self.apply(actor, command.clone());
            assert!(
                matches!(out, Outcome::Applied { .. }),
                "{actor} {command:?}: {out:?}"
            );
        }

        fn refused(&mut self, actor: &str, command: Command) -> String {
            let epoch = self.s.epoch();
            let before = self.s.rotations().clone();
            match self.apply(actor, command) {
                Outcome::Rejected { reason } => {
                    assert_eq!(self.s.epoch(), epoch, "a refusal changes no epoch");
                    assert_eq!(self.s.rotations(), &before, "a refusal changes nothing");
                    reason.to_string()
                }
                other => panic!("expected a refusal, got {other:?}"),
            }
        }

        fn refused_op(&mut self, actor: &str, op: RotateOp) -> String {
            self.refused(actor, Command::Rotate { op })
        }

        fn op(&mut self, actor: &str, op: RotateOp) {
            self.ok(actor, Command::Rotate { op });
        }

        fn pins_of(&self, node: NodeId) -> BTreeSet<Thumbprint> {
            self.s.members()[&node].thumbprints.clone()
        }

        /// Starts rotating node 1 to NEW; returns the rotation id.
        fn start(&mut self, actor: &str) -> u64 {
            self.op(
                actor,
                RotateOp::Start {
                    subject: PinSubject::Transport(1),
                    new: NEW,
                },
            );
            self.index
        }

        fn confirm_peers(&mut self, id: u64, phase: Phase) {
            for n in [2, 3] {
                self.op(
                    &format!("node:{n}"),
                    RotateOp::Confirm {
                        id,
                        peer: Peer::Node(n),
                        phase,
                    },
                );
            }
        }
    }

    /// A transport rotation driven through committed commands keeps node
    /// 1's pinned thumbprints equal to what the phase says peers trust:
    /// old+new from staged to presenting, only new once retiring; each
    /// phase change bumps the epoch; the state survives a rebuild from its
    /// rows at every step.
    #[test]
    fn transport_rotation_moves_the_member_pins_phase_by_phase() {
        let mut w = World::new();
        // Node 1's pin is [1; 32] = OLD.
        let id = w.start("admin:ops");
        let r = &w.s.rotations()[&id];
        assert_eq!(r.phase(), Phase::Staged);
        assert_eq!(w.pins_of(1), [OLD, NEW].into());
        assert_eq!(w.s.pinned_thumbprints().len(), 4);
        let epoch = w.s.epoch();
        w.confirm_peers(id, Phase::Staged);
        assert_eq!(w.s.epoch(), epoch, "confirmations change no phase");
        w.op(
            "tern",
            RotateOp::Advance {
                id,
                expected: Phase::Staged,
            },
        );
        assert!(w.s.epoch() > epoch);
        assert_eq!(w.pins_of(1), [OLD, NEW].into());
        w.op(
            "node:1",
            RotateOp::ConfirmOwner {
                id,
                phase: Phase::Presenting,
            },
        );
        w.confirm_peers(id, Phase::Presenting);
        w.op(
            "tern",
            RotateOp::Advance {
                id,
                expected: Phase::Presenting,
            },
        );
        assert_eq!(w.pins_of(1), [NEW].into(), "old pin retired");
        let rebuilt = ReplicatedState::from_rows(
            w.s.all_rows()
                .into_iter()
                .map(|(k, v)| (k.table().to_string(), k.key(), v)),
        )
        .expect("rows");
        assert_eq!(rebuilt.rotations(), w.s.rotations());
        w.confirm_peers(id, Phase::Retiring);
        w.op(
            "tern",
            RotateOp::Advance {
                id,
                expected: Phase::Retiring,
            },
        );
        assert_eq!(w.s.rotations()[&id].phase(), Phase::Completed);
        assert_eq!(w.pins_of(1), [NEW].into());
        assert!(w.s.running_rotation(&PinSubject::Transport(1)).is_none());
        let last = w.s.audit().back().expect("audit");
        assert_eq!(last.kind, "rotate");
        assert!(last.summary.contains("completed"), "{}", last.summary);
    }

    /// Nobody advances past a peer that has not confirmed, a coordinator
    /// cannot confirm for another, a pin under rotation cannot be rotated
    /// twice, and an excluded peer no longer blocks.
    #[test]
    fn unconfirmed_peers_block_until_excluded() {
        let mut w = World::new();
        let id = w.start("admin:ops");
        w.op(
            "node:2",
            RotateOp::Confirm {
                id,
                peer: Peer::Node(2),
                phase: Phase::Staged,
            },
        );
        let why = w.refused_op(
            "node:2",
            RotateOp::Confirm {
                id,
                peer: Peer::Node(3),
                phase: Phase::Staged,
            },
        );
        assert!(why.contains("only node 3 confirms for itself"), "{why}");
        let why = w.refused_op(
            "tern",
            RotateOp::Advance {
                id,
                expected: Phase::Staged,
            },
        );
        assert!(why.contains("node:3"), "{why}");
        let why = w.refused_op(
            "admin:ops",
            RotateOp::Start {
                subject: PinSubject::Transport(1),
                new: Thumbprint([7; 32]),
            },
        );
        assert!(why.contains("already being rotated"), "{why}");
        w.op(
            "admin:ops",
            RotateOp::Exclude {
                id,
                peer: Peer::Node(3),
            },
        );
        w.op(
            "tern",
            RotateOp::Advance {
                id,
                expected: Phase::Staged,
            },
        );
        assert_eq!(w.s.rotations()[&id].phase(), Phase::Presenting);
    }

    /// A rollback from presenting goes back to the old certificate first
    /// and ends with only the old pin; the old pin is never dropped.
    #[test]
    fn rollback_half_way_restores_the_old_pin() {
        let mut w = World::new();
        let id = w.start("admin:ops");
        w.confirm_peers(id, Phase::Staged);
        w.op(
            "tern",
            RotateOp::Advance {
                id,
                expected: Phase::Staged,
            },
        );
        w.op("admin:ops", RotateOp::Rollback { id });
        assert_eq!(w.s.rotations()[&id].phase(), Phase::Reverting);
        assert_eq!(w.pins_of(1), [OLD, NEW].into());
        w.op(
            "node:1",
            RotateOp::ConfirmOwner {
                id,
                phase: Phase::Reverting,
            },
        );
        w.op(
            "tern",
            RotateOp::Advance {
                id,
                expected: Phase::Reverting,
            },
        );
        assert_eq!(w.s.rotations()[&id].phase(), Phase::Withdrawing);
        assert_eq!(w.pins_of(1), [OLD].into());
        w.confirm_peers(id, Phase::Withdrawing);
        w.op(
            "tern",
            RotateOp::Advance {
                id,
                expected: Phase::Withdrawing,
            },
        );
        assert_eq!(w.s.rotations()[&id].phase(), Phase::RolledBack);
        assert_eq!(w.pins_of(1), [OLD].into());
    }

    /// Under four-eyes a rotation waits for a second administrator: the
    /// proposer cannot approve it, automation cannot either, another
    /// administrator can; nothing is trusted before the approval.
    #[test]
    fn four_eyes_needs_a_second_administrator() {
        let mut w = World::new();
        w.ok(
            "admin:ops",
            Command::SetRotationPolicy {
                pin_kind: PinKind::Transport,
                policy: ApprovalPolicy::FourEyes,
            },
        );
        let id = w.start("admin:alice");
        assert_eq!(w.s.rotations()[&id].phase(), Phase::PendingApproval);
        assert_eq!(w.pins_of(1), [OLD].into(), "pending changes no pin");
        let why = w.refused_op("admin:Alice", RotateOp::Approve { id });
        assert!(why.contains("approve"), "{why}");
        let why = w.refused_op("tern", RotateOp::Approve { id });
        assert!(why.contains("administrator"), "{why}");
        w.op("admin:bob", RotateOp::Approve { id });
        assert_eq!(w.s.rotations()[&id].phase(), Phase::Staged);
        assert_eq!(w.pins_of(1), [OLD, NEW].into());
    }

    /// An automatic start (by a coordinator or `tern`) is refused while a
    /// region is Unreachable or automation is paused; an administrator may
    /// still start one by hand.
    #[test]
    fn automatic_start_waits_for_a_quiet_federation() {
        let mut w = World::new();
        w.ok(
            "admin:ops",
            Command::SetPaused {
                paused: true,
                reason: "test".into(),
            },
        );
        let why = w.refused_op(
            "node:1",
            RotateOp::Start {
                subject: PinSubject::Transport(1),
                new: NEW,
            },
        );
        assert!(why.contains("paused"), "{why}");
        let id = w.start("admin:ops");
        assert_eq!(w.s.rotations()[&id].phase(), Phase::Staged);
    }

    /// A PEM holding one certificate whose DER is `der`.
    fn pem_of(der: &[u8]) -> String {
        use base64::Engine as _;
        format!(
            "-----BEGIN CERTIFICATE-----\n{}\n-----END CERTIFICATE-----\n",
            base64::engine::general_purpose::STANDARD.encode(der)
        )
    }

    fn fed_pins(w: &World, region: &str) -> BTreeSet<Thumbprint> {
        w.s.federation_pins()[&region.parse::<RegionName>().expect("region")]
            .pins
            .clone()
    }

    fn publish(w: &mut World, actor: &str, region: &str, der: &[u8]) -> Thumbprint {
        let pem = pem_of(der);
        w.ok(
            actor,
            Command::PublishFederationCert {
                region: region.parse().expect("region"),
                pem: pem.clone(),
            },
        );
        crate::state::certificate_thumbprint(&pem).expect("pem").0
    }

    fn confirm_regions(w: &mut World, id: u64, phase: Phase) {
        for (n, r) in [(2, "us"), (3, "ap")] {
            w.op(
                &format!("node:{n}"),
                RotateOp::Confirm {
                    id,
                    peer: Peer::Region(r.parse().expect("region")),
                    phase,
                },
            );
        }
    }

    /// A federation rotation of region eu moves eu's committed federation
    /// pins with its phases (old only, old+new from staged, new only from
    /// retiring), keeps the PEM of every pinned certificate, drops the
    /// retired one at completion, and survives a rebuild from its rows.
    #[test]
    fn federation_rotation_moves_the_committed_federation_pins() {
        let mut w = World::new();
        let old = publish(&mut w, "node:1", "eu", b"eu federation cert one");
        assert_eq!(fed_pins(&w, "eu"), [old].into(), "first publication pins");
        let subject = PinSubject::Federation("eu".parse().expect("region"));
        let refused = w.refused_op(
            "node:1",
            RotateOp::Start {
                subject: subject.clone(),
                new: Thumbprint([5; 32]),
            },
        );
        assert!(refused.contains("publishes it first"), "{refused}");
        let new = publish(&mut w, "node:1", "eu", b"eu federation cert two");
        assert_eq!(
            fed_pins(&w, "eu"),
            [old].into(),
            "a later one is not pinned"
        );
        w.op(
            "node:1",
            RotateOp::Start {
                subject: subject.clone(),
                new,
            },
        );
        let id = w.index;
        let r = &w.s.rotations()[&id];
        assert_eq!(r.phase(), Phase::Staged);
        assert_eq!(
            r.peers(),
            &[
                Peer::Region("us".parse().expect("r")),
                Peer::Region("ap".parse().expect("r"))
            ]
            .into()
        );
        assert_eq!(fed_pins(&w, "eu"), [old, new].into());
        let eu = &w.s.federation_pins()[&"eu".parse::<RegionName>().expect("r")];
        assert_eq!(
            eu.pinned_pem_bundle().matches("BEGIN CERTIFICATE").count(),
            2
        );
        confirm_regions(&mut w, id, Phase::Staged);
        w.op(
            "tern",
            RotateOp::Advance {
                id,
                expected: Phase::Staged,
            },
        );
        w.op(
            "node:1",
            RotateOp::ConfirmOwner {
                id,
                phase: Phase::Presenting,
            },
        );
        // The owner region's coordinator confirms each peer's `presenting`
        // (it saw the ping green).
        for r in ["us", "ap"] {
            w.op(
                "node:1",
                RotateOp::Confirm {
                    id,
                    peer: Peer::Region(r.parse().expect("r")),
                    phase: Phase::Presenting,
                },
            );
        }
        w.op(
            "tern",
            RotateOp::Advance {
                id,
                expected: Phase::Presenting,
            },
        );
        assert_eq!(fed_pins(&w, "eu"), [new].into(), "old pin retired");
        confirm_regions(&mut w, id, Phase::Retiring);
        w.op(
            "tern",
            RotateOp::Advance {
                id,
                expected: Phase::Retiring,
            },
        );
        assert_eq!(w.s.rotations()[&id].phase(), Phase::Completed);
        let eu = &w.s.federation_pins()[&"eu".parse::<RegionName>().expect("r")];
        assert_eq!(eu.pins, [new].into());
        assert_eq!(eu.certs.keys().copied().collect::<Vec<_>>(), vec![new]);
        let rebuilt = ReplicatedState::from_rows(
            w.s.all_rows()
                .into_iter()
                .map(|(k, v)| (k.table().to_string(), k.key(), v)),
        )
        .expect("rows");
        assert_eq!(rebuilt.federation_pins(), w.s.federation_pins());
        assert_eq!(rebuilt.rotations(), w.s.rotations());
    }

    /// Who may act for a region: only its own coordinators publish its
    /// certificate, confirm its staged/retiring steps and confirm what the
    /// owner presents; the owner region's coordinator may confirm a peer's
    /// `presenting` (and nothing else for it); a coordinator of a third
    /// region may not.
    #[test]
    fn region_peers_confirm_only_for_themselves_except_presenting() {
        let mut w = World::new();
        let why = w.refused(
            "node:2",
            Command::PublishFederationCert {
                region: "eu".parse().expect("r"),
                pem: pem_of(b"x"),
            },
        );
        assert!(why.contains("only a coordinator of region eu"), "{why}");
        publish(&mut w, "node:1", "eu", b"one");
        let new = publish(&mut w, "node:1", "eu", b"two");
        w.op(
            "admin:ops",
            RotateOp::Start {
                subject: PinSubject::Federation("eu".parse().expect("r")),
                new,
            },
        );
        let id = w.index;
        let us = Peer::Region("us".parse().expect("r"));
        for actor in ["node:1", "node:3"] {
            let why = w.refused(
                actor,
                Command::Rotate {
                    op: RotateOp::Confirm {
                        id,
                        peer: us.clone(),
                        phase: Phase::Staged,
                    },
                },
            );
            assert!(why.contains("only a coordinator of region us"), "{why}");
        }
        confirm_regions(&mut w, id, Phase::Staged);
        w.op(
            "tern",
            RotateOp::Advance {
                id,
                expected: Phase::Staged,
            },
        );
        let why = w.refused_op(
            "node:2",
            RotateOp::ConfirmOwner {
                id,
                phase: Phase::Presenting,
            },
        );
        assert!(why.contains("only a coordinator of region eu"), "{why}");
        let why = w.refused_op(
            "node:3",
            RotateOp::Confirm {
                id,
                peer: us.clone(),
                phase: Phase::Presenting,
            },
        );
        assert!(why.contains("or of the owner region"), "{why}");
        w.op(
            "node:1",
            RotateOp::Confirm {
                id,
                peer: us,
                phase: Phase::Presenting,
            },
        );
        let waiting = w.s.rotations()[&id].waiting_for();
        assert_eq!(
            waiting.len(),
            2,
            "owner and ap still waited for: {waiting:?}"
        );
    }

    /// A rollback of a federation rotation from staged withdraws the new
    /// pin and forgets its certificate: only the old pin is left.
    #[test]
    fn federation_rollback_restores_the_old_pin() {
        let mut w = World::new();
        let old = publish(&mut w, "node:1", "eu", b"one");
        let new = publish(&mut w, "node:1", "eu", b"two");
        w.op(
            "node:1",
            RotateOp::Start {
                subject: PinSubject::Federation("eu".parse().expect("r")),
                new,
            },
        );
        let id = w.index;
        w.op("admin:ops", RotateOp::Rollback { id });
        assert_eq!(fed_pins(&w, "eu"), [old].into());
        confirm_regions(&mut w, id, Phase::Withdrawing);
        w.op(
            "tern",
            RotateOp::Advance {
                id,
                expected: Phase::Withdrawing,
            },
        );
        assert_eq!(w.s.rotations()[&id].phase(), Phase::RolledBack);
        let eu = &w.s.federation_pins()[&"eu".parse::<RegionName>().expect("r")];
        assert_eq!(eu.pins, [old].into());
        assert!(!eu.certs.contains_key(&new));
    }
}
