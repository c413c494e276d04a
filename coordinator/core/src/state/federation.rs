//! Federation pins in the replicated state: for each region, the
//! thumbprints of its control plane's federation client certificate that
//! every other region must pin now, and the public certificates (PEM) by
//! thumbprint, so that each coordinator can hand its own control plane the
//! certificates and write them as files.
//!
//! A region's coordinator publishes its certificate
//! (`PublishFederationCert`); the first one published becomes the region's
//! pin. Later changes of the pins come only from the phases of a federation
//! pin rotation (see `rotations.rs`). The thumbprint is computed here from
//! the PEM (SHA-256 of the certificate's DER), so it cannot disagree with
//! the certificate; whether the DER is a well-formed X.509 certificate is
//! checked by the publishing coordinator, which loaded it.

use std::collections::{BTreeMap, BTreeSet};

use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use ring::digest;
use serde::{Deserialize, Serialize};

use super::{ReplicatedState, RowKey};
use crate::command::Rejection;
use crate::ids::{RegionName, Thumbprint};
use crate::member::MemberRole;
use crate::rotation::PinSubject;

/// Largest PEM a `PublishFederationCert` may carry, bytes.
pub const MAX_FEDERATION_CERT_PEM: usize = 16 * 1024;

/// One region's federation pins and the certificates behind them.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct FederationPins {
    /// What every other region pins for this region now.
    pub pins: BTreeSet<Thumbprint>,
    /// Public certificates (one PEM block each) by thumbprint: every pinned
    /// one, and the one a rotation may move to.
    pub certs: BTreeMap<Thumbprint, String>,
}

impl FederationPins {
    /// The PEM bundle of the pinned certificates (thumbprint order); a pin
    /// whose certificate is unknown is left out.
    pub fn pinned_pem_bundle(&self) -> String {
        self.pins
            .iter()
            .filter_map(|t| self.certs.get(t))
            .map(|p| {
                let mut p = p.trim_end().to_string();
                p.push('\n');
                p
            })
            .collect()
    }
}

/// The SHA-256 thumbprint of the DER inside a PEM holding exactly one
/// `CERTIFICATE` block, and that block (normalized: header, base64 in
/// 64-character lines, footer).
pub fn certificate_thumbprint(pem: &str) -> Result<(Thumbprint, String), String> {
    const BEGIN: &str = "-----BEGIN CERTIFICATE-----";
    const END: &str = "-----END CERTIFICATE-----";
    if pem.matches(BEGIN).count() != 1 || pem.matches(END).count() != 1 {
        return Err("the PEM must hold exactly one CERTIFICATE block".into());
    }
    let start = pem.find(BEGIN).unwrap_or_default() + BEGIN.len();
    let end = pem.find(END).unwrap_or_default();
    if end < start {
        return Err("the CERTIFICATE block is malformed".into());
    }
    let body: String = pem[start..end]
        .chars()
        .filter(|c| !c.is_ascii_whitespace())
        .collect();
    let der = STANDARD
        .decode(body.as_bytes())
        .map_err(|_| "the CERTIFICATE block is not valid base64".to_string())?;
    if der.is_empty() {
        return Err("the CERTIFICATE block is empty".into());
    }
    let hash = digest::digest(&digest::SHA256, &der);
    let mut t = [0u8; 32];
    t.copy_from_slice(hash.as_ref());
    let b64 = STANDARD.encode(&der);
    let mut normalized = String::from(BEGIN);
    normalized.push('\n');
    for chunk in b64.as_bytes().chunks(64) {
        normalized.push_str(&String::from_utf8_lossy(chunk));
        normalized.push('\n');
    }
    normalized.push_str(END);
    normalized.push('\n');
    Ok((Thumbprint(t), normalized))
}

/// Whether `actor` is a coordinator (`node:<id>`) of a member serving
/// `region`.
fn is_region_coordinator(s: &ReplicatedState, actor: &str, region: &RegionName) -> bool {
    let Some(id) = actor
        .trim()
        .strip_prefix("node:")
        .and_then(|n| n.parse::<u64>().ok())
    else {
        return false;
    };
    s.members
        .get(&id)
        .is_some_and(|m| m.role == MemberRole::Region && &m.region == region)
}

impl ReplicatedState {
    /// Committed federation pins by region (regions that published one).
    pub fn federation_pins(&self) -> &BTreeMap<RegionName, FederationPins> {
        &self.federation
    }

    pub(super) fn publish_federation_cert(
        &mut self,
        actor: &str,
        region: &RegionName,
        pem: &str,
    ) -> Result<String, Rejection> {
        if !is_region_coordinator(self, actor, region) {
            return Err(Rejection::Conflict {
                message: format!(
                    "only a coordinator of region {region} publishes its federation certificate (not {actor})"
                ),
            });
        }
        let (thumbprint, pem) =
            certificate_thumbprint(pem).map_err(|message| Rejection::Invalid { message })?;
        if let Some((other, _)) = self
            .federation
            .iter()
            .find(|(r, f)| *r != region && f.certs.contains_key(&thumbprint))
        {
            return Err(Rejection::Conflict {
                message: format!(
                    "{} is already the federation certificate of region {other}",
                    thumbprint.short()
                ),
            });
        }
        let rotating_to = self
            .running_rotation(&PinSubject::Federation(region.clone()))
            .map(|r| r.new_thumbprint());
        let entry = self.federation.entry(region.clone()).or_default();
        let known = entry.certs.contains_key(&thumbprint);
        // Keep what is pinned, what a running rotation moves to, and the
        // newest published; drop other unpinned certificates.
        entry
            .certs
            .retain(|t, _| entry.pins.contains(t) || Some(*t) == rotating_to);
        entry.certs.insert(thumbprint, pem);
        let first = entry.pins.is_empty();
        if first {
            entry.pins.insert(thumbprint);
        }
        self.dirty.insert(RowKey::Federation(region.clone()));
        if first {
            self.bump_epoch();
            Ok(format!(
                "federation certificate of {region} published and pinned ({})",
                thumbprint.short()
            ))
        } else if known {
            Ok(format!(
                "federation certificate of {region} already known ({})",
                thumbprint.short()
            ))
        } else {
            Ok(format!(
                "federation certificate of {region} published ({}); a rotation pins it",
                thumbprint.short()
            ))
        }
    }

    /// A federation rotation of `region` changed phase: its pins become
    /// `trusted`; certificates neither trusted nor rotated to are dropped.
    pub(super) fn set_federation_pins(
        &mut self,
        region: &RegionName,
        trusted: BTreeSet<Thumbprint>,
        finished: bool,
        new: Thumbprint,
    ) {
        let Some(entry) = self.federation.get_mut(region) else {
            return;
        };
        entry.pins = trusted;
        entry
            .certs
            .retain(|t, _| entry.pins.contains(t) || (!finished && *t == new));
        self.dirty.insert(RowKey::Federation(region.clone()));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The thumbprint is the SHA-256 of the decoded DER, whatever the line
    /// breaks, and a PEM with two or no certificates is refused.
    #[test]
    fn thumbprint_of_a_pem_is_sha256_of_its_der() {
        let der = b"not really a certificate, but DER bytes all the same";
        let b64 = STANDARD.encode(der);
        let pem = format!(
            "junk before\n-----BEGIN CERTIFICATE-----\n{}\n{}\n-----END CERTIFICATE-----\n",
            &b64[..10],
            &b64[10..]
        );
        let (t, normalized) = certificate_thumbprint(&pem).expect("pem");
        let want = digest::digest(&digest::SHA256, der);
        assert_eq!(&t.0[..], want.as_ref());
        assert_eq!(certificate_thumbprint(&normalized).expect("again").0, t);
        assert!(certificate_thumbprint(&format!("{pem}{pem}")).is_err());
        assert!(certificate_thumbprint("nothing").is_err());
        assert!(certificate_thumbprint(
            "-----BEGIN CERTIFICATE-----\n!!\n-----END CERTIFICATE-----"
        )
        .is_err());
    }
}
