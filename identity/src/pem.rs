//! PEM in and out: certificate lists, private keys (PKCS#8, PKCS#1 RSA, SEC1 EC) and
//! encoding DER back to PEM. Errors are plain reasons; callers add the file name.

use rcgen::KeyPair;
use rustls_pki_types::pem::{self, PemObject};
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

/// PEM text that holds no usable certificate.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct PemError(String);

/// Parses every `CERTIFICATE` block of `pem` (other blocks are skipped), e.g. the
/// `cert_chain` and `trust_bundle` the control plane's certificate service returns.
///
/// # Errors
/// If the PEM is malformed or holds no certificate.
pub fn certs_from_pem(pem: &str) -> Result<Vec<CertificateDer<'static>>, PemError> {
    parse_certs(pem).map_err(PemError)
}

/// Every `CERTIFICATE` block of `pem`, in order; other blocks are skipped.
pub(crate) fn parse_certs(pem: &str) -> Result<Vec<CertificateDer<'static>>, String> {
    let certs = CertificateDer::pem_slice_iter(pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|err| format!("invalid PEM: {}", describe(&err)))?;
    if certs.is_empty() {
        return Err("no PEM \"CERTIFICATE\" block found".to_owned());
    }
    Ok(certs)
}

/// The first private key in `pem`, as an rcgen signing key.
pub(crate) fn parse_key(pem: &str) -> Result<KeyPair, String> {
    let key = PrivateKeyDer::from_pem_slice(pem.as_bytes()).map_err(|err| match err {
        pem::Error::NoItemsFound => "no PEM \"PRIVATE KEY\", \"RSA PRIVATE KEY\" or \
                                     \"EC PRIVATE KEY\" block found (encrypted keys are \
                                     not supported)"
            .to_owned(),
        other => format!("invalid PEM: {}", describe(&other)),
    })?;
    let unsupported = || {
        "unsupported or corrupt private key; expected ECDSA P-256/P-384, Ed25519 or RSA".to_owned()
    };
    match &key {
        PrivateKeyDer::Pkcs8(pkcs8) => {
            KeyPair::try_from(pkcs8.secret_pkcs8_der()).map_err(|_| unsupported())
        }
        PrivateKeyDer::Pkcs1(pkcs1) => {
            let wrapped = pkcs8_wrap(RSA_ALGORITHM, pkcs1.secret_pkcs1_der());
            KeyPair::try_from(wrapped.as_slice()).map_err(|_| unsupported())
        }
        PrivateKeyDer::Sec1(sec1) => [EC_P256_ALGORITHM, EC_P384_ALGORITHM]
            .into_iter()
            .find_map(|alg| KeyPair::try_from(pkcs8_wrap(alg, sec1.secret_sec1_der())).ok())
            .ok_or_else(unsupported),
        _ => Err(unsupported()),
    }
}

fn describe(err: &pem::Error) -> String {
    match err {
        pem::Error::MissingSectionEnd { end_marker } => format!(
            "a PEM block is missing its end line {:?}",
            String::from_utf8_lossy(end_marker)
        ),
        pem::Error::IllegalSectionStart { line } => format!(
            "malformed PEM begin line {:?}",
            String::from_utf8_lossy(line)
        ),
        pem::Error::Base64Decode(reason) => format!("bad base64 in a PEM block: {reason}"),
        other => format!("{other:?}"),
    }
}

/// `AlgorithmIdentifier { rsaEncryption, NULL }`.
const RSA_ALGORITHM: &[u8] = &[
    0x30, 0x0d, 0x06, 0x09, 0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x01, 0x05, 0x00,
];
/// `AlgorithmIdentifier { id-ecPublicKey, prime256v1 }`.
const EC_P256_ALGORITHM: &[u8] = &[
    0x30, 0x13, 0x06, 0x07, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x02, 0x01, 0x06, 0x08, 0x2a, 0x86, 0x48,
    0xce, 0x3d, 0x03, 0x01, 0x07,
];
/// `AlgorithmIdentifier { id-ecPublicKey, secp384r1 }`.
const EC_P384_ALGORITHM: &[u8] = &[
    0x30, 0x10, 0x06, 0x07, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x02, 0x01, 0x06, 0x05, 0x2b, 0x81, 0x04,
    0x00, 0x22,
];

/// Wraps a PKCS#1 or SEC1 key as PKCS#8 (`OneAsymmetricKey` v1), the only form ring loads.
fn pkcs8_wrap(algorithm: &[u8], key: &[u8]) -> Vec<u8> {
    let mut body = vec![0x02, 0x01, 0x00];
    body.extend_from_slice(algorithm);
    body.extend(tlv(0x04, key));
    tlv(0x30, &body)
}

fn tlv(tag: u8, content: &[u8]) -> Vec<u8> {
    let len = content.len();
    let mut out = vec![tag];
    if len < 0x80 {
        out.push(len as u8);
    } else {
        let bytes = len.to_be_bytes();
        let skip = bytes.iter().take_while(|b| **b == 0).count();
        out.push(0x80 | (bytes.len() - skip) as u8);
        out.extend_from_slice(&bytes[skip..]);
    }
    out.extend_from_slice(content);
    out
}

/// Encodes one DER certificate as a PEM `CERTIFICATE` block (64-column base64, `\n` endings).
pub(crate) fn encode_cert(der: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut b64 = String::with_capacity(der.len().div_ceil(3) * 4);
    for chunk in der.chunks(3) {
        let n = chunk
            .iter()
            .enumerate()
            .fold(0u32, |n, (i, b)| n | u32::from(*b) << (16 - 8 * i));
        for i in 0..4 {
            if i <= chunk.len() {
                b64.push(char::from(ALPHABET[(n >> (18 - 6 * i)) as usize & 63]));
            } else {
                b64.push('=');
            }
        }
    }
    let mut out = String::from("-----BEGIN CERTIFICATE-----\n");
    for line in b64.as_bytes().chunks(64) {
        out.push_str(&String::from_utf8_lossy(line));
        out.push('\n');
    }
    out.push_str("-----END CERTIFICATE-----\n");
    out
}

/// Encodes certificates as concatenated PEM blocks.
pub(crate) fn encode_certs<'a>(ders: impl IntoIterator<Item = &'a CertificateDer<'a>>) -> String {
    ders.into_iter().map(|der| encode_cert(der)).collect()
}

#[cfg(test)]
mod tests;
