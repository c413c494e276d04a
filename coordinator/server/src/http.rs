//! The plain-HTTP endpoints of a coordinator: `/health/live`,
//! `/health/ready`, `/metrics`, and (unless `http.status_page = false`)
//! the status page `/status` and `/status.json` (see `status_page`). They
//! expose no secrets and change nothing, so they carry no authentication
//! (bind them where your monitoring can reach them).

use std::future::Future;
use std::sync::Arc;

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use axum::routing::get;
use axum::{Json, Router};
use tokio::net::TcpListener;

use crate::node::Coordinator;

/// Serves the HTTP endpoints until `shutdown` resolves.
pub async fn serve(
    coord: Arc<Coordinator>,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let mut app = Router::new()
        .route("/health/live", get(live))
        .route("/health/ready", get(ready))
        .route("/metrics", get(metrics));
    if coord.config.http.status_page {
        app = app.merge(crate::status_page::routes());
    }
    let app = app.with_state(coord);
    axum::serve(listener, app)
        .with_graceful_shutdown(shutdown)
        .await
}

async fn live() -> &'static str {
    "live\n"
}

/// Ready: this member knows the leader and has applied all it knows to be
/// committed.
async fn ready(State(coord): State<Arc<Coordinator>>) -> impl IntoResponse {
    let m = coord.raft.metrics().borrow().clone();
    let committed = coord.committed_index().await;
    let applied = m.last_applied.map(|l| l.index);
    let leader = m.current_leader;
    let is_ready = leader.is_some() && applied >= committed;
    let body = serde_json::json!({
        "ready": is_ready,
        "leader": leader,
        "committed_index": committed,
        "applied_index": applied,
        "reason": if leader.is_none() { "no leader known" }
                  else if applied < committed { "applying committed entries" }
                  else { "" },
    });
    let code = if is_ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (code, Json(body))
}

async fn metrics(State(coord): State<Arc<Coordinator>>) -> impl IntoResponse {
    let body = crate::metrics::render(&coord).await;
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        body,
    )
}
