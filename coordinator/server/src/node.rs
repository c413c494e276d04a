//! The running coordinator: opens the store, starts Raft, serves gRPC (Raft
//! transport, admin, agent) over mTLS and HTTP (health, metrics), keeps the
//! pin set in step with the replicated member table, and executes admin
//! operations on the leader (forwarding them there from followers).
//!
//! `run` takes already-bound listeners and a shutdown future, so tests can
//! bind port 0 and stop it cleanly. It decides nothing about regions or
//! agents: that is the core's job.

use std::collections::{BTreeMap, BTreeSet};
use std::future::Future;
use std::net::SocketAddr;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use anyhow::Context;
use openraft::{BasicNode, ChangeMembers};
use tern_core::{
    Command, Member, NodeId, Outcome, Proposal, ReplicatedState, RequestId, Thumbprint,
};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tracing::{info, warn, Instrument};

use crate::config::Config;
use crate::error::ApiError;
use crate::ops::{AdminOp, OpReply};
use crate::proposer::{map_write_error, Proposer};
use crate::raft::network::{Network, PeerChannels, PeerStats};
use crate::raft::{LogId, Raft};
use crate::tls::{self, ChannelOptions, Identity, PinSet, TlsClient, TlsFiles, TlsServer};

/// Everything a handler needs to know about this coordinator.
pub struct Coordinator {
    pub config: Config,
    pub raft: Raft,
    pub state: Arc<RwLock<ReplicatedState>>,
    pub applied: watch::Receiver<Option<LogId>>,
    pub proposer: Proposer,
    pub channels: PeerChannels,
    pub stats: Arc<PeerStats>,
    pub pins: PinSet,
    pub thumbprint: Thumbprint,
    /// host:port other coordinators dial.
    pub advertise: String,
    /// Region health: probe runs, the leader's detector and evaluation.
    pub health: crate::health::Health,
    /// Agents: batching, signing key, tokens.
    pub agents: crate::agents::AgentHub,
    /// Agent CA bundles accepted by the TLS acceptor.
    pub agent_trust: tls::AgentTrust,
    /// The transport certificate presented, swapped by pin rotations.
    pub transport: crate::rotation::Transport,
}

/// What `run` writes to the ready file once it serves.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct ReadyInfo {
    pub node_id: NodeId,
    pub region: String,
    pub grpc: String,
    pub http: String,
    pub advertise: String,
    pub thumbprint: String,
    pub pid: u32,
}

impl Coordinator {
    /// Reads the replicated state.
    pub fn read_state<T>(&self, f: impl FnOnce(&ReplicatedState) -> T) -> T {
        let guard = self.state.read().unwrap_or_else(|p| p.into_inner());
        f(&guard)
    }

    /// The leader as this node knows it: id and address.
    pub fn leader(&self) -> Option<(NodeId, String)> {
        let m = self.raft.metrics().borrow().clone();
        let id = m.current_leader?;
        let addr = m
            .membership_config
            .membership()
            .get_node(&id)
            .map(|n| n.addr.clone())?;
        Some((id, self.dial_address(id, &addr)))
    }

    /// The address to dial for node `id`: its `dial_overrides` entry, if
    /// any, else `addr`.
    pub fn dial_address(&self, id: NodeId, addr: &str) -> String {
        self.config
            .dial_overrides
            .get(&id)
            .cloned()
            .unwrap_or_else(|| addr.to_string())
    }

    /// The highest log index this node knows to be committed.
    pub async fn committed_index(&self) -> Option<u64> {
        self.raft
            .with_raft_state(|st| st.committed.map(|l| l.index))
            .await
            .ok()
            .flatten()
    }

    /// Voting members, as Raft's membership says.
    pub fn voters(&self) -> BTreeSet<NodeId> {
        self.raft
            .metrics()
            .borrow()
            .membership_config
            .membership()
            .voter_ids()
            .collect()
    }

    pub fn is_leader(&self) -> bool {
        self.raft.metrics().borrow().current_leader == Some(self.config.node_id)
    }

    /// Proposes one command under `actor`, for the background loops (which
    /// log a failure and try again later): `Ok` when it applied (or was a
    /// duplicate), otherwise why not (refused by the state machine, or not
    /// committed).
    pub(crate) async fn propose_step(&self, actor: String, command: Command) -> Result<(), String> {
        let p = Proposal {
            request_id: crate::ops::new_request_id(),
            actor,
            command,
        };
        match self.submit(AdminOp::Propose { proposals: vec![p] }).await {
            Ok(reply) => match reply.outcomes.first() {
                Some(Outcome::Rejected { reason }) => Err(format!("refused: {reason}")),
                _ => Ok(()),
            },
            Err(e) => Err(format!("not committed: {e}")),
        }
    }

    /// Runs an operation on the leader: here if this node leads, otherwise
    /// forwarded. One retry when leadership moved during the call.
    pub async fn submit(&self, op: AdminOp) -> Result<OpReply, ApiError> {
        let mut last = ApiError::NoLeader;
        for _ in 0..3 {
            let leader = self.leader();
            let result = match leader {
                Some((id, _)) if id == self.config.node_id => self.execute_local(op.clone()).await,
                Some((_, addr)) => self.forward(&addr, &op).await,
                None => {
                    // Wait briefly for an election to finish.
                    let mut rx = self.raft.metrics();
                    let _ = tokio::time::timeout(
                        Duration::from_millis(self.config.raft.election_timeout_max_ms),
                        rx.wait_for(|m| m.current_leader.is_some()),
                    )
                    .await;
                    Err(ApiError::NoLeader)
                }
            };
            match result {
                Err(e @ (ApiError::NotLeader(_) | ApiError::NoLeader)) => last = e,
                other => return other,
            }
        }
        Err(last)
    }

    async fn forward(&self, addr: &str, op: &AdminOp) -> Result<OpReply, ApiError> {
        let mut client = self
            .channels
            .raft_client(addr)
            .map_err(|e| ApiError::LeaderUnreachable(e.to_string()))?;
        let body = serde_json::to_vec(op).map_err(|e| ApiError::Internal(e.to_string()))?;
        let mut req = tonic::Request::new(tern_proto::v1::ForwardRequest {
            actor: String::new(),
            proposal: body,
        });
        req.set_timeout(Duration::from_millis(self.config.raft.write_timeout_ms * 2));
        match client.forward(req).await {
            Ok(resp) => serde_json::from_slice(&resp.get_ref().outcome)
                .map_err(|e| ApiError::Internal(format!("malformed reply from leader: {e}"))),
            Err(status) => {
                if status.code() == tonic::Code::Unavailable
                    && status
                        .metadata()
                        .get(crate::error::LEADER_METADATA)
                        .is_some()
                {
                    Err(ApiError::NotLeader(None))
                } else {
                    Err(ApiError::from_status(&status))
                }
            }
        }
    }

    /// Executes an operation on this node, which must be the leader.
    pub async fn execute_local(&self, op: AdminOp) -> Result<OpReply, ApiError> {
        match op {
            AdminOp::Propose { proposals } => {
                for p in &proposals {
                    p.command.validate().map_err(ApiError::Invalid)?;
                }
                let c = self.proposer.propose(proposals).await?;
                Ok(OpReply {
                    log_index: c.log_index,
                    outcomes: c.outcomes,
                })
            }
            AdminOp::AddMember {
                member,
                voter,
                request_id,
                actor,
            } => self.add_member(member, voter, request_id, actor).await,
            AdminOp::RemoveMember {
                node_id,
                request_id,
                actor,
            } => self.remove_member(node_id, request_id, actor).await,
        }
    }

    async fn add_member(
        &self,
        member: Member,
        voter: bool,
        request_id: RequestId,
        actor: String,
    ) -> Result<OpReply, ApiError> {
        let node_id = member.node_id;
        let addr = member.address.clone();
        // 1. Pin it everywhere first, so the new node can be dialed.
        let reply = self
            .propose_one(Proposal {
                request_id,
                actor,
                command: Command::UpsertMember {
                    member,
                    expect_epoch: None,
                },
            })
            .await?;
        reject_if_refused(&reply)?;
        let timeout = Duration::from_millis(self.config.raft.write_timeout_ms.max(30_000) * 2);
        let membership = self.raft.metrics().borrow().membership_config.clone();
        let known = membership.membership().get_node(&node_id).is_some();
        // 2. Learner, blocking until it caught up.
        if !known {
            info!(node_id, addr = %addr, "adding learner");
            tokio::time::timeout(
                timeout,
                self.raft.add_learner(node_id, BasicNode::new(addr), true),
            )
            .await
            .map_err(|_| ApiError::Timeout(timeout.as_millis() as u64))?
            .map_err(map_write_error)?;
        }
        // 3. Promote.
        let is_voter = self.voters().contains(&node_id);
        let mut log_index = reply.log_index;
        if voter && !is_voter {
            info!(node_id, "promoting learner to voter");
            let r = tokio::time::timeout(
                timeout,
                self.raft
                    .change_membership(ChangeMembers::AddVoterIds([node_id].into()), false),
            )
            .await
            .map_err(|_| ApiError::Timeout(timeout.as_millis() as u64))?
            .map_err(map_write_error)?;
            log_index = r.log_id.index;
        }
        Ok(OpReply {
            log_index,
            outcomes: reply.outcomes,
        })
    }

    async fn remove_member(
        &self,
        node_id: NodeId,
        request_id: RequestId,
        actor: String,
    ) -> Result<OpReply, ApiError> {
        let membership = self.raft.metrics().borrow().membership_config.clone();
        let m = membership.membership();
        let voters: BTreeSet<NodeId> = m.voter_ids().collect();
        if voters.contains(&node_id) && voters.len() == 1 {
            return Err(ApiError::Invalid(format!(
                "node {node_id} is the last voter; it cannot be removed"
            )));
        }
        let timeout = Duration::from_millis(self.config.raft.write_timeout_ms * 3);
        if voters.contains(&node_id) {
            info!(node_id, "removing voter");
            tokio::time::timeout(
                timeout,
                self.raft
                    .change_membership(ChangeMembers::RemoveVoters([node_id].into()), false),
            )
            .await
            .map_err(|_| ApiError::Timeout(timeout.as_millis() as u64))?
            .map_err(map_write_error)?;
        } else if m.get_node(&node_id).is_some() {
            info!(node_id, "removing learner");
            tokio::time::timeout(
                timeout,
                self.raft
                    .change_membership(ChangeMembers::RemoveNodes([node_id].into()), false),
            )
            .await
            .map_err(|_| ApiError::Timeout(timeout.as_millis() as u64))?
            .map_err(map_write_error)?;
        }
        // Unpin. If this node removed itself it is no longer leader: forward.
        let p = Proposal {
            request_id,
            actor,
            command: Command::RemoveMember {
                node_id,
                expect_epoch: None,
            },
        };
        let reply = Box::pin(self.submit(AdminOp::Propose { proposals: vec![p] })).await?;
        reject_if_refused(&reply)?;
        Ok(reply)
    }

    async fn propose_one(&self, p: Proposal) -> Result<OpReply, ApiError> {
        p.command.validate().map_err(ApiError::Invalid)?;
        let c = self.proposer.propose(vec![p]).await?;
        Ok(OpReply {
            log_index: c.log_index,
            outcomes: c.outcomes,
        })
    }

    /// Recomputes the pin set from the replicated member table (or, before
    /// the first member is committed, from the bootstrap configuration).
    pub fn refresh_pins(&self) {
        let pinned = self.read_state(|s| s.pinned_thumbprints());
        let set = if pinned.is_empty() {
            self.bootstrap_pins()
        } else {
            pinned
        };
        if set != self.pins.snapshot() {
            info!(count = set.len(), "pin set updated from the member table");
            self.pins.replace(set);
        }
    }

    /// Follows the committed agent trust bundles: the TLS acceptor accepts
    /// agents of every region with a committed bundle.
    pub fn refresh_agent_trust(&self) {
        let bundles = self.read_state(|s| s.trust_bundles().clone());
        for (region, b) in &bundles {
            match self.agent_trust.set(region, &b.pem, &b.sha256) {
                Ok(true) => info!(region = %region, "agent trust bundle in use"),
                Ok(false) => {}
                Err(e) => {
                    warn!(region = %region, error = %e, "committed agent trust bundle does not load")
                }
            }
        }
        self.agent_trust
            .retain(&bundles.keys().cloned().collect::<Vec<_>>());
    }

    fn bootstrap_pins(&self) -> BTreeSet<Thumbprint> {
        let mut s: BTreeSet<Thumbprint> = self
            .config
            .bootstrap_members
            .iter()
            .map(|m| m.thumbprint)
            .collect();
        s.insert(self.thumbprint);
        s
    }
}

fn reject_if_refused(r: &OpReply) -> Result<(), ApiError> {
    for o in &r.outcomes {
        if let Outcome::Rejected { reason } = o {
            return Err(ApiError::Rejected(reason.clone()));
        }
    }
    Ok(())
}

/// Binds the configured listeners.
pub async fn bind(config: &Config) -> anyhow::Result<(TcpListener, TcpListener)> {
    let grpc = TcpListener::bind(config.listen_grpc)
        .await
        .with_context(|| format!("cannot listen on listen.grpc {}", config.listen_grpc))?;
    let http = TcpListener::bind(config.listen_http)
        .await
        .with_context(|| format!("cannot listen on listen.http {}", config.listen_http))?;
    Ok((grpc, http))
}

/// Runs the coordinator until `shutdown` resolves.
pub async fn run(
    config: Config,
    grpc: TcpListener,
    http: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    tls::install_crypto_provider();
    let grpc_addr: SocketAddr = grpc.local_addr()?;
    let http_addr: SocketAddr = http.local_addr()?;
    let advertise = config
        .advertise
        .clone()
        .unwrap_or_else(|| grpc_addr.to_string());
    let span = tracing::info_span!("node", node_id = config.node_id, region = %config.region);

    std::fs::create_dir_all(&config.data_dir)
        .with_context(|| format!("cannot create data_dir {}", config.data_dir.display()))?;
    let (log_store, sm_store) = crate::store::open(&config.data_dir)
        .await
        .with_context(|| format!("cannot open the store in {}", config.data_dir.display()))?;
    let state = sm_store.state();
    let applied = sm_store.applied();
    let changes = sm_store.changes();
    // Kept to write the last applied rows to the file on the way out.
    let sm_closer = sm_store.clone();

    let files = TlsFiles {
        ca: config.ca_file.clone(),
        cert: config.cert_file.clone(),
        key: config.key_file.clone(),
        admin_ca: config.admin_ca_file.clone(),
    };
    let identity = Identity::load(&files.cert, &files.key)?;
    let thumbprint = identity.thumbprint();
    let pins = PinSet::new(BTreeSet::new());
    let tls_server = TlsServer::new(&files, pins.clone())?;
    let tls_client = TlsClient::new_peer(&files, pins.clone())?;
    let channels = PeerChannels::new(tls_client, ChannelOptions::default());
    let stats = Arc::new(PeerStats::default());
    let network = Network {
        channels: channels.clone(),
        stats: stats.clone(),
        dial_overrides: Arc::new(config.dial_overrides.clone()),
    };

    let raft_config = Arc::new(
        config
            .raft_config()
            .validate()
            .context("raft configuration")?,
    );
    let raft = Raft::new(config.node_id, raft_config, network, log_store, sm_store)
        .await
        .context("starting raft")?;
    let proposer = Proposer::start(
        raft.clone(),
        config.raft.max_batch,
        Duration::from_millis(config.raft.write_timeout_ms),
    );
    let coord = Arc::new(Coordinator {
        config: config.clone(),
        raft: raft.clone(),
        state,
        applied: applied.clone(),
        proposer,
        channels,
        stats,
        pins,
        thumbprint,
        advertise: advertise.clone(),
        health: crate::health::Health::new(config.health),
        agents: crate::agents::AgentHub::new(
            crate::agents::SigningKey::load_or_create(&config.data_dir)
                .context("the handover signing key")?,
        ),
        agent_trust: tls_server.agent_trust().clone(),
        transport: crate::rotation::Transport::new(tls_server.clone(), files.clone(), identity),
    });
    crate::agents::watchers::spawn(coord.agents.watchers.clone(), changes);
    coord.refresh_pins();
    coord.refresh_agent_trust();
    let probe_ca = config
        .probe
        .ca_file
        .clone()
        .unwrap_or_else(|| config.ca_file.clone());
    let prober = crate::health::Prober::new(&probe_ca)
        .with_context(|| format!("loading probe.ca_file {}", probe_ca.display()))?;
    crate::health::spawn(coord.clone(), prober);
    crate::rotation::spawn(coord.clone());
    let region_client = match &config.control_plane {
        Some(cp) => Some(
            crate::agents::RegionClient::new(cp, &probe_ca, &config.cert_file, &config.key_file)
                .context("the control-plane client")?,
        ),
        None => None,
    };
    crate::federation::spawn(coord.clone(), region_client.clone());
    crate::agents::spawn(coord.clone(), region_client);
    info!(parent: &span, thumbprint = %thumbprint.short(), grpc = %grpc_addr, http = %http_addr, advertise = %advertise, "coordinator starting");

    if config.initialize && !raft.is_initialized().await? {
        let mut nodes = BTreeMap::new();
        nodes.insert(config.node_id, BasicNode::new(advertise.clone()));
        for m in &config.bootstrap_members {
            nodes.insert(m.node_id, BasicNode::new(m.address.clone()));
        }
        info!(parent: &span, voters = ?nodes.keys().collect::<Vec<_>>(), "initializing a new cluster");
        raft.initialize(nodes)
            .await
            .context("initializing the cluster")?;
        tokio::spawn(seed_member_table(coord.clone()).instrument(span.clone()));
    }

    // Keep the pin set in step with what is applied.
    {
        let coord = coord.clone();
        let mut rx = applied;
        tokio::spawn(async move {
            while rx.changed().await.is_ok() {
                coord.refresh_pins();
                coord.refresh_agent_trust();
            }
        });
    }

    let (stop_tx, stop_rx) = watch::channel(false);
    tokio::spawn(async move {
        shutdown.await;
        let _ = stop_tx.send(true);
    });

    let grpc_task = {
        let coord = coord.clone();
        let mut stop = stop_rx.clone();
        let incoming = tls::incoming(grpc, &tls_server);
        tokio::spawn(
            async move {
                crate::grpc::serve(coord, incoming, async move {
                    let _ = stop.wait_for(|v| *v).await;
                })
                .await
            }
            .instrument(span.clone()),
        )
    };
    let http_task = {
        let coord = coord.clone();
        let mut stop = stop_rx.clone();
        tokio::spawn(
            async move {
                crate::http::serve(coord, http, async move {
                    let _ = stop.wait_for(|v| *v).await;
                })
                .await
            }
            .instrument(span.clone()),
        )
    };

    if let Some(path) = &config.ready_file {
        let info = ReadyInfo {
            node_id: config.node_id,
            region: config.region.to_string(),
            grpc: grpc_addr.to_string(),
            http: http_addr.to_string(),
            advertise: advertise.clone(),
            thumbprint: thumbprint.to_string(),
            pid: std::process::id(),
        };
        write_atomically(path, &serde_json::to_vec_pretty(&info)?)
            .with_context(|| format!("cannot write ready_file {}", path.display()))?;
    }
    info!(parent: &span, "serving");

    let mut stop = stop_rx;
    let _ = stop.wait_for(|v| *v).await;
    info!(parent: &span, "shutting down");
    if let Err(e) = raft.shutdown().await {
        warn!(parent: &span, error = %e, "raft shutdown");
    }
    if let Err(e) = sm_closer.flush().await {
        warn!(parent: &span, error = %e, "writing the applied state on shutdown");
    }
    let _ = tokio::time::timeout(Duration::from_secs(5), grpc_task).await;
    let _ = tokio::time::timeout(Duration::from_secs(5), http_task).await;
    Ok(())
}

/// On the initializing node: commit the member table entries of the
/// bootstrap members (itself included) in one entry, once a leader exists.
async fn seed_member_table(coord: Arc<Coordinator>) {
    let cfg = &coord.config;
    let mut members = vec![Member {
        node_id: cfg.node_id,
        region: cfg.region.clone(),
        role: cfg.role,
        address: coord.advertise.clone(),
        thumbprints: [coord.thumbprint].into(),
        control_plane: cfg.control_plane.clone(),
    }];
    for m in &cfg.bootstrap_members {
        members.push(Member {
            node_id: m.node_id,
            region: m.region.clone(),
            role: m.role,
            address: m.address.clone(),
            thumbprints: [m.thumbprint].into(),
            control_plane: m.control_plane.clone(),
        });
    }
    let proposals: Vec<Proposal> = members
        .into_iter()
        .filter_map(|member| {
            let request_id: RequestId = format!("bootstrap-member-{}", member.node_id)
                .parse()
                .ok()?;
            Some(Proposal {
                request_id,
                actor: format!("node:{}", cfg.node_id),
                command: Command::UpsertMember {
                    member,
                    expect_epoch: None,
                },
            })
        })
        .collect();
    for attempt in 0u32.. {
        match coord
            .submit(AdminOp::Propose {
                proposals: proposals.clone(),
            })
            .await
        {
            Ok(_) => {
                info!("member table seeded with the bootstrap members");
                return;
            }
            Err(e) => {
                if attempt % 10 == 0 {
                    warn!(error = %e, "seeding the member table; will retry");
                }
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
        }
    }
}

/// Writes `bytes` to `path` through a temporary file and a rename.
pub fn write_atomically(path: &std::path::Path, bytes: &[u8]) -> std::io::Result<()> {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, bytes)?;
    std::fs::rename(&tmp, path)
}
