//! Commands: what may be proposed to the replicated state, how proposals are
//! batched into one Raft entry, and what applying each one produced.
//!
//! Every command is executed by the state machine of every replica, in log
//! order, when the entry that carries it is applied; the leader stamps the
//! entry's time. Stale or invalid commands are refused with an `Outcome`,
//! never a panic.

use serde::{Deserialize, Serialize};

use crate::agents::AgentRegistration;
use crate::drill::DrillRecord;
use crate::handover::{SignedBatch, TokenLeaf};
use crate::health::{ObservationRecord, RegionState};
use crate::ids::{NodeId, RegionName, RequestId};
use crate::member::Member;
use crate::rotation::{ApprovalPolicy, PinKind};
use crate::state::RotateOp;
use crate::time::Millis;

/// Largest note key, in bytes.
pub const MAX_NOTE_KEY: usize = 256;
/// Largest note value, in bytes.
pub const MAX_NOTE_VALUE: usize = 64 * 1024;

/// A change to the replicated state.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Command {
    /// Add a coordinator to the member table, or replace its entry (address,
    /// pins). Proposed by an administrator (`tern members add`) before the
    /// node joins Raft, so that every peer pins it first. Bumps the epoch.
    UpsertMember {
        member: Member,
        expect_epoch: Option<u64>,
    },
    /// Drop a coordinator from the member table after it left Raft's
    /// membership; its thumbprints are no longer pinned. Bumps the epoch.
    RemoveMember {
        node_id: NodeId,
        expect_epoch: Option<u64>,
    },
    /// An operator's annotation (key/value), shown by `tern notes`.
    PutNote { key: String, value: String },
    /// A region's health changes. Proposed by the leader's detector with the
    /// observations that justify it; refused as stale when the region is no
    /// longer in `from`. Bumps the epoch.
    RegionTransition {
        region: RegionName,
        from: RegionState,
        to: RegionState,
        observations: Vec<ObservationRecord>,
    },
    /// Freeze (or unfreeze) automatic Unreachable decisions because most
    /// regions look down at once. Proposed by the leader's detector. Bumps
    /// the epoch.
    SetFrozen { frozen: bool, reason: String },
    /// Register (or re-register, e.g. after a leaf renewal) agents, many per
    /// entry. Proposed by the coordinator a shim registered with.
    RegisterAgents { agents: Vec<AgentRegistration> },
    /// Changes to the standby plan, computed by the leader's planner. Agents
    /// already failed over keep the standby their directive was fixed with.
    SetStandbys {
        standbys: Vec<(String, Option<RegionName>)>,
    },
    /// A region's agent trust bundle (the CA certificates its control plane
    /// trusts for agents, PEM), fetched by that region's coordinator from
    /// `/pki/trust-bundle.pem` and committed so every coordinator can verify
    /// every region's agents before any outage.
    SetTrustBundle {
        region: RegionName,
        pem: String,
        sha256: String,
    },
    /// Pause or resume automation (`tern pause` / `tern resume`). While
    /// paused, states are computed and shown but nothing acts on them.
    SetPaused { paused: bool, reason: String },
    /// What a region offers as a standby, published by its own coordinator:
    /// its OpAMP endpoint, capacity for agents from elsewhere, priority,
    /// the configurations its control plane holds, and the public part of
    /// its handover signing key.
    SetRegionInfo {
        region: RegionName,
        update: RegionInfoUpdate,
    },
    /// A batch of staged handover authorizations of `region`'s agents: one
    /// signature (by the region's key) over a Merkle root of the leaves.
    StageAuthorizations {
        region: RegionName,
        batch: SignedBatch,
        leaves: Vec<TokenLeaf>,
    },
    /// What shims reported after applying directives, many per entry.
    ReportAgents { reports: Vec<AgentReport> },
    /// An operator's override of a region (`tern drain|undrain|failover|
    /// failback`). Fenced by the expected epoch. Bumps the epoch.
    SetRegionMode {
        region: RegionName,
        mode: RegionMode,
        expect_epoch: Option<u64>,
    },
    /// One hand-back wave: these agents of `region` (healthy again) are
    /// directed home. Proposed by the leader's hand-back loop. Bumps the
    /// epoch.
    HandBack {
        region: RegionName,
        agents: Vec<String>,
    },
    /// What a disaster-recovery drill measured (`tern drill REGION`),
    /// recorded in the audit trail. Changes nothing else.
    RecordDrill { drill: DrillRecord },
    /// One step of a pin rotation (`tern rotate ...`, or a coordinator's
    /// rotation loop). Phase changes bump the epoch.
    Rotate { op: RotateOp },
    /// The approval policy of a pin kind (`tern rotate policy`). Bumps the
    /// epoch.
    SetRotationPolicy {
        pin_kind: PinKind,
        policy: ApprovalPolicy,
    },
    /// A region's coordinator publishes the public federation client
    /// certificate (one PEM `CERTIFICATE` block) of its control plane. The
    /// first one published becomes the region's federation pin; a later one
    /// is kept for the rotation that pins it. Bumps the epoch when it sets
    /// the first pin.
    PublishFederationCert { region: RegionName, pem: String },
}

/// An operator's override of a region.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RegionMode {
    /// Tern decides from the region's health.
    #[default]
    Auto,
    /// Planned maintenance: agents move to their standbys, and the region
    /// takes no standby agents.
    Drained,
    /// A manual failover: like an Unreachable decision, by an operator.
    FailedOver,
}

impl RegionMode {
    pub fn as_str(&self) -> &'static str {
        match self {
            RegionMode::Auto => "auto",
            RegionMode::Drained => "drained",
            RegionMode::FailedOver => "failed_over",
        }
    }
}

/// What a region's coordinator publishes about its region.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct RegionInfoUpdate {
    /// The region's OpAMP endpoint (`wss://host:port/v1/opamp`).
    pub opamp_endpoint: String,
    /// Agents from other regions it takes as standby; None: unlimited.
    pub capacity: Option<u64>,
    /// Standby priority: lower goes first.
    pub priority: u32,
    /// Content hashes of the configurations its control plane holds.
    pub configs: std::collections::BTreeSet<String>,
    /// The region's handover signing key: key id and public key (hex).
    pub signing_key: Option<(String, String)>,
}

/// One shim's report.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AgentReport {
    pub agent_id: String,
    /// The epoch of the directive it answers.
    pub epoch: u64,
    /// Where the agent is attached now (checked with that region).
    pub serving: RegionName,
    /// Attached (true) or the directive failed (false).
    pub attached: bool,
}

impl Command {
    /// The command's name in audit records and metrics.
    pub fn kind(&self) -> &'static str {
        match self {
            Command::UpsertMember { .. } => "upsert_member",
            Command::RemoveMember { .. } => "remove_member",
            Command::PutNote { .. } => "put_note",
            Command::RegionTransition { .. } => "region_transition",
            Command::SetFrozen { .. } => "set_frozen",
            Command::SetPaused { .. } => "set_paused",
            Command::RegisterAgents { .. } => "register_agents",
            Command::SetStandbys { .. } => "set_standbys",
            Command::SetTrustBundle { .. } => "set_trust_bundle",
            Command::SetRegionInfo { .. } => "set_region_info",
            Command::StageAuthorizations { .. } => "stage_authorizations",
            Command::ReportAgents { .. } => "report_agents",
            Command::SetRegionMode { .. } => "set_region_mode",
            Command::HandBack { .. } => "hand_back",
            Command::RecordDrill { .. } => "record_drill",
            Command::Rotate { .. } => "rotate",
            Command::SetRotationPolicy { .. } => "set_rotation_policy",
            Command::PublishFederationCert { .. } => "publish_federation_cert",
        }
    }

    /// Checks what can be checked without the state. A command that fails
    /// here is refused by the API before it reaches Raft.
    pub fn validate(&self) -> Result<(), String> {
        match self {
            Command::UpsertMember { member, .. } => {
                if member.address.is_empty() || !member.address.contains(':') {
                    return Err(format!(
                        "address must be host:port, got {:?}",
                        member.address
                    ));
                }
                if member.thumbprints.is_empty() {
                    return Err("a member needs at least one pinned thumbprint".into());
                }
                Ok(())
            }
            Command::RemoveMember { .. } => Ok(()),
            Command::PutNote { key, value } => {
                if key.is_empty() || key.len() > MAX_NOTE_KEY {
                    return Err(format!("note key must be 1-{MAX_NOTE_KEY} bytes"));
                }
                if value.len() > MAX_NOTE_VALUE {
                    return Err(format!("note value must be at most {MAX_NOTE_VALUE} bytes"));
                }
                Ok(())
            }
            Command::RegionTransition { from, to, .. } => {
                if from == to {
                    return Err("a region transition must change the state".into());
                }
                Ok(())
            }
            Command::SetFrozen { .. } | Command::SetPaused { .. } => Ok(()),
            Command::RegisterAgents { agents } => {
                if agents.is_empty() || agents.len() > 10_000 {
                    return Err("a registration batch holds 1 to 10000 agents".into());
                }
                agents.iter().try_for_each(|a| {
                    a.validate()
                        .map_err(|e| format!("agent {:?}: {e}", a.agent_id))
                })
            }
            Command::SetStandbys { .. } => Ok(()),
            Command::SetRegionInfo { update, .. } => {
                if !(update.opamp_endpoint.starts_with("wss://")
                    || update.opamp_endpoint.starts_with("ws://"))
                {
                    return Err(format!(
                        "opamp_endpoint must be a ws:// or wss:// URL, got {:?}",
                        update.opamp_endpoint
                    ));
                }
                if update.configs.len() > 100_000 {
                    return Err("at most 100000 configurations".into());
                }
                Ok(())
            }
            Command::StageAuthorizations { batch, leaves, .. } => {
                if leaves.is_empty() || leaves.len() > 10_000 {
                    return Err("a staged batch holds 1 to 10000 agents".into());
                }
                if batch.header.leaf_count as usize != leaves.len() {
                    return Err("leaf_count does not match the leaves".into());
                }
                Ok(())
            }
            Command::ReportAgents { reports } => {
                if reports.is_empty() || reports.len() > 10_000 {
                    return Err("a report batch holds 1 to 10000 reports".into());
                }
                Ok(())
            }
            Command::SetRegionMode { .. } => Ok(()),
            Command::RecordDrill { drill } => drill.validate(),
            Command::Rotate { .. } | Command::SetRotationPolicy { .. } => Ok(()),
            Command::PublishFederationCert { pem, .. } => {
                if pem.is_empty() || pem.len() > crate::state::MAX_FEDERATION_CERT_PEM {
                    return Err(format!(
                        "a federation certificate PEM holds 1 to {} bytes",
                        crate::state::MAX_FEDERATION_CERT_PEM
                    ));
                }
                Ok(())
            }
            Command::HandBack { agents, .. } => {
                if agents.is_empty() || agents.len() > 10_000 {
                    return Err("a hand-back wave holds 1 to 10000 agents".into());
                }
                Ok(())
            }
            Command::SetTrustBundle { pem, sha256, .. } => {
                if !pem.contains("-----BEGIN CERTIFICATE-----") {
                    return Err("the trust bundle holds no PEM certificate".into());
                }
                if pem.len() > 1024 * 1024 {
                    return Err("the trust bundle is larger than 1 MiB".into());
                }
                if sha256.len() != 64 || !sha256.bytes().all(|b| b.is_ascii_hexdigit()) {
                    return Err("sha256 must be 64 hex digits".into());
                }
                Ok(())
            }
        }
    }
}

/// One client's command with its idempotency key and author.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Proposal {
    pub request_id: RequestId,
    /// Who asked (admin identity, `node:<id>`, or `tern`).
    pub actor: String,
    pub command: Command,
}

/// The payload of one Raft entry: many proposals, one leader-stamped time.
/// Batching is what lets many small commands share one fsync.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Batch {
    pub at: Millis,
    pub proposals: Vec<Proposal>,
}

/// What applying one proposal produced.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "outcome", rename_all = "snake_case")]
pub enum Outcome {
    /// Applied; `epoch` is the replicated epoch afterwards.
    Applied { epoch: u64, log_index: u64 },
    /// This request id was applied before (a retry): nothing changed.
    Duplicate { epoch: u64, log_index: u64 },
    /// Refused; nothing changed.
    Rejected { reason: Rejection },
}

/// Why a command was refused.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
#[serde(tag = "rejection", rename_all = "snake_case")]
pub enum Rejection {
    #[error("stale: expected epoch {expected}, the cluster is at {actual}")]
    StaleEpoch { expected: u64, actual: u64 },
    #[error("invalid: {message}")]
    Invalid { message: String },
    #[error("conflict: {message}")]
    Conflict { message: String },
}

/// The state machine's answer for one Raft entry: one outcome per proposal,
/// in order. Membership and blank entries answer with no outcomes.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct BatchResponse {
    pub outcomes: Vec<Outcome>,
}
