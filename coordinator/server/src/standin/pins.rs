//! `PUT /tern/v1/federation/pins` (Tern contract; coordinator certificate)
//! as the stand-in serves it: the region's coordinator installs the
//! federation pins of named peers. The pins of each named peer entry are
//! replaced; its inbound secret is kept; a name with no peer entry is
//! answered as `unknown` and not added (an entry needs a secret, which
//! Tern never handles). Peers not named are left as they are.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use tern_core::{RegionName, Thumbprint};

use super::handover::{refuse, require_coordinator};
use super::region::ClientLeaf;
use super::state::Shared;
use crate::agents::contract::{PinsRequest, PinsResponse};

/// Tern contract path.
pub(crate) const PINS: &str = crate::agents::contract::FEDERATION_PINS;

/// The request, checked: every name a region name, named once, with at
/// least one thumbprint, every thumbprint SHA-256 hex.
fn parse(req: PinsRequest) -> Result<BTreeMap<RegionName, BTreeSet<Thumbprint>>, String> {
    let mut out = BTreeMap::new();
    for (i, p) in req.peers.into_iter().enumerate() {
        let name: RegionName = p
            .name
            .parse()
            .map_err(|e| format!("peers[{i}].name: {e}"))?;
        if p.pinned_thumbprints.is_empty() {
            return Err(format!("peers[{i}].pinned_thumbprints: at least one"));
        }
        let mut pins = BTreeSet::new();
        for (k, t) in p.pinned_thumbprints.iter().enumerate() {
            pins.insert(
                t.parse::<Thumbprint>()
                    .map_err(|e| format!("peers[{i}].pinned_thumbprints[{k}]: {e}"))?,
            );
        }
        if out.insert(name.clone(), pins).is_some() {
            return Err(format!("peers[{i}].name: {name} is named twice"));
        }
    }
    Ok(out)
}

pub(crate) async fn install_pins(
    State(shared): State<Arc<Shared>>,
    Extension(leaf): Extension<ClientLeaf>,
    Json(req): Json<PinsRequest>,
) -> Response {
    if let Err(r) = require_coordinator(&shared, &leaf) {
        return *r;
    }
    let wanted = match parse(req) {
        Ok(w) => w,
        Err(e) => return refuse(StatusCode::BAD_REQUEST, e),
    };
    let (updated, unknown) = shared.replace_peer_pins(&wanted);
    for name in &updated {
        let pins = wanted
            .get(name)
            .map(|p| p.iter().map(|t| t.short()).collect::<Vec<_>>().join(","))
            .unwrap_or_default();
        tracing::info!(peer = %name, pins = %pins, "federation pins installed");
    }
    if !unknown.is_empty() {
        tracing::warn!(unknown = ?unknown.iter().map(|n| n.as_str()).collect::<Vec<_>>(),
            "federation pins for peers with no peer entry were not installed");
    }
    (
        StatusCode::OK,
        Json(PinsResponse {
            updated: updated.iter().map(|n| n.to_string()).collect(),
            unknown: unknown.iter().map(|n| n.to_string()).collect(),
        }),
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::agents::contract::PeerPins;

    const TP: &str = "3f1c0000000000000000000000000000000000000000000000000000000000aa";

    // Property: a request naming a peer twice, with no thumbprint, or with
    // a thumbprint that is not SHA-256 hex is refused and names the field.
    #[test]
    fn malformed_requests_name_the_field() {
        let req = |peers: Vec<(&str, Vec<&str>)>| PinsRequest {
            peers: peers
                .into_iter()
                .map(|(n, t)| PeerPins {
                    name: n.into(),
                    pinned_thumbprints: t.into_iter().map(String::from).collect(),
                })
                .collect(),
        };
        assert!(parse(req(vec![("us", vec![TP])])).is_ok());
        for (bad, field) in [
            (
                req(vec![("us", vec![TP]), ("us", vec![TP])]),
                "peers[1].name",
            ),
            (req(vec![("us", vec![])]), "peers[0].pinned_thumbprints"),
            (
                req(vec![("us", vec!["abc"])]),
                "peers[0].pinned_thumbprints[0]",
            ),
            (req(vec![("Not A Label", vec![TP])]), "peers[0].name"),
        ] {
            let e = parse(bad).expect_err("refused");
            assert!(e.starts_with(field), "{e}");
        }
    }
}
