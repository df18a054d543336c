//! What a push sends: content hashes and versions, and the make-before-break
//! order of one proxy's changed types.

use std::collections::BTreeSet;
use std::hash::{DefaultHasher, Hash, Hasher};
use std::sync::Arc;

use crate::xds::{CLUSTER, XdsResource};

/// One response to send.
#[derive(Clone, Debug, PartialEq)]
pub(super) struct Step {
    pub(super) type_url: String,
    /// Sorted by name.
    pub(super) resources: Arc<Vec<XdsResource>>,
    pub(super) hash: u64,
}

impl Step {
    pub(super) fn new(type_url: &str, mut resources: Vec<XdsResource>) -> Self {
        resources.sort_by(|a, b| a.name.cmp(&b.name));
        let hash = content_hash(&resources);
        Self {
            type_url: type_url.to_string(),
            resources: Arc::new(resources),
            hash,
        }
    }
}

/// A hash of the resources' names and encoded bodies (sorted by name), so
/// that unchanged content is recognised whatever the state version.
pub(super) fn content_hash(resources: &[XdsResource]) -> u64 {
    let mut h = DefaultHasher::new();
    resources.len().hash(&mut h);
    for r in resources {
        r.name.hash(&mut h);
        r.resource.type_url.hash(&mut h);
        r.resource.value.hash(&mut h);
    }
    h.finish()
}

/// `version_info` of a response: the state version it was generated from and
/// 48 bits of its content hash, e.g. `42-3fa09c1d22b7`.
pub(super) fn version_info(state_version: u64, hash: u64) -> String {
    format!("{state_version}-{:012x}", hash >> 16)
}

/// Orders one push's changed types (given in push order).
///
/// Make before break: when the new CDS drops clusters the proxy has
/// (`sent_clusters`: the last CDS sent and its hash) and other types change
/// too, the proxy first gets the union of old and new clusters, then the other
/// types, and only then the new CDS, so nothing points at a removed cluster
/// in between. When nothing else changes, the new CDS goes out directly.
pub(super) fn make_before_break(
    mut changed: Vec<Step>,
    sent_clusters: Option<(&[XdsResource], u64)>,
) -> Vec<Step> {
    let Some(at) = changed.iter().position(|s| s.type_url == CLUSTER) else {
        return changed;
    };
    let Some((old, old_hash)) = sent_clusters else {
        return changed;
    };
    if changed.len() == 1 {
        return changed;
    }
    let new = &changed[at];
    let new_names: BTreeSet<&str> = new.resources.iter().map(|r| r.name.as_str()).collect();
    let dropped: Vec<XdsResource> = old
        .iter()
        .filter(|r| !new_names.contains(r.name.as_str()))
        .cloned()
        .collect();
    if dropped.is_empty() {
        return changed;
    }
    let mut union = new.resources.as_ref().clone();
    union.extend(dropped);
    let union = Step::new(CLUSTER, union);
    let last = changed.remove(at);
    if union.hash != old_hash {
        changed.insert(at, union);
    }
    changed.push(last);
    changed
}
