//! The cluster CA: this cluster's intermediate, loaded from Istio's `cacerts` layout and
//! checked before it signs anything.

use std::fmt;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use isthmus_api::naming::SpiffeId;
use rcgen::{Issuer, KeyPair};
use rustls_pki_types::{CertificateDer, UnixTime};

use crate::verify::{self, VerifyError};
use crate::{TrustBundle, cert, pem, tool};

/// The intermediate certificate (PEM, exactly one certificate).
pub const CA_CERT_FILE: &str = "ca-cert.pem";
/// The intermediate's private key (PEM; PKCS#8, PKCS#1 or SEC1, unencrypted).
pub const CA_KEY_FILE: &str = "ca-key.pem";
/// The trusted roots (PEM, one or more certificates; several during a root rotation).
pub const ROOT_CERT_FILE: &str = "root-cert.pem";
/// The intermediate's chain: `ca-cert.pem` first, then any further intermediates, usually
/// ending with the root (roots are dropped from what the CA hands out).
pub const CERT_CHAIN_FILE: &str = "cert-chain.pem";

/// Why a cluster CA cannot be loaded. Each variant names the file at fault.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    /// A file of the `cacerts` directory cannot be read.
    #[error(
        "cannot read {}: {source}; a cacerts directory holds {CA_CERT_FILE}, {CA_KEY_FILE}, \
         {ROOT_CERT_FILE} and {CERT_CHAIN_FILE} (create one with `isthmus ca`)",
        path.display()
    )]
    Read {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// A file's content is unusable (bad PEM, wrong number of certificates, bad key, ...).
    #[error("{file}: {reason}")]
    Invalid {
        /// The file (a path, or a Secret data key).
        file: String,
        /// What is wrong and what was expected.
        reason: String,
    },
    /// The private key is not the key of the intermediate certificate.
    #[error(
        "{key_file} does not match {cert_file}: the private key belongs to another certificate"
    )]
    KeyMismatch {
        /// The key file.
        key_file: String,
        /// The certificate file.
        cert_file: String,
    },
    /// The intermediate certificate cannot sign certificates.
    #[error("{file} is not a CA certificate: {reason}")]
    NotCa {
        /// The certificate file.
        file: String,
        /// What is missing.
        reason: String,
    },
    /// The intermediate does not chain to a root of `root-cert.pem`, or its chain is invalid.
    #[error("{file} is not trusted by {roots_file}: {reason}")]
    Untrusted {
        /// The certificate file.
        file: String,
        /// The roots file.
        roots_file: String,
        /// webpki's verdict on a test certificate issued by this CA.
        reason: String,
    },
    /// Creating the CA (development mode) or its issuer failed.
    #[error("cannot set up the cluster CA: {0}")]
    Setup(String),
}

/// The PEM contents of a `cacerts` directory or Kubernetes Secret (same keys as the files).
#[derive(Debug, Clone, Copy)]
pub struct CacertsPems<'a> {
    /// `ca-cert.pem`.
    pub ca_cert: &'a str,
    /// `ca-key.pem`.
    pub ca_key: &'a str,
    /// `root-cert.pem`.
    pub root_cert: &'a str,
    /// `cert-chain.pem`.
    pub cert_chain: &'a str,
}

/// This cluster's certificate authority: an intermediate under the shared root, carrying
/// the cluster's trust domain. Cheap to share behind an `Arc`; it never changes once loaded
/// (reload by loading a new one).
pub struct ClusterCa {
    pub(crate) trust_domain: String,
    pub(crate) issuer: Issuer<'static, KeyPair>,
    /// The intermediate first, then any further intermediates; no roots.
    pub(crate) chain: Vec<CertificateDer<'static>>,
    pub(crate) roots: TrustBundle,
    pub(crate) not_after: SystemTime,
    subject: String,
}

/// File labels used in errors: paths when loading a directory, plain names otherwise.
struct Labels {
    ca_cert: String,
    ca_key: String,
    root_cert: String,
    cert_chain: String,
}

impl ClusterCa {
    /// Loads and checks the `cacerts` directory `dir` (see [`ClusterCa::from_pems`]).
    ///
    /// # Errors
    /// A [`LoadError`] naming the file that is missing, unreadable or wrong.
    pub fn load(dir: impl AsRef<Path>) -> Result<Self, LoadError> {
        let dir = dir.as_ref();
        let read = |name: &str| {
            let path = dir.join(name);
            std::fs::read_to_string(&path).map_err(|source| LoadError::Read { path, source })
        };
        let (ca_cert, ca_key) = (read(CA_CERT_FILE)?, read(CA_KEY_FILE)?);
        let (root_cert, cert_chain) = (read(ROOT_CERT_FILE)?, read(CERT_CHAIN_FILE)?);
        let label = |name: &str| dir.join(name).display().to_string();
        let labels = Labels {
            ca_cert: label(CA_CERT_FILE),
            ca_key: label(CA_KEY_FILE),
            root_cert: label(ROOT_CERT_FILE),
            cert_chain: label(CERT_CHAIN_FILE),
        };
        let pems = CacertsPems {
            ca_cert: &ca_cert,
            ca_key: &ca_key,
            root_cert: &root_cert,
            cert_chain: &cert_chain,
        };
        Self::check(pems, &labels)
    }

    /// Builds the CA from PEM contents, e.g. a Kubernetes Secret's data, and checks that the
    /// key matches the certificate, the certificate is a CA carrying a trust domain
    /// (URI SAN `spiffe://<trust-domain>`), and it chains to a root of `root-cert.pem`.
    ///
    /// # Errors
    /// A [`LoadError`] naming the entry (`ca-cert.pem`, ...) that is wrong.
    pub fn from_pems(pems: CacertsPems<'_>) -> Result<Self, LoadError> {
        let labels = Labels {
            ca_cert: CA_CERT_FILE.to_owned(),
            ca_key: CA_KEY_FILE.to_owned(),
            root_cert: ROOT_CERT_FILE.to_owned(),
            cert_chain: CERT_CHAIN_FILE.to_owned(),
        };
        Self::check(pems, &labels)
    }

    /// A throwaway root and intermediate for `trust_domain`, for development only: nothing
    /// outside this process trusts it. Logs a warning saying so.
    ///
    /// # Errors
    /// If the trust domain is invalid or key generation fails.
    pub fn self_signed_dev(trust_domain: &str) -> Result<Self, LoadError> {
        tracing::warn!(
            trust_domain,
            "USING A SELF-SIGNED DEVELOPMENT CA: its root exists only in this process, so no \
             other cluster trusts these identities and restarts change them; never use this \
             outside development (provide a cacerts directory instead)"
        );
        let setup = |err: tool::ToolError| LoadError::Setup(err.to_string());
        let root = tool::create_root("Isthmus development root (self-signed)").map_err(setup)?;
        let intermediate =
            tool::create_intermediate(&root, "development", trust_domain).map_err(setup)?;
        intermediate.cluster_ca(&root.trust_bundle().map_err(setup)?)
    }

    fn check(pems: CacertsPems<'_>, labels: &Labels) -> Result<Self, LoadError> {
        let invalid = |file: &String, reason: String| LoadError::Invalid {
            file: file.clone(),
            reason,
        };
        let ca_cert = match pem::parse_certs(pems.ca_cert)
            .map_err(|reason| invalid(&labels.ca_cert, reason))?
            .as_slice()
        {
            [one] => one.clone(),
            many => {
                return Err(invalid(
                    &labels.ca_cert,
                    format!(
                        "holds {} certificates; it must hold only the cluster intermediate \
                         (put the rest of the chain in {CERT_CHAIN_FILE})",
                        many.len()
                    ),
                ));
            }
        };
        let parsed = cert::parse(&ca_cert).map_err(|reason| invalid(&labels.ca_cert, reason))?;
        let key = pem::parse_key(pems.ca_key).map_err(|reason| invalid(&labels.ca_key, reason))?;
        if parsed.public_key().subject_public_key.data.as_ref() != key.public_key_raw() {
            return Err(LoadError::KeyMismatch {
                key_file: labels.ca_key.clone(),
                cert_file: labels.ca_cert.clone(),
            });
        }
        cert::check_is_ca(&parsed).map_err(|reason| LoadError::NotCa {
            file: labels.ca_cert.clone(),
            reason,
        })?;
        let trust_domain =
            cert::ca_trust_domain_of(&parsed).map_err(|reason| invalid(&labels.ca_cert, reason))?;
        let roots = TrustBundle::from_pem(pems.root_cert)
            .map_err(|err| invalid(&labels.root_cert, err.to_string()))?;
        let chain = build_chain(&ca_cert, pems.cert_chain, &roots, labels)?;
        let subject = parsed.subject().to_string();
        let (_, not_after) = cert::validity(&parsed);
        let issuer = Issuer::from_ca_cert_der(&ca_cert, key)
            .map_err(|err| invalid(&labels.ca_cert, format!("unusable as an issuer: {err}")))?;
        let ca = Self {
            trust_domain,
            issuer,
            chain,
            roots,
            not_after,
            subject,
        };
        ca.self_test(labels)?;
        Ok(ca)
    }

    /// Issues a short-lived test leaf and verifies it exactly as peers will: proves the key,
    /// CA constraints, validity and the chain to a root all work together.
    fn self_test(&self, labels: &Labels) -> Result<(), LoadError> {
        let probe = SpiffeId::new(&self.trust_domain, "isthmus-system", "ca-self-test")
            .map_err(|err| LoadError::Setup(err.to_string()))?;
        let issued = self
            .issue_key_and_cert(&probe, Some(Duration::from_secs(300)))
            .map_err(|err| LoadError::Setup(format!("issuing a test certificate: {err}")))?;
        let now = UnixTime::now();
        match verify::verify_workload_chain(&issued.cert.chain_der, &self.roots, now) {
            Ok(_) => Ok(()),
            Err(err) => Err(LoadError::Untrusted {
                file: labels.ca_cert.clone(),
                roots_file: labels.root_cert.clone(),
                reason: match err {
                    VerifyError::Untrusted { reason, .. } => format!(
                        "{reason} (checked with the intermediates of {} and {} root(s))",
                        labels.cert_chain,
                        self.roots.len()
                    ),
                    other => other.to_string(),
                },
            }),
        }
    }

    /// The trust domain this CA issues identities in, read from its intermediate.
    pub fn trust_domain(&self) -> &str {
        &self.trust_domain
    }

    /// The trusted roots (all of `root-cert.pem`).
    pub fn trust_bundle(&self) -> &TrustBundle {
        &self.roots
    }

    /// The trusted roots as PEM, what workloads install as their trust bundle.
    pub fn trust_bundle_pem(&self) -> String {
        self.roots.to_pem()
    }

    /// The CA's chain as PEM: the intermediate and any further intermediates, no root.
    pub fn chain_pem(&self) -> String {
        pem::encode_certs(&self.chain)
    }

    /// The CA's chain in DER (see [`chain_pem`](Self::chain_pem)).
    pub fn chain_der(&self) -> &[CertificateDer<'static>] {
        &self.chain
    }

    /// When the intermediate expires; no leaf outlives it.
    pub fn not_after(&self) -> SystemTime {
        self.not_after
    }
}

/// The intermediate followed by the non-root certificates of `cert-chain.pem`.
fn build_chain(
    ca_cert: &CertificateDer<'static>,
    cert_chain_pem: &str,
    roots: &TrustBundle,
    labels: &Labels,
) -> Result<Vec<CertificateDer<'static>>, LoadError> {
    let listed = pem::parse_certs(cert_chain_pem).map_err(|reason| LoadError::Invalid {
        file: labels.cert_chain.clone(),
        reason,
    })?;
    if listed.first() != Some(ca_cert) {
        return Err(LoadError::Invalid {
            file: labels.cert_chain.clone(),
            reason: format!(
                "must start with the certificate of {} (the chain belongs to another \
                 intermediate, or is in the wrong order)",
                labels.ca_cert
            ),
        });
    }
    let mut chain = vec![ca_cert.clone()];
    for cert in listed.into_iter().skip(1) {
        if !roots.contains(&cert) && !is_self_signed(&cert) && !chain.contains(&cert) {
            chain.push(cert);
        }
    }
    Ok(chain)
}

fn is_self_signed(der: &CertificateDer<'_>) -> bool {
    cert::parse(der).is_ok_and(|c| c.subject().as_raw() == c.issuer().as_raw())
}

impl fmt::Debug for ClusterCa {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClusterCa")
            .field("trust_domain", &self.trust_domain)
            .field("subject", &self.subject)
            .field("chain_len", &self.chain.len())
            .field("roots", &self.roots)
            .finish_non_exhaustive()
    }
}
