//! The certificate verifiers: who may complete a handshake with us, and
//! whom we accept as a server. It owns the trust rules: a peer chains to the
//! cluster CA, is within its validity period and is pinned; an admin chains
//! to the admin CA and carries `urn:tern:admin:<name>`; a server we dial as
//! a peer chains to the cluster CA and is pinned. Refusals are logged here
//! (target `tls`, short `thumbprint`, `reason`). It must not load files or
//! build configurations, and never logs anything but thumbprints and
//! reasons.

use std::fmt;
use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{verify_tls12_signature, verify_tls13_signature, WebPkiSupportedAlgorithms};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::server::{ParsedCertificate, WebPkiClientVerifier};
use rustls::{CertificateError, DigitallySignedStruct, DistinguishedName, RootCertStore};
use tern_core::Thumbprint;

use super::peer::{admin_name_of, PeerRole};
use super::{provider, thumbprint_of_der, AgentTrust, CaBundle, PinSet, TlsError};

/// Why a client certificate was refused: a reason for the log and the
/// rustls error that selects the TLS alert.
#[derive(Debug)]
pub(crate) struct Refusal {
    pub(crate) thumbprint: Thumbprint,
    pub(crate) reason: String,
    pub(crate) error: rustls::Error,
}

/// Server side: verifies client certificates (coordinators and admins).
pub(crate) struct ClientVerifier {
    cluster: Arc<dyn ClientCertVerifier>,
    /// `None`: admins chain to the cluster CA.
    admin: Option<Arc<dyn ClientCertVerifier>>,
    pins: PinSet,
    agents: AgentTrust,
    hints: Vec<DistinguishedName>,
}

impl ClientVerifier {
    pub(crate) fn new(
        cluster_ca: &CaBundle,
        admin_ca: Option<&CaBundle>,
        pins: PinSet,
        agents: AgentTrust,
    ) -> Result<ClientVerifier, TlsError> {
        let build = |ca: &CaBundle| {
            WebPkiClientVerifier::builder_with_provider(ca.root_store()?, Arc::new(provider()))
                .build()
                .map_err(TlsError::config)
        };
        let cluster = build(cluster_ca)?;
        let admin = admin_ca.map(build).transpose()?;
        let mut hints = cluster.root_hint_subjects().to_vec();
        if let Some(admin) = &admin {
            hints.extend(admin.root_hint_subjects().iter().cloned());
        }
        Ok(ClientVerifier {
            cluster,
            admin,
            pins,
            agents,
            hints,
        })
    }

    /// Decides the role of a client certificate chain, or why it is refused.
    /// Used during the handshake and again right after it (the pin set may
    /// have changed in between; the second answer is the one that counts).
    /// Order: pinned and chaining to the cluster CA is a Peer (even with an
    /// admin URI SAN); otherwise an admin URI SAN must chain to the admin
    /// CA; then a leaf chaining to a region's committed agent trust bundle
    /// is an Agent; anything else is refused with the most specific reason.
    pub(crate) fn classify(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<PeerRole, Refusal> {
        let thumbprint = thumbprint_of_der(end_entity);
        let refuse = |reason: String, error: rustls::Error| Refusal {
            thumbprint,
            reason,
            error,
        };
        let cluster = self
            .cluster
            .verify_client_cert(end_entity, intermediates, now);
        if cluster.is_ok() && self.pins.contains(&thumbprint) {
            return Ok(PeerRole::Peer);
        }
        match admin_name_of(end_entity) {
            Err(reason) => {
                return Err(refuse(
                    reason,
                    CertificateError::ApplicationVerificationFailure.into(),
                ))
            }
            Ok(Some(name)) => {
                let admin = match &self.admin {
                    Some(admin) => admin.verify_client_cert(end_entity, intermediates, now),
                    None => cluster,
                };
                return match admin {
                    Ok(_) => Ok(PeerRole::Admin { name }),
                    Err(e) => Err(refuse(
                        format!("admin certificate not accepted by the admin CA: {e}"),
                        e,
                    )),
                };
            }
            Ok(None) => {}
        }
        if let Some(region) = self.agents.issuer_region(end_entity, intermediates, now) {
            let names = super::peer::agent_names_of(end_entity);
            return Ok(PeerRole::Agent { region, names });
        }
        match cluster {
            Err(e) => Err(refuse(format!("not accepted by the cluster CA: {e}"), e)),
            Ok(_) => Err(refuse(
                "chains to the cluster CA but is neither pinned nor an admin certificate"
                    .to_string(),
                CertificateError::ApplicationVerificationFailure.into(),
            )),
        }
    }
}

impl fmt::Debug for ClientVerifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClientVerifier")
            .field("pins", &self.pins)
            .field("separate_admin_ca", &self.admin.is_some())
            .finish()
    }
}

impl ClientCertVerifier for ClientVerifier {
    fn offer_client_auth(&self) -> bool {
        true
    }

    fn client_auth_mandatory(&self) -> bool {
        true
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &self.hints
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        match self.classify(end_entity, intermediates, now) {
            Ok(role) => {
                tracing::debug!(
                    target: "tls",
                    thumbprint = %thumbprint_of_der(end_entity).short(),
                    %role,
                    "client certificate accepted"
                );
                Ok(ClientCertVerified::assertion())
            }
            Err(refusal) => {
                tracing::warn!(
                    target: "tls",
                    thumbprint = %refusal.thumbprint.short(),
                    reason = %refusal.reason,
                    "client certificate refused"
                );
                Err(refusal.error)
            }
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.cluster.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.cluster.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.cluster.supported_verify_schemes()
    }
}

/// Client side, coordinator to coordinator: the server must chain to the
/// cluster CA (signatures, validity, serverAuth) and be pinned. No name
/// check: between coordinators the pin is the identity.
pub(crate) struct PinnedServerVerifier {
    roots: Arc<RootCertStore>,
    pins: PinSet,
    algs: WebPkiSupportedAlgorithms,
}

impl PinnedServerVerifier {
    pub(crate) fn new(cluster_ca: &CaBundle, pins: PinSet) -> Result<Self, TlsError> {
        Ok(PinnedServerVerifier {
            roots: cluster_ca.root_store()?,
            pins,
            algs: provider().signature_verification_algorithms,
        })
    }

    fn check(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<(), (String, rustls::Error)> {
        let cert = ParsedCertificate::try_from(end_entity)
            .map_err(|e| (format!("cannot parse certificate: {e}"), e))?;
        rustls::client::verify_server_cert_signed_by_trust_anchor(
            &cert,
            &self.roots,
            intermediates,
            now,
            self.algs.all,
        )
        .map_err(|e| (format!("not accepted by the cluster CA: {e}"), e))?;
        if !self.pins.contains(&thumbprint_of_der(end_entity)) {
            return Err((
                "server certificate is not pinned".to_string(),
                CertificateError::ApplicationVerificationFailure.into(),
            ));
        }
        Ok(())
    }
}

impl fmt::Debug for PinnedServerVerifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PinnedServerVerifier")
            .field("pins", &self.pins)
            .finish()
    }
}

impl ServerCertVerifier for PinnedServerVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        match self.check(end_entity, intermediates, now) {
            Ok(()) => Ok(ServerCertVerified::assertion()),
            Err((reason, error)) => {
                tracing::warn!(
                    target: "tls",
                    thumbprint = %thumbprint_of_der(end_entity).short(),
                    %reason,
                    "server certificate refused"
                );
                Err(error)
            }
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls12_signature(message, cert, dss, &self.algs)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13_signature(message, cert, dss, &self.algs)
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.algs.supported_schemes()
    }
}
