//! The admin gRPC service: status, membership, notes, the audit trail,
//! region health and pause, and (in `agents`) the plan preview, region
//! overrides and the agent registry.
//! Every call needs an administrator certificate; writes go to the leader
//! (forwarded from followers by `Coordinator::submit`). Conversions between
//! generated protobuf types and core types live here and nowhere else.

pub(crate) mod agents;
pub mod rotation;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Instant;

use tern_core::{
    Command, Member, MemberRole as CoreRole, Outcome, Proposal, RequestId, Thumbprint,
};
use tern_proto::v1 as pb;
use tern_proto::v1::admin_server::Admin;
use tonic::{Request, Response, Status};
use tracing::instrument;

use crate::error::ApiError;
use crate::node::Coordinator;
use crate::ops::AdminOp;
use crate::tls::{peer_identity, PeerRole};

pub struct AdminService {
    pub coord: Arc<Coordinator>,
}

/// The admin identity of the caller, as `admin:<name>`.
fn require_admin<T>(req: &Request<T>) -> Result<String, Status> {
    match peer_identity(req) {
        Some(p) => match &p.role {
            PeerRole::Admin { name } => Ok(format!("admin:{name}")),
            PeerRole::Peer => Err(ApiError::PermissionDenied(format!(
                "certificate {} is a coordinator certificate, not an administrator's",
                p.thumbprint.short()
            ))
            .into()),
            PeerRole::Agent { .. } => Err(ApiError::PermissionDenied(format!(
                "certificate {} is an agent certificate, not an administrator's",
                p.thumbprint.short()
            ))
            .into()),
        },
        None => Err(Status::unauthenticated("no verified client certificate")),
    }
}

fn request_id(s: &str) -> Result<RequestId, ApiError> {
    if s.is_empty() {
        return Ok(crate::ops::new_request_id());
    }
    s.parse()
        .map_err(|e| ApiError::Invalid(format!("request_id: {e}")))
}

fn first_outcome(reply: &crate::ops::OpReply) -> Result<(u64, bool), ApiError> {
    match reply.outcomes.first() {
        Some(Outcome::Applied { epoch, .. }) => Ok((*epoch, false)),
        Some(Outcome::Duplicate { epoch, .. }) => Ok((*epoch, true)),
        Some(Outcome::Rejected { reason }) => Err(ApiError::Rejected(reason.clone())),
        None => Err(ApiError::Internal("no outcome for the proposal".into())),
    }
}

fn role_from_pb(r: i32) -> Result<CoreRole, ApiError> {
    match pb::MemberRole::try_from(r) {
        Ok(pb::MemberRole::Region) | Ok(pb::MemberRole::Unspecified) => Ok(CoreRole::Region),
        Ok(pb::MemberRole::Witness) => Ok(CoreRole::Witness),
        Err(_) => Err(ApiError::Invalid(format!("role: unknown value {r}"))),
    }
}

fn role_to_pb(r: CoreRole) -> pb::MemberRole {
    match r {
        CoreRole::Region => pb::MemberRole::Region,
        CoreRole::Witness => pb::MemberRole::Witness,
    }
}

#[tonic::async_trait]
impl Admin for AdminService {
    #[instrument(skip_all, name = "grpc.admin.status")]
    async fn status(
        &self,
        req: Request<pb::StatusRequest>,
    ) -> Result<Response<pb::StatusResponse>, Status> {
        require_admin(&req)?;
        Ok(Response::new(status(&self.coord).await))
    }

    #[instrument(skip_all, name = "grpc.admin.add_member", fields(node_id = req.get_ref().node_id))]
    async fn add_member(
        &self,
        req: Request<pb::AddMemberRequest>,
    ) -> Result<Response<pb::AddMemberResponse>, Status> {
        let actor = require_admin(&req)?;
        let r = req.into_inner();
        let region = r
            .region
            .parse()
            .map_err(|e| ApiError::Invalid(format!("region: {e}")))?;
        let thumbprint: Thumbprint = r
            .thumbprint
            .parse()
            .map_err(|e| ApiError::Invalid(format!("thumbprint: {e}")))?;
        if r.node_id == 0 {
            return Err(ApiError::Invalid("node_id: must be greater than 0".into()).into());
        }
        let member = Member {
            node_id: r.node_id,
            region,
            role: role_from_pb(r.role)?,
            address: r.address,
            thumbprints: [thumbprint].into(),
            control_plane: if r.control_plane.is_empty() {
                None
            } else {
                Some(r.control_plane)
            },
        };
        Command::UpsertMember {
            member: member.clone(),
            expect_epoch: None,
        }
        .validate()
        .map_err(ApiError::Invalid)?;
        let op = AdminOp::AddMember {
            member,
            voter: r.voter,
            request_id: request_id(&r.request_id)?,
            actor,
        };
        let reply = self.coord.submit(op).await?;
        let (epoch, _) = first_outcome(&reply)?;
        Ok(Response::new(pb::AddMemberResponse {
            epoch,
            log_index: reply.log_index,
        }))
    }

    #[instrument(skip_all, name = "grpc.admin.remove_member", fields(node_id = req.get_ref().node_id))]
    async fn remove_member(
        &self,
        req: Request<pb::RemoveMemberRequest>,
    ) -> Result<Response<pb::RemoveMemberResponse>, Status> {
        let actor = require_admin(&req)?;
        let r = req.into_inner();
        let op = AdminOp::RemoveMember {
            node_id: r.node_id,
            request_id: request_id(&r.request_id)?,
            actor,
        };
        let reply = self.coord.submit(op).await?;
        let (epoch, _) = first_outcome(&reply)?;
        Ok(Response::new(pb::RemoveMemberResponse {
            epoch,
            log_index: reply.log_index,
        }))
    }

    async fn put_note(
        &self,
        req: Request<pb::PutNoteRequest>,
    ) -> Result<Response<pb::PutNoteResponse>, Status> {
        let actor = require_admin(&req)?;
        let r = req.into_inner();
        let p = Proposal {
            request_id: request_id(&r.request_id)?,
            actor,
            command: Command::PutNote {
                key: r.key,
                value: r.value,
            },
        };
        p.command.validate().map_err(ApiError::Invalid)?;
        let reply = self
            .coord
            .submit(AdminOp::Propose { proposals: vec![p] })
            .await?;
        let (_, duplicate) = first_outcome(&reply)?;
        let log_index = match reply.outcomes.first() {
            Some(Outcome::Duplicate { log_index, .. }) => *log_index,
            _ => reply.log_index,
        };
        Ok(Response::new(pb::PutNoteResponse {
            log_index,
            duplicate,
        }))
    }

    async fn list_notes(
        &self,
        req: Request<pb::ListNotesRequest>,
    ) -> Result<Response<pb::ListNotesResponse>, Status> {
        require_admin(&req)?;
        let prefix = req.into_inner().prefix;
        let notes = self.coord.read_state(|s| {
            s.notes()
                .range(prefix.clone()..)
                .take_while(|(k, _)| k.starts_with(&prefix))
                .map(|(k, n)| pb::Note {
                    key: k.clone(),
                    value: n.value.clone(),
                    actor: n.actor.clone(),
                    at_ms: n.at.0,
                    log_index: n.log_index,
                })
                .collect()
        });
        Ok(Response::new(pb::ListNotesResponse { notes }))
    }

    async fn audit(
        &self,
        req: Request<pb::AuditRequest>,
    ) -> Result<Response<pb::AuditResponse>, Status> {
        require_admin(&req)?;
        let r = req.into_inner();
        let limit = if r.limit == 0 {
            100
        } else {
            r.limit.min(10_000)
        } as usize;
        let records = self.coord.read_state(|s| {
            let matching: Vec<_> = s
                .audit()
                .iter()
                .filter(|a| a.log_index > r.after_index)
                .collect();
            let skip = matching.len().saturating_sub(limit);
            matching
                .into_iter()
                .skip(skip)
                .map(|a| pb::AuditRecord {
                    seq: a.seq,
                    log_index: a.log_index,
                    at_ms: a.at.0,
                    actor: a.actor.clone(),
                    request_id: a.request_id.to_string(),
                    kind: a.kind.clone(),
                    summary: a.summary.clone(),
                    epoch: a.epoch,
                    details_json: a.details.to_string(),
                })
                .collect()
        });
        Ok(Response::new(pb::AuditResponse { records }))
    }

    async fn regions(
        &self,
        req: Request<pb::RegionsRequest>,
    ) -> Result<Response<pb::RegionsResponse>, Status> {
        require_admin(&req)?;
        Ok(Response::new(regions(&self.coord).await))
    }

    #[instrument(skip_all, name = "grpc.admin.pause")]
    async fn pause(
        &self,
        req: Request<pb::PauseRequest>,
    ) -> Result<Response<pb::PauseResponse>, Status> {
        self.set_paused(req, true).await
    }

    #[instrument(skip_all, name = "grpc.admin.resume")]
    async fn resume(
        &self,
        req: Request<pb::PauseRequest>,
    ) -> Result<Response<pb::PauseResponse>, Status> {
        self.set_paused(req, false).await
    }

    #[instrument(skip_all, name = "grpc.admin.plan_region", fields(region = %req.get_ref().region))]
    async fn plan_region(
        &self,
        req: Request<pb::PlanRegionRequest>,
    ) -> Result<Response<pb::PlanRegionResponse>, Status> {
        require_admin(&req)?;
        Ok(Response::new(agents::plan_region(
            &self.coord,
            req.into_inner(),
        )?))
    }

    #[instrument(skip_all, name = "grpc.admin.set_region_mode", fields(region = %req.get_ref().region))]
    async fn set_region_mode(
        &self,
        req: Request<pb::SetRegionModeRequest>,
    ) -> Result<Response<pb::SetRegionModeResponse>, Status> {
        let actor = require_admin(&req)?;
        Ok(Response::new(
            agents::set_region_mode(&self.coord, actor, req.into_inner()).await?,
        ))
    }

    #[instrument(skip_all, name = "grpc.admin.list_agents")]
    async fn list_agents(
        &self,
        req: Request<pb::ListAgentsRequest>,
    ) -> Result<Response<pb::ListAgentsResponse>, Status> {
        require_admin(&req)?;
        Ok(Response::new(agents::list_agents(
            &self.coord,
            req.into_inner(),
        )?))
    }

    #[instrument(skip_all, name = "grpc.admin.agent_summary")]
    async fn agent_summary(
        &self,
        req: Request<pb::AgentSummaryRequest>,
    ) -> Result<Response<pb::AgentSummaryResponse>, Status> {
        require_admin(&req)?;
        Ok(Response::new(agents::agent_summary(&self.coord)))
    }

    async fn rotation_status(
        &self,
        req: Request<pb::RotationStatusRequest>,
    ) -> Result<Response<pb::RotationStatusResponse>, Status> {
        require_admin(&req)?;
        Ok(Response::new(rotation::status(&self.coord)))
    }

    #[instrument(skip_all, name = "grpc.admin.rotate", fields(action = %req.get_ref().action))]
    async fn rotate(
        &self,
        req: Request<pb::RotateRequest>,
    ) -> Result<Response<pb::RotateResponse>, Status> {
        let actor = require_admin(&req)?;
        Ok(Response::new(
            rotation::rotate(&self.coord, actor, req.into_inner()).await?,
        ))
    }

    #[instrument(skip_all, name = "grpc.admin.set_rotation_policy")]
    async fn set_rotation_policy(
        &self,
        req: Request<pb::SetRotationPolicyRequest>,
    ) -> Result<Response<pb::SetRotationPolicyResponse>, Status> {
        let actor = require_admin(&req)?;
        Ok(Response::new(
            rotation::set_policy(&self.coord, actor, req.into_inner()).await?,
        ))
    }

    #[instrument(skip_all, name = "grpc.admin.record_drill", fields(region = %req.get_ref().region))]
    async fn record_drill(
        &self,
        req: Request<pb::RecordDrillRequest>,
    ) -> Result<Response<pb::RecordDrillResponse>, Status> {
        let actor = require_admin(&req)?;
        let r = req.into_inner();
        let region: tern_core::RegionName = r
            .region
            .parse()
            .map_err(|e| ApiError::Invalid(format!("region: {e}")))?;
        let drill = tern_core::DrillRecord {
            region,
            method: r.method,
            outcome: r.outcome,
            started_at_ms: r.started_at_ms,
            total_ms: r.total_ms,
            agents: r.agents,
            steps: r
                .steps
                .into_iter()
                .map(|s| tern_core::DrillStep {
                    name: s.name,
                    at_ms: s.at_ms,
                    took_ms: s.took_ms,
                })
                .collect(),
            detail: r.detail,
        };
        drill.validate().map_err(ApiError::Invalid)?;
        let p = Proposal {
            request_id: request_id(&r.request_id)?,
            actor,
            command: Command::RecordDrill { drill },
        };
        let reply = self
            .coord
            .submit(AdminOp::Propose { proposals: vec![p] })
            .await?;
        let (epoch, duplicate) = first_outcome(&reply)?;
        Ok(Response::new(pb::RecordDrillResponse {
            log_index: reply.log_index,
            epoch,
            duplicate,
        }))
    }
}

impl AdminService {
    async fn set_paused(
        &self,
        req: Request<pb::PauseRequest>,
        paused: bool,
    ) -> Result<Response<pb::PauseResponse>, Status> {
        let actor = require_admin(&req)?;
        let r = req.into_inner();
        let reason = if r.reason.is_empty() {
            format!("by {actor}")
        } else {
            r.reason
        };
        let p = Proposal {
            request_id: request_id(&r.request_id)?,
            actor,
            command: Command::SetPaused { paused, reason },
        };
        let reply = self
            .coord
            .submit(AdminOp::Propose { proposals: vec![p] })
            .await?;
        let (epoch, _) = first_outcome(&reply)?;
        Ok(Response::new(pb::PauseResponse { epoch, paused }))
    }
}

async fn leader_evaluation(coord: &Coordinator) -> Option<tern_core::Evaluation> {
    if coord.is_leader() {
        return coord.health.evaluation().map(|(_, e)| e);
    }
    let (_, addr) = coord.leader()?;
    let mut client = coord.channels.raft_client(&addr).ok()?;
    let mut req = tonic::Request::new(pb::HealthViewRequest {});
    req.set_timeout(std::time::Duration::from_secs(3));
    let r = client.health_view(req).await.ok()?.into_inner();
    if r.evaluation.is_empty() {
        return None;
    }
    serde_json::from_slice(&r.evaluation).ok()
}

/// Builds the regions answer: committed states from the local replica, live
/// observations from the leader's detector.
pub async fn regions(coord: &Coordinator) -> pb::RegionsResponse {
    let eval = leader_evaluation(coord).await;
    let (regions, records, frozen, paused, epoch, members, bundles, modes) =
        coord.read_state(|s| {
            (
                s.regions(),
                s.region_records().clone(),
                s.frozen(),
                s.paused(),
                s.epoch(),
                s.members().clone(),
                s.trust_bundles()
                    .iter()
                    .map(|(r, b)| (r.clone(), b.sha256.clone()))
                    .collect::<BTreeMap<_, _>>(),
                s.regions()
                    .keys()
                    .map(|r| (r.clone(), s.region_mode(r)))
                    .collect::<BTreeMap<_, _>>(),
            )
        });
    let region_of = |id: u64| {
        members
            .get(&id)
            .map(|m| m.region.to_string())
            .unwrap_or_default()
    };
    let out = regions
        .keys()
        .map(|r| {
            let rec = records.get(r).copied().unwrap_or_default();
            let live = eval.as_ref().and_then(|e| e.regions.get(r));
            let mut observers = Vec::new();
            if let Some(v) = live {
                for o in &v.observations {
                    observers.push(pb::RegionObserverView {
                        observer: o.observer,
                        observer_region: region_of(o.observer),
                        sees: if o.up { "up" } else { "down" }.into(),
                        since_ms: o.since.0,
                        report_age_ms: o.report_age_ms,
                    });
                }
                for s in &v.silent {
                    observers.push(pb::RegionObserverView {
                        observer: *s,
                        observer_region: region_of(*s),
                        sees: "silent".into(),
                        since_ms: 0,
                        report_age_ms: 0,
                    });
                }
            }
            let control_plane = members
                .values()
                .find(|m| &m.region == r)
                .and_then(|m| m.control_plane.clone())
                .unwrap_or_default();
            pb::RegionStatus {
                region: r.to_string(),
                state: rec.state.as_str().into(),
                since_ms: rec.since.0,
                epoch: rec.epoch,
                computed: live
                    .map(|v| v.computed.as_str().to_string())
                    .unwrap_or_default(),
                observers,
                coordinator_reporting: live.map(|v| v.coordinator_reporting).unwrap_or(false),
                control_plane,
                trust_bundle_sha256: bundles.get(r).cloned().unwrap_or_default(),
                mode: modes.get(r).copied().unwrap_or_default().as_str().into(),
            }
        })
        .collect();
    pb::RegionsResponse {
        regions: out,
        frozen,
        paused,
        quorum_ok: eval.as_ref().map(|e| e.quorum_ok).unwrap_or(false),
        epoch,
        live_view: eval.is_some(),
    }
}

/// Builds the status answer from Raft's metrics, the member table and the
/// network's per-peer contact times.
pub async fn status(coord: &Coordinator) -> pb::StatusResponse {
    let m = coord.raft.metrics().borrow().clone();
    let committed = coord.committed_index().await;
    let membership = m.membership_config.membership();
    let voters: BTreeSet<u64> = membership.voter_ids().collect();
    let last_log = m.last_log_index.unwrap_or(0);
    let peer_stats = coord.stats.snapshot();
    let now = Instant::now();
    let (table, epoch) = coord.read_state(|s| (s.members().clone(), s.epoch()));
    let mut ids: BTreeSet<u64> = table.keys().copied().collect();
    ids.extend(membership.nodes().map(|(id, _)| *id));
    let is_leader = m.current_leader == Some(coord.config.node_id);
    let members = ids
        .into_iter()
        .map(|id| {
            let t = table.get(&id);
            let voting = if voters.contains(&id) {
                pb::Voting::Voter
            } else if membership.get_node(&id).is_some() {
                pb::Voting::Learner
            } else {
                pb::Voting::None
            };
            let matched = if id == coord.config.node_id {
                m.last_log_index
            } else {
                m.replication
                    .as_ref()
                    .and_then(|r| r.get(&id).cloned().flatten().map(|l| l.index))
            };
            let last_contact_ms = if id == coord.config.node_id {
                0
            } else {
                peer_stats
                    .get(&id)
                    .and_then(|s| s.last_contact)
                    .map(|t| now.duration_since(t).as_millis() as i64)
                    .unwrap_or(-1)
            };
            let replication_lag = match (is_leader, matched) {
                (true, Some(mi)) => last_log.saturating_sub(mi) as i64,
                (true, None) if voting != pb::Voting::None => last_log as i64,
                _ => -1,
            };
            pb::MemberStatus {
                node_id: id,
                region: t.map(|t| t.region.to_string()).unwrap_or_default(),
                role: t
                    .map(|t| role_to_pb(t.role))
                    .unwrap_or(pb::MemberRole::Unspecified) as i32,
                voting: voting as i32,
                address: t
                    .map(|t| t.address.clone())
                    .or_else(|| membership.get_node(&id).map(|n| n.addr.clone()))
                    .unwrap_or_default(),
                thumbprints: t
                    .map(|t| t.thumbprints.iter().map(|x| x.to_string()).collect())
                    .unwrap_or_default(),
                last_contact_ms,
                replication_lag,
                matched_index: if is_leader { matched } else { None },
                control_plane: t.and_then(|t| t.control_plane.clone()).unwrap_or_default(),
            }
        })
        .collect();
    let leader = m.current_leader;
    let (leader_region, leader_address) = match leader {
        Some(l) => (
            table
                .get(&l)
                .map(|t| t.region.to_string())
                .unwrap_or_default(),
            membership
                .get_node(&l)
                .map(|n| n.addr.clone())
                .unwrap_or_default(),
        ),
        None => (String::new(), String::new()),
    };
    pb::StatusResponse {
        node_id: coord.config.node_id,
        region: coord.config.region.to_string(),
        leader_id: leader,
        leader_region,
        leader_address,
        term: m.current_term,
        commit_index: committed.unwrap_or(0),
        applied_index: m.last_applied.map(|l| l.index).unwrap_or(0),
        last_log_index: last_log,
        epoch,
        members,
        server_state: format!("{:?}", m.state),
        snapshot_index: m.snapshot.map(|l| l.index).unwrap_or(0),
        purged_index: m.purged.map(|l| l.index).unwrap_or(0),
    }
}
