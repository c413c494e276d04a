//! A deterministic, seeded simulation of a Tern federation, shared by the
//! `sim_*.rs` integration tests (one invariant per file). It runs the real
//! `Detector` and the real `ReplicatedState`; everything around them (probes,
//! network, clocks, crashes, Raft) is modelled here, in simulated time, from
//! one `u64` seed. Test code only.
//!
//! # Model
//!
//! - Time advances in ticks of `TICK_MS` (250 ms) of true time.
//! - N regions (3 or 5, or 2 plus a witness), each with one coordinator (a
//!   voter, node id = region index + 1) and one control plane. The witness
//!   (id N + 1) is a voter with no plane.
//! - Clocks: each coordinator's clock has its own offset (up to
//!   `MAX_OFFSET_MS`, re-drawn at every restart, like a monotonic clock of a
//!   new process) and rate drift (up to `MAX_DRIFT_PPM`). Observers only send
//!   durations measured on their own clock; the leader stamps receipts,
//!   evaluations and entries with its own clock.
//! - Every `PROBE_INTERVAL_MS` of its own clock, a live coordinator probes
//!   every control plane: the probe succeeds when the plane is up, the link
//!   coordinator -> plane is not cut, the message is not dropped and the
//!   link's delay is within `PROBE_TIMEOUT_MS`. It keeps one run per region
//!   (consecutive failures, threshold `FAIL_THRESHOLD`, start of the failing
//!   run; start of the up run) and reports down once the threshold is
//!   reached, with the run's length measured from its first failed probe.
//! - In the same round it heartbeats every other coordinator (a round trip:
//!   both links uncut, neither message dropped, both delays within
//!   `HEARTBEAT_TIMEOUT_MS`) and counts as reachable those it completed a
//!   round trip with in the last `REACH_WINDOW_MS`; with fewer than a
//!   majority of voters (itself included) it sends `fenced: true`.
//! - It sends its `Report` to the node it believes is leader: delivered
//!   after the link's base delay (1-40 ms), jitter (0-20 ms) and any fault
//!   delay, at the first tick at or after that; lost when the link is cut
//!   or the message dropped. Reordering is possible. A leader's own report
//!   reaches its detector at once.
//! - Raft, simplified: the leader stays leader while it is alive and
//!   reaches a majority of voters both ways (cut links only: Raft retries
//!   through drops and delays). When it loses that, there is no leader for
//!   `ELECTION_TIMEOUT_MS`; then the lowest-id live coordinator reaching a
//!   majority becomes leader of a new term, with a fresh, empty `Detector`.
//!   A deposed leader that is still alive keeps believing it leads for a
//!   random time up to `STALE_LEADER_MAX_MS` (a stale leader): it still
//!   receives its own reports and those already in flight to it, and
//!   evaluates on its own replica's view, but can commit nothing.
//! - The leader evaluates every tick. Its proposals form one entry, stamped
//!   with its clock, committed at the next tick if it still leads. An entry
//!   of a leader deposed before that commit survives (committed first by the
//!   next leader) with probability 1/2, as an entry that did or did not
//!   reach a majority before the leader fell.
//! - The committed log is applied, in order, to one `ReplicatedState` (what
//!   every leader sees) and to each coordinator's own replica, which catches
//!   up while it is alive and connected to the leader, keeps a durable
//!   snapshot every `SNAPSHOT_EVERY` entries, and on restart resumes from
//!   that snapshot, replaying the entries after it.
//! - Faults, drawn from the seed over the fault phase: control-plane outages
//!   (5-300 s), two-way cuts between coordinators, one-way cuts (to a
//!   coordinator or a plane), isolation of a coordinator (from every other
//!   coordinator and every other region's plane), partitions of the regions
//!   into two sides, message drops (10-95 %), delays (100-2500 ms), crashes
//!   (5-120 s). At `heal` every fault ends, crashed coordinators restart and
//!   every plane is up; the network is stable from then on.
//! - Stable phase: after a settling time, planes go down (5-300 s) at random
//!   again, but never more regions at once than the freeze threshold allows
//!   (a plane counts as "down" from its outage until `3 * PROBE_INTERVAL_MS`
//!   after it is back), so that the true state is always reachable.

#![allow(dead_code)]

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::Mutex;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tern_core::{
    Batch, ClusterView, Command, Detector, HealthConfig, Member, MemberRole, Millis, NodeId,
    Outcome, Proposal, RegionName, RegionObservation, RegionState, ReplicatedState, Report,
    Thumbprint,
};

pub const TICK_MS: u64 = 250;
pub const PROBE_INTERVAL_MS: u64 = 1_000;
pub const FAIL_THRESHOLD: u32 = 2;
pub const REACH_WINDOW_MS: u64 = 3 * PROBE_INTERVAL_MS;
pub const ELECTION_TIMEOUT_MS: u64 = 1_000;
pub const PROBE_TIMEOUT_MS: u64 = 800;
pub const HEARTBEAT_TIMEOUT_MS: u64 = 1_000;
pub const BASE_DELAY_MAX_MS: u64 = 40;
pub const JITTER_MAX_MS: u64 = 20;
pub const MAX_FAULT_DELAY_MS: u64 = 2_500;
pub const MAX_DRIFT_PPM: i64 = 100;
pub const MAX_OFFSET_MS: i64 = 600_000;
pub const SNAPSHOT_EVERY: usize = 8;
/// A deposed leader may go on believing it leads for up to this long.
pub const STALE_LEADER_MAX_MS: u64 = 15_000;
/// Unix time of the simulation's start (true time 0).
pub const EPOCH_MS: u64 = 1_700_000_000_000;

/// Worst report latency once the network is stable: one tick for delivery
/// (base delay + jitter <= 60 ms, delivered at the next tick), one tick of
/// evaluation granularity, one tick until the entry commits.
pub const STABLE_LATENCY_MS: u64 = 3 * TICK_MS;

/// The oldest a report can be, in true time, when the leader still counts it
/// as fresh: its TTL (plus clock drift), the worst delivery delay and the
/// tick at which it is delivered.
pub fn freshness_bound_ms(h: &HealthConfig) -> u64 {
    h.report_ttl_ms
        + h.report_ttl_ms * 2 * MAX_DRIFT_PPM as u64 / 1_000_000
        + BASE_DELAY_MAX_MS
        + JITTER_MAX_MS
        + MAX_FAULT_DELAY_MS
        + TICK_MS
        + 2
}

/// What clock drift can shave off a measured duration of `ms`, plus ms
/// rounding.
pub fn drift_tolerance_ms(ms: u64) -> u64 {
    ms * 2 * MAX_DRIFT_PPM as u64 / 1_000_000 + 2
}

/// Which federation is simulated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Layout {
    Regions(usize),
    TwoWithWitness,
}

impl Layout {
    pub fn regions(self) -> usize {
        match self {
            Layout::Regions(n) => n,
            Layout::TwoWithWitness => 2,
        }
    }

    pub fn nodes(self) -> usize {
        match self {
            Layout::Regions(n) => n,
            Layout::TwoWithWitness => 3,
        }
    }
}

impl std::fmt::Display for Layout {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Layout::Regions(n) => write!(f, "{n} regions"),
            Layout::TwoWithWitness => write!(f, "2 regions + witness"),
        }
    }
}

pub const NAMES: [&str; 5] = ["eu", "us", "ap", "sa", "af"];

/// Simulation parameters.
#[derive(Debug, Clone)]
pub struct Params {
    pub layout: Layout,
    pub seed: u64,
    /// Length of the faulty phase; `heal` happens at its end.
    pub fault_ms: u64,
    /// Length of the stable phase after `heal`.
    pub stable_ms: u64,
    pub health: HealthConfig,
}

impl Params {
    pub fn new(layout: Layout, seed: u64) -> Params {
        Params {
            layout,
            seed,
            fault_ms: 150 * 60_000,
            stable_ms: 60 * 60_000,
            health: HealthConfig::default(),
        }
    }
}

/// A fault on the network, a plane or a coordinator.
#[derive(Debug, Clone)]
pub enum Fault {
    PlaneDown {
        region: usize,
    },
    /// Both ways between two coordinators.
    Cut {
        a: usize,
        b: usize,
    },
    /// One direction only; `to` is a coordinator or a plane endpoint.
    OneWay {
        from: usize,
        to: usize,
    },
    /// Every link between `node` and the other coordinators, both ways, and
    /// from `node` to every other region's plane.
    Isolate {
        node: usize,
    },
    /// Coordinators (and their planes) on side `true` cannot talk with side
    /// `false`.
    Partition {
        side: Vec<bool>,
    },
    Drop {
        from: usize,
        to: usize,
        permille: u32,
    },
    Delay {
        from: usize,
        to: usize,
        ms: u64,
    },
    Crash {
        node: usize,
    },
}

#[derive(Debug, Clone)]
struct Scheduled {
    start: u64,
    end: u64,
    fault: Fault,
}

#[derive(Debug, Clone, Copy, Default)]
struct Link {
    cut: bool,
    drop_permille: u32,
    delay_ms: u64,
}

/// An observer's probe run of one region, as the observer keeps it.
#[derive(Debug, Clone, Copy, Default)]
struct Run {
    /// Local time of the first success after the last down run.
    up_since: Option<u64>,
    /// Local time of the first failure of the current failures.
    fail_start: u64,
    failures: u32,
}

/// A run of failed probes as it really happened (true time), kept by the
/// simulator independently of the observer (it survives the observer's
/// crash, which closes it).
#[derive(Debug, Clone, Copy)]
pub struct FailRun {
    pub start: u64,
    /// When the run reached the failure threshold (the observer reports
    /// down from then on).
    pub threshold_at: Option<u64>,
    pub last: u64,
    failures: u32,
    open: bool,
}

struct Node {
    id: NodeId,
    region: Option<usize>,
    alive: bool,
    offset_ms: i64,
    drift_ppm: i64,
    next_probe_local: u64,
    runs: Vec<Run>,
    last_round_trip: Vec<Option<u64>>,
    // Durable: survives a crash.
    replica: ReplicatedState,
    applied: usize,
    snapshot: Option<(Vec<u8>, usize)>,
}

impl Node {
    fn local(&self, t: u64) -> u64 {
        let t = t as i64;
        (EPOCH_MS as i64 + self.offset_ms + t + t * self.drift_ppm / 1_000_000) as u64
    }
}

struct Leadership {
    node: usize,
    term: u64,
    detector: Detector,
}

struct Pending {
    term: u64,
    proposer: NodeId,
    batch: Batch,
    eval_t: u64,
}

/// A command proposed by a leader (or a stale leader), committed or not.
#[derive(Debug, Clone)]
pub struct ProposalRecord {
    /// True time of the evaluation that proposed it.
    pub t: u64,
    pub proposer: NodeId,
    pub term: u64,
    /// Proposed by a deposed leader that had not noticed (never committed).
    pub stale: bool,
    pub command: Command,
}

/// One proposal as applied from the committed log to the shared state.
#[derive(Debug, Clone)]
pub struct AppliedRecord {
    pub log_index: u64,
    pub command: Command,
    pub outcome: Outcome,
    /// True time of the evaluation that proposed it, and of its commit.
    pub eval_t: u64,
    pub commit_t: u64,
    /// Leader time stamped on the entry.
    pub at: Millis,
    pub proposer: NodeId,
    pub term: u64,
    /// The committed state just before this proposal applied.
    pub frozen_before: bool,
    pub state_before: RegionState,
}

/// What one replica applied at one log index: outcomes and commands (JSON).
pub type ReplicaEntry = Vec<(Outcome, String)>;

pub struct Sim {
    pub p: Params,
    n_nodes: usize,
    n_regions: usize,
    names: Vec<RegionName>,
    voters: BTreeSet<NodeId>,
    regions_map: BTreeMap<RegionName, BTreeSet<NodeId>>,
    now: u64,
    heal_at: u64,
    settle_at: u64,
    end_at: u64,
    rng: StdRng,
    stable_rng: StdRng,
    faults: Vec<Scheduled>,
    next_fault: usize,
    active: Vec<usize>,
    links: Vec<Link>,
    base_delay: Vec<u64>,
    plane_up: Vec<bool>,
    plane_changed: Vec<u64>,
    stable_down_until: Vec<Option<u64>>,
    nodes: Vec<Node>,
    leader: Option<Leadership>,
    stale: Option<(Leadership, u64)>,
    lost_at: u64,
    term: u64,
    pending: Vec<Pending>,
    carry: Vec<Pending>,
    inflight: BTreeMap<(u64, u64), (usize, Report)>,
    seq: u64,
    log: Vec<Batch>,
    state: ReplicatedState,
    applied: Vec<AppliedRecord>,
    proposals: Vec<ProposalRecord>,
    truth: Vec<Vec<Vec<FailRun>>>,
    /// Per node: log index -> what its replica applied there.
    replica_log: Vec<BTreeMap<u64, ReplicaEntry>>,
    /// Per node: epochs after each applied command, in application order
    /// (replays after a restart included).
    replica_epochs: Vec<Vec<(u64, u64)>>,
    replica_mismatches: Vec<String>,
    trace: VecDeque<String>,
}

fn majority(n: usize) -> usize {
    n / 2 + 1
}

impl Sim {
    pub fn new(p: Params) -> Sim {
        let mut sched_rng = StdRng::seed_from_u64(p.seed);
        let n_nodes = p.layout.nodes();
        let n_regions = p.layout.regions();
        let endpoints = n_nodes + n_regions;
        let names: Vec<RegionName> = NAMES[..n_regions]
            .iter()
            .map(|n| n.parse().expect("name"))
            .collect();
        let mut nodes = Vec::new();
        for i in 0..n_nodes {
            nodes.push(Node {
                id: i as NodeId + 1,
                region: (i < n_regions).then_some(i),
                alive: true,
                offset_ms: sched_rng.random_range(-MAX_OFFSET_MS..=MAX_OFFSET_MS),
                drift_ppm: sched_rng.random_range(-MAX_DRIFT_PPM..=MAX_DRIFT_PPM),
                next_probe_local: 0,
                runs: vec![Run::default(); n_regions],
                last_round_trip: vec![None; n_nodes],
                replica: ReplicatedState::default(),
                applied: 0,
                snapshot: None,
            });
        }
        for n in nodes.iter_mut() {
            n.next_probe_local = n.local(0) + sched_rng.random_range(0..PROBE_INTERVAL_MS);
        }
        let base_delay = (0..endpoints * endpoints)
            .map(|_| sched_rng.random_range(1..=BASE_DELAY_MAX_MS))
            .collect();
        let heal_at = p.fault_ms / TICK_MS * TICK_MS;
        let settle_at = heal_at
            + p.health.up_after_ms
            + 2 * PROBE_INTERVAL_MS
            + STABLE_LATENCY_MS
            + ELECTION_TIMEOUT_MS;
        let end_at = heal_at + p.stable_ms;
        let faults = schedule(&mut sched_rng, n_nodes, n_regions, heal_at);
        let voters: BTreeSet<NodeId> = nodes.iter().map(|n| n.id).collect();
        let regions_map = (0..n_regions)
            .map(|r| (names[r].clone(), [r as NodeId + 1].into()))
            .collect();
        let mut sim = Sim {
            n_nodes,
            n_regions,
            names,
            voters,
            regions_map,
            now: 0,
            heal_at,
            settle_at,
            end_at,
            rng: StdRng::seed_from_u64(p.seed ^ 0x005e_ed0f_7e11),
            stable_rng: StdRng::seed_from_u64(p.seed ^ 0x0057_ab1e),
            faults,
            next_fault: 0,
            active: Vec::new(),
            links: vec![Link::default(); endpoints * endpoints],
            base_delay,
            plane_up: vec![true; n_regions],
            plane_changed: vec![0; n_regions],
            stable_down_until: vec![None; n_regions],
            nodes,
            leader: None,
            stale: None,
            lost_at: 0,
            term: 1,
            pending: Vec::new(),
            carry: Vec::new(),
            inflight: BTreeMap::new(),
            seq: 0,
            log: Vec::new(),
            state: ReplicatedState::default(),
            applied: Vec::new(),
            proposals: Vec::new(),
            truth: vec![vec![Vec::new(); n_regions]; n_nodes],
            replica_log: vec![BTreeMap::new(); n_nodes],
            replica_epochs: vec![Vec::new(); n_nodes],
            replica_mismatches: Vec::new(),
            trace: VecDeque::new(),
            p,
        };
        // The member table, committed before anything else.
        let members = (0..sim.n_nodes)
            .map(|i| {
                let id = i as NodeId + 1;
                let (region, role) = match sim.nodes[i].region {
                    Some(r) => (sim.names[r].clone(), MemberRole::Region),
                    None => ("witness".parse().expect("name"), MemberRole::Witness),
                };
                Proposal {
                    request_id: format!("member-{id}").parse().expect("id"),
                    actor: "admin:sim".into(),
                    command: Command::UpsertMember {
                        member: Member {
                            node_id: id,
                            control_plane: (role == MemberRole::Region)
                                .then(|| format!("https://{region}.example")),
                            region,
                            role,
                            address: format!("10.0.0.{id}:7400"),
                            thumbprints: [Thumbprint([id as u8; 32])].into(),
                        },
                        expect_epoch: None,
                    },
                }
            })
            .collect();
        sim.leader = Some(Leadership {
            node: 0,
            term: 1,
            detector: Detector::new(sim.p.health),
        });
        let at = Millis(sim.nodes[0].local(0));
        sim.append(Pending {
            term: 1,
            proposer: 1,
            batch: Batch {
                at,
                proposals: members,
            },
            eval_t: 0,
        });
        sim.note(format!("start: {} seed {}", sim.p.layout, sim.p.seed));
        sim
    }

    // ---- accessors for the invariants ----

    pub fn now(&self) -> u64 {
        self.now
    }
    pub fn heal_at(&self) -> u64 {
        self.heal_at
    }
    pub fn settle_at(&self) -> u64 {
        self.settle_at
    }
    pub fn end_at(&self) -> u64 {
        self.end_at
    }
    pub fn regions(&self) -> usize {
        self.n_regions
    }
    pub fn name(&self, r: usize) -> &RegionName {
        &self.names[r]
    }
    pub fn region_index(&self, name: &RegionName) -> usize {
        self.names
            .iter()
            .position(|n| n == name)
            .expect("known region")
    }
    pub fn node_ids(&self) -> Vec<NodeId> {
        self.nodes.iter().map(|n| n.id).collect()
    }
    /// The voters observing region `r`: every coordinator but its own.
    pub fn observers(&self, r: usize) -> Vec<NodeId> {
        self.nodes
            .iter()
            .filter(|n| n.region != Some(r))
            .map(|n| n.id)
            .collect()
    }
    pub fn plane_up(&self, r: usize) -> bool {
        self.plane_up[r]
    }
    /// True time of the plane's last change (0: never changed).
    pub fn plane_changed_at(&self, r: usize) -> u64 {
        self.plane_changed[r]
    }
    /// The committed state, as every leader sees it.
    pub fn state(&self) -> &ReplicatedState {
        &self.state
    }
    pub fn committed(&self, r: usize) -> RegionState {
        self.state
            .region_records()
            .get(&self.names[r])
            .map(|x| x.state)
            .unwrap_or_default()
    }
    pub fn applied(&self) -> &[AppliedRecord] {
        &self.applied
    }
    pub fn proposals(&self) -> &[ProposalRecord] {
        &self.proposals
    }
    pub fn log_len(&self) -> usize {
        self.log.len()
    }
    pub fn replica_log(&self, node: usize) -> &BTreeMap<u64, ReplicaEntry> {
        &self.replica_log[node]
    }
    pub fn replica_epochs(&self, node: usize) -> &[(u64, u64)] {
        &self.replica_epochs[node]
    }
    pub fn replica_mismatches(&self) -> &[String] {
        &self.replica_mismatches
    }
    pub fn replica(&self, node: usize) -> (&ReplicatedState, usize) {
        (&self.nodes[node].replica, self.nodes[node].applied)
    }
    pub fn alive(&self, node: usize) -> bool {
        self.nodes[node].alive
    }
    pub fn leader(&self) -> Option<NodeId> {
        self.leader.as_ref().map(|l| self.nodes[l.node].id)
    }

    /// Did observer `id` really see region `r`'s plane unreachable in one
    /// continuous run of failed probes that started at least `need_ms` (less
    /// drift tolerance) before `t`, had reached the failure threshold by `t`,
    /// and still went on no earlier than `freshness_bound_ms` before `t`?
    pub fn really_down(&self, id: NodeId, r: usize, t: u64, need_ms: u64) -> bool {
        let fresh = freshness_bound_ms(&self.p.health);
        let tol = drift_tolerance_ms(need_ms + fresh);
        self.truth[(id - 1) as usize][r].iter().any(|run| {
            run.start + need_ms <= t + tol
                && run.threshold_at.is_some_and(|x| x <= t)
                && run.last + fresh >= t
        })
    }

    /// A failure message: what failed, the last events, the seed and the
    /// command that replays it.
    pub fn failure(&self, test_file: &str, what: &str) -> String {
        let mut s = format!(
            "{} seed {} at t={}: {what}\n-- last events:\n",
            self.p.layout,
            self.p.seed,
            secs(self.now)
        );
        for line in &self.trace {
            s.push_str(line);
            s.push('\n');
        }
        s.push_str(&replay(test_file, self.p.seed));
        s
    }

    fn note(&mut self, what: String) {
        if self.trace.len() >= 120 {
            self.trace.pop_front();
        }
        self.trace.push_back(format!("[{}] {what}", secs(self.now)));
    }

    /// Runs to the end, calling `each_tick` after every tick.
    pub fn run(
        &mut self,
        mut each_tick: impl FnMut(&Sim) -> Result<(), String>,
    ) -> Result<(), String> {
        while self.now < self.end_at {
            self.step();
            each_tick(self)?;
        }
        Ok(())
    }

    /// Advances one tick.
    pub fn step(&mut self) {
        self.now += TICK_MS;
        self.faults_and_heal();
        self.stable_outages();
        self.leadership();
        self.commit_pending();
        for i in 0..self.n_nodes {
            if self.nodes[i].alive
                && self.nodes[i].local(self.now) >= self.nodes[i].next_probe_local
            {
                self.nodes[i].next_probe_local += PROBE_INTERVAL_MS;
                self.probe_round(i);
            }
        }
        self.deliver();
        self.evaluate();
        self.catch_up();
    }

    // ---- faults ----

    fn faults_and_heal(&mut self) {
        let t = self.now;
        if t == self.heal_at {
            self.active.clear();
            self.next_fault = self.faults.len();
            self.apply_faults();
            self.note("heal: every fault ends, the network is stable from now on".into());
            return;
        }
        let mut changed = false;
        while self.next_fault < self.faults.len() && self.faults[self.next_fault].start <= t {
            let f = self.faults[self.next_fault].clone();
            self.note(format!("fault until {}: {:?}", secs(f.end), f.fault));
            self.active.push(self.next_fault);
            self.next_fault += 1;
            changed = true;
        }
        let before = self.active.len();
        let faults = &self.faults;
        self.active.retain(|i| faults[*i].end > t);
        changed |= self.active.len() != before;
        if changed {
            self.apply_faults();
        }
    }

    fn ep_plane(&self, r: usize) -> usize {
        self.n_nodes + r
    }

    fn link_mut(&mut self, from: usize, to: usize) -> &mut Link {
        let e = self.n_nodes + self.n_regions;
        &mut self.links[from * e + to]
    }

    fn link(&self, from: usize, to: usize) -> Link {
        self.links[from * (self.n_nodes + self.n_regions) + to]
    }

    fn base(&self, from: usize, to: usize) -> u64 {
        self.base_delay[from * (self.n_nodes + self.n_regions) + to]
    }

    /// Recomputes links, planes and crashes from the active faults.
    fn apply_faults(&mut self) {
        for l in self.links.iter_mut() {
            *l = Link::default();
        }
        let mut plane_down = vec![false; self.n_regions];
        let mut crashed = vec![false; self.n_nodes];
        let active: Vec<Fault> = self
            .active
            .iter()
            .map(|i| self.faults[*i].fault.clone())
            .collect();
        for f in active {
            match f {
                Fault::PlaneDown { region } => plane_down[region] = true,
                Fault::Cut { a, b } => {
                    self.link_mut(a, b).cut = true;
                    self.link_mut(b, a).cut = true;
                }
                Fault::OneWay { from, to } => self.link_mut(from, to).cut = true,
                Fault::Isolate { node } => {
                    for o in 0..self.n_nodes {
                        if o != node {
                            self.link_mut(node, o).cut = true;
                            self.link_mut(o, node).cut = true;
                        }
                    }
                    for r in 0..self.n_regions {
                        if self.nodes[node].region != Some(r) {
                            let p = self.ep_plane(r);
                            self.link_mut(node, p).cut = true;
                        }
                    }
                }
                Fault::Partition { side } => {
                    for a in 0..self.n_nodes {
                        for b in 0..self.n_nodes {
                            if side[a] != side[b] {
                                self.link_mut(a, b).cut = true;
                                if let Some(r) = self.nodes[b].region {
                                    let p = self.ep_plane(r);
                                    self.link_mut(a, p).cut = true;
                                }
                            }
                        }
                    }
                }
                Fault::Drop { from, to, permille } => {
                    let l = self.link_mut(from, to);
                    l.drop_permille = l.drop_permille.max(permille);
                }
                Fault::Delay { from, to, ms } => {
                    let l = self.link_mut(from, to);
                    l.delay_ms = l.delay_ms.max(ms);
                }
                Fault::Crash { node } => crashed[node] = true,
            }
        }
        for (r, down) in plane_down.into_iter().enumerate() {
            let up = !down && self.stable_down_until[r].is_none();
            self.set_plane(r, up);
        }
        for (i, crashed) in crashed.into_iter().enumerate() {
            if crashed && self.nodes[i].alive {
                self.crash(i);
            } else if !crashed && !self.nodes[i].alive {
                self.restart(i);
            }
        }
    }

    fn set_plane(&mut self, r: usize, up: bool) {
        if self.plane_up[r] != up {
            self.plane_up[r] = up;
            self.plane_changed[r] = self.now;
            self.note(format!(
                "plane {} {}",
                self.names[r],
                if up { "up" } else { "down" }
            ));
        }
    }

    /// Stable phase: random outages, never more planes "down" (in an outage
    /// or back for less than three probe intervals) than the freeze allows.
    fn stable_outages(&mut self) {
        let t = self.now;
        if t < self.settle_at {
            return;
        }
        for r in 0..self.n_regions {
            if self.stable_down_until[r].is_some_and(|u| u <= t) {
                self.stable_down_until[r] = None;
                self.set_plane(r, true);
            }
        }
        let allowed = self.n_regions * self.p.health.freeze_above_permille as usize / 1000;
        for r in 0..self.n_regions {
            let busy = (0..self.n_regions)
                .filter(|x| {
                    !self.plane_up[*x] || self.plane_changed[*x] + 3 * PROBE_INTERVAL_MS > t
                })
                .count();
            if self.plane_up[r] && busy < allowed && self.stable_rng.random_ratio(1, 800) {
                let dur = self.stable_rng.random_range(5_000..=300_000) / TICK_MS * TICK_MS;
                self.stable_down_until[r] = Some(t + dur);
                self.set_plane(r, false);
            }
        }
    }

    fn crash(&mut self, i: usize) {
        let n = &mut self.nodes[i];
        n.alive = false;
        n.runs = vec![Run::default(); self.n_regions];
        n.last_round_trip = vec![None; self.n_nodes];
        for runs in self.truth[i].iter_mut() {
            if let Some(x) = runs.last_mut() {
                x.open = false;
            }
        }
        // In-memory state is gone; the replica falls back to its snapshot.
        let n = &mut self.nodes[i];
        match &n.snapshot {
            Some((bytes, applied)) => {
                n.replica = ReplicatedState::from_snapshot(bytes).expect("snapshot loads");
                n.applied = *applied;
            }
            None => {
                n.replica = ReplicatedState::default();
                n.applied = 0;
            }
        }
        self.note(format!("node {} crashed", i + 1));
    }

    fn restart(&mut self, i: usize) {
        let now = self.now;
        let offset = self.rng.random_range(-MAX_OFFSET_MS..=MAX_OFFSET_MS);
        let phase = self.rng.random_range(0..PROBE_INTERVAL_MS);
        let n = &mut self.nodes[i];
        n.alive = true;
        n.offset_ms = offset;
        n.next_probe_local = n.local(now) + phase;
        self.note(format!("node {} restarted", i + 1));
    }

    // ---- Raft, simplified ----

    fn reach(&self, a: usize, b: usize) -> bool {
        a == b
            || (self.nodes[a].alive
                && self.nodes[b].alive
                && !self.link(a, b).cut
                && !self.link(b, a).cut)
    }

    fn reaches_majority(&self, a: usize) -> bool {
        self.nodes[a].alive
            && (0..self.n_nodes).filter(|b| self.reach(a, *b)).count() >= majority(self.n_nodes)
    }

    fn leadership(&mut self) {
        let t = self.now;
        let lost = self
            .leader
            .as_ref()
            .is_some_and(|l| !self.reaches_majority(l.node));
        if lost {
            {
                let l = self.leader.take().expect("leader");
                self.note(format!(
                    "leader {} (term {}) lost its majority",
                    l.node + 1,
                    l.term
                ));
                self.lost_at = t;
                for p in std::mem::take(&mut self.pending) {
                    if self.rng.random_bool(0.5) {
                        self.carry.push(p);
                    }
                }
                if self.nodes[l.node].alive {
                    let until =
                        t + self.rng.random_range(1..=STALE_LEADER_MAX_MS / TICK_MS) * TICK_MS;
                    self.stale = Some((l, until));
                }
            }
        }
        let stale_over = self
            .stale
            .as_ref()
            .is_some_and(|(s, until)| *until <= t || !self.nodes[s.node].alive);
        if stale_over {
            self.stale = None;
        }
        if self.leader.is_none() && t >= self.lost_at + ELECTION_TIMEOUT_MS {
            if let Some(c) = (0..self.n_nodes).find(|c| self.reaches_majority(*c)) {
                self.term += 1;
                if self.stale.as_ref().is_some_and(|(s, _)| s.node == c) {
                    self.stale = None;
                }
                self.leader = Some(Leadership {
                    node: c,
                    term: self.term,
                    detector: Detector::new(self.p.health),
                });
                self.note(format!("node {} leads term {}", c + 1, self.term));
                // Entries of the previous leader that reached a majority are
                // committed by the new one, before its own.
                for p in std::mem::take(&mut self.carry) {
                    self.append(p);
                }
            }
        }
    }

    fn commit_pending(&mut self) {
        let Some(term) = self.leader.as_ref().map(|l| l.term) else {
            return;
        };
        for p in std::mem::take(&mut self.pending) {
            if p.term == term {
                self.append(p);
            }
        }
    }

    fn append(&mut self, p: Pending) {
        self.log.push(p.batch.clone());
        let index = self.log.len() as u64;
        let mut frozen = self.state.frozen();
        let before: Vec<RegionState> = p
            .batch
            .proposals
            .iter()
            .map(|x| match &x.command {
                Command::RegionTransition { region, .. } => self
                    .state
                    .region_records()
                    .get(region)
                    .map(|r| r.state)
                    .unwrap_or_default(),
                _ => RegionState::Healthy,
            })
            .collect();
        let out = self.state.apply(index, &p.batch);
        self.state.take_dirty();
        let mut summary = Vec::new();
        for ((prop, outcome), state_before) in
            p.batch.proposals.iter().zip(out.outcomes).zip(before)
        {
            summary.push(format!("{} {:?}", brief(&prop.command), outcome));
            self.applied.push(AppliedRecord {
                log_index: index,
                command: prop.command.clone(),
                outcome: outcome.clone(),
                eval_t: p.eval_t,
                commit_t: self.now,
                at: p.batch.at,
                proposer: p.proposer,
                term: p.term,
                frozen_before: frozen,
                state_before,
            });
            if let (Command::SetFrozen { frozen: f, .. }, Outcome::Applied { .. }) =
                (&prop.command, &outcome)
            {
                frozen = *f;
            }
        }
        self.note(format!(
            "commit #{index} (node {}, term {}): {}",
            p.proposer,
            p.term,
            summary.join("; ")
        ));
    }

    fn catch_up(&mut self) {
        let Some(l) = self.leader.as_ref().map(|l| l.node) else {
            return;
        };
        for i in 0..self.n_nodes {
            if !self.nodes[i].alive || !self.reach(l, i) {
                continue;
            }
            while self.nodes[i].applied < self.log.len() {
                let idx = self.nodes[i].applied;
                let index = idx as u64 + 1;
                let out = self.nodes[i].replica.apply(index, &self.log[idx]);
                self.nodes[i].replica.take_dirty();
                self.nodes[i].applied += 1;
                let entry: ReplicaEntry = out
                    .outcomes
                    .into_iter()
                    .zip(&self.log[idx].proposals)
                    .map(|(o, p)| {
                        (
                            o,
                            serde_json::to_string(&p.command).expect("command serializes"),
                        )
                    })
                    .collect();
                for (o, _) in &entry {
                    if let Outcome::Applied { epoch, .. } = o {
                        self.replica_epochs[i].push((index, *epoch));
                    }
                }
                match self.replica_log[i].get(&index) {
                    Some(prev) if *prev != entry => self.replica_mismatches.push(format!(
                        "node {} replayed entry {index} differently: {prev:?} then {entry:?}",
                        i + 1
                    )),
                    Some(_) => {}
                    None => {
                        self.replica_log[i].insert(index, entry);
                    }
                }
                let n = &mut self.nodes[i];
                if n.applied >= n.snapshot.as_ref().map_or(0, |s| s.1) + SNAPSHOT_EVERY {
                    n.snapshot = Some((n.replica.to_snapshot(), n.applied));
                }
            }
        }
    }

    // ---- probes and reports ----

    fn roll(&mut self, permille: u32) -> bool {
        permille > 0 && self.rng.random_range(0..1000) < permille
    }

    fn probe_round(&mut self, i: usize) {
        let t = self.now;
        let local = self.nodes[i].local(t);
        for r in 0..self.n_regions {
            let p = self.ep_plane(r);
            let l = self.link(i, p);
            let mut ok =
                self.plane_up[r] && !l.cut && self.base(i, p) + l.delay_ms <= PROBE_TIMEOUT_MS;
            if ok && self.roll(l.drop_permille) {
                ok = false;
            }
            let run = &mut self.nodes[i].runs[r];
            let truth = &mut self.truth[i][r];
            if ok {
                run.failures = 0;
                if run.up_since.is_none() {
                    run.up_since = Some(local);
                }
                if let Some(x) = truth.last_mut() {
                    x.open = false;
                }
            } else {
                if run.failures == 0 {
                    run.fail_start = local;
                }
                run.failures += 1;
                if run.failures >= FAIL_THRESHOLD {
                    run.up_since = None;
                }
                match truth.last_mut() {
                    Some(x) if x.open => {
                        x.last = t;
                        x.failures += 1;
                    }
                    _ => truth.push(FailRun {
                        start: t,
                        threshold_at: None,
                        last: t,
                        failures: 1,
                        open: true,
                    }),
                }
                let x = truth.last_mut().expect("run");
                if x.failures >= FAIL_THRESHOLD && x.threshold_at.is_none() {
                    x.threshold_at = Some(t);
                }
            }
        }
        // Heartbeats: round trips with every other coordinator.
        for j in 0..self.n_nodes {
            if j == i || !self.nodes[j].alive {
                continue;
            }
            let (a, b) = (self.link(i, j), self.link(j, i));
            if a.cut
                || b.cut
                || self.base(i, j) + a.delay_ms + self.base(j, i) + b.delay_ms
                    > HEARTBEAT_TIMEOUT_MS
            {
                continue;
            }
            if self.roll(a.drop_permille) || self.roll(b.drop_permille) {
                continue;
            }
            self.nodes[i].last_round_trip[j] = Some(local);
        }
        let n = &self.nodes[i];
        let reachable: BTreeSet<NodeId> = (0..self.n_nodes)
            .filter(|j| {
                *j == i || n.last_round_trip[*j].is_some_and(|x| local - x <= REACH_WINDOW_MS)
            })
            .map(|j| j as NodeId + 1)
            .collect();
        let fenced = reachable.len() < majority(self.n_nodes);
        let regions = (0..self.n_regions)
            .filter_map(|r| {
                let run = n.runs[r];
                if run.failures >= FAIL_THRESHOLD {
                    Some(RegionObservation {
                        region: self.names[r].clone(),
                        up: false,
                        for_ms: local - run.fail_start,
                        consecutive_failures: run.failures,
                        latency_ms: None,
                    })
                } else {
                    run.up_since.map(|s| RegionObservation {
                        region: self.names[r].clone(),
                        up: true,
                        for_ms: local - s,
                        consecutive_failures: run.failures,
                        latency_ms: Some(self.base(i, self.n_nodes + r)),
                    })
                }
            })
            .collect();
        let report = Report {
            observer: n.id,
            fenced,
            regions,
            reachable,
        };
        // To the node it believes leads.
        let target = match (&self.stale, &self.leader) {
            (Some((s, _)), _) if s.node == i => Some(i),
            (_, Some(l)) => Some(l.node),
            _ => None,
        };
        let Some(to) = target else {
            return;
        };
        if to == i {
            self.observe(i, report);
            return;
        }
        let l = self.link(i, to);
        if l.cut || self.roll(l.drop_permille) {
            return;
        }
        let jitter = self.rng.random_range(0..=JITTER_MAX_MS);
        let at = t + self.base(i, to) + jitter + l.delay_ms;
        self.seq += 1;
        self.inflight.insert((at, self.seq), (to, report));
    }

    fn observe(&mut self, to: usize, report: Report) {
        let local = Millis(self.nodes[to].local(self.now));
        if let Some(l) = self.leader.as_mut().filter(|l| l.node == to) {
            l.detector.observe(local, report);
        } else if let Some((s, _)) = self.stale.as_mut().filter(|(s, _)| s.node == to) {
            s.detector.observe(local, report);
        }
    }

    fn deliver(&mut self) {
        while let Some(entry) = self.inflight.first_entry() {
            if entry.key().0 > self.now {
                break;
            }
            let (to, report) = entry.remove();
            if self.nodes[to].alive {
                self.observe(to, report);
            }
        }
    }

    fn evaluate(&mut self) {
        let t = self.now;
        if let Some(l) = self.leader.as_mut() {
            let now = Millis(self.nodes[l.node].local(t));
            let view = ClusterView {
                voters: &self.voters,
                regions: &self.regions_map,
                committed: self.state.region_records(),
                frozen: self.state.frozen(),
                paused: self.state.paused(),
            };
            let e = l.detector.evaluate(now, &view);
            if !e.proposals.is_empty() {
                let proposer = self.nodes[l.node].id;
                let term = l.term;
                let mut proposals = Vec::new();
                for command in e.proposals {
                    self.seq += 1;
                    self.proposals.push(ProposalRecord {
                        t,
                        proposer,
                        term,
                        stale: false,
                        command: command.clone(),
                    });
                    proposals.push(Proposal {
                        request_id: format!("n{proposer}-t{term}-{}", self.seq)
                            .parse()
                            .expect("id"),
                        actor: "tern".into(),
                        command,
                    });
                }
                self.pending.push(Pending {
                    term,
                    proposer,
                    batch: Batch { at: now, proposals },
                    eval_t: t,
                });
            }
        }
        if let Some((s, _)) = self.stale.as_mut() {
            // A deposed leader that has not noticed: it evaluates on its own
            // replica's view; nothing it proposes can commit.
            let node = &self.nodes[s.node];
            let view = ClusterView {
                voters: &self.voters,
                regions: &self.regions_map,
                committed: node.replica.region_records(),
                frozen: node.replica.frozen(),
                paused: node.replica.paused(),
            };
            let e = s.detector.evaluate(Millis(node.local(t)), &view);
            for command in e.proposals {
                self.proposals.push(ProposalRecord {
                    t,
                    proposer: node.id,
                    term: s.term,
                    stale: true,
                    command,
                });
            }
        }
    }
}

/// The fault phase's schedule, drawn from the seed.
fn schedule(rng: &mut StdRng, n_nodes: usize, n_regions: usize, heal_at: u64) -> Vec<Scheduled> {
    let planes = |r: usize| n_nodes + r;
    let mut out = Vec::new();
    let mut t = rng.random_range(10_000..60_000u64);
    while t + 5_000 < heal_at {
        let start = t / TICK_MS * TICK_MS;
        let node = rng.random_range(0..n_nodes);
        let other = |rng: &mut StdRng| (node + rng.random_range(1..n_nodes)) % n_nodes;
        let target = |rng: &mut StdRng| {
            if rng.random_bool(0.5) {
                (node + rng.random_range(1..n_nodes)) % n_nodes
            } else {
                planes(rng.random_range(0..n_regions))
            }
        };
        let (fault, dur) = match rng.random_range(0..100) {
            0..25 => (
                Fault::PlaneDown {
                    region: rng.random_range(0..n_regions),
                },
                rng.random_range(5_000..=300_000),
            ),
            25..35 => (
                Fault::Cut {
                    a: node,
                    b: other(rng),
                },
                rng.random_range(5_000..=120_000),
            ),
            35..47 => (
                Fault::OneWay {
                    from: node,
                    to: target(rng),
                },
                rng.random_range(5_000..=180_000),
            ),
            47..57 => (Fault::Isolate { node }, rng.random_range(5_000..=180_000)),
            57..65 => {
                let mut side: Vec<bool> = (0..n_nodes).map(|_| rng.random_bool(0.5)).collect();
                if side.iter().all(|s| *s) || side.iter().all(|s| !*s) {
                    side[node] = !side[node];
                }
                (
                    Fault::Partition { side },
                    rng.random_range(10_000..=180_000),
                )
            }
            65..77 => (
                Fault::Drop {
                    from: node,
                    to: target(rng),
                    permille: rng.random_range(100..=950),
                },
                rng.random_range(10_000..=300_000),
            ),
            77..87 => (
                Fault::Delay {
                    from: node,
                    to: target(rng),
                    ms: rng.random_range(100..=MAX_FAULT_DELAY_MS),
                },
                rng.random_range(10_000..=300_000),
            ),
            _ => (Fault::Crash { node }, rng.random_range(5_000..=120_000)),
        };
        let end = ((start + dur).min(heal_at) / TICK_MS * TICK_MS).max(start + TICK_MS);
        out.push(Scheduled { start, end, fault });
        t += rng.random_range(5_000..=90_000);
    }
    out
}

/// One line per command, for traces.
pub fn brief(c: &Command) -> String {
    match c {
        Command::RegionTransition {
            region, from, to, ..
        } => format!("{region}: {} -> {}", from.as_str(), to.as_str()),
        Command::SetFrozen { frozen: true, .. } => "freeze".into(),
        Command::SetFrozen { frozen: false, .. } => "unfreeze".into(),
        other => other.kind().into(),
    }
}

pub fn secs(ms: u64) -> String {
    format!("{}.{:03}s", ms / 1000, ms % 1000)
}

pub fn replay(test_file: &str, seed: u64) -> String {
    format!(
        "replay: TERN_SIM_SEED={seed} cargo test -p tern-core --test {test_file} -- --nocapture"
    )
}

/// The seeds every simulation test runs: `TERN_SIM_SEED` first when set,
/// then 20 fixed ones.
pub fn seeds() -> Vec<u64> {
    let mut v = Vec::new();
    if let Ok(s) = std::env::var("TERN_SIM_SEED") {
        v.push(s.trim().parse().expect("TERN_SIM_SEED must be a u64"));
    }
    v.extend((1..=20u64).map(|i| i.wrapping_mul(0x9e37_79b9_7f4a_7c15)));
    v
}

/// Runs `check` for every seed (on two threads); panics with every failure,
/// its seed and the command that replays it. Returns the sum of what the
/// checks counted (to show a test was not vacuous).
pub fn for_each_seed(
    test_file: &str,
    layout: Layout,
    check: impl Fn(u64) -> Result<u64, String> + Sync,
) -> u64 {
    let seeds = seeds();
    let failures = Mutex::new(Vec::new());
    let total = Mutex::new(0u64);
    std::thread::scope(|s| {
        for lane in 0..2 {
            let (seeds, failures, total, check) = (&seeds, &failures, &total, &check);
            s.spawn(move || {
                for seed in seeds.iter().skip(lane).step_by(2) {
                    let msg = match catch_unwind(AssertUnwindSafe(|| check(*seed))) {
                        Ok(Ok(n)) => {
                            *total.lock().expect("lock") += n;
                            continue;
                        }
                        Ok(Err(msg)) => msg,
                        Err(panic) => {
                            let what = panic
                                .downcast_ref::<String>()
                                .cloned()
                                .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
                                .unwrap_or_default();
                            format!(
                                "{layout} seed {seed} panicked: {what}\n{}",
                                replay(test_file, *seed)
                            )
                        }
                    };
                    eprintln!("{msg}");
                    failures.lock().expect("lock").push((*seed, msg));
                }
            });
        }
    });
    let failures = failures.into_inner().expect("lock");
    if !failures.is_empty() {
        let seeds: Vec<String> = failures.iter().map(|(s, _)| s.to_string()).collect();
        panic!(
            "{test_file} ({layout}): failed for seeds {}; first failure:\n{}",
            seeds.join(", "),
            failures[0].1
        );
    }
    total.into_inner().expect("lock")
}
