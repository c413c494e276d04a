//! The control-plane prober: `GET <url>/health/ready` over HTTPS with a
//! well-kept client (reqwest on rustls with ring), verifying the control
//! plane's certificate against the probe CA bundle. Success is a 2xx answer
//! within the timeout; anything else is a failure with its reason.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::tls::CaBundle;

/// A shareable HTTPS client for probing control planes.
#[derive(Clone)]
pub struct Prober {
    client: reqwest::Client,
}

impl Prober {
    /// A prober trusting the CA certificates in `ca_file`.
    pub fn new(ca_file: &Path) -> anyhow::Result<Prober> {
        let ca = CaBundle::load(ca_file)?;
        let mut roots = rustls::RootCertStore::empty();
        for c in ca.certificates() {
            roots.add(c.clone())?;
        }
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let tls = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()?
            .with_root_certificates(roots)
            .with_no_client_auth();
        let client = reqwest::Client::builder()
            .use_preconfigured_tls(tls)
            .pool_idle_timeout(Duration::from_secs(30))
            .build()?;
        Ok(Prober { client })
    }

    /// Fetches `<base_url>/pki/trust-bundle.pem` (Ampora's documented,
    /// unauthenticated endpoint): the CA certificates the region trusts for
    /// its agents.
    pub async fn trust_bundle(&self, base_url: &str, timeout: Duration) -> Result<String, String> {
        let url = format!("{}/pki/trust-bundle.pem", base_url.trim_end_matches('/'));
        let resp = self
            .client
            .get(&url)
            .timeout(timeout)
            .send()
            .await
            .map_err(|e| e.to_string())?;
        if !resp.status().is_success() {
            return Err(format!("answered {}", resp.status()));
        }
        resp.text().await.map_err(|e| e.to_string())
    }

    /// Probes `base_url`'s readiness; returns the latency on success.
    pub async fn probe(&self, base_url: &str, timeout: Duration) -> Result<Duration, String> {
        let url = format!("{}/health/ready", base_url.trim_end_matches('/'));
        let start = Instant::now();
        let resp = self
            .client
            .get(&url)
            .timeout(timeout)
            .send()
            .await
            .map_err(|e| {
                if e.is_timeout() {
                    format!("timed out after {} ms", timeout.as_millis())
                } else {
                    format!("{e}")
                }
            })?;
        if resp.status().is_success() {
            Ok(start.elapsed())
        } else {
            Err(format!("answered {}", resp.status()))
        }
    }
}
