//! `tern demo`: a local three-region federation on 127.0.0.x, on the
//! embedded defaults. It creates a development PKI, writes one configuration
//! per region, starts one `tern serve` process per region, waits for a
//! leader, writes `DIR/env.sh` for the admin CLI, and runs until Ctrl-C.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use tern_proto::v1 as pb;
use time::OffsetDateTime;
use tokio::process::{Child, Command};

use super::{ClientArgs, Output};
use crate::node::ReadyInfo;
use crate::tls::pki::DevCa;

struct Region {
    node_id: u64,
    name: &'static str,
    grpc: SocketAddr,
    http: SocketAddr,
    thumbprint: String,
    dir: PathBuf,
}

const REGIONS: [(&str, u8); 3] = [("eu", 11), ("us", 12), ("ap", 13)];

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

pub async fn run(dir: &Path) -> anyhow::Result<i32> {
    crate::tls::install_crypto_provider();
    let dir = abs(dir)?;
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    for sub in ["pki", "eu", "us", "ap"] {
        let p = dir.join(sub);
        if p.exists() {
            std::fs::remove_dir_all(&p)
                .with_context(|| format!("clearing the previous demo in {}", p.display()))?;
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
    let admin = ca.issue_admin("demo-admin", nb, now + time::Duration::days(30))?;
    admin.write(&pki, "demo-admin")?;

    let mut regions = Vec::new();
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
        regions.push(Region {
            node_id: i as u64 + 1,
            name,
            grpc: SocketAddr::new(IpAddr::V4(ip), free_port(ip)?),
            http: SocketAddr::new(IpAddr::V4(ip), free_port(ip)?),
            thumbprint: cert.thumbprint.to_string(),
            dir: dir.join(name),
        });
    }

    // Configurations.
    for r in &regions {
        std::fs::create_dir_all(&r.dir)?;
        let mut t = format!(
            "# Tern demo: coordinator of region {name}\nnode_id = {id}\nregion = \"{name}\"\ndata_dir = \"data\"\nready_file = \"ready.json\"\n\n[listen]\ngrpc = \"{grpc}\"\nhttp = \"{http}\"\n\n[tls]\nca_file = \"{ca}\"\ncert_file = \"{cert}\"\nkey_file = \"{key}\"\n\n[bootstrap]\ninitialize = {init}\n",
            name = r.name,
            id = r.node_id,
            grpc = r.grpc,
            http = r.http,
            ca = pki.join("ca.pem").display(),
            cert = pki.join(format!("{}.pem", r.name)).display(),
            key = pki.join(format!("{}.key", r.name)).display(),
            init = r.node_id == 1,
        );
        for o in regions.iter().filter(|o| o.node_id != r.node_id) {
            t.push_str(&format!(
                "\n[[bootstrap.members]]\nnode_id = {}\nregion = \"{}\"\naddress = \"{}\"\nthumbprint = \"{}\"\n",
                o.node_id, o.name, o.grpc, o.thumbprint
            ));
        }
        std::fs::write(r.dir.join("tern.toml"), t)?;
    }

    // Processes.
    let exe = std::env::current_exe().context("locating the tern binary")?;
    let mut children: Vec<(String, Child)> = Vec::new();
    for r in &regions {
        let log = std::fs::File::create(r.dir.join("tern.log"))?;
        let child = Command::new(&exe)
            .arg("serve")
            .arg("--config")
            .arg(r.dir.join("tern.toml"))
            .stdout(Stdio::from(log.try_clone()?))
            .stderr(Stdio::from(log))
            .stdin(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("starting the coordinator of {}", r.name))?;
        println!(
            "  started region {:<3} node {} grpc {} http {} (log: {}/tern.log)",
            r.name,
            r.node_id,
            r.grpc,
            r.http,
            r.dir.display()
        );
        children.push((r.name.to_string(), child));
    }

    let result = wait_up(&regions, &pki, &mut children).await;
    if let Err(e) = result {
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
        stop_all(&mut children).await;
        return Ok(1);
    }

    let env = format!(
        "# Source this file: . {dir}/env.sh\nexport TERN_ADDR=https://{addr}\nexport TERN_CACERT={pki}/ca.pem\nexport TERN_CLIENT_CERT={pki}/demo-admin.pem\nexport TERN_CLIENT_KEY={pki}/demo-admin.key\n",
        dir = dir.display(),
        addr = regions[0].grpc,
        pki = pki.display(),
    );
    std::fs::write(dir.join("env.sh"), env)?;
    println!();
    println!("The federation is up. In another shell:");
    println!("  . {}/env.sh", dir.display());
    println!("  tern status                      # leader, term, indexes, members");
    println!("  tern status --output json");
    println!("  tern notes put greeting hello    # a replicated write (sent to any node, reaches the leader)");
    println!("  tern audit                       # every applied command");
    println!(
        "  curl http://{}/metrics          # Prometheus metrics",
        regions[0].http
    );
    println!("  curl http://{}/health/ready", regions[0].http);
    println!(
        "(`tern` is at {}; put it on your PATH or use the full path.)",
        exe.display()
    );
    println!("Press Ctrl-C to stop the federation.");

    let code = tokio::select! {
        _ = super::shutdown_signal() => 0,
        (name, status) = first_exit(&mut children) => {
            eprintln!("error: the coordinator of {name} exited unexpectedly ({status}); see its tern.log");
            1
        }
    };
    println!("stopping the federation...");
    stop_all(&mut children).await;
    Ok(code)
}

async fn wait_up(
    regions: &[Region],
    pki: &Path,
    children: &mut [(String, Child)],
) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(60);
    for r in regions {
        let ready = r.dir.join("ready.json");
        loop {
            if let Ok(text) = std::fs::read_to_string(&ready) {
                if serde_json::from_str::<ReadyInfo>(&text).is_ok() {
                    break;
                }
            }
            for (name, c) in children.iter_mut() {
                if let Some(st) = c.try_wait()? {
                    bail!("the coordinator of {name} exited ({st})");
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

async fn first_exit(children: &mut [(String, Child)]) -> (String, String) {
    let futs = children.iter_mut().map(|(name, c)| {
        Box::pin(async move {
            let st = c
                .wait()
                .await
                .map(|s| s.to_string())
                .unwrap_or_else(|e| e.to_string());
            (name.clone(), st)
        })
    });
    futures::future::select_all(futs).await.0
}

async fn stop_all(children: &mut [(String, Child)]) {
    for (_, c) in children.iter_mut() {
        if let Some(pid) = c.id() {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid as i32),
                nix::sys::signal::Signal::SIGTERM,
            );
        }
    }
    for (name, c) in children.iter_mut() {
        if tokio::time::timeout(Duration::from_secs(10), c.wait())
            .await
            .is_err()
        {
            eprintln!("the coordinator of {name} did not stop in 10 s; killing it");
            let _ = c.kill().await;
        }
    }
}
