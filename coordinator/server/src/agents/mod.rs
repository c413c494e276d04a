//! Agents on the coordinator: the batching of registrations and reports
//! into Raft, the region's handover signing key, the loops that keep the
//! standby plan and the staged authorizations fresh, hand-back waves, and
//! turning the state's directive for an agent into what its shim receives
//! (endpoint, token).
//!
//! Who runs what:
//! - every region coordinator, for its own region: publishes what the
//!   region offers as a standby (`SetRegionInfo`), signs and stages its
//!   agents' authorizations, installs the federation's public handover keys
//!   in its control plane, and marks agents `MovedToPeer` there once they
//!   are attached elsewhere;
//! - the leader: runs the planner (`SetStandbys`) and hand-back waves.
//!
//! It decides nothing itself: placement, fencing and plan rules are the
//! core's. It never logs a token or key material.

mod batcher;
pub mod contract;
mod key;
mod loops;
pub(crate) mod service;
mod tokens;
pub mod watchers;

use std::sync::Arc;

use tern_core::{
    AgentRegistration, AgentReport, Command, DirectiveAction, Proposal, RegionName, ReplicatedState,
};
use tern_proto::v1 as pb;

pub use contract::RegionClient;
pub use key::SigningKey;

use crate::error::ApiError;
use crate::node::Coordinator;
use crate::ops::{AdminOp, OpReply};
use batcher::Batcher;
use tokens::TokenCache;

/// Largest registration or report batch proposed as one command.
const MAX_BATCH: usize = 5_000;

/// The agent machinery of one coordinator.
pub struct AgentHub {
    /// Wake-up counters of the open directive streams.
    pub watchers: std::sync::Arc<watchers::Watchers>,
    registrations: Batcher<AgentRegistration>,
    reports: Batcher<AgentReport>,
    pub(crate) key: SigningKey,
    tokens: TokenCache,
}

impl AgentHub {
    /// Loads (or creates) the signing key in `data_dir`; the batchers start
    /// with [`spawn`].
    pub fn new(key: SigningKey) -> AgentHub {
        AgentHub {
            watchers: std::sync::Arc::default(),
            registrations: Batcher::new(),
            reports: Batcher::new(),
            key,
            tokens: TokenCache::default(),
        }
    }

    /// Queues a registration; resolves with the epoch and log index once
    /// it is committed.
    pub async fn register(&self, a: AgentRegistration) -> Result<(u64, u64), ApiError> {
        self.registrations.submit(a).await
    }

    /// Queues a report; resolves with the epoch and log index once it is
    /// committed.
    pub async fn report(&self, r: AgentReport) -> Result<(u64, u64), ApiError> {
        self.reports.submit(r).await
    }

    /// What the shim of `agent_id` should receive now.
    pub fn directive(&self, s: &ReplicatedState, agent_id: &str) -> Option<pb::Directive> {
        let d = s.directive(agent_id)?;
        let mut out = pb::Directive {
            agent_id: agent_id.to_string(),
            epoch: d.epoch,
            action: match d.action {
                DirectiveAction::Stay => pb::DirectiveAction::Stay,
                DirectiveAction::Redirect => pb::DirectiveAction::Redirect,
                DirectiveAction::ReturnHome => pb::DirectiveAction::ReturnHome,
            } as i32,
            target_region: d.target.to_string(),
            target_endpoint: s
                .region_info()
                .get(&d.target)
                .map(|i| i.opamp_endpoint.clone())
                .unwrap_or_default(),
            target_base_url: control_plane_of(s, &d.target).unwrap_or_default(),
            token: String::new(),
            token_not_after_ms: 0,
        };
        if d.action == DirectiveAction::Redirect {
            let staged = d.staged?;
            let home = &s.agents().get(agent_id)?.registration.home;
            let token = self.tokens.token(s, home, &staged)?;
            out.token = token;
            out.token_not_after_ms = staged.not_after.0 as i64;
        }
        Some(out)
    }
}

/// The control-plane base URL of `region`, from the member table.
pub(crate) fn control_plane_of(s: &ReplicatedState, region: &RegionName) -> Option<String> {
    s.members()
        .values()
        .find(|m| &m.region == region && m.control_plane.is_some())
        .and_then(|m| m.control_plane.clone())
}

/// Starts the batchers and loops of `coord`'s agent hub.
pub fn spawn(coord: Arc<Coordinator>, region_client: Option<RegionClient>) {
    let c = coord.clone();
    coord.agents.registrations.start(move |agents| {
        let c = c.clone();
        async move { propose(&c, Command::RegisterAgents { agents }).await }
    });
    let c = coord.clone();
    coord.agents.reports.start(move |reports| {
        let c = c.clone();
        async move { propose(&c, Command::ReportAgents { reports }).await }
    });
    loops::spawn(coord, region_client);
}

/// Proposes one command as this node (wherever the leader is).
pub(crate) async fn propose(coord: &Coordinator, command: Command) -> Result<OpReply, ApiError> {
    let request_id = crate::ops::new_request_id();
    let p = Proposal {
        request_id,
        actor: format!("node:{}", coord.config.node_id),
        command,
    };
    coord.submit(AdminOp::Propose { proposals: vec![p] }).await
}
