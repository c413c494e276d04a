//! The stand-in's error type: what can stop it from starting or from
//! applying a mode. Messages name the file, address or field at fault; they
//! must never carry key material or a secret.

use std::net::SocketAddr;
use std::path::PathBuf;

use super::config::StandInConfigError;
use crate::tls::TlsError;

/// Why the stand-in could not start, or could not apply a mode.
#[derive(Debug, thiserror::Error)]
pub enum StandInError {
    /// The configuration (or a file it names) is unusable.
    #[error(transparent)]
    Config(#[from] StandInConfigError),
    /// The agent CA could not be loaded, generated or stored.
    #[error("agent CA: {0}")]
    AgentCa(#[source] TlsError),
    /// A file or directory of the stand-in's own could not be written.
    #[error("cannot write {what} {path}: {source}")]
    Io {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// rustls refused the server configuration.
    #[error("TLS configuration: {0}")]
    Tls(String),
    /// A listener could not be bound (or re-bound after `down`).
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    /// A listener's address could not be read.
    #[error("cannot read the address of the {what} listener: {source}")]
    LocalAddr {
        what: &'static str,
        #[source]
        source: std::io::Error,
    },
    /// A mode change was not applied: the HTTPS side is gone (stopping)
    /// or did not confirm in time.
    #[error("mode {mode} not applied: {reason}")]
    ModeNotApplied { mode: String, reason: String },
}
