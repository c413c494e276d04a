//! The agents' part of the admin API: the plan preview of a region
//! (`PlanRegion`, a pure read computed by the core's `plan_if_failed`), the
//! operator's region overrides (`SetRegionMode`: drain, undrain, failover,
//! failback, proposed as `Command::SetRegionMode` and fenced by the
//! expected epoch), and the agent registry (`ListAgents`, `AgentSummary`).
//!
//! Reads answer from this coordinator's replica; writes go to the leader
//! through `Coordinator::submit`. Nothing here decides: placement and
//! fencing are the core's.

use std::collections::{BTreeMap, BTreeSet};
use std::ops::Bound;
use std::time::Duration;

use tern_core::{
    no_standby_reason, plan_if_failed, AgentEntry, Command, MemberRole, Placement, Proposal,
    RegionMode, RegionName, ReplicatedState,
};
use tern_proto::v1 as pb;

use super::{first_outcome, request_id};
use crate::error::ApiError;
use crate::node::Coordinator;
use crate::ops::AdminOp;
use crate::proposer::now_ms;

/// Default and largest page of `PlanRegion`.
const PLAN_PAGE: (u32, u32) = (1000, 10_000);
/// Default and largest page of `ListAgents`.
const LIST_PAGE: (u32, u32) = (100, 10_000);
/// How long `SetRegionMode` waits for the local replica to apply the
/// committed entry before answering without its audit summary.
const LOCAL_APPLY_WAIT: Duration = Duration::from_secs(2);

/// The placement states an agent can be in, as the API spells them.
const STATES: [&str; 4] = ["home", "redirected", "returning", "stranded"];

/// Regions the state knows: the member table's regions, the regions that
/// published standby information, and (for agents whose region left) the
/// agents' home regions.
fn known_regions(s: &ReplicatedState, with_agent_homes: bool) -> BTreeSet<RegionName> {
    let mut out: BTreeSet<RegionName> = s
        .members()
        .values()
        .filter(|m| m.role == MemberRole::Region)
        .map(|m| m.region.clone())
        .collect();
    out.extend(s.region_info().keys().cloned());
    if with_agent_homes {
        out.extend(s.agents().values().map(|e| e.registration.home.clone()));
    }
    out
}

/// Parses `value` as a region that the state knows; the error names the
/// field and lists the known regions.
fn region_arg(
    s: &ReplicatedState,
    field: &str,
    value: &str,
    with_agent_homes: bool,
) -> Result<RegionName, ApiError> {
    if value.is_empty() {
        return Err(ApiError::Invalid(format!("{field}: a region is required")));
    }
    let r: RegionName = value
        .parse()
        .map_err(|e| ApiError::Invalid(format!("{field}: {e}")))?;
    let known = known_regions(s, with_agent_homes);
    if known.contains(&r) {
        return Ok(r);
    }
    let list: Vec<&str> = known.iter().map(|r| r.as_str()).collect();
    Err(ApiError::Invalid(format!(
        "{field}: unknown region {value:?}; the federation's regions are: {}",
        if list.is_empty() {
            "(none yet)".to_string()
        } else {
            list.join(", ")
        }
    )))
}

fn page(limit: u32, (default, max): (u32, u32)) -> usize {
    (if limit == 0 { default } else { limit.min(max) }) as usize
}

fn opt(r: &Option<RegionName>) -> String {
    r.as_ref().map(|r| r.to_string()).unwrap_or_default()
}

/// The epoch of the decision behind a placement (0 at home).
fn placement_epoch(p: &Placement) -> u64 {
    match p {
        Placement::Home => 0,
        Placement::Redirected { epoch, .. }
        | Placement::Stranded { epoch }
        | Placement::Returning { epoch } => *epoch,
    }
}

/// `PlanRegion`: the dry run of a failure of `region` now.
pub(super) fn plan_region(
    coord: &Coordinator,
    r: pb::PlanRegionRequest,
) -> Result<pb::PlanRegionResponse, ApiError> {
    let ttl = coord.config.agents.token_ttl_ms;
    let limit = page(r.limit, PLAN_PAGE);
    coord.read_state(|s| {
        let region = region_arg(s, "region", &r.region, true)?;
        let w = plan_if_failed(s, &region, now_ms(), ttl);
        let total = w.agents.len() as u64;
        let after = r.after.as_str();
        let mut listed = w
            .agents
            .iter()
            .filter(|a| after.is_empty() || a.agent_id.as_str() > after);
        let agents: Vec<pb::PlannedAgent> = listed
            .by_ref()
            .take(limit)
            .map(|a| {
                let (standby_if_failed, rejected) = match &a.if_failed {
                    Ok(t) => (t.to_string(), String::new()),
                    Err(why) => (String::new(), no_standby_reason(why).to_string()),
                };
                pb::PlannedAgent {
                    agent_id: a.agent_id.clone(),
                    state: a.placement.as_str().into(),
                    current_standby: opt(&a.current_standby),
                    standby_if_failed,
                    rejected,
                    staged_target: a
                        .staged
                        .as_ref()
                        .map(|st| st.target.to_string())
                        .unwrap_or_default(),
                    staged_until_ms: a.staged.as_ref().map(|st| st.not_after.0).unwrap_or(0),
                    covered: a.covered,
                    redirect_now: opt(&a.redirect_now),
                }
            })
            .collect();
        let next_after = match (listed.next(), agents.last()) {
            (Some(_), Some(last)) => last.agent_id.clone(),
            _ => String::new(),
        };
        Ok(pb::PlanRegionResponse {
            region: region.to_string(),
            epoch: w.epoch,
            state: w.state.as_str().into(),
            mode: w.mode.as_str().into(),
            at_ms: w.at.0,
            token_ttl_ms: ttl,
            agents,
            total,
            targets: w
                .targets
                .iter()
                .map(|(r, t)| pb::PlanTarget {
                    region: r.to_string(),
                    agents: t.agents,
                    load: t.load,
                    capacity: t.capacity,
                })
                .collect(),
            rejected: w
                .rejected
                .iter()
                .map(|(reason, count)| pb::RejectedCount {
                    reason: reason.clone(),
                    count: *count,
                })
                .collect(),
            rejected_total: w.rejected_total(),
            covered: w.covered,
            redirect_now: w.redirect_now,
            next_after,
        })
    })
}

/// What an action asks for, and whether it needs an expected epoch.
fn action_mode(action: i32) -> Result<(&'static str, RegionMode, bool), ApiError> {
    match pb::RegionModeAction::try_from(action) {
        Ok(pb::RegionModeAction::Drain) => Ok(("drain", RegionMode::Drained, false)),
        Ok(pb::RegionModeAction::Undrain) => Ok(("undrain", RegionMode::Auto, false)),
        Ok(pb::RegionModeAction::Failover) => Ok(("failover", RegionMode::FailedOver, true)),
        Ok(pb::RegionModeAction::Failback) => Ok(("failback", RegionMode::Auto, true)),
        Ok(pb::RegionModeAction::Unspecified) | Err(_) => Err(ApiError::Invalid(format!(
            "action: must be drain, undrain, failover or failback (got {action})"
        ))),
    }
}

/// `SetRegionMode`: proposes the operator's override of a region.
pub(super) async fn set_region_mode(
    coord: &Coordinator,
    actor: String,
    r: pb::SetRegionModeRequest,
) -> Result<pb::SetRegionModeResponse, ApiError> {
    let (verb, mode, needs_epoch) = action_mode(r.action)?;
    let region = coord.read_state(|s| {
        let region = region_arg(s, "region", &r.region, false)?;
        if !s
            .members()
            .values()
            .any(|m| m.role == MemberRole::Region && m.region == region)
        {
            return Err(ApiError::Invalid(format!(
                "region: {region} has no coordinator in the member table"
            )));
        }
        Ok(region)
    })?;
    if needs_epoch && r.expect_epoch.is_none() {
        return Err(ApiError::Invalid(format!(
            "expect_epoch: required for {verb}: say which state you looked at \
             (the epoch shown by `tern plan {region}` or `tern regions`)"
        )));
    }
    let rid = request_id(&r.request_id)?;
    let p = Proposal {
        request_id: rid.clone(),
        actor,
        command: Command::SetRegionMode {
            region: region.clone(),
            mode,
            expect_epoch: r.expect_epoch,
        },
    };
    let reply = coord
        .submit(AdminOp::Propose { proposals: vec![p] })
        .await?;
    let (epoch, duplicate) = first_outcome(&reply)?;
    // The leader has applied the entry; wait (briefly) until this replica
    // has too, so that the answer can carry the audit summary and the mode.
    let mut applied = coord.applied.clone();
    let _ = tokio::time::timeout(
        LOCAL_APPLY_WAIT,
        applied.wait_for(|l| l.is_some_and(|l| l.index >= reply.log_index)),
    )
    .await;
    let (summary, mode_now) = coord.read_state(|s| {
        let summary = s
            .audit()
            .iter()
            .rev()
            .find(|a| a.request_id == rid)
            .map(|a| a.summary.clone())
            .unwrap_or_default();
        (summary, s.region_mode(&region))
    });
    Ok(pb::SetRegionModeResponse {
        epoch,
        mode: if summary.is_empty() { mode } else { mode_now }
            .as_str()
            .into(),
        log_index: reply.log_index,
        duplicate,
        summary,
    })
}

fn agent_info(id: &str, e: &AgentEntry) -> pb::AgentInfo {
    let reg = &e.registration;
    let target = match &e.placement {
        Placement::Redirected { target, .. } => target.to_string(),
        _ => reg.home.to_string(),
    };
    pb::AgentInfo {
        agent_id: id.to_string(),
        home_region: reg.home.to_string(),
        tenant: reg.tenant.clone(),
        fingerprint: reg.fingerprint.to_string(),
        standby: opt(&e.standby),
        state: e.placement.as_str().into(),
        placement_epoch: placement_epoch(&e.placement),
        target,
        serving: opt(&e.serving),
        staged_until_ms: e.staged.as_ref().map(|s| s.not_after.0).unwrap_or(0),
        staged_target: e
            .staged
            .as_ref()
            .map(|s| s.target.to_string())
            .unwrap_or_default(),
        reported_epoch: e.reported_epoch,
        config_id: reg.config.id.clone(),
        config_version: reg.config.version,
        leaf_not_after_ms: reg.leaf_not_after.0,
    }
}

/// `ListAgents`: the registry, filtered, in agent id order, paged.
pub(super) fn list_agents(
    coord: &Coordinator,
    r: pb::ListAgentsRequest,
) -> Result<pb::ListAgentsResponse, ApiError> {
    if !r.state.is_empty() && !STATES.contains(&r.state.as_str()) {
        return Err(ApiError::Invalid(format!(
            "state: must be one of {} (got {:?})",
            STATES.join(", "),
            r.state
        )));
    }
    let limit = page(r.limit, LIST_PAGE);
    coord.read_state(|s| {
        let home = match r.home_region.as_str() {
            "" => None,
            v => Some(region_arg(s, "home_region", v, true)?),
        };
        let serving = match r.serving_region.as_str() {
            "" => None,
            v => Some(region_arg(s, "serving_region", v, true)?),
        };
        let start = if r.after.is_empty() {
            Bound::Unbounded
        } else {
            Bound::Excluded(r.after.clone())
        };
        let mut matching = s
            .agents()
            .range::<String, _>((start, Bound::Unbounded))
            .filter(|(_, e)| home.as_ref().is_none_or(|h| &e.registration.home == h))
            .filter(|(_, e)| serving.is_none() || e.serving == serving)
            .filter(|(_, e)| r.state.is_empty() || e.placement.as_str() == r.state);
        let agents: Vec<pb::AgentInfo> = matching
            .by_ref()
            .take(limit)
            .map(|(id, e)| agent_info(id, e))
            .collect();
        let next_after = match (matching.next(), agents.last()) {
            (Some(_), Some(last)) => last.agent_id.clone(),
            _ => String::new(),
        };
        Ok(pb::ListAgentsResponse {
            agents,
            next_after,
            epoch: s.epoch(),
        })
    })
}

/// `AgentSummary`: counts per (home region, serving region, state).
pub(crate) fn agent_summary(coord: &Coordinator) -> pb::AgentSummaryResponse {
    coord.read_state(|s| {
        let mut counts: BTreeMap<(String, String, &'static str), u64> = BTreeMap::new();
        for e in s.agents().values() {
            *counts
                .entry((
                    e.registration.home.to_string(),
                    opt(&e.serving),
                    e.placement.as_str(),
                ))
                .or_default() += 1;
        }
        pb::AgentSummaryResponse {
            total: counts.values().sum(),
            counts: counts
                .into_iter()
                .map(
                    |((home_region, serving_region, state), count)| pb::AgentCount {
                        home_region,
                        serving_region,
                        state: state.into(),
                        count,
                    },
                )
                .collect(),
            epoch: s.epoch(),
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    // Property: every action maps to the mode the issue asks for, and only
    // failover and failback demand an expected epoch; an unknown action is
    // refused.
    #[test]
    fn actions_map_to_modes() {
        use pb::RegionModeAction as A;
        let m = |a: A| action_mode(a as i32).map(|(_, m, e)| (m, e)).ok();
        assert_eq!(m(A::Drain), Some((RegionMode::Drained, false)));
        assert_eq!(m(A::Undrain), Some((RegionMode::Auto, false)));
        assert_eq!(m(A::Failover), Some((RegionMode::FailedOver, true)));
        assert_eq!(m(A::Failback), Some((RegionMode::Auto, true)));
        assert!(action_mode(A::Unspecified as i32).is_err());
        assert!(action_mode(99).is_err());
    }

    // Property: an unknown region is refused with a message that names the
    // field and the regions that exist.
    #[test]
    fn unknown_region_is_named() {
        let s = ReplicatedState::default();
        let e = region_arg(&s, "home_region", "mars", true)
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(e.contains("home_region") && e.contains("\"mars\""), "{e}");
        assert!(e.contains("(none yet)"), "{e}");
        assert!(region_arg(&s, "region", "", false).is_err());
    }
}
