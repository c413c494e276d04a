//! The file hook: atomic replacement of the directive file, and its reload
//! command.

use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tern_agent_shim::{
    render_directive_file, CommandError, CommandSpec, Directive, DirectiveKind, FileFormat,
    FileHook, HookError, RedirectHook,
};

fn directive(epoch: u64, token: String) -> Directive {
    Directive {
        epoch,
        agent_id: "agent-1".into(),
        kind: DirectiveKind::Redirect,
        target_region: format!("region-{epoch}"),
        endpoint: format!("wss://region-{epoch}.example/v1/opamp"),
        base_url: format!("https://region-{epoch}.example"),
        token,
        issued_at_ms: 1,
        expires_at_ms: 2,
    }
}

fn sh(script: &str, args: &[&str]) -> Vec<String> {
    let mut argv = vec!["sh".to_string(), "-c".to_string(), script.to_string()];
    argv.extend(args.iter().map(|a| a.to_string()));
    argv
}

fn read_json(path: &Path) -> serde_json::Value {
    serde_json::from_slice(&std::fs::read(path).expect("read")).expect("json")
}

// Property: a reader polling the directive file while it is replaced again
// and again only ever sees a complete old or a complete new file (each read
// is byte for byte one of the two versions), never a partial or missing
// one, even with a multi-megabyte payload.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readers_never_see_a_partial_file() {
    const SIZE: usize = 2 * 1024 * 1024;
    const MIN_WRITES: usize = 20;
    const MIN_READS: usize = 200;
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("directive.json");
    let old = directive(1, "a".repeat(SIZE));
    let new = directive(2, "b".repeat(SIZE));
    let old_bytes = render_directive_file(&old, FileFormat::Json).expect("render");
    let new_bytes = render_directive_file(&new, FileFormat::Json).expect("render");
    let hook = FileHook::new(&path, FileFormat::Json);
    hook.apply(&old).await.expect("first write");

    let stop = Arc::new(AtomicBool::new(false));
    let reads = Arc::new(AtomicUsize::new(0));
    let reader = {
        let (path, stop, reads) = (path.clone(), stop.clone(), reads.clone());
        let (old_bytes, new_bytes) = (old_bytes.clone(), new_bytes.clone());
        std::thread::spawn(move || -> Result<(), String> {
            while !stop.load(Ordering::Acquire) {
                let bytes = std::fs::read(&path).map_err(|e| format!("read failed: {e}"))?;
                if bytes != old_bytes && bytes != new_bytes {
                    return Err(format!("partial or mixed file of {} bytes", bytes.len()));
                }
                reads.fetch_add(1, Ordering::Relaxed);
            }
            Ok(())
        })
    };
    // Write until both enough writes and enough concurrent reads happened
    // (bounded: the reader may be starved on a busy machine).
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut writes = 0;
    while (writes < MIN_WRITES || reads.load(Ordering::Relaxed) < MIN_READS)
        && Instant::now() < deadline
        && !reader.is_finished()
    {
        let d = if writes % 2 == 0 { &new } else { &old };
        hook.apply(d).await.expect("write");
        writes += 1;
    }
    stop.store(true, Ordering::Release);
    reader
        .join()
        .expect("reader thread")
        .expect("reader saw a bad file");
    let reads = reads.load(Ordering::Relaxed);
    assert!(
        reads >= MIN_READS,
        "only {reads} reads during {writes} writes"
    );
    let last = if writes % 2 == 0 {
        &old_bytes
    } else {
        &new_bytes
    };
    assert_eq!(
        &std::fs::read(&path).expect("read"),
        last,
        "last write wins"
    );
    let leftovers: Vec<_> = std::fs::read_dir(dir.path())
        .expect("ls")
        .map(|e| e.expect("entry").file_name())
        .collect();
    assert_eq!(leftovers.len(), 1, "temp files left: {leftovers:?}");
}

// Property: the reload command runs after the file is in place, with
// exactly the configured argv (no shell interpretation: spaces, dashes and
// `$` pass through verbatim), and with TERN_DIRECTIVE_FILE and TERN_EPOCH
// but not the token in its environment; its exit status is reported.
#[tokio::test]
async fn reload_runs_with_argv() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("directive.env");
    let out = dir.path().join("argv.txt");
    let seen = dir.path().join("seen.env");
    // $0: where to write the argv; $1: where to copy the file it sees.
    let script = "seen=$1; shift; printf '%s\\n' \"$@\" > \"$0\" && cp \"$TERN_DIRECTIVE_FILE\" \"$seen\" \
                  && printf '%s\\n' \"$TERN_EPOCH\" \"$TERN_TARGET_REGION\" \"${TERN_TOKEN:-unset}\" >> \"$0\"";
    let mut argv = sh(
        script,
        &[out.to_str().expect("utf8"), seen.to_str().expect("utf8")],
    );
    argv.extend(["one", "two words", "--three", "$HOME", ""].map(String::from));
    let hook = FileHook::new(&path, FileFormat::Env)
        .with_reload(CommandSpec::new(argv, Duration::from_secs(20)));
    let d = directive(3, "tok-3".into());
    let report = hook.apply(&d).await.expect("hook");
    let run = report.command.expect("reload ran");
    assert_eq!(run.exit_code, Some(0));
    assert!(run.success);
    assert_eq!(report.file.as_deref(), Some(path.as_path()));
    assert_eq!(
        std::fs::read_to_string(&out).expect("argv file"),
        "one\ntwo words\n--three\n$HOME\n\n3\nregion-3\nunset\n"
    );
    assert_eq!(
        std::fs::read(&seen).expect("seen"),
        std::fs::read(&path).expect("file"),
        "the reload command sees the new file"
    );
    assert!(std::fs::read_to_string(&path)
        .expect("file")
        .contains("TERN_TOKEN=tok-3\n"));
}

// Property: a failing reload command fails the hook with its exit code and
// stderr tail, and the token it printed is scrubbed from the tail and from
// the error's Display and Debug; the file is written regardless.
#[tokio::test]
async fn reload_failure_is_reported_without_token() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("directive.json");
    let argv = sh(
        "echo reloading >&2; cat \"$TERN_DIRECTIVE_FILE\" >&2; exit 3",
        &[],
    );
    let hook = FileHook::new(&path, FileFormat::Json)
        .with_reload(CommandSpec::new(argv, Duration::from_secs(20)));
    let d = directive(4, "SUPER-SECRET-TOKEN".into());
    let err = hook.apply(&d).await.expect_err("reload fails");
    let HookError::CommandFailed {
        exit_code,
        stderr_tail,
        ..
    } = &err
    else {
        panic!("unexpected error {err:?}");
    };
    assert_eq!(*exit_code, Some(3));
    assert!(stderr_tail.contains("reloading"), "{stderr_tail}");
    assert!(
        stderr_tail.contains("\"token\": \"<redacted>\""),
        "{stderr_tail}"
    );
    for text in [stderr_tail.clone(), err.to_string(), format!("{err:?}")] {
        assert!(!text.contains("SUPER-SECRET"), "token leaked: {text}");
    }
    assert_eq!(read_json(&path)["epoch"], 4);
}

// Property: a reload command that hangs is killed at its timeout and the
// hook fails with Timeout, promptly.
#[tokio::test]
async fn reload_timeout_kills() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("directive.json");
    let argv = vec!["sleep".to_string(), "60".to_string()];
    let hook = FileHook::new(&path, FileFormat::Json)
        .with_reload(CommandSpec::new(argv, Duration::from_millis(300)));
    let started = Instant::now();
    let err = hook
        .apply(&directive(5, "t".into()))
        .await
        .expect_err("times out");
    assert!(
        matches!(err, HookError::Command(CommandError::Timeout { .. })),
        "{err:?}"
    );
    assert!(started.elapsed() < Duration::from_secs(30), "not killed");
}

// Property: a reload command that cannot be started is an error, and a
// file that cannot be written fails the hook before any reload runs, with
// the old file intact.
#[tokio::test]
async fn spawn_and_write_failures() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("directive.json");
    let hook = FileHook::new(&path, FileFormat::Json).with_reload(CommandSpec::new(
        vec!["/nonexistent/tern-reload".into()],
        Duration::from_secs(5),
    ));
    let err = hook
        .apply(&directive(1, "t".into()))
        .await
        .expect_err("no program");
    assert!(
        matches!(err, HookError::Command(CommandError::Spawn { .. })),
        "{err:?}"
    );

    let marker = dir.path().join("reloaded");
    let bad = FileHook::new(dir.path().join("missing/directive.json"), FileFormat::Json)
        .with_reload(CommandSpec::new(
            vec!["touch".into(), marker.to_str().expect("utf8").into()],
            Duration::from_secs(5),
        ));
    let err = bad
        .apply(&directive(1, "t".into()))
        .await
        .expect_err("no dir");
    assert!(matches!(err, HookError::Write { .. }), "{err:?}");
    assert!(!marker.exists(), "reload ran after a failed write");

    let env = FileHook::new(&path, FileFormat::Env);
    let before = std::fs::read(&path).expect("old file");
    let err = env
        .apply(&directive(2, "not env safe".into()))
        .await
        .expect_err("unrepresentable");
    assert!(matches!(
        err,
        HookError::Unrepresentable {
            field: "TERN_TOKEN"
        }
    ));
    assert_eq!(
        std::fs::read(&path).expect("file"),
        before,
        "old file intact"
    );
}
