//! The state one running stand-in shares between its HTTPS listener, its
//! request layer and its control API (`Shared`): the region, the peers the
//! ping checks, the trust bundle, the counters, and the mode as two watch
//! channels: the mode *asked for* (`Desired`, written by the control API
//! and the handle) and the mode *applied* by the listener (`Applied`, so a
//! mode change returns only once it holds: after `down` returns, nothing
//! listens; after `up` returns, the listener is open).
//!
//! It must not do I/O itself.

use std::net::SocketAddr;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use tern_core::RegionName;
use tokio::sync::watch;

use super::config::FederationPeer;
use super::mode::{Mode, ModeReport};
use super::stats::{StandInStatus, Stats};

/// How long a mode change waits for the listener to apply it.
const APPLY_TIMEOUT: Duration = Duration::from_secs(10);

/// The mode asked for; `seq` grows with every request.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Desired {
    pub(crate) seq: u64,
    pub(crate) mode: Mode,
}

/// What the listener has applied, up to request `seq`.
#[derive(Debug, Clone)]
pub(crate) struct Applied {
    pub(crate) seq: u64,
    pub(crate) listening: bool,
    pub(crate) error: Option<String>,
}

/// Why a mode change did not complete.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum ApplyError {
    Stopping,
    Timeout,
}

impl std::fmt::Display for ApplyError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ApplyError::Stopping => f.write_str("the stand-in is stopping"),
            ApplyError::Timeout => write!(
                f,
                "the HTTPS listener did not confirm within {} s",
                APPLY_TIMEOUT.as_secs()
            ),
        }
    }
}

pub(crate) struct Shared {
    pub(crate) region: RegionName,
    pub(crate) https_addr: SocketAddr,
    pub(crate) trust_bundle_pem: String,
    pub(crate) stats: Stats,
    pub(crate) handover: super::handover::HandoverState,
    peers: RwLock<Arc<Vec<FederationPeer>>>,
    desired: watch::Sender<Desired>,
    applied: watch::Sender<Applied>,
    stop: watch::Sender<bool>,
}

impl Shared {
    pub(crate) fn new(
        region: RegionName,
        https_addr: SocketAddr,
        trust_bundle_pem: String,
        peers: Vec<FederationPeer>,
        handover: super::handover::HandoverState,
    ) -> Shared {
        let (desired, _) = watch::channel(Desired {
            seq: 0,
            mode: Mode::Up,
        });
        let (applied, _) = watch::channel(Applied {
            seq: 0,
            listening: true,
            error: None,
        });
        let (stop, _) = watch::channel(false);
        Shared {
            region,
            https_addr,
            trust_bundle_pem,
            stats: Stats::default(),
            handover,
            peers: RwLock::new(Arc::new(peers)),
            desired,
            applied,
            stop,
        }
    }

    /// The mode asked for last (the request layer acts on it at once).
    pub(crate) fn mode(&self) -> Mode {
        self.desired.borrow().mode
    }

    pub(crate) fn peers(&self) -> Arc<Vec<FederationPeer>> {
        self.peers.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    pub(crate) fn set_peers(&self, peers: Vec<FederationPeer>) {
        *self.peers.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(peers);
    }

    /// Replaces the pins of the named peers that have an entry (keeping
    /// their secrets), under one write lock; returns the names updated and
    /// the names with no entry.
    pub(crate) fn replace_peer_pins(
        &self,
        wanted: &std::collections::BTreeMap<
            RegionName,
            std::collections::BTreeSet<tern_core::Thumbprint>,
        >,
    ) -> (Vec<RegionName>, Vec<RegionName>) {
        let mut guard = self.peers.write().unwrap_or_else(|p| p.into_inner());
        let mut peers = guard.as_ref().clone();
        let mut updated = Vec::new();
        for p in &mut peers {
            if let Some(pins) = wanted.get(&p.name) {
                p.pinned_thumbprints = pins.clone();
                updated.push(p.name.clone());
            }
        }
        let unknown = wanted
            .keys()
            .filter(|n| !updated.contains(n))
            .cloned()
            .collect();
        *guard = Arc::new(peers);
        (updated, unknown)
    }

    pub(crate) fn subscribe_desired(&self) -> watch::Receiver<Desired> {
        self.desired.subscribe()
    }

    pub(crate) fn publish_applied(&self, applied: Applied) {
        self.applied.send_replace(applied);
    }

    pub(crate) fn subscribe_stop(&self) -> watch::Receiver<bool> {
        self.stop.subscribe()
    }

    pub(crate) fn stop(&self) {
        self.stop.send_replace(true);
    }

    /// Asks for `mode` and waits until the listener has applied it (or a
    /// later request). The report may carry an `error` if the listener
    /// could not open again.
    pub(crate) async fn set_mode(&self, mode: Mode) -> Result<ModeReport, ApplyError> {
        let mut seq = 0;
        let mut applied = self.applied.subscribe();
        let mut stop = self.stop.subscribe();
        self.desired.send_modify(|d| {
            d.seq += 1;
            d.mode = mode;
            seq = d.seq;
        });
        let confirmed = async {
            applied
                .wait_for(|a| a.seq >= seq)
                .await
                .map(|a| a.clone())
                .map_err(|_| ApplyError::Stopping)
        };
        tokio::select! {
            r = tokio::time::timeout(APPLY_TIMEOUT, confirmed) => {
                r.map_err(|_| ApplyError::Timeout)??;
            }
            () = wait_stopped(&mut stop) => return Err(ApplyError::Stopping),
        }
        Ok(self.mode_report())
    }

    /// The mode in force and the listener's state.
    pub(crate) fn mode_report(&self) -> ModeReport {
        let mode = self.mode();
        let applied = self.applied.borrow().clone();
        ModeReport {
            mode: mode.name(),
            delay_ms: mode.delay_ms(),
            listening: applied.listening,
            https: self.https_addr.to_string(),
            error: applied.error,
        }
    }

    pub(crate) fn status(&self) -> StandInStatus {
        StandInStatus {
            region: self.region.to_string(),
            mode: self.mode_report(),
            stats: self.stats.report(),
        }
    }
}

/// Resolves once `stop` is true (at once if it already is) or its sender
/// is gone.
pub(crate) async fn wait_stopped(stop: &mut watch::Receiver<bool>) {
    let _ = stop.wait_for(|s| *s).await;
}
