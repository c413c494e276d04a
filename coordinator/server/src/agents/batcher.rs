//! Groups many small submissions (registrations, reports) into one
//! proposal: the first item opens a short window, everything queued by then
//! (up to `MAX_BATCH`) goes into one command, and every submitter learns
//! the outcome of that one commit. Heartbeats never come here: only what
//! must be replicated does.

use std::future::Future;
use std::sync::Mutex;
use std::time::Duration;

use tern_core::Outcome;
use tokio::sync::{mpsc, oneshot};

use super::MAX_BATCH;
use crate::error::ApiError;
use crate::ops::OpReply;

/// How long the first item of a batch waits for company.
const WINDOW: Duration = Duration::from_millis(20);

type Waiter<T> = (T, oneshot::Sender<Result<(u64, u64), ApiError>>);

/// A queue whose items are proposed in batches.
pub(crate) struct Batcher<T> {
    tx: mpsc::UnboundedSender<Waiter<T>>,
    rx: Mutex<Option<mpsc::UnboundedReceiver<Waiter<T>>>>,
}

impl<T: Send + 'static> Batcher<T> {
    pub(crate) fn new() -> Self {
        let (tx, rx) = mpsc::unbounded_channel();
        Batcher {
            tx,
            rx: Mutex::new(Some(rx)),
        }
    }

    /// Starts the task that proposes batches with `propose`.
    pub(crate) fn start<F, Fut>(&self, propose: F)
    where
        F: Fn(Vec<T>) -> Fut + Send + 'static,
        Fut: Future<Output = Result<OpReply, ApiError>> + Send,
    {
        let Some(mut rx) = self.rx.lock().unwrap_or_else(|p| p.into_inner()).take() else {
            return;
        };
        tokio::spawn(async move {
            while let Some(first) = rx.recv().await {
                let mut batch = vec![first];
                let deadline = tokio::time::Instant::now() + WINDOW;
                while batch.len() < MAX_BATCH {
                    match tokio::time::timeout_at(deadline, rx.recv()).await {
                        Ok(Some(item)) => batch.push(item),
                        _ => break,
                    }
                }
                let (items, waiters): (Vec<T>, Vec<_>) = batch.into_iter().unzip();
                let result = match propose(items).await {
                    Ok(reply) => match reply.outcomes.first() {
                        Some(
                            Outcome::Applied { epoch, log_index }
                            | Outcome::Duplicate { epoch, log_index },
                        ) => Ok((*epoch, *log_index)),
                        Some(Outcome::Rejected { reason }) => {
                            Err(ApiError::Invalid(reason.to_string()))
                        }
                        None => Err(ApiError::Internal("no outcome".into())),
                    },
                    Err(e) => Err(e),
                };
                for w in waiters {
                    let _ = w.send(result.clone());
                }
            }
        });
    }

    /// Queues `item`; resolves with the epoch and log index after its batch
    /// committed.
    pub(crate) async fn submit(&self, item: T) -> Result<(u64, u64), ApiError> {
        let (tx, rx) = oneshot::channel();
        self.tx
            .send((item, tx))
            .map_err(|_| ApiError::Internal("the batcher stopped".into()))?;
        rx.await
            .map_err(|_| ApiError::Internal("the batcher stopped".into()))?
    }
}
