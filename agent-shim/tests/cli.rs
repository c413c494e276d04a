//! The `tern-shim` binary: `hook-test`, `tracker show`, `run` and `fleet`.

use std::process::Command;

use tern_agent_shim::{save, ApplyOutcome, Directive, DirectiveKind, Tracker};

fn shim() -> Command {
    Command::new(env!("CARGO_BIN_EXE_tern-shim"))
}

// Property: `hook-test` writes the sample directive through the file hook
// and runs the reload command with the given argv (hyphenated arguments
// included), reporting its exit code; a failing reload makes it fail.
#[test]
fn hook_test_writes_and_reloads() {
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("directive.env");
    let out = dir.path().join("reloaded");
    let output = shim()
        .args(["hook-test", "--file"])
        .arg(&file)
        .args(["--format", "env", "--target-region", "us", "--reload"])
        .args([
            "sh",
            "-c",
            "cp \"$TERN_DIRECTIVE_FILE\" \"$1\"; echo -n done >&2",
            "sh",
        ])
        .arg(&out)
        .output()
        .expect("run tern-shim");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "stdout: {stdout}\nstderr: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(
        stdout.contains("reload command exited with code 0"),
        "{stdout}"
    );
    assert!(stdout.contains("done"), "{stdout}");
    let written = std::fs::read_to_string(&file).expect("file");
    assert!(written.contains("TERN_TARGET_REGION=us\n"), "{written}");
    assert_eq!(std::fs::read_to_string(&out).expect("copy"), written);

    let failing = shim()
        .args(["hook-test", "--file"])
        .arg(&file)
        .args(["--reload", "false"])
        .output()
        .expect("run tern-shim");
    assert!(!failing.status.success());
    assert!(String::from_utf8_lossy(&failing.stderr).contains("exit code Some(1)"));
}

// Property: `tracker show` prints the serving region, the fence and the
// current directive, in text and JSON, never the token; a missing state
// file is an error.
#[test]
fn tracker_show() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("tracker.json");
    let mut t = Tracker::new("agent-1");
    let d = Directive {
        epoch: 5,
        agent_id: "agent-1".into(),
        kind: DirectiveKind::Redirect,
        target_region: "us".into(),
        endpoint: "wss://us.example/v1/opamp".into(),
        base_url: "https://us.example".into(),
        token: "VERY-SECRET".into(),
        issued_at_ms: 1,
        expires_at_ms: u64::MAX,
    };
    t.offer(2, d);
    t.applied(5, ApplyOutcome::Attached);
    save(&path, &t).expect("save");

    let text = shim()
        .args(["tracker", "show", "--state"])
        .arg(&path)
        .output()
        .expect("run");
    assert!(text.status.success());
    let text = String::from_utf8_lossy(&text.stdout);
    assert!(text.contains("serving region: us (epoch 5)"), "{text}");
    assert!(text.contains("newest epoch:   5"), "{text}");
    assert!(text.contains("status:         attached"), "{text}");
    assert!(!text.contains("VERY-SECRET"));

    let json = shim()
        .args(["tracker", "show", "--json", "--state"])
        .arg(&path)
        .output()
        .expect("run");
    assert!(json.status.success());
    let v: serde_json::Value = serde_json::from_slice(&json.stdout).expect("json");
    assert_eq!(v["serving_region"], "us");
    assert_eq!(v["current"]["status"], "attached");
    assert!(!String::from_utf8_lossy(&json.stdout).contains("VERY-SECRET"));

    let missing = shim()
        .args(["tracker", "show", "--state"])
        .arg(dir.path().join("nope.json"))
        .output()
        .expect("run");
    assert!(!missing.status.success());
    assert!(String::from_utf8_lossy(&missing.stderr).contains("no tracker state file"));
}

mod support;

use std::process::{Child, Stdio};
use std::time::Duration;

use support::{directive, eventually, Cluster, FakeRegion, Pki};
use tern_proto::v1 as pb;

const WAIT: Duration = Duration::from_secs(20);

/// The resident set size of a process, from /proc (Linux), e.g. "9876 kB".
fn vm_rss(pid: u32) -> String {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .map(|l| l.trim_start_matches("VmRSS:").trim().to_string())
        })
        .unwrap_or_else(|| "unknown".to_string())
}

/// Sends SIGTERM and waits (bounded) for the exit.
async fn terminate(child: &mut Child) -> std::process::ExitStatus {
    let killed = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .expect("kill");
    assert!(killed.success());
    let mut status = None;
    eventually("the process exits after SIGTERM", WAIT, || {
        status = child.try_wait().expect("try_wait");
        status.is_some()
    })
    .await;
    status.expect("exited")
}

// Property: `tern-shim run` with a command hook registers the agent with
// its leaf, runs the hook with the directive in TERN_* variables (target,
// endpoint, token), verifies the attachment and reports ATTACHED; it
// prints its seed, never prints the token, and exits 0 on SIGTERM. Prints
// the process's resident memory while it runs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_binary_follows_a_redirect() {
    let _seed = support::seed(41);
    let pki = Pki::new();
    let cluster = Cluster::new(&pki);
    let node = cluster.start_node(&pki, 1, "eu");
    let us = FakeRegion::start(&pki, "us").await;
    let dir = tempfile::tempdir().expect("tempdir");
    let ca = dir.path().join("ca.pem");
    std::fs::write(&ca, &pki.server_ca.cert_pem).expect("ca");
    let leaf = pki.leaf("agent-9");
    let cert = dir.path().join("leaf.pem");
    let key = dir.path().join("leaf.key");
    std::fs::write(&cert, leaf.cert_pem()).expect("cert");
    std::fs::write(&key, leaf.key_pem()).expect("key");
    let out = dir.path().join("hook.out");
    let log = dir.path().join("stderr.log");
    let mut child = shim()
        .args(["run", "--agent-id", "agent-9", "--home", "eu", "--config-hash", "h"])
        .arg("--leaf-cert")
        .arg(&cert)
        .arg("--leaf-key")
        .arg(&key)
        .arg("--coordinator-ca")
        .arg(&ca)
        .arg("--region-ca")
        .arg(&ca)
        .args(["--coordinators", &node.address(), "--seed", "7"])
        .arg("--state-dir")
        .arg(dir.path().join("state"))
        .args([
            "--apply-jitter-ms",
            "10",
            "--verify-poll-ms",
            "50",
            "--reconnect-base-ms",
            "50",
            "--reconnect-cap-ms",
            "500",
            "--hook-command",
            "sh",
            "-c",
            "printf '%s %s %s' \"$TERN_TARGET_REGION\" \"$TERN_ENDPOINT\" \"$TERN_TOKEN\" > \"$0.tmp\" && mv \"$0.tmp\" \"$0\"",
        ])
        .arg(&out)
        .env("RUST_LOG", "debug")
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).expect("log"))
        .spawn()
        .expect("spawn tern-shim run");

    eventually("the shim watches", WAIT, || !cluster.watches().is_empty()).await;
    assert_eq!(cluster.registrations()[0].fingerprint, leaf.fingerprint());
    let token = "SECRET-cli-token-3";
    cluster.publish(directive(
        "agent-9",
        3,
        pb::DirectiveAction::Redirect,
        &us,
        token,
    ));
    eventually("the hook ran", WAIT, || out.exists()).await;
    assert_eq!(
        std::fs::read_to_string(&out).expect("out"),
        format!("us wss://{}/v1/opamp {token}", us.addr)
    );
    us.attach_direct("agent-9", leaf.fingerprint(), "handover");
    eventually("ATTACHED reported", WAIT, || {
        cluster.reports().iter().any(|r| {
            r.request.epoch == 3 && r.request.outcome == pb::ReportOutcome::Attached as i32
        })
    })
    .await;
    eprintln!("tern-shim run (one agent) VmRSS: {}", vm_rss(child.id()));

    let status = terminate(&mut child).await;
    let stderr = std::fs::read_to_string(&log).expect("log");
    assert!(status.success(), "exit {status:?}\n{stderr}");
    assert!(stderr.contains("seed 7"), "{stderr}");
    assert!(stderr.contains("registered"), "{stderr}");
    assert!(!stderr.contains(token), "token in the log:\n{stderr}");
}

// Property: `tern-shim fleet` issues an identity per agent, attaches each
// home, registers them, keeps the status file current (atomically
// replaced JSON), prints its seed, and on SIGTERM stops and prints a
// summary.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fleet_binary_writes_status_file() {
    let _seed = support::seed(42);
    let pki = Pki::new();
    let cluster = Cluster::new(&pki);
    let node = cluster.start_node(&pki, 1, "eu");
    let eu = FakeRegion::start(&pki, "eu").await;
    let dir = tempfile::tempdir().expect("tempdir");
    let ca = dir.path().join("ca.pem");
    std::fs::write(&ca, &pki.server_ca.cert_pem).expect("ca");
    let agent_ca = dir.path().join("agent-ca.pem");
    let agent_key = dir.path().join("agent-ca.key");
    std::fs::write(&agent_ca, pki.agent_ca.cert_pem()).expect("agent ca");
    std::fs::write(&agent_key, &pki.agent_ca_key_pem).expect("agent key");
    let status_file = dir.path().join("status.json");
    let log = dir.path().join("stderr.log");
    let mut child = shim()
        .args([
            "fleet",
            "--agents",
            "5",
            "--home",
            "eu",
            "--config-hash",
            "h",
        ])
        .args(["--home-base-url", &eu.base_url()])
        .arg("--agent-ca-cert")
        .arg(&agent_ca)
        .arg("--agent-ca-key")
        .arg(&agent_key)
        .arg("--coordinator-ca")
        .arg(&ca)
        .arg("--region-ca")
        .arg(&ca)
        .args(["--coordinators", &node.address(), "--seed", "99"])
        .arg("--status-file")
        .arg(&status_file)
        .args(["--status-interval-ms", "100", "--connect-spread-ms", "200"])
        .stdout(Stdio::piped())
        .stderr(std::fs::File::create(&log).expect("log"))
        .spawn()
        .expect("spawn tern-shim fleet");
    eventually("5 agents registered in the status file", WAIT, || {
        std::fs::read(&status_file)
            .ok()
            .and_then(|b| serde_json::from_slice::<serde_json::Value>(&b).ok())
            .is_some_and(|v| v["registered"] == 5 && v["watching"] == 5)
    })
    .await;
    assert_eq!(eu.attached_count(), 5);
    let regs = cluster.registrations();
    assert_eq!(regs.len(), 5);
    assert!(regs
        .iter()
        .all(|r| r.request.agent_id.starts_with("sim-eu-")));
    eprintln!("tern-shim fleet (5 agents) VmRSS: {}", vm_rss(child.id()));
    let status = terminate(&mut child).await;
    let stderr = std::fs::read_to_string(&log).expect("log");
    assert!(status.success(), "exit {status:?}\n{stderr}");
    assert!(stderr.contains("seed 99"), "{stderr}");
    let mut stdout = String::new();
    use std::io::Read;
    child
        .stdout
        .take()
        .expect("stdout")
        .read_to_string(&mut stdout)
        .expect("read");
    assert!(
        stdout.contains("fleet stopped: 5 agents, 5 registered"),
        "{stdout}"
    );
}

// Property (measurement, run on demand: `cargo test -p tern-agent-shim
// --test cli -- --ignored --nocapture`): a `tern-shim fleet` process of N
// agents (TERN_FLEET_AGENTS, default 1000) registers them all; prints the
// fleet process's resident memory once all are watching.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "measurement; run explicitly"]
async fn fleet_binary_memory() {
    let n: usize = std::env::var("TERN_FLEET_AGENTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1000);
    let pki = Pki::new();
    let cluster = Cluster::new(&pki);
    let node = cluster.start_node(&pki, 1, "eu");
    let eu = FakeRegion::start(&pki, "eu").await;
    let dir = tempfile::tempdir().expect("tempdir");
    let ca = dir.path().join("ca.pem");
    std::fs::write(&ca, &pki.server_ca.cert_pem).expect("ca");
    let agent_ca = dir.path().join("agent-ca.pem");
    let agent_key = dir.path().join("agent-ca.key");
    std::fs::write(&agent_ca, pki.agent_ca.cert_pem()).expect("agent ca");
    std::fs::write(&agent_key, &pki.agent_ca_key_pem).expect("agent key");
    let status_file = dir.path().join("status.json");
    let mut child = shim()
        .args([
            "fleet",
            "--agents",
            &n.to_string(),
            "--home",
            "eu",
            "--config-hash",
            "h",
        ])
        .args(["--home-base-url", &eu.base_url()])
        .arg("--agent-ca-cert")
        .arg(&agent_ca)
        .arg("--agent-ca-key")
        .arg(&agent_key)
        .arg("--coordinator-ca")
        .arg(&ca)
        .arg("--region-ca")
        .arg(&ca)
        .args(["--coordinators", &node.address(), "--seed", "5"])
        .arg("--status-file")
        .arg(&status_file)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn tern-shim fleet");
    let started = std::time::Instant::now();
    eventually("all agents watching", Duration::from_secs(300), || {
        std::fs::read(&status_file)
            .ok()
            .and_then(|b| serde_json::from_slice::<serde_json::Value>(&b).ok())
            .is_some_and(|v| v["watching"] == n)
    })
    .await;
    eprintln!(
        "tern-shim fleet of {n}: all watching after {:.1} s; VmRSS {}",
        started.elapsed().as_secs_f64(),
        vm_rss(child.id())
    );
    let status = terminate(&mut child).await;
    assert!(status.success());
}
