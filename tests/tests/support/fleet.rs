//! Simulated agent fleets (`tern-shim fleet`, one process per group of
//! agents, each agent with its own leaf issued in-process by its home
//! region's agent CA) against a [`Federation`], and reads of the
//! coordinators' `/metrics`. Shared by the agent failover test and the
//! agent benchmark (`tests/benches/agents.rs`).

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{bail, Context};
use rand::Rng;
use serde::Deserialize;
use tern_tests::{binary, wait_until, Check, Harness, Process, ProcessSpec};

use super::federation::{Federation, REGION_NAMES};
use super::http_get;

/// One group of simulated agents.
pub struct Fleet {
    pub name: String,
    pub home: usize,
    pub agents: usize,
    pub status: PathBuf,
    pub events: PathBuf,
    pub process: Process,
}

/// The counts of `--status-file` a test reads.
#[derive(Debug, Deserialize)]
pub struct FleetStatus {
    pub registered: usize,
    pub serving: BTreeMap<String, usize>,
}

/// One line of `--events-file`.
#[derive(Debug, Deserialize)]
pub struct Event {
    /// When the fleet process saw it (Unix ms).
    #[serde(default)]
    pub t_ms: u64,
    pub agent_id: String,
    pub event: String,
    #[serde(default)]
    pub epoch: Option<u64>,
    #[serde(default)]
    pub action: Option<String>,
    #[serde(default)]
    pub target: Option<String>,
    #[serde(default)]
    pub outcome: Option<String>,
}

impl Fleet {
    pub fn status(&self) -> anyhow::Result<FleetStatus> {
        let text = std::fs::read_to_string(&self.status)
            .with_context(|| format!("reading {}", self.status.display()))?;
        serde_json::from_str(&text).with_context(|| format!("parsing {}", self.status.display()))
    }

    /// Agents last verified attached to a region other than home.
    pub fn away(&self) -> usize {
        self.status()
            .map(|s| {
                s.serving
                    .iter()
                    .filter(|(r, _)| r.as_str() != REGION_NAMES[self.home])
                    .map(|(_, n)| n)
                    .sum()
            })
            .unwrap_or(0)
    }

    pub fn at_home(&self) -> usize {
        self.status()
            .map(|s| s.serving.get(REGION_NAMES[self.home]).copied().unwrap_or(0))
            .unwrap_or(0)
    }

    pub fn events(&self) -> anyhow::Result<Vec<Event>> {
        let text = std::fs::read_to_string(&self.events).unwrap_or_default();
        text.lines()
            .filter(|l| !l.trim().is_empty())
            .map(|l| serde_json::from_str(l).with_context(|| format!("event line {l:?}")))
            .collect()
    }
}

/// How a fleet is started beyond its home, size and configuration.
#[derive(Debug, Clone, Default)]
pub struct FleetOptions<'a> {
    /// `--allowed-regions`; `None`: any region.
    pub allowed: Option<&'a str>,
    /// `--connect-spread-ms`; `None`: the shim's default (5 ms per agent,
    /// at most 60 s).
    pub connect_spread_ms: Option<u64>,
    /// `--events-file`; false leaves it out (large fleets: the file grows
    /// by several lines per agent). The test keeps it.
    pub no_events: bool,
    /// `--apply-jitter-ms`; `None`: 500.
    pub apply_jitter_ms: Option<u64>,
    /// `--rate-burst` and `--rate-tokens` (redirects per target region per
    /// second, per process); `None`: 1000.
    pub rate: Option<u64>,
}

/// Starts a fleet of `agents` agents of region `home` (ids `<name>-NNNNN`)
/// with the agent failover test's timing: the process-wide redirect rate
/// raised to 1000/s with a burst of 1000 (one process stands for many
/// shims), 500 ms apply jitter, reconnects from 250 ms to 2 s. The
/// benchmark changes rate and jitter through [`FleetOptions`].
pub fn start_fleet(
    h: &Harness,
    fed: &Federation,
    name: &str,
    home: usize,
    agents: usize,
    config_hash: &str,
    allowed: Option<&str>,
) -> anyhow::Result<Fleet> {
    start_fleet_with(
        h,
        fed,
        name,
        home,
        agents,
        config_hash,
        &FleetOptions {
            allowed,
            ..FleetOptions::default()
        },
    )
}

/// [`start_fleet`] with options.
pub fn start_fleet_with(
    h: &Harness,
    fed: &Federation,
    name: &str,
    home: usize,
    agents: usize,
    config_hash: &str,
    options: &FleetOptions,
) -> anyhow::Result<Fleet> {
    let dir = h.path(format!("fleet-{name}"));
    std::fs::create_dir_all(&dir)?;
    let plane = &fed.planes[home];
    let ca_dir = plane.dir.join("data").join("agent-ca");
    let mut coordinators = vec![fed.nodes[home].grpc()];
    coordinators.extend(
        (0..fed.len())
            .filter(|i| *i != home)
            .map(|i| fed.nodes[i].grpc()),
    );
    let ca = fed.pki.dir.join("ca.pem");
    let status = dir.join("status.json");
    let events = dir.join("events.jsonl");
    let seed: u64 = h.seed().rng_for(name).random();
    let rate = options.rate.unwrap_or(1000).to_string();
    let jitter = options.apply_jitter_ms.unwrap_or(500).to_string();
    let mut spec = ProcessSpec::new(format!("fleet-{name}"), binary("tern-shim"))
        .arg("fleet")
        .args(["--agents", &agents.to_string()])
        .args(["--home", REGION_NAMES[home]])
        .args(["--home-base-url", &plane.url()])
        .arg("--agent-ca-cert")
        .arg(ca_dir.join("ca.pem"))
        .arg("--agent-ca-key")
        .arg(ca_dir.join("ca.key"))
        .args(["--id-prefix", &format!("{name}-")])
        .arg("--status-file")
        .arg(&status);
    if !options.no_events {
        spec = spec.arg("--events-file").arg(&events);
    }
    spec = spec
        .args(["--config-hash", config_hash])
        .arg("--coordinator-ca")
        .arg(&ca)
        .arg("--region-ca")
        .arg(&ca)
        .args(["--coordinators", &coordinators.join(",")])
        .args(["--seed", &seed.to_string()])
        // One fleet process stands for many shims, each of which would
        // have its own limiter: the process-wide limit is raised to match.
        .args(["--rate-burst", &rate, "--rate-tokens", &rate])
        .args(["--apply-jitter-ms", &jitter])
        .args(["--reconnect-base-ms", "250", "--reconnect-cap-ms", "2000"])
        .env("TERN_LOG", "info");
    if let Some(ms) = options.connect_spread_ms {
        spec = spec.args(["--connect-spread-ms", &ms.to_string()]);
    }
    if let Some(a) = options.allowed {
        spec = spec.args(["--allowed-regions", a]);
    }
    let process = h.spawn(spec)?;
    Ok(Fleet {
        name: name.to_string(),
        home,
        agents,
        status,
        events,
        process,
    })
}

/// A gauge value from a coordinator's `/metrics`, summed over series whose
/// labels contain every `label="value"` pair given.
pub fn metric(
    fed: &Federation,
    i: usize,
    name: &str,
    labels: &[(&str, &str)],
) -> anyhow::Result<i64> {
    let (code, body) = http_get(fed.nodes[i].http(), "/metrics")?;
    if code != 200 {
        bail!("/metrics answered {code}");
    }
    let mut total = 0i64;
    for line in body.lines() {
        let Some(rest) = line.strip_prefix(name) else {
            continue;
        };
        if !(rest.starts_with('{') || rest.starts_with(' ')) {
            continue;
        }
        if labels
            .iter()
            .all(|(k, v)| rest.contains(&format!("{k}=\"{v}\"")))
        {
            if let Some(v) = rest.rsplit(' ').next().and_then(|v| v.parse::<f64>().ok()) {
                total += v as i64;
            }
        }
    }
    Ok(total)
}

/// Waits (bounded) until [`metric`] is at least `at_least`.
pub fn wait_metric(
    fed: &Federation,
    i: usize,
    what: &str,
    name: &str,
    labels: &[(&str, &str)],
    at_least: i64,
    within: Duration,
) -> anyhow::Result<()> {
    wait_until(what, within, Duration::from_millis(500), || {
        match metric(fed, i, name, labels) {
            Ok(v) if v >= at_least => Check::Ready(()),
            Ok(v) => Check::pending(format!("{name} = {v}, want >= {at_least}")),
            Err(e) => Check::pending(e),
        }
    })
}
