//! Simulation invariant: once the network is stable, the truth is reached in
//! bounded time.

// Property: once the network is stable (every fault healed, no cut, drop,
// extra delay or crash; planes still fail, but never more at once than the
// freeze threshold allows), the committed state reaches the truth within a
// bounded time and keeps it while the truth lasts:
// - a plane down for down_after + 2 probe intervals + STABLE_LATENCY_MS is
//   Unreachable;
// - a plane up for up_after + 2 probe intervals + STABLE_LATENCY_MS is
//   Healthy; for a plane that was down or cut off when the network healed,
//   counted from the heal plus one election timeout (a leader may only be
//   elected then);
// - nothing is frozen from 2 probe intervals + STABLE_LATENCY_MS + one
//   election timeout after the heal.
// STABLE_LATENCY_MS = 3 ticks: a report's delivery (<= 60 ms, delivered at
// the next tick), the evaluation's granularity (one tick) and the commit of
// the leader's entry (the next tick). The two probe intervals cover the
// probe phase (the first failed, or successful, probe comes up to one
// interval after the change) and, for down, the failure threshold; the dwell
// itself is counted from the first failed probe of the run.

mod sim;

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicU64, Ordering};

use sim::{
    for_each_seed, secs, Layout, Params, Sim, ELECTION_TIMEOUT_MS, PROBE_INTERVAL_MS,
    STABLE_LATENCY_MS,
};
use tern_core::RegionState;

const FILE: &str = "sim_converges";

/// The worst time, beyond the dwell, a stable-phase change took to be
/// committed (for the log: how much of the bound is used).
static WORST_DOWN: AtomicU64 = AtomicU64::new(0);
static WORST_UP: AtomicU64 = AtomicU64::new(0);

fn check(layout: Layout, seed: u64) -> Result<u64, String> {
    let mut s = Sim::new(Params::new(layout, seed));
    let h = s.p.health;
    let bound_down = h.down_after_ms + 2 * PROBE_INTERVAL_MS + STABLE_LATENCY_MS;
    let bound_up = h.up_after_ms + 2 * PROBE_INTERVAL_MS + STABLE_LATENCY_MS;
    let heal = s.heal_at();
    let unfrozen_by = heal + 2 * PROBE_INTERVAL_MS + STABLE_LATENCY_MS + ELECTION_TIMEOUT_MS;
    let mut outages = BTreeSet::new();
    let mut recoveries = BTreeSet::new();
    let mut seen = BTreeSet::new();
    s.run(|s: &Sim| {
        let t = s.now();
        if t < heal {
            return Ok(());
        }
        if t >= unfrozen_by && s.state().frozen() {
            return Err(s.failure(FILE, "still frozen after the network became stable"));
        }
        for r in 0..s.regions() {
            let changed = s.plane_changed_at(r);
            let state = s.committed(r);
            if changed > heal {
                let (reached, dwell, worst) = if s.plane_up(r) {
                    (state == RegionState::Healthy, h.up_after_ms, &WORST_UP)
                } else {
                    (state == RegionState::Unreachable, h.down_after_ms, &WORST_DOWN)
                };
                if reached && seen.insert((r, changed)) {
                    worst.fetch_max((t - changed).saturating_sub(dwell), Ordering::Relaxed);
                }
            }
            if s.plane_up(r) {
                let (since, bound) = if changed <= heal {
                    (heal, bound_up + ELECTION_TIMEOUT_MS)
                } else {
                    (changed, bound_up)
                };
                if t >= since + bound {
                    recoveries.insert((r, since));
                    if state != RegionState::Healthy {
                        return Err(s.failure(
                            FILE,
                            &format!(
                                "{}'s plane is up since {}, {} ms ago (bound {bound} ms), but {} is {}",
                                s.name(r),
                                secs(since),
                                t - since,
                                s.name(r),
                                state.as_str()
                            ),
                        ));
                    }
                }
            } else if t >= changed + bound_down {
                outages.insert((r, changed));
                if state != RegionState::Unreachable {
                    return Err(s.failure(
                        FILE,
                        &format!(
                            "{}'s plane is down since {}, {} ms ago (bound {bound_down} ms), but {} is {}",
                            s.name(r),
                            secs(changed),
                            t - changed,
                            s.name(r),
                            state.as_str()
                        ),
                    ));
                }
            }
        }
        Ok(())
    })?;
    if recoveries.is_empty() {
        return Err(s.failure(FILE, "no recovery was checked"));
    }
    Ok(outages.len() as u64)
}

fn run(layout: Layout) {
    let n = for_each_seed(FILE, layout, |seed| check(layout, seed));
    assert!(
        n > 0,
        "{layout}: no stable-phase outage lasted long enough to be checked"
    );
    eprintln!(
        "{layout}: {n} stable-phase outages reached Unreachable in time; worst beyond the \
         dwell so far: down {} ms, up {} ms (bound: {} ms beyond it)",
        WORST_DOWN.load(Ordering::Relaxed),
        WORST_UP.load(Ordering::Relaxed),
        2 * PROBE_INTERVAL_MS + STABLE_LATENCY_MS
    );
}

#[test]
fn converges_3_regions() {
    run(Layout::Regions(3));
}

#[test]
fn converges_5_regions() {
    run(Layout::Regions(5));
}

#[test]
fn converges_2_regions_and_witness() {
    run(Layout::TwoWithWitness);
}
