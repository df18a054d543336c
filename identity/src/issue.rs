//! Issuing workload certificates: the identity comes from the caller (who authenticated
//! the workload), never from the CSR. The CSR only contributes its public key.

use std::fmt;
use std::time::{Duration, SystemTime};

use isthmus_api::naming::SpiffeId;
use rcgen::{
    CertificateParams, CertificateSigningRequestParams, DistinguishedName, ExtendedKeyUsagePurpose,
    IsCa, KeyPair, KeyUsagePurpose, PublicKeyData, SanType, SerialNumber,
};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, CertificateSigningRequestDer, PrivateKeyDer};
use time::OffsetDateTime;

use crate::{ClusterCa, cert, pem};

/// Lifetime of a workload certificate when the caller asks for none.
pub const DEFAULT_TTL: Duration = Duration::from_secs(24 * 3600);
/// Longest lifetime the CA grants; longer requests are capped to it.
pub const MAX_TTL: Duration = Duration::from_secs(7 * 24 * 3600);
/// How far `notBefore` is backdated, so peers with slightly slow clocks accept a fresh cert.
pub const CLOCK_SKEW: Duration = Duration::from_secs(120);

/// Why a certificate could not be issued.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IssueError {
    /// The certificate signing request is unusable.
    #[error("invalid certificate signing request: {0}")]
    InvalidCsr(String),
    /// The identity is outside the CA's trust domain.
    #[error(
        "cannot issue {identity}: this cluster's CA only issues identities in trust domain \
         {trust_domain:?}"
    )]
    WrongTrustDomain {
        /// The requested identity.
        identity: String,
        /// The CA's trust domain.
        trust_domain: String,
    },
    /// A zero lifetime was requested.
    #[error("a certificate lifetime must be positive (omit it for the default of 24h)")]
    ZeroTtl,
    /// The intermediate has expired.
    #[error("the cluster CA certificate has expired; rotate the cacerts")]
    CaExpired,
    /// Key generation or signing failed.
    #[error("signing the certificate failed: {0}")]
    Sign(String),
}

/// A signed workload certificate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IssuedCert {
    /// The identity in the certificate's only SAN.
    pub identity: SpiffeId,
    /// The leaf certificate, PEM.
    pub cert_pem: String,
    /// Leaf, then the CA's intermediates, PEM; no root.
    pub chain_pem: String,
    /// The same chain in DER, leaf first (what rustls wants).
    pub chain_der: Vec<CertificateDer<'static>>,
    /// Start of validity (backdated by [`CLOCK_SKEW`]).
    pub not_before: SystemTime,
    /// End of validity.
    pub not_after: SystemTime,
}

impl IssuedCert {
    /// Each certificate of the chain as its own PEM block, leaf first.
    pub fn chain_pems(&self) -> Vec<String> {
        self.chain_der
            .iter()
            .map(|der| pem::encode_cert(der))
            .collect()
    }
}

/// A workload certificate together with its freshly generated private key.
#[derive(Clone)]
pub struct IssuedKeyAndCert {
    /// The certificate and chain.
    pub cert: IssuedCert,
    /// The private key, PKCS#8 PEM. Secret.
    pub key_pem: String,
    key_der: Vec<u8>,
}

impl IssuedKeyAndCert {
    /// The private key in DER (PKCS#8), for rustls.
    pub fn key_der(&self) -> PrivateKeyDer<'static> {
        PrivateKeyDer::Pkcs8(self.key_der.clone().into())
    }
}

impl fmt::Debug for IssuedKeyAndCert {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("IssuedKeyAndCert")
            .field("cert", &self.cert)
            .field("key_pem", &"[secret]")
            .finish()
    }
}

impl ClusterCa {
    /// Signs the public key of `csr_pem` (a PEM `CERTIFICATE REQUEST`) for `identity`.
    ///
    /// Whatever names or extensions the CSR asks for are ignored: the leaf has exactly one
    /// URI SAN (`identity`), an empty subject, is not a CA, has key usages digitalSignature
    /// and keyEncipherment, and extended key usages serverAuth and clientAuth. `ttl`
    /// defaults to [`DEFAULT_TTL`] and is capped to [`MAX_TTL`] and to the CA's own expiry;
    /// `notBefore` is backdated by [`CLOCK_SKEW`].
    ///
    /// # Errors
    /// If the CSR does not parse or its signature does not verify, the identity is outside
    /// the CA's trust domain, the ttl is zero, or the CA has expired.
    pub fn sign_csr(
        &self,
        csr_pem: &str,
        identity: &SpiffeId,
        ttl: Option<Duration>,
    ) -> Result<IssuedCert, IssueError> {
        let csr = parse_csr(csr_pem)?;
        self.issue(&csr.public_key, identity, ttl)
    }

    /// Generates a key pair (ECDSA P-256) and issues a certificate for it, e.g. for the
    /// control plane's own serving certificate, tests and the lab. Same rules as
    /// [`sign_csr`](Self::sign_csr).
    ///
    /// # Errors
    /// As for [`sign_csr`](Self::sign_csr), minus the CSR errors.
    pub fn issue_key_and_cert(
        &self,
        identity: &SpiffeId,
        ttl: Option<Duration>,
    ) -> Result<IssuedKeyAndCert, IssueError> {
        let key = KeyPair::generate().map_err(|err| IssueError::Sign(err.to_string()))?;
        let cert = self.issue(&key, identity, ttl)?;
        Ok(IssuedKeyAndCert {
            cert,
            key_pem: key.serialize_pem(),
            key_der: key.serialize_der(),
        })
    }

    fn issue(
        &self,
        public_key: &impl PublicKeyData,
        identity: &SpiffeId,
        ttl: Option<Duration>,
    ) -> Result<IssuedCert, IssueError> {
        if identity.trust_domain != self.trust_domain {
            return Err(IssueError::WrongTrustDomain {
                identity: identity.to_string(),
                trust_domain: self.trust_domain.clone(),
            });
        }
        let ttl = match ttl {
            Some(Duration::ZERO) => return Err(IssueError::ZeroTtl),
            Some(ttl) => ttl.min(MAX_TTL),
            None => DEFAULT_TTL,
        };
        let now = SystemTime::now();
        let not_after = (now + ttl).min(self.not_after);
        if not_after <= now {
            return Err(IssueError::CaExpired);
        }
        let mut params = CertificateParams::default();
        params.distinguished_name = DistinguishedName::new();
        let uri = identity
            .to_string()
            .try_into()
            .map_err(|err| IssueError::Sign(format!("{identity}: {err}")))?;
        params.subject_alt_names = vec![SanType::URI(uri)];
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyEncipherment,
        ];
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        set_validity(&mut params, now, not_after)?;
        let leaf = params
            .signed_by(public_key, &self.issuer)
            .map_err(|err| IssueError::Sign(err.to_string()))?;
        let leaf_der = leaf.der().clone();
        let parsed = cert::parse(&leaf_der).map_err(IssueError::Sign)?;
        let (not_before, not_after) = cert::validity(&parsed);
        let mut chain_der = vec![leaf_der];
        chain_der.extend(self.chain.iter().cloned());
        Ok(IssuedCert {
            identity: identity.clone(),
            cert_pem: leaf.pem(),
            chain_pem: pem::encode_certs(&chain_der),
            chain_der,
            not_before,
            not_after,
        })
    }
}

fn parse_csr(csr_pem: &str) -> Result<CertificateSigningRequestParams, IssueError> {
    let der = CertificateSigningRequestDer::from_pem_slice(csr_pem.as_bytes()).map_err(|_| {
        IssueError::InvalidCsr("expected a PEM \"CERTIFICATE REQUEST\" block".to_owned())
    })?;
    CertificateSigningRequestParams::from_der(&der).map_err(|err| {
        IssueError::InvalidCsr(match err {
            rcgen::Error::CouldNotParseCertificationRequest => {
                "not a valid PKCS#10 certificate signing request".to_owned()
            }
            rcgen::Error::InvalidCertificationRequestSignature => {
                "its signature does not verify with the public key it carries".to_owned()
            }
            rcgen::Error::UnsupportedExtension => "it requests an extension other than \
                 subjectAltName, keyUsage, extendedKeyUsage or basicConstraints (requested \
                 extensions are ignored anyway: send a CSR without them)"
                .to_owned(),
            rcgen::Error::UnsupportedSignatureAlgorithm => "unsupported key or signature \
                 algorithm; use ECDSA P-256/P-384, Ed25519 or RSA"
                .to_owned(),
            other => other.to_string(),
        })
    })
}

/// Sets `notBefore` (backdated by [`CLOCK_SKEW`]), `notAfter` and a random serial number.
pub(crate) fn set_validity(
    params: &mut CertificateParams,
    now: SystemTime,
    not_after: SystemTime,
) -> Result<(), IssueError> {
    params.not_before = OffsetDateTime::from(now - CLOCK_SKEW);
    params.not_after = OffsetDateTime::from(not_after);
    params.serial_number = Some(random_serial()?);
    params.use_authority_key_identifier_extension = true;
    Ok(())
}

/// A random, positive 128-bit serial number (RFC 5280: unique per issuer, at most 20 bytes).
fn random_serial() -> Result<SerialNumber, IssueError> {
    let mut bytes = [0u8; 16];
    rustls::crypto::ring::default_provider()
        .secure_random
        .fill(&mut bytes)
        .map_err(|_| IssueError::Sign("the system random number generator failed".to_owned()))?;
    bytes[0] = (bytes[0] & 0x7f) | 0x40;
    Ok(SerialNumber::from_slice(&bytes))
}

#[cfg(test)]
mod tests;
