//! RING_HASH: Envoy's consistent-hash ring (ketama style), built per pool.
//!
//! Every host gets points on a 64-bit ring in proportion to its weight: the
//! ring holds at least `minimum_ring_size` points (at most `maximum_ring_size`),
//! the lightest host at least one. A point is `xxHash64("<ip:port>_<i>")`, as
//! Envoy computes it, so a request hashes to the same endpoint in Envoy and
//! here given the same hosts. A request takes the first point at or after its
//! hash (wrapping around). Removing a host moves the requests that landed on
//! its points, and a few others: the ring keeps its minimum size, so the
//! remaining hosts gain points.

use std::hash::Hasher;
use std::sync::Arc;

use twox_hash::XxHash64;

use super::endpoint::Endpoint;

/// Envoy's default `minimum_ring_size`.
pub(crate) const DEFAULT_MIN_RING: u64 = 1024;
/// Envoy's default (and largest allowed) `maximum_ring_size`.
pub(crate) const DEFAULT_MAX_RING: u64 = 8 * 1024 * 1024;

/// Ring sizes of a RING_HASH cluster.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct RingSize {
    pub(crate) min: u64,
    pub(crate) max: u64,
}

/// Points sorted by hash, each naming a host of the pool by index.
#[derive(Debug)]
pub(crate) struct Ring {
    points: Vec<(u64, u32)>,
}

impl Ring {
    /// The ring of `hosts` (non-empty) with their weights.
    pub(crate) fn build(hosts: &[Arc<Endpoint>], size: RingSize) -> Ring {
        let total: u64 = hosts.iter().map(|h| h.weight()).sum::<u64>().max(1);
        let normalized: Vec<f64> = hosts
            .iter()
            .map(|h| h.weight() as f64 / total as f64)
            .collect();
        let lightest = normalized
            .iter()
            .copied()
            .filter(|w| *w > 0.0)
            .fold(1.0, f64::min);
        let scale = ((lightest * size.min as f64).ceil() / lightest).min(size.max as f64);
        let mut points = Vec::with_capacity(scale.ceil() as usize + hosts.len());
        let (mut current, mut target) = (0.0, 0.0);
        for (index, (host, weight)) in hosts.iter().zip(&normalized).enumerate() {
            let key = host.info.address.to_string();
            target += scale * weight;
            let mut i = 0u64;
            while current < target {
                let mut hasher = XxHash64::with_seed(0);
                hasher.write(format!("{key}_{i}").as_bytes());
                points.push((hasher.finish(), index as u32));
                i += 1;
                current += 1.0;
            }
        }
        points.sort_unstable_by_key(|p| p.0);
        Ring { points }
    }

    /// The host index for `hash`: the first point at or after it, wrapping.
    pub(crate) fn at(&self, hash: u64) -> usize {
        let i = self.points.partition_point(|p| p.0 < hash);
        let (_, host) = self
            .points
            .get(i)
            .or(self.points.first())
            .copied()
            .unwrap_or((0, 0));
        host as usize
    }
}
