//! Tokens and keys never reach logs or Debug output. This binary installs
//! a process-wide tracing subscriber at TRACE level (every crate: tonic,
//! h2, hyper, reqwest, rustls included) writing into a buffer, so it holds
//! one test only.

mod support;

use std::io::Write;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use support::{directive, eventually, fast_timing, shim_config, Cluster, FakeRegion, Pki, Stop};
use tern_agent_shim::fleet::{self, FleetConfig};
use tern_agent_shim::{
    CallbackError, CallbackHook, CommandSpec, ConfigRef, Directive, FileFormat, FileHook,
    LeafSource, PemSource, RegionClient, Session,
};
use tern_proto::v1 as pb;

#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().expect("lock").extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

const WAIT: Duration = Duration::from_secs(20);

// Property: across a redirect whose reload command prints the directive
// file (token included) on stderr and fails, a redirect refused by a
// region that echoes the token in its error, the successful retry, and a
// small fleet's redirect, no token and no private key appears in any log
// line at any level, in any report's detail, or in the Debug output of
// configurations, directives, identities and events.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_and_keys_never_logged_or_debug_printed() {
    let captured = Captured::default();
    let writer = captured.clone();
    tracing_subscriber::fmt()
        .with_max_level(tracing::Level::TRACE)
        .with_ansi(false)
        .with_writer(move || writer.clone())
        .init();
    let seed = support::seed(31);
    let pki = Pki::new();
    let cluster = Cluster::new(&pki);
    let node = cluster.start_node(&pki, 1, "eu");
    let us = FakeRegion::start(&pki, "us").await;
    let eu = FakeRegion::start(&pki, "eu").await;
    let dir = tempfile::tempdir().expect("tempdir");
    let mut tokens = Vec::new();

    // 1. File hook whose reload command leaks the file on stderr, fails.
    let leaf1 = pki.leaf("agent-1");
    let mut config1 = shim_config(
        &pki,
        "agent-1",
        LeafSource::Pem(leaf1.clone()),
        vec![node.address()],
        seed,
    );
    config1.state_dir = Some(dir.path().join("state1"));
    let file = dir.path().join("directive.json");
    let hook1 = Arc::new(
        FileHook::new(&file, FileFormat::Json).with_reload(CommandSpec::new(
            vec![
                "sh".into(),
                "-c".into(),
                "echo \"reloading with $(cat \"$TERN_DIRECTIVE_FILE\")\" >&2; exit 3".into(),
            ],
            Duration::from_secs(5),
        )),
    );
    let stop1 = Stop::new();
    let task1 = tokio::spawn(Session::new(config1.clone(), hook1).run(stop1.signal()));
    let t1 = "SECRET-TOKEN-reload-0001".to_string();
    tokens.push(t1.clone());
    cluster.publish(directive(
        "agent-1",
        4,
        pb::DirectiveAction::Redirect,
        &us,
        &t1,
    ));

    // 2. A region that refuses and echoes the token, then accepts.
    let leaf2 = pki.leaf("agent-2");
    let config2 = shim_config(
        &pki,
        "agent-2",
        LeafSource::Pem(leaf2.clone()),
        vec![node.address()],
        seed + 1,
    );
    let client =
        RegionClient::new(&pki.server_ca.cert_pem, &leaf2, Duration::from_secs(5)).expect("client");
    let attempts = Arc::new(AtomicUsize::new(0));
    let counted = attempts.clone();
    let hook2 = Arc::new(CallbackHook::new(move |d: Directive| {
        let client = client.clone();
        let counted = counted.clone();
        async move {
            counted.fetch_add(1, Ordering::SeqCst);
            client
                .attach(&d.base_url, &d.agent_id, &d.token)
                .await
                .map(|_| ())
                .map_err(|e| Box::new(e) as CallbackError)
        }
    }));
    let t2 = "SECRET-TOKEN-echoed-0002".to_string();
    tokens.push(t2.clone());
    us.expect_token("agent-2", "something-else");
    let stop2 = Stop::new();
    let task2 = tokio::spawn(Session::new(config2.clone(), hook2).run(stop2.signal()));
    cluster.publish(directive(
        "agent-2",
        4,
        pb::DirectiveAction::Redirect,
        &us,
        &t2,
    ));

    eventually("FAILED reports from both agents", WAIT, || {
        let r = cluster.reports();
        ["agent-1", "agent-2"].iter().all(|a| {
            r.iter().any(|r| {
                r.request.agent_id == *a && r.request.outcome == pb::ReportOutcome::Failed as i32
            })
        })
    })
    .await;
    us.expect_token("agent-2", &t2);
    eventually("agent-2 attached after a retry", WAIT, || {
        cluster.reports().iter().any(|r| {
            r.request.agent_id == "agent-2"
                && r.request.outcome == pb::ReportOutcome::Attached as i32
        })
    })
    .await;
    assert!(attempts.load(Ordering::SeqCst) >= 2);

    // 3. A small fleet follows a redirect (tokens travel in attach bodies).
    let fleet_config = FleetConfig {
        agents: 3,
        home_region: "eu".into(),
        home_base_url: eu.base_url(),
        agent_ca_cert_pem: pki.agent_ca.cert_pem().to_string(),
        agent_ca_key_pem: pki.agent_ca_key_pem.clone(),
        coordinator_ca: PemSource::Pem(pki.server_ca.cert_pem.clone()),
        region_ca: PemSource::Pem(pki.server_ca.cert_pem.clone()),
        coordinators: vec![node.address()],
        tenant: "acme".into(),
        config: ConfigRef {
            id: "c".into(),
            version: 1,
            content_hash: "h".into(),
        },
        capabilities: vec![],
        allowed_regions: vec![],
        id_prefix: "leak-".into(),
        seed,
        leaf_validity: Duration::from_secs(86_400),
        connect_spread_ms: 100,
        status_file: None,
        events_file: Some(dir.path().join("events.jsonl")),
        status_interval_ms: 100,
        timing: fast_timing(),
    };
    let handle = fleet::start(fleet_config.clone()).await.expect("fleet");
    let status = handle.status();
    eventually("fleet watching", WAIT, || status.borrow().watching == 3).await;
    for i in 0..3 {
        let id = format!("leak-{i:05}");
        let t = format!("SECRET-TOKEN-fleet-{i:04}");
        tokens.push(t.clone());
        cluster.publish(directive(&id, 6, pb::DirectiveAction::Redirect, &us, &t));
    }
    eventually("fleet moved", WAIT, || {
        status.borrow().serving.get("us") == Some(&3)
    })
    .await;
    handle.stop().await.expect("stop");
    stop1.stop();
    stop2.stop();
    task1.await.expect("join").expect("session 1");
    task2.await.expect("join").expect("session 2");

    // Reports.
    for r in cluster.reports() {
        for t in &tokens {
            assert!(
                !r.request.detail.contains(t.as_str()),
                "token in a report: {:?}",
                r.request
            );
        }
    }
    let failed_detail = cluster
        .reports()
        .into_iter()
        .find(|r| r.request.agent_id == "agent-1")
        .expect("agent-1 report")
        .request
        .detail;
    assert!(failed_detail.contains("<redacted>"), "{failed_detail}");

    // Debug output.
    let d = tern_agent_shim::Directive {
        epoch: 1,
        agent_id: "a".into(),
        kind: tern_agent_shim::DirectiveKind::Redirect,
        target_region: "us".into(),
        endpoint: "wss://x".into(),
        base_url: "https://x".into(),
        token: t1.clone(),
        issued_at_ms: 0,
        expires_at_ms: 1,
    };
    let debug = [
        format!("{config1:?}"),
        format!("{config2:?}"),
        format!("{:?}", LeafSource::Pem(leaf1.clone())),
        format!("{leaf1:?}"),
        format!("{fleet_config:?}"),
        format!("{d:?}"),
        format!("{:?}", pki.agent_ca),
    ];
    for text in &debug {
        assert!(!text.contains("PRIVATE KEY"), "key in Debug: {text}");
        for t in &tokens {
            assert!(!text.contains(t.as_str()), "token in Debug: {text}");
        }
    }

    // Logs.
    let logs = String::from_utf8_lossy(&captured.0.lock().expect("lock")).to_string();
    assert!(logs.contains("applying directive"), "logs were captured");
    assert!(logs.contains("TRACE"), "trace level was captured");
    for t in &tokens {
        assert!(!logs.contains(t.as_str()), "token {t} in the logs");
    }
    assert!(!logs.contains("PRIVATE KEY"), "a key in the logs");
    // The token is also not in the events file.
    let events = std::fs::read_to_string(dir.path().join("events.jsonl")).expect("events");
    for t in &tokens {
        assert!(!events.contains(t.as_str()));
    }
}
