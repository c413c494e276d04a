//! Multi-process test of the agent path end to end: three regions (each a
//! reference stand-in and a `tern serve` coordinator) and simulated fleets
//! (`tern-shim fleet`, one process per group of agents, each agent with its
//! own leaf issued by its home region's agent CA). A region's coordinator
//! and stand-in (eu or us, not the leader's) are SIGKILLed together; its
//! agents must reach healthy regions with their identity (tokens staged
//! before the outage, redeemed by the targets' stand-ins), then come home
//! once the region is back.
//!
//! Configurations (see `support::federation::plane_configs`): every region
//! holds `cfg-common`; only eu and us hold `cfg-west`.

mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use support::federation::{now_ms, Federation, FederationConfig, REGION_NAMES};
use support::fleet::{start_fleet, wait_metric};
use support::http_get;
use tern_tests::{wait_until, Check, Harness};

const DOWN_AFTER_MS: u64 = 10_000;
const UP_AFTER_MS: u64 = 10_000;

fn handover_status(fed: &Federation, j: usize) -> anyhow::Result<serde_json::Value> {
    let (code, body) = http_get(fed.planes[j].control, "/_standin/handover")?;
    if code != 200 {
        bail!("/_standin/handover answered {code}");
    }
    Ok(serde_json::from_str(&body)?)
}

fn run(name: &str, body: impl FnOnce(&Harness) -> anyhow::Result<()>) {
    Harness::run("agent_failover", name, body)
}

/// Properties:
/// - with a region's coordinator and stand-in SIGKILLed together, at least 99% of
///   its 1,000 redirectable agents are attached to healthy regions within
///   down_after + 10 s of the kill, each redeemed by the target's stand-in
///   (token staged before the outage);
/// - no agent is directed to two regions in one epoch;
/// - no agent goes to a region without its configuration (cfg-west agents
///   only to us: ap lacks cfg-west);
/// - agents whose allowed regions are all down stay put and are reported
///   stranded (`tern_agents_stranded`);
/// - once the region is back, its coordinator marks the moved agents `MovedToPeer`
///   in its stand-in, and every agent is home within up_after + 30 s of
///   the restore (hand-back waves, make-before-break).
#[test]
fn region_loss_moves_agents_and_brings_them_home() {
    run("region_loss_moves_agents_and_brings_them_home", |h| {
        let fed = Federation::start(
            h,
            FederationConfig {
                relays: false,
                down_after_ms: DOWN_AFTER_MS,
                up_after_ms: Some(UP_AFTER_MS),
                extra_config:
                    "[agents]\nhandback_wave_size = 250\nhandback_wave_interval_ms = 500\n"
                        .to_string(),
                ..FederationConfig::default()
            },
        )?;
        // The lost region is eu or us (both hold cfg-west, so its cfg-west
        // agents have exactly one possible standby: the other one), and
        // not the Raft leader's: losing the leader adds an election and a
        // fresh detector's grace period (measured separately, see
        // bench/reports/agents.md).
        let leader = fed.leader()?;
        let li = if leader == 0 { 1 } else { 0 };
        let west_standby = REGION_NAMES[1 - li];
        let lost = REGION_NAMES[li];
        let other = 1 - li;
        eprintln!(
            "[agent_failover] leader {}, losing {lost}",
            REGION_NAMES[leader]
        );
        let fleets = vec![
            start_fleet(
                h,
                &fed,
                &format!("{lost}-common"),
                li,
                500,
                "cfg-common",
                None,
            )?,
            start_fleet(h, &fed, &format!("{lost}-west"), li, 500, "cfg-west", None)?,
            start_fleet(
                h,
                &fed,
                &format!("{lost}-resident"),
                li,
                20,
                "cfg-common",
                Some(lost),
            )?,
            start_fleet(
                h,
                &fed,
                &format!("{}-common", REGION_NAMES[other]),
                other,
                50,
                "cfg-common",
                None,
            )?,
        ];
        let movable = 1_000usize;
        // Every agent registered and attached at home.
        wait_until(
            "every simulated agent to register and attach at home",
            Duration::from_secs(120),
            Duration::from_millis(500),
            || {
                if let Some(f) = fleets.iter().find(|f| !f.process.is_running()) {
                    return Check::Fatal(anyhow::anyhow!("fleet {} exited; see its log", f.name));
                }
                let pending: Vec<String> = fleets
                    .iter()
                    .filter_map(|f| match f.status() {
                        Ok(s) if s.registered >= f.agents && f.at_home() >= f.agents => None,
                        Ok(s) => Some(format!(
                            "{}: {} registered, {} at home of {}",
                            f.name,
                            s.registered,
                            f.at_home(),
                            f.agents
                        )),
                        Err(e) => Some(format!("{}: {e:#}", f.name)),
                    })
                    .collect();
                Check::ready_or(pending.is_empty().then_some(()), pending.join("; "))
            },
        )?;
        // Every movable eu agent covered by a staged authorization.
        wait_metric(
            &fed,
            other,
            "the lost region's 1,000 movable agents to be staged",
            "tern_agents_staged",
            &[("region", lost)],
            movable as i64,
            Duration::from_secs(60),
        )?;

        // Lose eu: coordinator and control plane together.
        let t0 = now_ms();
        fed.kill(li);
        fed.kill_plane(li);
        eprintln!("[agent_failover] {lost}'s coordinator and stand-in SIGKILLed at {t0}");
        let eu_fleets = &fleets[..2];
        let mut half_at = None;
        let mut p99_at = None;
        let mut all_at = None;
        let deadline = Instant::now() + Duration::from_secs(90);
        while Instant::now() < deadline && all_at.is_none() {
            let away: usize = eu_fleets.iter().map(|f| f.away()).sum();
            let t = now_ms() - t0;
            if half_at.is_none() && away * 2 >= movable {
                half_at = Some(t);
            }
            if p99_at.is_none() && away * 100 >= movable * 99 {
                p99_at = Some(t);
            }
            if away >= movable {
                all_at = Some(t);
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        eprintln!(
            "[agent_failover] kill -> attached elsewhere: 50% {half_at:?} ms, 99% {p99_at:?} ms, 100% {all_at:?} ms (down_after {DOWN_AFTER_MS} ms)"
        );
        let p99 = p99_at.context("99% of the lost region's agents never attached elsewhere")?;
        if p99 > DOWN_AFTER_MS + 10_000 {
            bail!("99% attached elsewhere after {p99} ms, more than down_after + 10 s");
        }

        // Directives and placements, from every fleet's events.
        for f in &fleets {
            let mut targets: BTreeMap<(String, u64), BTreeSet<String>> = BTreeMap::new();
            for e in f.events()? {
                if e.event == "directive" && e.action.as_deref() == Some("redirect") {
                    if let (Some(epoch), Some(t)) = (e.epoch, e.target.clone()) {
                        targets
                            .entry((e.agent_id.clone(), epoch))
                            .or_default()
                            .insert(t);
                    }
                }
                if f.name.ends_with("-west")
                    && e.event == "applied"
                    && e.outcome.as_deref() == Some("attached")
                    && e.target.as_deref() != Some(west_standby)
                {
                    bail!(
                        "{} was sent to {:?}, which lacks cfg-west",
                        e.agent_id,
                        e.target
                    );
                }
            }
            if let Some(((agent, epoch), t)) = targets.iter().find(|(_, t)| t.len() > 1) {
                bail!("{agent} was directed to {t:?} in epoch {epoch}");
            }
        }
        let redeemed: u64 = (0..fed.len())
            .filter(|j| *j != li)
            .map(|j| handover_status(&fed, j).map(|s| s["redeemed"].as_u64().unwrap_or(0)))
            .sum::<anyhow::Result<u64>>()?;
        eprintln!("[agent_failover] tokens redeemed by the surviving stand-ins: {redeemed}");
        if redeemed < (movable as u64 * 99) / 100 {
            bail!("only {redeemed} tokens redeemed");
        }
        wait_metric(
            &fed,
            other,
            "the lost region's 20 resident agents to be reported stranded",
            "tern_agents_stranded",
            &[("region", lost)],
            20,
            Duration::from_secs(30),
        )?;
        if fleets[2].away() != 0 {
            bail!("a resident agent (allowed only {lost}) left it");
        }

        // Bring eu back.
        let t1 = now_ms();
        fed.restart_plane(li)?;
        fed.restart(li)?;
        eprintln!("[agent_failover] {lost} restored at {t1}");
        wait_until(
            "the restored stand-in to hold MovedToPeer marks",
            Duration::from_secs(60),
            Duration::from_millis(500),
            || match handover_status(&fed, li) {
                Ok(s) => {
                    let n = s["moved"].as_object().map(|m| m.len()).unwrap_or(0);
                    let home = s["attached_home"].as_u64().unwrap_or(0) as usize;
                    // Marks are cleared as agents come home: count both.
                    Check::ready_or(
                        (n + home >= movable).then_some(()),
                        format!("{n} marked, {home} home"),
                    )
                }
                Err(e) => Check::pending(e),
            },
        )?;
        wait_until(
            "every agent of the lost region to be home",
            Duration::from_millis(UP_AFTER_MS + 60_000),
            Duration::from_millis(200),
            || {
                let home: usize = eu_fleets.iter().map(|f| f.at_home()).sum();
                Check::ready_or(
                    (home >= movable).then_some(()),
                    format!("{home} of {movable} home"),
                )
            },
        )?;
        let home_ms = now_ms() - t1;
        eprintln!("[agent_failover] restore -> all home: {home_ms} ms (up_after {UP_AFTER_MS} ms)");
        if home_ms > UP_AFTER_MS + 30_000 {
            bail!("agents home after {home_ms} ms, more than up_after + 30 s");
        }
        Ok(())
    });
}
