//! Coordinator configuration: the TOML file layer, the flag/environment
//! layer on top of it, and the validated `Config` the server runs on.
//!
//! This module reads files and nothing else: it does not bind sockets or
//! open the store. A bad configuration is reported with the name of the
//! field at fault, and the process exits non-zero.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::Deserialize;
use tern_core::{MemberRole, NodeId, RegionName, Thumbprint};

/// A configuration problem, naming the field (as written in the TOML file).
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read configuration file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("configuration file {path}: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("configuration: `{field}` is required")]
    Missing { field: &'static str },
    #[error("configuration: `{field}`: {message}")]
    Invalid { field: String, message: String },
}

impl ConfigError {
    /// The field at fault, if the error is about one field.
    pub fn field(&self) -> Option<&str> {
        match self {
            ConfigError::Missing { field } => Some(field),
            ConfigError::Invalid { field, .. } => Some(field),
            _ => None,
        }
    }
}

pub(crate) fn invalid(field: impl Into<String>, message: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        field: field.into(),
        message: message.into(),
    }
}

/// The file layer: every field optional, so that flags and environment can
/// fill what the file leaves out. Unknown fields are an error (a typo must
/// not silently fall back to a default).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    pub node_id: Option<NodeId>,
    pub region: Option<String>,
    pub role: Option<String>,
    pub data_dir: Option<PathBuf>,
    pub ready_file: Option<PathBuf>,
    #[serde(default)]
    pub listen: FileListen,
    #[serde(default)]
    pub tls: FileTls,
    #[serde(default)]
    pub raft: FileRaft,
    #[serde(default)]
    pub bootstrap: FileBootstrap,
    #[serde(default)]
    pub control_plane: FileControlPlane,
    #[serde(default)]
    pub probe: FileProbe,
    #[serde(default)]
    pub health: FileHealth,
    #[serde(default)]
    pub agents: FileAgents,
    #[serde(default)]
    pub http: FileHttp,
    #[serde(default)]
    pub federation: FileFederation,
    /// Dial these coordinators at another address than the member table's
    /// (split-horizon networks, relays): node id -> host:port.
    #[serde(default)]
    pub dial_overrides: std::collections::BTreeMap<String, String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileControlPlane {
    pub url: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileProbe {
    pub interval_ms: Option<u64>,
    pub timeout_ms: Option<u64>,
    pub failures_before_down: Option<u32>,
    pub ca_file: Option<PathBuf>,
    /// Probe a region's control plane at another URL: region -> URL.
    #[serde(default)]
    pub overrides: std::collections::BTreeMap<String, String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileAgents {
    pub opamp_endpoint: Option<String>,
    pub capacity: Option<u64>,
    pub priority: Option<u32>,
    pub token_ttl_ms: Option<u64>,
    pub handback_wave_size: Option<usize>,
    pub handback_wave_interval_ms: Option<u64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileFederation {
    pub client_cert_file: Option<PathBuf>,
    pub client_key_file: Option<PathBuf>,
    pub secret_file: Option<PathBuf>,
    pub pins_dir: Option<PathBuf>,
    pub next_cert_file: Option<PathBuf>,
    pub next_key_file: Option<PathBuf>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileHttp {
    pub status_page: Option<bool>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileHealth {
    pub down_after_ms: Option<u64>,
    pub up_after_ms: Option<u64>,
    pub report_ttl_ms: Option<u64>,
    pub freeze_above_percent: Option<u32>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileListen {
    pub grpc: Option<String>,
    pub http: Option<String>,
    pub advertise: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileTls {
    pub ca_file: Option<PathBuf>,
    pub cert_file: Option<PathBuf>,
    pub key_file: Option<PathBuf>,
    pub admin_ca_file: Option<PathBuf>,
    pub issuer_key_file: Option<PathBuf>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileRaft {
    pub heartbeat_ms: Option<u64>,
    pub election_timeout_min_ms: Option<u64>,
    pub election_timeout_max_ms: Option<u64>,
    pub snapshot_timeout_ms: Option<u64>,
    pub snapshot_every_logs: Option<u64>,
    pub logs_kept_after_snapshot: Option<u64>,
    pub write_timeout_ms: Option<u64>,
    pub max_batch: Option<usize>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileBootstrap {
    pub initialize: Option<bool>,
    #[serde(default)]
    pub members: Vec<FileBootstrapMember>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileBootstrapMember {
    pub node_id: NodeId,
    pub region: String,
    pub role: Option<String>,
    pub address: String,
    pub thumbprint: String,
    pub control_plane: Option<String>,
}

/// The flag and environment layer (`tern serve --... / TERN_*`). Each
/// `Some` replaces the file's value.
#[derive(Debug, Default, Clone, clap::Args)]
pub struct Overrides {
    /// Raft node id of this coordinator [env: TERN_NODE_ID]
    #[arg(long, env = "TERN_NODE_ID")]
    pub node_id: Option<NodeId>,
    /// Region this coordinator serves [env: TERN_REGION]
    #[arg(long, env = "TERN_REGION")]
    pub region: Option<String>,
    /// Directory of the SQLite store [env: TERN_DATA_DIR]
    #[arg(long, env = "TERN_DATA_DIR")]
    pub data_dir: Option<PathBuf>,
    /// gRPC listen address host:port [env: TERN_LISTEN_GRPC]
    #[arg(long, env = "TERN_LISTEN_GRPC")]
    pub listen_grpc: Option<String>,
    /// HTTP listen address host:port [env: TERN_LISTEN_HTTP]
    #[arg(long, env = "TERN_LISTEN_HTTP")]
    pub listen_http: Option<String>,
    /// Address other coordinators dial [env: TERN_ADVERTISE]
    #[arg(long, env = "TERN_ADVERTISE")]
    pub advertise: Option<String>,
    /// File written with the bound addresses once the server is up [env: TERN_READY_FILE]
    #[arg(long, env = "TERN_READY_FILE")]
    pub ready_file: Option<PathBuf>,
}

/// Raft timing and batching. Cross-region defaults (see stack notes).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RaftTuning {
    /// Leader heartbeat interval, ms; also the AppendEntries RPC timeout.
    /// Default 500.
    pub heartbeat_ms: u64,
    /// Lower bound of the randomized election timeout, ms. Default 2000.
    pub election_timeout_min_ms: u64,
    /// Upper bound of the randomized election timeout, ms. Default 4000.
    pub election_timeout_max_ms: u64,
    /// Timeout for sending one snapshot, ms. Default 30000.
    pub snapshot_timeout_ms: u64,
    /// Take a snapshot after this many log entries since the last one.
    /// Default 5000.
    pub snapshot_every_logs: u64,
    /// Log entries kept behind the last snapshot, so that a briefly lagging
    /// follower catches up from the log rather than from a snapshot.
    /// Default 1000.
    pub logs_kept_after_snapshot: u64,
    /// How long an admin write may wait for commit before the API answers
    /// DEADLINE_EXCEEDED, ms. Default 10000.
    pub write_timeout_ms: u64,
    /// Most proposals carried by one Raft entry. Default 1024.
    pub max_batch: usize,
}

impl Default for RaftTuning {
    fn default() -> Self {
        RaftTuning {
            heartbeat_ms: 500,
            election_timeout_min_ms: 2000,
            election_timeout_max_ms: 4000,
            snapshot_timeout_ms: 30_000,
            snapshot_every_logs: 5000,
            logs_kept_after_snapshot: 1000,
            write_timeout_ms: 10_000,
            max_batch: 1024,
        }
    }
}

/// A member known before the first commit (its pin is trusted until the
/// replicated member table takes over).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BootstrapMember {
    pub node_id: NodeId,
    pub region: RegionName,
    pub role: MemberRole,
    pub address: String,
    pub thumbprint: Thumbprint,
    /// The member's region control plane URL (none for a witness).
    pub control_plane: Option<String>,
}

/// How this coordinator probes control planes and other coordinators.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProbeConfig {
    /// Time between two probe rounds (and two reports), ms. Default 1000.
    pub interval_ms: u64,
    /// Timeout of one probe, ms; below the interval. Default 800.
    pub timeout_ms: u64,
    /// Consecutive failed probes before a control plane counts as down.
    /// Default 2.
    pub failures_before_down: u32,
    /// CA bundle that control planes' HTTPS certificates chain to. Default:
    /// `tls.ca_file`.
    pub ca_file: Option<PathBuf>,
    /// Probe these regions' control planes at another URL (relays,
    /// split-horizon): region -> URL.
    pub overrides: std::collections::BTreeMap<String, String>,
}

impl Default for ProbeConfig {
    fn default() -> Self {
        ProbeConfig {
            interval_ms: 1000,
            timeout_ms: 800,
            failures_before_down: 2,
            ca_file: None,
            overrides: Default::default(),
        }
    }
}

/// The validated configuration.
#[derive(Debug, Clone)]
pub struct Config {
    /// Raft node id, unique in the cluster and never reused. Required.
    pub node_id: NodeId,
    /// The region this coordinator serves; for a witness, its own name.
    /// Required; a DNS label.
    pub region: RegionName,
    /// `region` (default) or `witness`.
    pub role: MemberRole,
    /// Directory of the SQLite store (`tern.db`). Required; created if missing.
    pub data_dir: PathBuf,
    /// If set, a JSON file written once the server is serving, with the
    /// bound addresses and the transport thumbprint. Default: none.
    pub ready_file: Option<PathBuf>,
    /// gRPC listener (Raft transport, admin and agent APIs), mutual TLS.
    /// Required; port 0 picks a free port.
    pub listen_grpc: SocketAddr,
    /// Plain HTTP listener for /health/live, /health/ready, /metrics and
    /// (see `http`) /status. Required; port 0 picks a free port.
    pub listen_http: SocketAddr,
    /// host:port other coordinators dial. Default: the bound gRPC address.
    pub advertise: Option<String>,
    /// CA bundle (PEM) that coordinator certificates chain to. Required.
    pub ca_file: PathBuf,
    /// This coordinator's certificate chain (PEM). Required.
    pub cert_file: PathBuf,
    /// This coordinator's private key (PEM). Required.
    pub key_file: PathBuf,
    /// CA bundle that admin client certificates chain to. Default: `ca_file`.
    pub admin_ca_file: Option<PathBuf>,
    /// Built-in issuer (development PKI): the private key of the CA in
    /// `ca_file`. When set, the coordinator renews its own certificate at
    /// 70-90% of its lifetime (jittered), which starts a pin rotation.
    /// Default: none (an external issuer renews the files).
    pub issuer_key_file: Option<PathBuf>,
    pub raft: RaftTuning,
    /// On an empty store, create the cluster with this node and the
    /// bootstrap members as voters. Set on exactly one node. Default false.
    pub initialize: bool,
    /// Other coordinators known before the first commit.
    pub bootstrap_members: Vec<BootstrapMember>,
    /// This region's control plane, `https://host:port`; required for
    /// role `region`, absent for a witness.
    pub control_plane: Option<String>,
    pub probe: ProbeConfig,
    /// Region health rules (dwell times, freshness, freeze threshold).
    pub health: tern_core::HealthConfig,
    /// node id -> host:port to dial instead of the member table's address.
    pub dial_overrides: std::collections::BTreeMap<NodeId, String>,
    /// Agents, standbys and handover (`[agents]`).
    pub agents: AgentsConfig,
    /// What the plain HTTP listener serves besides health and metrics
    /// (`[http]`).
    pub http: HttpConfig,
    /// Federation pins (`[federation]`).
    pub federation: FederationConfig,
}

/// The `[federation]` section: this region's federation client certificate
/// (whose pin the other regions hold) and where the other regions' pins
/// are written.
#[derive(Clone, PartialEq, Eq)]
pub struct FederationConfig {
    /// The federation client certificate (PEM, leaf first) of this
    /// region's control plane, as mounted for it. When it holds another
    /// certificate, this region's federation pin rotates to it. Default:
    /// none (this region publishes no federation pin and rotates none).
    pub client_cert_file: Option<PathBuf>,
    /// Its private key (PEM). Required with `client_cert_file`; used only
    /// to ping peers with that certificate.
    pub client_key_file: Option<PathBuf>,
    /// This region's outbound federation secret (hex), presented in
    /// `X-Federation-Secret` when pinging peers to confirm a link during a
    /// rotation. Required with `client_cert_file`. Never logged.
    pub secret_file: Option<PathBuf>,
    /// Where the other regions' committed federation pins are written:
    /// `<region>.pem` (PEM bundle of the pinned certificates) and
    /// `<region>.thumbprints` (one SHA-256 hex per line). Default
    /// `<data_dir>/federation-pins`.
    pub pins_dir: PathBuf,
    /// Where the issuer puts a renewed federation certificate and key
    /// (PEM), instead of replacing `client_cert_file` directly. When set,
    /// the coordinator stages the renewal's pin at every peer first and
    /// installs it as `client_cert_file`/`client_key_file` only at
    /// `presenting`, so that no peer ever sees a certificate it does not
    /// pin yet. Default: none (the issuer replaces the mounted files, and
    /// peers refuse the new certificate until `staged`, about a second).
    pub next_cert_file: Option<PathBuf>,
    pub next_key_file: Option<PathBuf>,
}

impl std::fmt::Debug for FederationConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FederationConfig")
            .field("client_cert_file", &self.client_cert_file)
            .field("client_key_file", &self.client_key_file)
            .field("secret_file", &self.secret_file)
            .field("pins_dir", &self.pins_dir)
            .field("next_cert_file", &self.next_cert_file)
            .field("next_key_file", &self.next_key_file)
            .finish()
    }
}

/// The `[http]` section.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpConfig {
    /// Serve the read-only status page, `/status` (HTML) and
    /// `/status.json`, without authentication, like /metrics. Default true;
    /// false answers 404 on both.
    pub status_page: bool,
}

impl Default for HttpConfig {
    fn default() -> Self {
        HttpConfig { status_page: true }
    }
}

/// The `[agents]` section.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AgentsConfig {
    /// This region's OpAMP endpoint, where agents (and agents handed over
    /// from other regions) connect. Default: `wss://<control plane
    /// host:port>/v1/opamp`.
    pub opamp_endpoint: Option<String>,
    /// Agents from other regions this region takes as standby. Default:
    /// unlimited.
    pub capacity: Option<u64>,
    /// Standby priority: regions with a lower number are chosen first.
    /// Default 100.
    pub priority: u32,
    /// Lifetime of staged handover authorizations, ms; at most 1 h, at
    /// least 1 min. Refreshed when half of it is left. Default 3,600,000.
    pub token_ttl_ms: u64,
    /// Agents directed home per hand-back wave. Default 100.
    pub handback_wave_size: usize,
    /// Time between hand-back waves, ms. Default 1,000.
    pub handback_wave_interval_ms: u64,
}

impl Default for AgentsConfig {
    fn default() -> Self {
        AgentsConfig {
            opamp_endpoint: None,
            capacity: None,
            priority: 100,
            token_ttl_ms: 3_600_000,
            handback_wave_size: 100,
            handback_wave_interval_ms: 1_000,
        }
    }
}

impl Config {
    /// Reads the file (if any), applies the overrides and validates.
    pub fn load(path: Option<&Path>, overrides: &Overrides) -> Result<Config, ConfigError> {
        let file = match path {
            Some(p) => {
                let text = std::fs::read_to_string(p).map_err(|source| ConfigError::Read {
                    path: p.to_path_buf(),
                    source,
                })?;
                toml::from_str::<FileConfig>(&text).map_err(|e| ConfigError::Parse {
                    path: p.to_path_buf(),
                    message: e.to_string(),
                })?
            }
            None => FileConfig::default(),
        };
        Config::from_layers(file, overrides, path.and_then(Path::parent))
    }

    /// Merges the layers; relative paths in the file are relative to the
    /// file's directory.
    pub fn from_layers(
        file: FileConfig,
        o: &Overrides,
        base: Option<&Path>,
    ) -> Result<Config, ConfigError> {
        let rel = |p: PathBuf| -> PathBuf {
            match base {
                Some(b) if p.is_relative() => b.join(p),
                _ => p,
            }
        };
        let node_id = o
            .node_id
            .or(file.node_id)
            .ok_or(ConfigError::Missing { field: "node_id" })?;
        let region_s = o
            .region
            .clone()
            .or(file.region)
            .ok_or(ConfigError::Missing { field: "region" })?;
        let region: RegionName = region_s
            .parse()
            .map_err(|e| invalid("region", format!("{e}")))?;
        let role = match file.role.as_deref() {
            None => MemberRole::Region,
            Some(r) => r.parse().map_err(|e: String| invalid("role", e))?,
        };
        let data_dir = o
            .data_dir
            .clone()
            .or(file.data_dir.map(rel))
            .ok_or(ConfigError::Missing { field: "data_dir" })?;
        let grpc = o
            .listen_grpc
            .clone()
            .or(file.listen.grpc)
            .ok_or(ConfigError::Missing {
                field: "listen.grpc",
            })?;
        let listen_grpc: SocketAddr = grpc
            .parse()
            .map_err(|e| invalid("listen.grpc", format!("{grpc:?} is not ip:port ({e})")))?;
        let http = o
            .listen_http
            .clone()
            .or(file.listen.http)
            .ok_or(ConfigError::Missing {
                field: "listen.http",
            })?;
        let listen_http: SocketAddr = http
            .parse()
            .map_err(|e| invalid("listen.http", format!("{http:?} is not ip:port ({e})")))?;
        let advertise = o.advertise.clone().or(file.listen.advertise);
        if let Some(a) = &advertise {
            check_host_port("listen.advertise", a)?;
        }
        let ca_file = file.tls.ca_file.map(rel).ok_or(ConfigError::Missing {
            field: "tls.ca_file",
        })?;
        let cert_file = file.tls.cert_file.map(rel).ok_or(ConfigError::Missing {
            field: "tls.cert_file",
        })?;
        let key_file = file.tls.key_file.map(rel).ok_or(ConfigError::Missing {
            field: "tls.key_file",
        })?;
        let admin_ca_file = file.tls.admin_ca_file.map(rel);
        let issuer_key_file = file.tls.issuer_key_file.map(rel);

        let d = RaftTuning::default();
        let r = file.raft;
        let raft = RaftTuning {
            heartbeat_ms: r.heartbeat_ms.unwrap_or(d.heartbeat_ms),
            election_timeout_min_ms: r
                .election_timeout_min_ms
                .unwrap_or(d.election_timeout_min_ms),
            election_timeout_max_ms: r
                .election_timeout_max_ms
                .unwrap_or(d.election_timeout_max_ms),
            snapshot_timeout_ms: r.snapshot_timeout_ms.unwrap_or(d.snapshot_timeout_ms),
            snapshot_every_logs: r.snapshot_every_logs.unwrap_or(d.snapshot_every_logs),
            logs_kept_after_snapshot: r
                .logs_kept_after_snapshot
                .unwrap_or(d.logs_kept_after_snapshot),
            write_timeout_ms: r.write_timeout_ms.unwrap_or(d.write_timeout_ms),
            max_batch: r.max_batch.unwrap_or(d.max_batch),
        };

        let mut bootstrap_members = Vec::new();
        for (i, m) in file.bootstrap.members.iter().enumerate() {
            let f = |name: &str| format!("bootstrap.members[{i}].{name}");
            let region: RegionName = m
                .region
                .parse()
                .map_err(|e| invalid(f("region"), format!("{e}")))?;
            let role = match m.role.as_deref() {
                None => MemberRole::Region,
                Some(r) => r.parse().map_err(|e: String| invalid(f("role"), e))?,
            };
            check_host_port(&f("address"), &m.address)?;
            let thumbprint: Thumbprint = m
                .thumbprint
                .parse()
                .map_err(|e| invalid(f("thumbprint"), format!("{e}")))?;
            bootstrap_members.push(BootstrapMember {
                node_id: m.node_id,
                region,
                role,
                address: m.address.clone(),
                thumbprint,
                control_plane: m.control_plane.clone(),
            });
        }

        let dp = ProbeConfig::default();
        let probe = ProbeConfig {
            interval_ms: file.probe.interval_ms.unwrap_or(dp.interval_ms),
            timeout_ms: file.probe.timeout_ms.unwrap_or(dp.timeout_ms),
            failures_before_down: file
                .probe
                .failures_before_down
                .unwrap_or(dp.failures_before_down),
            ca_file: file.probe.ca_file.map(rel),
            overrides: file.probe.overrides,
        };
        for (region, url) in &probe.overrides {
            check_url(&format!("probe.overrides.{region}"), url)?;
        }
        let dh = tern_core::HealthConfig::default();
        let health = tern_core::HealthConfig {
            down_after_ms: file.health.down_after_ms.unwrap_or(dh.down_after_ms),
            up_after_ms: file.health.up_after_ms.unwrap_or(dh.up_after_ms),
            report_ttl_ms: file.health.report_ttl_ms.unwrap_or(3 * probe.interval_ms),
            freeze_above_permille: file
                .health
                .freeze_above_percent
                .map(|p| p.saturating_mul(10))
                .unwrap_or(dh.freeze_above_permille),
        };
        let mut dial_overrides = std::collections::BTreeMap::new();
        for (k, v) in file.dial_overrides {
            let id: NodeId = k
                .parse()
                .map_err(|_| invalid(format!("dial_overrides.{k}"), "the key must be a node id"))?;
            check_host_port(&format!("dial_overrides.{k}"), &v)?;
            dial_overrides.insert(id, v);
        }
        let control_plane = file.control_plane.url;
        if let Some(u) = &control_plane {
            check_url("control_plane.url", u)?;
        }

        let da = AgentsConfig::default();
        let agents = AgentsConfig {
            opamp_endpoint: file.agents.opamp_endpoint,
            capacity: file.agents.capacity,
            priority: file.agents.priority.unwrap_or(da.priority),
            token_ttl_ms: file.agents.token_ttl_ms.unwrap_or(da.token_ttl_ms),
            handback_wave_size: file
                .agents
                .handback_wave_size
                .unwrap_or(da.handback_wave_size),
            handback_wave_interval_ms: file
                .agents
                .handback_wave_interval_ms
                .unwrap_or(da.handback_wave_interval_ms),
        };
        let http = HttpConfig {
            status_page: file
                .http
                .status_page
                .unwrap_or(HttpConfig::default().status_page),
        };
        let federation = FederationConfig {
            client_cert_file: file.federation.client_cert_file.map(rel),
            client_key_file: file.federation.client_key_file.map(rel),
            secret_file: file.federation.secret_file.map(rel),
            pins_dir: file
                .federation
                .pins_dir
                .map(rel)
                .unwrap_or_else(|| data_dir.join("federation-pins")),
            next_cert_file: file.federation.next_cert_file.map(rel),
            next_key_file: file.federation.next_key_file.map(rel),
        };
        let cfg = Config {
            node_id,
            region,
            role,
            data_dir,
            ready_file: o.ready_file.clone().or(file.ready_file.map(rel)),
            listen_grpc,
            listen_http,
            advertise,
            ca_file,
            cert_file,
            key_file,
            admin_ca_file,
            issuer_key_file,
            raft,
            initialize: file.bootstrap.initialize.unwrap_or(false),
            bootstrap_members,
            control_plane,
            probe,
            health,
            dial_overrides,
            agents,
            http,
            federation,
        };
        cfg.validate()?;
        Ok(cfg)
    }

    /// Cross-field rules.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let r = &self.raft;
        if r.heartbeat_ms == 0 {
            return Err(invalid("raft.heartbeat_ms", "must be greater than 0"));
        }
        if r.election_timeout_min_ms <= r.heartbeat_ms {
            return Err(invalid(
                "raft.election_timeout_min_ms",
                format!(
                    "must be greater than raft.heartbeat_ms ({} <= {}): a follower would start elections between heartbeats",
                    r.election_timeout_min_ms, r.heartbeat_ms
                ),
            ));
        }
        if r.election_timeout_max_ms <= r.election_timeout_min_ms {
            return Err(invalid(
                "raft.election_timeout_max_ms",
                format!(
                    "must be greater than raft.election_timeout_min_ms ({} <= {})",
                    r.election_timeout_max_ms, r.election_timeout_min_ms
                ),
            ));
        }
        if r.snapshot_timeout_ms < r.heartbeat_ms {
            return Err(invalid(
                "raft.snapshot_timeout_ms",
                "must be at least raft.heartbeat_ms",
            ));
        }
        if r.snapshot_every_logs == 0 {
            return Err(invalid(
                "raft.snapshot_every_logs",
                "must be greater than 0",
            ));
        }
        if r.max_batch == 0 {
            return Err(invalid("raft.max_batch", "must be greater than 0"));
        }
        if r.write_timeout_ms < r.heartbeat_ms {
            return Err(invalid(
                "raft.write_timeout_ms",
                "must be at least raft.heartbeat_ms",
            ));
        }
        if self.probe.interval_ms == 0 {
            return Err(invalid("probe.interval_ms", "must be greater than 0"));
        }
        if self.probe.timeout_ms == 0 || self.probe.timeout_ms > self.probe.interval_ms {
            return Err(invalid(
                "probe.timeout_ms",
                format!(
                    "must be between 1 and probe.interval_ms ({})",
                    self.probe.interval_ms
                ),
            ));
        }
        if self.probe.failures_before_down == 0 {
            return Err(invalid("probe.failures_before_down", "must be at least 1"));
        }
        if self.health.report_ttl_ms < self.probe.interval_ms {
            return Err(invalid(
                "health.report_ttl_ms",
                "must be at least probe.interval_ms",
            ));
        }
        if let Some(e) = &self.agents.opamp_endpoint {
            if !(e.starts_with("wss://") || e.starts_with("ws://")) {
                return Err(invalid(
                    "agents.opamp_endpoint",
                    format!("must be a wss:// or ws:// URL, got {e:?}"),
                ));
            }
        }
        if !(60_000..=3_600_000).contains(&self.agents.token_ttl_ms) {
            return Err(invalid(
                "agents.token_ttl_ms",
                "must be between 60000 (1 min) and 3600000 (1 h)",
            ));
        }
        if self.agents.handback_wave_size == 0 || self.agents.handback_wave_size > 10_000 {
            return Err(invalid(
                "agents.handback_wave_size",
                "must be between 1 and 10000",
            ));
        }
        if self.agents.handback_wave_interval_ms == 0 {
            return Err(invalid(
                "agents.handback_wave_interval_ms",
                "must be greater than 0",
            ));
        }
        if self.health.freeze_above_permille > 1000 {
            return Err(invalid(
                "health.freeze_above_percent",
                "must be at most 100",
            ));
        }
        if self.role == MemberRole::Witness && self.control_plane.is_some() {
            return Err(invalid(
                "control_plane.url",
                "a witness has no control plane",
            ));
        }
        for (i, m) in self.bootstrap_members.iter().enumerate() {
            if m.node_id == self.node_id {
                return Err(invalid(
                    format!("bootstrap.members[{i}].node_id"),
                    "lists this node itself; list only the other coordinators",
                ));
            }
            if m.region == self.region {
                return Err(invalid(
                    format!("bootstrap.members[{i}].region"),
                    format!("region {} is this node's own region", m.region),
                ));
            }
            for (j, n) in self.bootstrap_members.iter().enumerate().skip(i + 1) {
                if n.node_id == m.node_id || n.region == m.region {
                    return Err(invalid(
                        format!("bootstrap.members[{j}]"),
                        format!("duplicates bootstrap.members[{i}] (same node_id or region)"),
                    ));
                }
            }
        }
        for (field, p) in [
            ("tls.ca_file", &self.ca_file),
            ("tls.cert_file", &self.cert_file),
            ("tls.key_file", &self.key_file),
        ] {
            if let Err(e) = std::fs::metadata(p) {
                return Err(invalid(field, format!("cannot read {}: {e}", p.display())));
            }
        }
        for (field, p) in [
            ("tls.admin_ca_file", &self.admin_ca_file),
            ("tls.issuer_key_file", &self.issuer_key_file),
        ] {
            if let Some(p) = p {
                if let Err(e) = std::fs::metadata(p) {
                    return Err(invalid(field, format!("cannot read {}: {e}", p.display())));
                }
            }
        }
        self.validate_federation()
    }

    fn validate_federation(&self) -> Result<(), ConfigError> {
        let f = &self.federation;
        let given = [
            ("federation.client_cert_file", &f.client_cert_file),
            ("federation.client_key_file", &f.client_key_file),
            ("federation.secret_file", &f.secret_file),
        ];
        if given.iter().any(|(_, p)| p.is_some()) {
            if self.role == MemberRole::Witness {
                return Err(invalid(
                    "federation.client_cert_file",
                    "a witness has no control plane and no federation certificate",
                ));
            }
            for (field, p) in given {
                let Some(p) = p else {
                    return Err(invalid(
                        field,
                        "client_cert_file, client_key_file and secret_file go together",
                    ));
                };
                if let Err(e) = std::fs::metadata(p) {
                    return Err(invalid(field, format!("cannot read {}: {e}", p.display())));
                }
            }
        }
        if f.pins_dir.as_os_str().is_empty() {
            return Err(invalid("federation.pins_dir", "must not be empty"));
        }
        match (&f.next_cert_file, &f.next_key_file) {
            (None, None) => {}
            (Some(_), Some(_)) if f.client_cert_file.is_some() => {}
            (Some(_), Some(_)) => {
                return Err(invalid(
                    "federation.next_cert_file",
                    "needs client_cert_file (the files it is installed as)",
                ))
            }
            _ => {
                return Err(invalid(
                    "federation.next_cert_file",
                    "next_cert_file and next_key_file go together",
                ))
            }
        }
        Ok(())
    }

    pub fn raft_config(&self) -> openraft::Config {
        openraft::Config {
            cluster_name: "tern".into(),
            heartbeat_interval: self.raft.heartbeat_ms,
            election_timeout_min: self.raft.election_timeout_min_ms,
            election_timeout_max: self.raft.election_timeout_max_ms,
            install_snapshot_timeout: self.raft.snapshot_timeout_ms,
            snapshot_policy: openraft::SnapshotPolicy::LogsSinceLast(self.raft.snapshot_every_logs),
            max_in_snapshot_log_to_keep: self.raft.logs_kept_after_snapshot,
            purge_batch_size: self.raft.snapshot_every_logs.clamp(1, 64),
            max_payload_entries: 300,
            ..Default::default()
        }
    }
}

fn check_url(field: &str, s: &str) -> Result<(), ConfigError> {
    let ok = (s.starts_with("https://") || s.starts_with("http://"))
        && s.split("://")
            .nth(1)
            .is_some_and(|rest| !rest.is_empty() && !rest.starts_with('/'));
    if ok {
        Ok(())
    } else {
        Err(invalid(field, format!("{s:?} is not an http(s):// URL")))
    }
}

fn check_host_port(field: &str, s: &str) -> Result<(), ConfigError> {
    match s.rsplit_once(':') {
        Some((host, port)) if !host.is_empty() && port.parse::<u16>().is_ok() => Ok(()),
        _ => Err(invalid(field, format!("{s:?} is not host:port"))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn base(dir: &Path) -> String {
        for f in ["ca.pem", "node.pem", "node.key"] {
            std::fs::write(dir.join(f), "x").expect("write");
        }
        r#"
node_id = 1
region = "eu"
data_dir = "data"
[listen]
grpc = "127.0.0.1:0"
http = "127.0.0.1:0"
[tls]
ca_file = "ca.pem"
cert_file = "node.pem"
key_file = "node.key"
"#
        .to_string()
    }

    fn load(dir: &Path, text: &str, o: &Overrides) -> Result<Config, ConfigError> {
        let p = dir.join("tern.toml");
        std::fs::write(&p, text).expect("write");
        Config::load(Some(&p), o)
    }

    // Property: a minimal file loads with the documented defaults, and
    // relative paths resolve against the file's directory.
    #[test]
    fn minimal_file_gets_defaults() {
        let dir = tempfile::tempdir().expect("tempdir");
        let c = load(dir.path(), &base(dir.path()), &Overrides::default()).expect("valid");
        assert_eq!(c.raft, RaftTuning::default());
        assert_eq!(c.data_dir, dir.path().join("data"));
        assert_eq!(c.role, MemberRole::Region);
        assert!(!c.initialize);
        assert!(c.http.status_page, "the status page is on by default");
    }

    // Property: `[http] status_page = false` turns the status page off, and
    // a value of the wrong type is refused naming the field.
    #[test]
    fn status_page_can_be_turned_off() {
        let dir = tempfile::tempdir().expect("tempdir");
        let b = base(dir.path());
        let c = load(
            dir.path(),
            &format!("{b}[http]\nstatus_page = false\n"),
            &Overrides::default(),
        )
        .expect("valid");
        assert!(!c.http.status_page);
        let err = load(
            dir.path(),
            &format!("{b}[http]\nstatus_page = \"no\"\n"),
            &Overrides::default(),
        )
        .expect_err("a string is not a bool")
        .to_string();
        assert!(err.contains("status_page"), "{err}");
    }

    // Property: flags/environment override the file.
    #[test]
    fn overrides_win() {
        let dir = tempfile::tempdir().expect("tempdir");
        let o = Overrides {
            node_id: Some(7),
            region: Some("us".into()),
            ..Default::default()
        };
        let c = load(dir.path(), &base(dir.path()), &o).expect("valid");
        assert_eq!((c.node_id, c.region.as_str()), (7, "us"));
    }

    // Property: each kind of bad configuration is refused with a message
    // that names the field at fault.
    #[test]
    fn bad_configs_name_the_field() {
        let dir = tempfile::tempdir().expect("tempdir");
        let b = base(dir.path());
        let cases: Vec<(String, &str)> = vec![
            (b.replace("node_id = 1\n", ""), "node_id"),
            (b.replace("region = \"eu\"", "region = \"EU!\""), "region"),
            (format!("{b}[raft]\nheartbeat_ms = 3000\n"), "raft.election_timeout_min_ms"),
            (format!("{b}[raft]\nelection_timeout_max_ms = 1000\n"), "raft.election_timeout_max_ms"),
            (b.replace("ca.pem", "missing.pem"), "tls.ca_file"),
            (b.replace("grpc = \"127.0.0.1:0\"", "grpc = \"nowhere\""), "listen.grpc"),
            (format!("{b}bogus = 1\n"), "bogus"),
            (
                format!("{b}[[bootstrap.members]]\nnode_id = 2\nregion = \"us\"\naddress = \"x:1\"\nthumbprint = \"zz\"\n"),
                "bootstrap.members[0].thumbprint",
            ),
        ];
        for (text, field) in cases {
            let err = load(dir.path(), &text, &Overrides::default())
                .expect_err(field)
                .to_string();
            assert!(err.contains(field), "error {err:?} should name {field}");
        }
    }
}
