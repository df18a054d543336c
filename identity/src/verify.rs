//! Verifying a workload's certificate chain: webpki path validation to a root of the trust
//! bundle, plus trust-domain binding — the leaf's SPIFFE trust domain must be the one carried
//! by the intermediate that signed it.
//!
//! The binding is checked inside webpki's path building (its `verify_path` hook), on the
//! exact path webpki validated: were it checked on a path guessed from the presented chain,
//! a chain listing a second intermediate with the same subject could steer the check to the
//! wrong issuer. If the hook rejects a path, webpki tries the other candidate paths.

use std::cell::RefCell;

use isthmus_api::naming::SpiffeId;
use rustls::crypto::WebPkiSupportedAlgorithms;
use rustls_pki_types::{CertificateDer, UnixTime};
use webpki::{
    EndEntityCert, ExtendedKeyUsageValidator, KeyPurposeIdIter, KeyUsage,
    RequiredEkuNotFoundContext, VerifiedPath,
};

use crate::TrustBundle;
use crate::cert;

/// Why a workload certificate chain is not accepted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum VerifyError {
    /// No certificate was presented.
    #[error("no certificate was presented")]
    EmptyChain,
    /// A certificate does not parse.
    #[error("malformed certificate: {0}")]
    Malformed(String),
    /// The leaf does not carry exactly one SPIFFE ID.
    #[error("the workload certificate has no usable SPIFFE identity: {0}")]
    LeafIdentity(String),
    /// webpki rejected the chain (unknown issuer, expired, bad signature, wrong usage, ...).
    #[error("certificate chain for {identity} is not trusted: {reason}")]
    Untrusted {
        /// The SPIFFE ID the leaf claims.
        identity: String,
        /// webpki's verdict.
        reason: String,
        /// The webpki error, for mapping to a TLS alert.
        #[source]
        error: webpki::Error,
    },
    /// The leaf was signed directly by a root, which carries no trust domain.
    #[error(
        "{identity} was issued directly by a root; workload certificates must be issued by a \
         cluster intermediate that carries its trust domain"
    )]
    NoIntermediate {
        /// The SPIFFE ID the leaf claims.
        identity: String,
    },
    /// The issuing intermediate carries no (valid) trust domain.
    #[error("the issuing intermediate {issuer:?} is not usable: {reason}")]
    IssuerTrustDomain {
        /// Subject of the intermediate.
        issuer: String,
        /// What is wrong with it.
        reason: String,
    },
    /// Trust-domain binding failed: the intermediate minted an identity outside its domain.
    #[error(
        "{identity} was issued by the intermediate of trust domain {issuer_trust_domain:?} \
         ({issuer}); a cluster may only issue identities in its own trust domain"
    )]
    TrustDomainMismatch {
        /// The SPIFFE ID the leaf claims.
        identity: String,
        /// The trust domain of the intermediate that signed it.
        issuer_trust_domain: String,
        /// Subject of that intermediate.
        issuer: String,
    },
    /// The chain is valid but the peer is not one of the identities expected.
    #[error("peer identity {identity} is not the expected {expected}")]
    UnexpectedIdentity {
        /// The peer's verified SPIFFE ID.
        identity: String,
        /// The accepted identities, comma-separated.
        expected: String,
    },
}

/// Verifies a workload certificate chain (leaf first, then intermediates, roots optional)
/// against `roots` at time `now`, and returns the leaf's SPIFFE ID.
///
/// Checks: webpki path validation (signatures, validity, CA constraints) with the leaf
/// usable for both `serverAuth` and `clientAuth`; the leaf carries exactly one URI SAN, a
/// SPIFFE ID; and trust-domain binding: the intermediate that signed the leaf, on the path
/// webpki validated, carries the leaf's trust domain (a leaf signed directly by a root is
/// refused), so a compromised cluster cannot mint another cluster's identities.
///
/// # Errors
/// A [`VerifyError`] saying which check failed.
pub fn verify_workload_chain(
    chain: &[CertificateDer<'_>],
    roots: &TrustBundle,
    now: UnixTime,
) -> Result<SpiffeId, VerifyError> {
    verify_chain(chain, roots, now, &WorkloadUsage)
}

/// [`verify_workload_chain`] with a chosen extended key usage (one TLS role).
pub(crate) fn verify_chain(
    chain: &[CertificateDer<'_>],
    roots: &TrustBundle,
    now: UnixTime,
    usage: &dyn ExtendedKeyUsageValidator,
) -> Result<SpiffeId, VerifyError> {
    let (leaf, intermediates) = chain.split_first().ok_or(VerifyError::EmptyChain)?;
    let identity = cert::peer_identity(leaf)?;
    let end_entity = EndEntityCert::try_from(leaf)
        .map_err(|err| VerifyError::Malformed(format!("leaf certificate: {err:?}")))?;
    let binding_error = RefCell::new(None);
    let check_binding = |path: &VerifiedPath<'_>| {
        check_trust_domain(&identity, path).map_err(|err| {
            binding_error.replace(Some(err));
            // Any non-fatal error makes webpki try the remaining candidate paths.
            webpki::Error::UnknownIssuer
        })
    };
    let result = end_entity.verify_for_usage(
        algorithms().all,
        roots.anchors(),
        intermediates,
        now,
        UsageRef(usage),
        None,
        Some(&check_binding),
    );
    match result {
        Ok(_) => Ok(identity),
        Err(error) => Err(binding_error
            .into_inner()
            .unwrap_or_else(|| VerifyError::Untrusted {
                identity: identity.to_string(),
                reason: describe(&error),
                error,
            })),
    }
}

/// The signature algorithms of the ring provider, shared with the TLS verifiers.
pub(crate) fn algorithms() -> WebPkiSupportedAlgorithms {
    rustls::crypto::ring::default_provider().signature_verification_algorithms
}

fn check_trust_domain(identity: &SpiffeId, path: &VerifiedPath<'_>) -> Result<(), VerifyError> {
    let issuer =
        path.intermediate_certificates()
            .next()
            .ok_or_else(|| VerifyError::NoIntermediate {
                identity: identity.to_string(),
            })?;
    let der = issuer.der();
    let parsed = cert::parse(&der).map_err(VerifyError::Malformed)?;
    let issuer_name = parsed.subject().to_string();
    let trust_domain =
        cert::ca_trust_domain_of(&parsed).map_err(|reason| VerifyError::IssuerTrustDomain {
            issuer: issuer_name.clone(),
            reason,
        })?;
    if trust_domain != identity.trust_domain {
        return Err(VerifyError::TrustDomainMismatch {
            identity: identity.to_string(),
            issuer_trust_domain: trust_domain,
            issuer: issuer_name,
        });
    }
    Ok(())
}

fn describe(error: &webpki::Error) -> String {
    match error {
        webpki::Error::UnknownIssuer => {
            "it does not chain to a root of the trust bundle (unknown issuer)".to_owned()
        }
        webpki::Error::CertExpired { .. } => "a certificate in the chain has expired".to_owned(),
        webpki::Error::CertNotValidYet { .. } => {
            "a certificate in the chain is not valid yet (check clocks)".to_owned()
        }
        webpki::Error::RequiredEkuNotFoundContext(_) => {
            "the leaf is not valid for this TLS role (extended key usage)".to_owned()
        }
        other => format!("{other:?}"),
    }
}

/// Workload leaves are used for both ends of mTLS: when they list extended key usages,
/// both `serverAuth` and `clientAuth` must be among them.
struct WorkloadUsage;

impl ExtendedKeyUsageValidator for WorkloadUsage {
    fn validate(&self, iter: KeyPurposeIdIter<'_, '_>) -> Result<(), webpki::Error> {
        let mut present = Vec::new();
        for id in iter {
            present.push(id?.to_decoded_oid());
        }
        let has = |oid: &[usize]| present.iter().any(|p| p == oid);
        if present.is_empty() {
            return Ok(());
        }
        for (required, oid) in [
            (KeyUsage::server_auth(), KeyUsage::SERVER_AUTH_REPR),
            (KeyUsage::client_auth(), KeyUsage::CLIENT_AUTH_REPR),
        ] {
            if !has(oid) {
                return Err(webpki::Error::RequiredEkuNotFoundContext(
                    RequiredEkuNotFoundContext { required, present },
                ));
            }
        }
        Ok(())
    }
}

/// Lets a `&dyn ExtendedKeyUsageValidator` be passed where webpki wants a sized one.
struct UsageRef<'a>(&'a dyn ExtendedKeyUsageValidator);

impl ExtendedKeyUsageValidator for UsageRef<'_> {
    fn validate(&self, iter: KeyPurposeIdIter<'_, '_>) -> Result<(), webpki::Error> {
        self.0.validate(iter)
    }
}
