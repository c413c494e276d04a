//! The periodic work of the agent hub. Each loop reads the replicated
//! state, computes what should change with the core's pure functions, and
//! proposes it; a loop that has nothing to do proposes nothing. Failures are
//! logged and retried on the next tick.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;
use std::time::Duration;

use tern_core::{
    BatchSpec, Command, MemberRole, Millis, Placement, RegionInfoUpdate, RegionName,
    ReplicatedState, TokenLeaf,
};
use tracing::{debug, info, warn};

use super::contract::{KeysRequest, MovedAgent, MovedRequest, PublicKey, RegionClient};
use super::{propose, MAX_BATCH};
use crate::node::Coordinator;
use crate::proposer::now_ms;

/// How often the region-side loops look at the state.
const TICK: Duration = Duration::from_millis(500);
/// How often the region's configurations are fetched from its control plane.
const CONFIGS_EVERY: Duration = Duration::from_secs(5);

pub(super) fn spawn(coord: Arc<Coordinator>, client: Option<RegionClient>) {
    if coord.config.role == MemberRole::Region {
        tokio::spawn(region_loop(coord.clone(), client));
    }
    tokio::spawn(leader_loop(coord));
}

/// This region's side: publish standby information, stage authorizations,
/// install public keys, mark moved agents.
async fn region_loop(coord: Arc<Coordinator>, client: Option<RegionClient>) {
    let mut configs: Option<BTreeSet<String>> = None;
    let mut configs_at: Option<tokio::time::Instant> = None;
    let mut keys_installed: Option<KeysRequest> = None;
    let mut moved_marked: BTreeSet<(String, u64)> = BTreeSet::new();
    let mut tick = tokio::time::interval(TICK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        if coord.leader().is_none() {
            continue;
        }
        if let Some(client) = &client {
            if configs_at.is_none_or(|t| t.elapsed() >= CONFIGS_EVERY) {
                configs_at = Some(tokio::time::Instant::now());
                match client.configs().await {
                    Ok(c) => configs = Some(c.content_hashes),
                    Err(e) => debug!(error = %e, "fetching the region's configurations failed"),
                }
            }
        }
        if let Err(e) = publish(&coord, configs.clone().unwrap_or_default()).await {
            debug!(error = %e, "publishing standby information failed");
            continue;
        }
        if let Err(e) = stage(&coord).await {
            warn!(error = %e, "staging handover authorizations failed");
        }
        if let Some(client) = &client {
            install_keys(&coord, client, &mut keys_installed).await;
            mark_moved(&coord, client, &mut moved_marked).await;
        }
    }
}

/// Proposes `SetRegionInfo` when what this region offers changed.
async fn publish(coord: &Coordinator, configs: BTreeSet<String>) -> anyhow::Result<()> {
    let region = coord.config.region.clone();
    let endpoint = match &coord.config.agents.opamp_endpoint {
        Some(e) => e.clone(),
        None => match &coord.config.control_plane {
            Some(cp) => format!(
                "wss://{}/v1/opamp",
                cp.trim_start_matches("https://")
                    .trim_start_matches("http://")
                    .trim_end_matches('/')
            ),
            None => return Ok(()),
        },
    };
    let key = &coord.agents.key;
    let update = RegionInfoUpdate {
        opamp_endpoint: endpoint,
        capacity: coord.config.agents.capacity,
        priority: coord.config.agents.priority,
        configs,
        signing_key: Some((key.key_id().to_string(), key.public_hex())),
    };
    let current = coord.read_state(|s| s.region_info().get(&region).cloned());
    if let Some(c) = &current {
        if c.opamp_endpoint == update.opamp_endpoint
            && c.capacity == update.capacity
            && c.priority == update.priority
            && c.configs == update.configs
            && c.signing_keys.iter().any(|(id, _)| id == key.key_id())
        {
            return Ok(());
        }
    }
    propose(coord, Command::SetRegionInfo { region, update }).await?;
    info!("standby information published");
    Ok(())
}

/// What must be (re)staged: own agents at home whose standby has no fresh
/// authorization for the current fingerprint, target and trust bundle.
fn to_stage(s: &ReplicatedState, region: &RegionName, now: Millis, ttl_ms: u64) -> Vec<TokenLeaf> {
    let Some(bundle) = s.trust_bundles().get(region) else {
        return Vec::new();
    };
    let batches = s.staged_batches().get(region);
    let mut out = Vec::new();
    for (id, e) in s.agents() {
        if &e.registration.home != region || e.placement != Placement::Home {
            continue;
        }
        let Some(target) = &e.standby else {
            continue;
        };
        let Some(endpoint) = s.region_info().get(target).map(|i| &i.opamp_endpoint) else {
            continue;
        };
        let fresh = e.staged.as_ref().is_some_and(|st| {
            let batch = batches.and_then(|b| b.get(&st.batch_id));
            &st.target == target
                && st.not_after.0 > now.0 + ttl_ms / 2
                && batch.is_some_and(|b| {
                    b.batch.header.trust_bundle_sha256 == bundle.sha256
                        && b.leaves.get(st.index as usize).is_some_and(|l| {
                            l.fingerprint == e.registration.fingerprint
                                && &l.target_endpoint == endpoint
                        })
                })
        });
        if !fresh {
            out.push(TokenLeaf {
                agent_id: id.clone(),
                fingerprint: e.registration.fingerprint,
                home: region.clone(),
                target: target.clone(),
                target_endpoint: endpoint.clone(),
            });
        }
    }
    out
}

/// Signs and commits authorizations for what needs them: one signature per
/// batch of up to `MAX_BATCH` agents.
async fn stage(coord: &Coordinator) -> anyhow::Result<()> {
    let region = coord.config.region.clone();
    let ttl = coord.config.agents.token_ttl_ms;
    let now = now_ms();
    let (leaves, bundle, epoch, key_known) = coord.read_state(|s| {
        (
            to_stage(s, &region, now, ttl),
            s.trust_bundles().get(&region).map(|b| b.pem.clone()),
            s.epoch(),
            s.region_info().get(&region).is_some_and(|i| {
                i.signing_keys
                    .iter()
                    .any(|(id, _)| id == coord.agents.key.key_id())
            }),
        )
    });
    let (Some(bundle), true) = (bundle, key_known) else {
        return Ok(());
    };
    for (n, chunk) in leaves.chunks(MAX_BATCH).enumerate() {
        let spec = BatchSpec {
            source: region.clone(),
            batch_id: now.0 * 1000 + n as u64,
            epoch,
            issued_at: now,
            not_after: Millis(now.0 + ttl),
        };
        let (batch, _) = tern_core::sign_batch(&spec, &bundle, chunk, coord.agents.key.pair())
            .map_err(|e| anyhow::anyhow!("signing batch {}: {e}", spec.batch_id))?;
        let reply = propose(
            coord,
            Command::StageAuthorizations {
                region: region.clone(),
                batch,
                leaves: chunk.to_vec(),
            },
        )
        .await?;
        info!(
            batch_id = spec.batch_id,
            agents = chunk.len(),
            outcome = ?reply.outcomes.first(),
            "handover authorizations staged"
        );
    }
    Ok(())
}

/// Installs every committed public handover key in this region's control
/// plane, when the set changed.
async fn install_keys(coord: &Coordinator, client: &RegionClient, last: &mut Option<KeysRequest>) {
    let mut keys: Vec<PublicKey> = coord.read_state(|s| {
        s.region_info()
            .iter()
            .flat_map(|(r, i)| {
                i.signing_keys.iter().map(move |(id, k)| PublicKey {
                    region: r.to_string(),
                    key_id: id.clone(),
                    public_key: k.clone(),
                })
            })
            .collect()
    });
    keys.sort();
    let req = KeysRequest { keys };
    if req.keys.is_empty() || last.as_ref() == Some(&req) {
        return;
    }
    match client.install_keys(&req).await {
        Ok(()) => {
            info!(
                keys = req.keys.len(),
                "public handover keys installed in the control plane"
            );
            *last = Some(req);
        }
        Err(e) => debug!(error = %e, "installing handover keys failed"),
    }
}

/// Tells this region's control plane which of its agents are attached
/// elsewhere (`MovedToPeer <target>`), once per agent and epoch.
async fn mark_moved(
    coord: &Coordinator,
    client: &RegionClient,
    done: &mut BTreeSet<(String, u64)>,
) {
    let region = coord.config.region.clone();
    let moved: Vec<MovedAgent> = coord.read_state(|s| {
        s.agents()
            .iter()
            .filter(|(_, e)| e.registration.home == region)
            .filter_map(|(id, e)| match &e.placement {
                Placement::Redirected { target, epoch }
                    if e.serving.as_ref() == Some(target)
                        && !done.contains(&(id.clone(), *epoch)) =>
                {
                    Some(MovedAgent {
                        agent_id: id.clone(),
                        target: target.to_string(),
                        epoch: *epoch,
                    })
                }
                _ => None,
            })
            .take(MAX_BATCH)
            .collect()
    });
    if moved.is_empty() {
        return;
    }
    let req = MovedRequest { agents: moved };
    match client.mark_moved(&req).await {
        Ok(()) => {
            info!(
                agents = req.agents.len(),
                "agents marked MovedToPeer in the control plane"
            );
            done.extend(req.agents.into_iter().map(|a| (a.agent_id, a.epoch)));
        }
        Err(e) => debug!(error = %e, "marking moved agents failed (region unreachable?)"),
    }
}

/// The leader's side: the standby plan and hand-back waves.
async fn leader_loop(coord: Arc<Coordinator>) {
    let wave_every = Duration::from_millis(coord.config.agents.handback_wave_interval_ms);
    let mut last_wave = tokio::time::Instant::now();
    let mut sent: HashMap<String, tokio::time::Instant> = HashMap::new();
    let mut tick = tokio::time::interval(TICK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        if !coord.is_leader() {
            continue;
        }
        if coord.read_state(|s| s.paused()) {
            continue;
        }
        if let Err(e) = replan(&coord).await {
            warn!(error = %e, "committing the standby plan failed");
        }
        if last_wave.elapsed() >= wave_every {
            last_wave = tokio::time::Instant::now();
            if let Err(e) = hand_back_wave(&coord, &mut sent).await {
                warn!(error = %e, "hand-back wave failed");
            }
        }
    }
}

/// The standby changes the planner asks for.
pub(crate) fn plan_changes(
    s: &ReplicatedState,
    now: Millis,
    ttl_ms: u64,
) -> Vec<(String, Option<RegionName>)> {
    let p = s.plan_with(&s.plan_regions(), now, ttl_ms);
    let mut changes = Vec::new();
    for (id, e) in s.agents() {
        if e.placement != Placement::Home {
            continue;
        }
        let want = p.standby.get(id).and_then(|r| r.clone().ok());
        if want != e.standby {
            changes.push((id.clone(), want));
        }
    }
    changes
}

async fn replan(coord: &Coordinator) -> anyhow::Result<()> {
    let ttl = coord.config.agents.token_ttl_ms;
    let changes = coord.read_state(|s| plan_changes(s, now_ms(), ttl));
    for chunk in changes.chunks(MAX_BATCH) {
        propose(
            coord,
            Command::SetStandbys {
                standbys: chunk.to_vec(),
            },
        )
        .await?;
        info!(changes = chunk.len(), "standby plan updated");
    }
    Ok(())
}

/// How long an agent directed home counts as on its way; one that has not
/// reported by then no longer holds back the next wave.
const RETURN_PATIENCE: Duration = Duration::from_secs(30);

/// One wave per region that is back: up to `handback_wave_size` agents,
/// while fewer than that many are still on their way home (directed home
/// by this leader within `RETURN_PATIENCE` and not yet reported home).
async fn hand_back_wave(
    coord: &Coordinator,
    sent: &mut HashMap<String, tokio::time::Instant>,
) -> anyhow::Result<()> {
    let size = coord.config.agents.handback_wave_size;
    sent.retain(|_, at| at.elapsed() < RETURN_PATIENCE);
    let waves: Vec<(RegionName, Vec<String>)> = coord.read_state(|s| {
        let mut by_region: BTreeMap<RegionName, (usize, Vec<String>)> = BTreeMap::new();
        for (id, e) in s.agents() {
            let home = &e.registration.home;
            if !s.region_home_ready(home) {
                continue;
            }
            let slot = by_region.entry(home.clone()).or_default();
            match e.placement {
                Placement::Returning { .. } if sent.contains_key(id) => slot.0 += 1,
                Placement::Redirected { .. } => slot.1.push(id.clone()),
                _ => {}
            }
        }
        by_region
            .into_iter()
            .filter(|(_, (returning, away))| *returning < size && !away.is_empty())
            .map(|(r, (returning, mut away))| {
                away.truncate(size - returning);
                (r, away)
            })
            .collect()
    });
    for (region, agents) in waves {
        let n = agents.len();
        let now = tokio::time::Instant::now();
        sent.extend(agents.iter().map(|a| (a.clone(), now)));
        let reply = propose(
            coord,
            Command::HandBack {
                region: region.clone(),
                agents,
            },
        )
        .await?;
        info!(region = %region, agents = n, outcome = ?reply.outcomes.first(), "hand-back wave");
    }
    Ok(())
}
