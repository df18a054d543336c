//! Reading what Isthmus cares about out of X.509 certificates: SPIFFE URI SANs, CA-ness,
//! validity. Parsing only; trust decisions are made in [`crate::verify`] with webpki.

use std::time::{Duration, SystemTime};

use isthmus_api::naming::{SpiffeId, validate_trust_domain};
use rustls_pki_types::CertificateDer;
use x509_parser::certificate::X509Certificate;
use x509_parser::extensions::GeneralName;
use x509_parser::prelude::FromDer;

use crate::verify::VerifyError;

const SCHEME: &str = "spiffe://";

/// Parses a DER certificate; the error is a reason without context.
pub(crate) fn parse(der: &[u8]) -> Result<X509Certificate<'_>, String> {
    match X509Certificate::from_der(der) {
        Ok(([], cert)) => Ok(cert),
        Ok(_) => Err("trailing bytes after the certificate".to_owned()),
        Err(err) => Err(format!("not a valid X.509 certificate: {err}")),
    }
}

/// Every URI SAN of the certificate.
pub(crate) fn uri_sans<'a>(cert: &'a X509Certificate<'_>) -> Result<Vec<&'a str>, String> {
    let san = cert
        .subject_alternative_name()
        .map_err(|err| format!("malformed subjectAltName extension: {err}"))?;
    Ok(san
        .map(|san| {
            san.value
                .general_names
                .iter()
                .filter_map(|name| match name {
                    GeneralName::URI(uri) => Some(*uri),
                    _ => None,
                })
                .collect()
        })
        .unwrap_or_default())
}

/// The SPIFFE ID of a workload (leaf) certificate: its one and only URI SAN.
pub(crate) fn leaf_identity(cert: &X509Certificate<'_>) -> Result<SpiffeId, String> {
    match uri_sans(cert)?.as_slice() {
        [uri] => uri.parse::<SpiffeId>().map_err(|err| err.to_string()),
        [] => Err("the certificate has no URI SAN; expected exactly one \
                   spiffe://<trust-domain>/ns/<ns>/sa/<sa>"
            .to_owned()),
        many => Err(format!(
            "the certificate has {} URI SANs ({}); a workload certificate carries exactly one \
             SPIFFE ID",
            many.len(),
            many.join(", ")
        )),
    }
}

/// The trust domain an intermediate carries: its single URI SAN `spiffe://<trust-domain>`.
pub(crate) fn ca_trust_domain_of(cert: &X509Certificate<'_>) -> Result<String, String> {
    let uris = uri_sans(cert)?;
    let spiffe: Vec<&str> = uris
        .iter()
        .copied()
        .filter(|uri| uri.starts_with(SCHEME))
        .collect();
    let uri = match spiffe.as_slice() {
        [uri] => *uri,
        [] => {
            return Err(
                "it carries no trust domain: an Isthmus intermediate needs a URI SAN \
                 spiffe://<trust-domain> (create it with `isthmus ca`)"
                    .to_owned(),
            );
        }
        many => {
            return Err(format!(
                "it carries {} spiffe:// URI SANs ({}); expected exactly one \
                 spiffe://<trust-domain>",
                many.len(),
                many.join(", ")
            ));
        }
    };
    let trust_domain = &uri[SCHEME.len()..];
    validate_trust_domain(trust_domain)
        .map_err(|err| format!("its URI SAN {uri:?} is not spiffe://<trust-domain>: {err}"))?;
    Ok(trust_domain.to_owned())
}

/// Whether the certificate may sign certificates: `basicConstraints` cA and, when a
/// `keyUsage` extension is present, `keyCertSign`. The error says what is missing.
pub(crate) fn check_is_ca(cert: &X509Certificate<'_>) -> Result<(), String> {
    let constraints = cert
        .basic_constraints()
        .map_err(|err| format!("malformed basicConstraints extension: {err}"))?;
    if !constraints.is_some_and(|bc| bc.value.ca) {
        return Err("basicConstraints cA is not set".to_owned());
    }
    let key_usage = cert
        .key_usage()
        .map_err(|err| format!("malformed keyUsage extension: {err}"))?;
    if key_usage.is_some_and(|ku| !ku.value.key_cert_sign()) {
        return Err("keyUsage lacks keyCertSign".to_owned());
    }
    Ok(())
}

/// The certificate's `notBefore` and `notAfter`.
pub(crate) fn validity(cert: &X509Certificate<'_>) -> (SystemTime, SystemTime) {
    let at = |ts: i64| match u64::try_from(ts) {
        Ok(secs) => SystemTime::UNIX_EPOCH + Duration::from_secs(secs),
        Err(_) => SystemTime::UNIX_EPOCH,
    };
    let validity = cert.validity();
    (
        at(validity.not_before.timestamp()),
        at(validity.not_after.timestamp()),
    )
}

/// The SPIFFE ID of a peer's leaf certificate, e.g. `conn.peer_certificates()[0]` after a
/// handshake verified by [`crate::tls`] (this function itself checks nothing about trust).
///
/// # Errors
/// If the certificate does not parse or does not carry exactly one URI SAN that is a
/// Kubernetes SPIFFE ID.
pub fn peer_identity(leaf: &CertificateDer<'_>) -> Result<SpiffeId, VerifyError> {
    let cert = parse(leaf).map_err(VerifyError::Malformed)?;
    leaf_identity(&cert).map_err(VerifyError::LeafIdentity)
}

/// The trust domain carried by an intermediate CA certificate (its URI SAN
/// `spiffe://<trust-domain>`), e.g. to check a peer cluster's intermediate before trusting it.
///
/// # Errors
/// If the certificate does not parse or carries no (or more than one) trust domain.
pub fn ca_trust_domain(ca: &CertificateDer<'_>) -> Result<String, VerifyError> {
    let cert = parse(ca).map_err(VerifyError::Malformed)?;
    ca_trust_domain_of(&cert).map_err(|reason| VerifyError::IssuerTrustDomain {
        issuer: cert.subject().to_string(),
        reason,
    })
}
