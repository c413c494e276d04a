//! Staged handover authorizations: Tern's answer to the gap in Ampora's
//! ADR-051 handover, whose token must be signed by a *live* source region.
//!
//! This module owns the authorization format and its checks, and nothing
//! else. Ahead of any outage, each region's coordinator signs, with the
//! region's Ed25519 handover key, one [`BatchHeader`] per batch of many
//! agents: the header holds the root of a Merkle tree over one
//! [`TokenLeaf`] per agent (agent id, leaf-certificate fingerprint, home,
//! target and target endpoint). The batch and its leaves are committed
//! through Raft, so any surviving coordinator can later hand any covered
//! agent its [`HandoverToken`]: header + signature + that agent's leaf +
//! its Merkle proof + the source's agent CA trust bundle. The target
//! region's control plane redeems the token with [`verify_token`] when the
//! agent first connects, without the source being alive. One signature
//! covers the whole batch; a token costs `O(log n)` hashes to check.
//!
//! What it must not do: no I/O, clock or randomness. Time comes in as a
//! [`Millis`] argument; Ed25519 signing is deterministic, so signing with a
//! key handed in is allowed here, but *generating* a key is the server's
//! job. Redemption bookkeeping (one agent row per redeemed token, the
//! source marking the agent moved) belongs to the region's control plane.
//!
//! # Formats (version 1)
//!
//! All hex is lowercase; decoding refuses any other spelling, so a token
//! has exactly one encoding.
//!
//! Leaf hash (what the Merkle tree is built over):
//! `SHA-256(0x00 || "tern-handover-leaf-v1\n" || str(agent_id) ||
//! fingerprint (32 raw bytes) || str(home) || str(target) ||
//! str(target_endpoint))`, where `str(s)` is the byte length of `s` as a
//! big-endian u64 followed by its UTF-8 bytes.
//!
//! Merkle tree: an inner node is `SHA-256(0x01 || left || right)`; the
//! `0x00`/`0x01` prefixes keep a leaf from ever being mistaken for a node
//! (second-preimage). Levels are built pairwise from the left; an odd last
//! node is *promoted* unchanged to the next level. This is the same tree
//! shape as RFC 6962's Merkle Tree Hash. A proof lists the siblings from
//! the leaf level upward, skipping levels where the node was promoted; it
//! is checked against the index and the signed `leaf_count`.
//!
//! Signed bytes ([`BatchHeader::signing_bytes`]):
//! `"tern-handover-batch-v1\n" || u32 version || str(source) ||
//! str(key_id) || u64 batch_id || str(root) || u32 leaf_count ||
//! u64 issued_at || u64 not_after || u64 epoch ||
//! str(trust_bundle_sha256)`, integers big-endian.
//!
//! Token text ([`HandoverToken::encode`]): base64url without padding of
//! the compact JSON
//! `{"header":{"version":1,"source":..,"key_id":..,"batch_id":..,"root":..,
//! "leaf_count":..,"issued_at":..,"not_after":..,"epoch":..,
//! "trust_bundle_sha256":..},"signature":"<hex>","leaf":{"agent_id":..,
//! "fingerprint":..,"home":..,"target":..,"target_endpoint":..},
//! "index":..,"proof":["<hex>",..],"trust_bundle_pem":".."}`,
//! at most [`MAX_ENCODED_TOKEN_LEN`] characters; unknown fields are
//! refused.
//!
//! A token is a bearer authorization bound to one agent's certificate:
//! never log it. `Debug` of a token or batch redacts the secret parts.

use std::collections::BTreeSet;
use std::fmt;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use ring::digest;
use ring::signature::{self, Ed25519KeyPair, KeyPair as _};
use serde::{Deserialize, Deserializer, Serialize};

use crate::ids::{RegionName, Thumbprint};
use crate::time::Millis;

/// The format version this build signs and understands.
pub const HANDOVER_VERSION: u32 = 1;
/// Longest allowed lifetime of a batch (`not_after - issued_at`): 1 hour,
/// Ampora's default handover TTL.
pub const MAX_TOKEN_TTL_MS: u64 = 3_600_000;
/// How far a verifier's clock may be behind the signer's: a token is
/// accepted from `issued_at - HANDOVER_CLOCK_SKEW_MS` on.
pub const HANDOVER_CLOCK_SKEW_MS: u64 = 60_000;
/// Longest encoded token [`HandoverToken::decode`] accepts, in bytes.
/// Every token built from a batch [`sign_batch`] accepted fits.
pub const MAX_ENCODED_TOKEN_LEN: usize = 64 * 1024;
/// Longest trust bundle PEM a batch may carry, in bytes.
pub const MAX_TRUST_BUNDLE_LEN: usize = 16 * 1024;
/// Longest agent id in a leaf, in bytes.
pub const MAX_AGENT_ID_LEN: usize = 256;
/// Longest target endpoint in a leaf, in bytes.
pub const MAX_ENDPOINT_LEN: usize = 1024;

const BATCH_DOMAIN: &[u8] = b"tern-handover-batch-v1\n";
const LEAF_DOMAIN: &[u8] = b"tern-handover-leaf-v1\n";
const LEAF_PREFIX: u8 = 0x00;
const NODE_PREFIX: u8 = 0x01;
/// A proof never needs more siblings than levels of a `u32`-sized tree.
const MAX_PROOF_LEN: usize = 32;
const PEM_CERT_MARKER: &str = "-----BEGIN CERTIFICATE-----";

/// The key id of a handover public key: the first 16 hex digits of the
/// SHA-256 of its raw 32 bytes. Headers name their signing key by it.
pub fn handover_key_id(public_key: &[u8]) -> String {
    let mut id = to_hex(&sha256(public_key));
    id.truncate(16);
    id
}

/// One agent's authorization, a leaf of a batch's Merkle tree.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TokenLeaf {
    /// The agent's id in its home region.
    pub agent_id: String,
    /// SHA-256 of the agent's current leaf certificate (DER), lowercase hex
    /// on the wire. The target accepts only an agent presenting it.
    #[serde(with = "strict_thumbprint")]
    pub fingerprint: Thumbprint,
    /// The agent's home region: must be the batch's signing region.
    pub home: RegionName,
    /// The region allowed to accept the agent.
    pub target: RegionName,
    /// The target's OpAMP endpoint the agent reconnects to.
    pub target_endpoint: String,
}

impl TokenLeaf {
    /// The leaf's canonical bytes (see the module docs): unambiguous, since
    /// every variable-length field is length-prefixed.
    pub fn canonical_bytes(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(
            LEAF_DOMAIN.len()
                + 32
                + 32
                + self.agent_id.len()
                + self.home.as_str().len()
                + self.target.as_str().len()
                + self.target_endpoint.len(),
        );
        out.extend_from_slice(LEAF_DOMAIN);
        put_str(&mut out, &self.agent_id);
        out.extend_from_slice(&self.fingerprint.0);
        put_str(&mut out, self.home.as_str());
        put_str(&mut out, self.target.as_str());
        put_str(&mut out, &self.target_endpoint);
        out
    }

    /// The leaf's hash in the Merkle tree: `SHA-256(0x00 || canonical)`.
    pub fn leaf_hash(&self) -> [u8; 32] {
        MerkleTree::hash_leaf(&self.canonical_bytes())
    }
}

/// The signed part of a batch. One signature over [`Self::signing_bytes`]
/// authorizes every leaf under `root`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BatchHeader {
    /// Format version, [`HANDOVER_VERSION`].
    pub version: u32,
    /// The signing region: every leaf's home.
    pub source: RegionName,
    /// [`handover_key_id`] of the signing key.
    #[serde(deserialize_with = "de_key_id")]
    pub key_id: String,
    /// Chosen by the source; unique per source.
    pub batch_id: u64,
    /// Merkle root over the leaves, lowercase hex.
    #[serde(deserialize_with = "de_hex32")]
    pub root: String,
    /// Number of leaves (at least 1).
    pub leaf_count: u32,
    /// When the batch was signed (leader ms).
    pub issued_at: Millis,
    /// Tokens are refused from this instant on (leader ms); at most
    /// [`MAX_TOKEN_TTL_MS`] after `issued_at`.
    pub not_after: Millis,
    /// The federation epoch when the batch was signed.
    pub epoch: u64,
    /// SHA-256 of the source's agent CA trust bundle PEM, lowercase hex.
    #[serde(deserialize_with = "de_hex32")]
    pub trust_bundle_sha256: String,
}

impl BatchHeader {
    /// The bytes the Ed25519 signature covers: a domain tag, then every
    /// field in a fixed order (see the module docs).
    pub fn signing_bytes(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(256);
        out.extend_from_slice(BATCH_DOMAIN);
        out.extend_from_slice(&self.version.to_be_bytes());
        put_str(&mut out, self.source.as_str());
        put_str(&mut out, &self.key_id);
        out.extend_from_slice(&self.batch_id.to_be_bytes());
        put_str(&mut out, &self.root);
        out.extend_from_slice(&self.leaf_count.to_be_bytes());
        out.extend_from_slice(&self.issued_at.0.to_be_bytes());
        out.extend_from_slice(&self.not_after.0.to_be_bytes());
        out.extend_from_slice(&self.epoch.to_be_bytes());
        put_str(&mut out, &self.trust_bundle_sha256);
        out
    }
}

/// A signed batch, as committed through Raft (with its leaves beside it).
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SignedBatch {
    pub header: BatchHeader,
    /// Ed25519 signature over `header.signing_bytes()`; lowercase hex on
    /// the wire.
    #[serde(with = "lower_hex_bytes")]
    pub signature: Vec<u8>,
}

impl fmt::Debug for SignedBatch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SignedBatch")
            .field("header", &self.header)
            .field("signature", &format_args!("<redacted>"))
            .finish()
    }
}

/// What a batch is about, apart from its leaves: the arguments of
/// [`sign_batch`] that are easy to swap by mistake, named.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BatchSpec {
    /// The signing region; every leaf's home.
    pub source: RegionName,
    pub batch_id: u64,
    /// The federation epoch at signing.
    pub epoch: u64,
    pub issued_at: Millis,
    /// At most [`MAX_TOKEN_TTL_MS`] after `issued_at`.
    pub not_after: Millis,
}

/// Why a batch could not be signed or a token built from it. These are
/// caller errors on the signing side.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HandoverError {
    #[error("a handover batch needs at least one leaf")]
    EmptyBatch,
    #[error("a handover batch holds at most {max} leaves; got {got}")]
    TooManyLeaves { got: usize, max: u32 },
    #[error(
        "handover lifetime must be 1 to {max_ms} ms (not_after after issued_at); \
         got issued_at {issued_at} ms, not_after {not_after} ms"
    )]
    InvalidLifetime {
        issued_at: u64,
        not_after: u64,
        max_ms: u64,
    },
    #[error(
        "trust bundle PEM must be 1 to {max} bytes of printable ASCII holding a \
         certificate: {reason}"
    )]
    InvalidTrustBundle { reason: &'static str, max: usize },
    #[error("leaf {index}: {field} {reason}")]
    InvalidLeaf {
        index: usize,
        field: &'static str,
        reason: &'static str,
    },
    #[error("leaf {index}: home region {home} is not the signing region {source_region}")]
    LeafHomeNotSource {
        index: usize,
        home: RegionName,
        source_region: RegionName,
    },
    #[error("leaf {index}: target region {target} is the agent's home")]
    LeafTargetIsHome { index: usize, target: RegionName },
    #[error("leaf {index}: agent {agent_id:?} appears more than once in the batch")]
    DuplicateAgent { index: usize, agent_id: String },
    #[error("leaf index {index} is out of range for a batch of {leaf_count} leaves")]
    IndexOutOfRange { index: u32, leaf_count: u32 },
    #[error("the signed batch, Merkle tree and leaves given do not belong together: {0}")]
    BatchMismatch(&'static str),
    #[error("the trust bundle PEM given does not match the batch's trust_bundle_sha256")]
    TrustBundleMismatch,
}

/// Why a token (or a batch) is refused. Each check has its own variant;
/// messages never include secret material.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    #[error("handover token is empty")]
    Empty,
    #[error("handover token is {len} bytes encoded; the limit is {max}")]
    TooLarge { len: usize, max: usize },
    #[error("handover token is not valid unpadded base64url")]
    BadBase64,
    #[error(
        "handover token body is not a valid version 1 token ({kind} error at line {line}, \
         column {column})"
    )]
    BadJson {
        kind: &'static str,
        line: usize,
        column: usize,
    },
    #[error(
        "handover format version {0} is not supported (this build understands version {v})",
        v = HANDOVER_VERSION
    )]
    UnsupportedVersion(u32),
    #[error("no handover key is known for source region {source_region} with key id {key_id}")]
    UnknownKey {
        source_region: RegionName,
        key_id: String,
    },
    #[error(
        "the key found for source region {source_region} under key id {expected} has key id \
         {actual}"
    )]
    KeyIdMismatch {
        source_region: RegionName,
        expected: String,
        actual: String,
    },
    #[error(
        "the batch signature does not verify with key {key_id} of source region {source_region}"
    )]
    BadSignature {
        source_region: RegionName,
        key_id: String,
    },
    #[error(
        "the batch lifetime is invalid: not_after must be after issued_at by at most {max_ms} ms; \
         got issued_at {issued_at} ms, not_after {not_after} ms"
    )]
    InvalidLifetime {
        issued_at: u64,
        not_after: u64,
        max_ms: u64,
    },
    #[error("leaf index {index} is out of range for a batch of {leaf_count} leaves")]
    IndexOutOfRange { index: u32, leaf_count: u32 },
    #[error(
        "the Merkle proof does not reproduce the signed root (leaf or proof altered, or taken \
         from another batch)"
    )]
    BadProof,
    #[error("the batch signs {signed} leaves but {given} were given")]
    LeafCountMismatch { signed: u32, given: usize },
    #[error("the leaves given do not hash to the signed Merkle root")]
    RootMismatch,
    #[error("leaf {index}: agent {agent_id:?} appears more than once in the batch")]
    DuplicateAgent { index: usize, agent_id: String },
    #[error("the token's trust bundle does not match the signed trust_bundle_sha256")]
    TrustBundleMismatch,
    #[error("the agent's home region {home} is not the signing region {source_region}")]
    HomeNotSource {
        home: RegionName,
        source_region: RegionName,
    },
    #[error("the token is for target region {target}, not this region {this_region}")]
    WrongTarget {
        target: RegionName,
        this_region: RegionName,
    },
    #[error(
        "the presented certificate fingerprint {presented} is not the token's {expected} \
         (a token is valid only for its own agent)"
    )]
    FingerprintMismatch {
        expected: Thumbprint,
        presented: Thumbprint,
    },
    #[error("the token expired at {not_after} ms (now {now} ms)")]
    Expired { not_after: u64, now: u64 },
    #[error(
        "the token is not valid before {issued_at} ms; now ({now} ms) is earlier than the \
         allowed {skew_ms} ms clock skew"
    )]
    NotYetValid {
        issued_at: u64,
        now: u64,
        skew_ms: u64,
    },
}

/// A binary Merkle tree over leaf hashes, every level kept so proofs are
/// `O(log n)` lookups. Building it is `O(n)` hashes.
#[derive(Clone, PartialEq, Eq)]
pub struct MerkleTree {
    /// `levels[0]` holds the leaf hashes; each next level the parents; the
    /// last level holds the root alone (or nothing, for an empty tree).
    levels: Vec<Vec<[u8; 32]>>,
}

impl fmt::Debug for MerkleTree {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MerkleTree")
            .field("leaf_count", &self.leaf_count())
            .field("root", &self.root_hex())
            .finish()
    }
}

impl MerkleTree {
    /// `SHA-256(0x00 || bytes)`: the hash of a leaf's canonical bytes.
    pub fn hash_leaf(bytes: &[u8]) -> [u8; 32] {
        let mut ctx = digest::Context::new(&digest::SHA256);
        ctx.update(&[LEAF_PREFIX]);
        ctx.update(bytes);
        to_array(ctx.finish())
    }

    /// `SHA-256(0x01 || left || right)`: the hash of an inner node.
    pub fn hash_node(left: &[u8; 32], right: &[u8; 32]) -> [u8; 32] {
        let mut ctx = digest::Context::new(&digest::SHA256);
        ctx.update(&[NODE_PREFIX]);
        ctx.update(left);
        ctx.update(right);
        to_array(ctx.finish())
    }

    /// Builds the tree over `leaf_hashes`, in the order given. Pairs are
    /// hashed from the left; an odd last node is promoted unchanged.
    pub fn new(leaf_hashes: Vec<[u8; 32]>) -> MerkleTree {
        let mut levels = vec![leaf_hashes];
        loop {
            let prev = match levels.last() {
                Some(level) if level.len() > 1 => level,
                _ => break,
            };
            let mut next = Vec::with_capacity(prev.len().div_ceil(2));
            let mut pairs = prev.chunks_exact(2);
            for pair in &mut pairs {
                next.push(MerkleTree::hash_node(&pair[0], &pair[1]));
            }
            if let [last] = pairs.remainder() {
                next.push(*last);
            }
            levels.push(next);
        }
        MerkleTree { levels }
    }

    /// The tree over the hashes of `leaves`, in the order given.
    pub fn from_leaves(leaves: &[TokenLeaf]) -> MerkleTree {
        MerkleTree::new(leaves.iter().map(TokenLeaf::leaf_hash).collect())
    }

    /// Number of leaves.
    pub fn leaf_count(&self) -> usize {
        self.levels.first().map_or(0, Vec::len)
    }

    /// The root. An empty tree's root is `SHA-256("")` (as in RFC 6962);
    /// no batch is ever empty.
    pub fn root(&self) -> [u8; 32] {
        match self.levels.last().and_then(|level| level.first()) {
            Some(root) => *root,
            None => sha256(&[]),
        }
    }

    /// The root as lowercase hex, as in [`BatchHeader::root`].
    pub fn root_hex(&self) -> String {
        to_hex(&self.root())
    }

    /// The hash of leaf `index`, if there is one.
    pub fn leaf_hash(&self, index: usize) -> Option<[u8; 32]> {
        self.levels.first()?.get(index).copied()
    }

    /// The proof of leaf `index`: its siblings from the leaf level upward,
    /// none for a level where it was promoted. `None` when out of range.
    pub fn proof(&self, index: usize) -> Option<Vec<[u8; 32]>> {
        if index >= self.leaf_count() {
            return None;
        }
        let mut proof = Vec::with_capacity(self.levels.len());
        let mut i = index;
        for level in &self.levels[..self.levels.len() - 1] {
            if let Some(sibling) = level.get(i ^ 1) {
                proof.push(*sibling);
            }
            i /= 2;
        }
        Some(proof)
    }

    /// Whether `proof` takes `leaf_hash` at `index`, in a tree of
    /// `leaf_count` leaves, to `root`. The proof must have exactly the
    /// siblings the tree shape calls for; `index < leaf_count` is required.
    pub fn verify_proof(
        leaf_hash: &[u8; 32],
        index: u32,
        leaf_count: u32,
        proof: &[[u8; 32]],
        root: &[u8; 32],
    ) -> bool {
        if index >= leaf_count || proof.len() > MAX_PROOF_LEN {
            return false;
        }
        let mut node = *leaf_hash;
        let mut i = u64::from(index);
        let mut width = u64::from(leaf_count);
        let mut siblings = proof.iter();
        while width > 1 {
            if (i ^ 1) < width {
                let Some(sibling) = siblings.next() else {
                    return false;
                };
                node = if i % 2 == 0 {
                    MerkleTree::hash_node(&node, sibling)
                } else {
                    MerkleTree::hash_node(sibling, &node)
                };
            }
            i /= 2;
            width = width.div_ceil(2);
        }
        siblings.next().is_none() && node == *root
    }
}

/// Signs one batch over `leaves`, in the order given (the caller sorts):
/// one Ed25519 signature with `key` over the header holding the Merkle
/// root. Returns the batch and its tree (for [`token_for`]).
///
/// Refused: an empty batch; more than `u32::MAX` leaves; a lifetime that
/// is not 1 ms to [`MAX_TOKEN_TTL_MS`]; a trust bundle that is empty,
/// longer than [`MAX_TRUST_BUNDLE_LEN`], not printable ASCII or without a
/// certificate; a leaf whose home is not `spec.source`, whose target is
/// its home, whose agent id or endpoint is empty, too long or holds control
/// characters; an agent id appearing twice.
pub fn sign_batch(
    spec: &BatchSpec,
    trust_bundle_pem: &str,
    leaves: &[TokenLeaf],
    key: &Ed25519KeyPair,
) -> Result<(SignedBatch, MerkleTree), HandoverError> {
    if leaves.is_empty() {
        return Err(HandoverError::EmptyBatch);
    }
    let leaf_count = u32::try_from(leaves.len()).map_err(|_| HandoverError::TooManyLeaves {
        got: leaves.len(),
        max: u32::MAX,
    })?;
    if !lifetime_ok(spec.issued_at, spec.not_after) {
        return Err(HandoverError::InvalidLifetime {
            issued_at: spec.issued_at.0,
            not_after: spec.not_after.0,
            max_ms: MAX_TOKEN_TTL_MS,
        });
    }
    check_trust_bundle(trust_bundle_pem)?;
    let mut seen = BTreeSet::new();
    for (index, leaf) in leaves.iter().enumerate() {
        check_leaf(index, leaf, &spec.source)?;
        if !seen.insert(leaf.agent_id.as_str()) {
            return Err(HandoverError::DuplicateAgent {
                index,
                agent_id: leaf.agent_id.clone(),
            });
        }
    }
    let tree = MerkleTree::from_leaves(leaves);
    let header = BatchHeader {
        version: HANDOVER_VERSION,
        source: spec.source.clone(),
        key_id: handover_key_id(key.public_key().as_ref()),
        batch_id: spec.batch_id,
        root: tree.root_hex(),
        leaf_count,
        issued_at: spec.issued_at,
        not_after: spec.not_after,
        epoch: spec.epoch,
        trust_bundle_sha256: to_hex(&sha256(trust_bundle_pem.as_bytes())),
    };
    let signature = key.sign(&header.signing_bytes()).as_ref().to_vec();
    Ok((SignedBatch { header, signature }, tree))
}

/// Checks a whole batch as committed, before it is staged: version, the
/// signature with `public_key` (whose key id must be the header's), the
/// lifetime, that `leaves` are exactly the signed leaves (count and root),
/// that every leaf's home is the source, and that no agent id repeats.
/// Time is not checked here: that is the redeemer's job.
pub fn verify_batch(
    batch: &SignedBatch,
    leaves: &[TokenLeaf],
    public_key: &[u8],
) -> Result<(), TokenError> {
    verify_header(&batch.header, &batch.signature, |_, _| Some(public_key))?;
    let h = &batch.header;
    if leaves.len() != h.leaf_count as usize {
        return Err(TokenError::LeafCountMismatch {
            signed: h.leaf_count,
            given: leaves.len(),
        });
    }
    let mut seen = BTreeSet::new();
    for (index, leaf) in leaves.iter().enumerate() {
        if leaf.home != h.source {
            return Err(TokenError::HomeNotSource {
                home: leaf.home.clone(),
                source_region: h.source.clone(),
            });
        }
        if !seen.insert(leaf.agent_id.as_str()) {
            return Err(TokenError::DuplicateAgent {
                index,
                agent_id: leaf.agent_id.clone(),
            });
        }
    }
    if MerkleTree::from_leaves(leaves).root_hex() != h.root {
        return Err(TokenError::RootMismatch);
    }
    Ok(())
}

impl SignedBatch {
    /// Checks version, key, signature and lifetime (not the leaves: see
    /// [`verify_batch`]). `public_keys` finds a key by (source, key id).
    pub fn verify<'k, K>(&self, public_keys: K) -> Result<(), TokenError>
    where
        K: Fn(&RegionName, &str) -> Option<&'k [u8]>,
    {
        verify_header(&self.header, &self.signature, public_keys)
    }
}

/// A per-agent handover authorization: the signed header, the agent's leaf,
/// its Merkle proof, and the source's trust bundle. A bearer secret bound
/// to one agent certificate: never log it (`Debug` redacts it).
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HandoverToken {
    pub header: BatchHeader,
    /// Ed25519 signature over `header.signing_bytes()`.
    #[serde(with = "lower_hex_bytes")]
    pub signature: Vec<u8>,
    pub leaf: TokenLeaf,
    /// The leaf's position in the batch.
    pub index: u32,
    /// Sibling hashes from the leaf level upward, lowercase hex.
    #[serde(deserialize_with = "de_hex32_vec")]
    pub proof: Vec<String>,
    /// The source region's agent CA trust bundle.
    pub trust_bundle_pem: String,
}

impl fmt::Debug for HandoverToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HandoverToken")
            .field("agent_id", &self.leaf.agent_id)
            .field("source", &self.header.source)
            .field("target", &self.leaf.target)
            .field("batch_id", &self.header.batch_id)
            .field("epoch", &self.header.epoch)
            .field("not_after", &self.header.not_after)
            .field("signature", &format_args!("<redacted>"))
            .field("proof", &format_args!("<redacted>"))
            .field("trust_bundle_pem", &format_args!("<redacted>"))
            .finish_non_exhaustive()
    }
}

/// Only the version of a token body, read before the full parse so that a
/// token of another version gets a clear error.
#[derive(Deserialize)]
struct VersionProbe {
    header: VersionProbeHeader,
}

#[derive(Deserialize)]
struct VersionProbeHeader {
    version: u32,
}

impl HandoverToken {
    /// The token's text form: base64url, no padding, of its compact JSON.
    /// Deterministic: the same token always encodes the same way.
    pub fn encode(&self) -> String {
        // Strings, integers and sequences of them: serializing cannot fail.
        let body = serde_json::to_vec(self).expect("a token always serializes to JSON");
        URL_SAFE_NO_PAD.encode(body)
    }

    /// Parses a token's text form. Checks only the form (size, base64url,
    /// JSON shape, lowercase hex, version); [`verify_token`] checks the
    /// rest. No surrounding whitespace is allowed.
    pub fn decode(encoded: &str) -> Result<HandoverToken, TokenError> {
        if encoded.is_empty() {
            return Err(TokenError::Empty);
        }
        if encoded.len() > MAX_ENCODED_TOKEN_LEN {
            return Err(TokenError::TooLarge {
                len: encoded.len(),
                max: MAX_ENCODED_TOKEN_LEN,
            });
        }
        let body = URL_SAFE_NO_PAD
            .decode(encoded)
            .map_err(|_| TokenError::BadBase64)?;
        if let Ok(probe) = serde_json::from_slice::<VersionProbe>(&body) {
            if probe.header.version != HANDOVER_VERSION {
                return Err(TokenError::UnsupportedVersion(probe.header.version));
            }
        }
        serde_json::from_slice(&body).map_err(|e| TokenError::BadJson {
            kind: match e.classify() {
                serde_json::error::Category::Io => "I/O",
                serde_json::error::Category::Syntax => "syntax",
                serde_json::error::Category::Data => "data",
                serde_json::error::Category::Eof => "end of input",
            },
            line: e.line(),
            column: e.column(),
        })
    }
}

/// Builds the token of leaf `index` of a signed batch. `tree` and `leaves`
/// must be the batch's (as returned by [`sign_batch`], or rebuilt with
/// [`MerkleTree::from_leaves`] from the committed leaves) and
/// `trust_bundle_pem` the bundle whose hash the header signs; anything
/// else is refused, so a token built here verifies at its target.
pub fn token_for(
    batch: &SignedBatch,
    tree: &MerkleTree,
    leaves: &[TokenLeaf],
    index: u32,
    trust_bundle_pem: &str,
) -> Result<HandoverToken, HandoverError> {
    let h = &batch.header;
    if leaves.len() != h.leaf_count as usize || tree.leaf_count() != leaves.len() {
        return Err(HandoverError::BatchMismatch(
            "the leaf counts of the batch, tree and leaves differ",
        ));
    }
    if tree.root_hex() != h.root {
        return Err(HandoverError::BatchMismatch(
            "the tree's root is not the signed root",
        ));
    }
    let (Some(leaf), Some(proof)) = (leaves.get(index as usize), tree.proof(index as usize)) else {
        return Err(HandoverError::IndexOutOfRange {
            index,
            leaf_count: h.leaf_count,
        });
    };
    if tree.leaf_hash(index as usize) != Some(leaf.leaf_hash()) {
        return Err(HandoverError::BatchMismatch(
            "the leaf is not the tree's leaf at this index",
        ));
    }
    if to_hex(&sha256(trust_bundle_pem.as_bytes())) != h.trust_bundle_sha256 {
        return Err(HandoverError::TrustBundleMismatch);
    }
    Ok(HandoverToken {
        header: h.clone(),
        signature: batch.signature.clone(),
        leaf: leaf.clone(),
        index,
        proof: proof.iter().map(|p| to_hex(p)).collect(),
        trust_bundle_pem: trust_bundle_pem.to_string(),
    })
}

/// Redeems a token at region `this_region`, at time `now`, for an agent
/// whose TLS client certificate has SHA-256 `presented_fingerprint` (taken
/// from the verified handshake, never from the agent's word). Returns the
/// authorized leaf.
///
/// Checks, in this order, each refusal its own [`TokenError`]: version;
/// a key known for (source, key id) by `public_keys`, whose id is the
/// header's; the Ed25519 signature over [`BatchHeader::signing_bytes`];
/// the lifetime (`not_after - issued_at` in 1 ms to [`MAX_TOKEN_TTL_MS`]);
/// `index < leaf_count`; the Merkle proof reproduces the signed root; the
/// trust bundle hash; the leaf's home is the source; the leaf's target is
/// `this_region`; the presented fingerprint is the leaf's; `now <
/// not_after`; `now + HANDOVER_CLOCK_SKEW_MS >= issued_at`.
///
/// A token stays valid until `not_after` and may be presented again by the
/// same agent (a reconnect); recording redemptions is the caller's job.
pub fn verify_token<'t, 'k, K>(
    token: &'t HandoverToken,
    public_keys: K,
    presented_fingerprint: &Thumbprint,
    this_region: &RegionName,
    now: Millis,
) -> Result<&'t TokenLeaf, TokenError>
where
    K: Fn(&RegionName, &str) -> Option<&'k [u8]>,
{
    let h = &token.header;
    verify_header(h, &token.signature, public_keys)?;
    if token.index >= h.leaf_count {
        return Err(TokenError::IndexOutOfRange {
            index: token.index,
            leaf_count: h.leaf_count,
        });
    }
    let root = hex32(&h.root).ok_or(TokenError::BadProof)?;
    if token.proof.len() > MAX_PROOF_LEN {
        return Err(TokenError::BadProof);
    }
    let proof = token
        .proof
        .iter()
        .map(|p| hex32(p))
        .collect::<Option<Vec<_>>>()
        .ok_or(TokenError::BadProof)?;
    let leaf = &token.leaf;
    if !MerkleTree::verify_proof(&leaf.leaf_hash(), token.index, h.leaf_count, &proof, &root) {
        return Err(TokenError::BadProof);
    }
    if to_hex(&sha256(token.trust_bundle_pem.as_bytes())) != h.trust_bundle_sha256 {
        return Err(TokenError::TrustBundleMismatch);
    }
    if leaf.home != h.source {
        return Err(TokenError::HomeNotSource {
            home: leaf.home.clone(),
            source_region: h.source.clone(),
        });
    }
    if &leaf.target != this_region {
        return Err(TokenError::WrongTarget {
            target: leaf.target.clone(),
            this_region: this_region.clone(),
        });
    }
    if &leaf.fingerprint != presented_fingerprint {
        return Err(TokenError::FingerprintMismatch {
            expected: leaf.fingerprint,
            presented: *presented_fingerprint,
        });
    }
    if now >= h.not_after {
        return Err(TokenError::Expired {
            not_after: h.not_after.0,
            now: now.0,
        });
    }
    if now.plus(HANDOVER_CLOCK_SKEW_MS) < h.issued_at {
        return Err(TokenError::NotYetValid {
            issued_at: h.issued_at.0,
            now: now.0,
            skew_ms: HANDOVER_CLOCK_SKEW_MS,
        });
    }
    Ok(leaf)
}

/// Version, key, signature, lifetime: the checks of a header on its own.
fn verify_header<'k, K>(
    header: &BatchHeader,
    signature_bytes: &[u8],
    public_keys: K,
) -> Result<(), TokenError>
where
    K: Fn(&RegionName, &str) -> Option<&'k [u8]>,
{
    if header.version != HANDOVER_VERSION {
        return Err(TokenError::UnsupportedVersion(header.version));
    }
    let public_key =
        public_keys(&header.source, &header.key_id).ok_or_else(|| TokenError::UnknownKey {
            source_region: header.source.clone(),
            key_id: header.key_id.clone(),
        })?;
    let actual = handover_key_id(public_key);
    if actual != header.key_id {
        return Err(TokenError::KeyIdMismatch {
            source_region: header.source.clone(),
            expected: header.key_id.clone(),
            actual,
        });
    }
    signature::UnparsedPublicKey::new(&signature::ED25519, public_key)
        .verify(&header.signing_bytes(), signature_bytes)
        .map_err(|_| TokenError::BadSignature {
            source_region: header.source.clone(),
            key_id: header.key_id.clone(),
        })?;
    if !lifetime_ok(header.issued_at, header.not_after) {
        return Err(TokenError::InvalidLifetime {
            issued_at: header.issued_at.0,
            not_after: header.not_after.0,
            max_ms: MAX_TOKEN_TTL_MS,
        });
    }
    Ok(())
}

/// `0 < not_after - issued_at <= MAX_TOKEN_TTL_MS`.
fn lifetime_ok(issued_at: Millis, not_after: Millis) -> bool {
    not_after > issued_at && not_after.0 - issued_at.0 <= MAX_TOKEN_TTL_MS
}

fn check_trust_bundle(pem: &str) -> Result<(), HandoverError> {
    let invalid = |reason| HandoverError::InvalidTrustBundle {
        reason,
        max: MAX_TRUST_BUNDLE_LEN,
    };
    if pem.is_empty() {
        return Err(invalid("it is empty"));
    }
    if pem.len() > MAX_TRUST_BUNDLE_LEN {
        return Err(invalid("it is too long"));
    }
    if !pem
        .bytes()
        .all(|b| matches!(b, b'\n' | b'\r' | b'\t' | 0x20..=0x7e))
    {
        return Err(invalid("it holds a byte that is not printable ASCII"));
    }
    if !pem.contains(PEM_CERT_MARKER) {
        return Err(invalid("it holds no CERTIFICATE block"));
    }
    Ok(())
}

fn check_leaf(index: usize, leaf: &TokenLeaf, source: &RegionName) -> Result<(), HandoverError> {
    let text = |field: &'static str, value: &str, max: usize| {
        let reason = if value.is_empty() {
            "is empty"
        } else if value.len() > max {
            "is too long"
        } else if value.chars().any(char::is_control) {
            "holds a control character"
        } else {
            return Ok(());
        };
        Err(HandoverError::InvalidLeaf {
            index,
            field,
            reason,
        })
    };
    text("agent_id", &leaf.agent_id, MAX_AGENT_ID_LEN)?;
    text("target_endpoint", &leaf.target_endpoint, MAX_ENDPOINT_LEN)?;
    if &leaf.home != source {
        return Err(HandoverError::LeafHomeNotSource {
            index,
            home: leaf.home.clone(),
            source_region: source.clone(),
        });
    }
    if leaf.target == leaf.home {
        return Err(HandoverError::LeafTargetIsHome {
            index,
            target: leaf.target.clone(),
        });
    }
    Ok(())
}

/// Appends `s` as its byte length (big-endian u64) and its UTF-8 bytes.
fn put_str(out: &mut Vec<u8>, s: &str) {
    out.extend_from_slice(&(s.len() as u64).to_be_bytes());
    out.extend_from_slice(s.as_bytes());
}

fn sha256(data: &[u8]) -> [u8; 32] {
    to_array(digest::digest(&digest::SHA256, data))
}

fn to_array(d: digest::Digest) -> [u8; 32] {
    let mut out = [0u8; 32];
    out.copy_from_slice(d.as_ref());
    out
}

fn to_hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        s.push(char::from(DIGITS[usize::from(b >> 4)]));
        s.push(char::from(DIGITS[usize::from(b & 0x0f)]));
    }
    s
}

fn lower_nibble(c: u8) -> Option<u8> {
    match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        _ => None,
    }
}

/// Decodes lowercase hex only (one spelling per value).
fn from_lower_hex(s: &str) -> Option<Vec<u8>> {
    let pairs = s.as_bytes().chunks_exact(2);
    if !pairs.remainder().is_empty() {
        return None;
    }
    pairs
        .map(|pair| Some(lower_nibble(pair[0])? << 4 | lower_nibble(pair[1])?))
        .collect()
}

fn hex32(s: &str) -> Option<[u8; 32]> {
    from_lower_hex(s)?.try_into().ok()
}

fn is_lower_hex(s: &str, len: usize) -> bool {
    s.len() == len && s.bytes().all(|b| lower_nibble(b).is_some())
}

// Deserializers: their errors never echo the value (it may be a secret).

fn de_hex32<'de, D: Deserializer<'de>>(d: D) -> Result<String, D::Error> {
    let s = String::deserialize(d)?;
    if is_lower_hex(&s, 64) {
        Ok(s)
    } else {
        Err(serde::de::Error::custom("expected 64 lowercase hex digits"))
    }
}

fn de_key_id<'de, D: Deserializer<'de>>(d: D) -> Result<String, D::Error> {
    let s = String::deserialize(d)?;
    if is_lower_hex(&s, 16) {
        Ok(s)
    } else {
        Err(serde::de::Error::custom(
            "expected a key id of 16 lowercase hex digits",
        ))
    }
}

fn de_hex32_vec<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<String>, D::Error> {
    let v = Vec::<String>::deserialize(d)?;
    if v.len() > MAX_PROOF_LEN {
        return Err(serde::de::Error::custom("proof too long"));
    }
    if v.iter().all(|s| is_lower_hex(s, 64)) {
        Ok(v)
    } else {
        Err(serde::de::Error::custom(
            "expected proof entries of 64 lowercase hex digits",
        ))
    }
}

/// `Vec<u8>` as lowercase hex.
mod lower_hex_bytes {
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(bytes: &[u8], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&super::to_hex(bytes))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
        let s = String::deserialize(d)?;
        super::from_lower_hex(&s)
            .ok_or_else(|| serde::de::Error::custom("expected lowercase hex bytes"))
    }
}

/// A [`Thumbprint`] as exactly 64 lowercase hex digits (the general
/// parser also takes upper case and colons: two spellings of one leaf).
mod strict_thumbprint {
    use serde::{Deserialize, Deserializer, Serializer};

    use crate::ids::Thumbprint;

    pub fn serialize<S: Serializer>(t: &Thumbprint, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(t)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Thumbprint, D::Error> {
        let s = String::deserialize(d)?;
        super::hex32(&s)
            .map(Thumbprint)
            .ok_or_else(|| serde::de::Error::custom("expected 64 lowercase hex digits"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn h(n: u32) -> [u8; 32] {
        MerkleTree::hash_leaf(&n.to_be_bytes())
    }

    /// RFC 6962's recursive Merkle Tree Hash (split at the largest power of
    /// two below n), with our leaf and node hashes: the reference shape.
    fn rfc6962_root(leaves: &[[u8; 32]]) -> [u8; 32] {
        match leaves.len() {
            0 => sha256(&[]),
            1 => leaves[0],
            n => {
                let mut k = 1;
                while k * 2 < n {
                    k *= 2;
                }
                MerkleTree::hash_node(&rfc6962_root(&leaves[..k]), &rfc6962_root(&leaves[k..]))
            }
        }
    }

    // Property: the odd-node rule (promote the last node) gives exactly the
    // RFC 6962 tree shape, for every size up to 130 leaves.
    #[test]
    fn promote_rule_matches_rfc6962_shape() {
        for n in 0..=130u32 {
            let leaves: Vec<_> = (0..n).map(h).collect();
            let tree = MerkleTree::new(leaves.clone());
            assert_eq!(tree.root(), rfc6962_root(&leaves), "n = {n}");
            assert_eq!(tree.leaf_count(), n as usize);
        }
    }

    // Property: small trees have the roots the documented rule gives:
    // one leaf is its own root; three leaves promote the third.
    #[test]
    fn small_tree_roots_by_hand() {
        assert_eq!(MerkleTree::new(vec![h(0)]).root(), h(0));
        let two = MerkleTree::hash_node(&h(0), &h(1));
        assert_eq!(MerkleTree::new(vec![h(0), h(1)]).root(), two);
        let three = MerkleTree::hash_node(&two, &h(2));
        assert_eq!(MerkleTree::new(vec![h(0), h(1), h(2)]).root(), three);
        assert_eq!(MerkleTree::new(vec![h(0)]).proof(0), Some(vec![]));
        assert_eq!(
            MerkleTree::new(vec![h(0), h(1), h(2)]).proof(2),
            Some(vec![two])
        );
    }

    // Property: every leaf's proof verifies at its index, for every size up
    // to 70, and fails at any other index, with an extra or a missing
    // sibling, or against another root. (The leaf count is signed, so it is
    // not an attacker's choice; some proofs fit two counts alike.)
    #[test]
    fn proofs_verify_exactly_where_they_should() {
        for n in 1..=70u32 {
            let tree = MerkleTree::new((0..n).map(h).collect());
            let root = tree.root();
            for i in 0..n {
                let proof = tree.proof(i as usize).expect("index in range");
                assert!(
                    MerkleTree::verify_proof(&h(i), i, n, &proof, &root),
                    "n={n} i={i}"
                );
                for j in (0..n).filter(|j| *j != i) {
                    assert!(!MerkleTree::verify_proof(&h(i), j, n, &proof, &root));
                }
                assert!(!MerkleTree::verify_proof(&h(i), i, n, &proof, &h(999)));
                let mut longer = proof.clone();
                longer.push(h(7));
                assert!(!MerkleTree::verify_proof(&h(i), i, n, &longer, &root));
                if let Some((_, shorter)) = proof.split_last() {
                    assert!(!MerkleTree::verify_proof(&h(i), i, n, shorter, &root));
                }
            }
            assert_eq!(tree.proof(n as usize), None);
            assert!(!MerkleTree::verify_proof(&h(0), n, n, &[], &root));
        }
        assert!(!MerkleTree::verify_proof(&h(0), 0, 0, &[], &sha256(&[])));
    }

    // Property: an inner node cannot pass as a leaf: the same bytes hash
    // differently as a leaf and as a node (0x00/0x01 prefixes), and with the
    // signed leaf count a proof that starts at an inner node is refused.
    #[test]
    fn inner_node_is_not_a_leaf() {
        let tree = MerkleTree::new((0..4).map(h).collect());
        let left = MerkleTree::hash_node(&h(0), &h(1));
        let right = MerkleTree::hash_node(&h(2), &h(3));
        let mut both = left.to_vec();
        both.extend_from_slice(&right);
        assert_ne!(MerkleTree::hash_leaf(&both), tree.root());
        assert_eq!(MerkleTree::hash_node(&left, &right), tree.root());
        assert!(!MerkleTree::verify_proof(
            &left,
            0,
            4,
            &[right],
            &tree.root()
        ));
    }

    // Property: 100,000 leaves build (an O(n) construction); no timing is
    // asserted, only that the tree is complete and proofs are short.
    #[test]
    fn hundred_thousand_leaves_build() {
        let n = 100_000u32;
        let tree = MerkleTree::new((0..n).map(h).collect());
        assert_eq!(tree.leaf_count(), n as usize);
        let proof = tree.proof(54_321).expect("in range");
        assert_eq!(proof.len(), 17);
        assert!(MerkleTree::verify_proof(
            &h(54_321),
            54_321,
            n,
            &proof,
            &tree.root()
        ));
    }

    // Property: hex is lowercase only, both ways.
    #[test]
    fn hex_is_lowercase_only() {
        assert_eq!(to_hex(&[0x00, 0xab, 0xff]), "00abff");
        assert_eq!(from_lower_hex("00abff"), Some(vec![0x00, 0xab, 0xff]));
        assert_eq!(from_lower_hex("00ABff"), None);
        assert_eq!(from_lower_hex("abc"), None);
        assert_eq!(from_lower_hex("zz"), None);
    }

    // Property: the lifetime rule is 0 < ttl <= 1 h.
    #[test]
    fn lifetime_bounds() {
        assert!(lifetime_ok(Millis(10), Millis(11)));
        assert!(lifetime_ok(Millis(10), Millis(10 + MAX_TOKEN_TTL_MS)));
        assert!(!lifetime_ok(Millis(10), Millis(10 + MAX_TOKEN_TTL_MS + 1)));
        assert!(!lifetime_ok(Millis(10), Millis(10)));
        assert!(!lifetime_ok(Millis(10), Millis(9)));
    }
}
