//! `tern demo`: a local three-region federation on 127.0.0.x, on the
//! embedded defaults. It creates a development PKI, starts one region
//! stand-in (in this process) and one `tern serve` process per region,
//! waits for a leader, writes `DIR/env.sh` for the admin CLI, and runs until
//! Ctrl-C. While it runs, `tern demo outage REGION` takes a region's control
//! plane and coordinator down and `tern demo restore REGION` brings them
//! back, through a small control endpoint on 127.0.0.1 (its address is in
//! `DIR/demo.json`).

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context};
use axum::extract::{Path as UrlPath, State};
use axum::http::StatusCode;
use axum::routing::post;
use axum::Router;
use clap::Subcommand;
use tern_proto::v1 as pb;
use time::OffsetDateTime;
use tokio::process::{Child, Command};
use tokio::sync::Mutex;

use super::{ClientArgs, Output};
use crate::node::ReadyInfo;
use crate::standin::{self, Mode, StandInConfig, StandInHandle};
use crate::tls::pki::DevCa;

#[derive(Debug, Subcommand)]
pub enum DemoAction {
    /// Take a region's control plane and coordinator down (as if the region were lost).
    Outage { region: String },
    /// Bring a region's control plane and coordinator back.
    Restore { region: String },
}

struct Region {
    node_id: u64,
    name: &'static str,
    grpc: SocketAddr,
    http: SocketAddr,
    thumbprint: String,
    control_plane: String,
    dir: PathBuf,
}

/// A region's running parts, owned by the demo.
struct Running {
    name: String,
    config: PathBuf,
    log: PathBuf,
    child: Option<Child>,
    standin: StandInHandle,
}

type Shared = Arc<Mutex<Vec<Running>>>;

const REGIONS: [(&str, u8); 3] = [("eu", 11), ("us", 12), ("ap", 13)];
/// The demo shortens the up dwell time (default 120 s) so a restored region
/// turns healthy while you watch.
const DEMO_UP_AFTER_MS: u64 = 30_000;
/// The one configuration every demo region holds (its content hash).
const DEMO_CONFIG_HASH: &str = "demo-config-v1";
/// Simulated agents per region.
const DEMO_AGENTS_PER_REGION: usize = 200;

fn free_port(ip: Ipv4Addr) -> anyhow::Result<u16> {
    let l = std::net::TcpListener::bind((ip, 0)).with_context(|| format!("binding {ip}:0"))?;
    Ok(l.local_addr()?.port())
}

fn abs(p: &Path) -> anyhow::Result<PathBuf> {
    Ok(if p.is_absolute() {
        p.to_path_buf()
    } else {
        std::env::current_dir()?.join(p)
    })
}

/// `tern demo outage|restore REGION`: asks the running demo to act.
pub async fn action(dir: &Path, action: DemoAction) -> anyhow::Result<i32> {
    let info = std::fs::read_to_string(dir.join("demo.json")).with_context(|| {
        format!(
            "no running demo found in {} (start `tern demo` first)",
            dir.display()
        )
    })?;
    let v: serde_json::Value = serde_json::from_str(&info)?;
    let control = v["control"]
        .as_str()
        .ok_or_else(|| anyhow!("demo.json has no control address"))?;
    let (verb, region) = match &action {
        DemoAction::Outage { region } => ("outage", region),
        DemoAction::Restore { region } => ("restore", region),
    };
    let url = format!("http://{control}/{verb}/{region}");
    let client = reqwest::Client::builder().build()?;
    let resp = client
        .post(&url)
        .send()
        .await
        .with_context(|| format!("contacting the demo at {control}"))?;
    let status = resp.status();
    let text = resp.text().await.unwrap_or_default();
    if !status.is_success() {
        bail!("{text}");
    }
    println!("{text}");
    Ok(0)
}

pub async fn run(dir: &Path) -> anyhow::Result<i32> {
    crate::tls::install_crypto_provider();
    let dir = abs(dir)?;
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    for sub in ["pki", "eu", "us", "ap", "demo.json", "env.sh"] {
        let p = dir.join(sub);
        if p.is_dir() {
            std::fs::remove_dir_all(&p)
                .with_context(|| format!("clearing the previous demo in {}", p.display()))?;
        } else if p.exists() {
            std::fs::remove_file(&p)?;
        }
    }
    println!(
        "Tern demo: a three-region federation on 127.0.0.x (files in {})",
        dir.display()
    );

    // PKI.
    let pki = dir.join("pki");
    std::fs::create_dir_all(&pki)?;
    let ca = DevCa::generate("Tern demo CA", Duration::from_secs(30 * 86_400))?;
    ca.write(&pki)?;
    let now = OffsetDateTime::now_utc();
    let (nb, na) = (
        now - time::Duration::hours(1),
        now + time::Duration::days(90),
    );
    ca.issue_admin("demo-admin", nb, now + time::Duration::days(30))?
        .write(&pki, "demo-admin")?;

    // Regions: a coordinator certificate and a stand-in per region.
    let mut regions = Vec::new();
    let mut standins = Vec::new();
    for (i, (name, last)) in REGIONS.iter().enumerate() {
        let ip = Ipv4Addr::new(127, 0, 0, *last);
        let cert = ca.issue_node(
            name,
            &[format!("{name}.tern.local"), "localhost".into()],
            &[IpAddr::V4(ip)],
            nb,
            na,
        )?;
        cert.write(&pki, name)?;
        let plane_name = format!("{name}-control-plane");
        ca.issue_node(&plane_name, &[], &[IpAddr::V4(ip)], nb, na)?
            .write(&pki, &plane_name)?;
        let rdir = dir.join(name);
        std::fs::create_dir_all(&rdir)?;
        let cfg = StandInConfig {
            region: name.parse()?,
            listen_https: SocketAddr::new(IpAddr::V4(ip), 0),
            listen_control: SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 0),
            tls_cert_file: pki.join(format!("{plane_name}.pem")),
            tls_key_file: pki.join(format!("{plane_name}.key")),
            data_dir: rdir.join("stand-in"),
            agent_ca: None,
            federation_peers: vec![],
            configs: [DEMO_CONFIG_HASH.to_string()].into(),
            coordinator_ca_file: Some(pki.join("ca.pem")),
            ready_file: None,
        };
        let (https, control) = standin::bind(&cfg).await?;
        let handle = standin::start(cfg, https, control).await?;
        let control_plane = format!("https://{}", handle.https_addr());
        regions.push(Region {
            node_id: i as u64 + 1,
            name,
            grpc: SocketAddr::new(IpAddr::V4(ip), free_port(ip)?),
            http: SocketAddr::new(IpAddr::V4(ip), free_port(ip)?),
            thumbprint: cert.thumbprint.to_string(),
            control_plane,
            dir: rdir,
        });
        standins.push(handle);
    }

    // Configurations.
    for r in &regions {
        let mut t = format!(
            "# Tern demo: coordinator of region {name}\nnode_id = {id}\nregion = \"{name}\"\ndata_dir = \"data\"\nready_file = \"ready.json\"\n\n[listen]\ngrpc = \"{grpc}\"\nhttp = \"{http}\"\n\n[tls]\nca_file = \"{ca}\"\ncert_file = \"{cert}\"\nkey_file = \"{key}\"\n\n[control_plane]\nurl = \"{cp}\"\n\n[health]\n# shortened for the demo (default 120000)\nup_after_ms = {up}\n\n[bootstrap]\ninitialize = {init}\n",
            name = r.name,
            id = r.node_id,
            grpc = r.grpc,
            http = r.http,
            ca = pki.join("ca.pem").display(),
            cert = pki.join(format!("{}.pem", r.name)).display(),
            key = pki.join(format!("{}.key", r.name)).display(),
            cp = r.control_plane,
            up = DEMO_UP_AFTER_MS,
            init = r.node_id == 1,
        );
        for o in regions.iter().filter(|o| o.node_id != r.node_id) {
            t.push_str(&format!(
                "\n[[bootstrap.members]]\nnode_id = {}\nregion = \"{}\"\naddress = \"{}\"\nthumbprint = \"{}\"\ncontrol_plane = \"{}\"\n",
                o.node_id, o.name, o.grpc, o.thumbprint, o.control_plane
            ));
        }
        std::fs::write(r.dir.join("tern.toml"), t)?;
    }

    // Coordinator processes.
    let mut running = Vec::new();
    for (r, standin) in regions.iter().zip(standins) {
        let mut run = Running {
            name: r.name.to_string(),
            config: r.dir.join("tern.toml"),
            log: r.dir.join("tern.log"),
            child: None,
            standin,
        };
        start_coordinator(&mut run)?;
        println!(
            "  region {:<3} node {} grpc {} http {} control plane {} (log: {}/tern.log)",
            r.name,
            r.node_id,
            r.grpc,
            r.http,
            r.control_plane,
            r.dir.display()
        );
        running.push(run);
    }
    let shared: Shared = Arc::new(Mutex::new(running));

    if let Err(e) = wait_up(&regions, &pki, &shared).await {
        eprintln!("error: the demo federation did not come up: {e:#}");
        for r in &regions {
            eprintln!("--- last lines of {}/tern.log ---", r.dir.display());
            if let Ok(text) = std::fs::read_to_string(r.dir.join("tern.log")) {
                for line in text
                    .lines()
                    .rev()
                    .take(20)
                    .collect::<Vec<_>>()
                    .into_iter()
                    .rev()
                {
                    eprintln!("{line}");
                }
            }
        }
        stop_all(&shared).await;
        return Ok(1);
    }

    // A simulated fleet per region: each agent with its own leaf from its
    // region's agent CA, attached at home, registered, watching.
    let mut fleets = Vec::new();
    for (i, r) in regions.iter().enumerate() {
        let ca_dir = r.dir.join("stand-in").join("agent-ca");
        let mut coordinators = vec![r.grpc.to_string()];
        coordinators.extend(
            regions
                .iter()
                .filter(|o| o.node_id != r.node_id)
                .map(|o| o.grpc.to_string()),
        );
        let config = tern_agent_shim::FleetConfig {
            agents: DEMO_AGENTS_PER_REGION,
            home_region: r.name.to_string(),
            home_base_url: r.control_plane.clone(),
            agent_ca_cert_pem: std::fs::read_to_string(ca_dir.join("ca.pem"))?,
            agent_ca_key_pem: std::fs::read_to_string(ca_dir.join("ca.key"))?,
            coordinator_ca: tern_agent_shim::PemSource::File(pki.join("ca.pem")),
            region_ca: tern_agent_shim::PemSource::File(pki.join("ca.pem")),
            coordinators,
            tenant: "demo".into(),
            config: tern_agent_shim::ConfigRef {
                id: "demo-config".into(),
                version: 1,
                content_hash: DEMO_CONFIG_HASH.into(),
            },
            capabilities: vec!["AcceptsOpAMPConnectionSettings".into()],
            allowed_regions: vec![],
            id_prefix: format!("{}-agent-", r.name),
            seed: 0x7e4e_0000 + i as u64,
            leaf_validity: Duration::from_secs(365 * 86_400),
            connect_spread_ms: 2_000,
            status_file: Some(r.dir.join("fleet-status.json")),
            events_file: None,
            status_interval_ms: 500,
            timing: tern_agent_shim::Timing::default(),
        };
        match tern_agent_shim::fleet::start(config).await {
            Ok(h) => fleets.push(h),
            Err(e) => eprintln!(
                "warning: the simulated fleet of {} did not start: {e}",
                r.name
            ),
        }
    }
    if !fleets.is_empty() {
        println!(
            "  simulated agents: {} per region (status: DIR/<region>/fleet-status.json)",
            DEMO_AGENTS_PER_REGION
        );
    }

    // Control endpoint for `tern demo outage|restore`.
    let control = tokio::net::TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).await?;
    let control_addr = control.local_addr()?;
    let app = Router::new()
        .route("/outage/{region}", post(outage))
        .route("/restore/{region}", post(restore))
        .with_state(shared.clone());
    tokio::spawn(async move { axum::serve(control, app).await });
    std::fs::write(
        dir.join("demo.json"),
        serde_json::json!({ "control": control_addr.to_string() }).to_string(),
    )?;

    std::fs::write(
        dir.join("env.sh"),
        format!(
            "# Source this file: . {dir}/env.sh\nexport TERN_ADDR=https://{addr}\nexport TERN_CACERT={pki}/ca.pem\nexport TERN_CLIENT_CERT={pki}/demo-admin.pem\nexport TERN_CLIENT_KEY={pki}/demo-admin.key\n",
            dir = dir.display(),
            addr = regions[1].grpc,
            pki = pki.display(),
        ),
    )?;
    let exe = std::env::current_exe().context("locating the tern binary")?;
    let d = if dir == abs(Path::new("tern-demo"))? {
        String::new()
    } else {
        format!(" --dir {}", dir.display())
    };
    println!();
    println!(
        "The federation is up. In another shell (`tern` is {}):",
        exe.display()
    );
    println!("  . {}/env.sh", dir.display());
    println!("  tern status                      # leader, term, indexes, members");
    println!("  tern regions                     # region health and what each observer sees");
    println!("  tern demo outage eu{d}          # lose region eu: control plane and coordinator");
    println!("  tern regions                     # eu: suspect, then unreachable after 10 s");
    println!(
        "  tern demo restore eu{d}         # bring it back: recovering, then healthy after 30 s"
    );
    println!(
        "  tern audit                       # every decision, with the observations behind it"
    );
    println!(
        "  tern agents --summary            # agents per home region, serving region and state"
    );
    println!(
        "  tern plan eu                     # where eu's agents would go, what preflight rejects"
    );
    println!(
        "  tern drill us                    # timed DR drill: drain us, agents out and home again"
    );
    println!("  tern rotate status               # pin rotations (transport certificates)");
    println!("  tern pause / tern resume         # automation off and on");
    println!("  curl http://{}/metrics", regions[1].http);
    println!(
        "  status page: http://{}/status   # open in a browser",
        regions[1].http
    );
    println!("Press Ctrl-C to stop the federation.");

    let code = tokio::select! {
        _ = super::shutdown_signal() => 0,
        name = watch_exits(&shared) => {
            eprintln!("error: the coordinator of {name} exited unexpectedly; see its tern.log");
            1
        }
    };
    println!("stopping the federation...");
    for f in fleets {
        let _ = f.stop().await;
    }
    stop_all(&shared).await;
    let _ = std::fs::remove_file(dir.join("demo.json"));
    Ok(code)
}

fn start_coordinator(run: &mut Running) -> anyhow::Result<()> {
    let exe = std::env::current_exe().context("locating the tern binary")?;
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&run.log)?;
    let child = Command::new(&exe)
        .arg("serve")
        .arg("--config")
        .arg(&run.config)
        .stdout(Stdio::from(log.try_clone()?))
        .stderr(Stdio::from(log))
        .stdin(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .with_context(|| format!("starting the coordinator of {}", run.name))?;
    run.child = Some(child);
    Ok(())
}

/// The running parts of `region`, or the 404 answer naming it.
fn find_region<'a>(
    all: &'a mut [Running],
    region: &str,
) -> Result<&'a mut Running, (StatusCode, String)> {
    all.iter_mut().find(|r| r.name == region).ok_or_else(|| {
        (
            StatusCode::NOT_FOUND,
            format!("no region {region:?} in this demo"),
        )
    })
}

async fn outage(
    State(shared): State<Shared>,
    UrlPath(region): UrlPath<String>,
) -> (StatusCode, String) {
    let mut all = shared.lock().await;
    let run = match find_region(&mut all, &region) {
        Ok(r) => r,
        Err(e) => return e,
    };
    if let Err(e) = run.standin.set_mode(Mode::Down).await {
        return (
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("stopping the control plane of {region}: {e}"),
        );
    }
    if let Some(mut c) = run.child.take() {
        let _ = c.kill().await;
    }
    (
        StatusCode::OK,
        format!("region {region}: control plane down and coordinator killed; watch `tern regions` (unreachable after the 10 s down dwell time) and `tern agents --summary` (its agents move to healthy regions)"),
    )
}

async fn restore(
    State(shared): State<Shared>,
    UrlPath(region): UrlPath<String>,
) -> (StatusCode, String) {
    let mut all = shared.lock().await;
    let run = match find_region(&mut all, &region) {
        Ok(r) => r,
        Err(e) => return e,
    };
    if let Err(e) = run.standin.set_mode(Mode::Up).await {
        return (
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("starting the control plane of {region}: {e}"),
        );
    }
    if run.child.is_none() {
        if let Err(e) = start_coordinator(run) {
            return (
                StatusCode::INTERNAL_SERVER_ERROR,
                format!("restarting the coordinator of {region}: {e:#}"),
            );
        }
    }
    (
        StatusCode::OK,
        format!("region {region}: control plane up and coordinator restarted; watch `tern regions` (recovering, then healthy after {} s) and `tern agents --summary` (its agents come home in waves)", DEMO_UP_AFTER_MS / 1000),
    )
}

async fn wait_up(regions: &[Region], pki: &Path, shared: &Shared) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(60);
    for r in regions {
        let ready = r.dir.join("ready.json");
        loop {
            if let Ok(text) = std::fs::read_to_string(&ready) {
                if serde_json::from_str::<ReadyInfo>(&text).is_ok() {
                    break;
                }
            }
            for run in shared.lock().await.iter_mut() {
                if let Some(c) = run.child.as_mut() {
                    if let Some(st) = c.try_wait()? {
                        bail!("the coordinator of {} exited ({st})", run.name);
                    }
                }
            }
            if Instant::now() > deadline {
                bail!("timed out waiting for {}", ready.display());
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    let args = ClientArgs {
        addr: Some(regions[0].grpc.to_string()),
        ca_cert: Some(pki.join("ca.pem")),
        client_cert: Some(pki.join("demo-admin.pem")),
        client_key: Some(pki.join("demo-admin.key")),
        output: Output::Text,
    };
    let mut last = String::from("no answer yet");
    loop {
        if Instant::now() > deadline {
            bail!("timed out waiting for a leader and three voters; last status: {last}");
        }
        if let Ok(mut client) = super::admin::connect(&args).await {
            match client.status(pb::StatusRequest {}).await {
                Ok(s) => {
                    let s = s.into_inner();
                    let voters = s
                        .members
                        .iter()
                        .filter(|m| m.voting == pb::Voting::Voter as i32 && !m.region.is_empty())
                        .count();
                    if s.leader_id.is_some() && voters == regions.len() {
                        println!(
                            "  leader: {} (term {}), {} voters",
                            s.leader_region, s.term, voters
                        );
                        return Ok(());
                    }
                    last = format!(
                        "leader {:?}, {} voters in the member table",
                        s.leader_id, voters
                    );
                }
                Err(e) => last = e.message().to_string(),
            }
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Resolves with a region's name when its coordinator exits without the
/// demo having killed it.
async fn watch_exits(shared: &Shared) -> String {
    loop {
        {
            let mut all = shared.lock().await;
            for run in all.iter_mut() {
                if let Some(c) = run.child.as_mut() {
                    if let Ok(Some(_)) = c.try_wait() {
                        return run.name.clone();
                    }
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

async fn stop_all(shared: &Shared) {
    let mut all = shared.lock().await;
    for run in all.iter_mut() {
        if let Some(pid) = run.child.as_ref().and_then(|c| c.id()) {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid as i32),
                nix::sys::signal::Signal::SIGTERM,
            );
        }
    }
    for run in all.iter_mut() {
        if let Some(c) = run.child.as_mut() {
            if tokio::time::timeout(Duration::from_secs(10), c.wait())
                .await
                .is_err()
            {
                eprintln!(
                    "the coordinator of {} did not stop in 10 s; killing it",
                    run.name
                );
                let _ = c.kill().await;
            }
        }
    }
}
