//! The agent's TLS identity as the session uses it: its leaf certificate
//! (PEM, leaf first, optionally followed by intermediates) and private key,
//! checked to belong together, with the two facts the coordinators care
//! about: the fingerprint (SHA-256 over the leaf's DER, lowercase hex) and
//! the leaf's expiry.
//!
//! It owns parsing and checking that material, and where it comes from
//! ([`LeafSource`]: files that may be renewed in place, or PEM in memory).
//! It must not decide when to re-register (the session does) and must never
//! print the key: `Debug` is written by hand and shows the fingerprint only.

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use sha2::{Digest, Sha256};

/// Why leaf material was refused. Never contains key material.
#[derive(Debug, thiserror::Error)]
pub enum LeafError {
    /// A file could not be read.
    #[error("reading the {what} {path}: {source}")]
    Read {
        /// "leaf certificate" or "leaf private key".
        what: &'static str,
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The certificate PEM holds no certificate, or one that does not parse.
    #[error("leaf certificate: {0}")]
    Certificate(String),
    /// The key PEM holds no private key this build can use.
    #[error("leaf private key: no PKCS#8, SEC1 or PKCS#1 private key this build can use")]
    Key,
    /// The key does not belong to the certificate.
    #[error("the leaf private key does not match the leaf certificate")]
    Mismatch,
}

/// A leaf certificate and its private key, checked to belong together.
/// Cheap to clone. `Debug` shows the fingerprint and expiry, never the key.
#[derive(Clone)]
pub struct LeafIdentity {
    cert_pem: Arc<str>,
    key_pem: Arc<str>,
    fingerprint: Arc<str>,
    not_after_ms: i64,
}

impl LeafIdentity {
    /// Parses and checks `cert_pem` (leaf first) and `key_pem`.
    pub fn from_pem(cert_pem: &str, key_pem: &str) -> Result<LeafIdentity, LeafError> {
        let chain: Vec<CertificateDer<'static>> =
            CertificateDer::pem_slice_iter(cert_pem.as_bytes())
                .collect::<Result<_, _>>()
                .map_err(|e| LeafError::Certificate(e.to_string()))?;
        let Some(leaf) = chain.first().cloned() else {
            return Err(LeafError::Certificate("no CERTIFICATE block".to_string()));
        };
        let (_, parsed) = x509_parser::parse_x509_certificate(&leaf)
            .map_err(|e| LeafError::Certificate(e.to_string()))?;
        let not_after_ms = parsed.validity().not_after.timestamp().saturating_mul(1000);
        // Errors by category only: never echo key material.
        let key = PrivateKeyDer::from_pem_slice(key_pem.as_bytes()).map_err(|_| LeafError::Key)?;
        let provider = rustls::crypto::ring::default_provider();
        match rustls::sign::CertifiedKey::from_der(chain, key, &provider) {
            Ok(_) => {}
            Err(rustls::Error::InconsistentKeys(_)) => return Err(LeafError::Mismatch),
            Err(_) => return Err(LeafError::Key),
        }
        Ok(LeafIdentity {
            cert_pem: cert_pem.into(),
            key_pem: key_pem.into(),
            fingerprint: fingerprint_of_der(&leaf).into(),
            not_after_ms,
        })
    }

    /// Material this process has just issued itself (fleet simulation): no
    /// re-parsing, the issuer computed the fingerprint and expiry.
    pub(crate) fn issued(
        cert_pem: String,
        key_pem: String,
        fingerprint: String,
        not_after_ms: i64,
    ) -> LeafIdentity {
        LeafIdentity {
            cert_pem: cert_pem.into(),
            key_pem: key_pem.into(),
            fingerprint: fingerprint.into(),
            not_after_ms,
        }
    }

    /// SHA-256 over the leaf's DER, lowercase hex: the agent's identity.
    pub fn fingerprint(&self) -> &str {
        &self.fingerprint
    }

    /// The first 12 hex digits of the fingerprint, for logs.
    pub fn short_fingerprint(&self) -> &str {
        short(&self.fingerprint)
    }

    /// The leaf's expiry, ms since the Unix epoch.
    pub fn not_after_ms(&self) -> i64 {
        self.not_after_ms
    }

    /// The certificate PEM (leaf first).
    pub fn cert_pem(&self) -> &str {
        &self.cert_pem
    }

    /// The private key PEM. A secret: never log it.
    pub fn key_pem(&self) -> &str {
        &self.key_pem
    }

    /// Certificate then key, one PEM buffer (what reqwest's `Identity`
    /// takes).
    pub(crate) fn combined_pem(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.cert_pem.len() + self.key_pem.len() + 1);
        out.extend_from_slice(self.cert_pem.as_bytes());
        if !self.cert_pem.ends_with('\n') {
            out.push(b'\n');
        }
        out.extend_from_slice(self.key_pem.as_bytes());
        out
    }
}

impl fmt::Debug for LeafIdentity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LeafIdentity")
            .field("fingerprint", &self.fingerprint)
            .field("not_after_ms", &self.not_after_ms)
            .field("key", &format_args!("<redacted>"))
            .finish()
    }
}

impl PartialEq for LeafIdentity {
    fn eq(&self, other: &Self) -> bool {
        self.cert_pem == other.cert_pem && self.key_pem == other.key_pem
    }
}

/// SHA-256 over `der`, lowercase hex.
pub fn fingerprint_of_der(der: &[u8]) -> String {
    hex::encode(Sha256::digest(der))
}

/// The first 12 characters of a fingerprint, for logs.
pub(crate) fn short(fingerprint: &str) -> &str {
    fingerprint.get(..12).unwrap_or(fingerprint)
}

/// Where the agent's leaf certificate and key come from.
#[derive(Clone)]
pub enum LeafSource {
    /// Two PEM files, re-read periodically: when the agent's leaf is renewed
    /// in place, the session notices and registers the new fingerprint.
    Files {
        /// The certificate (leaf first).
        cert: PathBuf,
        /// The private key.
        key: PathBuf,
    },
    /// Fixed material in memory (fleet simulation, embedding).
    Pem(LeafIdentity),
}

impl LeafSource {
    /// Reads and checks the material.
    pub fn load(&self) -> Result<LeafIdentity, LeafError> {
        match self {
            LeafSource::Pem(leaf) => Ok(leaf.clone()),
            LeafSource::Files { cert, key } => {
                let cert_pem = read(cert, "leaf certificate")?;
                let key_pem = read(key, "leaf private key")?;
                LeafIdentity::from_pem(&cert_pem, &key_pem)
            }
        }
    }

    /// True when the material can change (files).
    pub fn renewable(&self) -> bool {
        matches!(self, LeafSource::Files { .. })
    }
}

impl fmt::Debug for LeafSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            LeafSource::Files { cert, key } => f
                .debug_struct("Files")
                .field("cert", cert)
                .field("key", key)
                .finish(),
            LeafSource::Pem(leaf) => f.debug_tuple("Pem").field(leaf).finish(),
        }
    }
}

fn read(path: &Path, what: &'static str) -> Result<String, LeafError> {
    std::fs::read_to_string(path).map_err(|source| LeafError::Read {
        what,
        path: path.to_path_buf(),
        source,
    })
}

/// PEM text (a CA bundle) from a file or from memory.
#[derive(Clone, PartialEq, Eq)]
pub enum PemSource {
    /// Read from this file when the session starts.
    File(PathBuf),
    /// This text.
    Pem(String),
}

impl PemSource {
    /// The PEM text; checks that it holds at least one certificate.
    pub fn load(&self, what: &'static str) -> Result<String, LeafError> {
        let text = match self {
            PemSource::File(path) => read(path, what)?,
            PemSource::Pem(text) => text.clone(),
        };
        let count = CertificateDer::pem_slice_iter(text.as_bytes())
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| LeafError::Certificate(format!("{what}: {e}")))?
            .len();
        if count == 0 {
            return Err(LeafError::Certificate(format!(
                "{what}: no CERTIFICATE block"
            )));
        }
        Ok(text)
    }
}

impl fmt::Debug for PemSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PemSource::File(path) => f.debug_tuple("File").field(path).finish(),
            PemSource::Pem(text) => write!(f, "Pem({} bytes)", text.len()),
        }
    }
}
