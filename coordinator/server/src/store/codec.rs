//! Encodings shared by the log store and the state machine: JSON pointer
//! rows (`raft_meta`, `sm_meta`), integer columns, log-index ranges, and the
//! snapshot file format (a one-line JSON header with the snapshot's meta,
//! then `ReplicatedState::to_snapshot()` bytes).
//!
//! It owns byte layouts only; it must not open transactions or touch the
//! in-memory state.

use std::ops::{Bound, RangeBounds};

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use sqlx::{Executor, Sqlite};
use tern_core::ReplicatedState;

use crate::raft::SnapshotMeta;

/// Keys of `raft_meta`.
pub(crate) const KEY_VOTE: &str = "vote";
pub(crate) const KEY_COMMITTED: &str = "committed";
pub(crate) const KEY_LAST_PURGED: &str = "last_purged";
/// Keys of `sm_meta`.
pub(crate) const KEY_LAST_APPLIED: &str = "last_applied";
pub(crate) const KEY_LAST_MEMBERSHIP: &str = "last_membership";

/// The tables holding JSON pointer rows.
#[derive(Debug, Clone, Copy)]
pub(crate) enum MetaTable {
    Raft,
    StateMachine,
}

impl MetaTable {
    fn select(self) -> &'static str {
        match self {
            MetaTable::Raft => "SELECT val FROM raft_meta WHERE key = ?1",
            MetaTable::StateMachine => "SELECT val FROM sm_meta WHERE key = ?1",
        }
    }

    fn upsert(self) -> &'static str {
        match self {
            MetaTable::Raft => {
                "INSERT INTO raft_meta (key, val) VALUES (?1, ?2) \
                 ON CONFLICT(key) DO UPDATE SET val = excluded.val"
            }
            MetaTable::StateMachine => {
                "INSERT INTO sm_meta (key, val) VALUES (?1, ?2) \
                 ON CONFLICT(key) DO UPDATE SET val = excluded.val"
            }
        }
    }

    fn name(self) -> &'static str {
        match self {
            MetaTable::Raft => "raft_meta",
            MetaTable::StateMachine => "sm_meta",
        }
    }
}

/// Failure reading or writing a stored value.
#[derive(Debug, thiserror::Error)]
pub(crate) enum CodecError {
    #[error(transparent)]
    Sql(#[from] sqlx::Error),
    #[error("{what}: {source}")]
    Json {
        what: String,
        source: serde_json::Error,
    },
    #[error("{0}")]
    Invalid(String),
}

/// Reads and decodes one pointer row; `None` when absent.
pub(crate) async fn read_meta<'e, T, E>(
    exec: E,
    table: MetaTable,
    key: &str,
) -> Result<Option<T>, CodecError>
where
    T: DeserializeOwned,
    E: Executor<'e, Database = Sqlite>,
{
    let row: Option<(String,)> = sqlx::query_as(table.select())
        .bind(key)
        .fetch_optional(exec)
        .await?;
    match row {
        None => Ok(None),
        Some((val,)) => serde_json::from_str(&val)
            .map(Some)
            .map_err(|source| CodecError::Json {
                what: format!("{}.{key}", table.name()),
                source,
            }),
    }
}

/// Encodes and writes one pointer row.
pub(crate) async fn write_meta<'e, T, E>(
    exec: E,
    table: MetaTable,
    key: &str,
    value: &T,
) -> Result<(), CodecError>
where
    T: Serialize + ?Sized,
    E: Executor<'e, Database = Sqlite>,
{
    let val = to_json(value, key)?;
    sqlx::query(table.upsert())
        .bind(key)
        .bind(val)
        .execute(exec)
        .await?;
    Ok(())
}

/// JSON text of a value; `what` names it in the error.
pub(crate) fn to_json<T: Serialize + ?Sized>(value: &T, what: &str) -> Result<String, CodecError> {
    serde_json::to_string(value).map_err(|source| CodecError::Json {
        what: what.to_string(),
        source,
    })
}

/// A log index as an SQLite integer. Indexes past `i64::MAX` cannot occur.
pub(crate) fn index_to_sql(index: u64) -> Result<i64, CodecError> {
    i64::try_from(index).map_err(|_| CodecError::Invalid(format!("log index {index} is too large")))
}

/// A term or node id as an SQLite integer: the same 64 bits, only stored
/// for inspection, never compared in SQL.
pub(crate) fn u64_bits(v: u64) -> i64 {
    i64::from_ne_bytes(v.to_ne_bytes())
}

/// A log-index range as a half-open `[start, end)` of SQLite integers;
/// `None` when it is empty.
pub(crate) fn index_range<RB: RangeBounds<u64>>(range: &RB) -> Option<(i64, i64)> {
    let start = match range.start_bound() {
        Bound::Included(s) => *s,
        Bound::Excluded(s) => s.checked_add(1)?,
        Bound::Unbounded => 0,
    };
    let end = match range.end_bound() {
        Bound::Included(e) => e.saturating_add(1),
        Bound::Excluded(e) => *e,
        Bound::Unbounded => u64::MAX,
    };
    let clamp = |v: u64| i64::try_from(v).unwrap_or(i64::MAX);
    (start < end).then(|| (clamp(start), clamp(end)))
}

/// The snapshot format's name, checked on install.
const SNAPSHOT_FORMAT: &str = "tern-snapshot/1";

#[derive(Serialize, Deserialize)]
struct SnapshotHeader {
    format: String,
    meta: SnapshotMeta,
}

/// Snapshot bytes: a one-line JSON header (format, meta), then the state.
pub(crate) fn encode_snapshot(
    meta: &SnapshotMeta,
    state: &ReplicatedState,
) -> Result<Vec<u8>, CodecError> {
    let header = SnapshotHeader {
        format: SNAPSHOT_FORMAT.to_string(),
        meta: meta.clone(),
    };
    // Compact JSON escapes control characters, so the header has no '\n'.
    let mut out = serde_json::to_vec(&header).map_err(|source| CodecError::Json {
        what: "snapshot header".into(),
        source,
    })?;
    out.push(b'\n');
    let body = state.to_snapshot();
    if body.is_empty() {
        // `to_snapshot` answers empty bytes when serialization failed.
        return Err(CodecError::Invalid(
            "the replicated state did not serialize".into(),
        ));
    }
    out.extend_from_slice(&body);
    Ok(out)
}

/// Splits and checks snapshot bytes: the meta in the header and the state.
pub(crate) fn decode_snapshot(data: &[u8]) -> Result<(SnapshotMeta, ReplicatedState), CodecError> {
    let split = data
        .iter()
        .position(|b| *b == b'\n')
        .ok_or_else(|| CodecError::Invalid("snapshot has no header line".into()))?;
    let (head, rest) = data.split_at(split);
    let header: SnapshotHeader =
        serde_json::from_slice(head).map_err(|source| CodecError::Json {
            what: "snapshot header".into(),
            source,
        })?;
    if header.format != SNAPSHOT_FORMAT {
        return Err(CodecError::Invalid(format!(
            "snapshot format is {:?}, expected {SNAPSHOT_FORMAT:?}",
            header.format
        )));
    }
    let state = ReplicatedState::from_snapshot(rest.get(1..).unwrap_or_default())
        .map_err(|e| CodecError::Invalid(format!("snapshot state: {e}")))?;
    Ok((header.meta, state))
}

#[cfg(test)]
mod tests {
    use super::*;

    // Property: every range form openraft passes maps to the same half-open
    // interval, and empty or inverted ranges read nothing.
    #[test]
    fn ranges_are_half_open() {
        assert_eq!(index_range(&(3..7)), Some((3, 7)));
        assert_eq!(index_range(&(3..=7)), Some((3, 8)));
        assert_eq!(index_range(&(3..)), Some((3, i64::MAX)));
        assert_eq!(index_range(&(..)), Some((0, i64::MAX)));
        assert_eq!(index_range(&(..=u64::MAX)), Some((0, i64::MAX)));
        assert_eq!(index_range(&(5..5)), None);
        #[allow(clippy::reversed_empty_ranges)]
        let inverted = 7..3;
        assert_eq!(index_range(&inverted), None);
    }

    // Property: node ids and terms round-trip through their SQLite bits.
    #[test]
    fn u64_bits_round_trip() {
        for v in [0, 1, u64::MAX, 1 << 63] {
            assert_eq!(u64::from_ne_bytes(u64_bits(v).to_ne_bytes()), v);
        }
    }
}
