//! The reconnect loop on paused time: exponential backoff with full jitter
//! between attempts, a bound on each attempt, a clean stop.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use envoy_types::pb::envoy::config::core::v3::Node;
use futures::future::BoxFuture;
use isthmus_proxy_core::xds::{ConnectError, Connector, XdsClient, XdsError, XdsOptions};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tonic::transport::Channel;

/// A control plane that is never there: every attempt is recorded, then
/// fails at once (`hang: false`) or never completes (`hang: true`).
struct Unreachable {
    attempts: Arc<Mutex<Vec<Instant>>>,
    hang: bool,
}

impl Connector for Unreachable {
    fn connect(&self) -> BoxFuture<'static, Result<Channel, ConnectError>> {
        self.attempts.lock().unwrap().push(Instant::now());
        let hang = self.hang;
        Box::pin(async move {
            if hang {
                std::future::pending::<()>().await;
            }
            Err("connection refused".into())
        })
    }

    fn target(&self) -> String {
        "unreachable".into()
    }
}

fn spawn(
    hang: bool,
    options: XdsOptions,
    shutdown: &CancellationToken,
) -> (XdsClient, Arc<Mutex<Vec<Instant>>>) {
    let attempts = Arc::new(Mutex::new(Vec::new()));
    let connector = Unreachable {
        attempts: attempts.clone(),
        hang,
    };
    (
        XdsClient::spawn(options, connector, shutdown.clone()),
        attempts,
    )
}

#[tokio::test(start_paused = true)]
async fn retries_back_off_exponentially_with_jitter() {
    let shutdown = CancellationToken::new();
    // Defaults: 100 ms doubling to 15 s.
    let (client, attempts) = spawn(false, XdsOptions::new(Node::default()), &shutdown);
    tokio::time::sleep(Duration::from_secs(120)).await;

    let times = attempts.lock().unwrap().clone();
    let mut cap = Duration::from_millis(100);
    let mut gaps = Vec::new();
    for pair in times.windows(2) {
        let gap = pair[1] - pair[0];
        assert!(gap <= cap, "delay {gap:?} above its cap {cap:?}");
        gaps.push(gap);
        cap = (cap * 2).min(Duration::from_secs(15));
    }
    // The caps of the first 11 delays add up to 70.5 s.
    assert!(times.len() >= 12, "{} attempts in 120 s", times.len());
    // Jittered: not all delays are their cap.
    assert!(gaps.iter().any(|g| *g < Duration::from_secs(7)) && gaps.len() > 8);
    let stats = client.stats();
    assert_eq!(stats.reconnects as usize, times.len() - 1);
    assert!(!stats.connected);
    assert!(!client.is_ready());
    assert_eq!(*client.current(), Default::default());

    // Shutdown interrupts the backoff sleep; a waiter for readiness is told.
    shutdown.cancel();
    let ready = client.ready();
    assert!(matches!(
        tokio::time::timeout(Duration::from_millis(10), ready).await,
        Ok(Err(XdsError::Stopped))
    ));
    tokio::time::timeout(Duration::from_millis(10), client.join())
        .await
        .expect("stops at once");
}

#[tokio::test(start_paused = true)]
async fn a_hanging_connection_attempt_times_out() {
    let shutdown = CancellationToken::new();
    let mut options = XdsOptions::new(Node::default());
    options.connect_timeout = Duration::from_secs(2);
    let (client, attempts) = spawn(true, options, &shutdown);
    tokio::time::sleep(Duration::from_secs(10)).await;
    // 2 s per attempt plus delays of at most 0.1, 0.2, 0.4, 0.8 s.
    let n = attempts.lock().unwrap().len();
    assert!(n >= 4, "{n} attempts");
    assert!(n <= 5, "{n} attempts");
    shutdown.cancel();
    tokio::time::timeout(Duration::from_millis(10), client.join())
        .await
        .expect("stops at once");
}
