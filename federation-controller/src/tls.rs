//! mTLS between federation controllers.
//!
//! The controller's identity is `spiffe://<td>/ns/isthmus-system/sa/federation`, issued by
//! this cluster's intermediate ([`ClusterCa`]) and renewed at half its lifetime. Trust is
//! this cluster's roots plus, per peer trust domain, the roots that peer brings: the
//! `trustBundle` of its MeshFederation entry and the roots it announced in its catalog
//! (learned over an already authenticated stream, so a peer's new root is trusted before
//! the peer switches to it). Roots a peer brings only ever vouch for identities in that
//! peer's trust domain.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use arc_swap::ArcSwap;
use isthmus_api::naming::SpiffeId;
use isthmus_identity::tls::{SpiffeClientVerifier, TlsError, WorkloadCert, client_config};
use isthmus_identity::{ClusterCa, TrustBundle, peer_identity};
use rustls::client::ResolvesClientCert;
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls::{
    ClientConfig, DigitallySignedStruct, DistinguishedName, ServerConfig, SignatureScheme,
};
use rustls_pki_types::{CertificateDer, UnixTime};

pub(crate) mod reload;

/// Namespace of the controller's identity.
pub const NAMESPACE: &str = "isthmus-system";
/// Service account of the controller's identity.
pub const SERVICE_ACCOUNT: &str = "federation";
/// ALPN of the federation API (gRPC over HTTP/2).
const ALPN_H2: &[u8] = b"h2";

/// The federation identity of trust domain `td`.
///
/// # Errors
/// If `td` is not a valid trust domain.
pub fn federation_id(td: &str) -> Result<SpiffeId, isthmus_api::naming::NameError> {
    SpiffeId::new(td, NAMESPACE, SERVICE_ACCOUNT)
}

/// This controller's certificate (renewed in place) and everything it trusts.
#[derive(Debug)]
pub struct Tls {
    ca: ArcSwap<ClusterCa>,
    cert: ArcSwap<WorkloadCert>,
    keys: ArcSwap<CertifiedKey>,
    /// Trust domain → roots its peer brings (static and learned).
    peer_roots: Mutex<BTreeMap<String, PeerRoots>>,
    ttl: Duration,
}

#[derive(Clone, Debug, Default)]
struct PeerRoots {
    configured: Option<TrustBundle>,
    learned: Option<TrustBundle>,
}

impl PeerRoots {
    fn bundle(&self) -> Option<TrustBundle> {
        match (&self.configured, &self.learned) {
            (Some(a), Some(b)) => Some(a.merged(b)),
            (a, b) => a.clone().or_else(|| b.clone()),
        }
    }
}

impl Tls {
    /// Issues the controller's certificate from `ca`, valid for `ttl`.
    ///
    /// # Errors
    /// If issuing fails or rustls rejects the key.
    pub fn new(ca: Arc<ClusterCa>, ttl: Duration) -> Result<Arc<Self>, TlsError> {
        let (cert, keys) = issue(&ca, ttl)?;
        Ok(Arc::new(Self {
            ca: ArcSwap::new(ca),
            cert: ArcSwap::from_pointee(cert),
            keys: ArcSwap::from_pointee(keys),
            peer_roots: Mutex::default(),
            ttl,
        }))
    }

    /// Replaces the certificate with a fresh one.
    ///
    /// # Errors
    /// If issuing fails.
    pub fn renew(&self) -> Result<(), TlsError> {
        let (cert, keys) = issue(&self.ca.load(), self.ttl)?;
        self.cert.store(Arc::new(cert));
        self.keys.store(Arc::new(keys));
        Ok(())
    }

    /// Switches to a reloaded cluster CA (e.g. after a root rotation step) and issues a
    /// certificate from it.
    ///
    /// # Errors
    /// If issuing fails; the old CA and certificate stay.
    pub fn replace_ca(&self, ca: Arc<ClusterCa>) -> Result<(), TlsError> {
        let (cert, keys) = issue(&ca, self.ttl)?;
        self.ca.store(ca);
        self.cert.store(Arc::new(cert));
        self.keys.store(Arc::new(keys));
        Ok(())
    }

    /// How often [`renew`](Self::renew) should run.
    pub fn renew_every(&self) -> Duration {
        self.ttl / 2
    }

    /// This controller's identity.
    pub fn identity(&self) -> SpiffeId {
        self.cert.load().identity().clone()
    }

    /// This cluster's trust domain.
    pub fn trust_domain(&self) -> String {
        self.ca.load().trust_domain().to_owned()
    }

    /// This cluster's own roots (`root-cert.pem`).
    pub fn local_roots(&self) -> TrustBundle {
        self.ca.load().trust_bundle().clone()
    }

    /// Sets the roots configured for `trust_domain` in the MeshFederation (`trustBundle`).
    pub fn set_configured_roots(&self, trust_domain: &str, roots: Option<TrustBundle>) {
        self.roots_mut(|map| map.entry(trust_domain.to_owned()).or_default().configured = roots);
    }

    /// Records the roots a peer of `trust_domain` announced. Returns whether any root is
    /// new to this controller.
    pub fn learn_roots(&self, trust_domain: &str, roots: TrustBundle) -> bool {
        let local = self.local_roots();
        self.roots_mut(|map| {
            let entry = map.entry(trust_domain.to_owned()).or_default();
            let known = entry.bundle().map_or(local.clone(), |b| local.merged(&b));
            let new = roots.roots().iter().any(|r| !known.contains(r));
            entry.learned = Some(roots);
            new
        })
    }

    /// Forgets everything about `trust_domain` (the peer was unlinked).
    pub fn forget(&self, trust_domain: &str) {
        self.roots_mut(|map| map.remove(trust_domain));
    }

    /// Roots trusted for identities of `trust_domain`: ours plus what its peer brings.
    pub fn roots_for(&self, trust_domain: &str) -> TrustBundle {
        let extra = self.roots_mut(|map| map.get(trust_domain).and_then(PeerRoots::bundle));
        match extra {
            Some(b) => self.local_roots().merged(&b),
            None => self.local_roots(),
        }
    }

    /// Every root trusted for any identity (ours first), e.g. to publish as a trust bundle.
    pub fn all_roots(&self) -> TrustBundle {
        let extra: Vec<TrustBundle> =
            self.roots_mut(|map| map.values().filter_map(PeerRoots::bundle).collect());
        extra
            .iter()
            .fold(self.local_roots(), |acc, b| acc.merged(b))
    }

    fn roots_mut<T>(&self, f: impl FnOnce(&mut BTreeMap<String, PeerRoots>) -> T) -> T {
        f(&mut self
            .peer_roots
            .lock()
            .unwrap_or_else(PoisonError::into_inner))
    }

    /// The server side of the federation API: our certificate, client certificates
    /// verified per trust domain, ALPN h2.
    ///
    /// # Errors
    /// If rustls rejects the configuration.
    pub fn server_config(self: &Arc<Self>) -> Result<ServerConfig, TlsError> {
        let mut config = ServerConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()?
            .with_client_cert_verifier(Arc::new(PeerVerifier { tls: self.clone() }))
            .with_cert_resolver(Arc::new(CurrentCert { tls: self.clone() }));
        config.alpn_protocols = vec![ALPN_H2.to_vec()];
        Ok(config)
    }

    /// The client side towards a peer of `trust_domain`: accepts only that peer's
    /// federation identity, chained to our roots or the roots the peer brings.
    ///
    /// # Errors
    /// If the trust domain is invalid or rustls rejects the configuration.
    pub fn client_config(&self, trust_domain: &str) -> Result<ClientConfig, TlsError> {
        let expected = federation_id(trust_domain).map_err(|e| TlsError::Pem {
            what: "peer trust domain",
            reason: e.to_string(),
        })?;
        let cert = self.cert.load_full();
        let mut config = client_config(&cert, &self.roots_for(trust_domain), [expected])?;
        config.alpn_protocols = vec![ALPN_H2.to_vec()];
        Ok(config)
    }

    /// A client config for probing a gateway: presents our certificate, but checks nothing
    /// of the server (a gateway passes TLS through; the probe only wants an answer).
    pub fn probe_config(self: &Arc<Self>) -> ClientConfig {
        let mut config = ClientConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .expect("ring supports the default protocol versions")
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(AnyServer(provider())))
            .with_client_cert_resolver(Arc::new(CurrentCert { tls: self.clone() }));
        config.alpn_protocols = vec![ALPN_H2.to_vec()];
        config
    }
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn issue(ca: &ClusterCa, ttl: Duration) -> Result<(WorkloadCert, CertifiedKey), TlsError> {
    let id = federation_id(ca.trust_domain()).map_err(|e| TlsError::Pem {
        what: "identity",
        reason: e.to_string(),
    })?;
    let issued = ca
        .issue_key_and_cert(&id, Some(ttl))
        .map_err(|e| TlsError::Pem {
            what: "certificate",
            reason: e.to_string(),
        })?;
    let cert = WorkloadCert::from(&issued);
    let key = provider()
        .key_provider
        .load_private_key(issued.key_der())
        .map_err(TlsError::Rustls)?;
    Ok((cert, CertifiedKey::new(issued.cert.chain_der.clone(), key)))
}

/// Serves (and presents) whatever certificate is current.
#[derive(Debug)]
struct CurrentCert {
    tls: Arc<Tls>,
}

impl ResolvesServerCert for CurrentCert {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.tls.keys.load_full())
    }
}

impl ResolvesClientCert for CurrentCert {
    fn resolve(&self, _hints: &[&[u8]], _schemes: &[SignatureScheme]) -> Option<Arc<CertifiedKey>> {
        Some(self.tls.keys.load_full())
    }

    fn has_certs(&self) -> bool {
        true
    }
}

/// Verifies a peer controller's client certificate against the roots trusted for the
/// trust domain it claims (ours, plus that peer's), with trust-domain binding. Which
/// cluster it may be is checked after the handshake against the peer list.
#[derive(Debug)]
struct PeerVerifier {
    tls: Arc<Tls>,
}

impl ClientCertVerifier for PeerVerifier {
    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &[]
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        // The claimed identity only picks the roots; the chain check below proves it.
        let claimed = peer_identity(end_entity).map_err(|e| {
            rustls::Error::InvalidCertificate(rustls::CertificateError::Other(rustls::OtherError(
                Arc::new(e),
            )))
        })?;
        let roots = self.tls.roots_for(&claimed.trust_domain);
        SpiffeClientVerifier::new(roots).verify_client_cert(end_entity, intermediates, now)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        let algs = provider().signature_verification_algorithms;
        rustls::crypto::verify_tls12_signature(message, cert, dss, &algs)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        let algs = provider().signature_verification_algorithms;
        rustls::crypto::verify_tls13_signature(message, cert, dss, &algs)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        provider()
            .signature_verification_algorithms
            .supported_schemes()
    }
}

/// Accepts any server certificate: only for gateway probes, which send no data.
#[derive(Debug)]
struct AnyServer(Arc<rustls::crypto::CryptoProvider>);

impl rustls::client::danger::ServerCertVerifier for AnyServer {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &rustls_pki_types::ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}
