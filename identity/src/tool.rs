//! Creating the PKI: the federation's shared root and one intermediate per cluster, written
//! in Istio's `cacerts` layout. Backs `isthmus ca` and the local lab.

use std::fmt;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use isthmus_api::naming::{validate_dns1123_label, validate_trust_domain};
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, SanType,
};

use crate::ca::{CA_CERT_FILE, CA_KEY_FILE, CERT_CHAIN_FILE, ROOT_CERT_FILE};
use crate::issue::set_validity;
use crate::{CacertsPems, ClusterCa, LoadError, TrustBundle, cert, pem};

/// The root's private key, next to `root-cert.pem` (never part of a cluster's cacerts).
pub const ROOT_KEY_FILE: &str = "root-key.pem";
/// Lifetime of a root created by [`create_root`].
pub const ROOT_VALIDITY: Duration = Duration::from_secs(10 * 365 * 24 * 3600);
/// Lifetime of an intermediate created by [`create_intermediate`] (capped by the root's).
pub const INTERMEDIATE_VALIDITY: Duration = Duration::from_secs(365 * 24 * 3600);

/// Why creating, reading or writing CA material failed.
#[derive(Debug, thiserror::Error)]
pub enum ToolError {
    /// A name or trust domain is invalid.
    #[error("{0}")]
    InvalidName(String),
    /// Key generation or signing failed.
    #[error("generating the {what} failed: {reason}")]
    Generate {
        /// What was being generated.
        what: &'static str,
        /// Why it failed.
        reason: String,
    },
    /// A root certificate or key is unusable.
    #[error("{file}: {reason}")]
    Invalid {
        /// The file (or PEM input) at fault.
        file: String,
        /// What is wrong.
        reason: String,
    },
    /// A file could not be read or written.
    #[error("{}: {source}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
}

/// A root CA: its certificate and private key (PEM). The key is secret.
#[derive(Clone)]
pub struct RootCa {
    cert_pem: String,
    key_pem: String,
}

impl RootCa {
    /// Loads a root from PEM, checking that it is a CA and the key is its key.
    ///
    /// # Errors
    /// [`ToolError::Invalid`] naming `root-cert.pem` or `root-key.pem`.
    pub fn from_pem(cert_pem: &str, key_pem: &str) -> Result<Self, ToolError> {
        let invalid = |file: &str, reason: String| ToolError::Invalid {
            file: file.to_owned(),
            reason,
        };
        let certs = pem::parse_certs(cert_pem).map_err(|r| invalid(ROOT_CERT_FILE, r))?;
        let [root] = certs.as_slice() else {
            return Err(invalid(
                ROOT_CERT_FILE,
                format!("holds {} certificates; expected one root", certs.len()),
            ));
        };
        let parsed = cert::parse(root).map_err(|r| invalid(ROOT_CERT_FILE, r))?;
        cert::check_is_ca(&parsed).map_err(|r| invalid(ROOT_CERT_FILE, r))?;
        let key = pem::parse_key(key_pem).map_err(|r| invalid(ROOT_KEY_FILE, r))?;
        if parsed.public_key().subject_public_key.data.as_ref() != key.public_key_raw() {
            return Err(invalid(
                ROOT_KEY_FILE,
                format!("does not match {ROOT_CERT_FILE}"),
            ));
        }
        Ok(Self {
            cert_pem: cert_pem.to_owned(),
            key_pem: key_pem.to_owned(),
        })
    }

    /// Reads `root-cert.pem` and `root-key.pem` from `dir`.
    ///
    /// # Errors
    /// If a file is missing or unusable.
    pub fn load(dir: impl AsRef<Path>) -> Result<Self, ToolError> {
        let read = |name: &str| {
            let path = dir.as_ref().join(name);
            std::fs::read_to_string(&path).map_err(|source| ToolError::Io { path, source })
        };
        Self::from_pem(&read(ROOT_CERT_FILE)?, &read(ROOT_KEY_FILE)?)
    }

    /// Writes `root-cert.pem` and `root-key.pem` (mode 0600) into `dir`, creating it.
    ///
    /// # Errors
    /// If the directory or a file cannot be written.
    pub fn write(&self, dir: impl AsRef<Path>) -> Result<(), ToolError> {
        let dir = dir.as_ref();
        create_dir(dir)?;
        write_file(&dir.join(ROOT_KEY_FILE), &self.key_pem, true)?;
        write_file(&dir.join(ROOT_CERT_FILE), &self.cert_pem, false)
    }

    /// The root certificate, PEM.
    pub fn cert_pem(&self) -> &str {
        &self.cert_pem
    }

    /// The root's private key, PEM. Secret.
    pub fn key_pem(&self) -> &str {
        &self.key_pem
    }

    /// A trust bundle holding just this root.
    ///
    /// # Errors
    /// Only if the certificate is unusable (not for roots made by [`create_root`]).
    pub fn trust_bundle(&self) -> Result<TrustBundle, ToolError> {
        TrustBundle::from_pem(&self.cert_pem).map_err(|err| ToolError::Invalid {
            file: ROOT_CERT_FILE.to_owned(),
            reason: err.to_string(),
        })
    }

    fn issuer(&self) -> Result<Issuer<'static, KeyPair>, ToolError> {
        let invalid = |file: &str, reason: String| ToolError::Invalid {
            file: file.to_owned(),
            reason,
        };
        let key = pem::parse_key(&self.key_pem).map_err(|r| invalid(ROOT_KEY_FILE, r))?;
        Issuer::from_ca_cert_pem(&self.cert_pem, key)
            .map_err(|err| invalid(ROOT_CERT_FILE, err.to_string()))
    }

    fn not_after(&self) -> Result<SystemTime, ToolError> {
        let certs = pem::parse_certs(&self.cert_pem).unwrap_or_default();
        let parsed = certs
            .first()
            .ok_or_else(|| "no certificate".to_owned())
            .and_then(|der| cert::parse(der));
        parsed
            .map(|c| cert::validity(&c).1)
            .map_err(|reason| ToolError::Invalid {
                file: ROOT_CERT_FILE.to_owned(),
                reason,
            })
    }
}

impl fmt::Debug for RootCa {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RootCa")
            .field("cert_pem", &self.cert_pem)
            .field("key_pem", &"[secret]")
            .finish()
    }
}

/// A cluster's intermediate CA: certificate, key, and chain up to its root (PEM).
#[derive(Clone)]
pub struct Intermediate {
    cluster_name: String,
    trust_domain: String,
    cert_pem: String,
    key_pem: String,
    chain_pem: String,
}

impl Intermediate {
    /// The cluster this intermediate belongs to.
    pub fn cluster_name(&self) -> &str {
        &self.cluster_name
    }

    /// The trust domain it carries and may issue identities in.
    pub fn trust_domain(&self) -> &str {
        &self.trust_domain
    }

    /// The intermediate certificate (`ca-cert.pem`).
    pub fn cert_pem(&self) -> &str {
        &self.cert_pem
    }

    /// Its private key (`ca-key.pem`). Secret.
    pub fn key_pem(&self) -> &str {
        &self.key_pem
    }

    /// The intermediate followed by its root (`cert-chain.pem`).
    pub fn chain_pem(&self) -> &str {
        &self.chain_pem
    }

    /// The cluster CA this intermediate makes, trusting `roots`; same checks as
    /// [`ClusterCa::load`].
    ///
    /// # Errors
    /// If `roots` does not hold this intermediate's root.
    pub fn cluster_ca(&self, roots: &TrustBundle) -> Result<ClusterCa, LoadError> {
        let root_cert = roots.to_pem();
        ClusterCa::from_pems(CacertsPems {
            ca_cert: &self.cert_pem,
            ca_key: &self.key_pem,
            root_cert: &root_cert,
            cert_chain: &self.chain_pem,
        })
    }
}

impl fmt::Debug for Intermediate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Intermediate")
            .field("cluster_name", &self.cluster_name)
            .field("trust_domain", &self.trust_domain)
            .field("cert_pem", &self.cert_pem)
            .field("key_pem", &"[secret]")
            .finish()
    }
}

/// Creates a self-signed root CA (ECDSA P-256, [`ROOT_VALIDITY`]) named `common_name`.
///
/// # Errors
/// If key generation or signing fails.
pub fn create_root(common_name: &str) -> Result<RootCa, ToolError> {
    let generate = |reason: String| ToolError::Generate {
        what: "root CA",
        reason,
    };
    let key = KeyPair::generate().map_err(|err| generate(err.to_string()))?;
    let mut params = ca_params(common_name, BasicConstraints::Unconstrained);
    let now = SystemTime::now();
    set_validity(&mut params, now, now + ROOT_VALIDITY).map_err(|e| generate(e.to_string()))?;
    params.use_authority_key_identifier_extension = false;
    let cert = params
        .self_signed(&key)
        .map_err(|err| generate(err.to_string()))?;
    Ok(RootCa {
        cert_pem: cert.pem(),
        key_pem: key.serialize_pem(),
    })
}

/// Creates cluster `cluster_name`'s intermediate under `root`, carrying `trust_domain` as
/// its URI SAN `spiffe://<trust_domain>` and allowed to sign only leaves (path length 0).
///
/// # Errors
/// If the cluster name is not a DNS-1123 label, the trust domain is invalid, or signing fails.
pub fn create_intermediate(
    root: &RootCa,
    cluster_name: &str,
    trust_domain: &str,
) -> Result<Intermediate, ToolError> {
    validate_dns1123_label(cluster_name)
        .map_err(|err| ToolError::InvalidName(format!("cluster name: {err}")))?;
    validate_trust_domain(trust_domain).map_err(|err| ToolError::InvalidName(err.to_string()))?;
    let generate = |reason: String| ToolError::Generate {
        what: "intermediate CA",
        reason,
    };
    let key = KeyPair::generate().map_err(|err| generate(err.to_string()))?;
    let mut params = ca_params(
        &format!("Isthmus intermediate CA {cluster_name}"),
        BasicConstraints::Constrained(0),
    );
    let uri = format!("spiffe://{trust_domain}")
        .try_into()
        .map_err(|err: rcgen::Error| generate(err.to_string()))?;
    params.subject_alt_names = vec![SanType::URI(uri)];
    let now = SystemTime::now();
    let not_after = (now + INTERMEDIATE_VALIDITY).min(root.not_after()?);
    set_validity(&mut params, now, not_after).map_err(|e| generate(e.to_string()))?;
    let cert = params
        .signed_by(&key, &root.issuer()?)
        .map_err(|err| generate(err.to_string()))?;
    let cert_pem = cert.pem();
    Ok(Intermediate {
        cluster_name: cluster_name.to_owned(),
        trust_domain: trust_domain.to_owned(),
        chain_pem: format!("{cert_pem}{}", root.cert_pem),
        cert_pem,
        key_pem: key.serialize_pem(),
    })
}

fn ca_params(common_name: &str, constraints: BasicConstraints) -> CertificateParams {
    let mut params = CertificateParams::default();
    let mut name = DistinguishedName::new();
    name.push(DnType::OrganizationName, "Isthmus");
    name.push(DnType::CommonName, common_name);
    params.distinguished_name = name;
    params.is_ca = IsCa::Ca(constraints);
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    params
}

/// Writes `intermediate` as a `cacerts` directory: `ca-cert.pem`, `ca-key.pem` (mode
/// 0600), `cert-chain.pem` and `root-cert.pem` holding every root of `roots`. Each file is
/// replaced atomically.
///
/// # Errors
/// If the directory or a file cannot be written.
pub fn write_cacerts(
    dir: impl AsRef<Path>,
    intermediate: &Intermediate,
    roots: &TrustBundle,
) -> Result<(), ToolError> {
    let dir = dir.as_ref();
    create_dir(dir)?;
    write_file(&dir.join(CA_KEY_FILE), &intermediate.key_pem, true)?;
    write_file(&dir.join(CA_CERT_FILE), &intermediate.cert_pem, false)?;
    write_file(&dir.join(CERT_CHAIN_FILE), &intermediate.chain_pem, false)?;
    write_file(&dir.join(ROOT_CERT_FILE), &roots.to_pem(), false)
}

fn create_dir(dir: &Path) -> Result<(), ToolError> {
    std::fs::create_dir_all(dir).map_err(|source| ToolError::Io {
        path: dir.to_owned(),
        source,
    })
}

/// Writes through a temporary file in the same directory, then renames over `path`.
fn write_file(path: &Path, contents: &str, secret: bool) -> Result<(), ToolError> {
    let io = |source| ToolError::Io {
        path: path.to_owned(),
        source,
    };
    let mut tmp_name = path.as_os_str().to_owned();
    tmp_name.push(".tmp");
    let tmp = PathBuf::from(tmp_name);
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(if secret { 0o600 } else { 0o644 });
    }
    let _ = std::fs::remove_file(&tmp);
    let mut file = options.open(&tmp).map_err(io)?;
    file.write_all(contents.as_bytes()).map_err(io)?;
    file.sync_all().map_err(io)?;
    drop(file);
    std::fs::rename(&tmp, path).map_err(io)
}

#[cfg(test)]
mod tests;
