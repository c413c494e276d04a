//! End-to-end tests of the coordinator's mTLS layer over real loopback
//! sockets: a tiny tonic `Agent` service served through `tls::incoming`
//! answers each call with the caller's verified identity (region = role,
//! address = thumbprint, node_id = remote port), and clients dial it with
//! `tls::channel`. Every PKI is fresh per test; every wait is bounded.

use std::io::Write;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tempfile::TempDir;
use tern_coordinator::tls::{
    self, channel, incoming, peer_identity, CaBundle, ChannelOptions, DevCa, Identity, IssuedCert,
    PinSet, TlsClient, TlsError, TlsFiles, TlsServer,
};
use tern_core::Thumbprint;
use tern_proto::v1::agent_client::AgentClient;
use tern_proto::v1::agent_server::{Agent, AgentServer};
use tern_proto::v1::{CoordinatorEndpoint, ListCoordinatorsRequest, ListCoordinatorsResponse};
use time::OffsetDateTime;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tonic::{Request, Response, Status};

/// Upper bound for any single call or connection in these tests.
const WAIT: Duration = Duration::from_secs(15);

// ---------------------------------------------------------------- fixtures

/// A CA and a directory holding its files and the certificates it issued.
struct Pki {
    dir: TempDir,
    ca: DevCa,
}

impl Pki {
    fn new(name: &str) -> Pki {
        let dir = tempfile::tempdir().expect("tempdir");
        let ca = DevCa::generate(name, Duration::from_secs(86_400)).expect("generate CA");
        ca.write(dir.path()).expect("write CA");
        Pki { dir, ca }
    }

    fn ca_path(&self) -> PathBuf {
        self.dir.path().join("ca.pem")
    }

    fn valid() -> (OffsetDateTime, OffsetDateTime) {
        let now = OffsetDateTime::now_utc();
        (
            now - time::Duration::minutes(1),
            now + time::Duration::days(1),
        )
    }

    /// A coordinator certificate for 127.0.0.1, written as `<name>.pem/.key`.
    fn node_between(&self, name: &str, nb: OffsetDateTime, na: OffsetDateTime) -> IssuedCert {
        let ip = "127.0.0.1".parse().expect("ip");
        let cert = self
            .ca
            .issue_node(name, &["localhost".to_string()], &[ip], nb, na)
            .expect("issue node cert");
        cert.write(self.dir.path(), name).expect("write node cert");
        cert
    }

    fn node(&self, name: &str) -> IssuedCert {
        let (nb, na) = Pki::valid();
        self.node_between(name, nb, na)
    }

    fn admin(&self, name: &str) -> IssuedCert {
        let (nb, na) = Pki::valid();
        let cert = self.ca.issue_admin(name, nb, na).expect("issue admin cert");
        cert.write(self.dir.path(), name).expect("write admin cert");
        cert
    }

    /// `TlsFiles` for a certificate written under `name`.
    fn files(&self, name: &str) -> TlsFiles {
        TlsFiles {
            ca: self.ca_path(),
            cert: self.dir.path().join(format!("{name}.pem")),
            key: self.dir.path().join(format!("{name}.key")),
            admin_ca: None,
        }
    }
}

fn pins(thumbprints: &[Thumbprint]) -> PinSet {
    PinSet::new(thumbprints.iter().copied().collect())
}

/// Echoes the caller's verified identity; counts calls that reached it.
struct Probe {
    calls: Arc<AtomicUsize>,
}

#[tonic::async_trait]
impl Agent for Probe {
    async fn list_coordinators(
        &self,
        req: Request<ListCoordinatorsRequest>,
    ) -> Result<Response<ListCoordinatorsResponse>, Status> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        let id = peer_identity(&req)
            .ok_or_else(|| Status::internal("no PeerIdentity in the request extensions"))?;
        Ok(Response::new(ListCoordinatorsResponse {
            coordinators: vec![CoordinatorEndpoint {
                node_id: u64::from(id.remote_addr.port()),
                region: id.role.to_string(),
                address: id.thumbprint.to_string(),
            }],
            epoch: 0,
        }))
    }

    async fn register(
        &self,
        _req: Request<tern_proto::v1::RegisterRequest>,
    ) -> Result<Response<tern_proto::v1::RegisterResponse>, Status> {
        Err(Status::unimplemented("probe"))
    }

    type WatchStream = futures::stream::Empty<Result<tern_proto::v1::Directive, Status>>;

    async fn watch(
        &self,
        _req: Request<tern_proto::v1::WatchRequest>,
    ) -> Result<Response<Self::WatchStream>, Status> {
        Err(Status::unimplemented("probe"))
    }

    async fn report(
        &self,
        _req: Request<tern_proto::v1::ReportRequest>,
    ) -> Result<Response<tern_proto::v1::ReportResponse>, Status> {
        Err(Status::unimplemented("probe"))
    }
}

/// A tonic server on 127.0.0.1:0 behind `tls::incoming`; aborted on drop.
struct TestServer {
    addr: SocketAddr,
    calls: Arc<AtomicUsize>,
    task: JoinHandle<Result<(), tonic::transport::Error>>,
}

impl Drop for TestServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl TestServer {
    async fn start(tls: &TlsServer) -> TestServer {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind 127.0.0.1:0");
        let addr = listener.local_addr().expect("local addr");
        let calls = Arc::new(AtomicUsize::new(0));
        let service = AgentServer::new(Probe {
            calls: calls.clone(),
        });
        let task = tokio::spawn(
            tonic::transport::Server::builder()
                .add_service(service)
                .serve_with_incoming(incoming(listener, tls)),
        );
        TestServer { addr, calls, task }
    }

    fn calls(&self) -> usize {
        self.calls.load(Ordering::SeqCst)
    }
}

/// What the server saw: (role, thumbprint, remote port).
#[derive(Debug)]
struct Seen {
    role: String,
    thumbprint: String,
    port: u64,
}

/// One call over a fresh channel (hence a fresh connection and handshake).
async fn call(client: &TlsClient, addr: SocketAddr) -> Result<Seen, Status> {
    let ch = channel(client, &addr.to_string(), ChannelOptions::default()).expect("channel");
    let mut agent = AgentClient::new(ch);
    let reply = tokio::time::timeout(WAIT, agent.list_coordinators(ListCoordinatorsRequest {}))
        .await
        .expect("waited for ListCoordinators to answer or fail")?;
    let ep = reply
        .into_inner()
        .coordinators
        .into_iter()
        .next()
        .expect("one endpoint in the reply");
    Ok(Seen {
        role: ep.region,
        thumbprint: ep.address,
        port: ep.node_id,
    })
}

/// Asserts that a call was refused by TLS (not by the handler), with the
/// TLS alert or verifier error `why` somewhere in the error chain.
fn assert_tls_refusal(result: Result<Seen, Status>, what: &str, why: &str) {
    match result {
        Ok(seen) => panic!("{what}: call succeeded, server saw {seen:?}"),
        Err(status) => {
            assert!(
                matches!(
                    status.code(),
                    tonic::Code::Unavailable | tonic::Code::Unknown
                ),
                "{what}: expected a transport error, got {status:?}"
            );
            assert!(
                format!("{status:?}").contains(why),
                "{what}: expected {why} in the error chain, got {status:?}"
            );
        }
    }
}

/// Captures this thread's log output (tests run on a current-thread
/// runtime, so the server's handshake tasks log here too).
#[derive(Clone, Default)]
struct LogBuf(Arc<Mutex<Vec<u8>>>);

impl Write for LogBuf {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().expect("log lock").extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl LogBuf {
    fn install(&self) -> tracing::subscriber::DefaultGuard {
        let buf = self.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_ansi(false)
            .with_max_level(tracing::Level::DEBUG)
            .with_writer(move || buf.clone())
            .finish();
        tracing::subscriber::set_default(subscriber)
    }

    fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().expect("log lock")).into_owned()
    }
}

fn setup() {
    tls::install_crypto_provider();
}

// ------------------------------------------------------------------ tests

// Property 1: a coordinator whose certificate chains to the cluster CA and
// is pinned is accepted as a Peer; the handler sees its exact thumbprint
// and remote address through `peer_identity` (tonic's ConnectInfo); the
// client side pins the server too.
#[tokio::test]
async fn pinned_peer_is_accepted_with_its_identity() {
    setup();
    let pki = Pki::new("cluster");
    let server_cert = pki.node("server");
    let client_cert = pki.node("client");
    let server =
        TlsServer::new(&pki.files("server"), pins(&[client_cert.thumbprint])).expect("server TLS");
    assert_eq!(server.thumbprint(), server_cert.thumbprint);
    let srv = TestServer::start(&server).await;
    let client = TlsClient::new_peer(&pki.files("client"), pins(&[server_cert.thumbprint]))
        .expect("client TLS");
    assert_eq!(client.thumbprint(), client_cert.thumbprint);

    let seen = call(&client, srv.addr).await.expect("pinned peer refused");
    assert_eq!(seen.role, "peer");
    assert_eq!(seen.thumbprint, client_cert.thumbprint.to_string());
    assert_ne!(seen.port, 0, "remote address missing");
    assert_eq!(srv.calls(), 1);
}

// Property 2: a certificate that chains to the cluster CA but is neither
// pinned nor an admin certificate is refused during the handshake: the call
// fails with a transport error, the handler never runs, and the refusal is
// logged at warn with the short thumbprint and the reason (and no key).
#[tokio::test]
async fn unpinned_cert_is_refused_in_handshake_and_logged() {
    setup();
    let logs = LogBuf::default();
    let _guard = logs.install();
    let pki = Pki::new("cluster");
    let server_cert = pki.node("server");
    let stranger = pki.node("stranger");
    let someone_else = pki.node("someone-else");
    let server =
        TlsServer::new(&pki.files("server"), pins(&[someone_else.thumbprint])).expect("server TLS");
    let srv = TestServer::start(&server).await;
    let client = TlsClient::new_peer(&pki.files("stranger"), pins(&[server_cert.thumbprint]))
        .expect("client TLS");

    assert_tls_refusal(
        call(&client, srv.addr).await,
        "unpinned certificate",
        "AccessDenied",
    );
    assert_eq!(srv.calls(), 0, "a refused client reached the handler");

    let text = logs.text();
    let line = text
        .lines()
        .find(|l| l.contains("client certificate refused"))
        .unwrap_or_else(|| panic!("no refusal logged; log was:\n{text}"));
    assert!(line.contains(" WARN "), "{line}");
    assert!(line.contains(" tls"), "target tls missing: {line}");
    assert!(
        line.contains(&format!("thumbprint={}", stranger.thumbprint.short())),
        "{line}"
    );
    assert!(line.contains("neither pinned nor an admin"), "{line}");
    assert!(!text.contains("PRIVATE KEY"), "a key reached the log");
}

// Property 3: an expired certificate is refused even when pinned (webpki
// checks the validity period); `Identity::load` also refuses it up front,
// naming the file and the expiry date.
#[tokio::test]
async fn expired_cert_is_refused_even_if_pinned() {
    setup();
    let pki = Pki::new("cluster");
    let server_cert = pki.node("server");
    let now = OffsetDateTime::now_utc();
    let expired = pki.node_between(
        "expired",
        now - time::Duration::days(2),
        now - time::Duration::days(1),
    );
    let server =
        TlsServer::new(&pki.files("server"), pins(&[expired.thumbprint])).expect("server TLS");
    let srv = TestServer::start(&server).await;

    let files = pki.files("expired");
    let err = Identity::load(&files.cert, &files.key).expect_err("expired identity loaded");
    assert!(matches!(err, TlsError::Expired { .. }), "{err}");
    assert!(err.to_string().contains("expired.pem expired on "), "{err}");

    let identity =
        Identity::load_without_validity_check(&files.cert, &files.key).expect("load expired");
    let ca = CaBundle::load(&pki.ca_path()).expect("CA bundle");
    let client = TlsClient::peer_from_parts(&ca, &identity, pins(&[server_cert.thumbprint]))
        .expect("client TLS");
    assert_tls_refusal(
        call(&client, srv.addr).await,
        "expired certificate",
        "CertificateExpired",
    );
    assert_eq!(srv.calls(), 0);
}

// Property 4: a certificate from another CA is refused even though its
// thumbprint is pinned: the chain to the cluster CA is checked first.
#[tokio::test]
async fn pinned_cert_from_other_ca_is_refused() {
    setup();
    let pki = Pki::new("cluster");
    let rogue = Pki::new("rogue");
    let server_cert = pki.node("server");
    let intruder = rogue.node("intruder");
    let server =
        TlsServer::new(&pki.files("server"), pins(&[intruder.thumbprint])).expect("server TLS");
    let srv = TestServer::start(&server).await;

    // The intruder trusts the real cluster CA for the server, so only the
    // server's decision is tested.
    let mut files = rogue.files("intruder");
    files.ca = pki.ca_path();
    let client = TlsClient::new_peer(&files, pins(&[server_cert.thumbprint])).expect("client TLS");
    assert_tls_refusal(
        call(&client, srv.addr).await,
        "pinned cert from another CA",
        "UnknownCA",
    );
    assert_eq!(srv.calls(), 0);
}

// Property 5: an admin certificate (URI SAN urn:tern:admin:<name>) from the
// admin CA is accepted without a pin, with role Admin{name}; the same admin
// name signed by another CA is refused; with a separate admin CA
// configured, admins chain to it and no longer to the cluster CA. The admin
// client verifies the server by IP SAN (127.0.0.1).
#[tokio::test]
async fn admin_certs_are_accepted_from_the_admin_ca_only() {
    setup();
    let pki = Pki::new("cluster");
    let other = Pki::new("other");
    let server_cert = pki.node("server");
    let alice = pki.admin("alice");
    other.admin("alice");
    let server = TlsServer::new(&pki.files("server"), PinSet::default()).expect("server TLS");
    let srv = TestServer::start(&server).await;

    let admin = TlsClient::new_admin(
        &pki.ca_path(),
        &pki.dir.path().join("alice.pem"),
        &pki.dir.path().join("alice.key"),
    )
    .expect("admin TLS");
    let seen = call(&admin, srv.addr).await.expect("admin refused");
    assert_eq!(seen.role, "admin:alice");
    assert_eq!(seen.thumbprint, alice.thumbprint.to_string());
    assert_ne!(seen.thumbprint, server_cert.thumbprint.to_string());

    let forged = TlsClient::new_admin(
        &pki.ca_path(),
        &other.dir.path().join("alice.pem"),
        &other.dir.path().join("alice.key"),
    )
    .expect("forged admin TLS");
    assert_tls_refusal(
        call(&forged, srv.addr).await,
        "admin cert from another CA",
        "UnknownCA",
    );
    assert_eq!(srv.calls(), 1);

    // Separate admin CA: `other` signs admins, the cluster CA no longer does.
    let mut files = pki.files("server");
    files.admin_ca = Some(other.ca_path());
    let split = TlsServer::new(&files, PinSet::default()).expect("server TLS with admin CA");
    let srv2 = TestServer::start(&split).await;
    let seen = call(&forged, srv2.addr)
        .await
        .expect("admin from the admin CA refused");
    assert_eq!(seen.role, "admin:alice");
    assert_tls_refusal(
        call(&admin, srv2.addr).await,
        "admin cert from the cluster CA",
        "UnknownCA",
    );
    assert_eq!(srv2.calls(), 1);
}

// Property 6: a coordinator client refuses a server whose certificate
// chains to the cluster CA but whose thumbprint is not in the client's pin
// set, even though the server would accept the client.
#[tokio::test]
async fn client_refuses_unpinned_server() {
    setup();
    let pki = Pki::new("cluster");
    let _server_cert = pki.node("server");
    let client_cert = pki.node("client");
    let server =
        TlsServer::new(&pki.files("server"), pins(&[client_cert.thumbprint])).expect("server TLS");
    let srv = TestServer::start(&server).await;
    let client = TlsClient::new_peer(&pki.files("client"), pins(&[client_cert.thumbprint]))
        .expect("client TLS");
    assert_tls_refusal(
        call(&client, srv.addr).await,
        "unpinned server",
        "ApplicationVerificationFailure",
    );
    assert_eq!(srv.calls(), 0);
}

// Property 7: `PinSet::replace` takes effect for new connections without
// rebuilding or restarting the server: pinned -> accepted, unpinned -> the
// next connection is refused, pinned again -> accepted.
#[tokio::test]
async fn pin_set_replace_applies_to_new_connections() {
    setup();
    let pki = Pki::new("cluster");
    let server_cert = pki.node("server");
    let client_cert = pki.node("client");
    let server_pins = pins(&[client_cert.thumbprint]);
    let server = TlsServer::new(&pki.files("server"), server_pins.clone()).expect("server TLS");
    let srv = TestServer::start(&server).await;
    let client = TlsClient::new_peer(&pki.files("client"), pins(&[server_cert.thumbprint]))
        .expect("client TLS");

    call(&client, srv.addr)
        .await
        .expect("pinned client refused");
    server_pins.replace(Default::default());
    assert_tls_refusal(
        call(&client, srv.addr).await,
        "client after unpinning",
        "AccessDenied",
    );
    assert_eq!(srv.calls(), 1);
    server.pins().replace([client_cert.thumbprint].into());
    call(&client, srv.addr)
        .await
        .expect("re-pinned client refused");
    assert_eq!(srv.calls(), 2);
}

// Property 8: `TlsServer::reload` with a new certificate is used by new
// connections at once, without restarting the server: the client sees the
// new server thumbprint, and a client pinning only the new one connects.
#[tokio::test]
async fn server_reload_presents_the_new_certificate() {
    setup();
    let pki = Pki::new("cluster");
    let old = pki.node("server-old");
    let new = pki.node("server-new");
    let client_cert = pki.node("client");
    let server = TlsServer::new(&pki.files("server-old"), pins(&[client_cert.thumbprint]))
        .expect("server TLS");
    let srv = TestServer::start(&server).await;
    let client = TlsClient::new_peer(
        &pki.files("client"),
        pins(&[old.thumbprint, new.thumbprint]),
    )
    .expect("client TLS");

    let presented = |client: &TlsClient| {
        let connector = client.connector();
        let uri: http::Uri = format!("http://{}", srv.addr).parse().expect("uri");
        async move {
            let conn = tokio::time::timeout(WAIT, connector.connect(&uri))
                .await
                .expect("waited for the TLS handshake")
                .expect("handshake");
            let certs = conn
                .inner()
                .get_ref()
                .1
                .peer_certificates()
                .expect("server certs");
            tls::thumbprint_of_der(&certs[0])
        }
    };
    assert_eq!(presented(&client).await, old.thumbprint);

    server.reload(&pki.files("server-new")).expect("reload");
    assert_eq!(server.thumbprint(), new.thumbprint);
    assert_eq!(presented(&client).await, new.thumbprint);
    let only_new =
        TlsClient::new_peer(&pki.files("client"), pins(&[new.thumbprint])).expect("client TLS");
    let seen = call(&only_new, srv.addr).await.expect("call after reload");
    assert_eq!(seen.role, "peer");

    // A failed reload keeps the current material.
    let err = server
        .reload(&pki.files("missing"))
        .expect_err("reload of missing files");
    assert!(
        err.to_string().starts_with("cannot read certificate file "),
        "{err}"
    );
    assert_eq!(server.thumbprint(), new.thumbprint);
}

// Property 9: a client that opens TCP and never starts TLS does not hold up
// other clients: their handshakes and calls complete meanwhile.
#[tokio::test]
async fn stalled_handshake_does_not_block_others() {
    setup();
    let pki = Pki::new("cluster");
    let server_cert = pki.node("server");
    let client_cert = pki.node("client");
    let server =
        TlsServer::new(&pki.files("server"), pins(&[client_cert.thumbprint])).expect("server TLS");
    let srv = TestServer::start(&server).await;
    let stalled = tokio::time::timeout(WAIT, tokio::net::TcpStream::connect(srv.addr))
        .await
        .expect("waited for the stalled TCP connect")
        .expect("stalled TCP connect");
    let client = TlsClient::new_peer(&pki.files("client"), pins(&[server_cert.thumbprint]))
        .expect("client TLS");
    call(&client, srv.addr)
        .await
        .expect("call behind a stalled handshake");
    drop(stalled);
}

// Property 10: TLS material errors name the file and the problem: a
// missing key file, a certificate file without a certificate, a key that
// belongs to another certificate.
#[test]
fn material_errors_name_file_and_problem() {
    setup();
    let pki = Pki::new("cluster");
    pki.node("a");
    pki.node("b");
    let dir = pki.dir.path();
    let missing = dir.join("missing.key");
    let err = Identity::load(&dir.join("a.pem"), &missing).expect_err("missing key");
    assert!(
        err.to_string().starts_with(&format!(
            "cannot read private key file {}: ",
            missing.display()
        )),
        "{err}"
    );
    let err = Identity::load(&dir.join("a.key"), &dir.join("a.key")).expect_err("key as cert");
    assert_eq!(
        err.to_string(),
        format!("no certificate in {}", dir.join("a.key").display())
    );
    let err = Identity::load(&dir.join("a.pem"), &dir.join("a.pem")).expect_err("cert as key");
    assert_eq!(
        err.to_string(),
        format!("no private key in {}", dir.join("a.pem").display())
    );
    let err = Identity::load(&dir.join("a.pem"), &dir.join("b.key")).expect_err("wrong key");
    assert!(matches!(err, TlsError::KeyMismatch { .. }), "{err}");
    assert!(!format!("{err:?}").contains("PRIVATE KEY"));
}
