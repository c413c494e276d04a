//! Agents and the standby plan (pure).
//!
//! An agent is enrolled in its home region and identified by the SHA-256
//! fingerprint of its leaf certificate. The registry keeps, for every agent,
//! what a healthy region needs to accept it with its identity (ADR-051
//! handover semantics): its leaf fingerprint, tenant, configuration
//! reference, capabilities, allowed regions and leaf expiry. The planner
//! keeps, ahead of time, a standby region for every agent:
//!
//! - healthy, not the agent's home, allowed for the agent (data residency);
//! - already holding the agent's configuration (same content hash);
//! - with capacity left (per-region capacity for agents from elsewhere);
//! - following the regions' priority order (lower first), then the least
//!   loaded;
//! - stable: an agent keeps its standby as long as that standby stays valid,
//!   so when one more region fails only the agents that must move, move.
//!
//! A preflight rejects, and reports, agents that cannot be handed over: no
//! `AcceptsOpAMPConnectionSettings` capability (matched by name, ignoring
//! case and punctuation: Ampora's docs spell it several ways), or a leaf
//! that expires within the token TTL.
//!
//! The planner is a pure function of its inputs; the leader runs it and
//! commits the differences (`Command::SetStandbys`).

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

use crate::ids::{RegionName, Thumbprint};
use crate::time::Millis;

/// The OpAMP capability an agent needs to be redirected.
pub const REDIRECT_CAPABILITY: &str = "AcceptsOpAMPConnectionSettings";

/// Normalizes a capability name for matching: lowercase ASCII letters and
/// digits only (`AcceptsOpAMPConnectionSettings`,
/// `accepts_opamp_connection_settings` and `Accepts-OpAMP-Connection-Settings`
/// all match).
pub fn normalize_capability(name: &str) -> String {
    name.chars()
        .filter(|c| c.is_ascii_alphanumeric())
        .map(|c| c.to_ascii_lowercase())
        .collect()
}

/// A configuration as Ampora identifies it: id, published version and
/// content hash. Only the content hash decides whether a region "has" it.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct ConfigRef {
    pub id: String,
    pub version: u64,
    pub content_hash: String,
}

/// What a shim registers for its agent.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AgentRegistration {
    /// The agent's id in its home region.
    pub agent_id: String,
    /// SHA-256 fingerprint of the agent's current leaf certificate.
    pub fingerprint: Thumbprint,
    pub home: RegionName,
    pub tenant: String,
    pub config: ConfigRef,
    /// OpAMP capabilities, by name.
    pub capabilities: BTreeSet<String>,
    /// Regions the agent may be served from (data residency); None: any.
    pub allowed_regions: Option<BTreeSet<RegionName>>,
    /// Expiry of the leaf certificate (Unix ms).
    pub leaf_not_after: Millis,
}

impl AgentRegistration {
    /// Checks what can be checked without the state.
    pub fn validate(&self) -> Result<(), String> {
        if self.agent_id.is_empty() || self.agent_id.len() > 128 {
            return Err("agent_id must be 1-128 bytes".into());
        }
        if self.tenant.len() > 128 {
            return Err("tenant must be at most 128 bytes".into());
        }
        if self.config.content_hash.is_empty() || self.config.content_hash.len() > 128 {
            return Err("config.content_hash must be 1-128 bytes".into());
        }
        if self.capabilities.len() > 64 {
            return Err("at most 64 capabilities".into());
        }
        Ok(())
    }

    /// Can this agent be redirected at all?
    pub fn redirectable(&self) -> bool {
        let want = normalize_capability(REDIRECT_CAPABILITY);
        self.capabilities
            .iter()
            .any(|c| normalize_capability(c) == want)
    }
}

/// Why the preflight or the planner could not give an agent a standby.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(tag = "reason", rename_all = "snake_case")]
pub enum NoStandby {
    /// The agent lacks `AcceptsOpAMPConnectionSettings`.
    NotRedirectable,
    /// The leaf expires within the token TTL.
    LeafExpiresSoon { leaf_not_after: Millis },
    /// No region is healthy, allowed, holds the configuration and has
    /// capacity.
    NoEligibleRegion,
}

/// What the planner knows of one region.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct RegionPlanInfo {
    /// Healthy enough to accept agents (committed state Healthy).
    pub healthy: bool,
    /// Agents from other regions it may take as standby; None: unlimited.
    pub capacity: Option<u64>,
    /// Lower goes first.
    pub priority: u32,
    /// Content hashes of the configurations it holds.
    pub configs: BTreeSet<String>,
}

/// The planner's answer: a standby (or the reason there is none) per agent.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Plan {
    pub standby: BTreeMap<String, Result<RegionName, NoStandby>>,
    /// Standby agents per region.
    pub load: BTreeMap<RegionName, u64>,
}

/// Preflight of one agent at time `now` for tokens of `token_ttl_ms`.
pub fn preflight(a: &AgentRegistration, now: Millis, token_ttl_ms: u64) -> Result<(), NoStandby> {
    if !a.redirectable() {
        return Err(NoStandby::NotRedirectable);
    }
    if a.leaf_not_after <= now.plus(token_ttl_ms) {
        return Err(NoStandby::LeafExpiresSoon {
            leaf_not_after: a.leaf_not_after,
        });
    }
    Ok(())
}

fn eligible(a: &AgentRegistration, region: &RegionName, info: &RegionPlanInfo) -> bool {
    region != &a.home
        && info.healthy
        && a.allowed_regions
            .as_ref()
            .is_none_or(|allowed| allowed.contains(region))
        && info.configs.contains(&a.config.content_hash)
}

/// Computes the standby plan.
///
/// `agents` are the registered agents (in id order), `current` their
/// current standby, `frozen` the agents whose standby must not change (their
/// home is failed over: their directive was fixed by the decision).
pub fn plan<'a, I>(
    agents: I,
    current: &BTreeMap<String, RegionName>,
    frozen: &BTreeSet<String>,
    regions: &BTreeMap<RegionName, RegionPlanInfo>,
    now: Millis,
    token_ttl_ms: u64,
) -> Plan
where
    I: IntoIterator<Item = &'a AgentRegistration> + Clone,
{
    let mut load: BTreeMap<RegionName, u64> = regions.keys().map(|r| (r.clone(), 0)).collect();
    let mut out: BTreeMap<String, Result<RegionName, NoStandby>> = BTreeMap::new();
    let has_room = |load: &BTreeMap<RegionName, u64>, r: &RegionName| -> bool {
        match regions.get(r).and_then(|i| i.capacity) {
            Some(cap) => load.get(r).copied().unwrap_or(0) < cap,
            None => true,
        }
    };
    // Pass 1: frozen agents keep what they have, and so do agents whose
    // standby is still valid (stability), capacity permitting.
    for a in agents.clone() {
        if let Some(cur) = current.get(&a.agent_id) {
            let keep = frozen.contains(&a.agent_id)
                || (preflight(a, now, token_ttl_ms).is_ok()
                    && regions.get(cur).is_some_and(|info| eligible(a, cur, info))
                    && has_room(&load, cur));
            if keep {
                *load.entry(cur.clone()).or_default() += 1;
                out.insert(a.agent_id.clone(), Ok(cur.clone()));
            }
        }
    }
    // Pass 2: everyone else, in id order, to the best eligible region.
    for a in agents {
        if out.contains_key(&a.agent_id) {
            continue;
        }
        if frozen.contains(&a.agent_id) {
            out.insert(a.agent_id.clone(), Err(NoStandby::NoEligibleRegion));
            continue;
        }
        if let Err(e) = preflight(a, now, token_ttl_ms) {
            out.insert(a.agent_id.clone(), Err(e));
            continue;
        }
        let best = regions
            .iter()
            .filter(|(r, info)| eligible(a, r, info) && has_room(&load, r))
            .min_by_key(|(r, info)| {
                (
                    info.priority,
                    load.get(*r).copied().unwrap_or(0),
                    (*r).clone(),
                )
            })
            .map(|(r, _)| r.clone());
        match best {
            Some(r) => {
                *load.entry(r.clone()).or_default() += 1;
                out.insert(a.agent_id.clone(), Ok(r));
            }
            None => {
                out.insert(a.agent_id.clone(), Err(NoStandby::NoEligibleRegion));
            }
        }
    }
    Plan { standby: out, load }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn r(s: &str) -> RegionName {
        s.parse().expect("region")
    }

    fn agent(id: &str, home: &str, hash: &str) -> AgentRegistration {
        AgentRegistration {
            agent_id: id.into(),
            fingerprint: Thumbprint([id.len() as u8; 32]),
            home: r(home),
            tenant: "t".into(),
            config: ConfigRef {
                id: "c".into(),
                version: 1,
                content_hash: hash.into(),
            },
            capabilities: ["accepts_opamp_connection_settings".to_string()].into(),
            allowed_regions: None,
            leaf_not_after: Millis(10_000_000),
        }
    }

    fn info(
        healthy: bool,
        capacity: Option<u64>,
        priority: u32,
        hashes: &[&str],
    ) -> RegionPlanInfo {
        RegionPlanInfo {
            healthy,
            capacity,
            priority,
            configs: hashes.iter().map(|h| h.to_string()).collect(),
        }
    }

    fn three(cap: Option<u64>) -> BTreeMap<RegionName, RegionPlanInfo> {
        [
            (r("eu"), info(true, cap, 0, &["h1", "h2"])),
            (r("us"), info(true, cap, 1, &["h1"])),
            (r("ap"), info(true, cap, 2, &["h1", "h2"])),
        ]
        .into()
    }

    // Property: capability names match whatever way Ampora's docs spell them.
    #[test]
    fn capability_matching_ignores_case_and_punctuation() {
        for spelling in [
            "AcceptsOpAMPConnectionSettings",
            "accepts_opamp_connection_settings",
            "Accepts-OpAMP-Connection-Settings",
        ] {
            let mut a = agent("a", "eu", "h1");
            a.capabilities = [spelling.to_string()].into();
            assert!(a.redirectable(), "{spelling}");
        }
        let mut a = agent("a", "eu", "h1");
        a.capabilities = ["ReportsStatus".to_string()].into();
        assert!(!a.redirectable());
    }

    // Property: the preflight rejects agents without the redirect capability
    // and agents whose leaf expires within the token TTL.
    #[test]
    fn preflight_rejects_and_says_why() {
        let mut a = agent("a", "eu", "h1");
        a.capabilities.clear();
        assert_eq!(
            preflight(&a, Millis(0), 3_600_000),
            Err(NoStandby::NotRedirectable)
        );
        let mut b = agent("b", "eu", "h1");
        b.leaf_not_after = Millis(3_000_000);
        assert_eq!(
            preflight(&b, Millis(0), 3_600_000),
            Err(NoStandby::LeafExpiresSoon {
                leaf_not_after: Millis(3_000_000)
            })
        );
        assert_eq!(
            preflight(&agent("c", "eu", "h1"), Millis(0), 3_600_000),
            Ok(())
        );
    }

    // Property: placement respects priority, configuration presence,
    // residency and never picks the home region.
    #[test]
    fn placement_respects_priority_config_and_residency() {
        let regions = three(None);
        let a = agent("a", "eu", "h1"); // us has priority 1 < ap 2
        let b = agent("b", "eu", "h2"); // only ap (and eu, home) hold h2
        let mut c = agent("c", "us", "h1");
        c.allowed_regions = Some([r("us"), r("ap")].into()); // not eu
        let agents = vec![a, b, c];
        let p = plan(
            &agents,
            &BTreeMap::new(),
            &BTreeSet::new(),
            &regions,
            Millis(0),
            1000,
        );
        assert_eq!(p.standby["a"], Ok(r("us")));
        assert_eq!(p.standby["b"], Ok(r("ap")));
        assert_eq!(p.standby["c"], Ok(r("ap")));
    }

    // Property: an agent whose allowed regions are all unavailable gets no
    // standby, with the reason.
    #[test]
    fn agent_with_no_eligible_region_is_reported() {
        let mut regions = three(None);
        regions.get_mut(&r("ap")).expect("ap").healthy = false;
        let mut a = agent("a", "eu", "h1");
        a.allowed_regions = Some([r("eu"), r("ap")].into());
        let p = plan(
            &[a],
            &BTreeMap::new(),
            &BTreeSet::new(),
            &regions,
            Millis(0),
            1000,
        );
        assert_eq!(p.standby["a"], Err(NoStandby::NoEligibleRegion));
    }

    // Property: capacity is never exceeded; the overflow goes to the next
    // region in priority order.
    #[test]
    fn capacity_spills_over_in_priority_order() {
        let regions = three(Some(2));
        let agents: Vec<_> = (0..4)
            .map(|i| agent(&format!("a{i}"), "eu", "h1"))
            .collect();
        let p = plan(
            &agents,
            &BTreeMap::new(),
            &BTreeSet::new(),
            &regions,
            Millis(0),
            1000,
        );
        assert_eq!(p.load[&r("us")], 2);
        assert_eq!(p.load[&r("ap")], 2);
    }

    fn arb_case() -> impl Strategy<
        Value = (
            Vec<AgentRegistration>,
            BTreeMap<RegionName, RegionPlanInfo>,
            u8,
        ),
    > {
        let names = ["eu", "us", "ap", "sa", "af"];
        let regions = proptest::collection::vec(
            (
                any::<bool>(),
                proptest::option::of(0u64..6),
                0u32..3,
                any::<bool>(),
            ),
            5,
        )
        .prop_map(move |v| {
            v.into_iter()
                .enumerate()
                .map(|(i, (healthy, cap, prio, has_h2))| {
                    let hashes: &[&str] = if has_h2 { &["h1", "h2"] } else { &["h1"] };
                    (r(names[i]), info(healthy, cap, prio, hashes))
                })
                .collect::<BTreeMap<_, _>>()
        });
        let agents = proptest::collection::vec(
            (
                0usize..5,
                any::<bool>(),
                proptest::option::of(proptest::collection::btree_set(0usize..5, 1..4)),
            ),
            0..30,
        )
        .prop_map(move |v| {
            v.into_iter()
                .enumerate()
                .map(|(i, (home, h2, allowed))| {
                    let mut a = agent(
                        &format!("a{i:02}"),
                        names[home],
                        if h2 { "h2" } else { "h1" },
                    );
                    a.allowed_regions =
                        allowed.map(|s| s.into_iter().map(|x| r(names[x])).collect());
                    a
                })
                .collect::<Vec<_>>()
        });
        (agents, regions, 0u8..5)
    }

    proptest! {
        // Property: every assignment is eligible (healthy, not home, allowed,
        // holds the configuration), capacity is respected, and when one more
        // region fails, only the agents whose standby was that region change
        // standby (stability).
        #[test]
        fn plans_are_valid_and_stable((agents, mut regions, fail) in arb_case()) {
            let p1 = plan(&agents, &BTreeMap::new(), &BTreeSet::new(), &regions, Millis(0), 1000);
            let check = |p: &Plan, regions: &BTreeMap<RegionName, RegionPlanInfo>| -> Result<(), TestCaseError> {
                for a in &agents {
                    if let Ok(s) = &p.standby[&a.agent_id] {
                        prop_assert!(eligible(a, s, &regions[s]), "{} -> {} not eligible", a.agent_id, s);
                    }
                }
                for (r, info) in regions {
                    if let Some(cap) = info.capacity {
                        prop_assert!(p.load.get(r).copied().unwrap_or(0) <= cap);
                    }
                }
                Ok(())
            };
            check(&p1, &regions)?;
            let current: BTreeMap<String, RegionName> =
                p1.standby.iter().filter_map(|(k, v)| v.as_ref().ok().map(|r| (k.clone(), r.clone()))).collect();
            let failed = regions.keys().nth(fail as usize).cloned().expect("region");
            regions.get_mut(&failed).expect("failed").healthy = false;
            let p2 = plan(&agents, &current, &BTreeSet::new(), &regions, Millis(0), 1000);
            check(&p2, &regions)?;
            for (id, before) in &current {
                if before != &failed {
                    prop_assert_eq!(p2.standby[id].as_ref().ok(), Some(before), "agent {} moved without need", id);
                }
            }
        }
    }
}
