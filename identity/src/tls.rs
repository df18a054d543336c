//! mTLS with SPIFFE identities for rustls: certificate verifiers that run
//! [`verify_workload_chain`](crate::verify_workload_chain)'s checks (webpki plus trust-domain
//! binding) in the handshake, and builders for the `ServerConfig`/`ClientConfig` that
//! sidecars, gateways and the federation controller use.
//!
//! A server learns its peer's identity after the handshake with
//! [`peer_identity`](crate::peer_identity) on `conn.peer_certificates()[0]`. A client names
//! the server identities it accepts instead of a DNS name; the TLS server name (SNI) is
//! free for routing, e.g. Istio's `outbound_.<port>_.<subset>_.<fqdn>`.

mod verifier;

use std::fmt;
use std::sync::{Arc, OnceLock};

use isthmus_api::naming::SpiffeId;
use rustls::client::ResolvesClientCert;
use rustls::crypto::CryptoProvider;
use rustls::sign::{CertifiedKey, SingleCertAndKey};
use rustls::{ClientConfig, ServerConfig};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

pub use verifier::{SpiffeClientVerifier, SpiffeServerVerifier};

use crate::{IssuedKeyAndCert, TrustBundle, VerifyError, cert, pem};

/// Why a TLS identity or configuration cannot be built.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// The certificate chain or key PEM is unusable.
    #[error("workload {what}: {reason}")]
    Pem {
        /// `certificate chain` or `private key`.
        what: &'static str,
        /// What is wrong.
        reason: String,
    },
    /// The leaf certificate carries no SPIFFE identity.
    #[error("workload certificate: {0}")]
    Identity(#[source] VerifyError),
    /// rustls refused the configuration (e.g. the key does not match the certificate).
    #[error("building the TLS configuration failed: {0}")]
    Rustls(#[from] rustls::Error),
}

/// A workload's own certificate chain (leaf first, no root) and private key.
pub struct WorkloadCert {
    identity: SpiffeId,
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
}

impl WorkloadCert {
    /// Builds the identity from a DER chain (leaf first) and its key.
    ///
    /// # Errors
    /// If the chain is empty or the leaf has no single SPIFFE ID.
    pub fn new(
        chain: Vec<CertificateDer<'static>>,
        key: PrivateKeyDer<'static>,
    ) -> Result<Self, TlsError> {
        let leaf = chain
            .first()
            .ok_or(TlsError::Identity(VerifyError::EmptyChain))?;
        let identity = cert::peer_identity(leaf).map_err(TlsError::Identity)?;
        Ok(Self {
            identity,
            chain,
            key,
        })
    }

    /// Builds the identity from PEM: a chain (leaf first) and a private key.
    ///
    /// # Errors
    /// If either PEM is unusable or the leaf has no single SPIFFE ID.
    pub fn from_pem(chain_pem: &str, key_pem: &str) -> Result<Self, TlsError> {
        let chain = pem::parse_certs(chain_pem).map_err(|reason| TlsError::Pem {
            what: "certificate chain",
            reason,
        })?;
        let key =
            PrivateKeyDer::from_pem_slice(key_pem.as_bytes()).map_err(|err| TlsError::Pem {
                what: "private key",
                reason: format!("no usable PEM private key ({err:?})"),
            })?;
        Self::new(chain, key)
    }

    /// The SPIFFE ID in the leaf.
    pub fn identity(&self) -> &SpiffeId {
        &self.identity
    }

    /// The chain, leaf first.
    pub fn chain(&self) -> &[CertificateDer<'static>] {
        &self.chain
    }
}

impl From<&IssuedKeyAndCert> for WorkloadCert {
    fn from(issued: &IssuedKeyAndCert) -> Self {
        Self {
            identity: issued.cert.identity.clone(),
            chain: issued.cert.chain_der.clone(),
            key: issued.key_der(),
        }
    }
}

impl Clone for WorkloadCert {
    fn clone(&self) -> Self {
        Self {
            identity: self.identity.clone(),
            chain: self.chain.clone(),
            key: self.key.clone_key(),
        }
    }
}

impl fmt::Debug for WorkloadCert {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WorkloadCert")
            .field("identity", &self.identity.to_string())
            .field("chain_len", &self.chain.len())
            .finish_non_exhaustive()
    }
}

/// ring's provider, one for the process (every configuration shares it).
fn provider() -> Arc<CryptoProvider> {
    static PROVIDER: OnceLock<Arc<CryptoProvider>> = OnceLock::new();
    PROVIDER
        .get_or_init(|| Arc::new(rustls::crypto::ring::default_provider()))
        .clone()
}

/// A server configuration for inbound mTLS: presents `cert`, requires a client certificate
/// that chains to `roots` and passes trust-domain binding. ALPN and the rest are left to the
/// caller.
///
/// # Errors
/// If rustls rejects the certificate or key.
pub fn server_config(cert: &WorkloadCert, roots: &TrustBundle) -> Result<ServerConfig, TlsError> {
    let verifier = Arc::new(SpiffeClientVerifier::new(roots.clone()));
    Ok(ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()?
        .with_client_cert_verifier(verifier)
        .with_single_cert(cert.chain.clone(), cert.key.clone_key())?)
}

/// A client configuration for outbound mTLS: presents `cert`, and accepts only a server
/// whose chain is trusted by `roots`, passes trust-domain binding and whose SPIFFE ID is one
/// of `expected_server` (the server name passed to rustls is not checked).
///
/// # Errors
/// If rustls rejects the certificate or key.
pub fn client_config(
    cert: &WorkloadCert,
    roots: &TrustBundle,
    expected_server: impl IntoIterator<Item = SpiffeId>,
) -> Result<ClientConfig, TlsError> {
    ClientTls::new(cert, roots)?.config(expected_server)
}

/// What every outbound mTLS configuration of one workload certificate and trust bundle
/// shares: the parsed signing key with its chain, the roots and the crypto provider. A
/// sidecar needs one configuration per set of expected server identities (one per
/// service); built from a `ClientTls`, each costs its verifier's identity set and not a
/// copy of the key, the chain and the roots.
#[derive(Clone)]
pub struct ClientTls {
    provider: Arc<CryptoProvider>,
    cert: Arc<dyn ResolvesClientCert>,
    roots: TrustBundle,
}

impl ClientTls {
    /// Parses `cert`'s key once for every configuration built from the result.
    ///
    /// # Errors
    /// If rustls rejects the certificate or key.
    pub fn new(cert: &WorkloadCert, roots: &TrustBundle) -> Result<Self, TlsError> {
        let provider = provider();
        let key = CertifiedKey::from_der(cert.chain.clone(), cert.key.clone_key(), &provider)?;
        Ok(Self {
            provider,
            cert: Arc::new(SingleCertAndKey::from(key)),
            roots: roots.clone(),
        })
    }

    /// A client configuration accepting only a server whose SPIFFE ID is one of
    /// `expected_server` (see [`client_config`]).
    ///
    /// # Errors
    /// If rustls refuses the provider's protocol versions (it does not with ours).
    pub fn config(
        &self,
        expected_server: impl IntoIterator<Item = SpiffeId>,
    ) -> Result<ClientConfig, TlsError> {
        let verifier = Arc::new(SpiffeServerVerifier::new(
            self.roots.clone(),
            expected_server,
        ));
        Ok(ClientConfig::builder_with_provider(self.provider.clone())
            .with_safe_default_protocol_versions()?
            .dangerous()
            .with_custom_certificate_verifier(verifier)
            .with_client_cert_resolver(self.cert.clone()))
    }
}

impl fmt::Debug for ClientTls {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClientTls")
            .field("roots", &self.roots)
            .finish_non_exhaustive()
    }
}
