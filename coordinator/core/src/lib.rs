//! Tern's decision core. It owns ids, the replicated state and its `apply`,
//! and (in later modules) region health, the standby planner, handover and
//! rotation state machines.
//!
//! It must not do I/O: no async runtime, network, storage, clock or random
//! source among its dependencies. Time comes in as an argument (`Millis`),
//! randomness as a seed. The same code runs in unit tests, in seeded
//! simulations and in production.

mod agents;
mod audit;
mod command;
mod drill;
mod handover;
mod health;
#[cfg(test)]
mod health_tests;
mod ids;
mod member;
mod rotation;
mod state;
mod time;
mod what_if;

pub use agents::{
    normalize_capability, plan, preflight, AgentRegistration, ConfigRef, NoStandby, Plan,
    RegionPlanInfo, REDIRECT_CAPABILITY,
};
pub use audit::AuditRecord;
pub use command::{
    AgentReport, Batch, BatchResponse, Command, Outcome, Proposal, RegionInfoUpdate, RegionMode,
    Rejection, MAX_NOTE_KEY, MAX_NOTE_VALUE,
};
pub use drill::{DrillRecord, DrillStep, MAX_DRILL_DETAIL, MAX_DRILL_LABEL, MAX_DRILL_STEPS};
pub use handover::{
    handover_key_id, sign_batch, token_for, verify_batch, verify_token, BatchHeader, BatchSpec,
    HandoverError, HandoverToken, MerkleTree, SignedBatch, TokenError, TokenLeaf,
    HANDOVER_CLOCK_SKEW_MS, HANDOVER_VERSION, MAX_AGENT_ID_LEN, MAX_ENCODED_TOKEN_LEN,
    MAX_ENDPOINT_LEN, MAX_TOKEN_TTL_MS, MAX_TRUST_BUNDLE_LEN,
};
pub use health::{
    ClusterView, Detector, Evaluation, HealthConfig, ObservationRecord, RegionObservation,
    RegionRecord, RegionState, RegionView, Report,
};
pub use ids::{IdError, NodeId, RegionName, RequestId, Thumbprint};
pub use member::{Member, MemberRole};
pub use rotation::{
    expiry_alert, jitter_of, may_start, rotation_due_at, ApprovalPolicy, Blockers, Event,
    Exclusion, HistoryEntry, Peer, Phase, PinKind, PinSubject, Rotation, RotationError,
    RotationRequest, RotationStatus, Waiting, WhyNot, AUTOMATION_ACTOR, DUE_BY_PERCENT,
    DUE_FROM_PERCENT, EXPIRY_ALERT_MS,
};
pub use state::{
    certificate_thumbprint, AgentDirective, AgentEntry, DirectiveAction, FederationPins, Meta,
    NoteRecord, Placement, RegionInfo, ReplicatedState, RequestRecord, RotateOp, RowKey,
    StagedBatch, StagedRef, StateError, TrustBundle, AUDIT_KEEP, FINISHED_ROTATIONS_KEPT,
    MAX_FEDERATION_CERT_PEM, REQUEST_KEEP_MAX, REQUEST_KEEP_MS,
};
pub use time::Millis;
pub use what_if::{no_standby_reason, plan_if_failed, TargetLoad, WhatIf, WhatIfAgent};
