//! `tern-tests`: the harness for Tern's multi-process tests. The tests
//! themselves live in `tests/tests/*.rs`, one property per test, each opening
//! with a comment stating the property it proves.
//!
//! This crate owns the tern-agnostic plumbing those tests share:
//! - [`Seed`]: the test's only randomness, printed with the command that
//!   reproduces the run (`TERN_TEST_SEED=<n> cargo test ...`);
//! - [`binary`]: locating the built `tern` / `tern-shim` executables;
//! - [`Process`] / [`ProcessSpec`]: children in their own process group,
//!   output in a log file, SIGKILL / SIGSTOP / SIGCONT / SIGTERM, restart,
//!   killed on drop (and by a watchdog if the test process dies);
//! - [`ReadyFile`]: waiting for the JSON file a process writes once it has
//!   bound port 0 and serves;
//! - [`wait_until`] / [`wait_until_async`]: bounded waits that say what they
//!   waited for and what they last saw;
//! - [`Relay`]: a per-link TCP relay that can cut (blackhole or reset),
//!   blackhole one direction, delay, or reset a link; TLS passes untouched;
//! - [`Harness`]: temp dir, address block, and the failure report (seed,
//!   reproduce command, kept dir, tail of every node's log);
//! - [`LoopbackAllocator`] / [`free_port`]: addresses in `127.0.0.0/8`.
//!
//! What it must not do, and what tests built on it must not do either: no
//! fixed ports (bind port 0 and read the ready file), no sleeps to "let
//! things settle" (wait for a condition with a deadline), no unseeded
//! randomness (draw from the seed), no addresses outside `127.0.0.0/8`. It
//! knows nothing of Tern's protocols or config: tests and their helpers do.
//!
//! # Shape of a test
//!
//! Three nodes, a relay on every directed link. The relays are bound before
//! any node starts, so each node can be told its peers' relay addresses; each
//! relay gets its target once the far node's ready file says where it
//! listens. (The `tern serve` flags here are illustrative.)
//!
//! ```no_run
//! use std::collections::BTreeMap;
//! use std::net::SocketAddr;
//! use std::time::Duration;
//! use tern_tests::{binary, CutMode, Fault, Harness, ProcessSpec, Relay};
//!
//! #[derive(serde::Deserialize)]
//! struct Ready {
//!     grpc: SocketAddr,
//! }
//!
//! // Property: (stated here, one per test).
//! fn isolated_leader_is_replaced() {
//!     let h = Harness::new("isolated_leader_is_replaced"); // first: drops last
//!     let mut links: BTreeMap<(usize, usize), Relay> = BTreeMap::new();
//!     for from in 0..3 {
//!         for to in (0..3).filter(|&to| to != from) {
//!             links.insert((from, to), Relay::bind(h.next_ip()).unwrap());
//!         }
//!     }
//!     let mut nodes = Vec::new();
//!     for i in 0..3 {
//!         let ready = h.path(format!("node-{i}/ready.json"));
//!         let mut spec = ProcessSpec::new(format!("node-{i}"), binary("tern"))
//!             .arg("serve")
//!             .arg("--listen")
//!             .arg(format!("{}:0", h.next_ip()))
//!             .arg("--ready-file")
//!             .arg(&ready)
//!             .ready_file(&ready);
//!         for to in (0..3).filter(|&to| to != i) {
//!             spec = spec.arg("--peer").arg(format!("{to}={}", links[&(i, to)].addr()));
//!         }
//!         nodes.push(h.spawn(spec).unwrap());
//!     }
//!     for (to, node) in nodes.iter().enumerate() {
//!         let ready: Ready = node.wait_ready(Duration::from_secs(30)).unwrap();
//!         for from in (0..3).filter(|&from| from != to) {
//!             links[&(from, to)].set_target(ready.grpc);
//!         }
//!     }
//!     // Isolate node 0 (a partition: nothing closes, nothing arrives) ...
//!     for ((from, to), relay) in &links {
//!         if *from == 0 || *to == 0 {
//!             relay.set_fault(Fault::Cut(CutMode::Blackhole));
//!         }
//!     }
//!     // ... freeze node 1, kill node 2, then wait_until(...) for the outcome.
//!     nodes[1].stop().unwrap();
//!     nodes[2].kill();
//! }
//! ```

#![allow(clippy::unwrap_used)]

mod binary;
mod harness;
mod log_file;
mod loopback;
mod machine;
mod orphan;
mod process;
mod ready;
mod relay;
mod seed;
mod wait;

pub use binary::{binary, try_binary, BIN_DIR_ENV};
pub use harness::{Harness, FAILURE_TAIL_LINES, KEEP_DIRS_ENV};
pub use loopback::{free_port, LoopbackAllocator};
pub use machine::machine;
pub use process::{describe as describe_exit, Process, ProcessSpec};
pub use ready::ReadyFile;
pub use relay::{CutMode, Direction, Fault, Relay, RelayStats};
pub use seed::{Seed, SEED_ENV};
pub use wait::{wait_until, wait_until_async, Check, IntoCheck};

/// Re-exported so tests can name signals and pids without their own `nix`.
pub use nix::sys::signal::Signal;
/// Re-exported: the pid type [`Process::pid`] returns.
pub use nix::unistd::Pid;
