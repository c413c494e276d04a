//! Property tests of rotation scheduling: when a rotation falls due, when it
//! may start, when an expiry alert is raised. Failures are shrunk, printed
//! and their seeds kept by proptest (in
//! `rotation_schedule.proptest-regressions` beside this file).

use std::collections::BTreeSet;

use proptest::prelude::*;
use tern_core::{
    expiry_alert, may_start, rotation_due_at, Blockers, Millis, RegionName, WhyNot, DUE_BY_PERCENT,
    DUE_FROM_PERCENT, EXPIRY_ALERT_MS,
};

fn blockers() -> impl Strategy<Value = Blockers> {
    (
        proptest::collection::btree_set(proptest::sample::select(vec!["eu", "us", "ap"]), 0..3),
        any::<bool>(),
        any::<bool>(),
        any::<bool>(),
        any::<bool>(),
    )
        .prop_map(
            |(unreachable, handover, handback, running, paused)| Blockers {
                unreachable: unreachable
                    .into_iter()
                    .map(|r| r.parse::<RegionName>().expect("region"))
                    .collect::<BTreeSet<_>>(),
                handover_in_progress: handover,
                handback_in_progress: handback,
                rotation_running: running,
                paused,
            },
        )
}

proptest! {
    // Property: for any certificate lifetime of at least 5 ms and any
    // jitter, the due time lies within [70 %, 90 %] of the lifetime, counted
    // from not_before; for any lifetime at all it lies within the validity
    // and never after 90 %.
    #[test]
    fn due_time_lies_in_70_to_90_percent_of_the_lifetime(
        not_before in 0u64..=u64::MAX / 2,
        life in prop_oneof![0u64..1_000, 0u64..=u64::MAX / 2],
        jitter in any::<u64>(),
    ) {
        let not_after = Millis(not_before + life);
        let due = rotation_due_at(Millis(not_before), not_after, jitter);
        prop_assert!(due.0 >= not_before && due <= not_after);
        let offset = u128::from(due.0 - not_before);
        let life = u128::from(life);
        prop_assert!(offset * 100 <= life * u128::from(DUE_BY_PERCENT), "after 90 %");
        if life >= 5 {
            prop_assert!(offset * 100 >= life * u128::from(DUE_FROM_PERCENT), "before 70 %");
        }
    }

    // Property: the due time grows with the jitter (so the jitter spreads
    // rotations over the window rather than folding it).
    #[test]
    fn due_time_is_monotonic_in_the_jitter(
        life in 5u64..=u64::MAX / 2,
        a in any::<u64>(),
        b in any::<u64>(),
    ) {
        let (lo, hi) = (a.min(b), a.max(b));
        prop_assert!(
            rotation_due_at(Millis(0), Millis(life), lo)
                <= rotation_due_at(Millis(0), Millis(life), hi)
        );
    }

    // Property: an automatic rotation starts exactly when it is due and
    // nothing blocks it; whenever a rotation of the pin runs, automation is
    // paused, a region is Unreachable, or a handover or hand-back is in
    // progress, it is refused with a reason naming one of those.
    #[test]
    fn may_start_only_when_due_and_unblocked(
        now in 0u64..1_000,
        due in 0u64..1_000,
        b in blockers(),
    ) {
        let r = may_start(Millis(now), Millis(due), &b);
        let blocked = b.rotation_running
            || b.paused
            || !b.unreachable.is_empty()
            || b.handover_in_progress
            || b.handback_in_progress;
        prop_assert_eq!(r.is_ok(), now >= due && !blocked);
        match r {
            Ok(()) => {}
            Err(WhyNot::NotDue { due_at }) => prop_assert!(now < due && due_at == Millis(due)),
            Err(WhyNot::RotationRunning) => prop_assert!(b.rotation_running),
            Err(WhyNot::Paused) => prop_assert!(b.paused),
            Err(WhyNot::RegionUnreachable { regions }) => {
                prop_assert_eq!(regions, b.unreachable.iter().cloned().collect::<Vec<_>>())
            }
            Err(WhyNot::HandoverInProgress) => prop_assert!(b.handover_in_progress),
            Err(WhyNot::HandbackInProgress) => prop_assert!(b.handback_in_progress),
        }
    }

    // Property: the expiry alert is raised exactly when no rotation runs and
    // the certificate expires within 14 days (or has expired).
    #[test]
    fn expiry_alert_within_14_days_without_rotation(
        now in 0u64..=u64::MAX / 2,
        ahead in 0u64..=(3 * EXPIRY_ALERT_MS),
        expired in any::<bool>(),
        running in any::<bool>(),
    ) {
        let not_after = if expired {
            Millis(now.saturating_sub(ahead))
        } else {
            Millis(now + ahead)
        };
        let within = expired || ahead <= EXPIRY_ALERT_MS;
        prop_assert_eq!(
            expiry_alert(Millis(now), not_after, running),
            within && !running
        );
    }
}
