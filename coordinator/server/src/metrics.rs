//! Prometheus metrics (`tern_*`), rendered at scrape time from the live
//! sources (openraft's metrics, the network's per-peer statistics, the
//! replicated state). Nothing here is kept between scrapes except in those
//! sources, so a metric can never drift from what it reports.

use prometheus_client::encoding::text::encode;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

use crate::node::Coordinator;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PeerLabels {
    peer: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RegionLabels {
    region: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ObservationLabels {
    region: String,
    observer: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct AgentLabels {
    state: String,
    home_region: String,
    serving_region: String,
}

/// Open agent directive streams on this coordinator.
static AGENT_WATCHES: std::sync::atomic::AtomicI64 = std::sync::atomic::AtomicI64::new(0);

pub(crate) fn agent_watch_opened() {
    AGENT_WATCHES.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
}

pub(crate) fn agent_watch_closed() {
    AGENT_WATCHES.fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PeerKindLabels {
    peer: String,
    kind: String,
}

fn gauge(reg: &mut Registry, name: &str, help: &str, v: i64) {
    let g: Gauge = Gauge::default();
    g.set(v);
    reg.register(name, help, g);
}

/// Renders the Prometheus text exposition of this coordinator.
pub async fn render(coord: &Coordinator) -> String {
    let m = coord.raft.metrics().borrow().clone();
    let committed = coord.committed_index().await.unwrap_or(0);
    let mut reg = Registry::default();
    let is_leader = m.current_leader == Some(coord.config.node_id);
    gauge(
        &mut reg,
        "tern_raft_term",
        "Current Raft term",
        m.current_term as i64,
    );
    gauge(
        &mut reg,
        "tern_raft_is_leader",
        "1 if this coordinator is the Raft leader",
        is_leader as i64,
    );
    gauge(
        &mut reg,
        "tern_raft_commit_index",
        "Highest log index known committed",
        committed as i64,
    );
    gauge(
        &mut reg,
        "tern_raft_applied_index",
        "Highest log index applied to the state machine",
        m.last_applied.map(|l| l.index).unwrap_or(0) as i64,
    );
    let last_log = m.last_log_index.unwrap_or(0);
    gauge(
        &mut reg,
        "tern_raft_last_log_index",
        "Highest log index in the local log",
        last_log as i64,
    );
    gauge(
        &mut reg,
        "tern_raft_leader_known",
        "1 if this coordinator knows a leader",
        m.current_leader.is_some() as i64,
    );
    gauge(
        &mut reg,
        "tern_raft_snapshot_index",
        "Log index covered by the last snapshot",
        m.snapshot.map(|l| l.index).unwrap_or(0) as i64,
    );
    let (epoch, members) = coord.read_state(|s| (s.epoch(), s.members().len()));
    gauge(
        &mut reg,
        "tern_epoch",
        "Replicated epoch (only grows)",
        epoch as i64,
    );
    gauge(
        &mut reg,
        "tern_members",
        "Coordinators in the member table",
        members as i64,
    );
    gauge(
        &mut reg,
        "tern_pinned_thumbprints",
        "Thumbprints currently pinned",
        coord.pins.snapshot().len() as i64,
    );

    let lag: Family<PeerLabels, Gauge> = Family::default();
    if let Some(rep) = &m.replication {
        for (peer, matched) in rep.iter() {
            if *peer == coord.config.node_id {
                continue;
            }
            let mi = matched.map(|l| l.index).unwrap_or(0);
            lag.get_or_create(&PeerLabels {
                peer: peer.to_string(),
            })
            .set(last_log.saturating_sub(mi) as i64);
        }
    }
    reg.register(
        "tern_raft_replication_lag",
        "Entries a peer is behind the leader's last log index (leader only)",
        lag,
    );
    let errors: Family<PeerKindLabels, Counter> = Family::default();
    let contact: Family<PeerLabels, Gauge<f64, std::sync::atomic::AtomicU64>> = Family::default();
    let now = std::time::Instant::now();
    for (peer, s) in coord.stats.snapshot() {
        for (kind, n) in &s.errors {
            errors
                .get_or_create(&PeerKindLabels {
                    peer: peer.to_string(),
                    kind: kind.to_string(),
                })
                .inc_by(*n);
        }
        if let Some(t) = s.last_contact {
            contact
                .get_or_create(&PeerLabels {
                    peer: peer.to_string(),
                })
                .set(now.duration_since(t).as_secs_f64());
        }
    }
    reg.register(
        "tern_raft_rpc_errors",
        "Raft RPCs to a peer that failed, by kind",
        errors,
    );
    reg.register(
        "tern_raft_peer_last_contact_seconds",
        "Seconds since the last successful Raft RPC to a peer",
        contact,
    );
    render_health(coord, &mut reg);
    render_agents(coord, &mut reg);
    render_rotation(coord, &mut reg);
    let mut out = String::new();
    if encode(&mut out, &reg).is_err() {
        out.clear();
    }
    out
}

fn render_health(coord: &Coordinator, reg: &mut Registry) {
    let (records, regions, frozen, paused) = coord.read_state(|s| {
        (
            s.region_records().clone(),
            s.regions(),
            s.frozen(),
            s.paused(),
        )
    });
    let state: Family<RegionLabels, Gauge> = Family::default();
    for r in regions.keys() {
        let v = records.get(r).map(|x| x.state.as_number()).unwrap_or(0);
        state
            .get_or_create(&RegionLabels {
                region: r.to_string(),
            })
            .set(v);
    }
    reg.register(
        "tern_region_state",
        "Committed region state: 0 healthy, 1 suspect, 2 unreachable, 3 recovering",
        state,
    );
    gauge(
        reg,
        "tern_health_frozen",
        "1 while automatic Unreachable decisions are frozen",
        frozen as i64,
    );
    gauge(
        reg,
        "tern_automation_paused",
        "1 while automation is paused by an administrator",
        paused as i64,
    );
    gauge(
        reg,
        "tern_health_fenced",
        "1 while this coordinator cannot reach a quorum of coordinators (its reports count for nothing)",
        coord.health.fenced() as i64,
    );
    let up: Family<RegionLabels, Gauge> = Family::default();
    let latency: Family<RegionLabels, Gauge<f64, std::sync::atomic::AtomicU64>> = Family::default();
    for (r, run) in coord.health.planes() {
        up.get_or_create(&RegionLabels {
            region: r.to_string(),
        })
        .set(run.up as i64);
        if let Some(l) = run.latency {
            latency
                .get_or_create(&RegionLabels {
                    region: r.to_string(),
                })
                .set(l.as_secs_f64());
        }
    }
    reg.register(
        "tern_probe_up",
        "This coordinator's probe of a region's control plane: 1 up, 0 down",
        up,
    );
    reg.register(
        "tern_probe_latency_seconds",
        "Latency of this coordinator's last successful control-plane probe",
        latency,
    );
    if let Some((_, eval)) = coord.health.evaluation() {
        gauge(
            reg,
            "tern_health_quorum",
            "Leader only: 1 while it hears fresh reports from a quorum",
            eval.quorum_ok as i64,
        );
        let computed: Family<RegionLabels, Gauge> = Family::default();
        let reporting: Family<RegionLabels, Gauge> = Family::default();
        let obs: Family<ObservationLabels, Gauge> = Family::default();
        for (r, v) in &eval.regions {
            computed
                .get_or_create(&RegionLabels {
                    region: r.to_string(),
                })
                .set(v.computed.as_number());
            reporting
                .get_or_create(&RegionLabels {
                    region: r.to_string(),
                })
                .set(v.coordinator_reporting as i64);
            for o in &v.observations {
                obs.get_or_create(&ObservationLabels {
                    region: r.to_string(),
                    observer: o.observer.to_string(),
                })
                .set(o.up as i64);
            }
        }
        reg.register(
            "tern_region_computed_state",
            "Leader only: the state the rules give now",
            computed,
        );
        reg.register(
            "tern_region_coordinator_reporting",
            "Leader only: 1 while the region's own coordinator reports",
            reporting,
        );
        reg.register(
            "tern_region_observation_up",
            "Leader only: what each observer reports of a region's control plane (1 up, 0 down)",
            obs,
        );
    }
}

/// Agents by placement, home and serving region (from the replicated
/// state: the same on every coordinator), handovers in flight and stranded
/// agents per home region, and this coordinator's open directive streams.
fn render_agents(coord: &Coordinator, reg: &mut Registry) {
    let agents: Family<AgentLabels, Gauge> = Family::default();
    let in_flight: Family<RegionLabels, Gauge> = Family::default();
    let stranded: Family<RegionLabels, Gauge> = Family::default();
    let staged: Family<RegionLabels, Gauge> = Family::default();
    let now = crate::proposer::now_ms();
    coord.read_state(|s| {
        for r in s.region_info().keys() {
            in_flight
                .get_or_create(&RegionLabels {
                    region: r.to_string(),
                })
                .set(0);
            stranded
                .get_or_create(&RegionLabels {
                    region: r.to_string(),
                })
                .set(0);
        }
        for e in s.agents().values() {
            let home = e.registration.home.to_string();
            agents
                .get_or_create(&AgentLabels {
                    state: e.placement.as_str().to_string(),
                    home_region: home.clone(),
                    serving_region: e
                        .serving
                        .as_ref()
                        .map(|r| r.to_string())
                        .unwrap_or_default(),
                })
                .inc();
            let label = RegionLabels { region: home };
            if e.staged.as_ref().is_some_and(|st| st.not_after > now) {
                staged.get_or_create(&label).inc();
            }
            match &e.placement {
                tern_core::Placement::Redirected { target, .. }
                    if e.serving.as_ref() != Some(target) =>
                {
                    in_flight.get_or_create(&label).inc();
                }
                tern_core::Placement::Returning { .. } => {
                    in_flight.get_or_create(&label).inc();
                }
                tern_core::Placement::Stranded { .. } => {
                    stranded.get_or_create(&label).inc();
                }
                _ => {}
            }
        }
    });
    reg.register(
        "tern_agents",
        "Registered agents by placement (home, redirected, returning, stranded), home region and last reported serving region",
        agents,
    );
    reg.register(
        "tern_handovers_in_flight",
        "Agents of a home region directed away or home that have not yet reported attached",
        in_flight,
    );
    reg.register(
        "tern_agents_staged",
        "Agents of a home region covered by an unexpired staged handover authorization",
        staged,
    );
    reg.register(
        "tern_agents_stranded",
        "Agents of a failed-over home region with no usable standby",
        stranded,
    );
    gauge(
        reg,
        "tern_agent_streams",
        "Open agent directive streams on this coordinator",
        AGENT_WATCHES.load(std::sync::atomic::Ordering::Relaxed),
    );
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CertLabels {
    kind: String,
    region: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RotationLabels {
    kind: String,
    owner: String,
}

/// Certificate expiry and pin rotations: this coordinator's own transport
/// certificate (each coordinator reports its own), and every running
/// rotation from the replicated state.
fn render_rotation(coord: &Coordinator, reg: &mut Registry) {
    let now_s = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0);
    let not_after = coord.transport.not_after_unix();
    let me = coord.config.node_id;
    let (mine_running, running) = coord.read_state(|s| {
        (
            s.running_rotation(&tern_core::PinSubject::Transport(me))
                .is_some(),
            s.rotations()
                .values()
                .filter(|r| !r.phase().is_finished())
                .map(|r| {
                    let owner = match r.subject() {
                        tern_core::PinSubject::Transport(n) => s
                            .members()
                            .get(n)
                            .map(|m| m.region.to_string())
                            .unwrap_or_else(|| format!("node:{n}")),
                        tern_core::PinSubject::Federation(region) => region.to_string(),
                    };
                    (
                        r.kind().as_str().to_string(),
                        owner,
                        !r.waiting_for().is_empty(),
                    )
                })
                .collect::<Vec<_>>(),
        )
    });
    let expiry: Family<CertLabels, Gauge> = Family::default();
    let labels = CertLabels {
        kind: "transport".into(),
        region: coord.config.region.to_string(),
    };
    expiry.get_or_create(&labels).set(not_after - now_s);
    // This region's federation client certificate, when configured (the
    // file as mounted for the control plane; unreadable: no series).
    let federation = coord
        .config
        .federation
        .client_cert_file
        .as_ref()
        .and_then(|p| crate::tls::CaBundle::load(p).ok())
        .and_then(|b| b.certificates().first().map(|c| c.as_ref().to_vec()))
        .and_then(|der| {
            x509_parser::parse_x509_certificate(&der)
                .ok()
                .map(|(_, c)| c.validity().not_after.timestamp())
        });
    let federation_labels = CertLabels {
        kind: "federation".into(),
        region: coord.config.region.to_string(),
    };
    if let Some(na) = federation {
        expiry.get_or_create(&federation_labels).set(na - now_s);
    }
    reg.register(
        "tern_cert_expiry_seconds",
        "Seconds until this region's certificate of that kind expires (transport: the one this coordinator presents; federation: its control plane's federation client certificate, when configured)",
        expiry,
    );
    let alert: Family<CertLabels, Gauge> = Family::default();
    let due = tern_core::expiry_alert(
        tern_core::Millis(u64::try_from(now_s).unwrap_or(0).saturating_mul(1000)),
        tern_core::Millis(u64::try_from(not_after).unwrap_or(0).saturating_mul(1000)),
        mine_running,
    );
    alert.get_or_create(&labels).set(i64::from(due));
    if let Some(na) = federation {
        let running = coord.read_state(|s| {
            s.running_rotation(&tern_core::PinSubject::Federation(
                coord.config.region.clone(),
            ))
            .is_some()
        });
        let due = tern_core::expiry_alert(
            tern_core::Millis(u64::try_from(now_s).unwrap_or(0).saturating_mul(1000)),
            tern_core::Millis(u64::try_from(na).unwrap_or(0).saturating_mul(1000)),
            running,
        );
        alert.get_or_create(&federation_labels).set(i64::from(due));
    }
    reg.register(
        "tern_cert_expiry_alert",
        "1 when the certificate expires within 14 days and no rotation of its pin is running",
        alert,
    );
    let blocked: Family<RotationLabels, Gauge> = Family::default();
    for (kind, owner, waiting) in running {
        blocked
            .get_or_create(&RotationLabels { kind, owner })
            .set(i64::from(waiting));
    }
    reg.register(
        "tern_rotation_blocked",
        "1 while a running rotation waits for a confirmation or an approval (0 while it can advance)",
        blocked,
    );
}
