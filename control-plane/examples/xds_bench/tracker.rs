//! What the driver knows of every sidecar: when it synced, which EDS
//! versions it ACKed and when, whether it failed.

use tokio::time::Instant;

use crate::client::Event;
use crate::stats::ms;

/// Per-sidecar progress, fed by [`Event`]s.
#[derive(Debug)]
pub struct Tracker {
    synced_at: Vec<Option<Instant>>,
    failed: Vec<Option<String>>,
    /// Highest state version of an EDS response each sidecar ACKed.
    eds_max: Vec<u64>,
    /// EDS ACKs (version, when) since the current change started.
    window: Vec<Vec<(u64, Instant)>>,
    /// Sidecars the current change should reach (all, unless scoped).
    expected: Vec<bool>,
    /// Responses ACKed per type since [`Tracker::reset_counts`].
    counts: [u64; 4],
    /// Resources and bytes of sidecar 0's last response of each type.
    sizes: [(usize, usize); 4],
    /// Which types each sidecar has ACKed at least once.
    acked_once: Vec<[bool; 4]>,
    /// Streams reopened after a failure, and the first failure's message.
    pub reconnects: usize,
    pub reconnect_error: Option<String>,
}

/// Full-push outcome: per-sidecar time from start to synced.
#[derive(Clone, Debug, Default)]
pub struct SyncTimes {
    pub synced_ms: Vec<f64>,
    pub failed: usize,
    /// When the phase ended (all synced, timeout or abort).
    pub elapsed_ms: f64,
    /// Sidecars that had ACKed CDS, EDS, LDS, RDS at least once by then.
    pub acked_once: [usize; 4],
}

impl Tracker {
    pub fn new(clients: usize) -> Self {
        Self {
            synced_at: vec![None; clients],
            failed: vec![None; clients],
            eds_max: vec![0; clients],
            window: vec![Vec::new(); clients],
            expected: vec![true; clients],
            counts: [0; 4],
            sizes: [(0, 0); 4],
            acked_once: vec![[false; 4]; clients],
            reconnects: 0,
            reconnect_error: None,
        }
    }

    pub fn on(&mut self, event: Event) {
        match event {
            Event::Acked {
                client,
                kind,
                version,
                resources,
                bytes,
                at,
            } => {
                self.counts[kind] += 1;
                self.acked_once[client][kind] = true;
                if client == 0 {
                    self.sizes[kind] = (resources, bytes);
                }
                if kind == 1 {
                    self.eds_max[client] = self.eds_max[client].max(version);
                    self.window[client].push((version, at));
                }
            }
            // A sidecar that reconnected syncs again: its first sync counts.
            Event::Synced { client, at } => {
                self.synced_at[client].get_or_insert(at);
            }
            Event::Reconnecting { error, .. } => {
                self.reconnects += 1;
                self.reconnect_error.get_or_insert(error);
            }
            Event::Failed { client, error } => self.failed[client] = Some(error),
        }
    }

    fn alive(&self) -> impl Iterator<Item = usize> + '_ {
        (0..self.failed.len()).filter(|c| self.failed[*c].is_none())
    }

    /// Every sidecar has synced or failed.
    pub fn all_synced(&self) -> bool {
        self.alive().all(|c| self.synced_at[c].is_some())
    }

    pub fn sync_times(&self, started: Instant) -> SyncTimes {
        SyncTimes {
            synced_ms: self
                .synced_at
                .iter()
                .flatten()
                .map(|at| ms(at.duration_since(started)))
                .collect(),
            failed: self.failed.iter().flatten().count(),
            elapsed_ms: ms(started.elapsed()),
            acked_once: self.acked_once(),
        }
    }

    /// How many sidecars have ACKed each type at least once.
    pub fn acked_once(&self) -> [usize; 4] {
        let mut n = [0; 4];
        for acked in &self.acked_once {
            for (count, done) in n.iter_mut().zip(acked) {
                *count += usize::from(*done);
            }
        }
        n
    }

    pub fn reset_counts(&mut self) {
        self.counts = [0; 4];
    }

    pub fn counts(&self) -> [u64; 4] {
        self.counts
    }

    pub fn sizes(&self) -> [(usize, usize); 4] {
        self.sizes
    }

    /// Starts a change that should reach the sidecars `expected` says.
    pub fn begin_change(&mut self, expected: impl Fn(usize) -> bool) {
        self.window.iter_mut().for_each(Vec::clear);
        for (c, e) in self.expected.iter_mut().enumerate() {
            *e = expected(c);
        }
    }

    /// How many sidecars the current change should reach.
    pub fn expected(&self) -> usize {
        self.expected.iter().filter(|e| **e).count()
    }

    /// EDS responses ACKed since the change began by sidecars it should not reach.
    pub fn unexpected_eds(&self) -> usize {
        self.window
            .iter()
            .zip(&self.expected)
            .filter(|(_, e)| !**e)
            .map(|(acks, _)| acks.len())
            .sum()
    }

    /// Every live sidecar the change should reach has ACKed EDS generated
    /// from `version` or later.
    pub fn all_reached(&self, version: u64) -> bool {
        self.alive()
            .filter(|c| self.expected[*c])
            .all(|c| self.eds_max[c] >= version)
    }

    /// Per sidecar that got there: time from `started` to its first EDS ACK
    /// at `version` or later; and how many got there.
    pub fn change_latencies(&self, version: u64, started: Instant) -> (Vec<f64>, usize) {
        let times: Vec<f64> = self
            .window
            .iter()
            .zip(&self.expected)
            .filter(|(_, e)| **e)
            .filter_map(|(acks, _)| acks.iter().find(|(v, _)| *v >= version))
            .map(|(_, at)| ms(at.duration_since(started)))
            .collect();
        let n = times.len();
        (times, n)
    }

    /// Distinct failure messages with their counts.
    pub fn failures(&self) -> Vec<String> {
        let mut by_message = std::collections::BTreeMap::<&str, usize>::new();
        for e in self.failed.iter().flatten() {
            *by_message.entry(e).or_default() += 1;
        }
        by_message
            .into_iter()
            .map(|(e, n)| format!("{n} × {e}"))
            .collect()
    }
}
