use crate::config::Encoded;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use envoy_types::pb::envoy::config::cluster::v3::Cluster;
use envoy_types::pb::envoy::config::core::v3::{DataSource, data_source::Specifier};
use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::{
    Secret, TlsCertificate, secret,
};
use http::StatusCode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::registry::Registry;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use super::*;
use crate::ResourceType;

/// One HTTP/1.1 request over a fresh connection: (status, body).
async fn request(addr: SocketAddr, method: &str, path: &str) -> (u16, String) {
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    let req = format!(
        "{method} {path} HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
    );
    s.write_all(req.as_bytes()).await.unwrap();
    let mut buf = String::new();
    s.read_to_string(&mut buf).await.unwrap();
    let status = buf.split_whitespace().nth(1).unwrap().parse().unwrap();
    let body = buf
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    (status, body)
}

fn sample_config() -> ProxyConfig {
    let mut config = ProxyConfig::default();
    config.clusters.insert(
        "outbound|5000||a".into(),
        Encoded::from(Cluster {
            name: "outbound|5000||a".into(),
            ..Cluster::default()
        }),
    );
    config.secrets.insert(
        "key".into(),
        Encoded::from(Secret {
            name: "key".into(),
            r#type: Some(secret::Type::TlsCertificate(TlsCertificate {
                private_key: Some(DataSource {
                    specifier: Some(Specifier::InlineString("SECRET-KEY".into())),
                    ..DataSource::default()
                }),
                ..TlsCertificate::default()
            })),
        }),
    );
    config.versions.insert(ResourceType::Cluster, "v7".into());
    config
}

#[tokio::test]
async fn serves_ready_metrics_config_dump_drain_and_extra_routes() {
    let mut registry = Registry::default();
    let hits = Counter::<u64>::default();
    registry.register("test_hits", "Hits", hits.clone());
    hits.inc_by(3);
    let (_config_tx, config_rx) = watch::channel(Arc::new(sample_config()));
    let synced = Arc::new(AtomicBool::new(false));
    let drain = CancellationToken::new();
    let server = AdminServer::builder()
        .metrics(Arc::new(registry))
        .config(config_rx)
        .ready({
            let synced = synced.clone();
            move || synced.load(Ordering::Relaxed)
        })
        .drain(drain.clone())
        .route("/clusters", |req| {
            text(StatusCode::OK, format!("clusters via {}\n", req.method()))
        })
        .build();
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let shutdown = CancellationToken::new();
    let thread = server.spawn_dedicated(listener, shutdown.clone()).unwrap();

    assert_eq!(
        request(addr, "GET", "/ready").await,
        (503, "not ready\n".into())
    );
    synced.store(true, Ordering::Relaxed);
    assert_eq!(
        request(addr, "GET", "/ready").await,
        (200, "ready\n".into())
    );

    let (status, metrics) = request(addr, "GET", "/metrics").await;
    assert_eq!(status, 200);
    assert!(metrics.contains("test_hits_total 3"), "{metrics}");

    let (status, dump) = request(addr, "GET", "/config_dump").await;
    assert_eq!(status, 200);
    let dump: serde_json::Value = serde_json::from_str(&dump).unwrap();
    assert_eq!(dump["clusters"][0]["name"], "outbound|5000||a");
    assert_eq!(
        dump["clusters"][0]["@type"],
        "type.googleapis.com/envoy.config.cluster.v3.Cluster"
    );
    assert_eq!(dump["versions"]["Cluster"], "v7");
    assert!(!dump.to_string().contains("SECRET-KEY"), "{dump}");
    assert_eq!(
        dump["secrets"][0]["tlsCertificate"]["privateKey"],
        "[redacted]"
    );

    assert_eq!(
        request(addr, "GET", "/clusters").await,
        (200, "clusters via GET\n".into())
    );
    assert_eq!(request(addr, "GET", "/nope").await.0, 404);
    assert!(request(addr, "GET", "/").await.1.contains("/clusters"));

    assert_eq!(request(addr, "GET", "/drain").await.0, 405);
    assert!(!drain.is_cancelled());
    assert_eq!(request(addr, "POST", "/drain").await.0, 200);
    assert!(drain.is_cancelled());
    assert_eq!(
        request(addr, "GET", "/ready").await,
        (503, "draining\n".into())
    );

    shutdown.cancel();
    tokio::task::spawn_blocking(move || thread.join().unwrap())
        .await
        .unwrap();
    // The port is closed once the server stopped.
    let refused =
        tokio::time::timeout(Duration::from_secs(1), tokio::net::TcpStream::connect(addr)).await;
    assert!(matches!(refused, Ok(Err(_))), "{refused:?}");
}

#[test]
fn paths_without_a_backing_part_are_not_found() {
    let server = AdminServer::builder().build();
    let get = |p: &str| {
        server
            .handle(&http::Request::get(p).body(Bytes::new()).unwrap())
            .status()
    };
    assert_eq!(get("/ready"), StatusCode::OK);
    assert_eq!(get("/metrics"), StatusCode::NOT_FOUND);
    assert_eq!(get("/config_dump"), StatusCode::NOT_FOUND);
    assert_eq!(get("/drain"), StatusCode::NOT_FOUND);
}
