//! The state-machine half of the store: the live `tern_core::ReplicatedState`
//! (in memory, shared read-only with status handlers), its rows in
//! `sm_rows`, its pointers (`last_applied`, `last_membership`) in `sm_meta`,
//! and the current snapshot in `snapshot`.
//!
//! `apply` changes the memory only and records which rows it changed; the
//! file follows in the background (write-behind): every `FLUSH_INTERVAL`,
//! or at once when `FLUSH_ROWS` rows wait, one transaction writes the
//! current value of every row changed since the last flush together with
//! the pointers they lead to, so the file always holds the state as of
//! some applied log id, never a mix. Many entries share one transaction
//! and a row changed by many of them is written once. What a crash loses
//! is only applies newer than the file's `last_applied`, and openraft
//! re-applies those from the log at start (see `Db::set_sync`).
//! `build_snapshot` flushes in the same transaction that stores the
//! snapshot, so the file is never behind the stored snapshot (log entries
//! are purged only up to it). `install_snapshot` rewrites every row, the
//! pointers and the stored snapshot in one transaction, then swaps the
//! in-memory state and forgets the rows that waited. It must not interpret
//! commands (the core's `apply` does) nor write the log's tables.

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock, Weak};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use openraft::storage::RaftStateMachine;
use openraft::{EntryPayload, OptionalSend, RaftSnapshotBuilder, SnapshotId, StorageIOError};
use sqlx::{Connection, SqliteConnection};
use tern_core::{BatchResponse, ReplicatedState, RowKey};
use tokio::sync::{broadcast, watch};

use super::codec::{
    self, read_meta, write_meta, CodecError, MetaTable, KEY_LAST_APPLIED, KEY_LAST_MEMBERSHIP,
};
use super::db::{Db, Durability};
use super::StoreError;
use crate::raft::{
    Entry, LogId, Snapshot, SnapshotMeta, StorageError, StoredMembership, TypeConfig,
};

/// openraft's state machine over `tern.db`. Clones share everything; the
/// snapshot builder is such a clone.
#[derive(Debug, Clone)]
pub struct StateMachineStore {
    inner: Arc<Shared>,
}

#[derive(Debug)]
struct Shared {
    db: Arc<Db>,
    /// The live state. Written only by `apply` and `install_snapshot`.
    state: Arc<RwLock<ReplicatedState>>,
    /// Updated only while `state`'s write lock is held, so a reader holding
    /// `state`'s read lock sees pointers that match the state.
    pointers: Mutex<Pointers>,
    /// What the file lacks. Updated only while `state`'s lock is held (the
    /// write lock by `apply`, the read lock by a flush).
    unflushed: Mutex<Unflushed>,
    applied_tx: watch::Sender<Option<LogId>>,
    /// What each apply changed (sent after `applied_tx`).
    changes_tx: broadcast::Sender<Arc<Changes>>,
    /// Makes snapshot ids unique within this process.
    snapshot_seq: AtomicU64,
    /// Whether the periodic flush runs (tests turn it off to stand for a
    /// crash between flushes).
    background_flush: AtomicBool,
    /// Set when a write of applied rows failed: the file can no longer
    /// catch up with the memory. The next `apply` fails (openraft then stops
    /// the node) and no snapshot is built of unpersisted state meanwhile.
    failed: AtomicBool,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
struct Pointers {
    last_applied: Option<LogId>,
    last_membership: StoredMembership,
}

/// The difference between the memory and the file.
#[derive(Debug, Default)]
struct Unflushed {
    /// Rows changed in memory since the last flush.
    rows: BTreeSet<RowKey>,
    /// The pointers the file holds (as of the last flush or install).
    written: Pointers,
}

/// How often applied rows are written to the file.
const FLUSH_INTERVAL: Duration = Duration::from_millis(100);
/// Rows waiting that make `apply` flush at once (bounds the memory and the
/// length of one flush transaction).
const FLUSH_ROWS: usize = 20_000;

/// Tables whose rows an agent's directive is not built from (beyond the
/// agent's own row): a change confined to these and to agent rows wakes
/// only the changed agents' streams.
const NOT_SHARED: [&str; 6] = ["agent", "audit", "request", "meta", "note", "rotation"];

/// Capacity of the change notices; a receiver that falls further behind is
/// told it lagged (and then wakes everyone).
const CHANGES_CAPACITY: usize = 1024;

/// What one apply (or snapshot install) changed, for waking the streams
/// that depend on it: the agents whose rows changed, or `everything`
/// when a shared row changed or the whole state was replaced.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Changes {
    pub agents: Vec<String>,
    pub everything: bool,
}

impl Changes {
    fn of(rows: &[RowKey]) -> Changes {
        let mut c = Changes::default();
        for row in rows {
            match row {
                RowKey::Agent(id) => c.agents.push(id.clone()),
                other if !NOT_SHARED.contains(&other.table()) => c.everything = true,
                _ => {}
            }
        }
        c
    }
}

/// One persisted row change: `(table, key, new value or delete)`.
type RowChange = (&'static str, String, Option<String>);

impl StateMachineStore {
    /// Rebuilds the state from `sm_rows` and its pointers from `sm_meta`,
    /// and checks the stored snapshot's meta decodes.
    pub(crate) async fn load(db: Arc<Db>) -> Result<StateMachineStore, StoreError> {
        let path = db.path().to_path_buf();
        let fail = |what: &str, e: CodecError| match e {
            CodecError::Sql(source) => StoreError::Read {
                path: path.clone(),
                what: what.to_string(),
                source,
            },
            other => StoreError::Corrupt {
                path: path.clone(),
                what: what.to_string(),
                source: Box::new(other),
            },
        };
        let pool = db.readers();
        let last_applied: Option<LogId> =
            read_meta::<Option<LogId>, _>(pool, MetaTable::StateMachine, KEY_LAST_APPLIED)
                .await
                .map_err(|e| fail("the last applied log id", e))?
                .flatten();
        let last_membership: StoredMembership =
            read_meta(pool, MetaTable::StateMachine, KEY_LAST_MEMBERSHIP)
                .await
                .map_err(|e| fail("the last applied membership", e))?
                .unwrap_or_default();
        let rows: Vec<(String, String, String)> =
            sqlx::query_as("SELECT tbl, key, val FROM sm_rows ORDER BY tbl, key")
                .fetch_all(pool)
                .await
                .map_err(|e| fail("the state machine rows", CodecError::Sql(e)))?;
        let state = ReplicatedState::from_rows(rows).map_err(|e| StoreError::Corrupt {
            path: path.clone(),
            what: "a state machine row (sm_rows)".into(),
            source: Box::new(e),
        })?;
        let snap: Option<(String,)> = sqlx::query_as("SELECT meta FROM snapshot WHERE id = 1")
            .fetch_optional(pool)
            .await
            .map_err(|e| fail("the current snapshot", CodecError::Sql(e)))?;
        if let Some((meta,)) = snap {
            serde_json::from_str::<SnapshotMeta>(&meta).map_err(|source| {
                fail(
                    "the current snapshot",
                    CodecError::Json {
                        what: "snapshot.meta".into(),
                        source,
                    },
                )
            })?;
        }

        let (applied_tx, _) = watch::channel(last_applied);
        let (changes_tx, _) = broadcast::channel(CHANGES_CAPACITY);
        let pointers = Pointers {
            last_applied,
            last_membership,
        };
        let inner = Arc::new(Shared {
            db,
            state: Arc::new(RwLock::new(state)),
            pointers: Mutex::new(pointers.clone()),
            unflushed: Mutex::new(Unflushed {
                rows: BTreeSet::new(),
                written: pointers,
            }),
            applied_tx,
            changes_tx,
            snapshot_seq: AtomicU64::new(0),
            background_flush: AtomicBool::new(true),
            failed: AtomicBool::new(false),
        });
        tokio::spawn(flush_periodically(Arc::downgrade(&inner)));
        Ok(StateMachineStore { inner })
    }

    /// Writes every applied row the file lacks, and the pointers, in one
    /// transaction. The coordinator calls it when it stops; it also runs
    /// every `FLUSH_INTERVAL` on its own. A failure marks the store failed.
    pub async fn flush(&self) -> Result<(), StorageError> {
        self.flush_unless_paused(false).await
    }

    /// Stops the periodic flush, including one already waiting for the
    /// writer: from now on the file changes only through `flush`, snapshots
    /// and installs, as if the process could crash at any moment.
    #[cfg(test)]
    pub(crate) fn pause_background_flush(&self) {
        self.inner.background_flush.store(false, Ordering::Release);
    }

    async fn flush_unless_paused(&self, background: bool) -> Result<(), StorageError> {
        let mut conn = self.inner.db.writer().await;
        if background && !self.inner.background_flush.load(Ordering::Acquire) {
            return Ok(());
        }
        self.check_healthy()?;
        let Some((rows, ptr)) = self.take_unflushed()? else {
            return Ok(());
        };
        // Not fsynced on its own: see `Db::set_sync` for why that is safe.
        let result: Result<(), CodecError> = async {
            Db::set_sync(&mut conn, Durability::Relaxed).await?;
            let written: Result<(), CodecError> = async {
                let mut tx = conn.begin().await?;
                write_rows(&mut tx, &rows).await?;
                write_pointers(&mut tx, &ptr).await?;
                tx.commit().await?;
                Ok(())
            }
            .await;
            let restored = Db::set_sync(&mut conn, Durability::Full).await;
            written?;
            restored?;
            Ok(())
        }
        .await;
        if let Err(e) = result {
            self.inner.failed.store(true, Ordering::Release);
            tracing::error!(
                error = %e,
                "cannot write applied state to the Raft store; the node must restart"
            );
            return Err(StorageIOError::write_state_machine(&e).into());
        }
        Ok(())
    }

    /// Takes what the file lacks: the current value of every row changed
    /// since the last flush and the pointers they lead to, read together
    /// under the state's read lock. `None` when the file is up to date.
    /// The caller holds the writer and must write what it takes.
    fn take_unflushed(&self) -> Result<Option<(Vec<RowChange>, Pointers)>, SmError> {
        let state = self.inner.state.read().map_err(|_| SmError::Poisoned)?;
        let ptr = self.pointers()?;
        let mut unflushed = self.inner.unflushed.lock().map_err(|_| SmError::Poisoned)?;
        if unflushed.rows.is_empty() && unflushed.written == ptr {
            return Ok(None);
        }
        let rows = std::mem::take(&mut unflushed.rows)
            .into_iter()
            .map(|k| {
                let val = state.row_value(&k);
                (k.table(), k.key(), val)
            })
            .collect();
        unflushed.written = ptr.clone();
        Ok(Some((rows, ptr)))
    }

    /// Shared read handle on the live replicated state (read by admin/status
    /// handlers, never written outside apply/install).
    ///
    /// What it shows is applied (committed in the Raft log, hence durable
    /// there), though the state machine's own file may lag it by up to
    /// `FLUSH_INTERVAL`. Hold the read lock briefly: `apply` waits for it.
    pub fn state(&self) -> Arc<RwLock<ReplicatedState>> {
        self.inner.state.clone()
    }

    /// Last applied log id, updated after every apply / snapshot install.
    pub fn applied(&self) -> watch::Receiver<Option<LogId>> {
        self.inner.applied_tx.subscribe()
    }

    /// What each apply changed, from now on (see [`Changes`]).
    pub fn changes(&self) -> broadcast::Receiver<Arc<Changes>> {
        self.inner.changes_tx.subscribe()
    }

    fn check_healthy(&self) -> Result<(), SmError> {
        if self.inner.failed.load(Ordering::Acquire) {
            return Err(SmError::Failed);
        }
        Ok(())
    }

    fn pointers(&self) -> Result<Pointers, SmError> {
        self.inner
            .pointers
            .lock()
            .map(|p| p.clone())
            .map_err(|_| SmError::Poisoned)
    }

    /// Applies entries to the in-memory state and records the changed rows
    /// as unflushed; returns the responses, the changed rows, the new
    /// pointers and how many rows wait for the file. Holds the state's write
    /// lock only for the computation, never across an await.
    fn apply_in_memory(
        &self,
        entries: &[Entry],
    ) -> Result<(Vec<BatchResponse>, Vec<RowKey>, Pointers, usize), SmError> {
        let mut state = self.inner.state.write().map_err(|_| SmError::Poisoned)?;
        let mut ptr = self.inner.pointers.lock().map_err(|_| SmError::Poisoned)?;
        let mut responses = Vec::with_capacity(entries.len());
        for entry in entries {
            let response = match &entry.payload {
                EntryPayload::Blank => BatchResponse::default(),
                EntryPayload::Normal(batch) => state.apply(entry.log_id.index, batch),
                EntryPayload::Membership(m) => {
                    ptr.last_membership = StoredMembership::new(Some(entry.log_id), m.clone());
                    BatchResponse::default()
                }
            };
            ptr.last_applied = Some(entry.log_id);
            responses.push(response);
        }
        let rows = state.take_dirty();
        let mut unflushed = self.inner.unflushed.lock().map_err(|_| SmError::Poisoned)?;
        unflushed.rows.extend(rows.iter().cloned());
        Ok((responses, rows, ptr.clone(), unflushed.rows.len()))
    }

    /// Replaces the in-memory state and pointers with what the file has
    /// just been given whole: nothing is unflushed any more.
    fn swap_in(&self, state: ReplicatedState, pointers: Pointers) -> Result<(), SmError> {
        let mut live = self.inner.state.write().map_err(|_| SmError::Poisoned)?;
        let mut ptr = self.inner.pointers.lock().map_err(|_| SmError::Poisoned)?;
        let mut unflushed = self.inner.unflushed.lock().map_err(|_| SmError::Poisoned)?;
        *live = state;
        *ptr = pointers.clone();
        *unflushed = Unflushed {
            rows: BTreeSet::new(),
            written: pointers,
        };
        Ok(())
    }

    fn new_snapshot_id(&self, last: Option<LogId>) -> SnapshotId {
        let seq = self.inner.snapshot_seq.fetch_add(1, Ordering::Relaxed);
        let ms = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_millis())
            .unwrap_or(0);
        match last {
            Some(id) => format!("{}-{}-{ms}-{seq}", id.index, id.leader_id.term),
            None => format!("none-{ms}-{seq}"),
        }
    }
}

/// Why the state machine refuses to go on; small, so that helpers can
/// return it (openraft's `StorageError` is large), converted at the trait.
#[derive(Debug, thiserror::Error)]
enum SmError {
    #[error("the replicated state's lock is poisoned (a panic while applying)")]
    Poisoned,
    #[error("an earlier state machine write failed; the node must restart")]
    Failed,
}

impl From<SmError> for StorageError {
    fn from(e: SmError) -> Self {
        StorageIOError::write_state_machine(&e).into()
    }
}

/// Flushes the store every `FLUSH_INTERVAL` until it is dropped.
async fn flush_periodically(store: Weak<Shared>) {
    let mut tick = tokio::time::interval(FLUSH_INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let Some(inner) = store.upgrade() else {
            return;
        };
        let store = StateMachineStore { inner };
        // A failure is logged and marks the store failed inside; a failed
        // store refuses quietly.
        let _ = store.flush_unless_paused(true).await;
    }
}

/// Writes the pointers into `sm_meta` (inside the caller's transaction).
async fn write_pointers(conn: &mut SqliteConnection, p: &Pointers) -> Result<(), CodecError> {
    write_meta(
        &mut *conn,
        MetaTable::StateMachine,
        KEY_LAST_APPLIED,
        &p.last_applied,
    )
    .await?;
    write_meta(
        &mut *conn,
        MetaTable::StateMachine,
        KEY_LAST_MEMBERSHIP,
        &p.last_membership,
    )
    .await?;
    Ok(())
}

/// Rows per multi-row statement (3 bound parameters each, far below
/// SQLite's limit of 32766).
const ROWS_PER_STATEMENT: usize = 500;

/// Writes changed rows (`Some`: upsert, `None`: delete) with a few
/// multi-row statements instead of one statement per row: a batch of many
/// small commands changes thousands of rows per apply.
async fn write_rows(
    conn: &mut SqliteConnection,
    rows: &[(&'static str, String, Option<String>)],
) -> Result<(), sqlx::Error> {
    let upserts: Vec<_> = rows
        .iter()
        .filter_map(|(t, k, v)| v.as_ref().map(|v| (*t, k, v)))
        .collect();
    for chunk in upserts.chunks(ROWS_PER_STATEMENT) {
        let mut q = sqlx::QueryBuilder::<sqlx::Sqlite>::new("INSERT INTO sm_rows (tbl, key, val) ");
        q.push_values(chunk, |mut b, (t, k, v)| {
            b.push_bind(*t).push_bind(k.as_str()).push_bind(v.as_str());
        });
        q.push(" ON CONFLICT(tbl, key) DO UPDATE SET val = excluded.val");
        q.build().execute(&mut *conn).await?;
    }
    let deletes: Vec<_> = rows
        .iter()
        .filter(|(_, _, v)| v.is_none())
        .map(|(t, k, _)| (*t, k))
        .collect();
    for chunk in deletes.chunks(ROWS_PER_STATEMENT) {
        let mut q = sqlx::QueryBuilder::<sqlx::Sqlite>::new(
            "DELETE FROM sm_rows WHERE (tbl, key) IN (VALUES ",
        );
        let mut sep = q.separated(", ");
        for (t, k) in chunk {
            sep.push("(");
            sep.push_bind_unseparated(*t);
            sep.push_unseparated(", ");
            sep.push_bind_unseparated(k.as_str());
            sep.push_unseparated(")");
        }
        q.push(")");
        q.build().execute(&mut *conn).await?;
    }
    Ok(())
}

async fn upsert_row(
    conn: &mut SqliteConnection,
    tbl: &str,
    key: &str,
    val: &str,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO sm_rows (tbl, key, val) VALUES (?1, ?2, ?3) \
         ON CONFLICT(tbl, key) DO UPDATE SET val = excluded.val",
    )
    .bind(tbl)
    .bind(key)
    .bind(val)
    .execute(&mut *conn)
    .await?;
    Ok(())
}

/// Stores `meta` + `data` as the current snapshot unless the stored one is
/// newer (inside the caller's transaction). Returns whether it was stored.
async fn store_snapshot(
    conn: &mut SqliteConnection,
    meta: &SnapshotMeta,
    data: &[u8],
    only_if_newer: bool,
) -> Result<bool, CodecError> {
    if only_if_newer {
        let current: Option<(String,)> = sqlx::query_as("SELECT meta FROM snapshot WHERE id = 1")
            .fetch_optional(&mut *conn)
            .await?;
        if let Some((text,)) = current {
            let cur: SnapshotMeta =
                serde_json::from_str(&text).map_err(|source| CodecError::Json {
                    what: "snapshot.meta".into(),
                    source,
                })?;
            if cur.last_log_id > meta.last_log_id {
                return Ok(false);
            }
        }
    }
    let meta_json = codec::to_json(meta, "snapshot meta")?;
    sqlx::query(
        "INSERT OR REPLACE INTO snapshot (id, snapshot_id, meta, data) VALUES (1, ?1, ?2, ?3)",
    )
    .bind(meta.snapshot_id.as_str())
    .bind(meta_json)
    .bind(data)
    .execute(&mut *conn)
    .await?;
    Ok(true)
}

impl RaftSnapshotBuilder<TypeConfig> for StateMachineStore {
    /// Clones the state and its pointers under the read lock, serializes
    /// outside any lock, and stores the result as the current snapshot.
    async fn build_snapshot(&mut self) -> Result<Snapshot, StorageError> {
        self.check_healthy()?;
        let (state, ptr) = {
            let state = self.inner.state.read().map_err(|_| SmError::Poisoned)?;
            let ptr = self.pointers()?;
            (state.clone(), ptr)
        };
        let meta = SnapshotMeta {
            last_log_id: ptr.last_applied,
            last_membership: ptr.last_membership,
            snapshot_id: self.new_snapshot_id(ptr.last_applied),
        };
        let write_err = |e: &CodecError| StorageIOError::write_snapshot(Some(meta.signature()), e);
        let data = codec::encode_snapshot(&meta, &state).map_err(|e| write_err(&e))?;
        drop(state);

        // The rows the file lacks go in the same (fsynced) transaction: the
        // file is then at or past the snapshot, which the log may soon be
        // purged up to.
        let stored = {
            let mut conn = self.inner.db.writer().await;
            self.check_healthy()?;
            let unflushed = self.take_unflushed()?;
            let result: Result<bool, CodecError> = async {
                let mut tx = conn.begin().await?;
                if let Some((rows, ptr)) = &unflushed {
                    write_rows(&mut tx, rows).await?;
                    write_pointers(&mut tx, ptr).await?;
                }
                let stored = store_snapshot(&mut tx, &meta, &data, true).await?;
                tx.commit().await?;
                Ok(stored)
            }
            .await;
            if result.is_err() && unflushed.is_some() {
                self.inner.failed.store(true, Ordering::Release);
            }
            result.map_err(|e| write_err(&e))?
        };
        if !stored {
            tracing::info!(
                snapshot_id = %meta.snapshot_id,
                "a newer snapshot is already stored; not replacing it"
            );
        }
        Ok(Snapshot {
            meta,
            snapshot: Box::new(std::io::Cursor::new(data)),
        })
    }
}

impl RaftStateMachine<TypeConfig> for StateMachineStore {
    type SnapshotBuilder = StateMachineStore;

    async fn applied_state(&mut self) -> Result<(Option<LogId>, StoredMembership), StorageError> {
        let p = self.pointers()?;
        Ok((p.last_applied, p.last_membership))
    }

    async fn apply<I>(&mut self, entries: I) -> Result<Vec<BatchResponse>, StorageError>
    where
        I: IntoIterator<Item = Entry> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let entries: Vec<Entry> = entries.into_iter().collect();
        if entries.is_empty() {
            return Ok(Vec::new());
        }
        self.check_healthy()?;
        let (responses, rows, ptr, waiting) = self.apply_in_memory(&entries)?;
        if waiting >= FLUSH_ROWS {
            self.flush().await?;
        }
        self.inner.applied_tx.send_replace(ptr.last_applied);
        // No receiver (no agent service yet) is fine.
        let _ = self.inner.changes_tx.send(Arc::new(Changes::of(&rows)));
        Ok(responses)
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        self.clone()
    }

    async fn begin_receiving_snapshot(
        &mut self,
    ) -> Result<Box<std::io::Cursor<Vec<u8>>>, StorageError> {
        Ok(Box::new(std::io::Cursor::new(Vec::new())))
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta,
        snapshot: Box<std::io::Cursor<Vec<u8>>>,
    ) -> Result<(), StorageError> {
        let err = |e: &CodecError| StorageIOError::write_snapshot(Some(meta.signature()), e);
        let data = snapshot.into_inner();
        let (inner_meta, state) = codec::decode_snapshot(&data).map_err(|e| err(&e))?;
        if inner_meta.last_log_id != meta.last_log_id
            || inner_meta.last_membership != meta.last_membership
        {
            let e = CodecError::Invalid(format!(
                "snapshot data is for {inner_meta}, but it was sent as {meta}"
            ));
            return Err(err(&e).into());
        }
        let rows = state.all_rows();
        let pointers = Pointers {
            last_applied: meta.last_log_id,
            last_membership: meta.last_membership.clone(),
        };

        let mut conn = self.inner.db.writer().await;
        let result: Result<(), CodecError> = async {
            let mut tx = conn.begin().await?;
            sqlx::query("DELETE FROM sm_rows").execute(&mut *tx).await?;
            for (key, val) in &rows {
                upsert_row(&mut tx, key.table(), &key.key(), val).await?;
            }
            write_pointers(&mut tx, &pointers).await?;
            store_snapshot(&mut tx, meta, &data, false).await?;
            tx.commit().await?;
            Ok(())
        }
        .await;
        if let Err(e) = result {
            return Err(err(&e).into());
        }
        let applied = pointers.last_applied;
        self.swap_in(state, pointers)?;
        drop(conn);
        // The state on disk is whole again: a failure before is superseded.
        self.inner.failed.store(false, Ordering::Release);
        self.inner.applied_tx.send_replace(applied);
        let _ = self.inner.changes_tx.send(Arc::new(Changes {
            agents: Vec::new(),
            everything: true,
        }));
        tracing::info!(snapshot = %meta, "installed snapshot");
        Ok(())
    }

    async fn get_current_snapshot(&mut self) -> Result<Option<Snapshot>, StorageError> {
        let row: Option<(String, Vec<u8>)> =
            sqlx::query_as("SELECT meta, data FROM snapshot WHERE id = 1")
                .fetch_optional(self.inner.db.readers())
                .await
                .map_err(|e| StorageIOError::read_snapshot(None, &e))?;
        let Some((meta, data)) = row else {
            return Ok(None);
        };
        let meta: SnapshotMeta =
            serde_json::from_str(&meta).map_err(|e| StorageIOError::read_snapshot(None, &e))?;
        Ok(Some(Snapshot {
            meta,
            snapshot: Box::new(std::io::Cursor::new(data)),
        }))
    }
}
