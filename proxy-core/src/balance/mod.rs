//! Where a request picks its endpoint: one [`Balancer`] per upstream cluster,
//! shared by the sidecar and the east-west gateway.
//!
//! Data flow: CDS `Cluster` + EDS `ClusterLoadAssignment` ─[`Balancer::new`] /
//! [`Balancer::update`]─► a validated config (`config`, `assignment`) ─► the
//! hosts of every priority and locality, each with per-address state that
//! survives updates (`view::HostSet`) ─► the tables `pick` reads (priority
//! load, panic, locality weights, weighted pools; `view::View`), swapped
//! atomically. A [`Pick`] reports its [`Outcome`] back into outlier
//! detection (`outlier`), which ejects hosts and rebuilds the tables.
//!
//! Envoy's semantics, with these documented choices:
//! - *Priorities*: health of a priority is `min(100, overprovisioning ×
//!   healthy / total)`, counting hosts (or weights with the assignment's
//!   `weighted_priority_health`); load fills priorities in order as Envoy's
//!   "priority levels" algorithm does, normalized when the total is below 100.
//!   When it is below 100, a priority whose healthy share is under
//!   `healthy_panic_threshold` (default 50%) is in *panic*: its load goes to
//!   all its hosts, healthy or not. With no healthy host anywhere all load
//!   goes to the first priority that has hosts (in panic unless the threshold
//!   is 0, which disables panic).
//! - *Health*: UNHEALTHY, DRAINING and TIMEOUT are unhealthy; UNKNOWN,
//!   HEALTHY and DEGRADED are healthy (Envoy's separate degraded load is not
//!   modelled). Ejected hosts are unhealthy until their ejection ends.
//! - *Localities*: with `locality_weighted_lb_config`, a locality is chosen by
//!   `load_balancing_weight × min(1, overprovisioning × healthy / total)`
//!   (an unset weight is 0, as in Envoy), then a host within it; without
//!   weighted localities (or when every effective weight is 0) a priority's
//!   hosts form one pool.
//! - *Policies*: ROUND_ROBIN cycles exactly when weights are equal and follows
//!   a golden-ratio (low-discrepancy) sequence over the weights otherwise —
//!   lock-free and proportional; RANDOM is weighted; LEAST_REQUEST samples
//!   `choice_count` (default 2) hosts by weight and keeps the one with the
//!   fewest active requests (the first on a tie): exactly Envoy's P2C with
//!   equal weights; with unequal weights idle hosts get their weight's share
//!   and busy ones lose load, approximating Envoy's weighted scheduler with
//!   its default `active_request_bias` of 1.0 (other biases are rejected).
//!   RING_HASH is Envoy's ring (`ring`): the request's hash picks the
//!   priority and the point on a ring spanning the priority's usable hosts
//!   (locality weights do not apply under RING_HASH); without a hash it
//!   picks at random. MAGLEV is rejected.
//! - *Outlier detection*: consecutive errors eject at once when the counter
//!   reaches its threshold (the counter restarts); ejection lasts
//!   `base × multiplier` (capped at `max(base, max_ejection_time)`), the
//!   multiplier grows per ejection and drops by one per `interval` the host
//!   spends un-ejected (evaluated lazily); ejections end exactly on time,
//!   checked on `pick`/`status` (no timer task). A host may be ejected while
//!   fewer than `max_ejection_percent` of the distinct addresses are ejected,
//!   so one host can always be ejected unless the percentage is 0 (Envoy's
//!   documented "at least one host"). Success-rate and failure-percentage
//!   ejection are not implemented: setting their `enforcing_*` above 0 is an
//!   error, and unset counts as 0 (Envoy's default for `enforcing_success_rate`
//!   is 100).
//! - The same address in several localities or priorities (a remote network's
//!   gateway) shares one state: active requests and ejection are per address.

mod assignment;
mod breaker;
mod config;
mod endpoint;
mod outlier;
mod pick;
mod pool;
mod ring;
mod status;
mod view;

#[cfg(test)]
mod tests;

use std::collections::HashMap;
use std::fmt;
use std::net::IpAddr;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use arc_swap::{ArcSwap, Guard};
use envoy_types::pb::envoy::config::cluster::v3::Cluster;
use envoy_types::pb::envoy::config::endpoint::v3::ClusterLoadAssignment;

pub use breaker::Permit;
pub use config::BalanceError;
pub use endpoint::{EndpointInfo, Health, Locality};
pub use pick::{Outcome, Pick, PickContext};
pub use status::{BreakerStatus, ClusterStatus, EndpointStatus, OutlierStatus, PriorityStatus};

use breaker::{Breakers, Resource};
use config::{Config, Discovery};
use endpoint::Endpoint;
use outlier::Trigger;
use pool::Rng;
use view::{HostSet, View};

/// Endpoint selection, circuit breaking and outlier detection for one cluster.
///
/// `Send + Sync`, meant to be shared as `Arc<Balancer>`: `pick` reads an
/// atomically swapped table and touches only atomics; locks are taken on
/// `update`, on ejections and when an ejection ends.
pub struct Balancer {
    name: String,
    shared: Arc<Shared>,
}

impl fmt::Debug for Balancer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let view = self.shared.view.load();
        f.debug_struct("Balancer")
            .field("name", &self.name)
            .field("lb_policy", &view.hosts.cfg.policy_name)
            .field("hosts", &view.hosts.states.len())
            .finish_non_exhaustive()
    }
}

/// What a [`Pick`] needs to report back after the balancer call returned.
#[derive(Debug)]
struct Shared {
    clock: Clock,
    rng: Rng,
    view: ArcSwap<View>,
    /// Serializes every writer of `view`; holds the STRICT_DNS answers.
    writer: Mutex<Dns>,
    breakers: Arc<Breakers>,
}

/// Addresses each STRICT_DNS name resolved to.
type Dns = HashMap<String, Vec<IpAddr>>;

/// Checks that `cluster` (with its EDS `assignment`) can be balanced, without building anything.
pub fn validate(
    cluster: &Cluster,
    assignment: Option<&ClusterLoadAssignment>,
) -> Result<(), BalanceError> {
    config::parse(cluster, assignment).map(drop)
}

impl Balancer {
    /// A balancer for `cluster`; `assignment` is its EDS resource (None for
    /// STATIC / STRICT_DNS clusters, which carry `load_assignment`, and for an
    /// EDS cluster whose endpoints have not arrived). Errors name the cluster
    /// and field; fields that would change balancing but are not implemented
    /// are errors, never ignored.
    pub fn new(
        cluster: &Cluster,
        assignment: Option<&ClusterLoadAssignment>,
    ) -> Result<Balancer, BalanceError> {
        Self::build(cluster, assignment, Rng::Thread)
    }

    /// As [`new`](Self::new), with every random choice drawn from a sequence
    /// seeded by `seed`: for deterministic tests.
    pub fn with_seed(
        cluster: &Cluster,
        assignment: Option<&ClusterLoadAssignment>,
        seed: u64,
    ) -> Result<Balancer, BalanceError> {
        Self::build(cluster, assignment, Rng::seeded(seed))
    }

    fn build(
        cluster: &Cluster,
        assignment: Option<&ClusterLoadAssignment>,
        rng: Rng,
    ) -> Result<Balancer, BalanceError> {
        let cfg = Arc::new(config::parse(cluster, assignment)?);
        let clock = Clock::new();
        let hosts = Arc::new(HostSet::build(cfg.clone(), &Dns::new(), &HashMap::new()));
        let view = View::build(hosts, clock.now(), &rng);
        Ok(Balancer {
            name: cluster.name.clone(),
            shared: Arc::new(Shared {
                clock,
                rng,
                view: ArcSwap::from_pointee(view),
                writer: Mutex::new(Dns::new()),
                breakers: Arc::new(Breakers::new(cfg.limits)),
            }),
        })
    }

    /// Swaps in new config in place, keeping the state (active requests,
    /// consecutive errors, ejections) of every address that remains. On error
    /// the previous config stays.
    pub fn update(
        &self,
        cluster: &Cluster,
        assignment: Option<&ClusterLoadAssignment>,
    ) -> Result<(), BalanceError> {
        if cluster.name != self.name {
            return Err(BalanceError::new(
                &cluster.name,
                "name",
                format!("this balancer serves cluster {:?}", self.name),
            ));
        }
        let cfg = Arc::new(config::parse(cluster, assignment)?);
        let mut dns = self.shared.lock();
        let names = cfg.assignment.dns_names();
        dns.retain(|name, _| names.contains(name.as_str()));
        self.shared.breakers.set_limits(cfg.limits);
        self.shared.rebuild_hosts(cfg, &dns);
        Ok(())
    }

    /// The cluster's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// `connect_timeout` (Envoy's default 5 s when unset).
    pub fn connect_timeout(&self) -> Duration {
        self.shared.view.load().hosts.cfg.connect_timeout
    }

    /// HTTP requests per upstream connection from `typed_extension_protocol_options`
    /// (`HttpProtocolOptions.common_http_protocol_options`) or the deprecated
    /// cluster fields; None means unlimited. Our control plane does not set it yet.
    pub fn max_requests_per_connection(&self) -> Option<u32> {
        self.shared
            .view
            .load()
            .hosts
            .cfg
            .max_requests_per_connection
    }

    /// Chooses an endpoint, or None when the cluster has none to offer.
    ///
    /// Addresses in `ctx.exclude` are avoided whenever another eligible host
    /// exists. The endpoint's active-request count rises until the [`Pick`]
    /// is reported or dropped.
    pub fn pick(&self, ctx: &PickContext<'_>) -> Option<Pick> {
        let view = self.shared.current_view();
        let cfg = &view.hosts.cfg;
        if cfg.discovery == Discovery::OriginalDst {
            let endpoint = Arc::new(Endpoint::original_dst(ctx.original_dst?));
            return Some(self.shared.start(endpoint));
        }
        let rng = &self.shared.rng;
        let mut first = None;
        for _ in 0..3 {
            let endpoint = view.choose(cfg.policy, ctx.hash, rng)?;
            if !ctx.exclude.contains(&endpoint.info.address) {
                return Some(self.shared.start(endpoint.clone()));
            }
            first.get_or_insert(endpoint);
        }
        let endpoint = view.choose_excluding(ctx.exclude, rng).or(first)?.clone();
        Some(self.shared.start(endpoint))
    }

    /// A slot under `max_requests` (default 1024), or None when the cluster is at the limit.
    pub fn try_request(&self) -> Option<Permit> {
        Breakers::acquire(&self.shared.breakers, Resource::Requests)
    }

    /// A slot under `max_pending_requests` (default 1024).
    pub fn try_pending(&self) -> Option<Permit> {
        Breakers::acquire(&self.shared.breakers, Resource::Pending)
    }

    /// A slot under `max_retries` (default 3).
    pub fn try_retry(&self) -> Option<Permit> {
        Breakers::acquire(&self.shared.breakers, Resource::Retries)
    }

    /// A slot under `max_connections` (default 1024).
    pub fn try_connection(&self) -> Option<Permit> {
        Breakers::acquire(&self.shared.breakers, Resource::Connections)
    }

    /// Every endpoint with its locality, priority, weight, health, active
    /// requests and outlier state, plus priority loads and circuit breakers:
    /// the admin `/clusters` view.
    pub fn status(&self) -> ClusterStatus {
        let now = self.shared.clock.now();
        let view = {
            let _writer = self.shared.lock();
            self.shared.refresh(now);
            self.shared.view.load_full()
        };
        status::build(&self.name, &view, &self.shared.breakers, now)
    }

    /// The STRICT_DNS names this cluster needs resolved (IP literals need
    /// nothing), sorted. Their hosts exist once [`set_resolved`](Self::set_resolved) is called.
    pub fn dns_names(&self) -> Vec<String> {
        let view = self.shared.view.load();
        let names = view.hosts.cfg.assignment.dns_names();
        names.into_iter().map(str::to_string).collect()
    }

    /// Installs the addresses `hostname` resolved to: each becomes a host
    /// with the port, locality, priority, weight and health of every entry
    /// naming it (Envoy's STRICT_DNS). False when the cluster names no such host.
    pub fn set_resolved(&self, hostname: &str, addrs: &[IpAddr]) -> bool {
        let mut dns = self.shared.lock();
        let cfg = self.shared.view.load().hosts.cfg.clone();
        if !cfg.assignment.dns_names().contains(hostname) {
            return false;
        }
        dns.insert(hostname.to_string(), addrs.to_vec());
        self.shared.rebuild_hosts(cfg, &dns);
        true
    }
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, Dns> {
        self.writer.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The current tables, first rebuilt if an ejection has ended since they
    /// were made (skipped if another writer holds the lock: it rebuilds).
    fn current_view(&self) -> Guard<Arc<View>> {
        let view = self.view.load();
        if view.next_change == u64::MAX {
            return view;
        }
        let now = self.clock.now();
        if view.next_change > now {
            return view;
        }
        drop(view);
        if let Ok(_writer) = self.writer.try_lock() {
            self.refresh(now);
        }
        self.view.load()
    }

    /// Rebuilds the tables if an ejection ended by `now`; the writer lock must be held.
    fn refresh(&self, now: u64) {
        let view = self.view.load_full();
        if view.next_change <= now {
            let hosts = view.hosts.clone();
            self.view
                .store(Arc::new(View::build(hosts, now, &self.rng)));
        }
    }

    /// New hosts from `cfg`, keeping the state of surviving addresses; the writer lock must be held.
    fn rebuild_hosts(&self, cfg: Arc<Config>, dns: &Dns) {
        let previous = self.view.load_full();
        let hosts = Arc::new(HostSet::build(cfg, dns, &previous.hosts.states));
        let view = View::build(hosts, self.clock.now(), &self.rng);
        self.view.store(Arc::new(view));
    }

    fn start(self: &Arc<Self>, endpoint: Arc<Endpoint>) -> Pick {
        endpoint.state.active.fetch_add(1, Relaxed);
        Pick {
            endpoint,
            shared: self.clone(),
            reported: false,
        }
    }

    /// Feeds one outcome to outlier detection, ejecting the host if a counter hit its threshold.
    fn record(&self, endpoint: &Endpoint, outcome: Outcome) {
        let triggers = match &self.view.load().hosts.cfg.outlier {
            Some(od) => od.record(&endpoint.state, outcome),
            None => return,
        };
        for trigger in triggers.into_iter().flatten() {
            if self.eject(endpoint, trigger) {
                break;
            }
        }
    }

    /// Ejects the host if enforcement and `max_ejection_percent` allow; true if it is now ejected.
    fn eject(&self, endpoint: &Endpoint, trigger: Trigger) -> bool {
        let _writer = self.lock();
        let now = self.clock.now();
        let view = self.view.load_full();
        let Some(od) = &view.hosts.cfg.outlier else {
            return false;
        };
        let state = &endpoint.state;
        // A host an update removed while its request was in flight is gone.
        match view.hosts.states.get(&endpoint.info.address) {
            Some(s) if Arc::ptr_eq(s, state) => {}
            _ => return false,
        }
        if state.is_ejected(now) {
            return true;
        }
        let enforcing = od.enforcing(trigger);
        if enforcing < 100 && self.rng.below(100) >= u64::from(enforcing) {
            return false;
        }
        let states = &view.hosts.states;
        let ejected = states.values().filter(|s| s.is_ejected(now)).count();
        if !od.may_eject(ejected, states.len()) {
            return false;
        }
        od.eject(state, now, &self.rng);
        let hosts = view.hosts.clone();
        self.view
            .store(Arc::new(View::build(hosts, now, &self.rng)));
        true
    }
}

/// Monotonic nanoseconds since the balancer was made, from
/// `tokio::time::Instant` so tests can pause and advance time.
#[derive(Debug)]
struct Clock {
    base: tokio::time::Instant,
}

impl Clock {
    fn new() -> Self {
        Clock {
            base: tokio::time::Instant::now(),
        }
    }

    fn now(&self) -> u64 {
        u64::try_from(self.base.elapsed().as_nanos()).unwrap_or(u64::MAX - 1)
    }
}
