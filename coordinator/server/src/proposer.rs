//! The proposer: turns many concurrent client proposals into few Raft
//! entries. Each entry carries a batch stamped with the leader's clock; at
//! most a few entries are in flight at once, so that while they commit the
//! next batch fills up and many small commands share one fsync.
//!
//! It runs on every coordinator but only succeeds on the leader; elsewhere
//! openraft answers "forward to leader" and the caller forwards.

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use openraft::error::{ClientWriteError, RaftError};
use tern_core::{Batch, Millis, Outcome, Proposal};
use tokio::sync::{mpsc, oneshot, Semaphore};

use crate::error::ApiError;
use crate::raft::Raft;

/// Batches committed at once (each one is one Raft entry).
const IN_FLIGHT: usize = 4;

/// What a committed proposal list produced.
#[derive(Debug, Clone)]
pub struct Committed {
    pub log_index: u64,
    pub outcomes: Vec<Outcome>,
}

struct Pending {
    proposals: Vec<Proposal>,
    reply: oneshot::Sender<Result<Committed, ApiError>>,
}

/// Handle to the batching task.
#[derive(Clone)]
pub struct Proposer {
    tx: mpsc::Sender<Pending>,
}

/// Current wall-clock time in Unix milliseconds (the leader's stamp).
pub fn now_ms() -> Millis {
    Millis(
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or(0),
    )
}

impl Proposer {
    /// Starts the batching task. `max_batch` bounds the proposals per entry;
    /// `timeout` bounds the wait for commit.
    pub fn start(raft: Raft, max_batch: usize, timeout: Duration) -> Proposer {
        let (tx, rx) = mpsc::channel::<Pending>(65_536);
        tokio::spawn(run(raft, rx, max_batch, timeout));
        Proposer { tx }
    }

    /// Proposes `proposals` in one Raft entry (all or nothing), waits for
    /// commit and apply, and returns their outcomes in order.
    pub async fn propose(&self, proposals: Vec<Proposal>) -> Result<Committed, ApiError> {
        let (reply, rx) = oneshot::channel();
        self.tx
            .send(Pending { proposals, reply })
            .await
            .map_err(|_| ApiError::Internal("proposer stopped".into()))?;
        rx.await
            .map_err(|_| ApiError::Internal("proposer dropped the request".into()))?
    }
}

async fn run(raft: Raft, mut rx: mpsc::Receiver<Pending>, max_batch: usize, timeout: Duration) {
    let permits = Arc::new(Semaphore::new(IN_FLIGHT));
    while let Some(first) = rx.recv().await {
        let Ok(permit) = permits.clone().acquire_owned().await else {
            return;
        };
        let mut group = vec![first];
        let mut count = group[0].proposals.len();
        while count < max_batch {
            match rx.try_recv() {
                Ok(p) => {
                    count += p.proposals.len();
                    group.push(p);
                }
                Err(_) => break,
            }
        }
        let raft = raft.clone();
        tokio::spawn(async move {
            commit_group(&raft, group, timeout).await;
            drop(permit);
        });
    }
}

async fn commit_group(raft: &Raft, group: Vec<Pending>, timeout: Duration) {
    let sizes: Vec<usize> = group.iter().map(|p| p.proposals.len()).collect();
    let mut replies = Vec::with_capacity(group.len());
    let mut proposals = Vec::new();
    for p in group {
        proposals.extend(p.proposals);
        replies.push(p.reply);
    }
    let batch = Batch {
        at: now_ms(),
        proposals,
    };
    let result = match tokio::time::timeout(timeout, raft.client_write(batch)).await {
        Err(_) => Err(ApiError::Timeout(timeout.as_millis() as u64)),
        Ok(Err(e)) => Err(map_write_error(e)),
        Ok(Ok(resp)) => Ok(resp),
    };
    match result {
        Err(e) => {
            for r in replies {
                let _ = r.send(Err(e.clone()));
            }
        }
        Ok(resp) => {
            let log_index = resp.log_id.index;
            let mut outcomes = resp.data.outcomes.into_iter();
            for (r, n) in replies.into_iter().zip(sizes) {
                let mine: Vec<Outcome> = outcomes.by_ref().take(n).collect();
                let _ = r.send(Ok(Committed {
                    log_index,
                    outcomes: mine,
                }));
            }
        }
    }
}

/// Maps openraft's write errors to API errors.
pub fn map_write_error(e: RaftError<u64, ClientWriteError<u64, openraft::BasicNode>>) -> ApiError {
    match e {
        RaftError::APIError(ClientWriteError::ForwardToLeader(f)) => {
            ApiError::NotLeader(f.leader_id.zip(f.leader_node.map(|n| n.addr)))
        }
        RaftError::APIError(ClientWriteError::ChangeMembershipError(c)) => {
            ApiError::Invalid(format!("membership change refused: {c}"))
        }
        RaftError::Fatal(f) => ApiError::Internal(format!("raft stopped: {f}")),
    }
}
