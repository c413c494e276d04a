//! Counters of what the stand-in's region endpoints served, for
//! `GET /_standin/stats` and tests: requests per endpoint, responses per
//! status code, connections accepted, handshakes failed and connections
//! dropped by `down`. It owns the counting and the report types
//! (`StatsReport`, `StandInStatus`); it must not change behaviour.

use std::collections::BTreeMap;
use std::sync::Mutex;

use serde::{Deserialize, Serialize};

use super::mode::ModeReport;

/// The counters (shared by the request layer and the listener).
#[derive(Debug, Default)]
pub(crate) struct Stats {
    inner: Mutex<StatsReport>,
}

impl Stats {
    fn with<T>(&self, f: impl FnOnce(&mut StatsReport) -> T) -> T {
        let mut guard = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        f(&mut guard)
    }

    /// One request to `endpoint` answered with `status`.
    pub(crate) fn request(&self, endpoint: &str, status: u16) {
        self.with(|s| {
            *s.requests.entry(endpoint.to_string()).or_default() += 1;
            *s.responses.entry(status.to_string()).or_default() += 1;
        });
    }

    pub(crate) fn accepted(&self) {
        self.with(|s| s.connections.accepted += 1);
    }

    pub(crate) fn handshake_failed(&self) {
        self.with(|s| s.connections.handshake_failed += 1);
    }

    pub(crate) fn dropped(&self, n: u64) {
        self.with(|s| s.connections.dropped_by_down += n);
    }

    pub(crate) fn report(&self) -> StatsReport {
        self.with(|s| s.clone())
    }
}

/// What the region endpoints have served since start.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct StatsReport {
    /// Requests per endpoint path (`/health/live`, ...; `other` for paths
    /// the stand-in does not serve), whatever the answer.
    pub requests: BTreeMap<String, u64>,
    /// Responses per HTTP status code (`"200"`, `"503"`, ...).
    pub responses: BTreeMap<String, u64>,
    pub connections: ConnectionStats,
}

/// Connection counters of the HTTPS listener.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConnectionStats {
    /// TCP connections accepted.
    pub accepted: u64,
    /// TLS handshakes that failed or timed out.
    pub handshake_failed: u64,
    /// Connections cut when the mode became `down`.
    pub dropped_by_down: u64,
}

/// Answer of `GET /_standin/stats`: the region, its mode and the counters.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StandInStatus {
    pub region: String,
    pub mode: ModeReport,
    #[serde(flatten)]
    pub stats: StatsReport,
}

impl StatsReport {
    /// Requests served on `endpoint` so far.
    pub fn requests_to(&self, endpoint: &str) -> u64 {
        self.requests.get(endpoint).copied().unwrap_or(0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // Property: requests are counted per endpoint and per status.
    #[test]
    fn counts_per_endpoint_and_status() {
        let s = Stats::default();
        s.request("/health/live", 200);
        s.request("/health/live", 503);
        s.request("other", 404);
        let r = s.report();
        assert_eq!(r.requests_to("/health/live"), 2);
        assert_eq!(r.requests_to("other"), 1);
        assert_eq!(r.responses.get("503"), Some(&1));
        assert_eq!(r.requests_to("/health/ready"), 0);
    }
}
