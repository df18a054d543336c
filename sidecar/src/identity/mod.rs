//! The workload's own identity: a private key generated here, a certificate
//! for it from the cluster CA (CSR over gRPC, authenticated with a bootstrap
//! or service-account token), renewed at half its lifetime with jitter.
//!
//! ```text
//! KeyPair::generate ─► CSR ─► isthmus.ca.v1.CreateCertificate (Bearer token)
//!        ─► WorkloadCert + CA roots ─► watch<Arc<Credentials>> ─► state rebuild
//! ```
//!
//! The private key never leaves the process. Connections made with an older
//! certificate keep it until they close; only new handshakes use the new one,
//! so a rotation breaks nothing.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use isthmus_identity::TrustBundle;
use isthmus_identity::tls::WorkloadCert;
use isthmus_proto::ca::CertificateRequest;
use isthmus_proto::ca::certificate_service_client::CertificateServiceClient;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tonic::metadata::MetadataValue;

/// Where the workload certificate comes from.
#[derive(Clone)]
pub enum CertSource {
    /// The cluster CA's certificate service.
    Ca {
        /// gRPC address, e.g. `http://127.0.0.1:15010`.
        endpoint: String,
        /// Bootstrap token (directory mode) or projected service-account token.
        token: Token,
        /// Requested lifetime; `None` takes the CA's default (24 h).
        validity: Option<Duration>,
    },
    /// A fixed chain, key and roots (tests, or certificates managed outside Isthmus).
    Static {
        /// Leaf first, then intermediates.
        chain_pem: String,
        /// The leaf's private key.
        key_pem: String,
        /// Roots to trust.
        roots_pem: String,
    },
}

impl std::fmt::Debug for CertSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            CertSource::Ca {
                endpoint, validity, ..
            } => f
                .debug_struct("Ca")
                .field("endpoint", endpoint)
                .field("validity", validity)
                .finish_non_exhaustive(),
            CertSource::Static { .. } => f.write_str("Static"),
        }
    }
}

/// The credential sent to the CA.
#[derive(Clone)]
pub enum Token {
    /// A fixed token.
    Value(String),
    /// A file read before every request: projected service-account tokens
    /// expire and the kubelet rewrites the file.
    File(std::path::PathBuf),
}

impl Token {
    fn read(&self) -> Result<String, IdentityError> {
        match self {
            Token::Value(v) => Ok(v.clone()),
            Token::File(path) => std::fs::read_to_string(path)
                .map(|t| t.trim().to_string())
                .map_err(|e| IdentityError::TokenFile(format!("{}: {e}", path.display()))),
        }
    }
}

impl std::fmt::Debug for Token {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print the token itself.
        match self {
            Token::Value(_) => f.write_str("Token(<value>)"),
            Token::File(p) => write!(f, "Token(file {})", p.display()),
        }
    }
}

impl From<String> for Token {
    fn from(v: String) -> Self {
        Token::Value(v)
    }
}

/// The workload's certificate and the roots the CA told it to trust.
#[derive(Clone, Debug)]
pub struct Credentials {
    /// Chain and key.
    pub cert: WorkloadCert,
    /// Roots from the CA response (merged with SDS `ROOTCA` by the caller).
    pub roots: TrustBundle,
    /// Leaf validity.
    pub not_before: SystemTime,
    /// Leaf expiry.
    pub not_after: SystemTime,
    /// Counts certificates obtained by this process, from 1.
    pub generation: u64,
}

/// Why a certificate could not be obtained.
#[derive(Debug, thiserror::Error)]
pub enum IdentityError {
    #[error("generating the workload key or CSR: {0}")]
    Key(#[from] rcgen::Error),
    #[error("invalid CA address {endpoint:?}: {source}")]
    Endpoint {
        endpoint: String,
        #[source]
        source: tonic::transport::Error,
    },
    #[error("connecting to the CA at {endpoint}: {source}")]
    Connect {
        endpoint: String,
        #[source]
        source: tonic::transport::Error,
    },
    #[error("the token is not a valid gRPC header value")]
    Token,
    #[error("reading the token file {0}")]
    TokenFile(String),
    #[error("the CA refused the certificate request: {0}")]
    Refused(#[from] tonic::Status),
    #[error("the CA's answer is unusable: {0}")]
    Answer(String),
}

/// Obtains one certificate from `source`.
pub async fn fetch(source: &CertSource, generation: u64) -> Result<Credentials, IdentityError> {
    let (chain_pem, key_pem, roots_pem) = match source {
        CertSource::Static {
            chain_pem,
            key_pem,
            roots_pem,
        } => (chain_pem.clone(), key_pem.clone(), roots_pem.clone()),
        CertSource::Ca {
            endpoint,
            token,
            validity,
        } => {
            let key = rcgen::KeyPair::generate()?;
            let csr = rcgen::CertificateParams::new(Vec::<String>::new())?
                .serialize_request(&key)?
                .pem()?;
            let channel = tonic::transport::Endpoint::from_shared(endpoint.clone())
                .map_err(|source| IdentityError::Endpoint {
                    endpoint: endpoint.clone(),
                    source,
                })?
                .connect_timeout(Duration::from_secs(5))
                .timeout(Duration::from_secs(10))
                .connect()
                .await
                .map_err(|source| IdentityError::Connect {
                    endpoint: endpoint.clone(),
                    source,
                })?;
            let mut request = tonic::Request::new(CertificateRequest {
                csr,
                validity_seconds: validity.map_or(0, |v| v.as_secs().try_into().unwrap_or(0)),
            });
            let token = token.read()?;
            let bearer = MetadataValue::try_from(format!("Bearer {token}"))
                .map_err(|_| IdentityError::Token)?;
            request.metadata_mut().insert("authorization", bearer);
            let answer = CertificateServiceClient::new(channel)
                .create_certificate(request)
                .await?
                .into_inner();
            (
                answer.cert_chain.concat(),
                key.serialize_pem(),
                answer.trust_bundle.concat(),
            )
        }
    };
    let cert = WorkloadCert::from_pem(&chain_pem, &key_pem)
        .map_err(|e| IdentityError::Answer(e.to_string()))?;
    let roots =
        TrustBundle::from_pem(&roots_pem).map_err(|e| IdentityError::Answer(e.to_string()))?;
    let (not_before, not_after) = validity(&cert)?;
    Ok(Credentials {
        cert,
        roots,
        not_before,
        not_after,
        generation,
    })
}

fn validity(cert: &WorkloadCert) -> Result<(SystemTime, SystemTime), IdentityError> {
    use x509_parser::prelude::FromDer;
    let leaf = cert
        .chain()
        .first()
        .ok_or_else(|| IdentityError::Answer("empty certificate chain".into()))?;
    let (_, parsed) = x509_parser::certificate::X509Certificate::from_der(leaf)
        .map_err(|e| IdentityError::Answer(format!("leaf certificate: {e}")))?;
    let to_system = |t: x509_parser::time::ASN1Time| {
        let secs = t.timestamp();
        if secs >= 0 {
            SystemTime::UNIX_EPOCH + Duration::from_secs(secs.unsigned_abs())
        } else {
            SystemTime::UNIX_EPOCH
        }
    };
    Ok((
        to_system(parsed.validity().not_before),
        to_system(parsed.validity().not_after),
    ))
}

/// When to renew: half the lifetime after `not_before`, give or take 10%.
pub fn renewal_delay(creds: &Credentials, now: SystemTime) -> Duration {
    let lifetime = creds
        .not_after
        .duration_since(creds.not_before)
        .unwrap_or_default();
    let jitter: f64 = rand::random_range(0.9..1.1);
    let at = creds.not_before + lifetime.mul_f64(0.5 * jitter);
    at.duration_since(now).unwrap_or_default()
}

/// Keeps the workload certificate fresh: the first certificate, then a new
/// one at half lifetime, retrying failures with backoff (1 s doubling to 30 s)
/// while the current certificate keeps serving.
#[derive(Debug)]
pub struct CertManager {
    rx: watch::Receiver<Option<Arc<Credentials>>>,
    renew: Arc<tokio::sync::Notify>,
}

impl CertManager {
    /// Starts renewing in the background until `shutdown`.
    pub fn spawn(source: CertSource, shutdown: CancellationToken) -> Self {
        let (tx, rx) = watch::channel(None);
        let renew = Arc::new(tokio::sync::Notify::new());
        let renew_now = renew.clone();
        tokio::spawn(async move {
            let mut generation = 0;
            let mut backoff = Duration::from_secs(1);
            loop {
                let wait = match fetch(&source, generation + 1).await {
                    Ok(creds) => {
                        generation += 1;
                        backoff = Duration::from_secs(1);
                        let wait = renewal_delay(&creds, SystemTime::now());
                        tracing::info!(
                            identity = %creds.cert.identity(),
                            generation,
                            renew_in = ?wait,
                            "workload certificate obtained"
                        );
                        tx.send_replace(Some(Arc::new(creds)));
                        if matches!(source, CertSource::Static { .. }) {
                            // Nothing to renew; the sender lives on so the
                            // watchers do not see the source as gone.
                            shutdown.cancelled().await;
                            return;
                        }
                        wait.max(Duration::from_secs(1))
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, retry_in = ?backoff, "workload certificate request failed");
                        let wait = backoff;
                        backoff = (backoff * 2).min(Duration::from_secs(30));
                        wait
                    }
                };
                tokio::select! {
                    () = shutdown.cancelled() => return,
                    () = tokio::time::sleep(wait) => {}
                    () = renew_now.notified() => {
                        tracing::info!("certificate renewal requested");
                    }
                }
            }
        });
        Self { rx, renew }
    }

    /// Asks for a new certificate now (after a CA rotation); the current one
    /// keeps serving until it arrives.
    pub fn renew(&self) {
        self.renew.notify_one();
    }

    /// A handle that triggers [`renew`](Self::renew) (for the admin server).
    pub fn renew_handle(&self) -> Arc<tokio::sync::Notify> {
        self.renew.clone()
    }

    /// The current credentials (`None` until the first certificate).
    pub fn watch(&self) -> watch::Receiver<Option<Arc<Credentials>>> {
        self.rx.clone()
    }

    /// The credentials now.
    pub fn current(&self) -> Option<Arc<Credentials>> {
        self.rx.borrow().clone()
    }
}
