//! Simulation invariant: no region is declared Unreachable by a minority.

// Property: every RegionTransition into Unreachable, committed or merely
// proposed (by the leader, or by a deposed leader that has not noticed yet),
// is justified by the simulator's ground truth: a majority of the region's
// observers (every voter but the region's own coordinator; the witness
// included) really had its plane unreachable (one continuous run of failed
// probes, by the plane's status and the link's cuts, drops and delays) that
// began at least down_after before the decision (from Suspect) and was still
// going within the report freshness bound. From Recovering (the agents are
// still at their standby) a current majority run is enough. A committed
// Suspect -> Unreachable was also not decided while frozen, and its audited
// observations show that majority with runs covering down_after in the
// deciding leader's own time. No minority, no stale or isolated leader's
// view, no clock skew can produce one.

mod sim;

use sim::{brief, for_each_seed, secs, Layout, Params, Sim};
use tern_core::{Command, Outcome, RegionState};

const FILE: &str = "sim_no_minority_decision";

fn check(layout: Layout, seed: u64) -> Result<u64, String> {
    let mut s = Sim::new(Params::new(layout, seed));
    s.run(|_| Ok(()))?;
    let down_after = s.p.health.down_after_ms;
    let mut checked = 0;
    for p in s.proposals() {
        let Command::RegionTransition {
            region,
            from,
            to: RegionState::Unreachable,
            ..
        } = &p.command
        else {
            continue;
        };
        let r = s.region_index(region);
        let need = if *from == RegionState::Suspect {
            down_after
        } else {
            0
        };
        let observers = s.observers(r);
        let k = observers.len() / 2 + 1;
        let really: Vec<_> = observers
            .iter()
            .copied()
            .filter(|o| s.really_down(*o, r, p.t, need))
            .collect();
        if really.len() < k {
            return Err(s.failure(
                FILE,
                &format!(
                    "{} proposed at {} by node {} (term {}{}): only observers {really:?} of \
                     {observers:?} really had the plane unreachable for {need} ms",
                    brief(&p.command),
                    secs(p.t),
                    p.proposer,
                    p.term,
                    if p.stale { ", stale leader" } else { "" },
                ),
            ));
        }
        checked += 1;
    }
    for a in s.applied() {
        let Command::RegionTransition {
            region,
            from,
            to: RegionState::Unreachable,
            observations,
        } = &a.command
        else {
            continue;
        };
        if !matches!(a.outcome, Outcome::Applied { .. }) {
            continue;
        }
        let r = s.region_index(region);
        let observers = s.observers(r);
        let k = observers.len() / 2 + 1;
        let what = format!(
            "committed {} (entry {}, node {}, term {})",
            brief(&a.command),
            a.log_index,
            a.proposer,
            a.term
        );
        if *from == RegionState::Suspect && a.frozen_before {
            return Err(s.failure(FILE, &format!("{what} while frozen")));
        }
        let need = if *from == RegionState::Suspect {
            down_after
        } else {
            0
        };
        let backing = observations
            .iter()
            .filter(|o| {
                !o.up && observers.contains(&o.observer) && a.at.saturating_since(o.since) >= need
            })
            .count();
        if backing < k {
            return Err(s.failure(
                FILE,
                &format!(
                    "{what}: its observations show only {backing} of {k} needed: {observations:?}"
                ),
            ));
        }
    }
    Ok(checked)
}

fn run(layout: Layout) {
    let n = for_each_seed(FILE, layout, |seed| check(layout, seed));
    assert!(
        n > 0,
        "{layout}: no Unreachable was ever proposed: the simulation proved nothing"
    );
    eprintln!("{layout}: {n} Unreachable proposals checked against ground truth");
}

#[test]
fn no_minority_decision_3_regions() {
    run(Layout::Regions(3));
}

#[test]
fn no_minority_decision_5_regions() {
    run(Layout::Regions(5));
}

#[test]
fn no_minority_decision_2_regions_and_witness() {
    run(Layout::TwoWithWitness);
}
