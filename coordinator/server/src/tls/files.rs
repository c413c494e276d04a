//! Loading TLS material from PEM: the paths a coordinator is configured
//! with (`TlsFiles`), CA bundles (`CaBundle`) and a certificate chain with
//! its private key (`Identity`). It owns parsing and the checks that make a
//! bad file fail at start-up with a message naming the file (missing,
//! empty, malformed, key not matching, expired). It must not build TLS
//! configurations (see `server` and `client`) and must never print or log
//! key material: `Debug` is written by hand and errors describe key
//! problems only by category.

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rustls::pki_types::pem::{self, PemObject};
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::RootCertStore;
use tern_core::Thumbprint;

use super::{provider, thumbprint_of_der, TlsError};

/// Where a coordinator's TLS material lives: all PEM files.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TlsFiles {
    /// The cluster CA bundle: peers' certificates must chain to it; the
    /// client side also verifies peer servers against it.
    pub ca: PathBuf,
    /// Our own certificate chain, leaf first.
    pub cert: PathBuf,
    /// The private key of `cert` (PKCS#8, SEC1 or PKCS#1).
    pub key: PathBuf,
    /// The CA bundle that admin client certificates must chain to.
    /// Default (`None`): the cluster CA.
    pub admin_ca: Option<PathBuf>,
}

/// One or more CA certificates used as trust anchors.
#[derive(Clone)]
pub struct CaBundle {
    certs: Vec<CertificateDer<'static>>,
    origin: String,
}

impl CaBundle {
    /// Reads every certificate in a PEM file.
    pub fn load(path: &Path) -> Result<CaBundle, TlsError> {
        let bytes = std::fs::read(path).map_err(|e| TlsError::read("CA certificate", path, e))?;
        CaBundle::parse(&bytes, path.display().to_string())
    }

    /// Reads every certificate in PEM text (e.g. a CA just generated).
    pub fn from_pem(pem_text: &str) -> Result<CaBundle, TlsError> {
        CaBundle::parse(pem_text.as_bytes(), "<in-memory CA bundle>".to_string())
    }

    fn parse(bytes: &[u8], origin: String) -> Result<CaBundle, TlsError> {
        let certs = parse_certs(bytes, &origin)?;
        let bundle = CaBundle { certs, origin };
        bundle.root_store()?;
        Ok(bundle)
    }

    /// The CA certificates, in file order.
    pub fn certificates(&self) -> &[CertificateDer<'static>] {
        &self.certs
    }

    /// Where the bundle came from (a path, or a note for in-memory PEM).
    pub fn origin(&self) -> &str {
        &self.origin
    }

    pub(crate) fn root_store(&self) -> Result<Arc<RootCertStore>, TlsError> {
        let mut roots = RootCertStore::empty();
        for cert in &self.certs {
            roots.add(cert.clone()).map_err(|e| TlsError::Parse {
                what: "CA certificate",
                path: self.origin.clone(),
                detail: e.to_string(),
            })?;
        }
        Ok(Arc::new(roots))
    }
}

impl fmt::Debug for CaBundle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CaBundle")
            .field("origin", &self.origin)
            .field(
                "thumbprints",
                &self
                    .certs
                    .iter()
                    .map(|c| thumbprint_of_der(c).short())
                    .collect::<Vec<_>>(),
            )
            .finish()
    }
}

/// Our certificate chain (leaf first) and its private key.
pub struct Identity {
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
    thumbprint: Thumbprint,
    not_before: SystemTime,
    not_after: SystemTime,
    origin: String,
}

impl Identity {
    /// Loads a certificate chain and its key, checks that the key belongs
    /// to the leaf and that the leaf is valid now.
    pub fn load(cert: &Path, key: &Path) -> Result<Identity, TlsError> {
        let identity = Identity::load_without_validity_check(cert, key)?;
        identity.check_valid_at(SystemTime::now())?;
        Ok(identity)
    }

    /// Like [`Identity::load`] but accepts a leaf outside its validity
    /// period. For diagnostics and for tests that must present an expired
    /// certificate; a coordinator's own identity goes through `load`.
    pub fn load_without_validity_check(cert: &Path, key: &Path) -> Result<Identity, TlsError> {
        let cert_bytes = std::fs::read(cert).map_err(|e| TlsError::read("certificate", cert, e))?;
        let key_bytes = std::fs::read(key).map_err(|e| TlsError::read("private key", key, e))?;
        Identity::parse(
            &cert_bytes,
            cert.display().to_string(),
            &key_bytes,
            key.display().to_string(),
        )
    }

    /// Builds an identity from PEM text, with the checks of [`Identity::load`].
    pub fn from_pem(cert_pem: &str, key_pem: &str) -> Result<Identity, TlsError> {
        let identity = Identity::from_pem_without_validity_check(cert_pem, key_pem)?;
        identity.check_valid_at(SystemTime::now())?;
        Ok(identity)
    }

    /// Like [`Identity::from_pem`] without the validity-period check (tests).
    pub fn from_pem_without_validity_check(
        cert_pem: &str,
        key_pem: &str,
    ) -> Result<Identity, TlsError> {
        Identity::parse(
            cert_pem.as_bytes(),
            "<in-memory certificate>".to_string(),
            key_pem.as_bytes(),
            "<in-memory private key>".to_string(),
        )
    }

    fn parse(
        cert_bytes: &[u8],
        cert_origin: String,
        key_bytes: &[u8],
        key_origin: String,
    ) -> Result<Identity, TlsError> {
        let chain = parse_certs(cert_bytes, &cert_origin)?;
        let leaf = chain.first().ok_or_else(|| TlsError::NoCertificate {
            path: cert_origin.clone(),
        })?;
        let (not_before, not_after) = validity_of(leaf, &cert_origin)?;
        let thumbprint = thumbprint_of_der(leaf);
        // Key errors are reported by category only: never echo key bytes.
        let key = match PrivateKeyDer::from_pem_slice(key_bytes) {
            Ok(key) => key,
            Err(pem::Error::NoItemsFound) => {
                return Err(TlsError::NoPrivateKey { path: key_origin })
            }
            Err(_) => {
                return Err(TlsError::Parse {
                    what: "private key",
                    path: key_origin,
                    detail: "malformed PEM".to_string(),
                })
            }
        };
        match rustls::sign::CertifiedKey::from_der(chain.clone(), key.clone_key(), &provider()) {
            Ok(_) => {}
            Err(rustls::Error::InconsistentKeys(_)) => {
                return Err(TlsError::KeyMismatch {
                    cert: cert_origin,
                    key: key_origin,
                })
            }
            Err(e) => {
                return Err(TlsError::Parse {
                    what: "private key",
                    path: key_origin,
                    detail: e.to_string(),
                })
            }
        }
        Ok(Identity {
            chain,
            key,
            thumbprint,
            not_before,
            not_after,
            origin: cert_origin,
        })
    }

    /// Fails with `Expired` or `NotYetValid` unless the leaf is valid at `now`.
    pub fn check_valid_at(&self, now: SystemTime) -> Result<(), TlsError> {
        if now > self.not_after {
            return Err(TlsError::Expired {
                path: self.origin.clone(),
                not_after: rfc3339(self.not_after),
            });
        }
        if now < self.not_before {
            return Err(TlsError::NotYetValid {
                path: self.origin.clone(),
                not_before: rfc3339(self.not_before),
            });
        }
        Ok(())
    }

    /// SHA-256 over the leaf's DER: what peers pin.
    pub fn thumbprint(&self) -> Thumbprint {
        self.thumbprint
    }

    /// End of the leaf's validity period.
    pub fn not_after(&self) -> SystemTime {
        self.not_after
    }

    /// Start of the leaf's validity period.
    pub fn not_before(&self) -> SystemTime {
        self.not_before
    }

    /// The chain, leaf first.
    pub fn chain(&self) -> &[CertificateDer<'static>] {
        &self.chain
    }

    /// Where the certificate came from.
    pub fn origin(&self) -> &str {
        &self.origin
    }

    pub(crate) fn key(&self) -> PrivateKeyDer<'static> {
        self.key.clone_key()
    }
}

impl Clone for Identity {
    fn clone(&self) -> Self {
        Identity {
            chain: self.chain.clone(),
            key: self.key.clone_key(),
            thumbprint: self.thumbprint,
            not_before: self.not_before,
            not_after: self.not_after,
            origin: self.origin.clone(),
        }
    }
}

impl fmt::Debug for Identity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Identity")
            .field("origin", &self.origin)
            .field("thumbprint", &self.thumbprint.short())
            .field("chain_len", &self.chain.len())
            .field("not_after", &rfc3339(self.not_after))
            .field("key", &"<redacted>")
            .finish()
    }
}

/// Every certificate of a PEM blob; an error naming `origin` if there are
/// none or the PEM is malformed.
fn parse_certs(bytes: &[u8], origin: &str) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let certs = CertificateDer::pem_slice_iter(bytes)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| TlsError::Parse {
            what: "certificate",
            path: origin.to_string(),
            detail: e.to_string(),
        })?;
    if certs.is_empty() {
        return Err(TlsError::NoCertificate {
            path: origin.to_string(),
        });
    }
    for cert in &certs {
        x509_parser::parse_x509_certificate(cert).map_err(|e| TlsError::Parse {
            what: "certificate",
            path: origin.to_string(),
            detail: e.to_string(),
        })?;
    }
    Ok(certs)
}

/// The validity period of a DER certificate.
pub(crate) fn validity_of(der: &[u8], origin: &str) -> Result<(SystemTime, SystemTime), TlsError> {
    let (_, cert) = x509_parser::parse_x509_certificate(der).map_err(|e| TlsError::Parse {
        what: "certificate",
        path: origin.to_string(),
        detail: e.to_string(),
    })?;
    let validity = cert.validity();
    Ok((
        unix_to_system(validity.not_before.timestamp()),
        unix_to_system(validity.not_after.timestamp()),
    ))
}

fn unix_to_system(secs: i64) -> SystemTime {
    if secs >= 0 {
        UNIX_EPOCH + Duration::from_secs(secs.unsigned_abs())
    } else {
        UNIX_EPOCH - Duration::from_secs(secs.unsigned_abs())
    }
}

/// `2026-11-03T12:00:00Z`, for messages (no `time` formatting feature needed).
pub(crate) fn rfc3339(t: SystemTime) -> String {
    let secs = match t.duration_since(UNIX_EPOCH) {
        Ok(d) => i64::try_from(d.as_secs()).unwrap_or(i64::MAX),
        Err(e) => -i64::try_from(e.duration().as_secs()).unwrap_or(i64::MAX),
    };
    match time::OffsetDateTime::from_unix_timestamp(secs) {
        Ok(dt) => format!(
            "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}Z",
            dt.year(),
            u8::from(dt.month()),
            dt.day(),
            dt.hour(),
            dt.minute(),
            dt.second()
        ),
        Err(_) => format!("unix time {secs}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // Property: load errors name the file and the problem, so a bad path or
    // an empty file is diagnosable from the message alone.
    #[test]
    fn load_errors_name_file_and_problem() {
        let dir = tempfile::tempdir().expect("tempdir");
        let missing = dir.path().join("nope.pem");
        let err = Identity::load(&missing, &missing).expect_err("missing file accepted");
        let msg = err.to_string();
        assert!(
            msg.starts_with("cannot read certificate file ") && msg.contains("nope.pem"),
            "{msg}"
        );

        let empty = dir.path().join("empty.pem");
        std::fs::write(&empty, "").expect("write");
        let msg = CaBundle::load(&empty)
            .expect_err("empty bundle accepted")
            .to_string();
        assert_eq!(msg, format!("no certificate in {}", empty.display()));
    }

    // Property: validity timestamps are printed as RFC 3339 UTC.
    #[test]
    fn rfc3339_formats_utc() {
        let t = UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        assert_eq!(rfc3339(t), "2023-11-14T22:13:20Z");
    }
}
