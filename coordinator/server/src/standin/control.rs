//! The stand-in's control API, plain HTTP on its own (loopback) listener so
//! that TLS faults never block it: `GET /_standin/mode`, `POST
//! /_standin/mode` with a `ModeRequest`, and `GET /_standin/stats`. It is
//! how tests and `tern demo` make a region misbehave on purpose.
//!
//! It has no authentication: it must only ever be bound to loopback (the
//! configuration enforces that) and it exposes no key or secret.

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};

use super::mode::{Mode, ModeRequest};
use super::state::Shared;

/// `GET` the mode, `POST` a new one.
pub const MODE_PATH: &str = "/_standin/mode";
/// `GET` the region, mode and counters.
pub const STATS_PATH: &str = "/_standin/stats";

/// `GET` the handover state: keys, attachments, moved marks, counters.
pub const HANDOVER_PATH: &str = "/_standin/handover";

async fn handover(State(shared): State<Arc<Shared>>) -> Response {
    Json(shared.handover.status()).into_response()
}

pub(crate) fn router(shared: Arc<Shared>) -> Router {
    Router::new()
        .route(MODE_PATH, get(get_mode).post(post_mode))
        .route(STATS_PATH, get(stats))
        .route(HANDOVER_PATH, get(handover))
        .with_state(shared)
}

async fn get_mode(State(shared): State<Arc<Shared>>) -> Response {
    Json(shared.mode_report()).into_response()
}

/// 200 with the `ModeReport` once the mode holds; 400 for a bad request;
/// 500 with the report if the listener could not open again (the mode is
/// kept and opening is retried); 503 if the stand-in is stopping or the
/// listener did not confirm.
async fn post_mode(State(shared): State<Arc<Shared>>, body: Bytes) -> Response {
    let request: ModeRequest = match serde_json::from_slice(&body) {
        Ok(r) => r,
        Err(e) => {
            return error(
                StatusCode::BAD_REQUEST,
                format!("invalid mode request: {e}"),
            )
        }
    };
    let mode = match Mode::try_from(request) {
        Ok(m) => m,
        Err(e) => return error(StatusCode::BAD_REQUEST, e),
    };
    tracing::info!(%mode, "mode requested");
    match shared.set_mode(mode).await {
        Ok(report) if report.error.is_some() => {
            (StatusCode::INTERNAL_SERVER_ERROR, Json(report)).into_response()
        }
        Ok(report) => Json(report).into_response(),
        Err(e) => error(StatusCode::SERVICE_UNAVAILABLE, e.to_string()),
    }
}

async fn stats(State(shared): State<Arc<Shared>>) -> Response {
    Json(shared.status()).into_response()
}

fn error(code: StatusCode, message: String) -> Response {
    (code, Json(serde_json::json!({ "error": message }))).into_response()
}
