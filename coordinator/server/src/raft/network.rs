//! The Raft network: how this coordinator sends AppendEntries, Vote and
//! snapshot chunks to its peers, over one long-lived mTLS gRPC channel per
//! peer. It also records, per peer, when an RPC last succeeded ("last
//! contact") and counts RPC errors by kind for the metrics.
//!
//! It must not decide anything: openraft decides whom to call and when.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use openraft::error::{
    InstallSnapshotError, NetworkError, RPCError, RaftError, RemoteError, Unreachable,
};
use openraft::network::{RPCOption, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse,
    VoteRequest, VoteResponse,
};
use serde::de::DeserializeOwned;
use serde::Serialize;
use tern_proto::v1::raft_transport_client::RaftTransportClient;
use tern_proto::v1::{PayloadEncoding, RaftPayload};
use tonic::transport::Channel;

use super::types::{Node, NodeId, TypeConfig};
use crate::tls::{self, ChannelOptions, TlsClient};

/// Largest gRPC message between coordinators (snapshot chunks, big batches).
pub const MAX_MESSAGE_BYTES: usize = 64 * 1024 * 1024;

/// Encodes a Raft message (or reply) as a versioned payload.
pub fn encode<T: Serialize>(v: &T) -> Result<RaftPayload, serde_json::Error> {
    Ok(RaftPayload {
        encoding: PayloadEncoding::JsonOpenraftV09 as i32,
        body: serde_json::to_vec(v)?,
    })
}

/// Decodes a payload, refusing encodings this version does not speak.
pub fn decode<T: DeserializeOwned>(p: &RaftPayload) -> Result<T, PayloadError> {
    if p.encoding != PayloadEncoding::JsonOpenraftV09 as i32 {
        return Err(PayloadError::Encoding(p.encoding));
    }
    serde_json::from_slice(&p.body).map_err(PayloadError::Json)
}

#[derive(Debug, thiserror::Error)]
pub enum PayloadError {
    #[error("unsupported payload encoding {0}")]
    Encoding(i32),
    #[error("malformed payload: {0}")]
    Json(serde_json::Error),
}

/// What the network knows of each peer: last successful RPC and error
/// counts by kind. Shared with the admin status and metrics.
#[derive(Debug, Default)]
pub struct PeerStats {
    inner: Mutex<BTreeMap<NodeId, PeerStat>>,
}

#[derive(Debug, Default, Clone)]
pub struct PeerStat {
    pub last_contact: Option<Instant>,
    /// Errors by kind: `unreachable`, `timeout`, `remote`, `decode`.
    pub errors: BTreeMap<&'static str, u64>,
}

impl PeerStats {
    fn ok(&self, peer: NodeId) {
        if let Ok(mut m) = self.inner.lock() {
            m.entry(peer).or_default().last_contact = Some(Instant::now());
        }
    }

    fn err(&self, peer: NodeId, kind: &'static str) {
        if let Ok(mut m) = self.inner.lock() {
            *m.entry(peer).or_default().errors.entry(kind).or_default() += 1;
        }
    }

    pub fn snapshot(&self) -> BTreeMap<NodeId, PeerStat> {
        self.inner.lock().map(|m| m.clone()).unwrap_or_default()
    }
}

/// Keeps one lazily connected channel per peer address, shared by Raft
/// replication and by forwarded admin writes.
#[derive(Clone)]
pub struct PeerChannels {
    client: Arc<TlsClient>,
    opts: ChannelOptions,
    channels: Arc<Mutex<BTreeMap<String, Channel>>>,
}

impl PeerChannels {
    pub fn new(client: TlsClient, opts: ChannelOptions) -> Self {
        PeerChannels {
            client: Arc::new(client),
            opts,
            channels: Arc::default(),
        }
    }

    /// The TLS client every channel dials with (shared: a reload takes
    /// effect for connections dialed afterwards).
    pub fn client(&self) -> &TlsClient {
        &self.client
    }

    /// Forgets every cached channel, so the next call dials afresh with the
    /// client's current material (after a certificate swap). Channels
    /// still held by callers keep working until they drop.
    pub fn reset(&self) {
        self.channels
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clear();
    }

    /// The channel to `addr` (host:port), created on first use.
    pub fn get(&self, addr: &str) -> Result<Channel, tls::TlsError> {
        let mut map = self.channels.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(c) = map.get(addr) {
            return Ok(c.clone());
        }
        let ch = tls::channel(&self.client, addr, self.opts.clone())?;
        map.insert(addr.to_string(), ch.clone());
        Ok(ch)
    }

    pub fn raft_client(&self, addr: &str) -> Result<RaftTransportClient<Channel>, tls::TlsError> {
        Ok(RaftTransportClient::new(self.get(addr)?)
            .max_decoding_message_size(MAX_MESSAGE_BYTES)
            .max_encoding_message_size(MAX_MESSAGE_BYTES))
    }
}

/// openraft's network factory.
#[derive(Clone)]
pub struct Network {
    pub channels: PeerChannels,
    pub stats: Arc<PeerStats>,
    /// node id -> address to dial instead of the membership's.
    pub dial_overrides: Arc<BTreeMap<NodeId, String>>,
}

impl RaftNetworkFactory<TypeConfig> for Network {
    type Network = PeerClient;

    async fn new_client(&mut self, target: NodeId, node: &Node) -> PeerClient {
        PeerClient {
            target,
            node: node.clone(),
            client: self
                .channels
                .raft_client(self.dial_overrides.get(&target).unwrap_or(&node.addr))
                .map_err(|e| e.to_string()),
            stats: self.stats.clone(),
        }
    }
}

/// The connection to one peer, as openraft uses it.
pub struct PeerClient {
    target: NodeId,
    node: Node,
    client: Result<RaftTransportClient<Channel>, String>,
    stats: Arc<PeerStats>,
}

#[derive(Debug, thiserror::Error)]
#[error("{0}")]
struct Msg(String);

type RpcErr<E> = RPCError<NodeId, Node, RaftError<NodeId, E>>;

impl PeerClient {
    async fn call<Req, Resp, E>(
        &mut self,
        kind: Kind,
        req: &Req,
        option: &RPCOption,
    ) -> Result<Resp, RpcErr<E>>
    where
        Req: Serialize,
        Resp: DeserializeOwned,
        E: std::error::Error + DeserializeOwned,
    {
        let client = match &self.client {
            Ok(c) => c.clone(),
            Err(e) => {
                self.stats.err(self.target, "unreachable");
                return Err(RPCError::Unreachable(Unreachable::new(&Msg(e.clone()))));
            }
        };
        let payload = encode(req).map_err(|e| RPCError::Network(NetworkError::new(&e)))?;
        let mut request = tonic::Request::new(payload);
        request.set_timeout(option.hard_ttl());
        let mut client = client;
        let res = match kind {
            Kind::Append => client.append_entries(request).await,
            Kind::Vote => client.vote(request).await,
            Kind::Snapshot => client.install_snapshot(request).await,
        };
        let reply = match res {
            Ok(r) => r.into_inner(),
            Err(status) => {
                let k = match status.code() {
                    tonic::Code::DeadlineExceeded | tonic::Code::Cancelled => "timeout",
                    tonic::Code::Unavailable => "unreachable",
                    _ => "remote",
                };
                self.stats.err(self.target, k);
                let e = Msg(format!("{}: {}", status.code(), status.message()));
                return Err(if k == "unreachable" {
                    RPCError::Unreachable(Unreachable::new(&e))
                } else {
                    RPCError::Network(NetworkError::new(&e))
                });
            }
        };
        let result: Result<Resp, RaftError<NodeId, E>> = decode(&reply).map_err(|e| {
            self.stats.err(self.target, "decode");
            RPCError::Network(NetworkError::new(&e))
        })?;
        match result {
            Ok(r) => {
                self.stats.ok(self.target);
                Ok(r)
            }
            Err(e) => {
                self.stats.err(self.target, "remote");
                Err(RPCError::RemoteError(RemoteError::new_with_node(
                    self.target,
                    self.node.clone(),
                    e,
                )))
            }
        }
    }
}

#[derive(Clone, Copy)]
enum Kind {
    Append,
    Vote,
    Snapshot,
}

impl RaftNetwork<TypeConfig> for PeerClient {
    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<AppendEntriesResponse<NodeId>, RpcErr<openraft::error::Infallible>> {
        self.call(Kind::Append, &rpc, &option).await
    }

    async fn install_snapshot(
        &mut self,
        rpc: InstallSnapshotRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<InstallSnapshotResponse<NodeId>, RpcErr<InstallSnapshotError>> {
        self.call(Kind::Snapshot, &rpc, &option).await
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<NodeId>,
        option: RPCOption,
    ) -> Result<VoteResponse<NodeId>, RpcErr<openraft::error::Infallible>> {
        self.call(Kind::Vote, &rpc, &option).await
    }

    fn backoff(&self) -> openraft::network::Backoff {
        // Back off from an unreachable peer: 200 ms doubling to 5 s.
        openraft::network::Backoff::new(
            (0..).map(|i: u32| {
                Duration::from_millis(200u64.saturating_mul(1u64 << i.min(5)).min(5000))
            }),
        )
    }
}
