//! Tests of the staged handover authorizations (`tern_core` handover
//! module) through the public API: signing a batch, building, encoding,
//! decoding and redeeming tokens, and every refusal. Keys come from fixed
//! seeds; property tests use proptest's seeds and regression files.

use std::collections::BTreeMap;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use proptest::prelude::*;
use ring::digest;
use ring::signature::{Ed25519KeyPair, KeyPair as _};
use tern_core::{
    handover_key_id, sign_batch, token_for, verify_batch, verify_token, BatchHeader, BatchSpec,
    HandoverError, HandoverToken, MerkleTree, Millis, RegionName, SignedBatch, Thumbprint,
    TokenError, TokenLeaf, HANDOVER_CLOCK_SKEW_MS, MAX_AGENT_ID_LEN, MAX_ENCODED_TOKEN_LEN,
    MAX_ENDPOINT_LEN, MAX_TOKEN_TTL_MS, MAX_TRUST_BUNDLE_LEN,
};

const NOW: Millis = Millis(1_700_000_000_000);
const PEM: &str = "-----BEGIN CERTIFICATE-----\nMIIBszCCAVmgAwIBAgIUfakefakefake\n\
                   -----END CERTIFICATE-----\n";
const OTHER_PEM: &str = "-----BEGIN CERTIFICATE-----\nMIIBszCCAVmgAwIBAgIUotherother\n\
                         -----END CERTIFICATE-----\n";
const TARGETS: [&str; 2] = ["us-east", "ap-south"];

/// A named change to a value, for tables of tampering.
type Mutation<T> = (&'static str, Box<dyn Fn(&mut T)>);

fn region(name: &str) -> RegionName {
    name.parse().expect("valid region name")
}

fn source() -> RegionName {
    region("eu-west")
}

fn sha256(data: &[u8]) -> [u8; 32] {
    let mut out = [0u8; 32];
    out.copy_from_slice(digest::digest(&digest::SHA256, data).as_ref());
    out
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn key(seed: u8) -> Ed25519KeyPair {
    Ed25519KeyPair::from_seed_unchecked(&[seed; 32]).expect("a 32-byte seed is a key")
}

fn fingerprint(tag: &str, i: usize) -> Thumbprint {
    Thumbprint(sha256(format!("{tag}-{i}").as_bytes()))
}

fn leaf(i: usize) -> TokenLeaf {
    let target = TARGETS[i % 2];
    TokenLeaf {
        agent_id: format!("agent-{i:06}"),
        fingerprint: fingerprint("cert", i),
        home: source(),
        target: region(target),
        target_endpoint: format!("wss://{target}.example.net:4320/v1/opamp"),
    }
}

fn spec(batch_id: u64) -> BatchSpec {
    BatchSpec {
        source: source(),
        batch_id,
        epoch: 7,
        issued_at: NOW,
        not_after: NOW.plus(MAX_TOKEN_TTL_MS),
    }
}

/// Public keys by (source region, key id), as a redeemer holds them.
#[derive(Default)]
struct Keys(BTreeMap<(RegionName, String), Vec<u8>>);

impl Keys {
    fn with(mut self, region: RegionName, key: &Ed25519KeyPair) -> Keys {
        let public = key.public_key().as_ref().to_vec();
        self.0.insert((region, handover_key_id(&public)), public);
        self
    }

    fn with_raw(mut self, region: RegionName, key_id: &str, public: &[u8]) -> Keys {
        self.0.insert((region, key_id.to_string()), public.to_vec());
        self
    }

    fn get(&self, region: &RegionName, key_id: &str) -> Option<&[u8]> {
        self.0
            .get(&(region.clone(), key_id.to_string()))
            .map(Vec::as_slice)
    }
}

/// A signed batch of `n` leaves by key seed 1 of `eu-west`.
struct Fixture {
    key: Ed25519KeyPair,
    keys: Keys,
    leaves: Vec<TokenLeaf>,
    batch: SignedBatch,
    tree: MerkleTree,
}

impl Fixture {
    fn new(n: usize) -> Fixture {
        let key = key(1);
        let leaves: Vec<_> = (0..n).map(leaf).collect();
        let (batch, tree) = sign_batch(&spec(42), PEM, &leaves, &key).expect("valid batch");
        let keys = Keys::default().with(source(), &key);
        Fixture {
            key,
            keys,
            leaves,
            batch,
            tree,
        }
    }

    fn token(&self, index: usize) -> HandoverToken {
        token_for(&self.batch, &self.tree, &self.leaves, index as u32, PEM).expect("token")
    }

    /// Redeems `token` as its own agent at its own target at `now`.
    fn redeem(&self, token: &HandoverToken, now: Millis) -> Result<TokenLeaf, TokenError> {
        let presented = token.leaf.fingerprint;
        let target = token.leaf.target.clone();
        verify_token(token, |r, k| self.keys.get(r, k), &presented, &target, now).cloned()
    }
}

/// Re-signs `header` with `key`, as a signer that chose these values would.
fn resign(header: BatchHeader, key: &Ed25519KeyPair) -> SignedBatch {
    let signature = key.sign(&header.signing_bytes()).as_ref().to_vec();
    SignedBatch { header, signature }
}

/// A token with `batch`'s header and signature, leaf `index` of `leaves`.
fn forged_token(batch: &SignedBatch, leaves: &[TokenLeaf], index: usize) -> HandoverToken {
    let tree = MerkleTree::from_leaves(leaves);
    HandoverToken {
        header: batch.header.clone(),
        signature: batch.signature.clone(),
        leaf: leaves[index].clone(),
        index: index as u32,
        proof: tree
            .proof(index)
            .expect("in range")
            .iter()
            .map(|p| hex(p))
            .collect(),
        trust_bundle_pem: PEM.to_string(),
    }
}

fn encode_json(value: &serde_json::Value) -> String {
    URL_SAFE_NO_PAD.encode(serde_json::to_vec(value).expect("json"))
}

/// Example-based tests: one property per test.
mod handover_unit {
    use super::*;

    // Property: an honest token, through encode and decode, is unchanged and
    // verifies for its own agent at its own target, for every index of batches
    // of 1, 2, 3, 5, 8 and 1000 leaves, returning exactly its leaf.
    #[test]
    fn round_trip_every_index() {
        for n in [1, 2, 3, 5, 8, 1000] {
            let f = Fixture::new(n);
            assert_eq!(f.batch.header.leaf_count as usize, n);
            for i in 0..n {
                let token = f.token(i);
                let text = token.encode();
                assert!(text.len() <= MAX_ENCODED_TOKEN_LEN);
                let decoded = HandoverToken::decode(&text).expect("decodes");
                assert_eq!(decoded, token, "n={n} i={i}");
                assert_eq!(
                    f.redeem(&decoded, NOW),
                    Ok(f.leaves[i].clone()),
                    "n={n} i={i}"
                );
            }
        }
    }

    // Property: encoding is deterministic (one token, one text).
    #[test]
    fn encoding_is_deterministic() {
        let f = Fixture::new(5);
        assert_eq!(f.token(3).encode(), f.token(3).encode());
        assert_ne!(f.token(3).encode(), f.token(4).encode());
    }

    // Property: the key id is the first 16 lowercase hex digits of the SHA-256
    // of the raw public key, and the header names the signing key by it.
    #[test]
    fn key_id_is_sha256_prefix() {
        let f = Fixture::new(1);
        let public = f.key.public_key().as_ref();
        let id = handover_key_id(public);
        assert_eq!(id, hex(&sha256(public))[..16]);
        assert_eq!(f.batch.header.key_id, id);
        assert_ne!(handover_key_id(key(2).public_key().as_ref()), id);
    }

    // Property: changing any field of the leaf (even while presenting the
    // changed fingerprint, at the changed target) breaks the Merkle proof.
    #[test]
    fn tampered_leaf_is_refused_for_each_field() {
        let f = Fixture::new(5);
        let token = f.token(2);
        let mutations: Vec<Mutation<TokenLeaf>> = vec![
            (
                "agent_id",
                Box::new(|l: &mut TokenLeaf| l.agent_id.push('x')),
            ),
            (
                "fingerprint",
                Box::new(|l: &mut TokenLeaf| l.fingerprint = fingerprint("other", 2)),
            ),
            (
                "home",
                Box::new(|l: &mut TokenLeaf| l.home = region("eu-north")),
            ),
            (
                "target",
                Box::new(|l: &mut TokenLeaf| l.target = region("ap-south")),
            ),
            (
                "target_endpoint",
                Box::new(|l: &mut TokenLeaf| {
                    l.target_endpoint = "wss://evil.example/v1/opamp".into()
                }),
            ),
        ];
        for (field, mutate) in mutations {
            let mut t = token.clone();
            mutate(&mut t.leaf);
            assert_ne!(t.leaf, token.leaf, "{field}");
            assert_eq!(f.redeem(&t, NOW), Err(TokenError::BadProof), "{field}");
            // And through the wire form.
            let decoded = HandoverToken::decode(&t.encode()).expect("well-formed");
            assert_eq!(
                f.redeem(&decoded, NOW),
                Err(TokenError::BadProof),
                "{field}"
            );
        }
    }

    // Property: a changed sibling, a missing or extra sibling, a malformed
    // sibling or another index makes the proof fail; an index past the leaf
    // count is refused as such.
    #[test]
    fn tampered_proof_is_refused() {
        let f = Fixture::new(8);
        let token = f.token(5);
        assert_eq!(token.proof.len(), 3);
        for k in 0..token.proof.len() {
            let mut t = token.clone();
            let mut bytes = sha256(b"x");
            bytes[0] ^= 1;
            t.proof[k] = hex(&bytes);
            assert_eq!(f.redeem(&t, NOW), Err(TokenError::BadProof), "sibling {k}");
            let mut t = token.clone();
            // Flip the last hex digit to another digit.
            let mut s = t.proof[k].clone();
            let last = s.pop().expect("non-empty");
            s.push(if last == '0' { '1' } else { '0' });
            t.proof[k] = s;
            assert_eq!(f.redeem(&t, NOW), Err(TokenError::BadProof), "digit {k}");
        }
        let mut t = token.clone();
        t.proof.pop();
        assert_eq!(f.redeem(&t, NOW), Err(TokenError::BadProof));
        let mut t = token.clone();
        t.proof.push(hex(&sha256(b"extra")));
        assert_eq!(f.redeem(&t, NOW), Err(TokenError::BadProof));
        let mut t = token.clone();
        t.proof[0] = "zz".repeat(32);
        assert_eq!(f.redeem(&t, NOW), Err(TokenError::BadProof));
        for other in (0..8).filter(|i| *i != 5) {
            let mut t = token.clone();
            t.index = other;
            assert_eq!(
                f.redeem(&t, NOW),
                Err(TokenError::BadProof),
                "index {other}"
            );
        }
        let mut t = token.clone();
        t.index = 8;
        assert_eq!(
            f.redeem(&t, NOW),
            Err(TokenError::IndexOutOfRange {
                index: 8,
                leaf_count: 8
            })
        );
    }

    // Property: changing any signed header field, or the signature, is refused:
    // an unknown version as such, a source or key id with no key as unknown, and
    // every other change by the signature check.
    #[test]
    fn tampered_header_is_refused_for_each_field() {
        let f = Fixture::new(5);
        let token = f.token(1);
        let key_id = token.header.key_id.clone();
        let bad_sig = || TokenError::BadSignature {
            source_region: source(),
            key_id: key_id.clone(),
        };

        let mut t = token.clone();
        t.header.version = 2;
        assert_eq!(f.redeem(&t, NOW), Err(TokenError::UnsupportedVersion(2)));

        let mut t = token.clone();
        t.header.source = region("eu-north");
        assert_eq!(
            f.redeem(&t, NOW),
            Err(TokenError::UnknownKey {
                source_region: region("eu-north"),
                key_id: key_id.clone()
            })
        );
        // Even if the redeemer (wrongly) knew the same key for that region, the
        // signature binds the source.
        let mut both = Fixture::new(5);
        both.keys = Keys::default()
            .with(source(), &both.key)
            .with(region("eu-north"), &both.key);
        assert!(matches!(
            both.redeem(&t, NOW),
            Err(TokenError::BadSignature { .. })
        ));

        let mut t = token.clone();
        t.header.key_id = "0123456789abcdef".into();
        assert!(matches!(
            f.redeem(&t, NOW),
            Err(TokenError::UnknownKey { .. })
        ));

        let changes: Vec<Mutation<BatchHeader>> = vec![
            ("batch_id", Box::new(|h: &mut BatchHeader| h.batch_id += 1)),
            (
                "root",
                Box::new(|h: &mut BatchHeader| h.root = hex(&sha256(b"other root"))),
            ),
            (
                "leaf_count",
                Box::new(|h: &mut BatchHeader| h.leaf_count += 1),
            ),
            (
                "issued_at",
                Box::new(|h: &mut BatchHeader| h.issued_at = Millis(h.issued_at.0 - 1)),
            ),
            (
                "not_after",
                Box::new(|h: &mut BatchHeader| h.not_after = Millis(h.not_after.0 - 1)),
            ),
            ("epoch", Box::new(|h: &mut BatchHeader| h.epoch += 1)),
            (
                "trust_bundle_sha256",
                Box::new(|h: &mut BatchHeader| {
                    h.trust_bundle_sha256 = hex(&sha256(OTHER_PEM.as_bytes()))
                }),
            ),
        ];
        for (field, change) in changes {
            let mut t = token.clone();
            change(&mut t.header);
            assert_ne!(t.header, token.header, "{field}");
            if field == "trust_bundle_sha256" {
                t.trust_bundle_pem = OTHER_PEM.into();
            }
            assert_eq!(f.redeem(&t, NOW), Err(bad_sig()), "{field}");
        }

        for k in [0, 31, 63] {
            let mut t = token.clone();
            t.signature[k] ^= 0x01;
            assert_eq!(f.redeem(&t, NOW), Err(bad_sig()), "signature byte {k}");
        }
        let mut t = token.clone();
        t.signature.truncate(63);
        assert_eq!(f.redeem(&t, NOW), Err(bad_sig()));
        let mut t = token.clone();
        t.signature.clear();
        assert_eq!(f.redeem(&t, NOW), Err(bad_sig()));
    }

    // Property: a batch signed by a key other than the one its header names is
    // refused: an attacker's own key is unknown for the source; a header naming
    // the genuine key id but signed by another key fails the signature; and a
    // lookup that returns a key under the wrong id is caught.
    #[test]
    fn wrong_key_is_refused() {
        let f = Fixture::new(3);
        let attacker = key(9);
        let (forged, _) = sign_batch(&spec(42), PEM, &f.leaves, &attacker).expect("signs");
        let t = forged_token(&forged, &f.leaves, 0);
        assert!(matches!(
            f.redeem(&t, NOW),
            Err(TokenError::UnknownKey { .. })
        ));

        // The genuine header (naming the genuine key id), signed by the attacker.
        let forged = resign(f.batch.header.clone(), &attacker);
        let t = forged_token(&forged, &f.leaves, 0);
        assert!(matches!(
            f.redeem(&t, NOW),
            Err(TokenError::BadSignature { .. })
        ));

        let mut misconfigured = Fixture::new(3);
        misconfigured.keys = Keys::default().with_raw(
            source(),
            &f.batch.header.key_id,
            attacker.public_key().as_ref(),
        );
        assert!(matches!(
            misconfigured.redeem(&f.token(0), NOW),
            Err(TokenError::KeyIdMismatch { .. })
        ));

        // Another region's genuine key cannot sign for this region.
        let other_region_key = key(3);
        let mut wrong = Fixture::new(3);
        wrong.keys = Keys::default()
            .with(source(), &wrong.key)
            .with(region("us-east"), &other_region_key);
        let (foreign, _) = sign_batch(&spec(42), PEM, &f.leaves, &other_region_key).expect("signs");
        assert!(matches!(
            wrong.redeem(&forged_token(&foreign, &f.leaves, 0), NOW),
            Err(TokenError::UnknownKey { .. })
        ));
    }

    // Property: a redeemer that knows no key for the token's (source, key id)
    // refuses it, naming the source and key id.
    #[test]
    fn unknown_key_id_is_refused() {
        let mut f = Fixture::new(2);
        f.keys = Keys::default();
        let err = f.redeem(&f.token(0), NOW).expect_err("refused");
        assert_eq!(
            err,
            TokenError::UnknownKey {
                source_region: source(),
                key_id: f.batch.header.key_id.clone()
            }
        );
        assert!(err.to_string().contains("eu-west"));
    }

    // Property: a token is valid only for the agent whose certificate it names:
    // another leaf's fingerprint, or any other, is refused.
    #[test]
    fn other_presented_fingerprint_is_refused() {
        let f = Fixture::new(5);
        let token = f.token(2);
        for presented in [
            f.leaves[3].fingerprint,
            f.leaves[0].fingerprint,
            Thumbprint([0; 32]),
        ] {
            let res = verify_token(
                &token,
                |r, k| f.keys.get(r, k),
                &presented,
                &token.leaf.target,
                NOW,
            );
            assert_eq!(
                res,
                Err(TokenError::FingerprintMismatch {
                    expected: token.leaf.fingerprint,
                    presented
                })
            );
        }
    }

    // Property: only the leaf's target region accepts the token; any other
    // region (including the source) refuses it.
    #[test]
    fn wrong_target_region_is_refused() {
        let f = Fixture::new(3);
        let token = f.token(0);
        assert_eq!(token.leaf.target, region("us-east"));
        for here in [region("ap-south"), source(), region("eu-north")] {
            let res = verify_token(
                &token,
                |r, k| f.keys.get(r, k),
                &token.leaf.fingerprint,
                &here,
                NOW,
            );
            assert_eq!(
                res,
                Err(TokenError::WrongTarget {
                    target: region("us-east"),
                    this_region: here.clone()
                })
            );
        }
    }

    // Property: a token is refused from not_after on (now == not_after is
    // expired) and accepted the millisecond before.
    #[test]
    fn expired_is_refused() {
        let f = Fixture::new(2);
        let token = f.token(1);
        let not_after = token.header.not_after;
        assert!(f.redeem(&token, Millis(not_after.0 - 1)).is_ok());
        for now in [not_after, not_after.plus(1), not_after.plus(86_400_000)] {
            assert_eq!(
                f.redeem(&token, now),
                Err(TokenError::Expired {
                    not_after: not_after.0,
                    now: now.0
                })
            );
        }
    }

    // Property: a token is accepted up to 60 s before issued_at (clock skew)
    // and refused earlier than that.
    #[test]
    fn not_yet_valid_is_refused() {
        let f = Fixture::new(2);
        let token = f.token(0);
        let issued_at = token.header.issued_at;
        assert!(f
            .redeem(&token, Millis(issued_at.0 - HANDOVER_CLOCK_SKEW_MS))
            .is_ok());
        let now = Millis(issued_at.0 - HANDOVER_CLOCK_SKEW_MS - 1);
        assert_eq!(
            f.redeem(&token, now),
            Err(TokenError::NotYetValid {
                issued_at: issued_at.0,
                now: now.0,
                skew_ms: HANDOVER_CLOCK_SKEW_MS
            })
        );
        assert!(matches!(
            f.redeem(&token, Millis(0)),
            Err(TokenError::NotYetValid { .. })
        ));
    }

    // Property: signing refuses a lifetime over 1 hour, a zero or negative one,
    // and accepts exactly 1 hour.
    #[test]
    fn ttl_over_one_hour_is_refused_at_signing() {
        let leaves: Vec<_> = (0..3).map(leaf).collect();
        let k = key(1);
        let mut s = spec(1);
        s.not_after = NOW.plus(MAX_TOKEN_TTL_MS + 1);
        assert_eq!(
            sign_batch(&s, PEM, &leaves, &k).map(|_| ()),
            Err(HandoverError::InvalidLifetime {
                issued_at: NOW.0,
                not_after: NOW.0 + MAX_TOKEN_TTL_MS + 1,
                max_ms: MAX_TOKEN_TTL_MS
            })
        );
        for not_after in [NOW, Millis(NOW.0 - 1)] {
            s.not_after = not_after;
            assert!(matches!(
                sign_batch(&s, PEM, &leaves, &k),
                Err(HandoverError::InvalidLifetime { .. })
            ));
        }
        s.not_after = NOW.plus(MAX_TOKEN_TTL_MS);
        assert!(sign_batch(&s, PEM, &leaves, &k).is_ok());
    }

    // Property: a validly signed header with a lifetime over 1 hour (a signer
    // that bypassed sign_batch) is still refused by the redeemer, and by
    // verify_batch.
    #[test]
    fn ttl_over_one_hour_is_refused_at_verification() {
        let f = Fixture::new(3);
        let mut header = f.batch.header.clone();
        header.not_after = header.issued_at.plus(MAX_TOKEN_TTL_MS + 1);
        let long = resign(header, &f.key);
        let t = forged_token(&long, &f.leaves, 1);
        let expected = TokenError::InvalidLifetime {
            issued_at: NOW.0,
            not_after: NOW.0 + MAX_TOKEN_TTL_MS + 1,
            max_ms: MAX_TOKEN_TTL_MS,
        };
        assert_eq!(f.redeem(&t, NOW), Err(expected.clone()));
        assert_eq!(
            verify_batch(&long, &f.leaves, f.key.public_key().as_ref()),
            Err(expected)
        );
    }

    // Property: the trust bundle in a token must be the one the header signs:
    // a swapped bundle is refused at redemption, and token_for will not build
    // a token with it.
    #[test]
    fn trust_bundle_swapped_is_refused() {
        let f = Fixture::new(3);
        let mut t = f.token(0);
        t.trust_bundle_pem = OTHER_PEM.into();
        assert_eq!(f.redeem(&t, NOW), Err(TokenError::TrustBundleMismatch));
        let mut t = f.token(0);
        t.trust_bundle_pem.push('\n');
        assert_eq!(f.redeem(&t, NOW), Err(TokenError::TrustBundleMismatch));
        assert_eq!(
            token_for(&f.batch, &f.tree, &f.leaves, 0, OTHER_PEM),
            Err(HandoverError::TrustBundleMismatch)
        );
        assert_eq!(
            f.batch.header.trust_bundle_sha256,
            hex(&sha256(PEM.as_bytes()))
        );
    }

    // Property: a leaf whose home is not the signing region is refused even in
    // a batch that region validly signed: a region authorizes only its own
    // agents. sign_batch refuses to sign one.
    #[test]
    fn leaf_of_another_home_is_refused() {
        let f = Fixture::new(3);
        let mut leaves = f.leaves.clone();
        leaves[1].home = region("eu-north");
        let tree = MerkleTree::from_leaves(&leaves);
        let mut header = f.batch.header.clone();
        header.root = tree.root_hex();
        let batch = resign(header, &f.key);
        let t = forged_token(&batch, &leaves, 1);
        assert_eq!(
            f.redeem(&t, NOW),
            Err(TokenError::HomeNotSource {
                home: region("eu-north"),
                source_region: source()
            })
        );
        assert!(matches!(
            verify_batch(&batch, &leaves, f.key.public_key().as_ref()),
            Err(TokenError::HomeNotSource { .. })
        ));
        assert_eq!(
            sign_batch(&spec(1), PEM, &leaves, &f.key).map(|_| ()),
            Err(HandoverError::LeafHomeNotSource {
                index: 1,
                home: region("eu-north"),
                source_region: source()
            })
        );
    }

    // Property: sign_batch refuses what would make a bad batch: no leaves, a
    // leaf targeting its own home, a repeated agent, empty, oversized or
    // control-character text, and a trust bundle that is empty, oversized, not
    // ASCII or without a certificate.
    #[test]
    fn signing_refuses_bad_input() {
        let k = key(1);
        let ok: Vec<_> = (0..3).map(leaf).collect();
        assert_eq!(
            sign_batch(&spec(1), PEM, &[], &k).map(|_| ()),
            Err(HandoverError::EmptyBatch)
        );

        let mut l = ok.clone();
        l[2].target = source();
        assert!(matches!(
            sign_batch(&spec(1), PEM, &l, &k),
            Err(HandoverError::LeafTargetIsHome { index: 2, .. })
        ));
        let mut l = ok.clone();
        l[2].agent_id = l[0].agent_id.clone();
        assert!(matches!(
            sign_batch(&spec(1), PEM, &l, &k),
            Err(HandoverError::DuplicateAgent { index: 2, .. })
        ));
        let bad_text: Vec<Mutation<TokenLeaf>> = vec![
            ("agent_id", Box::new(|l: &mut TokenLeaf| l.agent_id.clear())),
            (
                "agent_id",
                Box::new(|l: &mut TokenLeaf| l.agent_id = "a".repeat(MAX_AGENT_ID_LEN + 1)),
            ),
            (
                "agent_id",
                Box::new(|l: &mut TokenLeaf| l.agent_id.push('\n')),
            ),
            (
                "target_endpoint",
                Box::new(|l: &mut TokenLeaf| l.target_endpoint.clear()),
            ),
            (
                "target_endpoint",
                Box::new(|l: &mut TokenLeaf| l.target_endpoint = "w".repeat(MAX_ENDPOINT_LEN + 1)),
            ),
            (
                "target_endpoint",
                Box::new(|l: &mut TokenLeaf| l.target_endpoint.push('\u{7f}')),
            ),
        ];
        for (field, change) in bad_text {
            let mut l = ok.clone();
            change(&mut l[1]);
            match sign_batch(&spec(1), PEM, &l, &k) {
                Err(HandoverError::InvalidLeaf {
                    index: 1, field: f, ..
                }) => assert_eq!(f, field),
                other => panic!("{field}: {:?}", other.map(|_| ())),
            }
        }

        let big = format!(
            "-----BEGIN CERTIFICATE-----\n{}",
            "A".repeat(MAX_TRUST_BUNDLE_LEN)
        );
        for pem in [
            "",
            "no certificate here",
            "-----BEGIN CERTIFICATE-----\né",
            &big,
        ] {
            assert!(
                matches!(
                    sign_batch(&spec(1), pem, &ok, &k),
                    Err(HandoverError::InvalidTrustBundle { .. })
                ),
                "{pem:.40}"
            );
        }
    }

    // Property: token_for only builds tokens that belong to the batch: an index
    // out of range, a tree or leaves of another batch are refused.
    #[test]
    fn token_for_refuses_mismatched_inputs() {
        let f = Fixture::new(4);
        assert_eq!(
            token_for(&f.batch, &f.tree, &f.leaves, 4, PEM),
            Err(HandoverError::IndexOutOfRange {
                index: 4,
                leaf_count: 4
            })
        );
        let other = Fixture::new(5);
        assert!(matches!(
            token_for(&f.batch, &other.tree, &other.leaves, 0, PEM),
            Err(HandoverError::BatchMismatch(_))
        ));
        let mut leaves = f.leaves.clone();
        leaves.swap(0, 1);
        let tree = MerkleTree::from_leaves(&leaves);
        assert!(matches!(
            token_for(&f.batch, &tree, &leaves, 0, PEM),
            Err(HandoverError::BatchMismatch(_))
        ));
        leaves.swap(0, 1);
        leaves[3].agent_id.push('x');
        assert!(matches!(
            token_for(&f.batch, &f.tree, &leaves, 3, PEM),
            Err(HandoverError::BatchMismatch(_))
        ));
    }

    // Property: verify_batch accepts exactly the signed leaves and refuses them
    // reordered, altered, short of one or under the wrong key.
    #[test]
    fn verify_batch_checks_leaves_and_key() {
        let f = Fixture::new(6);
        let public = f.key.public_key().as_ref();
        assert_eq!(verify_batch(&f.batch, &f.leaves, public), Ok(()));
        let mut l = f.leaves.clone();
        l.swap(2, 3);
        assert_eq!(
            verify_batch(&f.batch, &l, public),
            Err(TokenError::RootMismatch)
        );
        let mut l = f.leaves.clone();
        l[5].target_endpoint.push('/');
        assert_eq!(
            verify_batch(&f.batch, &l, public),
            Err(TokenError::RootMismatch)
        );
        assert_eq!(
            verify_batch(&f.batch, &f.leaves[..5], public),
            Err(TokenError::LeafCountMismatch {
                signed: 6,
                given: 5
            })
        );
        assert!(matches!(
            verify_batch(&f.batch, &f.leaves, key(2).public_key().as_ref()),
            Err(TokenError::KeyIdMismatch { .. })
        ));
        assert_eq!(f.batch.verify(|r, k| f.keys.get(r, k)), Ok(()));
    }

    // Property: malformed encodings are refused with the error that names the
    // problem: empty, oversized, not base64url (or padded, or with whitespace),
    // not JSON, the wrong JSON shape, an unknown field, upper-case hex, and a
    // version this build does not know.
    #[test]
    fn malformed_encodings_are_refused() {
        let f = Fixture::new(3);
        let good = f.token(1).encode();
        let body: serde_json::Value =
            serde_json::from_slice(&URL_SAFE_NO_PAD.decode(&good).expect("b64")).expect("json");

        assert_eq!(HandoverToken::decode(""), Err(TokenError::Empty));
        let huge = "A".repeat(MAX_ENCODED_TOKEN_LEN + 1);
        assert_eq!(
            HandoverToken::decode(&huge),
            Err(TokenError::TooLarge {
                len: MAX_ENCODED_TOKEN_LEN + 1,
                max: MAX_ENCODED_TOKEN_LEN
            })
        );
        for bad in [
            "!!!!".to_string(),
            format!("{good}="),
            format!("{good}\n"),
            format!(" {good}"),
            good.replace('-', "+").replace('_', "/") + "+",
            "A".to_string(),
        ] {
            assert_eq!(
                HandoverToken::decode(&bad),
                Err(TokenError::BadBase64),
                "{bad:.20}"
            );
        }

        let not_json = URL_SAFE_NO_PAD.encode(b"not json at all");
        assert!(matches!(
            HandoverToken::decode(&not_json),
            Err(TokenError::BadJson { kind: "syntax", .. })
        ));
        assert!(matches!(
            HandoverToken::decode(&encode_json(&serde_json::json!({}))),
            Err(TokenError::BadJson { kind: "data", .. })
        ));
        let truncated = URL_SAFE_NO_PAD.encode(&serde_json::to_vec(&body).expect("json")[..100]);
        assert!(matches!(
            HandoverToken::decode(&truncated),
            Err(TokenError::BadJson {
                kind: "end of input",
                ..
            })
        ));

        let mut v = body.clone();
        v["header"]["version"] = 2.into();
        assert_eq!(
            HandoverToken::decode(&encode_json(&v)),
            Err(TokenError::UnsupportedVersion(2))
        );
        // A future version may have another shape: the version error still wins.
        assert_eq!(
            HandoverToken::decode(&encode_json(
                &serde_json::json!({"header": {"version": 3}, "other": true})
            )),
            Err(TokenError::UnsupportedVersion(3))
        );

        let mut v = body.clone();
        v["extra"] = true.into();
        assert!(matches!(
            HandoverToken::decode(&encode_json(&v)),
            Err(TokenError::BadJson { .. })
        ));
        let mut v = body.clone();
        v["leaf"]["extra"] = true.into();
        assert!(matches!(
            HandoverToken::decode(&encode_json(&v)),
            Err(TokenError::BadJson { .. })
        ));

        for pointer in [
            "/signature",
            "/header/root",
            "/header/trust_bundle_sha256",
            "/header/key_id",
            "/leaf/fingerprint",
            "/proof/0",
        ] {
            let mut v = body.clone();
            let original = v
                .pointer(pointer)
                .and_then(|s| s.as_str())
                .expect("hex field")
                .to_string();
            let upper = original.to_uppercase();
            assert_ne!(upper, original, "{pointer} has no letter to change");
            *v.pointer_mut(pointer).expect("field") = upper.into();
            assert!(
                matches!(
                    HandoverToken::decode(&encode_json(&v)),
                    Err(TokenError::BadJson { .. })
                ),
                "{pointer}"
            );
        }
    }

    // Property: decoding errors never echo token content (a token is a secret):
    // a signature put where a number belongs is not in the message.
    #[test]
    fn decode_errors_do_not_echo_secrets() {
        let f = Fixture::new(2);
        let token = f.token(0);
        let sig = hex(&token.signature);
        let body: serde_json::Value =
            serde_json::from_slice(&URL_SAFE_NO_PAD.decode(token.encode()).expect("b64"))
                .expect("json");
        for pointer in ["/index", "/header/batch_id", "/leaf/home"] {
            let mut v = body.clone();
            *v.pointer_mut(pointer).expect("field") = sig.clone().into();
            let err = HandoverToken::decode(&encode_json(&v)).expect_err("refused");
            assert!(!err.to_string().contains(&sig[..16]), "{pointer}: {err}");
        }
    }

    // Property: Debug of a token prints who and where (agent, source, target,
    // batch, epoch, expiry) and redacts the signature, proof and bundle; Debug
    // of a batch redacts its signature.
    #[test]
    fn debug_redacts_secrets() {
        let f = Fixture::new(4);
        let token = f.token(2);
        let shown = format!("{token:?}");
        for expected in ["agent-000002", "eu-west", "us-east", "42", "<redacted>"] {
            assert!(shown.contains(expected), "{expected} missing from {shown}");
        }
        let sig = hex(&token.signature);
        assert!(!shown.contains(&sig[..16]));
        for p in &token.proof {
            assert!(!shown.contains(&p[..16]));
        }
        assert!(!shown.contains("BEGIN CERTIFICATE"));
        assert!(!shown.contains(&token.header.root[..16]));
        let batch = format!("{:?}", f.batch);
        assert!(!batch.contains(&sig[..16]));
        assert!(batch.contains("<redacted>"));
    }

    // Property: the largest token a valid batch can yield (longest ids, a
    // bundle that doubles under JSON escaping, u64 extremes, a 32-level proof)
    // stays under the decode limit and round-trips.
    #[test]
    fn largest_token_fits_the_limit() {
        let k = key(1);
        let home = region(&format!("a{}", "b".repeat(62)));
        let target = region(&format!("c{}", "d".repeat(62)));
        let leaves = vec![TokenLeaf {
            agent_id: "\"".repeat(MAX_AGENT_ID_LEN),
            fingerprint: Thumbprint([0xff; 32]),
            home: home.clone(),
            target,
            target_endpoint: "\\".repeat(MAX_ENDPOINT_LEN),
        }];
        let marker = "-----BEGIN CERTIFICATE-----";
        let pem = format!(
            "{marker}{}",
            "\n".repeat(MAX_TRUST_BUNDLE_LEN - marker.len())
        );
        let spec = BatchSpec {
            source: home,
            batch_id: u64::MAX,
            epoch: u64::MAX,
            issued_at: Millis(u64::MAX - MAX_TOKEN_TTL_MS),
            not_after: Millis(u64::MAX),
        };
        let (batch, tree) = sign_batch(&spec, &pem, &leaves, &k).expect("valid batch");
        let mut token = token_for(&batch, &tree, &leaves, 0, &pem).expect("token");
        token.index = u32::MAX;
        token.header.leaf_count = u32::MAX;
        token.proof = vec!["f".repeat(64); 32];
        let text = token.encode();
        assert!(
            text.len() <= MAX_ENCODED_TOKEN_LEN,
            "{} > {MAX_ENCODED_TOKEN_LEN}",
            text.len()
        );
        assert_eq!(HandoverToken::decode(&text), Ok(token));
    }
}

/// Property tests over random leaf sets (proptest seeds and regressions).
mod handover_props {
    use super::*;

    /// Random leaf sets: 1 to 40 distinct agent ids (with `prefix`), random
    /// fingerprints, targets and endpoints, all homed in `eu-west`.
    fn leaf_set(prefix: &'static str) -> impl Strategy<Value = Vec<TokenLeaf>> {
        prop::collection::btree_map(
            "[a-z0-9._-]{1,24}",
            (any::<[u8; 32]>(), 0..TARGETS.len(), "[a-z0-9./:-]{1,40}"),
            1..40,
        )
        .prop_map(move |m| {
            m.into_iter()
                .map(|(id, (fp, t, path))| TokenLeaf {
                    agent_id: format!("{prefix}{id}"),
                    fingerprint: Thumbprint(fp),
                    home: source(),
                    target: region(TARGETS[t]),
                    target_endpoint: format!("wss://{path}"),
                })
                .collect()
        })
    }

    /// A batch over `leaves` signed by key seed 1, with the given times.
    fn signed(
        leaves: &[TokenLeaf],
        batch_id: u64,
        issued_at: Millis,
        ttl: u64,
    ) -> (SignedBatch, MerkleTree) {
        let s = BatchSpec {
            source: source(),
            batch_id,
            epoch: 3,
            issued_at,
            not_after: issued_at.plus(ttl),
        };
        sign_batch(&s, PEM, leaves, &key(1)).expect("valid batch")
    }

    /// Decodes and redeems `text` as the agent of `leaf` at its target.
    fn redeem_text(text: &str, leaf: &TokenLeaf, now: Millis) -> Result<TokenLeaf, TokenError> {
        let keys = Keys::default().with(source(), &key(1));
        let token = HandoverToken::decode(text)?;
        verify_token(
            &token,
            |r, k| keys.get(r, k),
            &leaf.fingerprint,
            &leaf.target,
            now,
        )
        .cloned()
    }

    /// The byte span of the first occurrence of `needle` in `body`.
    fn span_of(body: &str, needle: &str) -> std::ops::Range<usize> {
        let start = body.find(needle).expect("field present in body");
        start..start + needle.len()
    }

    proptest! {
        // Property: for random leaf sets, indices, lifetimes and redemption
        // times inside the validity window (skew included), every honest token
        // round-trips through its text and verifies, yielding its own leaf.
        #[test]
        fn honest_tokens_verify(
            leaves in leaf_set("a-"),
            pick in any::<prop::sample::Index>(),
            issued_at in 1_000_000u64..4_000_000_000_000,
            ttl in 1..=MAX_TOKEN_TTL_MS,
            at in any::<prop::sample::Index>(),
        ) {
            let (batch, tree) = signed(&leaves, 9, Millis(issued_at), ttl);
            let i = pick.index(leaves.len());
            let token = token_for(&batch, &tree, &leaves, i as u32, PEM).expect("token");
            // now in [issued_at - skew, not_after)
            let window = (HANDOVER_CLOCK_SKEW_MS + ttl) as usize;
            let now = Millis(issued_at - HANDOVER_CLOCK_SKEW_MS + at.index(window) as u64);
            prop_assert_eq!(redeem_text(&token.encode(), &leaves[i], now), Ok(leaves[i].clone()));
        }

        // Property: changing any single byte of the signature, the root or the
        // leaf in the token's JSON body (then re-encoding) never yields a token
        // that verifies: it either fails to decode or is refused.
        #[test]
        fn flipping_a_byte_of_signature_root_or_leaf_never_verifies(
            leaves in leaf_set("a-"),
            pick in any::<prop::sample::Index>(),
            part in 0usize..3,
            pos in any::<prop::sample::Index>(),
            xor in 1u8..=255,
        ) {
            let (batch, tree) = signed(&leaves, 9, NOW, MAX_TOKEN_TTL_MS);
            let i = pick.index(leaves.len());
            let token = token_for(&batch, &tree, &leaves, i as u32, PEM).expect("token");
            let body = serde_json::to_string(&token).expect("json");
            let span = match part {
                0 => span_of(&body, &format!("\"{}\"", hex(&token.signature))),
                1 => span_of(&body, &format!("\"{}\"", token.header.root)),
                _ => span_of(&body, &serde_json::to_string(&token.leaf).expect("json")),
            };
            let mut bytes = body.into_bytes();
            let at = span.start + pos.index(span.len());
            bytes[at] ^= xor;
            let text = URL_SAFE_NO_PAD.encode(&bytes);
            prop_assert!(redeem_text(&text, &leaves[i], NOW).is_err());
        }

        // Property: changing any single character of the encoded token to
        // another base64url character never yields a token that verifies.
        #[test]
        fn flipping_a_character_of_the_encoded_token_never_verifies(
            leaves in leaf_set("a-"),
            pick in any::<prop::sample::Index>(),
            pos in any::<prop::sample::Index>(),
            shift in 1usize..64,
        ) {
            const ALPHABET: &[u8; 64] =
                b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
            let (batch, tree) = signed(&leaves, 9, NOW, MAX_TOKEN_TTL_MS);
            let i = pick.index(leaves.len());
            let token = token_for(&batch, &tree, &leaves, i as u32, PEM).expect("token");
            let mut text = token.encode().into_bytes();
            let at = pos.index(text.len());
            let was = ALPHABET.iter().position(|c| *c == text[at]).expect("base64url");
            text[at] = ALPHABET[(was + shift) % 64];
            let text = String::from_utf8(text).expect("ascii");
            prop_assert!(redeem_text(&text, &leaves[i], NOW).is_err());
        }

        // Property: a leaf and proof from one batch never verify under another
        // batch's signed header (other leaves, same key and source), at the same
        // index or any other.
        #[test]
        fn proof_from_one_batch_never_verifies_against_another(
            a_leaves in leaf_set("a-"),
            b_leaves in leaf_set("b-"),
            pick in any::<prop::sample::Index>(),
            other_index in any::<prop::sample::Index>(),
        ) {
            let (a, a_tree) = signed(&a_leaves, 1, NOW, MAX_TOKEN_TTL_MS);
            let (b, _) = signed(&b_leaves, 2, NOW, MAX_TOKEN_TTL_MS);
            let i = pick.index(a_leaves.len());
            let mut token = token_for(&a, &a_tree, &a_leaves, i as u32, PEM).expect("token");
            token.header = b.header.clone();
            token.signature = b.signature.clone();
            prop_assert!(redeem_text(&token.encode(), &a_leaves[i], NOW).is_err());
            token.index = other_index.index(b_leaves.len()) as u32;
            prop_assert!(redeem_text(&token.encode(), &a_leaves[i], NOW).is_err());
        }
    }
}
