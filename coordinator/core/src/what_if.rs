//! "What if this region failed now?": the dry run behind `tern plan REGION`.
//!
//! It runs the same planner the leader runs (`agents::plan`), on the same
//! inputs the leader uses (`ReplicatedState::plan_regions`, the current
//! standbys, the agents not at home frozen), with one change: the region
//! is marked as unable to take standbys. Agents of other regions whose
//! standby was that region are re-planned too, so capacity is counted as
//! it would be after the failure. It then says, for every agent homed in
//! the region, where the planner would send it (or why the preflight or
//! the planner rejects it), whether a staged authorization already covers
//! that target, and where a decision committed right now would send it.
//!
//! A pure read: it takes the state by shared reference and writes nothing.
//! Time comes in as an argument.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

use crate::agents::NoStandby;
use crate::command::RegionMode;
use crate::health::RegionState;
use crate::ids::RegionName;
use crate::state::{Placement, ReplicatedState, StagedRef};
use crate::time::Millis;

/// One agent of the region, in the dry run.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WhatIfAgent {
    pub agent_id: String,
    /// Where the agent is now, as far as Tern's decisions go.
    pub placement: Placement,
    /// Its committed standby.
    pub current_standby: Option<RegionName>,
    /// The planner's standby if the region failed now, or why it has none.
    /// For an agent already away from home (frozen) this is the standby
    /// its directive was fixed with.
    pub if_failed: Result<RegionName, NoStandby>,
    /// The staged authorization that covers the agent, if any.
    pub staged: Option<StagedRef>,
    /// `staged` is for the `if_failed` region and still valid at `at`.
    pub covered: bool,
    /// Where a failover committed at `at` would redirect the agent: the
    /// target of its staged authorization when that region takes standbys
    /// and the authorization has not expired. None: it would be stranded
    /// (or, when it is not at home, it is not moved by a new decision).
    pub redirect_now: Option<RegionName>,
}

/// What one standby region would carry after the failure.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct TargetLoad {
    /// Agents of the failed region planned there.
    pub agents: u64,
    /// Every agent (of any region) planned there.
    pub load: u64,
    /// Its capacity for agents from elsewhere; None: unlimited.
    pub capacity: Option<u64>,
}

/// The dry run's answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WhatIf {
    pub region: RegionName,
    /// The replicated epoch the answer was computed at: the one to pass as
    /// `expect_epoch` when acting on it.
    pub epoch: u64,
    /// The region's committed health and the operator's override.
    pub state: RegionState,
    pub mode: RegionMode,
    /// The time the preflight was evaluated at.
    pub at: Millis,
    /// Every agent homed in the region, in id order.
    pub agents: Vec<WhatIfAgent>,
    /// Per standby region that would take at least one of the region's
    /// agents, or that takes standbys at all.
    pub targets: BTreeMap<RegionName, TargetLoad>,
    /// Agents with no standby if the region failed, by reason
    /// (`not_redirectable`, `leaf_expires_soon`, `no_eligible_region`).
    pub rejected: BTreeMap<String, u64>,
    /// Agents whose staged authorization covers their planned standby.
    pub covered: u64,
    /// Agents a decision committed now would redirect.
    pub redirect_now: u64,
}

impl WhatIf {
    /// Agents rejected for any reason.
    pub fn rejected_total(&self) -> u64 {
        self.rejected.values().sum()
    }
}

/// The reason for `NoStandby` as a stable, snake_case word.
pub fn no_standby_reason(e: &NoStandby) -> &'static str {
    match e {
        NoStandby::NotRedirectable => "not_redirectable",
        NoStandby::LeafExpiresSoon { .. } => "leaf_expires_soon",
        NoStandby::NoEligibleRegion => "no_eligible_region",
    }
}

/// Where each agent of `region` would go if `region` failed at `now`, for
/// tokens of `ttl_ms`. See the module documentation.
pub fn plan_if_failed(
    s: &ReplicatedState,
    region: &RegionName,
    now: Millis,
    ttl_ms: u64,
) -> WhatIf {
    let mut regions = s.plan_regions();
    if let Some(info) = regions.get_mut(region) {
        info.healthy = false;
    }
    let p = s.plan_with(&regions, now, ttl_ms);
    // Regions that could take standbys once `region` is out.
    let usable: BTreeSet<&RegionName> = regions
        .iter()
        .filter(|(r, info)| *r != region && info.healthy)
        .map(|(r, _)| r)
        .collect();

    let mut agents = Vec::new();
    let mut targets: BTreeMap<RegionName, TargetLoad> = BTreeMap::new();
    let mut rejected: BTreeMap<String, u64> = BTreeMap::new();
    let (mut covered_n, mut redirect_n) = (0u64, 0u64);
    for (id, e) in s
        .agents()
        .iter()
        .filter(|(_, e)| &e.registration.home == region)
    {
        let if_failed = p
            .standby
            .get(id)
            .cloned()
            .unwrap_or(Err(NoStandby::NoEligibleRegion));
        let valid = |st: &&StagedRef| now < st.not_after;
        let covered = match &if_failed {
            Ok(t) => e
                .staged
                .as_ref()
                .filter(valid)
                .is_some_and(|st| &st.target == t),
            Err(_) => false,
        };
        let redirect_now = if e.placement == Placement::Home {
            e.staged
                .as_ref()
                .filter(valid)
                .filter(|st| usable.contains(&st.target))
                .map(|st| st.target.clone())
        } else {
            None
        };
        match &if_failed {
            Ok(t) => targets.entry(t.clone()).or_default().agents += 1,
            Err(why) => {
                *rejected
                    .entry(no_standby_reason(why).to_string())
                    .or_default() += 1
            }
        }
        covered_n += u64::from(covered);
        redirect_n += u64::from(redirect_now.is_some());
        agents.push(WhatIfAgent {
            agent_id: id.clone(),
            placement: e.placement.clone(),
            current_standby: e.standby.clone(),
            if_failed,
            staged: e.staged.clone(),
            covered,
            redirect_now,
        });
    }
    for r in &usable {
        targets.entry((*r).clone()).or_default();
    }
    for (r, t) in targets.iter_mut() {
        t.load = p.load.get(r).copied().unwrap_or(0);
        t.capacity = regions.get(r).and_then(|i| i.capacity);
    }
    WhatIf {
        region: region.clone(),
        epoch: s.epoch(),
        state: s
            .region_records()
            .get(region)
            .map(|r| r.state)
            .unwrap_or_default(),
        mode: s.region_mode(region),
        at: now,
        agents,
        targets,
        rejected,
        covered: covered_n,
        redirect_now: redirect_n,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::agents::{AgentRegistration, ConfigRef};
    use crate::command::{Batch, Command, Outcome, Proposal, RegionInfoUpdate};
    use crate::handover::{handover_key_id, sign_batch, BatchSpec, TokenLeaf};
    use crate::ids::Thumbprint;
    use crate::member::{Member, MemberRole};
    use ring::signature::{Ed25519KeyPair, KeyPair};

    const TTL: u64 = 3_600_000;
    const NOW: Millis = Millis(1_000_000);

    fn r(s: &str) -> RegionName {
        s.parse().expect("region name")
    }

    /// A small federation under test, built only through `apply`.
    struct Fed {
        s: ReplicatedState,
        next: u64,
    }

    impl Fed {
        fn new(names: &[&str]) -> Fed {
            let mut f = Fed {
                s: ReplicatedState::default(),
                next: 1,
            };
            for (i, n) in names.iter().enumerate() {
                f.apply(Command::UpsertMember {
                    member: Member {
                        node_id: i as u64 + 1,
                        region: r(n),
                        role: MemberRole::Region,
                        address: format!("127.0.0.{}:7400", i + 1),
                        thumbprints: [Thumbprint([i as u8 + 1; 32])].into(),
                        control_plane: Some(format!("https://{n}.test")),
                    },
                    expect_epoch: None,
                });
            }
            f
        }

        fn apply(&mut self, command: Command) -> Outcome {
            let n = self.next;
            self.next += 1;
            let out = self.s.apply(
                n,
                &Batch {
                    at: NOW,
                    proposals: vec![Proposal {
                        request_id: format!("req-{n}").parse().expect("request id"),
                        actor: "admin:test".into(),
                        command,
                    }],
                },
            );
            out.outcomes.into_iter().next().expect("one outcome")
        }

        /// Publishes what `region` offers as a standby.
        fn offer(&mut self, region: &str, capacity: Option<u64>, priority: u32, hashes: &[&str]) {
            self.offer_with_key(region, capacity, priority, hashes, None);
        }

        fn offer_with_key(
            &mut self,
            region: &str,
            capacity: Option<u64>,
            priority: u32,
            hashes: &[&str],
            signing_key: Option<(String, String)>,
        ) {
            let out = self.apply(Command::SetRegionInfo {
                region: r(region),
                update: RegionInfoUpdate {
                    opamp_endpoint: format!("wss://{region}.test/v1/opamp"),
                    capacity,
                    priority,
                    configs: hashes.iter().map(|h| h.to_string()).collect(),
                    signing_key,
                },
            });
            assert!(matches!(out, Outcome::Applied { .. }), "{out:?}");
        }

        fn register(&mut self, agents: Vec<AgentRegistration>) {
            let out = self.apply(Command::RegisterAgents { agents });
            assert!(matches!(out, Outcome::Applied { .. }), "{out:?}");
        }

        fn standbys(&mut self, pairs: &[(&str, &str)]) {
            let standbys = pairs
                .iter()
                .map(|(a, t)| (a.to_string(), Some(r(t))))
                .collect();
            self.apply(Command::SetStandbys { standbys });
        }
    }

    fn agent(id: &str, home: &str, hash: &str) -> AgentRegistration {
        AgentRegistration {
            agent_id: id.into(),
            fingerprint: Thumbprint([id.bytes().fold(0u8, |a, b| a.wrapping_add(b)); 32]),
            home: r(home),
            tenant: "acme".into(),
            config: ConfigRef {
                id: "collector".into(),
                version: 3,
                content_hash: hash.into(),
            },
            capabilities: ["AcceptsOpAMPConnectionSettings".to_string()].into(),
            allowed_regions: None,
            leaf_not_after: Millis(NOW.0 + 365 * 86_400_000),
        }
    }

    fn three() -> Fed {
        let mut f = Fed::new(&["eu", "us", "ap"]);
        f.offer("eu", None, 0, &["h1", "h2"]);
        f.offer("us", None, 1, &["h1"]);
        f.offer("ap", None, 2, &["h1", "h2"]);
        f
    }

    // Property: the dry run never exceeds a standby region's capacity, counts
    // the load of other regions' agents already planned there, and spills
    // the overflow to the next region in priority order; totals add up.
    #[test]
    fn capacity_is_respected_and_counted_across_regions() {
        let mut f = Fed::new(&["eu", "us", "ap"]);
        f.offer("eu", None, 0, &["h1"]);
        f.offer("us", Some(2), 0, &["h1"]);
        f.offer("ap", None, 5, &["h1"]);
        // An ap agent already holds one of us's two places.
        f.register(vec![
            agent("ap-1", "ap", "h1"),
            agent("eu-1", "eu", "h1"),
            agent("eu-2", "eu", "h1"),
            agent("eu-3", "eu", "h1"),
        ]);
        f.standbys(&[("ap-1", "us")]);
        let w = plan_if_failed(&f.s, &r("eu"), NOW, TTL);
        assert_eq!(w.agents.len(), 3, "only eu's agents are listed");
        let us = w.targets[&r("us")];
        assert_eq!(us.agents, 1, "one place left in us for eu's agents");
        assert_eq!(us.load, 2, "ap-1 counts against us's capacity");
        assert_eq!(us.capacity, Some(2));
        assert_eq!(w.targets[&r("ap")].agents, 2, "the overflow goes to ap");
        assert_eq!(w.rejected_total(), 0);
        assert!(
            !w.targets.contains_key(&r("eu")),
            "the failed region is no target"
        );
    }

    // Property: marking the region failed re-plans other regions' agents
    // whose standby was that region, and they take capacity that the
    // region's own agents would otherwise have had.
    #[test]
    fn agents_standing_by_in_the_failed_region_are_replanned() {
        let mut f = Fed::new(&["eu", "us", "ap"]);
        f.offer("eu", None, 0, &["h1"]);
        f.offer("us", Some(1), 0, &["h1"]);
        f.offer("ap", None, 1, &["h1"]);
        // ap-1 stands by in eu. While eu is up, eu-1 would get us's one
        // place; once eu is out, ap-1 is re-planned first (id order) and
        // takes it, so eu-1 goes to ap.
        f.register(vec![agent("ap-1", "ap", "h1"), agent("eu-1", "eu", "h1")]);
        f.standbys(&[("ap-1", "eu")]);
        let w = plan_if_failed(&f.s, &r("eu"), NOW, TTL);
        assert_eq!(w.agents.len(), 1);
        assert_eq!(w.agents[0].if_failed, Ok(r("ap")));
        assert_eq!(w.targets[&r("us")].load, 1, "ap-1 moved into us");
        assert_eq!(w.targets[&r("us")].agents, 0);
        assert_eq!(w.targets[&r("ap")].agents, 1);
    }

    // Property: data residency is respected: an agent never gets a standby
    // outside its allowed regions, and with none left it is rejected with
    // `no_eligible_region`.
    #[test]
    fn residency_is_respected() {
        let mut f = three();
        let mut a = agent("eu-1", "eu", "h1");
        a.allowed_regions = Some([r("eu"), r("ap")].into());
        let mut b = agent("eu-2", "eu", "h1");
        b.allowed_regions = Some([r("eu")].into());
        f.register(vec![a, b]);
        let w = plan_if_failed(&f.s, &r("eu"), NOW, TTL);
        assert_eq!(
            w.agents[0].if_failed,
            Ok(r("ap")),
            "us has priority but is not allowed"
        );
        assert_eq!(w.agents[1].if_failed, Err(NoStandby::NoEligibleRegion));
        assert_eq!(w.rejected.get("no_eligible_region"), Some(&1));
    }

    // Property: a standby must already hold the agent's configuration (same
    // content hash); a configuration held nowhere else is rejected.
    #[test]
    fn configuration_presence_is_required() {
        let mut f = three();
        f.register(vec![
            agent("eu-1", "eu", "h1"),
            agent("eu-2", "eu", "h2"),
            agent("eu-3", "eu", "h3"),
        ]);
        let w = plan_if_failed(&f.s, &r("eu"), NOW, TTL);
        assert_eq!(w.agents[0].if_failed, Ok(r("us")));
        assert_eq!(w.agents[1].if_failed, Ok(r("ap")), "only ap holds h2");
        assert_eq!(w.agents[2].if_failed, Err(NoStandby::NoEligibleRegion));
    }

    // Property: the preflight's rejections are reported per agent and
    // counted by reason: no redirect capability, a leaf that expires within
    // the token TTL.
    #[test]
    fn preflight_rejects_are_reported_with_reasons() {
        let mut f = three();
        let mut a = agent("eu-1", "eu", "h1");
        a.capabilities.clear();
        let mut b = agent("eu-2", "eu", "h1");
        b.leaf_not_after = Millis(NOW.0 + TTL / 2);
        f.register(vec![a, b, agent("eu-3", "eu", "h1")]);
        let w = plan_if_failed(&f.s, &r("eu"), NOW, TTL);
        assert_eq!(w.agents[0].if_failed, Err(NoStandby::NotRedirectable));
        assert_eq!(
            w.agents[1].if_failed,
            Err(NoStandby::LeafExpiresSoon {
                leaf_not_after: Millis(NOW.0 + TTL / 2)
            })
        );
        assert_eq!(w.agents[2].if_failed, Ok(r("us")));
        assert_eq!(w.rejected.get("not_redirectable"), Some(&1));
        assert_eq!(w.rejected.get("leaf_expires_soon"), Some(&1));
        assert_eq!(w.rejected_total(), 2);
        assert_eq!(
            no_standby_reason(&NoStandby::NoEligibleRegion),
            "no_eligible_region"
        );
    }

    // Property: the dry run is a pure read: the state (including what it
    // would persist) is exactly the same afterwards, and the answer carries
    // the epoch it was computed at.
    #[test]
    fn dry_run_changes_nothing() {
        let mut f = three();
        f.register(vec![agent("eu-1", "eu", "h1"), agent("us-1", "us", "h1")]);
        f.standbys(&[("eu-1", "ap"), ("us-1", "eu")]);
        f.s.take_dirty();
        let before = f.s.clone();
        let w = plan_if_failed(&f.s, &r("eu"), NOW, TTL);
        assert_eq!(f.s, before, "plan_if_failed must not change the state");
        assert!(
            f.s.take_dirty().is_empty(),
            "nothing marked for persistence"
        );
        assert_eq!(f.s.agents()["us-1"].standby, Some(r("eu")));
        assert_eq!(w.epoch, f.s.epoch());
        assert_eq!(w.mode, RegionMode::Auto);
        assert_eq!(w.state, RegionState::Healthy);
    }

    // Property: an agent already away from home keeps the standby its
    // directive was fixed with (frozen), and a new decision would not move
    // it again.
    #[test]
    fn agents_already_away_are_frozen() {
        let mut f = three();
        f.register(vec![agent("eu-1", "eu", "h1")]);
        f.standbys(&[("eu-1", "ap")]);
        let out = f.apply(Command::SetRegionMode {
            region: r("eu"),
            mode: RegionMode::Drained,
            expect_epoch: None,
        });
        assert!(matches!(out, Outcome::Applied { .. }), "{out:?}");
        let w = plan_if_failed(&f.s, &r("eu"), NOW, TTL);
        assert_eq!(w.mode, RegionMode::Drained);
        let a = &w.agents[0];
        assert_eq!(a.placement, Placement::Stranded { epoch: f.s.epoch() });
        assert_eq!(a.if_failed, Ok(r("ap")), "frozen: keeps its standby");
        assert_eq!(a.redirect_now, None, "a new decision does not move it");
    }

    // Property: an agent counts as covered only when its staged
    // authorization is for its planned standby and still valid; a decision
    // committed now redirects exactly the agents with a valid authorization
    // for a region that takes standbys.
    #[test]
    fn staged_authorizations_are_reported() {
        let key = Ed25519KeyPair::from_seed_unchecked(&[9u8; 32]).expect("key");
        let public: String = key
            .public_key()
            .as_ref()
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        let key_id = handover_key_id(key.public_key().as_ref());
        let mut f = Fed::new(&["eu", "us", "ap"]);
        f.offer_with_key("eu", None, 0, &["h1"], Some((key_id, public)));
        f.offer("us", None, 1, &["h1"]);
        f.offer("ap", None, 2, &["h1"]);
        let pem = "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n";
        f.apply(Command::SetTrustBundle {
            region: r("eu"),
            pem: pem.into(),
            sha256: "cd".repeat(32),
        });
        f.register(vec![agent("eu-1", "eu", "h1"), agent("eu-2", "eu", "h1")]);
        f.standbys(&[("eu-1", "us"), ("eu-2", "us")]);
        // eu-1 is staged for us (valid until NOW + TTL); eu-2 for ap, which
        // is not where the planner would send it.
        let leaves: Vec<TokenLeaf> = [("eu-1", "us"), ("eu-2", "ap")]
            .iter()
            .map(|(id, t)| TokenLeaf {
                agent_id: id.to_string(),
                fingerprint: f.s.agents()[*id].registration.fingerprint,
                home: r("eu"),
                target: r(t),
                target_endpoint: format!("wss://{t}.test/v1/opamp"),
            })
            .collect();
        let spec = BatchSpec {
            source: r("eu"),
            batch_id: 7,
            epoch: f.s.epoch(),
            issued_at: NOW,
            not_after: NOW.plus(TTL),
        };
        let (batch, _) = sign_batch(&spec, pem, &leaves, &key).expect("signed");
        let out = f.apply(Command::StageAuthorizations {
            region: r("eu"),
            batch,
            leaves,
        });
        assert!(matches!(out, Outcome::Applied { .. }), "{out:?}");

        let w = plan_if_failed(&f.s, &r("eu"), NOW, TTL);
        let (a, b) = (&w.agents[0], &w.agents[1]);
        assert!(a.covered, "staged for its planned standby");
        assert_eq!(a.staged.as_ref().map(|s| s.not_after), Some(NOW.plus(TTL)));
        assert_eq!(a.redirect_now, Some(r("us")));
        assert!(!b.covered, "staged for another region than planned");
        assert_eq!(
            b.redirect_now,
            Some(r("ap")),
            "the decision follows the staged target"
        );
        assert_eq!((w.covered, w.redirect_now), (1, 2));

        // After the authorizations expire nothing is covered and a decision
        // now would strand both.
        let later = plan_if_failed(&f.s, &r("eu"), NOW.plus(TTL), TTL);
        assert_eq!((later.covered, later.redirect_now), (0, 0));
    }
}
