//! The MeshFederation status: what the live peer state ([`State`]) says,
//! shaped as `status` (per peer: connection, last sync, imported and
//! exported counts, probe latency, last error; `observedGeneration`; a
//! `Ready` condition), and [`Gate`], which lets a write through at most once a
//! second and only when something changed.
//!
//! Probe latencies move with every probe; a change of latency alone is
//! written only with the next real change, or after [`REFRESH`], so an idle
//! federation does not write its status every second.

use std::collections::BTreeMap;
use std::time::{Duration, SystemTime};

use isthmus_api::federation::{MeshFederationStatus, PeerConnection, PeerStatus};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use k8s_openapi::jiff::Timestamp;
use tokio::time::Instant;

use crate::mesh::Federation;
use crate::state::{self, Connection};

/// Shortest time between two status writes.
pub const MIN_INTERVAL: Duration = Duration::from_secs(1);
/// Longest time a changed probe latency waits for the next write.
pub const REFRESH: Duration = Duration::from_secs(60);
/// The one condition type.
pub const READY: &str = "Ready";

/// What went into a status besides the peers.
#[derive(Clone, Copy, Debug)]
pub struct Inputs<'a> {
    /// `metadata.generation` of the MeshFederation reconciled.
    pub generation: Option<i64>,
    /// The last reconcile's error, if it failed.
    pub error: Option<&'a str>,
    /// The status as written before (its condition keeps its transition time).
    pub previous: Option<&'a MeshFederationStatus>,
    pub now: SystemTime,
}

/// The status `federation` should have, given the live peer state.
pub fn desired(
    federation: Option<&Federation>,
    peers: &BTreeMap<String, state::Peer>,
    inputs: Inputs<'_>,
) -> MeshFederationStatus {
    let names = federation.into_iter().flat_map(|f| f.peers.keys());
    let peers: Vec<PeerStatus> = names
        .map(|name| match peers.get(name) {
            Some(p) => peer_status(p),
            None => PeerStatus {
                name: name.clone(),
                ..PeerStatus::default()
            },
        })
        .collect();
    let ready = ready(&peers, inputs);
    MeshFederationStatus {
        observed_generation: inputs.generation,
        peers,
        conditions: vec![ready],
    }
}

/// One peer's entry.
pub fn peer_status(p: &state::Peer) -> PeerStatus {
    PeerStatus {
        name: p.name.clone(),
        connection: match p.connection {
            Connection::Connecting => PeerConnection::Connecting,
            Connection::Connected => PeerConnection::Connected,
            Connection::Down => PeerConnection::Down,
        },
        last_sync: p.last_sync.and_then(time),
        imported_services: u32::try_from(p.imported).unwrap_or(u32::MAX),
        exported_services: p.exported().map(|n| u32::try_from(n).unwrap_or(u32::MAX)),
        // Tenths of a millisecond: what a reader can use, without float noise.
        probe_latency_ms: p
            .probe_latency()
            .map(|d| (d.as_secs_f64() * 10_000.0).round() / 10.0),
        last_error: p.error(),
    }
}

/// The `Ready` condition: true when the last reconcile succeeded and every peer is
/// connected (or there is none).
fn ready(peers: &[PeerStatus], inputs: Inputs<'_>) -> Condition {
    let not_connected: Vec<String> = peers
        .iter()
        .filter(|p| p.connection != PeerConnection::Connected)
        .map(|p| match &p.last_error {
            Some(e) => format!("{} is {:?}: {e}", p.name, p.connection),
            None => format!("{} is {:?}", p.name, p.connection),
        })
        .collect();
    let (status, reason, message) = if let Some(error) = inputs.error {
        ("False", "ReconcileError", error.to_owned())
    } else if peers.is_empty() {
        ("True", "NoPeers", "no peers linked yet".to_owned())
    } else if not_connected.is_empty() {
        (
            "True",
            "PeersConnected",
            format!("{} peer(s) connected", peers.len()),
        )
    } else {
        ("False", "PeersNotConnected", not_connected.join("; "))
    };
    let since = inputs
        .previous
        .and_then(|s| s.conditions.iter().find(|c| c.type_ == READY))
        .filter(|c| c.status == status)
        .map(|c| c.last_transition_time.clone());
    Condition {
        type_: READY.to_owned(),
        status: status.to_owned(),
        reason: reason.to_owned(),
        message,
        observed_generation: inputs.generation,
        last_transition_time: since
            .or_else(|| time(inputs.now))
            .unwrap_or(Time(Timestamp::UNIX_EPOCH)),
    }
}

/// Whole seconds, as the API server stores times.
fn time(t: SystemTime) -> Option<Time> {
    let ts = Timestamp::try_from(t).ok()?;
    Timestamp::from_second(ts.as_second()).ok().map(Time)
}

/// Equal but for probe latencies.
fn same_but_latency(a: &MeshFederationStatus, b: &MeshFederationStatus) -> bool {
    let strip = |s: &MeshFederationStatus| {
        let mut s = s.clone();
        for p in &mut s.peers {
            p.probe_latency_ms = None;
        }
        s
    };
    strip(a) == strip(b)
}

/// What to do with a desired status now.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Decision {
    /// Nothing to write (equal, or only latencies moved and the refresh is not due).
    Skip { recheck: Option<Instant> },
    /// Write now.
    Write,
    /// Changed, but the last write was under [`MIN_INTERVAL`] ago: try again then.
    Wait(Instant),
}

/// Rate limit of one object's status writes.
#[derive(Clone, Debug, Default)]
pub struct Gate {
    last: Option<(MeshFederationStatus, Instant)>,
}

impl Gate {
    /// A gate that counts `status` (found on the object) as written long ago: an equal
    /// status is not written again after a restart.
    pub fn seeded(status: Option<&MeshFederationStatus>, now: Instant) -> Self {
        Self {
            last: status.map(|s| (s.clone(), now.checked_sub(REFRESH).unwrap_or(now))),
        }
    }

    /// The status last written.
    pub fn last(&self) -> Option<&MeshFederationStatus> {
        self.last.as_ref().map(|(s, _)| s)
    }

    /// Whether `desired` should be written at `now`.
    pub fn decide(&self, desired: &MeshFederationStatus, now: Instant) -> Decision {
        let Some((last, at)) = &self.last else {
            return Decision::Write;
        };
        let allowed = *at + MIN_INTERVAL;
        if last == desired {
            return Decision::Skip { recheck: None };
        }
        if same_but_latency(last, desired) {
            let due = (*at + REFRESH).max(allowed);
            return if now >= due {
                Decision::Write
            } else {
                Decision::Skip { recheck: Some(due) }
            };
        }
        if now >= allowed {
            Decision::Write
        } else {
            Decision::Wait(allowed)
        }
    }

    /// Records a successful write.
    pub fn written(&mut self, status: MeshFederationStatus, now: Instant) {
        self.last = Some((status, now));
    }
}

#[cfg(test)]
mod tests;
