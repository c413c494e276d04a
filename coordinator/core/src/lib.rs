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
mod health;
#[cfg(test)]
mod health_tests;
mod ids;
mod member;
mod state;
mod time;

pub use agents::{
    normalize_capability, plan, preflight, AgentRegistration, ConfigRef, NoStandby, Plan,
    RegionPlanInfo, REDIRECT_CAPABILITY,
};
pub use audit::AuditRecord;
pub use command::{
    Batch, BatchResponse, Command, Outcome, Proposal, Rejection, MAX_NOTE_KEY, MAX_NOTE_VALUE,
};
pub use health::{
    ClusterView, Detector, Evaluation, HealthConfig, ObservationRecord, RegionObservation,
    RegionRecord, RegionState, RegionView, Report,
};
pub use ids::{IdError, NodeId, RegionName, RequestId, Thumbprint};
pub use member::{Member, MemberRole};
pub use state::{
    AgentEntry, Meta, NoteRecord, Placement, ReplicatedState, RequestRecord, RowKey, StateError,
    TrustBundle, AUDIT_KEEP, REQUEST_KEEP_MAX, REQUEST_KEEP_MS,
};
pub use time::Millis;
