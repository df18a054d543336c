//! Real rustls clients (a west workload) ↔ the gateway ↔ real rustls
//! servers (east workloads), with the gateway's config from a real control
//! plane: mTLS stays end to end, only exported services are reachable,
//! subsets and dead endpoints are handled, fragmented ClientHellos route.

mod support;

use std::time::Duration;

use isthmus_gateway::Bulk;
use isthmus_gateway::run::{DEFAULT_BULK_BUFFER, DEFAULT_PIPE_SIZE};
use support::*;
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};

#[tokio::test]
async fn mtls_passes_through_untouched_and_the_server_sees_the_callers_identity() {
    let pki = Pki::new();
    let v1 = TlsServer::start("v1", pki.server()).await;
    let v2 = TlsServer::start("v2", pki.server()).await;
    let env = Env::start(
        &services(v1.port(), v2.port(), &[], dead_port().await),
        |_| {},
    )
    .await;

    // The client checks the server's SPIFFE ID (helloworld in east): the
    // gateway, which has no certificate at all, cannot be in the middle.
    let answer = call(env.listen, HW_SNI, pki.client()).await.unwrap();
    let (server, rest) = answer.split_once(' ').unwrap();
    assert!(server == "v1" || server == "v2", "{answer}");
    assert_eq!(rest, format!("{SLEEP_ID} ping"));

    // Several round trips on one connection, then a clean close.
    let mut conn = tls(env.listen, HW_SNI, pki.client()).await.unwrap();
    for i in 0..5 {
        let a = ask(&mut conn, &format!("line {i}")).await.unwrap();
        assert!(a.ends_with(&format!("{SLEEP_ID} line {i}")), "{a}");
    }
    conn.shutdown().await.unwrap();
    drop(conn);

    tokio::time::timeout(WAIT, async {
        while env
            .metric("isthmus_gateway_connections_closed_total{")
            .await
            < 2.0
        {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .expect("both connections counted as closed");
    let service = "service=\"outbound|5000||helloworld.sample.svc.cluster.local\"";
    assert_eq!(
        env.metric(&format!(
            "isthmus_gateway_connections_opened_total{{{service}"
        ))
        .await,
        2.0
    );
    assert!(
        env.metric(&format!("isthmus_gateway_received_bytes_total{{{service}"))
            .await
            > 500.0
    );
    assert!(
        env.metric(&format!("isthmus_gateway_sent_bytes_total{{{service}"))
            .await
            > 500.0
    );
    assert!(
        env.metric("isthmus_gateway_client_hello_duration_seconds_count")
            .await
            >= 2.0
    );
    env.stop().await;
}

#[tokio::test]
async fn the_replayed_bytes_are_exactly_what_the_client_sent() {
    // Bytes read with the ClientHello are replayed, the rest is spliced:
    // with splice(2) and with the copy, every byte arrives once, in order.
    for bulk in [
        Bulk::Splice(DEFAULT_PIPE_SIZE),
        Bulk::Copy(DEFAULT_BULK_BUFFER),
    ] {
        // A raw recording server behind the gateway: every byte, unchanged.
        let recorder = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = recorder.local_addr().unwrap().port();
        let services = services(port, port, &[], dead_port().await);
        let env = Env::start(&services, |o| o.bulk = bulk).await;
        let hello = raw_client_hello(HW_SNI);
        let mut first = hello.clone();
        first.extend(b"and then some");
        let later = b" application bytes, sent after the hello was routed";
        let mut client = TcpStream::connect(env.listen).await.unwrap();
        client.write_all(&first).await.unwrap();
        let (mut upstream, _) = tokio::time::timeout(WAIT, recorder.accept())
            .await
            .unwrap()
            .unwrap();
        client.write_all(later).await.unwrap();
        client.shutdown().await.unwrap();
        let mut got = Vec::new();
        tokio::time::timeout(
            WAIT,
            tokio::io::AsyncReadExt::read_to_end(&mut upstream, &mut got),
        )
        .await
        .unwrap()
        .unwrap();
        assert_eq!(got, [&first[..], later].concat(), "{bulk:?}");
        drop(upstream);
        env.stop().await;
    }
}

/// The first flight of a rustls client for `sni`.
fn raw_client_hello(sni: &str) -> Vec<u8> {
    let config = Pki::new().client();
    let name = rustls::pki_types::ServerName::try_from(sni.to_string()).unwrap();
    let mut conn = rustls::ClientConnection::new(config, name).unwrap();
    let mut out = Vec::new();
    conn.write_tls(&mut out).unwrap();
    out
}

#[tokio::test]
async fn an_unexported_or_unknown_sni_is_refused() {
    let pki = Pki::new();
    let hw = TlsServer::start("hw", pki.server()).await;
    let db = TlsServer::start("db", pki.server()).await;
    let env = Env::start(&services(hw.port(), hw.port(), &[], db.port()), |_| {}).await;

    for sni in [
        DB_SNI,
        "secret-db.sample.svc.cluster.local",
        "outbound_.5000_.v3_.helloworld.sample.svc.cluster.local",
        "outbound_.5001_._.helloworld.sample.svc.cluster.local",
        "helloworld.sample.svc.cluster.local",
    ] {
        let result = call(env.listen, sni, pki.client()).await;
        assert!(result.is_err(), "{sni}: {result:?}");
    }
    assert!(
        db.clients.lock().unwrap().is_empty(),
        "nothing reached secret-db"
    );
    assert_eq!(
        env.metric(
            "isthmus_gateway_connections_rejected_total{service=\"\",reason=\"unknown_sni\"}"
        )
        .await,
        5.0
    );
    // The exported one still works.
    assert!(call(env.listen, HW_SNI, pki.client()).await.is_ok());
    env.stop().await;
}

#[tokio::test]
async fn the_subset_in_the_sni_selects_the_endpoints() {
    let pki = Pki::new();
    let v1 = TlsServer::start("v1", pki.server()).await;
    let v2 = TlsServer::start("v2", pki.server()).await;
    let env = Env::start(
        &services(v1.port(), v2.port(), &[], dead_port().await),
        |_| {},
    )
    .await;
    env.wait_routes(V1_SNI).await;
    env.wait_routes(V2_SNI).await;
    for _ in 0..4 {
        assert!(
            call(env.listen, V1_SNI, pki.client())
                .await
                .unwrap()
                .starts_with("v1 ")
        );
        assert!(
            call(env.listen, V2_SNI, pki.client())
                .await
                .unwrap()
                .starts_with("v2 ")
        );
    }
    // Without a subset: both.
    let mut seen = std::collections::BTreeSet::new();
    for _ in 0..8 {
        let a = call(env.listen, HW_SNI, pki.client()).await.unwrap();
        seen.insert(a.split(' ').next().unwrap().to_string());
    }
    assert_eq!(seen.len(), 2, "{seen:?}");
    env.stop().await;
}

#[tokio::test]
async fn a_dead_endpoint_is_skipped_before_any_byte_is_sent() {
    let pki = Pki::new();
    let live = TlsServer::start("live", pki.server()).await;
    let dead = [dead_port().await, dead_port().await];
    let env = Env::start(
        &services(live.port(), live.port(), &dead, dead_port().await),
        |_| {},
    )
    .await;
    env.wait_routes(V1_SNI).await;
    // v1 has one live and two dead endpoints: every call lands on the live
    // one, and outlier detection ejects the dead ones after two connect
    // failures in a row (how soon depends on the random least-request picks).
    let dead: Vec<String> = dead.iter().map(|p| format!("\"127.0.0.1:{p}\"")).collect();
    let mut ejected = Vec::new();
    for _ in 0..100 {
        let a = call(env.listen, V1_SNI, pki.client()).await.unwrap();
        assert!(a.starts_with("live "), "{a}");
        let (_, routes) = http_get(env.admin, "/routes").await;
        let routes: serde_json::Value = serde_json::from_str(&routes).unwrap();
        let v1 = &routes["services"]["outbound|5000|v1|helloworld.sample.svc.cluster.local"];
        ejected = v1["balancer"]["endpoints"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|e| e["outlier"]["ejection_count"].as_u64() > Some(0))
            .map(|e| e["address"].to_string())
            .collect();
        if ejected.len() == 2 {
            break;
        }
    }
    ejected.sort();
    let mut expected = dead.clone();
    expected.sort();
    assert_eq!(ejected, expected);
    assert_eq!(
        env.metric("isthmus_gateway_connections_rejected_total")
            .await,
        0.0
    );
    env.stop().await;
}

#[tokio::test]
async fn a_client_hello_fragmented_across_records_and_segments_is_routed() {
    let pki = Pki::new();
    let v1 = TlsServer::start("v1", pki.server()).await;
    let env = Env::start(
        &services(v1.port(), v1.port(), &[], dead_port().await),
        |_| {},
    )
    .await;
    env.wait_routes(V1_SNI).await;
    // Records of at most 32 bytes (rustls' minimum), sent 50 bytes per TCP
    // write with 20 ms pauses.
    let mut config = (*pki.client()).clone();
    config.max_fragment_size = Some(32);
    let tcp = TcpStream::connect(env.listen).await.unwrap();
    tcp.set_nodelay(true).unwrap();
    let trickle = Trickle::new(tcp, 50, Duration::from_millis(20), 4096);
    let mut conn =
        tokio::time::timeout(WAIT, tls_over(trickle, V1_SNI, std::sync::Arc::new(config)))
            .await
            .unwrap()
            .unwrap();
    let a = tokio::time::timeout(WAIT, ask(&mut conn, "fragmented"))
        .await
        .expect("answer in time")
        .unwrap();
    assert_eq!(a, format!("v1 {SLEEP_ID} fragmented"));
    drop(conn);
    env.stop().await;
}
