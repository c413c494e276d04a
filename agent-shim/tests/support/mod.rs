//! Test support: a throw-away PKI (rcgen), an in-process fake coordinator
//! cluster (tonic `tern.v1.Agent` over mutual TLS, each node on its own
//! runtime so it can be killed like a process), a fake region HTTPS server
//! (axum behind a tokio-rustls accept loop that requires the agent's leaf),
//! and a bounded wait on conditions.

#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::collections::HashMap;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::routing::{get, post};
use axum::{Extension, Json, Router};
use futures::Stream;
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, SanType, PKCS_ECDSA_P256_SHA256,
};
use sha2::{Digest, Sha256};
use tern_agent_shim::{
    AgentCa, ConfigRef, LeafIdentity, LeafSource, PemSource, RateLimit, ShimConfig, Timing,
};
use tern_proto::v1 as pb;
use tokio::sync::watch;
use tonic::transport::{Certificate, Identity, Server, ServerTlsConfig};
use tonic::{Request, Response, Status};
use tower::ServiceExt;

/// The seed of a test: `TERN_TEST_SEED` or `default`, printed so a failure
/// can be reproduced.
pub fn seed(default: u64) -> u64 {
    let seed = std::env::var("TERN_TEST_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(default);
    eprintln!("test seed: {seed} (reproduce with TERN_TEST_SEED={seed})");
    seed
}

/// Waits until `f` holds, checking every 20 ms, at most `timeout`; panics
/// naming `what` otherwise.
pub async fn eventually(what: &str, timeout: Duration, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    loop {
        if f() {
            return;
        }
        if Instant::now() > deadline {
            panic!("timed out after {timeout:?} waiting for: {what}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

pub fn fingerprint(der: &[u8]) -> String {
    hex::encode(Sha256::digest(der))
}

/// A CA for the servers (coordinators and regions): server certificates
/// with an IP SAN for 127.0.0.1.
pub struct ServerCa {
    pub cert_pem: String,
    issuer: Issuer<'static, KeyPair>,
}

pub struct ServerCert {
    pub cert_pem: String,
    pub key_pem: String,
}

impl ServerCa {
    pub fn new() -> ServerCa {
        let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).unwrap();
        let mut params = CertificateParams::default();
        let now = time::OffsetDateTime::now_utc();
        params.not_before = now - time::Duration::minutes(5);
        params.not_after = now + time::Duration::days(1);
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, "test server CA");
        params.distinguished_name = dn;
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let cert = params.self_signed(&key).unwrap();
        ServerCa {
            cert_pem: cert.pem(),
            issuer: Issuer::new(params, key),
        }
    }

    pub fn issue(&self, name: &str) -> ServerCert {
        let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).unwrap();
        let mut params = CertificateParams::default();
        let now = time::OffsetDateTime::now_utc();
        params.not_before = now - time::Duration::minutes(5);
        params.not_after = now + time::Duration::days(1);
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, name);
        params.distinguished_name = dn;
        params.subject_alt_names = vec![SanType::IpAddress("127.0.0.1".parse().unwrap())];
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        let cert = params.signed_by(&key, &self.issuer).unwrap();
        ServerCert {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        }
    }
}

/// The PKI of a test: server CA, agent CA (the home region's).
pub struct Pki {
    pub server_ca: ServerCa,
    pub agent_ca: AgentCa,
    pub agent_ca_key_pem: String,
}

impl Pki {
    pub fn new() -> Pki {
        tern_agent_shim::install_crypto_provider();
        let (agent_ca, agent_ca_key_pem) =
            AgentCa::generate("test agent CA", Duration::from_secs(86_400)).unwrap();
        Pki {
            server_ca: ServerCa::new(),
            agent_ca,
            agent_ca_key_pem,
        }
    }

    pub fn leaf(&self, agent_id: &str) -> LeafIdentity {
        self.agent_ca
            .issue(agent_id, Duration::from_secs(30 * 86_400))
            .unwrap()
    }
}

/// Timing for tests: short everything.
pub fn fast_timing() -> Timing {
    Timing {
        reconnect_base_ms: 50,
        reconnect_cap_ms: 500,
        retry_base_ms: 100,
        retry_cap_ms: 1_000,
        apply_jitter_ms: 50,
        rate_limit: RateLimit::new(100, 100, 1_000).unwrap(),
        connect_timeout_ms: 2_000,
        rpc_timeout_ms: 5_000,
        register_timeout_ms: 5_000,
        hook_timeout_ms: 5_000,
        verify_deadline_ms: 5_000,
        verify_poll_ms: 50,
        leaf_poll_ms: 100,
        keepalive_interval_ms: 1_000,
        keepalive_timeout_ms: 2_000,
        region_request_timeout_ms: 2_000,
    }
}

/// A session configuration for `agent_id` against `coordinators`.
pub fn shim_config(
    pki: &Pki,
    agent_id: &str,
    leaf: LeafSource,
    coordinators: Vec<String>,
    seed: u64,
) -> ShimConfig {
    ShimConfig {
        agent_id: agent_id.into(),
        home_region: "eu".into(),
        tenant: "acme".into(),
        config: ConfigRef {
            id: "cfg-1".into(),
            version: 3,
            content_hash: "sha256:abc".into(),
        },
        capabilities: vec!["AcceptsOpAMPConnectionSettings".into()],
        allowed_regions: vec!["eu".into(), "us".into()],
        leaf,
        coordinator_ca: PemSource::Pem(pki.server_ca.cert_pem.clone()),
        region_ca: PemSource::Pem(pki.server_ca.cert_pem.clone()),
        coordinators,
        state_dir: None,
        timing: fast_timing(),
        seed,
    }
}

// ---- fake coordinators ------------------------------------------------

#[derive(Debug, Clone)]
pub struct Registration {
    pub node: usize,
    pub fingerprint: String,
    pub request: pb::RegisterRequest,
}

#[derive(Debug, Clone)]
pub struct WatchCall {
    pub node: usize,
    pub agent_id: String,
    pub known_epoch: u64,
}

#[derive(Debug, Clone)]
pub struct ReportCall {
    pub node: usize,
    pub request: pb::ReportRequest,
}

#[derive(Default)]
struct ClusterState {
    registrations: Vec<Registration>,
    watches: Vec<WatchCall>,
    reports: Vec<ReportCall>,
    list: Vec<pb::CoordinatorEndpoint>,
    epoch: u64,
}

/// The state every fake coordinator serves (a replicated state, as far as
/// the shim can tell).
#[derive(Clone)]
pub struct Cluster {
    state: Arc<Mutex<ClusterState>>,
    directives: Arc<Mutex<HashMap<String, watch::Sender<Option<pb::Directive>>>>>,
    agent_ca_pem: String,
}

impl Cluster {
    pub fn new(pki: &Pki) -> Cluster {
        Cluster {
            state: Arc::default(),
            directives: Arc::default(),
            agent_ca_pem: pki.agent_ca.cert_pem().to_string(),
        }
    }

    pub fn registrations(&self) -> Vec<Registration> {
        self.state.lock().unwrap().registrations.clone()
    }

    pub fn watches(&self) -> Vec<WatchCall> {
        self.state.lock().unwrap().watches.clone()
    }

    pub fn reports(&self) -> Vec<ReportCall> {
        self.state.lock().unwrap().reports.clone()
    }

    fn sender(&self, agent_id: &str) -> watch::Sender<Option<pb::Directive>> {
        self.directives
            .lock()
            .unwrap()
            .entry(agent_id.to_string())
            .or_insert_with(|| watch::channel(None).0)
            .clone()
    }

    /// Makes `d` the agent's current directive (sent on every open stream
    /// at once, and to every stream opened later).
    pub fn publish(&self, d: pb::Directive) {
        {
            let mut s = self.state.lock().unwrap();
            s.epoch = s.epoch.max(d.epoch);
        }
        self.sender(&d.agent_id).send_replace(Some(d));
    }

    /// Starts a node (its own runtime) serving this cluster.
    pub fn start_node(&self, pki: &Pki, node: usize, region: &str) -> FakeNode {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let addr = listener.local_addr().unwrap();
        self.state
            .lock()
            .unwrap()
            .list
            .push(pb::CoordinatorEndpoint {
                node_id: node as u64,
                region: region.to_string(),
                address: addr.to_string(),
            });
        let cert = pki.server_ca.issue(&format!("coordinator-{node}"));
        let tls = ServerTlsConfig::new()
            .identity(Identity::from_pem(&cert.cert_pem, &cert.key_pem))
            .client_ca_root(Certificate::from_pem(&self.agent_ca_pem));
        let service = pb::agent_server::AgentServer::new(FakeAgent {
            node,
            cluster: self.clone(),
        });
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        runtime.spawn(async move {
            let listener = tokio::net::TcpListener::from_std(listener).unwrap();
            let incoming = tonic::transport::server::TcpIncoming::from(listener);
            let served = Server::builder()
                .tls_config(tls)
                .unwrap()
                .add_service(service)
                .serve_with_incoming(incoming)
                .await;
            if let Err(e) = served {
                eprintln!("fake coordinator {node} stopped: {e}");
            }
        });
        FakeNode {
            addr,
            runtime: Some(runtime),
        }
    }
}

/// One fake coordinator. Killing it drops its runtime: listener and every
/// connection close, as if the process died.
pub struct FakeNode {
    pub addr: SocketAddr,
    runtime: Option<tokio::runtime::Runtime>,
}

impl FakeNode {
    pub fn address(&self) -> String {
        self.addr.to_string()
    }

    pub fn kill(&mut self) {
        if let Some(rt) = self.runtime.take() {
            rt.shutdown_background();
        }
    }
}

impl Drop for FakeNode {
    fn drop(&mut self) {
        self.kill();
    }
}

struct FakeAgent {
    node: usize,
    cluster: Cluster,
}

fn peer_fingerprint<T>(req: &Request<T>) -> Result<String, Status> {
    let certs = req
        .peer_certs()
        .ok_or_else(|| Status::unauthenticated("no client certificate"))?;
    let leaf = certs
        .first()
        .ok_or_else(|| Status::unauthenticated("no client certificate"))?;
    Ok(fingerprint(leaf))
}

type DirectiveStream = Pin<Box<dyn Stream<Item = Result<pb::Directive, Status>> + Send>>;

#[tonic::async_trait]
impl pb::agent_server::Agent for FakeAgent {
    async fn list_coordinators(
        &self,
        _req: Request<pb::ListCoordinatorsRequest>,
    ) -> Result<Response<pb::ListCoordinatorsResponse>, Status> {
        let s = self.cluster.state.lock().unwrap();
        Ok(Response::new(pb::ListCoordinatorsResponse {
            coordinators: s.list.clone(),
            epoch: s.epoch,
        }))
    }

    async fn register(
        &self,
        req: Request<pb::RegisterRequest>,
    ) -> Result<Response<pb::RegisterResponse>, Status> {
        let fp = peer_fingerprint(&req)?;
        let mut s = self.cluster.state.lock().unwrap();
        s.registrations.push(Registration {
            node: self.node,
            fingerprint: fp.clone(),
            request: req.into_inner(),
        });
        Ok(Response::new(pb::RegisterResponse {
            fingerprint: fp,
            epoch: s.epoch,
        }))
    }

    type WatchStream = DirectiveStream;

    async fn watch(
        &self,
        req: Request<pb::WatchRequest>,
    ) -> Result<Response<Self::WatchStream>, Status> {
        peer_fingerprint(&req)?;
        let req = req.into_inner();
        self.cluster.state.lock().unwrap().watches.push(WatchCall {
            node: self.node,
            agent_id: req.agent_id.clone(),
            known_epoch: req.known_epoch,
        });
        let rx = self.cluster.sender(&req.agent_id).subscribe();
        let stream = futures::stream::unfold((rx, true), |(mut rx, first)| async move {
            if first {
                let current = rx.borrow_and_update().clone();
                if let Some(d) = current {
                    return Some((Ok(d), (rx, false)));
                }
            }
            loop {
                if rx.changed().await.is_err() {
                    return None;
                }
                let next = rx.borrow_and_update().clone();
                if let Some(d) = next {
                    return Some((Ok(d), (rx, false)));
                }
            }
        });
        Ok(Response::new(Box::pin(stream)))
    }

    async fn report(
        &self,
        req: Request<pb::ReportRequest>,
    ) -> Result<Response<pb::ReportResponse>, Status> {
        peer_fingerprint(&req)?;
        self.cluster.state.lock().unwrap().reports.push(ReportCall {
            node: self.node,
            request: req.into_inner(),
        });
        Ok(Response::new(pb::ReportResponse {}))
    }
}

/// A directive for `agent_id`.
pub fn directive(
    agent_id: &str,
    epoch: u64,
    action: pb::DirectiveAction,
    region: &FakeRegion,
    token: &str,
) -> pb::Directive {
    pb::Directive {
        agent_id: agent_id.to_string(),
        epoch,
        action: action as i32,
        target_region: region.name.clone(),
        target_endpoint: format!("wss://{}/v1/opamp", region.addr),
        target_base_url: region.base_url(),
        token: token.to_string(),
        token_not_after_ms: i64::MAX / 2,
    }
}

// ---- fake region ----------------------------------------------------

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Attachment {
    pub fingerprint: String,
    pub via: String,
    pub token: Option<String>,
}

#[derive(Default)]
struct RegionState {
    attached: HashMap<String, Attachment>,
    /// When set for an agent, an attach must present exactly this token.
    expected_tokens: HashMap<String, String>,
    attach_calls: u64,
    status_calls: u64,
}

#[derive(Clone)]
struct RegionShared {
    name: String,
    state: Arc<Mutex<RegionState>>,
}

#[derive(Clone)]
struct ClientFp(Option<String>);

/// A fake region's HTTPS endpoints (`/tern/v1/opamp/attach`,
/// `/tern/v1/agents/{id}`), mutual TLS required (agent CA).
pub struct FakeRegion {
    pub name: String,
    pub addr: SocketAddr,
    shared: RegionShared,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for FakeRegion {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl FakeRegion {
    pub async fn start(pki: &Pki, name: &str) -> FakeRegion {
        let cert = pki.server_ca.issue(&format!("region-{name}"));
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut roots = rustls::RootCertStore::empty();
        use rustls_pki_types::pem::PemObject;
        for c in
            rustls_pki_types::CertificateDer::pem_slice_iter(pki.agent_ca.cert_pem().as_bytes())
        {
            roots.add(c.unwrap()).unwrap();
        }
        let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
            Arc::new(roots),
            provider.clone(),
        )
        .build()
        .unwrap();
        let chain: Vec<_> =
            rustls_pki_types::CertificateDer::pem_slice_iter(cert.cert_pem.as_bytes())
                .map(|c| c.unwrap())
                .collect();
        let key = rustls_pki_types::PrivateKeyDer::from_pem_slice(cert.key_pem.as_bytes()).unwrap();
        let mut config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_client_cert_verifier(verifier)
            .with_single_cert(chain, key)
            .unwrap();
        config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let shared = RegionShared {
            name: name.to_string(),
            state: Arc::default(),
        };
        let router = Router::new()
            .route("/tern/v1/opamp/attach", post(attach))
            .route("/tern/v1/agents/{agent_id}", get(agent_status))
            .with_state(shared.clone());
        let task = tokio::spawn(async move {
            let mut conns = tokio::task::JoinSet::new();
            loop {
                tokio::select! {
                    accepted = listener.accept() => {
                        let Ok((tcp, _)) = accepted else { continue };
                        let acceptor = acceptor.clone();
                        let router = router.clone();
                        conns.spawn(async move {
                            let Ok(tls) = acceptor.accept(tcp).await else { return };
                            let fp = ClientFp(
                                tls.get_ref()
                                    .1
                                    .peer_certificates()
                                    .and_then(|c| c.first())
                                    .map(|c| fingerprint(c)),
                            );
                            let service = hyper::service::service_fn(
                                move |mut req: hyper::Request<hyper::body::Incoming>| {
                                    req.extensions_mut().insert(fp.clone());
                                    router.clone().oneshot(req.map(axum::body::Body::new))
                                },
                            );
                            let builder = hyper_util::server::conn::auto::Builder::new(
                                hyper_util::rt::TokioExecutor::new(),
                            );
                            let _ = builder
                                .serve_connection(hyper_util::rt::TokioIo::new(tls), service)
                                .await;
                        });
                    }
                    Some(_) = conns.join_next(), if !conns.is_empty() => {}
                }
            }
        });
        FakeRegion {
            name: name.to_string(),
            addr,
            shared,
            task,
        }
    }

    pub fn base_url(&self) -> String {
        format!("https://{}", self.addr)
    }

    /// The simulated agent connected here (as if over OpAMP).
    pub fn attach_direct(&self, agent_id: &str, fingerprint: &str, via: &str) {
        self.shared.state.lock().unwrap().attached.insert(
            agent_id.to_string(),
            Attachment {
                fingerprint: fingerprint.to_string(),
                via: via.to_string(),
                token: None,
            },
        );
    }

    pub fn expect_token(&self, agent_id: &str, token: &str) {
        self.shared
            .state
            .lock()
            .unwrap()
            .expected_tokens
            .insert(agent_id.to_string(), token.to_string());
    }

    pub fn attachment(&self, agent_id: &str) -> Option<Attachment> {
        self.shared
            .state
            .lock()
            .unwrap()
            .attached
            .get(agent_id)
            .cloned()
    }

    pub fn attached_count(&self) -> usize {
        self.shared.state.lock().unwrap().attached.len()
    }

    pub fn attachments(&self) -> HashMap<String, Attachment> {
        self.shared.state.lock().unwrap().attached.clone()
    }

    pub fn status_calls(&self) -> u64 {
        self.shared.state.lock().unwrap().status_calls
    }
}

#[derive(serde::Deserialize)]
struct AttachBody {
    agent_id: String,
    #[serde(default)]
    token: Option<String>,
}

async fn attach(
    State(region): State<RegionShared>,
    Extension(ClientFp(fp)): Extension<ClientFp>,
    Json(body): Json<AttachBody>,
) -> (StatusCode, Json<serde_json::Value>) {
    let Some(fp) = fp else {
        return (
            StatusCode::FORBIDDEN,
            Json(serde_json::json!({"error": "no client certificate"})),
        );
    };
    let mut s = region.state.lock().unwrap();
    s.attach_calls += 1;
    if let Some(expected) = s.expected_tokens.get(&body.agent_id) {
        if body.token.as_deref() != Some(expected.as_str()) {
            // A careless region that echoes what it refused: the shim
            // must scrub it.
            let error = format!(
                "handover token {:?} refused",
                body.token.unwrap_or_default()
            );
            return (
                StatusCode::FORBIDDEN,
                Json(serde_json::json!({ "error": error })),
            );
        }
    }
    let via = if body.token.is_some() {
        "handover"
    } else {
        "home"
    };
    s.attached.insert(
        body.agent_id.clone(),
        Attachment {
            fingerprint: fp,
            via: via.to_string(),
            token: body.token.clone(),
        },
    );
    (
        StatusCode::OK,
        Json(serde_json::json!({"attached": true, "region": region.name, "via": via})),
    )
}

async fn agent_status(
    State(region): State<RegionShared>,
    Path(agent_id): Path<String>,
) -> (StatusCode, Json<serde_json::Value>) {
    let mut s = region.state.lock().unwrap();
    s.status_calls += 1;
    match s.attached.get(&agent_id) {
        Some(a) => (
            StatusCode::OK,
            Json(serde_json::json!({
                "agent_id": agent_id,
                "attached": true,
                "fingerprint": a.fingerprint,
                "via": a.via,
                "source_region": null,
            })),
        ),
        None => (
            StatusCode::NOT_FOUND,
            Json(serde_json::json!({"error": "not attached"})),
        ),
    }
}

/// A shutdown signal for a session under test.
pub struct Stop(watch::Sender<bool>);

impl Stop {
    pub fn new() -> Stop {
        Stop(watch::channel(false).0)
    }

    pub fn signal(&self) -> impl std::future::Future<Output = ()> + Send + 'static {
        let mut rx = self.0.subscribe();
        async move {
            let _ = rx.wait_for(|s| *s).await;
        }
    }

    pub fn stop(&self) {
        self.0.send_replace(true);
    }
}
