//! The status page: `GET /status` (one self-contained HTML page) and
//! `GET /status.json` (the same snapshot as one JSON object), on the plain
//! HTTP listener, without authentication, like `/metrics`.
//!
//! One [`Snapshot`] is built per request from the functions behind the
//! admin API (`admin::status`, `admin::regions`,
//! `admin::agents::agent_summary`, `admin::rotation::status`) and the
//! replicated audit trail; nothing is computed here that the admin
//! API does not already answer, apart from sums of the agent counts. The
//! snapshot holds no secret: no key, token, note value or audit details,
//! only what `/metrics` and `tern status`/`regions` show to any operator.
//!
//! The page is rendered on the server (it reads without JavaScript; a
//! `<noscript>` meta refresh reloads it) and carries a small inline script
//! that re-fetches `/status` every 2 s and swaps its `<main>`, marking the
//! page stale when a refresh fails. The CSS and script are inline, allowed
//! by their SHA-256 in the Content-Security-Policy; nothing is loaded from
//! anywhere else (`default-src 'none'`, `connect-src 'self'`).

mod render;

use std::collections::BTreeMap;
use std::sync::{Arc, OnceLock};

use axum::extract::State;
use axum::http::{header, HeaderValue};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde::Serialize;
use tern_proto::v1 as pb;

use crate::node::Coordinator;

pub use render::{escape, render_page};

/// Audit records shown, newest first.
pub const AUDIT_SHOWN: usize = 20;

/// Version of the JSON shape; raised on an incompatible change.
pub const SNAPSHOT_VERSION: u32 = 1;

/// The page's stylesheet and script, inlined into every page.
pub(crate) const CSS: &str = include_str!("page.css");
pub(crate) const JS: &str = include_str!("page.js");

/// The routes, for `http::serve` to merge when `http.status_page` is on.
pub fn routes() -> Router<Arc<Coordinator>> {
    Router::new()
        .route("/status", get(page))
        .route("/status.json", get(json))
}

async fn page(State(coord): State<Arc<Coordinator>>) -> Response {
    let snap = Snapshot::build(&coord).await;
    with_headers(
        "text/html; charset=utf-8",
        render_page(&snap).into_response(),
    )
}

async fn json(State(coord): State<Arc<Coordinator>>) -> Response {
    let snap = Snapshot::build(&coord).await;
    with_headers("application/json", Json(snap).into_response())
}

fn with_headers(content_type: &'static str, mut r: Response) -> Response {
    let h = r.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    if let Ok(v) = HeaderValue::from_str(content_security_policy()) {
        h.insert(header::CONTENT_SECURITY_POLICY, v);
    }
    r
}

/// `'sha256-<base64>'`, the CSP source that allows exactly this inline text.
fn csp_hash(text: &str) -> String {
    use base64::Engine as _;
    use sha2::Digest as _;
    let digest = sha2::Sha256::digest(text.as_bytes());
    format!(
        "'sha256-{}'",
        base64::engine::general_purpose::STANDARD.encode(digest)
    )
}

/// Nothing but the page's own inline style and script, and requests back
/// to the coordinator that served it.
pub fn content_security_policy() -> &'static str {
    static CSP: OnceLock<String> = OnceLock::new();
    CSP.get_or_init(|| {
        format!(
            "default-src 'none'; style-src {}; script-src {}; connect-src 'self'; \
             base-uri 'none'; form-action 'none'; frame-ancestors 'none'",
            csp_hash(CSS),
            csp_hash(JS)
        )
    })
}

/// What the page shows, and the JSON object `/status.json` answers.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Snapshot {
    /// [`SNAPSHOT_VERSION`].
    pub version: u32,
    /// When this coordinator built the snapshot, Unix ms (its own clock).
    pub generated_at_ms: u64,
    /// The coordinator that answered.
    pub coordinator: CoordinatorView,
    pub federation: FederationView,
    /// Every region the replicated state knows, in name order.
    pub regions: Vec<RegionRow>,
    /// Every coordinator in the member table or Raft's membership.
    pub members: Vec<MemberRow>,
    pub agents: AgentsView,
    pub rotation: RotationView,
    /// The last [`AUDIT_SHOWN`] audit records, newest first.
    pub audit: Vec<AuditRow>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct CoordinatorView {
    pub node_id: u64,
    /// The region this coordinator serves (a witness: its own name).
    pub region: String,
    /// Raft state: Leader, Follower, Candidate, Learner, Shutdown.
    pub server_state: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct FederationView {
    pub leader_id: Option<u64>,
    pub leader_region: Option<String>,
    pub term: u64,
    /// The replicated epoch (only grows).
    pub epoch: u64,
    pub commit_index: u64,
    pub applied_index: u64,
    /// Too many regions look down at once: no region is declared
    /// unreachable until it clears.
    pub frozen: bool,
    /// Automation is off (states are still computed).
    pub paused: bool,
    /// The leader hears a quorum of fresh reports.
    pub quorum_ok: bool,
    /// Whether the leader's live view (computed states, observers) was
    /// available for this snapshot.
    pub live_view: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RegionRow {
    pub region: String,
    /// Committed state: healthy, suspect, unreachable, recovering.
    pub state: String,
    /// Leader time of the transition into `state`, Unix ms; none if the
    /// region never changed state.
    pub since_ms: Option<u64>,
    /// Epoch stamped by that transition.
    pub epoch: u64,
    /// The operator's override: auto, drained, failed_over.
    pub mode: String,
    /// The state the rules give now on the leader; none without a live view.
    pub computed: Option<String>,
    /// Whether the region's own coordinator is reporting.
    pub coordinator_reporting: bool,
    /// What each observer sees of this region's control plane.
    pub observers: Vec<ObserverCell>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ObserverCell {
    pub observer_id: u64,
    pub observer_region: String,
    /// up, down or silent (no fresh report).
    pub sees: String,
    /// Age of the report at the leader, ms; none when silent.
    pub report_age_ms: Option<u64>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct MemberRow {
    pub node_id: u64,
    pub region: String,
    /// region, witness, or unknown (in Raft's membership only).
    pub role: String,
    /// voter, learner, or none (in the member table only).
    pub voting: String,
    /// host:port other coordinators dial.
    pub address: String,
    /// Pinned SHA-256 thumbprints of its transport certificate (hex).
    pub thumbprints: Vec<String>,
    /// Ms since the answering coordinator last heard from it over Raft;
    /// none when unknown, 0 for itself.
    pub last_contact_ms: Option<u64>,
    /// Entries behind the leader's log; none when unknown (known on the
    /// leader only).
    pub replication_lag: Option<u64>,
    pub is_leader: bool,
    /// The coordinator that answered.
    pub is_self: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct AgentsView {
    /// Registered agents.
    pub total: u64,
    /// Per region: its own agents, and the agents of others it serves.
    pub regions: Vec<AgentRegionRow>,
}

/// The agents of one region, summed from `AgentSummary`'s counts per
/// (home region, serving region, placement state). "Serving" is where an
/// agent last reported being attached.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct AgentRegionRow {
    pub region: String,
    /// Agents whose home is this region.
    pub home_total: u64,
    /// Of those: last reported attached to this region.
    pub serving_home: u64,
    /// Of those: last reported attached to another region.
    pub serving_elsewhere: u64,
    /// Of those: no report yet.
    pub not_reported: u64,
    /// Of those, by placement: directed to a standby region.
    pub redirected: u64,
    /// Of those, by placement: home declared unreachable, no standby.
    pub stranded: u64,
    /// Of those, by placement: handed back, not yet confirmed home.
    pub returning: u64,
    /// Handovers not yet confirmed by the agent's report: redirected but
    /// still last reported at home (or never), plus returning.
    pub handovers_in_progress: u64,
    /// Agents of other regions last reported attached to this region.
    pub hosting: u64,
}

/// Pin rotations, from `admin::rotation::status`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RotationView {
    /// Rotations not finished (neither completed nor rolled back).
    pub in_progress: u64,
    /// Approval policy per pin kind: auto or four-eyes.
    pub transport_policy: String,
    pub federation_policy: String,
    /// The transport certificate this coordinator presents.
    pub presenting: Presenting,
    /// Every rotation not finished, then the last [`FINISHED_SHOWN`]
    /// finished ones; newest first within each group.
    pub rotations: Vec<RotationRow>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Presenting {
    pub node_id: u64,
    /// SHA-256 thumbprint (hex).
    pub thumbprint: String,
    /// When the certificate expires, Unix ms; none when unknown.
    pub not_after_ms: Option<u64>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RotationRow {
    pub id: u64,
    /// transport:<node id> or federation:<region>.
    pub subject: String,
    /// pending_approval, staged, presenting, retiring, completed,
    /// reverting, withdrawing, rolled_back.
    pub phase: String,
    pub in_progress: bool,
    pub phase_since_ms: u64,
    pub started_at_ms: u64,
    pub old_thumbprint: String,
    pub new_thumbprint: String,
    /// Who the current phase waits for: approval, owner, node:<id>,
    /// region:<r>.
    pub waiting_for: Vec<String>,
    /// Peers no longer waited for: "<peer> by <admin> in <phase>".
    pub excluded: Vec<String>,
    pub policy: String,
    pub proposed_by: String,
    /// Empty unless approved under four-eyes.
    pub approved_by: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct AuditRow {
    pub seq: u64,
    pub log_index: u64,
    /// Leader-stamped time, Unix ms.
    pub at_ms: u64,
    /// The epoch after the command.
    pub epoch: u64,
    pub actor: String,
    pub kind: String,
    pub summary: String,
}

/// Finished rotations shown after the ones in progress.
pub const FINISHED_SHOWN: usize = 5;

/// Whether a rotation in `phase` (as the API spells it) is finished, by the
/// core's rule; an unknown phase counts as in progress (shown, not hidden).
fn phase_finished(phase: &str) -> bool {
    serde_json::from_value::<tern_core::Phase>(serde_json::Value::from(phase))
        .is_ok_and(|p| p.is_finished())
}

fn rotation_view(r: pb::RotationStatusResponse) -> RotationView {
    let rows: Vec<RotationRow> = r
        .rotations
        .into_iter()
        .map(|i| RotationRow {
            in_progress: !phase_finished(&i.phase),
            id: i.id,
            subject: i.subject,
            phase: i.phase,
            phase_since_ms: i.phase_since_ms,
            started_at_ms: i.started_at_ms,
            old_thumbprint: i.old_thumbprint,
            new_thumbprint: i.new_thumbprint,
            waiting_for: i.waiting_for,
            excluded: i.excluded,
            policy: i.policy,
            proposed_by: i.proposed_by,
            approved_by: i.approved_by,
        })
        .collect();
    let (mut shown, finished): (Vec<_>, Vec<_>) = rows.into_iter().partition(|r| r.in_progress);
    let in_progress = shown.len() as u64;
    shown.extend(finished.into_iter().take(FINISHED_SHOWN));
    RotationView {
        in_progress,
        transport_policy: r.transport_policy,
        federation_policy: r.federation_policy,
        presenting: Presenting {
            node_id: r.node_id,
            thumbprint: r.presenting,
            not_after_ms: (r.presenting_not_after_ms > 0).then_some(r.presenting_not_after_ms),
        },
        rotations: shown,
    }
}

impl Snapshot {
    /// Builds the snapshot of `coord` now: status and regions concurrently
    /// (regions may ask the leader for its live view, 3 s at most).
    pub async fn build(coord: &Coordinator) -> Snapshot {
        let (status, regions) =
            tokio::join!(crate::admin::status(coord), crate::admin::regions(coord));
        let agents = crate::admin::agents::agent_summary(coord);
        let rotations = crate::admin::rotation::status(coord);
        let audit = coord.read_state(|s| {
            s.audit()
                .iter()
                .rev()
                .take(AUDIT_SHOWN)
                .map(|a| AuditRow {
                    seq: a.seq,
                    log_index: a.log_index,
                    at_ms: a.at.0,
                    epoch: a.epoch,
                    actor: a.actor.clone(),
                    kind: a.kind.clone(),
                    summary: a.summary.clone(),
                })
                .collect()
        });
        Snapshot::assemble(
            status,
            regions,
            agents,
            rotations,
            audit,
            crate::proposer::now_ms().0,
        )
    }

    /// Assembles a snapshot from the admin API's answers (pure).
    pub fn assemble(
        status: pb::StatusResponse,
        regions: pb::RegionsResponse,
        agents: pb::AgentSummaryResponse,
        rotations: pb::RotationStatusResponse,
        audit: Vec<AuditRow>,
        generated_at_ms: u64,
    ) -> Snapshot {
        let leader_id = status.leader_id;
        let members = status
            .members
            .iter()
            .map(|m| MemberRow {
                node_id: m.node_id,
                region: m.region.clone(),
                role: match pb::MemberRole::try_from(m.role) {
                    Ok(pb::MemberRole::Region) => "region",
                    Ok(pb::MemberRole::Witness) => "witness",
                    _ => "unknown",
                }
                .into(),
                voting: match pb::Voting::try_from(m.voting) {
                    Ok(pb::Voting::Voter) => "voter",
                    Ok(pb::Voting::Learner) => "learner",
                    _ => "none",
                }
                .into(),
                address: m.address.clone(),
                thumbprints: m.thumbprints.clone(),
                last_contact_ms: u64::try_from(m.last_contact_ms).ok(),
                replication_lag: u64::try_from(m.replication_lag).ok(),
                is_leader: leader_id == Some(m.node_id),
                is_self: m.node_id == status.node_id,
            })
            .collect();
        let region_rows: Vec<RegionRow> = regions
            .regions
            .iter()
            .map(|r| RegionRow {
                region: r.region.clone(),
                state: r.state.clone(),
                since_ms: (r.since_ms > 0).then_some(r.since_ms),
                epoch: r.epoch,
                mode: r.mode.clone(),
                computed: (!r.computed.is_empty()).then(|| r.computed.clone()),
                coordinator_reporting: r.coordinator_reporting,
                observers: r
                    .observers
                    .iter()
                    .map(|o| ObserverCell {
                        observer_id: o.observer,
                        observer_region: o.observer_region.clone(),
                        sees: o.sees.clone(),
                        report_age_ms: (o.sees != "silent").then_some(o.report_age_ms),
                    })
                    .collect(),
            })
            .collect();
        let names: Vec<&str> = region_rows.iter().map(|r| r.region.as_str()).collect();
        Snapshot {
            version: SNAPSHOT_VERSION,
            generated_at_ms,
            coordinator: CoordinatorView {
                node_id: status.node_id,
                region: status.region.clone(),
                server_state: status.server_state.clone(),
            },
            federation: FederationView {
                leader_id,
                leader_region: (!status.leader_region.is_empty())
                    .then(|| status.leader_region.clone()),
                term: status.term,
                epoch: status.epoch,
                commit_index: status.commit_index,
                applied_index: status.applied_index,
                frozen: regions.frozen,
                paused: regions.paused,
                quorum_ok: regions.quorum_ok,
                live_view: regions.live_view,
            },
            agents: AgentsView {
                total: agents.total,
                regions: agent_rows(&names, &agents.counts),
            },
            regions: region_rows,
            members,
            rotation: rotation_view(rotations),
            audit,
        }
    }
}

/// Sums the counts per region: every region of `regions`, plus any home or
/// serving region only the agents name.
fn agent_rows(regions: &[&str], counts: &[pb::AgentCount]) -> Vec<AgentRegionRow> {
    let mut rows: BTreeMap<String, AgentRegionRow> = regions
        .iter()
        .map(|r| {
            (
                r.to_string(),
                AgentRegionRow {
                    region: r.to_string(),
                    ..Default::default()
                },
            )
        })
        .collect();
    fn row<'a>(rows: &'a mut BTreeMap<String, AgentRegionRow>, r: &str) -> &'a mut AgentRegionRow {
        rows.entry(r.to_string()).or_insert_with(|| AgentRegionRow {
            region: r.to_string(),
            ..Default::default()
        })
    }
    for c in counts {
        let n = c.count;
        let home = &c.home_region;
        let serving = c.serving_region.as_str();
        let h = row(&mut rows, home);
        h.home_total += n;
        if serving.is_empty() {
            h.not_reported += n;
        } else if serving == home {
            h.serving_home += n;
        } else {
            h.serving_elsewhere += n;
        }
        match c.state.as_str() {
            "redirected" => {
                h.redirected += n;
                if serving.is_empty() || serving == home {
                    h.handovers_in_progress += n;
                }
            }
            "stranded" => h.stranded += n,
            "returning" => {
                h.returning += n;
                h.handovers_in_progress += n;
            }
            _ => {}
        }
        if !serving.is_empty() && serving != home {
            row(&mut rows, serving).hosting += n;
        }
    }
    rows.into_values().collect()
}

#[cfg(test)]
mod tests;
