//! Property tests of the pin rotation state machine (`tern_core::Rotation`).
//!
//! A small world is simulated around one pin: 1-5 peers, each with the set
//! of thumbprints it actually trusts, and the owner, with the thumbprint it
//! actually presents. Peers and the owner follow the committed instructions
//! (`Rotation::trusted`, `Rotation::presented`) at arbitrary moments, with or
//! without confirming, so a peer may have acted on a phase before its
//! confirmation is committed, exactly as over a real network. Proptest
//! drives arbitrary sequences of confirmations (by random peers, for the
//! current or a wrong phase or rotation), advances (with the current or a
//! stale phase), rollbacks, exclusions, approvals by random identities, and
//! new rotations after a finished one; then every case is driven to its end.
//! Failures are shrunk, printed and their seeds kept by proptest (in
//! `rotation_props.proptest-regressions` beside this file).

use std::collections::{BTreeMap, BTreeSet};

use proptest::prelude::*;
use proptest::strategy::ValueTree;
use proptest::test_runner::{Config, TestRunner};
use tern_core::{
    ApprovalPolicy, Event, Millis, Peer, Phase, PinSubject, Rotation, RotationError,
    RotationRequest, Thumbprint,
};

/// Identities random operations act as: two administrators, the first one
/// spelled differently, automation and a coordinator.
const ACTORS: [&str; 5] = ["alice", "bob", " Alice ", "tern", "node:1"];
/// Who may propose.
const PROPOSERS: [&str; 3] = ["alice", "bob", "tern"];
/// An administrator who never proposes: used to finish a case.
const CLOSER: &str = "carol";

const PHASES: [Phase; 8] = Phase::ALL;

#[derive(Debug, Clone)]
enum Op {
    /// A peer applies the current instruction, then confirms `phase` (the
    /// current one when `None`).
    Confirm {
        peer: usize,
        phase: Option<Phase>,
    },
    /// A peer applies the current instruction without confirming (its
    /// confirmation is still in flight).
    PeerApply {
        peer: usize,
    },
    /// The owner applies the current instruction, then confirms `phase`
    /// (the current one when `None`).
    OwnerConfirm {
        phase: Option<Phase>,
    },
    /// The owner applies the current instruction without confirming.
    OwnerApply,
    /// Advance from `expected` (the current phase when `None`).
    Advance {
        expected: Option<Phase>,
    },
    Rollback {
        actor: usize,
    },
    Exclude {
        peer: usize,
        actor: usize,
    },
    Approve {
        actor: usize,
        wrong_id: bool,
    },
    /// A late confirmation naming another rotation.
    StaleConfirm {
        peer: usize,
    },
    /// Once finished, a new rotation of the same pin starts.
    Restart {
        four_eyes: bool,
        proposer: usize,
    },
}

fn phase() -> impl Strategy<Value = Option<Phase>> {
    prop_oneof![
        4 => Just(None),
        1 => proptest::sample::select(PHASES.to_vec()).prop_map(Some),
    ]
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        20 => (0usize..5, phase()).prop_map(|(peer, phase)| Op::Confirm { peer, phase }),
        4 => (0usize..5).prop_map(|peer| Op::PeerApply { peer }),
        8 => phase().prop_map(|phase| Op::OwnerConfirm { phase }),
        3 => Just(Op::OwnerApply),
        12 => phase().prop_map(|expected| Op::Advance { expected }),
        1 => (0usize..ACTORS.len()).prop_map(|actor| Op::Rollback { actor }),
        2 => (0usize..5, 0usize..ACTORS.len()).prop_map(|(peer, actor)| Op::Exclude { peer, actor }),
        5 => (0usize..ACTORS.len(), proptest::bool::weighted(0.1))
            .prop_map(|(actor, wrong_id)| Op::Approve { actor, wrong_id }),
        2 => (0usize..5).prop_map(|peer| Op::StaleConfirm { peer }),
        2 => (any::<bool>(), 0usize..PROPOSERS.len())
            .prop_map(|(four_eyes, proposer)| Op::Restart { four_eyes, proposer }),
    ]
}

#[derive(Debug, Clone)]
struct Case {
    transport: bool,
    peers: usize,
    four_eyes: bool,
    proposer: usize,
    ops: Vec<Op>,
}

fn case() -> impl Strategy<Value = Case> {
    (
        any::<bool>(),
        1usize..=5,
        any::<bool>(),
        0usize..PROPOSERS.len(),
        proptest::collection::vec(op(), 0..100),
    )
        .prop_map(|(transport, peers, four_eyes, proposer, ops)| Case {
            transport,
            peers,
            four_eyes,
            proposer,
            ops,
        })
}

/// What a run went through, for the coverage test.
#[derive(Debug, Default)]
struct Seen {
    phases: BTreeSet<Phase>,
    /// Phases a rollback was applied from.
    rollbacks_from: BTreeSet<Phase>,
    /// Refusals by their serde tag.
    refusals: BTreeSet<String>,
    exclusions: usize,
    restarts: usize,
    completed_before_drain: bool,
}

struct World {
    rot: Rotation,
    subject: PinSubject,
    peers: Vec<Peer>,
    /// What each peer actually trusts for the owner's certificate.
    trust: BTreeMap<Peer, BTreeSet<Thumbprint>>,
    /// What the owner actually presents.
    presenting: Thumbprint,
    /// Independent record of the confirmations the rotation accepted.
    peer_confirmed: BTreeMap<Peer, Phase>,
    owner_confirmed: Option<Phase>,
    next_id: u64,
    next_thumb: u8,
    now: u64,
    seen: Seen,
}

fn thumb(n: u8) -> Thumbprint {
    Thumbprint([n; 32])
}

fn admin(identity: &str) -> bool {
    let i = identity.trim().to_ascii_lowercase();
    i != "tern" && !i.starts_with("node:")
}

fn same(a: &str, b: &str) -> bool {
    a.trim().eq_ignore_ascii_case(b.trim())
}

impl World {
    fn new(c: &Case) -> Result<World, TestCaseError> {
        let (subject, peers): (PinSubject, Vec<Peer>) = if c.transport {
            (
                PinSubject::Transport(1),
                (2..2 + c.peers as u64).map(Peer::Node).collect(),
            )
        } else {
            (
                PinSubject::Federation("r0".parse().expect("region")),
                (1..=c.peers)
                    .map(|i| Peer::Region(format!("r{i}").parse().expect("region")))
                    .collect(),
            )
        };
        let old = thumb(1);
        let rot = propose(
            1,
            &subject,
            &peers,
            old,
            thumb(2),
            c.four_eyes,
            PROPOSERS[c.proposer],
        )?;
        let trust = peers
            .iter()
            .map(|p| (p.clone(), BTreeSet::from([old])))
            .collect();
        let mut w = World {
            rot,
            subject,
            peers,
            trust,
            presenting: old,
            peer_confirmed: BTreeMap::new(),
            owner_confirmed: None,
            next_id: 2,
            next_thumb: 3,
            now: 1_000,
            seen: Seen::default(),
        };
        w.seen.phases.insert(w.rot.phase());
        w.check()?;
        Ok(w)
    }

    fn peer(&self, i: usize) -> Peer {
        self.peers[i % self.peers.len()].clone()
    }

    fn peer_apply(&mut self, p: &Peer) {
        self.trust.insert(p.clone(), self.rot.trusted());
    }

    /// Applies one operation, checks what the rotation answered, then checks
    /// the invariants.
    fn step(&mut self, op: &Op) -> Result<(), TestCaseError> {
        self.now += 10;
        let now = Millis(self.now);
        let before = self.rot.clone();
        let id = self.rot.id();
        let phase = self.rot.phase();
        let result: Result<Event, RotationError> = match op {
            Op::Confirm { peer, phase: want } => {
                let p = self.peer(*peer);
                let want = want.unwrap_or(phase);
                if want == phase {
                    self.peer_apply(&p);
                }
                let r = self.rot.confirm(id, &p, want, "node:9", now);
                // Oracle: accepted exactly for the current phase, when peers
                // have a step in it, once, while running.
                let expect_ok = want == phase
                    && phase.peers_confirm()
                    && self.peer_confirmed.get(&p) != Some(&phase);
                prop_assert_eq!(r.is_ok(), expect_ok, "confirm {} {}: {:?}", p, want, r);
                if r.is_ok() {
                    self.peer_confirmed.insert(p, want);
                }
                r
            }
            Op::PeerApply { peer } => {
                let p = self.peer(*peer);
                self.peer_apply(&p);
                return self.check();
            }
            Op::OwnerConfirm { phase: want } => {
                let want = want.unwrap_or(phase);
                if want == phase {
                    self.presenting = self.rot.presented();
                }
                let r = self.rot.confirm_owner(id, want, "node:1", now);
                let expect_ok =
                    want == phase && phase.owner_confirms() && self.owner_confirmed != Some(phase);
                prop_assert_eq!(r.is_ok(), expect_ok, "owner confirm {}: {:?}", want, r);
                if r.is_ok() {
                    self.owner_confirmed = Some(want);
                }
                r
            }
            Op::OwnerApply => {
                self.presenting = self.rot.presented();
                return self.check();
            }
            Op::Advance { expected } => {
                let expected = expected.unwrap_or(phase);
                let r = self.rot.advance(expected, "tern", now);
                // Oracle: every non-excluded peer (and the owner where it has
                // a step) confirmed the phase, by our own record.
                let peers_done = !phase.peers_confirm()
                    || self.peers.iter().all(|p| {
                        before.is_excluded(p) || self.peer_confirmed.get(p) == Some(&phase)
                    });
                let owner_done = !phase.owner_confirms() || self.owner_confirmed == Some(phase);
                let expect_ok =
                    expected == phase && phase.next().is_some() && peers_done && owner_done;
                prop_assert_eq!(r.is_ok(), expect_ok, "advance from {}: {:?}", expected, r);
                if let Err(RotationError::Blocked { waiting, .. }) = &r {
                    prop_assert_eq!(waiting, &before.waiting_for());
                    prop_assert!(!waiting.is_empty());
                }
                r
            }
            Op::Rollback { actor } => {
                let r = self.rot.rollback(ACTORS[*actor], now);
                // Rollback is possible exactly before retirement, and once.
                let expect_ok = matches!(
                    phase,
                    Phase::PendingApproval | Phase::Staged | Phase::Presenting
                );
                prop_assert_eq!(r.is_ok(), expect_ok, "rollback from {}: {:?}", phase, r);
                if phase == Phase::Retiring {
                    prop_assert_eq!(&r, &Err(RotationError::OldPinRetired { phase }));
                }
                if r.is_ok() {
                    self.seen.rollbacks_from.insert(phase);
                }
                r
            }
            Op::Exclude { peer, actor } => {
                let p = self.peer(*peer);
                let by = ACTORS[*actor];
                let r = self.rot.exclude(&p, by, now);
                let expect_ok = !phase.is_finished() && admin(by) && !before.is_excluded(&p);
                prop_assert_eq!(r.is_ok(), expect_ok, "exclude {} by {}: {:?}", p, by, r);
                if r.is_ok() {
                    self.seen.exclusions += 1;
                }
                r
            }
            Op::Approve { actor, wrong_id } => {
                let by = ACTORS[*actor];
                let given = if *wrong_id { id + 1 } else { id };
                let r = self.rot.approve(given, by, now);
                // Four-eyes: only a different administrator approves, only a
                // pending rotation, only the rotation named.
                let expect_ok = phase == Phase::PendingApproval
                    && !*wrong_id
                    && admin(by)
                    && !same(by, before.proposed_by());
                prop_assert_eq!(r.is_ok(), expect_ok, "approve by {:?}: {:?}", by, r);
                r
            }
            Op::StaleConfirm { peer } => {
                let p = self.peer(*peer);
                let r = self
                    .rot
                    .confirm(id.wrapping_sub(1), &p, phase, "node:9", now);
                prop_assert!(
                    matches!(r, Err(RotationError::WrongRotation { .. })),
                    "a confirmation naming another rotation was not refused as such: {:?}",
                    r
                );
                r
            }
            Op::Restart {
                four_eyes,
                proposer,
            } => {
                if !phase.is_finished() {
                    return Ok(());
                }
                self.restart(*four_eyes, PROPOSERS[*proposer])?;
                return self.check();
            }
        };
        match &result {
            Err(e) => {
                self.seen.refusals.insert(refusal_tag(e));
                prop_assert_eq!(&self.rot, &before, "the refusal {} changed the rotation", e);
            }
            Ok(ev) => {
                // Every applied transition is one history entry; a phase
                // change is stamped with its time.
                prop_assert_eq!(self.rot.history().len(), before.history().len() + 1);
                prop_assert_eq!(self.rot.history().last().map(|h| &h.event), Some(ev));
                prop_assert_eq!(ev.entered().is_some(), self.rot.phase() != phase);
                if let Some(p) = ev.entered() {
                    prop_assert_eq!(p, self.rot.phase());
                    prop_assert_eq!(self.rot.phase_since(), now);
                    self.seen.phases.insert(p);
                }
            }
        }
        self.check()
    }

    fn restart(&mut self, four_eyes: bool, proposer: &str) -> Result<(), TestCaseError> {
        // A finished rotation leaves the pin at what it presents.
        prop_assert_eq!(self.presenting, self.rot.presented());
        // Peers excluded from the last rotation are out of step; bringing
        // them back is an operator's job outside this state machine: model
        // it as done.
        let trusted = self.rot.trusted();
        for p in self.rot.excluded().keys() {
            self.trust.insert(p.clone(), trusted.clone());
        }
        let old = self.rot.presented();
        let new = thumb(self.next_thumb);
        self.next_thumb = self.next_thumb.wrapping_add(1).max(3);
        self.rot = propose(
            self.next_id,
            &self.subject,
            &self.peers,
            old,
            new,
            four_eyes,
            proposer,
        )?;
        self.next_id += 1;
        self.peer_confirmed.clear();
        self.owner_confirmed = None;
        self.seen.restarts += 1;
        self.seen.phases.insert(self.rot.phase());
        Ok(())
    }

    /// The invariants, after every step.
    fn check(&self) -> Result<(), TestCaseError> {
        let r = &self.rot;
        let (old, new) = (r.old(), r.new_thumbprint());
        let phase = r.phase();
        // The owner only ever presents what it was told at some point.
        prop_assert!(self.presenting == old || self.presenting == new);
        prop_assert!(
            r.may_be_presented().contains(&self.presenting),
            "the owner presents {:?}, not among {:?} in {}",
            self.presenting,
            r.may_be_presented(),
            phase
        );
        for p in &self.peers {
            let actual = &self.trust[p];
            // No refusal window: what the owner presents is trusted by every
            // peer that is not excluded...
            if !r.is_excluded(p) {
                prop_assert!(
                    actual.contains(&self.presenting),
                    "{} (not excluded) trusts {:?} but the owner presents {:?} in {}",
                    p,
                    actual,
                    self.presenting,
                    phase
                );
                // ...and the machine's own bookkeeping says so too: whatever
                // the owner may present is in what the peer is known to
                // trust and in what it is told to trust.
                let known = r.known_trust(p);
                let told = r.trusted();
                prop_assert!(
                    r.may_be_presented().is_subset(&known) && r.may_be_presented().is_subset(&told),
                    "{}: may present {:?}, known {:?}, told {:?} in {}",
                    p,
                    r.may_be_presented(),
                    known,
                    told,
                    phase
                );
            }
            // ...and by every peer, excluded or not, that confirmed the
            // phase before the current one (the wording).
            let previous = match phase {
                Phase::Presenting => Some(Phase::Staged),
                Phase::Retiring => Some(Phase::Presenting),
                Phase::Completed => Some(Phase::Retiring),
                _ => None,
            };
            if previous.is_some() && r.confirmations().get(p).copied() == previous {
                prop_assert!(
                    actual.contains(&self.presenting),
                    "{} confirmed {:?} but refuses the presented {:?}",
                    p,
                    previous,
                    self.presenting
                );
            }
        }
        match phase {
            // After retirement completes the old thumbprint is refused.
            Phase::Completed => {
                prop_assert_eq!(r.trusted(), BTreeSet::from([new]));
                prop_assert_eq!(r.presented(), new);
                prop_assert_eq!(self.presenting, new);
                for p in &self.peers {
                    if !r.is_excluded(p) || r.confirmations().get(p) == Some(&Phase::Retiring) {
                        prop_assert!(
                            !self.trust[p].contains(&old),
                            "{} still trusts the retired pin",
                            p
                        );
                    }
                }
            }
            // Rollback before retirement leaves the old thumbprint presented
            // and trusted everywhere.
            Phase::Reverting | Phase::Withdrawing | Phase::RolledBack => {
                prop_assert_eq!(r.presented(), old);
                prop_assert!(r.trusted().contains(&old));
                for p in &self.peers {
                    if !r.is_excluded(p) {
                        prop_assert!(self.trust[p].contains(&old), "{} lost the old pin", p);
                    }
                }
                if phase == Phase::RolledBack {
                    prop_assert_eq!(r.trusted(), BTreeSet::from([old]));
                    prop_assert_eq!(self.presenting, old);
                    for p in &self.peers {
                        if !r.is_excluded(p) {
                            prop_assert_eq!(&self.trust[p], &BTreeSet::from([old]));
                        }
                    }
                }
            }
            _ => {}
        }
        Ok(())
    }

    /// Drives the rotation to its end with a distinct administrator and
    /// every non-excluded party confirming.
    fn finish(&mut self) -> Result<(), TestCaseError> {
        for _ in 0..16 {
            let phase = self.rot.phase();
            if phase.is_finished() {
                return Ok(());
            }
            if phase == Phase::PendingApproval {
                self.now += 10;
                let before = self.rot.clone();
                let r = self.rot.approve(self.rot.id(), CLOSER, Millis(self.now));
                prop_assert!(r.is_ok(), "approval by {} refused: {:?}", CLOSER, r);
                prop_assert_eq!(self.rot.history().len(), before.history().len() + 1);
                self.seen.phases.insert(self.rot.phase());
                self.check()?;
                continue;
            }
            if phase.owner_confirms() && self.rot.owner_confirmed() != Some(phase) {
                self.step(&Op::OwnerConfirm { phase: None })?;
            }
            if phase.peers_confirm() {
                for i in 0..self.peers.len() {
                    let p = self.peers[i].clone();
                    if !self.rot.is_excluded(&p) && self.rot.confirmations().get(&p) != Some(&phase)
                    {
                        self.step(&Op::Confirm {
                            peer: i,
                            phase: None,
                        })?;
                    }
                }
            }
            self.step(&Op::Advance { expected: None })?;
        }
        Err(TestCaseError::fail(format!(
            "the rotation did not finish: {}",
            self.rot.status()
        )))
    }
}

fn propose(
    id: u64,
    subject: &PinSubject,
    peers: &[Peer],
    old: Thumbprint,
    new: Thumbprint,
    four_eyes: bool,
    proposer: &str,
) -> Result<Rotation, TestCaseError> {
    let r = Rotation::propose(
        RotationRequest {
            id,
            subject: subject.clone(),
            old,
            new,
            peers: peers.iter().cloned().collect(),
            policy: if four_eyes {
                ApprovalPolicy::FourEyes
            } else {
                ApprovalPolicy::Auto
            },
            proposed_by: proposer.into(),
        },
        Millis(0),
    );
    r.map_err(|e| TestCaseError::fail(format!("proposal refused: {e}")))
}

fn refusal_tag(e: &RotationError) -> String {
    serde_json::to_value(e)
        .ok()
        .and_then(|v| {
            v.get("refusal")
                .and_then(|t| t.as_str())
                .map(str::to_string)
        })
        .unwrap_or_default()
}

fn run(c: &Case) -> Result<Seen, TestCaseError> {
    let mut w = World::new(c)?;
    for op in &c.ops {
        w.step(op)?;
        if w.rot.phase() == Phase::Completed {
            w.seen.completed_before_drain = true;
        }
    }
    w.finish()?;
    // Persisted and reloaded, the rotation is the same.
    let json = serde_json::to_string(&w.rot).map_err(|e| TestCaseError::fail(e.to_string()))?;
    let back: Rotation =
        serde_json::from_str(&json).map_err(|e| TestCaseError::fail(e.to_string()))?;
    prop_assert_eq!(back, w.rot.clone());
    Ok(w.seen)
}

proptest! {
    #![proptest_config(Config { cases: 1024, ..Config::default() })]

    // Property (the issue's): over every reachable sequence of phases,
    // confirmations, exclusions, approvals and rollbacks, with 1-5 peers
    // acting on instructions before or without confirming: every thumbprint
    // the owner presents is trusted by every non-excluded peer and by every
    // peer that confirmed the previous phase; after retirement completes the
    // old thumbprint is in no confirming peer's trusted set and is no longer
    // trusted; a rollback before retirement leaves the old thumbprint
    // presented and trusted everywhere; rollback is refused from retirement
    // on; only a second administrator approves; refusals change nothing and
    // every applied transition is one history entry.
    #[test]
    fn presented_thumbprint_is_always_trusted(c in case()) {
        run(&c)?;
    }
}

// Property: the generator is not vacuous: over a fixed set of cases the
// random operations reach every phase, roll back from each phase where
// rollback is allowed, complete rotations before the final drive, restart,
// exclude, and provoke the key refusals (self-approval, blocked advance,
// rollback after retirement, stale and wrong-rotation confirmations).
#[test]
fn generator_reaches_every_phase_and_refusal() {
    let mut runner = TestRunner::deterministic();
    let strategy = case();
    let mut all = Seen::default();
    let mut completed = 0;
    for _ in 0..512 {
        let c = strategy.new_tree(&mut runner).expect("a case").current();
        let seen = run(&c).expect("the property holds");
        all.phases.extend(seen.phases);
        all.rollbacks_from.extend(seen.rollbacks_from);
        all.refusals.extend(seen.refusals);
        all.exclusions += seen.exclusions;
        all.restarts += seen.restarts;
        completed += usize::from(seen.completed_before_drain);
    }
    assert_eq!(all.phases, PHASES.iter().copied().collect::<BTreeSet<_>>());
    assert_eq!(
        all.rollbacks_from,
        BTreeSet::from([Phase::PendingApproval, Phase::Staged, Phase::Presenting])
    );
    for tag in [
        "self_approval",
        "not_an_administrator",
        "blocked",
        "old_pin_retired",
        "stale_phase",
        "wrong_rotation",
        "peer_already_confirmed",
        "already_excluded",
        "awaiting_approval",
        "approval_not_required",
        "finished",
    ] {
        assert!(
            all.refusals.contains(tag),
            "never refused with {tag}: {:?}",
            all.refusals
        );
    }
    assert!(
        completed > 10,
        "only {completed} cases completed a rotation on their own"
    );
    assert!(all.exclusions > 0 && all.restarts > 0);
}
