//! Downstream limits on by default (431 for too many or too large headers,
//! header-read and idle timeouts, HTTP/2 stream limit and the rapid-reset
//! guard) and the graceful drain.

mod support;

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Request, StatusCode};
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::{TokioExecutor, TokioIo};
use isthmus_sidecar::server::Limits;
use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// One request on a fresh HTTP/1.1 (or h2c) connection with `headers`.
async fn raw(
    via: SocketAddr,
    http2: bool,
    headers: &[(String, String)],
) -> Result<StatusCode, String> {
    let tcp = tokio::net::TcpStream::connect(via).await.unwrap();
    let mut req = Request::get(format!("http://{HELLO}/"));
    if !http2 {
        req = req.header("host", HELLO);
    }
    for (k, v) in headers {
        req = req.header(k, v);
    }
    let req = req.body(Empty::<Bytes>::new()).unwrap();
    let resp = if http2 {
        let (mut send, conn) =
            hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tcp))
                .await
                .map_err(|e| e.to_string())?;
        tokio::spawn(conn);
        send.send_request(req).await
    } else {
        let (mut send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp))
            .await
            .map_err(|e| e.to_string())?;
        tokio::spawn(conn);
        send.send_request(req).await
    };
    resp.map(|r| r.status()).map_err(|e| format!("{e:?}"))
}

fn many(n: usize, size: usize) -> Vec<(String, String)> {
    (0..n)
        .map(|i| (format!("x-h{i}"), "v".repeat(size)))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn too_many_or_too_large_headers_get_431() {
    let w = World::start(91, "", Behavior::Echo).await;
    let via = w.sleep.outbound();
    for http2 in [false, true] {
        // Under the limit at every hop (each sidecar adds a few headers).
        assert_eq!(
            raw(via, http2, &many(95, 10)).await,
            Ok(StatusCode::OK),
            "h2={http2}"
        );
        assert_eq!(
            raw(via, http2, &many(101, 10)).await,
            Ok(StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE),
            "h2={http2}: 101 headers"
        );
        let big = vec![("x-big".to_string(), "b".repeat(61 * 1024))];
        let r = raw(via, http2, &big).await;
        assert!(
            r == Ok(StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE) || (http2 && r.is_err()),
            "h2={http2}: 61 KiB of headers: {r:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_and_idle_connections_are_closed() {
    let net = 92;
    let mesh = Mesh::start(net, &services(net)).await;
    let mut spec = Spec::new("sleep", "sleep", 21, &[("app", "sleep")]);
    spec.limits = Limits {
        header_read_timeout: Duration::from_millis(300),
        idle_timeout: Duration::from_millis(300),
        ..Limits::default()
    };
    let sleep = mesh.sidecar_with(spec).await;
    let _app = App::start(
        SocketAddr::new(ip(net, 111), 5000),
        "helloworld-v1",
        Behavior::Echo,
    )
    .await;
    let _v1 = mesh
        .sidecar(
            "helloworld-v1",
            "helloworld",
            11,
            &[("app", "helloworld"), ("version", "v1")],
        )
        .await;
    mesh.wait_config(&sleep, |s| {
        s.clusters
            .get("outbound|5000||helloworld.sample.svc.cluster.local")
            .is_some_and(|c| {
                serde_json::to_string(&c.balancer.status())
                    .unwrap()
                    .contains("127.0.92.11")
            })
    })
    .await;

    // Slowloris: half a request head, then nothing.
    let started = Instant::now();
    let mut s = tokio::net::TcpStream::connect(sleep.outbound())
        .await
        .unwrap();
    s.write_all(b"GET / HTTP/1.1\r\nHost: helloworld\r\nX-Slow: ")
        .await
        .unwrap();
    let mut buf = Vec::new();
    let _ = tokio::time::timeout(WAIT, s.read_to_end(&mut buf))
        .await
        .unwrap();
    let waited = started.elapsed();
    assert!(waited < Duration::from_secs(3), "closed after {waited:?}");
    let text = String::from_utf8_lossy(&buf);
    assert!(
        text.is_empty() || text.starts_with("HTTP/1.1 408"),
        "{text}"
    );

    // Idle: a keep-alive connection with nothing in flight is closed.
    let mut s = tokio::net::TcpStream::connect(sleep.outbound())
        .await
        .unwrap();
    s.write_all(b"GET / HTTP/1.1\r\nHost: helloworld.sample.svc.cluster.local:5000\r\n\r\n")
        .await
        .unwrap();
    let mut first = vec![0u8; 4096];
    let n = s.read(&mut first).await.unwrap();
    assert!(
        first[..n].starts_with(b"HTTP/1.1 200"),
        "{}",
        String::from_utf8_lossy(&first[..n])
    );
    let started = Instant::now();
    let mut rest = Vec::new();
    let _ = tokio::time::timeout(WAIT, s.read_to_end(&mut rest))
        .await
        .unwrap();
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "idle connection kept"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http2_stream_limit_and_rapid_reset_guard() {
    let w = World::start(93, "", Behavior::Echo).await;
    let tcp = tokio::net::TcpStream::connect(w.sleep.outbound())
        .await
        .unwrap();
    let (mut send, conn) = h2::client::handshake(tcp).await.unwrap();
    let (done_tx, done) = tokio::sync::oneshot::channel();
    let mut conn = conn;
    let settings = async {
        // One request so the server's SETTINGS have arrived.
        let req = Request::get(format!("http://{HELLO}/")).body(()).unwrap();
        let (resp, _) = send.send_request(req, true).unwrap();
        resp.await.unwrap().status()
    };
    let status = tokio::select! {
        s = settings => s,
        r = &mut conn => panic!("connection ended: {r:?}"),
    };
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        conn.max_concurrent_send_streams(),
        100,
        "advertised stream limit"
    );
    tokio::spawn(async move {
        let _ = done_tx.send(conn.await);
    });

    // Rapid reset: open streams and cancel them at once, far past the guard.
    let hits_before = w.app_v1.hits.load(Ordering::Relaxed) + w.app_v2.hits.load(Ordering::Relaxed);
    let mut refused = false;
    for i in 0..2000 {
        let req = Request::get(format!("http://{HELLO}/r/{i}"))
            .body(())
            .unwrap();
        match send.send_request(req, false) {
            Ok((_, mut stream)) => stream.send_reset(h2::Reason::CANCEL),
            Err(_) => {
                refused = true;
                break;
            }
        }
        if i % 50 == 0 {
            tokio::task::yield_now().await;
        }
    }
    let ended = tokio::time::timeout(WAIT, done)
        .await
        .expect("connection closed")
        .unwrap();
    let err = ended.expect_err("the server ended the connection");
    // GOAWAY(ENHANCE_YOUR_CALM), or the closed socket if the client was still writing.
    assert!(
        err.reason() == Some(h2::Reason::ENHANCE_YOUR_CALM) || err.is_io(),
        "{err:?}"
    );
    // The loop may have ended before the server closed: try once more now.
    if !refused {
        let req = Request::get(format!("http://{HELLO}/after"))
            .body(())
            .unwrap();
        refused = send.send_request(req, false).is_err();
    }
    assert!(
        refused,
        "new streams refused once the connection was closed"
    );
    let hits = w.app_v1.hits.load(Ordering::Relaxed) + w.app_v2.hits.load(Ordering::Relaxed);
    assert!(
        hits - hits_before < 200,
        "{} reset streams reached the apps",
        hits - hits_before
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drain_finishes_in_flight_requests_and_refuses_new_connections() {
    let w = World::start(94, "", Behavior::Echo).await;
    let via = w.sleep.outbound();
    let c = client();
    let in_flight = tokio::spawn({
        let c = c.clone();
        async move { get(&c, via, HELLO, "/delay/800").await }
    });
    tokio::time::sleep(Duration::from_millis(200)).await;
    // POST /drain: the same signal SIGTERM gives.
    let drain = Request::post(format!("http://{}/drain", w.sleep.admin()))
        .body(http_body_util::Full::new(Bytes::new()))
        .unwrap();
    let r = c.request(drain).await.unwrap();
    assert!(r.status().is_success(), "{}", r.status());
    let _ = r.into_body().collect().await;
    // New connections are refused once the listener is closed.
    tokio::time::timeout(WAIT, async {
        while tokio::net::TcpStream::connect(via).await.is_ok() {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .expect("the outbound listener closed");
    // The request that was in flight still gets its answer.
    let r = in_flight.await.unwrap();
    assert_eq!(r.status, StatusCode::OK, "{r:?}");
    assert_eq!(r.json()["path"], "/delay/800");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn circuit_breaking_queues_then_answers_503() {
    let net = 95;
    let app = App::start(SocketAddr::new(ip(net, 131), 8080), "slow", Behavior::Echo).await;
    let yaml = format!(
        r#"
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{name: slow, namespace: sample}}
spec:
  hosts: [slow.example.com]
  location: MESH_EXTERNAL
  resolution: STATIC
  ports: [{{number: 8080, name: http}}]
  endpoints: [{{address: {}}}]
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {{name: slow, namespace: sample}}
spec:
  host: slow.example.com
  trafficPolicy:
    connectionPool: {{tcp: {{maxConnections: 1}}, http: {{http1MaxPendingRequests: 1}}}}
"#,
        app.addr.ip()
    );
    let mesh = Mesh::start(net, &format!("{}\n---\n{yaml}", services(net))).await;
    let sleep = mesh
        .sidecar("sleep", "sleep", 21, &[("app", "sleep")])
        .await;
    let c = client();
    let via = sleep.outbound();
    assert_eq!(
        get(&c, via, "slow.example.com:8080", "/").await.status,
        StatusCode::OK
    );
    // One request on the only connection, one waiting for it, one too many.
    let mut calls = Vec::new();
    for i in 0..3 {
        let c = c.clone();
        calls.push(tokio::spawn(async move {
            get(&c, via, "slow.example.com:8080", &format!("/delay/600?{i}")).await
        }));
        tokio::time::sleep(Duration::from_millis(150)).await;
    }
    let mut results = Vec::new();
    for call in calls {
        results.push(call.await.unwrap());
    }
    let statuses: Vec<u16> = results.iter().map(|r| r.status.as_u16()).collect();
    assert_eq!(statuses, [200, 200, 503], "{results:?}");
    assert_eq!(results[2].headers["x-isthmus-response-flags"], "UO");
}
