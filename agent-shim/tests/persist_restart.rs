//! The tracker's state file: fencing survives a restart.

use tern_agent_shim::{
    load, load_or_new, save, ApplyOutcome, ApplyStatus, Decision, Directive, DirectiveKind,
    PersistError, Tracker, INTERRUPTED_REASON,
};

const NOW: u64 = 1_700_000_000_000;

fn directive(epoch: u64) -> Directive {
    Directive {
        epoch,
        agent_id: "agent-1".into(),
        kind: DirectiveKind::Redirect,
        target_region: "us".into(),
        endpoint: "wss://us.example/v1/opamp".into(),
        base_url: "https://us.example".into(),
        token: format!("token-{epoch}"),
        issued_at_ms: NOW,
        expires_at_ms: NOW + 3_600_000,
    }
}

// Property: after a save and a "restart" (a new tracker loaded from the
// file), an older epoch is still Stale, the applied directive is a
// Duplicate, another content at its epoch a Conflict, the serving region is
// kept, and a newer epoch is applied.
#[test]
fn fencing_survives_restart() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("tracker.json");
    {
        let mut t = load_or_new(&path, "agent-1").expect("new");
        assert_eq!(t.offer(NOW, directive(5)), Decision::Apply(directive(5)));
        t.applied(5, ApplyOutcome::Attached);
        save(&path, &t).expect("save");
    }
    let mut t = load_or_new(&path, "agent-1").expect("load");
    assert_eq!(
        t.offer(NOW, directive(4)),
        Decision::Stale { newest_seen: 5 }
    );
    assert_eq!(t.offer(NOW, directive(5)), Decision::Duplicate);
    let mut other = directive(5);
    other.target_region = "ap".into();
    assert_eq!(t.offer(NOW, other), Decision::Conflict);
    assert_eq!(t.state().serving_region.as_deref(), Some("us"));
    assert_eq!(t.state().serving_epoch, Some(5));
    assert_eq!(t.offer(NOW, directive(6)), Decision::Apply(directive(6)));
}

// Property: the fence moved by an expired directive also survives a
// restart: nothing older is applied afterwards.
#[test]
fn expired_fence_survives_restart() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("tracker.json");
    let mut t = Tracker::new("agent-1");
    let mut late = directive(9);
    late.expires_at_ms = NOW - 1;
    assert_eq!(t.offer(NOW, late), Decision::Expired);
    save(&path, &t).expect("save");
    let mut t = load(&path).expect("load").expect("exists");
    assert_eq!(
        t.offer(NOW, directive(8)),
        Decision::Stale { newest_seen: 9 }
    );
}

// Property: a directive in flight when the shim stopped is not lost and not
// silently considered done: after the restart it is failed (interrupted)
// and can be retried while unexpired, and only then.
#[test]
fn interrupted_apply_is_retryable() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("tracker.json");
    let mut t = Tracker::new("agent-1");
    t.offer(NOW, directive(7));
    save(&path, &t).expect("save");
    let mut t = load_or_new(&path, "agent-1").expect("load");
    let current = t.state().current.expect("current");
    assert_eq!(
        current.status,
        ApplyStatus::Failed {
            reason: INTERRUPTED_REASON.into()
        }
    );
    assert_eq!(t.offer(NOW, directive(7)), Decision::Duplicate);
    assert_eq!(t.retry(NOW + 3_600_000), None, "expired: not retried");
    assert_eq!(t.retry(NOW), Some(directive(7)));
    assert_eq!(t.state().pending(), Some(&directive(7)));
}

// Property: a missing file gives a fresh tracker; a file of another agent,
// a corrupt file or one of another format version is refused, never
// silently replaced (that would drop the fence).
#[test]
fn bad_files_are_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("tracker.json");
    assert_eq!(
        load_or_new(&path, "agent-1").expect("fresh"),
        Tracker::new("agent-1")
    );
    save(&path, &Tracker::new("agent-2")).expect("save");
    assert!(matches!(
        load_or_new(&path, "agent-1"),
        Err(PersistError::OtherAgent { .. })
    ));
    std::fs::write(&path, "{\"version\": 1, \"agent_id\": ").expect("write");
    assert!(matches!(
        load_or_new(&path, "agent-1"),
        Err(PersistError::State { .. })
    ));
    let v9 = Tracker::new("agent-1")
        .to_json()
        .expect("json")
        .replace("\"version\": 1", "\"version\": 9");
    std::fs::write(&path, v9).expect("write");
    let err = load_or_new(&path, "agent-1").expect_err("refused");
    assert!(err.to_string().contains("version 9"), "{err}");
}

// Property: the state file holds the token, so it is readable by its owner
// only, and its content is the tracker's JSON form.
#[cfg(unix)]
#[test]
fn state_file_is_private() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("tracker.json");
    let mut t = Tracker::new("agent-1");
    t.offer(NOW, directive(1));
    save(&path, &t).expect("save");
    let mode = std::fs::metadata(&path).expect("meta").permissions().mode();
    assert_eq!(mode & 0o777, 0o600);
    assert_eq!(
        std::fs::read_to_string(&path).expect("read"),
        t.to_json().expect("json")
    );
}
