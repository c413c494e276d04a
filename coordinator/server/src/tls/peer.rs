//! Who is on the other end of an accepted connection: the role and
//! thumbprint established by the TLS handshake, and how a gRPC handler reads
//! them back. It owns the admin-name rules (`urn:tern:admin:<name>`). It
//! must not decide authorization for individual RPCs: handlers do that
//! from the role given here.

use std::fmt;
use std::net::SocketAddr;

use tern_core::Thumbprint;

/// The URI SAN prefix that marks an admin client certificate.
pub const ADMIN_URI_PREFIX: &str = "urn:tern:admin:";

/// What a verified client is allowed to be.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PeerRole {
    /// Another coordinator: its certificate chains to the cluster CA and its
    /// thumbprint is pinned.
    Peer,
    /// An administrator: its certificate chains to the admin CA and carries
    /// the URI SAN `urn:tern:admin:<name>`.
    Admin {
        /// The `<name>` of the URI SAN.
        name: String,
    },
    /// An agent (through its shim): its leaf chains to the committed agent
    /// trust bundle of `region`, the region whose CA issued it.
    Agent {
        region: tern_core::RegionName,
        /// The names the leaf carries (subject CN, DNS and URI SANs): an
        /// agent may register only under an id its certificate names.
        names: Vec<String>,
    },
}

impl fmt::Display for PeerRole {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PeerRole::Peer => f.write_str("peer"),
            PeerRole::Admin { name } => write!(f, "admin:{name}"),
            PeerRole::Agent { region, .. } => write!(f, "agent:{region}"),
        }
    }
}

/// The verified identity of the client of one connection. The acceptor
/// attaches it to the connection; tonic copies it into every request's
/// extensions (read it with [`peer_identity`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PeerIdentity {
    pub role: PeerRole,
    /// SHA-256 of the client's leaf certificate.
    pub thumbprint: Thumbprint,
    pub remote_addr: SocketAddr,
}

/// The verified identity of the caller of a gRPC request served over
/// [`super::incoming`]. `None` only if the request did not arrive through
/// that acceptor (e.g. a service called in-process in a test).
pub fn peer_identity<T>(req: &tonic::Request<T>) -> Option<&PeerIdentity> {
    req.extensions().get::<PeerIdentity>()
}

/// Whether `name` is a valid admin name: `[a-zA-Z0-9._-]{1,64}`.
pub fn is_valid_admin_name(name: &str) -> bool {
    (1..=64).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'_' || b == b'-')
}

/// The admin name carried by a DER certificate's URI SANs.
/// `Ok(None)`: no admin URI. `Err`: a malformed or ambiguous admin URI,
/// or a certificate that cannot be parsed.
pub(crate) fn admin_name_of(der: &[u8]) -> Result<Option<String>, String> {
    let (_, cert) = x509_parser::parse_x509_certificate(der)
        .map_err(|e| format!("cannot parse certificate: {e}"))?;
    let san = cert
        .subject_alternative_name()
        .map_err(|e| format!("cannot parse subjectAltName: {e}"))?;
    let Some(san) = san else {
        return Ok(None);
    };
    let mut names = san.value.general_names.iter().filter_map(|n| match n {
        x509_parser::extensions::GeneralName::URI(uri) => uri.strip_prefix(ADMIN_URI_PREFIX),
        _ => None,
    });
    let Some(name) = names.next() else {
        return Ok(None);
    };
    if names.next().is_some() {
        return Err("more than one urn:tern:admin: URI SAN".to_string());
    }
    if !is_valid_admin_name(name) {
        return Err(format!("invalid admin name {name:?} in URI SAN"));
    }
    Ok(Some(name.to_string()))
}

/// The names an agent leaf carries: subject common names, DNS and URI
/// subject alternative names. Empty when the certificate does not parse.
pub(crate) fn agent_names_of(der: &[u8]) -> Vec<String> {
    let Ok((_, cert)) = x509_parser::parse_x509_certificate(der) else {
        return Vec::new();
    };
    let mut names: Vec<String> = cert
        .subject()
        .iter_common_name()
        .filter_map(|cn| cn.as_str().ok().map(str::to_string))
        .collect();
    if let Ok(Some(san)) = cert.subject_alternative_name() {
        for n in &san.value.general_names {
            match n {
                x509_parser::extensions::GeneralName::DNSName(d) => names.push(d.to_string()),
                x509_parser::extensions::GeneralName::URI(u) => names.push(u.to_string()),
                _ => {}
            }
        }
    }
    names
}

#[cfg(test)]
mod tests {
    use super::*;

    // Property: admin names are 1-64 characters of [a-zA-Z0-9._-]; anything
    // else (empty, too long, separators, spaces) is refused.
    #[test]
    fn admin_names_are_validated() {
        for good in ["alice", "ops.team_1-A", &"a".repeat(64)] {
            assert!(is_valid_admin_name(good), "{good:?} refused");
        }
        for bad in ["", &"a".repeat(65), "a b", "a/b", "a:b", "é"] {
            assert!(!is_valid_admin_name(bad), "{bad:?} accepted");
        }
    }

    // Property: the role prints as the handlers and logs expect.
    #[test]
    fn role_display() {
        assert_eq!(PeerRole::Peer.to_string(), "peer");
        assert_eq!(
            PeerRole::Admin {
                name: "alice".into()
            }
            .to_string(),
            "admin:alice"
        );
    }
}
