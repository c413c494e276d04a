//! Time as the core sees it: a number handed in, never read from a clock.

use serde::{Deserialize, Serialize};

/// Milliseconds since the Unix epoch. In replicated entries this is the time
/// the leader stamped on the entry; replicas never read their own clock when
/// applying.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default, Serialize, Deserialize,
)]
#[serde(transparent)]
pub struct Millis(pub u64);

impl Millis {
    /// `self - earlier`, or zero when `earlier` is later (clock skew).
    pub fn saturating_since(self, earlier: Millis) -> u64 {
        self.0.saturating_sub(earlier.0)
    }

    pub fn plus(self, ms: u64) -> Millis {
        Millis(self.0.saturating_add(ms))
    }
}
