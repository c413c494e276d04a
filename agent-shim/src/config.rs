//! The session's configuration: who the agent is, what it registers, how it
//! authenticates, whom it calls, where it keeps state, and the timing of
//! reconnects and redirects. A plain, validated value: the binary builds it
//! from flags, embedders and the fleet simulator build it in code.
//!
//! It owns validation (`ShimConfig::validate`, naming the field at fault)
//! and the defaults ([`Timing::default`]). It must not read files (the
//! session does, through [`LeafSource`] and [`PemSource`]) and its `Debug`
//! never prints key material (the leaf and CA sources redact it).

use std::path::PathBuf;
use std::time::Duration;

use crate::backoff::{Backoff, BackoffError, RateLimit};
use crate::identity::{LeafSource, PemSource};

/// A configuration as Ampora identifies it: the agent's assigned
/// configuration must exist on a target (same version and content hash)
/// before the agent can be handed over to it.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ConfigRef {
    /// The configuration's id.
    pub id: String,
    /// Its published version.
    pub version: u64,
    /// Its content hash (required).
    pub content_hash: String,
}

/// Timing of the session. All durations in milliseconds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Timing {
    /// Reconnect backoff: ceiling of the first attempt's random delay.
    /// Default 500. After a broken stream the first reconnect waits a random
    /// `[0, base]`, so shims that lost the same coordinator spread out.
    pub reconnect_base_ms: u64,
    /// Reconnect backoff: the largest ceiling. Default 30 000.
    pub reconnect_cap_ms: u64,
    /// Retry of a failed directive (hook failed, not verified attached):
    /// ceiling of the first retry's delay. Default 1 000.
    pub retry_base_ms: u64,
    /// The largest retry ceiling. Default 60 000.
    pub retry_cap_ms: u64,
    /// A directive is applied after a random delay uniform in
    /// `[0, apply_jitter_ms]`, so the shims of a lost region do not all
    /// reconnect their agents at once. Default 2 000.
    pub apply_jitter_ms: u64,
    /// Redirects to one target region, per process: token bucket (burst,
    /// tokens per period). Default burst 20, 20 per 1 000 ms. In fleet mode
    /// one limiter is shared by every simulated agent.
    pub rate_limit: RateLimit,
    /// TCP + TLS connect timeout to a coordinator. Default 5 000.
    pub connect_timeout_ms: u64,
    /// Timeout of ListCoordinators, Report and of opening Watch. Default
    /// 10 000.
    pub rpc_timeout_ms: u64,
    /// Timeout of Register (batched into Raft by the coordinator). Default
    /// 15 000.
    pub register_timeout_ms: u64,
    /// How long the hook may take before the attempt counts as failed.
    /// Default 120 000 (a command hook also has its own timeout).
    pub hook_timeout_ms: u64,
    /// How long, after the hook ran, the agent has to show up attached at
    /// the target before the attempt counts as failed. Default 60 000.
    pub verify_deadline_ms: u64,
    /// Interval between attachment checks. Default 500.
    pub verify_poll_ms: u64,
    /// Interval between reads of the leaf files (renewal detection).
    /// Default 5 000.
    pub leaf_poll_ms: u64,
    /// HTTP/2 keep-alive ping interval on the coordinator connection; a
    /// silent coordinator is detected after interval + timeout. Default
    /// 10 000.
    pub keepalive_interval_ms: u64,
    /// HTTP/2 keep-alive timeout. Default 20 000.
    pub keepalive_timeout_ms: u64,
    /// Timeout of one HTTPS request to a region. Default 5 000.
    pub region_request_timeout_ms: u64,
}

impl Default for Timing {
    fn default() -> Self {
        Timing {
            reconnect_base_ms: 500,
            reconnect_cap_ms: 30_000,
            retry_base_ms: 1_000,
            retry_cap_ms: 60_000,
            apply_jitter_ms: 2_000,
            rate_limit: default_rate_limit(),
            connect_timeout_ms: 5_000,
            rpc_timeout_ms: 10_000,
            register_timeout_ms: 15_000,
            hook_timeout_ms: 120_000,
            verify_deadline_ms: 60_000,
            verify_poll_ms: 500,
            leaf_poll_ms: 5_000,
            keepalive_interval_ms: 10_000,
            keepalive_timeout_ms: 20_000,
            region_request_timeout_ms: 5_000,
        }
    }
}

/// Burst 20, 20 per second.
fn default_rate_limit() -> RateLimit {
    crate::backoff::DEFAULT_RATE_LIMIT
}

impl Timing {
    pub(crate) fn ms(v: u64) -> Duration {
        Duration::from_millis(v)
    }

    fn validate(&self) -> Result<(), ConfigError> {
        let positive = [
            ("connect_timeout_ms", self.connect_timeout_ms),
            ("rpc_timeout_ms", self.rpc_timeout_ms),
            ("register_timeout_ms", self.register_timeout_ms),
            ("hook_timeout_ms", self.hook_timeout_ms),
            ("verify_deadline_ms", self.verify_deadline_ms),
            ("verify_poll_ms", self.verify_poll_ms),
            ("leaf_poll_ms", self.leaf_poll_ms),
            ("keepalive_interval_ms", self.keepalive_interval_ms),
            ("keepalive_timeout_ms", self.keepalive_timeout_ms),
            ("region_request_timeout_ms", self.region_request_timeout_ms),
        ];
        for (field, v) in positive {
            if v == 0 {
                return Err(ConfigError::new(field, "must be at least 1 ms"));
            }
        }
        let backoff = |field: &'static str, e: BackoffError| ConfigError::new(field, e.to_string());
        Backoff::new(self.reconnect_base_ms, self.reconnect_cap_ms, 0)
            .map_err(|e| backoff("reconnect_base_ms/reconnect_cap_ms", e))?;
        Backoff::new(self.retry_base_ms, self.retry_cap_ms, 0)
            .map_err(|e| backoff("retry_base_ms/retry_cap_ms", e))?;
        Ok(())
    }
}

/// Everything a session needs. `Debug` shows no key material.
#[derive(Debug, Clone)]
pub struct ShimConfig {
    /// The agent's id as the coordinators and regions know it:
    /// 1-128 characters out of `A-Z a-z 0-9 . _ - : @`.
    pub agent_id: String,
    /// The region the agent is enrolled in.
    pub home_region: String,
    /// The agent's tenant in its home region.
    pub tenant: String,
    /// The agent's assigned configuration.
    pub config: ConfigRef,
    /// OpAMP capabilities the agent advertises (the coordinators match
    /// `AcceptsOpAMPConnectionSettings` by name).
    pub capabilities: Vec<String>,
    /// Regions the agent may be served from; empty: any.
    pub allowed_regions: Vec<String>,
    /// The agent's leaf certificate and key (the shim authenticates as the
    /// agent).
    pub leaf: LeafSource,
    /// CA bundle (PEM) that coordinators' server certificates chain to.
    pub coordinator_ca: PemSource,
    /// CA bundle (PEM) that regions' HTTPS server certificates chain to.
    pub region_ca: PemSource,
    /// Coordinator gRPC addresses, `host:port` (or `https://host:port`),
    /// the home region's first. Tried in order, then the cached list.
    pub coordinators: Vec<String>,
    /// Where the tracker state (`tracker.json`) and the cached coordinator
    /// list (`coordinators.json`) are kept; `None`: memory only (fencing
    /// and the fallback list do not survive a restart).
    pub state_dir: Option<PathBuf>,
    /// Timing of reconnects, redirects and checks.
    pub timing: Timing,
    /// Seed of every random choice (jitter, backoff).
    pub seed: u64,
}

/// A configuration value that is not acceptable.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid {field}: {problem}")]
pub struct ConfigError {
    /// The field (or flag) at fault.
    pub field: &'static str,
    /// What is wrong with it.
    pub problem: String,
}

impl ConfigError {
    pub(crate) fn new(field: &'static str, problem: impl Into<String>) -> Self {
        ConfigError {
            field,
            problem: problem.into(),
        }
    }
}

impl ShimConfig {
    /// Checks every field and the rules between them.
    pub fn validate(&self) -> Result<(), ConfigError> {
        validate_agent_id(&self.agent_id)?;
        if self.home_region.trim().is_empty() {
            return Err(ConfigError::new("home_region", "must not be empty"));
        }
        if self.config.content_hash.trim().is_empty() {
            return Err(ConfigError::new(
                "config.content_hash",
                "must not be empty (a target must hold the same configuration)",
            ));
        }
        if self.coordinators.is_empty() {
            return Err(ConfigError::new(
                "coordinators",
                "at least one coordinator address is needed",
            ));
        }
        for a in &self.coordinators {
            normalize_address(a).map_err(|p| ConfigError::new("coordinators", p))?;
        }
        if !self.allowed_regions.is_empty()
            && !self.allowed_regions.iter().any(|r| r == &self.home_region)
        {
            return Err(ConfigError::new(
                "allowed_regions",
                format!("does not include the home region {:?}", self.home_region),
            ));
        }
        self.timing.validate()
    }
}

/// Checks an agent id: 1-128 characters out of `A-Z a-z 0-9 . _ - : @`
/// (it travels in URL paths and file names).
pub fn validate_agent_id(id: &str) -> Result<(), ConfigError> {
    if id.is_empty() || id.len() > 128 {
        return Err(ConfigError::new("agent_id", "must be 1-128 characters"));
    }
    if !id
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-' | b':' | b'@'))
    {
        return Err(ConfigError::new(
            "agent_id",
            format!("{id:?} holds a character outside A-Z a-z 0-9 . _ - : @"),
        ));
    }
    Ok(())
}

/// A coordinator address as `host:port`: accepts `host:port` and
/// `https://host:port[/]`; refuses plain `http://` (the agent API is mTLS
/// only) and anything without a port.
pub fn normalize_address(address: &str) -> Result<String, String> {
    let a = address.trim();
    if a.starts_with("http://") {
        return Err(format!(
            "{address:?}: plain http is refused, coordinators speak mTLS"
        ));
    }
    let a = a
        .strip_prefix("https://")
        .unwrap_or(a)
        .trim_end_matches('/');
    let Some((host, port)) = a.rsplit_once(':') else {
        return Err(format!("{address:?} is not host:port"));
    };
    if host.is_empty() || host.contains('/') || host.contains(char::is_whitespace) {
        return Err(format!("{address:?} has no valid host"));
    }
    match port.parse::<u16>() {
        Ok(p) if p > 0 => Ok(a.to_string()),
        _ => Err(format!("{address:?} has no valid port")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> ShimConfig {
        ShimConfig {
            agent_id: "agent-1".into(),
            home_region: "eu".into(),
            tenant: "t".into(),
            config: ConfigRef {
                id: "c".into(),
                version: 1,
                content_hash: "h".into(),
            },
            capabilities: vec![],
            allowed_regions: vec![],
            leaf: LeafSource::Files {
                cert: "/x/leaf.pem".into(),
                key: "/x/leaf.key".into(),
            },
            coordinator_ca: PemSource::Pem("-----BEGIN CERTIFICATE-----".into()),
            region_ca: PemSource::File("/x/ca.pem".into()),
            coordinators: vec!["127.0.0.1:7000".into()],
            state_dir: None,
            timing: Timing::default(),
            seed: 1,
        }
    }

    // Property: a sound configuration passes, and each broken field is
    // refused with its name.
    #[test]
    fn validation_names_the_field() {
        assert_eq!(config().validate(), Ok(()));
        type Edit = Box<dyn Fn(&mut ShimConfig)>;
        let cases: Vec<(&str, Edit)> = vec![
            ("agent_id", Box::new(|c| c.agent_id = "a b".into())),
            ("agent_id", Box::new(|c| c.agent_id = String::new())),
            ("home_region", Box::new(|c| c.home_region = " ".into())),
            (
                "config.content_hash",
                Box::new(|c| c.config.content_hash = String::new()),
            ),
            ("coordinators", Box::new(|c| c.coordinators.clear())),
            (
                "coordinators",
                Box::new(|c| c.coordinators = vec!["http://h:1".into()]),
            ),
            (
                "coordinators",
                Box::new(|c| c.coordinators = vec!["h".into()]),
            ),
            (
                "allowed_regions",
                Box::new(|c| c.allowed_regions = vec!["us".into()]),
            ),
            ("verify_poll_ms", Box::new(|c| c.timing.verify_poll_ms = 0)),
            (
                "reconnect_base_ms/reconnect_cap_ms",
                Box::new(|c| c.timing.reconnect_cap_ms = 1),
            ),
        ];
        for (field, edit) in cases {
            let mut c = config();
            edit(&mut c);
            assert_eq!(c.validate().map_err(|e| e.field), Err(field));
        }
    }

    // Property: addresses are normalized to host:port, with or without an
    // https scheme, IPv6 included.
    #[test]
    fn addresses() {
        assert_eq!(
            normalize_address("127.0.0.2:7000"),
            Ok("127.0.0.2:7000".into())
        );
        assert_eq!(
            normalize_address("https://eu.example:443/"),
            Ok("eu.example:443".into())
        );
        assert_eq!(normalize_address("[::1]:5"), Ok("[::1]:5".into()));
        assert!(normalize_address("eu.example").is_err());
        assert!(normalize_address("eu.example:0").is_err());
        assert!(normalize_address(":80").is_err());
    }

    // Property: Debug of a configuration with in-memory CA text does not
    // print the PEM.
    #[test]
    fn debug_has_no_pem() {
        let text = format!("{:?}", config());
        assert!(!text.contains("BEGIN"), "{text}");
    }
}
