//! Calls of Tern's integration contract that a coordinator makes to its
//! own region's control plane (see docs/integration-contract.md): which
//! configurations the region holds, installing the federation's public
//! handover keys, marking agents `MovedToPeer`, and installing the other
//! regions' federation pins. The coordinator
//! authenticates with its transport certificate; the region's server
//! certificate is checked against the probe CA bundle.

use std::collections::BTreeSet;
use std::path::Path;
use std::time::Duration;

use anyhow::Context;
use serde::{Deserialize, Serialize};

/// `GET`: the configurations the region holds (content hashes).
pub const CONFIGS: &str = "/tern/v1/configs";
/// `PUT`: the federation's public handover keys.
pub const HANDOVER_KEYS: &str = "/tern/v1/handover/keys";
/// `POST`: agents attached elsewhere, to mark `MovedToPeer <target>`.
pub const MOVED: &str = "/tern/v1/agents/moved";
/// `PUT`: the federation pins of named peers.
pub const FEDERATION_PINS: &str = "/tern/v1/federation/pins";

/// One federation peer's pins, as installed in a control plane.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct PeerPins {
    /// The peer region's name (its federation peer entry).
    pub name: String,
    /// SHA-256 thumbprints (lowercase hex) of the client certificates the
    /// peer may present; replaces the entry's pins.
    pub pinned_thumbprints: Vec<String>,
}

/// Body of [`FEDERATION_PINS`].
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PinsRequest {
    pub peers: Vec<PeerPins>,
}

/// Answer of [`FEDERATION_PINS`] (`200`): which named peers were updated,
/// and which have no federation peer entry in that region (not added: an
/// entry needs its secret, which Tern never handles).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PinsResponse {
    pub updated: Vec<String>,
    pub unknown: Vec<String>,
}

/// Answer of [`CONFIGS`].
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConfigsResponse {
    pub content_hashes: BTreeSet<String>,
}

/// One public handover key.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct PublicKey {
    pub region: String,
    pub key_id: String,
    /// Ed25519 public key, lowercase hex.
    pub public_key: String,
}

/// Body of [`HANDOVER_KEYS`].
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeysRequest {
    pub keys: Vec<PublicKey>,
}

/// One agent moved to a peer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MovedAgent {
    pub agent_id: String,
    pub target: String,
    pub epoch: u64,
}

/// Body of [`MOVED`].
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct MovedRequest {
    pub agents: Vec<MovedAgent>,
}

/// A client of this region's control plane.
#[derive(Clone)]
pub struct RegionClient {
    http: reqwest::Client,
    base: String,
}

impl std::fmt::Debug for RegionClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RegionClient")
            .field("base", &self.base)
            .finish_non_exhaustive()
    }
}

impl RegionClient {
    /// A client of `base` (`https://host:port`) presenting `cert`+`key`
    /// and trusting `ca` for the server.
    pub fn new(base: &str, ca: &Path, cert: &Path, key: &Path) -> anyhow::Result<RegionClient> {
        let ca_pem = std::fs::read(ca).with_context(|| format!("reading {}", ca.display()))?;
        let mut identity =
            std::fs::read(cert).with_context(|| format!("reading {}", cert.display()))?;
        identity.push(b'\n');
        identity.extend(std::fs::read(key).with_context(|| format!("reading {}", key.display()))?);
        let mut builder = reqwest::Client::builder()
            .use_rustls_tls()
            .tls_built_in_root_certs(false)
            .timeout(Duration::from_secs(10))
            .identity(
                reqwest::Identity::from_pem(&identity)
                    .context("the coordinator certificate and key")?,
            );
        for c in reqwest::Certificate::from_pem_bundle(&ca_pem).context("the probe CA bundle")? {
            builder = builder.add_root_certificate(c);
        }
        Ok(RegionClient {
            http: builder.build().context("building the region client")?,
            base: base.trim_end_matches('/').to_string(),
        })
    }

    pub async fn configs(&self) -> anyhow::Result<ConfigsResponse> {
        let r = self
            .http
            .get(format!("{}{CONFIGS}", self.base))
            .send()
            .await?
            .error_for_status()?;
        Ok(r.json().await?)
    }

    pub async fn install_keys(&self, keys: &KeysRequest) -> anyhow::Result<()> {
        self.http
            .put(format!("{}{HANDOVER_KEYS}", self.base))
            .json(keys)
            .send()
            .await?
            .error_for_status()?;
        Ok(())
    }

    pub async fn install_federation_pins(
        &self,
        pins: &PinsRequest,
    ) -> anyhow::Result<PinsResponse> {
        let r = self
            .http
            .put(format!("{}{FEDERATION_PINS}", self.base))
            .json(pins)
            .send()
            .await?
            .error_for_status()?;
        Ok(r.json().await?)
    }

    pub async fn mark_moved(&self, moved: &MovedRequest) -> anyhow::Result<()> {
        self.http
            .post(format!("{}{MOVED}", self.base))
            .json(moved)
            .send()
            .await?
            .error_for_status()?;
        Ok(())
    }
}
