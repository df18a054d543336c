//! Traffic through a workload's sidecar: one request (`lab curl`), a
//! fixed-rate load with a report (`lab load`, canary, drills), and small
//! HTTP helpers for readiness and the supervisor's control API.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Request, StatusCode, Uri};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use serde::Serialize;

/// A pooled HTTP/1.1 client.
pub type HttpClient = Client<HttpConnector, Full<Bytes>>;

/// A new client (one per command; it pools connections).
pub fn http_client() -> HttpClient {
    let mut connector = HttpConnector::new();
    connector.set_nodelay(true);
    connector.set_connect_timeout(Some(Duration::from_secs(2)));
    Client::builder(TokioExecutor::new())
        .pool_idle_timeout(Duration::from_secs(30))
        .build(connector)
}

/// Whether `url` answers 200 within a second.
pub async fn ready(url: &str) -> bool {
    let Ok(uri) = url.parse::<Uri>() else {
        return false;
    };
    let c = http_client();
    let req = Request::get(uri).body(Full::new(Bytes::new()));
    let Ok(req) = req else { return false };
    matches!(
        tokio::time::timeout(Duration::from_secs(1), c.request(req)).await,
        Ok(Ok(r)) if r.status() == StatusCode::OK
    )
}

/// `POST http://<control>/<action>?id=<id>` to the supervisor.
pub async fn control(control: &str, action: &str, id: Option<&str>) -> anyhow::Result<String> {
    let q = id
        .map(|i| format!("?id={}", i.replace('/', "%2F")))
        .unwrap_or_default();
    let uri: Uri = format!("http://{control}/{action}{q}").parse()?;
    let req = Request::post(uri).body(Full::new(Bytes::new()))?;
    let resp = tokio::time::timeout(Duration::from_secs(5), http_client().request(req))
        .await
        .map_err(|_| anyhow::anyhow!("the lab supervisor at {control} did not answer"))??;
    let status = resp.status();
    let body = resp.into_body().collect().await?.to_bytes();
    let body = String::from_utf8_lossy(&body).into_owned();
    if !status.is_success() {
        anyhow::bail!("lab supervisor: {}", body.trim());
    }
    Ok(body)
}

/// One answer.
#[derive(Clone, Debug, Serialize)]
pub struct Reply {
    pub status: u16,
    pub headers: BTreeMap<String, String>,
    pub body: String,
    pub latency_ms: f64,
}

impl Reply {
    /// The demo app's JSON answer, if it is one.
    pub fn json(&self) -> Option<serde_json::Value> {
        serde_json::from_str(&self.body).ok()
    }
}

/// Why a request failed.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
pub enum Failure {
    /// An HTTP status that is not 2xx, with the proxy's response flags.
    Status(u16, String),
    /// The sidecar did not accept the connection.
    Connect(String),
    /// No answer in time.
    Timeout,
    /// The connection broke.
    Io(String),
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Failure::Status(s, flags) if flags.is_empty() => write!(f, "HTTP {s}"),
            Failure::Status(s, flags) => write!(f, "HTTP {s} ({flags})"),
            Failure::Connect(e) => write!(f, "connect: {e}"),
            Failure::Timeout => f.write_str("timeout"),
            Failure::Io(e) => write!(f, "connection: {e}"),
        }
    }
}

/// Splits `http://host[:port]/path` into the authority and path.
pub fn target(url: &str) -> anyhow::Result<(String, String)> {
    let uri: Uri = url
        .parse()
        .map_err(|e| anyhow::anyhow!("{url:?} is not a URL: {e}"))?;
    if uri.scheme_str().is_some_and(|s| s != "http") {
        anyhow::bail!("{url:?}: only http:// URLs (the sidecar adds mTLS)");
    }
    let authority = uri
        .authority()
        .ok_or_else(|| anyhow::anyhow!("{url:?}: no host"))?
        .to_string();
    let path = uri
        .path_and_query()
        .map(|p| p.as_str().to_string())
        .unwrap_or_else(|| "/".into());
    Ok((authority, path))
}

/// Sends one GET for `url` through the sidecar outbound listener `via`.
pub async fn send(
    c: &HttpClient,
    via: SocketAddr,
    url: &str,
    timeout: Duration,
) -> Result<Reply, Failure> {
    let (authority, path) = target(url).map_err(|e| Failure::Io(e.to_string()))?;
    let req = Request::get(format!("http://{via}{path}"))
        .header("host", authority)
        .body(Full::new(Bytes::new()))
        .map_err(|e| Failure::Io(e.to_string()))?;
    let started = Instant::now();
    let resp = match tokio::time::timeout(timeout, c.request(req)).await {
        Err(_) => return Err(Failure::Timeout),
        Ok(Err(e)) if e.is_connect() => return Err(Failure::Connect(error_chain(&e))),
        Ok(Err(e)) => return Err(Failure::Io(error_chain(&e))),
        Ok(Ok(r)) => r,
    };
    let status = resp.status().as_u16();
    let headers = resp
        .headers()
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_str().unwrap_or("").to_string()))
        .collect();
    let body = match tokio::time::timeout(timeout, resp.into_body().collect()).await {
        Ok(Ok(b)) => b.to_bytes(),
        Ok(Err(e)) => return Err(Failure::Io(e.to_string())),
        Err(_) => return Err(Failure::Timeout),
    };
    Ok(Reply {
        status,
        headers,
        body: String::from_utf8_lossy(&body).into_owned(),
        latency_ms: started.elapsed().as_secs_f64() * 1000.0,
    })
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut src = e.source();
    while let Some(x) = src {
        s.push_str(": ");
        s.push_str(&x.to_string());
        src = x.source();
    }
    s
}

/// One request's outcome in a load run.
#[derive(Clone, Debug)]
pub struct Sample {
    /// Since the start of the run.
    pub at: Duration,
    pub latency: Duration,
    /// `<cluster>/<version>` of the answering app, or the failure.
    pub outcome: Result<String, Failure>,
}

/// What a load run saw.
#[derive(Clone, Debug, Serialize)]
pub struct LoadReport {
    pub requests: u64,
    pub failed: u64,
    /// Failures by cause (`HTTP 503 (UH)`, `timeout`, …).
    pub failures: BTreeMap<String, u64>,
    /// Successful answers by the app's cluster.
    pub by_cluster: BTreeMap<String, u64>,
    /// Successful answers by `<cluster>/<version>`.
    pub by_version: BTreeMap<String, u64>,
    pub p50_ms: f64,
    pub p90_ms: f64,
    pub p99_ms: f64,
    pub duration_s: f64,
    #[serde(skip)]
    pub samples: Vec<Sample>,
}

/// Sends `rps` requests per second for `duration` (bounded: at most 64 in
/// flight; late requests are not made up), then waits for the stragglers.
pub async fn load(
    via: SocketAddr,
    url: &str,
    rps: u32,
    duration: Duration,
    timeout: Duration,
) -> LoadReport {
    load_while(via, url, rps, duration, timeout, |_| {}).await
}

/// [`load`], calling `progress` with each sample as it completes.
pub async fn load_while(
    via: SocketAddr,
    url: &str,
    rps: u32,
    duration: Duration,
    timeout: Duration,
    mut progress: impl FnMut(&Sample),
) -> LoadReport {
    let c = http_client();
    let rps = rps.clamp(1, 20_000);
    let interval = Duration::from_secs_f64(1.0 / f64::from(rps));
    let total = (duration.as_secs_f64() * f64::from(rps)).ceil() as u64;
    let sem = std::sync::Arc::new(tokio::sync::Semaphore::new(64));
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<Sample>();
    let started = Instant::now();
    let url = url.to_string();
    let sender = tokio::spawn(async move {
        let mut tick = tokio::time::interval(interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
        for _ in 0..total {
            tick.tick().await;
            if started.elapsed() > duration + Duration::from_secs(1) {
                break;
            }
            let Ok(permit) = sem.clone().acquire_owned().await else {
                break;
            };
            let (c, tx, url) = (c.clone(), tx.clone(), url.clone());
            tokio::spawn(async move {
                let at = started.elapsed();
                let t = Instant::now();
                let outcome = match send(&c, via, &url, timeout).await {
                    Ok(r) if (200..300).contains(&r.status) => Ok(r
                        .json()
                        .map(|j| {
                            format!(
                                "{}/{}",
                                j["cluster"].as_str().unwrap_or("?"),
                                j["version"].as_str().unwrap_or("?")
                            )
                        })
                        .unwrap_or_else(|| "?/?".into())),
                    Ok(r) => Err(Failure::Status(
                        r.status,
                        r.headers
                            .get("x-isthmus-response-flags")
                            .cloned()
                            .unwrap_or_default(),
                    )),
                    Err(f) => Err(f),
                };
                let _ = tx.send(Sample {
                    at,
                    latency: t.elapsed(),
                    outcome,
                });
                drop(permit);
            });
        }
    });
    let mut samples = Vec::new();
    while let Some(s) = rx.recv().await {
        progress(&s);
        samples.push(s);
    }
    let _ = sender.await;
    report(samples, started.elapsed())
}

/// Summarises samples.
pub fn report(mut samples: Vec<Sample>, elapsed: Duration) -> LoadReport {
    samples.sort_by_key(|s| s.at);
    let mut failures = BTreeMap::new();
    let mut by_cluster = BTreeMap::new();
    let mut by_version = BTreeMap::new();
    let mut lat: Vec<f64> = Vec::with_capacity(samples.len());
    for s in &samples {
        lat.push(s.latency.as_secs_f64() * 1000.0);
        match &s.outcome {
            Ok(v) => {
                let cluster = v.split('/').next().unwrap_or("?").to_string();
                *by_cluster.entry(cluster).or_insert(0) += 1;
                *by_version.entry(v.clone()).or_insert(0) += 1;
            }
            Err(f) => *failures.entry(f.to_string()).or_insert(0) += 1,
        }
    }
    lat.sort_by(f64::total_cmp);
    let pct = |p: f64| -> f64 {
        if lat.is_empty() {
            return 0.0;
        }
        let i = ((lat.len() as f64 - 1.0) * p).round() as usize;
        (lat[i.min(lat.len() - 1)] * 100.0).round() / 100.0
    };
    LoadReport {
        requests: samples.len() as u64,
        failed: failures.values().sum(),
        failures,
        by_cluster,
        by_version,
        p50_ms: pct(0.5),
        p90_ms: pct(0.9),
        p99_ms: pct(0.99),
        duration_s: (elapsed.as_secs_f64() * 100.0).round() / 100.0,
        samples,
    }
}
