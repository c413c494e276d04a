//! Identifiers shared by every layer: node ids, region names, certificate
//! thumbprints and request ids. Parsing validates; the types cannot hold a
//! malformed value.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// A coordinator's Raft node id. Unique in the cluster, never reused.
pub type NodeId = u64;

/// Errors from parsing an identifier.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IdError {
    #[error("thumbprint must be 64 hex digits (SHA-256), optionally separated by ':'; got {0} hex digits")]
    ThumbprintLength(usize),
    #[error("thumbprint contains a character that is not a hex digit")]
    ThumbprintChar,
    #[error(
        "region name must be 1-63 characters of a-z, 0-9 and '-', starting with a letter: {0:?}"
    )]
    RegionName(String),
    #[error("request id must be 1-128 printable ASCII characters")]
    RequestId,
}

/// The SHA-256 thumbprint of a DER certificate: what a peer pins.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Thumbprint(pub [u8; 32]);

impl Thumbprint {
    /// The first 12 hex digits, for logs (field name `thumbprint`).
    pub fn short(&self) -> String {
        self.to_string()[..12].to_string()
    }
}

impl fmt::Display for Thumbprint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for b in self.0 {
            write!(f, "{b:02x}")?;
        }
        Ok(())
    }
}

impl fmt::Debug for Thumbprint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Thumbprint({})", self.short())
    }
}

impl FromStr for Thumbprint {
    type Err = IdError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let hex: Vec<u8> = s.bytes().filter(|b| *b != b':').collect();
        if hex.len() != 64 {
            return Err(IdError::ThumbprintLength(hex.len()));
        }
        let mut out = [0u8; 32];
        for (i, pair) in hex.chunks(2).enumerate() {
            let hi = hex_val(pair[0]).ok_or(IdError::ThumbprintChar)?;
            let lo = hex_val(pair[1]).ok_or(IdError::ThumbprintChar)?;
            out[i] = hi << 4 | lo;
        }
        Ok(Thumbprint(out))
    }
}

fn hex_val(c: u8) -> Option<u8> {
    match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        b'A'..=b'F' => Some(c - b'A' + 10),
        _ => None,
    }
}

impl Serialize for Thumbprint {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.to_string())
    }
}

impl<'de> Deserialize<'de> for Thumbprint {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// A region's name: a DNS label (`eu-west`, `us1`), unique in the federation.
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct RegionName(String);

impl RegionName {
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for RegionName {
    type Error = IdError;
    fn try_from(s: String) -> Result<Self, Self::Error> {
        let ok = !s.is_empty()
            && s.len() <= 63
            && s.as_bytes()[0].is_ascii_lowercase()
            && s.bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
        if ok {
            Ok(RegionName(s))
        } else {
            Err(IdError::RegionName(s))
        }
    }
}

impl FromStr for RegionName {
    type Err = IdError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        RegionName::try_from(s.to_string())
    }
}

impl From<RegionName> for String {
    fn from(r: RegionName) -> String {
        r.0
    }
}

impl fmt::Display for RegionName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for RegionName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}", self.0)
    }
}

/// An idempotency key chosen by the client of a write; a retried write with
/// the same id applies once.
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct RequestId(String);

impl RequestId {
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for RequestId {
    type Error = IdError;
    fn try_from(s: String) -> Result<Self, Self::Error> {
        if !s.is_empty() && s.len() <= 128 && s.bytes().all(|b| b.is_ascii_graphic()) {
            Ok(RequestId(s))
        } else {
            Err(IdError::RequestId)
        }
    }
}

impl FromStr for RequestId {
    type Err = IdError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        RequestId::try_from(s.to_string())
    }
}

impl From<RequestId> for String {
    fn from(r: RequestId) -> String {
        r.0
    }
}

impl fmt::Display for RequestId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for RequestId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}", self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // Property: a thumbprint round-trips through its hex form, accepts the
    // colon-separated form operators copy from openssl, and rejects bad input.
    #[test]
    fn thumbprint_parse_round_trip_and_errors() {
        let t = Thumbprint([0xab; 32]);
        let s = t.to_string();
        assert_eq!(s.len(), 64);
        assert_eq!(s.parse::<Thumbprint>(), Ok(t));
        let colons: String = s
            .as_bytes()
            .chunks(2)
            .map(|c| String::from_utf8_lossy(c).to_uppercase())
            .collect::<Vec<_>>()
            .join(":");
        assert_eq!(colons.parse::<Thumbprint>(), Ok(t));
        assert_eq!(
            "abc".parse::<Thumbprint>(),
            Err(IdError::ThumbprintLength(3))
        );
        assert_eq!(
            "zz".repeat(32).parse::<Thumbprint>(),
            Err(IdError::ThumbprintChar)
        );
        assert_eq!(t.short(), "abababababab");
    }

    // Property: region names are DNS labels; anything else is refused.
    #[test]
    fn region_names_are_validated() {
        assert!("eu-west-1".parse::<RegionName>().is_ok());
        for bad in ["", "EU", "1eu", "eu_west", &"a".repeat(64)] {
            assert!(bad.parse::<RegionName>().is_err(), "{bad:?} accepted");
        }
    }

    // Property: request ids are bounded printable ASCII.
    #[test]
    fn request_ids_are_validated() {
        assert!("abc-123".parse::<RequestId>().is_ok());
        assert!("".parse::<RequestId>().is_err());
        assert!("a b".parse::<RequestId>().is_err());
        assert!("x".repeat(129).parse::<RequestId>().is_err());
    }
}
