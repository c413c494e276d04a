//! Multi-process tests of federation pin rotation: three regions, each a
//! coordinator (`tern serve`) and a region stand-in (`tern stand-in
//! serve`) whose `[[federation.peers]]` pin the other regions' federation
//! client certificates. A region's certificate files are replaced the way
//! an issuer would; the coordinators deliver the pins to every other
//! region's control plane (`PUT /tern/v1/federation/pins`) and pin files,
//! and the test checks, by pinging the stand-ins itself, which certificate
//! each accepts at each phase.

mod support;

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{ensure, Context};
use serde_json::Value;
use support::federation::{run_bounded, Federation, FederationConfig};
use tern_tests::{wait_until, Check, Harness};

fn run(name: &str, body: impl FnOnce(&Harness) -> anyhow::Result<()>) {
    Harness::run("federation_pins", name, body)
}

fn federation(h: &Harness) -> anyhow::Result<Federation<'_>> {
    Federation::start(
        h,
        FederationConfig {
            relays: false,
            federation_pins: true,
            ..FederationConfig::default()
        },
    )
}

/// Waits until the newest rotation of `subject` is in `phase` and, when
/// `unblocked`, waits for nobody.
fn wait_phase(
    fed: &Federation,
    subject: &str,
    phase: &str,
    unblocked: bool,
) -> anyhow::Result<Value> {
    wait_until(
        &format!("rotation of {subject} to reach {phase} (unblocked: {unblocked})"),
        Duration::from_secs(60),
        Duration::from_millis(200),
        || match fed.rotation_of(0, subject) {
            Ok(Some(r))
                if r["phase"] == phase
                    && (!unblocked || r["waiting_for"] == serde_json::json!([])) =>
            {
                Check::Ready(r)
            }
            Ok(Some(r)) => {
                Check::pending(format!("{} waiting for {}", r["phase"], r["waiting_for"]))
            }
            Ok(None) => Check::pending("no rotation yet"),
            Err(e) => Check::pending(format!("{e:#}")),
        },
    )
}

/// Pings stand-in `j`'s `/api/federation/ping` presenting the certificate
/// files `cert_name` of the PKI and `secret_hex`: the JSON answer.
fn ping(fed: &Federation, j: usize, cert_name: &str, secret_hex: &str) -> anyhow::Result<Value> {
    let mut identity = std::fs::read(fed.pki.cert(cert_name))?;
    identity.push(b'\n');
    identity.extend(std::fs::read(fed.pki.key(cert_name))?);
    let ca = std::fs::read(fed.pki.dir.join("ca.pem"))?;
    let url = format!("{}/api/federation/ping", fed.planes[j].url());
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(async {
        let mut b = reqwest::Client::builder()
            .use_rustls_tls()
            .tls_built_in_root_certs(false)
            .timeout(Duration::from_secs(10))
            .identity(reqwest::Identity::from_pem(&identity)?);
        for c in reqwest::Certificate::from_pem_bundle(&ca)? {
            b = b.add_root_certificate(c);
        }
        let answer: Value = b
            .build()?
            .get(&url)
            .header("X-Federation-Secret", secret_hex)
            .send()
            .await?
            .error_for_status()?
            .json()
            .await?;
        Ok(answer)
    })
}

fn green(v: &Value) -> bool {
    v["status"] == "green"
}

/// Asserts what stand-in `j` answers for `cert_name` (the owner's secret).
fn expect_ping(
    fed: &Federation,
    j: usize,
    owner: usize,
    cert_name: &str,
    want_green: bool,
    when: &str,
) -> anyhow::Result<()> {
    let v = ping(fed, j, cert_name, &fed.fed[owner].secret_hex)?;
    ensure!(
        green(&v) == want_green,
        "{when}: stand-in {} answered {v} for {cert_name}",
        fed.region(j)
    );
    if !want_green {
        ensure!(
            v["failed"] == serde_json::json!(["thumbprint"]),
            "{when}: only the certificate fails: {v}"
        );
    }
    Ok(())
}

/// The thumbprints in coordinator `i`'s pin file of region `peer`.
fn pin_file(fed: &Federation, i: usize, peer: &str) -> Vec<String> {
    let p = fed.fed[i].pins_dir.join(format!("{peer}.thumbprints"));
    std::fs::read_to_string(p)
        .unwrap_or_default()
        .lines()
        .map(String::from)
        .collect()
}

/// Waits until every other coordinator's pin files for `owner`'s region
/// list exactly `want` (sorted) and the PEM bundle holds as many
/// certificates.
fn wait_pin_files(fed: &Federation, owner: usize, want: &[&str]) -> anyhow::Result<()> {
    let mut want: Vec<String> = want.iter().map(|s| s.to_string()).collect();
    want.sort();
    let peer = fed.region(owner);
    wait_until(
        &format!("pin files of {peer} to hold {want:?}"),
        Duration::from_secs(30),
        Duration::from_millis(200),
        || {
            for i in (0..fed.len()).filter(|i| *i != owner) {
                let got = pin_file(fed, i, peer);
                let pem = std::fs::read_to_string(fed.fed[i].pins_dir.join(format!("{peer}.pem")))
                    .unwrap_or_default();
                if got != want || pem.matches("BEGIN CERTIFICATE").count() != want.len() {
                    return Check::pending(format!("coordinator {} has {got:?}", i + 1));
                }
            }
            Check::Ready(())
        },
    )
}

/// Replaces `name`'s certificate files with `from`'s (key first, each by
/// rename), as an issuer would.
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

/// Proves, for region eu's federation client certificate:
/// - at start every coordinator delivers eu's published pin: the pin files
///   hold it and the peers' stand-ins accept eu's certificate; eu's
///   coordinator reports the certificate's expiry (`tern_cert_expiry_seconds`,
///   kind federation);
/// - a new certificate is refused by the peers before its rotation is
///   staged, and accepted from `staged` on (with the old one still
///   accepted) while phases are moved by hand under paused automation;
/// - during `presenting` both are accepted and the owner's ping confirms
///   each peer; after retirement the old certificate is refused and the
///   pin files hold only the new one;
/// - a second rotation (us) runs start to finish with automation on and no
///   administrator step: only coordinators and `tern` act in it.
#[test]
fn federation_pins_follow_the_rotation() {
    run("federation_pins_follow_the_rotation", |h| {
        let fed = federation(h)?;
        let t0 = Instant::now();
        let via = fed.nodes[0].grpc();
        let admin =
            |args: &[&str]| run_bounded(fed.admin.cmd(&via).args(args), Duration::from_secs(15));
        let old_eu = fed.fed[0].thumbprint.clone();
        wait_pin_files(&fed, 0, &[&old_eu])?;
        for j in [1, 2] {
            expect_ping(&fed, j, 0, "eu-fed", true, "at start")?;
        }
        eprintln!("[test] initial pins delivered after {:?}", t0.elapsed());
        // eu's coordinator reports its federation certificate's expiry
        // (issued for 90 days by the test PKI).
        let (code, metrics) = support::http_get(fed.nodes[0].http(), "/metrics")?;
        ensure!(code == 200, "/metrics answered {code}");
        let expiry: f64 = metrics
            .lines()
            .find(|l| {
                l.starts_with("tern_cert_expiry_seconds{") && l.contains("kind=\"federation\"")
            })
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse().ok())
            .context("no federation tern_cert_expiry_seconds series")?;
        ensure!(
            (80.0 * 86_400.0..=91.0 * 86_400.0).contains(&expiry),
            "federation certificate expiry {expiry} s"
        );

        // Phases by hand: nothing advances but the administrator.
        admin(&["pause", "--reason", "federation pins test: phases by hand"])?;
        let new_eu = fed.pki.node("eu-fed-next", fed.planes[0].ip, &[])?;
        for j in [1, 2] {
            expect_ping(&fed, j, 0, "eu-fed-next", false, "before the rotation")?;
        }
        // Keep the old certificate to present it ourselves later.
        install(&fed.pki.dir, "eu-fed", "eu-fed-old")?;
        install(&fed.pki.dir, "eu-fed-next", "eu-fed")?;
        // Paused: the coordinator publishes the certificate but may not
        // start the rotation itself; the administrator starts it.
        let started = wait_until(
            "the new eu certificate to be published and its rotation started",
            Duration::from_secs(30),
            Duration::from_millis(250),
            || match admin(&[
                "rotate",
                "start",
                "federation:eu",
                "--new",
                &new_eu,
                "--output",
                "json",
            ]) {
                Ok(out) => Check::Ready(out.stdout),
                Err(e) => Check::pending(format!("{e:#}")),
            },
        )?;
        let started: Value = serde_json::from_slice(&started)?;
        let id = started["id"].as_u64().context("rotation id")?.to_string();
        let t_staged = Instant::now();
        let r = wait_phase(&fed, "federation:eu", "staged", true)?;
        eprintln!(
            "[test] staged confirmed by both peers in {:?}",
            t_staged.elapsed()
        );
        ensure!(
            r["trusted"].as_array().map(|a| a.len()) == Some(2),
            "staged trusts both: {r}"
        );
        for j in [1, 2] {
            expect_ping(&fed, j, 0, "eu-fed-next", true, "staged")?;
            expect_ping(&fed, j, 0, "eu-fed-old", true, "staged")?;
        }
        wait_pin_files(&fed, 0, &[&old_eu, &new_eu])?;

        admin(&["rotate", "advance", &id, "--phase", "staged"])?;
        let t_presenting = Instant::now();
        let r = wait_phase(&fed, "federation:eu", "presenting", true)?;
        eprintln!(
            "[test] presenting confirmed (owner + pings) in {:?}",
            t_presenting.elapsed()
        );
        ensure!(r["presented"] == new_eu.as_str(), "{r}");
        for j in [1, 2] {
            expect_ping(&fed, j, 0, "eu-fed-next", true, "presenting")?;
            expect_ping(&fed, j, 0, "eu-fed-old", true, "presenting")?;
        }
        admin(&["rotate", "advance", &id, "--phase", "presenting"])?;
        wait_phase(&fed, "federation:eu", "retiring", true)?;
        wait_pin_files(&fed, 0, &[&new_eu])?;
        for j in [1, 2] {
            expect_ping(&fed, j, 0, "eu-fed-old", false, "retiring")?;
        }
        admin(&["rotate", "advance", &id, "--phase", "retiring"])?;
        wait_phase(&fed, "federation:eu", "completed", false)?;
        for j in [1, 2] {
            expect_ping(&fed, j, 0, "eu-fed-next", true, "completed")?;
            expect_ping(&fed, j, 0, "eu-fed-old", false, "completed")?;
        }
        admin(&["resume", "--reason", "federation pins test: automation"])?;

        // Automation on: us rotates without an administrator.
        let old_us = fed.fed[1].thumbprint.clone();
        let new_us = fed.pki.node("us-fed-next", fed.planes[1].ip, &[])?;
        expect_ping(&fed, 0, 1, "us-fed-next", false, "before the us rotation")?;
        let t_auto = Instant::now();
        install(&fed.pki.dir, "us-fed", "us-fed-old")?;
        install(&fed.pki.dir, "us-fed-next", "us-fed")?;
        let r = wait_phase(&fed, "federation:us", "completed", false)?;
        eprintln!(
            "[test] us rotation completed alone in {:?}",
            t_auto.elapsed()
        );
        ensure!(r["new"] == new_us.as_str(), "{r}");
        ensure!(
            r["proposed_by"]
                .as_str()
                .is_some_and(|p| p.starts_with("node:")),
            "{r}"
        );
        let history = r["history"].to_string();
        ensure!(
            !history.contains("admin:"),
            "no administrator acted: {history}"
        );

        wait_pin_files(&fed, 1, &[&new_us])?;
        for j in [0, 2] {
            expect_ping(&fed, j, 1, "us-fed-next", true, "us completed")?;
            expect_ping(&fed, j, 1, "us-fed-old", false, "us completed")?;
        }
        ensure!(old_us != new_us);
        eprintln!("[test] total {:?}", t0.elapsed());
        Ok(())
    });
}

/// Proves, for region ap with its renewal staged by the issuer in the
/// `next_*` files (automation on, no administrator):
/// - the coordinator publishes the renewal and rotates to it, and installs
///   it as the mounted certificate only at `presenting`;
/// - at no moment of the rotation does a peer's stand-in refuse the
///   certificate in the mounted files (pinged over and over with the
///   owner's secret);
/// - afterwards the mounted files hold the renewal and the old certificate
///   is refused.
#[test]
fn renewal_staged_in_next_files_is_never_refused() {
    run("renewal_staged_in_next_files_is_never_refused", |h| {
        let fed = federation(h)?;
        let owner = 2;
        let name = fed.fed[owner].name.clone();
        let old = fed.fed[owner].thumbprint.clone();
        wait_pin_files(&fed, owner, &[&old])?;
        install(&fed.pki.dir, &name, &format!("{name}-old"))?;
        let new = fed
            .pki
            .node(&format!("{name}-staged"), fed.planes[owner].ip, &[])?;
        let subject = format!("federation:{}", fed.region(owner));
        let t0 = Instant::now();
        let (mut pings, mut torn) = (0usize, 0usize);
        let done = loop {
            ensure!(
                t0.elapsed() < Duration::from_secs(60),
                "the rotation did not complete within 60 s ({pings} pings)"
            );
            for j in (0..fed.len()).filter(|j| *j != owner) {
                // The files are replaced key first, then certificate: a
                // read between the two is a mismatched pair, which fails
                // the handshake on our side (not a refusal by the peer).
                match ping(&fed, j, &name, &fed.fed[owner].secret_hex) {
                    Ok(v) => {
                        pings += 1;
                        ensure!(
                            green(&v),
                            "stand-in {} refused the mounted certificate during the rotation: {v}",
                            fed.region(j)
                        );
                    }
                    Err(_) => torn += 1,
                }
            }
            match fed.rotation_of(0, &subject)? {
                Some(r) if r["phase"] == "completed" && r["new"] == new.as_str() => break r,
                _ => {}
            }
        };
        eprintln!(
            "[test] {subject} completed in {:?}: {pings} pings all green, {torn} torn reads",
            t0.elapsed()
        );
        ensure!(pings >= 4, "too few pings to mean anything: {pings}");
        ensure!(
            done["proposed_by"] == format!("node:{}", owner + 1).as_str(),
            "proposed by {}",
            done["proposed_by"]
        );
        let mounted = run_bounded(
            support::tern()
                .args(["pki", "thumbprint"])
                .arg(fed.pki.cert(&name)),
            Duration::from_secs(10),
        )?;
        ensure!(
            String::from_utf8_lossy(&mounted.stdout).trim() == new,
            "the mounted files hold the renewal"
        );
        for j in (0..fed.len()).filter(|j| *j != owner) {
            expect_ping(
                &fed,
                j,
                owner,
                &format!("{name}-old"),
                false,
                "after completion",
            )?;
        }
        Ok(())
    });
}
