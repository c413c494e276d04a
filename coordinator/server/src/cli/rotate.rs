//! `tern rotate ...`: pin rotations over the admin API. Coordinators carry
//! rotations forward on their own (the owner proposes one when its
//! certificate files change, peers confirm, the leader advances); these
//! commands show them and do what needs an administrator: start one by
//! hand, approve (four-eyes), advance a phase, roll back, exclude a peer
//! that cannot confirm, and set the approval policy.

use clap::{Subcommand, ValueEnum};
use serde_json::{json, Value};
use tern_proto::v1 as pb;

use super::admin::connect;
use super::agents::{api_err, table};
use super::{ClientArgs, Output};

/// The approval policy, as `tern rotate policy` takes it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum PolicyArg {
    Auto,
    FourEyes,
}

/// A pin kind, as `tern rotate policy` takes it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum KindArg {
    Transport,
    Federation,
}

#[derive(Debug, Subcommand)]
pub enum RotateCmd {
    /// Rotations (running first, then the newest finished ones), what each
    /// waits for, and the approval policies.
    Status,
    /// Start rotating a pin by hand (coordinators start their own when
    /// their certificate files change).
    Start {
        /// transport:<node id> or federation:<region>
        subject: String,
        /// SHA-256 thumbprint (hex) of the certificate that replaces it
        #[arg(long = "new")]
        new_thumbprint: String,
    },
    /// Approve a four-eyes rotation (a second administrator: not the one
    /// who proposed it).
    Approve { id: u64 },
    /// Leave the current phase (refused while anyone is waited for).
    Advance {
        id: u64,
        /// The phase you looked at (`tern rotate status`)
        #[arg(long)]
        phase: String,
    },
    /// Roll back (before the old pin is retired).
    Rollback { id: u64 },
    /// Stop waiting for a peer that cannot confirm (it may then refuse the
    /// owner's new certificate: reported in the status).
    Exclude {
        id: u64,
        /// node:<id>
        #[arg(long)]
        peer: String,
    },
    /// Set the approval policy of a pin kind.
    Policy {
        #[arg(value_enum)]
        kind: KindArg,
        #[arg(value_enum)]
        policy: PolicyArg,
    },
}

/// Runs a `tern rotate` command.
pub async fn run(c: &ClientArgs, cmd: RotateCmd) -> anyhow::Result<i32> {
    let mut client = connect(c).await?;
    let step = |action: &str, id: u64| pb::RotateRequest {
        action: action.into(),
        id,
        ..Default::default()
    };
    let req = match cmd {
        RotateCmd::Status => {
            let r = client
                .rotation_status(pb::RotationStatusRequest {})
                .await
                .map_err(|s| api_err(s, None))?
                .into_inner();
            if c.output == Output::Json {
                println!("{}", status_json(&r));
            } else {
                print!("{}", status_text(&r));
            }
            return Ok(0);
        }
        RotateCmd::Policy { kind, policy } => {
            let r = client
                .set_rotation_policy(pb::SetRotationPolicyRequest {
                    kind: match kind {
                        KindArg::Transport => "transport",
                        KindArg::Federation => "federation",
                    }
                    .into(),
                    policy: match policy {
                        PolicyArg::Auto => "auto",
                        PolicyArg::FourEyes => "four-eyes",
                    }
                    .into(),
                    request_id: String::new(),
                })
                .await
                .map_err(|s| api_err(s, None))?
                .into_inner();
            println!("policy set (epoch {})", r.epoch);
            return Ok(0);
        }
        RotateCmd::Start {
            subject,
            new_thumbprint,
        } => pb::RotateRequest {
            action: "start".into(),
            subject,
            new_thumbprint,
            ..Default::default()
        },
        RotateCmd::Approve { id } => step("approve", id),
        RotateCmd::Advance { id, phase } => pb::RotateRequest {
            phase,
            ..step("advance", id)
        },
        RotateCmd::Rollback { id } => step("rollback", id),
        RotateCmd::Exclude { id, peer } => pb::RotateRequest {
            peer,
            ..step("exclude", id)
        },
    };
    let action = req.action.clone();
    let r = client
        .rotate(req)
        .await
        .map_err(|s| api_err(s, None))?
        .into_inner();
    if c.output == Output::Json {
        println!(
            "{}",
            json!({"action": action, "id": r.id, "epoch": r.epoch, "log_index": r.log_index, "duplicate": r.duplicate})
        );
    } else {
        println!(
            "rotation {}: {action} committed (epoch {}, log index {}){}",
            r.id,
            r.epoch,
            r.log_index,
            if r.duplicate { " - a retry" } else { "" }
        );
    }
    Ok(0)
}

fn short(t: &str) -> &str {
    t.get(..12).unwrap_or(t)
}

/// `tern rotate status --output json`.
pub fn status_json(r: &pb::RotationStatusResponse) -> Value {
    json!({
        "policies": {"transport": r.transport_policy, "federation": r.federation_policy},
        "epoch": r.epoch,
        "node_id": r.node_id,
        "presenting": r.presenting,
        "presenting_not_after_ms": r.presenting_not_after_ms,
        "rotations": r.rotations.iter().map(|x| json!({
            "id": x.id, "subject": x.subject, "phase": x.phase,
            "phase_since_ms": x.phase_since_ms,
            "old": x.old_thumbprint, "new": x.new_thumbprint,
            "trusted": x.trusted, "presented": x.presented,
            "waiting_for": x.waiting_for, "excluded": x.excluded,
            "policy": x.policy, "proposed_by": x.proposed_by,
            "approved_by": if x.approved_by.is_empty() { Value::Null } else { json!(x.approved_by) },
            "started_at_ms": x.started_at_ms, "history": x.history,
        })).collect::<Vec<_>>(),
    })
}

fn status_text(r: &pb::RotationStatusResponse) -> String {
    let mut out = format!(
        "approval: transport {}, federation {} (epoch {})\nnode {} presents {}\n",
        r.transport_policy,
        r.federation_policy,
        r.epoch,
        r.node_id,
        short(&r.presenting)
    );
    if r.rotations.is_empty() {
        out.push_str("no rotations\n");
        return out;
    }
    let rows: Vec<Vec<String>> = r
        .rotations
        .iter()
        .map(|x| {
            vec![
                x.id.to_string(),
                x.subject.clone(),
                x.phase.clone(),
                format!(
                    "{} -> {}",
                    short(&x.old_thumbprint),
                    short(&x.new_thumbprint)
                ),
                x.policy.clone(),
                if x.waiting_for.is_empty() {
                    "-".into()
                } else {
                    x.waiting_for.join(", ")
                },
            ]
        })
        .collect();
    out.push_str(&table(
        &[
            "ID",
            "SUBJECT",
            "PHASE",
            "OLD -> NEW",
            "APPROVAL",
            "WAITING FOR",
        ],
        &rows,
        &[0],
    ));
    if !out.ends_with('\n') {
        out.push('\n');
    }
    for x in r.rotations.iter().filter(|x| !x.excluded.is_empty()) {
        out.push_str(&format!(
            "rotation {}: EXCLUDED (may refuse the owner): {}\n",
            x.id,
            x.excluded.join(", ")
        ));
    }
    out
}
