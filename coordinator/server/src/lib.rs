//! The Tern coordinator: openraft glue (SQLite store, gRPC network), the
//! mTLS transport with thumbprint pinning, the admin and agent gRPC
//! services, HTTP health and metrics, configuration, and the `tern` binary's
//! subcommands (server, admin CLI, PKI, demo).
//!
//! Decisions are not made here: they live in `tern-core`. This crate feeds
//! the core and executes what it says.

pub mod admin;
pub mod agents;
pub mod cli;
pub mod config;
pub mod error;
pub mod federation;
pub mod grpc;
pub mod health;
pub mod http;
pub mod local_cluster;
pub mod metrics;
pub mod node;
pub mod ops;
pub mod proposer;
pub mod raft;
pub mod rotation;
pub mod standin;
pub mod status_page;
pub mod store;
pub mod telemetry;
pub mod tls;
