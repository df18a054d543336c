//! Two and three real federation controllers over mTLS on loopback, with
//! certificates from one shared root: export → import, unexport, peer
//! restart, peer loss (unhealthy, then stale removal), gateway probes,
//! refused peers, label filtering.

mod support;

use std::time::Duration;

use isthmus_federation::import::{MANAGED_BY, MANAGED_BY_LABEL, PEER_LABEL};
use support::*;

const FAST: Duration = Duration::from_secs(1);
const SLOW: Duration = Duration::from_secs(10);

/// east and west linked both ways, gateways up, east exporting `helloworld`.
async fn east_west() -> (Cluster, Cluster) {
    let net = test_net();
    let root = root();
    let (e, w) = (
        ClusterSpec::new("east", net, 1),
        ClusterSpec::new("west", net, 2),
    );
    let mut east = Cluster::new(e.clone(), &root);
    let mut west = Cluster::new(w.clone(), &root);
    east.link(&[(&w, &w.trust_domain)]);
    west.link(&[(&e, &e.trust_domain)]);
    east.add_service("helloworld", 2, 1);
    east.start_gateway().await;
    west.start_gateway().await;
    east.start().await;
    west.start().await;
    (east, west)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn export_imports_in_under_a_second_and_unexport_removes() {
    let (mut east, mut west) = east_west().await;
    // Let the stream come up before timing the export alone.
    eventually("west connected to east", SLOW, || {
        west.running()
            .status()
            .peers
            .iter()
            .find(|p| p.name == "east" && p.connection == "CONNECTED")
            .map(|_| ())
    })
    .await;
    assert!(west.imported().is_empty(), "nothing exported yet");

    east.export("helloworld");
    let (se, took) = eventually("helloworld imported in west", SLOW, || {
        west.imported().remove("helloworld.east")
    })
    .await;
    assert!(took < FAST, "export → import took {took:?}");

    assert_eq!(se.metadata.namespace.as_deref(), Some("sample"));
    let labels = se.metadata.labels.clone().unwrap_or_default();
    assert_eq!(
        labels.get(MANAGED_BY_LABEL).map(String::as_str),
        Some(MANAGED_BY)
    );
    assert_eq!(labels.get(PEER_LABEL).map(String::as_str), Some("east"));
    assert_eq!(
        se.spec.hosts,
        [
            "helloworld.sample.global",
            "helloworld.sample.svc.clusterset.local"
        ]
    );
    assert_eq!(se.spec.ports.len(), 1);
    assert_eq!(
        (
            se.spec.ports[0].number,
            se.spec.ports[0].protocol.as_deref()
        ),
        (5000, Some("HTTP"))
    );
    assert_eq!(se.spec.endpoints.len(), 1, "{:?}", se.spec.endpoints);
    let ep = &se.spec.endpoints[0];
    assert_eq!(
        ep.address,
        east.spec.ip.to_string(),
        "the endpoint is east's gateway"
    );
    assert_eq!(ep.ports.get("http"), Some(&u32::from(GATEWAY_PORT)));
    assert_eq!(ep.weight, Some(2), "weight = healthy endpoints");
    assert_eq!(ep.network.as_deref(), Some("net-east"));
    assert_eq!(ep.locality.as_deref(), Some("region-east/zone-a"));
    assert_eq!(ep.service_account.as_deref(), Some("helloworld"));
    assert_eq!(
        ep.labels
            .get("topology.istio.io/cluster")
            .map(String::as_str),
        Some("east")
    );
    assert_eq!(
        ep.labels
            .get("topology.istio.io/network")
            .map(String::as_str),
        Some("net-east")
    );
    assert_eq!(ep.labels.get("version").map(String::as_str), Some("v1"));
    assert!(
        !ep.labels.contains_key("evil"),
        "the evil label crossed: {:?}",
        ep.labels
    );
    // Nothing flows back: west exports nothing, so east imports nothing.
    assert!(east.imported().is_empty());

    east.unexport("helloworld");
    let ((), took) = eventually("helloworld removed from west", SLOW, || {
        west.imported().is_empty().then_some(())
    })
    .await;
    assert!(took < FAST, "unexport → removal took {took:?}");

    let status = west.running().status();
    let peer = status
        .peers
        .iter()
        .find(|p| p.name == "east")
        .expect("east in status");
    assert_eq!(peer.state, "ALIVE");
    assert!(peer.probe_latency_ms.is_some());
    east.stop().await;
    west.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_clusters_import_per_peer_and_unlink_removes_at_once() {
    let net = test_net();
    let root = root();
    let specs = [
        ClusterSpec::new("east", net, 1),
        ClusterSpec::new("west", net, 2),
        ClusterSpec::new("south", net, 3),
    ];
    let mut clusters: Vec<Cluster> = specs
        .iter()
        .map(|s| Cluster::new(s.clone(), &root))
        .collect();
    for (i, c) in clusters.iter().enumerate() {
        let peers: Vec<(&ClusterSpec, &str)> = specs
            .iter()
            .enumerate()
            .filter(|(j, _)| *j != i)
            .map(|(_, s)| (s, s.trust_domain.as_str()))
            .collect();
        c.link(&peers);
    }
    clusters[0].add_service("helloworld", 2, 0);
    clusters[2].add_service("helloworld", 3, 0);
    clusters[0].export("helloworld");
    clusters[2].export("helloworld");
    for c in &mut clusters {
        c.start_gateway().await;
        c.start().await;
    }
    let west = &clusters[1];
    let (entries, _) = eventually("west imports from east and south", SLOW, || {
        let m = west.imported();
        (m.len() == 2).then_some(m)
    })
    .await;
    assert_eq!(entries["helloworld.east"].spec.endpoints[0].weight, Some(2));
    assert_eq!(
        entries["helloworld.south"].spec.endpoints[0].weight,
        Some(3)
    );
    assert_eq!(
        entries["helloworld.south"].spec.endpoints[0].address,
        specs[2].ip.to_string()
    );
    // east imports south's (not its own back from anyone): one entry.
    let (east_entries, _) = eventually("east imports from south", SLOW, || {
        let m = clusters[0].imported();
        (m.len() == 1).then_some(m)
    })
    .await;
    assert!(east_entries.contains_key("helloworld.south"));
    // Unlinking south in west removes its entries at once; east's stay.
    west.link(&[(&specs[0], &specs[0].trust_domain)]);
    eventually("south's entry removed in west", SLOW, || {
        let m = west.imported();
        (m.len() == 1 && m.contains_key("helloworld.east")).then_some(())
    })
    .await;
    for c in &mut clusters {
        c.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn peer_stopped_turns_unhealthy_then_stale_entries_go_and_restart_resyncs() {
    let (mut east, mut west) = east_west().await;
    east.export("helloworld");
    eventually("imported", SLOW, || {
        west.imported()
            .get("helloworld.east")
            .filter(|se| weights(se) == [2])
            .map(|_| ())
    })
    .await;

    // The controller and the gateway go away (a cluster outage).
    east.stop().await;
    east.stop_gateway();
    let ((), took) = eventually("east's endpoints unhealthy", SLOW, || {
        west.imported()
            .get("helloworld.east")
            .filter(|se| weights(se) == [0])
            .map(|_| ())
    })
    .await;
    assert!(took < Duration::from_secs(2), "took {took:?}");
    let status = west.running().status();
    assert_eq!(status.peers[0].state, "DOWN");
    assert!(status.peers[0].last_error.is_some());

    // Back before the staleness bound, with a change made while it was down.
    east.add_service("helloworld", 4, 0);
    east.start_gateway().await;
    east.start().await;
    eventually("resynced after restart", SLOW, || {
        west.imported()
            .get("helloworld.east")
            .filter(|se| weights(se) == [4])
            .map(|_| ())
    })
    .await;

    // Gone for good: unhealthy first, then removed after the 2 s staleness bound.
    east.stop().await;
    east.stop_gateway();
    let (_, unhealthy_after) = eventually("unhealthy", SLOW, || {
        west.imported()
            .get("helloworld.east")
            .filter(|se| weights(se) == [0])
            .map(|_| ())
    })
    .await;
    let (_, removed_after) = eventually("stale entry removed", SLOW, || {
        west.imported().is_empty().then_some(())
    })
    .await;
    assert!(
        removed_after >= Duration::from_millis(1500),
        "removed too early: {unhealthy_after:?} + {removed_after:?}"
    );
    west.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failing_gateway_probes_mark_endpoints_unhealthy_and_recover() {
    let (mut east, mut west) = east_west().await;
    east.export("helloworld");
    eventually("imported", SLOW, || {
        west.imported()
            .get("helloworld.east")
            .filter(|se| weights(se) == [2])
            .map(|_| ())
    })
    .await;

    // Only the gateway dies; the federation stream is fine.
    east.stop_gateway();
    let ((), took) = eventually("unhealthy after 3 failed probes", SLOW, || {
        west.imported()
            .get("helloworld.east")
            .filter(|se| weights(se) == [0])
            .map(|_| ())
    })
    .await;
    assert!(
        took >= Duration::from_millis(200),
        "3 probes at 100 ms cannot fail in {took:?}"
    );
    assert!(took < Duration::from_secs(2), "took {took:?}");
    let status = west.running().status();
    assert_eq!(status.peers[0].connection, "CONNECTED");
    assert!(!status.peers[0].gateways[0].healthy);

    east.start_gateway().await;
    eventually("healthy again", SLOW, || {
        west.imported()
            .get("helloworld.east")
            .filter(|se| weights(se) == [2])
            .map(|_| ())
    })
    .await;
    east.stop().await;
    west.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unlisted_peer_and_wrong_trust_domain_are_refused() {
    let net = test_net();
    let root = root();
    let (e, w, n) = (
        ClusterSpec::new("east", net, 1),
        ClusterSpec::new("west", net, 2),
        ClusterSpec::new("north", net, 3),
    );
    let mut east = Cluster::new(e.clone(), &root);
    let mut west = Cluster::new(w.clone(), &root);
    let mut north = Cluster::new(n.clone(), &root);
    // east lists only north, and declares north with a trust domain north does not have.
    east.link(&[(&n, "impostor.isthmus.local")]);
    west.link(&[(&e, &e.trust_domain)]);
    north.link(&[(&e, &e.trust_domain)]);
    east.add_service("helloworld", 1, 0);
    east.export("helloworld");
    for c in [&mut east, &mut west, &mut north] {
        c.start_gateway().await;
        c.start().await;
    }
    let (west_error, _) = eventually("west refused", SLOW, || {
        west.running()
            .status()
            .peers
            .first()
            .and_then(|p| p.last_error.clone())
    })
    .await;
    assert!(west_error.contains("not a peer"), "{west_error}");
    let (north_error, _) = eventually("north refused", SLOW, || {
        north
            .running()
            .status()
            .peers
            .first()
            .and_then(|p| p.last_error.clone())
    })
    .await;
    assert!(
        north_error.contains("must present spiffe://impostor.isthmus.local"),
        "{north_error}"
    );
    // And east, expecting an impostor trust domain, does not accept north's server either.
    let (east_error, _) = eventually("east cannot verify north", SLOW, || {
        east.running()
            .status()
            .peers
            .first()
            .and_then(|p| p.last_error.clone())
    })
    .await;
    assert!(east_error.contains("connecting"), "{east_error}");
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(west.imported().is_empty() && north.imported().is_empty());
    for c in [&mut east, &mut west, &mut north] {
        c.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn imported_entries_survive_a_restart_of_the_importer() {
    let (mut east, mut west) = east_west().await;
    east.export("helloworld");
    eventually("imported", SLOW, || {
        west.imported().get("helloworld.east").map(|_| ())
    })
    .await;
    west.stop().await;
    // A restarted importer adopts its entries and keeps them while the peer reconnects.
    west.start().await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(west.imported().contains_key("helloworld.east"));
    east.unexport("helloworld");
    eventually("removed after restart", SLOW, || {
        west.imported().is_empty().then_some(())
    })
    .await;
    east.stop().await;
    west.stop().await;
}
