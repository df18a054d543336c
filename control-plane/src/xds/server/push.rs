//! What a push sends: content digests and versions, and the make-before-break
//! order of one proxy's changed types.

use std::collections::BTreeSet;
use std::sync::Arc;

use crate::xds::{CLUSTER, SharedResource};

/// An order-independent digest of a set of resources: their count and the
/// wrapping sum of their content hashes ([`SharedResource::hash`], computed
/// once per resource). Unchanged content is recognised whatever the state
/// version, and one resource can be swapped in O(1) (partial EDS pushes).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(super) struct Digest {
    count: usize,
    sum: u64,
}

impl Digest {
    pub(super) fn of(resources: &[Arc<SharedResource>]) -> Self {
        let mut d = Digest::default();
        d.add(resources);
        d
    }

    fn add(&mut self, resources: &[Arc<SharedResource>]) {
        self.count += resources.len();
        self.sum = resources
            .iter()
            .fold(self.sum, |s, r| s.wrapping_add(r.hash));
    }

    /// The digest after `old` (members) were replaced by `new`.
    pub(super) fn replace(
        mut self,
        old: &[Arc<SharedResource>],
        new: &[Arc<SharedResource>],
    ) -> Self {
        self.count = self.count.saturating_sub(old.len());
        self.sum = old.iter().fold(self.sum, |s, r| s.wrapping_sub(r.hash));
        self.add(new);
        self
    }

    /// 64 bits for `version_info`.
    pub(super) fn value(self) -> u64 {
        (self.count as u64)
            .wrapping_mul(0x9e37_79b9_7f4a_7c15)
            .wrapping_add(self.sum)
    }
}

/// One response to send.
#[derive(Clone, Debug, PartialEq)]
pub(super) struct Step {
    pub(super) type_url: String,
    /// Sorted by name.
    pub(super) resources: Vec<Arc<SharedResource>>,
    /// Of every resource the proxy has of this type after this response.
    pub(super) digest: Digest,
    /// Only some of the type's resources (EDS, RDS: the others are unchanged).
    pub(super) partial: bool,
}

impl Step {
    /// A whole type.
    pub(super) fn new(type_url: &str, mut resources: Vec<Arc<SharedResource>>) -> Self {
        if !resources.is_sorted_by(|a, b| a.name <= b.name) {
            resources.sort_by(|a, b| a.name.cmp(&b.name));
        }
        Self {
            type_url: type_url.to_string(),
            digest: Digest::of(&resources),
            resources,
            partial: false,
        }
    }
}

/// `version_info` of a response: the state version it was generated from and
/// 48 bits of its content digest, e.g. `42-3fa09c1d22b7`.
pub(super) fn version_info(state_version: u64, digest: Digest) -> String {
    format!("{state_version}-{:012x}", digest.value() >> 16)
}

/// Orders one push's changed types (given in push order).
///
/// Make before break: when the new CDS drops clusters the proxy has
/// (`sent_clusters`: the last CDS sent and its digest) and other types
/// change too, the proxy first gets the union of old and new clusters, then
/// the other types, and only then the new CDS, so nothing points at a
/// removed cluster in between. When nothing else changes, the new CDS goes
/// out directly.
pub(super) fn make_before_break(
    mut changed: Vec<Step>,
    sent_clusters: Option<(&[Arc<SharedResource>], Digest)>,
) -> Vec<Step> {
    let Some(at) = changed.iter().position(|s| s.type_url == CLUSTER) else {
        return changed;
    };
    let Some((old, old_digest)) = sent_clusters else {
        return changed;
    };
    if changed.len() == 1 {
        return changed;
    }
    let new = &changed[at];
    let new_names: BTreeSet<&str> = new.resources.iter().map(|r| r.name.as_str()).collect();
    let dropped: Vec<Arc<SharedResource>> = old
        .iter()
        .filter(|r| !new_names.contains(r.name.as_str()))
        .cloned()
        .collect();
    if dropped.is_empty() {
        return changed;
    }
    let mut union = new.resources.clone();
    union.extend(dropped);
    let union = Step::new(CLUSTER, union);
    let last = changed.remove(at);
    if union.digest != old_digest {
        changed.insert(at, union);
    }
    changed.push(last);
    changed
}
