//! The durable Raft store: openraft's log storage and state machine, both in
//! one SQLite file `<data_dir>/tern.db` (WAL journal, `synchronous=FULL`,
//! one writer connection shared by both, a small read-only pool for log
//! readers and snapshot reads).
//!
//! It owns the on-disk layout (the migrations in `migrations/sqlite`), the
//! durability rules Raft depends on (vote durable before `save_vote`
//! returns, `log_io_completed` only after the commit's fsync, state rows
//! written behind the applies but always together with the `last_applied`
//! they match, never behind the stored snapshot; state-machine flushes and
//! the committed pointer alone may skip their own fsync: see
//! `db::Db::set_sync`), and the in-memory copy of the replicated state that
//! status handlers read.
//!
//! It must not decide anything: what an entry changes is
//! `tern_core::ReplicatedState::apply`'s business, and which rows changed is
//! what `take_dirty` says. Nothing outside `apply`/`install_snapshot` may
//! write the shared state, and nothing else may open `tern.db` for writing.

mod codec;
mod db;
mod log;
mod state_machine;

#[cfg(test)]
mod tests;

use std::path::{Path, PathBuf};
use std::sync::Arc;

pub use log::{LogStore, READ_BATCH_BYTES, READ_BATCH_ENTRIES};
pub use state_machine::{Changes, StateMachineStore};

/// The database file's name inside the data directory.
pub const DB_FILE: &str = "tern.db";

/// Why the store could not be opened. Every message names the file.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("cannot create the data directory {}: {source}", .path.display())]
    CreateDir {
        path: PathBuf,
        source: std::io::Error,
    },

    #[error("cannot open the Raft store {}: {source}", .path.display())]
    Open { path: PathBuf, source: sqlx::Error },

    #[error("cannot apply the schema migrations to the Raft store {}: {source}", .path.display())]
    Migrate {
        path: PathBuf,
        source: sqlx::migrate::MigrateError,
    },

    #[error(
        "the Raft store {} runs with {pragma} = {actual}, Raft needs {expected} \
         (WAL journal, synchronous=FULL)",
        .path.display()
    )]
    Pragma {
        path: PathBuf,
        pragma: &'static str,
        actual: String,
        expected: &'static str,
    },

    #[error("cannot read {what} from the Raft store {}: {source}", .path.display())]
    Read {
        path: PathBuf,
        what: String,
        source: sqlx::Error,
    },

    #[error(
        "the Raft store {} is corrupt: {what}: {source}; \
         restore the data directory from a peer or a backup",
        .path.display()
    )]
    Corrupt {
        path: PathBuf,
        what: String,
        source: Box<dyn std::error::Error + Send + Sync + 'static>,
    },
}

/// Opens (creating if needed) `<data_dir>/tern.db`, runs migrations, loads
/// the state machine.
///
/// The log is not decoded in full: its pointers (vote, committed, last
/// purged), its first and last entries, every state-machine row and the
/// current snapshot's meta are, so that a damaged file is reported here
/// rather than later inside Raft.
pub async fn open(data_dir: &Path) -> Result<(LogStore, StateMachineStore), StoreError> {
    let db = Arc::new(db::Db::open(data_dir).await?);
    let log_store = LogStore::load(db.clone()).await?;
    let state_machine = StateMachineStore::load(db).await?;
    Ok((log_store, state_machine))
}
