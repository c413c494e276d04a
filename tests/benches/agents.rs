//! Agent benchmark, multi-process: how fast a lost region's agents are
//! attached elsewhere, what one failover costs in Raft entries and bytes,
//! how much coordinator memory a registered agent takes, and the resident
//! memory of one `tern-shim run`.
//!
//! Fixture: three regions on 127.x.y.z (`tests/tests/support/federation.rs`,
//! no relays), each a reference stand-in and a `tern serve` coordinator
//! (real mutual TLS, SQLite), `down_after` 10 s (the default), `up_after`
//! the default 120 s (no hand-back during a trial). One trial for N agents:
//!
//! 1. start the federation; the lost region is eu or us, whichever is not
//!    the Raft leader's (as in `tests/tests/agent_failover.rs`);
//! 2. (first trial only) one `tern-shim run` for one agent homed in ap (never
//!    lost), with a leaf issued here by ap's stand-in agent CA; its VmRSS is
//!    sampled once it holds its directive stream; then it is stopped;
//! 3. VmRSS of every coordinator; then N simulated agents of the lost region
//!    (`tern-shim fleet`, at most `AGENTS_PER_FLEET` per process, config
//!    `cfg-common`, so both surviving regions are possible standbys), with
//!    the test's timing (redirect limiter 1000/s burst 1000 per process,
//!    apply jitter 500 ms); waits until every agent is registered and
//!    attached at home and every one is covered by a staged authorization;
//!    VmRSS of every coordinator again: (after - before) / N per agent;
//! 4. `tern_raft_last_log_index` of the leader, then SIGKILL of the lost
//!    region's coordinator and stand-in together; the fleets' status files
//!    are polled every 100 ms for the share of agents verified attached
//!    elsewhere: time to 50 %, 99 %, 100 %;
//! 5. once every agent is attached elsewhere and the leader reports no
//!    handover in flight, `tern_raft_last_log_index` again; the entries in
//!    between are read from the leader's SQLite log (`raft_log.entry`, the
//!    serde_json encoding openraft also sends on the wire) with
//!    `python3 -c 'import sqlite3 ...'`: count, bytes, and the commands they
//!    carry by kind.
//!
//! Writes `bench/reports/agents.md` (measured part) and prints it.
//!
//! Run (release binaries; the bench refuses to run from `cargo test`):
//! `cargo build --release --bins && cargo bench -p tern-tests --bench agents`
//!
//! Environment: `TERN_BIN_DIR` (default `<target>/release`);
//! `TERN_BENCH_PLAN` (default `1000x3,10000x2`: agents x trials);
//! `TERN_TEST_SEED` fixes the seed the harness prints per trial.

#[path = "../tests/support/mod.rs"]
mod support;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context};
use support::federation::{now_ms, run_bounded, Federation, FederationConfig, REGION_NAMES};
use support::fleet::{metric, start_fleet_with, wait_metric, Fleet, FleetOptions};
use tern_tests::{binary, wait_until, Check, Harness, Process, ProcessSpec, BIN_DIR_ENV};

const DOWN_AFTER_MS: u64 = 10_000;
/// Largest fleet process (file descriptors: one TLS connection per agent;
/// this machine's hard RLIMIT_NOFILE is reported with the results).
const AGENTS_PER_FLEET: usize = 5_000;
/// The region the single `tern-shim run` agent is homed in (never lost).
const SHIM_HOME: usize = 2;

/// One trial's numbers.
#[derive(Debug, Clone, Default)]
struct Trial {
    agents: usize,
    seed: u64,
    lost: String,
    leader: String,
    fleets: usize,
    /// Fleet start -> every agent registered and attached at home, ms.
    register_ms: u64,
    /// -> every agent staged, ms (from fleet start).
    staged_ms: u64,
    /// Kill -> 50 / 99 / 100 % attached elsewhere, ms.
    p50_ms: Option<u64>,
    p99_ms: Option<u64>,
    p100_ms: Option<u64>,
    /// Kill -> no handover in flight on the leader, ms.
    settled_ms: Option<u64>,
    /// Raft entries and their bytes between the kill and settled.
    entries: u64,
    entry_bytes: u64,
    /// Entries of that range missing from the leader's log (purged).
    entries_missing: u64,
    /// kind -> (commands, approx bytes of their JSON).
    kinds: BTreeMap<String, (u64, u64)>,
    /// VmRSS (KiB) of each coordinator before / after registration, by
    /// region; and of the fleet processes after registration.
    coord_rss_before: BTreeMap<String, u64>,
    coord_rss_after: BTreeMap<String, u64>,
    fleet_rss_kb: u64,
    /// Where the agents ended up.
    serving: BTreeMap<String, usize>,
    wall_s: f64,
}

/// The single-agent shim's measurement.
#[derive(Debug, Clone, Default)]
struct ShimRss {
    samples_kb: Vec<u64>,
    hwm_kb: u64,
}

fn rss_kb(pid: i32, field: &str) -> anyhow::Result<u64> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .with_context(|| format!("reading /proc/{pid}/status"))?;
    text.lines()
        .find(|l| l.starts_with(field))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .ok_or_else(|| anyhow!("no {field} in /proc/{pid}/status"))
}

fn process_rss(p: &Process) -> anyhow::Result<u64> {
    rss_kb(p.pid().as_raw(), "VmRSS:")
}

fn coordinator_rss(fed: &Federation) -> BTreeMap<String, u64> {
    (0..fed.len())
        .filter(|i| fed.is_live(*i))
        .filter_map(|i| {
            process_rss(fed.nodes[i].process())
                .ok()
                .map(|kb| (REGION_NAMES[i].to_string(), kb))
        })
        .collect()
}

/// A leaf for `agent_id` issued by the agent CA in `ca_dir` (the profile
/// `tern-shim fleet` issues: P-256, CN = id, URI SAN `urn:tern:agent:<id>`,
/// EKU clientAuth); written as `leaf.pem` / `leaf.key` in `out`.
fn issue_leaf(ca_dir: &Path, agent_id: &str, out: &Path) -> anyhow::Result<(PathBuf, PathBuf)> {
    use rcgen::{
        CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer,
        KeyPair, KeyUsagePurpose, SanType, PKCS_ECDSA_P256_SHA256,
    };
    let ca_cert = std::fs::read_to_string(ca_dir.join("ca.pem"))?;
    let ca_key = KeyPair::from_pem(&std::fs::read_to_string(ca_dir.join("ca.key"))?)
        .map_err(|_| anyhow!("the agent CA key is not usable"))?;
    let issuer = Issuer::from_ca_cert_pem(&ca_cert, ca_key)?;
    let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256)?;
    let mut params = CertificateParams::default();
    let now = time::OffsetDateTime::now_utc();
    params.not_before = now - time::Duration::minutes(5);
    params.not_after = now + time::Duration::days(365);
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, agent_id);
    params.distinguished_name = dn;
    params.subject_alt_names = vec![SanType::URI(
        format!("urn:tern:agent:{agent_id}").try_into()?,
    )];
    params.is_ca = IsCa::ExplicitNoCa;
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
    params.use_authority_key_identifier_extension = true;
    let cert = params.signed_by(&key, &issuer)?;
    std::fs::create_dir_all(out)?;
    let (cert_path, key_path) = (out.join("leaf.pem"), out.join("leaf.key"));
    std::fs::write(&cert_path, cert.pem())?;
    std::fs::write(&key_path, key.serialize_pem())?;
    Ok((cert_path, key_path))
}

/// One `tern-shim run` agent homed in `SHIM_HOME`: VmRSS sampled every
/// 500 ms for 5 s once the home coordinator has its directive stream.
fn measure_shim(h: &Harness, fed: &Federation) -> anyhow::Result<ShimRss> {
    let home = SHIM_HOME;
    let dir = h.path("shim-run");
    let agent_id = "bench-single-00001";
    let (cert, key) = issue_leaf(
        &fed.planes[home].dir.join("data").join("agent-ca"),
        agent_id,
        &dir,
    )?;
    let streams_before = metric(fed, home, "tern_agent_streams", &[])?;
    let mut coordinators = vec![fed.nodes[home].grpc()];
    coordinators.extend(
        (0..fed.len())
            .filter(|i| *i != home)
            .map(|i| fed.nodes[i].grpc()),
    );
    let ca = fed.pki.dir.join("ca.pem");
    let seed: u64 = rand::Rng::random(&mut h.seed().rng_for("shim-run"));
    let p = h.spawn(
        ProcessSpec::new("shim-run", binary("tern-shim"))
            .arg("run")
            .args(["--agent-id", agent_id])
            .args(["--home", REGION_NAMES[home]])
            .args(["--config-hash", "cfg-common"])
            .arg("--leaf-cert")
            .arg(&cert)
            .arg("--leaf-key")
            .arg(&key)
            .arg("--coordinator-ca")
            .arg(&ca)
            .arg("--region-ca")
            .arg(&ca)
            .args(["--coordinators", &coordinators.join(",")])
            .arg("--state-dir")
            .arg(dir.join("state"))
            .args(["--seed", &seed.to_string()])
            .env("RUST_LOG", "info")
            .args(["--hook-command", "true"]),
    )?;
    wait_until(
        "the single shim to register and open its directive stream",
        Duration::from_secs(60),
        Duration::from_millis(200),
        || {
            if !p.is_running() {
                return Check::Fatal(anyhow!("tern-shim run exited: {}", p.log_text()));
            }
            match metric(fed, home, "tern_agent_streams", &[]) {
                Ok(v) if v > streams_before => Check::Ready(()),
                Ok(v) => Check::pending(format!("tern_agent_streams = {v}")),
                Err(e) => Check::pending(e),
            }
        },
    )?;
    let mut samples = Vec::new();
    for _ in 0..10 {
        samples.push(process_rss(&p)?);
        std::thread::sleep(Duration::from_millis(500));
    }
    let hwm_kb = rss_kb(p.pid().as_raw(), "VmHWM:")?;
    p.terminate(Duration::from_secs(5));
    Ok(ShimRss {
        samples_kb: samples,
        hwm_kb,
    })
}

const SQL_SCRIPT: &str = r#"
import sqlite3, json, sys
db, lo, hi = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
c = sqlite3.connect('file:' + db + '?mode=ro', uri=True, timeout=10)
names = set(sys.argv[4].split(','))
def cmds(v, out):
    if isinstance(v, dict):
        k = v.get('kind')
        if isinstance(k, str) and k in names:
            out.append((k, len(json.dumps(v, separators=(',', ':')))))
            return
        for x in v.values():
            cmds(x, out)
    elif isinstance(v, list):
        for x in v:
            cmds(x, out)
rows = []
for idx, n, e in c.execute('SELECT idx, length(CAST(entry AS BLOB)), entry FROM raft_log WHERE idx > ? AND idx <= ? ORDER BY idx', (lo, hi)):
    p = json.loads(e).get('payload')
    out = []
    cmds(p, out)
    if not out:
        other = p if isinstance(p, str) else (next(iter(p.keys())) if isinstance(p, dict) and p else '?')
        out.append(('raft:' + str(other).lower(), 0))
    rows.append({'idx': idx, 'bytes': n, 'cmds': out})
print(json.dumps({'rows': rows}))
"#;

const COMMAND_KINDS: &str = "upsert_member,remove_member,put_note,region_transition,set_frozen,\
set_paused,register_agents,set_standbys,set_trust_bundle,set_region_info,stage_authorizations,\
report_agents,set_region_mode,hand_back";

/// Entries (lo, hi] of coordinator `i`'s log: (count, bytes, missing,
/// kinds).
type LogRange = (u64, u64, u64, BTreeMap<String, (u64, u64)>);

fn read_log(fed: &Federation, i: usize, lo: u64, hi: u64) -> anyhow::Result<LogRange> {
    let db = fed.nodes[i].dir.join("data").join("tern.db");
    let out = run_bounded(
        Command::new("python3")
            .arg("-c")
            .arg(SQL_SCRIPT)
            .arg(&db)
            .arg(lo.to_string())
            .arg(hi.to_string())
            .arg(COMMAND_KINDS.replace(char::is_whitespace, "")),
        Duration::from_secs(60),
    )?;
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).context("python output")?;
    let rows = v["rows"].as_array().cloned().unwrap_or_default();
    let mut bytes = 0;
    let mut kinds: BTreeMap<String, (u64, u64)> = BTreeMap::new();
    for r in &rows {
        bytes += r["bytes"].as_u64().unwrap_or(0);
        for c in r["cmds"].as_array().cloned().unwrap_or_default() {
            let k = c[0].as_str().unwrap_or("?").to_string();
            let e = kinds.entry(k).or_default();
            e.0 += 1;
            e.1 += c[1].as_u64().unwrap_or(0);
        }
    }
    let n = rows.len() as u64;
    Ok((n, bytes, hi.saturating_sub(lo).saturating_sub(n), kinds))
}

fn trial(n: usize, index: usize, with_shim: bool) -> anyhow::Result<(Trial, Option<ShimRss>)> {
    let h = Harness::new(&format!("agents_{n}_{index}"));
    let started = Instant::now();
    let seed = h.seed().value();
    eprintln!("[agents] N={n} trial {index}: seed {seed}");
    let outcome = (|| -> anyhow::Result<(Trial, Option<ShimRss>)> {
        let fed = Federation::start(
            &h,
            FederationConfig {
                relays: false,
                down_after_ms: DOWN_AFTER_MS,
                ..FederationConfig::default()
            },
        )?;
        let leader = fed.leader()?;
        let li = if leader == 0 { 1 } else { 0 };
        let lost = REGION_NAMES[li];
        eprintln!("[agents] leader {}, losing {lost}", REGION_NAMES[leader]);
        let shim = if with_shim {
            let s = measure_shim(&h, &fed)?;
            eprintln!("[agents] single shim VmRSS samples {:?} KiB", s.samples_kb);
            Some(s)
        } else {
            None
        };
        let mut t = Trial {
            agents: n,
            seed,
            lost: lost.to_string(),
            leader: REGION_NAMES[leader].to_string(),
            coord_rss_before: coordinator_rss(&fed),
            ..Trial::default()
        };
        // Initial connects spread at ~250 agents/s overall (at least 4 s).
        let spread = (n as u64 * 4).max(4_000);
        let per = n.div_ceil(n.div_ceil(AGENTS_PER_FLEET));
        let mut fleets: Vec<Fleet> = Vec::new();
        let t_fleet = Instant::now();
        let mut left = n;
        while left > 0 {
            let k = per.min(left);
            let name = format!("{lost}-f{}", fleets.len());
            fleets.push(start_fleet_with(
                &h,
                &fed,
                &name,
                li,
                k,
                "cfg-common",
                &FleetOptions {
                    connect_spread_ms: Some(spread),
                    no_events: true,
                    apply_jitter_ms: Some(knobs().0),
                    rate: Some(knobs().1),
                    ..FleetOptions::default()
                },
            )?);
            left -= k;
        }
        t.fleets = fleets.len();
        wait_until(
            "every simulated agent to register and attach at home",
            Duration::from_millis(120_000 + spread + n as u64 * 20),
            Duration::from_millis(500),
            || {
                if let Some(f) = fleets.iter().find(|f| !f.process.is_running()) {
                    return Check::Fatal(anyhow!("fleet {} exited; see its log", f.name));
                }
                let (mut reg, mut home) = (0, 0);
                for f in &fleets {
                    reg += f.status().map(|s| s.registered).unwrap_or(0);
                    home += f.at_home();
                }
                Check::ready_or(
                    (reg >= n && home >= n).then_some(()),
                    format!("{reg} registered, {home} at home of {n}"),
                )
            },
        )?;
        t.register_ms = t_fleet.elapsed().as_millis() as u64;
        eprintln!(
            "[agents] {n} registered and at home after {} ms",
            t.register_ms
        );
        wait_metric(
            &fed,
            leader,
            "every agent of the lost region to be staged",
            "tern_agents_staged",
            &[("region", lost)],
            n as i64,
            Duration::from_millis(120_000 + n as u64 * 20),
        )?;
        t.staged_ms = t_fleet.elapsed().as_millis() as u64;
        t.coord_rss_after = coordinator_rss(&fed);
        t.fleet_rss_kb = fleets
            .iter()
            .map(|f| process_rss(&f.process).unwrap_or(0))
            .sum();
        eprintln!(
            "[agents] staged after {} ms; coordinator VmRSS before {:?} after {:?} KiB; fleets {} KiB",
            t.staged_ms, t.coord_rss_before, t.coord_rss_after, t.fleet_rss_kb
        );

        let idx0 = metric(&fed, leader, "tern_raft_last_log_index", &[])? as u64;
        let t0 = now_ms();
        fed.kill(li);
        fed.kill_plane(li);
        eprintln!(
            "[agents] {lost}'s coordinator and stand-in SIGKILLed at {t0} (log index {idx0})"
        );
        let deadline =
            Instant::now() + Duration::from_millis(DOWN_AFTER_MS + 60_000 + n as u64 * 20);
        let mut last_log = Instant::now();
        while Instant::now() < deadline && t.p100_ms.is_none() {
            let away: usize = fleets.iter().map(|f| f.away()).sum();
            let ms = now_ms() - t0;
            if t.p50_ms.is_none() && away * 2 >= n {
                t.p50_ms = Some(ms);
            }
            if t.p99_ms.is_none() && away * 100 >= n * 99 {
                t.p99_ms = Some(ms);
            }
            if away >= n {
                t.p100_ms = Some(ms);
            }
            if last_log.elapsed() > Duration::from_secs(5) {
                eprintln!("[agents] +{ms} ms: {away} of {n} attached elsewhere");
                last_log = Instant::now();
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        eprintln!(
            "[agents] kill -> attached elsewhere: 50% {:?} ms, 99% {:?} ms, 100% {:?} ms",
            t.p50_ms, t.p99_ms, t.p100_ms
        );
        wait_until(
            "the leader to report no handover in flight",
            Duration::from_secs(60),
            Duration::from_millis(200),
            || match metric(
                &fed,
                leader,
                "tern_handovers_in_flight",
                &[("region", lost)],
            ) {
                Ok(0) => Check::Ready(()),
                Ok(v) => Check::pending(format!("tern_handovers_in_flight = {v}")),
                Err(e) => Check::pending(e),
            },
        )?;
        t.settled_ms = Some(now_ms() - t0);
        let idx1 = metric(&fed, leader, "tern_raft_last_log_index", &[])? as u64;
        let (entries, bytes, missing, kinds) = read_log(&fed, leader, idx0, idx1)?;
        t.entries = entries + missing;
        t.entry_bytes = bytes;
        t.entries_missing = missing;
        t.kinds = kinds;
        for f in &fleets {
            if let Ok(s) = f.status() {
                for (r, c) in s.serving {
                    *t.serving.entry(r).or_default() += c;
                }
            }
        }
        eprintln!(
            "[agents] log {idx0}..={idx1}: {} entries ({missing} purged), {bytes} bytes, kinds {:?}; serving {:?}",
            t.entries, t.kinds, t.serving
        );
        Ok((t, shim))
    })();
    let (mut t, shim) = h.conclude(outcome)?;
    t.wall_s = started.elapsed().as_secs_f64();
    Ok((t, shim))
}

/// Points `TERN_BIN_DIR` at `<target>/release` unless it is set.
fn choose_bin_dir() -> anyhow::Result<PathBuf> {
    if let Some(dir) = std::env::var_os(BIN_DIR_ENV) {
        return Ok(PathBuf::from(dir));
    }
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../target"));
    let dir = target.join("release");
    for b in ["tern", "tern-shim"] {
        if !dir.join(b).is_file() {
            bail!(
                "no {b} under {}: run `cargo build --release --bins` first (or set {BIN_DIR_ENV})",
                dir.display()
            );
        }
    }
    std::env::set_var(BIN_DIR_ENV, &dir);
    Ok(dir)
}

/// (`--apply-jitter-ms`, `--rate-burst` = `--rate-tokens`) of every fleet:
/// `TERN_BENCH_APPLY_JITTER_MS` (default 500) and `TERN_BENCH_RATE`
/// (default 1000), the agent failover test's values.
fn knobs() -> (u64, u64) {
    let get = |k: &str, d: u64| {
        std::env::var(k)
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(d)
    };
    (
        get("TERN_BENCH_APPLY_JITTER_MS", 500),
        get("TERN_BENCH_RATE", 1000),
    )
}

fn plan() -> Vec<(usize, usize)> {
    let text = std::env::var("TERN_BENCH_PLAN").unwrap_or_else(|_| "1000x3,10000x2".into());
    text.split(',')
        .filter_map(|p| {
            let (n, t) = p.trim().split_once('x')?;
            Some((n.parse().ok()?, t.parse().ok()?))
        })
        .collect()
}

fn median(v: &[u64]) -> Option<u64> {
    let mut s = v.to_vec();
    s.sort_unstable();
    match s.len() {
        0 => None,
        n if n % 2 == 1 => Some(s[n / 2]),
        n => Some((s[n / 2 - 1] + s[n / 2]) / 2),
    }
}

fn opt_s(ms: Option<u64>) -> String {
    ms.map(|m| format!("{:.2}", m as f64 / 1000.0))
        .unwrap_or_else(|| "—".into())
}

fn per_agent_bytes(t: &Trial, region: &str) -> Option<f64> {
    let b = t.coord_rss_before.get(region)?;
    let a = t.coord_rss_after.get(region)?;
    Some((*a as f64 - *b as f64) * 1024.0 / t.agents as f64)
}

fn limits() -> String {
    let nofile = std::fs::read_to_string("/proc/self/limits")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("Max open files"))
                .map(|l| {
                    l.split_whitespace()
                        .skip(3)
                        .take(2)
                        .collect::<Vec<_>>()
                        .join(" / ")
                })
        })
        .unwrap_or_else(|| "unknown".into());
    let ports = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .map(|s| s.split_whitespace().collect::<Vec<_>>().join("-"))
        .unwrap_or_else(|_| "unknown".into());
    format!("RLIMIT_NOFILE soft / hard {nofile}; ephemeral ports {ports}")
}

fn report(trials: &[Trial], shim: Option<&ShimRss>, bin: &Path) -> anyhow::Result<String> {
    let date =
        time::OffsetDateTime::now_utc().format(&time::format_description::well_known::Rfc3339)?;
    let mut sizes: Vec<usize> = trials.iter().map(|t| t.agents).collect();
    sizes.dedup();
    let mut medians = Vec::new();
    for n in &sizes {
        let ts: Vec<&Trial> = trials.iter().filter(|t| t.agents == *n).collect();
        let col = |f: &dyn Fn(&Trial) -> Option<u64>| {
            median(&ts.iter().filter_map(|t| f(t)).collect::<Vec<_>>())
        };
        let home_b = {
            let v: Vec<u64> = ts
                .iter()
                .filter_map(|t| per_agent_bytes(t, &t.lost).map(|b| b.max(0.0) as u64))
                .collect();
            median(&v)
        };
        let by = |pick: &dyn Fn(&Trial) -> Option<String>| {
            let v: Vec<u64> = ts
                .iter()
                .filter_map(|t| per_agent_bytes(t, &pick(t)?).map(|b| b.max(0.0) as u64))
                .collect();
            median(&v)
        };
        let leader_b = by(&|t| Some(t.leader.clone()));
        let third_b = by(&|t| {
            t.coord_rss_after
                .keys()
                .find(|r| **r != t.lost && **r != t.leader)
                .cloned()
        });
        medians.push(format!(
            "| {n} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |",
            ts.len(),
            opt_s(col(&|t| Some(t.register_ms))),
            opt_s(col(&|t| t.p50_ms)),
            opt_s(col(&|t| t.p99_ms)),
            opt_s(col(&|t| t.p100_ms)),
            col(&|t| Some(t.entries)).unwrap_or(0),
            col(&|t| Some(t.entry_bytes)).unwrap_or(0),
            home_b.map(|b| b.to_string()).unwrap_or_else(|| "—".into()),
            leader_b
                .map(|b| b.to_string())
                .unwrap_or_else(|| "—".into()),
            third_b.map(|b| b.to_string()).unwrap_or_else(|| "—".into()),
            col(&|t| Some(t.fleet_rss_kb * 1024 / t.agents as u64)).unwrap_or(0),
        ));
    }
    let all: Vec<String> = trials
        .iter()
        .map(|t| {
            format!(
                "| {} | {} | {} / {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {:?} | {:.0} |",
                t.agents,
                t.seed,
                t.lost,
                t.leader,
                t.fleets,
                opt_s(Some(t.register_ms)),
                opt_s(t.p50_ms),
                opt_s(t.p99_ms),
                opt_s(t.p100_ms),
                opt_s(t.settled_ms),
                t.entries,
                t.entry_bytes,
                t.entries_missing,
                t.serving,
                t.wall_s,
            )
        })
        .collect();
    let kinds: Vec<String> = trials
        .iter()
        .map(|t| {
            format!(
                "- N={} seed {}: {}",
                t.agents,
                t.seed,
                t.kinds
                    .iter()
                    .map(|(k, (c, b))| format!("{k} ×{c} ({b} B)"))
                    .collect::<Vec<_>>()
                    .join(", ")
            )
        })
        .collect();
    let mem: Vec<String> = trials
        .iter()
        .map(|t| {
            let regions: Vec<String> = t
                .coord_rss_after
                .keys()
                .map(|r| {
                    format!(
                        "{r}{}: {} → {} KiB ({:.0} B/agent)",
                        if *r == t.lost {
                            " (home)"
                        } else if *r == t.leader {
                            " (leader)"
                        } else {
                            ""
                        },
                        t.coord_rss_before.get(r).copied().unwrap_or(0),
                        t.coord_rss_after.get(r).copied().unwrap_or(0),
                        per_agent_bytes(t, r).unwrap_or(0.0)
                    )
                })
                .collect();
            format!(
                "- N={} seed {}: {}; fleets {} KiB ({} B/agent)",
                t.agents,
                t.seed,
                regions.join("; "),
                t.fleet_rss_kb,
                t.fleet_rss_kb * 1024 / t.agents as u64
            )
        })
        .collect();
    let shim_line = match shim {
        Some(s) => format!(
            "VmRSS samples every 500 ms over 5 s once registered and watching: {:?} KiB (median {} KiB); VmHWM {} KiB",
            s.samples_kb,
            median(&s.samples_kb).unwrap_or(0),
            s.hwm_kb
        ),
        None => "not measured in this run".into(),
    };
    Ok(format!(
        "# Agent failover benchmark\n\n\
Date: {date}\n\
Machine: {machine}\n\
Limits: {limits}\n\
Binaries: `{bin}` (release profile)\n\
Fleet timing: `--apply-jitter-ms {jitter}`, `--rate-burst {rate} --rate-tokens {rate}` (per target region, per \
fleet process of at most {per_fleet} agents), `--reconnect-base-ms 250 --reconnect-cap-ms 2000`, initial \
connects spread over 4 ms × N (≥ 4 s)\n\
Command: `cargo build --release --bins && cargo bench -p tern-tests --bench agents`\n\n\
## Medians\n\n\
Times in seconds from the SIGKILL of the lost region's coordinator and stand-in (`down_after` = 10 s). \
Raft entries / bytes: log entries appended from just before the kill until every agent is attached \
elsewhere and the leader reports no handover in flight (bytes: their serde_json encoding as stored and \
as sent in AppendEntries, per follower). Coordinator memory: growth of VmRSS from before the fleets \
started to every agent registered and staged, divided by N (home = the lost region's coordinator, \
which holds the agents' directive streams; leader = the Raft leader; third = the other surviving \
coordinator, which holds only the replicated state).\n\n\
| agents | trials | register (s) | 50 % (s) | 99 % (s) | 100 % (s) | Raft entries | Raft bytes | coord. B/agent (home) | coord. B/agent (leader) | coord. B/agent (third) | fleet B/agent |\n\
|---|---|---|---|---|---|---|---|---|---|---|---|\n\
{medians}\n\n\
## All trials\n\n\
| agents | seed | lost / leader | fleet procs | register (s) | 50 % (s) | 99 % (s) | 100 % (s) | settled (s) | entries | bytes | entries purged | serving at end | wall (s) |\n\
|---|---|---|---|---|---|---|---|---|---|---|---|---|---|\n\
{all}\n\n\
Commands in the failover's entries, by kind (count, bytes of their JSON):\n\n\
{kinds}\n\n\
Coordinator VmRSS before → after registration:\n\n\
{mem}\n\n\
## Shim in single-agent mode\n\n\
One `tern-shim run` (release), one agent homed in ap with a leaf issued by ap's stand-in agent CA, \
`--hook-command true`: {shim_line}.\n",
        machine = tern_tests::machine(),
        limits = limits(),
        jitter = knobs().0,
        rate = knobs().1,
        per_fleet = AGENTS_PER_FLEET,
        bin = bin.display(),
        medians = medians.join("\n"),
        all = all.join("\n"),
        kinds = kinds.join("\n"),
        mem = mem.join("\n"),
    ))
}

fn main() -> anyhow::Result<()> {
    // `cargo bench` passes `--bench`; `cargo test --benches/--all-targets`
    // does not: never run the (minutes-long) measurement from a test run.
    if !std::env::args().any(|a| a == "--bench") {
        eprintln!("[agents] not run: this benchmark runs only under `cargo bench`");
        return Ok(());
    }
    let bin = choose_bin_dir()?;
    eprintln!(
        "[agents] binaries from {}; {}; apply jitter {} ms, rate {}/s",
        bin.display(),
        limits(),
        knobs().0,
        knobs().1
    );
    let mut trials = Vec::new();
    let mut shim = None;
    for (n, count) in plan() {
        for k in 0..count {
            let with_shim = shim.is_none();
            match trial(n, k, with_shim) {
                Ok((t, s)) => {
                    trials.push(t);
                    if s.is_some() {
                        shim = s;
                    }
                }
                Err(e) => eprintln!("[agents] N={n} trial {k} failed: {e:#}"),
            }
        }
    }
    let text = report(&trials, shim.as_ref(), &bin)?;
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../bench/reports/agents.md");
    let out = std::env::var_os("TERN_BENCH_REPORT")
        .map(PathBuf::from)
        .unwrap_or(path);
    if let Some(parent) = out.parent() {
        std::fs::create_dir_all(parent)?;
    }
    std::fs::write(&out, &text)?;
    println!("{text}");
    println!("report written to {}", out.display());
    Ok(())
}
