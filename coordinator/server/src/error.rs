//! API errors: expected outcomes (not leader, stale epoch, invalid input,
//! timeout) as values, and their one mapping to `tonic::Status`. "Not
//! leader" answers carry the leader's address in the `tern-leader`
//! metadata entry.

use tern_core::Rejection;

use crate::raft::NodeId;

/// A recoverable error of an admin or internal API call.
#[derive(Debug, Clone, thiserror::Error)]
pub enum ApiError {
    #[error("this coordinator is not the leader (leader: {})", leader_text(.0))]
    NotLeader(Option<(NodeId, String)>),
    #[error("no leader is known right now; the cluster may be electing or without quorum")]
    NoLeader,
    #[error("the write was not committed within {0} ms (it may still commit; retry with the same request id)")]
    Timeout(u64),
    #[error("invalid request: {0}")]
    Invalid(String),
    #[error("{0}")]
    Rejected(Rejection),
    #[error("permission denied: {0}")]
    PermissionDenied(String),
    #[error("could not reach the leader: {0}")]
    LeaderUnreachable(String),
    #[error("internal error: {0}")]
    Internal(String),
}

fn leader_text(l: &Option<(NodeId, String)>) -> String {
    match l {
        Some((id, addr)) => format!("node {id} at {addr}"),
        None => "unknown".into(),
    }
}

/// Metadata key carrying the leader's address on NotLeader answers.
pub const LEADER_METADATA: &str = "tern-leader";

impl From<ApiError> for tonic::Status {
    fn from(e: ApiError) -> tonic::Status {
        let msg = e.to_string();
        match &e {
            ApiError::NotLeader(leader) => {
                let mut s = tonic::Status::unavailable(msg);
                if let Some((_, addr)) = leader {
                    if let Ok(v) = addr.parse() {
                        s.metadata_mut().insert(LEADER_METADATA, v);
                    }
                }
                s
            }
            ApiError::NoLeader | ApiError::LeaderUnreachable(_) => tonic::Status::unavailable(msg),
            ApiError::Timeout(_) => tonic::Status::deadline_exceeded(msg),
            ApiError::Invalid(_) => tonic::Status::invalid_argument(msg),
            ApiError::Rejected(Rejection::StaleEpoch { .. }) => {
                tonic::Status::failed_precondition(msg)
            }
            ApiError::Rejected(Rejection::Invalid { .. }) => tonic::Status::invalid_argument(msg),
            ApiError::Rejected(Rejection::Conflict { .. }) => tonic::Status::already_exists(msg),
            ApiError::PermissionDenied(_) => tonic::Status::permission_denied(msg),
            ApiError::Internal(_) => tonic::Status::internal(msg),
        }
    }
}

impl ApiError {
    /// Rebuilds an error from a peer's status (forwarded calls).
    pub fn from_status(s: &tonic::Status) -> ApiError {
        let m = s.message().to_string();
        match s.code() {
            tonic::Code::InvalidArgument => ApiError::Invalid(m),
            tonic::Code::PermissionDenied => ApiError::PermissionDenied(m),
            tonic::Code::DeadlineExceeded => ApiError::LeaderUnreachable(m),
            tonic::Code::FailedPrecondition | tonic::Code::AlreadyExists => {
                ApiError::Internal(format!("leader refused: {m}"))
            }
            _ => ApiError::LeaderUnreachable(m),
        }
    }
}
