//! `tern drill REGION`: a disaster-recovery drill against a running
//! federation. It takes the region out (a drain, or an outage of its
//! control plane where the region is a stand-in that allows it), waits for
//! and times every step (decision, handover, agents attached, restore,
//! healthy, hand-back, agents home), restores the region, prints the
//! timings and records them in the audit trail.
//!
//! It decides nothing itself: the coordinators decide and act exactly as
//! they would in a real outage; the drill only acts as the operator (or the
//! outage) and watches, through the admin API, with a resolution of
//! `--poll-ms`. Ctrl-C (or SIGTERM) restores the region and records the
//! drill as aborted.

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{anyhow, bail, Context};
use clap::{Args, ValueEnum};
use serde_json::json;
use tern_proto::v1 as pb;
use tern_proto::v1::admin_client::AdminClient;
use tonic::transport::Channel;

use super::admin::connect;
use super::agents::api_err;
use super::{ClientArgs, Output};
use crate::standin::{ControlClient, Mode};

/// How a drill takes its region out.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum DrillMethod {
    /// `tern drain` (planned maintenance path): works against any region.
    Drain,
    /// The region's control plane goes down as if lost, and the other
    /// regions must agree it is Unreachable. Needs `--standin-control`: the
    /// control address of the region's stand-in (a real Ampora control
    /// plane cannot be switched off from here).
    Outage,
}

impl DrillMethod {
    fn as_str(self) -> &'static str {
        match self {
            DrillMethod::Drain => "drain",
            DrillMethod::Outage => "outage",
        }
    }
}

/// `tern drill` arguments.
#[derive(Debug, Args)]
pub struct DrillArgs {
    /// The region to take out
    pub region: String,
    /// How to take it out
    #[arg(long, value_enum, default_value_t = DrillMethod::Drain)]
    pub method: DrillMethod,
    /// With --method outage: the region stand-in's control address (ip:port)
    #[arg(long, value_name = "ADDR")]
    pub standin_control: Option<String>,
    /// Longest wait for any one step, seconds; past it the drill restores
    /// the region, records a failure and exits 1
    #[arg(long, default_value_t = 600, value_name = "SECONDS")]
    pub step_timeout: u64,
    /// How often the drill looks, ms: the resolution of its timings
    #[arg(long, default_value_t = 250, value_name = "MS")]
    pub poll_ms: u64,
    /// Run even if another region is not healthy, automation is paused or
    /// frozen, or agents are away from home (not recommended)
    #[arg(long)]
    pub force: bool,
    #[command(flatten)]
    pub client: ClientArgs,
}

/// Agent counts of one home region, from the agent summary.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counts {
    pub total: u64,
    /// Placement home (whatever they reported).
    pub home: u64,
    /// Placement home and last reported attached at home.
    pub at_home: u64,
    pub redirected: u64,
    /// Redirected and last reported attached to another region.
    pub attached_away: u64,
    pub stranded: u64,
    pub returning: u64,
}

/// Counts the agents homed in `region`.
pub fn counts(summary: &pb::AgentSummaryResponse, region: &str) -> Counts {
    let mut c = Counts::default();
    for row in summary.counts.iter().filter(|r| r.home_region == region) {
        c.total += row.count;
        let elsewhere = !row.serving_region.is_empty() && row.serving_region != region;
        match row.state.as_str() {
            "home" => {
                c.home += row.count;
                if row.serving_region == region {
                    c.at_home += row.count;
                }
            }
            "redirected" => {
                c.redirected += row.count;
                if elsewhere {
                    c.attached_away += row.count;
                }
            }
            "stranded" => c.stranded += row.count,
            "returning" => c.returning += row.count,
            _ => {}
        }
    }
    c
}

/// What one look at the federation saw.
#[derive(Debug, Clone, Default)]
pub struct Look {
    /// The region's committed health state and mode.
    pub state: String,
    pub mode: String,
    pub agents: Counts,
}

/// The steps of a drill, in order. The restore action sits between
/// `agents_attached` and `healthy`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    /// The decision that takes the region out is committed: the drain, or
    /// the Unreachable state.
    Decision,
    /// Every agent of the region has a directive away (redirected) or is
    /// known to have none (stranded).
    Handover,
    /// Every redirected agent reported attached to another region.
    AgentsAttached,
    /// The restore (undrain, or the control plane back up) took effect.
    Restore,
    /// The region is Healthy and under automatic control again.
    Healthy,
    /// The first hand-back wave: an agent is on its way home (or home).
    HandBack,
    /// Every agent of the region reported attached at home.
    AgentsHome,
}

impl Step {
    pub fn name(self) -> &'static str {
        match self {
            Step::Decision => "decision",
            Step::Handover => "handover",
            Step::AgentsAttached => "agents_attached",
            Step::Restore => "restore",
            Step::Healthy => "healthy",
            Step::HandBack => "hand_back",
            Step::AgentsHome => "agents_home",
        }
    }

    /// Whether `look` shows this step reached (for the steps the drill
    /// waits for; `Restore` is the drill's own action, and `Decision` of a
    /// drain is the drain's reply).
    pub fn reached(self, look: &Look) -> bool {
        let a = &look.agents;
        match self {
            Step::Decision => look.state == "unreachable" || look.mode == "drained",
            Step::Handover => a.home + a.returning == 0,
            Step::AgentsAttached => a.home + a.returning == 0 && a.attached_away == a.redirected,
            Step::Restore => true,
            Step::Healthy => look.state == "healthy" && look.mode == "auto",
            Step::HandBack => a.total == 0 || a.home + a.returning > 0,
            Step::AgentsHome => a.at_home == a.total,
        }
    }
}

/// Why a drill may not start now (empty: it may). `force` skips the
/// federation-wide checks, never the region's own.
pub fn preflight(
    regions: &pb::RegionsResponse,
    summary: &pb::AgentSummaryResponse,
    region: &str,
    method: DrillMethod,
    force: bool,
) -> Vec<String> {
    let mut why = Vec::new();
    let Some(r) = regions.regions.iter().find(|r| r.region == region) else {
        let known: Vec<&str> = regions.regions.iter().map(|r| r.region.as_str()).collect();
        return vec![format!(
            "{region} is not a region of this federation (regions: {})",
            known.join(", ")
        )];
    };
    if r.state != "healthy" || r.mode != "auto" {
        why.push(format!(
            "{region} is {} (mode {}); a drill starts from a healthy region under automatic control",
            r.state, r.mode
        ));
    }
    if regions.regions.len() < 2 {
        why.push("a drill needs another region to take the agents".into());
    }
    if method == DrillMethod::Outage && regions.paused {
        why.push("automation is paused: an outage would never be acted on (`tern resume`)".into());
    }
    if force {
        return why;
    }
    for o in regions.regions.iter().filter(|o| o.region != region) {
        if o.state != "healthy" || o.mode != "auto" {
            why.push(format!(
                "{} is {} (mode {}): do not take a second region out",
                o.region, o.state, o.mode
            ));
        }
    }
    if regions.paused {
        why.push("automation is paused (`tern resume`)".into());
    }
    if regions.frozen {
        why.push("automatic decisions are frozen (most regions look down)".into());
    }
    let away: u64 = summary
        .counts
        .iter()
        .filter(|c| c.state != "home")
        .map(|c| c.count)
        .sum();
    if away > 0 {
        why.push(format!(
            "{away} agents are not home: a handover or hand-back is in progress"
        ));
    }
    why
}

/// One reached step.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Timed {
    pub step: Step,
    pub at_ms: u64,
    pub took_ms: u64,
}

/// The drill's clock and record of steps.
struct Timeline {
    start: Instant,
    last_ms: u64,
    steps: Vec<Timed>,
}

impl Timeline {
    fn new() -> Timeline {
        Timeline {
            start: Instant::now(),
            last_ms: 0,
            steps: Vec::new(),
        }
    }

    fn now_ms(&self) -> u64 {
        u64::try_from(self.start.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    fn reach(&mut self, step: Step, at_ms: u64, quiet: bool) {
        let t = Timed {
            step,
            at_ms,
            took_ms: at_ms.saturating_sub(self.last_ms),
        };
        self.last_ms = at_ms;
        if !quiet {
            println!(
                "  {:<16} {:>9}  (+{})",
                step.name(),
                secs(t.at_ms),
                secs(t.took_ms)
            );
        }
        self.steps.push(t);
    }
}

fn secs(ms: u64) -> String {
    format!("{:.1} s", ms as f64 / 1000.0)
}

fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

/// The admin connection and what the drill needs to act and look.
struct Drill {
    admin: AdminClient<Channel>,
    region: String,
    method: DrillMethod,
    standin: Option<ControlClient>,
    poll: Duration,
    step_timeout: Duration,
    quiet: bool,
}

impl Drill {
    async fn look(&mut self) -> anyhow::Result<Look> {
        let regions = self
            .admin
            .regions(pb::RegionsRequest {})
            .await
            .map_err(|s| api_err(s, None))?
            .into_inner();
        let summary = self
            .admin
            .agent_summary(pb::AgentSummaryRequest {})
            .await
            .map_err(|s| api_err(s, None))?
            .into_inner();
        let r = regions
            .regions
            .iter()
            .find(|r| r.region == self.region)
            .ok_or_else(|| anyhow!("{} is no longer a region of this federation", self.region))?;
        Ok(Look {
            state: r.state.clone(),
            mode: r.mode.clone(),
            agents: counts(&summary, &self.region),
        })
    }

    /// Waits until `steps` are all reached, in order, recording each the
    /// first time a look shows it (a later step seen in the same look as an
    /// earlier one is reached at the same time). Transient errors of a look
    /// are retried until the step's deadline.
    async fn wait(&mut self, tl: &mut Timeline, steps: &[Step]) -> anyhow::Result<Look> {
        let mut pending = steps.iter().copied().peekable();
        let mut deadline = Instant::now() + self.step_timeout;
        let mut last_look = Look::default();
        loop {
            let last_err = match self.look().await {
                Ok(look) => {
                    let at = tl.now_ms();
                    while let Some(step) = pending.peek().copied() {
                        if !step.reached(&look) {
                            break;
                        }
                        tl.reach(step, at, self.quiet);
                        pending.next();
                        deadline = Instant::now() + self.step_timeout;
                    }
                    last_look = look;
                    None
                }
                Err(e) => Some(e),
            };
            let Some(step) = pending.peek().copied() else {
                return Ok(last_look);
            };
            if Instant::now() >= deadline {
                let a = &last_look.agents;
                let seen = match last_err {
                    Some(e) => format!("last look failed: {e:#}"),
                    None => format!(
                        "last seen: {} {} (mode {}); agents: {} home ({} attached at home), \
                         {} redirected ({} attached elsewhere), {} returning, {} stranded",
                        self.region,
                        last_look.state,
                        last_look.mode,
                        a.home,
                        a.at_home,
                        a.redirected,
                        a.attached_away,
                        a.returning,
                        a.stranded
                    ),
                };
                bail!(
                    "step {} not reached within {} s; {seen}",
                    step.name(),
                    self.step_timeout.as_secs()
                );
            }
            tokio::time::sleep(self.poll).await;
        }
    }

    async fn set_mode(&mut self, action: pb::RegionModeAction) -> anyhow::Result<String> {
        let r = self
            .admin
            .set_region_mode(pb::SetRegionModeRequest {
                region: self.region.clone(),
                action: action as i32,
                expect_epoch: None,
                request_id: String::new(),
            })
            .await
            .map_err(|s| api_err(s, Some(&self.region)))?
            .into_inner();
        Ok(r.mode)
    }

    fn standin(&self) -> anyhow::Result<&ControlClient> {
        self.standin
            .as_ref()
            .ok_or_else(|| anyhow!("--standin-control is required with --method outage"))
    }

    /// Takes the region out.
    async fn take_out(&mut self, tl: &mut Timeline) -> anyhow::Result<()> {
        match self.method {
            DrillMethod::Drain => {
                self.set_mode(pb::RegionModeAction::Drain).await?;
                let at = tl.now_ms();
                tl.reach(Step::Decision, at, self.quiet);
            }
            DrillMethod::Outage => {
                self.standin()?
                    .set_mode(Mode::Down)
                    .await
                    .context("taking the region's stand-in down")?;
                self.wait(tl, &[Step::Decision]).await?;
            }
        }
        Ok(())
    }

    /// Gives the region back. Safe to call whatever the drill reached:
    /// an undrain of a region that is not drained is refused harmlessly.
    async fn restore(&mut self) -> anyhow::Result<()> {
        match self.method {
            DrillMethod::Drain => match self.set_mode(pb::RegionModeAction::Undrain).await {
                Ok(_) => Ok(()),
                Err(e) if e.to_string().starts_with("AlreadyExists") => Ok(()),
                Err(e) => Err(e),
            },
            DrillMethod::Outage => {
                self.standin()?
                    .set_mode(Mode::Up)
                    .await
                    .context("bringing the region's stand-in back up")?;
                Ok(())
            }
        }
    }

    /// The whole drill after the preflight.
    async fn run(&mut self, tl: &mut Timeline) -> anyhow::Result<()> {
        self.take_out(tl).await?;
        self.wait(tl, &[Step::Handover, Step::AgentsAttached])
            .await?;
        self.restore().await?;
        let at = tl.now_ms();
        tl.reach(Step::Restore, at, self.quiet);
        self.wait(tl, &[Step::Healthy, Step::HandBack, Step::AgentsHome])
            .await?;
        Ok(())
    }

    async fn record(
        &mut self,
        rec: &pb::RecordDrillRequest,
    ) -> anyhow::Result<pb::RecordDrillResponse> {
        let mut last = None;
        for _ in 0..3 {
            match self.admin.record_drill(rec.clone()).await {
                Ok(r) => return Ok(r.into_inner()),
                Err(s) if s.code() == tonic::Code::InvalidArgument => return Err(api_err(s, None)),
                Err(s) => last = Some(api_err(s, None)),
            }
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
        Err(last.unwrap_or_else(|| anyhow!("recording the drill failed")))
    }
}

/// Runs `tern drill`; returns the exit code: 0 completed, 1 failed (the
/// region restored), 2 refused before it started, 130 aborted.
pub async fn run(args: DrillArgs) -> anyhow::Result<i32> {
    let quiet = args.client.output == Output::Json;
    if args.method == DrillMethod::Outage && args.standin_control.is_none() {
        eprintln!(
            "error: --method outage needs --standin-control ADDR (the control address of \
             the region's stand-in); against a real control plane use --method drain"
        );
        return Ok(2);
    }
    if args.poll_ms == 0 || args.step_timeout == 0 {
        eprintln!("error: --poll-ms and --step-timeout must be positive");
        return Ok(2);
    }
    let mut admin = connect(&args.client).await?;
    let regions = admin
        .regions(pb::RegionsRequest {})
        .await
        .map_err(|s| api_err(s, None))?
        .into_inner();
    let summary = admin
        .agent_summary(pb::AgentSummaryRequest {})
        .await
        .map_err(|s| api_err(s, None))?
        .into_inner();
    let why = preflight(&regions, &summary, &args.region, args.method, args.force);
    if !why.is_empty() {
        eprintln!("the drill of {} does not start:", args.region);
        for w in &why {
            eprintln!("  - {w}");
        }
        return Ok(2);
    }
    let agents = counts(&summary, &args.region).total;
    let plan = admin
        .plan_region(pb::PlanRegionRequest {
            region: args.region.clone(),
            limit: 1,
            after: String::new(),
        })
        .await
        .map_err(|s| api_err(s, Some(&args.region)))?
        .into_inner();
    if !quiet {
        let targets: Vec<String> = plan
            .targets
            .iter()
            .filter(|t| t.agents > 0)
            .map(|t| format!("{} to {}", t.agents, t.region))
            .collect();
        println!(
            "drill of {} by {}: {agents} agents (plan: {}{})",
            args.region,
            args.method.as_str(),
            if targets.is_empty() {
                "none movable".to_string()
            } else {
                targets.join(", ")
            },
            if plan.rejected_total > 0 {
                format!(", {} without a standby", plan.rejected_total)
            } else {
                String::new()
            }
        );
        println!("  {:<16} {:>9}  (after the previous)", "step", "at");
    }
    let mut drill = Drill {
        admin,
        region: args.region.clone(),
        method: args.method,
        standin: args.standin_control.as_deref().map(ControlClient::new),
        poll: Duration::from_millis(args.poll_ms),
        step_timeout: Duration::from_secs(args.step_timeout),
        quiet,
    };
    let started_at_ms = unix_ms();
    let mut tl = Timeline::new();
    let outcome = tokio::select! {
        r = drill.run(&mut tl) => r.map_err(|e| (false, e)),
        () = super::shutdown_signal() => Err((true, anyhow!("interrupted"))),
    };
    let (label, detail, code) = match &outcome {
        Ok(()) => ("completed", String::new(), 0),
        Err((true, e)) => ("aborted", e.to_string(), 130),
        Err((false, e)) => ("failed", format!("{e:#}"), 1),
    };
    if outcome.is_err() {
        eprintln!("drill {label}: {detail}; restoring {}", args.region);
        if let Err(e) = drill.restore().await {
            eprintln!(
                "error: restoring {} failed: {e:#}\nrestore it by hand: {}",
                args.region,
                match args.method {
                    DrillMethod::Drain => format!("tern undrain {}", args.region),
                    DrillMethod::Outage => format!(
                        "tern stand-in mode --control {} up",
                        args.standin_control.as_deref().unwrap_or("ADDR")
                    ),
                }
            );
        }
    }
    let total_ms = tl.now_ms();
    let stranded = plan.rejected_total;
    let mut detail: String = detail.chars().take(tern_core::MAX_DRILL_DETAIL).collect();
    while detail.len() > tern_core::MAX_DRILL_DETAIL {
        detail.pop();
    }
    let rec = pb::RecordDrillRequest {
        region: args.region.clone(),
        method: args.method.as_str().into(),
        outcome: label.into(),
        started_at_ms,
        total_ms,
        agents,
        steps: tl
            .steps
            .iter()
            .map(|t| pb::DrillStep {
                name: t.step.name().into(),
                at_ms: t.at_ms,
                took_ms: t.took_ms,
            })
            .collect(),
        detail: detail.clone(),
        request_id: crate::ops::new_request_id().to_string(),
    };
    let recorded = drill.record(&rec).await;
    if quiet {
        println!(
            "{}",
            json!({
                "region": rec.region, "method": rec.method, "outcome": rec.outcome,
                "started_at_ms": rec.started_at_ms, "total_ms": rec.total_ms,
                "agents": agents, "without_standby": stranded,
                "steps": rec.steps.iter().map(|s| json!({
                    "name": s.name, "at_ms": s.at_ms, "took_ms": s.took_ms,
                })).collect::<Vec<_>>(),
                "detail": rec.detail,
                "audit_log_index": recorded.as_ref().ok().map(|r| r.log_index),
            })
        );
    } else {
        println!(
            "drill of {} by {} {label} in {}{}",
            rec.region,
            rec.method,
            secs(total_ms),
            match &recorded {
                Ok(r) => format!("; recorded in the audit trail at log index {}", r.log_index),
                Err(_) => String::new(),
            }
        );
    }
    if let Err(e) = recorded {
        eprintln!("error: the drill's timings were not recorded in the audit trail: {e:#}");
        return Ok(if code == 0 { 1 } else { code });
    }
    Ok(code)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn region(name: &str, state: &str, mode: &str) -> pb::RegionStatus {
        pb::RegionStatus {
            region: name.into(),
            state: state.into(),
            mode: mode.into(),
            ..Default::default()
        }
    }

    fn row(home: &str, serving: &str, state: &str, count: u64) -> pb::AgentCount {
        pb::AgentCount {
            home_region: home.into(),
            serving_region: serving.into(),
            state: state.into(),
            count,
        }
    }

    fn healthy() -> pb::RegionsResponse {
        pb::RegionsResponse {
            regions: vec![
                region("eu", "healthy", "auto"),
                region("us", "healthy", "auto"),
                region("ap", "healthy", "auto"),
            ],
            quorum_ok: true,
            live_view: true,
            ..Default::default()
        }
    }

    fn summary(rows: Vec<pb::AgentCount>) -> pb::AgentSummaryResponse {
        pb::AgentSummaryResponse {
            total: rows.iter().map(|r| r.count).sum(),
            counts: rows,
            epoch: 1,
        }
    }

    /// Counts separate, for one home region, agents at home, redirected
    /// and attached elsewhere, redirected but not yet attached, returning
    /// and stranded; other regions' agents do not count.
    #[test]
    fn counts_split_one_region_by_placement() {
        let s = summary(vec![
            row("eu", "eu", "home", 5),
            row("eu", "", "home", 1),
            row("eu", "us", "redirected", 7),
            row("eu", "eu", "redirected", 2),
            row("eu", "eu", "stranded", 3),
            row("eu", "us", "returning", 4),
            row("us", "us", "home", 100),
        ]);
        let c = counts(&s, "eu");
        assert_eq!(
            c,
            Counts {
                total: 22,
                home: 6,
                at_home: 5,
                redirected: 9,
                attached_away: 7,
                stranded: 3,
                returning: 4,
            }
        );
    }

    /// Each waited-for step is reached exactly when the agents' placements
    /// say so: handover when none is left home, attached when every
    /// redirected agent reported elsewhere, home when all are back.
    #[test]
    fn steps_follow_the_placements() {
        let look = |state: &str, mode: &str, c: Counts| Look {
            state: state.into(),
            mode: mode.into(),
            agents: c,
        };
        let out = Counts {
            total: 10,
            redirected: 8,
            attached_away: 5,
            stranded: 2,
            ..Default::default()
        };
        let l = look("healthy", "drained", out);
        assert!(Step::Decision.reached(&l));
        assert!(Step::Handover.reached(&l));
        assert!(!Step::AgentsAttached.reached(&l));
        assert!(!Step::Healthy.reached(&l));
        let l = look(
            "unreachable",
            "auto",
            Counts {
                attached_away: 8,
                ..out
            },
        );
        assert!(Step::Decision.reached(&l) && Step::AgentsAttached.reached(&l));
        let half = Counts {
            total: 10,
            home: 3,
            at_home: 1,
            returning: 2,
            redirected: 5,
            attached_away: 5,
            ..Default::default()
        };
        let l = look("healthy", "auto", half);
        assert!(Step::Healthy.reached(&l) && Step::HandBack.reached(&l));
        assert!(!Step::Handover.reached(&l));
        assert!(!Step::AgentsHome.reached(&l));
        let home = Counts {
            total: 10,
            home: 10,
            at_home: 10,
            ..Default::default()
        };
        assert!(Step::AgentsHome.reached(&look("healthy", "auto", home)));
        assert!(!Step::HandBack.reached(&look("healthy", "auto", out)));
    }

    /// The preflight lets a drill start only from a healthy federation with
    /// every agent home; each refusal names the reason. `--force` skips the
    /// federation-wide checks but never lets an unknown or already-out
    /// region be drilled.
    #[test]
    fn preflight_refuses_with_reasons() {
        let home = summary(vec![row("eu", "eu", "home", 3)]);
        assert!(preflight(&healthy(), &home, "eu", DrillMethod::Drain, false).is_empty());

        let why = preflight(&healthy(), &home, "xx", DrillMethod::Drain, true);
        assert!(why[0].contains("not a region"), "{why:?}");

        let mut r = healthy();
        r.regions[1].state = "unreachable".into();
        let why = preflight(&r, &home, "eu", DrillMethod::Drain, false);
        assert!(
            why.iter().any(|w| w.contains("us is unreachable")),
            "{why:?}"
        );
        assert!(preflight(&r, &home, "eu", DrillMethod::Drain, true).is_empty());
        let why = preflight(&r, &home, "us", DrillMethod::Drain, true);
        assert!(
            why.iter().any(|w| w.contains("us is unreachable")),
            "{why:?}"
        );

        let away = summary(vec![row("eu", "us", "returning", 1)]);
        let why = preflight(&healthy(), &away, "us", DrillMethod::Drain, false);
        assert!(
            why.iter().any(|w| w.contains("1 agents are not home")),
            "{why:?}"
        );

        let mut r = healthy();
        r.paused = true;
        assert!(!preflight(&r, &home, "eu", DrillMethod::Outage, true).is_empty());
        assert!(preflight(&r, &home, "eu", DrillMethod::Drain, true).is_empty());
        let mut r = healthy();
        r.frozen = true;
        let why = preflight(&r, &home, "eu", DrillMethod::Drain, false);
        assert!(why.iter().any(|w| w.contains("frozen")), "{why:?}");
    }
}
