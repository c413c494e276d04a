//! The admin API's pin rotation calls: `RotationStatus` (read from the
//! local replica), `Rotate` (one step, proposed as the calling
//! administrator) and `SetRotationPolicy`. The rules (who may approve,
//! what blocks an advance, when rollback is allowed) are the core's; this
//! module parses and reports.

use tern_core::{
    ApprovalPolicy, Command, Peer, Phase, PinKind, PinSubject, Proposal, RotateOp, Rotation,
    Thumbprint,
};
use tern_proto::v1 as pb;

use super::{first_outcome, request_id};
use crate::error::ApiError;
use crate::node::Coordinator;
use crate::ops::AdminOp;

const PHASES: [Phase; 8] = Phase::ALL;

fn phase(s: &str) -> Result<Phase, ApiError> {
    PHASES
        .into_iter()
        .find(|p| p.as_str() == s.trim())
        .ok_or_else(|| {
            ApiError::Invalid(format!(
                "phase: {s:?} is not one of {}",
                PHASES.map(|p| p.as_str()).join(", ")
            ))
        })
}

fn kind(s: &str) -> Result<PinKind, ApiError> {
    match s.trim() {
        "transport" => Ok(PinKind::Transport),
        "federation" => Ok(PinKind::Federation),
        other => Err(ApiError::Invalid(format!(
            "kind: {other:?} is not transport or federation"
        ))),
    }
}

fn policy(s: &str) -> Result<ApprovalPolicy, ApiError> {
    match s.trim() {
        "auto" => Ok(ApprovalPolicy::Auto),
        "four-eyes" | "four_eyes" => Ok(ApprovalPolicy::FourEyes),
        other => Err(ApiError::Invalid(format!(
            "policy: {other:?} is not auto or four-eyes"
        ))),
    }
}

/// One rotation as the API shows it.
pub fn info(r: &Rotation) -> pb::RotationInfo {
    let s = r.status();
    pb::RotationInfo {
        id: s.id,
        subject: s.subject.to_string(),
        phase: s.phase.as_str().into(),
        phase_since_ms: s.phase_since.0,
        old_thumbprint: s.old.to_string(),
        new_thumbprint: s.new.to_string(),
        trusted: s.trusted.iter().map(|t| t.to_string()).collect(),
        presented: s.presented.to_string(),
        waiting_for: s.waiting_for.iter().map(|w| w.to_string()).collect(),
        excluded: s
            .excluded
            .iter()
            .map(|(p, e)| format!("{p} by {} in {}", e.by, e.phase))
            .collect(),
        policy: s.policy.as_str().into(),
        proposed_by: s.proposed_by,
        approved_by: s.approved_by.unwrap_or_default(),
        started_at_ms: s.started_at.0,
        history: r
            .history()
            .iter()
            .map(|h| format!("{} {}: {}", h.at.0, h.actor, h.event))
            .collect(),
    }
}

/// `RotationStatus`: every kept rotation, newest first, and the policies.
pub fn status(coord: &Coordinator) -> pb::RotationStatusResponse {
    let (rotations, transport, federation, epoch) = coord.read_state(|s| {
        (
            s.rotations().values().rev().map(info).collect(),
            s.rotation_policy(PinKind::Transport),
            s.rotation_policy(PinKind::Federation),
            s.epoch(),
        )
    });
    pb::RotationStatusResponse {
        rotations,
        transport_policy: transport.as_str().into(),
        federation_policy: federation.as_str().into(),
        epoch,
        node_id: coord.config.node_id,
        presenting: coord.transport.thumbprint().to_string(),
        presenting_not_after_ms: u64::try_from(coord.transport.not_after_unix())
            .unwrap_or(0)
            .saturating_mul(1000),
    }
}

/// `Rotate`: parses the step and proposes it as `actor`.
pub async fn rotate(
    coord: &Coordinator,
    actor: String,
    r: pb::RotateRequest,
) -> Result<pb::RotateResponse, ApiError> {
    let need_id = || {
        if r.id == 0 {
            Err(ApiError::Invalid(
                "id: required (see `tern rotate status`)".into(),
            ))
        } else {
            Ok(r.id)
        }
    };
    let op = match r.action.trim() {
        "start" => {
            let subject: PinSubject = r.subject.parse().map_err(ApiError::Invalid)?;
            let new: Thumbprint = r
                .new_thumbprint
                .parse()
                .map_err(|e| ApiError::Invalid(format!("new_thumbprint: {e}")))?;
            RotateOp::Start { subject, new }
        }
        "approve" => RotateOp::Approve { id: need_id()? },
        "advance" => RotateOp::Advance {
            id: need_id()?,
            expected: phase(&r.phase)?,
        },
        "rollback" => RotateOp::Rollback { id: need_id()? },
        "exclude" => {
            let peer: Peer = r.peer.parse().map_err(ApiError::Invalid)?;
            RotateOp::Exclude {
                id: need_id()?,
                peer,
            }
        }
        other => {
            return Err(ApiError::Invalid(format!(
                "action: {other:?} is not start, approve, advance, rollback or exclude"
            )))
        }
    };
    let p = Proposal {
        request_id: request_id(&r.request_id)?,
        actor,
        command: Command::Rotate { op: op.clone() },
    };
    let reply = coord
        .submit(AdminOp::Propose { proposals: vec![p] })
        .await?;
    let (epoch, duplicate) = first_outcome(&reply)?;
    Ok(pb::RotateResponse {
        log_index: reply.log_index,
        epoch,
        id: op.id().unwrap_or(reply.log_index),
        duplicate,
    })
}

/// `SetRotationPolicy`.
pub async fn set_policy(
    coord: &Coordinator,
    actor: String,
    r: pb::SetRotationPolicyRequest,
) -> Result<pb::SetRotationPolicyResponse, ApiError> {
    let p = Proposal {
        request_id: request_id(&r.request_id)?,
        actor,
        command: Command::SetRotationPolicy {
            pin_kind: kind(&r.kind)?,
            policy: policy(&r.policy)?,
        },
    };
    let reply = coord
        .submit(AdminOp::Propose { proposals: vec![p] })
        .await?;
    let (epoch, _) = first_outcome(&reply)?;
    Ok(pb::SetRotationPolicyResponse { epoch })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Phases, kinds and policies parse from their wire names and nothing
    /// else; an unknown name is refused with the accepted ones listed.
    #[test]
    fn names_parse_strictly() {
        for p in PHASES {
            assert_eq!(phase(p.as_str()).expect("phase"), p);
        }
        let ApiError::Invalid(msg) = phase("stagd").expect_err("typo") else {
            panic!("invalid argument expected")
        };
        assert!(msg.contains("pending_approval"), "{msg}");
        assert_eq!(kind("transport").expect("kind"), PinKind::Transport);
        assert!(kind("tls").is_err());
        assert_eq!(policy("four-eyes").expect("p"), ApprovalPolicy::FourEyes);
        assert!(policy("two-eyes").is_err());
    }
}
