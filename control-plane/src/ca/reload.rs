//! Reloading the cluster CA and the trust bundle without a restart (root
//! rotation).
//!
//! Every `every` the reloader fingerprints the CA's source (the contents of
//! the `cacerts` directory, or the Secret's data in Kubernetes mode) and the
//! optional extra-roots file (peers' roots, written by the federation
//! controller's `--trust-bundle-out`). When one changed it is loaded and
//! checked whole; only a good one replaces the current one:
//!
//! - the CA is swapped in [`CurrentCa`] at once: every CSR from then on is
//!   signed by the new intermediate;
//! - the trust bundle (the CA's roots plus the extra roots) goes into the
//!   [`MeshConfig`] the controller follows, which pushes `ROOTCA` to every
//!   proxy.
//!
//! A file mid-rewrite, an invalid CA, a CA of another trust domain or an
//! unparsable extra-roots file never replaces the good one: it is logged and
//! counted (`isthmus_control_plane_ca_reload_errors_total{source}`) and the
//! next change is tried again. A missing extra-roots file means no extra roots.

use std::collections::BTreeMap;
use std::hash::{DefaultHasher, Hash, Hasher};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use isthmus_identity::{
    CA_CERT_FILE, CA_KEY_FILE, CERT_CHAIN_FILE, CacertsPems, ClusterCa, ROOT_CERT_FILE, TrustBundle,
};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::xds::generate::MeshConfig;

/// The cluster CA in use, swapped atomically on reload. Cheap to clone.
#[derive(Clone)]
pub struct CurrentCa(Arc<ArcSwap<ClusterCa>>);

impl CurrentCa {
    /// Starts with `ca`.
    pub fn new(ca: Arc<ClusterCa>) -> Self {
        Self(Arc::new(ArcSwap::new(ca)))
    }

    /// The CA to sign with now.
    pub fn get(&self) -> Arc<ClusterCa> {
        self.0.load_full()
    }

    fn set(&self, ca: Arc<ClusterCa>) {
        self.0.store(ca);
    }
}

impl std::fmt::Debug for CurrentCa {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.load().fmt(f)
    }
}

/// Where the cluster CA comes from.
#[derive(Clone)]
pub enum CaSource {
    /// An Istio `cacerts` directory.
    Dir(PathBuf),
    /// A Kubernetes Secret (`<namespace>/<name>`) with the `cacerts` keys.
    Secret {
        client: kube::Client,
        secret: String,
    },
    /// A development CA made at start: nothing to reload.
    Fixed,
}

impl std::fmt::Debug for CaSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            CaSource::Dir(dir) => f.debug_tuple("Dir").field(dir).finish(),
            CaSource::Secret { secret, .. } => f.debug_tuple("Secret").field(secret).finish(),
            CaSource::Fixed => f.write_str("Fixed"),
        }
    }
}

/// Why the CA or the extra roots could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum ReloadError {
    #[error("cluster CA: {0}")]
    Ca(#[from] isthmus_identity::LoadError),
    #[error("CA Secret {secret}: {reason}")]
    Secret { secret: String, reason: String },
    #[error("extra roots {}: {reason}", path.display())]
    ExtraRoots { path: PathBuf, reason: String },
    #[error(
        "the new CA is for trust domain {new:?}, the control plane serves {current:?}; \
         restart it to change trust domains"
    )]
    TrustDomain { current: String, new: String },
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct SourceLabel {
    source: &'static str,
}

const CACERTS: SourceLabel = SourceLabel { source: "cacerts" };
const EXTRA_ROOTS: SourceLabel = SourceLabel {
    source: "extra_roots",
};

/// Metrics of CA reloads (`ca_*`). [`Default`] gives unregistered handles.
#[derive(Clone, Debug, Default)]
pub struct CaMetrics {
    reloads: Family<SourceLabel, Counter>,
    errors: Family<SourceLabel, Counter>,
    roots: Gauge,
}

impl CaMetrics {
    /// Registers the metrics in `registry`.
    pub fn register(registry: &mut Registry) -> Self {
        let m = Self::default();
        registry.register(
            "ca_reloads",
            "CA or extra roots reloaded after a change (source: cacerts, extra_roots)",
            m.reloads.clone(),
        );
        registry.register(
            "ca_reload_errors",
            "Changed CA or extra roots that could not be used; the previous ones stay",
            m.errors.clone(),
        );
        registry.register(
            "trust_bundle_roots",
            "Roots in the trust bundle served as ROOTCA",
            m.roots.clone(),
        );
        m
    }
}

/// Loads and reloads the cluster CA and the extra roots.
#[derive(Debug)]
pub struct CaReloader {
    source: CaSource,
    extra_roots: Option<PathBuf>,
    metrics: CaMetrics,
    /// Fingerprints of what is in use, and of the last content that failed.
    ca_seen: u64,
    ca_failed: Option<u64>,
    extra_seen: u64,
    extra_failed: Option<u64>,
    extra: Option<TrustBundle>,
}

impl CaReloader {
    /// Loads the CA from `source` and the extra roots from `extra_roots` (a
    /// missing file is no extra roots; a bad one is an error).
    ///
    /// # Errors
    /// If the CA cannot be loaded, or the extra roots file is not PEM roots.
    pub async fn load(
        source: CaSource,
        extra_roots: Option<PathBuf>,
        trust_domain: &str,
        metrics: CaMetrics,
    ) -> Result<(Self, Arc<ClusterCa>), ReloadError> {
        let (ca_seen, ca) = match &source {
            CaSource::Dir(dir) => {
                // Fingerprint first: a change while loading is seen next time.
                let seen = dir_fingerprint(dir);
                (seen, ClusterCa::load(dir)?)
            }
            CaSource::Secret { client, secret } => {
                let data = fetch_secret(client.clone(), secret).await?;
                (fingerprint(&data), ca_from_secret(secret, &data)?)
            }
            CaSource::Fixed => (0, ClusterCa::self_signed_dev(trust_domain)?),
        };
        let (extra_seen, extra) = match &extra_roots {
            Some(path) => {
                let (seen, content) = read_fingerprinted(path);
                if content.is_none() {
                    tracing::warn!(path = %path.display(), "extra roots file does not exist (yet); no extra roots");
                }
                (seen, parse_extra_roots(path, content.as_deref())?)
            }
            None => (0, None),
        };
        let reloader = Self {
            source,
            extra_roots,
            metrics,
            ca_seen,
            ca_failed: None,
            extra_seen,
            extra_failed: None,
            extra,
        };
        reloader.metrics.roots.set(reloader.roots(&ca).len() as i64);
        Ok((reloader, Arc::new(ca)))
    }

    /// The trust bundle: the CA's roots and the extra roots.
    pub fn roots(&self, ca: &ClusterCa) -> TrustBundle {
        match &self.extra {
            Some(extra) => ca.trust_bundle().merged(extra),
            None => ca.trust_bundle().clone(),
        }
    }

    /// Checks for changes every `every` until `shutdown`: swaps `current`
    /// and publishes the new trust bundle in `mesh`.
    pub async fn run(
        mut self,
        current: CurrentCa,
        mesh: watch::Sender<MeshConfig>,
        every: Duration,
        shutdown: CancellationToken,
    ) {
        let every = every.max(Duration::from_millis(10));
        loop {
            tokio::select! {
                () = shutdown.cancelled() => return,
                () = tokio::time::sleep(every) => {}
            }
            if self.check(&current).await {
                let ca = current.get();
                let roots = self.roots(&ca);
                self.metrics.roots.set(roots.len() as i64);
                let pem = roots.to_pem();
                let changed = mesh.send_if_modified(|m| {
                    let changed = m.trust_bundle_pem != pem;
                    m.trust_bundle_pem.clone_from(&pem);
                    changed
                });
                if changed {
                    tracing::info!(roots = roots.len(), "trust bundle changed; pushing ROOTCA");
                }
            }
        }
    }

    /// One check of both sources; whether anything was replaced.
    pub async fn check(&mut self, current: &CurrentCa) -> bool {
        let ca = self.check_ca(current).await;
        let extra = self.check_extra_roots();
        ca || extra
    }

    async fn check_ca(&mut self, current: &CurrentCa) -> bool {
        let (seen, loaded) = match &self.source {
            CaSource::Fixed => return false,
            CaSource::Dir(dir) => {
                let seen = dir_fingerprint(dir);
                if seen == self.ca_seen || Some(seen) == self.ca_failed {
                    return false;
                }
                (seen, ClusterCa::load(dir).map_err(ReloadError::from))
            }
            CaSource::Secret { client, secret } => {
                let data = match fetch_secret(client.clone(), secret).await {
                    Ok(data) => data,
                    Err(error) => {
                        // The API server is unreachable: not a bad CA, try again.
                        tracing::debug!(%error, "fetching the CA Secret");
                        return false;
                    }
                };
                let seen = fingerprint(&data);
                if seen == self.ca_seen || Some(seen) == self.ca_failed {
                    return false;
                }
                (seen, ca_from_secret(secret, &data))
            }
        };
        let trust_domain = current.get().trust_domain().to_string();
        let loaded = loaded.and_then(|ca| {
            if ca.trust_domain() == trust_domain {
                Ok(ca)
            } else {
                Err(ReloadError::TrustDomain {
                    current: trust_domain,
                    new: ca.trust_domain().to_string(),
                })
            }
        });
        match loaded {
            Ok(ca) => {
                tracing::info!(ca = ?ca, "reloaded the cluster CA; new certificates are signed by it");
                current.set(Arc::new(ca));
                self.ca_seen = seen;
                self.ca_failed = None;
                self.metrics.reloads.get_or_create(&CACERTS).inc();
                true
            }
            Err(error) => {
                tracing::error!(%error, "the changed cluster CA cannot be used; the previous one stays");
                self.ca_failed = Some(seen);
                self.metrics.errors.get_or_create(&CACERTS).inc();
                false
            }
        }
    }

    fn check_extra_roots(&mut self) -> bool {
        let Some(path) = &self.extra_roots else {
            return false;
        };
        let (seen, content) = read_fingerprinted(path);
        if seen == self.extra_seen || Some(seen) == self.extra_failed {
            return false;
        }
        match parse_extra_roots(path, content.as_deref()) {
            Ok(extra) => {
                tracing::info!(path = %path.display(), roots = extra.as_ref().map_or(0, TrustBundle::len), "reloaded the extra roots");
                self.extra = extra;
                self.extra_seen = seen;
                self.extra_failed = None;
                self.metrics.reloads.get_or_create(&EXTRA_ROOTS).inc();
                true
            }
            Err(error) => {
                tracing::error!(%error, "the changed extra roots cannot be used; the previous ones stay");
                self.extra_failed = Some(seen);
                self.metrics.errors.get_or_create(&EXTRA_ROOTS).inc();
                false
            }
        }
    }
}

/// Extra roots from a file's content; `None` content (no file) is no roots.
fn parse_extra_roots(
    path: &Path,
    content: Option<&str>,
) -> Result<Option<TrustBundle>, ReloadError> {
    let Some(content) = content else {
        return Ok(None);
    };
    TrustBundle::from_pem(content)
        .map(Some)
        .map_err(|e| ReloadError::ExtraRoots {
            path: path.to_path_buf(),
            reason: e.to_string(),
        })
}

/// A file's content (`None` if it does not exist) and its fingerprint.
fn read_fingerprinted(path: &Path) -> (u64, Option<String>) {
    match std::fs::read(path) {
        Ok(bytes) => (
            fingerprint(&bytes),
            Some(String::from_utf8_lossy(&bytes).into_owned()),
        ),
        Err(e) => (fingerprint(&e.kind().to_string()), None),
    }
}

/// Fingerprint of the four `cacerts` files' contents (or their read errors).
fn dir_fingerprint(dir: &Path) -> u64 {
    let files: Vec<_> = [CA_CERT_FILE, CA_KEY_FILE, ROOT_CERT_FILE, CERT_CHAIN_FILE]
        .iter()
        .map(|f| std::fs::read(dir.join(f)).map_err(|e| e.kind().to_string()))
        .collect();
    fingerprint(&files)
}

fn fingerprint(value: &impl Hash) -> u64 {
    let mut h = DefaultHasher::new();
    value.hash(&mut h);
    h.finish()
}

/// The `cacerts` keys of a Secret (`<namespace>/<name>`), as text.
pub(crate) async fn fetch_secret(
    client: kube::Client,
    secret: &str,
) -> Result<BTreeMap<String, String>, ReloadError> {
    let err = |reason: String| ReloadError::Secret {
        secret: secret.to_string(),
        reason,
    };
    let (ns, name) = secret
        .split_once('/')
        .ok_or_else(|| err("must be <namespace>/<name>".into()))?;
    let api: kube::Api<k8s_openapi::api::core::v1::Secret> = kube::Api::namespaced(client, ns);
    let s = api.get(name).await.map_err(|e| err(e.to_string()))?;
    let data = s.data.unwrap_or_default();
    let mut out = BTreeMap::new();
    for key in [CA_CERT_FILE, CA_KEY_FILE, ROOT_CERT_FILE, CERT_CHAIN_FILE] {
        let bytes = data
            .get(key)
            .ok_or_else(|| err(format!("has no {key} key")))?;
        let text = String::from_utf8(bytes.0.clone())
            .map_err(|_| err(format!("{key} is not UTF-8 PEM")))?;
        out.insert(key.to_string(), text);
    }
    Ok(out)
}

/// The CA from a Secret's data fetched by [`fetch_secret`].
pub(crate) fn ca_from_secret(
    secret: &str,
    data: &BTreeMap<String, String>,
) -> Result<ClusterCa, ReloadError> {
    let get = |key: &str| {
        data.get(key)
            .map(String::as_str)
            .ok_or_else(|| ReloadError::Secret {
                secret: secret.to_string(),
                reason: format!("has no {key} key"),
            })
    };
    Ok(ClusterCa::from_pems(CacertsPems {
        ca_cert: get(CA_CERT_FILE)?,
        ca_key: get(CA_KEY_FILE)?,
        root_cert: get(ROOT_CERT_FILE)?,
        cert_chain: get(CERT_CHAIN_FILE)?,
    })?)
}

#[cfg(test)]
mod tests;
