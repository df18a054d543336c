//! The federation in effect: the one `MeshFederation` of this cluster, read
//! from a store snapshot, with the questions the rest of the crate asks of
//! it (who is a peer, what may be imported).

use std::collections::BTreeMap;
use std::sync::Arc;

use isthmus_api::federation::{ImportPolicy, LocalCluster, MeshFederation, Peer};
use isthmus_api::{Kind, Resource, ResourceKey};
use isthmus_config::Snapshot;

/// The `MeshFederation` in effect, indexed by peer name.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Federation {
    /// `MeshFederation <ns>/<name>` it was read from.
    pub source: String,
    pub local: LocalCluster,
    pub peers: BTreeMap<String, Peer>,
    pub import_policy: Option<ImportPolicy>,
}

impl Federation {
    /// Reads the `MeshFederation` of `cluster` from a snapshot.
    ///
    /// Several objects are allowed (e.g. one per cluster in a shared directory); the one
    /// whose `spec.local.cluster` is `cluster` is used. One being deleted (a
    /// `deletionTimestamp`, held by our finalizer until its imports are removed) is no
    /// longer in effect. `Ok(None)` when there is none.
    ///
    /// # Errors
    /// When more than one names `cluster` (the message names both).
    pub fn from_snapshot(snapshot: &Snapshot, cluster: &str) -> Result<Option<Arc<Self>>, String> {
        let mut found: Option<(ResourceKey, &MeshFederation)> = None;
        for r in snapshot.of_kind(Kind::MeshFederation) {
            let Resource::MeshFederation(mf) = &**r else {
                continue;
            };
            if mf.spec.local.cluster != cluster || mf.metadata.deletion_timestamp.is_some() {
                continue;
            }
            if let Some((first, _)) = &found {
                return Err(format!(
                    "{first} and {} both describe cluster {cluster:?}; keep one",
                    r.key()
                ));
            }
            found = Some((r.key(), mf));
        }
        Ok(found.map(|(key, mf)| {
            Arc::new(Federation {
                source: key.to_string(),
                local: mf.spec.local.clone(),
                peers: mf
                    .spec
                    .peers
                    .iter()
                    .map(|p| (p.name.clone(), p.clone()))
                    .collect(),
                import_policy: mf.spec.import_policy.clone(),
            })
        }))
    }

    /// Whether `namespace/name` exported by a peer may be imported.
    pub fn may_import(&self, namespace: &str, name: &str) -> bool {
        let Some(policy) = &self.import_policy else {
            return true;
        };
        if policy.namespaces.is_empty() && policy.services.is_empty() {
            return true;
        }
        policy.namespaces.iter().any(|ns| ns == namespace)
            || policy
                .services
                .iter()
                .any(|s| s.split_once('/') == Some((namespace, name)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn import_policy_allows_listed_namespaces_and_services() {
        let mut f = Federation::default();
        assert!(f.may_import("any", "thing"));
        f.import_policy = Some(ImportPolicy {
            namespaces: vec!["sample".into()],
            services: vec!["other/reviews".into()],
        });
        assert!(f.may_import("sample", "helloworld"));
        assert!(f.may_import("other", "reviews"));
        assert!(!f.may_import("other", "ratings"));
        assert!(!f.may_import("kube-system", "dns"));
    }
}
