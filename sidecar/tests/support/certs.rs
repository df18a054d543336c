//! Certificates for mTLS tests, minted with `isthmus_identity::tool` (roots,
//! intermediates) and rcgen (leaves the CA would refuse to issue: expired,
//! or naming a trust domain its intermediate does not carry).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use isthmus_identity::TrustBundle;
use isthmus_identity::tls::WorkloadCert;
use isthmus_identity::tool::{self, Intermediate, RootCa};
use isthmus_sidecar::identity::CertSource;
use rcgen::{
    CertificateParams, DistinguishedName, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, SanType,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// A root and a cluster intermediate, written as the control plane's `cacerts`.
pub struct Pki {
    pub root: RootCa,
    pub intermediate: Intermediate,
    dir: tempfile::TempDir,
}

impl Pki {
    pub fn new(cluster: &str, trust_domain: &str) -> Pki {
        let root = tool::create_root(&format!("{cluster} test root")).unwrap();
        let intermediate = tool::create_intermediate(&root, cluster, trust_domain).unwrap();
        let dir = tempfile::tempdir().unwrap();
        tool::write_cacerts(dir.path(), &intermediate, &root.trust_bundle().unwrap()).unwrap();
        Pki {
            root,
            intermediate,
            dir,
        }
    }

    /// The `cacerts` directory.
    pub fn ca_dir(&self) -> PathBuf {
        self.dir.path().to_path_buf()
    }

    /// Another intermediate under the same root.
    pub fn intermediate(&self, cluster: &str, trust_domain: &str) -> Intermediate {
        tool::create_intermediate(&self.root, cluster, trust_domain).unwrap()
    }

    pub fn roots_pem(&self) -> String {
        self.root.cert_pem().to_string()
    }
}

/// A leaf for `spiffe_id` signed by `issuer` (any SPIFFE ID, expired when asked):
/// `(chain PEM, key PEM)`.
pub fn leaf(issuer: &Intermediate, spiffe_id: &str, expired: bool) -> (String, String) {
    let key = KeyPair::generate().unwrap();
    let mut params = CertificateParams::default();
    params.distinguished_name = DistinguishedName::new();
    params.subject_alt_names = vec![SanType::URI(spiffe_id.try_into().unwrap())];
    params.is_ca = IsCa::ExplicitNoCa;
    params.key_usages = vec![
        KeyUsagePurpose::DigitalSignature,
        KeyUsagePurpose::KeyEncipherment,
    ];
    params.extended_key_usages = vec![
        ExtendedKeyUsagePurpose::ServerAuth,
        ExtendedKeyUsagePurpose::ClientAuth,
    ];
    if expired {
        params.not_before = rcgen::date_time_ymd(2020, 1, 1);
        params.not_after = rcgen::date_time_ymd(2021, 1, 1);
    }
    let issuer_key = KeyPair::from_pem(issuer.key_pem()).unwrap();
    let signer = Issuer::from_ca_cert_pem(issuer.cert_pem(), issuer_key).unwrap();
    let cert = params.signed_by(&key, &signer).unwrap();
    (
        format!("{}{}", cert.pem(), issuer.cert_pem()),
        key.serialize_pem(),
    )
}

/// A sidecar certificate source for a minted leaf, trusting `roots_pem`.
pub fn static_source((chain_pem, key_pem): (String, String), roots_pem: &str) -> CertSource {
    CertSource::Static {
        chain_pem,
        key_pem,
        roots_pem: roots_pem.to_string(),
    }
}

/// Connects to an inbound listener with a client certificate (mTLS, ALPN
/// http/1.1) and sends one GET: the status line's code, or `None` when the
/// handshake or the exchange was refused.
pub async fn mtls_get(
    addr: SocketAddr,
    (chain_pem, key_pem): (String, String),
    roots_pem: &str,
    server_id: &str,
) -> Option<u16> {
    let cert = WorkloadCert::from_pem(&chain_pem, &key_pem).unwrap();
    let roots = TrustBundle::from_pem(roots_pem).unwrap();
    let mut cfg =
        isthmus_identity::tls::client_config(&cert, &roots, [server_id.parse().unwrap()]).unwrap();
    cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let name = rustls_pki_types::ServerName::try_from("helloworld").unwrap();
    let exchange = async {
        let mut tls = tokio_rustls::TlsConnector::from(Arc::new(cfg))
            .connect(name, tcp)
            .await
            .ok()?;
        tls.write_all(b"GET / HTTP/1.1\r\nHost: helloworld\r\nConnection: close\r\n\r\n")
            .await
            .ok()?;
        let mut out = Vec::new();
        let _ = tls.read_to_end(&mut out).await;
        let text = String::from_utf8_lossy(&out);
        text.strip_prefix("HTTP/1.1 ")?.get(..3)?.parse().ok()
    };
    tokio::time::timeout(super::WAIT, exchange)
        .await
        .ok()
        .flatten()
}
