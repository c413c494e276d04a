//! Tern's wire contract: the `tern.v1` protobuf package (Raft transport,
//! admin API, agent API) and its generated tonic code.
//!
//! Domain code never touches these generated types outside the gRPC
//! handlers and the CLI; conversions live beside the handlers.

/// Generated code of the `tern.v1` package.
pub mod v1 {
    #![allow(clippy::all, missing_docs)]
    tonic::include_proto!("tern.v1");
}
