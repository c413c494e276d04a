//! A federation of N regions for the region-health tests and the detection
//! benchmark: per region a reference stand-in (`tern stand-in serve`, the
//! region's control plane) and a coordinator (`tern serve`), a fresh PKI,
//! and a TCP relay on every directed link:
//!
//! - coordinator → coordinator: node `i` dials node `j` through relay
//!   `(i, j)` (`[dial_overrides]` in node `i`'s configuration), for Raft,
//!   pings, reports and forwarded admin calls alike (the tests that cut
//!   coordinator links check that the cut reached Raft);
//! - coordinator → control plane: node `i` probes region `j`'s stand-in
//!   through relay `(i, j)` (`[probe.overrides]`), its own region included.
//!   Each stand-in's certificate names every relay address in front of it,
//!   so HTTPS verification passes through the relays.
//!
//! The administrator's CLI talks to each coordinator directly (no relay):
//! cutting links never hides a coordinator from the test.
//!
//! Faults: cut or heal a coordinator link (one direction or both), drop the
//! bytes one way, isolate a coordinator, take a stand-in down / up / flap it
//! (through its control API) or SIGKILL and restart it, SIGKILL / SIGSTOP /
//! SIGCONT / restart a coordinator. Reads: `tern regions`, `tern audit`,
//! `tern status` from any live coordinator. Every wait is bounded and says
//! what it waited for; every CLI call is bounded too (a frozen coordinator
//! must not hang the test).

use std::collections::{BTreeMap, BTreeSet};
use std::io::Read;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::process::{Command, Output, Stdio};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{anyhow, bail, Context};
use serde::Deserialize;
use tern_tests::{
    binary, wait_until, Check, CutMode, Direction, Fault, Harness, Process, ProcessSpec, Relay,
};

use super::{leader_and_voters, tern, Admin, Node, NodeSpec, Pki};

/// Region names, in node-id order (node `i + 1` serves `REGION_NAMES[i]`).
pub const REGION_NAMES: [&str; 5] = ["eu", "us", "ap", "sa", "af"];

/// Longest a single `tern` CLI call may take before it is killed.
pub const CLI_DEADLINE: Duration = Duration::from_secs(15);

/// How the federation is configured.
#[derive(Debug, Clone)]
pub struct FederationConfig {
    /// Number of regions (each a stand-in and a voting coordinator). 3.
    pub regions: usize,
    /// `probe.interval_ms`. 1000.
    pub probe_interval_ms: u64,
    /// `probe.timeout_ms`; `None`: the coordinator's default (800).
    pub probe_timeout_ms: Option<u64>,
    /// `health.down_after_ms`. 10000 (the default).
    pub down_after_ms: u64,
    /// `health.up_after_ms`; `None`: the coordinator's default (120 s).
    pub up_after_ms: Option<u64>,
    /// Put a relay on every link (true), or let coordinators dial each
    /// other and the stand-ins directly (false).
    pub relays: bool,
    /// Extra TOML appended to every coordinator's configuration (e.g. an
    /// `[agents]` section). Empty.
    pub extra_config: String,
    /// Federation pins: each region gets a federation client certificate
    /// (`<region>-fed` in the PKI) and an outbound secret; each stand-in
    /// pins the other regions' certificates and secret hashes
    /// (`[[federation.peers]]`), and each coordinator has a `[federation]`
    /// table (renewals staged in `<region>-fed-staged`, absent at start).
    /// False.
    pub federation_pins: bool,
}

/// One region's federation client identity (with `federation_pins`).
#[derive(Debug, Clone)]
pub struct FedIdentity {
    /// PKI name of the certificate files the coordinator watches.
    pub name: String,
    /// Thumbprint of the certificate issued first.
    pub thumbprint: String,
    /// The outbound secret, hex.
    pub secret_hex: String,
    /// File holding `secret_hex`.
    pub secret_file: PathBuf,
    /// The coordinator's `federation.pins_dir`.
    pub pins_dir: PathBuf,
}

impl Default for FederationConfig {
    fn default() -> Self {
        FederationConfig {
            regions: 3,
            probe_interval_ms: 1000,
            probe_timeout_ms: None,
            down_after_ms: 10_000,
            up_after_ms: None,
            relays: true,
            extra_config: String::new(),
            federation_pins: false,
        }
    }
}

/// What `tern stand-in serve` writes to its ready file.
#[derive(Debug, Clone, Deserialize)]
pub struct StandInReady {
    pub region: String,
    pub https: SocketAddr,
    pub control: SocketAddr,
    pub pid: u32,
}

/// One region's stand-in process and its (fixed after the first start)
/// addresses.
pub struct StandIn {
    pub region: String,
    pub ip: IpAddr,
    pub dir: PathBuf,
    pub https: SocketAddr,
    pub control: SocketAddr,
    pub process: Process,
}

impl StandIn {
    /// `https://ip:port` of the stand-in itself (what the member table holds).
    pub fn url(&self) -> String {
        format!("https://{}", self.https)
    }
}

/// One entry of `tern regions --output json`.
#[derive(Debug, Clone, Deserialize)]
pub struct RegionView {
    pub region: String,
    pub state: String,
    pub since_ms: u64,
    pub epoch: u64,
    /// The leader's live computation; `None` without a live view.
    pub computed: Option<String>,
    pub coordinator_reporting: bool,
    pub frozen: bool,
    pub paused: bool,
    #[serde(default)]
    pub observers: Vec<ObserverView>,
}

/// What one observer sees of a region.
#[derive(Debug, Clone, Deserialize)]
pub struct ObserverView {
    pub observer: u64,
    pub observer_region: String,
    pub sees: String,
    pub since_ms: u64,
    pub report_age_ms: u64,
}

/// One entry of `tern audit --output json`.
#[derive(Debug, Clone, Deserialize)]
pub struct AuditRecord {
    pub seq: u64,
    pub log_index: u64,
    pub at_ms: u64,
    pub actor: String,
    pub kind: String,
    pub summary: String,
    pub epoch: u64,
    #[serde(default)]
    pub details: serde_json::Value,
}

/// An applied `region_transition` from the audit trail.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Transition {
    pub region: String,
    pub from: String,
    pub to: String,
    /// Leader-stamped time of the entry (ms since the Unix epoch).
    pub at_ms: u64,
    pub log_index: u64,
}

impl std::fmt::Display for Transition {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{}: {} -> {} at {} (log index {})",
            self.region, self.from, self.to, self.at_ms, self.log_index
        )
    }
}

/// The applied region transitions in `audit`, in log order (refused
/// proposals, audited as "refused: ...", are left out).
pub fn transitions(audit: &[AuditRecord]) -> Vec<Transition> {
    audit
        .iter()
        .filter(|a| a.kind == "region_transition" && !a.summary.starts_with("refused"))
        .map(|a| Transition {
            region: a.details["region"].as_str().unwrap_or_default().to_string(),
            from: a.details["from"].as_str().unwrap_or_default().to_string(),
            to: a.details["to"].as_str().unwrap_or_default().to_string(),
            at_ms: a.at_ms,
            log_index: a.log_index,
        })
        .collect()
}

/// Transitions into `unreachable` (any region).
pub fn failovers(audit: &[AuditRecord]) -> Vec<Transition> {
    transitions(audit)
        .into_iter()
        .filter(|t| t.to == "unreachable")
        .collect()
}

/// This machine's wall clock, ms since the Unix epoch (the clock the
/// leader stamps audit records with).
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// Runs `cmd` to completion, killing it after `deadline`; a non-zero exit
/// is an error. Output is read while it runs (no pipe can fill up).
pub fn run_bounded(cmd: &mut Command, deadline: Duration) -> anyhow::Result<Output> {
    let output = run_bounded_any(cmd, deadline)?;
    if !output.status.success() {
        bail!(
            "{cmd:?} failed ({}): {}{}",
            output.status,
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
    }
    Ok(output)
}

/// Runs `cmd` to completion, killing it after `deadline`, whatever its exit
/// status (the caller checks it).
pub fn run_bounded_any(cmd: &mut Command, deadline: Duration) -> anyhow::Result<Output> {
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("starting {cmd:?}"))?;
    let drain = |pipe: Option<Box<dyn Read + Send>>| {
        std::thread::spawn(move || {
            let mut buf = Vec::new();
            if let Some(mut p) = pipe {
                let _ = p.read_to_end(&mut buf);
            }
            buf
        })
    };
    let out = drain(
        child
            .stdout
            .take()
            .map(|p| Box::new(p) as Box<dyn Read + Send>),
    );
    let err = drain(
        child
            .stderr
            .take()
            .map(|p| Box::new(p) as Box<dyn Read + Send>),
    );
    let start = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait()? {
            break status;
        }
        if start.elapsed() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            let _ = out.join();
            let _ = err.join();
            bail!("{cmd:?} did not finish within {deadline:?} (killed)");
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    let stdout = out.join().unwrap_or_default();
    let stderr = err.join().unwrap_or_default();
    let output = Output {
        status,
        stdout,
        stderr,
    };
    Ok(output)
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// A running federation; every process and relay stops when it drops.
/// Declare the [`Harness`] before it so the harness drops last.
pub struct Federation<'h> {
    h: &'h Harness,
    pub config: FederationConfig,
    pub pki: Pki,
    pub admin: Admin,
    /// Coordinators; index `i` is node `i + 1` of region `REGION_NAMES[i]`.
    pub nodes: Vec<Node>,
    /// Stand-ins; index `j` plays region `REGION_NAMES[j]`.
    pub planes: Vec<StandIn>,
    /// Federation identities by region index (empty without
    /// `federation_pins`).
    pub fed: Vec<FedIdentity>,
    /// `(i, j)`: node `i` dials node `j` through it.
    coord_links: BTreeMap<(usize, usize), Relay>,
    /// `(i, j)`: node `i` probes region `j`'s stand-in through it.
    probe_links: BTreeMap<(usize, usize), Relay>,
    /// Coordinators the test SIGSTOPped.
    frozen: Mutex<BTreeSet<usize>>,
    /// Coordinators cut off from the others (their answers are stale).
    isolated: Mutex<BTreeSet<usize>>,
}

impl<'h> Federation<'h> {
    /// Starts the federation and waits (bounded) until it has a leader, N
    /// voters, and every region is healthy in the leader's live view.
    pub fn start(h: &'h Harness, config: FederationConfig) -> anyhow::Result<Federation<'h>> {
        let n = config.regions;
        if n == 0 || n > REGION_NAMES.len() {
            bail!("a federation has 1 to {} regions", REGION_NAMES.len());
        }
        let pki = Pki::new(h)?;
        pki.admin("ops", &[])?;
        let admin = Admin::new(&pki, "ops");
        let mut nodes = Vec::new();
        for (i, region) in REGION_NAMES.iter().take(n).enumerate() {
            nodes.push(Node::new(h, &pki, i as u64 + 1, region)?);
        }
        let plane_ips: Vec<IpAddr> = (0..n).map(|_| h.next_ip()).collect();

        // Every relay first, so certificates and configurations can name them.
        let mut coord_links = BTreeMap::new();
        let mut probe_links = BTreeMap::new();
        if config.relays {
            for i in 0..n {
                for j in 0..n {
                    if i != j {
                        coord_links.insert((i, j), Relay::bind(h.next_ip())?);
                    }
                    probe_links.insert((i, j), Relay::bind(h.next_ip())?);
                }
            }
        }

        // Federation identities, and every stand-in's peer entries.
        let mut fed_ids = Vec::new();
        if config.federation_pins {
            for (j, region) in REGION_NAMES.iter().take(n).enumerate() {
                let name = format!("{region}-fed");
                let thumbprint = pki.node(&name, plane_ips[j], &[])?;
                let secret: [u8; 32] = rand::random();
                let secret_hex = hex::encode(secret);
                let secret_file = h.path(format!("{region}-fed.secret"));
                std::fs::write(&secret_file, &secret_hex)?;
                fed_ids.push(FedIdentity {
                    name,
                    thumbprint,
                    secret_hex,
                    secret_file,
                    pins_dir: h.path(format!("{region}-fed-pins")),
                });
            }
            for (j, region) in REGION_NAMES.iter().take(n).enumerate() {
                let mut peers = String::new();
                for (k, other) in fed_ids.iter().enumerate() {
                    if k == j {
                        continue;
                    }
                    let hash = {
                        use sha2::Digest as _;
                        hex::encode(sha2::Sha256::digest(hex::decode(&other.secret_hex)?))
                    };
                    peers.push_str(&format!(
                        "\n[[federation.peers]]\nname = \"{}\"\npinned_thumbprints = [\"{}\"]\ninbound_secret_sha256 = \"{hash}\"\n",
                        REGION_NAMES[k], other.thumbprint
                    ));
                }
                let dir = h.path(format!("{region}-plane"));
                std::fs::create_dir_all(&dir)?;
                std::fs::write(dir.join(FEDERATION_PEERS_FILE), peers)?;
            }
        }

        // Stand-ins: a certificate naming the stand-in and every relay in
        // front of it, then start on port 0.
        let mut planes = Vec::new();
        for (j, region) in REGION_NAMES.iter().take(n).enumerate() {
            let name = format!("{region}-plane");
            let relay_ips: Vec<String> = (0..n)
                .filter_map(|i| probe_links.get(&(i, j)))
                .map(|r: &Relay| r.addr().ip().to_string())
                .collect();
            let mut extra: Vec<&str> = Vec::new();
            for ip in &relay_ips {
                extra.push("--ip");
                extra.push(ip);
            }
            pki.node(&name, plane_ips[j], &extra)?;
            planes.push(start_plane(h, &pki, region, plane_ips[j])?);
        }
        for ((_, j), relay) in &probe_links {
            relay.set_target(planes[*j].https);
        }

        let mut fed = Federation {
            h,
            config,
            pki,
            admin,
            nodes: Vec::new(),
            planes,
            fed: fed_ids,
            coord_links,
            probe_links,
            frozen: Mutex::new(BTreeSet::new()),
            isolated: Mutex::new(BTreeSet::new()),
        };

        // Node 1 initializes alone, with its own control plane.
        let sections: Vec<String> = (0..n).map(|i| fed.sections(i)).collect();
        {
            let n1 = &mut nodes[0];
            let spec = NodeSpec {
                initialize: true,
                sections: &sections[0],
                ..NodeSpec::new(1, REGION_NAMES[0])
            };
            n1.start(h, &fed.pki, &spec)?;
        }
        fed.retarget_coordinator(0, &nodes[0])?;
        let addr1 = nodes[0].grpc();
        let admin = fed.admin.clone();
        wait_until(
            "node 1 to lead its one-node cluster",
            Duration::from_secs(60),
            Duration::from_millis(200),
            || match status(&admin, &addr1) {
                Ok(s) => Check::ready_or(leader_and_voters(&s).0, s),
                Err(e) => Check::pending(e),
            },
        )?;

        // The others start with node 1 as a bootstrap member.
        let url1 = fed.planes[0].url();
        let (first, rest) = nodes.split_at_mut(1);
        for (k, node) in rest.iter_mut().enumerate() {
            let i = k + 1;
            let spec = NodeSpec {
                bootstrap: vec![(&first[0], addr1.clone())],
                bootstrap_control_planes: vec![(1, url1.clone())],
                sections: &sections[i],
                ..NodeSpec::new(i as u64 + 1, REGION_NAMES[i])
            };
            node.start(h, &fed.pki, &spec)?;
            fed.retarget_coordinator(i, node)?;
        }
        for (i, node) in nodes.iter().enumerate().skip(1) {
            let url = fed.planes[i].url();
            let mut attempt = 0;
            // `members add` is idempotent per node; retry a transient
            // failure (a leader still settling) a few times, bounded.
            loop {
                attempt += 1;
                match fed
                    .admin
                    .add_member_with_control_plane(&addr1, node, "region", Some(&url))
                {
                    Ok(()) => break,
                    Err(e) if attempt < 3 => {
                        eprintln!(
                            "[federation] members add node {} failed, retrying: {e:#}",
                            i + 1
                        )
                    }
                    Err(e) => return Err(e),
                }
            }
        }
        fed.nodes = nodes;
        fed.wait_healthy("the federation to start", Duration::from_secs(90))?;
        eprintln!(
            "[federation] {n} regions up: {}",
            (0..n)
                .map(|i| format!(
                    "{} (coordinator {}, stand-in {})",
                    REGION_NAMES[i],
                    fed.nodes[i].grpc(),
                    fed.planes[i].https
                ))
                .collect::<Vec<_>>()
                .join(", ")
        );
        Ok(fed)
    }

    /// The `[control_plane]`, `[probe]`, `[health]` and `[dial_overrides]`
    /// sections of node `i`'s configuration.
    fn sections(&self, i: usize) -> String {
        let c = &self.config;
        let mut t = format!(
            "[control_plane]\nurl = \"{}\"\n\n[probe]\ninterval_ms = {}\n",
            self.planes[i].url(),
            c.probe_interval_ms
        );
        if let Some(ms) = c.probe_timeout_ms {
            t.push_str(&format!("timeout_ms = {ms}\n"));
        }
        t.push_str("\n[probe.overrides]\n");
        for (j, region) in REGION_NAMES.iter().enumerate().take(c.regions) {
            if let Some(relay) = self.probe_links.get(&(i, j)) {
                t.push_str(&format!("{region} = \"https://{}\"\n", relay.addr()));
            }
        }
        t.push_str(&format!(
            "\n[health]\ndown_after_ms = {}\n",
            c.down_after_ms
        ));
        if let Some(ms) = c.up_after_ms {
            t.push_str(&format!("up_after_ms = {ms}\n"));
        }
        t.push_str("\n[dial_overrides]\n");
        for j in 0..c.regions {
            if let Some(relay) = self.coord_links.get(&(i, j)) {
                t.push_str(&format!("\"{}\" = \"{}\"\n", j + 1, relay.addr()));
            }
        }
        t.push('\n');
        if let Some(f) = self.fed.get(i) {
            t.push_str(&format!(
                "[federation]\nclient_cert_file = \"{}\"\nclient_key_file = \"{}\"\nsecret_file = \"{}\"\npins_dir = \"{}\"\nnext_cert_file = \"{}\"\nnext_key_file = \"{}\"\n\n",
                self.pki.cert(&f.name).display(),
                self.pki.key(&f.name).display(),
                f.secret_file.display(),
                f.pins_dir.display(),
                self.pki.cert(&format!("{}-staged", f.name)).display(),
                self.pki.key(&format!("{}-staged", f.name)).display()
            ));
        }
        t.push_str(&c.extra_config);
        t
    }

    /// Points every relay in front of coordinator `j` at its bound address.
    fn retarget_coordinator(&self, j: usize, node: &Node) -> anyhow::Result<()> {
        let addr: SocketAddr = node
            .grpc()
            .parse()
            .with_context(|| format!("node {} grpc address {:?}", j + 1, node.grpc()))?;
        for ((_, to), relay) in &self.coord_links {
            if *to == j {
                relay.set_target(addr);
            }
        }
        Ok(())
    }

    /// The harness this federation runs under.
    pub fn harness(&self) -> &Harness {
        self.h
    }

    /// Number of regions.
    pub fn len(&self) -> usize {
        self.config.regions
    }

    /// Region name of index `i`.
    pub fn region(&self, i: usize) -> &'static str {
        REGION_NAMES[i]
    }

    /// Index of `region`.
    pub fn index_of(&self, region: &str) -> Option<usize> {
        REGION_NAMES
            .iter()
            .take(self.config.regions)
            .position(|r| *r == region)
    }

    // ------------------------------------------------------------ links

    fn coord_link(&self, from: usize, to: usize) -> anyhow::Result<&Relay> {
        self.coord_links
            .get(&(from, to))
            .ok_or_else(|| anyhow!("no relay from coordinator {from} to {to} (relays off?)"))
    }

    /// Blackholes the directed link `from → to`: coordinator `from` can no
    /// longer reach coordinator `to` (nothing arrives, nothing is refused),
    /// while `to` still reaches `from`.
    pub fn cut_link(&self, from: usize, to: usize) -> anyhow::Result<()> {
        self.coord_link(from, to)?
            .set_fault(Fault::Cut(CutMode::Blackhole));
        Ok(())
    }

    /// Blackholes both directed links between `a` and `b`.
    pub fn cut_link_both(&self, a: usize, b: usize) -> anyhow::Result<()> {
        self.cut_link(a, b)?;
        self.cut_link(b, a)
    }

    /// Drops the bytes `from` sends to `to`, on both connections between
    /// them (its requests to `to` and its answers to `to`'s requests);
    /// bytes from `to` to `from` still arrive.
    pub fn drop_bytes(&self, from: usize, to: usize) -> anyhow::Result<()> {
        self.coord_link(from, to)?
            .set_fault(Fault::OneWay(Direction::ClientToServer));
        self.coord_link(to, from)?
            .set_fault(Fault::OneWay(Direction::ServerToClient));
        Ok(())
    }

    /// Lets the directed link `from → to` pass again.
    pub fn heal_link(&self, from: usize, to: usize) -> anyhow::Result<()> {
        self.coord_link(from, to)?.set_fault(Fault::Pass);
        Ok(())
    }

    /// Lets both directed links between `a` and `b` pass again.
    pub fn heal_link_both(&self, a: usize, b: usize) -> anyhow::Result<()> {
        self.heal_link(a, b)?;
        self.heal_link(b, a)
    }

    /// Cuts coordinator `i` off from every other coordinator, both ways;
    /// its probes of the control planes still pass.
    pub fn isolate_from_coordinators(&self, i: usize) -> anyhow::Result<()> {
        for j in (0..self.len()).filter(|j| *j != i) {
            self.cut_link_both(i, j)?;
        }
        lock(&self.isolated).insert(i);
        Ok(())
    }

    /// Cuts every link of coordinator `i`, both ways: to and from the
    /// other coordinators, and its probes of every control plane.
    pub fn isolate(&self, i: usize) -> anyhow::Result<()> {
        self.isolate_from_coordinators(i)?;
        for j in 0..self.len() {
            if let Some(relay) = self.probe_links.get(&(i, j)) {
                relay.set_fault(Fault::Cut(CutMode::Blackhole));
            }
        }
        Ok(())
    }

    /// Every relay passes again.
    pub fn heal_all(&self) {
        for relay in self.coord_links.values().chain(self.probe_links.values()) {
            relay.set_fault(Fault::Pass);
        }
        lock(&self.isolated).clear();
    }

    // ------------------------------------------------------------ stand-ins

    /// `tern stand-in mode --control ADDR <mode>` for region `j`; returns
    /// once the stand-in confirms the mode.
    pub fn plane_mode(&self, j: usize, mode: &str) -> anyhow::Result<()> {
        let control = self.planes[j].control.to_string();
        run_bounded(
            tern().args(["stand-in", "mode", "--control", &control, mode]),
            CLI_DEADLINE,
        )
        .with_context(|| format!("setting region {} to mode {mode}", REGION_NAMES[j]))?;
        Ok(())
    }

    /// Region `j`'s control plane stops listening and drops its connections.
    pub fn plane_down(&self, j: usize) -> anyhow::Result<()> {
        self.plane_mode(j, "down")
    }

    /// Region `j`'s control plane serves normally again.
    pub fn plane_up(&self, j: usize) -> anyhow::Result<()> {
        self.plane_mode(j, "up")
    }

    /// Flaps region `j`'s control plane: `cycles` times down for `down_for`
    /// then up for `up_for`, on a fixed schedule from now (the mode calls'
    /// own latency does not shift it). Ends up. Returns the wall-clock ms of
    /// each switch, as (mode, at_ms).
    pub fn flap_plane(
        &self,
        j: usize,
        down_for: Duration,
        up_for: Duration,
        cycles: u32,
    ) -> anyhow::Result<Vec<(&'static str, u64)>> {
        let start = Instant::now();
        let period = down_for + up_for;
        let mut switches = Vec::new();
        for k in 0..cycles {
            let down_at = start + period * k;
            let up_at = down_at + down_for;
            pace_until(down_at);
            switches.push(("down", now_ms()));
            self.plane_down(j)?;
            pace_until(up_at);
            switches.push(("up", now_ms()));
            self.plane_up(j)?;
        }
        pace_until(start + period * cycles);
        Ok(switches)
    }

    /// SIGKILLs region `j`'s stand-in process.
    pub fn kill_plane(&self, j: usize) {
        self.planes[j].process.kill();
    }

    /// Restarts region `j`'s stand-in (same addresses, same data dir) and
    /// waits for its ready file.
    pub fn restart_plane(&self, j: usize) -> anyhow::Result<()> {
        let p = &self.planes[j].process;
        p.restart()?;
        let ready: StandInReady = p.wait_ready(Duration::from_secs(60))?;
        if ready.https != self.planes[j].https || ready.control != self.planes[j].control {
            bail!(
                "stand-in {} came back on {} / {} instead of {} / {}",
                REGION_NAMES[j],
                ready.https,
                ready.control,
                self.planes[j].https,
                self.planes[j].control
            );
        }
        Ok(())
    }

    // ------------------------------------------------------------ coordinators

    /// Whether coordinator `i` runs and is not SIGSTOPped.
    pub fn is_live(&self, i: usize) -> bool {
        !lock(&self.frozen).contains(&i) && self.nodes[i].process().is_running()
    }

    /// SIGKILLs coordinator `i`.
    pub fn kill(&self, i: usize) {
        self.nodes[i].process().kill();
    }

    /// SIGSTOPs coordinator `i` (a hung process: sockets stay open).
    pub fn stop(&self, i: usize) -> anyhow::Result<()> {
        self.nodes[i].process().stop()?;
        lock(&self.frozen).insert(i);
        Ok(())
    }

    /// SIGCONTs coordinator `i`.
    pub fn cont(&self, i: usize) -> anyhow::Result<()> {
        self.nodes[i].process().cont()?;
        lock(&self.frozen).remove(&i);
        Ok(())
    }

    /// Restarts coordinator `i` on its data directory and addresses (a
    /// running one is SIGKILLed first) and waits for its ready file.
    pub fn restart(&self, i: usize) -> anyhow::Result<()> {
        let p = self.nodes[i].process();
        p.restart()?;
        lock(&self.frozen).remove(&i);
        let ready: super::Ready = p.wait_ready(Duration::from_secs(60))?;
        if ready.grpc != self.nodes[i].grpc() {
            bail!(
                "coordinator {} came back on {} instead of {}",
                i + 1,
                ready.grpc,
                self.nodes[i].grpc()
            );
        }
        Ok(())
    }

    /// Live coordinators, the ones in contact with the others first.
    fn answer_order(&self) -> Vec<usize> {
        let isolated = lock(&self.isolated).clone();
        let mut order: Vec<usize> = (0..self.len()).filter(|i| self.is_live(*i)).collect();
        order.sort_by_key(|i| isolated.contains(i));
        order
    }

    // ------------------------------------------------------------ reads

    /// `tern rotate status --output json` through coordinator `i`.
    pub fn rotate_status(&self, i: usize) -> anyhow::Result<serde_json::Value> {
        let out = run_bounded(
            self.admin
                .cmd(&self.nodes[i].grpc())
                .args(["rotate", "status", "--output", "json"]),
            CLI_DEADLINE,
        )?;
        serde_json::from_slice(&out.stdout).context("parsing `tern rotate status --output json`")
    }

    /// The newest rotation of `subject` (e.g. `transport:1`,
    /// `federation:eu`), as coordinator `i` shows it.
    pub fn rotation_of(
        &self,
        i: usize,
        subject: &str,
    ) -> anyhow::Result<Option<serde_json::Value>> {
        let s = self.rotate_status(i)?;
        Ok(s["rotations"]
            .as_array()
            .and_then(|a| a.iter().find(|r| r["subject"] == subject).cloned()))
    }

    /// `tern status --output json` from coordinator `i`.
    pub fn status_from(&self, i: usize) -> anyhow::Result<serde_json::Value> {
        status(&self.admin, &self.nodes[i].grpc())
    }

    /// The leader's index, as the first live coordinator that knows one
    /// says.
    pub fn leader(&self) -> anyhow::Result<usize> {
        let mut seen = Vec::new();
        for i in self.answer_order() {
            match self.status_from(i) {
                Ok(s) => match s["leader_id"].as_u64() {
                    Some(id) if id >= 1 && (id as usize) <= self.len() => {
                        return Ok(id as usize - 1)
                    }
                    _ => seen.push(format!("{}: no leader", REGION_NAMES[i])),
                },
                Err(e) => seen.push(format!("{}: {e:#}", REGION_NAMES[i])),
            }
        }
        bail!("no live coordinator knows a leader: {}", seen.join("; "))
    }

    /// Waits (bounded) for a leader known to the live coordinators.
    pub fn wait_leader(&self, within: Duration) -> anyhow::Result<usize> {
        wait_until("a leader", within, Duration::from_millis(250), || {
            self.leader().map(Some)
        })
    }

    /// `tern regions --output json` from coordinator `i`.
    pub fn regions_from(&self, i: usize) -> anyhow::Result<Vec<RegionView>> {
        let out = run_bounded(
            self.admin
                .cmd(&self.nodes[i].grpc())
                .args(["regions", "--output", "json"]),
            CLI_DEADLINE,
        )?;
        serde_json::from_slice(&out.stdout).context("parsing `tern regions --output json`")
    }

    /// `tern regions` from any live coordinator: the first answer that
    /// carries the leader's live view, else the first answer at all.
    pub fn regions(&self) -> anyhow::Result<Vec<RegionView>> {
        let mut fallback = None;
        let mut errors = Vec::new();
        for i in self.answer_order() {
            match self.regions_from(i) {
                Ok(v) if v.iter().all(|r| r.computed.is_some()) => return Ok(v),
                Ok(v) => {
                    if fallback.is_none() {
                        fallback = Some(v);
                    }
                }
                Err(e) => errors.push(format!("{}: {e:#}", REGION_NAMES[i])),
            }
        }
        fallback.ok_or_else(|| {
            anyhow!(
                "no live coordinator answered `tern regions`: {}",
                errors.join("; ")
            )
        })
    }

    /// `tern audit --output json` (up to 10,000 records) from coordinator `i`.
    pub fn audit_from(&self, i: usize) -> anyhow::Result<Vec<AuditRecord>> {
        let out = run_bounded(
            self.admin
                .cmd(&self.nodes[i].grpc())
                .args(["audit", "--limit", "10000", "--output", "json"]),
            CLI_DEADLINE,
        )?;
        serde_json::from_slice(&out.stdout).context("parsing `tern audit --output json`")
    }

    /// The audit trail from the first live coordinator that answers.
    pub fn audit(&self) -> anyhow::Result<Vec<AuditRecord>> {
        let mut errors = Vec::new();
        for i in self.answer_order() {
            match self.audit_from(i) {
                Ok(a) => return Ok(a),
                Err(e) => errors.push(format!("{}: {e:#}", REGION_NAMES[i])),
            }
        }
        bail!(
            "no live coordinator answered `tern audit`: {}",
            errors.join("; ")
        )
    }

    /// The union of the audit trails of every live coordinator that
    /// answers (by log index): whatever any replica has applied. For
    /// assertions that something never happened.
    pub fn audit_all(&self) -> anyhow::Result<Vec<AuditRecord>> {
        let mut all: BTreeMap<(u64, u64), AuditRecord> = BTreeMap::new();
        let mut answered = 0;
        let mut errors = Vec::new();
        for i in self.answer_order() {
            match self.audit_from(i) {
                Ok(a) => {
                    answered += 1;
                    for r in a {
                        all.insert((r.log_index, r.seq), r);
                    }
                }
                Err(e) => errors.push(format!("{}: {e:#}", REGION_NAMES[i])),
            }
        }
        if answered == 0 {
            bail!(
                "no live coordinator answered `tern audit`: {}",
                errors.join("; ")
            );
        }
        Ok(all.into_values().collect())
    }

    // ------------------------------------------------------------ waits

    /// Waits (bounded) until a live coordinator reports a leader and N
    /// voters, and the leader's live view has every region committed and
    /// computed healthy with its coordinator reporting.
    pub fn wait_healthy(&self, what: &str, within: Duration) -> anyhow::Result<()> {
        let n = self.len();
        wait_until(
            &format!("{what}: a leader, {n} voters, every region healthy and reporting"),
            within,
            Duration::from_millis(500),
            || -> anyhow::Result<Check<()>> {
                let i = match self.answer_order().first() {
                    Some(i) => *i,
                    None => return Ok(Check::pending("no live coordinator")),
                };
                let s = self.status_from(i)?;
                let (leader, voters) = leader_and_voters(&s);
                if leader.is_none() || voters != n {
                    return Ok(Check::pending(format!(
                        "leader {leader:?}, {voters} voters"
                    )));
                }
                let regions = self.regions()?;
                let ok = regions.len() == n
                    && regions.iter().all(|r| {
                        r.state == "healthy"
                            && r.computed.as_deref() == Some("healthy")
                            && r.coordinator_reporting
                    });
                Ok(Check::ready_or(ok.then_some(()), describe(&regions)))
            },
        )
    }

    /// Waits (bounded) until region `j` is committed `state`.
    pub fn wait_region_state(
        &self,
        j: usize,
        state: &str,
        within: Duration,
    ) -> anyhow::Result<RegionView> {
        let region = REGION_NAMES[j];
        wait_until(
            &format!("region {region} to be {state}"),
            within,
            Duration::from_millis(500),
            || -> anyhow::Result<Check<RegionView>> {
                let regions = self.regions()?;
                let found = regions.iter().find(|r| r.region == region).cloned();
                Ok(Check::ready_or(
                    found.filter(|r| r.state == state),
                    describe(&regions),
                ))
            },
        )
    }

    /// Waits (bounded) for the applied transition of region `j` to `to`
    /// stamped at or after `after_ms`.
    pub fn wait_transition(
        &self,
        j: usize,
        to: &str,
        after_ms: u64,
        within: Duration,
    ) -> anyhow::Result<Transition> {
        let region = REGION_NAMES[j];
        wait_until(
            &format!("the audit trail to show region {region} -> {to}"),
            within,
            Duration::from_millis(500),
            || -> anyhow::Result<Check<Transition>> {
                let audit = self.audit()?;
                let all = transitions(&audit);
                let hit = all
                    .iter()
                    .find(|t| t.region == region && t.to == to && t.at_ms >= after_ms)
                    .cloned();
                let recent: Vec<String> = all
                    .iter()
                    .filter(|t| t.at_ms >= after_ms)
                    .map(|t| t.to_string())
                    .collect();
                Ok(Check::ready_or(
                    hit,
                    format!("transitions since then: [{}]", recent.join("; ")),
                ))
            },
        )
    }

    /// Holds for `window` while watching `tern regions` about once a
    /// second; fails at once if any region is committed `unreachable`.
    /// Returns the distinct (region, state) pairs seen. The window is the
    /// test's input (how long a fault lasts), not a wait for anything.
    pub fn watch_no_failover(
        &self,
        what: &str,
        window: Duration,
    ) -> anyhow::Result<BTreeSet<(String, String)>> {
        let start = Instant::now();
        let mut seen = BTreeSet::new();
        let mut answers = 0u32;
        while start.elapsed() < window {
            let tick = Instant::now();
            match self.regions() {
                Ok(regions) => {
                    answers += 1;
                    for r in &regions {
                        if r.state == "unreachable" {
                            bail!(
                                "{what}: region {} was declared unreachable after {:.1}s: {}",
                                r.region,
                                start.elapsed().as_secs_f64(),
                                describe(&regions)
                            );
                        }
                        seen.insert((r.region.clone(), r.state.clone()));
                    }
                }
                Err(e) => eprintln!("[federation] {what}: regions unavailable: {e:#}"),
            }
            pace_until((tick + Duration::from_secs(1)).min(start + window));
        }
        if answers == 0 {
            bail!("{what}: no coordinator answered `tern regions` during the window");
        }
        Ok(seen)
    }
}

/// Sleeps until `at` (pacing a fault schedule; returns at once if past).
pub fn pace_until(at: Instant) {
    let now = Instant::now();
    if at > now {
        std::thread::sleep(at - now);
    }
}

/// `tern status --output json` against `addr`, bounded.
fn status(admin: &Admin, addr: &str) -> anyhow::Result<serde_json::Value> {
    let out = run_bounded(
        admin.cmd(addr).args(["status", "--output", "json"]),
        CLI_DEADLINE,
    )?;
    Ok(serde_json::from_slice(&out.stdout)?)
}

/// One line per region for wait messages.
pub fn describe(regions: &[RegionView]) -> String {
    regions
        .iter()
        .map(|r| {
            let obs: Vec<String> = r
                .observers
                .iter()
                .map(|o| format!("{}:{}", o.observer_region, o.sees))
                .collect();
            format!(
                "{} {} (computed {}, coordinator reporting {}, observers [{}]{}{})",
                r.region,
                r.state,
                r.computed.as_deref().unwrap_or("-"),
                r.coordinator_reporting,
                obs.join(" "),
                if r.frozen { ", FROZEN" } else { "" },
                if r.paused { ", PAUSED" } else { "" },
            )
        })
        .collect::<Vec<_>>()
        .join("; ")
}

/// In a stand-in's directory: its `[[federation.peers]]` entries, appended
/// to its configuration (with `federation_pins`).
const FEDERATION_PEERS_FILE: &str = "federation-peers.toml";

/// Writes a stand-in's configuration file (`listen` holds `ip:0` on the
/// first start, then the bound addresses so a restart keeps them).
/// The configurations (content hashes) region `region`'s stand-in holds:
/// every region holds `cfg-common`; `cfg-west` only eu and us.
pub fn plane_configs(region: &str) -> Vec<&'static str> {
    match region {
        "eu" | "us" => vec!["cfg-common", "cfg-west"],
        _ => vec!["cfg-common"],
    }
}

fn write_plane_config(
    dir: &std::path::Path,
    pki: &Pki,
    region: &str,
    https: &str,
    control: &str,
) -> anyhow::Result<()> {
    let name = format!("{region}-plane");
    let text = format!(
        "region = \"{region}\"\ndata_dir = \"data\"\nready_file = \"ready.json\"\n\n[listen]\nhttps = \"{https}\"\ncontrol = \"{control}\"\n\n[tls]\ncert_file = \"{}\"\nkey_file = \"{}\"\n\n[handover]\nconfigs = [{}]\ncoordinator_ca_file = \"{}\"\n",
        pki.cert(&name).display(),
        pki.key(&name).display(),
        plane_configs(region)
            .iter()
            .map(|c| format!("\"{c}\""))
            .collect::<Vec<_>>()
            .join(", "),
        pki.dir.join("ca.pem").display(),
    );
    // Federation peer entries, when the federation was started with them.
    let text = match std::fs::read_to_string(dir.join(FEDERATION_PEERS_FILE)) {
        Ok(peers) => format!("{text}{peers}"),
        Err(_) => text,
    };
    std::fs::create_dir_all(dir)?;
    std::fs::write(dir.join("plane.toml"), text)?;
    Ok(())
}

/// Starts region `region`'s stand-in on `ip` port 0 (control on
/// 127.0.0.1 port 0), waits for its ready file, and rewrites its
/// configuration with the bound addresses.
fn start_plane(h: &Harness, pki: &Pki, region: &str, ip: IpAddr) -> anyhow::Result<StandIn> {
    let dir = h.path(format!("{region}-plane"));
    write_plane_config(&dir, pki, region, &format!("{ip}:0"), "127.0.0.1:0")?;
    let process = h.spawn(
        ProcessSpec::new(format!("{region}-plane"), binary("tern"))
            .args(["stand-in", "serve", "--config"])
            .arg(dir.join("plane.toml"))
            .env("TERN_LOG", "info")
            .ready_file(dir.join("ready.json")),
    )?;
    let ready: StandInReady = process.wait_ready(Duration::from_secs(60))?;
    if ready.region != region {
        bail!("stand-in for {region} says it plays {}", ready.region);
    }
    write_plane_config(
        &dir,
        pki,
        region,
        &ready.https.to_string(),
        &ready.control.to_string(),
    )?;
    Ok(StandIn {
        region: region.to_string(),
        ip,
        dir,
        https: ready.https,
        control: ready.control,
        process,
    })
}
