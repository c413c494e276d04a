//! Tern-specific helpers for the multi-process tests: a fresh development
//! PKI made with `tern pki`, coordinator configurations, starting `tern
//! serve` processes with ready files, and admin calls through the `tern`
//! CLI (so the CLI is exercised too).

#![allow(dead_code)]

pub mod federation;
pub mod fleet;

use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::Output;
use std::time::Duration;

use anyhow::{anyhow, bail, Context};
use serde::Deserialize;
use tern_tests::{binary, Harness, Process, ProcessSpec};

/// What `tern serve` writes to its ready file.
#[derive(Debug, Clone, Deserialize)]
pub struct Ready {
    pub node_id: u64,
    pub region: String,
    pub grpc: String,
    pub http: String,
    pub advertise: String,
    pub thumbprint: String,
    pub pid: u32,
}

/// The development PKI of one test.
pub struct Pki {
    pub dir: PathBuf,
}

impl Pki {
    pub fn new(h: &Harness) -> anyhow::Result<Pki> {
        let dir = h.path("pki");
        std::fs::create_dir_all(&dir)?;
        run_ok(tern().args(["pki", "init", "--dir"]).arg(&dir))?;
        Ok(Pki { dir })
    }

    /// Issues a coordinator certificate; returns its thumbprint.
    pub fn node(&self, name: &str, ip: IpAddr, extra: &[&str]) -> anyhow::Result<String> {
        let out = run_ok(
            tern()
                .args(["pki", "node", "--dir"])
                .arg(&self.dir)
                .args(["--name", name, "--ip", &ip.to_string()])
                .args(extra),
        )?;
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
    }

    pub fn admin(&self, name: &str, extra: &[&str]) -> anyhow::Result<String> {
        let out = run_ok(
            tern()
                .args(["pki", "admin", "--dir"])
                .arg(&self.dir)
                .args(["--name", name])
                .args(extra),
        )?;
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
    }

    pub fn cert(&self, name: &str) -> PathBuf {
        self.dir.join(format!("{name}.pem"))
    }

    pub fn key(&self, name: &str) -> PathBuf {
        self.dir.join(format!("{name}.key"))
    }
}

pub fn tern() -> std::process::Command {
    let mut c = std::process::Command::new(binary("tern"));
    for v in [
        "TERN_ADDR",
        "TERN_CACERT",
        "TERN_CLIENT_CERT",
        "TERN_CLIENT_KEY",
        "TERN_NODE_ID",
        "TERN_REGION",
    ] {
        c.env_remove(v);
    }
    c
}

pub fn run_ok(cmd: &mut std::process::Command) -> anyhow::Result<Output> {
    let out = cmd.output().with_context(|| format!("running {cmd:?}"))?;
    if !out.status.success() {
        bail!(
            "{cmd:?} failed ({}): {}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(out)
}

/// A coordinator of the test federation.
pub struct Node {
    pub node_id: u64,
    pub region: String,
    pub ip: IpAddr,
    pub thumbprint: String,
    pub dir: PathBuf,
    pub process: Option<Process>,
    pub ready: Option<Ready>,
}

/// Describes one coordinator to start.
pub struct NodeSpec<'a> {
    pub node_id: u64,
    pub region: &'a str,
    pub initialize: bool,
    /// Other coordinators known before the first commit: (node, address).
    pub bootstrap: Vec<(&'a Node, String)>,
    /// Extra TOML appended to the configuration (e.g. a [raft] table).
    pub extra: &'a str,
    /// Certificate name in the PKI (default: the region).
    pub cert: Option<&'a str>,
    /// `region` or `witness`.
    pub role: &'a str,
    /// Extra top-level TOML tables appended after the bootstrap members
    /// (e.g. `[control_plane]`, `[probe]`, `[health]`, `[dial_overrides]`).
    pub sections: &'a str,
    /// Control plane URLs of bootstrap members: (node id, URL).
    pub bootstrap_control_planes: Vec<(u64, String)>,
}

impl<'a> NodeSpec<'a> {
    /// A region coordinator with no bootstrap members and no extras.
    pub fn new(node_id: u64, region: &'a str) -> NodeSpec<'a> {
        NodeSpec {
            node_id,
            region,
            initialize: false,
            bootstrap: vec![],
            extra: "",
            cert: None,
            role: "region",
            sections: "",
            bootstrap_control_planes: vec![],
        }
    }
}

impl Node {
    pub fn new(h: &Harness, pki: &Pki, node_id: u64, region: &str) -> anyhow::Result<Node> {
        let ip = h.next_ip();
        let thumbprint = pki.node(region, ip, &[])?;
        Ok(Node {
            node_id,
            region: region.into(),
            ip,
            thumbprint,
            dir: h.path(region),
            process: None,
            ready: None,
        })
    }

    pub fn config_path(&self) -> PathBuf {
        self.dir.join("tern.toml")
    }

    /// Writes the configuration; `grpc`/`http` are `ip:port` (port 0 on the
    /// first start, then the bound ports so that a restart keeps its address).
    pub fn write_config(
        &self,
        pki: &Pki,
        spec: &NodeSpec,
        grpc: &str,
        http: &str,
    ) -> anyhow::Result<()> {
        std::fs::create_dir_all(&self.dir)?;
        let cert = spec.cert.unwrap_or(&self.region);
        let mut t = format!(
            "node_id = {}\nregion = \"{}\"\nrole = \"{}\"\ndata_dir = \"data\"\nready_file = \"ready.json\"\n\n[listen]\ngrpc = \"{grpc}\"\nhttp = \"{http}\"\n\n[tls]\nca_file = \"{}\"\ncert_file = \"{}\"\nkey_file = \"{}\"\n\n[raft]\nheartbeat_ms = 250\nelection_timeout_min_ms = 1500\nelection_timeout_max_ms = 3000\n{}\n[bootstrap]\ninitialize = {}\n",
            spec.node_id,
            spec.region,
            spec.role,
            pki.dir.join("ca.pem").display(),
            pki.cert(cert).display(),
            pki.key(cert).display(),
            spec.extra,
            spec.initialize,
        );
        for (n, addr) in &spec.bootstrap {
            t.push_str(&format!(
                "\n[[bootstrap.members]]\nnode_id = {}\nregion = \"{}\"\naddress = \"{}\"\nthumbprint = \"{}\"\n",
                n.node_id, n.region, addr, n.thumbprint
            ));
            if let Some((_, url)) = spec
                .bootstrap_control_planes
                .iter()
                .find(|(id, _)| *id == n.node_id)
            {
                t.push_str(&format!("control_plane = \"{url}\"\n"));
            }
        }
        if !spec.sections.is_empty() {
            t.push('\n');
            t.push_str(spec.sections);
        }
        std::fs::write(self.config_path(), t)?;
        Ok(())
    }

    /// Starts `tern serve` on port 0 and waits for its ready file; then
    /// rewrites the configuration with the bound ports for restarts. The
    /// node's log filter is `TERN_TEST_NODE_LOG` if set (e.g.
    /// `info,openraft=debug` to see elections), else info without
    /// openraft's chatter.
    pub fn start(&mut self, h: &Harness, pki: &Pki, spec: &NodeSpec) -> anyhow::Result<Ready> {
        let ip = self.ip;
        self.write_config(pki, spec, &format!("{ip}:0"), &format!("{ip}:0"))?;
        let _ = std::fs::remove_file(self.dir.join("ready.json"));
        let p = h.spawn(
            ProcessSpec::new(format!("{}-{}", self.region, self.node_id), binary("tern"))
                .args(["serve", "--config"])
                .arg(self.config_path())
                .env(
                    "TERN_LOG",
                    std::env::var("TERN_TEST_NODE_LOG")
                        .unwrap_or("info,openraft=warn,tern_coordinator=info".into()),
                )
                .ready_file(self.dir.join("ready.json")),
        )?;
        let ready: Ready = p.wait_ready(Duration::from_secs(30))?;
        self.write_config(pki, spec, &ready.grpc, &ready.http)?;
        self.process = Some(p);
        self.ready = Some(ready.clone());
        Ok(ready)
    }

    pub fn grpc(&self) -> String {
        self.ready
            .as_ref()
            .map(|r| r.grpc.clone())
            .unwrap_or_default()
    }

    pub fn http(&self) -> SocketAddr {
        self.ready
            .as_ref()
            .and_then(|r| r.http.parse().ok())
            .unwrap_or_else(|| SocketAddr::new(self.ip, 0))
    }

    pub fn process(&self) -> &Process {
        self.process.as_ref().expect("node was started")
    }

    /// Restarts the process on the same data directory and addresses, and
    /// waits for its new ready file.
    pub fn restart(&mut self) -> anyhow::Result<()> {
        let _ = std::fs::remove_file(self.dir.join("ready.json"));
        let p = self
            .process
            .as_ref()
            .ok_or_else(|| anyhow!("not started"))?;
        p.restart()?;
        let ready: Ready = p.wait_ready(Duration::from_secs(30))?;
        self.ready = Some(ready);
        Ok(())
    }
}

/// Admin CLI access as one administrator.
#[derive(Clone)]
pub struct Admin {
    pub ca: PathBuf,
    pub cert: PathBuf,
    pub key: PathBuf,
}

impl Admin {
    pub fn new(pki: &Pki, name: &str) -> Admin {
        Admin {
            ca: pki.dir.join("ca.pem"),
            cert: pki.cert(name),
            key: pki.key(name),
        }
    }

    pub fn cmd(&self, addr: &str) -> std::process::Command {
        let mut c = tern();
        c.env("TERN_ADDR", addr)
            .env("TERN_CACERT", &self.ca)
            .env("TERN_CLIENT_CERT", &self.cert)
            .env("TERN_CLIENT_KEY", &self.key);
        c
    }

    /// `tern status --output json` against `addr`.
    pub fn status(&self, addr: &str) -> anyhow::Result<serde_json::Value> {
        let out = run_ok(self.cmd(addr).args(["status", "--output", "json"]))?;
        Ok(serde_json::from_slice(&out.stdout)?)
    }

    pub fn put_note(&self, addr: &str, key: &str, value: &str) -> anyhow::Result<()> {
        run_ok(self.cmd(addr).args(["notes", "put", key, value]))?;
        Ok(())
    }

    pub fn notes(&self, addr: &str) -> anyhow::Result<Vec<(String, String)>> {
        let out = run_ok(self.cmd(addr).args(["notes", "list", "--output", "json"]))?;
        let v: serde_json::Value = serde_json::from_slice(&out.stdout)?;
        Ok(v.as_array()
            .map(|a| {
                a.iter()
                    .map(|n| {
                        (
                            n["key"].as_str().unwrap_or("").to_string(),
                            n["value"].as_str().unwrap_or("").to_string(),
                        )
                    })
                    .collect()
            })
            .unwrap_or_default())
    }

    pub fn add_member(&self, addr: &str, n: &Node, role: &str) -> anyhow::Result<()> {
        self.add_member_with_control_plane(addr, n, role, None)
    }

    /// `tern members add`, with `--control-plane URL` when given.
    pub fn add_member_with_control_plane(
        &self,
        addr: &str,
        n: &Node,
        role: &str,
        control_plane: Option<&str>,
    ) -> anyhow::Result<()> {
        let mut cmd = self.cmd(addr);
        cmd.args([
            "members",
            "add",
            "--role",
            role,
            "--node-id",
            &n.node_id.to_string(),
            "--region",
            &n.region,
            "--address",
            &n.grpc(),
            "--thumbprint",
            &n.thumbprint,
        ]);
        if let Some(url) = control_plane {
            cmd.args(["--control-plane", url]);
        }
        run_ok(&mut cmd)?;
        Ok(())
    }

    pub fn remove_member(&self, addr: &str, node_id: u64) -> anyhow::Result<()> {
        run_ok(
            self.cmd(addr)
                .args(["members", "remove", "--node-id", &node_id.to_string()]),
        )?;
        Ok(())
    }
}

/// Leader region and voter count from a status JSON.
pub fn leader_and_voters(s: &serde_json::Value) -> (Option<String>, usize) {
    let leader = s["leader"].as_str().map(String::from);
    let voters = s["members"]
        .as_array()
        .map(|m| {
            m.iter()
                .filter(|m| m["voting"] == "voter" && m["region"] != "")
                .count()
        })
        .unwrap_or(0);
    (leader, voters)
}

/// Reads a file as text, or "" (for log assertions).
pub fn read(p: &Path) -> String {
    std::fs::read_to_string(p).unwrap_or_default()
}

/// A plain HTTP/1.1 GET (the coordinator's health and metrics endpoints):
/// returns the status code and the body.
pub fn http_get(addr: SocketAddr, path: &str) -> anyhow::Result<(u16, String)> {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(5))?;
    s.set_read_timeout(Some(Duration::from_secs(5)))?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )?;
    let mut text = String::new();
    s.read_to_string(&mut text)?;
    let code = text
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| anyhow!("no HTTP status in {text:?}"))?;
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    Ok((code, body))
}
