//! The arithmetic of one pick: a lock-free random source and a weighted pool
//! of hosts that each load-balancing policy draws from.

use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::sync::atomic::Ordering::Relaxed;

use super::config::Policy;
use super::endpoint::Endpoint;
use super::ring::Ring;

/// 2^64 / φ: the SplitMix64 increment, and the step of the golden-ratio
/// sequence weighted round robin follows.
const GOLDEN: u64 = 0x9E37_79B9_7F4A_7C15;

/// Random numbers for picks: the thread-local generator in production, a
/// seeded SplitMix64 sequence (lock-free, one atomic add) for deterministic tests.
#[derive(Debug)]
pub(crate) enum Rng {
    Thread,
    Seeded(AtomicU64),
}

impl Rng {
    pub(crate) fn seeded(seed: u64) -> Self {
        Rng::Seeded(AtomicU64::new(seed))
    }

    pub(crate) fn next_u64(&self) -> u64 {
        match self {
            Rng::Thread => rand::random(),
            Rng::Seeded(state) => splitmix(state.fetch_add(GOLDEN, Relaxed).wrapping_add(GOLDEN)),
        }
    }

    /// Uniform in `0..n` (`n > 0`).
    pub(crate) fn below(&self, n: u64) -> u64 {
        scale(self.next_u64(), n)
    }

    /// Uniform in `[0, 1)`.
    pub(crate) fn unit(&self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }
}

fn splitmix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// Maps `r`, uniform over `u64`, onto `0..n` (multiply-shift: no division).
fn scale(r: u64, n: u64) -> u64 {
    ((u128::from(r) * u128::from(n)) >> 64) as u64
}

/// Hosts one pick chooses among, with their weights precomputed.
#[derive(Debug)]
pub(crate) struct Pool {
    hosts: Vec<Arc<Endpoint>>,
    /// Running sums of the weights; empty when every weight is equal.
    cumulative: Vec<u64>,
    total: u64,
    /// Round-robin position (starts at a random offset so proxies do not move in step).
    cursor: AtomicU64,
    /// RING_HASH only.
    ring: Option<Ring>,
}

impl Pool {
    /// None for no hosts.
    pub(crate) fn new(hosts: Vec<Arc<Endpoint>>, policy: Policy, rng: &Rng) -> Option<Pool> {
        let first = hosts.first()?.weight();
        let uniform = hosts.iter().all(|h| h.weight() == first);
        let cumulative: Vec<u64> = if uniform {
            Vec::new()
        } else {
            hosts
                .iter()
                .scan(0u64, |sum, h| {
                    *sum += h.weight();
                    Some(*sum)
                })
                .collect()
        };
        let total = cumulative.last().copied().unwrap_or(hosts.len() as u64);
        let ring = match policy {
            Policy::RingHash(size) => Some(Ring::build(&hosts, size)),
            _ => None,
        };
        Some(Pool {
            hosts,
            cumulative,
            total,
            cursor: AtomicU64::new(rng.next_u64()),
            ring,
        })
    }

    pub(crate) fn hosts(&self) -> &[Arc<Endpoint>] {
        &self.hosts
    }

    /// The host at `r` (uniform over `u64`), each host owning a share of the
    /// range proportional to its weight.
    fn at(&self, r: u64) -> &Arc<Endpoint> {
        let x = scale(r, self.total);
        let i = if self.cumulative.is_empty() {
            x as usize
        } else {
            self.cumulative.partition_point(|&c| c <= x)
        };
        &self.hosts[i]
    }

    /// A host by `policy`; `hash` is the request's consistent-hash key.
    pub(crate) fn pick(&self, policy: Policy, hash: Option<u64>, rng: &Rng) -> &Arc<Endpoint> {
        match policy {
            Policy::RingHash(_) => match (&self.ring, hash) {
                (Some(ring), Some(h)) => &self.hosts[ring.at(h).min(self.hosts.len() - 1)],
                // No hash (e.g. the header is missing): any host, as Envoy.
                _ => self.at(rng.next_u64()),
            },
            Policy::RoundRobin => {
                let n = self.cursor.fetch_add(1, Relaxed);
                if self.cumulative.is_empty() {
                    &self.hosts[(n % self.hosts.len() as u64) as usize]
                } else {
                    // frac(n/φ) is evenly spread: each host gets its weight's
                    // share over any window, without a lock or a schedule.
                    self.at(n.wrapping_mul(GOLDEN))
                }
            }
            Policy::Random => self.at(rng.next_u64()),
            Policy::LeastRequest { choices } => {
                if self.hosts.len() == 1 {
                    return &self.hosts[0];
                }
                let mut best = self.at(rng.next_u64());
                for _ in 1..choices {
                    let candidate = self.at(rng.next_u64());
                    if lighter(candidate, best) {
                        best = candidate;
                    }
                }
                best
            }
        }
    }
}

/// Whether `a` has fewer requests in flight than `b`. Weights already
/// steered the sampling, so comparing raw counts keeps idle hosts at their
/// weight's share and moves load away from busy ones.
fn lighter(a: &Endpoint, b: &Endpoint) -> bool {
    a.active() < b.active()
}

/// Weighted random choice among `hosts` (none for an empty slice).
pub(crate) fn weighted<'a>(hosts: &[&'a Arc<Endpoint>], rng: &Rng) -> Option<&'a Arc<Endpoint>> {
    let total: u64 = hosts.iter().map(|h| h.weight()).sum();
    if total == 0 {
        return None;
    }
    let mut x = rng.below(total);
    for h in hosts {
        if x < h.weight() {
            return Some(h);
        }
        x -= h.weight();
    }
    None
}
