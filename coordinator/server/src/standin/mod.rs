//! The reference region stand-in (`tern stand-in serve`): a small HTTPS
//! server standing in for one region's Ampora control plane, so that the
//! demo and the tests run without Ampora. It serves Ampora's documented
//! region endpoints (`/health/live`, `/health/ready`,
//! `/pki/trust-bundle.pem`, `/api/federation/ping`) as Tern understands
//! them, holds the region's agent CA, and has a loopback-only control API
//! (`/_standin/...`) through which a test makes the region misbehave on
//! purpose: `down`, `unavailable`, `slow`. See
//! `docs/integration-contract.md` for which parts are Ampora's and which
//! are Tern's assumptions or contract.
//!
//! In-process use: build a [`StandInConfig`], [`bind`] (or bind port 0
//! yourself), [`start`] → [`StandInHandle`] (`https_addr`, `control_addr`,
//! `set_mode`, `status`, `set_federation_peers`, `agent_ca`, `shutdown`);
//! or [`run`] with a shutdown future. Other processes use
//! [`ControlClient`].
//!
//! It is a test double, not a product: it must not be deployed as a
//! region's control plane, it reuses the development PKI (`tls::DevCa`)
//! rather than having its own, and it never logs a key or a secret.

mod agent_ca;
mod client;
mod config;
mod control;
mod error;
mod handle;
mod handover;
mod listener;
mod mode;
mod ping;
mod pins;
mod region;
mod secret;
mod state;
mod stats;
mod tls;

pub use client::{ControlClient, ControlError};
pub use config::{
    validate_peers, AgentCaFiles, FederationPeer, StandInConfig, StandInConfigError, StandInFile,
    StandInOverrides,
};
pub use control::HANDOVER_PATH;
pub use control::{MODE_PATH, STATS_PATH};
pub use error::StandInError;
pub use handle::{bind, run, start, StandInHandle, StandInReady};
pub use handover::{AttachResponse, Attachment, HandoverStatus, MovedMark, Via};
pub use mode::{Mode, ModeName, ModeReport, ModeRequest, MAX_DELAY_MS};
pub use ping::{evaluate as evaluate_ping, Factor, PingEvaluation, PingResponse, SECRET_HEADER};
pub use region::{FEDERATION_PING, LIVE, READY, TRUST_BUNDLE};
pub use secret::{generate_secret, SecretHash, SecretHashError, SECRET_LEN};
pub use stats::{ConnectionStats, StandInStatus, StatsReport};
