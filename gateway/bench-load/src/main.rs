//! TLS load for `scripts/bench-gateway.sh`: HTTP/1.1 over TLS with an SNI
//! that Debian's load tools refuse (h2load and wrk reject `_` in a URI
//! host, and the SNI is the URI host there), connecting to any address.
//!
//! ```text
//! tls_load <addr[,addr…]> <sni> conns   <seconds> <concurrency>   new TLS connection per request
//! tls_load <addr[,addr…]> <sni> bulk    <seconds> <concurrency>   GET /bulk repeatedly, keep-alive
//! tls_load <addr[,addr…]> <sni> latency <seconds> <concurrency>   GET /small, keep-alive, percentiles
//! ```
//! Prints one line: `rate=<per second> mbps=<MB/s> p50_us=<> p99_us=<> errors=<>`.
//!
//! `<addr>` may list several addresses, comma-separated: the `i`-th of the
//! concurrent clients then uses address `i mod n` (how the benchmark
//! reaches its two backends directly, split as evenly as the proxies'
//! round robin splits them).

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{ClientConfig, DigitallySignedStruct, SignatureScheme};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

/// Accepts any server certificate: this measures transport, not PKI.
#[derive(Debug)]
struct AnyCert(Arc<rustls::crypto::CryptoProvider>);

impl ServerCertVerifier for AnyCert {
    fn verify_server_cert(
        &self,
        _: &CertificateDer<'_>,
        _: &[CertificateDer<'_>],
        _: &ServerName<'_>,
        _: &[u8],
        _: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }
    fn verify_tls12_signature(
        &self,
        m: &[u8],
        c: &CertificateDer<'_>,
        d: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(m, c, d, &self.0.signature_verification_algorithms)
    }
    fn verify_tls13_signature(
        &self,
        m: &[u8],
        c: &CertificateDer<'_>,
        d: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(m, c, d, &self.0.signature_verification_algorithms)
    }
    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

type Tls = tokio_rustls::client::TlsStream<TcpStream>;

async fn connect(
    addr: SocketAddr,
    sni: &ServerName<'static>,
    tls: &TlsConnector,
) -> std::io::Result<Tls> {
    let tcp = TcpStream::connect(addr).await?;
    tcp.set_nodelay(true)?;
    tls.connect(sni.clone(), tcp).await
}

/// Sends one GET and reads the response (Content-Length bodies); returns body bytes.
async fn get(s: &mut Tls, path: &str, close: bool, buf: &mut Vec<u8>) -> std::io::Result<u64> {
    let conn = if close { "close" } else { "keep-alive" };
    s.write_all(
        format!("GET {path} HTTP/1.1\r\nHost: bench\r\nConnection: {conn}\r\n\r\n").as_bytes(),
    )
    .await?;
    // tokio-rustls may keep the record in rustls until flushed.
    s.flush().await?;
    buf.clear();
    let mut chunk = vec![0u8; 64 * 1024];
    let header_end = loop {
        let n = s.read(&mut chunk).await?;
        if n == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        buf.extend_from_slice(&chunk[..n]);
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
    };
    let head = String::from_utf8_lossy(&buf[..header_end]).to_ascii_lowercase();
    let len: u64 = head
        .lines()
        .find_map(|l| l.strip_prefix("content-length:"))
        .and_then(|v| v.trim().parse().ok())
        .ok_or(std::io::ErrorKind::InvalidData)?;
    let mut have = (buf.len() - header_end) as u64;
    while have < len {
        let n = s.read(&mut chunk).await?;
        if n == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        have += n as u64;
    }
    Ok(len)
}

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    let [_, addr, sni, mode, secs, conc] = args.as_slice() else {
        eprintln!("usage: tls_load <addr> <sni> conns|bulk|latency <seconds> <concurrency>");
        std::process::exit(2);
    };
    let addrs: Vec<SocketAddr> = addr
        .split(',')
        .map(|a| a.parse().expect("address"))
        .collect();
    let sni = ServerName::try_from(sni.clone()).expect("server name");
    let secs: u64 = secs.parse().expect("seconds");
    let conc: usize = conc.parse().expect("concurrency");
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .unwrap()
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(AnyCert(provider)))
        .with_no_client_auth();
    // Every connection a full handshake.
    config.resumption = rustls::client::Resumption::disabled();
    let tls = TlsConnector::from(Arc::new(config));
    let deadline = Instant::now() + Duration::from_secs(secs);
    let done = Arc::new(AtomicU64::new(0));
    let bytes = Arc::new(AtomicU64::new(0));
    let errors = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let mut tasks = Vec::new();
    for i in 0..conc {
        let addr = addrs[i % addrs.len()];
        let (tls, sni, mode) = (tls.clone(), sni.clone(), mode.clone());
        let (done, bytes, errors) = (done.clone(), bytes.clone(), errors.clone());
        tasks.push(tokio::spawn(async move {
            let mut latencies = Vec::new();
            let mut buf = Vec::new();
            let mut conn: Option<Tls> = None;
            while Instant::now() < deadline {
                let t = Instant::now();
                let result = async {
                    if mode == "conns" {
                        let mut s = connect(addr, &sni, &tls).await?;
                        let n = get(&mut s, "/small", true, &mut buf).await?;
                        let _ = s.shutdown().await;
                        return Ok::<u64, std::io::Error>(n);
                    }
                    if conn.is_none() {
                        conn = Some(connect(addr, &sni, &tls).await?);
                    }
                    let path = if mode == "bulk" { "/bulk" } else { "/small" };
                    let s = conn.as_mut().ok_or(std::io::ErrorKind::NotConnected)?;
                    get(s, path, false, &mut buf).await
                }
                .await;
                match result {
                    Ok(n) => {
                        done.fetch_add(1, Ordering::Relaxed);
                        bytes.fetch_add(n, Ordering::Relaxed);
                        if mode == "latency" {
                            latencies.push(t.elapsed().as_micros() as u64);
                        }
                    }
                    Err(_) => {
                        errors.fetch_add(1, Ordering::Relaxed);
                        conn = None;
                    }
                }
            }
            latencies
        }));
    }
    let mut latencies = Vec::new();
    for t in tasks {
        latencies.extend(t.await.unwrap());
    }
    let elapsed = started.elapsed().as_secs_f64();
    latencies.sort_unstable();
    let pct = |p: f64| {
        latencies
            .get(((latencies.len() as f64) * p) as usize)
            .copied()
            .unwrap_or(0)
    };
    println!(
        "rate={:.0} mbps={:.1} p50_us={} p99_us={} errors={}",
        done.load(Ordering::Relaxed) as f64 / elapsed,
        bytes.load(Ordering::Relaxed) as f64 / elapsed / 1e6,
        pct(0.50),
        pct(0.99),
        errors.load(Ordering::Relaxed)
    );
}
