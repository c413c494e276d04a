//! Administrative operations as they travel from any coordinator to the
//! leader: a list of proposals committed in one entry, or a membership
//! change (which also needs openraft's membership calls, so it can only be
//! executed by the leader). Followers forward these over the Raft
//! transport's `Forward` RPC; the leader executes them.

use serde::{Deserialize, Serialize};
use tern_core::{Member, NodeId, Outcome, Proposal, RequestId};

/// An operation that must run on the leader.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum AdminOp {
    /// Commit these proposals in one Raft entry.
    Propose { proposals: Vec<Proposal> },
    /// Pin the member, add it as a learner (waiting until it has caught
    /// up), then, if `voter`, promote it to voter.
    AddMember {
        member: Member,
        voter: bool,
        request_id: RequestId,
        actor: String,
    },
    /// Remove the node from Raft's membership, then unpin it.
    RemoveMember {
        node_id: NodeId,
        request_id: RequestId,
        actor: String,
    },
}

/// The leader's answer to an operation.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct OpReply {
    /// Index of the (last) Raft entry the operation committed.
    pub log_index: u64,
    /// One outcome per proposal (for membership changes: the member table
    /// command's outcome).
    pub outcomes: Vec<Outcome>,
}
