//! The xDS client against a real control plane on loopback: the first
//! sync, a config change, and a control plane restart, each over
//! incremental and over state-of-the-world ADS.

mod support;

use std::time::Duration;

use envoy_types::pb::envoy::config::core::v3::address;
use envoy_types::pb::envoy::config::endpoint::v3::lb_endpoint::HostIdentifier;
use isthmus_proxy_core::ResourceType;
use isthmus_proxy_core::xds::XdsProtocol;
use tokio_util::sync::CancellationToken;

use support::*;

/// A test per protocol of `async fn $name(protocol)`.
macro_rules! over_both_protocols {
    ($($name:ident),*) => {$(
        mod $name {
            use super::XdsProtocol;

            #[tokio::test]
            async fn delta() {
                super::$name(XdsProtocol::Incremental).await
            }

            #[tokio::test]
            async fn sotw() {
                super::$name(XdsProtocol::StateOfTheWorld).await
            }
        }
    )*};
}

over_both_protocols!(
    first_sync_publishes_a_consistent_config,
    a_config_change_is_published,
    the_last_config_survives_a_control_plane_restart
);

/// The socket addresses of a cluster's endpoints.
fn endpoint_ips(config: &isthmus_proxy_core::ProxyConfig, cluster: &str) -> Vec<String> {
    config.endpoints[cluster]
        .decode()
        .unwrap()
        .endpoints
        .iter()
        .flat_map(|l| &l.lb_endpoints)
        .filter_map(|e| match &e.host_identifier {
            Some(HostIdentifier::Endpoint(ep)) => ep.address.as_ref(),
            _ => None,
        })
        .filter_map(|a| match &a.address {
            Some(address::Address::SocketAddress(s)) => Some(s.address.clone()),
            _ => None,
        })
        .collect()
}

async fn first_sync_publishes_a_consistent_config(protocol: XdsProtocol) {
    let dir = ConfigDir::new(SERVICES);
    let cp = ControlPlane::start(&dir, "127.0.0.1:0".parse().unwrap(), "127.0.10.11").await;
    let shutdown = CancellationToken::new();
    let options = options(protocol);
    let local = options.local_secrets.clone();
    let client = client(cp.xds, options, &shutdown);

    tokio::time::timeout(WAIT, client.ready())
        .await
        .expect("ready in time")
        .unwrap();
    assert!(client.is_ready());
    let config = client.current();
    assert_consistent(&config, &local);

    // Every type arrived.
    for t in ResourceType::ALL {
        assert!(config.version(t).is_some_and(|v| !v.is_empty()), "{t}");
    }
    // Clusters and their endpoints.
    assert!(config.clusters.contains_key(HELLOWORLD_CLUSTER));
    assert_eq!(endpoint_ips(&config, HELLOWORLD_CLUSTER), ["127.0.10.11"]);
    // The HTTP listener for 5000 and its route config, which routes to the cluster.
    assert!(config.listeners.contains_key("0.0.0.0_5000"));
    assert!(config.listeners.contains_key("virtualInbound"));
    assert!(config.route_names().contains("5000"));
    let routes = format!("{:?}", config.routes["5000"].decode().unwrap());
    assert!(routes.contains(HELLOWORLD_CLUSTER), "{routes}");
    // mTLS secrets: the trust bundle came by SDS; `default` is ours.
    assert!(config.secret_names().contains("default"));
    assert_eq!(
        config.secrets.keys().collect::<Vec<_>>(),
        ["ROOTCA"],
        "only ROOTCA is subscribed"
    );

    let stats = client.stats();
    assert!(stats.updates_accepted >= 5, "{stats:?}");
    assert_eq!((stats.nacks_sent, stats.reconnects), (0, 0));
    assert!(stats.connected);
    assert_eq!(stats.protocol, protocol);

    shutdown.cancel();
    tokio::time::timeout(WAIT, client.join())
        .await
        .expect("client stopped in time");
    cp.stop().await;
}

async fn a_config_change_is_published(protocol: XdsProtocol) {
    let dir = ConfigDir::new(SERVICES);
    let cp = ControlPlane::start(&dir, "127.0.0.1:0".parse().unwrap(), "127.0.10.11").await;
    let shutdown = CancellationToken::new();
    let options = options(protocol);
    let local = options.local_secrets.clone();
    let client = client(cp.xds, options, &shutdown);
    let mut rx = client.config();
    tokio::time::timeout(WAIT, client.ready())
        .await
        .expect("ready in time")
        .unwrap();
    let before = client.current();
    assert!(!before.clusters.contains_key(REVIEWS_CLUSTER));

    dir.write("reviews.yaml", REVIEWS);
    // The cluster, its endpoints, and the route config for its port arrive
    // in separate responses; the last to come completes the picture.
    let after = wait_config(&mut rx, "with reviews", |c| {
        c.endpoints.contains_key(REVIEWS_CLUSTER) && c.routes.contains_key("9080")
    })
    .await;
    assert_consistent(&after, &local);
    assert_eq!(endpoint_ips(&after, REVIEWS_CLUSTER), ["127.0.10.31"]);
    assert!(after.listeners.contains_key("0.0.0.0_9080"));
    assert_ne!(
        after.version(ResourceType::Cluster),
        before.version(ResourceType::Cluster)
    );
    // Nothing else was lost.
    assert_eq!(endpoint_ips(&after, HELLOWORLD_CLUSTER), ["127.0.10.11"]);

    // The service goes away again: its cluster, endpoints, listener and
    // route config with it, and nothing else.
    dir.remove("reviews.yaml");
    let removed = wait_config(&mut rx, "without reviews", |c| {
        !c.clusters.contains_key(REVIEWS_CLUSTER) && !c.listeners.contains_key("0.0.0.0_9080")
    })
    .await;
    assert_consistent(&removed, &local);
    assert!(!removed.endpoints.contains_key(REVIEWS_CLUSTER));
    assert!(!removed.routes.contains_key("9080"));
    assert_eq!(
        removed.clusters.keys().collect::<Vec<_>>(),
        before.clusters.keys().collect::<Vec<_>>()
    );
    assert_eq!(
        removed.listeners.keys().collect::<Vec<_>>(),
        before.listeners.keys().collect::<Vec<_>>()
    );
    assert_eq!(client.stats().nacks_sent, 0);

    shutdown.cancel();
    tokio::time::timeout(WAIT, client.join())
        .await
        .expect("client stopped in time");
    cp.stop().await;
}

async fn the_last_config_survives_a_control_plane_restart(protocol: XdsProtocol) {
    let dir = ConfigDir::new(SERVICES);
    let cp = ControlPlane::start(&dir, "127.0.0.1:0".parse().unwrap(), "127.0.10.11").await;
    let addr = cp.xds;
    let shutdown = CancellationToken::new();
    let options = options(protocol);
    let local = options.local_secrets.clone();
    let client = client(addr, options, &shutdown);
    let mut rx = client.config();
    tokio::time::timeout(WAIT, client.ready())
        .await
        .expect("ready in time")
        .unwrap();
    let synced = client.current();

    // The control plane goes away: the client retries, with backoff, and
    // keeps serving the last config.
    cp.stop().await;
    tokio::time::timeout(WAIT, async {
        while client.stats().connected || client.stats().reconnects < 3 {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .expect("the client notices and retries");
    assert_eq!(
        client.current(),
        synced,
        "the config is kept while disconnected"
    );
    assert!(client.is_ready());

    // A new control plane on the same address, with one more service.
    dir.write("reviews.yaml", REVIEWS);
    let cp = ControlPlane::start(&dir, addr, "127.0.10.31").await;
    let resynced = wait_config(&mut rx, "after the restart", |c| {
        c.endpoints.contains_key(REVIEWS_CLUSTER) && c.routes.contains_key("9080")
    })
    .await;
    assert_consistent(&resynced, &local);
    assert!(resynced.clusters.contains_key(HELLOWORLD_CLUSTER));
    let stats = client.stats();
    assert!(stats.connected && stats.reconnects >= 3, "{stats:?}");
    assert_eq!(stats.nacks_sent, 0);

    shutdown.cancel();
    tokio::time::timeout(WAIT, client.join())
        .await
        .expect("client stopped in time");
    cp.stop().await;
}
