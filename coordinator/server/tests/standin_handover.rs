//! Tests of the reference region stand-in's handover redemption over real
//! loopback sockets: an agent coming from another region opens its OpAMP
//! session (`POST /tern/v1/opamp/attach`) presenting its leaf certificate
//! and a handover token; the stand-in redeems the token only with a key it
//! was given (`PUT /tern/v1/handover/keys`, coordinator certificate only),
//! for the agent presenting the fingerprinted leaf, for this region, within
//! the token's lifetime. `GET /tern/v1/agents/{id}` (the agent's own leaf)
//! and `GET /_standin/handover` (control listener) show the outcome.
//!
//! Every test starts its own stand-in (region `eu`) on 127.0.0.1 port 0
//! with a fresh PKI: the stand-in's server CA, a coordinator CA (the
//! stand-in's `coordinator_ca_file`) and the agent CA of the source region
//! `ap`, whose PEM is the tokens' trust bundle. Every call has a deadline;
//! nothing sleeps.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use reqwest::StatusCode;
use ring::signature::{Ed25519KeyPair, KeyPair};
use tempfile::TempDir;
use tern_coordinator::agents::contract::{KeysRequest, PublicKey};
use tern_coordinator::standin::{
    self, AttachResponse, Attachment, HandoverStatus, StandInConfig, StandInHandle, Via,
};
use tern_coordinator::tls::{DevCa, IssuedCert};
use tern_core::{handover_key_id, sign_batch, token_for, BatchSpec, Millis, RegionName, TokenLeaf};
use time::OffsetDateTime;

/// Upper bound for any single call in these tests.
const WAIT: Duration = Duration::from_secs(15);

/// The path of the attach call (stand-in only).
const ATTACH: &str = "/tern/v1/opamp/attach";
/// The path of the key installation call (Tern contract).
const KEYS: &str = "/tern/v1/handover/keys";
/// The region the agents come from.
const SOURCE: &str = "ap";
/// The region the stand-in plays.
const HERE: &str = "eu";
/// One hour, in milliseconds.
const HOUR_MS: u64 = 3_600_000;

// ---------------------------------------------------------------- fixtures

fn validity() -> (OffsetDateTime, OffsetDateTime) {
    let now = OffsetDateTime::now_utc();
    (
        now - time::Duration::minutes(1),
        now + time::Duration::days(1),
    )
}

fn ca(name: &str) -> DevCa {
    DevCa::generate(name, Duration::from_secs(86_400)).expect("CA")
}

fn region(name: &str) -> RegionName {
    name.parse().expect("region name")
}

fn now_ms() -> u64 {
    u64::try_from(
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .expect("clock after 1970")
            .as_millis(),
    )
    .expect("millis fit u64")
}

/// A handover signing key from a fixed seed (distinct seeds, distinct keys).
fn signing_key(seed: u8) -> Ed25519KeyPair {
    Ed25519KeyPair::from_seed_unchecked(&[seed; 32]).expect("Ed25519 seed")
}

/// A leaf certificate for `agent_id` issued by `ca` (CN and DNS SAN are the
/// agent id, EKU clientAuth). Each call makes a new key, so a new
/// fingerprint.
fn agent_leaf(ca: &DevCa, agent_id: &str) -> IssuedCert {
    let (nb, na) = validity();
    ca.issue_node(agent_id, &[agent_id.to_string()], &[], nb, na)
        .expect("issue agent leaf")
}

/// A running stand-in for region `eu` and the PKI around it.
struct Fixture {
    _dir: TempDir,
    server_ca: DevCa,
    /// CA of the coordinators allowed to make the contract calls.
    coordinator_ca: DevCa,
    /// Agent CA of the source region `ap`: the tokens' trust bundle.
    source_ca: DevCa,
    handle: StandInHandle,
}

impl Fixture {
    async fn start() -> Fixture {
        let dir = tempfile::tempdir().expect("tempdir");
        let server_ca = ca("stand-in server CA");
        let coordinator_ca = ca("coordinator CA");
        let source_ca = ca("ap agent CA");
        let ip = IpAddr::V4(Ipv4Addr::LOCALHOST);
        let (nb, na) = validity();
        server_ca
            .issue_node("eu-standin", &["localhost".to_string()], &[ip], nb, na)
            .expect("issue server certificate")
            .write(dir.path(), "server")
            .expect("write server certificate");
        let coordinator_ca_file = dir.path().join("coordinator-ca.pem");
        std::fs::write(&coordinator_ca_file, coordinator_ca.cert_pem()).expect("write CA");
        let config = StandInConfig {
            region: region(HERE),
            listen_https: SocketAddr::new(ip, 0),
            listen_control: SocketAddr::new(ip, 0),
            tls_cert_file: dir.path().join("server.pem"),
            tls_key_file: dir.path().join("server.key"),
            data_dir: dir.path().join("data"),
            agent_ca: None,
            federation_peers: vec![],
            configs: Default::default(),
            coordinator_ca_file: Some(coordinator_ca_file),
            ready_file: None,
        };
        let (https, control) = standin::bind(&config).await.expect("bind");
        let handle = standin::start(config, https, control)
            .await
            .expect("start stand-in");
        Fixture {
            _dir: dir,
            server_ca,
            coordinator_ca,
            source_ca,
            handle,
        }
    }

    fn url(&self, path: &str) -> String {
        format!("https://{}{path}", self.handle.https_addr())
    }

    /// An HTTPS client trusting the stand-in's server CA, presenting
    /// `identity` if given.
    fn client(&self, identity: Option<&IssuedCert>) -> reqwest::Client {
        let root =
            reqwest::Certificate::from_pem(self.server_ca.cert_pem().as_bytes()).expect("root");
        let mut builder = reqwest::Client::builder()
            .use_rustls_tls()
            .tls_built_in_root_certs(false)
            .add_root_certificate(root)
            .timeout(WAIT);
        if let Some(c) = identity {
            let pem = format!("{}\n{}", c.cert_pem, c.key_pem);
            builder =
                builder.identity(reqwest::Identity::from_pem(pem.as_bytes()).expect("identity"));
        }
        builder.build().expect("client")
    }

    /// A client certificate chaining to the coordinator CA.
    fn coordinator_client(&self) -> reqwest::Client {
        let (nb, na) = validity();
        let cert = self
            .coordinator_ca
            .issue_node(
                "eu-coordinator",
                &["coordinator.example".into()],
                &[],
                nb,
                na,
            )
            .expect("issue coordinator certificate");
        self.client(Some(&cert))
    }

    /// `PUT /tern/v1/handover/keys` with `keys` (region, key); the status.
    async fn put_keys(
        &self,
        client: &reqwest::Client,
        keys: &[(&str, &Ed25519KeyPair)],
    ) -> StatusCode {
        let body = KeysRequest {
            keys: keys
                .iter()
                .map(|(r, k)| PublicKey {
                    region: r.to_string(),
                    key_id: handover_key_id(k.public_key().as_ref()),
                    public_key: hex::encode(k.public_key().as_ref()),
                })
                .collect(),
        };
        client
            .put(self.url(KEYS))
            .json(&body)
            .send()
            .await
            .expect("PUT keys")
            .status()
    }

    /// Installs `key` as the source region's handover key, as the
    /// coordinator does.
    async fn install_source_key(&self, key: &Ed25519KeyPair) {
        let status = self
            .put_keys(&self.coordinator_client(), &[(SOURCE, key)])
            .await;
        assert_eq!(status, StatusCode::NO_CONTENT, "install the source key");
        assert_eq!(self.handover_status().await.keys, 1);
    }

    /// `GET /_standin/handover` on the control listener.
    async fn handover_status(&self) -> HandoverStatus {
        let url = format!(
            "http://{}{}",
            self.handle.control_addr(),
            standin::HANDOVER_PATH
        );
        let resp = reqwest::Client::builder()
            .timeout(WAIT)
            .build()
            .expect("control client")
            .get(url)
            .send()
            .await
            .expect("GET /_standin/handover");
        assert_eq!(resp.status(), StatusCode::OK);
        resp.json().await.expect("handover status JSON")
    }

    /// `POST /tern/v1/opamp/attach` as the holder of `leaf`; status, body.
    async fn attach(&self, leaf: &IssuedCert, agent_id: &str, token: &str) -> (StatusCode, String) {
        let resp = self
            .client(Some(leaf))
            .post(self.url(ATTACH))
            .json(&serde_json::json!({ "agent_id": agent_id, "token": token }))
            .send()
            .await
            .expect("POST attach");
        let status = resp.status();
        (status, resp.text().await.expect("attach body"))
    }

    /// `GET /tern/v1/agents/{id}` as the holder of `leaf`; status, body.
    async fn agent(&self, leaf: &IssuedCert, agent_id: &str) -> (StatusCode, String) {
        let resp = self
            .client(Some(leaf))
            .get(self.url(&format!("/tern/v1/agents/{agent_id}")))
            .send()
            .await
            .expect("GET agent");
        let status = resp.status();
        (status, resp.text().await.expect("agent body"))
    }
}

/// A leaf of a batch signed by `ap` for `agent_id` presenting `leaf`,
/// handed to `target`.
fn token_leaf(agent_id: &str, leaf: &IssuedCert, target: &str) -> TokenLeaf {
    TokenLeaf {
        agent_id: agent_id.to_string(),
        fingerprint: leaf.thumbprint,
        home: region(SOURCE),
        target: region(target),
        target_endpoint: format!("wss://opamp.{target}.example/v1/opamp"),
    }
}

/// Signs one batch of `leaves` by `ap` with `key`, trust bundle `source_ca`,
/// lifetime `issued_at..not_after` (ms), and returns every leaf's encoded
/// token, in order.
fn tokens(
    source_ca: &DevCa,
    key: &Ed25519KeyPair,
    leaves: &[TokenLeaf],
    issued_at: u64,
    not_after: u64,
) -> Vec<String> {
    let bundle = source_ca.cert_pem();
    let spec = BatchSpec {
        source: region(SOURCE),
        batch_id: 1,
        epoch: 7,
        issued_at: Millis(issued_at),
        not_after: Millis(not_after),
    };
    let (batch, tree) = sign_batch(&spec, &bundle, leaves, key).expect("sign batch");
    (0..u32::try_from(leaves.len()).expect("leaf count"))
        .map(|i| {
            token_for(&batch, &tree, leaves, i, &bundle)
                .expect("token")
                .encode()
        })
        .collect()
}

/// A token valid now, for one hour, for one leaf.
fn fresh_token(source_ca: &DevCa, key: &Ed25519KeyPair, leaf: TokenLeaf) -> String {
    let now = now_ms();
    tokens(source_ca, key, &[leaf], now, now + HOUR_MS)
        .pop()
        .expect("one token")
}

fn assert_attached_via_handover(status: StatusCode, body: &str) {
    assert_eq!(status, StatusCode::OK, "attach: {body}");
    let a: AttachResponse = serde_json::from_str(body).expect("attach JSON");
    assert!(a.attached, "{body}");
    assert_eq!(a.region, HERE);
    assert_eq!(a.via, Via::Handover);
}

/// A 403 refusal whose reason (the `error` field) mentions `reason`: the
/// refusal comes from the check under test, not from another one.
fn assert_refused(status: StatusCode, body: &str, reason: &str) {
    assert_eq!(status, StatusCode::FORBIDDEN, "expected a refusal: {body}");
    let v: serde_json::Value = serde_json::from_str(body).expect("refusal JSON");
    let error = v["error"].as_str().expect("refusal has an error");
    assert!(
        error.contains(reason),
        "{error:?} should mention {reason:?}"
    );
}

// ------------------------------------------------------------------- tests

// Property: a valid token (signed by the installed key of the source
// region, for this region) presented with the leaf it fingerprints attaches
// the agent via handover; the agent, asking with that leaf, is told it is
// attached (source region, fingerprint); presenting the same token again
// (a reconnect) succeeds again and still leaves exactly one attachment.
#[tokio::test]
async fn valid_token_with_matching_leaf_attaches_idempotently() {
    let fx = Fixture::start().await;
    let key = signing_key(1);
    fx.install_source_key(&key).await;
    let leaf = agent_leaf(&fx.source_ca, "agent-1");
    let token = fresh_token(&fx.source_ca, &key, token_leaf("agent-1", &leaf, HERE));

    let (status, body) = fx.attach(&leaf, "agent-1", &token).await;
    assert_attached_via_handover(status, &body);

    let (status, body) = fx.agent(&leaf, "agent-1").await;
    assert_eq!(status, StatusCode::OK, "agent: {body}");
    let att: Attachment = serde_json::from_str(&body).expect("attachment JSON");
    assert_eq!(att.agent_id, "agent-1");
    assert!(att.attached);
    assert_eq!(att.via, Via::Handover);
    assert_eq!(att.source_region, SOURCE);
    assert_eq!(att.fingerprint, leaf.thumbprint.to_string());

    let (status, body) = fx.attach(&leaf, "agent-1", &token).await;
    assert_attached_via_handover(status, &body);
    let (status, body) = fx.agent(&leaf, "agent-1").await;
    assert_eq!(status, StatusCode::OK, "agent after the reconnect: {body}");
    let again: Attachment = serde_json::from_str(&body).expect("attachment JSON");
    assert_eq!(again, att);

    let s = fx.handover_status().await;
    assert_eq!(s.attached_handover, 1, "{s:?}");
    assert_eq!(s.attached_home, 0, "{s:?}");
    assert_eq!((s.redeemed, s.refused), (2, 0), "{s:?}");
    fx.handle.shutdown().await;
}

// Property: a token is bound to the leaf it fingerprints: the same token
// presented with another leaf for the same agent id, issued by the same
// source CA but with another key, is refused 403 and attaches nobody (the
// agent is not attached, neither for that leaf nor for the genuine one);
// the genuine leaf then still redeems it.
#[tokio::test]
async fn token_with_another_leaf_is_refused() {
    let fx = Fixture::start().await;
    let key = signing_key(2);
    fx.install_source_key(&key).await;
    let genuine = agent_leaf(&fx.source_ca, "agent-2");
    let other = agent_leaf(&fx.source_ca, "agent-2");
    assert_ne!(genuine.thumbprint, other.thumbprint);
    let token = fresh_token(&fx.source_ca, &key, token_leaf("agent-2", &genuine, HERE));

    let (status, body) = fx.attach(&other, "agent-2", &token).await;
    assert_refused(status, &body, "is not the token's");
    assert_eq!(fx.agent(&other, "agent-2").await.0, StatusCode::NOT_FOUND);
    assert_eq!(fx.agent(&genuine, "agent-2").await.0, StatusCode::NOT_FOUND);
    let s = fx.handover_status().await;
    assert_eq!(
        (s.attached_handover, s.redeemed, s.refused),
        (0, 0, 1),
        "{s:?}"
    );

    let (status, body) = fx.attach(&genuine, "agent-2", &token).await;
    assert_attached_via_handover(status, &body);
    fx.handle.shutdown().await;
}

// Property: a token whose `not_after` has passed is refused 403 although
// everything else about it is right (key, leaf, target, lifetime of at
// most one hour); a fresh token for the same leaf is accepted.
#[tokio::test]
async fn expired_token_is_refused() {
    let fx = Fixture::start().await;
    let key = signing_key(3);
    fx.install_source_key(&key).await;
    let leaf = agent_leaf(&fx.source_ca, "agent-3");
    let now = now_ms();
    let expired = tokens(
        &fx.source_ca,
        &key,
        &[token_leaf("agent-3", &leaf, HERE)],
        now - 2 * HOUR_MS,
        now - HOUR_MS,
    )
    .pop()
    .expect("one token");

    let (status, body) = fx.attach(&leaf, "agent-3", &expired).await;
    assert_refused(status, &body, "the token expired");
    assert_eq!(fx.agent(&leaf, "agent-3").await.0, StatusCode::NOT_FOUND);
    let s = fx.handover_status().await;
    assert_eq!((s.attached_handover, s.refused), (0, 1), "{s:?}");

    let fresh = fresh_token(&fx.source_ca, &key, token_leaf("agent-3", &leaf, HERE));
    let (status, body) = fx.attach(&leaf, "agent-3", &fresh).await;
    assert_attached_via_handover(status, &body);
    fx.handle.shutdown().await;
}

// Property: a token handing the agent to another region is refused here
// (403, not attached), while a token of the same signed batch that names
// this region is accepted.
#[tokio::test]
async fn token_for_another_region_is_refused() {
    let fx = Fixture::start().await;
    let key = signing_key(4);
    fx.install_source_key(&key).await;
    let elsewhere = agent_leaf(&fx.source_ca, "agent-4");
    let here = agent_leaf(&fx.source_ca, "agent-5");
    let now = now_ms();
    let batch = tokens(
        &fx.source_ca,
        &key,
        &[
            token_leaf("agent-4", &elsewhere, "us"),
            token_leaf("agent-5", &here, HERE),
        ],
        now,
        now + HOUR_MS,
    );

    let (status, body) = fx.attach(&elsewhere, "agent-4", &batch[0]).await;
    assert_refused(status, &body, "target region us, not this region eu");
    assert_eq!(
        fx.agent(&elsewhere, "agent-4").await.0,
        StatusCode::NOT_FOUND
    );

    let (status, body) = fx.attach(&here, "agent-5", &batch[1]).await;
    assert_attached_via_handover(status, &body);
    let s = fx.handover_status().await;
    assert_eq!((s.attached_handover, s.refused), (1, 1), "{s:?}");
    fx.handle.shutdown().await;
}

// Property: a token signed by a key that was not installed (the source
// region's installed key is another one) is refused 403 and attaches
// nobody; the same leaf signed by the installed key is accepted.
#[tokio::test]
async fn token_signed_by_unknown_key_is_refused() {
    let fx = Fixture::start().await;
    let installed = signing_key(5);
    let unknown = signing_key(6);
    fx.install_source_key(&installed).await;
    let leaf = agent_leaf(&fx.source_ca, "agent-6");

    let forged = fresh_token(&fx.source_ca, &unknown, token_leaf("agent-6", &leaf, HERE));
    let (status, body) = fx.attach(&leaf, "agent-6", &forged).await;
    assert_refused(status, &body, "no handover key is known");
    assert_eq!(fx.agent(&leaf, "agent-6").await.0, StatusCode::NOT_FOUND);
    let s = fx.handover_status().await;
    assert_eq!((s.attached_handover, s.refused), (0, 1), "{s:?}");

    let genuine = fresh_token(
        &fx.source_ca,
        &installed,
        token_leaf("agent-6", &leaf, HERE),
    );
    let (status, body) = fx.attach(&leaf, "agent-6", &genuine).await;
    assert_attached_via_handover(status, &body);
    fx.handle.shutdown().await;
}

// Property: installing handover keys needs a client certificate chaining to
// the coordinator CA: without any certificate the call is refused (401),
// with a certificate of another CA (here the source region's agent CA) it
// is refused (403), and neither changes the installed keys (still the one
// key, and tokens signed by it still redeem); a coordinator certificate
// does replace them.
#[tokio::test]
async fn installing_keys_needs_a_coordinator_certificate() {
    let fx = Fixture::start().await;
    let key = signing_key(7);
    fx.install_source_key(&key).await;
    let (a, b) = (signing_key(8), signing_key(9));
    let replacement: [(&str, &Ed25519KeyPair); 2] = [(SOURCE, &a), ("us", &b)];

    let status = fx.put_keys(&fx.client(None), &replacement).await;
    assert!(
        status == StatusCode::UNAUTHORIZED || status == StatusCode::FORBIDDEN,
        "no client certificate: {status}"
    );
    assert_eq!(fx.handover_status().await.keys, 1);

    let stranger = agent_leaf(&fx.source_ca, "agent-7");
    let status = fx.put_keys(&fx.client(Some(&stranger)), &replacement).await;
    assert_eq!(status, StatusCode::FORBIDDEN, "certificate of another CA");
    assert_eq!(fx.handover_status().await.keys, 1);

    // The original key is still the one in force.
    let token = fresh_token(&fx.source_ca, &key, token_leaf("agent-7", &stranger, HERE));
    let (status, body) = fx.attach(&stranger, "agent-7", &token).await;
    assert_attached_via_handover(status, &body);

    let status = fx.put_keys(&fx.coordinator_client(), &replacement).await;
    assert_eq!(status, StatusCode::NO_CONTENT, "coordinator certificate");
    assert_eq!(fx.handover_status().await.keys, 2);
    fx.handle.shutdown().await;
}
