//! A coordinator in Tern's member table: which region it serves, where it
//! listens, and which transport thumbprints its peers pin.
//!
//! Whether a member votes is Raft's business (openraft's membership); this
//! table holds what Raft does not: region, role and pins.

use std::collections::BTreeSet;

use serde::{Deserialize, Serialize};

use crate::ids::{NodeId, RegionName, Thumbprint};

/// What a coordinator stands for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MemberRole {
    /// The coordinator of a region with its own Ampora control plane.
    Region,
    /// A coordinator with no region of its own: a vote in a third failure
    /// domain, for federations of two regions.
    Witness,
}

impl MemberRole {
    pub fn as_str(&self) -> &'static str {
        match self {
            MemberRole::Region => "region",
            MemberRole::Witness => "witness",
        }
    }
}

impl std::str::FromStr for MemberRole {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "region" => Ok(MemberRole::Region),
            "witness" => Ok(MemberRole::Witness),
            other => Err(format!(
                "role must be \"region\" or \"witness\", not {other:?}"
            )),
        }
    }
}

/// One coordinator as the replicated member table knows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Member {
    pub node_id: NodeId,
    /// The region this coordinator serves (for a witness: its own name).
    pub region: RegionName,
    pub role: MemberRole,
    /// host:port of its gRPC listener, as other coordinators dial it.
    pub address: String,
    /// SHA-256 thumbprints of transport certificates its peers accept from
    /// it. More than one only while a rotation is in progress.
    pub thumbprints: BTreeSet<Thumbprint>,
    /// Base URL of the region's control plane (`https://host:port`), which
    /// every coordinator probes. None for a witness.
    #[serde(default)]
    pub control_plane: Option<String>,
}
