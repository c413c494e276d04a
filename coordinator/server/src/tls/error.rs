//! The TLS layer's error type. It owns the wording of every failure to load,
//! parse, check or write certificates and keys; messages name the file and
//! the problem. It must never carry key material: key parse failures are
//! reported by category, not by content.

use std::io;
use std::path::Path;

/// Everything that can go wrong while loading, checking or issuing TLS
/// material, or while building a TLS configuration or a channel.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A file could not be read.
    #[error("cannot read {what} file {path}: {source}")]
    Read {
        what: &'static str,
        path: String,
        #[source]
        source: io::Error,
    },
    /// A file or directory could not be written.
    #[error("cannot write {what} file {path}: {source}")]
    Write {
        what: &'static str,
        path: String,
        #[source]
        source: io::Error,
    },
    /// A PEM file held no certificate.
    #[error("no certificate in {path}")]
    NoCertificate { path: String },
    /// A PEM file held no private key.
    #[error("no private key in {path}")]
    NoPrivateKey { path: String },
    /// A file held something that is not what it should be.
    #[error("cannot parse {what} in {path}: {detail}")]
    Parse {
        what: &'static str,
        path: String,
        detail: String,
    },
    /// A certificate's validity period has ended.
    #[error("certificate {path} expired on {not_after}")]
    Expired { path: String, not_after: String },
    /// A certificate's validity period has not started.
    #[error("certificate {path} is not valid before {not_before}")]
    NotYetValid { path: String, not_before: String },
    /// The private key does not belong to the certificate.
    #[error("the private key in {key} does not match the certificate in {cert}")]
    KeyMismatch { cert: String, key: String },
    /// rustls refused to build a configuration from the material.
    #[error("invalid TLS configuration: {0}")]
    Config(String),
    /// A peer address that cannot be dialed.
    #[error("invalid address {addr:?}: {detail}")]
    Address { addr: String, detail: String },
    /// An admin name outside `[a-zA-Z0-9._-]{{1,64}}`.
    #[error(
        "invalid admin name {0:?}: must be 1-64 characters of a-z, A-Z, 0-9, '.', '_' and '-'"
    )]
    AdminName(String),
    /// rcgen could not produce a key or certificate.
    #[error("cannot generate {what}: {detail}")]
    Generate { what: &'static str, detail: String },
}

impl TlsError {
    pub(crate) fn read(what: &'static str, path: &Path, source: io::Error) -> Self {
        TlsError::Read {
            what,
            path: path.display().to_string(),
            source,
        }
    }

    pub(crate) fn write(what: &'static str, path: &Path, source: io::Error) -> Self {
        TlsError::Write {
            what,
            path: path.display().to_string(),
            source,
        }
    }

    pub(crate) fn config(e: impl std::fmt::Display) -> Self {
        TlsError::Config(e.to_string())
    }
}
