//! The coordinator fallback list: what `ListCoordinators` answered, cached
//! in memory and in `<state dir>/coordinators.json`, so that a shim that
//! restarts while its home region is down still knows whom else to call;
//! and the order in which a session tries coordinators.
//!
//! It owns the list's file format and the ordering rule. It must not
//! connect to anyone (the session does) and holds nothing secret.
//!
//! # `coordinators.json`
//!
//! ```json
//! {
//!   "format": "tern-coordinators/v1",
//!   "epoch": 7,
//!   "saved_at_ms": 1767225600000,
//!   "coordinators": [
//!     {"node_id": 1, "region": "eu", "address": "127.0.0.2:7443"}
//!   ]
//! }
//! ```

use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::config::normalize_address;
use crate::persist::write_atomic;

/// The value of `format` in `coordinators.json`.
pub const COORDINATORS_FILE_FORMAT: &str = "tern-coordinators/v1";

/// The cached list's file name in the state directory.
pub const COORDINATORS_FILE: &str = "coordinators.json";

/// One coordinator, as `ListCoordinators` names it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CoordinatorInfo {
    /// Its Raft node id.
    pub node_id: u64,
    /// Its region (empty for a witness).
    pub region: String,
    /// Its gRPC address, `host:port`.
    pub address: String,
}

/// The cached list and the epoch it was read at.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CoordinatorCache {
    /// Always [`COORDINATORS_FILE_FORMAT`].
    pub format: String,
    /// The epoch `ListCoordinators` answered with.
    pub epoch: u64,
    /// When it was saved, ms since the Unix epoch.
    pub saved_at_ms: u64,
    /// The coordinators.
    pub coordinators: Vec<CoordinatorInfo>,
}

impl CoordinatorCache {
    /// A cache of `coordinators` read at `epoch`.
    pub fn new(epoch: u64, saved_at_ms: u64, coordinators: Vec<CoordinatorInfo>) -> Self {
        CoordinatorCache {
            format: COORDINATORS_FILE_FORMAT.to_string(),
            epoch,
            saved_at_ms,
            coordinators,
        }
    }
}

/// Reads `path`; `Ok(None)` when it does not exist. A file that does not
/// parse, or has another format, is an error (the caller logs it and goes
/// on with the configured addresses).
pub fn load_cache(path: &Path) -> Result<Option<CoordinatorCache>, String> {
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(format!("reading {}: {e}", path.display())),
    };
    let cache: CoordinatorCache =
        serde_json::from_str(&text).map_err(|e| format!("{}: {e}", path.display()))?;
    if cache.format != COORDINATORS_FILE_FORMAT {
        return Err(format!(
            "{}: format {:?}, expected {COORDINATORS_FILE_FORMAT:?}",
            path.display(),
            cache.format
        ));
    }
    Ok(Some(cache))
}

/// Writes `cache` to `path` atomically (mode 0644: nothing secret).
pub fn save_cache(path: &Path, cache: &CoordinatorCache) -> std::io::Result<()> {
    let mut json = serde_json::to_string_pretty(cache).map_err(std::io::Error::other)?;
    json.push('\n');
    write_atomic(path, json.as_bytes(), 0o644)
}

/// The addresses to try, in order: every configured address and every
/// cached one, once each (normalized to `host:port`), ranked home region
/// first, then addresses of unknown region (configured, not in the cache),
/// then other regions; within a rank, configured addresses keep their
/// order and come before cached ones, and cached ones follow region then
/// node id. Unparseable cached addresses are skipped.
pub fn candidates(
    configured: &[String],
    cached: &[CoordinatorInfo],
    home_region: &str,
) -> Vec<String> {
    candidates_spread(configured, cached, home_region, 0)
}

/// Like [`candidates`], with the addresses known to be in other regions
/// rotated by `spread`, so that shims with different seeds that
/// lost the same home coordinator fall back to different coordinators
/// instead of all reconnecting to the same one.
pub fn candidates_spread(
    configured: &[String],
    cached: &[CoordinatorInfo],
    home_region: &str,
    spread: u64,
) -> Vec<String> {
    let mut cached_sorted: Vec<&CoordinatorInfo> = cached.iter().collect();
    cached_sorted.sort_by(|a, b| (&a.region, a.node_id).cmp(&(&b.region, b.node_id)));
    let region_of = |addr: &str| {
        cached
            .iter()
            .find(|c| normalize_address(&c.address).is_ok_and(|a| a == addr))
            .map(|c| c.region.as_str())
    };
    let mut all: Vec<(u8, String)> = Vec::new();
    let push = |addr: String, all: &mut Vec<(u8, String)>| {
        if all.iter().any(|(_, a)| *a == addr) {
            return;
        }
        let rank = match region_of(&addr) {
            Some(r) if r == home_region => 0,
            None => 1,
            Some(_) => 2,
        };
        all.push((rank, addr));
    };
    for a in configured {
        if let Ok(a) = normalize_address(a) {
            push(a, &mut all);
        }
    }
    for c in cached_sorted {
        if let Ok(a) = normalize_address(&c.address) {
            push(a, &mut all);
        }
    }
    all.sort_by_key(|(rank, _)| *rank);
    // Only the coordinators known to be in other regions are spread: those
    // of unknown region (configured ones before the first list arrived)
    // keep their configured order, which puts the home region first.
    let start = all.iter().position(|(r, _)| *r == 2);
    let end = all.iter().rposition(|(r, _)| *r == 2);
    if let (Some(start), Some(end)) = (start, end) {
        let group = &mut all[start..=end];
        let n = group.len() as u64;
        group.rotate_left((spread % n) as usize);
    }
    all.into_iter().map(|(_, a)| a).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    // Property: spreading keeps the home region's coordinators first and
    // the same set of addresses, and different spreads send shims that
    // lost their home to different first fallbacks.
    #[test]
    fn spread_rotates_fallbacks_only() {
        let cached = vec![
            info(1, "eu", "127.0.0.1:1"),
            info(2, "us", "127.0.0.2:1"),
            info(3, "ap", "127.0.0.3:1"),
            info(4, "sa", "127.0.0.4:1"),
        ];
        let plain = candidates(&[], &cached, "eu");
        let mut firsts = std::collections::BTreeSet::new();
        for spread in 0..6u64 {
            let l = candidates_spread(&[], &cached, "eu", spread);
            assert_eq!(l[0], "127.0.0.1:1", "home first (spread {spread})");
            let mut a = l.clone();
            let mut b = plain.clone();
            a.sort();
            b.sort();
            assert_eq!(a, b, "same addresses (spread {spread})");
            firsts.insert(l[1].clone());
        }
        assert_eq!(
            firsts.len(),
            3,
            "every other region is someone's first fallback"
        );
    }

    // Property: before any coordinator list is cached (first start), the
    // configured order is kept whatever the spread, so a shim whose home
    // coordinator is configured first connects to it first (it used to be
    // rotated away to another region's coordinator).
    #[test]
    fn spread_keeps_the_configured_order_without_a_cache() {
        let configured = vec![
            "127.0.0.3:1".to_string(),
            "127.0.0.1:1".to_string(),
            "127.0.0.2:1".to_string(),
        ];
        for spread in 0..6u64 {
            let l = candidates_spread(&configured, &[], "ap", spread);
            assert_eq!(l, configured, "spread {spread}");
        }
    }

    fn info(node_id: u64, region: &str, address: &str) -> CoordinatorInfo {
        CoordinatorInfo {
            node_id,
            region: region.into(),
            address: address.into(),
        }
    }

    // Property: home-region coordinators come first, then unknown ones,
    // then other regions; configured before cached within a rank; no
    // address twice (after normalization).
    #[test]
    fn order_home_first() {
        let cached = vec![
            info(3, "us", "10.0.0.3:7"),
            info(1, "eu", "10.0.0.1:7"),
            info(2, "ap", "10.0.0.2:7"),
            info(4, "eu", "10.0.0.4:7"),
        ];
        let configured = vec![
            "https://10.0.0.3:7".to_string(),
            "10.0.0.9:7".to_string(),
            "10.0.0.4:7".to_string(),
        ];
        assert_eq!(
            candidates(&configured, &cached, "eu"),
            vec![
                "10.0.0.4:7",
                "10.0.0.1:7",
                "10.0.0.9:7",
                "10.0.0.3:7",
                "10.0.0.2:7"
            ]
        );
        assert_eq!(
            candidates(&configured, &[], "eu"),
            vec!["10.0.0.3:7", "10.0.0.9:7", "10.0.0.4:7"]
        );
    }

    // Property: the cache file round-trips, a missing file is None, and a
    // foreign format is refused.
    #[test]
    fn cache_file_round_trip() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join(COORDINATORS_FILE);
        assert_eq!(load_cache(&path), Ok(None));
        let cache = CoordinatorCache::new(7, 1, vec![info(1, "eu", "10.0.0.1:7")]);
        save_cache(&path, &cache).expect("save");
        assert_eq!(load_cache(&path), Ok(Some(cache)));
        std::fs::write(
            &path,
            r#"{"format":"x","epoch":1,"saved_at_ms":1,"coordinators":[]}"#,
        )
        .expect("write");
        assert!(load_cache(&path).is_err());
    }
}
