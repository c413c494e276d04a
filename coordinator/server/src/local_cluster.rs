//! An in-process cluster of real coordinators (openraft, SQLite, mTLS gRPC)
//! on 127.0.0.x with ports chosen by the kernel: the benchmark and the
//! in-process cluster tests run on it. Each node is the same `node::run` a
//! `tern serve` process runs, with its own data directory and certificate.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use tern_proto::v1 as pb;
use tern_proto::v1::admin_client::AdminClient;
use time::OffsetDateTime;
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tonic::transport::Channel;

use crate::config::{BootstrapMember, Config, RaftTuning};
use crate::tls::{self, pki::DevCa, ChannelOptions, TlsClient};

/// One coordinator of the local cluster.
pub struct LocalNode {
    pub node_id: u64,
    pub region: String,
    pub grpc: SocketAddr,
    pub http: SocketAddr,
    pub config: Config,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<anyhow::Result<()>>>,
}

/// A running local cluster.
pub struct LocalCluster {
    pub dir: PathBuf,
    pub nodes: Vec<LocalNode>,
    pub ca: PathBuf,
    pub admin_cert: PathBuf,
    pub admin_key: PathBuf,
}

const NAMES: [&str; 5] = ["eu", "us", "ap", "sa", "af"];

impl LocalCluster {
    /// Starts `n` (1..=5) coordinators in `dir`, the first one initializing
    /// the cluster with all of them as voters, on 127.0.0.`base_ip`+i.
    pub async fn start(
        dir: &Path,
        n: usize,
        base_ip: u8,
        tuning: RaftTuning,
    ) -> anyhow::Result<LocalCluster> {
        if n == 0 || n > NAMES.len() {
            bail!("a local cluster has 1 to {} nodes", NAMES.len());
        }
        tls::install_crypto_provider();
        let pki = dir.join("pki");
        std::fs::create_dir_all(&pki)?;
        let ca = DevCa::generate("Tern local cluster CA", Duration::from_secs(86_400))?;
        ca.write(&pki)?;
        let now = OffsetDateTime::now_utc();
        let (nb, na) = (
            now - time::Duration::hours(1),
            now + time::Duration::days(1),
        );
        ca.issue_admin("bench", nb, na)?.write(&pki, "bench")?;

        let mut listeners = Vec::new();
        let mut members = Vec::new();
        for (i, name) in NAMES.iter().take(n).enumerate() {
            let ip = Ipv4Addr::new(127, 0, 0, base_ip.wrapping_add(i as u8));
            let grpc = TcpListener::bind((ip, 0))
                .await
                .with_context(|| format!("binding {ip}:0"))?;
            let http = TcpListener::bind((ip, 0)).await?;
            let cert = ca.issue_node(name, &[], &[IpAddr::V4(ip)], nb, na)?;
            cert.write(&pki, name)?;
            members.push(BootstrapMember {
                node_id: i as u64 + 1,
                region: name.parse()?,
                role: tern_core::MemberRole::Region,
                address: grpc.local_addr()?.to_string(),
                thumbprint: cert.thumbprint,
                control_plane: None,
            });
            listeners.push((grpc, http));
        }
        let mut nodes = Vec::new();
        for (i, (grpc, http)) in listeners.into_iter().enumerate() {
            let me = &members[i];
            let config = Config {
                node_id: me.node_id,
                region: me.region.clone(),
                role: me.role,
                data_dir: dir.join(me.region.as_str()).join("data"),
                ready_file: None,
                listen_grpc: grpc.local_addr()?,
                listen_http: http.local_addr()?,
                advertise: Some(me.address.clone()),
                ca_file: pki.join("ca.pem"),
                cert_file: pki.join(format!("{}.pem", me.region)),
                key_file: pki.join(format!("{}.key", me.region)),
                admin_ca_file: None,
                issuer_key_file: None,
                raft: tuning.clone(),
                initialize: i == 0,
                bootstrap_members: members
                    .iter()
                    .filter(|m| m.node_id != me.node_id)
                    .cloned()
                    .collect(),
                control_plane: None,
                probe: Default::default(),
                health: Default::default(),
                dial_overrides: Default::default(),
                agents: Default::default(),
                http: Default::default(),
                federation: crate::config::FederationConfig {
                    client_cert_file: None,
                    client_key_file: None,
                    secret_file: None,
                    pins_dir: dir.join(me.region.as_str()).join("federation-pins"),
                    next_cert_file: None,
                    next_key_file: None,
                },
            };
            nodes.push(LocalNode::spawn(config, grpc, http)?);
        }
        Ok(LocalCluster {
            dir: dir.to_path_buf(),
            nodes,
            ca: pki.join("ca.pem"),
            admin_cert: pki.join("bench.pem"),
            admin_key: pki.join("bench.key"),
        })
    }

    /// An admin client connected to node `i`.
    pub fn admin(&self, i: usize) -> anyhow::Result<AdminClient<Channel>> {
        let client = TlsClient::new_admin(&self.ca, &self.admin_cert, &self.admin_key)?;
        let ch = tls::channel(
            &client,
            &self.nodes[i].grpc.to_string(),
            ChannelOptions::default(),
        )?;
        Ok(AdminClient::new(ch))
    }

    /// Waits until node 0 reports a leader and every node is a voter in
    /// the member table; returns the leader's index in `nodes`.
    pub async fn wait_ready(&self, timeout: Duration) -> anyhow::Result<usize> {
        let deadline = Instant::now() + timeout;
        let mut last = String::from("no answer");
        while Instant::now() < deadline {
            if let Ok(mut c) = self.admin(0) {
                match c.status(pb::StatusRequest {}).await {
                    Ok(s) => {
                        let s = s.into_inner();
                        let voters = s
                            .members
                            .iter()
                            .filter(|m| {
                                m.voting == pb::Voting::Voter as i32 && !m.region.is_empty()
                            })
                            .count();
                        if let (Some(l), true) = (s.leader_id, voters == self.nodes.len()) {
                            if let Some(i) = self.nodes.iter().position(|n| n.node_id == l) {
                                return Ok(i);
                            }
                        }
                        last = format!("leader {:?}, {voters} voters", s.leader_id);
                    }
                    Err(e) => last = e.to_string(),
                }
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        bail!("timed out after {timeout:?} waiting for a leader and all voters; last: {last}")
    }

    /// Stops every node.
    pub async fn shutdown(mut self) {
        for n in &mut self.nodes {
            n.stop().await;
        }
    }
}

impl LocalNode {
    fn spawn(config: Config, grpc: TcpListener, http: TcpListener) -> anyhow::Result<LocalNode> {
        let (tx, rx) = oneshot::channel::<()>();
        let c = config.clone();
        let task = tokio::spawn(async move {
            crate::node::run(c, grpc, http, async move {
                let _ = rx.await;
            })
            .await
        });
        Ok(LocalNode {
            node_id: config.node_id,
            region: config.region.to_string(),
            grpc: config.listen_grpc,
            http: config.listen_http,
            config,
            stop: Some(tx),
            task: Some(task),
        })
    }

    /// Stops the node and waits for it (at most 10 s).
    pub async fn stop(&mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        if let Some(t) = self.task.take() {
            let _ = tokio::time::timeout(Duration::from_secs(10), t).await;
        }
    }
}
