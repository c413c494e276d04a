//! The fleet's bookkeeping: per-agent state folded from the sessions'
//! events into counts ([`FleetStatus`], the status file), and the events
//! file (one JSON line per notable event).
//!
//! It owns both file formats. It decides nothing about agents and never
//! sees a token (events carry none).
//!
//! # Status file (`--status-file`, replaced atomically)
//!
//! ```json
//! {
//!   "format": "tern-fleet-status/v1",
//!   "at_ms": 1767225600500, "started_at_ms": 1767225590000,
//!   "seed": 42, "home_region": "eu", "agents": 1000, "identities_ms": 180,
//!   "home_attached": 1000, "registered": 1000, "watching": 998,
//!   "newest_epoch": 7, "at_newest_epoch": 990,
//!   "serving": {"eu": 10, "us": 990},
//!   "states": {"enrolling": 0, "serving": 995, "applying": 3, "failed": 2, "stopped": 0},
//!   "applying_to": {"us": 3},
//!   "directives": {"apply": 990, "noop": 1000, "duplicate": 4},
//!   "reports": {"attached": 990, "failed": 2},
//!   "registrations": 1003, "disconnects": 3, "leaf_renewals": 0, "conflicts": 0
//! }
//! ```
//!
//! `serving` counts agents by the region they were last verified attached
//! to (home after the initial attach); `states`: `enrolling` (not yet
//! attached home), `serving` (nothing in flight), `applying` (a directive
//! handed out, no outcome yet), `failed` (the last application failed; it
//! is retried), `stopped` (the agent's task ended with an error).
//! `newest_epoch` is the newest epoch any agent has seen, `at_newest_epoch`
//! how many agents have seen it.
//!
//! # Events file (`--events-file`, JSON lines, appended)
//!
//! ```json
//! {"t_ms":1767225600123,"agent_id":"sim-eu-00001","event":"directive","epoch":7,"action":"redirect","target":"us","outcome":"apply"}
//! {"t_ms":1767225601456,"agent_id":"sim-eu-00001","event":"applied","epoch":7,"action":"redirect","target":"us","outcome":"attached"}
//! ```
//!
//! `event` is one of `home_attach` (outcome `attached` or `failed`),
//! `registered` (with `fingerprint`), `directive` (outcome: what the shim
//! made of it: `apply`, `noop`, `duplicate`, `refreshed`, `stale`, `conflict`,
//! `expired`, `wrong_agent`, `malformed`), `applied` (outcome `attached` or
//! `failed`, with `detail`), `reported` (outcome as reported),
//! `disconnected` (with `detail`), `stopped` (with `detail`). Absent fields
//! are omitted (`epoch`, `action`, `target`, `detail`, `fingerprint`).

use std::collections::{BTreeMap, HashMap};
use std::io::Write;
use std::sync::Arc;

use serde::Serialize;

use crate::directive::DirectiveKind;
use crate::events::{Action, Outcome, Seen, SessionEvent, SessionEventKind};

/// The value of `format` in the status file.
pub const FLEET_STATUS_FORMAT: &str = "tern-fleet-status/v1";

/// The fleet in counts. See the module docs for the meaning of each field.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct FleetStatus {
    /// Always [`FLEET_STATUS_FORMAT`].
    pub format: &'static str,
    /// When this status was computed, ms since the Unix epoch.
    pub at_ms: u64,
    /// When the fleet started.
    pub started_at_ms: u64,
    /// The seed of every random choice.
    pub seed: u64,
    /// The simulated agents' home region.
    pub home_region: String,
    /// How many agents are simulated.
    pub agents: usize,
    /// How long issuing their identities took, ms.
    pub identities_ms: u64,
    /// Agents that attached to the home region at start.
    pub home_attached: usize,
    /// Agents registered at least once.
    pub registered: usize,
    /// Agents with an open directive stream now.
    pub watching: usize,
    /// The newest epoch any agent has seen.
    pub newest_epoch: Option<u64>,
    /// Agents that have seen `newest_epoch`.
    pub at_newest_epoch: usize,
    /// Agents by the region they are verified attached to.
    pub serving: BTreeMap<String, usize>,
    /// Agents by state.
    pub states: BTreeMap<&'static str, usize>,
    /// Agents with a directive in flight, by target region.
    pub applying_to: BTreeMap<String, usize>,
    /// Directives received, by what the shims made of them.
    pub directives: BTreeMap<&'static str, u64>,
    /// Reports acknowledged by a coordinator, by outcome.
    pub reports: BTreeMap<&'static str, u64>,
    /// Successful registrations (re-registrations included).
    pub registrations: u64,
    /// Directive streams lost.
    pub disconnects: u64,
    /// Leaf renewals followed.
    pub leaf_renewals: u64,
    /// Conflicting directives received (must stay 0).
    pub conflicts: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Enrolling,
    Serving,
    Applying,
    Failed,
    Stopped,
}

impl State {
    fn as_str(self) -> &'static str {
        match self {
            State::Enrolling => "enrolling",
            State::Serving => "serving",
            State::Applying => "applying",
            State::Failed => "failed",
            State::Stopped => "stopped",
        }
    }
}

#[derive(Debug, Clone)]
struct AgentStat {
    state: State,
    registered: bool,
    watching: bool,
    home_attached: bool,
    serving: Option<String>,
    applying_to: Option<String>,
    newest_epoch: Option<u64>,
}

/// What the fleet's own tasks report, besides the sessions' events.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum FleetEvent {
    /// A session event.
    Session(SessionEvent),
    /// The simulated agent attached to its home region (or failed to).
    HomeAttach {
        at_ms: u64,
        agent_id: Arc<str>,
        result: Result<(), String>,
    },
    /// The agent's task ended with an error.
    Stopped {
        at_ms: u64,
        agent_id: Arc<str>,
        reason: String,
    },
}

/// Folds events into counts and event lines.
pub(crate) struct Ledger {
    index: HashMap<Arc<str>, usize>,
    agents: Vec<AgentStat>,
    base: FleetStatus,
}

/// One line of the events file.
#[derive(Serialize)]
struct Line<'a> {
    t_ms: u64,
    agent_id: &'a str,
    event: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    epoch: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    action: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    target: Option<&'a str>,
    outcome: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    detail: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    fingerprint: Option<&'a str>,
}

fn kind_str(kind: DirectiveKind) -> &'static str {
    kind.as_str()
}

fn outcome_parts(outcome: &Outcome) -> (&'static str, Option<&str>) {
    match outcome {
        Outcome::Attached => ("attached", None),
        Outcome::Failed { reason } => ("failed", Some(reason.as_str())),
    }
}

impl Ledger {
    pub(crate) fn new(
        agent_ids: &[Arc<str>],
        home_region: &str,
        seed: u64,
        started_at_ms: u64,
        identities_ms: u64,
    ) -> Ledger {
        let index = agent_ids
            .iter()
            .enumerate()
            .map(|(i, id)| (id.clone(), i))
            .collect();
        let agents = vec![
            AgentStat {
                state: State::Enrolling,
                registered: false,
                watching: false,
                home_attached: false,
                serving: None,
                applying_to: None,
                newest_epoch: None,
            };
            agent_ids.len()
        ];
        Ledger {
            index,
            agents,
            base: FleetStatus {
                format: FLEET_STATUS_FORMAT,
                at_ms: started_at_ms,
                started_at_ms,
                seed,
                home_region: home_region.to_string(),
                agents: agent_ids.len(),
                identities_ms,
                home_attached: 0,
                registered: 0,
                watching: 0,
                newest_epoch: None,
                at_newest_epoch: 0,
                serving: BTreeMap::new(),
                states: BTreeMap::new(),
                applying_to: BTreeMap::new(),
                directives: BTreeMap::new(),
                reports: BTreeMap::new(),
                registrations: 0,
                disconnects: 0,
                leaf_renewals: 0,
                conflicts: 0,
            },
        }
    }

    /// Folds `event` in; writes its line (if it has one) to `out`.
    pub(crate) fn apply(&mut self, event: &FleetEvent, out: Option<&mut dyn Write>) {
        let home = self.base.home_region.clone();
        let (at_ms, agent_id) = match event {
            FleetEvent::Session(e) => (e.at_ms, &e.agent_id),
            FleetEvent::HomeAttach {
                at_ms, agent_id, ..
            }
            | FleetEvent::Stopped {
                at_ms, agent_id, ..
            } => (*at_ms, agent_id),
        };
        let Some(&i) = self.index.get(agent_id) else {
            return;
        };
        let mut line = Line {
            t_ms: at_ms,
            agent_id,
            event: "",
            epoch: None,
            action: None,
            target: None,
            outcome: "",
            detail: None,
            fingerprint: None,
        };
        let a = &mut self.agents[i];
        let b = &mut self.base;
        match event {
            FleetEvent::HomeAttach { result, .. } => {
                line.event = "home_attach";
                line.target = Some(&b.home_region);
                match result {
                    Ok(()) => {
                        line.outcome = "attached";
                        a.home_attached = true;
                        a.serving = Some(home);
                        a.state = State::Serving;
                    }
                    Err(reason) => {
                        line.outcome = "failed";
                        line.detail = Some(reason);
                    }
                }
            }
            FleetEvent::Stopped { reason, .. } => {
                a.state = State::Stopped;
                a.watching = false;
                line.event = "stopped";
                line.outcome = "stopped";
                line.detail = Some(reason);
            }
            FleetEvent::Session(e) => match &e.kind {
                SessionEventKind::Registered { fingerprint, .. } => {
                    a.registered = true;
                    b.registrations += 1;
                    line.event = "registered";
                    line.outcome = "registered";
                    line.fingerprint = Some(fingerprint);
                }
                SessionEventKind::Watching { .. } => a.watching = true,
                SessionEventKind::Disconnected { reason, .. } => {
                    a.watching = false;
                    b.disconnects += 1;
                    line.event = "disconnected";
                    line.outcome = "disconnected";
                    line.detail = Some(reason);
                }
                SessionEventKind::LeafRenewed { .. } => b.leaf_renewals += 1,
                SessionEventKind::Directive {
                    epoch,
                    action,
                    target_region,
                    seen,
                } => {
                    *b.directives.entry(seen.as_str()).or_insert(0) += 1;
                    if !matches!(
                        seen,
                        Seen::Stale { .. } | Seen::WrongAgent | Seen::Malformed { .. }
                    ) {
                        a.newest_epoch = Some(a.newest_epoch.map_or(*epoch, |n| n.max(*epoch)));
                    }
                    match seen {
                        Seen::Apply => {
                            a.state = State::Applying;
                            a.applying_to = Some(target_region.clone());
                        }
                        Seen::NoOp => {
                            a.serving = Some(target_region.clone());
                            a.applying_to = None;
                            if a.state != State::Enrolling {
                                a.state = State::Serving;
                            }
                        }
                        Seen::Conflict => b.conflicts += 1,
                        _ => {}
                    }
                    line.event = "directive";
                    line.epoch = Some(*epoch);
                    line.action = Some(action_str(*action));
                    line.target = Some(target_region);
                    line.outcome = seen.as_str();
                    if let Seen::Malformed { reason } = seen {
                        line.detail = Some(reason);
                    }
                }
                SessionEventKind::Applied {
                    epoch,
                    kind,
                    target_region,
                    outcome,
                } => {
                    let (name, detail) = outcome_parts(outcome);
                    match outcome {
                        Outcome::Attached => {
                            a.serving = Some(target_region.clone());
                            a.applying_to = None;
                            a.state = State::Serving;
                        }
                        Outcome::Failed { .. } => a.state = State::Failed,
                    }
                    line.event = "applied";
                    line.epoch = Some(*epoch);
                    line.action = Some(kind_str(*kind));
                    line.target = Some(target_region);
                    line.outcome = name;
                    line.detail = detail;
                }
                SessionEventKind::Reported { epoch, outcome, .. } => {
                    let (name, _) = outcome_parts(outcome);
                    *b.reports.entry(name).or_insert(0) += 1;
                    line.event = "reported";
                    line.epoch = Some(*epoch);
                    line.outcome = name;
                }
                SessionEventKind::Applying { .. }
                | SessionEventKind::ConnectFailed { .. }
                | SessionEventKind::CoordinatorsCached { .. } => {}
            },
        }
        if let (Some(out), false) = (out, line.event.is_empty()) {
            if let Ok(text) = serde_json::to_string(&line) {
                let _ = writeln!(out, "{text}");
            }
        }
    }

    /// The counts now.
    pub(crate) fn status(&self, at_ms: u64) -> FleetStatus {
        let mut s = self.base.clone();
        s.at_ms = at_ms;
        for state in [
            State::Enrolling,
            State::Serving,
            State::Applying,
            State::Failed,
            State::Stopped,
        ] {
            s.states.insert(state.as_str(), 0);
        }
        for a in &self.agents {
            *s.states.entry(a.state.as_str()).or_insert(0) += 1;
            s.home_attached += usize::from(a.home_attached);
            s.registered += usize::from(a.registered);
            s.watching += usize::from(a.watching);
            if let Some(r) = &a.serving {
                *s.serving.entry(r.clone()).or_insert(0) += 1;
            }
            if let (State::Applying | State::Failed, Some(r)) = (a.state, &a.applying_to) {
                *s.applying_to.entry(r.clone()).or_insert(0) += 1;
            }
            if a.newest_epoch > s.newest_epoch {
                s.newest_epoch = a.newest_epoch;
            }
        }
        s.at_newest_epoch = self
            .agents
            .iter()
            .filter(|a| a.newest_epoch.is_some() && a.newest_epoch == s.newest_epoch)
            .count();
        s
    }
}

fn action_str(action: Action) -> &'static str {
    action.as_str()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn session(agent: &Arc<str>, kind: SessionEventKind) -> FleetEvent {
        FleetEvent::Session(SessionEvent {
            at_ms: 5,
            agent_id: agent.clone(),
            kind,
        })
    }

    // Property: events move agents between states and regions as
    // documented, and each notable event becomes one JSON line.
    #[test]
    fn folds_events_into_counts_and_lines() {
        let a: Arc<str> = "a".into();
        let b: Arc<str> = "b".into();
        let mut ledger = Ledger::new(&[a.clone(), b.clone()], "eu", 7, 1, 2);
        let mut out = Vec::new();
        let events = [
            FleetEvent::HomeAttach {
                at_ms: 2,
                agent_id: a.clone(),
                result: Ok(()),
            },
            FleetEvent::HomeAttach {
                at_ms: 2,
                agent_id: b.clone(),
                result: Ok(()),
            },
            session(
                &a,
                SessionEventKind::Registered {
                    coordinator: "c".into(),
                    fingerprint: "ff".into(),
                    epoch: 1,
                },
            ),
            session(
                &a,
                SessionEventKind::Directive {
                    epoch: 3,
                    action: Action::Redirect,
                    target_region: "us".into(),
                    seen: Seen::Apply,
                },
            ),
        ];
        for e in &events {
            ledger.apply(e, Some(&mut out));
        }
        let s = ledger.status(9);
        assert_eq!(s.home_attached, 2);
        assert_eq!(s.registered, 1);
        assert_eq!(s.states["applying"], 1);
        assert_eq!(s.applying_to["us"], 1);
        assert_eq!(s.newest_epoch, Some(3));
        assert_eq!(s.at_newest_epoch, 1);
        ledger.apply(
            &session(
                &a,
                SessionEventKind::Applied {
                    epoch: 3,
                    kind: DirectiveKind::Redirect,
                    target_region: "us".into(),
                    outcome: Outcome::Attached,
                },
            ),
            Some(&mut out),
        );
        let s = ledger.status(10);
        assert_eq!(s.serving.get("us"), Some(&1));
        assert_eq!(s.serving.get("eu"), Some(&1));
        assert_eq!(s.states["serving"], 2);
        let text = String::from_utf8(out).expect("utf8");
        let lines: Vec<serde_json::Value> = text
            .lines()
            .map(|l| serde_json::from_str(l).expect("json line"))
            .collect();
        assert_eq!(lines.len(), 5);
        assert_eq!(lines[3]["event"], "directive");
        assert_eq!(lines[3]["target"], "us");
        assert_eq!(lines[4]["outcome"], "attached");
        assert_eq!(lines[4]["action"], "redirect");
    }
}
