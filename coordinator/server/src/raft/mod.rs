//! The Raft layer: openraft's type configuration and the gRPC network
//! between coordinators. The service receiving Raft RPCs lives in
//! `crate::grpc`. It owns nothing of Tern's decisions: those live in
//! `tern-core`.

pub mod network;
pub mod types;

pub use types::*;
