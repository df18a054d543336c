//! The ADS server against a real tonic client over loopback TCP.

mod ads_support;

use std::collections::BTreeSet;
use std::time::Duration;

use ads_support::{Client, Config, Harness, TIMEOUT, names, proxy, summary};
use isthmus_control_plane::xds::{CLUSTER, ENDPOINT, LISTENER, ROUTE, SECRET};
use tonic::Code;

/// How long a test waits to be sure nothing more arrives.
const QUIET: Duration = Duration::from_millis(400);

fn strings(names: &[&str]) -> Vec<String> {
    names.iter().map(|n| n.to_string()).collect()
}

#[tokio::test]
async fn initial_sync_and_acks_are_recorded() {
    let h = Harness::start(Config::default().basic("sleep")).await;
    let mut c = h.client("sleep").await;
    let [cds, eds, lds, rds] = c.sync(&["http"]).await;
    assert_eq!(names(&cds), strings(&["a", "b"]));
    assert_eq!(names(&eds), strings(&["a", "b"]));
    assert_eq!(names(&lds), strings(&["outbound"]));
    assert_eq!(names(&rds), strings(&["http"]));
    let nonces: BTreeSet<&str> = [&cds, &eds, &lds, &rds]
        .iter()
        .map(|r| r.nonce.as_str())
        .collect();
    assert_eq!(nonces.len(), 4, "a fresh nonce per response");
    for r in [&cds, &eds, &lds, &rds] {
        assert!(r.version_info.starts_with("1-"), "{}", r.version_info);
        assert_eq!(
            r.control_plane.as_ref().map(|c| c.identifier.as_str()),
            Some("isthmus")
        );
    }
    c.expect_silence(QUIET).await;

    let id = proxy("sleep").id;
    h.wait_status("every type ACKed", |all| {
        all.len() == 1 && all[0].types.len() == 4 && all[0].types.values().all(|t| t.is_synced())
    })
    .await;
    let status = &h.server.sync_status()[0];
    assert_eq!(status.proxy_id, id);
    assert_eq!(status.role.to_string(), "sidecar");
    assert_eq!(status.cluster, "east");
    let cds_status = &status.types[CLUSTER];
    assert!(cds_status.wildcard);
    assert_eq!(
        cds_status.last_acked_version.as_deref(),
        Some(cds.version_info.as_str())
    );
    assert_eq!(status.types[ENDPOINT].subscribed_names, 2);
    assert_eq!(status.types[ROUTE].subscribed_names, 1);
    assert!(status.types.values().all(|t| t.last_nack.is_none()));

    let dump = h.server.last_sent(&id).expect("config dump");
    let dumped: Vec<(&str, usize)> = dump.iter().map(|(t, r)| (t.as_str(), r.len())).collect();
    assert_eq!(dumped.len(), 4);
    assert_eq!(
        dump[ENDPOINT]
            .iter()
            .map(|r| r.name.as_str())
            .collect::<Vec<_>>(),
        ["a", "b"]
    );
    assert!(h.server.last_sent("sidecar~~nobody.sample~x").is_none());

    let metrics = h.metrics();
    assert!(metrics.contains("xds_connected_proxies 1"), "{metrics}");
    assert!(
        metrics.contains("xds_pushes_total{type=\"eds\"} 1"),
        "{metrics}"
    );
}

#[tokio::test]
async fn nack_keeps_old_config_and_is_counted() {
    let mut h = Harness::start(Config::default().basic("sleep")).await;
    let mut c = h.client("sleep").await;
    let [cds, ..] = c.sync(&["http"]).await;

    // A cluster change the proxy rejects.
    let bad = Config::default().basic("sleep").cluster("sleep", "a", 2);
    h.set(bad.clone());
    let push = c.recv().await;
    assert_eq!(summary(&push), (CLUSTER.to_string(), strings(&["a", "b"])));
    assert_ne!(push.version_info, cds.version_info);
    c.nack(&push, &[], "cluster a: bad config").await;
    h.wait_status("the NACK", |all| {
        all[0].types[CLUSTER]
            .last_nack
            .as_ref()
            .is_some_and(|n| n.version == push.version_info && n.message == "cluster a: bad config")
    })
    .await;
    let status = &h.server.sync_status()[0].types[CLUSTER];
    assert_eq!(
        status.last_acked_version.as_deref(),
        Some(cds.version_info.as_str())
    );
    assert!(!status.is_synced());
    h.wait_metric("xds_nacks_total{type=\"cds\"} 1").await;

    // Another change: the listener goes out, the rejected clusters do not.
    h.set(bad.clone().listener("sleep", "outbound", 15002));
    let lds = c.recv().await;
    assert_eq!(lds.type_url, LISTENER);
    c.ack(&lds, &[]).await;
    c.expect_silence(QUIET).await;

    // Once the clusters change again, they are sent.
    h.set(
        bad.listener("sleep", "outbound", 15002)
            .cluster("sleep", "a", 3),
    );
    let fixed = c.recv().await;
    assert_eq!(fixed.type_url, CLUSTER);
    c.ack(&fixed, &[]).await;
    h.wait_status("the fix ACKed", |all| all[0].types[CLUSTER].is_synced())
        .await;
    c.expect_silence(QUIET).await;
}

#[tokio::test]
async fn burst_of_changes_is_one_push() {
    let mut h = Harness::start_with(
        Config::default().basic("sleep"),
        Duration::from_millis(250),
        Duration::from_secs(3),
    )
    .await;
    let mut c = h.client("sleep").await;
    c.sync(&["http"]).await;
    let mut config = Config::default().basic("sleep");
    let mut last = 0;
    for i in 1..=5 {
        config = config.cluster("sleep", &format!("extra{i}"), 1);
        last = h.set(config.clone());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let push = c.recv().await;
    assert_eq!(
        summary(&push),
        (
            CLUSTER.to_string(),
            strings(&["a", "b", "extra1", "extra2", "extra3", "extra4", "extra5"])
        )
    );
    assert!(
        push.version_info.starts_with(&format!("{last}-")),
        "{}",
        push.version_info
    );
    c.ack(&push, &[]).await;
    c.expect_silence(QUIET).await;
    h.wait_metric("xds_pushes_total{type=\"cds\"} 2").await;
    // Change received → ACK, measured once for this push.
    h.wait_metric("xds_convergence_seconds_count 1").await;
}

#[tokio::test]
async fn proxy_whose_config_did_not_change_gets_nothing() {
    let config = Config::default().basic("sleep").basic("web");
    let mut h = Harness::start(config.clone()).await;
    let mut sleep = h.client("sleep").await;
    let mut web = h.client("web").await;
    sleep.sync(&["http"]).await;
    web.sync(&["http"]).await;

    h.set(config.route("web", "http", "a"));
    let push = web.recv().await;
    assert_eq!(summary(&push), (ROUTE.to_string(), strings(&["http"])));
    sleep.expect_silence(QUIET).await;
    web.expect_silence(Duration::from_millis(50)).await;
}

#[tokio::test]
async fn removed_cluster_is_removed_last() {
    let mut h = Harness::start(Config::default().basic("sleep")).await;
    let mut c = h.client("sleep").await;
    c.sync(&["http"]).await;

    // b goes, c comes, and the route moves from b to c.
    let next = Config::default()
        .cluster("sleep", "a", 1)
        .cluster("sleep", "c", 1)
        .endpoints("sleep", "a", 8080)
        .endpoints("sleep", "c", 7070)
        .listener("sleep", "outbound", 15001)
        .route("sleep", "http", "c");
    h.set(next);
    let mut got = Vec::new();
    for _ in 0..4 {
        got.push(c.recv().await);
    }
    c.expect_silence(Duration::from_millis(100)).await;
    let order: Vec<(String, Vec<String>)> = got.iter().map(summary).collect();
    assert_eq!(
        order,
        vec![
            (CLUSTER.to_string(), strings(&["a", "b", "c"])),
            // Still subscribed to a and b; b no longer exists.
            (ENDPOINT.to_string(), strings(&["a"])),
            (ROUTE.to_string(), strings(&["http"])),
            (CLUSTER.to_string(), strings(&["a", "c"])),
        ]
    );
    // Like Envoy: ACK everything, then subscribe to the new clusters' endpoints.
    c.ack(&got[0], &[]).await;
    c.ack(&got[1], &["a", "b"]).await;
    c.ack(&got[2], &["http"]).await;
    c.ack(&got[3], &[]).await;
    c.expect_silence(Duration::from_millis(100)).await;
    c.ack(&got[1], &["a", "c"]).await;
    let eds = c.recv().await;
    assert_eq!(summary(&eds), (ENDPOINT.to_string(), strings(&["a", "c"])));
}

#[tokio::test]
async fn endpoint_subscription_change_is_answered_at_once() {
    let h = Harness::start(Config::default().basic("sleep")).await;
    let mut c = h.client("sleep").await;
    let [_, eds, ..] = c.sync(&["http"]).await;

    // With the current nonce.
    c.ack(&eds, &["a"]).await;
    let narrowed = c.recv().await;
    assert_eq!(summary(&narrowed), (ENDPOINT.to_string(), strings(&["a"])));

    // With a stale nonce: ignored, unless the names change.
    c.ack(&eds, &["a"]).await;
    c.expect_silence(QUIET).await;
    c.ack(&eds, &["a", "b"]).await;
    let widened = c.recv().await;
    assert_eq!(
        summary(&widened),
        (ENDPOINT.to_string(), strings(&["a", "b"]))
    );
    c.ack(&widened, &["a", "b"]).await;
    h.wait_status("two names", |all| {
        all[0].types[ENDPOINT].subscribed_names == 2 && all[0].types[ENDPOINT].is_synced()
    })
    .await;
}

#[tokio::test]
async fn unknown_or_refused_type_keeps_the_stream() {
    let h = Harness::start(Config::default().basic("sleep").refuse(SECRET)).await;
    let mut c = h.client("sleep").await;
    c.subscribe("type.googleapis.com/example.v1.Unknown", &["x"])
        .await;
    c.subscribe(SECRET, &["default"]).await;
    c.expect_silence(QUIET).await;
    let [cds, ..] = c.sync(&["http"]).await;
    assert_eq!(names(&cds), strings(&["a", "b"]));
    h.wait_metric("xds_push_errors_total{type=\"other\"} 1")
        .await;
    h.wait_metric("xds_push_errors_total{type=\"sds\"} 1").await;
    h.wait_status("the refused type listed, unknown one not", |all| {
        let types = &all[0].types;
        types.len() == 5 && types[SECRET].last_sent_version.is_none()
    })
    .await;
}

#[tokio::test]
async fn garbage_streams_get_invalid_argument() {
    let h = Harness::start(Config::default().basic("sleep")).await;

    let mut no_node = Client::connect(h.addr, None).await;
    no_node.subscribe(CLUSTER, &[]).await;
    let status = no_node.recv_status().await;
    assert_eq!(status.code(), Code::InvalidArgument);
    assert!(status.message().contains("node"), "{}", status.message());

    let mut bad = proxy("sleep").to_node();
    bad.id = "proxy~1.2.3.4~sleep.sample~sample.svc.cluster.local".into();
    let mut bad_node = Client::connect(h.addr, Some(bad)).await;
    bad_node.subscribe(CLUSTER, &[]).await;
    let status = bad_node.recv_status().await;
    assert_eq!(status.code(), Code::InvalidArgument);
    assert!(status.message().contains("role"), "{}", status.message());

    let mut no_type = h.client("sleep").await;
    no_type.subscribe("", &[]).await;
    assert_eq!(no_type.recv_status().await.code(), Code::InvalidArgument);

    // The server still serves everyone else.
    let mut good = h.client("sleep").await;
    good.sync(&["http"]).await;
    h.wait_status("only the good stream", |all| all.len() == 1)
        .await;
}

#[tokio::test]
async fn reconnect_gets_the_full_current_config() {
    let mut h = Harness::start(Config::default().basic("sleep")).await;
    let id = proxy("sleep").id;
    let mut old = h.client("sleep").await;
    old.sync(&["http"]).await;
    h.wait_status("first stream", |all| all.len() == 1).await;
    let first = h.server.sync_status()[0].connection;

    // The proxy reconnects while the control plane is unaware the old stream
    // is dead, and config changes meanwhile.
    let next = Config::default()
        .basic("sleep")
        .cluster("sleep", "c", 1)
        .endpoints("sleep", "c", 7070)
        .route("sleep", "http", "c");
    h.set(next);
    let mut new = h.client("sleep").await;
    let [cds, eds, lds, rds] = new.sync(&["http"]).await;
    assert_eq!(names(&cds), strings(&["a", "b", "c"]));
    assert_eq!(names(&eds), strings(&["a", "b", "c"]));
    assert_eq!(names(&lds), strings(&["outbound"]));
    assert_eq!(names(&rds), strings(&["http"]));
    assert!(cds.version_info.starts_with("2-"), "{}", cds.version_info);
    h.wait_status("two streams", |all| all.len() == 2).await;

    drop(old);
    h.wait_status("the old stream gone", |all| {
        all.len() == 1 && all[0].connection != first && all[0].types.values().all(|t| t.is_synced())
    })
    .await;
    let dump = h.server.last_sent(&id).expect("dump");
    assert_eq!(dump[CLUSTER].len(), 3);
    h.wait_metric("xds_connected_proxies 1").await;
}

#[tokio::test]
async fn shutdown_ends_streams_with_unavailable() {
    let mut h = Harness::start(Config::default().basic("sleep")).await;
    let mut c = h.client("sleep").await;
    c.sync(&["http"]).await;
    h.shutdown().await;
    let status = tokio::time::timeout(TIMEOUT, c.recv_status())
        .await
        .expect("stream ends");
    assert_eq!(status.code(), Code::Unavailable);
    assert!(h.server.sync_status().is_empty());
}
