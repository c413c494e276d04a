//! Detection benchmark: how long from a region's control plane going down
//! to the federation committing `unreachable` for it, multi-process.
//!
//! Three regions on 127.x.y.z, each a reference stand-in (`tern stand-in
//! serve`) and a `tern serve` coordinator, with a passing TCP relay on every
//! coordinator→coordinator and coordinator→control-plane link (the fixture
//! of `tests/tests/support/federation.rs`). One trial: note this machine's
//! wall clock, run `tern stand-in mode down` on one region (rotating over
//! the three), wait for the audit trail's `region_transition` to
//! `unreachable` for it, and take its leader-stamped `at_ms` minus the noted
//! time. Then `mode up` and wait until every region is healthy again before
//! the next trial (`up_after` is shortened to 2 s for that). Two profiles:
//! the defaults (probe every 1000 ms, down_after 10 s) and an aggressive one
//! (probe every 250 ms with a 200 ms timeout, down_after 2 s). Writes
//! p50 / p99 / max / min per profile to `bench/reports/detection.md`.
//!
//! Run: `cargo build --bins && cargo bench -p tern-tests --bench detection`
//!
//! The bench runs the `tern` binary it finds: `TERN_BIN_DIR` if set, else
//! the newer of `target/release/tern` and `target/debug/tern` (so `cargo
//! build --bins` is enough; the timings are dominated by the configured
//! timers, not by the build profile). `TERN_BENCH_TRIALS` changes the number
//! of trials per profile (default 20); `TERN_TEST_SEED` fixes the seed (the
//! addresses) the harness prints for each profile.

#[path = "../tests/support/mod.rs"]
mod support;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use support::federation::{now_ms, Federation, FederationConfig, REGION_NAMES};
use tern_tests::{Harness, BIN_DIR_ENV};

/// Generous bound for one detection or one recovery.
const WAIT: Duration = Duration::from_secs(120);

/// The results of one profile.
struct Profile {
    name: &'static str,
    config: FederationConfig,
    /// Detection times, ms, in trial order.
    samples: Vec<u64>,
    /// How long each `tern stand-in mode down` call took, ms.
    mode_call_ms: Vec<u64>,
    wall: Duration,
}

/// Nearest-rank percentile of a sorted slice.
fn pct(sorted: &[u64], p: f64) -> u64 {
    if sorted.is_empty() {
        return 0;
    }
    let rank = ((p * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
    sorted[rank - 1]
}

fn secs(ms: u64) -> String {
    format!("{:.2}", ms as f64 / 1000.0)
}

fn run_profile(
    name: &'static str,
    config: FederationConfig,
    trials: usize,
) -> anyhow::Result<Profile> {
    let h = Harness::new(&format!("detection_{name}"));
    let started = Instant::now();
    let outcome = (|| -> anyhow::Result<(Vec<u64>, Vec<u64>)> {
        let fed = Federation::start(&h, config.clone())?;
        let mut samples = Vec::new();
        let mut mode_calls = Vec::new();
        for t in 0..trials {
            let j = t % fed.len();
            let t0 = now_ms();
            let call = Instant::now();
            fed.plane_down(j)?;
            mode_calls.push(call.elapsed().as_millis() as u64);
            let tr = fed.wait_transition(j, "unreachable", t0, WAIT)?;
            let ms = tr.at_ms.saturating_sub(t0);
            eprintln!(
                "[detection] {name} trial {:>2}/{trials}: region {} unreachable after {ms} ms",
                t + 1,
                REGION_NAMES[j]
            );
            samples.push(ms);
            fed.plane_up(j)?;
            fed.wait_healthy("every region healthy again between trials", WAIT)?;
        }
        Ok((samples, mode_calls))
    })();
    let (samples, mode_call_ms) = h.conclude(outcome)?;
    Ok(Profile {
        name,
        config,
        samples,
        mode_call_ms,
        wall: started.elapsed(),
    })
}

/// Points `TERN_BIN_DIR` at the newer of target/release and target/debug
/// (unless it is set); returns the binary used.
fn choose_binary() -> anyhow::Result<PathBuf> {
    if let Some(dir) = std::env::var_os(BIN_DIR_ENV) {
        return Ok(PathBuf::from(dir).join("tern"));
    }
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../target"));
    let newest = ["release", "debug"]
        .iter()
        .map(|profile| target.join(profile).join("tern"))
        .filter_map(|p| {
            let modified = p.metadata().and_then(|m| m.modified()).ok()?;
            Some((modified, p))
        })
        .max_by_key(|(modified, _)| *modified)
        .map(|(_, p)| p)
        .ok_or_else(|| {
            anyhow::anyhow!(
                "no tern binary under {}: run `cargo build --bins` first",
                target.display()
            )
        })?;
    if let Some(dir) = newest.parent() {
        std::env::set_var(BIN_DIR_ENV, dir);
    }
    Ok(newest)
}

fn row(p: &Profile) -> String {
    let mut s = p.samples.clone();
    s.sort_unstable();
    let c = &p.config;
    format!(
        "| {} | {} ms / {} ms | {} s | {} | {} | {} | {} | {} |",
        p.name,
        c.probe_interval_ms,
        c.probe_timeout_ms.unwrap_or(800),
        secs(c.down_after_ms),
        s.len(),
        secs(pct(&s, 0.50)),
        secs(pct(&s, 0.99)),
        secs(s.last().copied().unwrap_or(0)),
        secs(s.first().copied().unwrap_or(0)),
    )
}

/// One sentence per profile comparing its worst case with the anchors.
fn comparison(profiles: &[Profile]) -> String {
    profiles
        .iter()
        .map(|p| {
            let max = p.samples.iter().copied().max().unwrap_or(0) as f64 / 1000.0;
            let p50 = {
                let mut s = p.samples.clone();
                s.sort_unstable();
                pct(&s, 0.5) as f64 / 1000.0
            };
            format!(
                "Tern's {} profile: p50 {p50:.1} s, worst {max:.1} s, i.e. {:.1}x faster than \
                 Kubernetes' NotReady (50 s), {:.1}x faster than Patroni (30 s) and {:.1}x faster \
                 than Consul's WAN gossip (35 s), counting Tern's worst case; a majority of the other \
                 regions must still agree for the whole `down_after`.",
                p.name,
                50.0 / max.max(0.001),
                30.0 / max.max(0.001),
                35.0 / max.max(0.001),
            )
        })
        .collect::<Vec<_>>()
        .join("\n\n")
}

fn main() -> anyhow::Result<()> {
    let trials: usize = std::env::var("TERN_BENCH_TRIALS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(20);
    let binary = choose_binary()?;
    eprintln!("[detection] using {}", binary.display());
    let profiles = vec![
        run_profile(
            "default",
            FederationConfig {
                up_after_ms: Some(2_000),
                ..FederationConfig::default()
            },
            trials,
        )?,
        run_profile(
            "aggressive",
            FederationConfig {
                probe_interval_ms: 250,
                probe_timeout_ms: Some(200),
                down_after_ms: 2_000,
                up_after_ms: Some(2_000),
                ..FederationConfig::default()
            },
            trials,
        )?,
    ];

    let date =
        time::OffsetDateTime::now_utc().format(&time::format_description::well_known::Rfc3339)?;
    let rows: Vec<String> = profiles.iter().map(row).collect();
    let samples: Vec<String> = profiles
        .iter()
        .map(|p| {
            format!(
                "- {} ({} trials, {:.0} s of wall time including start-up and recoveries): {}",
                p.name,
                p.samples.len(),
                p.wall.as_secs_f64(),
                p.samples
                    .iter()
                    .map(|ms| ms.to_string())
                    .collect::<Vec<_>>()
                    .join(", ")
            )
        })
        .collect();
    let mode_calls: Vec<String> = profiles
        .iter()
        .map(|p| {
            let mut m = p.mode_call_ms.clone();
            m.sort_unstable();
            format!(
                "{}: median {} ms, max {} ms",
                p.name,
                pct(&m, 0.5),
                m.last().copied().unwrap_or(0)
            )
        })
        .collect();
    let report = format!(
        "# Region failure detection benchmark\n\n\
Date: {date}\n\
Machine: {machine}\n\
Binary: `{binary}`\n\
Command: `cargo build --bins && cargo bench -p tern-tests --bench detection`\n\n\
## What is measured\n\n\
Three regions on 127.x.y.z, each a reference stand-in (`tern stand-in serve`, the region's control plane) \
and a `tern serve` coordinator (real mutual TLS, SQLite), with a TCP relay on every coordinator→coordinator \
and coordinator→control-plane link, all passing. One trial takes one region's control plane down with \
`tern stand-in mode down` (the stand-in closes its listener and drops its connections), rotating over the \
three regions, and measures from this machine's wall clock just before that command to the leader-stamped \
`at_ms` of the committed `region_transition` to `unreachable` in the audit trail (same clock). The outage \
starts when the command has closed the listener, a little after the start of the measurement \
({mode_calls}), so the figures are upper bounds by that much. Between trials the control plane is brought \
back (`mode up`) and the bench waits until every region is committed healthy again; `up_after` is \
shortened to 2 s for that (default 120 s), which does not enter the measurement. \
`failures_before_down` is the default 2 in both profiles.\n\n\
A region becomes unreachable once a majority of the other regions' coordinators (here both) have seen its \
control plane down continuously for `down_after`, counted from their first failed probe; so the expected \
detection time is `down_after` + up to one probe interval (the first failed probe) + up to one leader \
evaluation interval (= the probe interval) + one commit.\n\n\
| profile | probe interval / timeout | down_after | trials | p50 (s) | p99 (s) | max (s) | min (s) |\n\
|---|---|---|---|---|---|---|---|\n\
{rows}\n\n\
Percentiles are nearest-rank: with 20 trials p99 is the largest sample.\n\n\
Samples (ms, in trial order):\n\n\
{samples}\n\n\
## Anchors\n\n\
- Kubernetes' node controller marks a node NotReady after about 50 s and evicts its pods after about \
5 min 50 s (default grace periods and eviction timeout).\n\
- Patroni (PostgreSQL HA) fails over in about 30 s with its defaults (TTL 30 s).\n\
- Consul's WAN gossip takes at least 35 s to declare a remote server failed.\n\n\
{comparison}\n",
        machine = tern_tests::machine(),
        binary = binary.display(),
        mode_calls = mode_calls.join("; "),
        rows = rows.join("\n"),
        samples = samples.join("\n"),
        comparison = comparison(&profiles),
    );
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../bench/reports/detection.md");
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent)?;
    }
    std::fs::write(&path, &report)?;
    println!("{report}");
    println!("report written to {}", path.display());
    Ok(())
}
