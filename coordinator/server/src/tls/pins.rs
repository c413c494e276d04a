//! The pin set: the SHA-256 thumbprints of the coordinator certificates this
//! node currently trusts. It owns sharing that set between the replicated
//! membership (which replaces it) and the TLS verifiers (which read it on
//! every handshake). It must not decide which thumbprints are trusted: the
//! membership does; this is only the shared, swappable view of it.

use std::collections::BTreeSet;
use std::fmt;
use std::sync::{Arc, PoisonError, RwLock};

use tern_core::Thumbprint;

/// A shared, run-time replaceable set of pinned thumbprints. Cloning shares
/// the same set: a `replace` through one clone is seen by all, including the
/// verifiers of already-built TLS configurations, for new handshakes.
#[derive(Clone, Default)]
pub struct PinSet {
    inner: Arc<RwLock<BTreeSet<Thumbprint>>>,
}

impl PinSet {
    /// A pin set holding `pins`.
    pub fn new(pins: BTreeSet<Thumbprint>) -> PinSet {
        PinSet {
            inner: Arc::new(RwLock::new(pins)),
        }
    }

    /// Replaces the whole set; later handshakes see only `pins`.
    /// Established connections are not affected.
    pub fn replace(&self, pins: BTreeSet<Thumbprint>) {
        let mut guard = self.inner.write().unwrap_or_else(PoisonError::into_inner);
        *guard = pins;
    }

    /// Whether `thumbprint` is pinned now.
    pub fn contains(&self, thumbprint: &Thumbprint) -> bool {
        self.inner
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .contains(thumbprint)
    }

    /// A copy of the current set.
    pub fn snapshot(&self) -> BTreeSet<Thumbprint> {
        self.inner
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// How many thumbprints are pinned.
    pub fn len(&self) -> usize {
        self.inner
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .len()
    }

    /// Whether nothing is pinned (every peer is refused).
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl fmt::Debug for PinSet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let pins = self.snapshot();
        f.debug_set()
            .entries(pins.iter().map(|t| t.short()))
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // Property: clones share one set, and `replace` is seen through every
    // clone (that is how the membership updates the live verifiers).
    #[test]
    fn replace_is_seen_through_clones() {
        let a = Thumbprint([1; 32]);
        let b = Thumbprint([2; 32]);
        let pins = PinSet::new([a].into());
        let view = pins.clone();
        assert!(view.contains(&a) && !view.contains(&b));
        pins.replace([b].into());
        assert!(
            !view.contains(&a) && view.contains(&b),
            "replace not seen by the clone"
        );
        assert_eq!(view.snapshot(), BTreeSet::from([b]));
        assert_eq!(format!("{view:?}"), format!("{{\"{}\"}}", b.short()));
    }
}
