//! Agent trust: the committed agent trust bundles of every region, as
//! client-certificate verifiers. An agent authenticates to any coordinator
//! with its own leaf, issued by its home region's agent CA; the coordinator
//! accepts a leaf that chains to one of the committed bundles and learns
//! which region issued it. It owns the shared, swappable set of those
//! verifiers (replaced when a bundle is committed); it must not decide
//! what an agent may do (the agent service does).

use std::collections::BTreeMap;
use std::fmt;
use std::sync::{Arc, PoisonError, RwLock};

use rustls::pki_types::{CertificateDer, UnixTime};
use rustls::server::danger::ClientCertVerifier;
use rustls::server::WebPkiClientVerifier;
use tern_core::RegionName;

use super::{provider, CaBundle, TlsError};

type Verifiers = BTreeMap<RegionName, (String, Arc<dyn ClientCertVerifier>)>;

/// The agent CA verifiers by region, shared between the TLS acceptor and
/// the code that follows committed trust bundles. Clones share the set.
#[derive(Clone, Default)]
pub struct AgentTrust {
    inner: Arc<RwLock<Verifiers>>,
}

impl AgentTrust {
    /// Sets `region`'s bundle (PEM) unless its digest `sha256` is already
    /// the one in use. A bundle that does not parse is refused and the
    /// previous one stays.
    pub fn set(&self, region: &RegionName, pem: &str, sha256: &str) -> Result<bool, TlsError> {
        if self
            .inner
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .get(region)
            .is_some_and(|(d, _)| d == sha256)
        {
            return Ok(false);
        }
        let bundle = CaBundle::from_pem(pem)?;
        let verifier =
            WebPkiClientVerifier::builder_with_provider(bundle.root_store()?, Arc::new(provider()))
                .build()
                .map_err(TlsError::config)?;
        self.inner
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(region.clone(), (sha256.to_string(), verifier));
        Ok(true)
    }

    /// Forgets regions not in `keep`.
    pub fn retain(&self, keep: &[RegionName]) {
        self.inner
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .retain(|r, _| keep.contains(r));
    }

    /// The region whose agent CA issued this chain, if any (valid now).
    pub fn issuer_region(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Option<RegionName> {
        let verifiers = self.inner.read().unwrap_or_else(PoisonError::into_inner);
        verifiers
            .iter()
            .find(|(_, (_, v))| v.verify_client_cert(end_entity, intermediates, now).is_ok())
            .map(|(r, _)| r.clone())
    }

    /// Regions with a bundle in use.
    pub fn regions(&self) -> Vec<RegionName> {
        self.inner
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .keys()
            .cloned()
            .collect()
    }
}

impl fmt::Debug for AgentTrust {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list().entries(self.regions()).finish()
    }
}
