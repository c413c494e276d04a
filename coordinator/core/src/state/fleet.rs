//! The agents' side of the replicated state: what each region offers as a
//! standby, the staged handover authorizations, the operator's region
//! overrides (drain, manual failover), failover activation, hand-back waves
//! and shims' reports, and the directive each agent should follow.
//!
//! Everything here is applied deterministically from committed commands
//! (leader time only). The server turns an [`AgentDirective`] into what a
//! shim receives (endpoint, token); this module never sees key material
//! beyond public keys.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

use super::{Placement, ReplicatedState, RowKey};
use crate::agents::RegionPlanInfo;
use crate::command::{AgentReport, RegionInfoUpdate, RegionMode, Rejection};
use crate::handover::{verify_batch, SignedBatch, TokenLeaf};
use crate::health::RegionState;
use crate::ids::RegionName;
use crate::member::MemberRole;
use crate::time::Millis;

/// Signing keys kept per region (newest by insertion; older ones are
/// dropped, with the batches they signed once those expire).
const SIGNING_KEYS_KEPT: usize = 3;

/// What a region offers as a standby, as committed.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct RegionInfo {
    pub opamp_endpoint: String,
    pub capacity: Option<u64>,
    pub priority: u32,
    pub configs: BTreeSet<String>,
    /// Handover signing keys: key id → public key (hex), at most
    /// [`SIGNING_KEYS_KEPT`], in the order they were published.
    pub signing_keys: Vec<(String, String)>,
    /// The operator's override.
    #[serde(default)]
    pub mode: RegionMode,
    /// Leader time of the last change.
    pub updated_at: Millis,
}

/// Which staged authorization covers an agent.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StagedRef {
    pub batch_id: u64,
    pub index: u32,
    pub target: RegionName,
    /// When the authorization expires (leader ms).
    pub not_after: Millis,
}

/// A staged batch as committed: the signed header and every leaf, so that
/// any coordinator can give any covered agent its token (leaf + proof).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StagedBatch {
    pub batch: SignedBatch,
    pub leaves: Vec<TokenLeaf>,
}

/// What an agent should do now.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DirectiveAction {
    Stay,
    Redirect,
    ReturnHome,
}

/// The directive of one agent, as the state says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AgentDirective {
    pub action: DirectiveAction,
    /// The epoch of the decision behind it (0: none yet).
    pub epoch: u64,
    /// Where to be served: the standby for `Redirect`, home otherwise.
    pub target: RegionName,
    /// For `Redirect`: the staged authorization to hand over.
    pub staged: Option<StagedRef>,
}

impl ReplicatedState {
    /// What each region offers as a standby.
    pub fn region_info(&self) -> &BTreeMap<RegionName, RegionInfo> {
        &self.region_info
    }

    /// Staged batches by source region and batch id.
    pub fn staged_batches(&self) -> &BTreeMap<RegionName, BTreeMap<u64, StagedBatch>> {
        &self.staged
    }

    /// The operator's override of `region`.
    pub fn region_mode(&self, region: &RegionName) -> RegionMode {
        self.region_info
            .get(region)
            .map(|i| i.mode)
            .unwrap_or_default()
    }

    fn region_state(&self, region: &RegionName) -> RegionState {
        self.regions
            .get(region)
            .map(|r| r.state)
            .unwrap_or(RegionState::Healthy)
    }

    fn is_region(&self, region: &RegionName) -> bool {
        self.members
            .values()
            .any(|m| m.role == MemberRole::Region && &m.region == region)
    }

    /// Can `region` take standby agents now: a region of the federation,
    /// Healthy, not overridden, with published standby information.
    pub fn accepts_standbys(&self, region: &RegionName) -> bool {
        self.region_info.contains_key(region)
            && self.is_region(region)
            && self.region_state(region) == RegionState::Healthy
            && self.region_mode(region) == RegionMode::Auto
    }

    /// Is `region` failed over: Unreachable, drained or manually failed over.
    pub fn region_out(&self, region: &RegionName) -> bool {
        self.region_state(region) == RegionState::Unreachable
            || self.region_mode(region) != RegionMode::Auto
    }

    /// Is `region` back: Healthy and not overridden (its agents may return).
    pub fn region_home_ready(&self, region: &RegionName) -> bool {
        self.region_state(region) == RegionState::Healthy
            && self.region_mode(region) == RegionMode::Auto
    }

    /// The planner's view of the regions.
    pub fn plan_regions(&self) -> BTreeMap<RegionName, RegionPlanInfo> {
        self.region_info
            .iter()
            .map(|(r, i)| {
                (
                    r.clone(),
                    RegionPlanInfo {
                        healthy: self.accepts_standbys(r),
                        capacity: i.capacity,
                        priority: i.priority,
                        configs: i.configs.clone(),
                    },
                )
            })
            .collect()
    }

    /// Runs the core planner on this state's agents with `regions` as the
    /// planner's view: current standbys are kept where still valid, and
    /// agents away from home keep theirs (their directive was fixed by the
    /// decision).
    pub fn plan_with(
        &self,
        regions: &BTreeMap<RegionName, RegionPlanInfo>,
        now: Millis,
        ttl_ms: u64,
    ) -> crate::agents::Plan {
        let current: BTreeMap<String, RegionName> = self
            .agents
            .iter()
            .filter_map(|(id, e)| e.standby.clone().map(|r| (id.clone(), r)))
            .collect();
        let frozen: BTreeSet<String> = self
            .agents
            .iter()
            .filter(|(_, e)| e.placement != Placement::Home)
            .map(|(id, _)| id.clone())
            .collect();
        crate::agents::plan(
            self.agents.values().map(|e| &e.registration),
            &current,
            &frozen,
            regions,
            now,
            ttl_ms,
        )
    }

    /// The directive `agent_id` should follow now.
    pub fn directive(&self, agent_id: &str) -> Option<AgentDirective> {
        let e = self.agents.get(agent_id)?;
        let home = e.registration.home.clone();
        Some(match &e.placement {
            Placement::Home => AgentDirective {
                action: DirectiveAction::Stay,
                epoch: e.reported_epoch,
                target: home,
                staged: None,
            },
            Placement::Stranded { epoch } => AgentDirective {
                action: DirectiveAction::Stay,
                epoch: *epoch,
                target: home,
                staged: None,
            },
            Placement::Redirected { target, epoch } => AgentDirective {
                action: DirectiveAction::Redirect,
                epoch: *epoch,
                target: target.clone(),
                staged: e.staged.clone(),
            },
            Placement::Returning { epoch } => AgentDirective {
                action: DirectiveAction::ReturnHome,
                epoch: *epoch,
                target: home,
                staged: None,
            },
        })
    }

    pub(super) fn set_region_info(
        &mut self,
        region: &RegionName,
        update: &RegionInfoUpdate,
        at: Millis,
    ) -> Result<String, Rejection> {
        if !self.is_region(region) {
            return Err(Rejection::Invalid {
                message: format!("{region} is not a region of this federation"),
            });
        }
        let info = self.region_info.entry(region.clone()).or_default();
        let mut keys = info.signing_keys.clone();
        if let Some(k) = &update.signing_key {
            if !keys.iter().any(|(id, _)| id == &k.0) {
                keys.push(k.clone());
                let drop = keys.len().saturating_sub(SIGNING_KEYS_KEPT);
                keys.drain(..drop);
            }
        }
        let changed = info.opamp_endpoint != update.opamp_endpoint
            || info.capacity != update.capacity
            || info.priority != update.priority
            || info.configs != update.configs
            || info.signing_keys != keys;
        if !changed {
            return Ok(format!("standby information of {region} unchanged"));
        }
        info.opamp_endpoint = update.opamp_endpoint.clone();
        info.capacity = update.capacity;
        info.priority = update.priority;
        info.configs = update.configs.clone();
        info.signing_keys = keys;
        info.updated_at = at;
        self.dirty.insert(RowKey::RegionInfo(region.clone()));
        Ok(format!(
            "standby information of {region}: {} configurations, capacity {}, priority {}",
            update.configs.len(),
            update
                .capacity
                .map_or_else(|| "unlimited".to_string(), |c| c.to_string()),
            update.priority
        ))
    }

    pub(super) fn stage(
        &mut self,
        region: &RegionName,
        batch: &SignedBatch,
        leaves: &[TokenLeaf],
    ) -> Result<String, Rejection> {
        let h = &batch.header;
        if &h.source != region {
            return Err(Rejection::Invalid {
                message: format!("batch signed by {}, staged for {region}", h.source),
            });
        }
        let key = self
            .region_info
            .get(region)
            .and_then(|i| i.signing_keys.iter().find(|(id, _)| id == &h.key_id))
            .map(|(_, k)| k.clone())
            .ok_or_else(|| Rejection::Invalid {
                message: format!("unknown signing key {} of {region}", h.key_id),
            })?;
        let key = hex_decode(&key).ok_or_else(|| Rejection::Invalid {
            message: format!("signing key {} of {region} is not hex", h.key_id),
        })?;
        verify_batch(batch, leaves, &key).map_err(|e| Rejection::Invalid {
            message: format!("batch {}: {e}", h.batch_id),
        })?;
        if self
            .staged
            .get(region)
            .is_some_and(|b| b.contains_key(&h.batch_id))
        {
            return Err(Rejection::Conflict {
                message: format!("batch {} of {region} is already staged", h.batch_id),
            });
        }
        let mut covered = 0usize;
        for (i, leaf) in leaves.iter().enumerate() {
            let Some(e) = self.agents.get_mut(&leaf.agent_id) else {
                continue;
            };
            // Agents already failed over keep the authorization their
            // directive was fixed with; a stale fingerprint is not covered.
            if &e.registration.home != region
                || e.placement != Placement::Home
                || e.registration.fingerprint != leaf.fingerprint
            {
                continue;
            }
            e.staged = Some(StagedRef {
                batch_id: h.batch_id,
                index: i as u32,
                target: leaf.target.clone(),
                not_after: h.not_after,
            });
            covered += 1;
            self.dirty.insert(RowKey::Agent(leaf.agent_id.clone()));
        }
        self.staged.entry(region.clone()).or_default().insert(
            h.batch_id,
            StagedBatch {
                batch: batch.clone(),
                leaves: leaves.to_vec(),
            },
        );
        self.dirty
            .insert(RowKey::Staged(region.clone(), h.batch_id));
        let dropped = self.drop_unreferenced_batches(region);
        Ok(format!(
            "staged batch {} of {region}: {covered} of {} agents covered, {dropped} old batches dropped",
            h.batch_id,
            leaves.len()
        ))
    }

    /// Drops `region`'s batches that no agent refers to any more.
    fn drop_unreferenced_batches(&mut self, region: &RegionName) -> usize {
        let referenced: BTreeSet<u64> = self
            .agents
            .values()
            .filter(|e| &e.registration.home == region)
            .filter_map(|e| e.staged.as_ref().map(|s| s.batch_id))
            .collect();
        let Some(batches) = self.staged.get_mut(region) else {
            return 0;
        };
        let gone: Vec<u64> = batches
            .keys()
            .filter(|id| !referenced.contains(id))
            .copied()
            .collect();
        for id in &gone {
            batches.remove(id);
            self.dirty.insert(RowKey::Staged(region.clone(), *id));
        }
        gone.len()
    }

    /// The failover of `region` activates its standby plan: every agent
    /// homed there whose staged authorization is for a region that can take
    /// it, and has not expired, is directed there at the current epoch; the
    /// others are stranded. One entry, whatever the number of agents.
    pub(super) fn activate_standbys(&mut self, region: &RegionName, at: Millis) -> String {
        let epoch = self.meta.epoch;
        let usable: BTreeSet<RegionName> = self
            .region_info
            .keys()
            .filter(|r| *r != region && self.accepts_standbys(r))
            .cloned()
            .collect();
        let (mut redirected, mut stranded) = (0usize, 0usize);
        for (id, e) in self.agents.iter_mut() {
            if &e.registration.home != region || e.placement != Placement::Home {
                continue;
            }
            let target = e
                .staged
                .as_ref()
                .filter(|s| usable.contains(&s.target) && at < s.not_after)
                .map(|s| s.target.clone());
            e.placement = match target {
                Some(target) => {
                    redirected += 1;
                    Placement::Redirected { target, epoch }
                }
                None => {
                    stranded += 1;
                    Placement::Stranded { epoch }
                }
            };
            self.dirty.insert(RowKey::Agent(id.clone()));
        }
        if redirected + stranded == 0 {
            String::new()
        } else {
            format!("; standby plan activated: {redirected} agents redirected, {stranded} stranded")
        }
    }

    /// `region` is back (Healthy, not overridden): its stranded agents,
    /// which never left, are home again. Redirected agents come back in
    /// hand-back waves.
    pub(super) fn region_back(&mut self, region: &RegionName) -> String {
        let mut back = 0usize;
        for (id, e) in self.agents.iter_mut() {
            if &e.registration.home == region && matches!(e.placement, Placement::Stranded { .. }) {
                e.placement = Placement::Home;
                back += 1;
                self.dirty.insert(RowKey::Agent(id.clone()));
            }
        }
        if back == 0 {
            String::new()
        } else {
            format!("; {back} stranded agents home again")
        }
    }

    pub(super) fn set_region_mode(
        &mut self,
        region: &RegionName,
        mode: RegionMode,
        at: Millis,
    ) -> Result<String, Rejection> {
        if !self.is_region(region) {
            return Err(Rejection::Invalid {
                message: format!("{region} is not a region of this federation"),
            });
        }
        let before = self.region_mode(region);
        if before == mode {
            return Err(Rejection::Conflict {
                message: format!("{region} is already {}", mode.as_str()),
            });
        }
        let was_out = self.region_out(region);
        self.bump_epoch();
        let info = self.region_info.entry(region.clone()).or_default();
        info.mode = mode;
        info.updated_at = at;
        self.dirty.insert(RowKey::RegionInfo(region.clone()));
        let effect = if !was_out && self.region_out(region) {
            self.activate_standbys(region, at)
        } else if self.region_home_ready(region) {
            self.region_back(region)
        } else {
            String::new()
        };
        Ok(format!(
            "region {region}: {} -> {}{effect}",
            before.as_str(),
            mode.as_str()
        ))
    }

    pub(super) fn hand_back(
        &mut self,
        region: &RegionName,
        agents: &[String],
    ) -> Result<String, Rejection> {
        if !self.region_home_ready(region) {
            return Err(Rejection::Conflict {
                message: format!("{region} is not back: no hand-back"),
            });
        }
        let eligible: Vec<&String> = agents
            .iter()
            .filter(|id| {
                self.agents.get(*id).is_some_and(|e| {
                    &e.registration.home == region
                        && matches!(e.placement, Placement::Redirected { .. })
                })
            })
            .collect();
        if eligible.is_empty() {
            return Err(Rejection::Conflict {
                message: format!("no agent of this wave is away from {region}"),
            });
        }
        self.bump_epoch();
        let epoch = self.meta.epoch;
        let n = eligible.len();
        for id in eligible {
            if let Some(e) = self.agents.get_mut(id) {
                e.placement = Placement::Returning { epoch };
                self.dirty.insert(RowKey::Agent(id.clone()));
            }
        }
        Ok(format!(
            "hand-back wave of {region}: {n} of {} agents directed home",
            agents.len()
        ))
    }

    pub(super) fn report_agents(&mut self, reports: &[AgentReport]) -> String {
        let (mut taken, mut home) = (0usize, 0usize);
        for r in reports {
            let Some(e) = self.agents.get_mut(&r.agent_id) else {
                continue;
            };
            if !r.attached || r.epoch < e.reported_epoch {
                continue;
            }
            let fits = match &e.placement {
                Placement::Redirected { target, epoch } => {
                    *epoch == r.epoch && target == &r.serving
                }
                Placement::Returning { epoch } => {
                    *epoch == r.epoch && r.serving == e.registration.home
                }
                Placement::Home | Placement::Stranded { .. } => r.serving == e.registration.home,
            };
            if !fits {
                continue;
            }
            if matches!(e.placement, Placement::Returning { .. }) {
                // Make-before-break: home accepted it; hand-back complete.
                e.placement = Placement::Home;
                home += 1;
            }
            e.serving = Some(r.serving.clone());
            e.reported_epoch = r.epoch;
            taken += 1;
            self.dirty.insert(RowKey::Agent(r.agent_id.clone()));
        }
        format!(
            "{} reports: {taken} taken, {home} agents back home",
            reports.len()
        )
    }
}

fn hex_decode(s: &str) -> Option<Vec<u8>> {
    if s.len() & 1 == 1 {
        return None;
    }
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok())
        .collect()
}
