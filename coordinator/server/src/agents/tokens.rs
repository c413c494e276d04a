//! Per-agent tokens from committed batches: the Merkle tree of a batch is
//! built once (on first use) and kept while the batch is committed, so a
//! token is one proof lookup, not a rebuild.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use tern_core::{token_for, MerkleTree, RegionName, ReplicatedState, StagedRef};

/// Trees kept at most; older ones are dropped (and rebuilt if needed).
const KEEP: usize = 256;

#[derive(Default)]
pub(crate) struct TokenCache {
    trees: Mutex<HashMap<(RegionName, u64), Arc<MerkleTree>>>,
}

impl TokenCache {
    /// The encoded token of the agent covered by `staged` in a batch of
    /// `source`, or None if the batch or the trust bundle is gone.
    pub(crate) fn token(
        &self,
        s: &ReplicatedState,
        source: &RegionName,
        staged: &StagedRef,
    ) -> Option<String> {
        let batch = s.staged_batches().get(source)?.get(&staged.batch_id)?;
        let bundle = s.trust_bundles().get(source)?;
        let key = (source.clone(), staged.batch_id);
        let tree = {
            let mut trees = self.trees.lock().unwrap_or_else(|p| p.into_inner());
            if let Some(t) = trees.get(&key) {
                t.clone()
            } else {
                if trees.len() >= KEEP {
                    trees.clear();
                }
                let t = Arc::new(MerkleTree::from_leaves(&batch.leaves));
                trees.insert(key, t.clone());
                t
            }
        };
        token_for(
            &batch.batch,
            &tree,
            &batch.leaves,
            staged.index,
            &bundle.pem,
        )
        .ok()
        .map(|t| t.encode())
    }
}
