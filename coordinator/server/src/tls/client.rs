//! The dialing side of the mTLS transport: hot-swappable rustls
//! `ClientConfig`s (`TlsClient`, in a `watch` channel), the tower connector
//! tonic uses to dial TCP then TLS (`TlsConnector`), and long-lived tonic
//! channels with WAN-friendly HTTP/2 settings (`channel`). Two flavours:
//! coordinator to coordinator (server pinned by thumbprint, no name check)
//! and admin CLI (standard webpki verification including the host name or
//! IP). It must not decide trust (see `verify`) and must not create a
//! channel per request.

use std::fmt;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use http::Uri;
use hyper_util::rt::TokioIo;
use rustls::client::{Resumption, WebPkiServerVerifier};
use rustls::pki_types::ServerName;
use rustls::ClientConfig;
use tern_core::Thumbprint;
use tokio::net::TcpStream;
use tokio::sync::watch;

use super::verify::PinnedServerVerifier;
use super::{provider, CaBundle, Identity, PinSet, TlsError, TlsFiles, ALPN_H2};

/// How a client verifies the servers it dials.
#[derive(Clone, Debug)]
enum ClientKind {
    /// Coordinator to coordinator: chain to the cluster CA + pinned.
    Peer { pins: PinSet },
    /// Admin CLI: webpki, with host name / IP matching.
    Admin,
}

struct ClientState {
    config: Arc<ClientConfig>,
    thumbprint: Thumbprint,
}

/// Client-side TLS material that can be swapped at run time; connections
/// dialed after a `reload` use the new material. Clones share the material:
/// a reload through one is seen by all.
#[derive(Clone)]
pub struct TlsClient {
    state: watch::Sender<Arc<ClientState>>,
    kind: ClientKind,
}

impl TlsClient {
    /// Coordinator to coordinator: presents `files.cert`, verifies servers
    /// against `files.ca` and requires their thumbprint in `pins`
    /// (`files.admin_ca` is not used by a client).
    pub fn new_peer(files: &TlsFiles, pins: PinSet) -> Result<TlsClient, TlsError> {
        let ca = CaBundle::load(&files.ca)?;
        let identity = Identity::load(&files.cert, &files.key)?;
        TlsClient::peer_from_parts(&ca, &identity, pins)
    }

    /// Like [`TlsClient::new_peer`], from material in memory. Does not
    /// check that `identity` is currently valid.
    pub fn peer_from_parts(
        cluster_ca: &CaBundle,
        identity: &Identity,
        pins: PinSet,
    ) -> Result<TlsClient, TlsError> {
        let kind = ClientKind::Peer { pins };
        TlsClient::build(kind, cluster_ca, identity)
    }

    /// Admin CLI: presents the admin certificate, verifies the server
    /// against `ca` including its host name or IP (from the address dialed).
    pub fn new_admin(
        ca: &std::path::Path,
        cert: &std::path::Path,
        key: &std::path::Path,
    ) -> Result<TlsClient, TlsError> {
        let ca = CaBundle::load(ca)?;
        let identity = Identity::load(cert, key)?;
        TlsClient::admin_from_parts(&ca, &identity)
    }

    /// Like [`TlsClient::new_admin`], from material in memory.
    pub fn admin_from_parts(ca: &CaBundle, identity: &Identity) -> Result<TlsClient, TlsError> {
        TlsClient::build(ClientKind::Admin, ca, identity)
    }

    fn build(kind: ClientKind, ca: &CaBundle, identity: &Identity) -> Result<TlsClient, TlsError> {
        let state = build_state(&kind, ca, identity)?;
        let (state, _) = watch::channel(Arc::new(state));
        Ok(TlsClient { state, kind })
    }

    /// Re-reads `files.ca`, `files.cert` and `files.key`; connections dialed
    /// from now on use them (the pin set, for a peer client, is unchanged
    /// and shared). On error the current material stays in use.
    pub fn reload(&self, files: &TlsFiles) -> Result<(), TlsError> {
        let ca = CaBundle::load(&files.ca)?;
        let identity = Identity::load(&files.cert, &files.key)?;
        self.reload_parts(&ca, &identity)
    }

    /// Like [`TlsClient::reload`], from material in memory.
    pub fn reload_parts(&self, ca: &CaBundle, identity: &Identity) -> Result<(), TlsError> {
        let state = build_state(&self.kind, ca, identity)?;
        tracing::info!(
            target: "tls",
            thumbprint = %state.thumbprint.short(),
            "client TLS material reloaded"
        );
        self.state.send_replace(Arc::new(state));
        Ok(())
    }

    /// Thumbprint of the certificate this client presents.
    pub fn thumbprint(&self) -> Thumbprint {
        self.state.borrow().thumbprint
    }

    /// The current rustls configuration.
    pub fn config(&self) -> Arc<ClientConfig> {
        self.state.borrow().config.clone()
    }

    /// Dials `addr` (host:port) on a fresh connection with the current
    /// material (pin check included) and returns the thumbprint of the
    /// certificate the server presented. For confirming what a peer
    /// presents during a rotation; the connection is closed at once.
    pub async fn handshake(&self, addr: &str) -> io::Result<Thumbprint> {
        let uri: Uri = format!("http://{addr}")
            .parse()
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, format!("{addr}: {e}")))?;
        let conn = connect(self.config(), uri).await?;
        let (_, session) = conn.inner().get_ref();
        let leaf = session
            .peer_certificates()
            .and_then(|c| c.first())
            .ok_or_else(|| io::Error::other("the server presented no certificate"))?;
        Ok(super::thumbprint_of_der(leaf))
    }

    /// A connector for `Endpoint::connect_with_connector_lazy`; it follows
    /// later reloads.
    pub fn connector(&self) -> TlsConnector {
        TlsConnector {
            state: self.state.subscribe(),
        }
    }
}

impl fmt::Debug for TlsClient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TlsClient")
            .field("kind", &self.kind)
            .field("thumbprint", &self.thumbprint().short())
            .finish()
    }
}

fn build_state(
    kind: &ClientKind,
    ca: &CaBundle,
    identity: &Identity,
) -> Result<ClientState, TlsError> {
    let builder = ClientConfig::builder_with_provider(Arc::new(provider()))
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(TlsError::config)?;
    let builder = match kind {
        ClientKind::Peer { pins } => {
            builder
                .dangerous()
                .with_custom_certificate_verifier(Arc::new(PinnedServerVerifier::new(
                    ca,
                    pins.clone(),
                )?))
        }
        ClientKind::Admin => builder.with_webpki_verifier(
            WebPkiServerVerifier::builder_with_provider(ca.root_store()?, Arc::new(provider()))
                .build()
                .map_err(TlsError::config)?,
        ),
    };
    let mut config = builder
        .with_client_auth_cert(identity.chain().to_vec(), identity.key())
        .map_err(TlsError::config)?;
    config.alpn_protocols = vec![ALPN_H2.to_vec()];
    // Every connection verifies the server against the current pin set.
    config.resumption = Resumption::disabled();
    Ok(ClientState {
        config: Arc::new(config),
        thumbprint: identity.thumbprint(),
    })
}

/// A tower `Service<Uri>` that dials `host:port` over TCP, then TLS with the
/// client's current configuration. The TLS server name is the URI's host
/// (DNS name or IP); for peer clients it is not checked against the
/// certificate (the pin is), for admin clients it is.
#[derive(Clone)]
pub struct TlsConnector {
    state: watch::Receiver<Arc<ClientState>>,
}

/// What [`TlsConnector`] yields: a client TLS stream adapted to hyper.
pub type TlsConnection = TokioIo<tokio_rustls::client::TlsStream<TcpStream>>;

impl TlsConnector {
    /// Dials `uri` (`http://host:port`) and completes the TLS handshake.
    pub async fn connect(&self, uri: &Uri) -> io::Result<TlsConnection> {
        let config = self.state.borrow().config.clone();
        connect(config, uri.clone()).await
    }
}

impl fmt::Debug for TlsConnector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TlsConnector")
            .field("thumbprint", &self.state.borrow().thumbprint.short())
            .finish()
    }
}

impl tower::Service<Uri> for TlsConnector {
    type Response = TlsConnection;
    type Error = io::Error;
    type Future = Pin<Box<dyn Future<Output = io::Result<TlsConnection>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, uri: Uri) -> Self::Future {
        let config = self.state.borrow().config.clone();
        Box::pin(connect(config, uri))
    }
}

async fn connect(config: Arc<ClientConfig>, uri: Uri) -> io::Result<TlsConnection> {
    let invalid = |msg: String| io::Error::new(io::ErrorKind::InvalidInput, msg);
    let host = uri
        .host()
        .ok_or_else(|| invalid(format!("no host in {uri}")))?;
    let host = host
        .trim_start_matches('[')
        .trim_end_matches(']')
        .to_string();
    let port = uri
        .port_u16()
        .ok_or_else(|| invalid(format!("no port in {uri}")))?;
    let server_name = ServerName::try_from(host.clone())
        .map_err(|e| invalid(format!("invalid server name {host:?}: {e}")))?;
    let tcp = TcpStream::connect((host.as_str(), port)).await?;
    // Best effort: latency of small Raft messages matters more than packets.
    let _ = tcp.set_nodelay(true);
    let tls = tokio_rustls::TlsConnector::from(config)
        .connect(server_name, tcp)
        .await?;
    Ok(TokioIo::new(tls))
}

/// HTTP/2 settings of a long-lived channel. Defaults suit a WAN link.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ChannelOptions {
    /// TCP connect plus TLS handshake limit. Default 5 s.
    pub connect_timeout: Duration,
    /// Per-request deadline applied by the channel; `None` (default) leaves
    /// deadlines to each call.
    pub request_timeout: Option<Duration>,
    /// HTTP/2 PING interval, also while idle. Default 10 s.
    pub keep_alive_interval: Duration,
    /// How long to wait for a PING answer before dropping the connection.
    /// Default 20 s.
    pub keep_alive_timeout: Duration,
    /// Initial HTTP/2 stream window, bytes. Default 4 MiB.
    pub stream_window: u32,
    /// Initial HTTP/2 connection window, bytes. Default 8 MiB.
    pub connection_window: u32,
}

impl Default for ChannelOptions {
    fn default() -> Self {
        ChannelOptions {
            connect_timeout: Duration::from_secs(5),
            request_timeout: None,
            keep_alive_interval: Duration::from_secs(10),
            keep_alive_timeout: Duration::from_secs(20),
            stream_window: 4 * 1024 * 1024,
            connection_window: 8 * 1024 * 1024,
        }
    }
}

/// A lazily connecting tonic channel to `addr` (`host:port`, host a DNS name
/// or an IP, IPv6 in brackets) over `client`'s TLS. Nothing is dialed until
/// the first request; the channel reconnects by itself. Must be called
/// inside a tokio runtime.
pub fn channel(
    client: &TlsClient,
    addr: &str,
    opts: ChannelOptions,
) -> Result<tonic::transport::Channel, TlsError> {
    let bad = |detail: &str| TlsError::Address {
        addr: addr.to_string(),
        detail: detail.to_string(),
    };
    if addr.contains("://") || addr.contains('/') {
        return Err(bad("expected host:port without a scheme or path"));
    }
    // `http://`: TLS is done by our connector; tonic refuses `https://`
    // without its own TLS feature.
    let endpoint = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
        .map_err(|e| bad(&e.to_string()))?;
    if endpoint.uri().port_u16().is_none() {
        return Err(bad("missing port"));
    }
    let mut endpoint = endpoint
        .connect_timeout(opts.connect_timeout)
        .http2_keep_alive_interval(opts.keep_alive_interval)
        .keep_alive_timeout(opts.keep_alive_timeout)
        .keep_alive_while_idle(true)
        .initial_stream_window_size(opts.stream_window)
        .initial_connection_window_size(opts.connection_window);
    if let Some(timeout) = opts.request_timeout {
        endpoint = endpoint.timeout(timeout);
    }
    Ok(endpoint.connect_with_connector_lazy(client.connector()))
}

#[cfg(test)]
mod tests {
    use super::*;

    // Property: addresses that tonic or the connector could not dial are
    // refused up front with a message naming the address.
    #[tokio::test]
    async fn channel_refuses_bad_addresses() {
        let ca =
            crate::tls::pki::DevCa::generate("test CA", Duration::from_secs(3600)).expect("CA");
        let now = time::OffsetDateTime::now_utc();
        let node = ca
            .issue_node(
                "n1",
                &[],
                &["127.0.0.1".parse().expect("ip")],
                now - time::Duration::minutes(1),
                now + time::Duration::hours(1),
            )
            .expect("node cert");
        let identity = Identity::from_pem(&node.cert_pem, &node.key_pem).expect("identity");
        let bundle = CaBundle::from_pem(&ca.cert_pem()).expect("bundle");
        let client =
            TlsClient::peer_from_parts(&bundle, &identity, PinSet::default()).expect("client");
        for bad in [
            "http://127.0.0.1:1",
            "127.0.0.1",
            "127.0.0.1:1/x",
            "not an address:1",
        ] {
            let err =
                channel(&client, bad, ChannelOptions::default()).expect_err("bad address accepted");
            assert!(err.to_string().contains(bad), "{err}");
        }
        assert!(channel(&client, "127.0.0.1:1", ChannelOptions::default()).is_ok());
        assert!(channel(&client, "[::1]:1", ChannelOptions::default()).is_ok());
    }
}
