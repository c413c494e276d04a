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

/// A fresh request id for a command this process proposes on its own or
/// on behalf of a caller that gave none: a time-ordered UUID (version 7),
/// so that the stored request rows are appended near each other instead
/// of at random places in the store's index.
pub fn new_request_id() -> RequestId {
    RequestId::try_from(uuid::Uuid::now_v7().to_string())
        .expect("a UUID's text is a valid request id")
}

#[cfg(test)]
mod request_id_tests {
    use super::new_request_id;

    // Property: request ids made one after the other sort in the order they
    // were made (so their rows are appended, not scattered) and are unique.
    #[test]
    fn generated_request_ids_are_time_ordered_and_unique() {
        let ids: Vec<String> = (0..10_000).map(|_| new_request_id().to_string()).collect();
        let mut sorted = ids.clone();
        sorted.sort();
        sorted.dedup();
        assert_eq!(sorted, ids);
    }
}
