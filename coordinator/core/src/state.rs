//! The replicated state and its `apply`: the one place where committed
//! entries change anything. Deterministic: the same entries in the same
//! order give the same state on every replica (ordered maps only, the
//! leader's time only).
//!
//! Persistence is the server's job; this module says what changed. After
//! each apply, `take_dirty()` names the rows to rewrite, and `row_value()`
//! gives each row's new value (or `None`: delete it).

mod federation;
mod fleet;
mod rotations;

use std::collections::{BTreeMap, BTreeSet, VecDeque};

use serde::{Deserialize, Serialize};

use crate::agents::AgentRegistration;
use crate::audit::AuditRecord;
use crate::command::{Batch, BatchResponse, Command, Outcome, Proposal, Rejection};
use crate::health::{RegionRecord, RegionState};
use crate::ids::{NodeId, RegionName, RequestId, Thumbprint};
use crate::member::Member;
use crate::member::MemberRole;
use crate::rotation::{ApprovalPolicy, PinSubject, Rotation};
use crate::time::Millis;
pub use federation::{certificate_thumbprint, FederationPins, MAX_FEDERATION_CERT_PEM};
pub use fleet::{AgentDirective, DirectiveAction, RegionInfo, StagedBatch, StagedRef};
pub use rotations::{RotateOp, FINISHED_ROTATIONS_KEPT};

/// Audit records kept in the replicated state (older ones are dropped).
pub const AUDIT_KEEP: usize = 10_000;
/// How long a request id is remembered for deduplication, in leader ms.
pub const REQUEST_KEEP_MS: u64 = 60 * 60 * 1000;
/// At most this many request ids are remembered.
pub const REQUEST_KEEP_MAX: usize = 200_000;

/// An operator's note as stored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NoteRecord {
    pub value: String,
    pub actor: String,
    pub at: Millis,
    pub log_index: u64,
}

/// What is remembered of an applied request id.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct RequestRecord {
    pub at: Millis,
    pub log_index: u64,
    pub epoch: u64,
}

/// Counters kept in one row.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Meta {
    /// Only grows: bumped by every command that changes who trusts whom or
    /// who serves what, so that stale decisions can be fenced.
    pub epoch: u64,
    pub audit_next_seq: u64,
    /// Automatic Unreachable decisions are frozen (most regions look down).
    #[serde(default)]
    pub frozen: bool,
    /// Automation is paused by an administrator.
    #[serde(default)]
    pub paused: bool,
    /// Approval policy of transport and federation pin rotations.
    #[serde(default)]
    pub transport_approval: ApprovalPolicy,
    #[serde(default)]
    pub federation_approval: ApprovalPolicy,
}

/// Where an agent is, as far as Tern's decisions go.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(tag = "placement", rename_all = "snake_case")]
pub enum Placement {
    /// Served by its home region.
    #[default]
    Home,
    /// Its home was declared Unreachable at `epoch`: directed to `target`.
    Redirected { target: RegionName, epoch: u64 },
    /// Its home was declared Unreachable at `epoch` and it had no standby.
    Stranded { epoch: u64 },
    /// Its home is back: a hand-back wave at `epoch` directed it home. It
    /// stays attached to its standby until home has accepted it.
    Returning { epoch: u64 },
}

impl Placement {
    pub fn as_str(&self) -> &'static str {
        match self {
            Placement::Home => "home",
            Placement::Redirected { .. } => "redirected",
            Placement::Stranded { .. } => "stranded",
            Placement::Returning { .. } => "returning",
        }
    }
}

/// A registered agent, its standby and its placement.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AgentEntry {
    pub registration: AgentRegistration,
    pub standby: Option<RegionName>,
    #[serde(default)]
    pub placement: Placement,
    /// The staged authorization that covers this agent, if any.
    #[serde(default)]
    pub staged: Option<StagedRef>,
    /// Where the agent last reported being attached (None: not reported).
    #[serde(default)]
    pub serving: Option<RegionName>,
    /// The epoch of the directive its last report answered.
    #[serde(default)]
    pub reported_epoch: u64,
}

/// A region's agent trust bundle as committed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TrustBundle {
    pub pem: String,
    /// SHA-256 of `pem` (hex), as computed by the fetching coordinator.
    pub sha256: String,
    /// Leader time of the commit.
    pub at: Millis,
}

/// A row of the persisted state machine.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum RowKey {
    Meta,
    Member(NodeId),
    Note(String),
    Audit(u64),
    Request(RequestId),
    Region(RegionName),
    Agent(String),
    TrustBundle(RegionName),
    RegionInfo(RegionName),
    Staged(RegionName, u64),
    Rotation(u64),
    Federation(RegionName),
}

impl RowKey {
    pub fn table(&self) -> &'static str {
        match self {
            RowKey::Meta => "meta",
            RowKey::Member(_) => "member",
            RowKey::Note(_) => "note",
            RowKey::Audit(_) => "audit",
            RowKey::Request(_) => "request",
            RowKey::Region(_) => "region",
            RowKey::Agent(_) => "agent",
            RowKey::TrustBundle(_) => "trust_bundle",
            RowKey::RegionInfo(_) => "region_info",
            RowKey::Staged(..) => "staged",
            RowKey::Rotation(_) => "rotation",
            RowKey::Federation(_) => "federation",
        }
    }

    pub fn key(&self) -> String {
        match self {
            RowKey::Meta => "meta".into(),
            RowKey::Member(id) => format!("{id:020}"),
            RowKey::Note(k) => k.clone(),
            RowKey::Audit(seq) => format!("{seq:020}"),
            RowKey::Request(r) => r.to_string(),
            RowKey::Region(r) => r.to_string(),
            RowKey::Agent(a) => a.clone(),
            RowKey::TrustBundle(r) => r.to_string(),
            RowKey::RegionInfo(r) => r.to_string(),
            RowKey::Staged(r, id) => format!("{r}/{id:020}"),
            RowKey::Rotation(id) => format!("{id:020}"),
            RowKey::Federation(r) => r.to_string(),
        }
    }
}

/// Errors loading persisted rows or a snapshot.
#[derive(Debug, thiserror::Error)]
pub enum StateError {
    #[error("row {table}/{key}: {source}")]
    Row {
        table: String,
        key: String,
        source: serde_json::Error,
    },
    #[error("unknown table {0:?}")]
    UnknownTable(String),
    #[error("snapshot: {0}")]
    Snapshot(serde_json::Error),
}

/// The state every replica holds.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReplicatedState {
    meta: Meta,
    members: BTreeMap<NodeId, Member>,
    notes: BTreeMap<String, NoteRecord>,
    audit: VecDeque<AuditRecord>,
    requests: BTreeMap<RequestId, RequestRecord>,
    #[serde(default)]
    regions: BTreeMap<RegionName, RegionRecord>,
    #[serde(default)]
    agents: BTreeMap<String, AgentEntry>,
    #[serde(default)]
    trust_bundles: BTreeMap<RegionName, TrustBundle>,
    #[serde(default)]
    region_info: BTreeMap<RegionName, RegionInfo>,
    /// Staged authorization batches by source region and batch id.
    #[serde(default)]
    staged: BTreeMap<RegionName, BTreeMap<u64, StagedBatch>>,
    /// Pin rotations by id: running ones and the newest finished ones.
    #[serde(default)]
    rotations: BTreeMap<u64, Rotation>,
    /// Federation pins and certificates by region.
    #[serde(default)]
    federation: BTreeMap<RegionName, FederationPins>,
    /// Derived from `requests`: expiry order.
    #[serde(skip)]
    request_order: BTreeSet<(Millis, RequestId)>,
    #[serde(skip)]
    dirty: BTreeSet<RowKey>,
}

impl ReplicatedState {
    pub fn epoch(&self) -> u64 {
        self.meta.epoch
    }

    pub fn members(&self) -> &BTreeMap<NodeId, Member> {
        &self.members
    }

    pub fn notes(&self) -> &BTreeMap<String, NoteRecord> {
        &self.notes
    }

    pub fn audit(&self) -> &VecDeque<AuditRecord> {
        &self.audit
    }

    /// Committed health records (a region without one is Healthy).
    pub fn region_records(&self) -> &BTreeMap<RegionName, RegionRecord> {
        &self.regions
    }

    /// Regions with a known control plane, and the coordinators serving each.
    pub fn regions(&self) -> BTreeMap<RegionName, BTreeSet<NodeId>> {
        let mut out: BTreeMap<RegionName, BTreeSet<NodeId>> = BTreeMap::new();
        for m in self
            .members
            .values()
            .filter(|m| m.role == MemberRole::Region && m.control_plane.is_some())
        {
            out.entry(m.region.clone()).or_default().insert(m.node_id);
        }
        out
    }

    /// Committed agent trust bundles by region.
    pub fn trust_bundles(&self) -> &BTreeMap<RegionName, TrustBundle> {
        &self.trust_bundles
    }

    pub fn agents(&self) -> &BTreeMap<String, AgentEntry> {
        &self.agents
    }

    pub fn frozen(&self) -> bool {
        self.meta.frozen
    }

    pub fn paused(&self) -> bool {
        self.meta.paused
    }

    pub fn request(&self, id: &RequestId) -> Option<&RequestRecord> {
        self.requests.get(id)
    }

    /// Every thumbprint pinned by the member table.
    pub fn pinned_thumbprints(&self) -> BTreeSet<Thumbprint> {
        self.members
            .values()
            .flat_map(|m| m.thumbprints.iter().copied())
            .collect()
    }

    /// Applies one entry's batch. `log_index` is the entry's index.
    pub fn apply(&mut self, log_index: u64, batch: &Batch) -> BatchResponse {
        self.expire_requests(batch.at);
        let outcomes = batch
            .proposals
            .iter()
            .map(|p| self.apply_one(log_index, batch.at, p))
            .collect();
        BatchResponse { outcomes }
    }

    fn apply_one(&mut self, log_index: u64, at: Millis, p: &Proposal) -> Outcome {
        if let Some(prev) = self.requests.get(&p.request_id) {
            return Outcome::Duplicate {
                epoch: prev.epoch,
                log_index: prev.log_index,
            };
        }
        let result = self.execute(log_index, at, p);
        let (outcome, summary) = match result {
            Ok(summary) => (
                Outcome::Applied {
                    epoch: self.meta.epoch,
                    log_index,
                },
                summary,
            ),
            Err(reason) => {
                let s = format!("refused: {reason}");
                (Outcome::Rejected { reason }, s)
            }
        };
        self.remember_request(
            p.request_id.clone(),
            RequestRecord {
                at,
                log_index,
                epoch: self.meta.epoch,
            },
        );
        self.push_audit(AuditRecord {
            seq: 0,
            log_index,
            at,
            actor: p.actor.clone(),
            request_id: p.request_id.clone(),
            kind: p.command.kind().to_string(),
            summary,
            epoch: self.meta.epoch,
            details: audit_details(&p.command),
        });
        outcome
    }

    fn execute(&mut self, log_index: u64, at: Millis, p: &Proposal) -> Result<String, Rejection> {
        p.command
            .validate()
            .map_err(|message| Rejection::Invalid { message })?;
        match &p.command {
            Command::UpsertMember {
                member,
                expect_epoch,
            } => {
                self.check_epoch(*expect_epoch)?;
                if let Some(r) = self.running_rotation(&PinSubject::Transport(member.node_id)) {
                    return Err(Rejection::Conflict {
                        message: format!(
                            "node {}'s pin is being rotated (rotation {}, {}): finish or roll \
                             it back first",
                            member.node_id,
                            r.id(),
                            r.phase()
                        ),
                    });
                }
                if let Some(other) = self
                    .members
                    .values()
                    .find(|m| m.node_id != member.node_id && m.region == member.region)
                {
                    return Err(Rejection::Conflict {
                        message: format!(
                            "region {} is already served by node {}",
                            member.region, other.node_id
                        ),
                    });
                }
                if let Some(other) = self.members.values().find(|m| {
                    m.node_id != member.node_id && !m.thumbprints.is_disjoint(&member.thumbprints)
                }) {
                    return Err(Rejection::Conflict {
                        message: format!(
                            "a thumbprint is already pinned for node {}",
                            other.node_id
                        ),
                    });
                }
                let existed = self
                    .members
                    .insert(member.node_id, member.clone())
                    .is_some();
                self.dirty.insert(RowKey::Member(member.node_id));
                self.bump_epoch();
                Ok(format!(
                    "{} member {} (region {}, {}, {})",
                    if existed { "updated" } else { "added" },
                    member.node_id,
                    member.region,
                    member.role.as_str(),
                    member.address
                ))
            }
            Command::RemoveMember {
                node_id,
                expect_epoch,
            } => {
                self.check_epoch(*expect_epoch)?;
                let Some(m) = self.members.remove(node_id) else {
                    return Err(Rejection::Conflict {
                        message: format!("node {node_id} is not a member"),
                    });
                };
                self.dirty.insert(RowKey::Member(*node_id));
                self.bump_epoch();
                Ok(format!("removed member {node_id} (region {})", m.region))
            }
            Command::PutNote { key, value } => {
                self.notes.insert(
                    key.clone(),
                    NoteRecord {
                        value: value.clone(),
                        actor: p.actor.clone(),
                        at,
                        log_index,
                    },
                );
                self.dirty.insert(RowKey::Note(key.clone()));
                Ok(format!("note {key:?} set ({} bytes)", value.len()))
            }
            Command::RegionTransition {
                region,
                from,
                to,
                observations,
            } => {
                if !self
                    .members
                    .values()
                    .any(|m| m.role == MemberRole::Region && &m.region == region)
                {
                    return Err(Rejection::Invalid {
                        message: format!("{region} is not a region of this federation"),
                    });
                }
                let current = self
                    .regions
                    .get(region)
                    .map(|r| r.state)
                    .unwrap_or(RegionState::Healthy);
                if current != *from {
                    return Err(Rejection::Conflict {
                        message: format!(
                            "region {region} is {}, not {}",
                            current.as_str(),
                            from.as_str()
                        ),
                    });
                }
                self.bump_epoch();
                self.regions.insert(
                    region.clone(),
                    RegionRecord {
                        state: *to,
                        since: at,
                        epoch: self.meta.epoch,
                    },
                );
                self.dirty.insert(RowKey::Region(region.clone()));
                let moved = match to {
                    RegionState::Unreachable => self.activate_standbys(region, at),
                    RegionState::Healthy if self.region_home_ready(region) => {
                        self.region_back(region)
                    }
                    _ => String::new(),
                };
                let down = observations.iter().filter(|o| !o.up).count();
                Ok(format!(
                    "region {region}: {} -> {} ({down} of {} observations down){moved}",
                    from.as_str(),
                    to.as_str(),
                    observations.len()
                ))
            }
            Command::RegisterAgents { agents } => {
                let mut added = 0usize;
                for a in agents {
                    let entry = self.agents.entry(a.agent_id.clone()).or_insert_with(|| {
                        added += 1;
                        AgentEntry {
                            registration: a.clone(),
                            standby: None,
                            placement: Placement::Home,
                            staged: None,
                            serving: None,
                            reported_epoch: 0,
                        }
                    });
                    entry.registration = a.clone();
                    self.dirty.insert(RowKey::Agent(a.agent_id.clone()));
                }
                Ok(format!("{} agents registered ({added} new)", agents.len()))
            }
            Command::SetStandbys { standbys } => {
                let mut changed = 0usize;
                for (id, standby) in standbys {
                    let Some(e) = self.agents.get_mut(id) else {
                        continue;
                    };
                    // A failed-over agent's directive was fixed by the decision.
                    if e.placement != Placement::Home || &e.standby == standby {
                        continue;
                    }
                    e.standby = standby.clone();
                    changed += 1;
                    self.dirty.insert(RowKey::Agent(id.clone()));
                }
                Ok(format!("standby plan: {changed} agents changed"))
            }
            Command::SetTrustBundle {
                region,
                pem,
                sha256,
            } => {
                if self
                    .trust_bundles
                    .get(region)
                    .is_some_and(|b| &b.sha256 == sha256)
                {
                    return Ok(format!("trust bundle of {region} unchanged"));
                }
                self.trust_bundles.insert(
                    region.clone(),
                    TrustBundle {
                        pem: pem.clone(),
                        sha256: sha256.clone(),
                        at,
                    },
                );
                self.dirty.insert(RowKey::TrustBundle(region.clone()));
                Ok(format!(
                    "trust bundle of {region} set (sha256 {})",
                    &sha256[..12.min(sha256.len())]
                ))
            }
            Command::SetFrozen { frozen, reason } => {
                if self.meta.frozen == *frozen {
                    return Err(Rejection::Conflict {
                        message: format!("already {}", if *frozen { "frozen" } else { "unfrozen" }),
                    });
                }
                self.meta.frozen = *frozen;
                self.bump_epoch();
                Ok(format!(
                    "{}: {reason}",
                    if *frozen { "frozen" } else { "unfrozen" }
                ))
            }
            Command::SetPaused { paused, reason } => {
                let word = if *paused { "paused" } else { "resumed" };
                if self.meta.paused == *paused {
                    return Ok(format!("automation already {word}"));
                }
                self.meta.paused = *paused;
                self.bump_epoch();
                Ok(format!("automation {word}: {reason}"))
            }
            Command::SetRegionInfo { region, update } => self.set_region_info(region, update, at),
            Command::StageAuthorizations {
                region,
                batch,
                leaves,
            } => self.stage(region, batch, leaves),
            Command::ReportAgents { reports } => Ok(self.report_agents(reports)),
            Command::SetRegionMode {
                region,
                mode,
                expect_epoch,
            } => {
                self.check_epoch(*expect_epoch)?;
                self.set_region_mode(region, *mode, at)
            }
            Command::HandBack { region, agents } => self.hand_back(region, agents),
            Command::Rotate { op } => self.rotate(log_index, at, &p.actor, op),
            Command::PublishFederationCert { region, pem } => {
                self.publish_federation_cert(&p.actor, region, pem)
            }
            Command::SetRotationPolicy { pin_kind, policy } => {
                self.set_rotation_policy(*pin_kind, *policy)
            }
            Command::RecordDrill { drill } => {
                if !self.regions().contains_key(&drill.region) {
                    return Err(Rejection::Invalid {
                        message: format!("{} is not a region of this federation", drill.region),
                    });
                }
                Ok(drill.summary())
            }
        }
    }

    fn check_epoch(&self, expected: Option<u64>) -> Result<(), Rejection> {
        match expected {
            Some(e) if e != self.meta.epoch => Err(Rejection::StaleEpoch {
                expected: e,
                actual: self.meta.epoch,
            }),
            _ => Ok(()),
        }
    }

    fn bump_epoch(&mut self) {
        self.meta.epoch += 1;
        self.dirty.insert(RowKey::Meta);
    }

    fn push_audit(&mut self, mut rec: AuditRecord) {
        rec.seq = self.meta.audit_next_seq;
        self.meta.audit_next_seq += 1;
        self.dirty.insert(RowKey::Meta);
        self.dirty.insert(RowKey::Audit(rec.seq));
        self.audit.push_back(rec);
        while self.audit.len() > AUDIT_KEEP {
            if let Some(old) = self.audit.pop_front() {
                self.dirty.insert(RowKey::Audit(old.seq));
            }
        }
    }

    fn remember_request(&mut self, id: RequestId, rec: RequestRecord) {
        self.request_order.insert((rec.at, id.clone()));
        self.dirty.insert(RowKey::Request(id.clone()));
        self.requests.insert(id, rec);
        while self.requests.len() > REQUEST_KEEP_MAX {
            let Some(first) = self.request_order.pop_first() else {
                break;
            };
            self.requests.remove(&first.1);
            self.dirty.insert(RowKey::Request(first.1));
        }
    }

    fn expire_requests(&mut self, now: Millis) {
        while let Some((at, _)) = self.request_order.first() {
            if now.saturating_since(*at) <= REQUEST_KEEP_MS {
                break;
            }
            let Some((_, id)) = self.request_order.pop_first() else {
                break;
            };
            self.requests.remove(&id);
            self.dirty.insert(RowKey::Request(id));
        }
    }

    /// Rows changed since the last call, in a stable order.
    pub fn take_dirty(&mut self) -> Vec<RowKey> {
        std::mem::take(&mut self.dirty).into_iter().collect()
    }

    /// A row's current JSON value, or `None` when the row must be deleted.
    pub fn row_value(&self, key: &RowKey) -> Option<String> {
        let v = match key {
            RowKey::Meta => serde_json::to_string(&self.meta),
            RowKey::Member(id) => serde_json::to_string(self.members.get(id)?),
            RowKey::Note(k) => serde_json::to_string(self.notes.get(k)?),
            RowKey::Audit(seq) => {
                let first = self.audit.front()?.seq;
                let idx = usize::try_from(seq.checked_sub(first)?).ok()?;
                serde_json::to_string(self.audit.get(idx)?)
            }
            RowKey::Request(id) => serde_json::to_string(self.requests.get(id)?),
            RowKey::Region(r) => serde_json::to_string(self.regions.get(r)?),
            RowKey::Agent(a) => serde_json::to_string(self.agents.get(a)?),
            RowKey::TrustBundle(r) => serde_json::to_string(self.trust_bundles.get(r)?),
            RowKey::RegionInfo(r) => serde_json::to_string(self.region_info.get(r)?),
            RowKey::Staged(r, id) => serde_json::to_string(self.staged.get(r)?.get(id)?),
            RowKey::Rotation(id) => serde_json::to_string(self.rotations.get(id)?),
            RowKey::Federation(r) => serde_json::to_string(self.federation.get(r)?),
        };
        v.ok()
    }

    /// Every row, for rewriting the whole persisted state (snapshot install).
    pub fn all_rows(&self) -> Vec<(RowKey, String)> {
        let mut keys = vec![RowKey::Meta];
        keys.extend(self.members.keys().map(|id| RowKey::Member(*id)));
        keys.extend(self.notes.keys().map(|k| RowKey::Note(k.clone())));
        keys.extend(self.audit.iter().map(|a| RowKey::Audit(a.seq)));
        keys.extend(self.requests.keys().map(|r| RowKey::Request(r.clone())));
        keys.extend(self.regions.keys().map(|r| RowKey::Region(r.clone())));
        keys.extend(self.agents.keys().map(|a| RowKey::Agent(a.clone())));
        keys.extend(
            self.trust_bundles
                .keys()
                .map(|r| RowKey::TrustBundle(r.clone())),
        );
        keys.extend(
            self.region_info
                .keys()
                .map(|r| RowKey::RegionInfo(r.clone())),
        );
        for (r, batches) in &self.staged {
            keys.extend(batches.keys().map(|id| RowKey::Staged(r.clone(), *id)));
        }
        keys.extend(self.rotations.keys().map(|id| RowKey::Rotation(*id)));
        keys.extend(
            self.federation
                .keys()
                .map(|r| RowKey::Federation(r.clone())),
        );
        keys.into_iter()
            .filter_map(|k| self.row_value(&k).map(|v| (k, v)))
            .collect()
    }

    /// Rebuilds the state from persisted rows `(table, key, json)`.
    pub fn from_rows<I>(rows: I) -> Result<Self, StateError>
    where
        I: IntoIterator<Item = (String, String, String)>,
    {
        fn parse<T: serde::de::DeserializeOwned>(
            t: &str,
            k: &str,
            v: &str,
        ) -> Result<T, StateError> {
            serde_json::from_str(v).map_err(|source| StateError::Row {
                table: t.into(),
                key: k.into(),
                source,
            })
        }
        let mut s = ReplicatedState::default();
        let mut audit = Vec::new();
        for (t, k, v) in rows {
            match t.as_str() {
                "meta" => s.meta = parse(&t, &k, &v)?,
                "member" => {
                    let m: Member = parse(&t, &k, &v)?;
                    s.members.insert(m.node_id, m);
                }
                "note" => {
                    s.notes.insert(k.clone(), parse(&t, &k, &v)?);
                }
                "audit" => audit.push(parse::<AuditRecord>(&t, &k, &v)?),
                "request" => {
                    let id: RequestId = k.parse().map_err(|e| StateError::Row {
                        table: t.clone(),
                        key: k.clone(),
                        source: serde::de::Error::custom(e),
                    })?;
                    s.requests.insert(id, parse(&t, &k, &v)?);
                }
                "region" => {
                    let name: RegionName = k.parse().map_err(|e| StateError::Row {
                        table: t.clone(),
                        key: k.clone(),
                        source: serde::de::Error::custom(e),
                    })?;
                    s.regions.insert(name, parse(&t, &k, &v)?);
                }
                "agent" => {
                    s.agents.insert(k.clone(), parse(&t, &k, &v)?);
                }
                "trust_bundle" => {
                    let name: RegionName = k.parse().map_err(|e| StateError::Row {
                        table: t.clone(),
                        key: k.clone(),
                        source: serde::de::Error::custom(e),
                    })?;
                    s.trust_bundles.insert(name, parse(&t, &k, &v)?);
                }
                "region_info" => {
                    let name: RegionName = k.parse().map_err(|e| StateError::Row {
                        table: t.clone(),
                        key: k.clone(),
                        source: serde::de::Error::custom(e),
                    })?;
                    s.region_info.insert(name, parse(&t, &k, &v)?);
                }
                "staged" => {
                    let b: StagedBatch = parse(&t, &k, &v)?;
                    s.staged
                        .entry(b.batch.header.source.clone())
                        .or_default()
                        .insert(b.batch.header.batch_id, b);
                }
                "rotation" => {
                    let r: Rotation = parse(&t, &k, &v)?;
                    s.rotations.insert(r.id(), r);
                }
                "federation" => {
                    let name: RegionName = k.parse().map_err(|e| StateError::Row {
                        table: t.clone(),
                        key: k.clone(),
                        source: serde::de::Error::custom(e),
                    })?;
                    s.federation.insert(name, parse(&t, &k, &v)?);
                }
                _ => return Err(StateError::UnknownTable(t)),
            }
        }
        audit.sort_by_key(|a| a.seq);
        s.audit = audit.into();
        s.rebuild_derived();
        Ok(s)
    }

    fn rebuild_derived(&mut self) {
        self.request_order = self
            .requests
            .iter()
            .map(|(id, r)| (r.at, id.clone()))
            .collect();
        self.dirty.clear();
    }

    /// The whole state as snapshot bytes.
    pub fn to_snapshot(&self) -> Vec<u8> {
        serde_json::to_vec(self).unwrap_or_default()
    }

    /// Restores a state from snapshot bytes.
    pub fn from_snapshot(bytes: &[u8]) -> Result<Self, StateError> {
        let mut s: ReplicatedState = serde_json::from_slice(bytes).map_err(StateError::Snapshot)?;
        s.rebuild_derived();
        Ok(s)
    }
}

/// What the audit trail keeps of a command: the whole command, except for
/// bulk commands (registrations, plan changes), which keep their size only.
fn audit_details(c: &Command) -> serde_json::Value {
    match c {
        Command::RegisterAgents { agents } => {
            serde_json::json!({ "kind": "register_agents", "agents": agents.len() })
        }
        Command::SetStandbys { standbys } => {
            serde_json::json!({ "kind": "set_standbys", "changes": standbys.len() })
        }
        Command::StageAuthorizations {
            region,
            batch,
            leaves,
        } => serde_json::json!({
            "kind": "stage_authorizations", "region": region,
            "batch_id": batch.header.batch_id, "agents": leaves.len(),
            "not_after": batch.header.not_after,
        }),
        Command::ReportAgents { reports } => {
            serde_json::json!({ "kind": "report_agents", "reports": reports.len() })
        }
        Command::HandBack { region, agents } => {
            serde_json::json!({ "kind": "hand_back", "region": region, "agents": agents.len() })
        }
        Command::SetRegionInfo { region, update } => serde_json::json!({
            "kind": "set_region_info", "region": region,
            "opamp_endpoint": update.opamp_endpoint, "capacity": update.capacity,
            "priority": update.priority, "configs": update.configs.len(),
            "signing_key": update.signing_key.as_ref().map(|k| &k.0),
        }),
        Command::SetTrustBundle {
            region,
            sha256,
            pem,
        } => {
            serde_json::json!({ "kind": "set_trust_bundle", "region": region, "sha256": sha256, "bytes": pem.len() })
        }
        other => serde_json::to_value(other).unwrap_or(serde_json::Value::Null),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::member::MemberRole;
    use proptest::prelude::*;

    fn member(id: NodeId, region: &str, tp: u8) -> Member {
        Member {
            node_id: id,
            region: region.parse().expect("region"),
            role: MemberRole::Region,
            address: format!("127.0.0.{id}:7400"),
            thumbprints: [Thumbprint([tp; 32])].into(),
            control_plane: None,
        }
    }

    /// Publishes standby information for `source` (with a signing key) and
    /// `target`, commits a trust bundle for `source`, and stages one signed
    /// batch covering every agent of `source` whose standby is `target`.
    fn stage_all(s: &mut ReplicatedState, source: &str, target: &str) {
        use ring::signature::KeyPair;
        let key = ring::signature::Ed25519KeyPair::from_seed_unchecked(&[7u8; 32]).expect("key");
        let public: String = key
            .public_key()
            .as_ref()
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        let key_id = crate::handover::handover_key_id(key.public_key().as_ref());
        let pem = "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n";
        let info = |signing_key| crate::command::RegionInfoUpdate {
            opamp_endpoint: "wss://x.test/v1/opamp".into(),
            capacity: None,
            priority: 0,
            configs: Default::default(),
            signing_key,
        };
        let cmds = vec![
            prop(
                "ri-src",
                Command::SetRegionInfo {
                    region: source.parse().expect("r"),
                    update: info(Some((key_id, public))),
                },
            ),
            prop(
                "ri-dst",
                Command::SetRegionInfo {
                    region: target.parse().expect("r"),
                    update: info(None),
                },
            ),
            prop(
                "tb",
                Command::SetTrustBundle {
                    region: source.parse().expect("r"),
                    pem: pem.into(),
                    sha256: "ab".repeat(32),
                },
            ),
        ];
        s.apply(3, &batch(3, cmds));
        let leaves: Vec<crate::handover::TokenLeaf> = s
            .agents()
            .iter()
            .filter(|(_, e)| {
                e.registration.home.as_str() == source
                    && e.standby.as_ref().map(|r| r.as_str()) == Some(target)
            })
            .map(|(id, e)| crate::handover::TokenLeaf {
                agent_id: id.clone(),
                fingerprint: e.registration.fingerprint,
                home: e.registration.home.clone(),
                target: target.parse().expect("r"),
                target_endpoint: "wss://x.test/v1/opamp".into(),
            })
            .collect();
        let spec = crate::handover::BatchSpec {
            source: source.parse().expect("r"),
            batch_id: 1,
            epoch: s.epoch(),
            issued_at: Millis(0),
            not_after: Millis(3_600_000),
        };
        let (b, _) = crate::handover::sign_batch(&spec, pem, &leaves, &key).expect("sign");
        let out = s.apply(
            3,
            &batch(
                3,
                vec![prop(
                    "stage",
                    Command::StageAuthorizations {
                        region: source.parse().expect("r"),
                        batch: b,
                        leaves,
                    },
                )],
            ),
        );
        assert!(
            matches!(out.outcomes[0], Outcome::Applied { .. }),
            "staging applied: {out:?}"
        );
    }

    fn prop(id: &str, command: Command) -> Proposal {
        Proposal {
            request_id: id.parse().expect("id"),
            actor: "admin:test".into(),
            command,
        }
    }

    fn batch(at: u64, proposals: Vec<Proposal>) -> Batch {
        Batch {
            at: Millis(at),
            proposals,
        }
    }

    // Property: a retried request id applies once; the retry reports the
    // original entry and changes nothing.
    #[test]
    fn duplicate_request_applies_once() {
        let mut s = ReplicatedState::default();
        let p = prop(
            "r1",
            Command::UpsertMember {
                member: member(1, "eu", 1),
                expect_epoch: None,
            },
        );
        let first = s.apply(5, &batch(1000, vec![p.clone()]));
        assert_eq!(
            first.outcomes,
            vec![Outcome::Applied {
                epoch: 1,
                log_index: 5
            }]
        );
        let again = s.apply(6, &batch(2000, vec![p]));
        assert_eq!(
            again.outcomes,
            vec![Outcome::Duplicate {
                epoch: 1,
                log_index: 5
            }],
            "retry must not re-apply"
        );
        assert_eq!(s.epoch(), 1);
        assert_eq!(s.audit().len(), 1, "a duplicate is not a new decision");
    }

    // Property: a command with a stale expected epoch is refused, audited,
    // and changes nothing else.
    #[test]
    fn stale_epoch_is_refused() {
        let mut s = ReplicatedState::default();
        s.apply(
            1,
            &batch(
                1,
                vec![prop(
                    "a",
                    Command::UpsertMember {
                        member: member(1, "eu", 1),
                        expect_epoch: Some(0),
                    },
                )],
            ),
        );
        let r = s.apply(
            2,
            &batch(
                2,
                vec![prop(
                    "b",
                    Command::RemoveMember {
                        node_id: 1,
                        expect_epoch: Some(0),
                    },
                )],
            ),
        );
        assert_eq!(
            r.outcomes,
            vec![Outcome::Rejected {
                reason: Rejection::StaleEpoch {
                    expected: 0,
                    actual: 1
                }
            }]
        );
        assert!(s.members().contains_key(&1));
        assert_eq!(
            s.audit().back().map(|a| a.summary.starts_with("refused")),
            Some(true)
        );
    }

    // Property: two members can share neither a region nor a thumbprint.
    #[test]
    fn member_conflicts_are_refused() {
        let mut s = ReplicatedState::default();
        s.apply(
            1,
            &batch(
                1,
                vec![prop(
                    "a",
                    Command::UpsertMember {
                        member: member(1, "eu", 1),
                        expect_epoch: None,
                    },
                )],
            ),
        );
        let r = s.apply(
            2,
            &batch(
                2,
                vec![
                    prop(
                        "b",
                        Command::UpsertMember {
                            member: member(2, "eu", 2),
                            expect_epoch: None,
                        },
                    ),
                    prop(
                        "c",
                        Command::UpsertMember {
                            member: member(3, "us", 1),
                            expect_epoch: None,
                        },
                    ),
                ],
            ),
        );
        assert!(matches!(
            r.outcomes[0],
            Outcome::Rejected {
                reason: Rejection::Conflict { .. }
            }
        ));
        assert!(matches!(
            r.outcomes[1],
            Outcome::Rejected {
                reason: Rejection::Conflict { .. }
            }
        ));
        assert_eq!(s.members().len(), 1);
    }

    fn reg(id: &str, home: &str) -> crate::agents::AgentRegistration {
        crate::agents::AgentRegistration {
            agent_id: id.into(),
            fingerprint: Thumbprint([7; 32]),
            home: home.parse().expect("region"),
            tenant: "t".into(),
            config: crate::agents::ConfigRef {
                id: "c".into(),
                version: 1,
                content_hash: "h".into(),
            },
            capabilities: ["AcceptsOpAMPConnectionSettings".to_string()].into(),
            allowed_regions: None,
            leaf_not_after: Millis(u64::MAX / 2),
        }
    }

    // Property: hand-back is make-before-break and fenced. A wave is refused
    // while the home region is not back; a wave moves the agent to
    // Returning at a new epoch; a report from the standby, from home at an
    // older epoch, or not attached, leaves it Returning; only a report of
    // being attached at home at the wave's epoch brings it Home. A drained
    // region's agents move at once; undrain does not bring them home by
    // itself (waves do).
    /// A drill record lands in the audit trail with its summary and the
    /// measured steps, changes neither the epoch nor anything else, and is
    /// refused for a region the federation does not have.
    #[test]
    fn drill_records_are_audited_and_change_nothing() {
        let mut s = ReplicatedState::default();
        let mut eu = member(1, "eu", 1);
        eu.control_plane = Some("https://eu:1".into());
        s.apply(
            1,
            &batch(
                1,
                vec![prop(
                    "m1",
                    Command::UpsertMember {
                        member: eu,
                        expect_epoch: None,
                    },
                )],
            ),
        );
        let epoch = s.epoch();
        s.take_dirty();
        let drill = |region: &str| crate::drill::DrillRecord {
            region: region.parse().expect("r"),
            method: "drain".into(),
            outcome: "completed".into(),
            started_at_ms: 5,
            total_ms: 900,
            agents: 3,
            steps: vec![crate::drill::DrillStep {
                name: "decision".into(),
                at_ms: 100,
                took_ms: 100,
            }],
            detail: String::new(),
        };
        let out = s.apply(
            2,
            &batch(
                2,
                vec![prop("d1", Command::RecordDrill { drill: drill("eu") })],
            ),
        );
        assert!(
            matches!(out.outcomes[0], Outcome::Applied { .. }),
            "{out:?}"
        );
        assert_eq!(s.epoch(), epoch, "a drill record bumps no epoch");
        let last = s.audit().back().expect("audit record");
        assert_eq!(last.kind, "record_drill");
        assert_eq!(
            last.summary,
            "drill of eu (drain, 3 agents) completed in 0.9 s: decision +0.1 s"
        );
        assert_eq!(last.details["drill"]["steps"][0]["at_ms"], 100);
        // Only audit and request rows were added: nothing else changed.
        let tables: BTreeSet<&str> = s.take_dirty().iter().map(|k| k.table()).collect();
        assert!(
            tables
                .iter()
                .all(|t| ["audit", "request", "meta"].contains(t)),
            "{tables:?}"
        );
        let out = s.apply(
            3,
            &batch(
                3,
                vec![prop("d2", Command::RecordDrill { drill: drill("ap") })],
            ),
        );
        match &out.outcomes[0] {
            Outcome::Rejected { reason } => {
                assert!(reason.to_string().contains("not a region"), "{reason}")
            }
            other => panic!("expected a refusal, got {other:?}"),
        }
    }

    #[test]
    fn hand_back_needs_home_to_accept_the_agent() {
        let mut s = ReplicatedState::default();
        let mut eu = member(1, "eu", 1);
        eu.control_plane = Some("https://eu:1".into());
        let mut us = member(2, "us", 2);
        us.control_plane = Some("https://us:1".into());
        let ms = vec![
            prop(
                "m1",
                Command::UpsertMember {
                    member: eu,
                    expect_epoch: None,
                },
            ),
            prop(
                "m2",
                Command::UpsertMember {
                    member: us,
                    expect_epoch: None,
                },
            ),
            prop(
                "r",
                Command::RegisterAgents {
                    agents: vec![reg("a1", "eu")],
                },
            ),
            prop(
                "p",
                Command::SetStandbys {
                    standbys: vec![("a1".into(), Some("us".parse().expect("r")))],
                },
            ),
        ];
        s.apply(1, &batch(1, ms));
        stage_all(&mut s, "eu", "us");
        let eu_r: RegionName = "eu".parse().expect("r");
        let us_r: RegionName = "us".parse().expect("r");
        let mode = |m: crate::command::RegionMode, id: &str| {
            prop(
                id,
                Command::SetRegionMode {
                    region: "eu".parse().expect("r"),
                    mode: m,
                    expect_epoch: None,
                },
            )
        };
        let wave = |id: &str| {
            prop(
                id,
                Command::HandBack {
                    region: "eu".parse().expect("r"),
                    agents: vec!["a1".into()],
                },
            )
        };
        let report = |id: &str, epoch: u64, serving: &RegionName, attached: bool| {
            prop(
                id,
                Command::ReportAgents {
                    reports: vec![crate::command::AgentReport {
                        agent_id: "a1".into(),
                        epoch,
                        serving: serving.clone(),
                        attached,
                    }],
                },
            )
        };
        s.apply(
            4,
            &batch(4, vec![mode(crate::command::RegionMode::Drained, "d")]),
        );
        let e1 = s.epoch();
        assert_eq!(
            s.agents()["a1"].placement,
            Placement::Redirected {
                target: us_r.clone(),
                epoch: e1
            }
        );
        let out = s.apply(5, &batch(5, vec![wave("w0")]));
        assert!(
            matches!(out.outcomes[0], Outcome::Rejected { .. }),
            "no hand-back while drained"
        );
        s.apply(6, &batch(6, vec![report("rep1", e1, &us_r, true)]));
        assert_eq!(s.agents()["a1"].serving, Some(us_r.clone()));
        s.apply(
            7,
            &batch(7, vec![mode(crate::command::RegionMode::Auto, "u")]),
        );
        assert!(
            matches!(s.agents()["a1"].placement, Placement::Redirected { .. }),
            "undrain alone does not move agents: waves do"
        );
        s.apply(8, &batch(8, vec![wave("w1")]));
        let e2 = s.epoch();
        assert_eq!(
            s.agents()["a1"].placement,
            Placement::Returning { epoch: e2 }
        );
        s.apply(
            9,
            &batch(
                9,
                vec![
                    report("rep2", e2, &us_r, true),
                    report("rep3", e1, &eu_r, true),
                    report("rep4", e2, &eu_r, false),
                ],
            ),
        );
        assert_eq!(
            s.agents()["a1"].placement,
            Placement::Returning { epoch: e2 },
            "not home until home accepted it at the wave's epoch"
        );
        s.apply(10, &batch(10, vec![report("rep5", e2, &eu_r, true)]));
        assert_eq!(s.agents()["a1"].placement, Placement::Home);
        assert_eq!(s.agents()["a1"].serving, Some(eu_r));
    }

    // Property: the committed Unreachable decision activates the standby
    // plan of every agent of that region in that one entry, at that entry's
    // epoch; agents without a standby are stranded; the plan of failed-over
    // agents cannot change afterwards; other regions' agents stay home.
    #[test]
    fn unreachable_decision_activates_the_plan_in_one_entry() {
        let mut s = ReplicatedState::default();
        let mut eu = member(1, "eu", 1);
        eu.control_plane = Some("https://eu:1".into());
        let mut us = member(2, "us", 2);
        us.control_plane = Some("https://us:1".into());
        s.apply(
            1,
            &batch(
                1,
                vec![
                    prop(
                        "m",
                        Command::UpsertMember {
                            member: eu,
                            expect_epoch: None,
                        },
                    ),
                    prop(
                        "m2",
                        Command::UpsertMember {
                            member: us,
                            expect_epoch: None,
                        },
                    ),
                ],
            ),
        );
        let agents: Vec<_> = (0..100)
            .map(|i| reg(&format!("a{i:03}"), "eu"))
            .chain([reg("x", "us")])
            .collect();
        s.apply(
            2,
            &batch(2, vec![prop("r", Command::RegisterAgents { agents })]),
        );
        let standbys = (0..99)
            .map(|i| (format!("a{i:03}"), Some("us".parse().expect("r"))))
            .collect();
        s.apply(
            3,
            &batch(3, vec![prop("p", Command::SetStandbys { standbys })]),
        );
        stage_all(&mut s, "eu", "us");
        s.apply(
            4,
            &batch(
                4,
                vec![prop(
                    "t1",
                    Command::RegionTransition {
                        region: "eu".parse().expect("r"),
                        from: RegionState::Healthy,
                        to: RegionState::Suspect,
                        observations: vec![],
                    },
                )],
            ),
        );
        let before = s.epoch();
        s.apply(
            5,
            &batch(
                5,
                vec![prop(
                    "t2",
                    Command::RegionTransition {
                        region: "eu".parse().expect("r"),
                        from: RegionState::Suspect,
                        to: RegionState::Unreachable,
                        observations: vec![],
                    },
                )],
            ),
        );
        let epoch = s.epoch();
        assert_eq!(epoch, before + 1);
        let redirected = s
            .agents()
            .values()
            .filter(
                |e| matches!(&e.placement, Placement::Redirected { epoch: e2, .. } if *e2 == epoch),
            )
            .count();
        assert_eq!(
            redirected, 99,
            "every agent with a standby is redirected at the decision's epoch"
        );
        assert_eq!(s.agents()["a099"].placement, Placement::Stranded { epoch });
        assert_eq!(
            s.agents()["x"].placement,
            Placement::Home,
            "another region's agent stays home"
        );
        s.apply(
            6,
            &batch(
                6,
                vec![prop(
                    "p2",
                    Command::SetStandbys {
                        standbys: vec![("a000".into(), Some("ap".parse().expect("r")))],
                    },
                )],
            ),
        );
        assert_eq!(
            s.agents()["a000"].standby,
            Some("us".parse().expect("r")),
            "a failed-over agent's standby is fixed"
        );
        assert!(s
            .audit()
            .back()
            .map(|a| a.details.to_string().len() < 200)
            .unwrap_or(false));
    }

    // Property: a region's trust bundle is committed once per content (an
    // unchanged bundle changes nothing), survives the row round trip, and a
    // bundle without a certificate is refused.
    #[test]
    fn trust_bundles_are_committed_by_content() {
        let mut s = ReplicatedState::default();
        let pem = "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n".to_string();
        let sha = "ab".repeat(32);
        let set = |id: &str, pem: &str| {
            prop(
                id,
                Command::SetTrustBundle {
                    region: "eu".parse().expect("r"),
                    pem: pem.into(),
                    sha256: sha.clone(),
                },
            )
        };
        s.apply(1, &batch(1, vec![set("a", &pem)]));
        assert_eq!(
            s.trust_bundles()[&"eu".parse::<RegionName>().expect("r")].at,
            Millis(1)
        );
        s.take_dirty();
        s.apply(2, &batch(2, vec![set("b", &pem)]));
        assert!(
            !s.take_dirty()
                .iter()
                .any(|k| matches!(k, RowKey::TrustBundle(_))),
            "unchanged bundle rewritten"
        );
        let r = s.apply(3, &batch(3, vec![set("c", "not a certificate")]));
        assert!(matches!(
            r.outcomes[0],
            Outcome::Rejected {
                reason: Rejection::Invalid { .. }
            }
        ));
        s.take_dirty();
        let rows = s
            .all_rows()
            .into_iter()
            .map(|(k, v)| (k.table().to_string(), k.key(), v));
        assert_eq!(ReplicatedState::from_rows(rows).expect("load"), s);
    }

    // Property: request ids are forgotten after REQUEST_KEEP_MS of leader time.
    #[test]
    fn request_ids_expire_by_leader_time() {
        let mut s = ReplicatedState::default();
        let p = prop(
            "n",
            Command::PutNote {
                key: "k".into(),
                value: "v".into(),
            },
        );
        s.apply(1, &batch(0, vec![p.clone()]));
        let id: RequestId = "n".parse().expect("id");
        assert!(s.request(&id).is_some());
        s.apply(2, &batch(REQUEST_KEEP_MS + 1, vec![]));
        assert!(s.request(&id).is_none());
        assert!(s.take_dirty().contains(&RowKey::Request(id)));
    }

    fn arb_command() -> impl Strategy<Value = Command> {
        prop_oneof![
            (1u64..5, 0usize..4, 0u8..6, proptest::option::of(0u64..6)).prop_map(
                |(id, r, tp, e)| {
                    Command::UpsertMember {
                        member: member(id, ["eu", "us", "ap", "sa"][r], tp),
                        expect_epoch: e,
                    }
                }
            ),
            (1u64..5, proptest::option::of(0u64..6)).prop_map(|(node_id, expect_epoch)| {
                Command::RemoveMember {
                    node_id,
                    expect_epoch,
                }
            }),
            ("[a-c]{1,2}", "[x-z]{0,3}").prop_map(|(key, value)| Command::PutNote { key, value }),
        ]
    }

    proptest! {
        // Property: over any sequence of commands (with retries), the epoch
        // never decreases, and rebuilding the state from its persisted rows
        // (applied incrementally through take_dirty/row_value) or from a
        // snapshot gives exactly the live state.
        #[test]
        fn epoch_monotonic_and_persistence_faithful(
            cmds in proptest::collection::vec((arb_command(), 0u8..20, 0u64..REQUEST_KEEP_MS / 2), 1..60)
        ) {
            let mut s = ReplicatedState::default();
            let mut rows: BTreeMap<(String, String), String> = BTreeMap::new();
            let mut at = 0u64;
            let mut last_epoch = 0;
            for (i, (cmd, rid, dt)) in cmds.into_iter().enumerate() {
                at += dt;
                let p = prop(&format!("r{rid}"), cmd);
                s.apply(i as u64 + 1, &batch(at, vec![p]));
                prop_assert!(s.epoch() >= last_epoch);
                last_epoch = s.epoch();
                for k in s.take_dirty() {
                    match s.row_value(&k) {
                        Some(v) => { rows.insert((k.table().into(), k.key()), v); }
                        None => { rows.remove(&(k.table().into(), k.key())); }
                    }
                }
            }
            let loaded = ReplicatedState::from_rows(rows.into_iter().map(|((t, k), v)| (t, k, v)))
                .expect("rows load");
            prop_assert_eq!(&loaded, &s);
            let snap = ReplicatedState::from_snapshot(&s.to_snapshot()).expect("snapshot loads");
            prop_assert_eq!(&snap, &s);
        }
    }
}
