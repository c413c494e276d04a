//! The session with the coordinators: the I/O side of the shim.
//!
//! A [`Session`] owns, for one agent:
//!
//! - the connection to a coordinator (mutual TLS as the agent, with its own
//!   leaf; the coordinator's certificate verified against the coordinator CA
//!   bundle, host name or IP included), tried in the order of
//!   [`candidates`](crate::candidates): home region first, then the cached
//!   fallback list; between attempts a jittered exponential [`Backoff`],
//!   never a tight loop;
//! - the fallback list (`ListCoordinators`), cached in memory and in
//!   `<state dir>/coordinators.json`, so a restart during an outage still
//!   knows the surviving coordinators;
//! - the registration (`Register`), again after every reconnect and after
//!   the leaf files change (renewal: new fingerprint, new expiry);
//! - the directive stream (`Watch`, the agent's heartbeat): every directive
//!   goes through the [`Tracker`] (epoch fencing; its state saved in
//!   `<state dir>/tracker.json` before anything is applied);
//! - applying a directive: random jitter, the per-target [`RateLimiter`],
//!   the [`RedirectHook`], then verifying at the target region that the
//!   agent is attached (`GET /tern/v1/agents/{id}`, polled until a
//!   deadline), then `Report` (ATTACHED or FAILED with the reason), retried
//!   until a coordinator acknowledges it; a failed directive is retried with
//!   backoff while it is current and unexpired; a newer directive cancels
//!   the application of an older one.
//!
//! # Mapping the protocol's directives
//!
//! - `REDIRECT` becomes a [`DirectiveKind::Redirect`] directive; it needs a
//!   target region, endpoint, base URL and token, else it is reported FAILED
//!   without running the hook.
//! - `RETURN_HOME` becomes [`DirectiveKind::ReturnHome`] (target: the
//!   directive's region, the home region if empty); it needs an endpoint and
//!   a base URL.
//! - `STAY` ("be served by home") is tracked as a return-home directive to
//!   the home region, so it fences like any other. When the agent is surely
//!   at home (the tracker has it served by home, or by nothing yet, and no
//!   directive is in flight or failed) there is nothing to do: it is
//!   recorded as attached at home, without hook, verification or report.
//!   Otherwise (the agent was redirected, or a redirect may have reached it
//!   before failing) a STAY is a return home: hook, verification at home,
//!   report — which needs the STAY to carry home's endpoint and base URL.
//! - Coordinators send an epoch's directive again when its details change
//!   (a re-staged token, a target endpoint learned late): same kind and
//!   target region is a refresh, kept for retries and applied again only
//!   if the epoch's application failed; another kind or target in the same
//!   epoch is a conflict, logged as an error and ignored (see [`Tracker`]).
//! - The protocol carries no issue time: `issued_at_ms` is 0. A directive
//!   expires at `token_not_after_ms` when it carries a token; a directive
//!   without a token (or without an expiry) does not expire.
//!
//! It must not decide failovers, speak OpAMP, or log a token or a key: logs
//! carry the agent, epoch, region, coordinator address and short
//! fingerprints only; failure reasons are scrubbed of the token.

use std::future::Future;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tern_proto::v1 as pb;
use tern_proto::v1::agent_client::AgentClient;
use tokio::sync::watch;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};
use tracing::Instrument;

use crate::backoff::{Admission, Backoff, RateLimiter};
use crate::command::scrub_str;
use crate::config::{ConfigError, ShimConfig, Timing};
use crate::coordinators::{
    candidates_spread, load_cache, save_cache, CoordinatorCache, CoordinatorInfo, COORDINATORS_FILE,
};
use crate::directive::{
    AppliedAck, ApplyOutcome, ApplyStatus, Decision, Directive, DirectiveKind, Tracker,
    TrackerState,
};
use crate::events::{Action, EventSender, Outcome, Seen, SessionEvent, SessionEventKind};
use crate::hook::RedirectHook;
use crate::identity::{short, LeafError, LeafIdentity};
use crate::persist::{load_or_new, save, PersistError};
use crate::region::{error_chain, RegionClient, RegionError};

/// The tracker's state file name in the state directory.
pub const TRACKER_FILE: &str = "tracker.json";

/// A rate limiter shared by sessions (the fleet shares one per process).
pub type SharedLimiter = Arc<Mutex<RateLimiter>>;

/// Seeds of the session's random streams, derived from the configured seed.
const SEED_RECONNECT: u64 = 0x7265_636f_6e6e_6563;
const SEED_RETRY: u64 = 0x7265_7472_7900_0000;
const SEED_JITTER: u64 = 0x6a69_7474_6572_0000;
const SEED_REPORT: u64 = 0x7265_706f_7274_0000;

/// Largest attempt number fed to a backoff (its ceiling is capped anyway).
const MAX_ATTEMPT: u32 = 30;

/// Why a session could not start. Once running, a session only stops on
/// shutdown: network failures are retried.
#[derive(Debug, thiserror::Error)]
pub enum SessionError {
    /// The configuration is not valid.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// The leaf or a CA bundle could not be used.
    #[error(transparent)]
    Leaf(#[from] LeafError),
    /// The tracker state could not be read.
    #[error(transparent)]
    Persist(#[from] PersistError),
    /// The state directory could not be created.
    #[error("state directory {path}: {source}")]
    StateDir {
        /// The directory.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The region HTTPS client could not be built.
    #[error(transparent)]
    Region(#[from] RegionError),
}

/// One agent's session with the coordinators. See the module docs.
pub struct Session {
    config: ShimConfig,
    hook: Arc<dyn RedirectHook>,
    events: Option<EventSender>,
    limiter: Option<SharedLimiter>,
}

impl std::fmt::Debug for Session {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Session")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

/// Runs a session for `config` until `shutdown` resolves. See
/// [`Session::run`].
pub async fn run(
    config: ShimConfig,
    hook: Arc<dyn RedirectHook>,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), SessionError> {
    Session::new(config, hook).run(shutdown).await
}

impl Session {
    /// A session for `config`, applying directives through `hook`.
    pub fn new(config: ShimConfig, hook: Arc<dyn RedirectHook>) -> Session {
        Session {
            config,
            hook,
            events: None,
            limiter: None,
        }
    }

    /// Sends the session's events to `events`.
    pub fn with_events(mut self, events: EventSender) -> Session {
        self.events = Some(events);
        self
    }

    /// Uses `limiter` (shared with other sessions) instead of a limiter of
    /// its own built from `config.timing.rate_limit`.
    pub fn with_rate_limiter(mut self, limiter: SharedLimiter) -> Session {
        self.limiter = Some(limiter);
        self
    }

    /// Validates the configuration, loads the leaf, the CA bundles and the
    /// saved state, then runs until `shutdown` resolves: connects, keeps
    /// the directive stream open (reconnecting with backoff), applies and
    /// reports directives, follows leaf renewals. Returns an error only when
    /// it cannot start.
    pub async fn run(self, shutdown: impl Future<Output = ()> + Send) -> Result<(), SessionError> {
        install_crypto_provider();
        let Session {
            config,
            hook,
            events,
            limiter,
        } = self;
        config.validate()?;
        let leaf = config.leaf.load()?;
        let coordinator_ca = config.coordinator_ca.load("coordinator CA bundle")?;
        let region_ca = config.region_ca.load("region CA bundle")?;
        let region = RegionClient::new(
            &region_ca,
            &leaf,
            Timing::ms(config.timing.region_request_timeout_ms),
        )?;
        let (tracker, tracker_path, cache_path, cached) = load_state(&config).await?;
        let limiter = limiter
            .unwrap_or_else(|| Arc::new(Mutex::new(RateLimiter::new(config.timing.rate_limit))));
        let agent: Arc<str> = config.agent_id.as_str().into();
        let span = tracing::info_span!("shim.session", agent = %agent);
        let (material, _) = watch::channel(Arc::new(Material {
            leaf: leaf.clone(),
            region,
        }));
        let (link, _) = watch::channel(None);
        let (work, _) = watch::channel(None);
        let inner = Arc::new(Inner {
            rng: Mutex::new(StdRng::seed_from_u64(config.seed ^ SEED_JITTER)),
            agent,
            coordinator_ca,
            region_ca,
            tracker: Mutex::new(tracker),
            tracker_path,
            cache_path,
            persist_lock: tokio::sync::Mutex::new(()),
            cached: Mutex::new(cached),
            material,
            fingerprints: Mutex::new(vec![leaf.fingerprint().to_string()]),
            link,
            work,
            events,
            limiter,
            hook,
            rereported: AtomicBool::new(false),
            config,
        });
        async move {
            tracing::info!(
                home = %inner.config.home_region,
                fingerprint = %leaf.short_fingerprint(),
                seed = inner.config.seed,
                "session starting"
            );
            // Aborted when this future ends or is dropped.
            let applier = AbortOnDrop(tokio::spawn(inner.clone().applier().in_current_span()));
            let leaf_watch =
                inner.config.leaf.renewable().then(|| {
                    AbortOnDrop(tokio::spawn(inner.clone().watch_leaf().in_current_span()))
                });
            tokio::select! {
                () = inner.connection_loop() => {}
                () = shutdown => {}
            }
            applier.stop().await;
            if let Some(task) = leaf_watch {
                task.stop().await;
            }
            inner.persist().await;
            tracing::info!("session stopped");
            Ok(())
        }
        .instrument(span)
        .await
    }
}

/// Installs ring as the process's rustls crypto provider (idempotent: a
/// provider already installed is kept).
pub fn install_crypto_provider() {
    // Err means one is installed already: fine.
    let _ = rustls::crypto::ring::default_provider().install_default();
}

/// Milliseconds since the Unix epoch (0 if the clock is before 1970).
pub(crate) fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

type LoadedState = (
    Tracker,
    Option<PathBuf>,
    Option<PathBuf>,
    Vec<CoordinatorInfo>,
);

async fn load_state(config: &ShimConfig) -> Result<LoadedState, SessionError> {
    let Some(dir) = config.state_dir.clone() else {
        return Ok((
            Tracker::new(config.agent_id.clone()),
            None,
            None,
            Vec::new(),
        ));
    };
    let agent = config.agent_id.clone();
    let joined = tokio::task::spawn_blocking(move || -> Result<LoadedState, SessionError> {
        std::fs::create_dir_all(&dir).map_err(|source| SessionError::StateDir {
            path: dir.clone(),
            source,
        })?;
        let tracker_path = dir.join(TRACKER_FILE);
        let cache_path = dir.join(COORDINATORS_FILE);
        let tracker = load_or_new(&tracker_path, &agent)?;
        let cached = match load_cache(&cache_path) {
            Ok(Some(c)) => c.coordinators,
            Ok(None) => Vec::new(),
            Err(e) => {
                tracing::warn!(error = %e, "cached coordinator list unusable; ignoring it");
                Vec::new()
            }
        };
        Ok((tracker, Some(tracker_path), Some(cache_path), cached))
    })
    .await;
    match joined {
        Ok(r) => r,
        Err(e) => Err(SessionError::StateDir {
            path: config.state_dir.clone().unwrap_or_default(),
            source: std::io::Error::other(e.to_string()),
        }),
    }
}

/// The agent's current TLS material and the region client built from it.
struct Material {
    leaf: LeafIdentity,
    region: RegionClient,
}

/// The coordinator connection in use.
#[derive(Clone)]
struct Link {
    client: AgentClient<Channel>,
    coordinator: Arc<str>,
}

struct Inner {
    config: ShimConfig,
    agent: Arc<str>,
    coordinator_ca: String,
    region_ca: String,
    tracker: Mutex<Tracker>,
    tracker_path: Option<PathBuf>,
    cache_path: Option<PathBuf>,
    /// Serializes state-file writes so the newest snapshot is written last.
    persist_lock: tokio::sync::Mutex<()>,
    cached: Mutex<Vec<CoordinatorInfo>>,
    material: watch::Sender<Arc<Material>>,
    /// Every fingerprint this session has presented (attachment checks
    /// accept any of them: the agent may still hold its previous leaf).
    fingerprints: Mutex<Vec<String>>,
    link: watch::Sender<Option<Link>>,
    /// The directive to apply (latest wins; `None`: nothing).
    work: watch::Sender<Option<Directive>>,
    events: Option<EventSender>,
    limiter: SharedLimiter,
    hook: Arc<dyn RedirectHook>,
    rng: Mutex<StdRng>,
    /// Whether the outcome found in the saved state was re-reported.
    rereported: AtomicBool,
}

/// How one connection ended.
enum End {
    /// Failed before the directive stream opened.
    Failed(String),
    /// The stream was open, then ended or broke.
    Broken(String),
    /// The leaf changed: reconnect with it.
    LeafRenewed,
}

/// How one application of a directive ended.
enum Finished {
    Attached,
    Failed { retryable: bool },
    Superseded,
}

/// Locks a mutex, recovering from poisoning (the data stays consistent:
/// every critical section is a single call into pure code).
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Inner {
    fn emit(&self, kind: SessionEventKind) {
        if let Some(tx) = &self.events {
            let _ = tx.send(SessionEvent {
                at_ms: now_ms(),
                agent_id: self.agent.clone(),
                kind,
            });
        }
    }

    fn timing(&self) -> &Timing {
        &self.config.timing
    }

    fn backoff(&self, base: u64, cap: u64, salt: u64) -> Backoff {
        // validate() checked both backoffs' parameters.
        Backoff::clamped(base, cap, self.config.seed ^ salt)
    }

    // ---- connections -------------------------------------------------

    /// Connects, registers and watches, forever, with backoff between
    /// failures. Ends only when dropped (shutdown).
    async fn connection_loop(self: &Arc<Self>) {
        let t = self.timing();
        let mut backoff = self.backoff(t.reconnect_base_ms, t.reconnect_cap_ms, SEED_RECONNECT);
        let mut attempt: u32 = 0;
        let mut index: usize = 0;
        let mut prefer: Option<String> = None;
        let mut wait = Duration::ZERO;
        loop {
            if !wait.is_zero() {
                tokio::time::sleep(wait).await;
            }
            let list = candidates_spread(
                &self.config.coordinators,
                &lock(&self.cached),
                &self.config.home_region,
                self.config.seed,
            );
            let addr = match prefer.take() {
                Some(a) => a,
                None => match list.get(index % list.len().max(1)) {
                    Some(a) => a.clone(),
                    None => {
                        wait = backoff.delay(MAX_ATTEMPT);
                        continue;
                    }
                },
            };
            match self.serve(&addr).await {
                End::Failed(reason) => {
                    tracing::warn!(coordinator = %addr, %reason, "coordinator unusable; trying the next one");
                    self.emit(SessionEventKind::ConnectFailed {
                        coordinator: addr.clone(),
                        reason,
                    });
                    attempt = attempt.saturating_add(1).min(MAX_ATTEMPT);
                    index = index.wrapping_add(1);
                    wait = backoff.delay(attempt);
                }
                End::Broken(reason) => {
                    tracing::warn!(coordinator = %addr, %reason, "directive stream lost; reconnecting");
                    self.emit(SessionEventKind::Disconnected {
                        coordinator: addr.clone(),
                        reason,
                    });
                    attempt = 0;
                    index = 0;
                    wait = backoff.delay(0);
                }
                End::LeafRenewed => {
                    self.emit(SessionEventKind::Disconnected {
                        coordinator: addr.clone(),
                        reason: "leaf renewed".to_string(),
                    });
                    attempt = 0;
                    index = 0;
                    prefer = Some(addr);
                    wait = Duration::ZERO;
                }
            }
        }
    }

    /// One connection: connect, ListCoordinators, Register, Watch, then
    /// handle directives until the stream ends or the leaf changes.
    async fn serve(self: &Arc<Self>, addr: &str) -> End {
        let mut material_rx = self.material.subscribe();
        let material = material_rx.borrow_and_update().clone();
        let client = match self.connect(addr, &material.leaf).await {
            Ok(c) => c,
            Err(reason) => return End::Failed(reason),
        };
        let t = self.timing();
        let rpc = Timing::ms(t.rpc_timeout_ms);
        match tokio::time::timeout(
            rpc,
            client
                .clone()
                .list_coordinators(pb::ListCoordinatorsRequest {}),
        )
        .await
        {
            Ok(Ok(resp)) => self.update_cache(resp.into_inner()).await,
            Ok(Err(status)) => {
                tracing::warn!(coordinator = %addr, error = %status_text(&status), "ListCoordinators failed")
            }
            Err(_) => tracing::warn!(coordinator = %addr, "ListCoordinators timed out"),
        }
        let request = self.register_request(&material.leaf);
        let registered = match tokio::time::timeout(
            Timing::ms(t.register_timeout_ms),
            client.clone().register(request),
        )
        .await
        {
            Ok(Ok(resp)) => resp.into_inner(),
            Ok(Err(status)) => return End::Failed(format!("Register: {}", status_text(&status))),
            Err(_) => return End::Failed("Register timed out".to_string()),
        };
        if registered.fingerprint != material.leaf.fingerprint() {
            tracing::warn!(
                coordinator = %addr,
                registered = %short(&registered.fingerprint),
                presented = %material.leaf.short_fingerprint(),
                "the coordinator registered another fingerprint than the leaf presented"
            );
        }
        tracing::info!(
            coordinator = %addr,
            fingerprint = %short(&registered.fingerprint),
            epoch = registered.epoch,
            "registered"
        );
        self.emit(SessionEventKind::Registered {
            coordinator: addr.to_string(),
            fingerprint: registered.fingerprint.clone(),
            epoch: registered.epoch,
        });
        let link = Link {
            client: client.clone(),
            coordinator: addr.into(),
        };
        if !self.rereported.swap(true, Ordering::SeqCst) {
            self.rereport(&link).await;
        }
        let known_epoch = lock(&self.tracker).newest_seen().unwrap_or(0);
        let mut stream = match tokio::time::timeout(
            rpc,
            client.clone().watch(pb::WatchRequest {
                agent_id: self.agent.to_string(),
                known_epoch,
            }),
        )
        .await
        {
            Ok(Ok(resp)) => resp.into_inner(),
            Ok(Err(status)) => return End::Failed(format!("Watch: {}", status_text(&status))),
            Err(_) => return End::Failed("opening Watch timed out".to_string()),
        };
        self.link.send_replace(Some(link));
        tracing::info!(coordinator = %addr, known_epoch, "watching directives");
        self.emit(SessionEventKind::Watching {
            coordinator: addr.to_string(),
            known_epoch,
        });
        let end = loop {
            tokio::select! {
                changed = material_rx.changed() => {
                    if changed.is_ok() {
                        break End::LeafRenewed;
                    }
                }
                message = stream.message() => match message {
                    Ok(Some(directive)) => self.on_directive(directive).await,
                    Ok(None) => break End::Broken("the coordinator ended the directive stream".to_string()),
                    Err(status) => break End::Broken(format!("directive stream: {}", status_text(&status))),
                },
            }
        };
        self.link.send_if_modified(|l| {
            if l.as_ref().is_some_and(|l| &*l.coordinator == addr) {
                *l = None;
                true
            } else {
                false
            }
        });
        end
    }

    async fn connect(
        &self,
        addr: &str,
        leaf: &LeafIdentity,
    ) -> Result<AgentClient<Channel>, String> {
        let t = self.timing();
        let connect_timeout = Timing::ms(t.connect_timeout_ms);
        let tls = ClientTlsConfig::new()
            .ca_certificate(Certificate::from_pem(self.coordinator_ca.as_bytes()))
            .identity(Identity::from_pem(leaf.cert_pem(), leaf.key_pem()))
            .timeout(connect_timeout);
        let endpoint = Endpoint::from_shared(format!("https://{addr}"))
            .map_err(|e| format!("address {addr:?}: {}", error_chain(&e)))?
            .tls_config(tls)
            .map_err(|e| format!("TLS configuration: {}", error_chain(&e)))?
            .connect_timeout(connect_timeout)
            .tcp_nodelay(true)
            .http2_keep_alive_interval(Timing::ms(t.keepalive_interval_ms))
            .keep_alive_timeout(Timing::ms(t.keepalive_timeout_ms))
            .keep_alive_while_idle(true);
        match tokio::time::timeout(connect_timeout.saturating_mul(2), endpoint.connect()).await {
            Ok(Ok(channel)) => Ok(AgentClient::new(channel)),
            Ok(Err(e)) => Err(format!("connect: {}", error_chain(&e))),
            Err(_) => Err("connect timed out".to_string()),
        }
    }

    fn register_request(&self, leaf: &LeafIdentity) -> pb::RegisterRequest {
        let c = &self.config;
        pb::RegisterRequest {
            agent_id: c.agent_id.clone(),
            home_region: c.home_region.clone(),
            tenant: c.tenant.clone(),
            config: Some(pb::ConfigRef {
                id: c.config.id.clone(),
                version: c.config.version,
                content_hash: c.config.content_hash.clone(),
            }),
            capabilities: c.capabilities.clone(),
            allowed_regions: c.allowed_regions.clone(),
            leaf_not_after_ms: leaf.not_after_ms(),
        }
    }

    async fn update_cache(&self, resp: pb::ListCoordinatorsResponse) {
        let list: Vec<CoordinatorInfo> = resp
            .coordinators
            .into_iter()
            .map(|c| CoordinatorInfo {
                node_id: c.node_id,
                region: c.region,
                address: c.address,
            })
            .collect();
        if list.is_empty() {
            tracing::warn!("ListCoordinators answered an empty list; keeping the cached one");
            return;
        }
        let count = list.len();
        let changed = {
            let mut cached = lock(&self.cached);
            if *cached == list {
                false
            } else {
                *cached = list.clone();
                true
            }
        };
        if changed {
            tracing::info!(count, epoch = resp.epoch, "coordinator list cached");
            if let Some(path) = self.cache_path.clone() {
                let cache = CoordinatorCache::new(resp.epoch, now_ms(), list);
                let saved = tokio::task::spawn_blocking(move || {
                    save_cache(&path, &cache).map_err(|e| e.to_string())
                })
                .await
                .unwrap_or_else(|e| Err(e.to_string()));
                if let Err(e) = saved {
                    tracing::warn!(error = %e, "cannot save the coordinator list");
                }
            }
        }
        self.emit(SessionEventKind::CoordinatorsCached {
            count,
            epoch: resp.epoch,
        });
    }

    /// Once per process: if the saved state says the agent is attached by
    /// the current directive, tell the coordinators again (the report of
    /// the previous run may not have been acknowledged).
    async fn rereport(&self, link: &Link) {
        let current = lock(&self.tracker).state().current;
        let Some(current) = current else { return };
        if current.status != ApplyStatus::Attached {
            return;
        }
        let d = current.directive;
        let request = self.report_request(&d, &ApplyOutcome::Attached);
        let sent = tokio::time::timeout(
            Timing::ms(self.timing().rpc_timeout_ms),
            link.client.clone().report(request),
        )
        .await;
        if let Ok(Ok(_)) = sent {
            tracing::info!(epoch = d.epoch, region = %d.target_region, "re-reported the saved outcome");
        }
    }

    // ---- directives --------------------------------------------------

    async fn on_directive(&self, directive: pb::Directive) {
        let home = &self.config.home_region;
        let (action, d) = match convert(&directive, home) {
            Ok(x) => x,
            Err(reason) => {
                tracing::warn!(epoch = directive.epoch, %reason, "directive not understood; ignored");
                self.emit(SessionEventKind::Directive {
                    epoch: directive.epoch,
                    action: Action::Stay,
                    target_region: directive.target_region.clone(),
                    seen: Seen::Malformed { reason },
                });
                return;
            }
        };
        let epoch = d.epoch;
        let target = d.target_region.clone();
        let (seen, persist, work) = {
            let mut tracker = lock(&self.tracker);
            let surely_home = surely_home(&tracker.state(), home);
            match tracker.offer(now_ms(), d) {
                Decision::Apply(d) => {
                    if action == Action::Stay && surely_home {
                        tracker.applied(d.epoch, ApplyOutcome::Attached);
                        (Seen::NoOp, true, Some(None))
                    } else {
                        (Seen::Apply, true, Some(Some(d)))
                    }
                }
                Decision::Duplicate => (Seen::Duplicate, false, None),
                Decision::Refreshed => (Seen::Refreshed, true, None),
                Decision::Stale { newest_seen } => (Seen::Stale { newest_seen }, false, None),
                Decision::Conflict => (Seen::Conflict, true, None),
                Decision::Expired => (Seen::Expired, true, None),
                Decision::WrongAgent => (Seen::WrongAgent, false, None),
            }
        };
        let action_name = action.as_str();
        match &seen {
            Seen::Apply => {
                tracing::info!(epoch, action = action_name, region = %target, "directive accepted")
            }
            Seen::NoOp => {
                tracing::debug!(epoch, "stay: the agent is at home, nothing to apply")
            }
            Seen::Duplicate => tracing::debug!(epoch, "directive already known"),
            Seen::Refreshed => tracing::info!(
                epoch,
                region = %target,
                "directive refreshed (new token or endpoint); kept for retries"
            ),
            Seen::Stale { newest_seen } => tracing::info!(
                epoch,
                newest_seen,
                region = %target,
                "stale directive ignored"
            ),
            Seen::Conflict => tracing::error!(
                epoch,
                region = %target,
                "conflicting directive for an epoch already seen; ignored (coordinator bug?)"
            ),
            Seen::Expired => tracing::warn!(epoch, region = %target, "expired directive ignored"),
            Seen::WrongAgent => tracing::warn!(
                epoch,
                for_agent = %directive.agent_id,
                "directive for another agent ignored"
            ),
            Seen::Malformed { .. } => {}
        }
        self.emit(SessionEventKind::Directive {
            epoch,
            action,
            target_region: target,
            seen,
        });
        if persist {
            self.persist().await;
        }
        if let Some(w) = work {
            self.work.send_replace(w);
        }
    }

    /// Saves the tracker (no-op without a state directory). Errors are
    /// logged: the session goes on (availability over durability).
    async fn persist(&self) {
        let Some(path) = self.tracker_path.clone() else {
            return;
        };
        let _guard = self.persist_lock.lock().await;
        let snapshot = lock(&self.tracker).clone();
        let saved =
            tokio::task::spawn_blocking(move || save(&path, &snapshot).map_err(|e| e.to_string()))
                .await
                .unwrap_or_else(|e| Err(e.to_string()));
        if let Err(e) = saved {
            tracing::error!(error = %e, "cannot save the tracker state");
        }
    }

    // ---- applying ----------------------------------------------------

    /// Applies the directives handed out by the tracker, one at a time; a
    /// newer one cancels the application of an older one. Retries failed
    /// ones with backoff.
    async fn applier(self: Arc<Self>) {
        let t = self.timing().clone();
        let mut rx = self.work.subscribe();
        let mut retry = self.backoff(t.retry_base_ms, t.retry_cap_ms, SEED_RETRY);
        let mut failures: u32 = 0;
        let mut retry_at: Option<tokio::time::Instant> = None;
        // A directive interrupted by a restart (or failed before it).
        let mut next = self.take_retry().await;
        loop {
            let d = match next.take() {
                Some(d) => d,
                None => tokio::select! {
                    changed = rx.changed() => {
                        if changed.is_err() {
                            return;
                        }
                        failures = 0;
                        retry_at = None;
                        match rx.borrow_and_update().clone() {
                            Some(d) => d,
                            None => continue,
                        }
                    }
                    () = sleep_until(retry_at) => {
                        retry_at = None;
                        match self.take_retry().await {
                            Some(d) => d,
                            None => continue,
                        }
                    }
                },
            };
            tokio::select! {
                changed = rx.changed() => {
                    if changed.is_err() {
                        return;
                    }
                    tracing::info!(epoch = d.epoch, "application cancelled by a newer directive");
                    failures = 0;
                    retry_at = None;
                    next = rx.borrow_and_update().clone();
                }
                finished = self.apply_and_report(&d) => match finished {
                    Finished::Attached | Finished::Superseded => failures = 0,
                    Finished::Failed { retryable: false } => {}
                    Finished::Failed { retryable: true } => {
                        let delay = retry.delay(failures);
                        failures = failures.saturating_add(1).min(MAX_ATTEMPT);
                        tracing::info!(
                            epoch = d.epoch,
                            delay_ms = u64::try_from(delay.as_millis()).unwrap_or(u64::MAX),
                            "will retry the directive"
                        );
                        retry_at = Some(tokio::time::Instant::now() + delay);
                    }
                },
            }
        }
    }

    /// The failed current directive, handed out again if still valid.
    async fn take_retry(&self) -> Option<Directive> {
        let d = lock(&self.tracker).retry(now_ms());
        if d.is_some() {
            self.persist().await;
        }
        d
    }

    async fn apply_and_report(&self, d: &Directive) -> Finished {
        let span = tracing::info_span!(
            "shim.apply",
            epoch = d.epoch,
            kind = %d.kind,
            region = %d.target_region
        );
        async {
            let (outcome, retryable) = match check_applicable(d) {
                Err(reason) => (ApplyOutcome::Failed { reason }, false),
                Ok(()) => {
                    self.spread(d).await;
                    self.emit(SessionEventKind::Applying {
                        epoch: d.epoch,
                        kind: d.kind,
                        target_region: d.target_region.clone(),
                    });
                    tracing::info!("applying directive");
                    match self.apply_once(d).await {
                        Ok(()) => (ApplyOutcome::Attached, false),
                        Err(reason) => (
                            ApplyOutcome::Failed {
                                reason: scrub(&reason, &d.token),
                            },
                            true,
                        ),
                    }
                }
            };
            let ack = lock(&self.tracker).applied(d.epoch, outcome.clone());
            if ack != AppliedAck::Recorded {
                tracing::debug!(?ack, "outcome not recorded");
                return Finished::Superseded;
            }
            self.persist().await;
            match &outcome {
                ApplyOutcome::Attached => tracing::info!("agent verified attached"),
                ApplyOutcome::Failed { reason } => {
                    tracing::warn!(%reason, "applying the directive failed")
                }
            }
            self.emit(SessionEventKind::Applied {
                epoch: d.epoch,
                kind: d.kind,
                target_region: d.target_region.clone(),
                outcome: event_outcome(&outcome),
            });
            self.report(d, &outcome).await;
            match outcome {
                ApplyOutcome::Attached => Finished::Attached,
                ApplyOutcome::Failed { .. } => Finished::Failed { retryable },
            }
        }
        .instrument(span)
        .await
    }

    /// Random jitter, then a token of the per-target rate limiter.
    async fn spread(&self, d: &Directive) {
        let jitter = self.timing().apply_jitter_ms;
        if jitter > 0 {
            let wait = lock(&self.rng).random_range(0..=jitter);
            tokio::time::sleep(Duration::from_millis(wait)).await;
        }
        loop {
            let admission = lock(&self.limiter).try_acquire(now_ms(), &d.target_region);
            match admission {
                Admission::Admitted => return,
                Admission::NotBefore { retry_at_ms } => {
                    // A little extra spread, so waiters do not all wake for
                    // the same token.
                    let extra = lock(&self.rng).random_range(0..=50u64);
                    let wait = retry_at_ms.saturating_sub(now_ms()).max(1) + extra;
                    tokio::time::sleep(Duration::from_millis(wait)).await;
                }
            }
        }
    }

    /// Runs the hook, then verifies the attachment.
    async fn apply_once(&self, d: &Directive) -> Result<(), String> {
        let limit = Timing::ms(self.timing().hook_timeout_ms);
        match tokio::time::timeout(limit, self.hook.apply(d)).await {
            Ok(Ok(_)) => {}
            Ok(Err(e)) => return Err(format!("redirect hook failed: {e}")),
            Err(_) => {
                return Err(format!(
                    "redirect hook did not finish within {} ms",
                    limit.as_millis()
                ))
            }
        }
        self.verify(d).await
    }

    /// Polls the target region until it shows the agent attached with one
    /// of this session's leaves, or the deadline passes.
    async fn verify(&self, d: &Directive) -> Result<(), String> {
        let t = self.timing();
        let deadline = tokio::time::Instant::now() + Timing::ms(t.verify_deadline_ms);
        let poll = Timing::ms(t.verify_poll_ms);
        loop {
            let region = self.material.borrow().region.clone();
            let last = match region.agent(&d.base_url, &self.agent).await {
                Ok(Some(a)) if a.attached && self.known_fingerprint(&a.fingerprint) => {
                    return Ok(())
                }
                Ok(Some(a)) if a.attached => format!(
                    "attached there with another leaf ({})",
                    short(&a.fingerprint)
                ),
                Ok(Some(_)) => "the region reports the agent not attached".to_string(),
                Ok(None) => "the region does not know the agent (404)".to_string(),
                Err(e) => e.to_string(),
            };
            if tokio::time::Instant::now() + poll > deadline {
                return Err(format!(
                    "not verified attached to {} within {} ms: {last}",
                    d.target_region, t.verify_deadline_ms
                ));
            }
            tracing::debug!(reason = %last, "not attached yet");
            tokio::time::sleep(poll).await;
        }
    }

    fn known_fingerprint(&self, fingerprint: &str) -> bool {
        fingerprint.is_empty() || lock(&self.fingerprints).iter().any(|f| f == fingerprint)
    }

    fn report_request(&self, d: &Directive, outcome: &ApplyOutcome) -> pb::ReportRequest {
        let (code, serving, detail) = match outcome {
            ApplyOutcome::Attached => (
                pb::ReportOutcome::Attached,
                d.target_region.clone(),
                String::new(),
            ),
            ApplyOutcome::Failed { reason } => {
                let serving = lock(&self.tracker)
                    .state()
                    .serving_region
                    .unwrap_or_else(|| self.config.home_region.clone());
                (pb::ReportOutcome::Failed, serving, scrub(reason, &d.token))
            }
        };
        pb::ReportRequest {
            agent_id: self.agent.to_string(),
            epoch: d.epoch,
            serving_region: serving,
            outcome: code as i32,
            detail,
        }
    }

    /// Reports the outcome of `d` until a coordinator acknowledges it, or a
    /// newer directive supersedes it.
    async fn report(&self, d: &Directive, outcome: &ApplyOutcome) {
        let request = self.report_request(d, outcome);
        let t = self.timing();
        let mut backoff = self.backoff(
            t.reconnect_base_ms,
            t.reconnect_cap_ms,
            SEED_REPORT ^ d.epoch,
        );
        let mut attempt: u32 = 0;
        let mut rx = self.link.subscribe();
        loop {
            let current = lock(&self.tracker)
                .state()
                .current
                .map(|c| c.directive.epoch);
            if current != Some(d.epoch) {
                return;
            }
            let link = match rx.wait_for(Option::is_some).await {
                Ok(l) => l.clone(),
                Err(_) => return,
            };
            let Some(link) = link else { continue };
            match tokio::time::timeout(
                Timing::ms(t.rpc_timeout_ms),
                link.client.clone().report(request.clone()),
            )
            .await
            {
                Ok(Ok(_)) => {
                    tracing::info!(coordinator = %link.coordinator, "reported");
                    self.emit(SessionEventKind::Reported {
                        epoch: d.epoch,
                        coordinator: link.coordinator.to_string(),
                        outcome: event_outcome(outcome),
                    });
                    return;
                }
                Ok(Err(status)) => tracing::warn!(
                    coordinator = %link.coordinator,
                    error = %status_text(&status),
                    "Report failed; will retry"
                ),
                Err(_) => {
                    tracing::warn!(coordinator = %link.coordinator, "Report timed out; will retry")
                }
            }
            tokio::time::sleep(backoff.delay(attempt)).await;
            attempt = attempt.saturating_add(1).min(MAX_ATTEMPT);
        }
    }

    // ---- leaf renewal ------------------------------------------------

    /// Re-reads the leaf files every `leaf_poll_ms`; a changed, valid pair
    /// replaces the material, which makes the connection re-register.
    async fn watch_leaf(self: Arc<Self>) {
        let mut interval = tokio::time::interval(Timing::ms(self.timing().leaf_poll_ms));
        interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        interval.tick().await;
        let mut last_error: Option<String> = None;
        let mut last_expiry_warning: Option<tokio::time::Instant> = None;
        loop {
            interval.tick().await;
            self.warn_if_expiring(&mut last_expiry_warning);
            let source = self.config.leaf.clone();
            let loaded = tokio::task::spawn_blocking(move || source.load()).await;
            let leaf = match loaded {
                Ok(Ok(leaf)) => leaf,
                Ok(Err(e)) => {
                    let text = e.to_string();
                    if last_error.as_deref() != Some(text.as_str()) {
                        tracing::warn!(error = %text, "leaf files unusable; keeping the current leaf");
                        last_error = Some(text);
                    }
                    continue;
                }
                Err(_) => continue,
            };
            last_error = None;
            if leaf == self.material.borrow().leaf {
                continue;
            }
            let region = match RegionClient::new(
                &self.region_ca,
                &leaf,
                Timing::ms(self.timing().region_request_timeout_ms),
            ) {
                Ok(r) => r,
                Err(e) => {
                    tracing::warn!(error = %e, "renewed leaf unusable for regions; keeping the current leaf");
                    continue;
                }
            };
            {
                let mut known = lock(&self.fingerprints);
                if !known.iter().any(|f| f == leaf.fingerprint()) {
                    known.push(leaf.fingerprint().to_string());
                }
            }
            let old = self.material.borrow().leaf.short_fingerprint().to_string();
            tracing::info!(
                old = %old,
                new = %leaf.short_fingerprint(),
                not_after_ms = leaf.not_after_ms(),
                "leaf renewed; reconnecting to register it"
            );
            self.emit(SessionEventKind::LeafRenewed {
                fingerprint: leaf.fingerprint().to_string(),
            });
            self.material
                .send_replace(Arc::new(Material { leaf, region }));
        }
    }
}

/// A task aborted when this guard is dropped.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl AbortOnDrop {
    /// Aborts the task and waits until it is gone.
    async fn stop(mut self) {
        self.0.abort();
        let _ = (&mut self.0).await;
    }
}

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

impl Inner {
    /// Warns (at most hourly) when the current leaf expires within
    /// [`LEAF_EXPIRY_WARNING_MS`] and has not been renewed: agents renew 30
    /// days ahead, so this means renewal is stuck.
    fn warn_if_expiring(&self, last: &mut Option<tokio::time::Instant>) {
        let not_after = self.material.borrow().leaf.not_after_ms();
        let now = i64::try_from(now_ms()).unwrap_or(i64::MAX);
        let left_ms = not_after.saturating_sub(now);
        if left_ms > LEAF_EXPIRY_WARNING_MS {
            return;
        }
        if last.is_some_and(|t| t.elapsed() < Duration::from_secs(3_600)) {
            return;
        }
        *last = Some(tokio::time::Instant::now());
        tracing::warn!(
            hours_left = left_ms / 3_600_000,
            not_after_ms = not_after,
            "the agent's leaf expires soon and has not been renewed"
        );
    }
}

/// Below this much remaining validity (7 days) the leaf watcher warns.
const LEAF_EXPIRY_WARNING_MS: i64 = 7 * 86_400_000;

async fn sleep_until(at: Option<tokio::time::Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

fn scrub(text: &str, token: &str) -> String {
    if token.is_empty() {
        text.to_string()
    } else {
        scrub_str(text, token)
    }
}

fn event_outcome(outcome: &ApplyOutcome) -> Outcome {
    match outcome {
        ApplyOutcome::Attached => Outcome::Attached,
        ApplyOutcome::Failed { reason } => Outcome::Failed {
            reason: reason.clone(),
        },
    }
}

/// A gRPC status as one line: code, message, and the transport error's
/// sources when there are any.
fn status_text(status: &tonic::Status) -> String {
    let mut text = format!("{:?}: {}", status.code(), status.message());
    if let Some(source) = std::error::Error::source(status) {
        text.push_str(": ");
        text.push_str(&error_chain(source));
    }
    text
}

/// True when the agent is surely served by its home region: the tracker
/// has it served by home (or by nothing yet: it is where it was enrolled)
/// and no directive is in flight or failed (a failed redirect may still
/// have moved it).
fn surely_home(state: &TrackerState, home: &str) -> bool {
    let serving_home = state.serving_region.as_deref().is_none_or(|r| r == home);
    let settled = state
        .current
        .as_ref()
        .is_none_or(|c| c.status == ApplyStatus::Attached);
    serving_home && settled
}

/// What a directive must carry to be applied; `Err` names what is missing
/// (a permanent failure: retrying the same directive cannot help).
fn check_applicable(d: &Directive) -> Result<(), String> {
    let mut missing = Vec::new();
    if d.target_region.is_empty() {
        missing.push("target region");
    }
    if d.endpoint.is_empty() {
        missing.push("target endpoint");
    }
    if d.base_url.is_empty() {
        missing.push("target base URL");
    }
    if d.kind == DirectiveKind::Redirect && d.token.is_empty() {
        missing.push("token");
    }
    if missing.is_empty() {
        Ok(())
    } else {
        Err(format!(
            "the {} directive names no {}",
            d.kind,
            missing.join(", ")
        ))
    }
}

/// The protocol's directive as the tracker's (see the module docs for the
/// mapping). `Err` for an action this shim does not know.
pub(crate) fn convert(d: &pb::Directive, home: &str) -> Result<(Action, Directive), String> {
    let action = match pb::DirectiveAction::try_from(d.action) {
        Ok(pb::DirectiveAction::Stay) => Action::Stay,
        Ok(pb::DirectiveAction::Redirect) => Action::Redirect,
        Ok(pb::DirectiveAction::ReturnHome) => Action::ReturnHome,
        _ => return Err(format!("unknown or unspecified action {}", d.action)),
    };
    let (kind, target_region) = match action {
        Action::Redirect => (DirectiveKind::Redirect, d.target_region.clone()),
        Action::ReturnHome if !d.target_region.is_empty() => {
            (DirectiveKind::ReturnHome, d.target_region.clone())
        }
        Action::ReturnHome | Action::Stay => (DirectiveKind::ReturnHome, home.to_string()),
    };
    let expires_at_ms = match u64::try_from(d.token_not_after_ms) {
        Ok(t) if t > 0 && !d.token.is_empty() => t,
        _ => u64::MAX,
    };
    Ok((
        action,
        Directive {
            epoch: d.epoch,
            agent_id: d.agent_id.clone(),
            kind,
            target_region,
            endpoint: d.target_endpoint.clone(),
            base_url: d.target_base_url.clone(),
            token: d.token.clone(),
            issued_at_ms: 0,
            expires_at_ms,
        },
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::directive::Current;

    fn proto(action: pb::DirectiveAction) -> pb::Directive {
        pb::Directive {
            agent_id: "a".into(),
            epoch: 4,
            action: action as i32,
            target_region: "us".into(),
            target_endpoint: "wss://us/v1/opamp".into(),
            target_base_url: "https://us:1".into(),
            token: "tok".into(),
            token_not_after_ms: 99,
        }
    }

    // Property: REDIRECT maps to a redirect expiring with its token;
    // STAY maps to a return home to the home region; a tokenless directive
    // never expires; an unspecified action is refused.
    #[test]
    fn proto_mapping() {
        let (a, d) = convert(&proto(pb::DirectiveAction::Redirect), "eu").expect("map");
        assert_eq!(a, Action::Redirect);
        assert_eq!(d.kind, DirectiveKind::Redirect);
        assert_eq!(d.target_region, "us");
        assert_eq!(d.base_url, "https://us:1");
        assert_eq!(d.expires_at_ms, 99);
        assert_eq!(d.issued_at_ms, 0);

        let mut stay = proto(pb::DirectiveAction::Stay);
        stay.token.clear();
        let (a, d) = convert(&stay, "eu").expect("map");
        assert_eq!(a, Action::Stay);
        assert_eq!(d.kind, DirectiveKind::ReturnHome);
        assert_eq!(d.target_region, "eu");
        assert_eq!(d.expires_at_ms, u64::MAX);

        let mut home = proto(pb::DirectiveAction::ReturnHome);
        home.target_region.clear();
        let (_, d) = convert(&home, "eu").expect("map");
        assert_eq!(d.target_region, "eu");

        assert!(convert(&proto(pb::DirectiveAction::Unspecified), "eu").is_err());
        let mut unknown = proto(pb::DirectiveAction::Stay);
        unknown.action = 42;
        assert!(convert(&unknown, "eu").is_err());
    }

    // Property: the agent is surely home only when served by home (or by
    // nothing) with no directive in flight or failed.
    #[test]
    fn surely_home_rules() {
        let (_, d) = convert(&proto(pb::DirectiveAction::Redirect), "eu").expect("map");
        let state = |serving: Option<&str>, status: Option<ApplyStatus>| TrackerState {
            agent_id: "a".into(),
            serving_region: serving.map(str::to_string),
            serving_epoch: serving.map(|_| 4),
            newest_seen: Some(4),
            current: status.map(|status| Current {
                directive: d.clone(),
                status,
            }),
            conflicts: 0,
        };
        assert!(surely_home(&state(None, None), "eu"));
        assert!(surely_home(
            &state(Some("eu"), Some(ApplyStatus::Attached)),
            "eu"
        ));
        assert!(!surely_home(
            &state(Some("us"), Some(ApplyStatus::Attached)),
            "eu"
        ));
        assert!(!surely_home(&state(None, Some(ApplyStatus::Pending)), "eu"));
        assert!(!surely_home(
            &state(None, Some(ApplyStatus::Failed { reason: "x".into() })),
            "eu"
        ));
    }

    // Property: a directive missing what the agent needs is refused with
    // the missing parts named, and never with the token.
    #[test]
    fn applicability() {
        let (_, mut d) = convert(&proto(pb::DirectiveAction::Redirect), "eu").expect("map");
        assert_eq!(check_applicable(&d), Ok(()));
        d.token.clear();
        d.base_url.clear();
        assert_eq!(
            check_applicable(&d),
            Err("the redirect directive names no target base URL, token".to_string())
        );
        let (_, mut home) = convert(&proto(pb::DirectiveAction::ReturnHome), "eu").expect("map");
        home.token.clear();
        assert_eq!(check_applicable(&home), Ok(()));
    }
}
