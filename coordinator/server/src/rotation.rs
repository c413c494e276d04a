//! This coordinator's part in transport pin rotations (the phases are the
//! core's `Rotation`; what is committed is `ReplicatedState`'s):
//!
//! - **Owner.** It watches its certificate files (`tls.cert_file`,
//!   `tls.key_file`). When they hold a certificate other than the one it
//!   presents (renewed by cert-manager, `tern pki node`, or any issuer), it
//!   proposes a rotation to it. It keeps presenting the old certificate
//!   until the rotation reaches `presenting`, then swaps its server and
//!   client TLS material in the running process (new handshakes only;
//!   established connections keep theirs), re-dials its peers, and
//!   confirms. On a rollback from `presenting` it swaps back to the old
//!   certificate, kept in memory, and confirms that.
//! - **Peer.** It confirms each phase once it holds: `staged` when its pin
//!   set trusts the new thumbprint, `presenting` when a fresh handshake with
//!   the owner succeeded and showed the new certificate, `retiring` /
//!   `withdrawing` when its pin set no longer trusts the retired one.
//! - **Leader.** It advances a rotation whose current phase nobody is
//!   waited for (as `tern`); four-eyes approval and exclusions stay with
//!   administrators.
//!
//! Every step is a committed command; a refused one is logged and retried
//! on the next tick. Nothing here prints key material.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use tern_core::{
    Command, Peer, Phase, PinSubject, RotateOp, Rotation, Thumbprint, AUTOMATION_ACTOR,
};
use tracing::{debug, info, warn};

use crate::node::Coordinator;
use crate::tls::{CaBundle, Identity, TlsFiles, TlsServer};

/// How often the loop looks at the files and the committed rotations.
pub const TICK: Duration = Duration::from_secs(1);

/// The transport identity this coordinator presents, and the one it
/// presented before a swap (kept for a rollback).
pub struct Transport {
    pub server: TlsServer,
    pub files: TlsFiles,
    current: Mutex<Identity>,
    previous: Mutex<Option<Identity>>,
    /// The last reason a step could not be taken (logged once).
    last_note: Mutex<String>,
}

impl Transport {
    pub fn new(server: TlsServer, files: TlsFiles, identity: Identity) -> Transport {
        Transport {
            server,
            files,
            current: Mutex::new(identity),
            previous: Mutex::new(None),
            last_note: Mutex::new(String::new()),
        }
    }

    /// Thumbprint of the certificate presented to new connections.
    pub fn thumbprint(&self) -> Thumbprint {
        self.server.thumbprint()
    }

    /// End of validity of the presented certificate (Unix s).
    pub fn not_after_unix(&self) -> i64 {
        self.server
            .not_after()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs() as i64)
            .unwrap_or(0)
    }

    /// Logs `note` at warn level once, until it changes.
    fn note(&self, note: String) {
        let mut last = self.last_note.lock().unwrap_or_else(|p| p.into_inner());
        if *last != note {
            warn!(target: "rotation", "{note}");
            *last = note;
        }
    }
}

impl std::fmt::Debug for Transport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Transport")
            .field("presenting", &self.thumbprint().short())
            .finish_non_exhaustive()
    }
}

/// Runs the rotation loop until the process ends.
pub fn spawn(coord: Arc<Coordinator>) {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(TICK);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            step(&coord).await;
        }
    });
}

/// One pass: owner, peer and leader duties.
pub async fn step(coord: &Coordinator) {
    let me = coord.config.node_id;
    let subject = PinSubject::Transport(me);
    let (mine, others, member) = coord.read_state(|s| {
        (
            s.running_rotation(&subject).cloned(),
            s.rotations()
                .values()
                .filter(|r| !r.phase().is_finished() && r.subject() != &subject)
                .cloned()
                .collect::<Vec<_>>(),
            s.members().contains_key(&me),
        )
    });
    if !member {
        return;
    }
    match &mine {
        Some(r) => owner_step(coord, r).await,
        None => watch_files(coord).await,
    }
    for r in &others {
        peer_step(coord, r).await;
    }
    // Paused automation advances nothing (administrators still can, with
    // `tern rotate advance`); confirmations are facts and go on.
    if coord.is_leader() && !coord.read_state(|s| s.paused()) {
        for r in mine.iter().chain(others.iter()) {
            advance_if_ready(coord, r).await;
        }
    }
}

async fn propose(coord: &Coordinator, actor: String, op: RotateOp) -> bool {
    let what = format!("{op:?}");
    match coord.propose_step(actor, Command::Rotate { op }).await {
        Ok(()) => true,
        Err(why) => {
            debug!(target: "rotation", step = %what, why, "rotation step not applied");
            false
        }
    }
}

fn node_actor(coord: &Coordinator) -> String {
    format!("node:{}", coord.config.node_id)
}

/// The identity in the configured files, if it loads and is valid now.
fn file_identity(coord: &Coordinator) -> Result<Identity, String> {
    let f = &coord.transport.files;
    Identity::load(&f.cert, &f.key).map_err(|e| format!("{e}"))
}

/// No rotation of our pin runs: propose one when the files hold another
/// certificate than the one presented (and it was not rolled back before).
async fn watch_files(coord: &Coordinator) {
    let identity = match file_identity(coord) {
        Ok(i) => i,
        Err(e) => {
            coord.transport.note(format!(
                "the certificate files do not load ({e}); still presenting {}",
                coord.transport.thumbprint().short()
            ));
            return;
        }
    };
    let new = identity.thumbprint();
    let presented = coord.transport.thumbprint();
    if new == presented {
        renew_when_due(coord, &identity);
        return;
    }
    let me = coord.config.node_id;
    let (rolled_back, pinned_now) = coord.read_state(|s| {
        (
            s.rotations().values().any(|r| {
                r.subject() == &PinSubject::Transport(me)
                    && r.new_thumbprint() == new
                    && r.phase() == Phase::RolledBack
            }),
            s.members()
                .get(&me)
                .map(|m| m.thumbprints.clone())
                .unwrap_or_default(),
        )
    });
    if rolled_back {
        coord.transport.note(format!(
            "the certificate files hold {}, whose rotation was rolled back; still presenting {} \
             (start a rotation with `tern rotate start` to try it again)",
            new.short(),
            presented.short()
        ));
        return;
    }
    if pinned_now == [new].into() {
        // A finished rotation to the files' certificate that this process
        // did not present yet (restart): present it.
        swap_to(coord, identity, false);
        return;
    }
    info!(target: "rotation", new = %new.short(), presenting = %presented.short(),
        "new transport certificate in the files: proposing a rotation");
    if !propose(
        coord,
        node_actor(coord),
        RotateOp::Start {
            subject: PinSubject::Transport(me),
            new,
        },
    )
    .await
    {
        coord.transport.note(format!(
            "a rotation to {} could not start yet (see `tern rotate status`); retrying",
            new.short()
        ));
    }
}

/// The files hold the certificate presented. At a jittered 70-90% of its
/// lifetime, with the built-in issuer configured (`tls.issuer_key_file`)
/// and nothing standing in the way (no region Unreachable, no handover or
/// hand-back, no rotation running, automation not paused), issue a renewal
/// into the files: the next pass proposes its rotation. Without an issuer,
/// say once that the renewal is due (an external issuer renews the files).
fn renew_when_due(coord: &Coordinator, current: &Identity) {
    let ms = |t: std::time::SystemTime| {
        t.duration_since(std::time::UNIX_EPOCH)
            .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
            .unwrap_or(0)
    };
    let due = tern_core::rotation_due_at(
        tern_core::Millis(ms(current.not_before())),
        tern_core::Millis(ms(current.not_after())),
        tern_core::jitter_of(&current.thumbprint()),
    );
    let now = tern_core::Millis(ms(std::time::SystemTime::now()));
    let blockers = coord.read_state(|s| s.rotation_blockers());
    if let Err(why) = tern_core::may_start(now, due, &blockers) {
        if !matches!(why, tern_core::WhyNot::NotDue { .. }) {
            coord.transport.note(format!(
                "certificate {} is due for renewal; waiting: {why}",
                current.thumbprint().short()
            ));
        }
        return;
    }
    let Some(issuer_key) = &coord.config.issuer_key_file else {
        coord.transport.note(format!(
            "certificate {} is due for renewal (70-90% of its lifetime) and no built-in \
             issuer is configured: renew {} and {}",
            current.thumbprint().short(),
            coord.transport.files.cert.display(),
            coord.transport.files.key.display()
        ));
        return;
    };
    let issued = crate::tls::DevCa::load(&coord.transport.files.ca, issuer_key)
        .and_then(|ca| ca.renew_node(current, time::OffsetDateTime::now_utc()))
        .and_then(|c| {
            c.replace_files(&coord.transport.files.cert, &coord.transport.files.key)?;
            Ok(c.thumbprint)
        });
    match issued {
        Ok(t) => info!(target: "rotation", old = %current.thumbprint().short(), new = %t.short(),
            "renewed the transport certificate with the built-in issuer"),
        Err(e) => coord.transport.note(format!(
            "the built-in issuer could not renew the certificate: {e}"
        )),
    }
}

/// Swaps the server and client TLS material to `identity` for new
/// handshakes, and re-dials peers so they see it. `keep_previous`: remember
/// the identity presented until now (for a rollback).
fn swap_to(coord: &Coordinator, identity: Identity, keep_previous: bool) -> bool {
    let t = &coord.transport;
    let cluster_ca = match CaBundle::load(&t.files.ca) {
        Ok(c) => c,
        Err(e) => {
            t.note(format!(
                "cannot swap certificates: the cluster CA does not load: {e}"
            ));
            return false;
        }
    };
    let admin_ca = match t
        .files
        .admin_ca
        .as_ref()
        .map(|p| CaBundle::load(p))
        .transpose()
    {
        Ok(c) => c,
        Err(e) => {
            t.note(format!(
                "cannot swap certificates: the admin CA does not load: {e}"
            ));
            return false;
        }
    };
    if let Err(e) = t
        .server
        .reload_parts(&cluster_ca, admin_ca.as_ref(), &identity)
        .and_then(|()| coord.channels.client().reload_parts(&cluster_ca, &identity))
    {
        t.note(format!("cannot swap certificates: {e}"));
        return false;
    }
    coord.channels.reset();
    let mut current = t.current.lock().unwrap_or_else(|p| p.into_inner());
    let before = std::mem::replace(&mut *current, identity);
    info!(target: "rotation", from = %before.thumbprint().short(), to = %current.thumbprint().short(),
        "now presenting a new transport certificate");
    if keep_previous {
        *t.previous.lock().unwrap_or_else(|p| p.into_inner()) = Some(before);
    }
    true
}

/// Our own pin is being rotated.
async fn owner_step(coord: &Coordinator, r: &Rotation) {
    let phase = r.phase();
    if !phase.owner_confirms() || r.owner_confirmed() == Some(phase) {
        return;
    }
    let want = r.presented();
    if coord.transport.thumbprint() != want {
        let identity = match phase {
            Phase::Presenting => match file_identity(coord) {
                Ok(i) if i.thumbprint() == want => Some(i),
                Ok(i) => {
                    coord.transport.note(format!(
                        "rotation {} is presenting {} but the certificate files hold {}",
                        r.id(),
                        want.short(),
                        i.thumbprint().short()
                    ));
                    None
                }
                Err(e) => {
                    coord.transport.note(format!(
                        "rotation {}: the certificate files do not load: {e}",
                        r.id()
                    ));
                    None
                }
            },
            _ => {
                let previous = coord
                    .transport
                    .previous
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .clone();
                match previous {
                    Some(i) if i.thumbprint() == want => Some(i),
                    _ => {
                        coord.transport.note(format!(
                            "rotation {} reverts to {}, which this process no longer holds; \
                             put that certificate back in the files",
                            r.id(),
                            want.short()
                        ));
                        file_identity(coord).ok().filter(|i| i.thumbprint() == want)
                    }
                }
            }
        };
        let Some(identity) = identity else { return };
        if !swap_to(coord, identity, phase == Phase::Presenting) {
            return;
        }
    }
    propose(
        coord,
        node_actor(coord),
        RotateOp::ConfirmOwner { id: r.id(), phase },
    )
    .await;
}

/// Another coordinator's pin is being rotated: confirm what holds here.
async fn peer_step(coord: &Coordinator, r: &Rotation) {
    let me = Peer::Node(coord.config.node_id);
    let phase = r.phase();
    if !r.peers().contains(&me)
        || !phase.peers_confirm()
        || r.confirmations().get(&me) == Some(&phase)
    {
        return;
    }
    // The pin set follows the applied member table.
    coord.refresh_pins();
    let pins = coord.pins.snapshot();
    let holds = match phase {
        Phase::Staged => pins.contains(&r.new_thumbprint()),
        Phase::Presenting => {
            if r.owner_confirmed() != Some(Phase::Presenting) {
                false
            } else {
                owner_presents(coord, r).await == Some(r.new_thumbprint())
            }
        }
        Phase::Retiring => !pins.contains(&r.old()),
        Phase::Withdrawing => !pins.contains(&r.new_thumbprint()),
        _ => false,
    };
    if holds {
        propose(
            coord,
            node_actor(coord),
            RotateOp::Confirm {
                id: r.id(),
                peer: me,
                phase,
            },
        )
        .await;
    }
}

/// A fresh handshake with the rotation's owner (our pin check included):
/// the thumbprint it presented, or `None` if the handshake failed.
async fn owner_presents(coord: &Coordinator, r: &Rotation) -> Option<Thumbprint> {
    let PinSubject::Transport(owner) = r.subject() else {
        return None;
    };
    let addr = coord.read_state(|s| s.members().get(owner).map(|m| m.address.clone()))?;
    let addr = coord.dial_address(*owner, &addr);
    match tokio::time::timeout(
        Duration::from_secs(5),
        coord.channels.client().handshake(&addr),
    )
    .await
    {
        Ok(Ok(t)) => Some(t),
        Ok(Err(e)) => {
            debug!(target: "rotation", owner, error = %e, "handshake with the rotation's owner failed");
            None
        }
        Err(_) => None,
    }
}

/// Leader: leave the phase once nobody is waited for.
async fn advance_if_ready(coord: &Coordinator, r: &Rotation) {
    let phase = r.phase();
    if phase.is_finished() || phase.next().is_none() || !r.waiting_for().is_empty() {
        return;
    }
    if propose(
        coord,
        AUTOMATION_ACTOR.into(),
        RotateOp::Advance {
            id: r.id(),
            expected: phase,
        },
    )
    .await
    {
        info!(target: "rotation", subject = %r.subject(), id = r.id(), from = %phase, "rotation advanced");
    }
}
