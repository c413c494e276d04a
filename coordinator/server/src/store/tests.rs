//! Unit tests of the store: what survives a restart, snapshot transfer, and
//! how a damaged file is reported. Each test opens its own temporary
//! directory; none touches another test's file.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use openraft::storage::{RaftLogStorage, RaftLogStorageExt, RaftStateMachine};
use openraft::{
    BasicNode, CommittedLeaderId, EntryPayload, Membership, RaftLogReader, RaftSnapshotBuilder,
    StorageHelper,
};
use sqlx::ConnectOptions;
use tempfile::TempDir;
use tern_core::{
    Batch, Command, Member, MemberRole, Millis, Outcome, Proposal, ReplicatedState, Thumbprint,
};

use super::{open, LogStore, StateMachineStore, StoreError, DB_FILE, READ_BATCH_BYTES};
use crate::raft::{Entry, LogId, StoredMembership, Vote};

fn log_id(term: u64, index: u64) -> LogId {
    LogId::new(CommittedLeaderId::new(term, 1), index)
}

fn member(id: u64, region: &str, tp: u8) -> Member {
    Member {
        node_id: id,
        region: region.parse().expect("region"),
        role: MemberRole::Region,
        address: format!("127.0.0.{id}:7400"),
        thumbprints: [Thumbprint([tp; 32])].into(),
        control_plane: None,
    }
}

fn proposal(id: &str, command: Command) -> Proposal {
    Proposal {
        request_id: id.parse().expect("request id"),
        actor: "admin:test".into(),
        command,
    }
}

fn note(id: &str, key: &str, value: &str) -> Proposal {
    proposal(
        id,
        Command::PutNote {
            key: key.into(),
            value: value.into(),
        },
    )
}

fn normal(term: u64, index: u64, at: u64, proposals: Vec<Proposal>) -> Entry {
    Entry {
        log_id: log_id(term, index),
        payload: EntryPayload::Normal(Batch {
            at: Millis(at),
            proposals,
        }),
    }
}

fn blank(term: u64, index: u64) -> Entry {
    Entry {
        log_id: log_id(term, index),
        payload: EntryPayload::Blank,
    }
}

fn membership(term: u64, index: u64, voters: &[u64]) -> Entry {
    let nodes: BTreeMap<u64, BasicNode> = voters
        .iter()
        .map(|id| (*id, BasicNode::new(format!("127.0.0.{id}:7400"))))
        .collect();
    let set: BTreeSet<u64> = voters.iter().copied().collect();
    Entry {
        log_id: log_id(term, index),
        payload: EntryPayload::Membership(Membership::new(vec![set], nodes)),
    }
}

/// A log with every kind of payload and both commands the brief names.
fn sample_log() -> Vec<Entry> {
    vec![
        membership(0, 0, &[1]),
        normal(
            1,
            1,
            1_000,
            vec![
                proposal(
                    "m1",
                    Command::UpsertMember {
                        member: member(1, "eu", 1),
                        expect_epoch: Some(0),
                    },
                ),
                note("n1", "motd", "hello"),
            ],
        ),
        blank(2, 2),
        normal(
            2,
            3,
            2_000,
            vec![
                note("n2", "motd", "bye"),
                note("n1", "motd", "retry is a no-op"),
            ],
        ),
        normal(2, 4, 3_000, vec![note("n3", "owner", "ops")]),
    ]
}

fn state_of(sm: &StateMachineStore) -> ReplicatedState {
    sm.state().read().expect("state lock").clone()
}

async fn reopen(dir: &Path) -> (LogStore, StateMachineStore) {
    open(dir).await.expect("store reopens")
}

// Property: everything the store acknowledged (vote, log entries, committed
// id, last purged id, applied id, applied membership, replicated state
// rows) reads back identically after the store is flushed (as a stopping
// coordinator does), closed and reopened.
#[tokio::test]
async fn reopen_restores_every_acknowledged_write() {
    let dir = TempDir::new().expect("tempdir");
    let (mut log, mut sm) = open(dir.path()).await.expect("store opens");
    let entries = sample_log();
    let vote = Vote::new(2, 1);

    log.save_vote(&vote).await.expect("vote saved");
    log.blocking_append(entries.clone())
        .await
        .expect("entries appended");
    let responses = sm
        .apply(entries[..4].to_vec())
        .await
        .expect("entries applied");
    log.save_committed(Some(log_id(2, 3)))
        .await
        .expect("committed saved");
    log.purge(log_id(0, 0)).await.expect("purged");

    assert_eq!(responses.len(), 4, "one response per entry");
    assert!(
        responses[0].outcomes.is_empty(),
        "membership entries answer with no outcomes"
    );
    assert_eq!(
        responses[1].outcomes,
        vec![
            Outcome::Applied {
                epoch: 1,
                log_index: 1
            },
            Outcome::Applied {
                epoch: 1,
                log_index: 1
            }
        ]
    );
    assert!(
        responses[2].outcomes.is_empty(),
        "blank entries answer with no outcomes"
    );
    assert_eq!(
        responses[3].outcomes[1],
        Outcome::Duplicate {
            epoch: 1,
            log_index: 1
        }
    );
    assert_eq!(
        *sm.applied().borrow(),
        Some(log_id(2, 3)),
        "watch follows apply"
    );

    let state_before = state_of(&sm);
    assert_eq!(state_before.members().len(), 1);
    assert_eq!(
        state_before.notes().get("motd").map(|n| n.value.as_str()),
        Some("bye")
    );
    let applied_before = sm.applied_state().await.expect("applied state");
    sm.flush().await.expect("flushed");
    drop((log, sm));

    let (mut log, mut sm) = reopen(dir.path()).await;
    assert_eq!(log.read_vote().await.expect("vote"), Some(vote));
    assert_eq!(
        log.read_committed().await.expect("committed"),
        Some(log_id(2, 3))
    );
    let st = log.get_log_state().await.expect("log state");
    assert_eq!(st.last_purged_log_id, Some(log_id(0, 0)));
    assert_eq!(st.last_log_id, Some(log_id(2, 4)));
    assert_eq!(
        log.try_get_log_entries(0..).await.expect("log"),
        entries[1..].to_vec()
    );
    assert_eq!(
        log.try_get_log_entries(2..=3).await.expect("log"),
        entries[2..4].to_vec()
    );

    let applied_after = sm.applied_state().await.expect("applied state");
    assert_eq!(applied_after, applied_before);
    assert_eq!(applied_after.0, Some(log_id(2, 3)));
    assert_eq!(
        applied_after.1.log_id(),
        &Some(log_id(0, 0)),
        "membership entry is remembered"
    );
    assert_eq!(*sm.applied().borrow(), Some(log_id(2, 3)));
    assert_eq!(
        state_of(&sm),
        state_before,
        "replicated state rebuilt from its rows"
    );
}

// Property: applies reach the file behind the memory (write-behind); a
// crash before they do loses nothing: the file reopens at an earlier applied
// id with the matching rows, openraft's start-up path re-applies exactly the
// committed entries after it, giving the state the node had, and that
// result is itself durable once flushed.
#[tokio::test]
async fn crash_before_flush_is_repaired_by_reapplying_the_log() {
    let dir = TempDir::new().expect("tempdir");
    let (mut log, mut sm) = open(dir.path()).await.expect("store opens");
    sm.pause_background_flush();
    let entries = sample_log();
    log.blocking_append(entries.clone())
        .await
        .expect("entries appended");
    log.save_committed(Some(log_id(2, 4)))
        .await
        .expect("committed saved");
    sm.apply(entries[..2].to_vec())
        .await
        .expect("first entries applied");
    sm.flush().await.expect("flushed");
    sm.apply(entries[2..].to_vec())
        .await
        .expect("the rest applied");
    let live = state_of(&sm);
    assert_eq!(
        sm.applied_state().await.expect("applied").0,
        Some(log_id(2, 4))
    );
    // A crash: no flush since the explicit one (the periodic one is paused).
    drop((log, sm));

    let (mut log, mut sm) = reopen(dir.path()).await;
    assert_eq!(
        sm.applied_state().await.expect("applied").0,
        Some(log_id(1, 1)),
        "the file holds the last flushed applies"
    );
    assert_eq!(
        state_of(&sm).notes().get("motd").map(|n| n.value.as_str()),
        Some("hello"),
        "with the rows of exactly those"
    );
    let initial = StorageHelper::new(&mut log, &mut sm)
        .get_initial_state()
        .await
        .expect("initial state");
    assert_eq!(
        initial.committed,
        Some(log_id(2, 4)),
        "start-up state is committed up to 4"
    );
    assert_eq!(
        sm.applied_state().await.expect("applied").0,
        Some(log_id(2, 4))
    );
    assert_eq!(state_of(&sm), live, "re-applying gives the state it had");
    sm.flush().await.expect("flushed");
    drop((log, sm));

    let (_log, mut sm) = reopen(dir.path()).await;
    assert_eq!(
        sm.applied_state().await.expect("applied").0,
        Some(log_id(2, 4))
    );
    assert_eq!(state_of(&sm), live, "re-applied entries were persisted");
}

// Property: without any call, applied rows reach the file within a few
// flush intervals (the background flush), so a crash long after an apply
// has nothing to re-apply.
#[tokio::test]
async fn applied_rows_reach_the_file_in_the_background() {
    let dir = TempDir::new().expect("tempdir");
    let (_log, mut sm) = open(dir.path()).await.expect("store opens");
    sm.apply(sample_log()).await.expect("applied");
    let live = state_of(&sm);
    let mut conn = sqlx::sqlite::SqliteConnectOptions::new()
        .filename(dir.path().join(DB_FILE))
        .read_only(true)
        .connect()
        .await
        .expect("raw connection");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let (notes,): (i64,) = sqlx::query_as("SELECT COUNT(*) FROM sm_rows WHERE tbl = 'note'")
            .fetch_one(&mut conn)
            .await
            .expect("count");
        if notes == 2 {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the background flush did not write the rows within 10 s"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    drop(conn);
    // Now a crash loses nothing: the reopened file has the whole state.
    drop((_log, sm));
    let (_log, mut sm) = reopen(dir.path()).await;
    assert_eq!(
        sm.applied_state().await.expect("applied").0,
        Some(log_id(2, 4))
    );
    assert_eq!(state_of(&sm), live);
}

// Property: building a snapshot writes every applied row the file lacked
// in the same transaction, so the file is never behind the stored snapshot
// (openraft purges the log up to the snapshot: a file behind it could not
// be repaired from the log after a crash).
#[tokio::test]
async fn snapshot_brings_the_file_up_to_it() {
    let dir = TempDir::new().expect("tempdir");
    let (_log, mut sm) = open(dir.path()).await.expect("store opens");
    sm.pause_background_flush();
    sm.apply(sample_log()).await.expect("applied");
    let live = state_of(&sm);
    let snap = sm
        .get_snapshot_builder()
        .await
        .build_snapshot()
        .await
        .expect("snapshot built");
    // A crash right after: no flush.
    drop((_log, sm));
    let (_log, mut sm) = reopen(dir.path()).await;
    let applied = sm.applied_state().await.expect("applied").0;
    assert!(
        applied >= snap.meta.last_log_id,
        "file at {applied:?}, snapshot at {:?}",
        snap.meta.last_log_id
    );
    assert_eq!(state_of(&sm), live);
}

// Property: a snapshot built on one store and installed into another
// (which held different state) gives that store the same replicated state,
// applied id and membership, replaces every row it had, and all of it
// survives a reopen; entries applied after the install persist on top.
#[tokio::test]
async fn snapshot_transfer_round_trips_and_survives_reopen() {
    let leader_dir = TempDir::new().expect("tempdir");
    let (_leader_log, mut leader) = open(leader_dir.path()).await.expect("leader opens");
    leader.apply(sample_log()).await.expect("leader applies");
    let snap = leader
        .get_snapshot_builder()
        .await
        .build_snapshot()
        .await
        .expect("snapshot built");
    assert_eq!(snap.meta.last_log_id, Some(log_id(2, 4)));
    assert_eq!(snap.meta.last_membership.log_id(), &Some(log_id(0, 0)));
    let current = leader
        .get_current_snapshot()
        .await
        .expect("read")
        .expect("snapshot stored");
    assert_eq!(
        current.meta, snap.meta,
        "the built snapshot becomes the current one"
    );
    let leader_state = state_of(&leader);
    let leader_applied = leader.applied_state().await.expect("applied");

    let follower_dir = TempDir::new().expect("tempdir");
    let (_log, mut follower) = open(follower_dir.path()).await.expect("follower opens");
    follower
        .apply(vec![normal(
            1,
            1,
            10,
            vec![note("stale", "stale-key", "must vanish")],
        )])
        .await
        .expect("follower applies its own entry");
    let mut receiving = follower
        .begin_receiving_snapshot()
        .await
        .expect("receiving");
    *receiving = std::io::Cursor::new(snap.snapshot.get_ref().clone());
    follower
        .install_snapshot(&snap.meta, receiving)
        .await
        .expect("snapshot installs");

    assert_eq!(state_of(&follower), leader_state);
    assert!(
        !state_of(&follower).notes().contains_key("stale-key"),
        "old rows are replaced"
    );
    assert_eq!(
        follower.applied_state().await.expect("applied"),
        leader_applied
    );
    assert_eq!(*follower.applied().borrow(), Some(log_id(2, 4)));
    drop((_log, follower));

    let (_log, mut follower) = reopen(follower_dir.path()).await;
    assert_eq!(
        state_of(&follower),
        leader_state,
        "installed state persisted"
    );
    assert_eq!(
        follower.applied_state().await.expect("applied"),
        leader_applied
    );
    let stored = follower
        .get_current_snapshot()
        .await
        .expect("read")
        .expect("snapshot kept");
    assert_eq!(stored.meta, snap.meta);
    assert_eq!(stored.snapshot.get_ref(), snap.snapshot.get_ref());

    follower
        .apply(vec![normal(
            3,
            5,
            4_000,
            vec![note("n4", "after", "install")],
        )])
        .await
        .expect("apply");
    let expected = state_of(&follower);
    follower.flush().await.expect("flushed");
    drop((_log, follower));
    let (_log, follower) = reopen(follower_dir.path()).await;
    assert_eq!(
        state_of(&follower),
        expected,
        "rows written after an install persist"
    );
}

// Property: a snapshot whose bytes do not match the meta it was sent with
// is refused and leaves the state machine untouched.
#[tokio::test]
async fn mismatched_snapshot_is_refused() {
    let dir = TempDir::new().expect("tempdir");
    let (_log, mut sm) = open(dir.path()).await.expect("store opens");
    sm.apply(sample_log()).await.expect("applies");
    let snap = sm
        .get_snapshot_builder()
        .await
        .build_snapshot()
        .await
        .expect("built");

    let other = TempDir::new().expect("tempdir");
    let (_l, mut fresh) = open(other.path()).await.expect("opens");
    let mut meta = snap.meta.clone();
    meta.last_log_id = Some(log_id(9, 99));
    let data = Box::new(std::io::Cursor::new(snap.snapshot.get_ref().clone()));
    assert!(fresh.install_snapshot(&meta, data).await.is_err());
    let garbage = Box::new(std::io::Cursor::new(b"not a snapshot".to_vec()));
    assert!(fresh.install_snapshot(&snap.meta, garbage).await.is_err());
    assert_eq!(fresh.applied_state().await.expect("applied").0, None);
    assert_eq!(state_of(&fresh), ReplicatedState::default());
    assert!(fresh.get_current_snapshot().await.expect("read").is_none());
}

async fn corrupt(dir: &Path, sql: &str) {
    let mut conn = sqlx::sqlite::SqliteConnectOptions::new()
        .filename(dir.join(DB_FILE))
        .connect()
        .await
        .expect("raw connection");
    let done = sqlx::query(sql)
        .execute(&mut conn)
        .await
        .expect("corrupting update");
    assert!(
        done.rows_affected() > 0,
        "the corruption must hit a row: {sql}"
    );
}

// Property: a damaged value anywhere open reads (a state row, a pointer, a
// log entry, the snapshot meta) makes `open` fail with an error naming the
// file and what is damaged, instead of panicking or starting with bad state.
#[tokio::test]
async fn corrupted_rows_are_reported_by_open() {
    let cases = [
        (
            "UPDATE sm_rows SET val = '{not json' WHERE tbl = 'note'",
            "sm_rows",
        ),
        (
            "UPDATE sm_rows SET tbl = 'bogus' WHERE tbl = 'note'",
            "sm_rows",
        ),
        (
            "UPDATE raft_meta SET val = '\"garbage\"' WHERE key = 'vote'",
            "vote",
        ),
        (
            "UPDATE sm_meta SET val = '[1,2' WHERE key = 'last_applied'",
            "last applied",
        ),
        (
            "UPDATE raft_log SET entry = '{}' WHERE idx = 4",
            "last log entry",
        ),
        (
            "UPDATE raft_log SET idx = 7 WHERE idx = 4",
            "last log entry",
        ),
        ("UPDATE snapshot SET meta = 'x' WHERE id = 1", "snapshot"),
    ];
    for (sql, what) in cases {
        let dir = TempDir::new().expect("tempdir");
        {
            let (mut log, mut sm) = open(dir.path()).await.expect("store opens");
            log.save_vote(&Vote::new(1, 1)).await.expect("vote");
            log.blocking_append(sample_log()).await.expect("append");
            sm.apply(sample_log()).await.expect("apply");
            sm.get_snapshot_builder()
                .await
                .build_snapshot()
                .await
                .expect("snapshot");
        }
        corrupt(dir.path(), sql).await;
        match open(dir.path()).await {
            Ok(_) => panic!("open accepted a store damaged by {sql}"),
            Err(e @ StoreError::Corrupt { .. }) => {
                let msg = e.to_string();
                assert!(msg.contains(DB_FILE), "message names the file: {msg}");
                assert!(msg.contains(what), "message names {what:?}: {msg}");
            }
            Err(other) => panic!("expected a corruption error for {sql}, got {other}"),
        }
    }
}

// Property: the state machine's applied id and membership start empty on a
// new file, and applying nothing changes nothing.
#[tokio::test]
async fn fresh_store_is_empty() {
    let dir = TempDir::new().expect("tempdir");
    let (mut log, mut sm) = open(dir.path().join("nested/data").as_path())
        .await
        .expect("opens");
    assert_eq!(log.read_vote().await.expect("vote"), None);
    assert_eq!(log.read_committed().await.expect("committed"), None);
    assert_eq!(
        sm.applied_state().await.expect("applied"),
        (None, StoredMembership::default())
    );
    assert!(sm
        .apply(Vec::<Entry>::new())
        .await
        .expect("empty apply")
        .is_empty());
    assert_eq!(*sm.applied().borrow(), None);
}

// Property: `open` can run inside a spawned task (its future is `Send`), and
// both stores can be moved into openraft's tasks.
#[test]
fn open_future_and_stores_are_send() {
    fn assert_send<T: Send>(_: &T) {}
    fn assert_send_sync_clone<T: Send + Sync + Clone + 'static>() {}
    let dir = std::path::PathBuf::from("/nonexistent");
    let fut = open(&dir);
    assert_send(&fut);
    drop(fut);
    assert_send_sync_clone::<LogStore>();
    assert_send_sync_clone::<StateMachineStore>();
}

// Property: a bounded log read (what replication sends in one AppendEntries)
// returns a non-empty, gap-free prefix of the range whose encoded size stays
// within the byte budget, except that one oversized entry comes back alone.
#[tokio::test]
async fn limited_reads_are_bounded_prefixes() {
    let dir = TempDir::new().expect("tempdir");
    let (mut log, _sm) = open(dir.path()).await.expect("store opens");
    let big = "x".repeat(tern_core::MAX_NOTE_VALUE);
    let heavy = |index: u64, proposals: usize| {
        let props = (0..proposals)
            .map(|i| note(&format!("r{index}-{i}"), &format!("k{i}"), &big))
            .collect();
        normal(1, index, index, props)
    };
    // Entries of about 0.6 MiB, then one of about 3 MiB.
    let mut entries: Vec<Entry> = (0..6).map(|i| heavy(i, 10)).collect();
    entries.push(heavy(6, 48));
    log.blocking_append(entries.clone()).await.expect("append");

    let got = log.limited_get_log_entries(0, 7).await.expect("read");
    assert!(
        !got.is_empty() && got.len() < 6,
        "a prefix, cut by size: {}",
        got.len()
    );
    assert_eq!(
        got[..],
        entries[..got.len()],
        "a gap-free prefix from the start"
    );
    let size: usize = got
        .iter()
        .map(|e| serde_json::to_string(e).expect("json").len())
        .sum();
    assert!(size <= READ_BATCH_BYTES, "{size} bytes exceed the budget");

    let alone = log.limited_get_log_entries(6, 7).await.expect("read");
    assert_eq!(
        alone,
        entries[6..].to_vec(),
        "an oversized entry is still sent, alone"
    );
    assert!(log
        .limited_get_log_entries(3, 3)
        .await
        .expect("read")
        .is_empty());
    assert_eq!(
        log.try_get_log_entries(0..7).await.expect("read"),
        entries,
        "unbounded read"
    );
}

// Property: the state machine's flushes and the committed pointer are
// written with `synchronous=NORMAL`, but the shared writer connection is
// back at FULL after each of them, so the next log append, vote or purge is
// fsynced before it returns (what Raft's safety needs); and what they wrote
// reads back after reopening.
#[tokio::test]
async fn relaxed_writes_restore_full_durability() {
    const FULL: i64 = 2;
    let dir = TempDir::new().expect("tempdir");
    let (mut log, mut sm) = open(dir.path()).await.expect("store opens");
    assert_eq!(log.writer_synchronous().await, FULL, "opens at FULL");
    let entries = sample_log();
    log.blocking_append(entries.clone())
        .await
        .expect("entries appended");
    log.save_committed(Some(entries[3].log_id))
        .await
        .expect("committed saved");
    assert_eq!(log.writer_synchronous().await, FULL, "after save_committed");
    sm.apply(entries[..4].to_vec()).await.expect("applied");
    sm.flush().await.expect("flushed");
    assert_eq!(log.writer_synchronous().await, FULL, "after a flush");
    let state = state_of(&sm);
    drop((log, sm));

    let (mut log, sm) = reopen(dir.path()).await;
    assert_eq!(log.writer_synchronous().await, FULL, "reopens at FULL");
    assert_eq!(state_of(&sm), state);
    assert_eq!(
        log.read_committed().await.expect("committed reads"),
        Some(entries[3].log_id)
    );
}
