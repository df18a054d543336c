//! Circuit breaking: four cluster-wide gauges with Envoy's limits; a
//! [`Permit`] holds one slot and gives it back when dropped. Limits change
//! in place on `update`; slots already held stay held.

use std::sync::Arc;
use std::sync::atomic::AtomicU32;
use std::sync::atomic::Ordering::{AcqRel, Acquire, Relaxed};

use super::config::Limits;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Resource {
    Connections = 0,
    Pending = 1,
    Requests = 2,
    Retries = 3,
}

#[derive(Debug, Default)]
struct Gauge {
    open: AtomicU32,
    max: AtomicU32,
}

#[derive(Debug)]
pub(crate) struct Breakers {
    gauges: [Gauge; 4],
}

impl Breakers {
    pub(crate) fn new(limits: Limits) -> Self {
        let breakers = Breakers {
            gauges: Default::default(),
        };
        breakers.set_limits(limits);
        breakers
    }

    pub(crate) fn set_limits(&self, l: Limits) {
        for (r, max) in [
            (Resource::Connections, l.connections),
            (Resource::Pending, l.pending),
            (Resource::Requests, l.requests),
            (Resource::Retries, l.retries),
        ] {
            self.gauges[r as usize].max.store(max, Relaxed);
        }
    }

    /// A slot, or None at the limit.
    pub(crate) fn acquire(this: &Arc<Self>, resource: Resource) -> Option<Permit> {
        let g = &this.gauges[resource as usize];
        let max = g.max.load(Relaxed);
        g.open
            .fetch_update(AcqRel, Acquire, |n| (n < max).then_some(n + 1))
            .ok()?;
        Some(Permit {
            breakers: this.clone(),
            resource,
        })
    }

    /// (in use, limit).
    pub(crate) fn get(&self, resource: Resource) -> (u32, u32) {
        let g = &self.gauges[resource as usize];
        (g.open.load(Relaxed), g.max.load(Relaxed))
    }
}

/// One slot under a circuit-breaker limit of the cluster, released on drop.
#[derive(Debug)]
#[must_use = "the slot is released as soon as the permit is dropped"]
pub struct Permit {
    breakers: Arc<Breakers>,
    resource: Resource,
}

impl Drop for Permit {
    fn drop(&mut self) {
        self.breakers.gauges[self.resource as usize]
            .open
            .fetch_sub(1, AcqRel);
    }
}
