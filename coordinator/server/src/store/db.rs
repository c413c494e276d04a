//! The SQLite file and its connections: one writer connection (behind an
//! async mutex, shared by the log store and the state machine, so that all
//! writes are serialized in the order they were asked for) and a small
//! read-only pool for log reads and snapshot reads.
//!
//! It sets the pragmas Raft's durability depends on (WAL journal,
//! `synchronous=FULL`, a busy timeout) and runs the embedded migrations. It
//! must not know what the tables mean: that is `log` and `state_machine`.

use std::path::{Path, PathBuf};
use std::time::Duration;

use sqlx::sqlite::{
    SqliteConnectOptions, SqliteConnection, SqliteJournalMode, SqlitePool, SqlitePoolOptions,
    SqliteSynchronous,
};
use tokio::sync::{Mutex, MutexGuard};

use super::{StoreError, DB_FILE};

/// How long a connection waits for a lock held by another before failing.
const BUSY_TIMEOUT: Duration = Duration::from_secs(10);
/// Read-only connections for log replication and snapshot reads.
const READERS: u32 = 4;
/// `PRAGMA synchronous` answers 2 for FULL.
const SYNCHRONOUS_FULL: i64 = 2;

static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations/sqlite");

/// The writer's durability level (see [`Db::set_sync`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Durability {
    /// `synchronous = NORMAL`: committed in order, fsynced by the next
    /// `Full` commit.
    Relaxed,
    /// `synchronous = FULL`: fsynced before the commit returns.
    Full,
}

/// The open database: the writer and the readers.
pub(crate) struct Db {
    path: PathBuf,
    writer: Mutex<SqliteConnection>,
    readers: SqlitePool,
}

impl std::fmt::Debug for Db {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Db")
            .field("path", &self.path)
            .finish_non_exhaustive()
    }
}

impl Db {
    /// Opens `<data_dir>/tern.db`, creating the directory and the file if
    /// needed, and brings its schema up to date.
    pub(crate) async fn open(data_dir: &Path) -> Result<Db, StoreError> {
        tokio::fs::create_dir_all(data_dir)
            .await
            .map_err(|source| StoreError::CreateDir {
                path: data_dir.to_path_buf(),
                source,
            })?;
        let path = data_dir.join(DB_FILE);
        let open_err = |source| StoreError::Open {
            path: path.clone(),
            source,
        };

        // Statement journals (every multi-row upsert inside a transaction
        // needs one) stay in memory instead of spilling to temporary files.
        let base = SqliteConnectOptions::new()
            .filename(&path)
            .busy_timeout(BUSY_TIMEOUT)
            .foreign_keys(false)
            .pragma("temp_store", "memory");

        // The writer comes out of a one-connection pool only because sqlx's
        // migrator needs a pool (or an `Acquire` impl general enough for a
        // `Send` future); it is detached from that pool before any Raft use.
        let bootstrap = SqlitePoolOptions::new()
            .max_connections(1)
            .min_connections(0)
            .connect_with(
                base.clone()
                    .create_if_missing(true)
                    .journal_mode(SqliteJournalMode::Wal)
                    .synchronous(SqliteSynchronous::Full),
            )
            .await
            .map_err(open_err)?;
        MIGRATOR
            .run(&bootstrap)
            .await
            .map_err(|source| StoreError::Migrate {
                path: path.clone(),
                source,
            })?;
        let mut writer = bootstrap.acquire().await.map_err(open_err)?.detach();
        bootstrap.close().await;

        // A file that cannot switch to WAL (e.g. on some network file
        // systems) silently keeps its old journal: refuse it. Check the
        // durability level the detached connection really runs with too.
        let (mode,): (String,) = sqlx::query_as("PRAGMA journal_mode")
            .fetch_one(&mut writer)
            .await
            .map_err(open_err)?;
        if !mode.eq_ignore_ascii_case("wal") {
            return Err(StoreError::Pragma {
                path,
                pragma: "journal_mode",
                actual: mode,
                expected: "wal",
            });
        }
        let (sync,): (i64,) = sqlx::query_as("PRAGMA synchronous")
            .fetch_one(&mut writer)
            .await
            .map_err(open_err)?;
        if sync != SYNCHRONOUS_FULL {
            return Err(StoreError::Pragma {
                path,
                pragma: "synchronous",
                actual: sync.to_string(),
                expected: "2 (FULL)",
            });
        }

        // Opened after the writer, so the WAL index exists for them.
        let readers = SqlitePoolOptions::new()
            .max_connections(READERS)
            .min_connections(0)
            .connect_with(base.read_only(true))
            .await
            .map_err(open_err)?;

        Ok(Db {
            path,
            writer: Mutex::new(writer),
            readers,
        })
    }

    /// The database file, for messages.
    pub(crate) fn path(&self) -> &Path {
        &self.path
    }

    /// The one writer connection. Hold it for exactly one transaction.
    pub(crate) async fn writer(&self) -> MutexGuard<'_, SqliteConnection> {
        self.writer.lock().await
    }

    /// Runs on the writer `PRAGMA synchronous = NORMAL` (`Relaxed`) or
    /// `FULL` (`Full`, the default). Only the state machine's flushes of
    /// applied rows and the committed pointer relax it, for one transaction
    /// at a time, and restore `FULL` right after, whether the transaction
    /// committed or not.
    ///
    /// Why relaxing is safe there: in WAL mode a `NORMAL` commit is written
    /// to the WAL but not fsynced on its own; the next `FULL` commit's fsync
    /// (of the same file) makes it durable, and crash recovery keeps a prefix
    /// of the committed transactions. The state machine's rows are derived
    /// from the Raft log, which is only ever written `FULL`: a crash can
    /// lose applies (never half of one, never one without the log entries
    /// that produced it), and openraft re-applies them from the log at
    /// start. Log entries are purged only up to the stored snapshot, whose
    /// `FULL` transaction also carries every apply up to it, and only in a
    /// `FULL` transaction, which makes every earlier flush durable first.
    pub(crate) async fn set_sync(
        conn: &mut SqliteConnection,
        sync: Durability,
    ) -> Result<(), sqlx::Error> {
        let sql = match sync {
            Durability::Relaxed => "PRAGMA synchronous = NORMAL",
            Durability::Full => "PRAGMA synchronous = FULL",
        };
        sqlx::query(sql).execute(conn).await.map(|_| ())
    }

    /// The read-only pool. It sees every transaction the writer committed.
    pub(crate) fn readers(&self) -> &SqlitePool {
        &self.readers
    }
}
