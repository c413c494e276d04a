//! Property tests of the directive tracker's epoch fencing.

use proptest::prelude::*;
use tern_agent_shim::{ApplyOutcome, Decision, Directive, DirectiveKind, Tracker};

const AGENT: &str = "agent-1";

#[derive(Debug, Clone)]
enum Op {
    /// Offer the directive identified by (epoch, variant, rev);
    /// `other_agent` addresses it to someone else. The content is a
    /// function of (epoch, variant, rev): equal triples are duplicates,
    /// different variants of one epoch conflict (another target), and
    /// different revs of one (epoch, variant) are refreshes (another token
    /// and expiry).
    Offer {
        epoch: u64,
        variant: u8,
        rev: u8,
        other_agent: bool,
    },
    /// Report an outcome for an epoch.
    Applied { epoch: u64, attached: bool },
    /// Ask to retry the current directive.
    Retry,
    /// Let time pass.
    Advance(u64),
    /// Save and load the tracker, as across a restart.
    Restart,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        6 => (0u64..12, 0u8..3, 0u8..2, prop::bool::weighted(0.1)).prop_map(|(epoch, variant, rev, other_agent)| Op::Offer {
            epoch,
            variant,
            rev,
            other_agent
        }),
        2 => (0u64..12, any::<bool>()).prop_map(|(epoch, attached)| Op::Applied { epoch, attached }),
        1 => Just(Op::Retry),
        2 => (0u64..2_000).prop_map(Op::Advance),
        1 => Just(Op::Restart),
    ]
}

fn directive(epoch: u64, variant: u8, rev: u8, other_agent: bool) -> Directive {
    Directive {
        epoch,
        agent_id: if other_agent { "agent-2" } else { AGENT }.to_string(),
        kind: if variant == 2 {
            DirectiveKind::ReturnHome
        } else {
            DirectiveKind::Redirect
        },
        target_region: format!("r{variant}"),
        endpoint: format!("wss://r{variant}.example/v1/opamp"),
        base_url: format!("https://r{variant}.example"),
        token: format!("token-{epoch}-{variant}-{rev}"),
        issued_at_ms: 0,
        // Between 1 s and 10 s: time advances up to 2 s per step, so
        // directives expire along the way.
        expires_at_ms: 1_000 * (1 + (epoch * 7 + u64::from(variant) * 3 + u64::from(rev) * 5) % 10),
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    // Property: over any sequence of offered directives (random epochs,
    // duplicates, refreshed tokens, conflicting targets, other agents,
    // expiry as time passes), outcomes, retries and restarts:
    // - the epochs of Apply decisions never decrease, and an epoch is
    //   handed out again only as a refresh (other content, same target);
    // - no directive older than the newest epoch seen is ever applied (nor
    //   retried), and nothing expired or addressed to another agent is;
    // - an applied directive is exactly the one offered;
    // - Stale names the newest epoch seen; Duplicate, Refreshed and
    //   Conflict happen only at that epoch; Duplicate only for the content
    //   last handed out; Refreshed only for the same kind and target with
    //   other details; Conflict only for another kind or target;
    // - a pending or retried directive is always the newest content handed
    //   out for its epoch (a refresh replaces it);
    // - the fence (newest epoch seen) survives restarts and never decreases.
    #[test]
    fn fencing_holds(ops in prop::collection::vec(op(), 1..80)) {
        let mut tracker = Tracker::new(AGENT);
        let mut now = 0u64;
        // The model: newest epoch of any directive offered for this agent,
        // and its content; the last directive handed out.
        let mut newest: Option<Directive> = None;
        let mut handed_out: Option<Directive> = None;
        let mut last_applied: Option<u64> = None;

        for op in ops {
            match op {
                Op::Offer { epoch, variant, rev, other_agent } => {
                    let d = directive(epoch, variant, rev, other_agent);
                    let newest_before = newest.as_ref().map(|n| n.epoch);
                    let same_decision = newest.as_ref().is_some_and(|n| {
                        n.epoch == epoch && n.kind == d.kind && n.target_region == d.target_region
                    });
                    let decision = tracker.offer(now, d.clone());
                    if other_agent {
                        prop_assert_eq!(decision, Decision::WrongAgent);
                        continue;
                    }
                    match &decision {
                        Decision::Apply(applied) => {
                            prop_assert_eq!(applied, &d);
                            prop_assert!(!d.is_expired(now), "expired directive applied");
                            if let Some(last) = last_applied {
                                prop_assert!(epoch >= last, "applied {} after {}", epoch, last);
                                if epoch == last {
                                    prop_assert!(same_decision, "epoch {} handed out twice", epoch);
                                    prop_assert_ne!(handed_out.as_ref(), Some(&d));
                                }
                            }
                            if let Some(n) = newest_before {
                                prop_assert!(epoch >= n, "applied {} below newest {}", epoch, n);
                            }
                            last_applied = Some(epoch);
                            handed_out = Some(d.clone());
                        }
                        Decision::Stale { newest_seen } => {
                            prop_assert_eq!(Some(*newest_seen), newest_before);
                            prop_assert!(epoch < *newest_seen);
                        }
                        Decision::Duplicate => {
                            prop_assert_eq!(Some(epoch), newest_before);
                            prop_assert_eq!(handed_out.as_ref(), Some(&d));
                        }
                        Decision::Refreshed => {
                            prop_assert_eq!(Some(epoch), newest_before);
                            prop_assert!(same_decision);
                            prop_assert_ne!(newest.as_ref(), Some(&d));
                            prop_assert!(!d.is_expired(now), "expired refresh recorded");
                            if handed_out.as_ref().is_some_and(|h| h.epoch == epoch) {
                                handed_out = Some(d.clone());
                            }
                        }
                        Decision::Conflict => {
                            prop_assert_eq!(Some(epoch), newest_before);
                            prop_assert!(!same_decision);
                        }
                        Decision::Expired => prop_assert!(d.is_expired(now)),
                        Decision::WrongAgent => prop_assert!(false, "WrongAgent for own agent"),
                    }
                    let refreshed = same_decision && !d.is_expired(now);
                    if newest_before.is_none_or(|n| epoch > n) || refreshed {
                        newest = Some(d);
                    }
                }
                Op::Applied { epoch, attached } => {
                    let outcome = if attached {
                        ApplyOutcome::Attached
                    } else {
                        ApplyOutcome::Failed { reason: "hook failed".into() }
                    };
                    tracker.applied(epoch, outcome);
                }
                Op::Retry => {
                    if let Some(d) = tracker.retry(now) {
                        prop_assert_eq!(Some(d.epoch), newest.as_ref().map(|n| n.epoch),
                            "retried a directive older than the newest seen");
                        prop_assert_eq!(Some(&d), handed_out.as_ref());
                        prop_assert!(!d.is_expired(now), "expired directive retried");
                    }
                }
                Op::Advance(ms) => now += ms,
                Op::Restart => {
                    let json = tracker.to_json().expect("to_json");
                    tracker = Tracker::from_json(&json).expect("from_json");
                }
            }
            prop_assert_eq!(tracker.newest_seen(), newest.as_ref().map(|n| n.epoch));
            let state = tracker.state();
            if let (Some(serving), Some(newest)) = (state.serving_epoch, state.newest_seen) {
                prop_assert!(serving <= newest);
            }
            prop_assert!(state.pending().is_none_or(|p| Some(p) == handed_out.as_ref()));
        }
    }
}
