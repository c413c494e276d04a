// Property: Tern's SQLite Raft store (`tern_coordinator::store`) meets every
// contract openraft 0.9.25 checks in its storage test suite: vote, log
// append / read / truncate / purge, log state, committed re-apply at start-up,
// last applied state and membership, snapshot build, transfer and install.
// Each case runs against a fresh `tern.db` in its own temporary directory.

use openraft::testing::{StoreBuilder, Suite};
use openraft::StorageIOError;
use tempfile::TempDir;
use tern_coordinator::raft::{StorageError, TypeConfig};
use tern_coordinator::store::{self, LogStore, StateMachineStore};

/// Opens a new store in a new temporary directory; the directory is the
/// guard, removed when the suite drops it after each case.
struct TempDirStore;

impl StoreBuilder<TypeConfig, LogStore, StateMachineStore, TempDir> for TempDirStore {
    async fn build(&self) -> Result<(TempDir, LogStore, StateMachineStore), StorageError> {
        let dir = TempDir::new().map_err(|e| StorageIOError::write(&e))?;
        let (log, sm) = store::open(dir.path())
            .await
            .map_err(|e| StorageIOError::write(&e))?;
        Ok((dir, log, sm))
    }
}

#[test]
fn openraft_storage_suite() {
    // The suite runs each case on its own tokio runtime: not a tokio test.
    if let Err(e) = Suite::test_all(TempDirStore) {
        panic!("openraft's storage suite failed against the SQLite store: {e}");
    }
}
