//! What a proxy has of one type, as the server knows it, and what to send
//! it next: the resources added or changed for it and the names it must
//! drop.
//!
//! The server assumes the proxy has what it was sent (and takes it back on
//! a NACK, [`Known::set`] returning what to restore). Resources are kept as
//! the shared `Arc`s that were sent, sorted by name (8 bytes each per
//! stream); versions the proxy claimed on reconnect
//! (`initial_resource_versions`) for resources not yet matched are kept as
//! parsed digests.

use std::collections::BTreeMap;
use std::sync::Arc;

use super::super::push::Digest;
use super::wire::parse_version;
use crate::xds::SharedResource;

/// A proxy's resources of one type.
#[derive(Debug, Default)]
pub(super) struct Known {
    /// Sorted by name.
    sent: Vec<Arc<SharedResource>>,
    /// Name → the version the proxy said it has (`None`: not one of ours).
    claimed: BTreeMap<String, Option<u64>>,
    /// Of `sent`.
    digest: Digest,
}

impl Known {
    fn position(&self, name: &str) -> Result<usize, usize> {
        self.sent.binary_search_by(|r| r.name.as_str().cmp(name))
    }

    /// Whether the proxy has exactly this resource.
    pub(super) fn has_same(&self, r: &SharedResource) -> bool {
        match self.position(&r.name) {
            Ok(i) => self.sent[i].hash == r.hash,
            Err(_) => self.claimed.get(&r.name) == Some(&Some(r.hash)),
        }
    }

    /// Whether the proxy has any version of `name`.
    pub(super) fn holds(&self, name: &str) -> bool {
        self.position(name).is_ok() || self.claimed.contains_key(name)
    }

    /// Every name the proxy holds.
    pub(super) fn names(&self) -> impl Iterator<Item = &str> {
        self.sent
            .iter()
            .map(|r| r.name.as_str())
            .chain(self.claimed.keys().map(String::as_str))
    }

    #[cfg(test)]
    pub(super) fn len(&self) -> usize {
        self.sent.len() + self.claimed.len()
    }

    /// Of the resources sent (claimed versions are not counted).
    pub(super) fn digest(&self) -> Digest {
        self.digest
    }

    /// Records that the proxy has `now` of `name` (`None`: nothing); returns
    /// what it had before, as sent on this stream.
    pub(super) fn set(
        &mut self,
        name: &str,
        now: Option<Arc<SharedResource>>,
    ) -> Option<Arc<SharedResource>> {
        if !self.claimed.is_empty() {
            self.claimed.remove(name);
        }
        // A first sync appends in name order: one comparison each.
        let at = match self.sent.last() {
            None => Err(0),
            Some(last) if last.name.as_str() < name => Err(self.sent.len()),
            Some(_) => self.position(name),
        };
        match (at, now) {
            (Ok(i), Some(now)) => {
                self.digest = self.digest.replace(
                    std::slice::from_ref(&self.sent[i]),
                    std::slice::from_ref(&now),
                );
                Some(std::mem::replace(&mut self.sent[i], now))
            }
            (Ok(i), None) => {
                let old = self.sent.remove(i);
                self.digest = self.digest.replace(std::slice::from_ref(&old), &[]);
                Some(old)
            }
            (Err(i), Some(now)) => {
                self.digest = self.digest.replace(&[], std::slice::from_ref(&now));
                self.sent.insert(i, now);
                None
            }
            (Err(_), None) => None,
        }
    }

    /// The proxy says it has `version` of `name` (on reconnect).
    pub(super) fn claim(&mut self, name: &str, version: &str) {
        self.set(name, None);
        self.claimed
            .insert(name.to_string(), parse_version(version));
    }

    /// The proxy dropped `name` (unsubscribed).
    pub(super) fn forget(&mut self, name: &str) {
        self.set(name, None);
    }
}

/// What one response of a type carries.
#[derive(Debug, Default, PartialEq)]
pub(super) struct Delta {
    /// Sorted by name.
    pub(super) upserts: Vec<Arc<SharedResource>>,
    /// Sorted by name.
    pub(super) removed: Vec<String>,
}

impl Delta {
    pub(super) fn is_empty(&self) -> bool {
        self.upserts.is_empty() && self.removed.is_empty()
    }
}

/// Resources the proxy NACKed: name → the content it rejected, not sent
/// again until that resource changes.
pub(super) type Rejected = BTreeMap<String, u64>;

/// Whether `r` should go to a proxy that has `known`.
fn wanted(known: &Known, rejected: &Rejected, r: &SharedResource) -> bool {
    !known.has_same(r) && rejected.get(&r.name) != Some(&r.hash)
}

/// The whole scope of a subscription: `want` (sorted by name) is everything
/// the proxy should have; what it holds beyond that is removed.
pub(super) fn diff_all(known: &Known, rejected: &Rejected, want: &[Arc<SharedResource>]) -> Delta {
    let upserts = want
        .iter()
        .filter(|r| wanted(known, rejected, r))
        .cloned()
        .collect();
    let mut removed: Vec<String> = known
        .names()
        .filter(|n| want.binary_search_by(|r| r.name.as_str().cmp(n)).is_err())
        .map(str::to_string)
        .collect();
    removed.sort();
    Delta { upserts, removed }
}

/// Some names of a subscription, in order: `want` (sorted) holds those of
/// `names` that exist. A name that does not exist is removed if the proxy
/// holds it, or always when `announce_absent` (a new subscription must hear
/// that its resource does not exist).
pub(super) fn diff_names<'a>(
    known: &Known,
    rejected: &Rejected,
    names: impl IntoIterator<Item = &'a String>,
    want: &[Arc<SharedResource>],
    announce_absent: bool,
) -> Delta {
    let upserts = want
        .iter()
        .filter(|r| wanted(known, rejected, r))
        .cloned()
        .collect();
    // Both in name order: one walk.
    let mut next = want.iter().peekable();
    let mut removed: Vec<String> = Vec::new();
    for name in names {
        while next.next_if(|r| r.name < *name).is_some() {}
        let exists = next.peek().is_some_and(|r| r.name == *name);
        if !exists && (announce_absent || known.holds(name)) && removed.last() != Some(name) {
            removed.push(name.clone());
        }
    }
    Delta { upserts, removed }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use envoy_types::pb::google::protobuf::Any;

    use super::super::wire::resource_version;
    use super::{Delta, Known, Rejected, diff_all, diff_names};
    use crate::xds::server::push::Digest;
    use crate::xds::{CLUSTER, SharedResource, XdsResource};

    fn res(name: &str, body: &str) -> Arc<SharedResource> {
        SharedResource::new(XdsResource {
            name: name.into(),
            resource: Any {
                type_url: CLUSTER.into(),
                value: body.as_bytes().to_vec(),
            },
        })
    }

    fn names(d: &Delta) -> (Vec<&str>, Vec<&str>) {
        (
            d.upserts.iter().map(|r| r.name.as_str()).collect(),
            d.removed.iter().map(String::as_str).collect(),
        )
    }

    #[test]
    fn only_changes_and_removals_travel() {
        let mut known = Known::default();
        for r in [res("a", "1"), res("b", "1"), res("c", "1")] {
            known.set(&r.name.clone(), Some(r));
        }
        assert_eq!(
            known.digest(),
            Digest::of(&[res("a", "1"), res("b", "1"), res("c", "1")])
        );
        let want = [res("a", "1"), res("b", "2"), res("d", "1")];
        let d = diff_all(&known, &Rejected::new(), &want);
        assert_eq!(names(&d), (vec!["b", "d"], vec!["c"]));

        // A rejected version is not sent again; a newer one is.
        let rejected = Rejected::from([("b".to_string(), res("b", "2").hash)]);
        assert_eq!(names(&diff_all(&known, &rejected, &want)).0, ["d"]);
        let newer = [res("a", "1"), res("b", "3"), res("c", "1")];
        assert_eq!(names(&diff_all(&known, &rejected, &newer)).0, ["b"]);
    }

    #[test]
    fn set_returns_the_previous_entry_and_keeps_order() {
        let mut known = Known::default();
        assert_eq!(known.set("b", Some(res("b", "1"))), None);
        assert_eq!(known.set("a", Some(res("a", "1"))), None);
        assert_eq!(known.set("b", Some(res("b", "2"))), Some(res("b", "1")));
        assert_eq!(known.names().collect::<Vec<_>>(), ["a", "b"]);
        assert_eq!(known.set("a", None), Some(res("a", "1")));
        assert_eq!(known.digest(), Digest::of(&[res("b", "2")]));
        assert_eq!(known.len(), 1);
    }

    #[test]
    fn claimed_versions_count_as_held() {
        let mut known = Known::default();
        known.claim("a", &resource_version(&res("a", "1")));
        known.claim("gone", "v1");
        assert!(known.has_same(&res("a", "1")));
        assert!(!known.has_same(&res("a", "2")));
        let want = [res("a", "1"), res("b", "1")];
        let d = diff_all(&known, &Rejected::new(), &want);
        assert_eq!(names(&d), (vec!["b"], vec!["gone"]));
    }

    #[test]
    fn absent_names_are_announced_only_when_asked() {
        let known = Known::default();
        let subscribed = ["a".to_string(), "nope".to_string()];
        let want = [res("a", "1")];
        let quiet = diff_names(&known, &Rejected::new(), &subscribed, &want, false);
        assert_eq!(names(&quiet), (vec!["a"], vec![]));
        let told = diff_names(&known, &Rejected::new(), &subscribed, &want, true);
        assert_eq!(names(&told), (vec!["a"], vec!["nope"]));
    }
}
