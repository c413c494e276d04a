//! Simulation invariant: one decision per epoch, on every replica.

// Property: the epoch totally orders decisions. Along the committed log every
// applied command moves the epoch up by exactly one and a refused one (a
// stale `from`, a duplicate freeze) leaves it unchanged, so epochs strictly
// increase and no epoch is ever attached to two different decisions. Every
// coordinator's replica, applying the same log later, from its own snapshot
// after a crash (replaying the entries after it), agrees with that mapping
// entry by entry; a region's record carries the epoch of the transition that
// set it; and once the network is stable every replica holds exactly the
// shared state.

mod sim;

use std::collections::BTreeMap;

use sim::{for_each_seed, Layout, Params, Sim};
use tern_core::{Command, Outcome};

const FILE: &str = "sim_one_decision_per_epoch";

fn check(layout: Layout, seed: u64) -> Result<u64, String> {
    let mut s = Sim::new(Params::new(layout, seed));
    s.run(|_| Ok(()))?;
    let fail = |s: &Sim, what: String| Err(s.failure(FILE, &what));

    // The shared state, in log order.
    let mut by_epoch: BTreeMap<u64, (u64, String)> = BTreeMap::new();
    let mut epoch = 0;
    let mut decisions = 0;
    for a in s.applied() {
        let json = serde_json::to_string(&a.command).expect("serializes");
        match &a.outcome {
            Outcome::Applied {
                epoch: e,
                log_index,
            } => {
                if *e != epoch + 1 || *log_index != a.log_index {
                    return fail(&s, format!("entry {}: epoch {epoch} -> {e}", a.log_index));
                }
                epoch = *e;
                if let Some(prev) = by_epoch.insert(*e, (a.log_index, json.clone())) {
                    return fail(&s, format!("epoch {e} decided twice: {prev:?} and {json}"));
                }
                if matches!(
                    a.command,
                    Command::RegionTransition { .. } | Command::SetFrozen { .. }
                ) {
                    decisions += 1;
                }
            }
            Outcome::Rejected { .. } => {}
            Outcome::Duplicate { .. } => {
                return fail(&s, format!("entry {}: unexpected duplicate", a.log_index));
            }
        }
    }
    if s.state().epoch() != epoch {
        return fail(&s, format!("state epoch {} != {epoch}", s.state().epoch()));
    }
    for (region, rec) in s.state().region_records() {
        let ok = by_epoch.get(&rec.epoch).is_some_and(|(_, json)| {
            match serde_json::from_str::<Command>(json) {
                Ok(Command::RegionTransition { region: r, to, .. }) => {
                    &r == region && to == rec.state
                }
                _ => false,
            }
        });
        if !ok {
            return fail(
                &s,
                format!("{region}'s record {rec:?} is not its transition's epoch"),
            );
        }
    }

    // Every replica.
    if let Some(m) = s.replica_mismatches().first() {
        return fail(&s, m.clone());
    }
    for node in 0..s.node_ids().len() {
        for (index, entry) in s.replica_log(node) {
            for (outcome, json) in entry {
                if let Outcome::Applied { epoch: e, .. } = outcome {
                    if by_epoch.get(e) != Some(&(*index, json.clone())) {
                        return fail(
                            &s,
                            format!(
                                "node {}: epoch {e} at entry {index} is {json}, shared: {:?}",
                                node + 1,
                                by_epoch.get(e)
                            ),
                        );
                    }
                }
            }
        }
        // Epochs strictly increase within each stretch of application (a
        // restart from a snapshot starts a new stretch, replaying).
        let mut last: Option<(u64, u64)> = None;
        for (index, e) in s.replica_epochs(node) {
            if let Some((li, le)) = last {
                if *index > li && *e <= le {
                    return fail(&s, format!("node {}: epoch {le} then {e}", node + 1));
                }
            }
            last = Some((*index, *e));
        }
        let (replica, applied) = s.replica(node);
        if !s.alive(node) || applied != s.log_len() || replica != s.state() {
            return fail(
                &s,
                format!(
                    "node {} has not converged to the shared state (applied {applied} of {})",
                    node + 1,
                    s.log_len()
                ),
            );
        }
    }
    Ok(decisions)
}

fn run(layout: Layout) {
    let n = for_each_seed(FILE, layout, |seed| check(layout, seed));
    assert!(n > 0, "{layout}: no decision was ever committed");
    eprintln!("{layout}: {n} committed decisions checked");
}

#[test]
fn one_decision_per_epoch_3_regions() {
    run(Layout::Regions(3));
}

#[test]
fn one_decision_per_epoch_5_regions() {
    run(Layout::Regions(5));
}

#[test]
fn one_decision_per_epoch_2_regions_and_witness() {
    run(Layout::TwoWithWitness);
}
