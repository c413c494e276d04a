//! Admin CLI commands over the gRPC admin API: `status`, `members`,
//! `notes`, `audit`. Text output for people, `--output json` for scripts.

use std::path::PathBuf;

use anyhow::{anyhow, bail, Context};
use tern_proto::v1 as pb;
use tern_proto::v1::admin_client::AdminClient;
use tonic::transport::Channel;

use super::{ClientArgs, MembersCmd, NotesCmd, Output};
use crate::tls::{self, ChannelOptions, TlsClient};

fn need(v: &Option<PathBuf>, flag: &str, env: &str) -> anyhow::Result<PathBuf> {
    v.clone().ok_or_else(|| {
        anyhow!("{flag} (or {env}) is required; with `tern demo`, run `. <dir>/env.sh` first")
    })
}

/// Normalizes `https://host:port` / `host:port` to `host:port`.
pub fn host_port(addr: &str) -> String {
    addr.trim_start_matches("https://")
        .trim_start_matches("http://")
        .trim_end_matches('/')
        .to_string()
}

/// Connects to the coordinator named by the client arguments.
pub async fn connect(c: &ClientArgs) -> anyhow::Result<AdminClient<Channel>> {
    tls::install_crypto_provider();
    let addr = c
        .addr
        .clone()
        .ok_or_else(|| anyhow!("--addr (or TERN_ADDR) is required"))?;
    let ca = need(&c.ca_cert, "--ca-cert", "TERN_CACERT")?;
    let cert = need(&c.client_cert, "--client-cert", "TERN_CLIENT_CERT")?;
    let key = need(&c.client_key, "--client-key", "TERN_CLIENT_KEY")?;
    let client = TlsClient::new_admin(&ca, &cert, &key)?;
    let channel = tls::channel(&client, &host_port(&addr), ChannelOptions::default())?;
    Ok(AdminClient::new(channel))
}

fn status_err(s: tonic::Status) -> anyhow::Error {
    let leader = s
        .metadata()
        .get(crate::error::LEADER_METADATA)
        .and_then(|v| v.to_str().ok())
        .map(|l| format!(" (leader at {l})"))
        .unwrap_or_default();
    anyhow!("{:?}: {}{}", s.code(), s.message(), leader)
}

fn voting_str(v: i32) -> &'static str {
    match pb::Voting::try_from(v) {
        Ok(pb::Voting::Voter) => "voter",
        Ok(pb::Voting::Learner) => "learner",
        Ok(pb::Voting::None) => "none",
        _ => "?",
    }
}

fn role_str(r: i32) -> &'static str {
    match pb::MemberRole::try_from(r) {
        Ok(pb::MemberRole::Region) => "region",
        Ok(pb::MemberRole::Witness) => "witness",
        _ => "?",
    }
}

/// The JSON form of `tern status`.
pub fn status_json(s: &pb::StatusResponse) -> serde_json::Value {
    let leader = if s.leader_region.is_empty() {
        None
    } else {
        Some(s.leader_region.clone())
    };
    serde_json::json!({
        "node_id": s.node_id,
        "region": s.region,
        "leader": leader,
        "leader_id": s.leader_id,
        "leader_address": if s.leader_address.is_empty() { None } else { Some(&s.leader_address) },
        "term": s.term,
        "commit_index": s.commit_index,
        "applied_index": s.applied_index,
        "last_log_index": s.last_log_index,
        "snapshot_index": s.snapshot_index,
        "purged_index": s.purged_index,
        "epoch": s.epoch,
        "server_state": s.server_state,
        "members": s.members.iter().map(|m| serde_json::json!({
            "node_id": m.node_id,
            "region": m.region,
            "role": role_str(m.role),
            "voting": voting_str(m.voting),
            "address": m.address,
            "thumbprint": m.thumbprints.first(),
            "thumbprints": m.thumbprints,
            "last_contact_ms": if m.last_contact_ms < 0 { None } else { Some(m.last_contact_ms) },
            "replication_lag": if m.replication_lag < 0 { None } else { Some(m.replication_lag) },
            "matched_index": m.matched_index,
        })).collect::<Vec<_>>(),
    })
}

pub async fn status(c: &ClientArgs) -> anyhow::Result<i32> {
    let mut client = connect(c).await?;
    let s = client
        .status(pb::StatusRequest {})
        .await
        .map_err(status_err)?
        .into_inner();
    if c.output == Output::Json {
        println!("{}", serde_json::to_string_pretty(&status_json(&s))?);
        return Ok(0);
    }
    let leader = match s.leader_id {
        Some(id) => format!("{} (node {id}, {})", s.leader_region, s.leader_address),
        None => "none known".into(),
    };
    println!(
        "answered by   node {} ({}), {}",
        s.node_id, s.region, s.server_state
    );
    println!("leader        {leader}");
    println!("term          {}", s.term);
    println!("commit index  {}", s.commit_index);
    println!("applied index {}", s.applied_index);
    println!("epoch         {}", s.epoch);
    println!();
    println!(
        "{:<5} {:<12} {:<8} {:<8} {:<22} {:<14} {:>12} {:>6}",
        "NODE", "REGION", "ROLE", "VOTING", "ADDRESS", "THUMBPRINT", "LAST CONTACT", "LAG"
    );
    for m in &s.members {
        let tp = m
            .thumbprints
            .first()
            .map(|t| t[..12.min(t.len())].to_string())
            .unwrap_or_default();
        let contact = if m.last_contact_ms < 0 {
            "-".into()
        } else {
            format!("{} ms", m.last_contact_ms)
        };
        let lag = if m.replication_lag < 0 {
            "-".into()
        } else {
            m.replication_lag.to_string()
        };
        println!(
            "{:<5} {:<12} {:<8} {:<8} {:<22} {:<14} {:>12} {:>6}",
            m.node_id,
            m.region,
            role_str(m.role),
            voting_str(m.voting),
            m.address,
            tp,
            contact,
            lag
        );
    }
    Ok(0)
}

pub async fn members(c: &ClientArgs, cmd: MembersCmd) -> anyhow::Result<i32> {
    let mut client = connect(c).await?;
    match cmd {
        MembersCmd::Add {
            node_id,
            region,
            address,
            thumbprint,
            role,
            learner,
            control_plane,
            request_id,
        } => {
            let role = match role.as_str() {
                "region" => pb::MemberRole::Region,
                "witness" => pb::MemberRole::Witness,
                other => bail!("--role must be region or witness, not {other:?}"),
            };
            let r = client
                .add_member(pb::AddMemberRequest {
                    node_id,
                    region,
                    role: role as i32,
                    address,
                    thumbprint,
                    voter: !learner,
                    request_id: request_id.unwrap_or_default(),
                    control_plane: control_plane.unwrap_or_default(),
                })
                .await
                .map_err(status_err)?
                .into_inner();
            print_result(
                c,
                serde_json::json!({"node_id": node_id, "epoch": r.epoch, "log_index": r.log_index}),
                || {
                    format!(
                        "node {node_id} added (epoch {}, log index {})",
                        r.epoch, r.log_index
                    )
                },
            );
        }
        MembersCmd::Remove {
            node_id,
            request_id,
        } => {
            let r = client
                .remove_member(pb::RemoveMemberRequest {
                    node_id,
                    request_id: request_id.unwrap_or_default(),
                })
                .await
                .map_err(status_err)?
                .into_inner();
            print_result(
                c,
                serde_json::json!({"node_id": node_id, "epoch": r.epoch, "log_index": r.log_index}),
                || {
                    format!(
                        "node {node_id} removed (epoch {}, log index {})",
                        r.epoch, r.log_index
                    )
                },
            );
        }
    }
    Ok(0)
}

fn print_result(c: &ClientArgs, json: serde_json::Value, text: impl FnOnce() -> String) {
    if c.output == Output::Json {
        println!("{json}");
    } else {
        println!("{}", text());
    }
}

pub async fn notes(c: &ClientArgs, cmd: NotesCmd) -> anyhow::Result<i32> {
    let mut client = connect(c).await?;
    match cmd {
        NotesCmd::Put {
            key,
            value,
            request_id,
        } => {
            let r = client
                .put_note(pb::PutNoteRequest {
                    key: key.clone(),
                    value,
                    request_id: request_id.unwrap_or_default(),
                })
                .await
                .map_err(status_err)?
                .into_inner();
            print_result(
                c,
                serde_json::json!({"key": key, "log_index": r.log_index, "duplicate": r.duplicate}),
                || {
                    format!(
                        "note {key:?} committed at log index {}{}",
                        r.log_index,
                        if r.duplicate {
                            " (retry of an earlier write)"
                        } else {
                            ""
                        }
                    )
                },
            );
        }
        NotesCmd::List { prefix } => {
            let r = client
                .list_notes(pb::ListNotesRequest { prefix })
                .await
                .map_err(status_err)?
                .into_inner();
            if c.output == Output::Json {
                let v: Vec<_> = r
                    .notes
                    .iter()
                    .map(|n| serde_json::json!({"key": n.key, "value": n.value, "actor": n.actor, "at_ms": n.at_ms, "log_index": n.log_index}))
                    .collect();
                println!("{}", serde_json::Value::Array(v));
            } else {
                for n in r.notes {
                    println!(
                        "{} = {}    ({}, log index {})",
                        n.key, n.value, n.actor, n.log_index
                    );
                }
            }
        }
    }
    Ok(0)
}

pub async fn audit(c: &ClientArgs, limit: u32) -> anyhow::Result<i32> {
    let mut client = connect(c).await?;
    let r = client
        .audit(pb::AuditRequest {
            limit,
            after_index: 0,
        })
        .await
        .map_err(status_err)
        .context("reading the audit trail")?
        .into_inner();
    if c.output == Output::Json {
        let v: Vec<_> = r
            .records
            .iter()
            .map(|a| {
                serde_json::json!({
                    "seq": a.seq, "log_index": a.log_index, "at_ms": a.at_ms, "actor": a.actor,
                    "request_id": a.request_id, "kind": a.kind, "summary": a.summary, "epoch": a.epoch,
                    "details": serde_json::from_str::<serde_json::Value>(&a.details_json).unwrap_or_default(),
                })
            })
            .collect();
        println!("{}", serde_json::to_string_pretty(&v)?);
    } else {
        for a in r.records {
            let at = rfc3339(a.at_ms);
            println!(
                "{:>6} {} epoch {:<4} {:<16} {:<14} {}",
                a.log_index, at, a.epoch, a.actor, a.kind, a.summary
            );
        }
    }
    Ok(0)
}

fn rfc3339(ms: u64) -> String {
    if ms == 0 {
        return "-".into();
    }
    time::OffsetDateTime::from_unix_timestamp_nanos(ms as i128 * 1_000_000)
        .ok()
        .and_then(|t| {
            t.format(&time::format_description::well_known::Rfc3339)
                .ok()
        })
        .unwrap_or_default()
}

/// The JSON form of `tern regions`: an array of regions.
pub fn regions_json(r: &pb::RegionsResponse) -> serde_json::Value {
    serde_json::Value::Array(
        r.regions
            .iter()
            .map(|g| {
                serde_json::json!({
                    "region": g.region,
                    "state": g.state,
                    "mode": g.mode,
                    "since": if g.since_ms == 0 { None } else { Some(rfc3339(g.since_ms)) },
                    "since_ms": g.since_ms,
                    "epoch": g.epoch,
                    "computed": if g.computed.is_empty() { None } else { Some(&g.computed) },
                    "coordinator_reporting": g.coordinator_reporting,
                    "control_plane": g.control_plane,
                    "trust_bundle_sha256": if g.trust_bundle_sha256.is_empty() { None } else { Some(&g.trust_bundle_sha256) },
                    "frozen": r.frozen,
                    "paused": r.paused,
                    "live_view": r.live_view,
                    "quorum_ok": r.quorum_ok,
                    "observers": g.observers.iter().map(|o| serde_json::json!({
                        "observer": o.observer,
                        "observer_region": o.observer_region,
                        "sees": o.sees,
                        "since_ms": o.since_ms,
                        "report_age_ms": o.report_age_ms,
                    })).collect::<Vec<_>>(),
                })
            })
            .collect(),
    )
}

pub async fn regions(c: &ClientArgs) -> anyhow::Result<i32> {
    let mut client = connect(c).await?;
    let r = client
        .regions(pb::RegionsRequest {})
        .await
        .map_err(status_err)?
        .into_inner();
    if c.output == Output::Json {
        println!("{}", serde_json::to_string_pretty(&regions_json(&r))?);
        return Ok(0);
    }
    println!(
        "epoch {}{}{}{}",
        r.epoch,
        if r.frozen {
            "   FROZEN (most regions look down: no new Unreachable decisions)"
        } else {
            ""
        },
        if r.paused {
            "   PAUSED (automation off)"
        } else {
            ""
        },
        if !r.live_view {
            "   (leader's live view unavailable)"
        } else if !r.quorum_ok {
            "   (leader hears no quorum of reports)"
        } else {
            ""
        },
    );
    println!(
        "{:<10} {:<12} {:<12} {:<12} {:<26} {:>6}  OBSERVERS",
        "REGION", "STATE", "MODE", "COMPUTED", "SINCE", "EPOCH"
    );
    for g in &r.regions {
        let obs: Vec<String> = g
            .observers
            .iter()
            .map(|o| {
                format!(
                    "{}:{}",
                    if o.observer_region.is_empty() {
                        o.observer.to_string()
                    } else {
                        o.observer_region.clone()
                    },
                    o.sees
                )
            })
            .collect();
        println!(
            "{:<10} {:<12} {:<12} {:<12} {:<26} {:>6}  {}{}",
            g.region,
            g.state,
            if g.mode.is_empty() { "-" } else { &g.mode },
            if g.computed.is_empty() {
                "-"
            } else {
                &g.computed
            },
            rfc3339(g.since_ms),
            g.epoch,
            obs.join(" "),
            if g.coordinator_reporting || !r.live_view {
                ""
            } else {
                "  [its coordinator is not reporting]"
            },
        );
    }
    Ok(0)
}

pub async fn pause(c: &ClientArgs, paused: bool, reason: String) -> anyhow::Result<i32> {
    let mut client = connect(c).await?;
    let req = pb::PauseRequest {
        reason,
        request_id: String::new(),
    };
    let r = if paused {
        client.pause(req).await
    } else {
        client.resume(req).await
    }
    .map_err(status_err)?
    .into_inner();
    print_result(
        c,
        serde_json::json!({"paused": r.paused, "epoch": r.epoch}),
        || {
            format!(
                "automation {} (epoch {})",
                if r.paused { "paused" } else { "resumed" },
                r.epoch
            )
        },
    );
    Ok(0)
}
