//! Tests of the reference region stand-in (`tern stand-in`) over real
//! loopback sockets: its region endpoints over TLS, its fault modes through
//! the control API and the in-process handle, the federation ping's two
//! factors, and the binary's configuration errors and CLI. Every test has
//! its own 127.0.0.x address (so a port freed by `down` cannot be taken by
//! another test of this file), binds port 0, and generates a fresh PKI.
//! Every wait has a deadline; nothing sleeps to let things settle.

use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::http::{Request, StatusCode};
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::{TokioExecutor, TokioIo};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::{ClientConfig, RootCertStore};
use tempfile::TempDir;
use tern_coordinator::standin::{
    self, generate_secret, ControlClient, Factor, FederationPeer, Mode, ModeName, PingResponse,
    SecretHash, StandInConfig, StandInHandle, StandInReady, SECRET_HEADER,
};
use tern_coordinator::tls::{DevCa, IssuedCert};
use time::OffsetDateTime;
use tokio::net::TcpStream;
use tokio::task::JoinHandle;

/// Upper bound for any single call, connection or wait in these tests.
const WAIT: Duration = Duration::from_secs(15);

// ---------------------------------------------------------------- fixtures

fn validity() -> (OffsetDateTime, OffsetDateTime) {
    let now = OffsetDateTime::now_utc();
    (
        now - time::Duration::minutes(1),
        now + time::Duration::days(1),
    )
}

fn ip(s: &str) -> IpAddr {
    s.parse().expect("ip")
}

/// A client certificate (e.g. a federation peer's), issued by `ca`.
fn client_cert(ca: &DevCa, name: &str) -> IssuedCert {
    let (nb, na) = validity();
    ca.issue_node(name, &[format!("{name}.example")], &[], nb, na)
        .expect("issue client certificate")
}

/// A running stand-in with its files, and the CA its server certificate
/// chains to.
struct Region {
    dir: TempDir,
    server_ca: DevCa,
    handle: StandInHandle,
}

/// The configuration of a stand-in on `ip` (port 0) whose files live in
/// `dir`; writes a server certificate for `ip` issued by `server_ca`.
fn config_in(
    dir: &Path,
    server_ca: &DevCa,
    ip: IpAddr,
    peers: Vec<FederationPeer>,
) -> StandInConfig {
    let (nb, na) = validity();
    server_ca
        .issue_node("eu-standin", &["localhost".to_string()], &[ip], nb, na)
        .expect("issue server certificate")
        .write(dir, "server")
        .expect("write server certificate");
    StandInConfig {
        region: "eu".parse().expect("region"),
        listen_https: SocketAddr::new(ip, 0),
        listen_control: SocketAddr::new(ip, 0),
        tls_cert_file: dir.join("server.pem"),
        tls_key_file: dir.join("server.key"),
        data_dir: dir.join("data"),
        agent_ca: None,
        federation_peers: peers,
        configs: Default::default(),
        coordinator_ca_file: None,
        ready_file: Some(dir.join("ready.json")),
    }
}

async fn start_region(ip_text: &str, peers: Vec<FederationPeer>) -> Region {
    let dir = tempfile::tempdir().expect("tempdir");
    let server_ca = DevCa::generate("stand-in test CA", Duration::from_secs(86_400)).expect("CA");
    let config = config_in(dir.path(), &server_ca, ip(ip_text), peers);
    let (https, control) = standin::bind(&config).await.expect("bind");
    let handle = standin::start(config, https, control)
        .await
        .expect("start stand-in");
    Region {
        dir,
        server_ca,
        handle,
    }
}

/// A TLS client config trusting `ca`, presenting `client` if given.
fn tls_client(ca: &DevCa, client: Option<&IssuedCert>) -> Arc<ClientConfig> {
    let mut roots = RootCertStore::empty();
    roots.add(ca.cert_der().clone()).expect("root");
    let builder =
        ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()
            .expect("versions")
            .with_root_certificates(roots);
    let mut config = match client {
        Some(c) => builder
            .with_client_auth_cert(
                vec![CertificateDer::from_pem_slice(c.cert_pem.as_bytes()).expect("cert")],
                PrivateKeyDer::from_pem_slice(c.key_pem.as_bytes()).expect("key"),
            )
            .expect("client auth"),
        None => builder.with_no_client_auth(),
    };
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Arc::new(config)
}

/// One HTTP/1.1 keep-alive connection over TLS.
struct Conn {
    sender: SendRequest<Body>,
    task: JoinHandle<Result<(), hyper::Error>>,
}

async fn connect(addr: SocketAddr, tls: Arc<ClientConfig>) -> std::io::Result<Conn> {
    let tcp = tokio::time::timeout(WAIT, TcpStream::connect(addr))
        .await
        .map_err(|_| std::io::Error::other("connect timed out"))??;
    let tls = tokio::time::timeout(
        WAIT,
        tokio_rustls::TlsConnector::from(tls).connect(ServerName::from(addr.ip()), tcp),
    )
    .await
    .map_err(|_| std::io::Error::other("TLS handshake timed out"))??;
    let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
        .await
        .map_err(std::io::Error::other)?;
    Ok(Conn {
        sender,
        task: tokio::spawn(conn),
    })
}

impl Conn {
    async fn get(
        &mut self,
        path: &str,
        headers: &[(&str, &str)],
    ) -> Result<(StatusCode, String), hyper::Error> {
        let mut req = Request::builder().uri(path).header("host", "standin");
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        let req = req.body(Body::empty()).expect("request");
        let resp = tokio::time::timeout(WAIT, self.sender.send_request(req))
            .await
            .expect("response within the deadline")?;
        let status = resp.status();
        let body = axum::body::to_bytes(Body::new(resp.into_body()), 1 << 20)
            .await
            .expect("body");
        Ok((status, String::from_utf8_lossy(&body).to_string()))
    }
}

/// GET on a new connection.
async fn get_once(addr: SocketAddr, tls: Arc<ClientConfig>, path: &str) -> (StatusCode, String) {
    let mut conn = connect(addr, tls).await.expect("connect");
    conn.get(path, &[]).await.expect("GET")
}

async fn ping(addr: SocketAddr, tls: Arc<ClientConfig>, secret: Option<&str>) -> PingResponse {
    let mut conn = connect(addr, tls).await.expect("connect");
    let headers: Vec<(&str, &str)> = secret.map(|s| (SECRET_HEADER, s)).into_iter().collect();
    let (status, body) = conn
        .get(standin::FEDERATION_PING, &headers)
        .await
        .expect("ping");
    assert_eq!(status, StatusCode::OK, "ping always answers 200: {body}");
    serde_json::from_str(&body).unwrap_or_else(|e| panic!("ping body {body:?}: {e}"))
}

/// GET over HTTP/2 (ALPN h2 only) on a new connection; the status.
async fn h2_get(addr: SocketAddr, ca: &DevCa, path: &str) -> StatusCode {
    let mut config = Arc::unwrap_or_clone(tls_client(ca, None));
    config.alpn_protocols = vec![b"h2".to_vec()];
    let tcp = TcpStream::connect(addr).await.expect("connect");
    let tls = tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect(ServerName::from(addr.ip()), tcp)
        .await
        .expect("TLS with ALPN h2");
    let (mut sender, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tls))
            .await
            .expect("HTTP/2 handshake");
    let conn = tokio::spawn(conn);
    let req = Request::builder()
        .uri(format!("https://{addr}{path}"))
        .body(Body::empty())
        .expect("request");
    let status = tokio::time::timeout(WAIT, sender.send_request(req))
        .await
        .expect("answer within the deadline")
        .expect("HTTP/2 GET")
        .status();
    conn.abort();
    status
}

const REGION_ENDPOINTS: [&str; 4] = [
    standin::LIVE,
    standin::READY,
    standin::TRUST_BUNDLE,
    standin::FEDERATION_PING,
];

// ------------------------------------------------------------------- tests

// Property: the region endpoints are served over TLS with a certificate
// that verifies against the configured CA (a client trusting another CA is
// refused); live and ready answer 200; the trust bundle parses as PEM
// certificates and is exactly the agent CA; the ready file names the bound
// addresses.
#[tokio::test]
async fn health_ready_and_trust_bundle_over_verified_tls() {
    let r = start_region("127.0.0.41", vec![]).await;
    let addr = r.handle.https_addr();
    let tls = tls_client(&r.server_ca, None);

    assert_eq!(
        get_once(addr, tls.clone(), standin::LIVE).await,
        (StatusCode::OK, "live\n".to_string())
    );
    assert_eq!(
        get_once(addr, tls.clone(), standin::READY).await,
        (StatusCode::OK, "ready\n".to_string())
    );
    let (status, pem) = get_once(addr, tls.clone(), standin::TRUST_BUNDLE).await;
    assert_eq!(status, StatusCode::OK);
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(pem.as_bytes())
        .collect::<Result<_, _>>()
        .expect("trust bundle is PEM certificates");
    assert_eq!(certs.len(), 1, "one agent CA: {pem}");
    assert_eq!(&certs[0], r.handle.agent_ca().cert_der());
    assert_ne!(
        r.handle.agent_ca().thumbprint(),
        r.server_ca.thumbprint(),
        "the agent CA is the region's own, not the server certificate's CA"
    );

    // HTTP/2 clients are served too (ALPN offers h2 and http/1.1).
    assert_eq!(
        h2_get(addr, &r.server_ca, standin::LIVE).await,
        StatusCode::OK
    );

    let stranger = DevCa::generate("another CA", Duration::from_secs(86_400)).expect("CA");
    assert!(
        connect(addr, tls_client(&stranger, None)).await.is_err(),
        "a client trusting another CA must refuse the server"
    );

    let ready: StandInReady = serde_json::from_slice(
        &std::fs::read(r.dir.path().join("ready.json")).expect("ready file"),
    )
    .expect("ready JSON");
    assert_eq!(ready.region, "eu");
    assert_eq!(ready.https, addr.to_string());
    assert_eq!(ready.control, r.handle.control_addr().to_string());
    assert_eq!(ready.pid, std::process::id());
    r.handle.shutdown().await;
}

// Property: in mode `unavailable` every region endpoint answers 503 while
// the control API keeps answering (and counts the 503s); back to `up`,
// the endpoints answer 200 again.
#[tokio::test]
async fn unavailable_answers_503_while_control_answers() {
    let r = start_region("127.0.0.42", vec![]).await;
    let addr = r.handle.https_addr();
    let tls = tls_client(&r.server_ca, None);
    let control = ControlClient::new(r.handle.control_addr().to_string());

    let report = control.set_mode(Mode::Unavailable).await.expect("set mode");
    assert_eq!(report.mode, ModeName::Unavailable);
    assert!(report.listening, "unavailable still accepts connections");
    let mut conn = connect(addr, tls.clone()).await.expect("connect");
    for path in REGION_ENDPOINTS {
        let (status, _) = conn.get(path, &[]).await.expect("GET");
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{path}");
    }
    let status = control
        .status()
        .await
        .expect("control answers while unavailable");
    assert_eq!(status.mode.mode, ModeName::Unavailable);
    assert_eq!(status.stats.responses.get("503"), Some(&4));
    assert_eq!(status.stats.requests_to(standin::LIVE), 1);

    control.set_mode(Mode::Up).await.expect("up");
    for path in [standin::LIVE, standin::READY, standin::TRUST_BUNDLE] {
        let (status, _) = conn.get(path, &[]).await.expect("GET");
        assert_eq!(status, StatusCode::OK, "{path}");
    }
    r.handle.shutdown().await;
}

// Property: in mode `slow` with delay_ms = 300 a region endpoint answers
// no sooner than 300 ms after the request (lower bound only).
#[tokio::test]
async fn slow_delays_answers() {
    let r = start_region("127.0.0.43", vec![]).await;
    let tls = tls_client(&r.server_ca, None);
    let control = ControlClient::new(format!("http://{}", r.handle.control_addr()));
    let report = control
        .set_mode(Mode::Slow {
            delay: Duration::from_millis(300),
        })
        .await
        .expect("slow");
    assert_eq!((report.mode, report.delay_ms), (ModeName::Slow, Some(300)));
    assert_eq!(control.mode().await.expect("mode").delay_ms, Some(300));

    let mut conn = connect(r.handle.https_addr(), tls).await.expect("connect");
    for path in [standin::READY, standin::LIVE] {
        let started = Instant::now();
        let (status, _) = conn.get(path, &[]).await.expect("GET");
        let took = started.elapsed();
        assert_eq!(status, StatusCode::OK);
        assert!(took >= Duration::from_millis(300), "{path} took {took:?}");
    }
    r.handle.shutdown().await;
}

// Property: in mode `down` new connections are refused and an existing
// keep-alive connection is closed, as if the process were gone; back to
// `up`, the region is served again on the same address.
#[tokio::test]
async fn down_refuses_and_cuts_then_up_serves_same_address() {
    let r = start_region("127.0.0.44", vec![]).await;
    let addr = r.handle.https_addr();
    let tls = tls_client(&r.server_ca, None);

    let mut kept = connect(addr, tls.clone()).await.expect("connect");
    assert_eq!(
        kept.get(standin::LIVE, &[]).await.expect("GET").0,
        StatusCode::OK
    );

    let report = r.handle.set_mode(Mode::Down).await.expect("down");
    assert!(!report.listening);
    let refused = TcpStream::connect(addr)
        .await
        .expect_err("connect must fail while down");
    assert_eq!(
        refused.kind(),
        std::io::ErrorKind::ConnectionRefused,
        "{refused}"
    );

    // The kept-alive connection ends (the server closed it) within the
    // deadline, and it can carry no further request.
    // (The connection's own result, clean close or reset, does not matter.)
    let _closed = tokio::time::timeout(WAIT, &mut kept.task)
        .await
        .expect("the kept-alive connection must be closed by down")
        .expect("connection task");
    assert!(kept.get(standin::LIVE, &[]).await.is_err());
    assert_eq!(r.handle.status().stats.connections.dropped_by_down, 1);

    let report = r.handle.set_mode(Mode::Up).await.expect("up");
    assert!(report.listening);
    assert_eq!(report.https, addr.to_string());
    assert_eq!(r.handle.https_addr(), addr);
    assert_eq!(
        get_once(addr, tls, standin::LIVE).await.0,
        StatusCode::OK,
        "served again on the same address"
    );
    r.handle.shutdown().await;
}

// Property: the federation ping is green only for a client certificate
// whose thumbprint is pinned *and* the matching secret; otherwise red,
// naming the factor that failed: an unpinned certificate or no
// certificate at all → thumbprint; a wrong secret → secret. Replacing the
// peers (a pin rotation step) takes effect on the next ping.
#[tokio::test]
async fn federation_ping_checks_both_factors() {
    // The peer's certificates come from its own CA, unrelated to ours.
    let peer_ca = DevCa::generate("peer us CA", Duration::from_secs(86_400)).expect("CA");
    let pinned = client_cert(&peer_ca, "us-federation");
    let unpinned = client_cert(&peer_ca, "us-federation-next");
    let secret = generate_secret();
    let secret_hex = hex::encode(secret);
    let wrong_hex = hex::encode(generate_secret());
    let peer = FederationPeer {
        name: "us".parse().expect("name"),
        pinned_thumbprints: [pinned.thumbprint].into_iter().collect(),
        inbound_secret_sha256: SecretHash::of(&secret),
    };
    let r = start_region("127.0.0.45", vec![peer.clone()]).await;
    let addr = r.handle.https_addr();
    let with = |c: &IssuedCert| tls_client(&r.server_ca, Some(c));
    let red = |f: Factor| PingResponse::Red { failed: vec![f] };

    assert_eq!(
        ping(addr, with(&pinned), Some(&secret_hex)).await,
        PingResponse::Green
    );
    assert_eq!(
        ping(addr, with(&unpinned), Some(&secret_hex)).await,
        red(Factor::Thumbprint)
    );
    assert_eq!(
        ping(addr, with(&pinned), Some(&wrong_hex)).await,
        red(Factor::Secret)
    );
    assert_eq!(
        ping(addr, tls_client(&r.server_ca, None), Some(&secret_hex)).await,
        red(Factor::Thumbprint)
    );
    assert_eq!(ping(addr, with(&pinned), None).await, red(Factor::Secret));

    let mut rotated = peer;
    rotated.pinned_thumbprints.insert(unpinned.thumbprint);
    r.handle
        .set_federation_peers(vec![rotated])
        .expect("replace peers");
    assert_eq!(
        ping(addr, with(&unpinned), Some(&secret_hex)).await,
        PingResponse::Green
    );
    r.handle.shutdown().await;
}

// ------------------------------------------------------------- the binary

fn tern() -> Command {
    Command::new(env!("CARGO_BIN_EXE_tern"))
}

/// A valid stand-in configuration file in `dir` (certificates included),
/// listening on `ip` port 0.
fn write_config(dir: &Path, ip: &str) -> (PathBuf, String) {
    let ca = DevCa::generate("stand-in CLI CA", Duration::from_secs(86_400)).expect("CA");
    let (nb, na) = validity();
    ca.issue_node("eu-standin", &[], &[self::ip(ip)], nb, na)
        .expect("issue")
        .write(dir, "server")
        .expect("write");
    ca.write(&dir.join("ca")).expect("write CA");
    let text = format!(
        "region = \"eu\"\ndata_dir = \"data\"\nready_file = \"ready.json\"\n\
         [listen]\nhttps = \"{ip}:0\"\ncontrol = \"{ip}:0\"\n\
         [tls]\ncert_file = \"server.pem\"\nkey_file = \"server.key\"\n\
         [[federation.peers]]\nname = \"us\"\n\
         pinned_thumbprints = [\"{tp}\"]\ninbound_secret_sha256 = \"{tp}\"\n",
        tp = ca.thumbprint()
    );
    (dir.join("standin.toml"), text)
}

fn run_tern(args: &[&str], config: Option<(&Path, &str)>) -> (i32, String, String) {
    if let Some((path, text)) = config {
        std::fs::write(path, text).expect("write config");
    }
    let out = tern().args(args).output().expect("run tern");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).to_string(),
        String::from_utf8_lossy(&out.stderr).to_string(),
    )
}

// Property: `tern stand-in serve` refuses a bad configuration with a
// non-zero exit and a message naming the field at fault, before binding
// anything; the valid base configuration passes `--check`.
#[test]
fn bad_config_exits_non_zero_naming_the_field() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (path, base) = write_config(dir.path(), "127.0.0.46");
    let p = path.to_str().expect("utf-8 path");
    let (code, _, err) = run_tern(
        &["stand-in", "serve", "--check", "--config", p],
        Some((&path, &base)),
    );
    assert_eq!(code, 0, "the base configuration must be valid: {err}");

    let cases = [
        (
            base.replace("region = \"eu\"\n", ""),
            "`region` is required",
        ),
        (
            base.replace("control = \"127.0.0.46:0\"", "control = \"192.0.2.1:0\""),
            "listen.control",
        ),
        (
            base.replace("https = \"127.0.0.46:0\"", "https = \"localhost\""),
            "listen.https",
        ),
        (base.replace("server.pem", "missing.pem"), "tls.cert_file"),
        (base.replace("server.key", "missing.key"), "tls.key_file"),
        (
            base.replace("pinned_thumbprints = [\"", "pinned_thumbprints = [\"zz"),
            "federation.peers[0].pinned_thumbprints[0]",
        ),
        (
            base.replace("inbound_secret_sha256", "inbound_secret"),
            "inbound_secret",
        ),
        (
            format!("{base}[agent_ca]\ncert_file = \"ca/ca.pem\"\n"),
            "agent_ca.key_file",
        ),
        (
            format!("{base}[agent_ca]\ncert_file = \"server.pem\"\nkey_file = \"server.key\"\n"),
            "agent_ca.cert_file",
        ),
    ];
    for (text, needle) in cases {
        for check in [true, false] {
            let mut args = vec!["stand-in", "serve", "--config", p];
            if check {
                args.push("--check");
            }
            let (code, _, err) = run_tern(&args, Some((&path, &text)));
            assert_ne!(
                code, 0,
                "expected failure mentioning {needle} (check: {check})"
            );
            assert!(
                err.contains(needle),
                "stderr {err:?} should mention {needle:?}"
            );
        }
    }
    // A mode that needs a delay without one is refused before any call.
    let (code, _, err) = run_tern(
        &["stand-in", "mode", "--control", "127.0.0.46:1", "slow"],
        None,
    );
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("delay_ms"), "{err}");
}

/// Kills the child (a process this test started) when dropped.
struct ChildGuard(Child);

impl Drop for ChildGuard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

// Property: the `tern stand-in` binary serves with a configuration file,
// announces its bound addresses in the ready file, and is steered by
// `tern stand-in mode` and read by `tern stand-in status`.
#[tokio::test]
async fn binary_serves_and_is_steered_by_the_cli() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (path, text) = write_config(dir.path(), "127.0.0.47");
    std::fs::write(&path, text).expect("write config");
    let child = tern()
        .args(["stand-in", "serve", "--config"])
        .arg(&path)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn tern stand-in serve");
    let mut child = ChildGuard(child);

    let ready_path = dir.path().join("ready.json");
    let deadline = Instant::now() + WAIT;
    let ready: StandInReady = loop {
        if let Ok(bytes) = std::fs::read(&ready_path) {
            break serde_json::from_slice(&bytes).expect("ready JSON");
        }
        if let Some(status) = child.0.try_wait().expect("try_wait") {
            panic!("tern stand-in serve exited early: {status}");
        }
        assert!(Instant::now() < deadline, "no ready file within {WAIT:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(ready.region, "eu");

    let ca =
        DevCa::load(&dir.path().join("ca/ca.pem"), &dir.path().join("ca/ca.key")).expect("load CA");
    let https: SocketAddr = ready.https.parse().expect("https addr");
    assert_eq!(
        get_once(https, tls_client(&ca, None), standin::READY)
            .await
            .0,
        StatusCode::OK
    );

    let control = ready.control.clone();
    let out = tokio::task::spawn_blocking(move || {
        run_tern(
            &[
                "stand-in",
                "mode",
                "--control",
                &control,
                "unavailable",
                "-o",
                "json",
            ],
            None,
        )
    })
    .await
    .expect("join");
    assert_eq!(out.0, 0, "mode: {}", out.2);
    assert!(out.1.contains("\"unavailable\""), "{}", out.1);
    assert_eq!(
        get_once(https, tls_client(&ca, None), standin::READY)
            .await
            .0,
        StatusCode::SERVICE_UNAVAILABLE
    );
    let control = ready.control.clone();
    let out = tokio::task::spawn_blocking(move || {
        run_tern(&["stand-in", "status", "--control", &control], None)
    })
    .await
    .expect("join");
    assert_eq!(out.0, 0, "status: {}", out.2);
    assert!(out.1.contains("mode unavailable"), "{}", out.1);
    assert!(out.1.contains("/health/ready"), "{}", out.1);
    child.0.kill().expect("kill stand-in");
}
