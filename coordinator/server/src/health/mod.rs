//! Region health, the I/O half: every coordinator probes every region's
//! control plane (HTTPS `GET /health/ready`) and pings every other
//! coordinator, keeps the current run of results per target, and sends its
//! report to the leader every probe interval. The leader feeds reports into
//! the core's `Detector`, evaluates every interval, and proposes the
//! transitions the rules give. Reports are soft state: only decisions enter
//! the Raft log.
//!
//! The rules themselves live in `tern_core::health`; nothing here decides
//! whether a region is down.

mod probe;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use tern_core::{
    ClusterView, Detector, Evaluation, Millis, NodeId, Proposal, RegionName, RegionObservation,
    Report,
};
use tracing::{debug, info, warn, Instrument};

use crate::node::Coordinator;
use crate::ops::AdminOp;
use crate::proposer::now_ms;

pub use probe::Prober;

/// The current run of probe results against one target.
#[derive(Debug, Clone)]
pub struct Run {
    /// The target counts as up (the last probe succeeded, or fewer than
    /// `failures_before_down` probes failed in a row since).
    pub up: bool,
    /// Start of the run: the first success of an up run, the first failure
    /// of a down run.
    pub since: Instant,
    pub consecutive_failures: u32,
    /// First failure of the current failure streak.
    first_failure: Option<Instant>,
    pub latency: Option<Duration>,
}

impl Run {
    /// Folds one probe result into the run.
    pub fn record(
        prev: Option<&Run>,
        ok: bool,
        latency: Option<Duration>,
        at: Instant,
        threshold: u32,
    ) -> Run {
        match (prev, ok) {
            (None, true) => Run {
                up: true,
                since: at,
                consecutive_failures: 0,
                first_failure: None,
                latency,
            },
            (None, false) => Run {
                up: threshold > 1,
                since: at,
                consecutive_failures: 1,
                first_failure: Some(at),
                latency: None,
            },
            (Some(p), true) => Run {
                up: true,
                since: if p.up && p.consecutive_failures == 0 {
                    p.since
                } else {
                    at
                },
                consecutive_failures: 0,
                first_failure: None,
                latency,
            },
            (Some(p), false) => {
                let failures = p.consecutive_failures.saturating_add(1);
                let first = p.first_failure.unwrap_or(at);
                let down = failures >= threshold;
                Run {
                    up: !down,
                    since: if down { first } else { p.since },
                    consecutive_failures: failures,
                    first_failure: Some(first),
                    latency: p.latency,
                }
            }
        }
    }
}

/// Health state shared by the probe loop, the leader loop, the gRPC
/// handlers and the metrics.
pub struct Health {
    detector: Mutex<Detector>,
    /// The leader's latest evaluation (None on followers).
    evaluation: RwLock<Option<(Millis, Evaluation)>>,
    /// This node's own probe runs: control planes by region.
    planes: RwLock<BTreeMap<RegionName, Run>>,
    /// This node's own probe runs: coordinators by node id.
    peers: RwLock<BTreeMap<NodeId, Run>>,
    /// Whether this node's last report was fenced.
    fenced: RwLock<bool>,
}

impl Health {
    pub fn new(config: tern_core::HealthConfig) -> Health {
        Health {
            detector: Mutex::new(Detector::new(config)),
            evaluation: RwLock::new(None),
            planes: RwLock::default(),
            peers: RwLock::default(),
            fenced: RwLock::new(false),
        }
    }

    /// Records a report received by the leader.
    pub fn observe(&self, report: Report) {
        let mut d = self.detector.lock().unwrap_or_else(|p| p.into_inner());
        d.observe(now_ms(), report);
    }

    /// The leader's latest evaluation.
    pub fn evaluation(&self) -> Option<(Millis, Evaluation)> {
        self.evaluation
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    pub fn planes(&self) -> BTreeMap<RegionName, Run> {
        self.planes
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    pub fn peers(&self) -> BTreeMap<NodeId, Run> {
        self.peers.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    pub fn fenced(&self) -> bool {
        *self.fenced.read().unwrap_or_else(|p| p.into_inner())
    }
}

/// Starts the probe loop and the leader loop.
pub fn spawn(coord: Arc<Coordinator>, prober: Prober) {
    let span = tracing::info_span!("health", node_id = coord.config.node_id);
    tokio::spawn(probe_loop(coord.clone(), prober).instrument(span.clone()));
    tokio::spawn(leader_loop(coord).instrument(span));
}

async fn probe_loop(coord: Arc<Coordinator>, prober: Prober) {
    let cfg = coord.config.probe.clone();
    let interval = Duration::from_millis(cfg.interval_ms);
    let timeout = Duration::from_millis(cfg.timeout_ms);
    let mut tick = tokio::time::interval(interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut next_bundle_fetch = Instant::now();
    loop {
        tick.tick().await;
        if Instant::now() >= next_bundle_fetch {
            next_bundle_fetch =
                Instant::now() + refresh_trust_bundle(&coord, &prober, timeout).await;
        }
        let (planes, peers) = coord.read_state(|s| {
            let planes: Vec<(RegionName, String)> = s
                .members()
                .values()
                .filter_map(|m| m.control_plane.clone().map(|u| (m.region.clone(), u)))
                .map(|(r, u)| {
                    let url = cfg.overrides.get(r.as_str()).cloned().unwrap_or(u);
                    (r, url)
                })
                .collect();
            let peers: Vec<(NodeId, String)> = s
                .members()
                .values()
                .filter(|m| m.node_id != coord.config.node_id)
                .map(|m| (m.node_id, coord.dial_address(m.node_id, &m.address)))
                .collect();
            (planes, peers)
        });
        let plane_results = futures::future::join_all(planes.iter().map(|(r, url)| {
            let prober = prober.clone();
            async move { (r.clone(), prober.probe(url, timeout).await) }
        }));
        let peer_results = futures::future::join_all(peers.iter().map(|(id, addr)| {
            let coord = coord.clone();
            async move { (*id, ping(&coord, addr, timeout).await) }
        }));
        let (plane_results, peer_results) = tokio::join!(plane_results, peer_results);
        let now = Instant::now();
        {
            let mut runs = coord
                .health
                .planes
                .write()
                .unwrap_or_else(|p| p.into_inner());
            let known: BTreeSet<RegionName> = planes.iter().map(|(r, _)| r.clone()).collect();
            runs.retain(|r, _| known.contains(r));
            for (r, res) in plane_results {
                let (ok, lat) = match res {
                    Ok(lat) => (true, Some(lat)),
                    Err(e) => {
                        debug!(region = %r, error = %e, "control plane probe failed");
                        (false, None)
                    }
                };
                let run = Run::record(runs.get(&r), ok, lat, now, cfg.failures_before_down);
                if runs.get(&r).map(|p| p.up) != Some(run.up) {
                    info!(region = %r, up = run.up, "control plane {}", if run.up { "up" } else { "down" });
                }
                runs.insert(r, run);
            }
        }
        {
            let mut runs = coord
                .health
                .peers
                .write()
                .unwrap_or_else(|p| p.into_inner());
            let known: BTreeSet<NodeId> = peers.iter().map(|(id, _)| *id).collect();
            runs.retain(|id, _| known.contains(id));
            for (id, res) in peer_results {
                let (ok, lat) = match res {
                    Ok(lat) => (true, Some(lat)),
                    Err(_) => (false, None),
                };
                let run = Run::record(runs.get(&id), ok, lat, now, cfg.failures_before_down);
                runs.insert(id, run);
            }
        }
        let report = build_report(&coord, now);
        send_report(&coord, report, timeout).await;
    }
}

/// Fetches this region's agent trust bundle and commits it when it changed.
/// Returns when to fetch next: 30 s after a success, 5 s after a failure.
async fn refresh_trust_bundle(coord: &Coordinator, prober: &Prober, timeout: Duration) -> Duration {
    use sha2::Digest;
    let Some(base) = coord.config.control_plane.clone() else {
        return Duration::from_secs(3600);
    };
    let url = coord
        .config
        .probe
        .overrides
        .get(coord.config.region.as_str())
        .cloned()
        .unwrap_or(base);
    let pem = match prober.trust_bundle(&url, timeout).await {
        Ok(p) => p,
        Err(e) => {
            debug!(error = %e, "fetching this region's trust bundle failed");
            return Duration::from_secs(5);
        }
    };
    let sha256 = hex::encode(sha2::Sha256::digest(pem.as_bytes()));
    let region = coord.config.region.clone();
    let current = coord.read_state(|s| s.trust_bundles().get(&region).map(|b| b.sha256.clone()));
    if current.as_deref() == Some(sha256.as_str()) {
        return Duration::from_secs(30);
    }
    let request_id = crate::ops::new_request_id();
    let p = Proposal {
        request_id,
        actor: format!("node:{}", coord.config.node_id),
        command: tern_core::Command::SetTrustBundle {
            region: region.clone(),
            pem,
            sha256: sha256.clone(),
        },
    };
    match coord.submit(AdminOp::Propose { proposals: vec![p] }).await {
        Ok(_) => {
            info!(region = %region, sha256 = %&sha256[..12], "agent trust bundle committed");
            Duration::from_secs(30)
        }
        Err(e) => {
            warn!(region = %region, error = %e, "committing the agent trust bundle failed");
            Duration::from_secs(5)
        }
    }
}

fn build_report(coord: &Coordinator, now: Instant) -> Report {
    let voters = coord.voters();
    let mut reachable: BTreeSet<NodeId> = coord
        .health
        .peers()
        .into_iter()
        .filter(|(_, r)| r.up)
        .map(|(id, _)| id)
        .collect();
    reachable.insert(coord.config.node_id);
    let reachable_voters = voters.iter().filter(|v| reachable.contains(v)).count();
    let fenced = !voters.is_empty() && reachable_voters < voters.len() / 2 + 1;
    {
        let mut f = coord
            .health
            .fenced
            .write()
            .unwrap_or_else(|p| p.into_inner());
        if *f != fenced {
            if fenced {
                warn!(reachable = ?reachable, voters = ?voters, "cannot reach a quorum of coordinators: treating this coordinator as the partitioned one (reports fenced)");
            } else {
                info!("quorum of coordinators reachable again: reports count");
            }
        }
        *f = fenced;
    }
    let regions = coord
        .health
        .planes()
        .into_iter()
        .map(|(region, run)| RegionObservation {
            region,
            up: run.up,
            for_ms: now.saturating_duration_since(run.since).as_millis() as u64,
            consecutive_failures: run.consecutive_failures,
            latency_ms: run.latency.map(|l| l.as_millis() as u64),
        })
        .collect();
    Report {
        observer: coord.config.node_id,
        fenced,
        regions,
        reachable,
    }
}

async fn send_report(coord: &Coordinator, report: Report, timeout: Duration) {
    let Some((leader, addr)) = coord.leader() else {
        return;
    };
    if leader == coord.config.node_id {
        coord.health.observe(report);
        return;
    }
    let Ok(body) = serde_json::to_vec(&report) else {
        return;
    };
    let Ok(mut client) = coord.channels.raft_client(&addr) else {
        return;
    };
    let mut req = tonic::Request::new(tern_proto::v1::HealthReport { report: body });
    req.set_timeout(timeout);
    if let Err(e) = client.report(req).await {
        debug!(leader, error = %e.message(), "report to the leader failed");
    }
}

async fn ping(coord: &Coordinator, addr: &str, timeout: Duration) -> Result<Duration, String> {
    let mut client = coord
        .channels
        .raft_client(addr)
        .map_err(|e| e.to_string())?;
    let mut req = tonic::Request::new(tern_proto::v1::PingRequest {
        from: coord.config.node_id,
    });
    req.set_timeout(timeout);
    let start = Instant::now();
    client
        .ping(req)
        .await
        .map_err(|e| e.message().to_string())?;
    Ok(start.elapsed())
}

async fn leader_loop(coord: Arc<Coordinator>) {
    let interval = Duration::from_millis(coord.config.probe.interval_ms);
    let mut tick = tokio::time::interval(interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut was_leader = false;
    loop {
        tick.tick().await;
        let leading = coord.is_leader();
        if !leading {
            if was_leader {
                info!("no longer leader: dropping the region-health view");
                coord
                    .health
                    .detector
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .clear();
                *coord
                    .health
                    .evaluation
                    .write()
                    .unwrap_or_else(|p| p.into_inner()) = None;
            }
            was_leader = false;
            continue;
        }
        was_leader = true;
        let voters = coord.voters();
        let (regions, committed, frozen, paused) = coord.read_state(|s| {
            (
                s.regions(),
                s.region_records().clone(),
                s.frozen(),
                s.paused(),
            )
        });
        let now = now_ms();
        let eval = {
            let view = ClusterView {
                voters: &voters,
                regions: &regions,
                committed: &committed,
                frozen,
                paused,
            };
            coord
                .health
                .detector
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .evaluate(now, &view)
        };
        let proposals = eval.proposals.clone();
        *coord
            .health
            .evaluation
            .write()
            .unwrap_or_else(|p| p.into_inner()) = Some((now, eval));
        for command in proposals {
            let request_id = crate::ops::new_request_id();
            let kind = command.kind();
            let p = Proposal {
                request_id,
                actor: "tern".into(),
                command,
            };
            match coord.submit(AdminOp::Propose { proposals: vec![p] }).await {
                Ok(r) => {
                    info!(kind, outcome = ?r.outcomes.first(), log_index = r.log_index, "health decision")
                }
                Err(e) => warn!(kind, error = %e, "health decision not committed"),
            }
        }
    }
}
