//! Multi-process tests of transport pin rotation: three coordinators
//! (`tern serve`, each with a region stand-in), certificates from the test
//! PKI. A coordinator's certificate files are replaced the way an external
//! issuer (cert-manager, `tern pki node`) would; the coordinators rotate the
//! pin through its phases in the running processes.

mod support;

use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{ensure, Context};
use serde_json::Value;
use support::federation::{run_bounded, run_bounded_any, Federation, FederationConfig};
use support::{read, Admin};
use tern_tests::{wait_until, Check, Harness};

fn run(name: &str, body: impl FnOnce(&Harness) -> anyhow::Result<()>) {
    Harness::run("rotation", name, body)
}

/// Three regions, coordinators dialing each other directly.
fn federation(h: &Harness) -> anyhow::Result<Federation<'_>> {
    Federation::start(
        h,
        FederationConfig {
            relays: false,
            ..FederationConfig::default()
        },
    )
}

fn short(t: &str) -> &str {
    t.get(..12).unwrap_or(t)
}

/// Waits until the newest rotation of `subject`, as coordinator `i` shows
/// it, is in `phase` and waits for nobody.
fn wait_unblocked(
    fed: &Federation,
    i: usize,
    subject: &str,
    phase: &str,
    what: &str,
) -> anyhow::Result<Value> {
    wait_until(
        what,
        Duration::from_secs(60),
        Duration::from_millis(250),
        || match fed.rotation_of(i, subject) {
            Ok(Some(r)) if r["phase"] == phase && r["waiting_for"] == serde_json::json!([]) => {
                Check::Ready(r)
            }
            Ok(r) => Check::pending(format!("{r:?}")),
            Err(e) => Check::pending(format!("{e:#}")),
        },
    )
}

/// Waits until the newest rotation of `subject` is in `phase`.
fn wait_phase(
    fed: &Federation,
    i: usize,
    subject: &str,
    phase: &str,
    within: Duration,
) -> anyhow::Result<Value> {
    wait_until(
        &format!("rotation of {subject} to reach {phase}"),
        within,
        Duration::from_millis(250),
        || match fed.rotation_of(i, subject) {
            Ok(Some(r)) if r["phase"] == phase => Check::Ready(r),
            Ok(Some(r)) => {
                Check::pending(format!("{} waiting for {}", r["phase"], r["waiting_for"]))
            }
            Ok(None) => Check::pending("no rotation yet"),
            Err(e) => Check::pending(format!("{e:#}")),
        },
    )
}

/// Replaces `name`'s certificate files with `from`'s (key first, each by
/// rename), as an external issuer would.
fn install(pki_dir: &Path, from: &str, name: &str) -> anyhow::Result<()> {
    for ext in ["key", "pem"] {
        let src = pki_dir.join(format!("{from}.{ext}"));
        let tmp = pki_dir.join(format!(".{name}.{ext}.tmp"));
        let dst = pki_dir.join(format!("{name}.{ext}"));
        std::fs::copy(&src, &tmp).with_context(|| format!("copying {}", src.display()))?;
        std::fs::rename(&tmp, &dst)?;
    }
    Ok(())
}

/// Keeps one admin write (`tern notes put`) in flight at a time against
/// coordinator `addr` until stopped; counts successes and failures.
struct Writer {
    stop: Arc<AtomicBool>,
    ok: Arc<AtomicU64>,
    failed: Arc<AtomicU64>,
    thread: Option<std::thread::JoinHandle<Vec<String>>>,
}

impl Writer {
    fn start(admin: &Admin, addrs: Vec<String>) -> Writer {
        let stop = Arc::new(AtomicBool::new(false));
        let ok = Arc::new(AtomicU64::new(0));
        let failed = Arc::new(AtomicU64::new(0));
        let (s, o, f) = (stop.clone(), ok.clone(), failed.clone());
        let admin = Admin {
            ca: admin.ca.clone(),
            cert: admin.cert.clone(),
            key: admin.key.clone(),
        };
        let thread = std::thread::spawn(move || {
            let mut errors = Vec::new();
            let mut i = 0usize;
            while !s.load(Ordering::SeqCst) {
                let addr = &addrs[i % addrs.len()];
                let key = format!("w{i}");
                let out = run_bounded_any(
                    admin.cmd(addr).args(["notes", "put", &key, "v"]),
                    Duration::from_secs(20),
                );
                match out {
                    Ok(out) if out.status.success() => {
                        o.fetch_add(1, Ordering::SeqCst);
                    }
                    Ok(out) => {
                        f.fetch_add(1, Ordering::SeqCst);
                        errors.push(String::from_utf8_lossy(&out.stderr).to_string());
                    }
                    Err(e) => {
                        f.fetch_add(1, Ordering::SeqCst);
                        errors.push(format!("{e:#}"));
                    }
                }
                i += 1;
            }
            errors
        });
        Writer {
            stop,
            ok,
            failed,
            thread: Some(thread),
        }
    }

    /// Stops and returns (succeeded, failed, error messages).
    fn finish(mut self) -> (u64, u64, Vec<String>) {
        self.stop.store(true, Ordering::SeqCst);
        let errors = self
            .thread
            .take()
            .map(|t| t.join().unwrap_or_default())
            .unwrap_or_default();
        (
            self.ok.load(Ordering::SeqCst),
            self.failed.load(Ordering::SeqCst),
            errors,
        )
    }
}

/// Lines of every coordinator log (but those of `skip`) that report a
/// refused handshake.
fn refusals(fed: &Federation, skip: Option<usize>) -> Vec<String> {
    fed.nodes
        .iter()
        .enumerate()
        .filter(|(i, _)| Some(*i) != skip)
        .map(|(_, n)| n)
        .flat_map(|n| {
            read(n.process().log_path())
                .lines()
                .filter(|l| l.to_lowercase().contains("refus") && l.contains("thumbprint"))
                .map(str::to_string)
                .collect::<Vec<_>>()
        })
        .collect()
}

/// Properties:
/// - when the leader's certificate files are replaced, the coordinators
///   rotate its pin through staged, presenting and retiring to completed
///   in the running processes, with admin writes going on all along
///   (through every coordinator): no write fails and no handshake is
///   refused;
/// - afterwards only the new thumbprint is pinned for the leader, the
///   leader presents it, and the retired certificate, tried deliberately,
///   is refused during the handshake (logged with its thumbprint).
#[test]
fn leader_rotation_under_writes_refuses_nothing_until_the_old_cert_is_tried() {
    run(
        "leader_rotation_under_writes_refuses_nothing_until_the_old_cert_is_tried",
        |h| {
            let fed = federation(h)?;
            let l = fed.leader()?;
            let region = fed.region(l);
            let subject = format!("transport:{}", l + 1);
            let old_tp = fed.nodes[l].thumbprint.clone();
            // Keep the old certificate to try it later.
            let pki_dir = fed.pki.dir.clone();
            for ext in ["pem", "key"] {
                std::fs::copy(
                    pki_dir.join(format!("{region}.{ext}")),
                    pki_dir.join(format!("{region}-old.{ext}")),
                )?;
            }
            let new_tp = fed.pki.node(
                &format!("{region}-next"),
                fed.nodes[l].ip,
                &["--days", "30"],
            )?;
            let writer = Writer::start(&fed.admin, fed.nodes.iter().map(|n| n.grpc()).collect());
            // Let some writes land before the rotation starts.
            wait_until(
                "the first writes",
                Duration::from_secs(30),
                Duration::from_millis(100),
                || Check::ready_or((writer.ok.load(Ordering::SeqCst) >= 5).then_some(()), "<5"),
            )?;
            let t0 = Instant::now();
            install(&pki_dir, &format!("{region}-next"), region)?;
            let done = wait_phase(&fed, l, &subject, "completed", Duration::from_secs(90))?;
            let took = t0.elapsed();
            // A few more writes after completion.
            let after = writer.ok.load(Ordering::SeqCst);
            wait_until(
                "writes after the rotation",
                Duration::from_secs(30),
                Duration::from_millis(100),
                || {
                    Check::ready_or(
                        (writer.ok.load(Ordering::SeqCst) >= after + 5).then_some(()),
                        "waiting",
                    )
                },
            )?;
            let (ok, failed, errors) = writer.finish();
            eprintln!(
                "[rotation] {subject} completed in {:.1}s; writes: {ok} ok, {failed} failed",
                took.as_secs_f64()
            );
            ensure!(failed == 0, "{failed} writes failed: {errors:?}");
            ensure!(done["new"] == new_tp.as_str(), "rotated to {}", done["new"]);
            let refused = refusals(&fed, None);
            ensure!(
                refused.is_empty(),
                "handshakes refused during the rotation: {refused:?}"
            );
            // The member table pins only the new thumbprint; the leader
            // presents it.
            let status = fed.status_from((l + 1) % fed.len())?;
            let member = status["members"]
                .as_array()
                .and_then(|m| m.iter().find(|m| m["node_id"] == (l as u64 + 1)))
                .cloned()
                .context("leader missing from the member table")?;
            ensure!(
                member["thumbprint"] == new_tp.as_str()
                    || member["thumbprints"] == serde_json::json!([new_tp]),
                "member pins after the rotation: {member}"
            );
            let presenting = fed.rotate_status(l)?["presenting"].clone();
            ensure!(
                presenting == new_tp.as_str(),
                "leader presents {presenting}"
            );

            // The retired certificate, tried on purpose, is refused during
            // the handshake by a peer, which logs its thumbprint.
            let peer = (l + 1) % fed.len();
            let out = run_bounded_any(
                fed.admin
                    .cmd(&fed.nodes[peer].grpc())
                    .env(
                        "TERN_CLIENT_CERT",
                        pki_dir.join(format!("{region}-old.pem")),
                    )
                    .env("TERN_CLIENT_KEY", pki_dir.join(format!("{region}-old.key")))
                    .args(["status"]),
                Duration::from_secs(20),
            )?;
            ensure!(
                !out.status.success(),
                "the retired certificate was accepted"
            );
            let log = fed.nodes[peer].process().log_path().to_path_buf();
            wait_until(
                "the peer to log the refused retired certificate",
                Duration::from_secs(10),
                Duration::from_millis(100),
                || {
                    let text = read(&log);
                    Check::ready_or(
                        text.lines()
                            .any(|l| {
                                l.contains(short(&old_tp)) && l.to_lowercase().contains("refus")
                            })
                            .then_some(()),
                        "not logged yet",
                    )
                },
            )?;
            Ok(())
        },
    );
}

/// Properties:
/// - under the four-eyes policy, a rotation proposed by an administrator
///   waits for approval and trusts nothing new; the proposer cannot
///   approve it; a second administrator can;
/// - a peer that cannot confirm (SIGSTOPped) blocks the rotation in
///   staged, and advancing by hand is refused, until an administrator
///   excludes it, which the status reports;
/// - while automation is paused the leader advances nothing; phases move
///   only by `tern rotate advance`;
/// - a rollback from presenting, after the owner swapped to its new
///   certificate, brings it back to the old one and ends with only the
///   old pin, every coordinator answering admin calls.
#[test]
fn four_eyes_exclusion_and_rollback() {
    run("four_eyes_exclusion_and_rollback", |h| {
        let fed = federation(h)?;
        fed.pki.admin("second", &[])?;
        let second = Admin::new(&fed.pki, "second");
        let l = fed.leader()?;
        // The owner: a follower. The stalled peer: the other follower.
        let owner = (l + 1) % fed.len();
        let stalled = (l + 2) % fed.len();
        let region = fed.region(owner);
        let subject = format!("transport:{}", owner + 1);
        let old_tp = fed.nodes[owner].thumbprint.clone();
        let via = fed.nodes[l].grpc();
        let admin =
            |args: &[&str]| run_bounded(fed.admin.cmd(&via).args(args), Duration::from_secs(15));
        let admin_any = |args: &[&str]| {
            run_bounded_any(fed.admin.cmd(&via).args(args), Duration::from_secs(15))
        };
        admin(&["rotate", "policy", "transport", "four-eyes"])?;
        admin(&["pause", "--reason", "rotation test: phases by hand"])?;
        let new_tp = fed.pki.node(
            &format!("{region}-next"),
            fed.nodes[owner].ip,
            &["--days", "30"],
        )?;
        let out = admin(&[
            "rotate", "start", &subject, "--new", &new_tp, "--output", "json",
        ])?;
        let started: Value = serde_json::from_slice(&out.stdout)?;
        let id = started["id"].as_u64().context("rotation id")?.to_string();
        let r = fed.rotation_of(l, &subject)?.context("no rotation")?;
        ensure!(r["phase"] == "pending_approval", "{r}");
        ensure!(r["trusted"] == serde_json::json!([old_tp]), "{r}");
        // The proposer cannot approve its own rotation.
        let out = admin_any(&["rotate", "approve", &id])?;
        ensure!(
            !out.status.success(),
            "the proposer approved its own rotation"
        );
        let err = String::from_utf8_lossy(&out.stderr).to_lowercase();
        ensure!(err.contains("approve"), "{err}");
        // A stalled peer blocks staged.
        fed.stop(stalled)?;
        run_bounded(
            second.cmd(&via).args(["rotate", "approve", &id]),
            Duration::from_secs(15),
        )?;
        let stalled_peer = format!("node:{}", stalled + 1);
        wait_until(
            "staged to wait only for the stalled peer",
            Duration::from_secs(30),
            Duration::from_millis(250),
            || match fed.rotation_of(l, &subject) {
                Ok(Some(r))
                    if r["phase"] == "staged"
                        && r["waiting_for"] == serde_json::json!([stalled_peer]) =>
                {
                    Check::Ready(())
                }
                Ok(r) => Check::pending(format!("{r:?}")),
                Err(e) => Check::pending(format!("{e:#}")),
            },
        )?;
        let out = admin_any(&["rotate", "advance", &id, "--phase", "staged"])?;
        ensure!(!out.status.success(), "advance while a peer is waited for");
        admin(&["rotate", "exclude", &id, "--peer", &stalled_peer])?;
        // Paused: nobody advances but the administrator.
        let r = fed.rotation_of(l, &subject)?.context("rotation")?;
        ensure!(r["phase"] == "staged", "advanced while paused: {r}");
        ensure!(
            r["excluded"].as_array().is_some_and(|e| e
                .iter()
                .any(|x| x.as_str().unwrap_or("").starts_with(&stalled_peer))),
            "the exclusion is reported: {r}"
        );
        admin(&["rotate", "advance", &id, "--phase", "staged"])?;
        // The owner presents the new certificate once it is in its files.
        install(&fed.pki.dir, &format!("{region}-next"), region)?;
        wait_until(
            "the owner to present the new certificate and the peer to accept it",
            Duration::from_secs(60),
            Duration::from_millis(250),
            || match fed.rotation_of(l, &subject) {
                Ok(Some(r))
                    if r["phase"] == "presenting" && r["waiting_for"] == serde_json::json!([]) =>
                {
                    match fed.rotate_status(owner) {
                        Ok(s) if s["presenting"] == new_tp.as_str() => Check::Ready(()),
                        Ok(s) => Check::pending(format!("owner presents {}", s["presenting"])),
                        Err(e) => Check::pending(format!("{e:#}")),
                    }
                }
                Ok(r) => Check::pending(format!("{r:?}")),
                Err(e) => Check::pending(format!("{e:#}")),
            },
        )?;
        // Roll back half-way.
        admin(&["rotate", "rollback", &id])?;
        wait_unblocked(
            &fed,
            l,
            &subject,
            "reverting",
            "the owner to present its old certificate again",
        )?;
        admin(&["rotate", "advance", &id, "--phase", "reverting"])?;
        wait_unblocked(
            &fed,
            l,
            &subject,
            "withdrawing",
            "the peers to drop the new pin",
        )?;
        admin(&["rotate", "advance", &id, "--phase", "withdrawing"])?;
        let done = wait_phase(&fed, l, &subject, "rolled_back", Duration::from_secs(10))?;
        ensure!(done["trusted"] == serde_json::json!([old_tp]), "{done}");
        let s = fed.rotate_status(owner)?;
        ensure!(
            s["presenting"] == old_tp.as_str(),
            "after the rollback the owner presents {}",
            s["presenting"]
        );
        fed.cont(stalled)?;
        admin(&["resume", "--reason", "rotation test done"])?;
        for i in 0..fed.len() {
            wait_until(
                &format!("coordinator {i} to answer admin calls"),
                Duration::from_secs(30),
                Duration::from_millis(250),
                || match fed.status_from(i) {
                    Ok(_) => Check::Ready(()),
                    Err(e) => Check::pending(format!("{e:#}")),
                },
            )?;
        }
        // The excluded peer may refuse what the owner presented while it
        // was excluded (that is what excluding accepts); nobody else
        // refused anything.
        let refused = refusals(&fed, Some(stalled));
        ensure!(refused.is_empty(), "handshakes refused: {refused:?}");
        Ok(())
    });
}

/// Properties:
/// - with the built-in issuer configured (`tls.issuer_key_file`), a
///   coordinator whose certificate is past 70-90% of its lifetime renews
///   it by itself (same names, same lifetime, a new key) and rotates its
///   pin to the renewal through every phase, with no refused handshake;
/// - a certificate that is not due is left alone.
#[test]
fn built_in_issuer_renews_a_due_certificate_and_rotates_it() {
    run(
        "built_in_issuer_renews_a_due_certificate_and_rotates_it",
        |h| {
            let fed = federation(h)?;
            let l = fed.leader()?;
            let i = (l + 1) % fed.len();
            let region = fed.region(i);
            let subject = format!("transport:{}", i + 1);
            // Configure the issuer and restart: the 90-day certificate is not
            // due, so nothing rotates.
            let config = fed.nodes[i].config_path();
            let text = std::fs::read_to_string(&config)?;
            let ca_key = fed.pki.dir.join("ca.key");
            let text = text.replacen(
                "\n[raft]",
                &format!("issuer_key_file = \"{}\"\n\n[raft]", ca_key.display()),
                1,
            );
            std::fs::write(&config, text)?;
            fed.restart(i)?;
            fed.wait_healthy("after the restart", Duration::from_secs(60))?;
            // A rotation takes a few seconds when it happens: give the issuer
            // twice the loop's ticks to (wrongly) act.
            let quiet_until = Instant::now() + Duration::from_secs(3);
            while Instant::now() < quiet_until {
                ensure!(
                    fed.rotation_of(l, &subject)?.is_none(),
                    "a certificate that is not due was rotated"
                );
                std::thread::sleep(Duration::from_millis(500));
            }
            // A certificate at 91% of its 55-minute lifetime: due whatever the
            // jitter. Installing it rotates to it (file change); then the
            // issuer renews it.
            let now = time::OffsetDateTime::now_utc();
            let fmt = |t: time::OffsetDateTime| {
                t.format(&time::format_description::well_known::Rfc3339)
                    .unwrap_or_default()
            };
            let due_tp = fed.pki.node(
                &format!("{region}-due"),
                fed.nodes[i].ip,
                &[
                    "--not-before",
                    &fmt(now - time::Duration::minutes(50)),
                    "--not-after",
                    &fmt(now + time::Duration::minutes(5)),
                ],
            )?;
            install(&fed.pki.dir, &format!("{region}-due"), region)?;
            let renewed = wait_until(
                "the issuer's renewal to be rotated in",
                Duration::from_secs(120),
                Duration::from_millis(250),
                || match fed.rotate_status(l) {
                    Ok(s) => {
                        let done: Vec<&Value> = s["rotations"]
                            .as_array()
                            .map(|a| {
                                a.iter()
                                    .filter(|r| {
                                        r["subject"] == subject.as_str()
                                            && r["phase"] == "completed"
                                    })
                                    .collect()
                            })
                            .unwrap_or_default();
                        match done.iter().find(|r| r["old"] == due_tp.as_str()) {
                            Some(r) => Check::Ready((*r).clone()),
                            None => Check::pending(format!("{} completed so far", done.len())),
                        }
                    }
                    Err(e) => Check::pending(format!("{e:#}")),
                },
            )?;
            let new_tp = renewed["new"].as_str().unwrap_or_default().to_string();
            ensure!(new_tp != due_tp, "renewed to the same certificate");
            let file_tp = run_bounded(
                support::tern()
                    .args(["pki", "thumbprint"])
                    .arg(fed.pki.cert(region)),
                Duration::from_secs(10),
            )?;
            ensure!(
                String::from_utf8_lossy(&file_tp.stdout).trim() == new_tp,
                "the files hold the renewal"
            );
            ensure!(
                renewed["proposed_by"] == format!("node:{}", i + 1).as_str(),
                "the owner proposed it: {renewed}"
            );
            let presenting = fed.rotate_status(i)?["presenting"].clone();
            ensure!(presenting == new_tp.as_str(), "node presents {presenting}");
            let refused = refusals(&fed, None);
            ensure!(refused.is_empty(), "handshakes refused: {refused:?}");
            Ok(())
        },
    );
}
