//! Multi-process tests of region health: three regions, each a reference
//! stand-in (the region's control plane) and a `tern serve` coordinator,
//! with a TCP relay on every coordinator→coordinator and
//! coordinator→control-plane link (see `support/federation.rs`). Faults are
//! injected at the stand-ins (mode down/up, SIGKILL), on the relays (cuts,
//! one-way), and on the coordinators (SIGKILL, SIGSTOP). Decisions are read
//! back from `tern regions` and the audit trail (`tern audit`).
//!
//! Probe interval 1 s and `down_after` 10 s (the defaults) throughout;
//! tests that await a recovery shorten `up_after` and say so.

mod support;

use std::time::{Duration, Instant};

use rand::Rng;
use support::federation::{
    describe, failovers, now_ms, transitions, Federation, FederationConfig, Transition,
};
use tern_tests::{wait_until, Check, Harness};

/// Generous bound for waits that should take seconds (a loaded 2-core
/// machine, other test processes in parallel).
const SETTLE: Duration = Duration::from_secs(90);

fn run(name: &str, body: impl FnOnce(&Harness) -> anyhow::Result<()>) {
    Harness::run("region_health", name, body)
}

/// The window a fault is held for in the "no false failover" tests:
/// down_after + 5 s.
fn fault_window(fed: &Federation) -> Duration {
    Duration::from_millis(fed.config.down_after_ms + 5_000)
}

/// A region index drawn from the seed, different from every index in `not`.
fn pick(h: &Harness, purpose: &str, n: usize, not: &[usize]) -> usize {
    let mut rng = h.seed().rng_for(purpose);
    let choices: Vec<usize> = (0..n).filter(|i| !not.contains(i)).collect();
    choices[rng.random_range(0..choices.len())]
}

/// Fails if the audit trail (the union over every live coordinator) holds
/// any transition to unreachable.
fn assert_no_failover(fed: &Federation, what: &str) -> anyhow::Result<()> {
    let audit = fed.audit_all()?;
    let bad = failovers(&audit);
    let all: Vec<String> = transitions(&audit).iter().map(|t| t.to_string()).collect();
    eprintln!(
        "[region_health] {what}: region transitions in the audit trail: [{}]",
        all.join("; ")
    );
    anyhow::ensure!(
        bad.is_empty(),
        "{what}: false failover(s) in the audit trail: {:?}",
        bad.iter().map(|t| t.to_string()).collect::<Vec<_>>()
    );
    Ok(())
}

/// Fails unless every region is committed healthy in the answer of a
/// coordinator in contact with the majority.
fn assert_all_healthy(fed: &Federation, what: &str) -> anyhow::Result<()> {
    let regions = fed.regions()?;
    anyhow::ensure!(
        regions.len() == fed.len() && regions.iter().all(|r| r.state == "healthy"),
        "{what}: not every region is healthy: {}",
        describe(&regions)
    );
    Ok(())
}

/// Each live coordinator's idea of the leader and term, for the log.
fn leaders(fed: &Federation) -> String {
    (0..fed.len())
        .filter(|i| fed.is_live(*i))
        .map(|i| match fed.status_from(i) {
            Ok(s) => format!(
                "{} says leader {} term {}",
                fed.region(i),
                s["leader"].as_str().unwrap_or("none"),
                s["term"]
            ),
            Err(e) => format!("{}: {e:#}", fed.region(i)),
        })
        .collect::<Vec<_>>()
        .join(", ")
}

/// Ready once the leader `from` has had no successful Raft RPC to
/// coordinator `to` for over 2 s (8 heartbeats), by its own status, or once
/// `from` no longer leads (Raft noticed the fault either way).
fn raft_contact_lost(fed: &Federation, from: usize, to: usize) -> anyhow::Result<Check<String>> {
    let s = fed.status_from(from)?;
    if s["leader_id"].as_u64() != Some(from as u64 + 1) {
        return Ok(Check::Ready(format!(
            "{} no longer leads (leader {}, term {})",
            fed.region(from),
            s["leader"],
            s["term"]
        )));
    }
    let member = s["members"]
        .as_array()
        .and_then(|m| m.iter().find(|m| m["node_id"] == to as u64 + 1).cloned())
        .unwrap_or_default();
    let last = member["last_contact_ms"].as_i64();
    let what = format!(
        "leader {} last reached {} by Raft {last:?} ms ago",
        fed.region(from),
        fed.region(to)
    );
    Ok(Check::ready_or(
        last.is_none_or(|ms| ms > 2_000).then(|| what.clone()),
        what,
    ))
}

/// Ready once the leader's live view counts coordinator `observer` as
/// silent (its reports no longer arrive).
fn reports_lost(fed: &Federation, observer: usize) -> anyhow::Result<Check<String>> {
    let regions = fed.regions()?;
    let silent = regions.iter().all(|r| r.computed.is_some())
        && regions
            .iter()
            .flat_map(|r| r.observers.iter())
            .filter(|o| o.observer == observer as u64 + 1)
            .all(|o| o.sees == "silent")
        && regions
            .iter()
            .flat_map(|r| r.observers.iter())
            .any(|o| o.observer == observer as u64 + 1);
    Ok(Check::ready_or(
        silent.then(|| describe(&regions)),
        describe(&regions),
    ))
}

/// Measures one outage: `fault` is applied right after `t0` is read;
/// returns the committed transition to unreachable and the detection time
/// (its leader-stamped `at_ms` minus `t0`, both this machine's wall clock).
fn measure_outage(
    fed: &Federation,
    j: usize,
    fault: impl FnOnce() -> anyhow::Result<()>,
) -> anyhow::Result<(Transition, u64)> {
    let t0 = now_ms();
    fault()?;
    let t = fed.wait_transition(j, "unreachable", t0, SETTLE)?;
    Ok((t.clone(), t.at_ms.saturating_sub(t0)))
}

/// Checks that no region but `j` changed state since `since_ms` and that
/// they are all committed healthy now.
fn others_stay_healthy(fed: &Federation, j: usize, since_ms: u64) -> anyhow::Result<()> {
    let audit = fed.audit_all()?;
    let others: Vec<String> = transitions(&audit)
        .into_iter()
        .filter(|t| t.at_ms >= since_ms && t.region != fed.region(j))
        .map(|t| t.to_string())
        .collect();
    anyhow::ensure!(
        others.is_empty(),
        "other regions changed state during the outage of {}: {others:?}",
        fed.region(j)
    );
    let regions = fed.regions()?;
    for r in regions.iter().filter(|r| r.region != fed.region(j)) {
        anyhow::ensure!(
            r.state == "healthy",
            "region {} is {} during the outage of {}: {}",
            r.region,
            r.state,
            fed.region(j),
            describe(&regions)
        );
    }
    Ok(())
}

// Property: when one region's control plane stops answering (stand-in mode
// `down`), the leader commits `unreachable` for it within down_after + 3 s
// of the stop (the audit record's leader-stamped time minus the time just
// before the mode change), while the other regions stay healthy (no
// transition of theirs, committed healthy). When the control plane answers
// again the region goes unreachable -> recovering -> healthy and nothing
// else. The same bound holds when the stand-in process is SIGKILLed
// instead, and the region recovers once the process is restarted on its
// address. up_after is shortened to 5 s because the recoveries are awaited.
#[test]
fn region_down_is_declared_unreachable_within_down_after_plus_3s() {
    run(
        "region_down_is_declared_unreachable_within_down_after_plus_3s",
        |h| {
            let fed = Federation::start(
                h,
                FederationConfig {
                    up_after_ms: Some(5_000),
                    ..FederationConfig::default()
                },
            )?;
            let bound = fed.config.down_after_ms + 3_000;
            let j = pick(h, "down-region", fed.len(), &[]);
            let k = pick(h, "killed-region", fed.len(), &[j]);

            // Outage by mode down.
            let t0 = now_ms();
            let (t, detect) = measure_outage(&fed, j, || fed.plane_down(j))?;
            eprintln!(
                "[region_health] region {} (mode down): unreachable committed {detect} ms after the stop (bound {bound} ms): {t}",
                fed.region(j)
            );
            others_stay_healthy(&fed, j, t0)?;
            anyhow::ensure!(
                detect <= bound,
                "region {} declared unreachable {detect} ms after its control plane stopped; bound down_after + 3 s = {bound} ms",
                fed.region(j)
            );
            fed.plane_up(j)?;
            fed.wait_healthy("the region to recover after mode up", SETTLE)?;
            let seq: Vec<(String, String)> = transitions(&fed.audit()?)
                .into_iter()
                .filter(|t| t.region == fed.region(j) && t.at_ms >= t0)
                .map(|t| (t.from, t.to))
                .collect();
            let want: Vec<(String, String)> = [
                ("healthy", "suspect"),
                ("suspect", "unreachable"),
                ("unreachable", "recovering"),
                ("recovering", "healthy"),
            ]
            .iter()
            .map(|(a, b)| (a.to_string(), b.to_string()))
            .collect();
            anyhow::ensure!(
                seq == want,
                "region {} went through {seq:?}, expected {want:?}",
                fed.region(j)
            );

            // Outage by SIGKILL of the stand-in process.
            let t1 = now_ms();
            let (t, detect) = measure_outage(&fed, k, || {
                fed.kill_plane(k);
                Ok(())
            })?;
            eprintln!(
                "[region_health] region {} (stand-in SIGKILLed): unreachable committed {detect} ms after the kill (bound {bound} ms): {t}",
                fed.region(k)
            );
            others_stay_healthy(&fed, k, t1)?;
            anyhow::ensure!(
                detect <= bound,
                "region {} declared unreachable {detect} ms after its stand-in was killed; bound {bound} ms",
                fed.region(k)
            );
            fed.restart_plane(k)?;
            fed.wait_healthy("the region to recover after its stand-in restarted", SETTLE)?;
            Ok(())
        },
    );
}

// Property: a coordinator cut off from every other coordinator (both
// directions; its probes of the control planes still pass) causes no
// failover. For down_after + 5 s no region is declared unreachable, the
// audit trail holds no transition to unreachable, and every region is
// committed healthy at the end of the window and after the heal; in
// particular the isolated coordinator's own region, whose control plane
// the other regions still see up, is not failed over because its
// coordinator vanished. The isolated coordinator is the leader at the
// time of the cut (the hardest case: it must lose its say).
#[test]
fn coordinator_cut_off_from_the_others_causes_no_failover() {
    run(
        "coordinator_cut_off_from_the_others_causes_no_failover",
        |h| {
            let fed = Federation::start(h, FederationConfig::default())?;
            let i = fed.leader()?;
            eprintln!(
                "[region_health] isolating the leader's coordinator ({}) from the other coordinators",
                fed.region(i)
            );
            let window = fault_window(&fed);
            let cut_at = Instant::now();
            fed.isolate_from_coordinators(i)?;
            // The cut took effect: the two others elect a leader of their own.
            let others: Vec<usize> = (0..fed.len()).filter(|k| *k != i).collect();
            let new_leader = wait_until(
                "the coordinators cut off from the old leader to elect one of their own",
                window,
                Duration::from_millis(500),
                || -> anyhow::Result<Check<usize>> {
                    let mut seen = Vec::new();
                    for k in &others {
                        let s = fed.status_from(*k)?;
                        match s["leader_id"].as_u64() {
                            Some(id) if id >= 1 && others.contains(&(id as usize - 1)) => {
                                return Ok(Check::Ready(id as usize - 1))
                            }
                            l => seen.push(format!("{} says leader {l:?}", fed.region(*k))),
                        }
                    }
                    Ok(Check::pending(seen.join(", ")))
                },
            )?;
            eprintln!(
                "[region_health] {} leads the majority {:.1}s after the cut",
                fed.region(new_leader),
                cut_at.elapsed().as_secs_f64()
            );
            let seen = fed.watch_no_failover(
                "coordinator isolated",
                window.saturating_sub(cut_at.elapsed()),
            )?;
            eprintln!("[region_health] states seen during the isolation: {seen:?}");
            let regions = fed.regions()?;
            eprintln!(
                "[region_health] at the end of the window: {}; {}",
                describe(&regions),
                leaders(&fed)
            );
            assert_all_healthy(&fed, "at the end of the isolation")?;
            fed.heal_all();
            fed.wait_healthy("the federation after the heal", SETTLE)?;
            assert_no_failover(&fed, "coordinator isolated")?;
            Ok(())
        },
    );
}

// Property: a one-way fault between two coordinators causes no failover:
// (a) the directed link i→j blackholed (i cannot reach j, j still reaches
// i), (b) separately the directed link j→i blackholed, and (c) every byte
// i sends to j dropped (its requests and its answers) while j's bytes to i
// still arrive. Each is held for down_after + 5 s, then healed; no region
// is declared unreachable during any of them, the audit trail holds no
// transition to unreachable, and every region is healthy after each heal.
// In each phase i is the leader at the time and j a peer drawn from the
// seed (the same peer again whenever possible), and the test first sees
// the fault take effect (the leader loses Raft contact with j, or j's
// reports stop reaching the leader) so that it cannot pass vacuously.
#[test]
fn one_way_coordinator_link_faults_cause_no_failover() {
    run("one_way_coordinator_link_faults_cause_no_failover", |h| {
        let fed = Federation::start(h, FederationConfig::default())?;
        let mut peer: Option<usize> = None;
        for phase in [
            "leader->peer blackholed",
            "peer->leader blackholed",
            "leader->peer bytes dropped",
        ] {
            let i = fed.wait_leader(SETTLE)?;
            let j = match peer {
                Some(j) if j != i => j,
                _ => pick(h, &format!("one-way-peer {phase}"), fed.len(), &[i]),
            };
            peer = Some(j);
            let (ri, rj) = (fed.region(i), fed.region(j));
            let window = fault_window(&fed);
            let cut_at = Instant::now();
            let (what, seen) = match phase {
                "leader->peer blackholed" => {
                    fed.cut_link(i, j)?;
                    let what = format!("link {ri}->{rj} blackholed ({ri} leads)");
                    let seen = wait_until(
                        &format!("{what} to take effect"),
                        window,
                        Duration::from_millis(500),
                        || raft_contact_lost(&fed, i, j),
                    )?;
                    (what, seen)
                }
                "peer->leader blackholed" => {
                    fed.cut_link(j, i)?;
                    let what = format!("link {rj}->{ri} blackholed ({ri} leads)");
                    let seen = wait_until(
                        &format!("{what} to take effect"),
                        window,
                        Duration::from_millis(500),
                        || reports_lost(&fed, j),
                    )?;
                    (what, seen)
                }
                _ => {
                    fed.drop_bytes(i, j)?;
                    let what = format!("bytes {ri}->{rj} dropped ({ri} leads)");
                    let seen = wait_until(
                        &format!("{what} to take effect"),
                        window,
                        Duration::from_millis(500),
                        || raft_contact_lost(&fed, i, j),
                    )?;
                    (what, seen)
                }
            };
            eprintln!(
                "[region_health] {what}: in effect after {:.1}s: {seen}",
                cut_at.elapsed().as_secs_f64()
            );
            fed.watch_no_failover(&what, window.saturating_sub(cut_at.elapsed()))?;
            fed.heal_all();
            fed.wait_healthy(&format!("the federation after healing {what}"), SETTLE)?;
        }
        assert_no_failover(&fed, "one-way faults")?;
        Ok(())
    });
}

// Property: a coordinator frozen by SIGSTOP for 30 s, while its region's
// control plane stays up, causes no failover of its region (nor of any
// other): no transition to unreachable in the audit trail over the whole
// run. While it is stopped, the (new) leader's live view says its region's
// coordinator is not reporting (`coordinator_reporting: false`) while the
// others are; after SIGCONT it reports again and every region is healthy.
// The frozen coordinator is the leader at the time.
#[test]
fn frozen_coordinator_does_not_fail_over_its_region() {
    run("frozen_coordinator_does_not_fail_over_its_region", |h| {
        let fed = Federation::start(h, FederationConfig::default())?;
        let i = fed.leader()?;
        let region = fed.region(i);
        let stop_for = Duration::from_secs(30);
        eprintln!("[region_health] SIGSTOP of the leader's coordinator ({region}) for 30 s");
        let stopped = Instant::now();
        fed.stop(i)?;
        let outcome = (|| -> anyhow::Result<()> {
            let view = wait_until(
                "the leader's live view to report the frozen coordinator, and only it, as not reporting",
                Duration::from_secs(25),
                Duration::from_millis(500),
                || -> anyhow::Result<Check<String>> {
                    // A live view in which the others report and it does not.
                    let regions = fed.regions()?;
                    let live = regions.iter().all(|r| r.computed.is_some());
                    let ok = live
                        && regions.len() == fed.len()
                        && regions
                            .iter()
                            .all(|r| r.coordinator_reporting == (r.region != region));
                    Ok(Check::ready_or(
                        ok.then(|| describe(&regions)),
                        describe(&regions),
                    ))
                },
            )?;
            eprintln!(
                "[region_health] while stopped ({:.1}s in): {view}",
                stopped.elapsed().as_secs_f64()
            );
            let rest = stop_for.saturating_sub(stopped.elapsed());
            let seen = fed.watch_no_failover("coordinator frozen", rest)?;
            eprintln!("[region_health] states seen while frozen: {seen:?}");
            Ok(())
        })();
        // Resume it whatever happened, so the failure report shows a live node.
        fed.cont(i)?;
        outcome?;
        fed.wait_healthy("the federation after SIGCONT", SETTLE)?;
        assert_no_failover(&fed, "coordinator frozen for 30 s")?;
        Ok(())
    });
}

// Property: a control plane flapping 3 s down / 3 s up for a minute does
// not bounce its region: over the minute at most one unreachable ->
// recovering cycle is committed for it (transitions counted in the audit
// trail), no other region fails over, and once it stays up it ends
// healthy. (With down_after 10 s no down period is long enough to declare
// it unreachable at all; the suspect/healthy transitions the flapping
// causes are printed.) The schedule is the test's input, paced by the
// clock; up_after is shortened to 5 s because the final recovery is
// awaited.
#[test]
fn flapping_control_plane_does_not_bounce_its_region() {
    run("flapping_control_plane_does_not_bounce_its_region", |h| {
        let fed = Federation::start(
            h,
            FederationConfig {
                up_after_ms: Some(5_000),
                ..FederationConfig::default()
            },
        )?;
        let j = pick(h, "flapping-region", fed.len(), &[]);
        let region = fed.region(j);
        eprintln!("[region_health] flapping {region}: 10 cycles of 3 s down, 3 s up");
        let t0 = now_ms();
        let switches = fed.flap_plane(j, Duration::from_secs(3), Duration::from_secs(3), 10)?;
        eprintln!(
            "[region_health] {} mode switches done in {:.1}s",
            switches.len(),
            (now_ms() - t0) as f64 / 1000.0
        );
        fed.wait_healthy("the flapping region to settle once up", SETTLE)?;
        let audit = fed.audit_all()?;
        let mine: Vec<Transition> = transitions(&audit)
            .into_iter()
            .filter(|t| t.region == region && t.at_ms >= t0)
            .collect();
        let to_unreachable = mine.iter().filter(|t| t.to == "unreachable").count();
        let cycles = mine
            .iter()
            .filter(|t| t.from == "unreachable" && t.to == "recovering")
            .count();
        eprintln!(
            "[region_health] {region}: {} transitions ({to_unreachable} to unreachable, {cycles} unreachable->recovering): [{}]",
            mine.len(),
            mine.iter()
                .map(|t| format!("{}->{} @+{}ms", t.from, t.to, t.at_ms - t0))
                .collect::<Vec<_>>()
                .join(", ")
        );
        anyhow::ensure!(
            to_unreachable <= 1 && cycles <= 1,
            "region {region} bounced: {to_unreachable} transitions to unreachable, {cycles} unreachable->recovering: {mine:?}"
        );
        let others: Vec<String> = failovers(&audit)
            .into_iter()
            .filter(|t| t.region != region)
            .map(|t| t.to_string())
            .collect();
        anyhow::ensure!(others.is_empty(), "other regions failed over: {others:?}");
        Ok(())
    });
}

// Property: restarting a coordinator (SIGKILL, kept down for down_after +
// 2 s, then restarted on its data directory and addresses) causes no
// failover of any region: its control plane stays up and is judged by the
// other regions, so no transition to unreachable appears in the audit
// trail; the restarted coordinator rejoins as a voter and reports again,
// and every region is healthy. The killed coordinator is the leader at the
// time.
#[test]
fn restarted_coordinator_causes_no_failover() {
    run("restarted_coordinator_causes_no_failover", |h| {
        let fed = Federation::start(h, FederationConfig::default())?;
        let i = fed.leader()?;
        eprintln!(
            "[region_health] SIGKILL of the leader's coordinator ({})",
            fed.region(i)
        );
        fed.kill(i);
        let seen = fed.watch_no_failover(
            "coordinator killed",
            Duration::from_millis(fed.config.down_after_ms + 2_000),
        )?;
        eprintln!("[region_health] states seen while it was down: {seen:?}");
        fed.restart(i)?;
        fed.wait_healthy("the federation after the restart", SETTLE)?;
        assert_no_failover(&fed, "coordinator restarted")?;
        Ok(())
    });
}
