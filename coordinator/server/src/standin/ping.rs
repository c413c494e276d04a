//! The decision behind `GET /api/federation/ping` as the stand-in answers
//! it: given the configured peers, the client certificate presented in the
//! TLS handshake (if any) and the `X-Federation-Secret` header (if any),
//! is the link green, or which factor failed? Pure: the time comes in as an
//! argument; it does no I/O and logs nothing.
//!
//! Ampora documents the two factors and that red names the failed one; the
//! JSON shape (`PingResponse`) is Tern's assumption. It must never keep or
//! return the presented secret.

use std::time::{SystemTime, UNIX_EPOCH};

use rustls::pki_types::CertificateDer;
use serde::{Deserialize, Serialize};
use tern_core::{RegionName, Thumbprint};

use super::config::FederationPeer;
use crate::tls::thumbprint_of_der;

/// The request header carrying the caller's outbound secret, hex-encoded.
pub const SECRET_HEADER: &str = "x-federation-secret";

/// One of the two federation factors.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Factor {
    /// The client certificate: absent, not pinned by any peer, or outside
    /// its validity period.
    Thumbprint,
    /// The shared secret: absent, not hex, or not the peer's inbound secret.
    Secret,
}

/// The body of a ping answer (always HTTP 200): `{"status":"green"}` or
/// `{"status":"red","failed":["thumbprint","secret"]}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "status", rename_all = "lowercase")]
pub enum PingResponse {
    /// Both factors matched one peer.
    Green,
    /// At least one factor failed; `failed` lists which, in the order
    /// thumbprint, secret.
    Red { failed: Vec<Factor> },
}

/// A ping's outcome plus what the log line needs (never the secret).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PingEvaluation {
    /// What the caller is told.
    pub response: PingResponse,
    /// The peer whose pin the certificate matched, if any.
    pub peer: Option<RegionName>,
    /// Thumbprint of the presented leaf, if a certificate was presented.
    pub thumbprint: Option<Thumbprint>,
}

/// Decides a ping.
///
/// The certificate factor holds when the leaf's SHA-256 thumbprint is
/// pinned by some peer and the leaf is within its validity period at
/// `now`. The secret factor holds when the SHA-256 of the decoded header
/// equals the inbound secret hash of a peer that pinned the certificate
/// (or, when no peer pinned it, of any peer: so a caller with the right
/// secret and a wrong certificate is told only about the certificate).
/// Every stored hash is compared, in constant time, whatever the outcome.
pub fn evaluate(
    peers: &[FederationPeer],
    leaf: Option<&CertificateDer<'_>>,
    secret_header: Option<&[u8]>,
    now: SystemTime,
) -> PingEvaluation {
    let thumbprint = leaf.map(|der| thumbprint_of_der(der));
    let leaf_valid = leaf.is_some_and(|der| valid_at(der, now));
    let presented = secret_header.and_then(decode_secret);

    let mut pinned_by: Option<&FederationPeer> = None;
    let mut secret_of_pinned_peer = false;
    let mut secret_of_any_peer = false;
    for peer in peers {
        let pinned = leaf_valid && thumbprint.is_some_and(|t| peer.pinned_thumbprints.contains(&t));
        let secret_ok = presented
            .as_deref()
            .map(|s| peer.inbound_secret_sha256.matches(s))
            .unwrap_or(false);
        secret_of_any_peer |= secret_ok;
        if pinned {
            secret_of_pinned_peer |= secret_ok;
            if pinned_by.is_none() || secret_ok {
                pinned_by = Some(peer);
            }
        }
    }
    let thumbprint_ok = pinned_by.is_some();
    let secret_ok = if thumbprint_ok {
        secret_of_pinned_peer
    } else {
        secret_of_any_peer
    };
    let mut failed = Vec::new();
    if !thumbprint_ok {
        failed.push(Factor::Thumbprint);
    }
    if !secret_ok {
        failed.push(Factor::Secret);
    }
    PingEvaluation {
        response: if failed.is_empty() {
            PingResponse::Green
        } else {
            PingResponse::Red { failed }
        },
        peer: pinned_by.map(|p| p.name.clone()),
        thumbprint,
    }
}

/// The secret bytes of a header value: hex, surrounding blanks ignored,
/// not empty. Anything else is no secret.
fn decode_secret(header: &[u8]) -> Option<Vec<u8>> {
    let text = std::str::from_utf8(header).ok()?.trim();
    if text.is_empty() {
        return None;
    }
    hex::decode(text).ok()
}

/// Whether a DER certificate's validity period contains `now`. A
/// certificate that does not parse is not valid.
fn valid_at(der: &[u8], now: SystemTime) -> bool {
    let Ok((_, cert)) = x509_parser::parse_x509_certificate(der) else {
        return false;
    };
    let v = cert.validity();
    let now = match now.duration_since(UNIX_EPOCH) {
        Ok(d) => i64::try_from(d.as_secs()).unwrap_or(i64::MAX),
        Err(e) => -i64::try_from(e.duration().as_secs()).unwrap_or(i64::MAX),
    };
    v.not_before.timestamp() <= now && now <= v.not_after.timestamp()
}

/// `now` shifted by whole days, for tests of validity.
#[cfg(test)]
fn days(now: SystemTime, d: i64) -> SystemTime {
    let secs = std::time::Duration::from_secs(d.unsigned_abs() * 86_400);
    if d >= 0 {
        now + secs
    } else {
        now - secs
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::standin::secret::SecretHash;
    use crate::tls::{DevCa, Identity};
    use std::collections::BTreeSet;
    use std::time::Duration;

    struct Case {
        peers: Vec<FederationPeer>,
        leaf_us: CertificateDer<'static>,
        leaf_other: CertificateDer<'static>,
    }

    fn leaf(ca: &DevCa, name: &str) -> CertificateDer<'static> {
        let now = time::OffsetDateTime::now_utc();
        let issued = ca
            .issue_node(
                name,
                &[format!("{name}.example")],
                &[],
                now - time::Duration::minutes(1),
                now + time::Duration::days(90),
            )
            .expect("issue");
        Identity::from_pem(&issued.cert_pem, &issued.key_pem)
            .expect("identity")
            .chain()[0]
            .clone()
    }

    fn case() -> Case {
        let ca = DevCa::generate("peer CA", Duration::from_secs(86_400 * 365)).expect("CA");
        let leaf_us = leaf(&ca, "us");
        let leaf_other = leaf(&ca, "other");
        let peers = vec![
            FederationPeer {
                name: "ap".parse().expect("name"),
                pinned_thumbprints: BTreeSet::from([thumbprint_of_der(&leaf_other)]),
                inbound_secret_sha256: SecretHash::of(b"ap-secret"),
            },
            FederationPeer {
                name: "us".parse().expect("name"),
                pinned_thumbprints: BTreeSet::from([thumbprint_of_der(&leaf_us)]),
                inbound_secret_sha256: SecretHash::of(b"us-secret"),
            },
        ];
        Case {
            peers,
            leaf_us,
            leaf_other,
        }
    }

    fn hexed(s: &[u8]) -> Vec<u8> {
        hex::encode(s).into_bytes()
    }

    fn red(f: &[Factor]) -> PingResponse {
        PingResponse::Red { failed: f.to_vec() }
    }

    // Property: green needs both factors from the same peer; every other
    // combination is red and names exactly the factors that failed.
    #[test]
    fn factor_table() {
        let c = case();
        let now = SystemTime::now();
        let us = hexed(b"us-secret");
        let ap = hexed(b"ap-secret");
        // (certificate, secret header, expected answer, why)
        type Row<'a> = (
            Option<&'a CertificateDer<'a>>,
            Option<&'a [u8]>,
            PingResponse,
            &'a str,
        );
        let table: Vec<Row<'_>> = vec![
            (
                Some(&c.leaf_us),
                Some(&us),
                PingResponse::Green,
                "pinned + own secret",
            ),
            (
                Some(&c.leaf_us),
                Some(&ap),
                red(&[Factor::Secret]),
                "another peer's secret",
            ),
            (
                Some(&c.leaf_us),
                Some(b"00ff"),
                red(&[Factor::Secret]),
                "wrong secret",
            ),
            (
                Some(&c.leaf_us),
                Some(b"not hex"),
                red(&[Factor::Secret]),
                "not hex",
            ),
            (Some(&c.leaf_us), None, red(&[Factor::Secret]), "no header"),
            (
                None,
                Some(&us),
                red(&[Factor::Thumbprint]),
                "no certificate",
            ),
            (
                None,
                None,
                red(&[Factor::Thumbprint, Factor::Secret]),
                "nothing",
            ),
            (
                Some(&c.leaf_other),
                Some(&ap),
                PingResponse::Green,
                "the other peer",
            ),
        ];
        for (leaf, secret, want, why) in table {
            let got = evaluate(&c.peers, leaf, secret, now);
            assert_eq!(got.response, want, "{why}");
        }
    }

    // Property: a certificate nobody pinned fails the thumbprint factor
    // only when the secret is right, both factors otherwise.
    #[test]
    fn unpinned_certificate() {
        let c = case();
        let stranger = leaf(
            &DevCa::generate("stranger", Duration::from_secs(86_400)).expect("CA"),
            "us",
        );
        let now = SystemTime::now();
        let e = evaluate(&c.peers, Some(&stranger), Some(&hexed(b"us-secret")), now);
        assert_eq!(e.response, red(&[Factor::Thumbprint]));
        assert_eq!(e.peer, None);
        assert_eq!(e.thumbprint, Some(thumbprint_of_der(&stranger)));
        let e = evaluate(&c.peers, Some(&stranger), Some(b"abcd"), now);
        assert_eq!(e.response, red(&[Factor::Thumbprint, Factor::Secret]));
    }

    // Property: a pinned certificate outside its validity period does not
    // count as pinned.
    #[test]
    fn expired_or_future_certificate_is_not_pinned() {
        let c = case();
        let us = hexed(b"us-secret");
        for when in [days(SystemTime::now(), 91), days(SystemTime::now(), -1)] {
            let e = evaluate(&c.peers, Some(&c.leaf_us), Some(&us), when);
            assert_eq!(e.response, red(&[Factor::Thumbprint]));
        }
    }

    // Property: the JSON shape is {"status":"green"} and
    // {"status":"red","failed":[...]}.
    #[test]
    fn json_shape() {
        assert_eq!(
            serde_json::to_string(&PingResponse::Green).expect("json"),
            r#"{"status":"green"}"#
        );
        assert_eq!(
            serde_json::to_string(&red(&[Factor::Thumbprint, Factor::Secret])).expect("json"),
            r#"{"status":"red","failed":["thumbprint","secret"]}"#
        );
    }
}
