//! Identities for simulated agents: a leaf certificate per agent, issued
//! in-process by the home region's agent CA (rcgen, ECDSA P-256, one fresh
//! key per agent), as that region would enroll a real agent.
//!
//! Issuing is CPU-bound and split over threads; 100,000 identities take
//! seconds, not minutes (the key generation is one scalar multiplication,
//! the signature one more). It owns the leaf profile: CN = agent id, URI SAN
//! `urn:tern:agent:<id>`, EKU clientAuth, KU digitalSignature, not a CA,
//! valid from five minutes ago for the requested validity. It never logs or
//! prints a key.

use std::fmt;
use std::time::Duration;

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, SanType, PKCS_ECDSA_P256_SHA256,
};
use time::OffsetDateTime;

use crate::identity::{fingerprint_of_der, LeafIdentity};

/// The prefix of an agent leaf's URI SAN.
pub const AGENT_URI_PREFIX: &str = "urn:tern:agent:";

/// How far `not_before` is set in the past (slow clocks).
const BACKDATE: time::Duration = time::Duration::minutes(5);

/// Why identities could not be issued. Holds no key material.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PkiError {
    /// The CA certificate or key could not be used.
    #[error("agent CA: {0}")]
    Ca(String),
    /// A certificate could not be made.
    #[error("issuing the leaf of {agent}: {detail}")]
    Issue {
        /// The agent.
        agent: String,
        /// Why.
        detail: String,
    },
}

/// A region's agent CA able to issue agent leaves. `Debug` shows no key.
pub struct AgentCa {
    issuer: Issuer<'static, KeyPair>,
    cert_pem: String,
}

impl fmt::Debug for AgentCa {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AgentCa")
            .field("key", &format_args!("<redacted>"))
            .finish_non_exhaustive()
    }
}

impl AgentCa {
    /// The CA from its certificate and PKCS#8 key (PEM).
    pub fn from_pem(cert_pem: &str, key_pem: &str) -> Result<AgentCa, PkiError> {
        // Key errors by category only: never echo key material.
        let key = KeyPair::from_pem(key_pem).map_err(|_| {
            PkiError::Ca("the key is not a PKCS#8 key this build can use".to_string())
        })?;
        let issuer = Issuer::from_ca_cert_pem(cert_pem, key)
            .map_err(|e| PkiError::Ca(format!("certificate: {e}")))?;
        Ok(AgentCa {
            issuer,
            cert_pem: cert_pem.to_string(),
        })
    }

    /// A new self-signed agent CA named `common_name`, valid for
    /// `validity` (tests, benches, demos). Returns the CA and its key PEM.
    pub fn generate(common_name: &str, validity: Duration) -> Result<(AgentCa, String), PkiError> {
        let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256)
            .map_err(|e| PkiError::Ca(e.to_string()))?;
        let mut params = CertificateParams::default();
        let (not_before, not_after) = validity_window(validity)
            .ok_or_else(|| PkiError::Ca(format!("validity {validity:?} is out of range")))?;
        params.not_before = not_before;
        params.not_after = not_after;
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, common_name);
        params.distinguished_name = dn;
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let cert = params
            .self_signed(&key)
            .map_err(|e| PkiError::Ca(e.to_string()))?;
        let key_pem = key.serialize_pem();
        let cert_pem = cert.pem();
        Ok((
            AgentCa {
                issuer: Issuer::new(params, key),
                cert_pem,
            },
            key_pem,
        ))
    }

    /// The CA certificate, PEM.
    pub fn cert_pem(&self) -> &str {
        &self.cert_pem
    }

    /// A new leaf (fresh P-256 key) for `agent_id`, valid for `validity`.
    pub fn issue(&self, agent_id: &str, validity: Duration) -> Result<LeafIdentity, PkiError> {
        let err = |detail: String| PkiError::Issue {
            agent: agent_id.to_string(),
            detail,
        };
        let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).map_err(|e| err(e.to_string()))?;
        let (not_before, not_after) = validity_window(validity)
            .ok_or_else(|| err(format!("validity {validity:?} is out of range")))?;
        let mut params = CertificateParams::default();
        params.not_before = not_before;
        params.not_after = not_after;
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, agent_id);
        params.distinguished_name = dn;
        let uri = format!("{AGENT_URI_PREFIX}{agent_id}")
            .try_into()
            .map_err(|_| err("the agent id is not ASCII".to_string()))?;
        params.subject_alt_names = vec![SanType::URI(uri)];
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        params.use_authority_key_identifier_extension = true;
        let cert = params
            .signed_by(&key, &self.issuer)
            .map_err(|e| err(e.to_string()))?;
        let not_after_ms = not_after.unix_timestamp().saturating_mul(1000);
        Ok(LeafIdentity::issued(
            cert.pem(),
            key.serialize_pem(),
            fingerprint_of_der(cert.der()),
            not_after_ms,
        ))
    }

    /// Leaves for every id of `agent_ids` (same order), issued on up to
    /// `threads` threads (at least one).
    pub fn issue_many(
        &self,
        agent_ids: &[String],
        validity: Duration,
        threads: usize,
    ) -> Result<Vec<LeafIdentity>, PkiError> {
        let threads = threads.max(1);
        let chunk = agent_ids.len().div_ceil(threads).max(1);
        let results: Vec<Result<Vec<LeafIdentity>, PkiError>> = std::thread::scope(|scope| {
            let handles: Vec<_> = agent_ids
                .chunks(chunk)
                .map(|ids| {
                    scope.spawn(move || {
                        ids.iter()
                            .map(|id| self.issue(id, validity))
                            .collect::<Result<Vec<_>, _>>()
                    })
                })
                .collect();
            handles
                .into_iter()
                .map(|h| {
                    h.join().unwrap_or_else(|_| {
                        Err(PkiError::Ca("an issuing thread panicked".to_string()))
                    })
                })
                .collect()
        });
        let mut out = Vec::with_capacity(agent_ids.len());
        for r in results {
            out.extend(r?);
        }
        Ok(out)
    }
}

/// From five minutes ago to `validity` from now.
fn validity_window(validity: Duration) -> Option<(OffsetDateTime, OffsetDateTime)> {
    let now = OffsetDateTime::now_utc();
    let v = time::Duration::try_from(validity).ok()?;
    Some((now - BACKDATE, now.checked_add(v)?))
}

#[cfg(test)]
mod tests {
    use super::*;

    // Property: issued leaves chain to the CA profile we expect, are
    // distinct per agent (key and fingerprint), and their fingerprint and
    // expiry are what a parser of the PEM finds.
    #[test]
    fn issued_leaves_are_distinct_and_consistent() {
        let (ca, key_pem) =
            AgentCa::generate("test agent CA", Duration::from_secs(86_400)).expect("CA");
        let ca = AgentCa::from_pem(ca.cert_pem(), &key_pem).expect("reload CA");
        let ids: Vec<String> = (0..8).map(|i| format!("agent-{i}")).collect();
        let leaves = ca
            .issue_many(&ids, Duration::from_secs(3_600), 3)
            .expect("issue");
        assert_eq!(leaves.len(), 8);
        let mut fps: Vec<&str> = leaves.iter().map(|l| l.fingerprint()).collect();
        fps.sort_unstable();
        fps.dedup();
        assert_eq!(fps.len(), 8, "one fingerprint per agent");
        for leaf in &leaves {
            let parsed = LeafIdentity::from_pem(leaf.cert_pem(), leaf.key_pem()).expect("parse");
            assert_eq!(parsed.fingerprint(), leaf.fingerprint());
            assert_eq!(parsed.not_after_ms(), leaf.not_after_ms());
            assert!(!format!("{leaf:?}").contains("PRIVATE"));
        }
        assert!(!format!("{ca:?}").contains("PRIVATE"));
    }
}
