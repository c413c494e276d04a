//! Fleet mode: N simulated agents in one process, each a full shim
//! session with its own identity, to load-test and demonstrate a failover.
//!
//! Every simulated agent gets a leaf certificate issued in-process by its
//! home region's agent CA ([`AgentCa`], one fresh P-256 key per agent),
//! attaches to its home region (`POST /tern/v1/opamp/attach` without token
//! at `home_base_url`, as a real agent's first OpAMP connection would),
//! then runs an ordinary [`Session`]: its own TLS identity, registration
//! and directive stream. Its redirect hook is a library callback that
//! attaches to the directive's target with the token (the simulated agent
//! reconnecting); the session then verifies and reports as for a real
//! agent. Initial connects are spread uniformly over `connect_spread_ms`,
//! and one rate limiter per target region is shared by all agents.
//!
//! The fleet keeps counts, not per-agent records: see [`FleetStatus`] and
//! the file formats in the `status` module docs. It must not share one
//! identity between agents, nor log a token or a key.

mod pki;
mod status;

use std::fmt;
use std::future::Future;
use std::io::Write;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinSet;
use tracing::Instrument;

pub use pki::{AgentCa, PkiError, AGENT_URI_PREFIX};
pub use status::{FleetStatus, FLEET_STATUS_FORMAT};

use crate::backoff::{Backoff, RateLimiter};
use crate::config::{validate_agent_id, ConfigError, ConfigRef, ShimConfig, Timing};
use crate::directive::Directive;
use crate::events::SessionEvent;
use crate::hook::{CallbackError, CallbackHook};
use crate::identity::{LeafError, LeafIdentity, LeafSource, PemSource};
use crate::persist::write_atomic;
use crate::region::RegionClient;
use crate::session::{install_crypto_provider, now_ms, Session};
use status::{FleetEvent, Ledger};

/// Everything a fleet needs. `Debug` shows no key material.
#[derive(Clone)]
pub struct FleetConfig {
    /// How many agents to simulate (at least 1).
    pub agents: usize,
    /// Their home region.
    pub home_region: String,
    /// The home region's endpoint base URL (`https://host:port`), where each
    /// agent attaches at start.
    pub home_base_url: String,
    /// The home region's agent CA certificate (PEM), issuer of the leaves.
    pub agent_ca_cert_pem: String,
    /// Its private key (PKCS#8 PEM). A secret.
    pub agent_ca_key_pem: String,
    /// CA bundle of the coordinators' server certificates.
    pub coordinator_ca: PemSource,
    /// CA bundle of the regions' HTTPS server certificates.
    pub region_ca: PemSource,
    /// Coordinator addresses, home region's first.
    pub coordinators: Vec<String>,
    /// Tenant registered for every agent.
    pub tenant: String,
    /// Configuration registered for every agent.
    pub config: ConfigRef,
    /// Capabilities registered for every agent.
    pub capabilities: Vec<String>,
    /// Allowed regions registered for every agent (empty: any).
    pub allowed_regions: Vec<String>,
    /// Agent ids are `<id_prefix><index, 5 digits at least>`, index from 0.
    pub id_prefix: String,
    /// Seed of every random choice (each agent's session seed derives from
    /// it and the agent's index).
    pub seed: u64,
    /// Validity of the issued leaves. Default 365 days.
    pub leaf_validity: Duration,
    /// Initial connects (home attach, then the session) start at a random
    /// time uniform in `[0, connect_spread_ms]`. Default: 5 ms per agent,
    /// at most 60 000.
    pub connect_spread_ms: u64,
    /// Status file (JSON, replaced atomically every `status_interval_ms`).
    pub status_file: Option<PathBuf>,
    /// Events file (JSON lines, appended).
    pub events_file: Option<PathBuf>,
    /// Interval between status updates. Default 500.
    pub status_interval_ms: u64,
    /// Timing of every agent's session; its rate limit is shared by all.
    pub timing: Timing,
}

impl fmt::Debug for FleetConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FleetConfig")
            .field("agents", &self.agents)
            .field("home_region", &self.home_region)
            .field("home_base_url", &self.home_base_url)
            .field("agent_ca_key_pem", &format_args!("<redacted>"))
            .field("coordinator_ca", &self.coordinator_ca)
            .field("region_ca", &self.region_ca)
            .field("coordinators", &self.coordinators)
            .field("tenant", &self.tenant)
            .field("config", &self.config)
            .field("capabilities", &self.capabilities)
            .field("allowed_regions", &self.allowed_regions)
            .field("id_prefix", &self.id_prefix)
            .field("seed", &self.seed)
            .field("leaf_validity", &self.leaf_validity)
            .field("connect_spread_ms", &self.connect_spread_ms)
            .field("status_file", &self.status_file)
            .field("events_file", &self.events_file)
            .field("status_interval_ms", &self.status_interval_ms)
            .field("timing", &self.timing)
            .finish()
    }
}

impl FleetConfig {
    /// The default initial-connect spread for `agents` agents: 5 ms each,
    /// at most 60 s.
    pub fn default_spread_ms(agents: usize) -> u64 {
        u64::try_from(agents)
            .unwrap_or(u64::MAX)
            .saturating_mul(5)
            .min(60_000)
    }

    /// The id of agent `index`.
    pub fn agent_id(&self, index: usize) -> String {
        format!("{}{index:05}", self.id_prefix)
    }

    /// Checks the fleet-level fields, then one agent's session
    /// configuration.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.agents == 0 {
            return Err(ConfigError::new("agents", "must be at least 1"));
        }
        if self.status_interval_ms == 0 {
            return Err(ConfigError::new(
                "status_interval_ms",
                "must be at least 1 ms",
            ));
        }
        if !self.home_base_url.starts_with("https://") {
            return Err(ConfigError::new("home_base_url", "must be an https:// URL"));
        }
        validate_agent_id(&self.agent_id(self.agents - 1))
            .map_err(|e| ConfigError::new("id_prefix", e.problem))?;
        // Every agent's session has the same shape: check one (the leaf is
        // not read by validation).
        let placeholder = LeafSource::Files {
            cert: PathBuf::new(),
            key: PathBuf::new(),
        };
        self.session_config(self.agents - 1, placeholder).validate()
    }

    fn session_config(&self, index: usize, leaf: LeafSource) -> ShimConfig {
        ShimConfig {
            agent_id: self.agent_id(index),
            home_region: self.home_region.clone(),
            tenant: self.tenant.clone(),
            config: self.config.clone(),
            capabilities: self.capabilities.clone(),
            allowed_regions: self.allowed_regions.clone(),
            leaf,
            coordinator_ca: self.coordinator_ca.clone(),
            region_ca: self.region_ca.clone(),
            coordinators: self.coordinators.clone(),
            state_dir: None,
            timing: self.timing.clone(),
            seed: agent_seed(self.seed, index),
        }
    }
}

/// A per-agent seed derived from the fleet seed (splitmix64 of seed ^ i).
fn agent_seed(seed: u64, index: usize) -> u64 {
    let mut z = seed ^ (index as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// Why a fleet could not start.
#[derive(Debug, thiserror::Error)]
pub enum FleetError {
    /// The configuration is not valid.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// A CA bundle could not be used.
    #[error(transparent)]
    Pem(#[from] LeafError),
    /// Identities could not be issued.
    #[error(transparent)]
    Pki(#[from] PkiError),
    /// The events file could not be opened.
    #[error("events file {path}: {source}")]
    EventsFile {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The fleet's bookkeeping task failed.
    #[error("fleet task failed: {0}")]
    Task(String),
}

/// A running fleet.
pub struct FleetHandle {
    status: watch::Receiver<FleetStatus>,
    stop: watch::Sender<bool>,
    task: tokio::task::JoinHandle<FleetStatus>,
}

impl fmt::Debug for FleetHandle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FleetHandle").finish_non_exhaustive()
    }
}

impl FleetHandle {
    /// The fleet's counts, updated every status interval.
    pub fn status(&self) -> watch::Receiver<FleetStatus> {
        self.status.clone()
    }

    /// Stops every agent and returns the final counts (also written to the
    /// status file).
    pub async fn stop(self) -> Result<FleetStatus, FleetError> {
        let _ = self.stop.send(true);
        self.task.await.map_err(|e| FleetError::Task(e.to_string()))
    }
}

/// Runs a fleet until `shutdown` resolves; returns the final counts.
pub async fn run(
    config: FleetConfig,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<FleetStatus, FleetError> {
    let handle = start(config).await?;
    shutdown.await;
    handle.stop().await
}

/// Issues the identities, then starts every agent; returns at once with a
/// handle (the agents keep going until [`FleetHandle::stop`]).
pub async fn start(config: FleetConfig) -> Result<FleetHandle, FleetError> {
    install_crypto_provider();
    config.validate()?;
    let coordinator_ca = config.coordinator_ca.load("coordinator CA bundle")?;
    let region_ca = config.region_ca.load("region CA bundle")?;
    let started_at_ms = now_ms();
    tracing::info!(
        agents = config.agents,
        seed = config.seed,
        home = %config.home_region,
        "fleet starting: issuing identities"
    );
    let ids: Vec<String> = (0..config.agents).map(|i| config.agent_id(i)).collect();
    let issue_started = Instant::now();
    let leaves = {
        let cert = config.agent_ca_cert_pem.clone();
        let key = config.agent_ca_key_pem.clone();
        let validity = config.leaf_validity;
        let ids = ids.clone();
        let threads = std::thread::available_parallelism().map_or(2, |n| n.get());
        tokio::task::spawn_blocking(move || {
            let ca = AgentCa::from_pem(&cert, &key)?;
            ca.issue_many(&ids, validity, threads)
        })
        .await
        .map_err(|e| FleetError::Task(e.to_string()))??
    };
    let identities_ms = u64::try_from(issue_started.elapsed().as_millis()).unwrap_or(u64::MAX);
    tracing::info!(agents = leaves.len(), identities_ms, "identities issued");

    let events_out: Option<Box<dyn Write + Send>> = match &config.events_file {
        None => None,
        Some(path) => {
            let file = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(path)
                .map_err(|source| FleetError::EventsFile {
                    path: path.clone(),
                    source,
                })?;
            Some(Box::new(std::io::BufWriter::new(file)))
        }
    };

    let agent_ids: Vec<Arc<str>> = ids.iter().map(|s| s.as_str().into()).collect();
    let ledger = Ledger::new(
        &agent_ids,
        &config.home_region,
        config.seed,
        started_at_ms,
        identities_ms,
    );
    let (status_tx, status_rx) = watch::channel(ledger.status(started_at_ms));
    let (stop_tx, stop_rx) = watch::channel(false);
    let (fleet_tx, fleet_rx) = mpsc::unbounded_channel::<FleetEvent>();
    let (session_tx, session_rx) = mpsc::unbounded_channel::<SessionEvent>();
    let limiter = Arc::new(Mutex::new(RateLimiter::new(config.timing.rate_limit)));

    let mut agents = JoinSet::new();
    let mut rng = StdRng::seed_from_u64(config.seed);
    let shared = Arc::new(Shared {
        config: config.clone(),
        coordinator_ca,
        region_ca,
    });
    for (index, leaf) in leaves.into_iter().enumerate() {
        let delay = Duration::from_millis(rng.random_range(0..=config.connect_spread_ms));
        agents.spawn(agent(
            shared.clone(),
            index,
            leaf,
            delay,
            Channels {
                fleet: fleet_tx.clone(),
                session: session_tx.clone(),
                limiter: limiter.clone(),
                stop: stop_rx.clone(),
            },
        ));
    }
    drop(fleet_tx);
    drop(session_tx);
    let task = tokio::spawn(bookkeeping(
        config, ledger, events_out, status_tx, fleet_rx, session_rx, agents, stop_rx,
    ));
    Ok(FleetHandle {
        status: status_rx,
        stop: stop_tx,
        task,
    })
}

struct Shared {
    config: FleetConfig,
    coordinator_ca: String,
    region_ca: String,
}

struct Channels {
    fleet: mpsc::UnboundedSender<FleetEvent>,
    session: mpsc::UnboundedSender<SessionEvent>,
    limiter: Arc<Mutex<RateLimiter>>,
    stop: watch::Receiver<bool>,
}

async fn stopped(mut stop: watch::Receiver<bool>) {
    let _ = stop.wait_for(|s| *s).await;
}

/// One simulated agent: wait its turn, attach home, then run its session.
async fn agent(
    shared: Arc<Shared>,
    index: usize,
    leaf: LeafIdentity,
    delay: Duration,
    ch: Channels,
) {
    let cfg = &shared.config;
    let agent_id: Arc<str> = cfg.agent_id(index).into();
    let span = tracing::info_span!("shim.fleet", agent = %agent_id);
    let stop = ch.stop.clone();
    let run = async {
        tokio::time::sleep(delay).await;
        let region = match RegionClient::new(
            &shared.region_ca,
            &leaf,
            Timing::ms(cfg.timing.region_request_timeout_ms),
        ) {
            Ok(r) => r,
            Err(e) => {
                let _ = ch.fleet.send(FleetEvent::Stopped {
                    at_ms: now_ms(),
                    agent_id: agent_id.clone(),
                    reason: e.to_string(),
                });
                return;
            }
        };
        attach_home(cfg, &region, &agent_id, index, &ch).await;
        let hook_region = region.clone();
        let hook = CallbackHook::new(move |d: Directive| {
            let region = hook_region.clone();
            async move {
                region
                    .attach(&d.base_url, &d.agent_id, &d.token)
                    .await
                    .map(|_| ())
                    .map_err(|e| Box::new(e) as CallbackError)
            }
        });
        let mut config = cfg.session_config(index, LeafSource::Pem(leaf.clone()));
        config.coordinator_ca = PemSource::Pem(shared.coordinator_ca.clone());
        config.region_ca = PemSource::Pem(shared.region_ca.clone());
        let session = Session::new(config, Arc::new(hook))
            .with_events(ch.session.clone())
            .with_rate_limiter(ch.limiter.clone());
        if let Err(e) = session.run(stopped(ch.stop.clone())).await {
            tracing::error!(error = %e, "simulated agent's session could not start");
            let _ = ch.fleet.send(FleetEvent::Stopped {
                at_ms: now_ms(),
                agent_id: agent_id.clone(),
                reason: e.to_string(),
            });
        }
    };
    tokio::select! {
        () = run.instrument(span) => {}
        () = stopped(stop) => {}
    }
}

/// Attaches to the home region, retrying with backoff until it works.
async fn attach_home(
    cfg: &FleetConfig,
    region: &RegionClient,
    agent_id: &Arc<str>,
    index: usize,
    ch: &Channels,
) {
    let t = &cfg.timing;
    let mut backoff = Backoff::clamped(
        t.reconnect_base_ms,
        t.reconnect_cap_ms,
        agent_seed(cfg.seed, index),
    );
    let mut attempt: u32 = 0;
    loop {
        match region.attach(&cfg.home_base_url, agent_id, "").await {
            Ok(_) => {
                let _ = ch.fleet.send(FleetEvent::HomeAttach {
                    at_ms: now_ms(),
                    agent_id: agent_id.clone(),
                    result: Ok(()),
                });
                return;
            }
            Err(e) => {
                if attempt == 0 {
                    tracing::warn!(error = %e, "attaching to the home region failed; retrying");
                    let _ = ch.fleet.send(FleetEvent::HomeAttach {
                        at_ms: now_ms(),
                        agent_id: agent_id.clone(),
                        result: Err(e.to_string()),
                    });
                }
                let delay = backoff.delay(attempt);
                attempt = attempt.saturating_add(1).min(30);
                tokio::time::sleep(delay).await;
            }
        }
    }
}

/// Folds events, writes the events and status files, until every agent
/// has stopped after a stop request.
#[allow(clippy::too_many_arguments)]
async fn bookkeeping(
    config: FleetConfig,
    mut ledger: Ledger,
    mut events_out: Option<Box<dyn Write + Send>>,
    status_tx: watch::Sender<FleetStatus>,
    mut fleet_rx: mpsc::UnboundedReceiver<FleetEvent>,
    mut session_rx: mpsc::UnboundedReceiver<SessionEvent>,
    mut agents: JoinSet<()>,
    mut stop: watch::Receiver<bool>,
) -> FleetStatus {
    let mut tick = tokio::time::interval(Duration::from_millis(config.status_interval_ms));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut stopping = false;
    loop {
        tokio::select! {
            Some(e) = fleet_rx.recv() => fold(&mut ledger, &mut events_out, &e),
            Some(e) = session_rx.recv() => fold(&mut ledger, &mut events_out, &FleetEvent::Session(e)),
            _ = tick.tick() => publish(&config, &ledger, &mut events_out, &status_tx).await,
            changed = stop.changed(), if !stopping => {
                if changed.is_err() || *stop.borrow() {
                    stopping = true;
                }
            }
            joined = agents.join_next(), if stopping => {
                if joined.is_none() {
                    break;
                }
            }
        }
    }
    while let Ok(e) = fleet_rx.try_recv() {
        fold(&mut ledger, &mut events_out, &e);
    }
    while let Ok(e) = session_rx.try_recv() {
        fold(&mut ledger, &mut events_out, &FleetEvent::Session(e));
    }
    publish(&config, &ledger, &mut events_out, &status_tx).await;
    ledger.status(now_ms())
}

fn fold(ledger: &mut Ledger, out: &mut Option<Box<dyn Write + Send>>, event: &FleetEvent) {
    match out.as_mut() {
        Some(w) => ledger.apply(event, Some(w.as_mut() as &mut dyn Write)),
        None => ledger.apply(event, None),
    }
}

async fn publish(
    config: &FleetConfig,
    ledger: &Ledger,
    events_out: &mut Option<Box<dyn Write + Send>>,
    status_tx: &watch::Sender<FleetStatus>,
) {
    if let Some(w) = events_out.as_mut() {
        if let Err(e) = w.flush() {
            tracing::warn!(error = %e, "cannot write the events file");
        }
    }
    let status = ledger.status(now_ms());
    if let Some(path) = config.status_file.clone() {
        match serde_json::to_vec_pretty(&status) {
            Ok(mut bytes) => {
                bytes.push(b'\n');
                let written =
                    tokio::task::spawn_blocking(move || write_atomic(&path, &bytes, 0o644))
                        .await
                        .unwrap_or_else(|e| Err(std::io::Error::other(e.to_string())));
                if let Err(e) = written {
                    tracing::warn!(error = %e, "cannot write the status file");
                }
            }
            Err(e) => tracing::warn!(error = %e, "cannot encode the status"),
        }
    }
    status_tx.send_replace(status);
}
