//! Trust bundle exchange and root rotation across the federation: a
//! cluster that adds a new root to its bundle announces it in its catalog;
//! its peers trust it (for that cluster's trust domain) before the cluster
//! switches to an intermediate under it, so the switch breaks nothing. A peer
//! that never heard of the new root refuses the switched cluster.

mod support;

use std::time::Duration;

use isthmus_identity::TrustBundle;
use isthmus_identity::tool;
use support::*;

const SLOW: Duration = Duration::from_secs(10);

fn roots_in(path: &std::path::Path) -> usize {
    std::fs::read_to_string(path)
        .ok()
        .and_then(|pem| TrustBundle::from_pem(&pem).ok())
        .map_or(0, |b| b.len())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_root_is_trusted_by_peers_before_a_cluster_switches_to_it() {
    let net = test_net();
    let old_root = root();
    let new_root = tool::create_root("Isthmus test root 2").expect("root");
    let both = old_root
        .trust_bundle()
        .expect("bundle")
        .merged(&new_root.trust_bundle().expect("bundle"));
    let (e, w, n) = (
        ClusterSpec::new("east", net, 1),
        ClusterSpec::new("west", net, 2),
        ClusterSpec::new("north", net, 3),
    );
    let mut east = Cluster::new(e.clone(), &old_root);
    let mut west = Cluster::new(w.clone(), &old_root);
    let mut north = Cluster::new(n.clone(), &old_root);
    east.link(&[(&w, &w.trust_domain), (&n, &n.trust_domain)]);
    west.link(&[(&e, &e.trust_domain)]);
    north.link(&[(&e, &e.trust_domain)]);
    east.add_service("helloworld", 1, 0);
    east.export("helloworld");
    for c in [&mut east, &mut west] {
        c.start_gateway().await;
        c.start().await;
    }
    eventually("west imports", SLOW, || {
        west.imported().get("helloworld.east").map(|_| ())
    })
    .await;
    assert_eq!(roots_in(&west.trust_bundle_out()), 1);

    // Step 1: east trusts old + new (its intermediate is still under the old root).
    // It reloads its cacerts and announces both roots; west learns the new one.
    let old_intermediate_dir = east.ca_dir();
    let ca = std::fs::read_to_string(old_intermediate_dir.join("root-cert.pem")).expect("read");
    assert_eq!(TrustBundle::from_pem(&ca).expect("bundle").len(), 1);
    std::fs::write(old_intermediate_dir.join("root-cert.pem"), both.to_pem()).expect("write");
    eventually("west learned east's new root", SLOW, || {
        (roots_in(&west.trust_bundle_out()) == 2).then_some(())
    })
    .await;
    assert_eq!(roots_in(&east.trust_bundle_out()), 2);

    // Step 2: east switches to an intermediate under the new root and restarts, so every
    // connection is made with the new chain. West keeps syncing.
    east.stop().await;
    write_ca(&east.ca_dir(), &new_root, "east", &e.trust_domain, &both);
    east.add_service("ratings", 1, 0);
    east.export("ratings");
    east.start().await;
    eventually("west resynced with east on the new root", SLOW, || {
        west.imported().get("ratings.east").map(|_| ())
    })
    .await;
    let status = west.running().status();
    assert_eq!(status.peers[0].connection, "CONNECTED", "{status:?}");

    // A peer that never learned the new root cannot verify east any more.
    north.start_gateway().await;
    north.start().await;
    let (error, _) = eventually("north refuses east's new chain", SLOW, || {
        north
            .running()
            .status()
            .peers
            .first()
            .and_then(|p| p.last_error.clone())
    })
    .await;
    assert!(error.contains("connecting"), "{error}");
    assert!(north.imported().is_empty());
    for c in [&mut east, &mut west, &mut north] {
        c.stop().await;
    }
}
