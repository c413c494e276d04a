//! Property tests of reconnect spreading: backoff with full jitter and the
//! per-target rate limiter.

use std::collections::BTreeMap;

use proptest::prelude::*;
use tern_agent_shim::{Admission, Backoff, RateLimit, RateLimiter};

/// min(cap, base·2^attempt), computed independently in u128.
fn ceiling(base: u64, cap: u64, attempt: u32) -> u64 {
    let full = if attempt >= 64 {
        u128::MAX
    } else {
        u128::from(base).saturating_mul(1u128 << attempt)
    };
    u64::try_from(full.min(u128::from(cap))).unwrap_or(u64::MAX)
}

proptest! {
    // Property: every delay lies in [0, min(cap, base·2^attempt)], for any
    // base, cap, attempt (overflowing ones included) and seed.
    #[test]
    fn delay_within_bounds(
        base in 1u64..100_000,
        extra in 0u64..10_000_000,
        seed in any::<u64>(),
        attempts in prop::collection::vec(0u32..200, 1..50),
    ) {
        let cap = base + extra;
        let mut b = Backoff::new(base, cap, seed).expect("backoff");
        for attempt in attempts {
            let c = ceiling(base, cap, attempt);
            prop_assert_eq!(b.ceiling_ms(attempt), c);
            let d = b.delay_ms(attempt);
            prop_assert!(d <= c, "attempt {}: delay {} above {}", attempt, d, c);
        }
    }

    // Property: the same seed gives the same delays for the same attempts.
    #[test]
    fn delays_reproducible(
        seed in any::<u64>(),
        attempts in prop::collection::vec(0u32..40, 1..50),
    ) {
        let mut a = Backoff::new(50, 60_000, seed).expect("backoff");
        let mut b = Backoff::new(50, 60_000, seed).expect("backoff");
        let da: Vec<u64> = attempts.iter().map(|&n| a.delay_ms(n)).collect();
        let db: Vec<u64> = attempts.iter().map(|&n| b.delay_ms(n)).collect();
        prop_assert_eq!(da, db);
    }

    // Property: over any sequence of requests (targets, monotonic times),
    // for every target and every time window [t0, t1], the limiter admits at
    // most burst + floor(tokens·(t1 - t0) / per_ms); and when it refuses,
    // a request at the announced retry time is admitted, and not one
    // millisecond earlier.
    #[test]
    fn limiter_never_exceeds_rate(
        burst in 1u32..10,
        tokens in 1u32..5,
        per_ms in 1u64..5_000,
        requests in prop::collection::vec((0u64..3_000, 0usize..3), 1..150),
    ) {
        let limit = RateLimit::new(burst, tokens, per_ms).expect("limit");
        let mut limiter = RateLimiter::new(limit);
        let mut now = 0u64;
        let mut admitted: BTreeMap<usize, Vec<u64>> = BTreeMap::new();
        for (dt, target) in requests {
            now += dt;
            let name = format!("region-{target}");
            match limiter.try_acquire(now, &name) {
                Admission::Admitted => admitted.entry(target).or_default().push(now),
                Admission::NotBefore { retry_at_ms } => {
                    prop_assert!(retry_at_ms > now);
                    let mut probe = limiter.clone();
                    if retry_at_ms - 1 > now {
                        prop_assert!(matches!(
                            probe.clone().try_acquire(retry_at_ms - 1, &name),
                            Admission::NotBefore { .. }
                        ), "admitted before the announced time");
                    }
                    prop_assert_eq!(probe.try_acquire(retry_at_ms, &name), Admission::Admitted);
                }
            }
        }
        for times in admitted.values() {
            for (i, t0) in times.iter().enumerate() {
                for (j, t1) in times.iter().enumerate().skip(i) {
                    let count = (j - i + 1) as u128;
                    let bound = limit.max_admissions(t1 - t0);
                    prop_assert!(count <= bound,
                        "{} admissions in [{}, {}], bound {}", count, t0, t1, bound);
                }
            }
        }
    }
}

// Property: different seeds give different delay sequences (the jitter
// really spreads shims that start together).
#[test]
fn seeds_spread() {
    let sequences: Vec<Vec<u64>> = (0..20u64)
        .map(|seed| {
            let mut b = Backoff::new(1_000, 1_000_000, seed).expect("backoff");
            (0..8).map(|_| b.delay_ms(10)).collect()
        })
        .collect();
    for (i, a) in sequences.iter().enumerate() {
        for b in &sequences[i + 1..] {
            assert_ne!(a, b, "two seeds gave the same delays");
        }
    }
}

// Property: full jitter is uniform over [0, ceiling]: over many seeded
// draws the mean is about half the ceiling and both ends are reached.
#[test]
fn jitter_is_full() {
    let mut b = Backoff::new(100, 10_000, 12345).expect("backoff");
    let draws: Vec<u64> = (0..20_000).map(|_| b.delay_ms(3)).collect(); // ceiling 800
    let mean = draws.iter().sum::<u64>() as f64 / draws.len() as f64;
    assert!((380.0..420.0).contains(&mean), "mean {mean}");
    assert!(draws.iter().any(|&d| d < 8), "low end never reached");
    assert!(draws.iter().any(|&d| d > 792), "high end never reached");
}
