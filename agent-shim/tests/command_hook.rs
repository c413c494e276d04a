//! The command hook and the callback hook.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tern_agent_shim::{
    CallbackHook, CommandError, CommandHook, CommandSpec, Directive, DirectiveKind, HookError,
    RedirectHook,
};

fn directive() -> Directive {
    Directive {
        epoch: 42,
        agent_id: "agent-7".into(),
        kind: DirectiveKind::ReturnHome,
        target_region: "eu".into(),
        endpoint: "wss://eu.example/v1/opamp".into(),
        base_url: "https://eu.example".into(),
        token: "tok with spaces & $symbols".into(),
        issued_at_ms: 10,
        expires_at_ms: 3_600_010,
    }
}

// Property: the command hook passes the directive in TERN_TARGET_REGION,
// TERN_ENDPOINT, TERN_TOKEN, TERN_EPOCH (and TERN_AGENT_ID, TERN_KIND,
// TERN_EXPIRES_AT_MS), verbatim, on top of the shim's own environment.
#[tokio::test]
async fn command_hook_passes_env() {
    let dir = tempfile::tempdir().expect("tempdir");
    let out = dir.path().join("env.txt");
    let script = "for k in TERN_TARGET_REGION TERN_ENDPOINT TERN_TOKEN TERN_EPOCH TERN_AGENT_ID \
                  TERN_KIND TERN_EXPIRES_AT_MS PATH; do printf '%s=%s\\n' \"$k\" \"$(printenv \"$k\")\"; done > \"$0\"";
    let hook = CommandHook::new(CommandSpec::new(
        vec![
            "sh".into(),
            "-c".into(),
            script.into(),
            out.to_str().expect("utf8").into(),
        ],
        Duration::from_secs(20),
    ));
    let report = hook.apply(&directive()).await.expect("hook");
    assert_eq!(report.command.expect("ran").exit_code, Some(0));
    let text = std::fs::read_to_string(&out).expect("env file");
    let env: BTreeMap<&str, &str> = text.lines().filter_map(|l| l.split_once('=')).collect();
    assert_eq!(env["TERN_TARGET_REGION"], "eu");
    assert_eq!(env["TERN_ENDPOINT"], "wss://eu.example/v1/opamp");
    assert_eq!(env["TERN_TOKEN"], "tok with spaces & $symbols");
    assert_eq!(env["TERN_EPOCH"], "42");
    assert_eq!(env["TERN_AGENT_ID"], "agent-7");
    assert_eq!(env["TERN_KIND"], "return_home");
    assert_eq!(env["TERN_EXPIRES_AT_MS"], "3600010");
    assert!(
        !env["PATH"].is_empty(),
        "the shim's environment is inherited"
    );
}

// Property: a failing command fails the hook with its exit code, and the
// token it echoed is scrubbed from the stderr tail and the error text.
#[tokio::test]
async fn command_failure_scrubs_token() {
    let hook = CommandHook::new(CommandSpec::new(
        vec![
            "sh".into(),
            "-c".into(),
            "echo \"rejected token $TERN_TOKEN\" >&2; exit 7".into(),
        ],
        Duration::from_secs(20),
    ));
    let err = hook.apply(&directive()).await.expect_err("fails");
    let HookError::CommandFailed {
        exit_code,
        stderr_tail,
        ..
    } = &err
    else {
        panic!("unexpected {err:?}");
    };
    assert_eq!(*exit_code, Some(7));
    assert_eq!(stderr_tail, "rejected token <redacted>\n");
    for text in [err.to_string(), format!("{err:?}")] {
        assert!(!text.contains("$symbols"), "token leaked: {text}");
    }
}

// Property: a command hook that hangs is killed at its timeout; an empty
// argv is refused.
#[tokio::test]
async fn command_timeout_and_empty() {
    let hook = CommandHook::new(CommandSpec::new(
        vec!["sleep".into(), "60".into()],
        Duration::from_millis(200),
    ));
    let err = hook.apply(&directive()).await.expect_err("timeout");
    assert!(matches!(
        err,
        HookError::Command(CommandError::Timeout { .. })
    ));
    let empty = CommandHook::new(CommandSpec::new(vec![], Duration::from_secs(1)));
    let err = empty.apply(&directive()).await.expect_err("empty");
    assert!(matches!(err, HookError::Command(CommandError::Empty)));
}

// Property: the callback hook hands the embedding program the directive,
// and its error message reaches the caller with the token scrubbed.
#[tokio::test]
async fn callback_hook() {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let hook = {
        let seen = seen.clone();
        CallbackHook::new(move |d: Directive| {
            let seen = seen.clone();
            async move {
                seen.lock().map_err(|_| "poisoned")?.push(d.epoch);
                Ok(())
            }
        })
    };
    hook.apply(&directive()).await.expect("callback");
    assert_eq!(*seen.lock().expect("lock"), vec![42]);

    let failing = CallbackHook::new(|d: Directive| async move {
        Err(format!("agent refused token {}", d.token).into())
    });
    let err = failing.apply(&directive()).await.expect_err("fails");
    assert_eq!(
        err.to_string(),
        "callback failed: agent refused token <redacted>"
    );
}
