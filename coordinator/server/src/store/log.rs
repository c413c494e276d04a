//! The Raft log half of the store: entries in `raft_log` (serde_json of
//! `openraft::Entry`, keyed by index, with the term), and the log pointers
//! in `raft_meta` (vote, committed, last purged).
//!
//! It owns the log's durability promises to openraft: a vote is on disk
//! before `save_vote` returns; appended entries are readable when `append`
//! returns and on disk (committed, hence fsynced under `synchronous=FULL`)
//! before `log_io_completed` is called; truncation and purging never leave a
//! hole. It must not touch the state machine's tables.

use std::fmt::Debug;
use std::ops::RangeBounds;
use std::sync::Arc;

use openraft::storage::{LogFlushed, LogState, RaftLogStorage};
use openraft::{ErrorSubject, ErrorVerb, OptionalSend, RaftLogReader, StorageIOError};
use sqlx::Connection;

use super::codec::{
    self, read_meta, write_meta, CodecError, MetaTable, KEY_COMMITTED, KEY_LAST_PURGED, KEY_VOTE,
};
use super::db::{Db, Durability};
use super::StoreError;
use crate::raft::{Entry, LogId, StorageError, TypeConfig, Vote};

/// Most entries one `limited_get_log_entries` (one AppendEntries) returns.
pub const READ_BATCH_ENTRIES: u32 = 1024;
/// Encoded (JSON) bytes after which `limited_get_log_entries` stops adding
/// entries; a single larger entry is still returned on its own.
pub const READ_BATCH_BYTES: usize = 2 * 1024 * 1024;

/// openraft's log storage over `tern.db`. Clones share the same database;
/// the log reader handed to replication is such a clone.
#[derive(Debug, Clone)]
pub struct LogStore {
    db: Arc<Db>,
}

impl LogStore {
    /// Checks the log's pointers and its first and last entries decode.
    pub(crate) async fn load(db: Arc<Db>) -> Result<LogStore, StoreError> {
        let corrupt = |what: &str, e: CodecError| match e {
            CodecError::Sql(source) => StoreError::Read {
                path: db.path().to_path_buf(),
                what: what.to_string(),
                source,
            },
            other => StoreError::Corrupt {
                path: db.path().to_path_buf(),
                what: what.to_string(),
                source: Box::new(other),
            },
        };
        let pool = db.readers();
        read_meta::<Vote, _>(pool, MetaTable::Raft, KEY_VOTE)
            .await
            .map_err(|e| corrupt("the saved vote", e))?;
        read_meta::<Option<LogId>, _>(pool, MetaTable::Raft, KEY_COMMITTED)
            .await
            .map_err(|e| corrupt("the committed log id", e))?;
        read_meta::<LogId, _>(pool, MetaTable::Raft, KEY_LAST_PURGED)
            .await
            .map_err(|e| corrupt("the last purged log id", e))?;
        for (what, sql) in [
            (
                "the first log entry",
                "SELECT idx, entry FROM raft_log ORDER BY idx ASC LIMIT 1",
            ),
            (
                "the last log entry",
                "SELECT idx, entry FROM raft_log ORDER BY idx DESC LIMIT 1",
            ),
        ] {
            let row: Option<(i64, String)> = sqlx::query_as(sql)
                .fetch_optional(pool)
                .await
                .map_err(|e| corrupt(what, CodecError::Sql(e)))?;
            if let Some((idx, text)) = row {
                let entry = decode_entry(idx, &text).map_err(|e| corrupt(what, e))?;
                if i64::try_from(entry.log_id.index).ok() != Some(idx) {
                    let msg = format!("row {idx} holds the entry of index {}", entry.log_id.index);
                    return Err(corrupt(what, CodecError::Invalid(msg)));
                }
            }
        }
        Ok(LogStore { db })
    }

    /// `PRAGMA synchronous` of the writer connection (2 is FULL).
    #[cfg(test)]
    pub(crate) async fn writer_synchronous(&self) -> i64 {
        let mut conn = self.db.writer().await;
        let (v,): (i64,) = sqlx::query_as("PRAGMA synchronous")
            .fetch_one(&mut *conn)
            .await
            .expect("PRAGMA synchronous reads");
        v
    }

    async fn last_purged(&self) -> Result<Option<LogId>, StorageError> {
        read_meta(self.db.readers(), MetaTable::Raft, KEY_LAST_PURGED)
            .await
            .map_err(|e| StorageIOError::read_logs(&e).into())
    }
}

fn decode_entry(idx: i64, text: &str) -> Result<Entry, CodecError> {
    serde_json::from_str(text).map_err(|source| CodecError::Json {
        what: format!("raft_log row {idx}"),
        source,
    })
}

/// Decodes rows in order, stopping before the entry that would take the
/// encoded size past `budget` (the first entry is always taken). The error
/// names the index of the row that did not decode.
fn decode_rows(rows: &[(i64, String)], budget: usize) -> Result<Vec<Entry>, (u64, CodecError)> {
    let mut entries = Vec::with_capacity(rows.len());
    let mut bytes = 0usize;
    for (idx, text) in rows {
        bytes = bytes.saturating_add(text.len());
        if !entries.is_empty() && bytes > budget {
            break;
        }
        let entry =
            decode_entry(*idx, text).map_err(|e| (u64::try_from(*idx).unwrap_or_default(), e))?;
        entries.push(entry);
    }
    Ok(entries)
}

fn log_id_of(term: i64, node: i64, idx: i64) -> Result<LogId, CodecError> {
    let index = u64::try_from(idx)
        .map_err(|_| CodecError::Invalid(format!("raft_log has a negative index {idx}")))?;
    let term = u64::from_ne_bytes(term.to_ne_bytes());
    let node = u64::from_ne_bytes(node.to_ne_bytes());
    Ok(LogId::new(
        openraft::CommittedLeaderId::new(term, node),
        index,
    ))
}

impl RaftLogReader<TypeConfig> for LogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry>, StorageError> {
        let Some((start, end)) = codec::index_range(&range) else {
            return Ok(Vec::new());
        };
        let rows: Vec<(i64, String)> = sqlx::query_as(
            "SELECT idx, entry FROM raft_log WHERE idx >= ?1 AND idx < ?2 ORDER BY idx",
        )
        .bind(start)
        .bind(end)
        .fetch_all(self.db.readers())
        .await
        .map_err(|e| StorageIOError::read_logs(&e))?;
        decode_rows(&rows, usize::MAX)
            .map_err(|(at, e)| StorageIOError::read_log_at_index(at, &e).into())
    }

    /// Reads at most `READ_BATCH_ENTRIES` entries and stops once their
    /// encoded size passes `READ_BATCH_BYTES` (always at least one entry), so
    /// that one AppendEntries stays well under the transport's message
    /// limit. openraft's replication sends the rest in the next request.
    async fn limited_get_log_entries(
        &mut self,
        start: u64,
        end: u64,
    ) -> Result<Vec<Entry>, StorageError> {
        let Some((start, end)) = codec::index_range(&(start..end)) else {
            return Ok(Vec::new());
        };
        let rows: Vec<(i64, String)> = sqlx::query_as(
            "SELECT idx, entry FROM raft_log WHERE idx >= ?1 AND idx < ?2 ORDER BY idx LIMIT ?3",
        )
        .bind(start)
        .bind(end)
        .bind(i64::from(READ_BATCH_ENTRIES))
        .fetch_all(self.db.readers())
        .await
        .map_err(|e| StorageIOError::read_logs(&e))?;
        decode_rows(&rows, READ_BATCH_BYTES)
            .map_err(|(at, e)| StorageIOError::read_log_at_index(at, &e).into())
    }
}

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = LogStore;

    async fn get_log_state(&mut self) -> Result<LogState<TypeConfig>, StorageError> {
        let last_purged_log_id = self.last_purged().await?;
        let last: Option<(i64, i64, i64)> =
            sqlx::query_as("SELECT idx, term, leader_node FROM raft_log ORDER BY idx DESC LIMIT 1")
                .fetch_optional(self.db.readers())
                .await
                .map_err(|e| StorageIOError::read_logs(&e))?;
        let last_log_id = match last {
            Some((idx, term, node)) => {
                Some(log_id_of(term, node, idx).map_err(|e| StorageIOError::read_logs(&e))?)
            }
            None => last_purged_log_id,
        };
        Ok(LogState {
            last_purged_log_id,
            last_log_id,
        })
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    /// One autocommit statement is its own transaction; with
    /// `synchronous=FULL` its commit fsyncs the WAL before this returns.
    async fn save_vote(&mut self, vote: &Vote) -> Result<(), StorageError> {
        let mut conn = self.db.writer().await;
        write_meta(&mut *conn, MetaTable::Raft, KEY_VOTE, vote)
            .await
            .map_err(|e| StorageIOError::write_vote(&e).into())
    }

    async fn read_vote(&mut self) -> Result<Option<Vote>, StorageError> {
        read_meta(self.db.readers(), MetaTable::Raft, KEY_VOTE)
            .await
            .map_err(|e| StorageIOError::read_vote(&e).into())
    }

    /// Not fsynced on its own (see `Db::set_sync`): the committed pointer
    /// only spares re-applying on restart, and being written before the
    /// applies it allows, it is on disk whenever they are.
    async fn save_committed(&mut self, committed: Option<LogId>) -> Result<(), StorageError> {
        let mut conn = self.db.writer().await;
        let result: Result<(), CodecError> = async {
            Db::set_sync(&mut conn, Durability::Relaxed).await?;
            let written = write_meta(&mut *conn, MetaTable::Raft, KEY_COMMITTED, &committed).await;
            let restored = Db::set_sync(&mut conn, Durability::Full).await;
            written?;
            restored?;
            Ok(())
        }
        .await;
        result.map_err(|e| StorageIOError::new(ErrorSubject::Store, ErrorVerb::Write, &e).into())
    }

    async fn read_committed(&mut self) -> Result<Option<LogId>, StorageError> {
        let got: Option<Option<LogId>> =
            read_meta(self.db.readers(), MetaTable::Raft, KEY_COMMITTED)
                .await
                .map_err(|e| StorageIOError::new(ErrorSubject::Store, ErrorVerb::Read, &e))?;
        Ok(got.flatten())
    }

    async fn append<I>(
        &mut self,
        entries: I,
        callback: LogFlushed<TypeConfig>,
    ) -> Result<(), StorageError>
    where
        I: IntoIterator<Item = Entry> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let mut rows = Vec::new();
        for entry in entries {
            let log_id = entry.log_id;
            let idx = codec::index_to_sql(log_id.index)
                .map_err(|e| StorageIOError::write_log_entry(log_id, &e))?;
            let text = codec::to_json(&entry, "log entry")
                .map_err(|e| StorageIOError::write_log_entry(log_id, &e))?;
            rows.push((idx, log_id, text));
        }
        let result = async {
            let mut conn = self.db.writer().await;
            let mut tx = conn.begin().await?;
            for (idx, log_id, text) in &rows {
                sqlx::query(
                    "INSERT OR REPLACE INTO raft_log (idx, term, leader_node, entry) \
                     VALUES (?1, ?2, ?3, ?4)",
                )
                .bind(*idx)
                .bind(codec::u64_bits(log_id.leader_id.term))
                .bind(codec::u64_bits(log_id.leader_id.node_id))
                .bind(text.as_str())
                .execute(&mut *tx)
                .await?;
            }
            tx.commit().await
        }
        .await;
        match result {
            Ok(()) => {
                // Committed under synchronous=FULL: the WAL is fsynced.
                callback.log_io_completed(Ok(()));
                Ok(())
            }
            Err(e) => {
                let err = StorageIOError::write_logs(&e);
                callback.log_io_completed(Err(std::io::Error::other(err.to_string())));
                Err(err.into())
            }
        }
    }

    async fn truncate(&mut self, log_id: LogId) -> Result<(), StorageError> {
        let idx = codec::index_to_sql(log_id.index)
            .map_err(|e| StorageIOError::write_log_entry(log_id, &e))?;
        let mut conn = self.db.writer().await;
        sqlx::query("DELETE FROM raft_log WHERE idx >= ?1")
            .bind(idx)
            .execute(&mut *conn)
            .await
            .map_err(|e| StorageIOError::new(ErrorSubject::Logs, ErrorVerb::Delete, &e))?;
        Ok(())
    }

    async fn purge(&mut self, log_id: LogId) -> Result<(), StorageError> {
        let idx = codec::index_to_sql(log_id.index)
            .map_err(|e| StorageIOError::new(ErrorSubject::Logs, ErrorVerb::Delete, &e))?;
        let mut conn = self.db.writer().await;
        let result: Result<(), CodecError> = async {
            let mut tx = conn.begin().await?;
            write_meta(&mut *tx, MetaTable::Raft, KEY_LAST_PURGED, &log_id).await?;
            sqlx::query("DELETE FROM raft_log WHERE idx <= ?1")
                .bind(idx)
                .execute(&mut *tx)
                .await?;
            tx.commit().await?;
            Ok(())
        }
        .await;
        result.map_err(|e| StorageIOError::new(ErrorSubject::Logs, ErrorVerb::Delete, &e).into())
    }
}
