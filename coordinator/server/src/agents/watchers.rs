//! Who to wake when an entry is applied: each open directive stream waits
//! on its own agent's counter and on one shared counter. An applied entry
//! that changed only some agents' rows (the common case: a batch of
//! reports) wakes only those agents' streams; one that changed anything a
//! directive is built from beyond the agent row (region information,
//! members, staged authorizations, trust bundles, region states), or a
//! snapshot install, wakes every stream. Without it, every stream would
//! wake on every entry: streams × entries wake-ups for a large fleet.
//!
//! It decides nothing about directives (the stream recomputes its own and
//! sends it only when it changed); a spurious wake is harmless, a missed
//! one is not, so anything unknown wakes everyone.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use tokio::sync::{broadcast, watch};

use crate::store::Changes;

/// The wake-up counters of open directive streams.
#[derive(Debug)]
pub struct Watchers {
    everyone: watch::Sender<u64>,
    agents: Mutex<HashMap<String, watch::Sender<u64>>>,
}

impl Default for Watchers {
    fn default() -> Self {
        Watchers {
            everyone: watch::channel(0).0,
            agents: Mutex::default(),
        }
    }
}

/// What a stream waits on: its agent's counter and the shared one.
pub struct Subscription {
    pub agent: watch::Receiver<u64>,
    pub everyone: watch::Receiver<u64>,
}

impl Subscription {
    /// Resolves when this agent (or everyone) was woken; `false` once the
    /// watchers are gone.
    pub async fn changed(&mut self) -> bool {
        tokio::select! {
            r = self.agent.changed() => r.is_ok(),
            r = self.everyone.changed() => r.is_ok(),
        }
    }
}

impl Watchers {
    /// A stream of `agent` starts waiting.
    pub fn subscribe(&self, agent: &str) -> Subscription {
        let mut map = self.agents.lock().unwrap_or_else(|p| p.into_inner());
        let tx = map
            .entry(agent.to_string())
            .or_insert_with(|| watch::channel(0).0);
        Subscription {
            agent: tx.subscribe(),
            everyone: self.everyone.subscribe(),
        }
    }

    /// A stream of `agent` ended (its subscription dropped): forget the
    /// counter once no stream of that agent is left.
    pub fn release(&self, agent: &str) {
        let mut map = self.agents.lock().unwrap_or_else(|p| p.into_inner());
        if map.get(agent).is_some_and(|tx| tx.receiver_count() == 0) {
            map.remove(agent);
        }
    }

    /// Wakes the streams `changes` concerns.
    pub fn dispatch(&self, changes: &Changes) {
        if changes.everything {
            self.wake_all();
            return;
        }
        let map = self.agents.lock().unwrap_or_else(|p| p.into_inner());
        for agent in &changes.agents {
            if let Some(tx) = map.get(agent) {
                tx.send_modify(|n| *n = n.wrapping_add(1));
            }
        }
    }

    /// Wakes every stream.
    pub fn wake_all(&self) {
        self.everyone.send_modify(|n| *n = n.wrapping_add(1));
    }

    /// Streams that would wake for one agent's change (for tests and
    /// metrics): the number of open subscriptions of `agent`.
    pub fn streams_of(&self, agent: &str) -> usize {
        let map = self.agents.lock().unwrap_or_else(|p| p.into_inner());
        map.get(agent).map(|tx| tx.receiver_count()).unwrap_or(0)
    }
}

/// Forwards the store's change notices to the watchers until the store is
/// gone. Falling behind (a lagged receiver) wakes everyone.
pub fn spawn(watchers: Arc<Watchers>, mut changes: broadcast::Receiver<Arc<Changes>>) {
    tokio::spawn(async move {
        loop {
            match changes.recv().await {
                Ok(c) => watchers.dispatch(&c),
                Err(broadcast::error::RecvError::Lagged(_)) => watchers.wake_all(),
                Err(broadcast::error::RecvError::Closed) => break,
            }
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    fn changes(agents: &[&str], everything: bool) -> Changes {
        Changes {
            agents: agents.iter().map(|a| a.to_string()).collect(),
            everything,
        }
    }

    /// An entry that changed one agent's row wakes that agent's streams
    /// and no other; an entry that changed anything shared wakes all.
    #[tokio::test]
    async fn only_the_changed_agents_wake() {
        let w = Watchers::default();
        let mut subs: Vec<(String, Subscription)> = (0..1000)
            .map(|i| {
                let id = format!("a{i}");
                let s = w.subscribe(&id);
                (id, s)
            })
            .collect();
        w.dispatch(&changes(&["a7", "unknown"], false));
        let woken: Vec<&str> = subs
            .iter_mut()
            .filter(|(_, s)| {
                s.agent.has_changed().unwrap_or(false) || s.everyone.has_changed().unwrap_or(false)
            })
            .map(|(id, _)| id.as_str())
            .collect();
        assert_eq!(woken, vec!["a7"], "one report wakes one stream of 1,000");
        assert!(subs[7].1.changed().await);
        w.dispatch(&changes(&[], true));
        let woken = subs
            .iter()
            .filter(|(_, s)| s.everyone.has_changed().unwrap_or(false))
            .count();
        assert_eq!(woken, 1000, "a shared change wakes every stream");
    }

    /// A counter is forgotten when the last stream of its agent ends, and
    /// kept while another stream of it is open.
    #[test]
    fn released_agents_are_forgotten() {
        let w = Watchers::default();
        let a = w.subscribe("a");
        let b = w.subscribe("a");
        assert_eq!(w.streams_of("a"), 2);
        drop(a);
        w.release("a");
        assert_eq!(w.streams_of("a"), 1);
        drop(b);
        w.release("a");
        assert_eq!(w.streams_of("a"), 0);
        assert!(w.agents.lock().expect("lock").is_empty());
    }
}
