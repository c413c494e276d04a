//! The session with the coordinators, against in-process fake coordinators
//! (tonic over mutual TLS) and fake regions (axum over mutual TLS).

mod support;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use support::{directive, eventually, shim_config, Cluster, FakeRegion, Pki, Stop};
use tern_agent_shim::{
    load, load_cache, write_atomic, CallbackError, CallbackHook, Directive, DirectiveKind,
    FileFormat, FileHook, LeafIdentity, LeafSource, RedirectHook, RegionClient, Seen, Session,
    SessionEvent, SessionEventKind, COORDINATORS_FILE, TRACKER_FILE,
};
use tern_proto::v1 as pb;
use tokio::sync::mpsc;

const WAIT: Duration = Duration::from_secs(15);

/// A hook that attaches the agent at the directive's target over HTTPS
/// with `leaf` (the simulated agent reconnecting), counting its calls.
fn attaching_hook(
    pki: &Pki,
    leaf: &LeafIdentity,
    calls: Arc<AtomicUsize>,
) -> Arc<dyn RedirectHook> {
    let client = RegionClient::new(&pki.server_ca.cert_pem, leaf, Duration::from_secs(5))
        .expect("region client");
    Arc::new(CallbackHook::new(move |d: Directive| {
        let client = client.clone();
        let calls = calls.clone();
        async move {
            calls.fetch_add(1, Ordering::SeqCst);
            client
                .attach(&d.base_url, &d.agent_id, &d.token)
                .await
                .map(|_| ())
                .map_err(|e| Box::new(e) as CallbackError)
        }
    }))
}

/// Waits for an event matching `f`, at most `WAIT`.
async fn wait_event(
    rx: &mut mpsc::UnboundedReceiver<SessionEvent>,
    what: &str,
    mut f: impl FnMut(&SessionEventKind) -> bool,
) {
    let found = tokio::time::timeout(WAIT, async {
        while let Some(e) = rx.recv().await {
            if f(&e.kind) {
                return true;
            }
        }
        false
    })
    .await;
    assert_eq!(found, Ok(true), "waiting for event: {what}");
}

// Property: a shim connects with the agent's own leaf over mutual TLS and
// the coordinator registers exactly that leaf's fingerprint (taken from
// the handshake), with the configured home, tenant, configuration,
// capabilities, allowed regions and the leaf's expiry; the coordinator
// list is cached in the state directory; the directive stream is opened.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn registers_with_leaf_fingerprint() {
    let seed = support::seed(11);
    let pki = Pki::new();
    let cluster = Cluster::new(&pki);
    let node = cluster.start_node(&pki, 1, "eu");
    let leaf = pki.leaf("agent-1");
    let dir = tempfile::tempdir().expect("tempdir");
    let mut config = shim_config(
        &pki,
        "agent-1",
        LeafSource::Pem(leaf.clone()),
        vec![node.address()],
        seed,
    );
    config.state_dir = Some(dir.path().to_path_buf());
    let hook = Arc::new(FileHook::new(dir.path().join("d.json"), FileFormat::Json));
    let stop = Stop::new();
    let task = tokio::spawn(Session::new(config, hook).run(stop.signal()));

    eventually("the shim opens Watch", WAIT, || {
        !cluster.watches().is_empty()
    })
    .await;
    let regs = cluster.registrations();
    assert_eq!(regs.len(), 1, "{regs:?}");
    let r = &regs[0];
    assert_eq!(r.fingerprint, leaf.fingerprint());
    assert_eq!(r.request.agent_id, "agent-1");
    assert_eq!(r.request.home_region, "eu");
    assert_eq!(r.request.tenant, "acme");
    let c = r.request.config.as_ref().expect("config ref");
    assert_eq!(
        (c.id.as_str(), c.version, c.content_hash.as_str()),
        ("cfg-1", 3, "sha256:abc")
    );
    assert_eq!(
        r.request.capabilities,
        vec!["AcceptsOpAMPConnectionSettings"]
    );
    assert_eq!(r.request.allowed_regions, vec!["eu", "us"]);
    assert_eq!(r.request.leaf_not_after_ms, leaf.not_after_ms());
    assert!(leaf.not_after_ms() > 0);
    assert_eq!(cluster.watches()[0].known_epoch, 0);

    let cache = load_cache(&dir.path().join(COORDINATORS_FILE))
        .expect("cache readable")
        .expect("cache written");
    assert_eq!(cache.coordinators.len(), 1);
    assert_eq!(cache.coordinators[0].address, node.address());

    stop.stop();
    task.await.expect("join").expect("session");
}

// Property: a REDIRECT is applied through the file hook (the directive
// file holds the epoch, target, endpoint and token), the shim does not
// report until the target region shows the agent attached with its leaf,
// then reports ATTACHED for that epoch and region, and the tracker state
// file records the agent as served by the target.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redirect_applied_through_file_hook_verified_and_reported() {
    let seed = support::seed(12);
    let pki = Pki::new();
    let cluster = Cluster::new(&pki);
    let node = cluster.start_node(&pki, 1, "eu");
    let us = FakeRegion::start(&pki, "us").await;
    let leaf = pki.leaf("agent-1");
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("directive.json");
    let mut config = shim_config(
        &pki,
        "agent-1",
        LeafSource::Pem(leaf.clone()),
        vec![node.address()],
        seed,
    );
    config.state_dir = Some(dir.path().join("state"));
    let stop = Stop::new();
    let hook = Arc::new(FileHook::new(&file, FileFormat::Json));
    let task = tokio::spawn(Session::new(config, hook).run(stop.signal()));
    eventually("Watch", WAIT, || !cluster.watches().is_empty()).await;

    cluster.publish(directive(
        "agent-1",
        5,
        pb::DirectiveAction::Redirect,
        &us,
        "tok-redirect-5",
    ));
    eventually("the directive file", WAIT, || file.exists()).await;
    let v: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&file).expect("read")).expect("json");
    assert_eq!(v["epoch"], 5);
    assert_eq!(v["kind"], "redirect");
    assert_eq!(v["target_region"], "us");
    assert_eq!(v["token"], "tok-redirect-5");
    assert_eq!(v["endpoint"], format!("wss://{}/v1/opamp", us.addr));

    // The shim is now polling the region; nothing is reported before the
    // agent shows up there.
    eventually("an attachment check", WAIT, || us.status_calls() > 0).await;
    assert!(
        cluster.reports().is_empty(),
        "reported before the agent attached"
    );
    // The agent, reconfigured by its supervisor, connects to the target.
    us.attach_direct("agent-1", leaf.fingerprint(), "handover");

    eventually("the report", WAIT, || !cluster.reports().is_empty()).await;
    let reports = cluster.reports();
    let r = &reports[0].request;
    assert_eq!(r.epoch, 5);
    assert_eq!(r.agent_id, "agent-1");
    assert_eq!(r.serving_region, "us");
    assert_eq!(r.outcome, pb::ReportOutcome::Attached as i32);
    assert!(r.detail.is_empty());

    stop.stop();
    task.await.expect("join").expect("session");
    let tracker = load(&dir.path().join("state").join(TRACKER_FILE))
        .expect("state")
        .expect("saved");
    let s = tracker.state();
    assert_eq!(s.serving_region.as_deref(), Some("us"));
    assert_eq!(s.serving_epoch, Some(5));
}

// Property: once epoch 5 is applied, a directive of epoch 3 (to another
// region) is ignored: no hook run, no attachment check at its target, no
// report; and the fence survives a restart: a new session on the same
// state directory watches with known_epoch 5 and ignores epoch 3 again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stale_epoch_directive_is_ignored() {
    let seed = support::seed(13);
    let pki = Pki::new();
    let cluster = Cluster::new(&pki);
    let node = cluster.start_node(&pki, 1, "eu");
    let us = FakeRegion::start(&pki, "us").await;
    let ap = FakeRegion::start(&pki, "ap").await;
    let leaf = pki.leaf("agent-1");
    let dir = tempfile::tempdir().expect("tempdir");
    let calls = Arc::new(AtomicUsize::new(0));
    let config = {
        let mut c = shim_config(
            &pki,
            "agent-1",
            LeafSource::Pem(leaf.clone()),
            vec![node.address()],
            seed,
        );
        c.state_dir = Some(dir.path().to_path_buf());
        c
    };

    let (tx, mut rx) = mpsc::unbounded_channel();
    let stop = Stop::new();
    let task = tokio::spawn(
        Session::new(config.clone(), attaching_hook(&pki, &leaf, calls.clone()))
            .with_events(tx)
            .run(stop.signal()),
    );
    cluster.publish(directive(
        "agent-1",
        5,
        pb::DirectiveAction::Redirect,
        &us,
        "tok-5",
    ));
    eventually("the report of epoch 5", WAIT, || {
        cluster.reports().iter().any(|r| r.request.epoch == 5)
    })
    .await;
    assert_eq!(calls.load(Ordering::SeqCst), 1);

    cluster.publish(directive(
        "agent-1",
        3,
        pb::DirectiveAction::Redirect,
        &ap,
        "tok-3",
    ));
    wait_event(&mut rx, "epoch 3 seen as stale", |k| {
        matches!(
            k,
            SessionEventKind::Directive {
                epoch: 3,
                seen: Seen::Stale { newest_seen: 5 },
                ..
            }
        )
    })
    .await;
    assert_eq!(
        calls.load(Ordering::SeqCst),
        1,
        "the hook ran for a stale directive"
    );
    assert_eq!(ap.status_calls(), 0);
    assert_eq!(ap.attached_count(), 0);
    assert!(cluster.reports().iter().all(|r| r.request.epoch == 5));
    stop.stop();
    task.await.expect("join").expect("session");

    // Restart on the same state directory: the stream delivers epoch 3 (the
    // current value) at once; it is still stale.
    let watches_before = cluster.watches().len();
    let (tx, mut rx) = mpsc::unbounded_channel();
    let stop = Stop::new();
    let task = tokio::spawn(
        Session::new(config, attaching_hook(&pki, &leaf, calls.clone()))
            .with_events(tx)
            .run(stop.signal()),
    );
    wait_event(&mut rx, "epoch 3 stale after restart", |k| {
        matches!(
            k,
            SessionEventKind::Directive {
                epoch: 3,
                seen: Seen::Stale { newest_seen: 5 },
                ..
            }
        )
    })
    .await;
    let watches = cluster.watches();
    assert_eq!(watches[watches_before].known_epoch, 5);
    assert_eq!(calls.load(Ordering::SeqCst), 1);
    stop.stop();
    task.await.expect("join").expect("session");
}

// Property: when the home coordinator dies, the shim reaches another
// coordinator from the list it cached (it was configured with the home
// one only), registers and watches there, and applies and reports a
// directive through it; after a restart with only the dead home
// coordinator configured, the persisted list still leads it to the
// survivor.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn home_coordinator_dies_shim_uses_cached_list() {
    let seed = support::seed(14);
    let pki = Pki::new();
    let cluster = Cluster::new(&pki);
    let mut home = cluster.start_node(&pki, 1, "eu");
    let _survivor = cluster.start_node(&pki, 2, "us");
    let us = FakeRegion::start(&pki, "us").await;
    let leaf = pki.leaf("agent-1");
    let dir = tempfile::tempdir().expect("tempdir");
    let calls = Arc::new(AtomicUsize::new(0));
    let mut config = shim_config(
        &pki,
        "agent-1",
        LeafSource::Pem(leaf.clone()),
        vec![home.address()],
        seed,
    );
    config.state_dir = Some(dir.path().to_path_buf());

    let stop = Stop::new();
    let task = tokio::spawn(
        Session::new(config.clone(), attaching_hook(&pki, &leaf, calls.clone())).run(stop.signal()),
    );
    eventually("Watch on the home coordinator", WAIT, || {
        cluster.watches().iter().any(|w| w.node == 1)
    })
    .await;
    assert!(cluster.watches().iter().all(|w| w.node == 1), "home first");

    home.kill();
    eventually("Register + Watch on the survivor", WAIT, || {
        cluster.registrations().iter().any(|r| r.node == 2)
            && cluster.watches().iter().any(|w| w.node == 2)
    })
    .await;
    cluster.publish(directive(
        "agent-1",
        7,
        pb::DirectiveAction::Redirect,
        &us,
        "tok-7",
    ));
    eventually("ATTACHED reported to the survivor", WAIT, || {
        cluster.reports().iter().any(|r| {
            r.node == 2
                && r.request.epoch == 7
                && r.request.outcome == pb::ReportOutcome::Attached as i32
        })
    })
    .await;
    stop.stop();
    task.await.expect("join").expect("session");

    let watches_before = cluster.watches().len();
    let stop = Stop::new();
    let task = tokio::spawn(
        Session::new(config, attaching_hook(&pki, &leaf, calls.clone())).run(stop.signal()),
    );
    eventually("Watch on the survivor after a restart", WAIT, || {
        cluster.watches()[watches_before..]
            .iter()
            .any(|w| w.node == 2 && w.known_epoch == 7)
    })
    .await;
    assert_eq!(
        calls.load(Ordering::SeqCst),
        1,
        "epoch 7 is not applied twice"
    );
    stop.stop();
    task.await.expect("join").expect("session");
}

// Property: when the leaf files are replaced by a renewed leaf (written
// non-atomically: the certificate first, then the key, so the shim may
// see a mismatched pair for a moment), the shim reconnects presenting the
// new leaf and registers again: the coordinator sees the new fingerprint
// and expiry, and the directive stream is opened again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn renewed_leaf_is_registered_again() {
    let seed = support::seed(15);
    let pki = Pki::new();
    let cluster = Cluster::new(&pki);
    let node = cluster.start_node(&pki, 1, "eu");
    let dir = tempfile::tempdir().expect("tempdir");
    let cert = dir.path().join("leaf.pem");
    let key = dir.path().join("leaf.key");
    let old = pki.leaf("agent-1");
    write_atomic(&cert, old.cert_pem().as_bytes(), 0o644).expect("cert");
    write_atomic(&key, old.key_pem().as_bytes(), 0o600).expect("key");
    let config = shim_config(
        &pki,
        "agent-1",
        LeafSource::Files {
            cert: cert.clone(),
            key: key.clone(),
        },
        vec![node.address()],
        seed,
    );
    let stop = Stop::new();
    let hook = Arc::new(FileHook::new(dir.path().join("d.json"), FileFormat::Json));
    let task = tokio::spawn(Session::new(config, hook).run(stop.signal()));
    eventually("Watch with the first leaf", WAIT, || {
        !cluster.watches().is_empty()
    })
    .await;
    assert_eq!(cluster.registrations()[0].fingerprint, old.fingerprint());

    let renewed = pki.leaf("agent-1");
    assert_ne!(renewed.fingerprint(), old.fingerprint());
    std::fs::write(&cert, renewed.cert_pem()).expect("cert");
    std::fs::write(&key, renewed.key_pem()).expect("key");
    eventually("a registration of the renewed leaf", WAIT, || {
        cluster
            .registrations()
            .iter()
            .any(|r| r.fingerprint == renewed.fingerprint())
    })
    .await;
    let regs = cluster.registrations();
    let again = regs
        .iter()
        .find(|r| r.fingerprint == renewed.fingerprint())
        .expect("registration");
    assert_eq!(again.request.leaf_not_after_ms, renewed.not_after_ms());
    assert!(
        regs.iter()
            .all(|r| r.fingerprint == old.fingerprint() || r.fingerprint == renewed.fingerprint()),
        "no registration with a half-written pair: {regs:?}"
    );
    eventually("Watch again after re-registering", WAIT, || {
        cluster.watches().len() >= 2
    })
    .await;
    stop.stop();
    task.await.expect("join").expect("session");
}

// Property: when the agent never shows up at the target, the shim reports
// FAILED for the epoch with a reason that says so (and not the token),
// then retries the directive (the hook runs again) while it is current.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unverified_redirect_is_reported_failed_and_retried() {
    let seed = support::seed(16);
    let pki = Pki::new();
    let cluster = Cluster::new(&pki);
    let node = cluster.start_node(&pki, 1, "eu");
    let us = FakeRegion::start(&pki, "us").await;
    let leaf = pki.leaf("agent-1");
    let mut config = shim_config(
        &pki,
        "agent-1",
        LeafSource::Pem(leaf.clone()),
        vec![node.address()],
        seed,
    );
    config.timing.verify_deadline_ms = 300;
    let calls = Arc::new(AtomicUsize::new(0));
    let counted = calls.clone();
    // Tells the agent, which never connects.
    let hook = Arc::new(CallbackHook::new(move |_d: Directive| {
        let counted = counted.clone();
        async move {
            counted.fetch_add(1, Ordering::SeqCst);
            Ok::<(), CallbackError>(())
        }
    }));
    let stop = Stop::new();
    let task = tokio::spawn(Session::new(config, hook).run(stop.signal()));
    cluster.publish(directive(
        "agent-1",
        8,
        pb::DirectiveAction::Redirect,
        &us,
        "tok-never-seen-8",
    ));
    eventually("a FAILED report", WAIT, || {
        cluster
            .reports()
            .iter()
            .any(|r| r.request.outcome == pb::ReportOutcome::Failed as i32)
    })
    .await;
    let reports = cluster.reports();
    let r = &reports[0].request;
    assert_eq!(r.epoch, 8);
    assert_eq!(
        r.serving_region, "eu",
        "still served by home as far as the shim knows"
    );
    assert!(
        r.detail.contains("not verified attached to us"),
        "{}",
        r.detail
    );
    assert!(!r.detail.contains("tok-never-seen-8"));
    eventually("a retry", WAIT, || calls.load(Ordering::SeqCst) >= 2).await;
    stop.stop();
    task.await.expect("join").expect("session");
}

// Property: STAY while the agent is surely at home changes nothing (no
// hook, no report) but fences older epochs; after a REDIRECT moved the
// agent, a newer STAY brings it home: hook with a return-home directive to
// the home region, verified there, reported ATTACHED with serving region
// home.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stay_is_noop_at_home_and_return_home_elsewhere() {
    let seed = support::seed(17);
    let pki = Pki::new();
    let cluster = Cluster::new(&pki);
    let node = cluster.start_node(&pki, 1, "eu");
    let eu = FakeRegion::start(&pki, "eu").await;
    let us = FakeRegion::start(&pki, "us").await;
    let leaf = pki.leaf("agent-1");
    let calls = Arc::new(AtomicUsize::new(0));
    let config = shim_config(
        &pki,
        "agent-1",
        LeafSource::Pem(leaf.clone()),
        vec![node.address()],
        seed,
    );
    let (tx, mut rx) = mpsc::unbounded_channel();
    let stop = Stop::new();
    let task = tokio::spawn(
        Session::new(config, attaching_hook(&pki, &leaf, calls.clone()))
            .with_events(tx)
            .run(stop.signal()),
    );
    let mut stay = directive("agent-1", 2, pb::DirectiveAction::Stay, &eu, "");
    stay.token_not_after_ms = 0;
    cluster.publish(stay.clone());
    wait_event(&mut rx, "STAY at home is a no-op", |k| {
        matches!(
            k,
            SessionEventKind::Directive {
                epoch: 2,
                seen: Seen::NoOp,
                ..
            }
        )
    })
    .await;
    assert_eq!(calls.load(Ordering::SeqCst), 0);
    assert!(cluster.reports().is_empty());

    cluster.publish(directive(
        "agent-1",
        3,
        pb::DirectiveAction::Redirect,
        &us,
        "tok-3",
    ));
    eventually("ATTACHED at us", WAIT, || {
        cluster.reports().iter().any(|r| r.request.epoch == 3)
    })
    .await;
    stay.epoch = 4;
    cluster.publish(stay);
    wait_event(&mut rx, "STAY elsewhere is applied", |k| {
        matches!(
            k,
            SessionEventKind::Applied { epoch: 4, kind: DirectiveKind::ReturnHome, target_region, .. }
                if target_region == "eu"
        )
    })
    .await;
    eventually("ATTACHED at home reported", WAIT, || {
        cluster.reports().iter().any(|r| {
            r.request.epoch == 4
                && r.request.serving_region == "eu"
                && r.request.outcome == pb::ReportOutcome::Attached as i32
        })
    })
    .await;
    assert_eq!(calls.load(Ordering::SeqCst), 2);
    let home = eu.attachment("agent-1").expect("attached home");
    assert_eq!(home.token, None, "home is attached without a token");
    assert_eq!(home.fingerprint, leaf.fingerprint());
    stop.stop();
    task.await.expect("join").expect("session");
}

// Property: when the target refuses the epoch's token and the coordinators
// then re-send the same decision with a refreshed token, the shim applies
// the refreshed directive at once (not only at its next scheduled retry)
// and the agent attaches with the new token; the refresh is not a
// conflict.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refreshed_token_is_applied_after_a_refusal() {
    let seed = support::seed(18);
    let pki = Pki::new();
    let cluster = Cluster::new(&pki);
    let node = cluster.start_node(&pki, 1, "eu");
    let us = FakeRegion::start(&pki, "us").await;
    let leaf = pki.leaf("agent-1");
    let mut config = shim_config(
        &pki,
        "agent-1",
        LeafSource::Pem(leaf.clone()),
        vec![node.address()],
        seed,
    );
    // Scheduled retries far away: only the refresh can succeed in time.
    config.timing.retry_base_ms = 600_000;
    config.timing.retry_cap_ms = 600_000;
    let calls = Arc::new(AtomicUsize::new(0));
    let (tx, mut rx) = mpsc::unbounded_channel();
    let stop = Stop::new();
    let task = tokio::spawn(
        Session::new(config, attaching_hook(&pki, &leaf, calls.clone()))
            .with_events(tx)
            .run(stop.signal()),
    );
    us.expect_token("agent-1", "tok-new");
    cluster.publish(directive(
        "agent-1",
        5,
        pb::DirectiveAction::Redirect,
        &us,
        "tok-old",
    ));
    eventually("FAILED (token refused)", WAIT, || {
        cluster
            .reports()
            .iter()
            .any(|r| r.request.epoch == 5 && r.request.outcome == pb::ReportOutcome::Failed as i32)
    })
    .await;
    cluster.publish(directive(
        "agent-1",
        5,
        pb::DirectiveAction::Redirect,
        &us,
        "tok-new",
    ));
    eventually("ATTACHED with the refreshed token", WAIT, || {
        cluster.reports().iter().any(|r| {
            r.request.epoch == 5 && r.request.outcome == pb::ReportOutcome::Attached as i32
        })
    })
    .await;
    assert_eq!(
        us.attachment("agent-1").and_then(|a| a.token).as_deref(),
        Some("tok-new")
    );
    assert_eq!(calls.load(Ordering::SeqCst), 2);
    stop.stop();
    task.await.expect("join").expect("session");
    let mut seen = Vec::new();
    while let Ok(e) = rx.try_recv() {
        if let SessionEventKind::Directive {
            epoch: 5, seen: s, ..
        } = e.kind
        {
            seen.push(s);
        }
    }
    assert_eq!(seen, vec![Seen::Apply, Seen::Apply], "no conflict");
}
