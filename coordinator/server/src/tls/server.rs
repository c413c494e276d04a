//! The accepting side of the mTLS transport: a hot-swappable rustls
//! `ServerConfig` (`TlsServer`, held in a `watch` channel so a certificate
//! rotation never restarts the server) and the accept loop (`incoming`)
//! that turns a bound `TcpListener` into verified `PeerStream`s for
//! `tonic::transport::Server::serve_with_incoming`. It owns handshake
//! concurrency and time limits and attaching the verified `PeerIdentity` to
//! each connection. It must not decide trust (see `verify`) nor bind
//! sockets: the caller binds the listener.

use std::fmt;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, SystemTime};

use rustls::pki_types::UnixTime;
use rustls::server::NoServerSessionStorage;
use rustls::ServerConfig;
use tern_core::Thumbprint;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinSet;
use tokio_stream::Stream;
use tracing::Instrument;

use super::peer::PeerIdentity;
use super::verify::ClientVerifier;
use super::{provider, AgentTrust, CaBundle, Identity, PinSet, TlsError, TlsFiles, ALPN_H2};

/// How long a client may take to complete the TLS handshake.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Handshakes in progress at once; beyond this the acceptor stops accepting
/// until one finishes (the kernel backlog holds the rest).
const MAX_PENDING_HANDSHAKES: usize = 1024;
/// Pause after an accept error that is not about one connection (e.g. out
/// of file descriptors), so the loop does not spin.
const ACCEPT_ERROR_BACKOFF: Duration = Duration::from_millis(100);

/// One generation of server TLS material.
struct ServerState {
    config: Arc<ServerConfig>,
    verifier: Arc<ClientVerifier>,
    thumbprint: Thumbprint,
    not_after: SystemTime,
}

impl ServerState {
    fn build(
        cluster_ca: &CaBundle,
        admin_ca: Option<&CaBundle>,
        identity: &Identity,
        pins: PinSet,
        agents: AgentTrust,
    ) -> Result<ServerState, TlsError> {
        let verifier = Arc::new(ClientVerifier::new(cluster_ca, admin_ca, pins, agents)?);
        let mut config = ServerConfig::builder_with_provider(Arc::new(provider()))
            .with_protocol_versions(&[&rustls::version::TLS13])
            .map_err(TlsError::config)?
            .with_client_cert_verifier(verifier.clone())
            .with_single_cert(identity.chain().to_vec(), identity.key())
            .map_err(TlsError::config)?;
        config.alpn_protocols = vec![ALPN_H2.to_vec()];
        // No resumption: a resumed session would skip the client certificate
        // verifier, and with it the pin check against the current pin set.
        config.session_storage = Arc::new(NoServerSessionStorage {});
        config.send_tls13_tickets = 0;
        Ok(ServerState {
            config: Arc::new(config),
            verifier,
            thumbprint: identity.thumbprint(),
            not_after: identity.not_after(),
        })
    }
}

/// Server-side TLS material that can be swapped at run time. New
/// handshakes use the newest material; established connections keep
/// theirs. The pin set is shared, so `PinSet::replace` takes effect for new
/// handshakes without a reload. Clones share the material: a reload
/// through one is seen by all.
#[derive(Clone)]
pub struct TlsServer {
    state: watch::Sender<Arc<ServerState>>,
    pins: PinSet,
    agents: AgentTrust,
}

impl TlsServer {
    /// Loads CA bundle(s), certificate and key from `files`; our certificate
    /// must be valid now.
    pub fn new(files: &TlsFiles, pins: PinSet) -> Result<TlsServer, TlsError> {
        let (cluster_ca, admin_ca, identity) = load_files(files)?;
        TlsServer::from_parts(&cluster_ca, admin_ca.as_ref(), &identity, pins)
    }

    /// Builds from material already in memory. `admin_ca: None` means
    /// admins chain to the cluster CA.
    pub fn from_parts(
        cluster_ca: &CaBundle,
        admin_ca: Option<&CaBundle>,
        identity: &Identity,
        pins: PinSet,
    ) -> Result<TlsServer, TlsError> {
        let agents = AgentTrust::default();
        let state =
            ServerState::build(cluster_ca, admin_ca, identity, pins.clone(), agents.clone())?;
        let (state, _) = watch::channel(Arc::new(state));
        Ok(TlsServer {
            state,
            pins,
            agents,
        })
    }

    /// Re-reads `files` and uses them for every new handshake. On error the
    /// current material stays in use.
    pub fn reload(&self, files: &TlsFiles) -> Result<(), TlsError> {
        let (cluster_ca, admin_ca, identity) = load_files(files)?;
        self.reload_parts(&cluster_ca, admin_ca.as_ref(), &identity)
    }

    /// Like [`TlsServer::reload`], from material in memory.
    pub fn reload_parts(
        &self,
        cluster_ca: &CaBundle,
        admin_ca: Option<&CaBundle>,
        identity: &Identity,
    ) -> Result<(), TlsError> {
        let state = ServerState::build(
            cluster_ca,
            admin_ca,
            identity,
            self.pins.clone(),
            self.agents.clone(),
        )?;
        tracing::info!(
            target: "tls",
            thumbprint = %state.thumbprint.short(),
            "server TLS material reloaded"
        );
        self.state.send_replace(Arc::new(state));
        Ok(())
    }

    /// The agent trust this server's verifier consults (shared: updates
    /// take effect for new handshakes).
    pub fn agent_trust(&self) -> &AgentTrust {
        &self.agents
    }

    /// Thumbprint of the certificate presented to new connections.
    pub fn thumbprint(&self) -> Thumbprint {
        self.state.borrow().thumbprint
    }

    /// End of validity of the certificate presented to new connections.
    pub fn not_after(&self) -> SystemTime {
        self.state.borrow().not_after
    }

    /// The shared pin set this server checks peers against.
    pub fn pins(&self) -> &PinSet {
        &self.pins
    }

    /// The current rustls configuration (e.g. to serve another protocol
    /// with the same identity and client verification).
    pub fn config(&self) -> Arc<ServerConfig> {
        self.state.borrow().config.clone()
    }
}

impl fmt::Debug for TlsServer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TlsServer")
            .field("thumbprint", &self.thumbprint().short())
            .field("pins", &self.pins)
            .finish()
    }
}

fn load_files(files: &TlsFiles) -> Result<(CaBundle, Option<CaBundle>, Identity), TlsError> {
    let cluster_ca = CaBundle::load(&files.ca)?;
    let admin_ca = files.admin_ca.as_deref().map(CaBundle::load).transpose()?;
    let identity = Identity::load(&files.cert, &files.key)?;
    Ok((cluster_ca, admin_ca, identity))
}

/// Accepts TCP connections on `listener` and performs TLS handshakes
/// concurrently (each in its own task, limited to `HANDSHAKE_TIMEOUT`), so a
/// slow or failing client never holds up others. Yields only connections
/// whose client was verified; refusals are logged. Dropping the stream
/// closes the listener and abandons handshakes in progress.
///
/// Must be polled inside a tokio runtime. Accept errors are logged and
/// retried after a short pause rather than yielded, so the stream never
/// ends and never yields `Err` in practice; the item type matches what
/// `serve_with_incoming` expects.
pub fn incoming(listener: TcpListener, server: &TlsServer) -> Incoming {
    Incoming {
        listener,
        state: server.state.subscribe(),
        handshakes: JoinSet::new(),
        backoff: None,
    }
}

/// The stream returned by [`incoming`].
pub struct Incoming {
    listener: TcpListener,
    state: watch::Receiver<Arc<ServerState>>,
    handshakes: JoinSet<Option<PeerStream>>,
    backoff: Option<Pin<Box<tokio::time::Sleep>>>,
}

impl Incoming {
    /// The address the listener is bound to.
    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// Accepts every connection that is ready and starts its handshake.
    fn poll_accept_ready(&mut self, cx: &mut Context<'_>) {
        if let Some(backoff) = self.backoff.as_mut() {
            if backoff.as_mut().poll(cx).is_pending() {
                return;
            }
            self.backoff = None;
        }
        while self.handshakes.len() < MAX_PENDING_HANDSHAKES {
            match self.listener.poll_accept(cx) {
                Poll::Ready(Ok((tcp, remote))) => {
                    let state = self.state.borrow().clone();
                    let span = tracing::info_span!("tls", remote = %remote);
                    self.handshakes
                        .spawn(handshake(tcp, remote, state).instrument(span));
                }
                Poll::Ready(Err(e)) if is_per_connection_error(&e) => {
                    tracing::debug!(target: "tls", error = %e, "accept failed");
                }
                Poll::Ready(Err(e)) => {
                    tracing::warn!(target: "tls", error = %e, "accept failed; pausing");
                    let mut sleep = Box::pin(tokio::time::sleep(ACCEPT_ERROR_BACKOFF));
                    // Registers the waker for the end of the pause.
                    if sleep.as_mut().poll(cx).is_pending() {
                        self.backoff = Some(sleep);
                        return;
                    }
                }
                Poll::Pending => return,
            }
        }
    }
}

impl Stream for Incoming {
    type Item = Result<PeerStream, io::Error>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = self.get_mut();
        this.poll_accept_ready(cx);
        loop {
            match this.handshakes.poll_join_next(cx) {
                Poll::Ready(Some(Ok(Some(stream)))) => return Poll::Ready(Some(Ok(stream))),
                Poll::Ready(Some(Ok(None))) => {}
                Poll::Ready(Some(Err(e))) => {
                    if e.is_panic() {
                        tracing::error!(target: "tls", error = %e, "handshake task panicked");
                    }
                }
                // Nothing in flight: the listener (or the back-off timer) has
                // registered the waker.
                Poll::Ready(None) | Poll::Pending => return Poll::Pending,
            }
            // A handshake finished: there may be room to accept again.
            this.poll_accept_ready(cx);
        }
    }
}

impl fmt::Debug for Incoming {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Incoming")
            .field("local_addr", &self.listener.local_addr().ok())
            .field("handshakes", &self.handshakes.len())
            .finish()
    }
}

fn is_per_connection_error(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::ConnectionAborted
            | io::ErrorKind::ConnectionReset
            | io::ErrorKind::ConnectionRefused
            | io::ErrorKind::Interrupted
            | io::ErrorKind::WouldBlock
    )
}

/// One handshake: TLS with the current config, then the role decision
/// against the pin set as it is *now* (it may have changed mid-handshake).
async fn handshake(
    tcp: TcpStream,
    remote: SocketAddr,
    state: Arc<ServerState>,
) -> Option<PeerStream> {
    // Best effort: latency of small Raft messages matters more than packets.
    let _ = tcp.set_nodelay(true);
    let acceptor = tokio_rustls::TlsAcceptor::from(state.config.clone());
    let tls = match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
        Err(_) => {
            tracing::info!(target: "tls", timeout_s = HANDSHAKE_TIMEOUT.as_secs(), "TLS handshake timed out");
            return None;
        }
        Ok(Err(e)) => {
            log_handshake_error(&e);
            return None;
        }
        Ok(Ok(tls)) => tls,
    };
    let certs = tls.get_ref().1.peer_certificates().unwrap_or_default();
    let Some((leaf, intermediates)) = certs.split_first() else {
        tracing::warn!(target: "tls", reason = "no client certificate", "connection refused");
        return None;
    };
    match state
        .verifier
        .classify(leaf, intermediates, UnixTime::now())
    {
        Ok(role) => {
            let thumbprint = super::thumbprint_of_der(leaf);
            tracing::debug!(target: "tls", thumbprint = %thumbprint.short(), %role, "connection accepted");
            Some(PeerStream {
                inner: tls,
                identity: PeerIdentity {
                    role,
                    thumbprint,
                    remote_addr: remote,
                },
            })
        }
        Err(refusal) => {
            tracing::warn!(
                target: "tls",
                thumbprint = %refusal.thumbprint.short(),
                reason = %refusal.reason,
                "client certificate refused after the handshake (pin set changed)"
            );
            None
        }
    }
}

fn log_handshake_error(e: &io::Error) {
    let rustls_error = e
        .get_ref()
        .and_then(|inner| inner.downcast_ref::<rustls::Error>());
    match rustls_error {
        // Already logged with thumbprint and reason by the verifier.
        Some(rustls::Error::InvalidCertificate(_)) => {
            tracing::debug!(target: "tls", error = %e, "TLS handshake failed");
        }
        Some(rustls::Error::NoCertificatesPresented) => {
            tracing::warn!(target: "tls", reason = "no client certificate", "connection refused");
        }
        _ => tracing::debug!(target: "tls", error = %e, "TLS handshake failed"),
    }
}

/// A verified, established server-side TLS connection and who is on the
/// other end. Implements tonic's `Connected` with `ConnectInfo =
/// PeerIdentity`, which tonic inserts into every request's extensions.
pub struct PeerStream {
    inner: tokio_rustls::server::TlsStream<TcpStream>,
    identity: PeerIdentity,
}

impl PeerStream {
    /// The verified identity of the client.
    pub fn identity(&self) -> &PeerIdentity {
        &self.identity
    }

    /// The negotiated ALPN protocol, if any.
    pub fn alpn_protocol(&self) -> Option<&[u8]> {
        self.inner.get_ref().1.alpn_protocol()
    }
}

impl fmt::Debug for PeerStream {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PeerStream")
            .field("identity", &self.identity)
            .finish()
    }
}

impl tonic::transport::server::Connected for PeerStream {
    type ConnectInfo = PeerIdentity;

    fn connect_info(&self) -> PeerIdentity {
        self.identity.clone()
    }
}

impl AsyncRead for PeerStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_read(cx, buf)
    }
}

impl AsyncWrite for PeerStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}
