//! The xDS client against a scripted ADS server (`support::fake`): NACKs
//! of malformed resources, warming with the initial fetch timeout, and
//! resubscription on a new stream. The fake serves state of the world only
//! (`UNIMPLEMENTED` for incremental), so every test also covers the
//! client's fallback from its default, incremental xDS.

mod support;

use std::time::Duration;

use envoy_types::pb::envoy::config::endpoint::v3::ClusterLoadAssignment;
use envoy_types::pb::google::protobuf::Any;
use envoy_types::util::pack_any;
use isthmus_proxy_core::config::{CLUSTER, ENDPOINT, LISTENER, ROUTE};
use isthmus_proxy_core::xds::{XdsClient, XdsProtocol};
use isthmus_proxy_core::{ProxyConfig, ResourceType};
use tokio_util::sync::CancellationToken;
use tonic::Status;

use support::fake::*;
use support::{WAIT, wait_config};

/// Expects a NACK of `nonce` keeping `version`; returns its error message.
async fn expect_nack(s: &mut Stream, type_url: &str, nonce: &str, version: &str) -> String {
    let nack = s.next_of(type_url).await;
    assert_eq!(nack.response_nonce, nonce);
    assert_eq!(
        nack.version_info, version,
        "a NACK carries the last accepted version"
    );
    nack.error_detail.expect("a NACK has error_detail").message
}

/// Syncs the client: one static cluster `a`, one HTTP listener on 80 with route `80`.
async fn initial_sync(s: &mut Stream, client: &XdsClient) {
    let cds = s.next_request().await;
    assert_eq!(cds.type_url, CLUSTER);
    assert!(cds.node.is_some_and(|n| n.id.starts_with("sidecar~")));
    assert_eq!(s.next_request().await.type_url, LISTENER);
    let n = s
        .respond(CLUSTER, "c1", vec![pack_any(static_cluster("a"))])
        .await;
    assert_eq!(s.next_of(CLUSTER).await.response_nonce, n);
    let n = s
        .respond(LISTENER, "l1", vec![pack_any(http_listener(80, "80"))])
        .await;
    let rds = s.next_request().await;
    assert_eq!(
        (rds.type_url.as_str(), rds.resource_names.as_slice()),
        (ROUTE, &["80".to_string()][..])
    );
    assert_eq!(s.next_of(LISTENER).await.response_nonce, n);
    assert!(!client.is_ready(), "the listener's routes have not arrived");
    s.respond(ROUTE, "r1", vec![pack_any(route("80", &[&["a"]]))])
        .await;
    tokio::time::timeout(WAIT, client.ready())
        .await
        .expect("ready in time")
        .unwrap();
    s.next_of(ROUTE).await;
}

#[tokio::test]
async fn malformed_resources_are_nacked_and_the_config_kept() {
    let shutdown = CancellationToken::new();
    let (addr, mut streams) = fake_server(&shutdown).await;
    let client = spawn_client(addr, options(), &shutdown);
    let mut s = accept(&mut streams).await;
    initial_sync(&mut s, &client).await;
    let synced = client.current();
    assert_eq!(synced.version(ResourceType::Cluster), Some("c1"));
    assert_eq!(
        client.stats().protocol,
        XdsProtocol::StateOfTheWorld,
        "fell back from incremental xDS"
    );

    // A resource of another type inside a CDS response.
    let n = s
        .respond(
            CLUSTER,
            "c2",
            vec![
                pack_any(static_cluster("b")),
                pack_any(ClusterLoadAssignment::default()),
            ],
        )
        .await;
    let message = expect_nack(&mut s, CLUSTER, &n, "c1").await;
    assert_eq!(
        message,
        format!("Cluster response: resources[1] has type URL {ENDPOINT:?}, expected {CLUSTER:?}")
    );

    // Bytes that do not decode.
    let garbage = Any {
        type_url: LISTENER.into(),
        value: vec![0x0a, 0xff, 0xff, 0xff, 0xff, 0x0f],
    };
    let n = s
        .respond(
            LISTENER,
            "l2",
            vec![pack_any(http_listener(81, "81")), garbage],
        )
        .await;
    let message = expect_nack(&mut s, LISTENER, &n, "l1").await;
    assert!(
        message.starts_with("Listener response: resources[1] does not decode as Listener"),
        "{message}"
    );

    // A route config our data plane cannot use.
    let n = s
        .respond(
            ROUTE,
            "r2",
            vec![pack_any(route("80", &[&["a"], &["b", "a"]]))],
        )
        .await;
    let message = expect_nack(&mut s, ROUTE, &n, "r1").await;
    assert_eq!(
        message,
        "RouteConfiguration \"80\": virtual_hosts[1].domains[1]: \"a\" is already in another virtual host"
    );

    // Endpoints nobody asked for.
    let n = s
        .respond(
            ENDPOINT,
            "e1",
            vec![pack_any(ClusterLoadAssignment {
                cluster_name: "stranger".into(),
                ..ClusterLoadAssignment::default()
            })],
        )
        .await;
    let message = expect_nack(&mut s, ENDPOINT, &n, "").await;
    assert_eq!(
        message,
        "ClusterLoadAssignment \"stranger\": not subscribed"
    );

    // Nothing of it reached the data plane.
    assert_eq!(client.current(), synced);
    assert_eq!(client.stats().nacks_sent, 4);

    // The next good update is ACKed and published.
    let mut rx = client.config();
    let n = s
        .respond(
            CLUSTER,
            "c3",
            vec![pack_any(static_cluster("a")), pack_any(static_cluster("b"))],
        )
        .await;
    let ack = s.next_of(CLUSTER).await;
    assert_eq!(
        (ack.response_nonce.as_str(), ack.version_info.as_str()),
        (n.as_str(), "c3")
    );
    assert!(ack.error_detail.is_none());
    let updated = wait_config(&mut rx, "with cluster b", |c| c.clusters.contains_key("b")).await;
    assert_eq!(updated.version(ResourceType::Cluster), Some("c3"));
    assert_eq!(updated.listeners, synced.listeners);

    shutdown.cancel();
    tokio::time::timeout(WAIT, client.join())
        .await
        .expect("client stopped in time");
}

#[tokio::test]
async fn warming_waits_for_endpoints_until_the_initial_fetch_timeout() {
    let shutdown = CancellationToken::new();
    let (addr, mut streams) = fake_server(&shutdown).await;
    let mut options = options();
    options.initial_fetch_timeout = Some(Duration::from_millis(500));
    let client = spawn_client(addr, options, &shutdown);
    let mut s = accept(&mut streams).await;
    s.next_request().await;
    s.next_request().await;
    s.respond(
        CLUSTER,
        "c1",
        vec![pack_any(eds_cluster("e")), pack_any(static_cluster("s"))],
    )
    .await;
    let eds = s.next_of(ENDPOINT).await;
    assert_eq!(eds.resource_names, ["e"]);
    s.respond(LISTENER, "l1", Vec::new()).await;
    s.next_of(LISTENER).await;

    // The server never sends endpoints for `e`: not ready for a while…
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(!client.is_ready());
    assert!(
        client.current().clusters.is_empty(),
        "nothing published while warming"
    );
    // …then the config is published as it is.
    tokio::time::timeout(WAIT, client.ready())
        .await
        .expect("ready after the timeout")
        .unwrap();
    let config = client.current();
    assert_eq!(config.clusters.keys().collect::<Vec<_>>(), ["e", "s"]);
    assert!(config.endpoints.is_empty());

    // The endpoints still arrive later and are published at once.
    let mut rx = client.config();
    s.respond(
        ENDPOINT,
        "e1",
        vec![pack_any(ClusterLoadAssignment {
            cluster_name: "e".into(),
            ..ClusterLoadAssignment::default()
        })],
    )
    .await;
    wait_config(&mut rx, "with endpoints", |c: &ProxyConfig| {
        c.endpoints.contains_key("e")
    })
    .await;

    shutdown.cancel();
    tokio::time::timeout(WAIT, client.join())
        .await
        .expect("client stopped in time");
}

#[tokio::test]
async fn a_broken_stream_is_reopened_and_everything_resubscribed() {
    let shutdown = CancellationToken::new();
    let (addr, mut streams) = fake_server(&shutdown).await;
    let client = spawn_client(addr, options(), &shutdown);
    let mut s = accept(&mut streams).await;
    initial_sync(&mut s, &client).await;
    let synced = client.current();

    // The server fails the stream.
    s.tx.send(Err(Status::unavailable("going away")))
        .await
        .unwrap();
    let mut s = accept(&mut streams).await;
    let mut subscribed = Vec::new();
    for _ in 0..3 {
        let r = s.next_request().await;
        subscribed.push((
            r.type_url,
            r.version_info,
            r.resource_names,
            r.response_nonce,
        ));
    }
    assert_eq!(
        subscribed,
        [
            (CLUSTER.to_string(), "c1".to_string(), vec![], String::new()),
            (
                LISTENER.to_string(),
                "l1".to_string(),
                vec![],
                String::new()
            ),
            (
                ROUTE.to_string(),
                "r1".to_string(),
                vec!["80".to_string()],
                String::new()
            ),
        ]
    );
    assert_eq!(client.current(), synced);
    assert_eq!(client.stats().reconnects, 1);

    shutdown.cancel();
    tokio::time::timeout(WAIT, client.join())
        .await
        .expect("client stopped in time");
}
