use std::collections::BTreeMap;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use isthmus_api::federation::{Peer as PeerSpec, PeerConnection};
use tokio::time::Instant;

use super::*;
use crate::state::{Connection, Gateway, Peer};

fn federation(peers: &[&str]) -> Federation {
    Federation {
        source: "MeshFederation isthmus-system/mesh".into(),
        peers: peers
            .iter()
            .map(|p| {
                (
                    (*p).to_owned(),
                    PeerSpec {
                        name: (*p).to_owned(),
                        ..PeerSpec::default()
                    },
                )
            })
            .collect(),
        ..Federation::default()
    }
}

fn peer(name: &str, connection: Connection, latency_ms: u64) -> Peer {
    let mut gateway = Gateway::new("127.0.0.1:15443");
    gateway.last_latency = Some(Duration::from_micros(latency_ms * 1000 + 260));
    Peer {
        name: name.into(),
        connection,
        catalog: None,
        last_contact: None,
        last_alive: Instant::now(),
        last_sync: Some(UNIX_EPOCH + Duration::from_millis(1_700_000_000_750)),
        gateways: vec![gateway],
        last_error: None,
        imported: 2,
    }
}

fn inputs(now: SystemTime) -> Inputs<'static> {
    Inputs {
        generation: Some(3),
        error: None,
        previous: None,
        now,
    }
}

#[test]
fn peers_and_a_ready_condition() {
    let now = UNIX_EPOCH + Duration::from_secs(1_800_000_000);
    let mut peers = BTreeMap::new();
    peers.insert("west".to_owned(), peer("west", Connection::Connected, 3));
    let status = desired(Some(&federation(&["west", "south"])), &peers, inputs(now));
    assert_eq!(status.observed_generation, Some(3));
    let names: Vec<_> = status.peers.iter().map(|p| p.name.as_str()).collect();
    assert_eq!(names, ["south", "west"]);
    // A listed peer without state yet is connecting.
    assert_eq!(status.peers[0].connection, PeerConnection::Connecting);
    let west = &status.peers[1];
    assert_eq!(west.connection, PeerConnection::Connected);
    assert_eq!(west.imported_services, 2);
    assert_eq!(west.probe_latency_ms, Some(3.3));
    let json = serde_json::to_value(west).unwrap();
    assert_eq!(
        json["lastSync"], "2023-11-14T22:13:20Z",
        "RFC 3339, whole seconds"
    );
    assert_eq!(json["connection"], "Connected");
    let ready = &status.conditions[0];
    assert_eq!(
        (
            ready.type_.as_str(),
            ready.status.as_str(),
            ready.reason.as_str()
        ),
        ("Ready", "False", "PeersNotConnected")
    );
    assert!(
        ready.message.contains("south is Connecting"),
        "{}",
        ready.message
    );
    assert_eq!(ready.observed_generation, Some(3));

    peers.insert("south".to_owned(), peer("south", Connection::Connected, 1));
    let later = now + Duration::from_secs(30);
    let connected = desired(
        Some(&federation(&["west", "south"])),
        &peers,
        Inputs {
            previous: Some(&status),
            ..inputs(later)
        },
    );
    let ready = &connected.conditions[0];
    assert_eq!(
        (ready.status.as_str(), ready.reason.as_str()),
        ("True", "PeersConnected")
    );
    let t = |c: &Condition| serde_json::to_value(&c.last_transition_time).unwrap();
    assert_eq!(t(ready), "2027-01-15T08:00:30Z", "it transitioned now");

    // Unchanged condition status keeps its transition time.
    let again = desired(
        Some(&federation(&["west", "south"])),
        &peers,
        Inputs {
            previous: Some(&connected),
            ..inputs(later + Duration::from_secs(60))
        },
    );
    assert_eq!(t(&again.conditions[0]), t(ready));
}

#[test]
fn errors_and_no_peers() {
    let now = SystemTime::now();
    let mut peers = BTreeMap::new();
    let mut down = peer("west", Connection::Down, 1);
    down.last_error = Some("connection refused".into());
    peers.insert("west".to_owned(), down);
    let status = desired(Some(&federation(&["west"])), &peers, inputs(now));
    assert_eq!(status.peers[0].connection, PeerConnection::Down);
    assert_eq!(
        status.peers[0].last_error.as_deref(),
        Some("connection refused")
    );
    assert!(
        status.conditions[0]
            .message
            .contains("west is Down: connection refused")
    );

    let failed = desired(
        Some(&federation(&["west"])),
        &peers,
        Inputs {
            error: Some("writing status: forbidden"),
            ..inputs(now)
        },
    );
    let ready = &failed.conditions[0];
    assert_eq!(
        (ready.status.as_str(), ready.reason.as_str()),
        ("False", "ReconcileError")
    );
    assert_eq!(ready.message, "writing status: forbidden");

    let none = desired(None, &peers, inputs(now));
    assert!(none.peers.is_empty());
    assert_eq!(none.conditions[0].reason, "NoPeers");
    assert_eq!(none.conditions[0].status, "True");
}

#[test]
fn gate_writes_changes_at_most_once_a_second_and_latency_alone_rarely() {
    let now = SystemTime::now();
    let t0 = Instant::now();
    let mut peers = BTreeMap::new();
    peers.insert("west".to_owned(), peer("west", Connection::Connected, 3));
    let f = federation(&["west"]);
    let first = desired(Some(&f), &peers, inputs(now));

    let mut gate = Gate::default();
    assert_eq!(
        gate.decide(&first, t0),
        Decision::Write,
        "nothing written yet"
    );
    gate.written(first.clone(), t0);
    assert_eq!(gate.decide(&first, t0), Decision::Skip { recheck: None });

    // A real change within the second waits for it.
    peers.get_mut("west").unwrap().imported = 3;
    let changed = desired(Some(&f), &peers, inputs(now));
    let t1 = t0 + Duration::from_millis(300);
    assert_eq!(gate.decide(&changed, t1), Decision::Wait(t0 + MIN_INTERVAL));
    assert_eq!(gate.decide(&changed, t0 + MIN_INTERVAL), Decision::Write);

    // Only the probe latency moved: written with the refresh, not before.
    peers.get_mut("west").unwrap().imported = 2;
    peers.get_mut("west").unwrap().gateways[0].last_latency = Some(Duration::from_millis(9));
    let latency = desired(Some(&f), &peers, inputs(now));
    assert_eq!(
        gate.decide(&latency, t0 + Duration::from_secs(5)),
        Decision::Skip {
            recheck: Some(t0 + REFRESH)
        }
    );
    assert_eq!(gate.decide(&latency, t0 + REFRESH), Decision::Write);

    // After a restart, the status found on the object counts as written.
    let seeded = Gate::seeded(Some(&first), t0);
    assert_eq!(seeded.decide(&first, t0), Decision::Skip { recheck: None });
    assert_eq!(seeded.decide(&changed, t0), Decision::Write);
}
