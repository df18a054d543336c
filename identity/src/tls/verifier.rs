//! rustls certificate verifiers for SPIFFE workloads. Chains are validated by webpki with
//! the trust-domain binding check ([`crate::verify`]); handshake signatures are checked by
//! rustls's own webpki helpers.

use std::collections::BTreeSet;
use std::sync::Arc;

use isthmus_api::naming::SpiffeId;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::WebPkiSupportedAlgorithms;
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::{CertificateError, DigitallySignedStruct, DistinguishedName, OtherError};
use rustls::{SignatureScheme, pki_types::ServerName};
use rustls_pki_types::{CertificateDer, UnixTime};
use webpki::KeyUsage;

use crate::verify::{algorithms, verify_chain};
use crate::{TrustBundle, VerifyError};

/// Verifies client certificates on the server side of mTLS: any workload whose chain is
/// trusted by the bundle and passes trust-domain binding. Which callers may do what is the
/// job of authorization, which reads the identity after the handshake.
#[derive(Debug)]
pub struct SpiffeClientVerifier {
    roots: TrustBundle,
    hints: Vec<DistinguishedName>,
    algorithms: WebPkiSupportedAlgorithms,
}

impl SpiffeClientVerifier {
    /// A verifier trusting `roots`; client certificates are mandatory.
    pub fn new(roots: TrustBundle) -> Self {
        Self {
            hints: roots.subjects(),
            roots,
            algorithms: algorithms(),
        }
    }
}

impl ClientCertVerifier for SpiffeClientVerifier {
    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &self.hints
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        let chain = full_chain(end_entity, intermediates);
        verify_chain(&chain, &self.roots, now, &KeyUsage::client_auth()).map_err(to_rustls)?;
        Ok(ClientCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algorithms.supported_schemes()
    }
}

/// Verifies server certificates on the client side of mTLS: the chain must be trusted, pass
/// trust-domain binding, and the server's SPIFFE ID must be one of the expected ones. The
/// TLS server name is not compared with the certificate.
#[derive(Debug)]
pub struct SpiffeServerVerifier {
    roots: TrustBundle,
    expected: BTreeSet<SpiffeId>,
    algorithms: WebPkiSupportedAlgorithms,
}

impl SpiffeServerVerifier {
    /// A verifier trusting `roots` and accepting the identities in `expected` (an empty set
    /// accepts no server).
    pub fn new(roots: TrustBundle, expected: impl IntoIterator<Item = SpiffeId>) -> Self {
        Self {
            roots,
            expected: expected.into_iter().collect(),
            algorithms: algorithms(),
        }
    }
}

impl ServerCertVerifier for SpiffeServerVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let chain = full_chain(end_entity, intermediates);
        let identity =
            verify_chain(&chain, &self.roots, now, &KeyUsage::server_auth()).map_err(to_rustls)?;
        if !self.expected.contains(&identity) {
            let expected: Vec<String> = self.expected.iter().map(ToString::to_string).collect();
            return Err(to_rustls(VerifyError::UnexpectedIdentity {
                identity: identity.to_string(),
                expected: if expected.is_empty() {
                    "(none configured)".to_owned()
                } else {
                    expected.join(", ")
                },
            }));
        }
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algorithms.supported_schemes()
    }
}

fn full_chain<'a>(
    end_entity: &CertificateDer<'a>,
    intermediates: &[CertificateDer<'a>],
) -> Vec<CertificateDer<'a>> {
    let mut chain = Vec::with_capacity(1 + intermediates.len());
    chain.push(end_entity.clone());
    chain.extend(intermediates.iter().cloned());
    chain
}

/// Maps a verification failure to the rustls error that produces the right TLS alert,
/// keeping our message where no specific alert exists.
fn to_rustls(err: VerifyError) -> rustls::Error {
    let specific = match &err {
        VerifyError::Untrusted { error, .. } => match error {
            webpki::Error::CertExpired { .. } => Some(CertificateError::Expired),
            webpki::Error::CertNotValidYet { .. } => Some(CertificateError::NotValidYet),
            webpki::Error::UnknownIssuer => Some(CertificateError::UnknownIssuer),
            webpki::Error::InvalidSignatureForPublicKey => Some(CertificateError::BadSignature),
            _ => None,
        },
        VerifyError::Malformed(_) => Some(CertificateError::BadEncoding),
        _ => None,
    };
    tracing::debug!(error = %err, "rejected peer certificate");
    rustls::Error::InvalidCertificate(
        specific.unwrap_or_else(|| CertificateError::Other(OtherError(Arc::new(err)))),
    )
}
