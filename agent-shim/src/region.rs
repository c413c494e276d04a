//! The HTTPS client for a region's Tern endpoints (Tern's contract, not
//! Ampora's), with mutual TLS as the agent (its own leaf) and the region's
//! server certificate verified against the configured region CA bundle:
//!
//! - `GET {base}/tern/v1/agents/{agent_id}`: is the agent attached here?
//!   200 `{"agent_id", "attached", "fingerprint", "via", "source_region"}`
//!   or 404 `{"error": "not attached"}`. The session polls it after the
//!   redirect hook ran, before reporting ATTACHED.
//! - `POST {base}/tern/v1/opamp/attach` `{"agent_id", "token"?}`: stand-in
//!   only; simulates the agent opening its OpAMP session (the fleet
//!   simulator's agents use it). 200 `{"attached", "region", "via"}`,
//!   403/400 `{"error"}`.
//!
//! It owns the wire shapes and error mapping of those two calls. It must
//! not decide what to do with the answers, and never lets the token reach
//! an error message or a log (answers are scrubbed of it).

use std::time::Duration;

use serde::Deserialize;

use crate::command::scrub_str;
use crate::identity::LeafIdentity;

/// Why a region call failed. Holds no token.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RegionError {
    /// The TLS material could not be used.
    #[error("region client TLS material: {0}")]
    Tls(String),
    /// The base URL is not a usable `https://` URL.
    #[error("region base URL {url:?}: {problem}")]
    Url {
        /// The URL.
        url: String,
        /// What is wrong.
        problem: String,
    },
    /// The request could not be sent or answered (connection refused,
    /// TLS refused, timeout).
    #[error("{0}")]
    Transport(String),
    /// The region answered with an error status.
    #[error("region answered {status}: {error}")]
    Refused {
        /// HTTP status.
        status: u16,
        /// Its `error` text (token scrubbed).
        error: String,
    },
    /// The answer did not have the expected shape.
    #[error("unexpected answer from the region: {0}")]
    Decode(String),
}

/// The answer of `GET /tern/v1/agents/{id}` when the agent is known.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct AgentAttachment {
    /// The agent.
    #[serde(default)]
    pub agent_id: String,
    /// True when its OpAMP session is attached to this region.
    #[serde(default)]
    pub attached: bool,
    /// The fingerprint of the leaf it is attached with.
    #[serde(default)]
    pub fingerprint: String,
    /// `home` or `handover`.
    #[serde(default)]
    pub via: Option<String>,
    /// For a handover: the region it came from.
    #[serde(default)]
    pub source_region: Option<String>,
}

/// The answer of `POST /tern/v1/opamp/attach`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct AttachReply {
    /// True when attached.
    pub attached: bool,
    /// The region that accepted it.
    #[serde(default)]
    pub region: String,
    /// `home` or `handover`.
    #[serde(default)]
    pub via: String,
}

/// An HTTPS client presenting the agent's leaf. Cheap to clone.
#[derive(Clone, Debug)]
pub struct RegionClient {
    http: reqwest::Client,
}

#[derive(Deserialize)]
struct ErrorBody {
    error: String,
}

impl RegionClient {
    /// A client presenting `leaf`, trusting the certificates of
    /// `region_ca_pem` (a PEM bundle) only, with `timeout` per request.
    pub fn new(
        region_ca_pem: &str,
        leaf: &LeafIdentity,
        timeout: Duration,
    ) -> Result<RegionClient, RegionError> {
        let identity = reqwest::Identity::from_pem(&leaf.combined_pem())
            .map_err(|_| RegionError::Tls("the agent leaf cannot be used".to_string()))?;
        let roots = reqwest::Certificate::from_pem_bundle(region_ca_pem.as_bytes())
            .map_err(|e| RegionError::Tls(format!("region CA bundle: {e}")))?;
        let mut builder = reqwest::Client::builder()
            .use_rustls_tls()
            .tls_built_in_root_certs(false)
            .https_only(true)
            .identity(identity)
            .timeout(timeout)
            .connect_timeout(timeout)
            .pool_idle_timeout(Duration::from_secs(5))
            .pool_max_idle_per_host(1);
        for root in roots {
            builder = builder.add_root_certificate(root);
        }
        let http = builder
            .build()
            .map_err(|e| RegionError::Tls(error_chain(&e)))?;
        Ok(RegionClient { http })
    }

    /// Whether `agent_id` is attached at the region of `base_url`:
    /// `Ok(None)` on 404.
    pub async fn agent(
        &self,
        base_url: &str,
        agent_id: &str,
    ) -> Result<Option<AgentAttachment>, RegionError> {
        let url = endpoint(base_url, &["tern", "v1", "agents", agent_id])?;
        let resp = self
            .http
            .get(url)
            .send()
            .await
            .map_err(|e| RegionError::Transport(error_chain(&e)))?;
        let status = resp.status();
        if status == reqwest::StatusCode::NOT_FOUND {
            return Ok(None);
        }
        if !status.is_success() {
            return Err(refused(resp, "").await);
        }
        resp.json::<AgentAttachment>()
            .await
            .map(Some)
            .map_err(|e| RegionError::Decode(error_chain(&e)))
    }

    /// Attaches `agent_id` at the region of `base_url` (stand-in only: the
    /// simulated agent's OpAMP connection), presenting `token` when it is
    /// not empty (a handover) and none otherwise (home).
    pub async fn attach(
        &self,
        base_url: &str,
        agent_id: &str,
        token: &str,
    ) -> Result<AttachReply, RegionError> {
        let url = endpoint(base_url, &["tern", "v1", "opamp", "attach"])?;
        let body = if token.is_empty() {
            serde_json::json!({ "agent_id": agent_id })
        } else {
            serde_json::json!({ "agent_id": agent_id, "token": token })
        };
        let resp = self
            .http
            .post(url)
            .json(&body)
            .send()
            .await
            .map_err(|e| RegionError::Transport(scrub(&error_chain(&e), token)))?;
        if !resp.status().is_success() {
            return Err(refused(resp, token).await);
        }
        let reply = resp
            .json::<AttachReply>()
            .await
            .map_err(|e| RegionError::Decode(scrub(&error_chain(&e), token)))?;
        if !reply.attached {
            return Err(RegionError::Decode(
                "the region answered 200 with attached=false".to_string(),
            ));
        }
        Ok(reply)
    }
}

fn scrub(text: &str, token: &str) -> String {
    if token.is_empty() {
        text.to_string()
    } else {
        scrub_str(text, token)
    }
}

async fn refused(resp: reqwest::Response, token: &str) -> RegionError {
    let status = resp.status().as_u16();
    let text = resp.text().await.unwrap_or_default();
    let error = serde_json::from_str::<ErrorBody>(&text)
        .map(|b| b.error)
        .unwrap_or_else(|_| text.chars().take(200).collect());
    RegionError::Refused {
        status,
        error: scrub(&error, token),
    }
}

/// `base_url` with `segments` appended (each percent-encoded as needed).
fn endpoint(base_url: &str, segments: &[&str]) -> Result<reqwest::Url, RegionError> {
    let bad = |problem: &str| RegionError::Url {
        url: base_url.to_string(),
        problem: problem.to_string(),
    };
    let mut url = reqwest::Url::parse(base_url).map_err(|e| bad(&e.to_string()))?;
    if url.scheme() != "https" {
        return Err(bad("only https is allowed"));
    }
    {
        let mut path = url
            .path_segments_mut()
            .map_err(|()| bad("cannot have a path"))?;
        path.pop_if_empty();
        path.extend(segments);
    }
    Ok(url)
}

/// An error and its sources, one line.
pub(crate) fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let more = s.to_string();
        if !text.contains(&more) {
            text.push_str(": ");
            text.push_str(&more);
        }
        source = s.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    // Property: endpoints are built under the base URL with the agent id
    // percent-encoded; non-https bases are refused.
    #[test]
    fn endpoint_urls() {
        let u = endpoint("https://127.0.0.3:8443", &["tern", "v1", "agents", "a b"]).expect("url");
        assert_eq!(u.as_str(), "https://127.0.0.3:8443/tern/v1/agents/a%20b");
        let u = endpoint("https://h:1/base/", &["x"]).expect("url");
        assert_eq!(u.as_str(), "https://h:1/base/x");
        assert!(endpoint("http://h:1", &["x"]).is_err());
        assert!(endpoint("not a url", &["x"]).is_err());
    }
}
