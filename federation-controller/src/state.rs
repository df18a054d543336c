//! What this controller knows about each peer: the last catalog it received,
//! whether its stream and gateways are alive, and what went wrong last.
//! Peer tasks write here; the importer and `/status` read. Every change
//! bumps a watch so the importer recomputes.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, SystemTime};

use isthmus_proto::federation as proto;
use serde::Serialize;
use tokio::sync::watch;
use tokio::time::Instant;

/// Connection state of a peer's catalog stream.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum Connection {
    /// No stream yet (first attempt in progress).
    Connecting,
    /// A stream is open and heartbeats arrive.
    Connected,
    /// The last attempt or stream failed; retrying with backoff.
    Down,
}

/// One probed gateway address of a peer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Gateway {
    /// As configured: `host:port`, host an IP or a DNS name.
    pub address: String,
    /// What the address resolved to at the last probe (kept when resolution fails).
    pub resolved: Vec<SocketAddr>,
    pub consecutive_failures: u32,
    /// False after `failure_threshold` failed probes in a row, true after one success.
    pub healthy: bool,
    pub last_latency: Option<Duration>,
    pub last_error: Option<String>,
}

impl Gateway {
    pub fn new(address: &str) -> Self {
        let resolved = address.parse().into_iter().collect();
        Self {
            address: address.to_owned(),
            resolved,
            consecutive_failures: 0,
            healthy: true,
            last_latency: None,
            last_error: None,
        }
    }
}

/// Everything known about one peer.
#[derive(Clone, Debug)]
pub struct Peer {
    pub name: String,
    pub connection: Connection,
    /// The last catalog received (kept across a dead stream until the staleness bound).
    pub catalog: Option<Arc<proto::Catalog>>,
    /// When anything (catalog or heartbeat) last arrived on a stream.
    pub last_contact: Option<Instant>,
    /// When the stream was last seen alive, or when the peer was added: the staleness
    /// bound counts from here.
    pub last_alive: Instant,
    pub last_sync: Option<SystemTime>,
    pub gateways: Vec<Gateway>,
    pub last_error: Option<String>,
    /// Services imported from this peer (written by the importer).
    pub imported: usize,
}

impl Peer {
    fn new(name: &str, gateways: &[String]) -> Self {
        Self {
            name: name.to_owned(),
            connection: Connection::Connecting,
            catalog: None,
            last_contact: None,
            last_alive: Instant::now(),
            last_sync: None,
            gateways: gateways.iter().map(|g| Gateway::new(g)).collect(),
            last_error: None,
            imported: 0,
        }
    }

    /// Whether traffic may be sent to this peer: its stream is up (or has not been tried
    /// yet) and at least one gateway answers probes.
    pub fn healthy(&self) -> bool {
        self.connection != Connection::Down
            && (self.gateways.is_empty() || self.gateways.iter().any(|g| g.healthy))
    }

    /// Lowest latency of the healthy gateways' last probes.
    pub fn probe_latency(&self) -> Option<Duration> {
        self.gateways
            .iter()
            .filter(|g| g.healthy)
            .filter_map(|g| g.last_latency)
            .min()
    }

    /// What went wrong last: the stream's error, else a dead gateway's.
    pub fn error(&self) -> Option<String> {
        self.last_error.clone().or_else(|| {
            self.gateways
                .iter()
                .filter(|g| !g.healthy)
                .find_map(|g| g.last_error.clone())
                .map(|e| format!("gateway probe: {e}"))
        })
    }

    /// Services in the peer's last catalog.
    pub fn exported(&self) -> Option<usize> {
        self.catalog.as_ref().map(|c| c.services.len())
    }
}

/// Shared, versioned peer state.
#[derive(Debug, Clone)]
pub struct State {
    peers: Arc<Mutex<BTreeMap<String, Peer>>>,
    changed: watch::Sender<u64>,
}

impl Default for State {
    fn default() -> Self {
        Self {
            peers: Arc::default(),
            changed: watch::channel(0).0,
        }
    }
}

impl State {
    /// Wakes when any peer changes.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.changed.subscribe()
    }

    /// A copy of every peer, by name.
    pub fn peers(&self) -> BTreeMap<String, Peer> {
        self.lock().clone()
    }

    /// One peer.
    pub fn peer(&self, name: &str) -> Option<Peer> {
        self.lock().get(name).cloned()
    }

    /// Adds a peer (or resets its gateways when they changed).
    pub fn ensure(&self, name: &str, gateways: &[String]) {
        self.modify(|peers| {
            let peer = peers
                .entry(name.to_owned())
                .or_insert_with(|| Peer::new(name, gateways));
            let same = peer.gateways.iter().map(|g| &g.address).eq(gateways.iter());
            if !same {
                peer.gateways = gateways.iter().map(|g| Gateway::new(g)).collect();
            }
        });
    }

    /// Removes a peer that was unlinked.
    pub fn remove(&self, name: &str) {
        self.modify(|peers| {
            peers.remove(name);
        });
    }

    /// Applies `f` to a peer, if it exists, and wakes subscribers.
    pub fn update(&self, name: &str, f: impl FnOnce(&mut Peer)) {
        self.modify(|peers| {
            if let Some(p) = peers.get_mut(name) {
                f(p);
            }
        });
    }

    /// Records the number of services imported per peer; wakes subscribers only when a
    /// count changed (the importer, itself a subscriber, then finds nothing to do).
    pub fn set_imported(&self, counts: &BTreeMap<String, usize>) {
        let changed = {
            let mut peers = self.lock();
            let mut changed = false;
            for (name, peer) in peers.iter_mut() {
                let n = counts.get(name).copied().unwrap_or(0);
                changed |= peer.imported != n;
                peer.imported = n;
            }
            changed
        };
        if changed {
            self.changed.send_modify(|v| *v += 1);
        }
    }

    fn modify(&self, f: impl FnOnce(&mut BTreeMap<String, Peer>)) {
        f(&mut self.lock());
        self.changed.send_modify(|v| *v += 1);
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, Peer>> {
        self.peers.lock().unwrap_or_else(PoisonError::into_inner)
    }
}
