//! Multi-process test of `tern drill REGION`: three regions (each a
//! reference stand-in and a `tern serve` coordinator) and simulated agents
//! (`tern-shim fleet`). The drill runs twice against the same federation,
//! first by drain, then by an outage of the region's stand-in, and what it
//! reports is checked against what the test observed independently: the
//! committed entries (audit trail, leader-stamped) and the agents' own
//! events (the shims' events files, stamped by the fleet process). All
//! processes run on this machine, so the clocks are the same clock.

mod support;

use std::process::Output;
use std::time::Duration;

use anyhow::{bail, ensure, Context};
use serde_json::Value;
use support::federation::{
    now_ms, run_bounded_any, transitions, AuditRecord, Federation, FederationConfig, REGION_NAMES,
};
use support::fleet::{start_fleet, wait_metric, Fleet};
use tern_tests::{wait_until, Check, Harness};

const DOWN_AFTER_MS: u64 = 5_000;
const UP_AFTER_MS: u64 = 4_000;
/// The drill's polling interval (its timing resolution).
const POLL_MS: u64 = 200;
/// How late the drill may see a step that the test saw happen: its poll
/// interval, two admin reads, a shim's report batched (20 ms) and committed
/// through Raft, on a loaded 2-core machine.
const SEEN_WITHIN_MS: u64 = 3_000;
const AGENTS: usize = 40;

fn run(name: &str, body: impl FnOnce(&Harness) -> anyhow::Result<()>) {
    Harness::run("drill", name, body)
}

/// One step of the drill's JSON report, made absolute (Unix ms).
#[derive(Debug)]
struct Step {
    name: String,
    at: u64,
}

/// Runs `tern drill` and returns its JSON report (and the raw output).
fn drill(fed: &Federation, via: usize, args: &[&str]) -> anyhow::Result<(Value, Output)> {
    let mut cmd = fed.admin.cmd(&fed.nodes[via].grpc());
    cmd.arg("drill")
        .args(args)
        .args(["--poll-ms", &POLL_MS.to_string(), "--step-timeout", "60"])
        .args(["--output", "json"]);
    let out = run_bounded_any(&mut cmd, Duration::from_secs(240))?;
    eprintln!(
        "[drill] tern drill {args:?}: exit {:?}\n{}{}",
        out.status.code(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let report: Value =
        serde_json::from_slice(&out.stdout).context("parsing `tern drill --output json`")?;
    Ok((report, out))
}

/// Checks the report's own consistency and returns its steps (absolute).
fn steps_of(report: &Value, expect: &[&str]) -> anyhow::Result<Vec<Step>> {
    ensure!(report["outcome"] == "completed", "drill outcome: {report}");
    let start = report["started_at_ms"].as_u64().context("started_at_ms")?;
    let total = report["total_ms"].as_u64().context("total_ms")?;
    let mut prev = 0;
    let mut out = Vec::new();
    for s in report["steps"].as_array().context("steps")? {
        let at = s["at_ms"].as_u64().context("at_ms")?;
        let took = s["took_ms"].as_u64().context("took_ms")?;
        ensure!(
            at >= prev && took == at - prev,
            "step times inconsistent: {s}"
        );
        ensure!(at <= total, "step after the drill's end: {s}");
        prev = at;
        out.push(Step {
            name: s["name"].as_str().unwrap_or_default().to_string(),
            at: start + at,
        });
    }
    let names: Vec<&str> = out.iter().map(|s| s.name.as_str()).collect();
    ensure!(names == expect, "steps {names:?}, expected {expect:?}");
    Ok(out)
}

fn step<'a>(steps: &'a [Step], name: &str) -> &'a Step {
    steps
        .iter()
        .find(|s| s.name == name)
        .unwrap_or_else(|| panic!("step {name} checked by steps_of"))
}

/// `t` (the drill saw it) is no earlier than `happened` (the test saw it
/// happen) and no later than SEEN_WITHIN_MS after.
fn seen_after(what: &str, t: u64, happened: u64) -> anyhow::Result<()> {
    ensure!(
        t + 50 >= happened && t <= happened + SEEN_WITHIN_MS,
        "{what}: the drill reports {t}, the test saw it at {happened} ({} ms apart)",
        t as i64 - happened as i64
    );
    Ok(())
}

/// The last time (Unix ms) an agent of `fleet` verified an attachment
/// after a directive with `action`, in `[from, to]`, once every agent of
/// the fleet has such an event (the fleet flushes its events file every
/// status interval, so the last lines may land after the drill ended).
fn last_attached(fleet: &Fleet, action: &str, from: u64, to: u64) -> anyhow::Result<u64> {
    wait_until(
        &format!("every agent's {action} attachment in the events file"),
        Duration::from_secs(10),
        Duration::from_millis(200),
        || {
            let events = match fleet.events() {
                Ok(e) => e,
                Err(e) => return Check::Fatal(e),
            };
            let mut last = 0;
            let mut agents = std::collections::BTreeSet::new();
            for e in events {
                if e.event == "applied"
                    && e.action.as_deref() == Some(action)
                    && e.outcome.as_deref() == Some("attached")
                    && (from..=to).contains(&e.t_ms)
                {
                    last = last.max(e.t_ms);
                    agents.insert(e.agent_id);
                }
            }
            Check::ready_or(
                (agents.len() >= fleet.agents).then_some(last),
                format!("{} of {} agents", agents.len(), fleet.agents),
            )
        },
    )
}

/// The agent steps against the agents' own events: `agents_attached` no
/// earlier than the last attachment elsewhere and `agents_home` no earlier
/// than the last attachment at home (each within SEEN_WITHIN_MS), every
/// agent of the fleet having both in `[start, end]`; and the recorded
/// audit entry matches the report. Returns (last away, last home), Unix ms.
fn check_agent_steps(
    fleet: &Fleet,
    steps: &[Step],
    report: &Value,
    audit: &[AuditRecord],
) -> anyhow::Result<(u64, u64)> {
    let start = report["started_at_ms"].as_u64().unwrap_or(0);
    let end = start + report["total_ms"].as_u64().unwrap_or(0);
    let away_at = last_attached(fleet, "redirect", start, end)?;
    seen_after(
        "agents_attached",
        step(steps, "agents_attached").at,
        away_at,
    )?;
    let home_at = last_attached(fleet, "return_home", start, end)?;
    seen_after("agents_home", step(steps, "agents_home").at, home_at)?;
    check_recorded(audit, report)?;
    Ok((away_at, home_at))
}

/// The drill's audit record: the same steps as it printed, by an admin.
fn check_recorded(audit: &[AuditRecord], report: &Value) -> anyhow::Result<()> {
    let idx = report["audit_log_index"]
        .as_u64()
        .context("audit_log_index")?;
    let rec = audit
        .iter()
        .find(|a| a.log_index == idx && a.kind == "record_drill")
        .with_context(|| format!("no record_drill audit record at log index {idx}"))?;
    ensure!(rec.actor.starts_with("admin:"), "recorded by {}", rec.actor);
    let d = &rec.details["drill"];
    ensure!(
        d["steps"] == report["steps"]
            && d["started_at_ms"] == report["started_at_ms"]
            && d["total_ms"] == report["total_ms"]
            && d["outcome"] == report["outcome"],
        "audit record {d} differs from the report {report}"
    );
    ensure!(
        rec.summary.starts_with("drill of "),
        "summary {}",
        rec.summary
    );
    Ok(())
}

/// Properties, for a drill by drain and then by outage of the same region:
/// - the drill completes, restores the region and brings every agent home,
///   and prints steps in order whose durations add up;
/// - each step it reports is no earlier than, and at most SEEN_WITHIN_MS
///   after, the event the test saw independently: the drain/undrain or
///   the region's transitions committed (audit trail), the last agent
///   attached elsewhere and the last agent attached at home (the agents'
///   own events);
/// - every agent of the region moved and came back during the drill;
/// - the timings are recorded in the audit trail as printed;
/// - a drill is refused (exit 2, nothing changed) while another is
///   impossible: an unknown region, or outage without a stand-in address.
#[test]
fn drill_times_every_step_against_observed_events() {
    run("drill_times_every_step_against_observed_events", |h| {
        let fed = Federation::start(
            h,
            FederationConfig {
                relays: false,
                down_after_ms: DOWN_AFTER_MS,
                up_after_ms: Some(UP_AFTER_MS),
                extra_config:
                    "[agents]\nhandback_wave_size = 20\nhandback_wave_interval_ms = 300\n"
                        .to_string(),
                ..FederationConfig::default()
            },
        )?;
        let leader = fed.leader()?;
        // Drill a region that does not hold the Raft leader (losing the
        // leader's stand-in is fine too, but a leader change would add
        // its own timing).
        let r = if leader == 0 { 1 } else { 0 };
        let region = REGION_NAMES[r];
        let via = (r + 1) % fed.len();
        let fleet = start_fleet(h, &fed, region, r, AGENTS, "cfg-common", None)?;
        wait_until(
            "every simulated agent to register and attach at home",
            Duration::from_secs(90),
            Duration::from_millis(300),
            || {
                if !fleet.process.is_running() {
                    return Check::Fatal(anyhow::anyhow!("the fleet exited; see its log"));
                }
                match fleet.status() {
                    Ok(s) if s.registered >= AGENTS && fleet.at_home() >= AGENTS => {
                        Check::Ready(())
                    }
                    Ok(s) => Check::pending(format!("{} registered", s.registered)),
                    Err(e) => Check::pending(format!("{e:#}")),
                }
            },
        )?;
        wait_metric(
            &fed,
            via,
            "the region's agents to be staged",
            "tern_agents_staged",
            &[("region", region)],
            AGENTS as i64,
            Duration::from_secs(60),
        )?;

        // Refusals change nothing and say why.
        let out = run_bounded_any(
            fed.admin
                .cmd(&fed.nodes[via].grpc())
                .args(["drill", "nowhere"]),
            Duration::from_secs(30),
        )?;
        ensure!(out.status.code() == Some(2), "unknown region: {out:?}");
        ensure!(
            String::from_utf8_lossy(&out.stderr).contains("not a region"),
            "unknown region: {out:?}"
        );
        let out = run_bounded_any(
            fed.admin
                .cmd(&fed.nodes[via].grpc())
                .args(["drill", region, "--method", "outage"]),
            Duration::from_secs(30),
        )?;
        ensure!(
            out.status.code() == Some(2),
            "outage without stand-in: {out:?}"
        );
        ensure!(
            String::from_utf8_lossy(&out.stderr).contains("--standin-control"),
            "outage without stand-in: {out:?}"
        );

        let expect = [
            "decision",
            "handover",
            "agents_attached",
            "restore",
            "healthy",
            "hand_back",
            "agents_home",
        ];

        // 1. By drain.
        let (report, out) = drill(&fed, via, &[region])?;
        ensure!(out.status.success(), "drill by drain failed");
        ensure!(report["agents"] == AGENTS as u64, "agents: {report}");
        let steps = steps_of(&report, &expect)?;
        let start = report["started_at_ms"].as_u64().unwrap_or(0);
        let end = start + report["total_ms"].as_u64().unwrap_or(0);
        let audit = fed.audit()?;
        let modes: Vec<&AuditRecord> = audit
            .iter()
            .filter(|a| {
                a.kind == "set_region_mode"
                    && a.details["region"] == region
                    && !a.summary.starts_with("refused")
                    && (start..=end).contains(&a.at_ms)
            })
            .collect();
        ensure!(
            modes.len() == 2
                && modes[0].details["mode"] == "drained"
                && modes[1].details["mode"] == "auto",
            "expected a drain then an undrain during the drill: {modes:?}"
        );
        seen_after(
            "decision (drain)",
            step(&steps, "decision").at,
            modes[0].at_ms,
        )?;
        seen_after(
            "restore (undrain)",
            step(&steps, "restore").at,
            modes[1].at_ms,
        )?;
        let (away_at, home_at) = check_agent_steps(&fleet, &steps, &report, &audit)?;
        eprintln!(
            "[drill] by drain: attached elsewhere +{} ms, home +{} ms",
            away_at - start,
            home_at - start
        );

        // 2. By an outage of the region's stand-in.
        let control = fed.planes[r].control.to_string();
        let t0 = now_ms();
        let (report, out) = drill(
            &fed,
            via,
            &[region, "--method", "outage", "--standin-control", &control],
        )?;
        ensure!(out.status.success(), "drill by outage failed");
        let steps = steps_of(&report, &expect)?;
        let start = report["started_at_ms"].as_u64().unwrap_or(0);
        let end = start + report["total_ms"].as_u64().unwrap_or(0);
        ensure!(start >= t0, "the drill started before it was run");
        let audit = fed.audit()?;
        let moves: Vec<_> = transitions(&audit)
            .into_iter()
            .filter(|t| t.region == region && (start..=end).contains(&t.at_ms))
            .collect();
        let down = moves
            .iter()
            .find(|t| t.to == "unreachable")
            .with_context(|| format!("no transition to unreachable: {moves:?}"))?;
        let healthy = moves
            .iter()
            .rev()
            .find(|t| t.to == "healthy")
            .with_context(|| format!("no transition back to healthy: {moves:?}"))?;
        seen_after(
            "decision (unreachable)",
            step(&steps, "decision").at,
            down.at_ms,
        )?;
        seen_after("healthy", step(&steps, "healthy").at, healthy.at_ms)?;
        ensure!(
            step(&steps, "decision").at - start >= DOWN_AFTER_MS,
            "an outage cannot be decided before down_after"
        );
        check_agent_steps(&fleet, &steps, &report, &audit)?;
        // The stand-in is back up and the region healthy after the drill.
        let regions = fed.regions()?;
        let v = regions
            .iter()
            .find(|v| v.region == region)
            .context("region missing")?;
        if v.state != "healthy" {
            bail!("{region} is {} after the drill", v.state);
        }
        Ok(())
    });
}
