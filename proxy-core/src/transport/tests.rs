use std::sync::Mutex;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt, duplex};
use tokio::net::{TcpListener, TcpStream};

use super::*;

/// Sums what the splice reports.
#[derive(Default)]
struct Sums(Mutex<(u64, u64)>);

impl Transfer for Sums {
    fn transferred(&self, direction: Direction, bytes: u64) {
        let mut s = self.0.lock().unwrap();
        match direction {
            Direction::ToUpstream => s.0 += bytes,
            Direction::ToDownstream => s.1 += bytes,
        }
    }
}

fn config(buffer_size: usize, idle: Option<Duration>) -> SpliceConfig {
    SpliceConfig {
        buffer_size,
        idle_timeout: idle,
    }
}

/// A connected loopback TCP pair.
async fn tcp_pair() -> (TcpStream, TcpStream) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let client = TcpStream::connect(listener.local_addr().unwrap());
    let (client, accepted) = tokio::join!(client, listener.accept());
    (client.unwrap(), accepted.unwrap().0)
}

#[tokio::test]
async fn copies_both_ways_through_small_buffers_and_counts() {
    let (mut client, mut down) = duplex(64);
    let (mut up, mut server) = duplex(64);
    let sums = Sums::default();
    let request: Vec<u8> = (0..100_000u32).map(|i| i as u8).collect();
    let response = vec![7u8; 50_000];
    let config = config(100, None);
    let splice = splice(&mut down, &mut up, &config, &sums);
    let client_side = async {
        client.write_all(&request).await.unwrap();
        client.shutdown().await.unwrap();
        let mut got = Vec::new();
        client.read_to_end(&mut got).await.unwrap();
        got
    };
    let server_side = async {
        let mut got = Vec::new();
        server.read_to_end(&mut got).await.unwrap();
        server.write_all(&response).await.unwrap();
        server.shutdown().await.unwrap();
        got
    };
    let (stats, got_response, got_request) = tokio::join!(splice, client_side, server_side);
    let stats = stats.unwrap();
    assert_eq!(got_request, request);
    assert_eq!(got_response, response);
    assert_eq!(
        (stats.to_upstream, stats.to_downstream, stats.end),
        (100_000, 50_000, SpliceEnd::Closed)
    );
    assert_eq!(*sums.0.lock().unwrap(), (100_000, 50_000));
}

#[tokio::test]
async fn a_half_close_is_passed_on_and_the_other_direction_keeps_flowing() {
    let (mut client, mut down) = tcp_pair().await;
    let (mut up, mut server) = tcp_pair().await;
    let proxy =
        tokio::spawn(
            async move { splice(&mut down, &mut up, &SpliceConfig::default(), &()).await },
        );
    client.write_all(b"request").await.unwrap();
    client.shutdown().await.unwrap();
    // The server sees the request, then EOF, while it can still answer.
    let mut got = Vec::new();
    server.read_to_end(&mut got).await.unwrap();
    assert_eq!(got, b"request");
    for _ in 0..3 {
        server.write_all(b"part ").await.unwrap();
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    drop(server);
    let mut answer = Vec::new();
    client.read_to_end(&mut answer).await.unwrap();
    assert_eq!(answer, b"part part part ");
    let stats = proxy.await.unwrap().unwrap();
    assert_eq!((stats.to_upstream, stats.to_downstream), (7, 15));
    assert_eq!(stats.end, SpliceEnd::Closed);
}

#[tokio::test(start_paused = true)]
async fn an_idle_connection_ends_after_the_timeout_and_traffic_postpones_it() {
    let (mut client, mut down) = duplex(1024);
    let (mut up, mut server) = duplex(1024);
    let idle = Duration::from_secs(10);
    let start = tokio::time::Instant::now();
    let config = config(1024, Some(idle));
    let splice = splice(&mut down, &mut up, &config, &());
    let traffic = async {
        // Something moves at 6 s: the timeout is counted from there.
        tokio::time::sleep(Duration::from_secs(6)).await;
        client.write_all(b"x").await.unwrap();
        let mut b = [0u8; 1];
        server.read_exact(&mut b).await.unwrap();
    };
    let (stats, ()) = tokio::join!(splice, traffic);
    let stats = stats.unwrap();
    assert_eq!(stats.end, SpliceEnd::IdleTimeout);
    assert_eq!(stats.to_upstream, 1);
    let elapsed = start.elapsed();
    assert!(
        elapsed >= Duration::from_secs(16) && elapsed < Duration::from_secs(17),
        "{elapsed:?}"
    );
}

#[tokio::test]
async fn a_reset_upstream_is_an_error_naming_the_upstream() {
    let (mut client, mut down) = tcp_pair().await;
    let (mut up, server) = tcp_pair().await;
    // Linger 0: closing sends a RST instead of a FIN.
    server.set_zero_linger().unwrap();
    let proxy =
        tokio::spawn(
            async move { splice(&mut down, &mut up, &SpliceConfig::default(), &()).await },
        );
    client.write_all(b"hello").await.unwrap();
    drop(server);
    let err = tokio::time::timeout(Duration::from_secs(5), proxy)
        .await
        .expect("splice ends")
        .unwrap()
        .unwrap_err();
    assert_eq!(err.side, "upstream", "{err}");
}
