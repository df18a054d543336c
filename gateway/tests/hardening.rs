//! What a hostile or broken client gets: garbage, plain text, oversize and
//! slow ClientHellos are closed (and counted); connection limits hold;
//! a drain lets open connections finish and refuses new ones; the admin
//! endpoints report it all.

mod support;

use std::time::{Duration, Instant};

use support::*;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

async fn env_with(tune: impl FnOnce(&mut isthmus_gateway::Options)) -> (Pki, TlsServer, Env) {
    let pki = Pki::new();
    let hw = TlsServer::start("hw", pki.server()).await;
    let env = Env::start(
        &services(hw.port(), hw.port(), &[], dead_port().await),
        tune,
    )
    .await;
    (pki, hw, env)
}

async fn rejected(env: &Env, reason: &str) -> f64 {
    env.metric(&format!(
        "isthmus_gateway_connections_rejected_total{{service=\"\",reason=\"{reason}\"}}"
    ))
    .await
}

#[tokio::test]
async fn garbage_plain_text_and_oversize_input_is_closed_cleanly() {
    let (pki, _hw, env) = env_with(|_| {}).await;
    let inputs: Vec<(&str, Vec<u8>)> = vec![
        (
            "not_tls",
            b"GET / HTTP/1.1\r\nHost: helloworld\r\n\r\n".to_vec(),
        ),
        (
            "not_tls",
            (0..2000u32).map(|i| (i * 7919 % 251) as u8).collect(),
        ),
        // A handshake header announcing a 20 KiB ClientHello.
        (
            "client_hello_too_large",
            vec![22, 3, 1, 0x40, 0, 1, 0, 0x50, 0],
        ),
        // A ClientHello record with a broken body.
        ("malformed_client_hello", {
            let mut v = vec![22, 3, 1, 0, 8, 1, 0, 0, 4];
            v.extend([3, 3, 0, 0]);
            v
        }),
    ];
    for (reason, input) in &inputs {
        let mut s = TcpStream::connect(env.listen).await.unwrap();
        let _ = s.write_all(input).await;
        assert!(
            closed_within(&mut s, Duration::from_secs(2)).await,
            "{reason}: still open"
        );
    }
    // 17 KiB of well-formed handshake records that never complete the hello.
    let mut s = TcpStream::connect(env.listen).await.unwrap();
    let mut big = vec![22, 3, 1, 0x10, 0, 1, 0, 0x3f, 0];
    big.extend(vec![0u8; 0x1000 - 4]);
    for _ in 0..4 {
        big.extend([22, 3, 1, 0x10, 0]);
        big.extend(vec![0u8; 0x1000]);
    }
    let _ = s.write_all(&big).await;
    assert!(
        closed_within(&mut s, Duration::from_secs(2)).await,
        "oversize: still open"
    );

    assert_eq!(rejected(&env, "not_tls").await, 2.0);
    assert_eq!(rejected(&env, "client_hello_too_large").await, 2.0);
    assert_eq!(rejected(&env, "malformed_client_hello").await, 1.0);
    // The gateway is fine afterwards.
    assert!(call(env.listen, HW_SNI, pki.client()).await.is_ok());
    env.stop().await;
}

#[tokio::test]
async fn a_slow_client_hello_is_timed_out() {
    let (pki, _hw, env) = env_with(|o| o.client_hello_timeout = Duration::from_millis(300)).await;
    let mut s = TcpStream::connect(env.listen).await.unwrap();
    // The first bytes of a real ClientHello, then nothing; then a byte at a
    // time does not extend the deadline.
    s.write_all(&[22, 3, 1, 0, 200, 1]).await.unwrap();
    let started = Instant::now();
    let trickle = async {
        loop {
            tokio::time::sleep(Duration::from_millis(50)).await;
            if s.write_all(&[0]).await.is_err() {
                return;
            }
        }
    };
    let _ = tokio::time::timeout(Duration::from_secs(3), trickle).await;
    let elapsed = started.elapsed();
    assert!(elapsed < Duration::from_secs(2), "closed after {elapsed:?}");
    assert!(closed_within(&mut s, Duration::from_secs(1)).await);
    assert_eq!(rejected(&env, "client_hello_timeout").await, 1.0);
    assert!(call(env.listen, HW_SNI, pki.client()).await.is_ok());
    env.stop().await;
}

#[tokio::test]
async fn the_per_service_limit_closes_the_extra_connection() {
    let (pki, _hw, env) = env_with(|o| o.max_connections_per_service = 1).await;
    let mut first = tls(env.listen, HW_SNI, pki.client()).await.unwrap();
    assert!(ask(&mut first, "one").await.unwrap().ends_with("one"));
    assert!(call(env.listen, HW_SNI, pki.client()).await.is_err());
    let limit = "isthmus_gateway_connections_rejected_total{service=\"outbound|5000||helloworld.sample.svc.cluster.local\",reason=\"service_connection_limit\"}";
    assert_eq!(env.metric(limit).await, 1.0);
    drop(first);
    tokio::time::timeout(WAIT, async {
        while call(env.listen, HW_SNI, pki.client()).await.is_err() {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .expect("a slot frees up when the first connection closes");
    env.stop().await;
}

#[tokio::test]
async fn at_the_global_limit_accepting_pauses_until_a_connection_ends() {
    let (pki, _hw, env) = env_with(|o| o.max_connections = 1).await;
    let mut first = tls(env.listen, HW_SNI, pki.client()).await.unwrap();
    assert!(ask(&mut first, "one").await.is_ok());
    // The second connects (kernel backlog) but is not served yet.
    let listen = env.listen;
    let client = pki.client();
    let second = tokio::spawn(async move { call(listen, HW_SNI, client).await });
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!second.is_finished(), "served beyond the global limit");
    assert!(env.metric("isthmus_gateway_accept_paused_total").await >= 1.0);
    drop(first);
    let answer = tokio::time::timeout(WAIT, second).await.unwrap().unwrap();
    assert!(answer.unwrap().ends_with("ping"));
    env.stop().await;
}

#[tokio::test]
async fn a_drain_finishes_open_connections_and_refuses_new_ones() {
    let (pki, _hw, mut env) = env_with(|_| {}).await;
    let mut open = tls(env.listen, HW_SNI, pki.client()).await.unwrap();
    assert!(ask(&mut open, "before").await.is_ok());
    assert_eq!(http_get(env.admin, "/ready").await.0, 200);

    env.shutdown.cancel();
    tokio::time::timeout(WAIT, async {
        while http_get(env.admin, "/ready").await.0 != 503 {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await
    .expect("not ready while draining");
    assert!(
        TcpStream::connect(env.listen).await.is_err(),
        "the listener is closed"
    );
    // The open connection still works, and ends when its client is done.
    assert!(ask(&mut open, "during").await.unwrap().ends_with("during"));
    let gateway = env.gateway.take().unwrap();
    let stopped = tokio::spawn(gateway.wait());
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(
        !stopped.is_finished(),
        "stopped while a connection was open"
    );
    open.shutdown().await.unwrap();
    drop(open);
    tokio::time::timeout(WAIT, stopped)
        .await
        .expect("stopped after the last connection")
        .unwrap();
}

#[tokio::test]
async fn after_the_grace_period_remaining_connections_are_closed() {
    let (pki, _hw, mut env) = env_with(|o| o.drain_grace = Duration::from_millis(200)).await;
    let mut open = tls(env.listen, HW_SNI, pki.client()).await.unwrap();
    assert!(ask(&mut open, "before").await.is_ok());
    let started = Instant::now();
    env.shutdown.cancel();
    let gateway = env.gateway.take().unwrap();
    tokio::time::timeout(WAIT, gateway.wait())
        .await
        .expect("stopped");
    assert!(started.elapsed() < Duration::from_secs(2));
    assert!(
        ask(&mut open, "after")
            .await
            .map(|a| a.is_empty())
            .unwrap_or(true)
    );
}

#[tokio::test]
async fn the_admin_endpoints_show_config_routes_and_metrics() {
    let (_pki, _hw, env) = env_with(|_| {}).await;
    let (status, dump) = http_get(env.admin, "/config_dump").await;
    assert_eq!(status, 200);
    let dump: serde_json::Value = serde_json::from_str(&dump).unwrap();
    assert_eq!(dump["listeners"][0]["name"], "0.0.0.0_15443");
    assert!(dump.to_string().contains(HW_SNI));
    assert!(
        !dump.to_string().contains("secret-db"),
        "unexported services are not in the gateway config"
    );
    let (status, routes) = http_get(env.admin, "/routes").await;
    assert_eq!(status, 200);
    assert!(
        routes.contains(V1_SNI) && !routes.contains("secret-db"),
        "{routes}"
    );
    let (status, metrics) = http_get(env.admin, "/metrics").await;
    assert_eq!(status, 200);
    assert!(
        metrics.contains("isthmus_gateway_client_hello_duration_seconds"),
        "{metrics}"
    );
    for line in ["isthmus_xds_connected 1", "isthmus_xds_incremental 1"] {
        assert!(metrics.lines().any(|l| l == line), "{line}\n{metrics}");
    }
    env.stop().await;
}
