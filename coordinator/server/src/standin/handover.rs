//! Tern's handover contract as the stand-in serves it (see
//! docs/integration-contract.md):
//!
//! - `GET /tern/v1/configs` (Tern contract): the configurations the region
//!   holds, by content hash.
//! - `PUT /tern/v1/handover/keys` (Tern contract; coordinator certificate):
//!   the federation's public handover keys, by region and key id.
//! - `POST /tern/v1/agents/moved` (Tern contract; coordinator certificate):
//!   mark agents `MovedToPeer <target>`.
//! - `POST /tern/v1/opamp/attach` (stand-in only): simulates an agent
//!   opening its OpAMP session, presenting its leaf, and a handover token
//!   when it comes from another region. The token is redeemed here:
//!   signature by a known key of the source, Merkle proof, target is this
//!   region, presented leaf matches the fingerprint, within its TTL, leaf
//!   chains to the token's trust bundle.
//! - `GET /tern/v1/agents/{id}` (Tern contract; the agent's own leaf): is
//!   the agent attached here.
//!
//! It owns the stand-in's handover state (keys, attachments, moved marks).
//! It never logs a token: refusals carry the agent id, a short fingerprint
//! and the reason.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use rustls::pki_types::{CertificateDer, UnixTime};
use rustls::server::danger::ClientCertVerifier;
use rustls::server::WebPkiClientVerifier;
use serde::{Deserialize, Serialize};
use tern_core::{verify_token, HandoverToken, Millis, RegionName, Thumbprint};

use super::region::ClientLeaf;
use super::state::Shared;
use crate::agents::contract::{ConfigsResponse, KeysRequest, MovedRequest};
use crate::tls::CaBundle;

/// Tern contract paths.
pub(crate) const CONFIGS: &str = crate::agents::contract::CONFIGS;
pub(crate) const KEYS: &str = crate::agents::contract::HANDOVER_KEYS;
pub(crate) const MOVED: &str = crate::agents::contract::MOVED;
/// Stand-in only: simulates an agent opening its OpAMP session.
pub const ATTACH: &str = "/tern/v1/opamp/attach";
/// An agent's attachment, asked by the agent itself.
pub const AGENT: &str = "/tern/v1/agents/{agent_id}";

/// How an agent came to be attached here.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Via {
    /// Enrolled here (its leaf chains to this region's agent CA).
    Home,
    /// Handed over from `source_region` with a token.
    Handover,
}

/// One attached agent.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Attachment {
    pub agent_id: String,
    pub attached: bool,
    pub fingerprint: String,
    pub via: Via,
    pub source_region: String,
}

/// Body of `POST /tern/v1/opamp/attach`.
#[derive(Deserialize)]
pub struct AttachRequest {
    pub agent_id: String,
    #[serde(default)]
    pub token: Option<String>,
}

/// Answer of a successful attach.
#[derive(Debug, Serialize, Deserialize)]
pub struct AttachResponse {
    pub attached: bool,
    pub region: String,
    pub via: Via,
}

/// An agent of this region marked as moved.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MovedMark {
    pub target: String,
    pub epoch: u64,
}

/// The stand-in's handover state.
pub(crate) struct HandoverState {
    configs: BTreeSet<String>,
    own_agents: Arc<dyn ClientCertVerifier>,
    coordinators: Option<Arc<dyn ClientCertVerifier>>,
    inner: Mutex<Inner>,
}

#[derive(Default)]
struct Inner {
    keys: BTreeMap<(RegionName, String), Vec<u8>>,
    attached: BTreeMap<String, Attachment>,
    moved: BTreeMap<String, MovedMark>,
    redeemed: u64,
    refused: u64,
}

/// Counters and marks, for the control API and tests.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct HandoverStatus {
    pub keys: usize,
    pub attached_home: usize,
    pub attached_handover: usize,
    pub redeemed: u64,
    pub refused: u64,
    pub moved: BTreeMap<String, MovedMark>,
}

fn verifier(ca: &CaBundle) -> Result<Arc<dyn ClientCertVerifier>, String> {
    WebPkiClientVerifier::builder_with_provider(
        ca.root_store().map_err(|e| e.to_string())?,
        Arc::new(crate::tls::provider()),
    )
    .build()
    .map_err(|e| e.to_string())
}

impl HandoverState {
    pub(crate) fn new(
        configs: BTreeSet<String>,
        agent_ca_pem: &str,
        coordinator_ca: Option<&CaBundle>,
    ) -> Result<HandoverState, String> {
        let own = CaBundle::from_pem(agent_ca_pem).map_err(|e| e.to_string())?;
        Ok(HandoverState {
            configs,
            own_agents: verifier(&own)?,
            coordinators: coordinator_ca.map(verifier).transpose()?,
            inner: Mutex::new(Inner::default()),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub(crate) fn status(&self) -> HandoverStatus {
        let g = self.lock();
        HandoverStatus {
            keys: g.keys.len(),
            attached_home: g.attached.values().filter(|a| a.via == Via::Home).count(),
            attached_handover: g
                .attached
                .values()
                .filter(|a| a.via == Via::Handover)
                .count(),
            redeemed: g.redeemed,
            refused: g.refused,
            moved: g.moved.clone(),
        }
    }
}

pub(crate) fn refuse(status: StatusCode, message: impl Into<String>) -> Response {
    (status, Json(serde_json::json!({ "error": message.into() }))).into_response()
}

fn leaf_of(leaf: &ClientLeaf) -> Option<&CertificateDer<'static>> {
    leaf.0.as_deref()
}

fn chains(v: &dyn ClientCertVerifier, leaf: &CertificateDer<'_>) -> bool {
    v.verify_client_cert(leaf, &[], UnixTime::now()).is_ok()
}

/// The coordinator contract calls need a client certificate chaining to
/// the configured coordinator CA.
pub(crate) fn require_coordinator(shared: &Shared, leaf: &ClientLeaf) -> Result<(), Box<Response>> {
    let Some(v) = &shared.handover.coordinators else {
        return Err(Box::new(refuse(
            StatusCode::FORBIDDEN,
            "no coordinator CA is configured (handover.coordinator_ca_file)",
        )));
    };
    match leaf_of(leaf) {
        Some(l) if chains(v.as_ref(), l) => Ok(()),
        Some(_) => Err(Box::new(refuse(
            StatusCode::FORBIDDEN,
            "the client certificate does not chain to the coordinator CA",
        ))),
        None => Err(Box::new(refuse(
            StatusCode::UNAUTHORIZED,
            "a client certificate is required",
        ))),
    }
}

pub(crate) async fn configs(State(shared): State<Arc<Shared>>) -> Json<ConfigsResponse> {
    Json(ConfigsResponse {
        content_hashes: shared.handover.configs.clone(),
    })
}

pub(crate) async fn install_keys(
    State(shared): State<Arc<Shared>>,
    Extension(leaf): Extension<ClientLeaf>,
    Json(req): Json<KeysRequest>,
) -> Response {
    if let Err(r) = require_coordinator(&shared, &leaf) {
        return *r;
    }
    let mut keys = BTreeMap::new();
    for k in req.keys {
        let (Ok(region), Ok(bytes)) = (k.region.parse::<RegionName>(), hex::decode(&k.public_key))
        else {
            return refuse(StatusCode::BAD_REQUEST, format!("bad key {}", k.key_id));
        };
        if bytes.len() != 32 || tern_core::handover_key_id(&bytes) != k.key_id {
            return refuse(
                StatusCode::BAD_REQUEST,
                format!("key {} is not a 32-byte Ed25519 key with that id", k.key_id),
            );
        }
        keys.insert((region, k.key_id), bytes);
    }
    let n = keys.len();
    shared.handover.lock().keys = keys;
    tracing::info!(keys = n, "handover keys installed");
    StatusCode::NO_CONTENT.into_response()
}

pub(crate) async fn mark_moved(
    State(shared): State<Arc<Shared>>,
    Extension(leaf): Extension<ClientLeaf>,
    Json(req): Json<MovedRequest>,
) -> Response {
    if let Err(r) = require_coordinator(&shared, &leaf) {
        return *r;
    }
    let n = req.agents.len();
    let mut g = shared.handover.lock();
    for a in req.agents {
        if let Some(x) = g.attached.get_mut(&a.agent_id) {
            if x.via == Via::Home {
                x.attached = false;
            }
        }
        g.moved.insert(
            a.agent_id,
            MovedMark {
                target: a.target,
                epoch: a.epoch,
            },
        );
    }
    drop(g);
    tracing::info!(agents = n, "agents marked MovedToPeer");
    StatusCode::NO_CONTENT.into_response()
}

pub(crate) async fn attach(
    State(shared): State<Arc<Shared>>,
    Extension(leaf): Extension<ClientLeaf>,
    Json(req): Json<AttachRequest>,
) -> Response {
    let Some(leaf) = leaf_of(&leaf) else {
        return refuse(StatusCode::UNAUTHORIZED, "a client certificate is required");
    };
    let fingerprint = crate::tls::thumbprint_of_der(leaf);
    let result = match &req.token {
        None => attach_home(&shared, leaf, &req.agent_id),
        Some(t) => attach_handover(&shared, leaf, fingerprint, &req.agent_id, t),
    };
    let mut g = shared.handover.lock();
    match result {
        Ok(att) => {
            let via = att.via;
            if via == Via::Handover {
                g.redeemed += 1;
            } else {
                g.moved.remove(&req.agent_id);
            }
            g.attached.insert(req.agent_id.clone(), att);
            drop(g);
            tracing::debug!(agent_id = %req.agent_id, fingerprint = %fingerprint.short(), ?via, "agent attached");
            Json(AttachResponse {
                attached: true,
                region: shared.region.to_string(),
                via,
            })
            .into_response()
        }
        Err(reason) => {
            g.refused += 1;
            drop(g);
            tracing::info!(agent_id = %req.agent_id, fingerprint = %fingerprint.short(), reason = %reason, "agent refused");
            refuse(StatusCode::FORBIDDEN, reason)
        }
    }
}

fn attach_home(
    shared: &Shared,
    leaf: &CertificateDer<'_>,
    agent_id: &str,
) -> Result<Attachment, String> {
    if !chains(shared.handover.own_agents.as_ref(), leaf) {
        return Err(
            "the leaf does not chain to this region's agent CA and no token was given".into(),
        );
    }
    if !crate::tls::agent_names_of(leaf.as_ref())
        .iter()
        .any(|n| n == agent_id)
    {
        return Err(format!("the leaf does not name agent {agent_id:?}"));
    }
    Ok(Attachment {
        agent_id: agent_id.to_string(),
        attached: true,
        fingerprint: crate::tls::thumbprint_of_der(leaf).to_string(),
        via: Via::Home,
        source_region: shared.region.to_string(),
    })
}

fn attach_handover(
    shared: &Shared,
    leaf: &CertificateDer<'_>,
    fingerprint: Thumbprint,
    agent_id: &str,
    token: &str,
) -> Result<Attachment, String> {
    let token = HandoverToken::decode(token).map_err(|e| format!("token: {e}"))?;
    let now = Millis(crate::proposer::now_ms().0);
    let keys = shared.handover.lock().keys.clone();
    let accepted = verify_token(
        &token,
        |region, key_id| {
            keys.get(&(region.clone(), key_id.to_string()))
                .map(|k| k.as_slice())
        },
        &fingerprint,
        &shared.region,
        now,
    )
    .map_err(|e| format!("token refused: {e}"))?;
    if accepted.agent_id != agent_id {
        return Err(format!(
            "the token is for agent {:?}, not {agent_id:?}",
            accepted.agent_id
        ));
    }
    let bundle =
        CaBundle::from_pem(&token.trust_bundle_pem).map_err(|e| format!("trust bundle: {e}"))?;
    if !chains(verifier(&bundle)?.as_ref(), leaf) {
        return Err("the leaf does not chain to the source region's trust bundle".into());
    }
    Ok(Attachment {
        agent_id: agent_id.to_string(),
        attached: true,
        fingerprint: fingerprint.to_string(),
        via: Via::Handover,
        source_region: token.header.source.to_string(),
    })
}

pub(crate) async fn agent(
    State(shared): State<Arc<Shared>>,
    Extension(leaf): Extension<ClientLeaf>,
    Path(agent_id): Path<String>,
) -> Response {
    let Some(leaf) = leaf_of(&leaf) else {
        return refuse(StatusCode::UNAUTHORIZED, "a client certificate is required");
    };
    let fingerprint = crate::tls::thumbprint_of_der(leaf).to_string();
    let att = shared.handover.lock().attached.get(&agent_id).cloned();
    match att {
        Some(a) if a.fingerprint != fingerprint => {
            refuse(StatusCode::FORBIDDEN, "only the agent itself may ask")
        }
        Some(a) if a.attached => Json(a).into_response(),
        _ => refuse(StatusCode::NOT_FOUND, "not attached"),
    }
}
