//! The agent gRPC service (`tern.v1.Agent`), served by every coordinator
//! to the shims of every region. Only agent certificates may call it
//! (`ListCoordinators` is also open to peers and admins). The fingerprint
//! is always the one of the leaf presented on the connection; an agent may
//! register only under an id its certificate names, only with the home
//! region whose CA issued it, and may watch and report only for itself.

use std::collections::BTreeSet;
use std::pin::Pin;
use std::sync::Arc;

use futures::Stream;
use tern_core::{AgentRegistration, AgentReport, ConfigRef, Millis, RegionName, Thumbprint};
use tern_proto::v1 as pb;
use tern_proto::v1::agent_server::Agent;
use tonic::{Request, Response, Status};

use crate::error::ApiError;
use crate::node::Coordinator;
use crate::tls::{peer_identity, PeerRole};

/// The agent service of one coordinator.
pub(crate) struct AgentService {
    pub(crate) coord: Arc<Coordinator>,
}

/// The verified agent behind a request: its leaf's fingerprint, the region
/// whose CA issued it, and the names the leaf carries.
struct Caller {
    fingerprint: Thumbprint,
    region: RegionName,
    names: Vec<String>,
}

fn require_agent<T>(req: &Request<T>) -> Result<Caller, Status> {
    match peer_identity(req) {
        Some(p) => match &p.role {
            PeerRole::Agent { region, names } => Ok(Caller {
                fingerprint: p.thumbprint,
                region: region.clone(),
                names: names.clone(),
            }),
            _ => Err(ApiError::PermissionDenied(format!(
                "certificate {} is not an agent certificate",
                p.thumbprint.short()
            ))
            .into()),
        },
        None => Err(Status::unauthenticated("no verified client certificate")),
    }
}

/// The caller may act for `agent_id` only if it is the registered agent:
/// same fingerprint as the registration.
fn require_registered(coord: &Coordinator, caller: &Caller, agent_id: &str) -> Result<(), Status> {
    let registered =
        coord.read_state(|s| s.agents().get(agent_id).map(|e| e.registration.fingerprint));
    match registered {
        None => Err(Status::not_found(format!(
            "agent {agent_id:?} is not registered"
        ))),
        Some(f) if f != caller.fingerprint => Err(ApiError::PermissionDenied(format!(
            "agent {agent_id:?} is registered with another leaf (fingerprint {}), not {}",
            f.short(),
            caller.fingerprint.short()
        ))
        .into()),
        Some(_) => Ok(()),
    }
}

fn registration(caller: &Caller, r: pb::RegisterRequest) -> Result<AgentRegistration, Status> {
    if !caller.names.iter().any(|n| n == &r.agent_id) {
        return Err(ApiError::PermissionDenied(format!(
            "the certificate does not name agent {:?} (as subject CN or SAN)",
            r.agent_id
        ))
        .into());
    }
    let home: RegionName = r
        .home_region
        .parse()
        .map_err(|e| Status::invalid_argument(format!("home_region: {e}")))?;
    if home != caller.region {
        return Err(ApiError::PermissionDenied(format!(
            "the certificate was issued by {}'s agent CA, not {home}'s",
            caller.region
        ))
        .into());
    }
    let config = r
        .config
        .ok_or_else(|| Status::invalid_argument("config is required"))?;
    let allowed_regions = if r.allowed_regions.is_empty() {
        None
    } else {
        Some(
            r.allowed_regions
                .iter()
                .map(|a| a.parse::<RegionName>())
                .collect::<Result<BTreeSet<_>, _>>()
                .map_err(|e| Status::invalid_argument(format!("allowed_regions: {e}")))?,
        )
    };
    let a = AgentRegistration {
        agent_id: r.agent_id,
        fingerprint: caller.fingerprint,
        home,
        tenant: r.tenant,
        config: ConfigRef {
            id: config.id,
            version: config.version,
            content_hash: config.content_hash,
        },
        capabilities: r.capabilities.into_iter().collect(),
        allowed_regions,
        leaf_not_after: Millis(u64::try_from(r.leaf_not_after_ms).unwrap_or(0)),
    };
    a.validate().map_err(Status::invalid_argument)?;
    Ok(a)
}

type DirectiveStream = Pin<Box<dyn Stream<Item = Result<pb::Directive, Status>> + Send>>;

#[tonic::async_trait]
impl Agent for AgentService {
    async fn list_coordinators(
        &self,
        _req: Request<pb::ListCoordinatorsRequest>,
    ) -> Result<Response<pb::ListCoordinatorsResponse>, Status> {
        let (coordinators, epoch) = self.coord.read_state(|s| {
            let list = s
                .members()
                .values()
                .map(|m| pb::CoordinatorEndpoint {
                    node_id: m.node_id,
                    region: m.region.to_string(),
                    address: m.address.clone(),
                })
                .collect();
            (list, s.epoch())
        });
        Ok(Response::new(pb::ListCoordinatorsResponse {
            coordinators,
            epoch,
        }))
    }

    async fn register(
        &self,
        req: Request<pb::RegisterRequest>,
    ) -> Result<Response<pb::RegisterResponse>, Status> {
        let caller = require_agent(&req)?;
        let a = registration(&caller, req.into_inner())?;
        let unchanged = self
            .coord
            .read_state(|s| s.agents().get(&a.agent_id).map(|e| e.registration == a))
            .unwrap_or(false);
        let epoch = if unchanged {
            self.coord.read_state(|s| s.epoch())
        } else {
            let (epoch, log_index) = self.coord.agents.register(a).await?;
            // Answer only once this coordinator has applied the entry, so
            // the shim's next call here (Watch) finds the registration.
            let mut applied = self.coord.applied.clone();
            let wait = applied.wait_for(|l| l.is_some_and(|l| l.index >= log_index));
            if tokio::time::timeout(std::time::Duration::from_secs(10), wait)
                .await
                .is_err()
            {
                return Err(Status::unavailable(
                    "the registration committed but is not applied here yet; retry",
                ));
            }
            epoch
        };
        Ok(Response::new(pb::RegisterResponse {
            fingerprint: caller.fingerprint.to_string(),
            epoch,
        }))
    }

    type WatchStream = DirectiveStream;

    async fn watch(
        &self,
        req: Request<pb::WatchRequest>,
    ) -> Result<Response<Self::WatchStream>, Status> {
        let caller = require_agent(&req)?;
        let agent_id = req.into_inner().agent_id;
        require_registered(&self.coord, &caller, &agent_id)?;
        let coord = self.coord.clone();
        let (tx, rx) = tokio::sync::mpsc::channel(4);
        crate::metrics::agent_watch_opened();
        tokio::spawn(async move {
            // Woken when an applied entry changed this agent's row or
            // anything shared (see `watchers`), not on every entry.
            let mut wake = coord.agents.watchers.subscribe(&agent_id);
            // What the last directive sent was made from: the core's
            // directive and the target's endpoints. Applied entries that
            // change none of it (most of them: other agents' reports) cost
            // one map lookup here, not a token.
            let mut last: Option<(tern_core::AgentDirective, String, String)> = None;
            loop {
                let current = coord.read_state(|s| {
                    // A re-registration with another leaf ends this stream.
                    match s.agents().get(&agent_id) {
                        Some(e) if e.registration.fingerprint == caller.fingerprint => {
                            Ok(s.directive(&agent_id).map(|d| {
                                let endpoint = s
                                    .region_info()
                                    .get(&d.target)
                                    .map(|i| i.opamp_endpoint.clone())
                                    .unwrap_or_default();
                                let base =
                                    super::control_plane_of(s, &d.target).unwrap_or_default();
                                (d, endpoint, base)
                            }))
                        }
                        _ => Err(()),
                    }
                });
                let current = match current {
                    Ok(c) => c,
                    Err(()) => {
                        let _ = tx
                            .send(Err(Status::permission_denied(
                                "the agent re-registered with another leaf",
                            )))
                            .await;
                        break;
                    }
                };
                if current.is_some() && current != last {
                    let d = coord.read_state(|s| coord.agents.directive(s, &agent_id));
                    if let Some(d) = d {
                        if tx.send(Ok(d)).await.is_err() {
                            break;
                        }
                        last = current;
                    }
                }
                tokio::select! {
                    alive = wake.changed() => if !alive { break },
                    _ = tx.closed() => break,
                }
            }
            drop(wake);
            coord.agents.watchers.release(&agent_id);
            crate::metrics::agent_watch_closed();
        });
        let stream = tokio_stream::wrappers::ReceiverStream::new(rx);
        Ok(Response::new(Box::pin(stream)))
    }

    async fn report(
        &self,
        req: Request<pb::ReportRequest>,
    ) -> Result<Response<pb::ReportResponse>, Status> {
        let caller = require_agent(&req)?;
        let r = req.into_inner();
        require_registered(&self.coord, &caller, &r.agent_id)?;
        let serving: RegionName = r
            .serving_region
            .parse()
            .map_err(|e| Status::invalid_argument(format!("serving_region: {e}")))?;
        let attached = match pb::ReportOutcome::try_from(r.outcome) {
            Ok(pb::ReportOutcome::Attached) => true,
            Ok(pb::ReportOutcome::Failed) => false,
            _ => {
                return Err(Status::invalid_argument(
                    "outcome must be ATTACHED or FAILED",
                ))
            }
        };
        if !attached {
            tracing::warn!(
                agent_id = %r.agent_id,
                epoch = r.epoch,
                serving = %serving,
                detail = %r.detail,
                "a shim reports that applying its directive failed"
            );
            return Ok(Response::new(pb::ReportResponse {}));
        }
        self.coord
            .agents
            .report(AgentReport {
                agent_id: r.agent_id,
                epoch: r.epoch,
                serving,
                attached,
            })
            .await?;
        Ok(Response::new(pb::ReportResponse {}))
    }
}
