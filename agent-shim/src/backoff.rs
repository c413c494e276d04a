//! Spreading reconnects: exponential backoff with full jitter, and a
//! per-target token-bucket rate limiter.
//!
//! When a region is lost, thousands of shims redirect at once. [`Backoff`]
//! spreads one shim's retries (attempt `n` waits a uniformly random time in
//! `[0, min(cap, base·2ⁿ)]`, "full jitter"), and [`RateLimiter`] bounds how
//! often a process connects to each target, so no target is stampeded.
//!
//! This module is pure: no clock (time comes in as milliseconds), no
//! randomness but a generator seeded by the caller (the same seed gives the
//! same delays), no I/O. It computes delays; it does not sleep.

use std::collections::BTreeMap;
use std::time::Duration;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

/// Invalid backoff or rate-limit parameters.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BackoffError {
    /// `base_ms` must be at least 1.
    #[error("backoff base must be at least 1 ms")]
    ZeroBase,
    /// `cap_ms` must be at least `base_ms`.
    #[error("backoff cap ({cap_ms} ms) must be at least its base ({base_ms} ms)")]
    CapBelowBase {
        /// The base.
        base_ms: u64,
        /// The cap.
        cap_ms: u64,
    },
    /// A rate limit needs a burst, a rate and a period of at least 1.
    #[error("rate limit {field} must be at least 1")]
    ZeroRate {
        /// The field that is 0: `burst`, `tokens` or `per_ms`.
        field: &'static str,
    },
}

/// Exponential backoff with full jitter from a seeded generator.
#[derive(Debug, Clone)]
pub struct Backoff {
    base_ms: u64,
    cap_ms: u64,
    rng: StdRng,
}

impl Backoff {
    /// Backoff with `base_ms` (the ceiling of attempt 0) and `cap_ms` (the
    /// largest ceiling), drawing from a generator seeded with `seed`.
    pub fn new(base_ms: u64, cap_ms: u64, seed: u64) -> Result<Self, BackoffError> {
        if base_ms == 0 {
            return Err(BackoffError::ZeroBase);
        }
        if cap_ms < base_ms {
            return Err(BackoffError::CapBelowBase { base_ms, cap_ms });
        }
        Ok(Backoff {
            base_ms,
            cap_ms,
            rng: StdRng::seed_from_u64(seed),
        })
    }

    /// Like [`Backoff::new`], with invalid parameters clamped instead of
    /// refused (base at least 1 ms, cap at least the base), for callers
    /// whose parameters were validated already.
    pub(crate) fn clamped(base_ms: u64, cap_ms: u64, seed: u64) -> Self {
        let base_ms = base_ms.max(1);
        Backoff {
            base_ms,
            cap_ms: cap_ms.max(base_ms),
            rng: StdRng::seed_from_u64(seed),
        }
    }

    /// The largest delay of attempt `attempt` (0-based):
    /// `min(cap, base·2^attempt)`, without overflow.
    pub fn ceiling_ms(&self, attempt: u32) -> u64 {
        let factor = 1u64.checked_shl(attempt).unwrap_or(u64::MAX);
        self.base_ms.saturating_mul(factor).min(self.cap_ms)
    }

    /// The delay before attempt `attempt`, uniform in
    /// `[0, ceiling_ms(attempt)]`; advances the generator.
    pub fn delay_ms(&mut self, attempt: u32) -> u64 {
        let ceiling = self.ceiling_ms(attempt);
        self.rng.random_range(0..=ceiling)
    }

    /// [`Backoff::delay_ms`] as a `Duration`.
    pub fn delay(&mut self, attempt: u32) -> Duration {
        Duration::from_millis(self.delay_ms(attempt))
    }
}

/// A token-bucket rate: at most `burst` at once, refilled by `tokens` every
/// `per_ms` milliseconds (continuously: one token every `per_ms / tokens`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RateLimit {
    burst: u32,
    tokens: u32,
    per_ms: u64,
}

/// The session's default per-target redirect rate: burst 20, 20 per
/// second.
pub(crate) const DEFAULT_RATE_LIMIT: RateLimit = RateLimit {
    burst: 20,
    tokens: 20,
    per_ms: 1_000,
};

impl RateLimit {
    /// A rate of `tokens` per `per_ms` ms with bucket size `burst`.
    pub fn new(burst: u32, tokens: u32, per_ms: u64) -> Result<Self, BackoffError> {
        if burst == 0 {
            return Err(BackoffError::ZeroRate { field: "burst" });
        }
        if tokens == 0 {
            return Err(BackoffError::ZeroRate { field: "tokens" });
        }
        if per_ms == 0 {
            return Err(BackoffError::ZeroRate { field: "per_ms" });
        }
        Ok(RateLimit {
            burst,
            tokens,
            per_ms,
        })
    }

    /// The bucket size.
    pub fn burst(&self) -> u32 {
        self.burst
    }

    /// Tokens added per period.
    pub fn tokens(&self) -> u32 {
        self.tokens
    }

    /// The period, ms.
    pub fn per_ms(&self) -> u64 {
        self.per_ms
    }

    /// The most admissions this limit allows over `elapsed_ms`, starting
    /// from a full bucket: `burst + floor(tokens·elapsed / per_ms)`.
    pub fn max_admissions(&self, elapsed_ms: u64) -> u128 {
        u128::from(self.burst)
            + u128::from(self.tokens) * u128::from(elapsed_ms) / u128::from(self.per_ms)
    }
}

/// The answer of [`RateLimiter::try_acquire`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admission {
    /// Go ahead: a token was taken.
    Admitted,
    /// No token now; one will be available at `retry_at_ms`.
    NotBefore {
        /// The earliest time (ms) a new attempt can be admitted.
        retry_at_ms: u64,
    },
}

/// One target's bucket. Tokens are counted in units of `1/per_ms` token, so
/// the refill of every elapsed millisecond (`tokens` units) is exact.
#[derive(Debug, Clone, Copy)]
struct Bucket {
    units: u128,
    at_ms: u64,
}

/// A token bucket per target (e.g. per region), all with the same limit.
/// A target's bucket starts full.
#[derive(Debug, Clone)]
pub struct RateLimiter {
    limit: RateLimit,
    buckets: BTreeMap<String, Bucket>,
}

impl RateLimiter {
    /// A limiter applying `limit` to each target separately.
    pub fn new(limit: RateLimit) -> Self {
        RateLimiter {
            limit,
            buckets: BTreeMap::new(),
        }
    }

    /// The limit.
    pub fn limit(&self) -> RateLimit {
        self.limit
    }

    /// Takes a token for `target` at `now_ms` if one is available. Time that
    /// goes backwards counts as no time (nothing is refunded or refilled).
    pub fn try_acquire(&mut self, now_ms: u64, target: &str) -> Admission {
        let limit = self.limit;
        let one = u128::from(limit.per_ms);
        let full = u128::from(limit.burst) * one;
        let bucket = self.buckets.entry(target.to_string()).or_insert(Bucket {
            units: full,
            at_ms: now_ms,
        });
        if now_ms > bucket.at_ms {
            let refill = u128::from(now_ms - bucket.at_ms) * u128::from(limit.tokens);
            bucket.units = bucket.units.saturating_add(refill).min(full);
            bucket.at_ms = now_ms;
        }
        if bucket.units >= one {
            bucket.units -= one;
            return Admission::Admitted;
        }
        let missing = one - bucket.units;
        let wait = missing.div_ceil(u128::from(limit.tokens));
        let retry_at_ms = u64::try_from(u128::from(bucket.at_ms) + wait).unwrap_or(u64::MAX);
        Admission::NotBefore { retry_at_ms }
    }

    /// Forgets the buckets that are full at `now_ms` (they would start full
    /// anyway): keeps the map small when targets come and go.
    pub fn prune(&mut self, now_ms: u64) {
        let limit = self.limit;
        let full = u128::from(limit.burst) * u128::from(limit.per_ms);
        self.buckets.retain(|_, b| {
            let elapsed = u128::from(now_ms.saturating_sub(b.at_ms));
            b.units.saturating_add(elapsed * u128::from(limit.tokens)) < full
        });
    }

    /// How many targets have a bucket.
    pub fn targets(&self) -> usize {
        self.buckets.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // Property: parameters that would make backoff or rate limiting
    // meaningless are refused.
    #[test]
    fn invalid_parameters() {
        assert_eq!(Backoff::new(0, 10, 1).err(), Some(BackoffError::ZeroBase));
        assert!(matches!(
            Backoff::new(10, 5, 1),
            Err(BackoffError::CapBelowBase { .. })
        ));
        assert!(RateLimit::new(0, 1, 1).is_err());
        assert!(RateLimit::new(1, 0, 1).is_err());
        assert!(RateLimit::new(1, 1, 0).is_err());
    }

    // Property: the ceiling doubles per attempt up to the cap and never
    // overflows, even for huge attempt numbers.
    #[test]
    fn ceiling_doubles_then_caps() {
        let b = Backoff::new(100, 30_000, 7).expect("backoff");
        let ceilings: Vec<u64> = (0..10).map(|a| b.ceiling_ms(a)).collect();
        assert_eq!(
            ceilings,
            [100, 200, 400, 800, 1600, 3200, 6400, 12800, 25600, 30000]
        );
        assert_eq!(b.ceiling_ms(63), 30_000);
        assert_eq!(b.ceiling_ms(64), 30_000);
        assert_eq!(b.ceiling_ms(u32::MAX), 30_000);
        let huge = Backoff::new(u64::MAX, u64::MAX, 7).expect("backoff");
        assert_eq!(huge.ceiling_ms(5), u64::MAX);
    }

    // Property: a burst is admitted at once, then admissions follow the
    // rate, and NotBefore names the exact time the next one is admitted;
    // targets are independent.
    #[test]
    fn bucket_burst_then_rate() {
        // burst 2, 1 token per 1000 ms.
        let mut l = RateLimiter::new(RateLimit::new(2, 1, 1000).expect("limit"));
        assert_eq!(l.try_acquire(0, "us"), Admission::Admitted);
        assert_eq!(l.try_acquire(0, "us"), Admission::Admitted);
        assert_eq!(
            l.try_acquire(0, "us"),
            Admission::NotBefore { retry_at_ms: 1000 }
        );
        assert_eq!(l.try_acquire(0, "eu"), Admission::Admitted, "own bucket");
        assert_eq!(
            l.try_acquire(999, "us"),
            Admission::NotBefore { retry_at_ms: 1000 }
        );
        assert_eq!(l.try_acquire(1000, "us"), Admission::Admitted);
        // Time going backwards refills nothing.
        assert_eq!(
            l.try_acquire(10, "us"),
            Admission::NotBefore { retry_at_ms: 2000 }
        );
        l.prune(1_000_000);
        assert_eq!(l.targets(), 0, "full buckets are forgotten");
    }
}
