//! The gRPC server of a coordinator: the Raft transport (peers only), the
//! admin API (administrators only) and the agent API, all behind the same
//! mTLS listener. Who may call what is checked here from the verified peer
//! identity the TLS acceptor put into the request.

use std::future::Future;
use std::sync::Arc;

use futures::Stream;
use tern_proto::v1::agent_server::AgentServer;
use tern_proto::v1::raft_transport_server::{RaftTransport, RaftTransportServer};
use tern_proto::v1::{
    ForwardRequest, ForwardResponse, HealthReport, HealthReportAck, HealthViewRequest,
    HealthViewResponse, PingRequest, PingResponse, RaftPayload,
};
use tonic::{Request, Response, Status};
use tracing::instrument;

use crate::admin::AdminService;
use crate::node::Coordinator;
use crate::ops::AdminOp;
use crate::raft::network::{decode, encode, MAX_MESSAGE_BYTES};
use crate::tls::{peer_identity, PeerRole, PeerStream};

/// Serves every gRPC service on `incoming` until `shutdown` resolves.
pub async fn serve<S>(
    coord: Arc<Coordinator>,
    incoming: S,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), tonic::transport::Error>
where
    S: Stream<Item = Result<PeerStream, std::io::Error>> + Send + 'static,
{
    let raft = RaftTransportServer::new(RaftService {
        coord: coord.clone(),
    })
    .max_decoding_message_size(MAX_MESSAGE_BYTES)
    .max_encoding_message_size(MAX_MESSAGE_BYTES);
    let admin = tern_proto::v1::admin_server::AdminServer::new(AdminService {
        coord: coord.clone(),
    });
    let agent = AgentServer::new(crate::agents::service::AgentService { coord });
    tonic::transport::Server::builder()
        .http2_keepalive_interval(Some(std::time::Duration::from_secs(10)))
        .http2_keepalive_timeout(Some(std::time::Duration::from_secs(20)))
        .initial_stream_window_size(Some(4 * 1024 * 1024))
        .initial_connection_window_size(Some(8 * 1024 * 1024))
        .add_service(raft)
        .add_service(admin)
        .add_service(agent)
        .serve_with_incoming_shutdown(incoming, shutdown)
        .await
}

/// Only a pinned coordinator may use the Raft transport.
fn require_peer<T>(req: &Request<T>) -> Result<(), Status> {
    match peer_identity(req) {
        Some(p) if matches!(p.role, PeerRole::Peer) => Ok(()),
        Some(p) => Err(Status::permission_denied(format!(
            "the Raft transport is for coordinators; certificate {} is not a pinned coordinator",
            p.thumbprint.short()
        ))),
        None => Err(Status::unauthenticated("no verified client certificate")),
    }
}

fn bad_payload(e: impl std::fmt::Display) -> Status {
    Status::invalid_argument(format!("malformed Raft payload: {e}"))
}

fn encoded<T: serde::Serialize>(v: &T) -> Result<Response<RaftPayload>, Status> {
    encode(v)
        .map(Response::new)
        .map_err(|e| Status::internal(format!("encoding reply: {e}")))
}

struct RaftService {
    coord: Arc<Coordinator>,
}

#[tonic::async_trait]
impl RaftTransport for RaftService {
    async fn append_entries(
        &self,
        req: Request<RaftPayload>,
    ) -> Result<Response<RaftPayload>, Status> {
        require_peer(&req)?;
        let rpc = decode(req.get_ref()).map_err(bad_payload)?;
        let res = self.coord.raft.append_entries(rpc).await;
        encoded(&res)
    }

    async fn vote(&self, req: Request<RaftPayload>) -> Result<Response<RaftPayload>, Status> {
        require_peer(&req)?;
        let rpc = decode(req.get_ref()).map_err(bad_payload)?;
        let res = self.coord.raft.vote(rpc).await;
        encoded(&res)
    }

    async fn install_snapshot(
        &self,
        req: Request<RaftPayload>,
    ) -> Result<Response<RaftPayload>, Status> {
        require_peer(&req)?;
        let rpc = decode(req.get_ref()).map_err(bad_payload)?;
        let res = self.coord.raft.install_snapshot(rpc).await;
        encoded(&res)
    }

    #[instrument(skip_all, name = "grpc.forward")]
    async fn forward(
        &self,
        req: Request<ForwardRequest>,
    ) -> Result<Response<ForwardResponse>, Status> {
        require_peer(&req)?;
        let op: AdminOp = serde_json::from_slice(&req.get_ref().proposal)
            .map_err(|e| Status::invalid_argument(format!("malformed forwarded operation: {e}")))?;
        if !self.coord.is_leader() {
            return Err(crate::error::ApiError::NotLeader(self.coord.leader()).into());
        }
        let reply = self.coord.execute_local(op).await?;
        let log_index = reply.log_index;
        let outcome = serde_json::to_vec(&reply).map_err(|e| Status::internal(e.to_string()))?;
        Ok(Response::new(ForwardResponse { outcome, log_index }))
    }

    async fn ping(&self, req: Request<PingRequest>) -> Result<Response<PingResponse>, Status> {
        require_peer(&req)?;
        Ok(Response::new(PingResponse {
            node_id: self.coord.config.node_id,
        }))
    }

    async fn report(
        &self,
        req: Request<HealthReport>,
    ) -> Result<Response<HealthReportAck>, Status> {
        require_peer(&req)?;
        let report: tern_core::Report = serde_json::from_slice(&req.get_ref().report)
            .map_err(|e| Status::invalid_argument(format!("malformed health report: {e}")))?;
        if !self.coord.is_leader() {
            return Err(crate::error::ApiError::NotLeader(self.coord.leader()).into());
        }
        self.coord.health.observe(report);
        Ok(Response::new(HealthReportAck {}))
    }

    async fn health_view(
        &self,
        req: Request<HealthViewRequest>,
    ) -> Result<Response<HealthViewResponse>, Status> {
        require_peer(&req)?;
        let (evaluation, at_ms) = match self.coord.health.evaluation() {
            Some((at, e)) => (
                serde_json::to_vec(&e).map_err(|e| Status::internal(e.to_string()))?,
                at.0,
            ),
            None => (Vec::new(), 0),
        };
        Ok(Response::new(HealthViewResponse { evaluation, at_ms }))
    }
}
