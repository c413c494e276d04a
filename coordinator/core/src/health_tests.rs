//! Table and property tests of the region-health rules stated in `health.rs`.
//!
//! Every test drives the leader's `Detector` with hand-built reports and
//! feeds the commands it proposes into a `ReplicatedState`, exactly as the
//! leader's loop does (evaluate, propose, apply the committed entry, evaluate
//! again with the new committed view). Test code only: nothing here ships.

use std::collections::{BTreeMap, BTreeSet};

use proptest::prelude::*;

use crate::command::{Batch, Command, Outcome, Proposal, Rejection};
use crate::health::{
    ClusterView, Detector, Evaluation, HealthConfig, ObservationRecord, RegionObservation,
    RegionState, Report,
};
use crate::ids::{NodeId, RegionName, Thumbprint};
use crate::member::{Member, MemberRole};
use crate::state::ReplicatedState;
use crate::time::Millis;

// ---------------------------------------------------------------------------
// Fixtures
// ---------------------------------------------------------------------------

/// Leader time at which the scenarios start (far from zero, so that no
/// subtraction saturates by accident).
const T0: u64 = 10_000_000;
const DOWN: u64 = 10_000;
const UP: u64 = 120_000;
const TTL: u64 = 3_000;

fn config() -> HealthConfig {
    HealthConfig {
        down_after_ms: DOWN,
        up_after_ms: UP,
        report_ttl_ms: TTL,
        freeze_above_permille: 500,
    }
}

fn rn(s: &str) -> RegionName {
    s.parse().expect("region name")
}

/// A federation layout: which node serves which region.
#[derive(Debug, Clone, Copy)]
enum Layout {
    /// eu/us/ap served by coordinators 1/2/3.
    Three,
    /// eu/us/ap/sa served by 1/2/3/4.
    Four,
    /// eu/us/ap/sa/af served by 1/2/3/4/5.
    Five,
    /// eu/us served by 1/2, plus witness 9 (a voter serving no region).
    TwoWithWitness,
}

const NAMES: [&str; 5] = ["eu", "us", "ap", "sa", "af"];

impl Layout {
    fn members(self) -> Vec<Member> {
        let regions = match self {
            Layout::Three => 3,
            Layout::Four => 4,
            Layout::Five => 5,
            Layout::TwoWithWitness => 2,
        };
        let mut out: Vec<Member> = (0..regions)
            .map(|i| member(i as NodeId + 1, NAMES[i], MemberRole::Region))
            .collect();
        if let Layout::TwoWithWitness = self {
            out.push(member(9, "witness", MemberRole::Witness));
        }
        out
    }

    fn regions(self) -> Vec<&'static str> {
        self.members()
            .iter()
            .filter(|m| m.role == MemberRole::Region)
            .map(|m| NAMES[(m.node_id - 1) as usize])
            .collect()
    }

    fn voters(self) -> Vec<NodeId> {
        self.members().iter().map(|m| m.node_id).collect()
    }

    /// The node serving `region` (none for the witness).
    fn server(self, region: &str) -> NodeId {
        NAMES
            .iter()
            .position(|n| *n == region)
            .expect("known region") as NodeId
            + 1
    }
}

fn member(id: NodeId, region: &str, role: MemberRole) -> Member {
    Member {
        node_id: id,
        region: rn(region),
        role,
        address: format!("10.0.0.{id}:7400"),
        thumbprints: [Thumbprint([id as u8; 32])].into(),
        control_plane: (role == MemberRole::Region).then(|| format!("https://{region}.example")),
    }
}

fn seen(region: &str, up: bool, for_ms: u64) -> RegionObservation {
    RegionObservation {
        region: rn(region),
        up,
        for_ms,
        consecutive_failures: if up { 0 } else { 2 },
        latency_ms: up.then_some(20),
    }
}

fn report(observer: NodeId, fenced: bool, regions: Vec<RegionObservation>) -> Report {
    Report {
        observer,
        fenced,
        regions,
        reachable: BTreeSet::new(),
    }
}

/// One line per command, for asserting the list an evaluation produced.
fn brief(c: &Command) -> String {
    match c {
        Command::RegionTransition {
            region, from, to, ..
        } => format!("{region}: {} -> {}", from.as_str(), to.as_str()),
        Command::SetFrozen { frozen: true, .. } => "freeze".into(),
        Command::SetFrozen { frozen: false, .. } => "unfreeze".into(),
        other => other.kind().into(),
    }
}

fn briefs(e: &Evaluation) -> Vec<String> {
    e.proposals.iter().map(brief).collect()
}

/// The replicated state, the leader's detector and the log: the leader's
/// loop in miniature.
struct Cluster {
    state: ReplicatedState,
    detector: Detector,
    voters: BTreeSet<NodeId>,
    log_index: u64,
    next_request: u64,
}

impl Cluster {
    fn new(layout: Layout) -> Cluster {
        let mut c = Cluster {
            state: ReplicatedState::default(),
            detector: Detector::new(config()),
            voters: layout.voters().into_iter().collect(),
            log_index: 0,
            next_request: 0,
        };
        for m in layout.members() {
            let out = c.commit(
                T0 - 60_000,
                vec![Command::UpsertMember {
                    member: m,
                    expect_epoch: None,
                }],
            );
            assert!(matches!(out[0], Outcome::Applied { .. }), "{out:?}");
        }
        c
    }

    fn observe(&mut self, at: u64, r: Report) {
        self.detector.observe(Millis(at), r);
    }

    fn evaluate(&mut self, now: u64) -> Evaluation {
        let regions = self.state.regions();
        let view = ClusterView {
            voters: &self.voters,
            regions: &regions,
            committed: self.state.region_records(),
            frozen: self.state.frozen(),
            paused: self.state.paused(),
        };
        self.detector.evaluate(Millis(now), &view)
    }

    /// Applies `commands` as one committed entry stamped `now`.
    fn commit(&mut self, now: u64, commands: Vec<Command>) -> Vec<Outcome> {
        self.log_index += 1;
        let proposals = commands
            .into_iter()
            .map(|command| {
                self.next_request += 1;
                Proposal {
                    request_id: format!("req-{}", self.next_request).parse().expect("id"),
                    actor: "tern".into(),
                    command,
                }
            })
            .collect();
        let out = self.state.apply(
            self.log_index,
            &Batch {
                at: Millis(now),
                proposals,
            },
        );
        self.state.take_dirty();
        out.outcomes
    }

    /// Evaluates and commits whatever was proposed.
    fn step(&mut self, now: u64) -> Evaluation {
        let e = self.evaluate(now);
        let out = self.commit(now, e.proposals.clone());
        for o in out {
            assert!(
                matches!(o, Outcome::Applied { .. }),
                "proposal refused: {o:?}"
            );
        }
        e
    }

    fn state_of(&self, region: &str) -> RegionState {
        self.state
            .region_records()
            .get(&rn(region))
            .map(|r| r.state)
            .unwrap_or_default()
    }
}

/// What each observer currently sees of each region: up or down, and since
/// when (leader time). Reports built from it carry `for_ms = now - since`,
/// as a real observer's would.
#[derive(Clone)]
struct Scene(BTreeMap<(NodeId, &'static str), (bool, u64)>);

impl Scene {
    /// Every voter sees every region up since `since`.
    fn all_up(layout: Layout, since: u64) -> Scene {
        let mut m = BTreeMap::new();
        for v in layout.voters() {
            for r in layout.regions() {
                m.insert((v, r), (true, since));
            }
        }
        Scene(m)
    }

    fn set(&mut self, observer: NodeId, region: &'static str, up: bool, since: u64) {
        self.0.insert((observer, region), (up, since));
    }

    fn report(&self, observer: NodeId, now: u64) -> Report {
        let regions = self
            .0
            .iter()
            .filter(|((o, _), _)| *o == observer)
            .map(|((_, r), (up, since))| seen(r, *up, now - since))
            .collect();
        report(observer, false, regions)
    }

    /// Delivers a fresh report of each of `observers` at `now`.
    fn feed(&self, c: &mut Cluster, now: u64, observers: &[NodeId]) {
        for o in observers {
            let r = self.report(*o, now);
            c.observe(now, r);
        }
    }
}

/// Feeds every voter's report and steps the leader every `every` ms over
/// `[from, to]`; returns every non-empty list of proposals with its time.
fn run(
    c: &mut Cluster,
    scene: &Scene,
    observers: &[NodeId],
    from: u64,
    to: u64,
    every: u64,
) -> Vec<(u64, Vec<String>)> {
    let mut out = Vec::new();
    let mut now = from;
    while now <= to {
        scene.feed(c, now, observers);
        let e = c.step(now);
        if !e.proposals.is_empty() {
            out.push((now, briefs(&e)));
        }
        now += every;
    }
    out
}

// ---------------------------------------------------------------------------
// Table tests
// ---------------------------------------------------------------------------

// Property: one observer alone never makes a region Suspect or Unreachable,
// however long it has seen it down: in 3 regions eu's observers are 2 and 3
// (both are needed); in 5 regions two of eu's four observers are still a
// minority. A silent second observer does not help the lone one either.
#[test]
fn one_observer_alone_never_makes_a_region_suspect() {
    // 3 regions, observer 3 says up.
    let mut c = Cluster::new(Layout::Three);
    let mut scene = Scene::all_up(Layout::Three, T0 - 600_000);
    scene.set(2, "eu", false, T0 - 300_000);
    let got = run(&mut c, &scene, &[1, 2, 3], T0, T0 + 60_000, 1_000);
    assert_eq!(got, vec![], "one of two observers is not a majority");
    assert_eq!(c.state_of("eu"), RegionState::Healthy);

    // 3 regions, observer 3 silent (quorum still holds with 1 and 2).
    let mut c = Cluster::new(Layout::Three);
    let got = run(&mut c, &scene, &[1, 2], T0, T0 + 60_000, 1_000);
    assert_eq!(got, vec![], "a silent observer does not count as down");
    let e = c.evaluate(T0 + 60_000);
    assert!(e.quorum_ok);
    assert_eq!(e.regions[&rn("eu")].computed, RegionState::Healthy);
    assert_eq!(e.regions[&rn("eu")].silent, vec![3]);

    // 5 regions, two of four observers see eu down.
    let mut c = Cluster::new(Layout::Five);
    let mut scene = Scene::all_up(Layout::Five, T0 - 600_000);
    scene.set(2, "eu", false, T0 - 300_000);
    scene.set(3, "eu", false, T0 - 300_000);
    let got = run(&mut c, &scene, &[1, 2, 3, 4, 5], T0, T0 + 60_000, 1_000);
    assert_eq!(got, vec![], "two of four observers are a minority");
    assert_eq!(c.state_of("eu"), RegionState::Healthy);
}

// Property: a majority of observers seeing the plane down for less than
// down_after makes the region Suspect (one proposal, carrying the
// observations), and nothing more until down_after has passed.
#[test]
fn majority_down_below_down_after_is_suspect_only() {
    let mut c = Cluster::new(Layout::Three);
    let mut scene = Scene::all_up(Layout::Three, T0 - 600_000);
    scene.set(2, "eu", false, T0 - 1_000);
    scene.set(3, "eu", false, T0 - 1_000);
    scene.feed(&mut c, T0, &[1, 2, 3]);
    let e = c.step(T0);
    assert_eq!(
        e.proposals,
        vec![Command::RegionTransition {
            region: rn("eu"),
            from: RegionState::Healthy,
            to: RegionState::Suspect,
            observations: vec![
                ObservationRecord {
                    observer: 2,
                    up: false,
                    since: Millis(T0 - 1_000),
                    report_age_ms: 0
                },
                ObservationRecord {
                    observer: 3,
                    up: false,
                    since: Millis(T0 - 1_000),
                    report_age_ms: 0
                },
            ],
        }],
        "both observers of eu see it down: Suspect, with their observations"
    );
    assert_eq!(
        e.regions[&rn("eu")].majority_down_since,
        Some(Millis(T0 - 1_000))
    );
    // Down since T0-1000: Unreachable is due at T0+9000, not before.
    let got = run(&mut c, &scene, &[1, 2, 3], T0 + 250, T0 + 8_999, 250);
    assert_eq!(
        got,
        vec![],
        "down for less than down_after: still only Suspect"
    );
    assert_eq!(c.state_of("eu"), RegionState::Suspect);
}

// Property: once a majority has seen the plane down continuously for
// down_after, exactly one RegionTransition{Suspect -> Unreachable} is
// proposed (at the first evaluation where the dwell is complete, not one ms
// earlier), and nothing after it is committed.
#[test]
fn majority_down_for_down_after_proposes_exactly_one_unreachable() {
    let mut c = Cluster::new(Layout::Three);
    let mut scene = Scene::all_up(Layout::Three, T0 - 600_000);
    scene.set(2, "eu", false, T0);
    // Observer 3 saw it later: the majority (2 of 2) is down since T0+2000.
    scene.set(3, "eu", false, T0 + 2_000);
    let got = run(
        &mut c,
        &scene,
        &[1, 2, 3],
        T0 + 2_000,
        T0 + 2_000 + DOWN - 1,
        1,
    );
    assert_eq!(
        got,
        vec![(T0 + 2_000, vec!["eu: healthy -> suspect".to_string()])],
        "only Suspect until the later observer has seen it down for down_after"
    );
    scene.feed(&mut c, T0 + 2_000 + DOWN, &[1, 2, 3]);
    let e = c.step(T0 + 2_000 + DOWN);
    assert_eq!(
        briefs(&e),
        vec!["eu: suspect -> unreachable"],
        "the majority has seen eu down for exactly down_after: one Unreachable"
    );
    let Command::RegionTransition { observations, .. } = &e.proposals[0] else {
        panic!("not a transition");
    };
    assert_eq!(
        observations
            .iter()
            .map(|o| (o.observer, o.up))
            .collect::<Vec<_>>(),
        vec![(2, false), (3, false)]
    );
    let got = run(
        &mut c,
        &scene,
        &[1, 2, 3],
        T0 + 2_001 + DOWN,
        T0 + 60_000,
        500,
    );
    assert_eq!(
        got,
        vec![],
        "Unreachable is committed: nothing more to propose"
    );
    assert_eq!(c.state_of("eu"), RegionState::Unreachable);
}

// Property: a fenced observer's report counts for nothing: it neither makes
// a majority nor counts towards the leader's quorum.
#[test]
fn fenced_reports_count_for_nothing() {
    let mut c = Cluster::new(Layout::Three);
    let down = vec![seen("eu", false, 60_000), seen("us", true, 60_000)];
    c.observe(
        T0,
        report(
            1,
            false,
            vec![seen("us", true, 60_000), seen("ap", true, 60_000)],
        ),
    );
    c.observe(T0, report(2, false, down.clone()));
    c.observe(T0, report(3, true, down.clone()));
    let e = c.evaluate(T0);
    assert_eq!(
        briefs(&e),
        Vec::<String>::new(),
        "observer 3 is fenced: eu has one down observer"
    );
    assert_eq!(e.regions[&rn("eu")].silent, vec![3]);
    assert_eq!(e.regions[&rn("eu")].computed, RegionState::Healthy);

    // Quorum: with 2 fenced as well, only the leader's own report counts.
    c.observe(T0, report(2, true, down.clone()));
    let e = c.evaluate(T0);
    assert!(!e.quorum_ok, "one unfenced voter of three is no quorum");
    assert_eq!(briefs(&e), Vec::<String>::new());

    // The same reports unfenced do make eu Suspect.
    c.observe(T0, report(2, false, down.clone()));
    c.observe(T0, report(3, false, down));
    assert_eq!(briefs(&c.evaluate(T0)), vec!["eu: healthy -> suspect"]);
}

// Property: a report older than report_ttl_ms counts for nothing; one exactly
// report_ttl_ms old still counts (the boundary is inclusive).
#[test]
fn stale_reports_count_for_nothing() {
    for (age, expect) in [(TTL, vec!["eu: healthy -> suspect"]), (TTL + 1, vec![])] {
        let mut c = Cluster::new(Layout::Three);
        let down = vec![seen("eu", false, 60_000)];
        let now = T0 + 10_000;
        c.observe(now, report(1, false, vec![seen("us", true, 60_000)]));
        c.observe(now, report(2, false, down.clone()));
        c.observe(now - age, report(3, false, down));
        let e = c.evaluate(now);
        assert_eq!(briefs(&e), expect, "observer 3's report is {age} ms old");
        if age > TTL {
            assert_eq!(
                e.regions[&rn("eu")].silent,
                vec![3],
                "a stale observer is silent"
            );
        }
    }
}

// Property: without fresh, unfenced reports from a majority of voters the
// leader proposes nothing (it is probably the partitioned one), although the
// computed states are still shown. Four regions make the difference visible:
// two of eu's three observers are a majority of observers, but two of four
// voters are not a quorum.
#[test]
fn no_quorum_of_fresh_voters_no_proposals() {
    let mut c = Cluster::new(Layout::Four);
    let down = vec![seen("eu", false, 60_000)];
    c.observe(T0, report(2, false, down.clone()));
    c.observe(T0, report(3, false, down.clone()));
    let e = c.evaluate(T0);
    assert!(!e.quorum_ok);
    assert_eq!(
        e.regions[&rn("eu")].computed,
        RegionState::Suspect,
        "computed is still shown"
    );
    assert_eq!(
        briefs(&e),
        Vec::<String>::new(),
        "2 of 4 voters: no quorum, nothing proposed"
    );

    c.observe(T0, report(4, true, down.clone()));
    let e = c.evaluate(T0);
    assert!(!e.quorum_ok, "a fenced third voter does not make a quorum");
    assert_eq!(briefs(&e), Vec::<String>::new());

    c.observe(T0, report(4, false, vec![seen("eu", true, 60_000)]));
    let e = c.evaluate(T0);
    assert!(e.quorum_ok);
    assert_eq!(
        briefs(&e),
        vec!["eu: healthy -> suspect"],
        "3 of 4 voters heard: quorum"
    );

    // Three regions: the leader alone hears only itself.
    let mut c = Cluster::new(Layout::Three);
    c.observe(T0, report(2, false, vec![seen("eu", false, 60_000)]));
    let e = c.evaluate(T0);
    assert!(!e.quorum_ok);
    assert_eq!(briefs(&e), Vec::<String>::new());
}

// Property: when more than half of the regions look down at once the leader
// proposes a freeze, and in that same evaluation it proposes no Unreachable
// even for a region whose down dwell is complete (Healthy -> Suspect is still
// allowed); once frozen, such a region stays Suspect.
#[test]
fn most_regions_down_freezes_and_blocks_unreachable() {
    let mut c = Cluster::new(Layout::Three);
    let mut scene = Scene::all_up(Layout::Three, T0 - 600_000);
    scene.set(2, "eu", false, T0);
    scene.set(3, "eu", false, T0);
    scene.feed(&mut c, T0, &[1, 2, 3]);
    assert_eq!(briefs(&c.step(T0)), vec!["eu: healthy -> suspect"]);

    // eu's dwell is complete at T0+DOWN; at that moment us goes down too.
    let t = T0 + DOWN + 5_000;
    scene.set(1, "us", false, t - 1_000);
    scene.set(3, "us", false, t - 1_000);
    scene.feed(&mut c, t, &[1, 2, 3]);
    let e = c.step(t);
    assert!(e.should_freeze);
    assert_eq!(
        briefs(&e),
        vec!["freeze", "us: healthy -> suspect"],
        "2 of 3 regions look down: freeze, and no Unreachable for eu although its dwell is over"
    );
    assert!(c.state.frozen());

    // Frozen: both stay Suspect however long they are down.
    let got = run(&mut c, &scene, &[1, 2, 3], t + 250, t + 120_000, 1_000);
    assert_eq!(got, vec![], "frozen: no Unreachable");
    let e = c.evaluate(t + 120_000);
    assert_eq!(e.regions[&rn("eu")].computed, RegionState::Suspect);
    assert_eq!(e.regions[&rn("us")].computed, RegionState::Suspect);
    assert_eq!(c.state_of("eu"), RegionState::Suspect);
}

// Property: when the freeze ends every grace timer starts afresh: a region
// that has been majority-down for far longer than down_after before the
// unfreeze still needs a full down_after after it (counted from the first
// evaluation that sees the unfreeze committed) before becoming Unreachable.
#[test]
fn unfreeze_restarts_grace_timers() {
    let mut c = Cluster::new(Layout::Three);
    let mut scene = Scene::all_up(Layout::Three, T0 - 600_000);
    for (o, r) in [(2, "eu"), (3, "eu"), (1, "us"), (3, "us")] {
        scene.set(o, r, false, T0);
    }
    scene.feed(&mut c, T0 + 2_000, &[1, 2, 3]);
    assert_eq!(
        briefs(&c.step(T0 + 2_000)),
        vec!["freeze", "eu: healthy -> suspect", "us: healthy -> suspect"]
    );
    let got = run(&mut c, &scene, &[1, 2, 3], T0 + 3_000, T0 + 59_000, 1_000);
    assert_eq!(got, vec![], "frozen");

    // eu comes back: only us looks down now (1 of 3): unfreeze.
    let u = T0 + 60_000;
    scene.set(2, "eu", true, u - 1_000);
    scene.set(3, "eu", true, u - 1_000);
    scene.feed(&mut c, u, &[1, 2, 3]);
    assert_eq!(
        briefs(&c.step(u)),
        vec!["unfreeze", "eu: suspect -> healthy"]
    );
    assert!(!c.state.frozen());

    // us has been down for 60 s, but its timer restarts at the first
    // evaluation that sees the unfreeze committed (u + 250).
    let floor = u + 250;
    let got = run(&mut c, &scene, &[1, 2, 3], floor, floor + DOWN - 1, 250);
    assert_eq!(
        got,
        vec![],
        "a fresh down_after is needed after the unfreeze"
    );
    assert_eq!(c.state_of("us"), RegionState::Suspect);
    scene.feed(&mut c, floor + DOWN, &[1, 2, 3]);
    assert_eq!(
        briefs(&c.step(floor + DOWN)),
        vec!["us: suspect -> unreachable"],
        "down_after after the unfreeze: now Unreachable"
    );
}

/// Three regions: eu and us down since T0, frozen, then eu back and the
/// freeze lifted by an entry committed at the returned time; us is still
/// Suspect, majority-down for a minute.
fn frozen_then_unfrozen(c: &mut Cluster, scene: &mut Scene) -> u64 {
    for (o, r) in [(2, "eu"), (3, "eu"), (1, "us"), (3, "us")] {
        scene.set(o, r, false, T0);
    }
    scene.feed(c, T0 + 2_000, &[1, 2, 3]);
    assert_eq!(
        briefs(&c.step(T0 + 2_000)),
        vec!["freeze", "eu: healthy -> suspect", "us: healthy -> suspect"]
    );
    let u = T0 + 60_000;
    scene.set(2, "eu", true, u - 1_000);
    scene.set(3, "eu", true, u - 1_000);
    scene.feed(c, u, &[1, 2, 3]);
    assert_eq!(
        briefs(&c.step(u)),
        vec!["unfreeze", "eu: suspect -> healthy"]
    );
    u
}

// Property: the grace restart after an unfreeze survives a change of leader.
// A new leader's detector cannot know when the freeze ended (the previous
// leader's memory is gone), so it restarts every grace timer at its first
// evaluation: a region majority-down for a minute and unfrozen just before
// the leader changed still needs a full down_after, counted from the new
// leader's first evaluation. The same holds for a detector that was cleared
// (leadership lost) and evaluates again (leadership regained).
#[test]
fn new_leader_after_unfreeze_restarts_grace_timers() {
    // A new leader, elected one second after the unfreeze.
    let mut c = Cluster::new(Layout::Three);
    let mut scene = Scene::all_up(Layout::Three, T0 - 600_000);
    let u = frozen_then_unfrozen(&mut c, &mut scene);
    c.detector = Detector::new(config());
    let first = u + 1_000;
    let got = run(&mut c, &scene, &[1, 2, 3], first, first + DOWN - 1, 250);
    assert_eq!(
        got,
        vec![],
        "the new leader waits a fresh down_after after the unfreeze"
    );
    scene.feed(&mut c, first + DOWN, &[1, 2, 3]);
    assert_eq!(
        briefs(&c.step(first + DOWN)),
        vec!["us: suspect -> unreachable"]
    );

    // The old leader saw the unfreeze (u + 250), lost leadership (clear) and
    // regained it at u + 1000.
    let mut c = Cluster::new(Layout::Three);
    let mut scene = Scene::all_up(Layout::Three, T0 - 600_000);
    let u = frozen_then_unfrozen(&mut c, &mut scene);
    let got = run(&mut c, &scene, &[1, 2, 3], u + 250, u + 250, 250);
    assert_eq!(got, vec![]);
    c.detector.clear();
    let first = u + 1_000;
    let got = run(&mut c, &scene, &[1, 2, 3], first, first + DOWN - 1, 250);
    assert_eq!(
        got,
        vec![],
        "a cleared detector also restarts its grace timers"
    );
    scene.feed(&mut c, first + DOWN, &[1, 2, 3]);
    assert_eq!(
        briefs(&c.step(first + DOWN)),
        vec!["us: suspect -> unreachable"]
    );
}

// Property: while automation is paused nothing is proposed (no transition,
// no freeze) but the computed states are still shown; resuming proposes what
// the rules give.
#[test]
fn paused_computes_but_proposes_nothing() {
    let mut c = Cluster::new(Layout::Three);
    let out = c.commit(
        T0,
        vec![Command::SetPaused {
            paused: true,
            reason: "maintenance".into(),
        }],
    );
    assert!(matches!(out[0], Outcome::Applied { .. }));
    let mut scene = Scene::all_up(Layout::Three, T0 - 600_000);
    for (o, r) in [(2, "eu"), (3, "eu"), (1, "us"), (3, "us")] {
        scene.set(o, r, false, T0);
    }
    scene.feed(&mut c, T0 + 30_000, &[1, 2, 3]);
    let e = c.evaluate(T0 + 30_000);
    assert!(e.quorum_ok);
    assert!(e.should_freeze, "the freeze is computed");
    assert_eq!(briefs(&e), Vec::<String>::new(), "paused: nothing proposed");
    assert_eq!(
        e.regions[&rn("eu")].computed,
        RegionState::Suspect,
        "but shown"
    );
    assert_eq!(e.regions[&rn("us")].computed, RegionState::Suspect);
    assert_eq!(e.regions[&rn("eu")].committed.state, RegionState::Healthy);

    c.commit(
        T0 + 31_000,
        vec![Command::SetPaused {
            paused: false,
            reason: "done".into(),
        }],
    );
    scene.feed(&mut c, T0 + 31_000, &[1, 2, 3]);
    assert_eq!(
        briefs(&c.evaluate(T0 + 31_000)),
        vec!["freeze", "eu: healthy -> suspect", "us: healthy -> suspect"],
        "resumed: the rules apply again"
    );
}

/// Drives eu of a 3-region cluster to a committed Unreachable; returns the
/// time of that commit.
fn drive_eu_unreachable(c: &mut Cluster, scene: &mut Scene) -> u64 {
    scene.set(2, "eu", false, T0);
    scene.set(3, "eu", false, T0);
    let got = run(c, scene, &[1, 2, 3], T0, T0 + DOWN, 1_000);
    assert_eq!(
        got,
        vec![
            (T0, vec!["eu: healthy -> suspect".to_string()]),
            (T0 + DOWN, vec!["eu: suspect -> unreachable".to_string()])
        ]
    );
    T0 + DOWN
}

// Property: Unreachable becomes Recovering only when a majority sees the
// plane up, and Recovering becomes Healthy only after up_after of continuous
// majority-up; an observer whose up run restarts (it saw the plane down in
// between) restarts the majority's up time.
#[test]
fn recovery_needs_up_after_of_continuous_majority_up() {
    let mut c = Cluster::new(Layout::Three);
    let mut scene = Scene::all_up(Layout::Three, T0 - 600_000);
    drive_eu_unreachable(&mut c, &mut scene);
    let r = T0 + 60_000;
    scene.set(2, "eu", true, r);
    let got = run(&mut c, &scene, &[1, 2, 3], r, r + 4_000, 1_000);
    assert_eq!(
        got,
        vec![],
        "one observer up is not a majority: still Unreachable"
    );
    assert_eq!(c.state_of("eu"), RegionState::Unreachable);

    scene.set(3, "eu", true, r + 5_000);
    scene.feed(&mut c, r + 5_000, &[1, 2, 3]);
    assert_eq!(
        briefs(&c.step(r + 5_000)),
        vec!["eu: unreachable -> recovering"]
    );

    // Observer 2 sees it down for 2 s at r+60s (alone: no down majority),
    // then up again since r+62s: the majority is up since r+62s.
    let got = run(&mut c, &scene, &[1, 2, 3], r + 6_000, r + 59_000, 1_000);
    assert_eq!(got, vec![]);
    scene.set(2, "eu", false, r + 60_000);
    let got = run(&mut c, &scene, &[1, 2, 3], r + 60_000, r + 61_000, 1_000);
    assert_eq!(
        got,
        vec![],
        "one observer down in Recovering changes nothing"
    );
    scene.set(2, "eu", true, r + 62_000);
    let got = run(
        &mut c,
        &scene,
        &[1, 2, 3],
        r + 62_000,
        r + 62_000 + UP - 1,
        1_000,
    );
    assert_eq!(
        got,
        vec![],
        "up_after has not passed since the majority's up run restarted (r+5s + up_after was passed)"
    );
    scene.feed(&mut c, r + 62_000 + UP, &[1, 2, 3]);
    assert_eq!(
        briefs(&c.step(r + 62_000 + UP)),
        vec!["eu: recovering -> healthy"],
        "up_after of continuous majority-up"
    );
}

// Property: a Recovering region goes back to Unreachable only after a
// majority has seen it down again for down_after; a shorter relapse keeps it
// Recovering, so a region flapping while it recovers does not bounce.
#[test]
fn recovering_returns_to_unreachable_when_majority_sees_it_down() {
    let mut c = Cluster::new(Layout::Three);
    let mut scene = Scene::all_up(Layout::Three, T0 - 600_000);
    drive_eu_unreachable(&mut c, &mut scene);
    let r = T0 + 30_000;
    scene.set(2, "eu", true, r);
    scene.set(3, "eu", true, r);
    scene.feed(&mut c, r, &[1, 2, 3]);
    assert_eq!(briefs(&c.step(r)), vec!["eu: unreachable -> recovering"]);
    scene.set(2, "eu", false, r + 20_000);
    scene.set(3, "eu", false, r + 20_000);
    scene.feed(&mut c, r + 22_000, &[1, 2, 3]);
    assert_eq!(
        briefs(&c.step(r + 22_000)),
        Vec::<String>::new(),
        "majority down again for only 2 s: still Recovering"
    );
    scene.feed(&mut c, r + 30_000, &[1, 2, 3]);
    assert_eq!(
        briefs(&c.step(r + 30_000)),
        vec!["eu: recovering -> unreachable"],
        "majority down again for down_after: back to Unreachable"
    );
}

// Property: a region whose own coordinator is silent but whose control plane
// its observers see up stays Healthy: a missing coordinator is reported
// (coordinator_reporting = false), never judged. Only the control plane is.
#[test]
fn silent_own_coordinator_with_plane_up_stays_healthy() {
    let mut c = Cluster::new(Layout::Three);
    let mut scene = Scene::all_up(Layout::Three, T0 - 600_000);
    let got = run(&mut c, &scene, &[2, 3], T0, T0 + 60_000, 1_000);
    assert_eq!(
        got,
        vec![],
        "coordinator 1 silent, eu's plane up: nothing to do"
    );
    let e = c.evaluate(T0 + 60_000);
    assert!(e.quorum_ok);
    assert_eq!(e.regions[&rn("eu")].computed, RegionState::Healthy);
    assert!(!e.regions[&rn("eu")].coordinator_reporting);
    assert!(e.regions[&rn("us")].coordinator_reporting);
    assert!(e.regions[&rn("ap")].coordinator_reporting);

    // And with the plane down too, the observers decide without it.
    scene.set(2, "eu", false, T0 + 61_000);
    scene.set(3, "eu", false, T0 + 61_000);
    let got = run(
        &mut c,
        &scene,
        &[2, 3],
        T0 + 61_000,
        T0 + 61_000 + DOWN,
        1_000,
    );
    assert_eq!(
        got,
        vec![
            (T0 + 61_000, vec!["eu: healthy -> suspect".to_string()]),
            (
                T0 + 61_000 + DOWN,
                vec!["eu: suspect -> unreachable".to_string()]
            )
        ]
    );
}

// Property: in the two-region layout with a witness, a region's observers are
// the other region's coordinator and the witness, and both are needed: the
// other region alone (witness up or silent) changes nothing. One region down
// of two is not "more than half": no freeze.
#[test]
fn two_regions_and_witness_need_both_observers() {
    let layout = Layout::TwoWithWitness;
    let mut c = Cluster::new(layout);
    let e = c.evaluate(T0);
    assert_eq!(
        e.regions.keys().map(|r| r.as_str()).collect::<Vec<_>>(),
        vec!["eu", "us"],
        "the witness serves no region"
    );
    assert_eq!(e.regions[&rn("eu")].observers, vec![2, 9]);
    let mut scene = Scene::all_up(layout, T0 - 600_000);
    scene.set(2, "eu", false, T0);
    let got = run(&mut c, &scene, &[1, 2, 9], T0, T0 + 60_000, 1_000);
    assert_eq!(got, vec![], "us alone, witness sees eu up");
    let got = run(&mut c, &scene, &[1, 2], T0 + 61_000, T0 + 120_000, 1_000);
    assert_eq!(got, vec![], "us alone, witness silent");

    scene.set(9, "eu", false, T0 + 121_000);
    let got = run(
        &mut c,
        &scene,
        &[1, 2, 9],
        T0 + 121_000,
        T0 + 121_000 + DOWN,
        1_000,
    );
    assert_eq!(
        got,
        vec![
            (T0 + 121_000, vec!["eu: healthy -> suspect".to_string()]),
            (
                T0 + 121_000 + DOWN,
                vec!["eu: suspect -> unreachable".to_string()]
            )
        ],
        "us and the witness agree: Suspect, then Unreachable, and no freeze"
    );
    assert!(!c.state.frozen());
}

// Property: applying a detector's transition bumps the epoch by one and
// stamps the region record with the new epoch and the entry's leader time;
// the audit record names the command and carries the observations that
// justified it.
#[test]
fn applied_transitions_bump_epoch_and_audit_observations() {
    let mut c = Cluster::new(Layout::Three);
    let mut scene = Scene::all_up(Layout::Three, T0 - 600_000);
    scene.set(2, "eu", false, T0 - 500);
    scene.set(3, "eu", false, T0 - 700);
    let before = c.state.epoch();
    scene.feed(&mut c, T0, &[1, 2, 3]);
    let e = c.evaluate(T0);
    let out = c.commit(T0, e.proposals.clone());
    assert_eq!(
        out,
        vec![Outcome::Applied {
            epoch: before + 1,
            log_index: c.log_index
        }]
    );
    let rec = c.state.region_records()[&rn("eu")];
    assert_eq!(rec.state, RegionState::Suspect);
    assert_eq!(rec.epoch, before + 1);
    assert_eq!(rec.since, Millis(T0));

    let audit = c.state.audit().back().expect("audited");
    assert_eq!(audit.kind, "region_transition");
    assert_eq!(audit.actor, "tern");
    assert_eq!(audit.epoch, before + 1);
    assert!(
        audit.summary.contains("healthy -> suspect"),
        "{}",
        audit.summary
    );
    let obs = audit.details["observations"]
        .as_array()
        .expect("observations");
    let got: Vec<(u64, bool, u64)> = obs
        .iter()
        .map(|o| {
            (
                o["observer"].as_u64().expect("observer"),
                o["up"].as_bool().expect("up"),
                o["since"].as_u64().expect("since"),
            )
        })
        .collect();
    assert_eq!(got, vec![(2, false, T0 - 500), (3, false, T0 - 700)]);

    // The next transition bumps again.
    let got = run(&mut c, &scene, &[1, 2, 3], T0 + 1_000, T0 + DOWN, 1_000);
    assert_eq!(
        got,
        vec![(T0 + DOWN, vec!["eu: suspect -> unreachable".to_string()])],
        "the majority (the later of the two runs) is down since T0-500, but this new \
         detector's first evaluation (T0) restarted the timers: due at T0+10000"
    );
    assert_eq!(c.state.epoch(), before + 2);
    assert_eq!(c.state.region_records()[&rn("eu")].epoch, before + 2);
}

// Property: a transition whose `from` is no longer the committed state (a
// second leader's, or a retried, proposal) is refused as a conflict, audited
// as refused, and changes neither the epoch nor the region record; so is a
// transition of something that is not a region (the witness).
#[test]
fn stale_from_is_rejected() {
    let mut c = Cluster::new(Layout::TwoWithWitness);
    let t = |from, to| Command::RegionTransition {
        region: rn("eu"),
        from,
        to,
        observations: vec![],
    };
    assert!(matches!(
        c.commit(T0, vec![t(RegionState::Healthy, RegionState::Suspect)])[0],
        Outcome::Applied { .. }
    ));
    let epoch = c.state.epoch();
    let rec = c.state.region_records()[&rn("eu")];
    let out = c.commit(T0 + 1, vec![t(RegionState::Healthy, RegionState::Suspect)]);
    assert!(
        matches!(
            &out[0],
            Outcome::Rejected {
                reason: Rejection::Conflict { .. }
            }
        ),
        "{out:?}"
    );
    assert_eq!(
        c.state.epoch(),
        epoch,
        "a refused transition does not bump the epoch"
    );
    assert_eq!(c.state.region_records()[&rn("eu")], rec);
    assert!(c
        .state
        .audit()
        .back()
        .expect("audit")
        .summary
        .starts_with("refused"));

    let out = c.commit(
        T0 + 2,
        vec![Command::RegionTransition {
            region: rn("witness"),
            from: RegionState::Healthy,
            to: RegionState::Suspect,
            observations: vec![],
        }],
    );
    assert!(
        matches!(
            &out[0],
            Outcome::Rejected {
                reason: Rejection::Invalid { .. }
            }
        ),
        "{out:?}"
    );
    assert_eq!(c.state.epoch(), epoch);
}

// ---------------------------------------------------------------------------
// Property tests
// ---------------------------------------------------------------------------

/// What one observer does in one step.
#[derive(Debug, Clone)]
struct ObserverStep {
    /// It reports in this step (otherwise it is silent).
    send: bool,
    /// Its report says it cannot reach a quorum.
    fenced: bool,
    /// Per region: toggles a lasting disagreement of this observer with the
    /// plane's true state (a broken link of its own, a bad probe).
    flip_wrong: Vec<bool>,
    /// It claims this run length instead of the true one (a confused or
    /// restarted observer): the rules must hold for what reports claim.
    lie_for_ms: Option<u64>,
    /// The leader receives the report this long before the evaluation.
    age_ms: u64,
}

/// One step of a random scenario.
#[derive(Debug, Clone)]
struct Step {
    dt_ms: u64,
    /// Per region: the control plane changes state (up <-> down).
    plane_flip: Vec<bool>,
    observers: Vec<ObserverStep>,
    /// An administrator toggles pause after the evaluation.
    toggle_pause: bool,
    /// The evaluation's proposals are lost (never committed), as when the
    /// leader changes before its entry commits.
    lose_proposals: bool,
}

fn arb_step(regions: usize, voters: usize) -> impl Strategy<Value = Step> {
    let observer = (
        prop::bool::weighted(0.85),
        prop::bool::weighted(0.07),
        prop::collection::vec(prop::bool::weighted(0.04), regions),
        prop::option::weighted(0.03, 0u64..40_000),
        prop::sample::select(vec![0u64, 0, 0, 0, 500, TTL - 1, TTL, TTL + 1]),
    )
        .prop_map(
            |(send, fenced, flip_wrong, lie_for_ms, age_ms)| ObserverStep {
                send,
                fenced,
                flip_wrong,
                lie_for_ms,
                age_ms,
            },
        );
    (
        prop::sample::select(vec![
            250u64, 500, 1_000, 1_000, 2_000, 3_000, 3_001, 5_000, 9_999, 10_000, 30_000,
        ]),
        prop::collection::vec(prop::bool::weighted(0.08), regions),
        prop::collection::vec(observer, voters),
        prop::bool::weighted(0.02),
        prop::bool::weighted(0.05),
    )
        .prop_map(
            |(dt_ms, plane_flip, observers, toggle_pause, lose_proposals)| Step {
                dt_ms,
                plane_flip,
                observers,
                toggle_pause,
                lose_proposals,
            },
        )
}

fn arb_scenario(layout: Layout) -> impl Strategy<Value = Vec<Step>> {
    prop::collection::vec(
        arb_step(layout.regions().len(), layout.voters().len()),
        1..160,
    )
}

/// One observer's current view of one region.
#[derive(Debug, Clone, Copy)]
struct View {
    wrong: bool,
    up: bool,
    since: u64,
}

/// The oracle: the rules of `health.rs` restated from its module doc, over
/// the reports the test itself delivered.
struct Oracle {
    layout: Layout,
    last: BTreeMap<NodeId, (u64, Report)>,
    /// Time of the first evaluation that saw an unfreeze committed (or of
    /// the detector's first evaluation).
    floor: Option<u64>,
    was_frozen: bool,
}

/// A region as the oracle sees it at one evaluation.
struct Seen {
    k: usize,
    /// Run starts (leader time) of fresh, unfenced down observations.
    down: Vec<u64>,
    up: Vec<u64>,
}

impl Seen {
    fn majority_since(&self, up: bool) -> Option<u64> {
        let mut v = if up {
            self.up.clone()
        } else {
            self.down.clone()
        };
        v.sort_unstable();
        (v.len() >= self.k).then(|| v[self.k - 1])
    }
}

fn majority(n: usize) -> usize {
    n / 2 + 1
}

impl Oracle {
    fn fresh(&self, now: u64, id: NodeId) -> Option<(u64, &Report)> {
        self.last
            .get(&id)
            .filter(|(at, r)| now.saturating_sub(*at) <= TTL && !r.fenced)
            .map(|(at, r)| (*at, r))
    }

    fn quorum(&self, now: u64) -> bool {
        let voters = self.layout.voters();
        voters
            .iter()
            .filter(|v| self.fresh(now, **v).is_some())
            .count()
            >= majority(voters.len())
    }

    fn seen(&self, now: u64, region: &str) -> Seen {
        let server = self.layout.server(region);
        let observers: Vec<NodeId> = self
            .layout
            .voters()
            .into_iter()
            .filter(|v| *v != server)
            .collect();
        let mut s = Seen {
            k: majority(observers.len()),
            down: vec![],
            up: vec![],
        };
        for o in observers {
            let Some((at, r)) = self.fresh(now, o) else {
                continue;
            };
            if let Some(obs) = r.regions.iter().find(|x| x.region.as_str() == region) {
                let since = at.saturating_sub(obs.for_ms);
                if obs.up {
                    s.up.push(since);
                } else {
                    s.down.push(since);
                }
            }
        }
        s
    }

    fn dwelt(&self, now: u64, since: u64, need: u64) -> bool {
        now.saturating_sub(since.max(self.floor.unwrap_or(0))) >= need
    }

    /// The state the rules give now.
    fn next(&self, now: u64, current: RegionState, s: &Seen, frozen: bool) -> RegionState {
        let down = s.majority_since(false);
        let up = s.majority_since(true);
        match current {
            RegionState::Healthy if down.is_some() => RegionState::Suspect,
            RegionState::Healthy => RegionState::Healthy,
            RegionState::Suspect => match down {
                None => RegionState::Healthy,
                Some(d) if !frozen && self.dwelt(now, d, DOWN) => RegionState::Unreachable,
                Some(_) => RegionState::Suspect,
            },
            RegionState::Unreachable if up.is_some() => RegionState::Recovering,
            RegionState::Unreachable => RegionState::Unreachable,
            RegionState::Recovering => match (down, up) {
                (Some(d), _) if !frozen && self.dwelt(now, d, DOWN) => RegionState::Unreachable,
                (Some(_), _) => RegionState::Recovering,
                (None, Some(u)) if self.dwelt(now, u, UP) => RegionState::Healthy,
                _ => RegionState::Recovering,
            },
        }
    }
}

/// Runs one random scenario and checks the properties at every evaluation.
fn check_scenario(layout: Layout, steps: &[Step]) -> Result<(), TestCaseError> {
    let regions = layout.regions();
    let voters = layout.voters();
    let mut c = Cluster::new(layout);
    let mut oracle = Oracle {
        layout,
        last: BTreeMap::new(),
        floor: None,
        // A new detector assumes a freeze just ended: its first evaluation
        // restarts the grace timers.
        was_frozen: true,
    };
    let mut now = T0;
    let mut plane_up = vec![true; regions.len()];
    let mut views = vec![
        vec![
            View {
                wrong: false,
                up: true,
                since: T0 - 600_000
            };
            regions.len()
        ];
        voters.len()
    ];
    let mut last_epoch = c.state.epoch();
    for (i, step) in steps.iter().enumerate() {
        now += step.dt_ms;
        for (r, flip) in step.plane_flip.iter().enumerate() {
            if *flip {
                plane_up[r] = !plane_up[r];
            }
        }
        for (vi, o) in step.observers.iter().enumerate() {
            for (r, flip) in o.flip_wrong.iter().enumerate() {
                let v = &mut views[vi][r];
                v.wrong ^= *flip;
                let up = plane_up[r] ^ v.wrong;
                if up != v.up {
                    v.up = up;
                    v.since = now;
                }
            }
            if !o.send {
                continue;
            }
            let at = now - o.age_ms;
            let obs = regions
                .iter()
                .enumerate()
                .map(|(r, name)| {
                    let v = views[vi][r];
                    seen(
                        name,
                        v.up,
                        o.lie_for_ms.unwrap_or(at.saturating_sub(v.since)),
                    )
                })
                .collect();
            let rep = report(voters[vi], o.fenced, obs);
            c.observe(at, rep.clone());
            oracle.last.insert(voters[vi], (at, rep));
        }

        let frozen = c.state.frozen();
        let paused = c.state.paused();
        if oracle.was_frozen && !frozen {
            oracle.floor = Some(now);
        }
        oracle.was_frozen = frozen;
        let e = c.evaluate(now);
        let quorum = oracle.quorum(now);
        prop_assert_eq!(e.quorum_ok, quorum, "step {}: quorum", i);

        let mut looks_down = 0;
        let mut expected = Vec::new();
        let mut seen_of = BTreeMap::new();
        for name in &regions {
            let s = oracle.seen(now, name);
            if s.majority_since(false).is_some() {
                looks_down += 1;
            }
            seen_of.insert(rn(name), s);
        }
        let should_freeze = looks_down * 1000 > regions.len() * 500;
        prop_assert_eq!(
            e.should_freeze,
            should_freeze,
            "step {}: freeze computed",
            i
        );
        if quorum && !paused && should_freeze != frozen {
            expected.push(if should_freeze { "freeze" } else { "unfreeze" }.to_string());
        }
        for (region, s) in &seen_of {
            let committed = e.regions[region].committed.state;
            let want = oracle.next(now, committed, s, frozen);
            prop_assert_eq!(
                e.regions[region].computed,
                want,
                "step {}: {} computed",
                i,
                region
            );
            let blocked = want == RegionState::Unreachable
                && committed == RegionState::Suspect
                && (frozen || should_freeze);
            if quorum && !paused && want != committed && !blocked {
                expected.push(format!(
                    "{region}: {} -> {}",
                    committed.as_str(),
                    want.as_str()
                ));
            }
        }
        prop_assert_eq!(briefs(&e), expected, "step {}: proposals", i);

        for p in &e.proposals {
            // Nothing is proposed without a quorum or while paused.
            prop_assert!(
                quorum && !paused,
                "step {}: proposal without quorum or while paused",
                i
            );
            let Command::RegionTransition {
                region, from, to, ..
            } = p
            else {
                continue;
            };
            let s = &seen_of[region];
            // Only the transitions of the rules exist.
            prop_assert!(
                matches!(
                    (from, to),
                    (RegionState::Healthy, RegionState::Suspect)
                        | (RegionState::Suspect, RegionState::Healthy)
                        | (RegionState::Suspect, RegionState::Unreachable)
                        | (RegionState::Unreachable, RegionState::Recovering)
                        | (RegionState::Recovering, RegionState::Healthy)
                        | (RegionState::Recovering, RegionState::Unreachable)
                ),
                "step {}: {:?} -> {:?}",
                i,
                from,
                to
            );
            if (*from, *to) == (RegionState::Suspect, RegionState::Unreachable) {
                // (a) a majority of this region's observers have fresh,
                // unfenced down reports whose runs cover down_after.
                let covering = s.down.iter().filter(|d| now - **d >= DOWN).count();
                prop_assert!(
                    covering >= s.k,
                    "step {}: {} Unreachable from a minority",
                    i,
                    region
                );
                // (b) never while frozen or freezing.
                prop_assert!(
                    !frozen && !should_freeze,
                    "step {}: Unreachable while frozen",
                    i
                );
                // (d) the down dwell, counted from the last unfreeze.
                let d = s.majority_since(false).expect("majority down");
                prop_assert!(oracle.dwelt(now, d, DOWN), "step {}: down dwell", i);
            }
            if (*from, *to) == (RegionState::Recovering, RegionState::Healthy) {
                // (d) the up dwell.
                let u = s.majority_since(true);
                prop_assert!(
                    u.is_some_and(|u| oracle.dwelt(now, u, UP)),
                    "step {}: up dwell",
                    i
                );
            }
            if *to == RegionState::Unreachable {
                prop_assert!(
                    s.majority_since(false).is_some(),
                    "step {}: no down majority",
                    i
                );
            }
        }
        // (b) a freeze is proposed whenever more than half the regions look
        // down (and the leader may act).
        if quorum && !paused && should_freeze && !frozen {
            prop_assert!(
                e.proposals
                    .iter()
                    .any(|p| matches!(p, Command::SetFrozen { frozen: true, .. })),
                "step {}: no freeze proposed",
                i
            );
        }

        let mut commands = if step.lose_proposals {
            vec![]
        } else {
            e.proposals.clone()
        };
        if step.toggle_pause {
            commands.push(Command::SetPaused {
                paused: !paused,
                reason: "test".into(),
            });
        }
        if commands.is_empty() {
            continue;
        }
        for (out, cmd) in c.commit(now, commands.clone()).iter().zip(&commands) {
            // (c) every applied decision moves the epoch up by exactly one,
            // and the region record carries it.
            match out {
                Outcome::Applied { epoch, .. } => {
                    prop_assert_eq!(*epoch, last_epoch + 1, "step {}: epoch after {:?}", i, cmd);
                    last_epoch = *epoch;
                    if let Command::RegionTransition { region, to, .. } = cmd {
                        let rec = c.state.region_records()[region];
                        prop_assert_eq!(rec.epoch, *epoch);
                        prop_assert_eq!(rec.state, *to);
                    }
                }
                other => prop_assert!(false, "step {}: {:?} refused: {:?}", i, cmd, other),
            }
        }
        prop_assert_eq!(c.state.epoch(), last_epoch);
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    // Property: over random report sequences in 3 regions, (a) a region only
    // becomes Unreachable when a majority of its observers have fresh,
    // unfenced down reports whose runs cover down_after; (b) a freeze is
    // proposed whenever more than half the regions look down, and no
    // Unreachable is proposed while frozen; (c) epochs strictly increase, by
    // one per applied decision; (d) the down and up dwell times (restarted by
    // an unfreeze) are respected; and the detector agrees with the rules
    // restated independently, state by state and proposal by proposal.
    #[test]
    fn rules_hold_for_random_reports_3_regions(steps in arb_scenario(Layout::Three)) {
        check_scenario(Layout::Three, &steps)?;
    }

    // Property: the same for 5 regions (4 observers per region, 3 needed).
    #[test]
    fn rules_hold_for_random_reports_5_regions(steps in arb_scenario(Layout::Five)) {
        check_scenario(Layout::Five, &steps)?;
    }

    // Property: the same for 2 regions and a witness.
    #[test]
    fn rules_hold_for_random_reports_2_regions_and_witness(
        steps in arb_scenario(Layout::TwoWithWitness)
    ) {
        check_scenario(Layout::TwoWithWitness, &steps)?;
    }
}
