//! The audit trail: one record per applied command, stamped with the
//! leader's time, the actor and the epoch after it applied.

use serde::{Deserialize, Serialize};

use crate::ids::RequestId;
use crate::time::Millis;

/// One applied (or refused) command, as kept in the replicated audit trail.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditRecord {
    /// Position in the trail; only grows.
    pub seq: u64,
    /// Index of the Raft entry that carried the command.
    pub log_index: u64,
    /// Leader-stamped time of that entry.
    pub at: Millis,
    /// Who asked: an admin identity, a coordinator (`node:<id>`), or `tern`
    /// for automatic decisions.
    pub actor: String,
    pub request_id: RequestId,
    /// The command's kind (`upsert_member`, `put_note`, ...).
    pub kind: String,
    /// One line for humans.
    pub summary: String,
    /// The replicated epoch after this command.
    pub epoch: u64,
    /// The command and anything that justified it, as JSON.
    pub details: serde_json::Value,
}
