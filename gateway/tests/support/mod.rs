//! Test harness: a shared root with east and west intermediates, real
//! rustls mTLS servers (east workloads) and clients (a west workload), a
//! real control plane from a directory config, and the gateway started as
//! `isthmus gateway` starts it.

#![allow(dead_code)]

use std::net::SocketAddr;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, ready};
use std::time::Duration;

use isthmus_control_plane::run::{Options as CpOptions, Source};
use isthmus_gateway::run::gateway_node;
use isthmus_gateway::{ConfigSource, Options, Running};
use isthmus_identity::tls::{WorkloadCert, client_config, server_config};
use isthmus_identity::tool::{create_intermediate, create_root};
use isthmus_identity::{ClusterCa, SpiffeId, TrustBundle, peer_identity};
use rustls::pki_types::ServerName;
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;
use tokio::time::Sleep;
use tokio_rustls::{TlsAcceptor, TlsConnector};
use tokio_util::sync::CancellationToken;

/// Every wait is bounded by this.
pub const WAIT: Duration = Duration::from_secs(10);

pub const HW_SNI: &str = "outbound_.5000_._.helloworld.sample.svc.cluster.local";
pub const V1_SNI: &str = "outbound_.5000_.v1_.helloworld.sample.svc.cluster.local";
pub const V2_SNI: &str = "outbound_.5000_.v2_.helloworld.sample.svc.cluster.local";
pub const DB_SNI: &str = "outbound_.5432_._.secret-db.sample.svc.cluster.local";
pub const SLEEP_ID: &str = "spiffe://west.isthmus.local/ns/sample/sa/sleep";

/// One root; east (where the gateway runs) and west (the caller) intermediates.
pub struct Pki {
    pub bundle: TrustBundle,
    pub east: ClusterCa,
    pub west: ClusterCa,
}

impl Pki {
    pub fn new() -> Self {
        let root = create_root("gateway test root").unwrap();
        let bundle = root.trust_bundle().unwrap();
        let east = create_intermediate(&root, "east", "east.isthmus.local").unwrap();
        let west = create_intermediate(&root, "west", "west.isthmus.local").unwrap();
        Self {
            east: east.cluster_ca(&bundle).unwrap(),
            west: west.cluster_ca(&bundle).unwrap(),
            bundle,
        }
    }

    fn cert(ca: &ClusterCa, td: &str, sa: &str) -> WorkloadCert {
        let id = SpiffeId::new(td, "sample", sa).unwrap();
        WorkloadCert::from(&ca.issue_key_and_cert(&id, None).unwrap())
    }

    /// West's sleep calling east's helloworld (whose identity it checks).
    pub fn client(&self) -> Arc<rustls::ClientConfig> {
        let cert = Self::cert(&self.west, "west.isthmus.local", "sleep");
        let expected = SpiffeId::new("east.isthmus.local", "sample", "helloworld").unwrap();
        Arc::new(client_config(&cert, &self.bundle, [expected]).unwrap())
    }

    /// East's helloworld, requiring a client certificate under the root.
    pub fn server(&self) -> Arc<rustls::ServerConfig> {
        let cert = Self::cert(&self.east, "east.isthmus.local", "helloworld");
        Arc::new(server_config(&cert, &self.bundle).unwrap())
    }
}

/// An mTLS echo server: answers each line with `<name> <client SPIFFE ID> <line>`.
pub struct TlsServer {
    pub addr: SocketAddr,
    pub name: &'static str,
    /// Client identities seen, one per handshake.
    pub clients: Arc<Mutex<Vec<String>>>,
    task: JoinHandle<()>,
}

impl TlsServer {
    pub async fn start(name: &'static str, config: Arc<rustls::ServerConfig>) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let clients = Arc::new(Mutex::new(Vec::new()));
        let seen = clients.clone();
        let task = tokio::spawn(async move {
            let acceptor = TlsAcceptor::from(config);
            loop {
                let Ok((tcp, _)) = listener.accept().await else {
                    return;
                };
                let acceptor = acceptor.clone();
                let seen = seen.clone();
                tokio::spawn(async move {
                    let Ok(tls) = acceptor.accept(tcp).await else {
                        return;
                    };
                    let id = peer_identity(&tls.get_ref().1.peer_certificates().unwrap()[0])
                        .unwrap()
                        .to_string();
                    seen.lock().unwrap().push(id.clone());
                    let (r, mut w) = tokio::io::split(tls);
                    let mut lines = BufReader::new(r).lines();
                    while let Ok(Some(line)) = lines.next_line().await {
                        let answer = format!("{name} {id} {line}\n");
                        if w.write_all(answer.as_bytes()).await.is_err() {
                            return;
                        }
                    }
                    let _ = w.shutdown().await;
                });
            }
        });
        Self {
            addr,
            name,
            clients,
            task,
        }
    }

    pub fn port(&self) -> u16 {
        self.addr.port()
    }
}

impl Drop for TlsServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// A port on 127.0.0.1 where nothing listens.
pub async fn dead_port() -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    l.local_addr().unwrap().port()
}

/// The east config: helloworld (exported, subsets v1/v2 at the given
/// ports, plus `extra` endpoints in v1) and secret-db (not exported).
pub fn services(v1: u16, v2: u16, extra_v1: &[u16], db: u16) -> String {
    let mut out = format!(
        r#"
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{name: helloworld, namespace: sample}}
spec:
  hosts: [helloworld.sample.svc.cluster.local]
  location: MESH_INTERNAL
  resolution: STATIC
  ports: [{{number: 5000, name: tls, protocol: TLS}}]
  workloadSelector: {{labels: {{app: helloworld}}}}
---
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {{name: hw-v1, namespace: sample}}
spec: {{address: 127.0.0.1, ports: {{tls: {v1}}}, labels: {{app: helloworld, version: v1}}, serviceAccount: helloworld}}
---
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {{name: hw-v2, namespace: sample}}
spec: {{address: 127.0.0.1, ports: {{tls: {v2}}}, labels: {{app: helloworld, version: v2}}, serviceAccount: helloworld}}
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {{name: helloworld, namespace: sample}}
spec:
  host: helloworld.sample.svc.cluster.local
  subsets: [{{name: v1, labels: {{version: v1}}}}, {{name: v2, labels: {{version: v2}}}}]
---
apiVersion: multicluster.x-k8s.io/v1alpha1
kind: ServiceExport
metadata: {{name: helloworld, namespace: sample}}
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{name: secret-db, namespace: sample}}
spec:
  hosts: [secret-db.sample.svc.cluster.local]
  location: MESH_INTERNAL
  resolution: STATIC
  ports: [{{number: 5432, name: tls, protocol: TLS}}]
  workloadSelector: {{labels: {{app: secret-db}}}}
---
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {{name: db, namespace: sample}}
spec: {{address: 127.0.0.1, ports: {{tls: {db}}}, labels: {{app: secret-db}}, serviceAccount: db}}
"#
    );
    for (i, port) in extra_v1.iter().enumerate() {
        out.push_str(&format!(
            "---\napiVersion: networking.istio.io/v1\nkind: WorkloadEntry\nmetadata: {{name: hw-extra-{i}, namespace: sample}}\nspec: {{address: 127.0.0.1, ports: {{tls: {port}}}, labels: {{app: helloworld, version: v1}}, serviceAccount: helloworld}}\n"
        ));
    }
    out
}

/// A control plane from a directory config, and a gateway using it.
pub struct Env {
    _dir: tempfile::TempDir,
    pub config_dir: PathBuf,
    cp_shutdown: CancellationToken,
    pub shutdown: CancellationToken,
    pub gateway: Option<Running>,
    pub listen: SocketAddr,
    pub admin: SocketAddr,
}

impl Env {
    /// Starts both; `tune` adjusts the gateway options. Returns once the
    /// gateway routes its first complete config.
    pub async fn start(services: &str, tune: impl FnOnce(&mut Options)) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let config_dir = dir.path().join("config");
        std::fs::create_dir(&config_dir).unwrap();
        std::fs::write(config_dir.join("services.yaml"), services).unwrap();
        let tokens = dir.path().join("tokens.yaml");
        std::fs::write(&tokens, "tok: {namespace: sample, serviceAccount: sleep}\n").unwrap();
        let cp_shutdown = CancellationToken::new();
        let cp = CpOptions {
            cluster: "east".into(),
            network: "net-east".into(),
            domain: "cluster.local".into(),
            source: Source::Directory(config_dir.clone()),
            ca_dir: None,
            ca_secret: None,
            trust_domain: "east.isthmus.local".into(),
            bootstrap_tokens: Some(tokens),
            xds_listen: "127.0.0.1:0".parse().unwrap(),
            debug_listen: "127.0.0.1:0".parse().unwrap(),
            drain_grace: Duration::from_millis(100),
        };
        let (bound, run) = isthmus_control_plane::run::start(cp, cp_shutdown.clone())
            .await
            .unwrap();
        tokio::spawn(run);

        let node = gateway_node("east", "net-east", "us-east/us-east-1a".parse().unwrap());
        let mut options = Options::new(node, ConfigSource::ControlPlane(bound.xds.to_string()));
        options.listen = "127.0.0.1:0".parse().unwrap();
        options.admin = Some("127.0.0.1:0".parse().unwrap());
        options.drain_grace = Duration::from_secs(5);
        tune(&mut options);
        let shutdown = CancellationToken::new();
        let gateway = isthmus_gateway::start(options, shutdown.clone())
            .await
            .unwrap();
        assert!(
            tokio::time::timeout(WAIT, gateway.ready())
                .await
                .expect("gateway ready in time"),
            "gateway stopped before it was ready"
        );
        let (listen, admin) = (gateway.listen, gateway.admin.unwrap());
        let env = Self {
            _dir: dir,
            config_dir,
            cp_shutdown,
            shutdown,
            gateway: Some(gateway),
            listen,
            admin,
        };
        // The directory source may still be loading when the first push
        // went out; wait until helloworld routes.
        env.wait_routes(HW_SNI).await;
        env
    }

    pub async fn wait_routes(&self, sni: &str) {
        tokio::time::timeout(WAIT, async {
            while !http_get(self.admin, "/routes").await.1.contains(sni) {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
        .await
        .unwrap_or_else(|_| panic!("{sni} never routed"));
    }

    /// The value of a metric line starting with `prefix` (0 if absent).
    pub async fn metric(&self, prefix: &str) -> f64 {
        let (_, text) = http_get(self.admin, "/metrics").await;
        text.lines()
            .filter(|l| l.starts_with(prefix))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum()
    }

    /// Drains the gateway and waits (bounded) until it stopped.
    pub async fn stop(mut self) {
        self.shutdown.cancel();
        if let Some(g) = self.gateway.take() {
            tokio::time::timeout(WAIT, g.wait())
                .await
                .expect("gateway stopped in time");
        }
    }
}

impl Drop for Env {
    fn drop(&mut self) {
        self.shutdown.cancel();
        self.cp_shutdown.cancel();
    }
}

/// GET over HTTP/1.1: (status, body); (0, "") if the connection fails.
pub async fn http_get(addr: SocketAddr, path: &str) -> (u16, String) {
    let Ok(mut s) = TcpStream::connect(addr).await else {
        return (0, String::new());
    };
    let req = format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
    if s.write_all(req.as_bytes()).await.is_err() {
        return (0, String::new());
    }
    let mut buf = String::new();
    let _ = s.read_to_string(&mut buf).await;
    let status = buf
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let body = buf
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    (status, body)
}

pub type Tls<S> = tokio_rustls::client::TlsStream<S>;

/// A TLS connection through the gateway over `tcp`, with `sni`.
pub async fn tls_over<S>(
    tcp: S,
    sni: &str,
    config: Arc<rustls::ClientConfig>,
) -> std::io::Result<Tls<S>>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let name = ServerName::try_from(sni.to_string()).unwrap();
    TlsConnector::from(config).connect(name, tcp).await
}

/// Connects through the gateway with `sni`.
pub async fn tls(
    gateway: SocketAddr,
    sni: &str,
    config: Arc<rustls::ClientConfig>,
) -> std::io::Result<Tls<TcpStream>> {
    tls_over(TcpStream::connect(gateway).await?, sni, config).await
}

/// Sends one line and reads the answer line.
pub async fn ask<S: AsyncRead + AsyncWrite + Unpin>(
    tls: &mut S,
    line: &str,
) -> std::io::Result<String> {
    tls.write_all(format!("{line}\n").as_bytes()).await?;
    tls.flush().await?;
    let mut answer = Vec::new();
    let mut byte = [0u8; 1];
    loop {
        let n = tls.read(&mut byte).await?;
        if n == 0 || byte[0] == b'\n' {
            break;
        }
        answer.push(byte[0]);
    }
    Ok(String::from_utf8_lossy(&answer).into_owned())
}

/// One call: connect, handshake, one line; bounded by [`WAIT`].
pub async fn call(
    gateway: SocketAddr,
    sni: &str,
    config: Arc<rustls::ClientConfig>,
) -> Result<String, String> {
    tokio::time::timeout(WAIT, async {
        let mut t = tls(gateway, sni, config).await.map_err(|e| e.to_string())?;
        ask(&mut t, "ping").await.map_err(|e| e.to_string())
    })
    .await
    .map_err(|_| "timed out".to_string())?
}

/// Whether the peer closes `s` (EOF or reset) within `within`, reading
/// and discarding anything it sends.
pub async fn closed_within(s: &mut TcpStream, within: Duration) -> bool {
    tokio::time::timeout(within, async {
        let mut buf = [0u8; 1024];
        loop {
            match s.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        }
    })
    .await
    .is_ok()
}

/// A stream whose first `limit` written bytes go out `chunk` bytes at a
/// time with `delay` between them (separate TCP segments with no-delay).
pub struct Trickle<S> {
    pub inner: S,
    pub chunk: usize,
    pub delay: Duration,
    pub limit: usize,
    sent: usize,
    sleep: Option<Pin<Box<Sleep>>>,
}

impl<S> Trickle<S> {
    pub fn new(inner: S, chunk: usize, delay: Duration, limit: usize) -> Self {
        Self {
            inner,
            chunk,
            delay,
            limit,
            sent: 0,
            sleep: None,
        }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Trickle<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Trickle<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        if self.sent >= self.limit {
            return Pin::new(&mut self.inner).poll_write(cx, buf);
        }
        if let Some(sleep) = self.sleep.as_mut() {
            ready!(sleep.as_mut().poll(cx));
            self.sleep = None;
        }
        let n = buf.len().min(self.chunk);
        let n = ready!(Pin::new(&mut self.inner).poll_write(cx, &buf[..n]))?;
        self.sent += n;
        self.sleep = Some(Box::pin(tokio::time::sleep(self.delay)));
        Poll::Ready(Ok(n))
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}
