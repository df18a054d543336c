//! The trust bundle: the set of root certificates a workload accepts. During a root
//! rotation it holds the old and the new root, and chains to either are accepted.

use std::fmt;
use std::sync::Arc;

use rustls::DistinguishedName;
use rustls_pki_types::{CertificateDer, TrustAnchor};

use crate::{cert, pem};

/// Why a set of root certificates cannot be used as a trust bundle.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BundleError {
    /// The PEM text holds no usable certificate.
    #[error("trust bundle: {0}")]
    Pem(String),
    /// One of the certificates cannot be a trust anchor.
    #[error("trust bundle: root #{index} ({subject}) cannot be used as a trust anchor: {reason}")]
    Root {
        /// Position of the certificate in the bundle, from 0.
        index: usize,
        /// Its subject, or `?` if it does not parse.
        subject: String,
        /// What is wrong with it.
        reason: String,
    },
}

/// Root certificates trusted for workload certificates, in PEM and as webpki trust anchors.
/// Cloning shares them: every TLS configuration of a proxy (one per set of expected peer
/// identities) holds the same copy.
#[derive(Clone)]
pub struct TrustBundle(Arc<Roots>);

struct Roots {
    roots: Vec<CertificateDer<'static>>,
    anchors: Vec<TrustAnchor<'static>>,
}

impl TrustBundle {
    /// Parses every `CERTIFICATE` block of `pem` as a root (e.g. `root-cert.pem`).
    ///
    /// # Errors
    /// If there is no certificate, or one cannot be a trust anchor.
    pub fn from_pem(pem: &str) -> Result<Self, BundleError> {
        Self::from_der(pem::parse_certs(pem).map_err(BundleError::Pem)?)
    }

    /// Builds a bundle from DER roots. Duplicates are dropped.
    ///
    /// # Errors
    /// If `roots` is empty, or one cannot be a trust anchor (does not parse, or is not a CA).
    pub fn from_der(roots: Vec<CertificateDer<'static>>) -> Result<Self, BundleError> {
        if roots.is_empty() {
            return Err(BundleError::Pem("no root certificate".to_owned()));
        }
        let mut bundle = Roots {
            roots: Vec::with_capacity(roots.len()),
            anchors: Vec::with_capacity(roots.len()),
        };
        for (index, root) in roots.into_iter().enumerate() {
            if bundle.roots.contains(&root) {
                continue;
            }
            let parsed = cert::parse(&root).map_err(|reason| BundleError::Root {
                index,
                subject: "?".to_owned(),
                reason,
            })?;
            let error = |reason: String| BundleError::Root {
                index,
                subject: parsed.subject().to_string(),
                reason,
            };
            cert::check_is_ca(&parsed).map_err(error)?;
            let anchor = webpki::anchor_from_trusted_cert(&root)
                .map_err(|err| error(format!("{err:?}")))?
                .to_owned();
            bundle.anchors.push(anchor);
            bundle.roots.push(root);
        }
        Ok(Self(Arc::new(bundle)))
    }

    /// The union of two bundles (e.g. this cluster's roots and a peer's during rotation).
    pub fn merged(&self, other: &TrustBundle) -> TrustBundle {
        let mut merged = Roots {
            roots: self.0.roots.clone(),
            anchors: self.0.anchors.clone(),
        };
        for (root, anchor) in other.0.roots.iter().zip(&other.0.anchors) {
            if !merged.roots.contains(root) {
                merged.roots.push(root.clone());
                merged.anchors.push(anchor.clone());
            }
        }
        Self(Arc::new(merged))
    }

    /// The root certificates, in DER.
    pub fn roots(&self) -> &[CertificateDer<'static>] {
        &self.0.roots
    }

    /// The roots as concatenated PEM blocks (what `root-cert.pem` holds).
    pub fn to_pem(&self) -> String {
        pem::encode_certs(&self.0.roots)
    }

    /// Each root as its own PEM block.
    pub fn root_pems(&self) -> Vec<String> {
        self.0
            .roots
            .iter()
            .map(|root| pem::encode_cert(root))
            .collect()
    }

    /// Whether `der` is one of the roots.
    pub fn contains(&self, der: &CertificateDer<'_>) -> bool {
        self.0
            .roots
            .iter()
            .any(|root| root.as_ref() == der.as_ref())
    }

    /// How many roots the bundle holds (never zero).
    pub fn len(&self) -> usize {
        self.0.roots.len()
    }

    /// Always `false`: a bundle holds at least one root.
    pub fn is_empty(&self) -> bool {
        self.0.roots.is_empty()
    }

    pub(crate) fn anchors(&self) -> &[TrustAnchor<'static>] {
        &self.0.anchors
    }

    /// Root subjects, sent as certificate-authority hints in a TLS `CertificateRequest`.
    pub(crate) fn subjects(&self) -> Vec<DistinguishedName> {
        self.0
            .anchors
            .iter()
            .map(|anchor| DistinguishedName::in_sequence(anchor.subject.as_ref()))
            .collect()
    }
}

impl fmt::Debug for TrustBundle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let subjects: Vec<String> = self
            .roots()
            .iter()
            .map(|root| cert::parse(root).map_or_else(|e| e, |c| c.subject().to_string()))
            .collect();
        f.debug_struct("TrustBundle")
            .field("roots", &subjects)
            .finish()
    }
}
