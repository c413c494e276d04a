//! The coordinator's TLS layer: mutual TLS between coordinators (chain to
//! the cluster CA, then the SHA-256 thumbprint must be in the live pin set),
//! admin client certificates (`urn:tern:admin:<name>`), hot-swappable
//! server and client configurations over `watch` channels, the accept loop
//! and connector that plug into tonic, and the development PKI. Exactly one
//! crypto provider is used: ring, passed explicitly to every config.
//!
//! It must not decide which thumbprints are trusted (the replicated
//! membership does, through [`PinSet::replace`]) nor authorize individual
//! RPCs (handlers do, from [`PeerIdentity`]). Keys never appear in logs or
//! `Debug` output.

mod agents;
mod client;
mod error;
mod files;
mod peer;
mod pins;
pub mod pki;
mod server;
mod verify;

use sha2::{Digest, Sha256};
use tern_core::Thumbprint;

pub use agents::AgentTrust;
pub use client::{channel, ChannelOptions, TlsClient, TlsConnection, TlsConnector};
pub use error::TlsError;
pub use files::{CaBundle, Identity, TlsFiles};
pub(crate) use peer::agent_names_of;
pub use peer::{is_valid_admin_name, peer_identity, PeerIdentity, PeerRole, ADMIN_URI_PREFIX};
pub use pins::PinSet;
pub use pki::{DevCa, IssuedCert};
pub use server::{incoming, Incoming, PeerStream, TlsServer, HANDSHAKE_TIMEOUT};

/// The only application protocol spoken: HTTP/2 (gRPC).
const ALPN_H2: &[u8] = b"h2";

/// The crypto provider every configuration is built with.
pub(crate) fn provider() -> rustls::crypto::CryptoProvider {
    rustls::crypto::ring::default_provider()
}

/// Installs ring as the process-wide rustls crypto provider, for code that
/// builds configs without naming one. Idempotent: a provider already
/// installed (by an earlier call or anyone else) is left in place.
pub fn install_crypto_provider() {
    // Err means a provider is already installed: that is fine.
    let _ = provider().install_default();
}

/// SHA-256 over a whole DER certificate: what peers pin.
pub fn thumbprint_of_der(der: &[u8]) -> Thumbprint {
    Thumbprint(Sha256::digest(der).into())
}

#[cfg(test)]
mod tests {
    use super::*;

    // Property: installing the provider twice is harmless, and afterwards a
    // process default exists (ring).
    #[test]
    fn install_crypto_provider_is_idempotent() {
        install_crypto_provider();
        install_crypto_provider();
        assert!(rustls::crypto::CryptoProvider::get_default().is_some());
    }

    // Property: the thumbprint is the plain SHA-256 of the bytes given
    // (known-answer test with the SHA-256 of the empty string).
    #[test]
    fn thumbprint_is_sha256() {
        assert_eq!(
            thumbprint_of_der(b"").to_string(),
            "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
    }
}
