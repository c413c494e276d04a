//! Starting and stopping one stand-in in-process: [`start`] takes the
//! validated configuration and two already-bound listeners, spawns the
//! HTTPS side and the control API, writes the ready file, and returns a
//! [`StandInHandle`] to read addresses, change the mode, replace the
//! federation peers, read the counters and stop it. [`run`] is the same
//! for a binary: start, wait for a shutdown future, stop.
//!
//! It owns the lifetime of the stand-in's tasks and the `standin` tracing
//! span (field `region`). It must not parse configuration (see `config`)
//! nor decide anything a request gets (see `region`).

use std::future::Future;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tern_core::{RegionName, Thumbprint};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_rustls::TlsAcceptor;
use tracing::Instrument;

use super::config::{validate_peers, FederationPeer, StandInConfig, StandInConfigError};
use super::error::StandInError;
use super::mode::{Mode, ModeReport};
use super::state::{wait_stopped, ApplyError, Shared};
use super::stats::StandInStatus;
use super::{agent_ca, control, listener, region, tls};
use crate::tls::DevCa;

/// How long [`StandInHandle::shutdown`] waits for each task to finish.
const STOP_TIMEOUT: Duration = Duration::from_secs(5);

/// What the ready file holds (JSON), written once both listeners are up.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StandInReady {
    /// The region the stand-in plays.
    pub region: String,
    /// Bound HTTPS address of the region endpoints, `ip:port`.
    pub https: String,
    /// Bound address of the control API, `ip:port`.
    pub control: String,
    /// Process id of the stand-in.
    pub pid: u32,
}

/// Binds the two listeners of `config` (port 0 picks free ports).
pub async fn bind(config: &StandInConfig) -> Result<(TcpListener, TcpListener), StandInError> {
    let bind = |addr: SocketAddr| async move {
        TcpListener::bind(addr)
            .await
            .map_err(|source| StandInError::Bind { addr, source })
    };
    Ok((
        bind(config.listen_https).await?,
        bind(config.listen_control).await?,
    ))
}

/// Runs a stand-in on already-bound listeners until `shutdown` resolves.
pub async fn run(
    config: StandInConfig,
    https: TcpListener,
    control: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), StandInError> {
    let handle = start(config, https, control).await?;
    shutdown.await;
    handle.shutdown().await;
    Ok(())
}

/// Starts a stand-in on already-bound listeners and returns once both
/// serve (and the ready file, if configured, is written). The mode is `up`.
/// Must be called inside a tokio runtime. The listeners' addresses are
/// what the handle and the ready file report (so port 0 works); the
/// control listener should be on loopback (`StandInConfig::validate`
/// checks the configured address, not the listener given here).
pub async fn start(
    config: StandInConfig,
    https: TcpListener,
    control: TcpListener,
) -> Result<StandInHandle, StandInError> {
    let span = tracing::info_span!("standin", region = %config.region);
    validate_peers(&config.federation_peers)?;
    let identity = config.server_identity()?;
    let agent_ca = {
        let _entered = span.enter();
        agent_ca::load_or_create(&config.region, &config.data_dir, config.agent_ca.as_ref())?
    };
    let server_config =
        tls::server_config(&identity).map_err(|e| StandInError::Tls(e.to_string()))?;
    let https_addr = https
        .local_addr()
        .map_err(|source| StandInError::LocalAddr {
            what: "HTTPS",
            source,
        })?;
    let control_addr = control
        .local_addr()
        .map_err(|source| StandInError::LocalAddr {
            what: "control",
            source,
        })?;

    let coordinator_ca = match &config.coordinator_ca_file {
        Some(p) => {
            Some(crate::tls::CaBundle::load(p).map_err(|e| StandInError::Tls(e.to_string()))?)
        }
        None => None,
    };
    let handover = super::handover::HandoverState::new(
        config.configs.clone(),
        &agent_ca.cert_pem(),
        coordinator_ca.as_ref(),
    )
    .map_err(StandInError::Tls)?;
    let shared = Arc::new(Shared::new(
        config.region.clone(),
        https_addr,
        agent_ca.cert_pem(),
        config.federation_peers.clone(),
        handover,
    ));
    let https_task = tokio::spawn(
        listener::run(
            shared.clone(),
            https,
            TlsAcceptor::from(server_config),
            region::router(shared.clone()),
        )
        .instrument(span.clone()),
    );
    let control_task = {
        let mut stop = shared.subscribe_stop();
        let app = control::router(shared.clone());
        tokio::spawn(
            async move {
                let serve = axum::serve(control, app)
                    .with_graceful_shutdown(async move { wait_stopped(&mut stop).await });
                if let Err(e) = serve.await {
                    tracing::error!(error = %e, "control API stopped");
                }
            }
            .instrument(span.clone()),
        )
    };
    let handle = StandInHandle {
        shared,
        https_addr,
        control_addr,
        agent_ca: Arc::new(agent_ca),
        server_thumbprint: identity.thumbprint(),
        tasks: vec![https_task, control_task],
        span,
    };

    if let Some(path) = &config.ready_file {
        let ready = StandInReady {
            region: config.region.to_string(),
            https: https_addr.to_string(),
            control: control_addr.to_string(),
            pid: std::process::id(),
        };
        serde_json::to_vec_pretty(&ready)
            .map_err(std::io::Error::other)
            .and_then(|bytes| write_atomically(path, &bytes))
            .map_err(|source| StandInError::Io {
                what: "ready file",
                path: path.clone(),
                source,
            })?;
    }
    tracing::info!(
        parent: &handle.span,
        https = %https_addr,
        control = %control_addr,
        thumbprint = %handle.server_thumbprint.short(),
        agent_ca = %handle.agent_ca.thumbprint().short(),
        peers = config.federation_peers.len(),
        "stand-in serving"
    );
    Ok(handle)
}

/// A running stand-in. Dropping the handle stops it (without waiting);
/// [`StandInHandle::shutdown`] stops it and waits.
pub struct StandInHandle {
    shared: Arc<Shared>,
    https_addr: SocketAddr,
    control_addr: SocketAddr,
    agent_ca: Arc<DevCa>,
    server_thumbprint: Thumbprint,
    tasks: Vec<JoinHandle<()>>,
    span: tracing::Span,
}

impl StandInHandle {
    /// The HTTPS address of the region endpoints (stable across `down`).
    pub fn https_addr(&self) -> SocketAddr {
        self.https_addr
    }

    /// The control API's address (plain HTTP).
    pub fn control_addr(&self) -> SocketAddr {
        self.control_addr
    }

    /// The region this stand-in plays.
    pub fn region(&self) -> &RegionName {
        &self.shared.region
    }

    /// The agent CA (published by `/pki/trust-bundle.pem`; issues agent
    /// leaf certificates).
    pub fn agent_ca(&self) -> &Arc<DevCa> {
        &self.agent_ca
    }

    /// What `/pki/trust-bundle.pem` serves.
    pub fn trust_bundle_pem(&self) -> &str {
        &self.shared.trust_bundle_pem
    }

    /// Thumbprint of the server certificate the region endpoints present.
    pub fn server_thumbprint(&self) -> Thumbprint {
        self.server_thumbprint
    }

    /// The mode asked for last.
    pub fn mode(&self) -> Mode {
        self.shared.mode()
    }

    /// Changes the mode and returns once it holds (after `down`: nothing
    /// listens and every connection is cut; after leaving `down`: the same
    /// address listens again). Errors if the address could not be bound
    /// again (the mode stays; binding is retried) or the stand-in stops.
    pub async fn set_mode(&self, mode: Mode) -> Result<ModeReport, StandInError> {
        let report = self
            .shared
            .set_mode(mode)
            .instrument(self.span.clone())
            .await
            .map_err(|e: ApplyError| StandInError::ModeNotApplied {
                mode: mode.to_string(),
                reason: e.to_string(),
            })?;
        match report.error {
            Some(reason) => Err(StandInError::ModeNotApplied {
                mode: mode.to_string(),
                reason,
            }),
            None => Ok(report),
        }
    }

    /// Replaces the federation peers the ping checks (e.g. a pin rotation
    /// step). Applies to the next ping.
    pub fn set_federation_peers(
        &self,
        peers: Vec<FederationPeer>,
    ) -> Result<(), StandInConfigError> {
        validate_peers(&peers)?;
        self.shared.set_peers(peers);
        Ok(())
    }

    /// The federation peers the ping checks now.
    pub fn federation_peers(&self) -> Vec<FederationPeer> {
        self.shared.peers().as_ref().clone()
    }

    /// Region, mode and counters (what `GET /_standin/stats` answers).
    pub fn status(&self) -> StandInStatus {
        self.shared.status()
    }

    /// Stops both listeners, cuts every connection and waits for the tasks
    /// (at most a few seconds each).
    pub async fn shutdown(mut self) {
        self.shared.stop();
        for task in std::mem::take(&mut self.tasks) {
            let _ = tokio::time::timeout(STOP_TIMEOUT, task).await;
        }
        tracing::info!(parent: &self.span, "stand-in stopped");
    }
}

impl Drop for StandInHandle {
    fn drop(&mut self) {
        self.shared.stop();
    }
}

impl std::fmt::Debug for StandInHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StandInHandle")
            .field("region", &self.shared.region)
            .field("https_addr", &self.https_addr)
            .field("control_addr", &self.control_addr)
            .field("mode", &self.shared.mode())
            .finish()
    }
}

/// Writes `bytes` to a temporary file beside `path`, then renames it over
/// `path`, so a reader sees the whole file or none.
fn write_atomically(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(format!(".tmp-{}", std::process::id()));
    let tmp = std::path::PathBuf::from(tmp);
    std::fs::write(&tmp, bytes)?;
    std::fs::rename(&tmp, path)
}
