-- Tern's durable Raft store: the log and its pointers (vote, committed,
-- last purged), the state machine's rows and pointers (last applied, last
-- membership), and the current snapshot. One file, one writer.

-- Raft log entries, one row per index. `entry` is the serde_json encoding of
-- openraft::Entry<TypeConfig>; term and leader_node repeat its log id so that
-- the log state can be read without decoding an entry.
CREATE TABLE raft_log (
    idx         INTEGER PRIMARY KEY,
    term        INTEGER NOT NULL,
    leader_node INTEGER NOT NULL,
    entry       TEXT    NOT NULL
);

-- Log pointers, JSON values: 'vote', 'committed', 'last_purged'.
CREATE TABLE raft_meta (
    key TEXT PRIMARY KEY,
    val TEXT NOT NULL
) WITHOUT ROWID;

-- The replicated state, one JSON row per tern_core::RowKey (tbl = RowKey::table(),
-- key = RowKey::key()).
CREATE TABLE sm_rows (
    tbl TEXT NOT NULL,
    key TEXT NOT NULL,
    val TEXT NOT NULL,
    PRIMARY KEY (tbl, key)
) WITHOUT ROWID;

-- State machine pointers, JSON values: 'last_applied', 'last_membership'.
-- Written in the same transaction as the sm_rows an apply changed.
CREATE TABLE sm_meta (
    key TEXT PRIMARY KEY,
    val TEXT NOT NULL
) WITHOUT ROWID;

-- The current snapshot (at most one row): its meta as JSON and its bytes.
CREATE TABLE snapshot (
    id          INTEGER PRIMARY KEY CHECK (id = 1),
    snapshot_id TEXT NOT NULL,
    meta        TEXT NOT NULL,
    data        BLOB NOT NULL
);
