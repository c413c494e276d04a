//! Fleet mode, in-process, against a fake coordinator and two fake regions.

mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use support::{directive, eventually, fast_timing, Cluster, FakeRegion, Pki};
use tern_agent_shim::fleet::{self, FleetConfig, FLEET_STATUS_FORMAT};
use tern_agent_shim::{ConfigRef, PemSource};
use tern_proto::v1 as pb;

const AGENTS: usize = 50;

// Property: a fleet of 50 simulated agents attaches each agent to its home
// region and registers it with its own identity (50 distinct ids and leaf
// fingerprints; the coordinator and the home region see the same leaf per
// agent); when every agent is redirected, all 50 attach to the target
// with their own token and are reported ATTACHED; the status file counts
// them in the target region, and the events file never shows an agent
// directed to two regions in one epoch.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fleet_of_50_registers_distinct_identities_and_follows_a_redirect() {
    let seed = support::seed(21);
    let pki = Pki::new();
    let cluster = Cluster::new(&pki);
    let node = cluster.start_node(&pki, 1, "eu");
    let eu = FakeRegion::start(&pki, "eu").await;
    let us = FakeRegion::start(&pki, "us").await;
    let dir = tempfile::tempdir().expect("tempdir");
    let status_file = dir.path().join("status.json");
    let events_file = dir.path().join("events.jsonl");
    let mut timing = fast_timing();
    timing.apply_jitter_ms = 200;
    let config = FleetConfig {
        agents: AGENTS,
        home_region: "eu".into(),
        home_base_url: eu.base_url(),
        agent_ca_cert_pem: pki.agent_ca.cert_pem().to_string(),
        agent_ca_key_pem: pki.agent_ca_key_pem.clone(),
        coordinator_ca: PemSource::Pem(pki.server_ca.cert_pem.clone()),
        region_ca: PemSource::Pem(pki.server_ca.cert_pem.clone()),
        coordinators: vec![node.address()],
        tenant: "acme".into(),
        config: ConfigRef {
            id: "cfg".into(),
            version: 1,
            content_hash: "sha256:fleet".into(),
        },
        capabilities: vec!["AcceptsOpAMPConnectionSettings".into()],
        allowed_regions: vec![],
        id_prefix: "sim-eu-".into(),
        seed,
        leaf_validity: Duration::from_secs(86_400),
        connect_spread_ms: 500,
        status_file: Some(status_file.clone()),
        events_file: Some(events_file.clone()),
        status_interval_ms: 100,
        timing,
    };
    assert!(!format!("{config:?}").contains("PRIVATE KEY"));
    let handle = fleet::start(config).await.expect("fleet starts");
    let status = handle.status();
    eventually(
        "every agent registered and watching",
        Duration::from_secs(30),
        || {
            let s = status.borrow();
            s.registered == AGENTS && s.watching == AGENTS && s.home_attached == AGENTS
        },
    )
    .await;

    let regs = cluster.registrations();
    let ids: BTreeSet<_> = regs.iter().map(|r| r.request.agent_id.clone()).collect();
    let fps: BTreeSet<_> = regs.iter().map(|r| r.fingerprint.clone()).collect();
    assert_eq!(ids.len(), AGENTS, "distinct agent ids");
    assert_eq!(fps.len(), AGENTS, "distinct fingerprints");
    let home = eu.attachments();
    assert_eq!(home.len(), AGENTS);
    for r in &regs {
        assert_eq!(
            home[&r.request.agent_id].fingerprint, r.fingerprint,
            "same leaf"
        );
        assert_eq!(home[&r.request.agent_id].via, "home");
        assert_eq!(r.request.home_region, "eu");
    }
    assert_eq!(status.borrow().serving.get("eu"), Some(&AGENTS));

    for i in 0..AGENTS {
        let id = format!("sim-eu-{i:05}");
        let token = format!("tok-{id}");
        us.expect_token(&id, &token);
        cluster.publish(directive(
            &id,
            9,
            pb::DirectiveAction::Redirect,
            &us,
            &token,
        ));
    }
    eventually("every agent serving us", Duration::from_secs(30), || {
        status.borrow().serving.get("us") == Some(&AGENTS)
    })
    .await;
    eventually("every ATTACHED report", Duration::from_secs(30), || {
        cluster
            .reports()
            .iter()
            .filter(|r| {
                r.request.epoch == 9 && r.request.outcome == pb::ReportOutcome::Attached as i32
            })
            .count()
            == AGENTS
    })
    .await;
    let moved = us.attachments();
    assert_eq!(moved.len(), AGENTS);
    for (id, a) in &moved {
        assert_eq!(a.via, "handover");
        assert_eq!(a.token.as_deref(), Some(format!("tok-{id}").as_str()));
        assert_eq!(a.fingerprint, home[id].fingerprint, "identity kept");
    }

    let last = handle.stop().await.expect("fleet stops");
    assert_eq!(last.conflicts, 0);
    assert_eq!(last.newest_epoch, Some(9));
    assert_eq!(last.at_newest_epoch, AGENTS);

    let file: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&status_file).expect("status file")).expect("json");
    assert_eq!(file["format"], FLEET_STATUS_FORMAT);
    assert_eq!(file["agents"], AGENTS);
    assert_eq!(file["seed"], seed);
    assert_eq!(file["serving"]["us"], AGENTS);
    assert_eq!(file["registered"], AGENTS);

    let text = std::fs::read_to_string(&events_file).expect("events file");
    let mut targets: BTreeMap<(String, u64), BTreeSet<String>> = BTreeMap::new();
    let mut attached = 0;
    for line in text.lines() {
        let v: serde_json::Value = serde_json::from_str(line).expect("json line");
        assert!(v["t_ms"].as_u64().is_some(), "{line}");
        if v["event"] == "directive" {
            let key = (
                v["agent_id"].as_str().expect("agent").to_string(),
                v["epoch"].as_u64().expect("epoch"),
            );
            targets
                .entry(key)
                .or_default()
                .insert(v["target"].as_str().expect("target").to_string());
        }
        if v["event"] == "applied" && v["outcome"] == "attached" && v["epoch"] == 9 {
            attached += 1;
        }
        assert!(!line.contains("tok-"), "a token in the events file: {line}");
    }
    assert_eq!(attached, AGENTS);
    assert_eq!(targets.len(), AGENTS);
    assert!(
        targets.values().all(|t| t.len() == 1),
        "an agent directed to two regions in one epoch"
    );
}

fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

// Property (measurement, run on demand: `cargo test -p tern-agent-shim
// --test fleet -- --ignored --nocapture`): issuing 100,000 agent identities
// (P-256 key + leaf each) is feasible; prints the time. N from
// TERN_KEYGEN_AGENTS (default 100000).
#[test]
#[ignore = "measurement; run explicitly"]
fn keygen_scale() {
    let n = env_usize("TERN_KEYGEN_AGENTS", 100_000);
    let (ca, _) =
        tern_agent_shim::AgentCa::generate("bench CA", Duration::from_secs(86_400)).expect("CA");
    let ids: Vec<String> = (0..n).map(|i| format!("sim-eu-{i:06}")).collect();
    let threads = std::thread::available_parallelism().map_or(2, |t| t.get());
    let started = std::time::Instant::now();
    let leaves = ca
        .issue_many(&ids, Duration::from_secs(365 * 86_400), threads)
        .expect("issue");
    let elapsed = started.elapsed();
    assert_eq!(leaves.len(), n);
    let distinct: BTreeSet<&str> = leaves.iter().map(|l| l.fingerprint()).collect();
    assert_eq!(distinct.len(), n);
    eprintln!(
        "issued {n} identities on {threads} threads in {:.2} s ({:.1} µs each, per thread)",
        elapsed.as_secs_f64(),
        elapsed.as_secs_f64() * 1e6 * threads as f64 / n as f64
    );
}

// Property (measurement, run on demand): a fleet of N agents (default
// 1000, TERN_FLEET_AGENTS) against an in-process fake coordinator and fake
// regions all register, and all follow one redirect; prints identity
// issuance time, time until all are registered, time from the decision to
// 99% and 100% attached at the target, and the process's resident memory.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "measurement; run explicitly"]
async fn fleet_scale() {
    let n = env_usize("TERN_FLEET_AGENTS", 1000);
    let seed = support::seed(22);
    let pki = Pki::new();
    let cluster = Cluster::new(&pki);
    let node = cluster.start_node(&pki, 1, "eu");
    let eu = FakeRegion::start(&pki, "eu").await;
    let us = FakeRegion::start(&pki, "us").await;
    let mut timing = fast_timing();
    timing.apply_jitter_ms = 2_000;
    timing.rate_limit = tern_agent_shim::RateLimit::new(50, 500, 1_000).expect("rate");
    timing.verify_poll_ms = 250;
    timing.verify_deadline_ms = 30_000;
    timing.rpc_timeout_ms = 30_000;
    timing.register_timeout_ms = 30_000;
    timing.connect_timeout_ms = 10_000;
    timing.reconnect_base_ms = 500;
    timing.reconnect_cap_ms = 5_000;
    let config = FleetConfig {
        agents: n,
        home_region: "eu".into(),
        home_base_url: eu.base_url(),
        agent_ca_cert_pem: pki.agent_ca.cert_pem().to_string(),
        agent_ca_key_pem: pki.agent_ca_key_pem.clone(),
        coordinator_ca: PemSource::Pem(pki.server_ca.cert_pem.clone()),
        region_ca: PemSource::Pem(pki.server_ca.cert_pem.clone()),
        coordinators: vec![node.address()],
        tenant: "acme".into(),
        config: ConfigRef {
            id: "cfg".into(),
            version: 1,
            content_hash: "sha256:fleet".into(),
        },
        capabilities: vec![],
        allowed_regions: vec![],
        id_prefix: "sim-eu-".into(),
        seed,
        leaf_validity: Duration::from_secs(365 * 86_400),
        connect_spread_ms: FleetConfig::default_spread_ms(n),
        status_file: None,
        events_file: None,
        status_interval_ms: 200,
        timing,
    };
    let started = std::time::Instant::now();
    let handle = fleet::start(config).await.expect("fleet starts");
    let status = handle.status();
    eventually("all registered", Duration::from_secs(300), || {
        let s = status.borrow();
        s.registered == n && s.watching == n
    })
    .await;
    let registered_after = started.elapsed();
    let identities_ms = status.borrow().identities_ms;
    let decided = std::time::Instant::now();
    for i in 0..n {
        let id = format!("sim-eu-{i:05}");
        cluster.publish(directive(
            &id,
            2,
            pb::DirectiveAction::Redirect,
            &us,
            &format!("t-{id}"),
        ));
    }
    let p99 = n - n / 100;
    eventually("99% attached at us", Duration::from_secs(300), || {
        status.borrow().serving.get("us").copied().unwrap_or(0) >= p99
    })
    .await;
    let t99 = decided.elapsed();
    eventually("100% attached at us", Duration::from_secs(300), || {
        status.borrow().serving.get("us").copied().unwrap_or(0) == n
    })
    .await;
    let t100 = decided.elapsed();
    let rss = std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .map(str::to_string)
        })
        .unwrap_or_default();
    let last = handle.stop().await.expect("stop");
    assert_eq!(last.conflicts, 0);
    eprintln!(
        "fleet of {n}: identities {identities_ms} ms; all registered+watching after {:.1} s \
         (connect spread {} ms); redirect: 99% attached in {:.1} s, 100% in {:.1} s; \
         test process {rss} (fleet + fake coordinator + fake regions)",
        registered_after.as_secs_f64(),
        FleetConfig::default_spread_ms(n),
        t99.as_secs_f64(),
        t100.as_secs_f64()
    );
}
