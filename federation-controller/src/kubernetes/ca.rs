//! The cluster CA from a Kubernetes Secret in Istio's `cacerts` layout
//! (`ca-cert.pem`, `ca-key.pem`, `root-cert.pem`, `cert-chain.pem`), as the
//! control plane loads it, and kept current: the Secret is watched (by name,
//! so RBAC can limit the controller to that one Secret) and a changed Secret
//! replaces the CA the controller issues its certificate from, as a changed
//! `cacerts` directory does in directory mode (root rotation).

use std::fmt;
use std::str::FromStr;
use std::sync::Arc;

use futures::StreamExt;
use isthmus_identity::{CacertsPems, ClusterCa};
use k8s_openapi::api::core::v1::Secret;
use kube::Api;
use kube::runtime::WatchStreamExt;
use kube::runtime::watcher::{self, Event};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::tls::Tls;

/// The keys of a `cacerts` Secret, in the order of [`Pems`].
pub const KEYS: [&str; 4] = [
    "ca-cert.pem",
    "ca-key.pem",
    "root-cert.pem",
    "cert-chain.pem",
];

/// The four PEM files of a loaded CA, to tell whether a Secret changed.
pub type Pems = [String; 4];

/// `<namespace>/<name>` of a Secret.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SecretRef {
    pub namespace: String,
    pub name: String,
}

impl fmt::Display for SecretRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.namespace, self.name)
    }
}

impl FromStr for SecretRef {
    type Err = SecretError;

    fn from_str(s: &str) -> Result<Self, SecretError> {
        match s.split_once('/') {
            Some((ns, name)) if !ns.is_empty() && !name.is_empty() && !name.contains('/') => {
                Ok(Self {
                    namespace: ns.to_owned(),
                    name: name.to_owned(),
                })
            }
            _ => Err(SecretError {
                secret: s.to_owned(),
                reason: "must be <namespace>/<name>".to_owned(),
            }),
        }
    }
}

/// Why the CA Secret is unusable.
#[derive(Debug, thiserror::Error)]
#[error("CA Secret {secret}: {reason}")]
pub struct SecretError {
    pub secret: String,
    pub reason: String,
}

/// Reads the Secret and loads the CA from it.
///
/// # Errors
/// If the Secret cannot be read, lacks a key, or does not hold a usable intermediate.
pub async fn load(
    client: kube::Client,
    secret: &SecretRef,
) -> Result<(ClusterCa, Pems), SecretError> {
    let api: Api<Secret> = Api::namespaced(client, &secret.namespace);
    let s = api.get(&secret.name).await.map_err(|e| SecretError {
        secret: secret.to_string(),
        reason: e.to_string(),
    })?;
    from_secret(secret, &s)
}

/// The CA in a Secret object.
///
/// # Errors
/// If a key is missing or not UTF-8, or the PEMs are not a usable intermediate.
pub fn from_secret(secret: &SecretRef, s: &Secret) -> Result<(ClusterCa, Pems), SecretError> {
    let err = |reason: String| SecretError {
        secret: secret.to_string(),
        reason,
    };
    let data = s.data.clone().unwrap_or_default();
    let get = |key: &str| -> Result<String, SecretError> {
        let bytes = data
            .get(key)
            .ok_or_else(|| err(format!("has no {key} key")))?;
        String::from_utf8(bytes.0.clone()).map_err(|_| err(format!("{key} is not UTF-8 PEM")))
    };
    let pems: Pems = [get(KEYS[0])?, get(KEYS[1])?, get(KEYS[2])?, get(KEYS[3])?];
    let ca = ClusterCa::from_pems(CacertsPems {
        ca_cert: &pems[0],
        ca_key: &pems[1],
        root_cert: &pems[2],
        cert_chain: &pems[3],
    })
    .map_err(|e| err(e.to_string()))?;
    Ok((ca, pems))
}

/// Watches the Secret and switches `tls` to the CA it holds whenever it changes;
/// `roots_changed` is bumped so the new roots are announced to peers. A Secret that is
/// deleted or unusable keeps the CA in use (and is logged).
pub(crate) async fn reload_loop(
    client: kube::Client,
    secret: SecretRef,
    mut loaded: Pems,
    tls: Arc<Tls>,
    roots_changed: watch::Sender<u64>,
    shutdown: CancellationToken,
) {
    let api: Api<Secret> = Api::namespaced(client, &secret.namespace);
    let config = watcher::Config::default().fields(&format!("metadata.name={}", secret.name));
    let mut events = watcher::watcher(api, config).default_backoff().boxed();
    loop {
        let event = tokio::select! {
            () = shutdown.cancelled() => return,
            e = events.next() => match e {
                Some(e) => e,
                None => return,
            },
        };
        match event {
            Ok(Event::Apply(s) | Event::InitApply(s)) => match from_secret(&secret, &s) {
                Ok((_, pems)) if pems == loaded => {}
                Ok((ca, pems)) => match tls.replace_ca(Arc::new(ca)) {
                    Ok(()) => {
                        loaded = pems;
                        tracing::info!(%secret, roots = tls.local_roots().len(), "reloaded the cluster CA from its Secret");
                        roots_changed.send_modify(|v| *v += 1);
                    }
                    Err(error) => {
                        tracing::error!(%secret, %error, "issuing from the reloaded cluster CA; keeping the previous one");
                    }
                },
                Err(error) => {
                    tracing::error!(%error, "keeping the cluster CA in use");
                }
            },
            Ok(Event::Delete(_)) => {
                tracing::warn!(%secret, "the CA Secret was deleted; keeping the cluster CA in use");
            }
            Ok(Event::Init | Event::InitDone) => {}
            // The backoff wrapper retries; an error only means this attempt failed.
            Err(error) => {
                tracing::warn!(%secret, %error, "watching the CA Secret; retrying with backoff");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secret_refs_are_namespace_slash_name() {
        assert_eq!(
            "isthmus-system/cacerts".parse::<SecretRef>().unwrap(),
            SecretRef {
                namespace: "isthmus-system".into(),
                name: "cacerts".into()
            }
        );
        for bad in ["cacerts", "/cacerts", "ns/", "a/b/c", ""] {
            let e = bad.parse::<SecretRef>().unwrap_err().to_string();
            assert!(e.contains("must be <namespace>/<name>"), "{bad}: {e}");
        }
    }
}
