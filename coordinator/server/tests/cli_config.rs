//! The `tern serve` binary refuses bad configurations: it exits non-zero
//! before binding anything, with a message that names the field at fault.
//! (This integration test also makes `cargo test` build the `tern` binary
//! that the multi-process tests in `tests/` run.)

use std::path::Path;
use std::process::Command;

fn tern() -> Command {
    Command::new(env!("CARGO_BIN_EXE_tern"))
}

fn write_base(dir: &Path) -> String {
    for f in ["ca.pem", "node.pem", "node.key"] {
        std::fs::write(dir.join(f), "placeholder").expect("write");
    }
    "node_id = 1\nregion = \"eu\"\ndata_dir = \"data\"\n[listen]\ngrpc = \"127.0.0.1:0\"\nhttp = \"127.0.0.1:0\"\n[tls]\nca_file = \"ca.pem\"\ncert_file = \"node.pem\"\nkey_file = \"node.key\"\n".to_string()
}

fn serve_check(dir: &Path, text: &str) -> (i32, String) {
    let cfg = dir.join("tern.toml");
    std::fs::write(&cfg, text).expect("write config");
    let out = tern()
        .args(["serve", "--check", "--config"])
        .arg(&cfg)
        .env_remove("TERN_NODE_ID")
        .env_remove("TERN_REGION")
        .output()
        .expect("run tern");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stderr).to_string(),
    )
}

// Property: a missing required field, a heartbeat not below the election
// timeout, and an unreadable certificate file each exit non-zero with a
// message naming the problem; the valid base file passes `--check`.
#[test]
fn bad_configurations_exit_non_zero_naming_the_field() {
    let dir = tempfile::tempdir().expect("tempdir");
    let base = write_base(dir.path());
    let (code, err) = serve_check(dir.path(), &base);
    assert_eq!(code, 0, "the base configuration must be valid: {err}");

    let cases = [
        (
            base.replace("region = \"eu\"\n", ""),
            "`region` is required",
        ),
        (
            format!("{base}[raft]\nheartbeat_ms = 5000\n"),
            "raft.election_timeout_min_ms",
        ),
        (
            base.replace("node.pem", "no-such-cert.pem"),
            "tls.cert_file",
        ),
        (base.replace("node_id = 1", "node_id = \"one\""), "node_id"),
    ];
    for (text, needle) in cases {
        let (code, err) = serve_check(dir.path(), &text);
        assert_ne!(code, 0, "expected failure mentioning {needle}");
        assert!(
            err.contains(needle),
            "stderr {err:?} should mention {needle:?}"
        );
    }
}

// Property: a configuration file that does not exist is reported by path.
#[test]
fn missing_config_file_is_reported() {
    let out = tern()
        .args(["serve", "--config", "/nonexistent/tern.toml"])
        .output()
        .expect("run tern");
    assert_ne!(out.status.code(), Some(0));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("/nonexistent/tern.toml"), "stderr: {err}");
}
