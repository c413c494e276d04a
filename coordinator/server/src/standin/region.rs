//! The region endpoints the stand-in serves over HTTPS, as an axum
//! `Router`: Ampora's documented `/health/live`, `/health/ready`,
//! `/pki/trust-bundle.pem` and `/api/federation/ping`, behind a layer that
//! applies the fault mode (`unavailable`: 503; `slow`: answer late) and
//! counts every request. The client certificate of the connection arrives
//! in the request extensions as a `ClientLeaf`.
//!
//! It must not accept connections (the listener does) nor log a secret:
//! ping log lines carry the peer, a short thumbprint and the outcome only.

use std::sync::Arc;
use std::time::SystemTime;

use axum::extract::{Request, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use axum::{Extension, Json, Router};
use rustls::pki_types::CertificateDer;

use super::mode::Mode;
use super::ping::{self, PingResponse, SECRET_HEADER};
use super::state::Shared;

/// `GET`: 200 `live` while the process runs (Ampora's liveness).
pub const LIVE: &str = "/health/live";
/// `GET`: 200 `ready` when the region serves (Ampora's readiness).
pub const READY: &str = "/health/ready";
/// `GET`, no authentication: the region's agent CA certificates, PEM.
pub const TRUST_BUNDLE: &str = "/pki/trust-bundle.pem";
/// `GET`: Ampora's federation link check (client certificate + secret).
pub const FEDERATION_PING: &str = "/api/federation/ping";

/// Key under which requests to unknown paths are counted.
const OTHER: &str = "other";

/// The leaf certificate the client presented in the TLS handshake, if any.
#[derive(Debug, Clone, Default)]
pub(crate) struct ClientLeaf(pub(crate) Option<Arc<CertificateDer<'static>>>);

/// The region endpoints with the fault layer.
pub(crate) fn router(shared: Arc<Shared>) -> Router {
    Router::new()
        .route(LIVE, get(live))
        .route(READY, get(ready))
        .route(TRUST_BUNDLE, get(trust_bundle))
        .route(FEDERATION_PING, get(federation_ping))
        .route(super::handover::CONFIGS, get(super::handover::configs))
        .route(super::handover::KEYS, put(super::handover::install_keys))
        .route(super::handover::MOVED, post(super::handover::mark_moved))
        .route(super::pins::PINS, put(super::pins::install_pins))
        .route(super::handover::ATTACH, post(super::handover::attach))
        .route(super::handover::AGENT, get(super::handover::agent))
        .fallback(not_found)
        .layer(middleware::from_fn_with_state(shared.clone(), faults))
        .with_state(shared)
}

/// Applies the mode to every request, then counts it with its answer.
async fn faults(State(shared): State<Arc<Shared>>, req: Request, next: Next) -> Response {
    let endpoint: &'static str = match req.uri().path() {
        LIVE => LIVE,
        READY => READY,
        TRUST_BUNDLE => TRUST_BUNDLE,
        FEDERATION_PING => FEDERATION_PING,
        p if p.starts_with("/tern/v1/") => "tern_contract",
        _ => OTHER,
    };
    let response = match shared.mode() {
        Mode::Up => next.run(req).await,
        Mode::Slow { delay } => {
            tokio::time::sleep(delay).await;
            next.run(req).await
        }
        // `Down` is reached only by a request racing the listener closing.
        Mode::Unavailable | Mode::Down => {
            (StatusCode::SERVICE_UNAVAILABLE, "unavailable\n").into_response()
        }
    };
    shared.stats.request(endpoint, response.status().as_u16());
    response
}

async fn live() -> &'static str {
    "live\n"
}

async fn ready() -> &'static str {
    "ready\n"
}

async fn trust_bundle(State(shared): State<Arc<Shared>>) -> Response {
    (
        [(header::CONTENT_TYPE, "application/x-pem-file")],
        shared.trust_bundle_pem.clone(),
    )
        .into_response()
}

/// Always 200: the answer is in the body (see `ping::PingResponse`).
async fn federation_ping(
    State(shared): State<Arc<Shared>>,
    Extension(leaf): Extension<ClientLeaf>,
    headers: HeaderMap,
) -> Json<PingResponse> {
    let peers = shared.peers();
    let secret = headers.get(SECRET_HEADER).map(|v| v.as_bytes());
    let eval = ping::evaluate(&peers, leaf.0.as_deref(), secret, SystemTime::now());
    let thumbprint = eval
        .thumbprint
        .map(|t| t.short())
        .unwrap_or_else(|| "none".to_string());
    let peer = eval.peer.as_ref().map(|p| p.as_str()).unwrap_or("none");
    match &eval.response {
        PingResponse::Green => {
            tracing::info!(peer, thumbprint = %thumbprint, "federation ping green")
        }
        PingResponse::Red { failed } => tracing::info!(
            peer,
            thumbprint = %thumbprint,
            failed = ?failed,
            "federation ping red"
        ),
    }
    Json(eval.response)
}

async fn not_found() -> (StatusCode, &'static str) {
    (StatusCode::NOT_FOUND, "not found\n")
}
