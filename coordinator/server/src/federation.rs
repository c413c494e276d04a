//! This coordinator's part in federation pins (the phases are the core's
//! `Rotation`; what is committed is `ReplicatedState::federation_pins`):
//!
//! - **Delivery (every region coordinator).** It keeps its own region's
//!   control plane in step with the committed federation pins of every
//!   other region: `PUT /tern/v1/federation/pins` (Tern contract) when they
//!   change (and every 30 s, so a restarted control plane gets them back),
//!   and the files `<federation.pins_dir>/<region>.pem` (PEM bundle of the
//!   pinned certificates) and `<region>.thumbprints` (one SHA-256 hex per
//!   line), each written atomically. Once the control plane took a
//!   rotation's pins and the files hold them, it confirms `staged`,
//!   `retiring` or `withdrawing` for its region.
//! - **Owner (a region with `federation.client_cert_file`).** It publishes
//!   the certificate in the files (the first one becomes the region's pin)
//!   and, when the files hold another one, publishes it and proposes a
//!   rotation to it. At `presenting` it confirms the owner step (the control
//!   plane presents the mounted certificate) and pings each peer region's
//!   control plane (`GET /api/federation/ping`) with the new certificate and
//!   this region's outbound secret: a green ping confirms that peer's
//!   `presenting`. A rollback from `presenting` is confirmed once the files
//!   hold the old certificate again and a peer's ping with it is green.
//!
//! Every step is a committed command; a refused one is retried on the next
//! tick. The secret and the private key are never logged.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use tern_core::{
    Command, FederationPins, MemberRole, Peer, Phase, PinSubject, RegionName, RotateOp, Rotation,
    Thumbprint,
};
use tracing::{debug, info, warn};

use crate::agents::contract::{PeerPins, PinsRequest, RegionClient};
use crate::node::Coordinator;
use crate::tls::Identity;

/// How often the loop looks at the files and the committed state.
const TICK: Duration = Duration::from_secs(1);
/// Pins are installed again after this long even if unchanged.
const REFRESH: Duration = Duration::from_secs(30);
/// Timeout of one federation ping.
const PING_TIMEOUT: Duration = Duration::from_secs(5);

/// This region's outbound federation secret (hex), read from
/// `federation.secret_file`. Never printed.
struct Secret(String);

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret(..)")
    }
}

impl Secret {
    fn load(path: &Path) -> anyhow::Result<Secret> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("reading federation.secret_file {}", path.display()))?;
        let text = text.trim().to_string();
        match hex::decode(&text) {
            Ok(bytes) if !bytes.is_empty() => Ok(Secret(text)),
            _ => anyhow::bail!(
                "federation.secret_file {} does not hold a hex secret",
                path.display()
            ),
        }
    }
}

/// This region's federation client certificate, as in the files.
struct ClientCert {
    thumbprint: Thumbprint,
    /// The leaf, one PEM block (public).
    leaf_pem: String,
    /// Certificate chain and key, PEM, for pinging peers with it.
    identity_pem: Vec<u8>,
}

impl ClientCert {
    fn load(cert: &Path, key: &Path) -> anyhow::Result<ClientCert> {
        let identity = Identity::load(cert, key).map_err(|e| anyhow::anyhow!("{e}"))?;
        let leaf = identity
            .chain()
            .first()
            .context("the federation certificate file holds no certificate")?;
        let leaf_pem = pem::encode_config(
            &pem::Pem::new("CERTIFICATE", leaf.to_vec()),
            pem::EncodeConfig::new().set_line_ending(pem::LineEnding::LF),
        );
        let mut identity_pem =
            std::fs::read(cert).with_context(|| format!("reading {}", cert.display()))?;
        identity_pem.push(b'\n');
        identity_pem
            .extend(std::fs::read(key).with_context(|| format!("reading {}", key.display()))?);
        Ok(ClientCert {
            thumbprint: identity.thumbprint(),
            leaf_pem,
            identity_pem,
        })
    }
}

/// What the loop remembers between ticks.
#[derive(Default)]
struct Memory {
    /// The last pins the control plane took, the peers it updated, when.
    installed: Option<(PinsRequest, BTreeSet<String>, tokio::time::Instant)>,
    /// What the pin files hold, by region.
    written: BTreeMap<RegionName, (String, String)>,
    /// The last note logged (each logged once until it changes).
    note: String,
}

impl Memory {
    fn note(&mut self, note: String) {
        if self.note != note {
            warn!(target: "federation", "{note}");
            self.note = note;
        }
    }
}

/// Runs the federation pin loop until the process ends (region
/// coordinators only).
pub fn spawn(coord: Arc<Coordinator>, client: Option<RegionClient>) {
    if coord.config.role != MemberRole::Region {
        return;
    }
    tokio::spawn(async move {
        let mut memory = Memory::default();
        let mut tick = tokio::time::interval(TICK);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            if coord.leader().is_none() {
                continue;
            }
            step(&coord, client.as_ref(), &mut memory).await;
        }
    });
}

async fn step(coord: &Coordinator, client: Option<&RegionClient>, memory: &mut Memory) {
    let (pins, rotations, member) = coord.read_state(|s| {
        (
            s.federation_pins().clone(),
            s.rotations()
                .values()
                .filter(|r| {
                    !r.phase().is_finished() && matches!(r.subject(), PinSubject::Federation(_))
                })
                .cloned()
                .collect::<Vec<_>>(),
            s.members().contains_key(&coord.config.node_id),
        )
    });
    if !member {
        return;
    }
    if coord.config.federation.client_cert_file.is_some() {
        owner_step(coord, &pins, &rotations, memory).await;
    }
    deliver(coord, client, &pins, memory).await;
    for r in &rotations {
        peer_step(coord, r, memory).await;
    }
}

async fn propose(coord: &Coordinator, command: Command) -> bool {
    let what = command.kind();
    let actor = format!("node:{}", coord.config.node_id);
    match coord.propose_step(actor, command).await {
        Ok(()) => true,
        Err(why) => {
            debug!(target: "federation", what, why, "federation step not applied");
            false
        }
    }
}

fn rotate(coord: &Coordinator, op: RotateOp) -> impl std::future::Future<Output = bool> + '_ {
    propose(coord, Command::Rotate { op })
}

/// This region's certificate: publish it, rotate to it, confirm what it
/// presents and what peers accept.
async fn owner_step(
    coord: &Coordinator,
    pins: &BTreeMap<RegionName, FederationPins>,
    rotations: &[Rotation],
    memory: &mut Memory,
) {
    let f = &coord.config.federation;
    let (Some(cert), Some(key)) = (&f.client_cert_file, &f.client_key_file) else {
        return;
    };
    let current = match ClientCert::load(cert, key) {
        Ok(c) => c,
        Err(e) => {
            memory.note(format!(
                "the federation certificate files do not load: {e:#}"
            ));
            return;
        }
    };
    let me = coord.config.region.clone();
    let subject = PinSubject::Federation(me.clone());
    let mine = pins.get(&me);
    if mine.is_none_or(|m| !m.certs.contains_key(&current.thumbprint)) {
        if propose(
            coord,
            Command::PublishFederationCert {
                region: me.clone(),
                pem: current.leaf_pem.clone(),
            },
        )
        .await
        {
            info!(target: "federation", thumbprint = %current.thumbprint.short(),
                "federation certificate published");
        }
        return;
    }
    let Some(mine) = mine else { return };
    // A renewal staged by the issuer in `next_*` (when configured): it is
    // published and rotated to while the control plane still presents the
    // mounted certificate, and installed as the mounted one at presenting.
    let next = match (&f.next_cert_file, &f.next_key_file) {
        (Some(c), Some(k)) => ClientCert::load(c, k)
            .ok()
            .filter(|n| n.thumbprint != current.thumbprint),
        _ => None,
    };
    let running = rotations.iter().find(|r| r.subject() == &subject);
    let Some(r) = running else {
        let target = next.as_ref().unwrap_or(&current);
        if mine.pins.contains(&target.thumbprint) {
            return;
        }
        if !mine.certs.contains_key(&target.thumbprint) {
            propose(
                coord,
                Command::PublishFederationCert {
                    region: me.clone(),
                    pem: target.leaf_pem.clone(),
                },
            )
            .await;
            return;
        }
        let rolled_back = coord.read_state(|s| {
            s.rotations().values().any(|r| {
                r.subject() == &subject
                    && r.new_thumbprint() == target.thumbprint
                    && r.phase() == Phase::RolledBack
            })
        });
        if rolled_back {
            memory.note(format!(
                "the federation certificate files hold {}, whose rotation was rolled back \
                 (start a rotation with `tern rotate start federation:{me}` to try it again)",
                target.thumbprint.short()
            ));
            return;
        }
        info!(target: "federation", new = %target.thumbprint.short(),
            "new federation certificate in the files: proposing a rotation");
        if !rotate(
            coord,
            RotateOp::Start {
                subject,
                new: target.thumbprint,
            },
        )
        .await
        {
            memory.note(format!(
                "a federation pin rotation to {} could not start yet (see `tern rotate status`); retrying",
                target.thumbprint.short()
            ));
        }
        return;
    };
    let phase = r.phase();
    if !matches!(phase, Phase::Presenting | Phase::Reverting) {
        return;
    }
    let want = r.presented();
    let mut current = current;
    if current.thumbprint != want {
        // Install what the phase asks the control plane to present: the
        // staged renewal at presenting (keeping the mounted one to come
        // back to), or that one again on a rollback.
        let previous = coord.config.data_dir.join("federation-previous");
        let source = match phase {
            Phase::Presenting => (next.as_ref().is_some_and(|n| n.thumbprint == want)).then(|| {
                (
                    f.next_cert_file.clone().unwrap_or_default(),
                    f.next_key_file.clone().unwrap_or_default(),
                )
            }),
            _ => {
                let (c, k) = (
                    previous.with_extension("pem"),
                    previous.with_extension("key"),
                );
                ClientCert::load(&c, &k)
                    .ok()
                    .filter(|p| p.thumbprint == want)
                    .map(|_| (c, k))
            }
        };
        let Some((src_cert, src_key)) = source else {
            memory.note(format!(
                "federation rotation {} wants the control plane to present {} but the files hold {}",
                r.id(),
                want.short(),
                current.thumbprint.short()
            ));
            return;
        };
        let install = |from_cert: &Path, from_key: &Path, to_cert: &Path, to_key: &Path| {
            let issued = crate::tls::IssuedCert {
                cert_pem: std::fs::read_to_string(from_cert)?,
                key_pem: std::fs::read_to_string(from_key)?,
                thumbprint: want,
            };
            issued
                .replace_files(to_cert, to_key)
                .map_err(|e| std::io::Error::other(e.to_string()))
        };
        if phase == Phase::Presenting {
            if let Err(e) = install(
                cert,
                key,
                &previous.with_extension("pem"),
                &previous.with_extension("key"),
            ) {
                memory.note(format!(
                    "keeping the current federation certificate failed: {e}"
                ));
                return;
            }
        }
        if let Err(e) = install(&src_cert, &src_key, cert, key) {
            memory.note(format!(
                "installing federation certificate {} failed: {e}",
                want.short()
            ));
            return;
        }
        info!(target: "federation", thumbprint = %want.short(), phase = %phase,
            "federation certificate installed for the control plane");
        current = match ClientCert::load(cert, key) {
            Ok(c) => c,
            Err(e) => {
                memory.note(format!(
                    "the installed federation certificate does not load: {e:#}"
                ));
                return;
            }
        };
    }
    let secret = match f.secret_file.as_deref().map(Secret::load) {
        Some(Ok(s)) => s,
        Some(Err(e)) => {
            memory.note(format!("{e:#}"));
            return;
        }
        None => return,
    };
    let mut green = 0usize;
    for peer in r.peers() {
        let Peer::Region(region) = peer else { continue };
        let done = phase == Phase::Presenting && r.confirmations().get(peer) == Some(&phase);
        if done {
            green += 1;
            continue;
        }
        match ping(coord, region, &current, &secret).await {
            Ok(true) => {
                green += 1;
                if phase == Phase::Presenting {
                    rotate(
                        coord,
                        RotateOp::Confirm {
                            id: r.id(),
                            peer: peer.clone(),
                            phase,
                        },
                    )
                    .await;
                }
            }
            Ok(false) => debug!(target: "federation", peer = %region, "federation ping red"),
            Err(e) => {
                debug!(target: "federation", peer = %region, error = %e, "federation ping failed")
            }
        }
    }
    // The control plane presents the mounted certificate; presenting is
    // confirmed when it is the one asked for, and a rollback once a peer
    // accepts the old one again.
    let owner_holds = phase == Phase::Presenting || green > 0 || r.peers().is_empty();
    if owner_holds && r.owner_confirmed() != Some(phase) {
        rotate(coord, RotateOp::ConfirmOwner { id: r.id(), phase }).await;
    }
}

/// The URL of `region`'s control plane: the probe override, else the
/// member table's.
fn control_plane_of(coord: &Coordinator, region: &RegionName) -> Option<String> {
    if let Some(url) = coord.config.probe.overrides.get(region.as_str()) {
        return Some(url.clone());
    }
    coord.read_state(|s| {
        s.members()
            .values()
            .find(|m| &m.region == region && m.control_plane.is_some())
            .and_then(|m| m.control_plane.clone())
    })
}

/// `GET /api/federation/ping` at `region`'s control plane, presenting
/// `cert` and the secret: whether it is green.
async fn ping(
    coord: &Coordinator,
    region: &RegionName,
    cert: &ClientCert,
    secret: &Secret,
) -> anyhow::Result<bool> {
    let base = control_plane_of(coord, region).context("no control plane URL")?;
    let ca = coord
        .config
        .probe
        .ca_file
        .clone()
        .unwrap_or_else(|| coord.config.ca_file.clone());
    let ca_pem = std::fs::read(&ca).with_context(|| format!("reading {}", ca.display()))?;
    let mut builder = reqwest::Client::builder()
        .use_rustls_tls()
        .tls_built_in_root_certs(false)
        .timeout(PING_TIMEOUT)
        .identity(
            reqwest::Identity::from_pem(&cert.identity_pem)
                .context("the federation certificate")?,
        );
    for c in reqwest::Certificate::from_pem_bundle(&ca_pem).context("the probe CA bundle")? {
        builder = builder.add_root_certificate(c);
    }
    let answer: serde_json::Value = builder
        .build()?
        .get(format!(
            "{}{}",
            base.trim_end_matches('/'),
            crate::standin::FEDERATION_PING
        ))
        .header(crate::standin::SECRET_HEADER, &secret.0)
        .send()
        .await?
        .error_for_status()?
        .json()
        .await?;
    Ok(answer.get("status").and_then(|s| s.as_str()) == Some("green"))
}

fn thumbprint_lines(pins: &BTreeSet<Thumbprint>) -> String {
    pins.iter().map(|t| format!("{t}\n")).collect()
}

/// Writes `bytes` beside `path`, then renames it over `path`.
fn write_atomically(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(format!(".tmp-{}", std::process::id()));
    let tmp = PathBuf::from(tmp);
    std::fs::write(&tmp, bytes)?;
    std::fs::rename(&tmp, path)
}

/// Writes the pin files of every other region and installs their pins in
/// this region's control plane.
async fn deliver(
    coord: &Coordinator,
    client: Option<&RegionClient>,
    pins: &BTreeMap<RegionName, FederationPins>,
    memory: &mut Memory,
) {
    let me = &coord.config.region;
    let dir = &coord.config.federation.pins_dir;
    let others: Vec<(&RegionName, &FederationPins)> = pins
        .iter()
        .filter(|(r, f)| *r != me && !f.pins.is_empty())
        .collect();
    if others.is_empty() {
        return;
    }
    for (region, f) in &others {
        let want = (f.pinned_pem_bundle(), thumbprint_lines(&f.pins));
        if memory.written.get(*region) == Some(&want) {
            continue;
        }
        let result = std::fs::create_dir_all(dir)
            .and_then(|()| write_atomically(&dir.join(format!("{region}.pem")), want.0.as_bytes()))
            .and_then(|()| {
                write_atomically(
                    &dir.join(format!("{region}.thumbprints")),
                    want.1.as_bytes(),
                )
            });
        match result {
            Ok(()) => {
                info!(target: "federation", peer = %region, pins = f.pins.len(), dir = %dir.display(),
                    "federation pin files written");
                memory.written.insert((*region).clone(), want);
            }
            Err(e) => memory.note(format!(
                "cannot write the federation pin files of {region} in {}: {e}",
                dir.display()
            )),
        }
    }
    let Some(client) = client else { return };
    let req = PinsRequest {
        peers: others
            .iter()
            .map(|(r, f)| PeerPins {
                name: r.to_string(),
                pinned_thumbprints: f.pins.iter().map(|t| t.to_string()).collect(),
            })
            .collect(),
    };
    if memory
        .installed
        .as_ref()
        .is_some_and(|(last, _, at)| last == &req && at.elapsed() < REFRESH)
    {
        return;
    }
    match client.install_federation_pins(&req).await {
        Ok(answer) => {
            let changed = memory
                .installed
                .as_ref()
                .is_none_or(|(last, _, _)| last != &req);
            if changed {
                info!(target: "federation", updated = ?answer.updated, unknown = ?answer.unknown,
                    "federation pins installed in the control plane");
            }
            if !answer.unknown.is_empty() {
                memory.note(format!(
                    "the control plane has no federation peer entry for {}: their pins were not installed",
                    answer.unknown.join(", ")
                ));
            }
            memory.installed = Some((
                req,
                answer.updated.into_iter().collect(),
                tokio::time::Instant::now(),
            ));
        }
        Err(e) => memory.note(format!("installing federation pins failed: {e:#}")),
    }
}

/// Another region's pin is being rotated: confirm `staged`, `retiring` or
/// `withdrawing` for this region once its control plane and files hold
/// the rotation's pins.
async fn peer_step(coord: &Coordinator, r: &Rotation, memory: &Memory) {
    let PinSubject::Federation(owner) = r.subject() else {
        return;
    };
    let me = Peer::Region(coord.config.region.clone());
    let phase = r.phase();
    if owner == &coord.config.region
        || !r.peers().contains(&me)
        || !matches!(phase, Phase::Staged | Phase::Retiring | Phase::Withdrawing)
        || r.confirmations().get(&me) == Some(&phase)
    {
        return;
    }
    let trusted = r.trusted();
    let want: Vec<String> = trusted.iter().map(|t| t.to_string()).collect();
    let installed = memory.installed.as_ref().is_some_and(|(req, updated, _)| {
        updated.contains(owner.as_str())
            && req
                .peers
                .iter()
                .any(|p| p.name == owner.as_str() && p.pinned_thumbprints == want)
    });
    let written = memory
        .written
        .get(owner)
        .is_some_and(|(_, lines)| lines == &thumbprint_lines(&trusted));
    if installed && written {
        rotate(
            coord,
            RotateOp::Confirm {
                id: r.id(),
                peer: me,
                phase,
            },
        )
        .await;
    }
}
