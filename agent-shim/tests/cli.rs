//! The `tern-shim` binary: `hook-test` and `tracker show`.

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
