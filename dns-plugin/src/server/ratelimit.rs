//! Optional per-source rate limit for UDP queries (`--rate-limit <qps>`).
//!
//! A fixed table of atomic slots indexed by a hash of the source address:
//! each slot counts queries in the current second. No lock and no
//! allocation per query; two sources that hash to the same slot share a
//! budget (with 16,384 slots that is rare, and it only ever makes the limit
//! stricter). TCP is never limited: its source address is verified.

use std::hash::{BuildHasher, Hash};
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

const SLOTS: usize = 16_384;

/// Allows at most `per_second` UDP queries per source address per second.
#[derive(Debug)]
pub struct RateLimiter {
    per_second: u32,
    started: Instant,
    hasher: std::collections::hash_map::RandomState,
    /// High 32 bits: the second the count is for; low 32 bits: the count.
    slots: Box<[AtomicU64]>,
}

impl RateLimiter {
    pub fn new(per_second: u32) -> RateLimiter {
        RateLimiter {
            per_second: per_second.max(1),
            started: Instant::now(),
            hasher: std::collections::hash_map::RandomState::new(),
            slots: (0..SLOTS).map(|_| AtomicU64::new(0)).collect(),
        }
    }

    /// Counts one query from `ip`; false when it is over the limit.
    pub fn allow(&self, ip: IpAddr) -> bool {
        let now = self.started.elapsed().as_secs() & 0xffff_ffff;
        self.allow_at(ip, now)
    }

    fn allow_at(&self, ip: IpAddr, second: u64) -> bool {
        let mut h = self.hasher.build_hasher();
        ip.hash(&mut h);
        let slot = &self.slots[(std::hash::Hasher::finish(&h) as usize) % SLOTS];
        let mut current = slot.load(Ordering::Relaxed);
        loop {
            let (sec, count) = (current >> 32, current & 0xffff_ffff);
            let next = if sec == second {
                if count >= u64::from(self.per_second) {
                    return false;
                }
                current + 1
            } else {
                (second << 32) | 1
            };
            match slot.compare_exchange_weak(current, next, Ordering::Relaxed, Ordering::Relaxed) {
                Ok(_) => return true,
                Err(actual) => current = actual,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limits_each_source_per_second() {
        let l = RateLimiter::new(3);
        let a: IpAddr = "127.0.0.1".parse().unwrap();
        assert!((0..3).all(|_| l.allow_at(a, 7)));
        assert!(!l.allow_at(a, 7));
        // A new second, a new budget.
        assert!(l.allow_at(a, 8));
    }
}
