//! Incremental ADS (`DeltaAggregatedResources`) against a real tonic client
//! over loopback TCP: only what changed travels, ACKs are nonces, NACKed
//! resources stay out until they change, removals come last.

#[allow(dead_code)]
mod ads_delta_support;
#[allow(dead_code)]
mod ads_support;

use std::collections::HashMap;
use std::time::Duration;

use ads_delta_support::{DeltaClient, names, summary, versions};
use ads_support::{Config, Harness, proxy};
use isthmus_control_plane::xds::{CLUSTER, ENDPOINT, LISTENER, ROUTE, SECRET};
use tonic::Code;

const QUIET: Duration = Duration::from_millis(300);

fn strings(names: &[&str]) -> Vec<String> {
    names.iter().map(|n| n.to_string()).collect()
}

fn expect(
    type_url: &str,
    resources: &[&str],
    removed: &[&str],
) -> (String, Vec<String>, Vec<String>) {
    (type_url.into(), strings(resources), strings(removed))
}

async fn client(h: &Harness, workload: &str) -> DeltaClient {
    DeltaClient::connect(h.addr, Some(proxy(workload).to_node())).await
}

#[tokio::test]
async fn initial_sync_in_order_and_acks_are_nonces() {
    let h = Harness::start(Config::default().basic("sleep")).await;
    let mut c = client(&h, "sleep").await;
    let [cds, eds, lds, rds] = c.sync(&["http"]).await;
    assert_eq!(summary(&cds), expect(CLUSTER, &["a", "b"], &[]));
    assert_eq!(summary(&eds), expect(ENDPOINT, &["a", "b"], &[]));
    assert_eq!(summary(&lds), expect(LISTENER, &["outbound"], &[]));
    assert_eq!(summary(&rds), expect(ROUTE, &["http"], &[]));
    assert!(
        cds.system_version_info.starts_with("1-"),
        "{}",
        cds.system_version_info
    );
    let nonces: std::collections::BTreeSet<&str> = [&cds, &eds, &lds, &rds]
        .iter()
        .map(|r| r.nonce.as_str())
        .collect();
    assert_eq!(nonces.len(), 4, "a fresh nonce per response");

    h.wait_status("every type ACKed on an incremental stream", |all| {
        all.len() == 1
            && all[0].incremental
            && all[0].types.len() == 4
            && all[0].types.values().all(|t| t.is_synced())
            && all[0].types[CLUSTER].wildcard
            && !all[0].types[ENDPOINT].wildcard
            && all[0].types[ENDPOINT].subscribed_names == 2
    })
    .await;
    h.wait_metric("xds_pushes_total{type=\"cds\"} 1").await;
    h.wait_metric("xds_connected_proxies 1").await;
    let dump = h.server.last_sent(&proxy("sleep").id).expect("dump");
    assert_eq!(dump[ENDPOINT].len(), 2);
    c.expect_silence(QUIET).await;
}

#[tokio::test]
async fn endpoint_change_sends_exactly_one_resource() {
    let mut h = Harness::start(Config::default().basic("sleep")).await;
    let mut c = client(&h, "sleep").await;
    let [_, eds, ..] = c.sync(&["http"]).await;
    let before = versions(&eds);

    let version = h.set(
        Config::default()
            .basic("sleep")
            .endpoints("sleep", "b", 9191),
    );
    let push = c.recv().await;
    assert_eq!(summary(&push), expect(ENDPOINT, &["b"], &[]));
    assert_ne!(versions(&push)["b"], before["b"], "a new content digest");
    assert!(
        push.system_version_info.starts_with(&format!("{version}-")),
        "{}",
        push.system_version_info
    );
    c.ack(&push).await;
    c.expect_silence(QUIET).await;
    h.wait_status("the change ACKed", |all| {
        all[0].types[ENDPOINT].last_acked_version.as_deref()
            == Some(push.system_version_info.as_str())
    })
    .await;
}

#[tokio::test]
async fn nack_keeps_old_config_and_is_not_resent_until_it_changes() {
    let mut h = Harness::start(Config::default().basic("sleep")).await;
    let mut c = client(&h, "sleep").await;
    c.sync(&["http"]).await;

    let rev2 = Config::default().basic("sleep").cluster("sleep", "a", 2);
    h.set(rev2.clone());
    let bad = c.recv().await;
    assert_eq!(summary(&bad), expect(CLUSTER, &["a"], &[]));
    c.nack(&bad, "cluster a: bad config").await;
    h.wait_metric("xds_nacks_total{type=\"cds\"} 1").await;
    h.wait_status("the NACK recorded", |all| {
        let cds = &all[0].types[CLUSTER];
        cds.last_nack.as_ref().is_some_and(|n| {
            n.message == "cluster a: bad config" && n.version == bad.system_version_info
        }) && cds.last_acked_version.as_deref() != Some(bad.system_version_info.as_str())
    })
    .await;

    // Another change: the rejected cluster stays out.
    h.set(rev2.endpoints("sleep", "b", 9191));
    let next = c.recv().await;
    assert_eq!(summary(&next), expect(ENDPOINT, &["b"], &[]));
    c.ack(&next).await;
    c.expect_silence(QUIET).await;

    // A new version of it goes out.
    h.set(
        Config::default()
            .basic("sleep")
            .endpoints("sleep", "b", 9191)
            .cluster("sleep", "a", 3),
    );
    let fixed = c.recv().await;
    assert_eq!(summary(&fixed), expect(CLUSTER, &["a"], &[]));
    assert_ne!(versions(&fixed)["a"], versions(&bad)["a"]);
    c.ack(&fixed).await;
    c.expect_silence(QUIET).await;
}

#[tokio::test]
async fn removed_service_is_removed_after_everything_else() {
    let with_c = Config::default()
        .basic("sleep")
        .cluster("sleep", "c", 1)
        .endpoints("sleep", "c", 7070)
        .route("sleep", "http", "c");
    let mut h = Harness::start(with_c).await;
    let mut c = client(&h, "sleep").await;
    let [cds, eds, ..] = c.sync(&["http"]).await;
    assert_eq!(names(&cds), strings(&["a", "b", "c"]));
    assert_eq!(names(&eds), strings(&["a", "b", "c"]));

    // Service c goes away; the route moves back to b.
    h.set(Config::default().basic("sleep"));
    let mut got = Vec::new();
    for _ in 0..3 {
        let r = c.recv().await;
        c.ack(&r).await;
        got.push(summary(&r));
    }
    assert_eq!(
        got,
        [
            expect(ROUTE, &["http"], &[]),
            expect(CLUSTER, &[], &["c"]),
            expect(ENDPOINT, &[], &["c"]),
        ]
    );
    c.expect_silence(QUIET).await;
}

#[tokio::test]
async fn unsubscribed_names_get_no_updates() {
    let mut h = Harness::start(Config::default().basic("sleep")).await;
    let mut c = client(&h, "sleep").await;
    c.sync(&["http"]).await;
    c.unsubscribe(ENDPOINT, &["a"]).await;
    h.wait_status("one name left", |all| {
        all[0].types[ENDPOINT].subscribed_names == 1
    })
    .await;
    c.expect_silence(QUIET).await;

    h.set(
        Config::default()
            .basic("sleep")
            .endpoints("sleep", "a", 7070),
    );
    c.expect_silence(QUIET).await;
    h.set(
        Config::default()
            .basic("sleep")
            .endpoints("sleep", "a", 7070)
            .endpoints("sleep", "b", 9191),
    );
    let push = c.recv().await;
    assert_eq!(summary(&push), expect(ENDPOINT, &["b"], &[]));

    // Subscribing again sends the current version.
    c.ack(&push).await;
    c.subscribe(ENDPOINT, &["a"]).await;
    let again = c.recv().await;
    assert_eq!(summary(&again), expect(ENDPOINT, &["a"], &[]));
}

#[tokio::test]
async fn absent_name_is_announced_and_sent_once_it_exists() {
    let mut h = Harness::start(Config::default().basic("sleep")).await;
    let mut c = client(&h, "sleep").await;
    c.sync(&["http"]).await;
    c.subscribe(ROUTE, &["later"]).await;
    let absent = c.recv().await;
    assert_eq!(summary(&absent), expect(ROUTE, &[], &["later"]));
    c.ack(&absent).await;

    h.set(
        Config::default()
            .basic("sleep")
            .route("sleep", "later", "a"),
    );
    let created = c.recv().await;
    assert_eq!(summary(&created), expect(ROUTE, &["later"], &[]));
    c.ack(&created).await;
    c.expect_silence(QUIET).await;
}

#[tokio::test]
async fn reconnect_with_initial_versions_gets_only_what_changed() {
    let mut h = Harness::start(Config::default().basic("sleep")).await;
    let mut old = client(&h, "sleep").await;
    let [cds, eds, lds, rds] = old.sync(&["http"]).await;
    drop(old);
    h.wait_status("the old stream gone", |all| all.is_empty())
        .await;

    h.set(Config::default().basic("sleep").cluster("sleep", "b", 2));
    let mut c = client(&h, "sleep").await;
    let mut had = versions(&cds);
    had.insert("gone".into(), "0123456789abcdef".into());
    c.resubscribe(CLUSTER, &[], had).await;
    let cds2 = c.recv().await;
    assert_eq!(summary(&cds2), expect(CLUSTER, &["b"], &["gone"]));
    c.ack(&cds2).await;

    c.resubscribe(ENDPOINT, &["a", "b"], versions(&eds)).await;
    let eds2 = c.recv().await;
    assert_eq!(summary(&eds2), expect(ENDPOINT, &[], &[]), "nothing new");
    c.ack(&eds2).await;
    c.resubscribe(LISTENER, &[], versions(&lds)).await;
    let lds2 = c.recv().await;
    assert_eq!(summary(&lds2), expect(LISTENER, &[], &[]));
    c.ack(&lds2).await;
    // A version the server cannot match is sent again.
    let stale = HashMap::from([("http".to_string(), "v1".to_string())]);
    c.resubscribe(ROUTE, &["http"], stale).await;
    let rds2 = c.recv().await;
    assert_eq!(summary(&rds2), expect(ROUTE, &["http"], &[]));
    assert_eq!(versions(&rds2), versions(&rds));
    c.ack(&rds2).await;
    h.wait_status("synced again", |all| {
        all.len() == 1 && all[0].types.values().all(|t| t.is_synced())
    })
    .await;
}

#[tokio::test]
async fn unknown_or_refused_type_fails_that_request_only() {
    let h = Harness::start(Config::default().basic("sleep").refuse(SECRET)).await;
    let mut c = client(&h, "sleep").await;
    c.subscribe("type.googleapis.com/example.v1.Unknown", &["x"])
        .await;
    c.subscribe(SECRET, &["default"]).await;
    c.expect_silence(QUIET).await;
    let [cds, ..] = c.sync(&["http"]).await;
    assert_eq!(names(&cds), strings(&["a", "b"]));
    h.wait_metric("xds_push_errors_total{type=\"other\"} 1")
        .await;
    h.wait_metric("xds_push_errors_total{type=\"sds\"} 1").await;
    h.wait_status("the refused type listed, the unknown one not", |all| {
        let types = &all[0].types;
        types.len() == 5 && types[SECRET].last_sent_version.is_none()
    })
    .await;

    // A request without a type URL ends only its own stream.
    let mut no_type = client(&h, "sleep").await;
    no_type.subscribe("", &[]).await;
    let status = no_type.recv_status().await;
    assert_eq!(status.code(), Code::InvalidArgument);
    assert!(
        status.message().contains("type_url"),
        "{}",
        status.message()
    );
    let mut no_node = DeltaClient::connect(h.addr, None).await;
    no_node.subscribe(CLUSTER, &[]).await;
    assert_eq!(no_node.recv_status().await.code(), Code::InvalidArgument);
    c.subscribe(ENDPOINT, &["a"]).await;
    let still = c.recv().await;
    assert_eq!(summary(&still), expect(ENDPOINT, &["a"], &[]));
}
