//! Subscribed resource names, shared between streams.
//!
//! A state-of-the-world EDS request carries every subscribed name (11,000 at
//! 10k services), on every ACK. A stream keeps its names as an interned
//! `Arc<BTreeSet>`, so the many proxies subscribed to the same names hold
//! one set, and an ACK whose names did not change is recognised without
//! building a set: first by one hash of the names' bytes as they came
//! ([`RequestNames::wire`], equal when the proxy repeats its last request's
//! names in the same order, as Envoy does), else by an order-independent
//! digest of the names. The digest hashes eight bytes at a time (not
//! SipHash); a collision of either only makes the server miss a change of
//! the colliding proxy's own subscription.

use std::collections::hash_map::Entry;
use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, Mutex, Weak};

use super::lock;
use super::wire::RequestNames;

/// Interned sets above this many are swept of dead entries.
const SWEEP_AT: usize = 1024;

/// One stream's subscription of one type.
#[derive(Clone, Debug, Default)]
pub(super) struct Names {
    pub(super) set: Arc<BTreeSet<String>>,
    digest: NamesDigest,
    /// [`RequestNames::wire`] of the last request that asked for these
    /// names (not part of equality: the same set in another order is the
    /// same subscription).
    wire: Option<u64>,
}

/// Count and wrapping sum of the names' hashes.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub(super) struct NamesDigest {
    count: usize,
    sum: u64,
}

impl NamesDigest {
    /// Of names as bytes (received names are not checked to be UTF-8 until
    /// they are interned; a string hashes as its bytes).
    pub(super) fn of<'a>(names: impl IntoIterator<Item = &'a [u8]>) -> Self {
        let mut d = NamesDigest::default();
        for n in names {
            d.add(n);
        }
        d
    }

    /// Adds one name.
    fn add(&mut self, name: &[u8]) {
        self.count += 1;
        self.sum = self.sum.wrapping_add(name_hash(name));
    }
}

/// A 64-bit hash of a name, eight bytes at a time, then mixed (the
/// murmur3 finaliser) so that sums of hashes of similar names spread.
fn name_hash(name: &[u8]) -> u64 {
    const K: u64 = 0xf135_7aea_2e62_a9c5;
    let mut h = name.len() as u64;
    let mut words = name.chunks_exact(8);
    for word in &mut words {
        let w = u64::from_le_bytes(word.try_into().unwrap_or_default());
        h = (h ^ w).wrapping_mul(K).rotate_left(26);
    }
    let tail = words.remainder();
    if !tail.is_empty() {
        let mut last = [0u8; 8];
        last[..tail.len()].copy_from_slice(tail);
        h = (h ^ u64::from_le_bytes(last))
            .wrapping_mul(K)
            .rotate_left(26);
    }
    h ^= h >> 33;
    h = h.wrapping_mul(0xff51_afd7_ed55_8ccd);
    h ^= h >> 33;
    h = h.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    h ^ (h >> 33)
}

impl PartialEq for Names {
    fn eq(&self, other: &Self) -> bool {
        self.digest == other.digest && (Arc::ptr_eq(&self.set, &other.set) || self.set == other.set)
    }
}

impl Names {
    /// These names as `requested` asked for them again (an ACK's), if they
    /// are the same set: recognised by the request's wire hash, else by
    /// the names' digest.
    pub(super) fn same_as(&self, requested: &RequestNames) -> Option<Names> {
        let wire = requested.wire();
        if wire.is_some() && wire == self.wire {
            return Some(self.clone());
        }
        (self.digest == requested.digest()).then(|| Names {
            wire,
            ..self.clone()
        })
    }

    pub(super) fn len(&self) -> usize {
        self.set.len()
    }

    pub(super) fn contains(&self, name: &str) -> bool {
        self.set.contains(name)
    }
}

/// Every live subscription set, by digest.
#[derive(Debug, Default)]
pub(super) struct Interner {
    sets: Mutex<HashMap<NamesDigest, Weak<BTreeSet<String>>>>,
}

impl Interner {
    /// The shared set of `requested` names; fails on a name that is not
    /// UTF-8, with its position.
    pub(super) fn intern(&self, requested: &RequestNames) -> Result<Names, NotUtf8> {
        let set = requested
            .iter()
            .enumerate()
            .map(|(i, n)| {
                std::str::from_utf8(n)
                    .map(str::to_string)
                    .map_err(|_| NotUtf8(i))
            })
            .collect::<Result<BTreeSet<String>, _>>()?;
        Ok(Names {
            wire: requested.wire(),
            ..self.intern_set(set)
        })
    }

    /// The shared copy of `set`.
    pub(super) fn intern_set(&self, set: BTreeSet<String>) -> Names {
        let digest = NamesDigest::of(set.iter().map(String::as_bytes));
        let mut sets = lock(&self.sets);
        if sets.len() >= SWEEP_AT {
            sets.retain(|_, w| w.strong_count() > 0);
        }
        let set = match sets.entry(digest) {
            Entry::Occupied(mut e) => match e.get().upgrade() {
                Some(shared) if *shared == set => shared,
                Some(_) => Arc::new(set), // a digest collision: keep it private
                None => {
                    let set = Arc::new(set);
                    e.insert(Arc::downgrade(&set));
                    set
                }
            },
            Entry::Vacant(e) => {
                let set = Arc::new(set);
                e.insert(Arc::downgrade(&set));
                set
            }
        };
        Names {
            set,
            digest,
            wire: None,
        }
    }
}

/// A requested name that is not UTF-8: its index in `resource_names`.
#[derive(Debug, thiserror::Error)]
#[error("resource_names[{0}] is not UTF-8")]
pub(super) struct NotUtf8(pub(super) usize);
