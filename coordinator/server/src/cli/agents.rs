//! The operator's agent commands over the admin API: `tern plan REGION`
//! (dry run of a failure), `tern drain|undrain REGION`, `tern failover|
//! failback REGION --expect-epoch N`, and `tern agents` (list with filters,
//! or `--summary` counts). Text tables for people, `--output json` for
//! scripts. It decides nothing: the coordinator plans and fences.

use anyhow::anyhow;
use clap::{Subcommand, ValueEnum};
use serde_json::{json, Value};
use tern_proto::v1 as pb;

use super::admin::connect;
use super::{ClientArgs, Output};

/// An agent's placement, as `--state` takes it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum StateFilter {
    Home,
    Redirected,
    Returning,
    Stranded,
}

impl StateFilter {
    fn as_str(self) -> &'static str {
        match self {
            StateFilter::Home => "home",
            StateFilter::Redirected => "redirected",
            StateFilter::Returning => "returning",
            StateFilter::Stranded => "stranded",
        }
    }
}

/// The agent commands, flattened into `tern`'s top level.
#[derive(Debug, Subcommand)]
pub enum FleetCmd {
    /// Dry run: where each agent of REGION would go if it failed now, what
    /// the preflight rejects, and the epoch to act on.
    Plan {
        region: String,
        /// List at most this many agents (default 1000); totals count all
        #[arg(long)]
        limit: Option<u32>,
        /// List only agents with an id after this one (paging)
        #[arg(long)]
        after: Option<String>,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Planned maintenance: move REGION's agents to their standbys and take
    /// no standby agents there.
    Drain {
        region: String,
        /// Refuse unless the cluster is still at this epoch
        #[arg(long, value_name = "EPOCH")]
        expect_epoch: Option<u64>,
        /// Idempotency key (default: a new random id)
        #[arg(long)]
        request_id: Option<String>,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// End a drain: REGION is back under automatic control (also ends a
    /// manual failover); its agents come home in hand-back waves.
    Undrain {
        region: String,
        /// Refuse unless the cluster is still at this epoch
        #[arg(long, value_name = "EPOCH")]
        expect_epoch: Option<u64>,
        #[arg(long)]
        request_id: Option<String>,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Manual failover of REGION, like an Unreachable decision.
    #[command(after_help = "The epoch is required: take it from `tern plan REGION` \
        (or `tern regions`); the failover is refused if anything changed since.")]
    Failover {
        region: String,
        /// The epoch you looked at (required)
        #[arg(long, value_name = "EPOCH")]
        expect_epoch: u64,
        #[arg(long)]
        request_id: Option<String>,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// End a manual failover: REGION is back under automatic control (also
    /// ends a drain); its agents come home in hand-back waves once healthy.
    #[command(after_help = "The epoch is required: take it from `tern plan REGION` \
        (or `tern regions`); the failback is refused if anything changed since.")]
    Failback {
        region: String,
        /// The epoch you looked at (required)
        #[arg(long, value_name = "EPOCH")]
        expect_epoch: u64,
        #[arg(long)]
        request_id: Option<String>,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Registered agents: id, home, placement, standby, serving region,
    /// staged authorization; or counts with --summary.
    Agents {
        /// Only agents homed in this region
        #[arg(long)]
        home: Option<String>,
        /// Only agents last reported attached to this region
        #[arg(long)]
        serving: Option<String>,
        /// Only agents in this placement state
        #[arg(long, value_enum)]
        state: Option<StateFilter>,
        /// At most this many agents (default 100, at most 10000)
        #[arg(long)]
        limit: Option<u32>,
        /// Only agents with an id after this one (paging)
        #[arg(long)]
        after: Option<String>,
        /// Counts per home region, serving region and state instead of a list
        #[arg(long, conflicts_with_all = ["limit", "after"])]
        summary: bool,
        #[command(flatten)]
        client: ClientArgs,
    },
}

/// Runs one agent command. Returns the exit code.
pub async fn run(cmd: FleetCmd) -> anyhow::Result<i32> {
    match cmd {
        FleetCmd::Plan {
            region,
            limit,
            after,
            client,
        } => plan(&client, region, limit, after).await,
        FleetCmd::Drain {
            region,
            expect_epoch,
            request_id,
            client,
        } => {
            let a = pb::RegionModeAction::Drain;
            set_mode(&client, region, a, expect_epoch, request_id).await
        }
        FleetCmd::Undrain {
            region,
            expect_epoch,
            request_id,
            client,
        } => {
            let a = pb::RegionModeAction::Undrain;
            set_mode(&client, region, a, expect_epoch, request_id).await
        }
        FleetCmd::Failover {
            region,
            expect_epoch,
            request_id,
            client,
        } => {
            let a = pb::RegionModeAction::Failover;
            set_mode(&client, region, a, Some(expect_epoch), request_id).await
        }
        FleetCmd::Failback {
            region,
            expect_epoch,
            request_id,
            client,
        } => {
            let a = pb::RegionModeAction::Failback;
            set_mode(&client, region, a, Some(expect_epoch), request_id).await
        }
        FleetCmd::Agents {
            home,
            serving,
            state,
            limit,
            after,
            summary,
            client,
        } => {
            let filters = Filters {
                home,
                serving,
                state,
            };
            if summary {
                agent_summary(&client, &filters).await
            } else {
                list(&client, &filters, limit, after).await
            }
        }
    }
}

/// An API error as the operator reads it, with what to do for the usual
/// ones.
pub(super) fn api_err(s: tonic::Status, region: Option<&str>) -> anyhow::Error {
    let hint = match (s.code(), region) {
        (tonic::Code::FailedPrecondition, Some(r)) => {
            format!("\nnothing changed: review `tern plan {r}` and retry with the epoch it shows")
        }
        (tonic::Code::PermissionDenied | tonic::Code::Unauthenticated, _) => {
            "\nuse an administrator certificate (TERN_CLIENT_CERT / TERN_CLIENT_KEY)".into()
        }
        _ => String::new(),
    };
    anyhow!("{:?}: {}{hint}", s.code(), s.message())
}

/// Unix ms as RFC 3339 ("-" for 0).
fn at(ms: u64) -> String {
    if ms == 0 {
        return "-".into();
    }
    time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000)
        .ok()
        .and_then(|t| {
            t.format(&time::format_description::well_known::Rfc3339)
                .ok()
        })
        .unwrap_or_else(|| ms.to_string())
}

fn dash(s: &str) -> &str {
    if s.is_empty() {
        "-"
    } else {
        s
    }
}

fn null_if_empty(s: &str) -> Value {
    if s.is_empty() {
        Value::Null
    } else {
        Value::String(s.to_string())
    }
}

/// Formats rows under headers, each column as wide as its widest cell;
/// columns listed in `right` are right-aligned.
pub fn table(headers: &[&str], rows: &[Vec<String>], right: &[usize]) -> String {
    let mut width: Vec<usize> = headers.iter().map(|h| h.len()).collect();
    for row in rows {
        for (i, cell) in row.iter().enumerate() {
            if let Some(w) = width.get_mut(i) {
                *w = (*w).max(cell.chars().count());
            }
        }
    }
    let line = |cells: Vec<&str>| -> String {
        let last = cells.len().saturating_sub(1);
        let mut out = String::new();
        for (i, c) in cells.into_iter().enumerate() {
            let w = width.get(i).copied().unwrap_or(0);
            if right.contains(&i) {
                out.push_str(&format!("{c:>w$}"));
            } else if i == last {
                out.push_str(c);
            } else {
                out.push_str(&format!("{c:<w$}"));
            }
            if i != last {
                out.push_str("  ");
            }
        }
        out.trim_end().to_string()
    };
    let mut out = vec![line(headers.to_vec())];
    for row in rows {
        out.push(line(row.iter().map(String::as_str).collect()));
    }
    out.join("\n")
}

/// The JSON form of `tern plan`.
pub fn plan_json(p: &pb::PlanRegionResponse) -> Value {
    json!({
        "region": p.region,
        "epoch": p.epoch,
        "state": p.state,
        "mode": p.mode,
        "at_ms": p.at_ms,
        "token_ttl_ms": p.token_ttl_ms,
        "total": p.total,
        "targets": p.targets.iter().map(|t| json!({
            "region": t.region, "agents": t.agents, "load": t.load, "capacity": t.capacity,
        })).collect::<Vec<_>>(),
        "rejected": p.rejected.iter().map(|r| (r.reason.clone(), json!(r.count))).collect::<serde_json::Map<_, _>>(),
        "rejected_total": p.rejected_total,
        "covered": p.covered,
        "redirect_now": p.redirect_now,
        "agents": p.agents.iter().map(|a| json!({
            "agent_id": a.agent_id,
            "state": a.state,
            "current_standby": null_if_empty(&a.current_standby),
            "standby_if_failed": null_if_empty(&a.standby_if_failed),
            "rejected": null_if_empty(&a.rejected),
            "staged_target": null_if_empty(&a.staged_target),
            "staged_until_ms": if a.staged_until_ms == 0 { None } else { Some(a.staged_until_ms) },
            "covered": a.covered,
            "redirect_now": null_if_empty(&a.redirect_now),
        })).collect::<Vec<_>>(),
        "next_after": null_if_empty(&p.next_after),
    })
}

/// The text form of `tern plan`.
pub fn plan_text(p: &pb::PlanRegionResponse) -> String {
    let mut out = Vec::new();
    out.push(format!(
        "plan if {} failed now: epoch {}, {} is {} (mode {}), {} agents, token TTL {} s",
        p.region,
        p.epoch,
        p.region,
        p.state,
        p.mode,
        p.total,
        p.token_ttl_ms / 1000
    ));
    out.push(String::new());
    let targets: Vec<Vec<String>> = p
        .targets
        .iter()
        .map(|t| {
            vec![
                t.region.clone(),
                t.agents.to_string(),
                t.load.to_string(),
                t.capacity
                    .map_or_else(|| "unlimited".to_string(), |c| c.to_string()),
            ]
        })
        .collect();
    out.push(table(
        &["STANDBY", "AGENTS", "LOAD", "CAPACITY"],
        &targets,
        &[1, 2, 3],
    ));
    let reasons: Vec<String> = p
        .rejected
        .iter()
        .map(|r| format!("{} {}", r.reason, r.count))
        .collect();
    out.push(format!(
        "rejected: {}{}",
        p.rejected_total,
        if reasons.is_empty() {
            String::new()
        } else {
            format!(" ({})", reasons.join(", "))
        }
    ));
    out.push(format!(
        "staged: {} of {} covered by a valid authorization for their planned standby; \
         a decision now would redirect {} and strand {}",
        p.covered,
        p.total,
        p.redirect_now,
        p.total.saturating_sub(p.redirect_now)
    ));
    if !p.agents.is_empty() {
        out.push(String::new());
        let rows: Vec<Vec<String>> = p
            .agents
            .iter()
            .map(|a| {
                let if_failed = if a.rejected.is_empty() {
                    a.standby_if_failed.clone()
                } else {
                    format!("rejected: {}", a.rejected)
                };
                let now = match (a.state.as_str(), a.redirect_now.as_str()) {
                    ("home", "") => "stranded".to_string(),
                    ("home", r) => r.to_string(),
                    (state, _) => format!("already {state}"),
                };
                vec![
                    a.agent_id.clone(),
                    a.state.clone(),
                    dash(&a.current_standby).to_string(),
                    if_failed,
                    if a.staged_target.is_empty() {
                        "-".to_string()
                    } else {
                        format!(
                            "{} until {}{}",
                            a.staged_target,
                            at(a.staged_until_ms),
                            if a.covered { "" } else { " (not the plan)" }
                        )
                    },
                    now,
                ]
            })
            .collect();
        out.push(table(
            &[
                "AGENT",
                "STATE",
                "STANDBY",
                "IF FAILED",
                "STAGED",
                "DECISION NOW",
            ],
            &rows,
            &[],
        ));
    }
    if !p.next_after.is_empty() {
        out.push(format!(
            "(more agents: tern plan {} --after {})",
            p.region, p.next_after
        ));
    }
    out.push(String::new());
    out.push(format!(
        "to act on it: tern drain {r} --expect-epoch {e}   or   tern failover {r} --expect-epoch {e}",
        r = p.region,
        e = p.epoch
    ));
    out.join("\n")
}

async fn plan(
    c: &ClientArgs,
    region: String,
    limit: Option<u32>,
    after: Option<String>,
) -> anyhow::Result<i32> {
    let mut client = connect(c).await?;
    let p = client
        .plan_region(pb::PlanRegionRequest {
            region: region.clone(),
            limit: limit.unwrap_or(0),
            after: after.unwrap_or_default(),
        })
        .await
        .map_err(|s| api_err(s, None))?
        .into_inner();
    if c.output == Output::Json {
        println!("{}", serde_json::to_string_pretty(&plan_json(&p))?);
    } else {
        println!("{}", plan_text(&p));
    }
    Ok(0)
}

async fn set_mode(
    c: &ClientArgs,
    region: String,
    action: pb::RegionModeAction,
    expect_epoch: Option<u64>,
    request_id: Option<String>,
) -> anyhow::Result<i32> {
    let mut client = connect(c).await?;
    let r = client
        .set_region_mode(pb::SetRegionModeRequest {
            region: region.clone(),
            action: action as i32,
            expect_epoch,
            request_id: request_id.unwrap_or_default(),
        })
        .await
        .map_err(|s| api_err(s, Some(&region)))?
        .into_inner();
    if c.output == Output::Json {
        println!(
            "{}",
            json!({
                "region": region, "mode": r.mode, "epoch": r.epoch, "log_index": r.log_index,
                "duplicate": r.duplicate, "summary": null_if_empty(&r.summary),
            })
        );
    } else {
        println!(
            "{region}: {} (epoch {}, log index {}){}{}",
            r.mode,
            r.epoch,
            r.log_index,
            if r.duplicate {
                " - a retry of an earlier request"
            } else {
                ""
            },
            if r.summary.is_empty() {
                String::new()
            } else {
                format!("\n{}", r.summary)
            }
        );
    }
    Ok(0)
}

/// `tern agents` filters.
struct Filters {
    home: Option<String>,
    serving: Option<String>,
    state: Option<StateFilter>,
}

async fn list(
    c: &ClientArgs,
    f: &Filters,
    limit: Option<u32>,
    after: Option<String>,
) -> anyhow::Result<i32> {
    let mut client = connect(c).await?;
    let r = client
        .list_agents(pb::ListAgentsRequest {
            home_region: f.home.clone().unwrap_or_default(),
            serving_region: f.serving.clone().unwrap_or_default(),
            state: f.state.map(|s| s.as_str().to_string()).unwrap_or_default(),
            limit: limit.unwrap_or(0),
            after: after.unwrap_or_default(),
        })
        .await
        .map_err(|s| api_err(s, None))?
        .into_inner();
    if c.output == Output::Json {
        println!("{}", serde_json::to_string_pretty(&agents_json(&r))?);
        return Ok(0);
    }
    if r.agents.is_empty() {
        println!("no agents match (epoch {})", r.epoch);
        return Ok(0);
    }
    let rows: Vec<Vec<String>> = r
        .agents
        .iter()
        .map(|a| {
            vec![
                a.agent_id.clone(),
                a.home_region.clone(),
                a.state.clone(),
                if a.placement_epoch == 0 {
                    "-".into()
                } else {
                    a.placement_epoch.to_string()
                },
                dash(&a.standby).to_string(),
                a.target.clone(),
                dash(&a.serving).to_string(),
                at(a.staged_until_ms),
                a.tenant.clone(),
                a.fingerprint.chars().take(12).collect(),
            ]
        })
        .collect();
    println!(
        "{}",
        table(
            &[
                "AGENT",
                "HOME",
                "STATE",
                "EPOCH",
                "STANDBY",
                "TARGET",
                "SERVING",
                "STAGED UNTIL",
                "TENANT",
                "FINGERPRINT",
            ],
            &rows,
            &[3],
        )
    );
    if !r.next_after.is_empty() {
        println!("(more agents: add --after {})", r.next_after);
    }
    Ok(0)
}

/// The JSON form of `tern agents`.
pub fn agents_json(r: &pb::ListAgentsResponse) -> Value {
    json!({
        "epoch": r.epoch,
        "agents": r.agents.iter().map(|a| json!({
            "agent_id": a.agent_id,
            "home_region": a.home_region,
            "tenant": a.tenant,
            "fingerprint": a.fingerprint,
            "standby": null_if_empty(&a.standby),
            "state": a.state,
            "placement_epoch": a.placement_epoch,
            "target": a.target,
            "serving": null_if_empty(&a.serving),
            "staged_until_ms": if a.staged_until_ms == 0 { None } else { Some(a.staged_until_ms) },
            "staged_target": null_if_empty(&a.staged_target),
            "reported_epoch": a.reported_epoch,
            "config_id": a.config_id,
            "config_version": a.config_version,
            "leaf_not_after_ms": a.leaf_not_after_ms,
        })).collect::<Vec<_>>(),
        "next_after": null_if_empty(&r.next_after),
    })
}

/// The count rows that pass the filters (the summary is small: it is
/// filtered here).
fn summary_rows<'a>(r: &'a pb::AgentSummaryResponse, f: &Filters) -> Vec<&'a pb::AgentCount> {
    r.counts
        .iter()
        .filter(|c| f.home.as_ref().is_none_or(|h| &c.home_region == h))
        .filter(|c| f.serving.as_ref().is_none_or(|s| &c.serving_region == s))
        .filter(|c| f.state.is_none_or(|s| c.state == s.as_str()))
        .collect()
}

/// The JSON form of `tern agents --summary`:
/// `{"counts":[{"home_region","serving_region","state","count"}],"total":N}`.
fn summary_json(rows: &[&pb::AgentCount]) -> Value {
    json!({
        "counts": rows.iter().map(|c| json!({
            "home_region": c.home_region,
            "serving_region": null_if_empty(&c.serving_region),
            "state": c.state,
            "count": c.count,
        })).collect::<Vec<_>>(),
        "total": rows.iter().map(|c| c.count).sum::<u64>(),
    })
}

async fn agent_summary(c: &ClientArgs, f: &Filters) -> anyhow::Result<i32> {
    let mut client = connect(c).await?;
    let r = client
        .agent_summary(pb::AgentSummaryRequest {})
        .await
        .map_err(|s| api_err(s, None))?
        .into_inner();
    let rows = summary_rows(&r, f);
    if c.output == Output::Json {
        println!("{}", serde_json::to_string_pretty(&summary_json(&rows))?);
        return Ok(0);
    }
    let cells: Vec<Vec<String>> = rows
        .iter()
        .map(|c| {
            vec![
                c.home_region.clone(),
                if c.serving_region.is_empty() {
                    "(not reported)".into()
                } else {
                    c.serving_region.clone()
                },
                c.state.clone(),
                c.count.to_string(),
            ]
        })
        .collect();
    println!(
        "{}",
        table(&["HOME", "SERVING", "STATE", "COUNT"], &cells, &[3])
    );
    println!(
        "total {} (epoch {})",
        rows.iter().map(|c| c.count).sum::<u64>(),
        r.epoch
    );
    Ok(0)
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;
    use crate::cli::{Cli, Cmd};

    fn parse(args: &[&str]) -> Result<FleetCmd, clap::Error> {
        let mut argv = vec!["tern"];
        argv.extend_from_slice(args);
        match Cli::try_parse_from(argv)?.command {
            Cmd::Fleet(f) => Ok(f),
            other => panic!("not an agent command: {other:?}"),
        }
    }

    // Property: a failover or failback without --expect-epoch is refused
    // by the parser, and the message names the missing flag.
    #[test]
    fn failover_and_failback_need_expect_epoch() {
        for verb in ["failover", "failback"] {
            let e = parse(&[verb, "eu"]).err().map(|e| e.to_string());
            let e = e.unwrap_or_default();
            assert!(e.contains("--expect-epoch"), "{verb}: {e}");
            assert!(
                matches!(
                    parse(&[verb, "eu", "--expect-epoch", "7"]),
                    Ok(FleetCmd::Failover {
                        expect_epoch: 7,
                        ..
                    }) | Ok(FleetCmd::Failback {
                        expect_epoch: 7,
                        ..
                    })
                ),
                "{verb} with an epoch parses"
            );
        }
    }

    // Property: drain and undrain accept an expected epoch but do not need
    // one; the region is positional.
    #[test]
    fn drain_epoch_is_optional() {
        assert!(matches!(
            parse(&["drain", "eu"]),
            Ok(FleetCmd::Drain { expect_epoch: None, ref region, .. }) if region == "eu"
        ));
        assert!(matches!(
            parse(&["undrain", "eu", "--expect-epoch", "3"]),
            Ok(FleetCmd::Undrain {
                expect_epoch: Some(3),
                ..
            })
        ));
        assert!(parse(&["drain"]).is_err(), "the region is required");
    }

    // Property: `tern agents` takes its filters and output format; a bad
    // state is refused with the accepted values; --summary cannot be paged.
    #[test]
    fn agents_filters_parse() {
        match parse(&[
            "agents",
            "--home",
            "eu",
            "--serving",
            "us",
            "--state",
            "redirected",
            "--limit",
            "5",
            "-o",
            "json",
        ]) {
            Ok(FleetCmd::Agents {
                home,
                serving,
                state,
                limit,
                summary,
                client,
                ..
            }) => {
                assert_eq!(home.as_deref(), Some("eu"));
                assert_eq!(serving.as_deref(), Some("us"));
                assert_eq!(state, Some(StateFilter::Redirected));
                assert_eq!(limit, Some(5));
                assert!(!summary);
                assert_eq!(client.output, Output::Json);
            }
            other => panic!("unexpected: {other:?}"),
        }
        let e = parse(&["agents", "--state", "lost"])
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(e.contains("stranded"), "lists the accepted values: {e}");
        assert!(parse(&["agents", "--summary", "-o", "json"]).is_ok());
        assert!(parse(&["agents", "--summary", "--limit", "3"]).is_err());
    }

    // Property: the summary JSON has exactly the documented shape, with
    // filters applied and the total of the rows shown.
    #[test]
    fn summary_json_shape() {
        let r = pb::AgentSummaryResponse {
            counts: vec![
                pb::AgentCount {
                    home_region: "eu".into(),
                    serving_region: "us".into(),
                    state: "redirected".into(),
                    count: 3,
                },
                pb::AgentCount {
                    home_region: "us".into(),
                    serving_region: String::new(),
                    state: "home".into(),
                    count: 2,
                },
            ],
            total: 5,
            epoch: 9,
        };
        let all = Filters {
            home: None,
            serving: None,
            state: None,
        };
        assert_eq!(
            summary_json(&summary_rows(&r, &all)),
            json!({"counts": [
                {"home_region": "eu", "serving_region": "us", "state": "redirected", "count": 3},
                {"home_region": "us", "serving_region": null, "state": "home", "count": 2},
            ], "total": 5})
        );
        let eu = Filters {
            home: Some("eu".into()),
            serving: None,
            state: None,
        };
        assert_eq!(summary_json(&summary_rows(&r, &eu))["total"], json!(3));
    }

    // Property: tables are aligned: every cell of a column starts at the
    // same offset whatever the lengths of the cells before it.
    #[test]
    fn tables_are_aligned() {
        let t = table(
            &["AGENT", "STATE", "N"],
            &[
                vec!["a-very-long-agent-id".into(), "home".into(), "1".into()],
                vec!["b".into(), "redirected".into(), "22".into()],
            ],
            &[2],
        );
        let lines: Vec<&str> = t.lines().collect();
        let col = |l: &str, word: &str| l.find(word).unwrap_or(usize::MAX);
        assert_eq!(col(lines[0], "STATE"), col(lines[1], "home"));
        assert_eq!(col(lines[1], "home"), col(lines[2], "redirected"));
        assert_eq!(lines[1].len(), lines[2].len(), "right-aligned last column");
    }
}
