//! Simulation invariant: a freeze holds, and its end restarts the grace
//! timers, whoever leads.

// Property: no region goes Suspect -> Unreachable while the federation is
// frozen, nor before down_after (less clock drift) has passed, in true time,
// since the unfreeze was committed, whoever leads: also when the leader
// changes between the unfreeze and the decision (a new leader cannot know
// when the freeze ended, so it must restart every grace timer itself).

mod sim;

use sim::{brief, drift_tolerance_ms, for_each_seed, secs, Layout, Params, Sim};
use tern_core::{Command, Outcome, RegionState};

const FILE: &str = "sim_grace_after_unfreeze";

/// Returns how many unfreezes were followed by a checked decision.
fn check(layout: Layout, seed: u64) -> Result<u64, String> {
    let mut s = Sim::new(Params::new(layout, seed));
    s.run(|_| Ok(()))?;
    let down_after = s.p.health.down_after_ms;
    let mut last_unfreeze: Option<(u64, u64)> = None;
    let mut checked = 0;
    for a in s.applied() {
        if !matches!(a.outcome, Outcome::Applied { .. }) {
            continue;
        }
        match &a.command {
            Command::SetFrozen { frozen: false, .. } => last_unfreeze = Some((a.commit_t, a.term)),
            Command::RegionTransition {
                from: RegionState::Suspect,
                to: RegionState::Unreachable,
                ..
            } => {
                let what = format!(
                    "{} decided at {} by node {} (term {}, entry {})",
                    brief(&a.command),
                    secs(a.eval_t),
                    a.proposer,
                    a.term,
                    a.log_index
                );
                if a.frozen_before {
                    return Err(s.failure(FILE, &format!("{what} while frozen")));
                }
                if let Some((u, term)) = last_unfreeze {
                    if a.eval_t + drift_tolerance_ms(down_after) < u + down_after {
                        return Err(s.failure(
                            FILE,
                            &format!(
                                "{what}: only {} ms after the unfreeze committed at {} (term {term})",
                                a.eval_t.saturating_sub(u),
                                secs(u)
                            ),
                        ));
                    }
                    checked += 1;
                }
            }
            _ => {}
        }
    }
    Ok(checked)
}

fn run(layout: Layout) {
    let n = for_each_seed(FILE, layout, |seed| check(layout, seed));
    assert!(
        n > 0,
        "{layout}: no Unreachable ever followed an unfreeze: nothing was proved"
    );
    eprintln!("{layout}: {n} Unreachable decisions after an unfreeze checked");
}

#[test]
fn grace_after_unfreeze_3_regions() {
    run(Layout::Regions(3));
}

#[test]
fn grace_after_unfreeze_5_regions() {
    run(Layout::Regions(5));
}
