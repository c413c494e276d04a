//! The per-test seed: the only source of randomness a test may use, printed
//! with the command that reruns the test with the same seed.

use std::fmt;

use rand::rngs::StdRng;
use rand::SeedableRng;
use sha2::{Digest, Sha256};

/// Environment variable that fixes the seed of every test in the run.
pub const SEED_ENV: &str = "TERN_TEST_SEED";

/// A test's seed: taken from `TERN_TEST_SEED` when set, random otherwise.
///
/// Every random choice of a test (fault schedules, which node to kill, ...)
/// must come from [`Seed::rng`] or [`Seed::rng_for`], so that the printed
/// reproduce command replays the same choices.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Seed {
    value: u64,
    test_target: String,
    test_name: String,
}

impl Seed {
    /// The seed for test `test_name` (the `#[test]` function name): from
    /// `TERN_TEST_SEED` if set (decimal or `0x` hex), else fresh random.
    /// Prints the seed line (see [`Seed::banner`]) to stderr, which the test
    /// runner shows when the test fails.
    ///
    /// Panics if `TERN_TEST_SEED` is set but is not a `u64`.
    pub fn for_test(test_name: &str) -> Seed {
        let value = match std::env::var(SEED_ENV) {
            Ok(text) => parse_seed(&text).unwrap_or_else(|| {
                panic!("{SEED_ENV}={text:?} is not a u64 (decimal or 0x-prefixed hex)")
            }),
            Err(_) => rand::random::<u64>(),
        };
        let seed = Seed::from_value(value, test_name);
        eprintln!("[tern-tests] {}", seed.banner());
        seed
    }

    /// A seed with a known value, ignoring the environment; prints nothing.
    pub fn from_value(value: u64, test_name: &str) -> Seed {
        Seed {
            value,
            test_target: current_test_target(),
            test_name: test_name.to_owned(),
        }
    }

    /// The seed value.
    pub fn value(&self) -> u64 {
        self.value
    }

    /// The test function name this seed belongs to.
    pub fn test_name(&self) -> &str {
        &self.test_name
    }

    /// The integration-test target (`--test <target>`) running this test,
    /// derived from the test executable's name.
    pub fn test_target(&self) -> &str {
        &self.test_target
    }

    /// A generator seeded with exactly this seed. Each call starts the same
    /// sequence again.
    pub fn rng(&self) -> StdRng {
        StdRng::seed_from_u64(self.value)
    }

    /// An independent generator for one purpose (`"faults"`, `"workload"`),
    /// so adding draws for one purpose does not shift the others.
    pub fn rng_for(&self, purpose: &str) -> StdRng {
        let mut hasher = Sha256::new();
        hasher.update(self.value.to_le_bytes());
        hasher.update(purpose.as_bytes());
        StdRng::from_seed(hasher.finalize().into())
    }

    /// `TERN_TEST_SEED=<n> cargo test -p tern-tests --test <target> -- <test>`.
    pub fn reproduce_command(&self) -> String {
        format!(
            "{SEED_ENV}={} cargo test -p tern-tests --test {} -- {}",
            self.value, self.test_target, self.test_name
        )
    }

    /// One line: the seed and the command to reproduce.
    pub fn banner(&self) -> String {
        format!(
            "test `{}` seed {}; reproduce with: {}",
            self.test_name,
            self.value,
            self.reproduce_command()
        )
    }
}

impl fmt::Display for Seed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.value)
    }
}

/// Parses a seed written in decimal or as `0x` hex.
pub(crate) fn parse_seed(text: &str) -> Option<u64> {
    let text = text.trim();
    match text.strip_prefix("0x").or_else(|| text.strip_prefix("0X")) {
        Some(hex) => u64::from_str_radix(hex, 16).ok(),
        None => text.parse().ok(),
    }
}

/// `target/debug/deps/harness_selftest-1a2b3c4d5e6f7a8b` → `harness_selftest`.
fn current_test_target() -> String {
    std::env::current_exe()
        .ok()
        .and_then(|exe| exe.file_stem().map(|s| s.to_string_lossy().into_owned()))
        .map(|stem| strip_hash_suffix(&stem).to_owned())
        .unwrap_or_else(|| "<test-target>".to_owned())
}

fn strip_hash_suffix(stem: &str) -> &str {
    match stem.rsplit_once('-') {
        Some((base, hash)) if hash.len() == 16 && hash.chars().all(|c| c.is_ascii_hexdigit()) => {
            base
        }
        _ => stem,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::Rng;

    // Property: a seed is read back the same in decimal and hex, junk is rejected.
    #[test]
    fn parses_decimal_and_hex() {
        assert_eq!(parse_seed("42"), Some(42));
        assert_eq!(parse_seed(" 0x2a\n"), Some(42));
        assert_eq!(parse_seed("forty-two"), None);
    }

    // Property: the same seed gives the same draws; purposes are independent streams.
    #[test]
    fn same_seed_same_draws() {
        let a = Seed::from_value(7, "t");
        let b = Seed::from_value(7, "t");
        let draws = |mut r: StdRng| (0..8).map(|_| r.random::<u32>()).collect::<Vec<_>>();
        assert_eq!(draws(a.rng()), draws(b.rng()));
        assert_eq!(draws(a.rng_for("x")), draws(b.rng_for("x")));
        assert_ne!(draws(a.rng_for("x")), draws(a.rng_for("y")));
    }

    // Property: the reproduce command names the seed, the target and the test.
    #[test]
    fn reproduce_command_shape() {
        let seed = Seed {
            value: 9,
            test_target: "failover".into(),
            test_name: "leader_killed".into(),
        };
        assert_eq!(
            seed.reproduce_command(),
            "TERN_TEST_SEED=9 cargo test -p tern-tests --test failover -- leader_killed"
        );
        assert_eq!(strip_hash_suffix("failover-0123abcdef456789"), "failover");
        assert_eq!(strip_hash_suffix("multi-word-cafe"), "multi-word-cafe");
    }
}
