//! Pushes a stream has not seen fully ACKed yet, for the convergence
//! histogram (time from a config change until the proxy ACKed all of it).
//! Shared by both protocols: a state-of-the-world push waits for its type
//! URLs, an incremental one for its nonces.

use std::collections::{BTreeSet, VecDeque};
use tokio::time::Instant;

use prometheus_client::metrics::histogram::Histogram;

/// Pushes awaiting ACKs kept per stream (the oldest is dropped beyond it).
const MAX_PENDING_PUSHES: usize = 16;

#[derive(Debug, Default)]
pub(super) struct PendingPushes(VecDeque<PendingPush>);

#[derive(Debug)]
struct PendingPush {
    changed_at: Instant,
    /// Type URLs (state of the world) or nonces (incremental) not ACKed yet.
    awaiting: BTreeSet<String>,
}

impl PendingPushes {
    /// Records a push of the change made at `changed_at` (none: a push no
    /// change started, e.g. a first sync), converged once all of `awaiting`
    /// is ACKed.
    pub(super) fn record(&mut self, changed_at: Option<Instant>, awaiting: BTreeSet<String>) {
        let Some(changed_at) = changed_at else {
            return;
        };
        if self.0.len() == MAX_PENDING_PUSHES {
            self.0.pop_front();
        }
        self.0.push_back(PendingPush {
            changed_at,
            awaiting,
        });
    }

    /// `acked` were ACKed: pushes with nothing left to wait for are observed
    /// in `convergence` and forgotten.
    pub(super) fn acked<'a>(
        &mut self,
        acked: impl IntoIterator<Item = &'a str> + Clone,
        convergence: &Histogram,
    ) {
        self.0.retain_mut(|push| {
            for key in acked.clone() {
                push.awaiting.remove(key);
            }
            let done = push.awaiting.is_empty();
            if done {
                convergence.observe(push.changed_at.elapsed().as_secs_f64());
            }
            !done
        });
    }

    /// `key` was rejected (NACK): the pushes waiting for it will not converge.
    pub(super) fn rejected(&mut self, key: &str) {
        self.0.retain(|push| !push.awaiting.contains(key));
    }
}
