//! Multi-process tests of the Raft group: real `tern serve` processes on
//! 127.0.0.x with real mTLS and SQLite, driven through the `tern` CLI.

mod support;

use std::time::{Duration, Instant};

use support::{leader_and_voters, Admin, Node, NodeSpec, Pki};
use tern_tests::{wait_until, Check, Harness};

/// Starts node 1 (initializing alone), then nodes 2 and 3, which the
/// administrator adds as members (learner, catch up, voter). Node 3 is a
/// witness when `witness` is set. `extra` is appended to every `[raft]`.
fn start_three(
    h: &Harness,
    pki: &Pki,
    admin: &Admin,
    witness: bool,
    extra: &str,
) -> anyhow::Result<Vec<Node>> {
    let mut n1 = Node::new(h, pki, 1, "eu")?;
    let mut n2 = Node::new(h, pki, 2, "us")?;
    let mut n3 = Node::new(h, pki, 3, if witness { "witness" } else { "ap" })?;
    n1.start(
        h,
        pki,
        &NodeSpec {
            initialize: true,
            extra,
            ..NodeSpec::new(1, "eu")
        },
    )?;
    let addr1 = n1.grpc();
    wait_until(
        "node 1 to lead its one-node cluster",
        Duration::from_secs(20),
        Duration::from_millis(100),
        || match admin.status(&addr1) {
            Ok(s) => Check::ready_or(leader_and_voters(&s).0.filter(|l| l == "eu"), s),
            Err(e) => Check::pending(e),
        },
    )?;
    for n in [&mut n2, &mut n3] {
        let (id, region) = (n.node_id, n.region.clone());
        let role = if region == "witness" {
            "witness"
        } else {
            "region"
        };
        let spec = NodeSpec {
            bootstrap: vec![(&n1, addr1.clone())],
            extra,
            role,
            ..NodeSpec::new(id, &region)
        };
        n.start(h, pki, &spec)?;
    }
    admin.add_member(&addr1, &n2, "region")?;
    admin.add_member(&addr1, &n3, if witness { "witness" } else { "region" })?;
    Ok(vec![n1, n2, n3])
}

fn wait_leader(
    admin: &Admin,
    nodes: &[&Node],
    voters: usize,
    within: Duration,
) -> anyhow::Result<String> {
    wait_until(
        "a leader and all voters",
        within,
        Duration::from_millis(100),
        || {
            let mut seen = Vec::new();
            for n in nodes {
                match admin.status(&n.grpc()) {
                    Ok(s) => {
                        let (l, v) = leader_and_voters(&s);
                        if let (Some(l), true) = (l.clone(), v == voters) {
                            return Check::Ready(l);
                        }
                        seen.push(format!("{}: leader {l:?} voters {v}", n.region));
                    }
                    Err(e) => seen.push(format!("{}: {e}", n.region)),
                }
            }
            Check::pending(seen.join("; "))
        },
    )
}

// Property: three coordinators (two regions and a witness) elect a leader; after SIGKILL of the leader a
// new leader is elected within 10 s and every acknowledged write is still
// there; the killed node restarted on its data directory rejoins and catches
// up; after SIGKILL of all three and a restart, the state is intact.
#[test]
fn leader_kill_restart_and_full_restart_keep_acknowledged_writes() {
    let h = Harness::new("leader_kill_restart_and_full_restart_keep_acknowledged_writes");
    let outcome = (|| -> anyhow::Result<()> {
        let pki = Pki::new(&h)?;
        pki.admin("ops", &[])?;
        let admin = Admin::new(&pki, "ops");
        let mut nodes = start_three(&h, &pki, &admin, true, "")?;
        let refs: Vec<&Node> = nodes.iter().collect();
        let leader = wait_leader(&admin, &refs, 3, Duration::from_secs(30))?;
        eprintln!("leader: {leader}");
        let st = admin.status(&nodes[0].grpc())?;
        let roles: Vec<(String, String)> = st["members"]
            .as_array()
            .map(|a| {
                a.iter()
                    .map(|m| {
                        (
                            m["region"].as_str().unwrap_or("").into(),
                            m["role"].as_str().unwrap_or("").into(),
                        )
                    })
                    .collect()
            })
            .unwrap_or_default();
        assert!(
            roles.contains(&("witness".into(), "witness".into())),
            "node 3 must be a witness voter: {roles:?}"
        );

        // Acknowledged writes, sent to every node in turn (followers forward).
        let mut acked = Vec::new();
        for i in 0..15 {
            let n = &nodes[i % 3];
            let key = format!("k{i:02}");
            admin.put_note(&n.grpc(), &key, &format!("v{i}"))?;
            acked.push((key, format!("v{i}")));
        }

        // SIGKILL the leader; a new one within 10 s.
        let li = nodes
            .iter()
            .position(|n| n.region == leader)
            .expect("leader is a node");
        nodes[li].process().kill();
        let killed_at = Instant::now();
        let survivors: Vec<&Node> = nodes
            .iter()
            .enumerate()
            .filter(|(i, _)| *i != li)
            .map(|(_, n)| n)
            .collect();
        let new_leader = wait_until(
            "a new leader among the survivors",
            Duration::from_secs(10),
            Duration::from_millis(50),
            || {
                let mut seen = Vec::new();
                for n in &survivors {
                    match admin.status(&n.grpc()) {
                        Ok(s) => match leader_and_voters(&s).0 {
                            Some(l) if l != leader => return Check::Ready(l),
                            l => seen.push(format!("{}: {l:?}", n.region)),
                        },
                        Err(e) => seen.push(format!("{}: {e}", n.region)),
                    }
                }
                Check::pending(seen.join("; "))
            },
        )?;
        eprintln!("new leader {new_leader} after {:?}", killed_at.elapsed());
        let some_survivor = survivors[0].grpc();
        let notes = admin.notes(&some_survivor)?;
        for kv in &acked {
            assert!(
                notes.contains(kv),
                "acknowledged write {kv:?} lost after leader kill; have {notes:?}"
            );
        }
        // More writes while the old leader is down.
        for i in 15..20 {
            admin.put_note(&some_survivor, &format!("k{i:02}"), &format!("v{i}"))?;
            acked.push((format!("k{i:02}"), format!("v{i}")));
        }

        // Restart the killed node: it rejoins and catches up (its own
        // state, read locally, has every write).
        nodes[li].restart()?;
        let back = nodes[li].grpc();
        wait_until(
            "the restarted node to catch up",
            Duration::from_secs(30),
            Duration::from_millis(100),
            || match admin.notes(&back) {
                Ok(n) => Check::ready_or(
                    acked.iter().all(|kv| n.contains(kv)).then_some(()),
                    format!("{} notes", n.len()),
                ),
                Err(e) => Check::pending(e),
            },
        )?;

        // SIGKILL all, restart all: the state is intact.
        for n in &nodes {
            n.process().kill();
        }
        for n in nodes.iter_mut() {
            n.restart()?;
        }
        let refs: Vec<&Node> = nodes.iter().collect();
        wait_leader(&admin, &refs, 3, Duration::from_secs(30))?;
        for n in &nodes {
            let addr = n.grpc();
            wait_until(
                "every write after the full restart",
                Duration::from_secs(20),
                Duration::from_millis(100),
                || match admin.notes(&addr) {
                    Ok(x) => Check::ready_or(
                        acked.iter().all(|kv| x.contains(kv)).then_some(()),
                        format!("{} notes", x.len()),
                    ),
                    Err(e) => Check::pending(e),
                },
            )?;
        }
        Ok(())
    })();
    h.conclude(outcome).expect("test failed");
}

// Property: a member that fell behind a purged log catches up from a
// snapshot (the leader's purged index passes the member's applied index
// while it is down, so log replay alone cannot bring it back), and a removed
// member leaves both Raft's membership and the member table (unpinned).
#[test]
fn lagging_member_catches_up_from_snapshot_and_removal_unpins() {
    let h = Harness::new("lagging_member_catches_up_from_snapshot_and_removal_unpins");
    let outcome = (|| -> anyhow::Result<()> {
        let pki = Pki::new(&h)?;
        pki.admin("ops", &[])?;
        let admin = Admin::new(&pki, "ops");
        let mut nodes = start_three(
            &h,
            &pki,
            &admin,
            false,
            "snapshot_every_logs = 10\nlogs_kept_after_snapshot = 2\n",
        )?;
        let refs: Vec<&Node> = nodes.iter().collect();
        let leader = wait_leader(&admin, &refs, 3, Duration::from_secs(30))?;
        let li = nodes
            .iter()
            .position(|n| n.region == leader)
            .expect("leader is a node");
        let lag = (li + 1) % 3;
        let lag_applied = admin.status(&nodes[lag].grpc())?["applied_index"]
            .as_u64()
            .unwrap_or(0);
        nodes[lag].process().kill();

        let leader_addr = nodes[li].grpc();
        let mut acked = Vec::new();
        for i in 0..40 {
            admin.put_note(&leader_addr, &format!("s{i:02}"), "x")?;
            acked.push((format!("s{i:02}"), "x".to_string()));
        }
        let purged = wait_until(
            "the leader to purge past the lagging member",
            Duration::from_secs(30),
            Duration::from_millis(100),
            || match admin.status(&leader_addr) {
                Ok(s) => {
                    let p = s["purged_index"].as_u64().unwrap_or(0);
                    Check::ready_or(
                        (p > lag_applied).then_some(p),
                        format!("purged {p}, member applied {lag_applied}"),
                    )
                }
                Err(e) => Check::pending(e),
            },
        )?;
        eprintln!("leader purged up to {purged}; the lagging member had applied {lag_applied}");

        nodes[lag].restart()?;
        let lag_addr = nodes[lag].grpc();
        wait_until(
            "the lagging member to catch up",
            Duration::from_secs(30),
            Duration::from_millis(100),
            || match admin.notes(&lag_addr) {
                Ok(n) => Check::ready_or(
                    acked.iter().all(|kv| n.contains(kv)).then_some(()),
                    format!("{} notes", n.len()),
                ),
                Err(e) => Check::pending(e),
            },
        )?;
        let st = admin.status(&lag_addr)?;
        assert!(
            st["snapshot_index"].as_u64().unwrap_or(0) > lag_applied,
            "the member must hold a snapshot past its old applied index: {st}"
        );

        // Remove it: two voters, two members, and its pin is gone.
        let removed = nodes[lag].node_id;
        admin.remove_member(&leader_addr, removed)?;
        let st = admin.status(&leader_addr)?;
        let ids: Vec<u64> = st["members"]
            .as_array()
            .map(|a| a.iter().filter_map(|m| m["node_id"].as_u64()).collect())
            .unwrap_or_default();
        assert!(
            !ids.contains(&removed),
            "removed node {removed} still listed: {st}"
        );
        assert_eq!(leader_and_voters(&st).1, 2, "two voters remain: {st}");
        // Writes still commit with the two remaining voters.
        admin.put_note(&leader_addr, "after-removal", "ok")?;
        Ok(())
    })();
    h.conclude(outcome).expect("test failed");
}
