//! Test harness: a real control plane (directory config, bootstrap tokens),
//! real sidecars in explicit mode, real HTTP apps, all on loopback. Each
//! test uses its own 127.0.<n>.0/24 so tests run in parallel.

#![allow(dead_code)]

pub mod certs;
pub mod grpc;

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use isthmus_api::naming::Locality;
use isthmus_control_plane::run::{Options as CpOptions, Source};
use isthmus_proxy_core::xds::{NodeInfo, NodeRole, XdsProtocol};
use isthmus_sidecar::identity::CertSource;
use isthmus_sidecar::run::{Hooks, Mode, Options, Running};
use isthmus_sidecar::server::Limits;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// Every wait is bounded by this.
pub const WAIT: Duration = Duration::from_secs(15);

/// `127.0.<net>.<host>`.
pub fn ip(net: u8, host: u8) -> IpAddr {
    IpAddr::from([127, 0, net, host])
}

/// A config directory, token file and a running control plane.
pub struct Mesh {
    pub net: u8,
    dir: tempfile::TempDir,
    pub config: PathBuf,
    pub xds: SocketAddr,
    pub debug: SocketAddr,
    /// `cacerts` directory of the control plane's CA (None: a dev CA).
    ca_dir: Option<PathBuf>,
    shutdown: CancellationToken,
    task: Option<JoinHandle<()>>,
}

impl Mesh {
    /// Starts a control plane for cluster `east` on 127.0.<net>.1 with `yaml` as config.
    pub async fn start(net: u8, yaml: &str) -> Self {
        Self::start_with_ca(net, yaml, None).await
    }

    /// As [`start`](Self::start), its CA loaded from a `cacerts` directory.
    pub async fn start_with_ca(net: u8, yaml: &str, ca_dir: Option<PathBuf>) -> Self {
        let _ = tracing_subscriber::fmt()
            .with_env_filter(
                tracing_subscriber::EnvFilter::try_from_env("ISTHMUS_LOG")
                    .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
            )
            .with_test_writer()
            .try_init();
        let dir = tempfile::tempdir().unwrap();
        let config = dir.path().join("config");
        std::fs::create_dir(&config).unwrap();
        std::fs::write(config.join("mesh.yaml"), yaml).unwrap();
        let tokens = dir.path().join("tokens.yaml");
        let mut t = String::new();
        for sa in ["sleep", "helloworld", "other"] {
            t.push_str(&format!(
                "tok-{sa}: {{namespace: sample, serviceAccount: {sa}}}\n"
            ));
        }
        std::fs::write(&tokens, t).unwrap();
        let mut mesh = Self {
            net,
            dir,
            config,
            xds: SocketAddr::from(([127, 0, 0, 1], 0)),
            debug: SocketAddr::from(([127, 0, 0, 1], 0)),
            ca_dir,
            shutdown: CancellationToken::new(),
            task: None,
        };
        mesh.start_control_plane(SocketAddr::new(ip(net, 1), 0))
            .await;
        mesh
    }

    async fn start_control_plane(&mut self, listen: SocketAddr) {
        self.shutdown = CancellationToken::new();
        let options = CpOptions {
            cluster: "east".into(),
            network: "net-east".into(),
            domain: "cluster.local".into(),
            source: Source::Directory(self.config.clone()),
            ca_dir: self.ca_dir.clone(),
            ca_secret: None,
            trust_domain: "east.isthmus.local".into(),
            bootstrap_tokens: Some(self.dir.path().join("tokens.yaml")),
            xds_listen: listen,
            debug_listen: SocketAddr::new(ip(self.net, 1), 0),
            drain_grace: Duration::from_millis(200),
        };
        let (bound, run) = isthmus_control_plane::run::start(options, self.shutdown.clone())
            .await
            .unwrap();
        self.xds = bound.xds;
        self.debug = bound.debug;
        self.task = Some(tokio::spawn(async move {
            let _ = run.await;
        }));
    }

    /// Stops the control plane (sidecars keep their last config).
    pub async fn stop_control_plane(&mut self) {
        self.shutdown.cancel();
        if let Some(t) = self.task.take() {
            let _ = tokio::time::timeout(WAIT, t).await;
        }
    }

    /// Starts it again on the same address.
    pub async fn restart_control_plane(&mut self) {
        self.start_control_plane(self.xds).await;
    }

    /// Writes (or replaces) a config file.
    pub fn write(&self, file: &str, yaml: &str) {
        let tmp = self.config.join(format!(".{file}.tmp"));
        std::fs::write(&tmp, yaml).unwrap();
        std::fs::rename(tmp, self.config.join(file)).unwrap();
    }

    /// Starts a sidecar for `sample/<workload>` at 127.0.<net>.<host>, its
    /// app at 127.0.<net>.<host+100>.
    pub async fn sidecar(
        &self,
        workload: &str,
        sa: &str,
        host: u8,
        labels: &[(&str, &str)],
    ) -> Sidecar {
        self.sidecar_with(Spec::new(workload, sa, host, labels))
            .await
    }

    /// Starts a sidecar as `spec` says and waits until it is ready.
    pub async fn sidecar_with(&self, spec: Spec) -> Sidecar {
        let options = self.options(&spec);
        let shutdown = CancellationToken::new();
        let running = isthmus_sidecar::run::start_with(options, shutdown.clone(), spec.hooks)
            .await
            .unwrap();
        tokio::time::timeout(WAIT, running.ready())
            .await
            .expect("sidecar ready in time");
        Sidecar {
            running: Some(running),
            shutdown,
        }
    }

    /// The options of a sidecar started from `spec`.
    pub fn options(&self, spec: &Spec) -> Options {
        let (sa, host) = (spec.sa.as_str(), spec.host);
        let node = NodeInfo {
            role: NodeRole::Sidecar,
            ip: Some(ip(self.net, host)),
            workload: spec.workload.clone(),
            namespace: "sample".into(),
            cluster: "east".into(),
            network: "net-east".into(),
            service_account: sa.into(),
            labels: spec.labels.clone(),
            locality: spec.locality.clone(),
        };
        Options {
            node,
            control_plane: format!("http://{}", self.xds),
            cert: spec.cert.clone().unwrap_or_else(|| CertSource::Ca {
                endpoint: format!("http://{}", self.xds),
                token: format!("tok-{sa}").into(),
                validity: spec.validity,
            }),
            mode: Mode::Explicit {
                outbound: SocketAddr::new(ip(self.net, host), 15001),
                inbound_ip: ip(self.net, host),
                app_ip: Some(ip(self.net, host + 100)),
            },
            admin: SocketAddr::new(ip(self.net, host), 15000),
            drain_grace: spec.drain_grace,
            access_log: false,
            limits: spec.limits,
            workers: spec.workers,
            xds_protocol: spec.xds_protocol,
            release_pages: true,
        }
    }

    /// Waits until `sidecar`'s config satisfies `f`.
    pub async fn wait_config(
        &self,
        sidecar: &Sidecar,
        f: impl Fn(&isthmus_sidecar::state::Snapshot) -> bool,
    ) {
        let proxy = sidecar.running().proxy.clone();
        tokio::time::timeout(WAIT, async {
            loop {
                if f(&proxy.snapshot()) {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
        .await
        .expect("config arrived in time");
    }
}

impl Drop for Mesh {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

/// How to start one sidecar.
pub struct Spec {
    pub workload: String,
    pub sa: String,
    pub host: u8,
    pub labels: BTreeMap<String, String>,
    pub locality: Locality,
    /// `None`: a certificate from the control plane's CA.
    pub cert: Option<CertSource>,
    /// Lifetime asked of the CA.
    pub validity: Option<Duration>,
    pub limits: Limits,
    pub drain_grace: Duration,
    pub hooks: Hooks,
    /// Worker threads owning the connections (`--concurrency`).
    pub workers: usize,
    /// The ADS flavour (the default is incremental).
    pub xds_protocol: XdsProtocol,
}

impl Spec {
    pub fn new(workload: &str, sa: &str, host: u8, labels: &[(&str, &str)]) -> Self {
        Self {
            workload: workload.into(),
            sa: sa.into(),
            host,
            labels: labels
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            locality: Locality::default(),
            cert: None,
            validity: None,
            limits: Limits::default(),
            drain_grace: Duration::from_secs(2),
            hooks: Hooks::default(),
            // As the binary runs by default: connections on two workers.
            workers: 2,
            xds_protocol: XdsProtocol::default(),
        }
    }
}

/// A running sidecar; stopped on drop.
pub struct Sidecar {
    running: Option<Running>,
    shutdown: CancellationToken,
}

impl Sidecar {
    pub fn running(&self) -> &Running {
        self.running.as_ref().unwrap()
    }

    pub fn outbound(&self) -> SocketAddr {
        self.running().outbound
    }

    pub fn admin(&self) -> SocketAddr {
        self.running().admin
    }

    /// Stops and waits for the drain.
    pub async fn stop(mut self) {
        self.shutdown.cancel();
        if let Some(r) = self.running.take() {
            let _ = tokio::time::timeout(WAIT, r.join()).await;
        }
    }
}

impl Drop for Sidecar {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

/// How a test app answers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Behavior {
    /// JSON echo of who answered and what it saw.
    Echo,
    /// Closes every connection without answering.
    Reset,
    /// Accepts connections and never answers.
    Hang,
}

/// A test application; stopped on drop.
pub struct App {
    pub addr: SocketAddr,
    pub hits: Arc<AtomicU64>,
    task: JoinHandle<()>,
}

impl App {
    /// Serves `name` on `addr` (`/status/<code>` answers that code).
    pub async fn start(addr: SocketAddr, name: &str, behavior: Behavior) -> App {
        let listener = TcpListener::bind(addr).await.unwrap();
        let addr = listener.local_addr().unwrap();
        let hits = Arc::new(AtomicU64::new(0));
        let h = hits.clone();
        let name = name.to_string();
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    return;
                };
                h.fetch_add(1, Ordering::Relaxed);
                match behavior {
                    Behavior::Reset => {
                        let _ = socket2::SockRef::from(&stream).set_linger(Some(Duration::ZERO));
                        drop(stream);
                        continue;
                    }
                    Behavior::Hang => {
                        tokio::spawn(async move {
                            let mut stream = stream;
                            let mut buf = [0u8; 1024];
                            while let Ok(n) =
                                tokio::io::AsyncReadExt::read(&mut stream, &mut buf).await
                            {
                                if n == 0 {
                                    return;
                                }
                            }
                        });
                        continue;
                    }
                    Behavior::Echo => {}
                }
                let name = name.clone();
                tokio::spawn(async move {
                    let svc = service_fn(move |req: Request<Incoming>| {
                        let name = name.clone();
                        async move { Ok::<_, Infallible>(echo(&name, req).await) }
                    });
                    let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                        .serve_connection_with_upgrades(TokioIo::new(stream), svc)
                        .await;
                });
            }
        });
        App { addr, hits, task }
    }
}

impl Drop for App {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// A TCP echo server; stopped on drop.
pub struct TcpEcho {
    pub addr: SocketAddr,
    task: JoinHandle<()>,
}

impl TcpEcho {
    pub async fn start(addr: SocketAddr) -> TcpEcho {
        let listener = TcpListener::bind(addr).await.unwrap();
        let addr = listener.local_addr().unwrap();
        let task = tokio::spawn(async move {
            while let Ok((mut stream, _)) = listener.accept().await {
                tokio::spawn(async move {
                    let (mut r, mut w) = stream.split();
                    if tokio::io::copy(&mut r, &mut w).await.is_ok() {
                        let _ = tokio::io::AsyncWriteExt::shutdown(&mut w).await;
                    }
                });
            }
        });
        TcpEcho { addr, task }
    }
}

impl Drop for TcpEcho {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// The echo app: `/status/<code>` answers that code, `/delay/<ms>` answers
/// after that long, an `Upgrade` request switches to an echo of every chunk
/// prefixed with the app's name.
async fn echo(name: &str, mut req: Request<Incoming>) -> Response<Full<Bytes>> {
    if let Some(token) = req.headers().get(http::header::UPGRADE).cloned() {
        let on = hyper::upgrade::on(&mut req);
        let prefix = format!("{name}:");
        tokio::spawn(async move {
            use tokio::io::{AsyncReadExt, AsyncWriteExt};
            let Ok(up) = on.await else { return };
            let mut io = TokioIo::new(up);
            let mut buf = vec![0u8; 4096];
            while let Ok(n) = io.read(&mut buf).await {
                if n == 0 {
                    return;
                }
                let mut out = prefix.clone().into_bytes();
                out.extend_from_slice(&buf[..n]);
                if io.write_all(&out).await.is_err() {
                    return;
                }
            }
        });
        let mut r = Response::new(Full::new(Bytes::new()));
        *r.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
        r.headers_mut().insert(http::header::UPGRADE, token);
        r.headers_mut()
            .insert(http::header::CONNECTION, "upgrade".parse().unwrap());
        return r;
    }
    let path = req.uri().path().to_string();
    if let Some(ms) = path
        .strip_prefix("/delay/")
        .and_then(|ms| ms.parse::<u64>().ok())
    {
        tokio::time::sleep(Duration::from_millis(ms)).await;
    }
    let status = path
        .strip_prefix("/status/")
        .and_then(|c| c.parse::<u16>().ok())
        .and_then(|c| StatusCode::from_u16(c).ok())
        .unwrap_or(StatusCode::OK);
    let headers: BTreeMap<String, String> = req
        .headers()
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_str().unwrap_or("").to_string()))
        .collect();
    let host = req
        .uri()
        .authority()
        .map(|a| a.to_string())
        .or_else(|| headers.get("host").cloned())
        .unwrap_or_default();
    let body = serde_json::json!({
        "app": name,
        "path": req.uri().path_and_query().map(|p| p.to_string()),
        "host": host,
        "version": format!("{:?}", req.version()),
        "headers": headers,
    });
    let mut r = Response::new(Full::new(Bytes::from(body.to_string())));
    *r.status_mut() = status;
    r.headers_mut()
        .insert("x-app", http::HeaderValue::from_str(name).unwrap());
    r
}

/// One HTTP/1.1 response.
#[derive(Debug)]
pub struct Reply {
    pub status: StatusCode,
    pub headers: http::HeaderMap,
    pub body: String,
}

impl Reply {
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.body).unwrap_or(serde_json::Value::Null)
    }

    /// The `app` field of an echo answer.
    pub fn app(&self) -> String {
        self.json()["app"].as_str().unwrap_or("").to_string()
    }
}

/// The tests' HTTP/1.1 client.
pub type Client = hyper_util::client::legacy::Client<
    hyper_util::client::legacy::connect::HttpConnector,
    Full<Bytes>,
>;

/// A pooled HTTP/1.1 client.
pub fn client() -> Client {
    hyper_util::client::legacy::Client::builder(TokioExecutor::new()).build_http()
}

/// GET `http://<host><path>` through the sidecar at `via`.
pub async fn get(c: &Client, via: SocketAddr, host: &str, path: &str) -> Reply {
    send(c, via, "GET", host, path, &[]).await
}

/// `method` `http://<host><path>` with `headers` through the sidecar at `via`.
pub async fn send(
    c: &Client,
    via: SocketAddr,
    method: &str,
    host: &str,
    path: &str,
    headers: &[(&str, &str)],
) -> Reply {
    let mut req = Request::builder()
        .method(method)
        .uri(format!("http://{via}{path}"))
        .header("host", host);
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let req = req.body(Full::new(Bytes::new())).unwrap();
    let resp = tokio::time::timeout(WAIT, c.request(req))
        .await
        .expect("answer in time")
        .expect("request");
    let (parts, body) = resp.into_parts();
    let body = body
        .collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    Reply {
        status: parts.status,
        headers: parts.headers,
        body: String::from_utf8_lossy(&body).into_owned(),
    }
}

/// helloworld (v1 at .11, v2 at .12, port 5000) and sleep (.21) in namespace sample.
pub fn services(net: u8) -> String {
    format!(
        r#"
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{name: helloworld, namespace: sample}}
spec:
  hosts: [helloworld.sample.svc.cluster.local]
  location: MESH_INTERNAL
  resolution: STATIC
  ports: [{{number: 5000, name: http}}]
  workloadSelector: {{labels: {{app: helloworld}}}}
---
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {{name: helloworld-v1, namespace: sample}}
spec: {{address: 127.0.{net}.11, labels: {{app: helloworld, version: v1}}, serviceAccount: helloworld}}
---
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {{name: helloworld-v2, namespace: sample}}
spec: {{address: 127.0.{net}.12, labels: {{app: helloworld, version: v2}}, serviceAccount: helloworld}}
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{name: sleep, namespace: sample}}
spec:
  hosts: [sleep.sample.svc.cluster.local]
  location: MESH_INTERNAL
  resolution: STATIC
  ports: [{{number: 80, name: http}}]
  workloadSelector: {{labels: {{app: sleep}}}}
---
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {{name: sleep, namespace: sample}}
spec: {{address: 127.0.{net}.21, labels: {{app: sleep}}, serviceAccount: sleep}}
"#
    )
}

/// The host callers use.
pub const HELLO: &str = "helloworld.sample.svc.cluster.local:5000";

/// A mesh with helloworld v1/v2 (apps + sidecars) and sleep's sidecar.
pub struct World {
    pub mesh: Mesh,
    pub sleep: Sidecar,
    pub v1: Sidecar,
    pub v2: Sidecar,
    pub app_v1: App,
    pub app_v2: App,
}

impl World {
    pub async fn start(net: u8, extra: &str, v2: Behavior) -> World {
        let yaml = format!("{}\n---\n{extra}", services(net));
        let mesh = Mesh::start(net, &yaml).await;
        let app_v1 = App::start(
            SocketAddr::new(ip(net, 111), 5000),
            "helloworld-v1",
            Behavior::Echo,
        )
        .await;
        let app_v2 = App::start(SocketAddr::new(ip(net, 112), 5000), "helloworld-v2", v2).await;
        let v1 = mesh
            .sidecar(
                "helloworld-v1",
                "helloworld",
                11,
                &[("app", "helloworld"), ("version", "v1")],
            )
            .await;
        let v2 = mesh
            .sidecar(
                "helloworld-v2",
                "helloworld",
                12,
                &[("app", "helloworld"), ("version", "v2")],
            )
            .await;
        let sleep = mesh
            .sidecar("sleep", "sleep", 21, &[("app", "sleep")])
            .await;
        // Inbound listeners up on both helloworld sidecars.
        for s in [&v1, &v2] {
            mesh.wait_config(s, |snap| snap.inbound.contains_key(&5000))
                .await;
        }
        World {
            mesh,
            sleep,
            v1,
            v2,
            app_v1,
            app_v2,
        }
    }
}

/// Steady load on one host through a sidecar: `workers` keep-alive clients
/// each sending GETs back to back, every answer checked; bounded by
/// `max_requests` per worker (and stopped by [`Load::stop`]).
pub struct Load {
    stop: CancellationToken,
    tasks: Vec<JoinHandle<LoadReport>>,
}

/// What a load run saw.
#[derive(Debug, Default)]
pub struct LoadReport {
    pub ok: u64,
    /// The first few failures, as text.
    pub failures: Vec<String>,
    pub failed: u64,
}

impl Load {
    pub fn start(via: SocketAddr, host: &str, workers: usize, max_requests: u64) -> Load {
        let stop = CancellationToken::new();
        let tasks = (0..workers)
            .map(|w| {
                let stop = stop.clone();
                let host = host.to_string();
                tokio::spawn(async move {
                    let c = client();
                    let mut report = LoadReport::default();
                    for i in 0..max_requests {
                        if stop.is_cancelled() {
                            break;
                        }
                        let req = Request::get(format!("http://{via}/load/{w}/{i}"))
                            .header("host", &host)
                            .body(Full::new(Bytes::new()))
                            .unwrap();
                        let outcome = match tokio::time::timeout(WAIT, c.request(req)).await {
                            Ok(Ok(resp)) if resp.status() == StatusCode::OK => {
                                match resp.into_body().collect().await {
                                    Ok(_) => Ok(()),
                                    Err(e) => Err(format!("body: {e}")),
                                }
                            }
                            Ok(Ok(resp)) => Err(format!(
                                "status {} flags {:?}",
                                resp.status(),
                                resp.headers().get("x-isthmus-response-flags")
                            )),
                            Ok(Err(e)) => Err(format!("request: {e:?}")),
                            Err(_) => Err("timeout".into()),
                        };
                        match outcome {
                            Ok(()) => report.ok += 1,
                            Err(e) => {
                                report.failed += 1;
                                if report.failures.len() < 5 {
                                    report.failures.push(e);
                                }
                            }
                        }
                    }
                    report
                })
            })
            .collect();
        Load { stop, tasks }
    }

    /// Stops every worker and sums what they saw.
    pub async fn stop(self) -> LoadReport {
        self.stop.cancel();
        let mut total = LoadReport::default();
        for t in self.tasks {
            let r = t.await.unwrap();
            total.ok += r.ok;
            total.failed += r.failed;
            total.failures.extend(r.failures);
        }
        total
    }
}
