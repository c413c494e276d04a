//! The HTTPS side of the stand-in: one task that owns the listener and
//! every connection, and applies the `down` mode the way a dead process
//! would look from outside: the listener is closed (new connections are
//! refused) and every live connection is cut; leaving `down` binds the same
//! address again. Each connection gets a TLS handshake (bounded in time)
//! and is then served as HTTP/1.1 or HTTP/2 by the region router, with the client's
//! leaf certificate in the request extensions.
//!
//! It must not decide what a request gets (the router does) and never logs
//! certificates beyond their short thumbprints.

use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::Router;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinSet;
use tokio_rustls::TlsAcceptor;
use tower::ServiceExt;

use super::mode::Mode;
use super::region::ClientLeaf;
use super::state::{wait_stopped, Applied, Desired, Shared};

/// How long a client may take to complete the TLS handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Pause before trying to bind again after leaving `down` failed.
const REBIND_RETRY: Duration = Duration::from_millis(200);
/// Pause after an accept error (e.g. out of file descriptors).
const ACCEPT_ERROR_BACKOFF: Duration = Duration::from_millis(50);

/// Runs the HTTPS side until `shared` is stopped.
pub(crate) async fn run(
    shared: Arc<Shared>,
    listener: TcpListener,
    acceptor: TlsAcceptor,
    router: Router,
) {
    let addr = shared.https_addr;
    let mut listener = Some(listener);
    let mut desired_rx = shared.subscribe_desired();
    let mut stop = shared.subscribe_stop();
    let mut conns: JoinSet<()> = JoinSet::new();
    let mut retry: Option<Pin<Box<tokio::time::Sleep>>> = None;
    let mut reconcile = true;
    let mut backoff = false;

    loop {
        if reconcile {
            reconcile = false;
            let desired: Desired = *desired_rx.borrow_and_update();
            let mut error = None;
            if desired.mode == Mode::Down {
                retry = None;
                if listener.take().is_some() {
                    let n = conns.len();
                    cut_all(&mut conns).await;
                    shared.stats.dropped(u64::try_from(n).unwrap_or(u64::MAX));
                    tracing::info!(%addr, dropped = n, "down: listener closed, connections cut");
                }
            } else if listener.is_none() {
                match TcpListener::bind(addr).await {
                    Ok(l) => {
                        listener = Some(l);
                        retry = None;
                        tracing::info!(%addr, mode = %desired.mode, "listening again");
                    }
                    Err(e) => {
                        tracing::warn!(%addr, error = %e, "cannot listen again; retrying");
                        error = Some(format!("cannot listen on {addr} again: {e}"));
                        retry = Some(Box::pin(tokio::time::sleep(REBIND_RETRY)));
                    }
                }
            }
            shared.publish_applied(Applied {
                seq: desired.seq,
                listening: listener.is_some(),
                error,
            });
        }

        tokio::select! {
            () = wait_stopped(&mut stop) => break,
            changed = desired_rx.changed() => {
                if changed.is_err() {
                    break;
                }
                reconcile = true;
            }
            () = sleep_opt(&mut retry) => {
                retry = None;
                reconcile = true;
            }
            accepted = accept(listener.as_ref()) => match accepted {
                Ok((tcp, remote)) => {
                    shared.stats.accepted();
                    conns.spawn(connection(
                        tcp,
                        remote,
                        acceptor.clone(),
                        router.clone(),
                        shared.clone(),
                    ));
                }
                Err(e) => {
                    tracing::debug!(error = %e, "accept failed");
                    backoff = true;
                }
            },
            Some(_) = conns.join_next(), if !conns.is_empty() => {}
        }
        if std::mem::take(&mut backoff) {
            tokio::time::sleep(ACCEPT_ERROR_BACKOFF).await;
        }
    }
    drop(listener);
    cut_all(&mut conns).await;
    tracing::debug!(%addr, "HTTPS listener stopped");
}

/// Aborts every connection task and waits until each is gone (its socket
/// closed).
async fn cut_all(conns: &mut JoinSet<()>) {
    conns.abort_all();
    while conns.join_next().await.is_some() {}
}

async fn accept(listener: Option<&TcpListener>) -> std::io::Result<(TcpStream, SocketAddr)> {
    match listener {
        Some(l) => l.accept().await,
        None => std::future::pending().await,
    }
}

/// Waits for the sleep if there is one, forever otherwise.
async fn sleep_opt(sleep: &mut Option<Pin<Box<tokio::time::Sleep>>>) {
    match sleep.as_mut() {
        Some(s) => s.as_mut().await,
        None => std::future::pending().await,
    }
}

/// One connection: TLS handshake, then HTTP until either side closes.
async fn connection(
    tcp: TcpStream,
    remote: SocketAddr,
    acceptor: TlsAcceptor,
    router: Router,
    shared: Arc<Shared>,
) {
    let tls = match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
        Ok(Ok(tls)) => tls,
        Ok(Err(e)) => {
            shared.stats.handshake_failed();
            tracing::debug!(%remote, error = %e, "TLS handshake failed");
            return;
        }
        Err(_) => {
            shared.stats.handshake_failed();
            tracing::debug!(%remote, "TLS handshake timed out");
            return;
        }
    };
    let leaf = ClientLeaf(
        tls.get_ref()
            .1
            .peer_certificates()
            .and_then(|chain| chain.first())
            .map(|c| Arc::new(c.clone().into_owned())),
    );
    let service = hyper::service::service_fn(move |mut req: hyper::Request<Incoming>| {
        req.extensions_mut().insert(leaf.clone());
        router.clone().oneshot(req.map(Body::new))
    });
    // HTTP/1.1 or HTTP/2, whichever the client speaks (ALPN offers both).
    // The timers enable hyper's limits on reading request headers and on
    // HTTP/2 keep-alive.
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder.http1().timer(TokioTimer::new());
    builder.http2().timer(TokioTimer::new());
    if let Err(e) = builder.serve_connection(TokioIo::new(tls), service).await {
        tracing::debug!(%remote, error = %e, "connection ended with an error");
    }
}
