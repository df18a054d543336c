//! What `pick` reads. [`HostSet`]: the hosts of every priority and locality,
//! rebuilt on `update` and DNS answers. [`View`]: the tables derived from
//! their health at one instant — priority load, panic, locality weights,
//! weighted pools — rebuilt whenever an ejection starts or ends.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;

use super::Dns;
use super::assignment::{LocalityGroup, Target};
use super::config::{Config, Policy};
use super::endpoint::{Endpoint, EndpointInfo};
use super::outlier::HostState;
use super::pool::{Pool, Rng, weighted};

#[derive(Debug)]
pub(crate) struct HostSet {
    pub(crate) cfg: Arc<Config>,
    /// Index = priority, then one entry per `LocalityLbEndpoints`.
    pub(crate) priorities: Vec<Vec<LocalityHosts>>,
    /// One state per distinct address.
    pub(crate) states: HashMap<SocketAddr, Arc<HostState>>,
    /// STRICT_DNS names without an answer yet.
    pub(crate) pending_dns: Vec<String>,
}

#[derive(Debug)]
pub(crate) struct LocalityHosts {
    pub(crate) weight: Option<u32>,
    pub(crate) hosts: Vec<Arc<Endpoint>>,
}

impl HostSet {
    /// The hosts of `cfg`, reusing the state in `previous` of each address that remains.
    pub(crate) fn build(
        cfg: Arc<Config>,
        dns: &Dns,
        previous: &HashMap<SocketAddr, Arc<HostState>>,
    ) -> HostSet {
        let mut states: HashMap<SocketAddr, Arc<HostState>> = HashMap::new();
        let mut pending_dns = Vec::new();
        let priorities = cfg
            .assignment
            .priorities
            .iter()
            .zip(0u32..)
            .map(|(groups, priority)| {
                groups
                    .iter()
                    .map(|g| LocalityHosts {
                        weight: g.weight,
                        hosts: hosts(g, priority, dns, previous, &mut states, &mut pending_dns),
                    })
                    .collect()
            })
            .collect();
        pending_dns.sort();
        pending_dns.dedup();
        HostSet {
            cfg,
            priorities,
            states,
            pending_dns,
        }
    }
}

fn hosts(
    g: &LocalityGroup,
    priority: u32,
    dns: &Dns,
    previous: &HashMap<SocketAddr, Arc<HostState>>,
    states: &mut HashMap<SocketAddr, Arc<HostState>>,
    pending_dns: &mut Vec<String>,
) -> Vec<Arc<Endpoint>> {
    let mut out = Vec::with_capacity(g.endpoints.len());
    for spec in &g.endpoints {
        let (addresses, hostname) = match &spec.target {
            Target::Ip(a) => (vec![*a], spec.hostname.clone()),
            Target::Dns { host, port } => {
                let Some(ips) = dns.get(host) else {
                    pending_dns.push(host.clone());
                    continue;
                };
                let name = if spec.hostname.is_empty() {
                    host.clone()
                } else {
                    spec.hostname.clone()
                };
                (
                    ips.iter().map(|ip| SocketAddr::new(*ip, *port)).collect(),
                    name,
                )
            }
        };
        for address in addresses {
            let state = states
                .entry(address)
                .or_insert_with(|| previous.get(&address).cloned().unwrap_or_default())
                .clone();
            out.push(Arc::new(Endpoint {
                info: EndpointInfo {
                    address,
                    hostname: hostname.clone(),
                    locality: g.locality.clone(),
                    priority,
                    weight: spec.weight,
                    health: spec.health,
                    metadata: spec.metadata.clone(),
                },
                state,
            }));
        }
    }
    out
}

#[derive(Debug)]
pub(crate) struct View {
    pub(crate) hosts: Arc<HostSet>,
    pub(crate) levels: Vec<Level>,
    /// Clock time the next ejection ends (the tables change); `u64::MAX` for none.
    pub(crate) next_change: u64,
}

/// One priority's tables.
#[derive(Debug, Default)]
pub(crate) struct Level {
    /// Percent of requests this priority takes.
    pub(crate) load: u32,
    /// Envoy's priority health: `min(100, overprovisioning × healthy share)`.
    pub(crate) health: u32,
    pub(crate) panic: bool,
    /// One per weighted locality, else a single pool.
    pools: Vec<Pool>,
    /// Running sums of the pools' effective locality weights; empty for a single pool.
    locality_weights: Vec<f64>,
}

impl View {
    pub(crate) fn build(hosts: Arc<HostSet>, now: u64, rng: &Rng) -> View {
        let cfg = &hosts.cfg;
        let usable = |e: &Endpoint| e.info.health.is_healthy() && !e.state.is_ejected(now);
        let overprovisioning = u64::from(cfg.assignment.overprovisioning);
        let mut levels: Vec<Level> = hosts
            .priorities
            .iter()
            .map(|groups| {
                let all = groups.iter().flat_map(|g| &g.hosts);
                let measure = |e: &Endpoint| {
                    if cfg.assignment.weighted_priority_health {
                        e.weight()
                    } else {
                        1
                    }
                };
                let total: u64 = all.clone().map(|e| measure(e)).sum();
                let healthy: u64 = all.filter(|e| usable(e)).map(|e| measure(e)).sum();
                let health = (u128::from(overprovisioning) * u128::from(healthy))
                    .checked_div(u128::from(total))
                    .map_or(0, |h| h.min(100) as u32);
                Level {
                    health,
                    ..Level::default()
                }
            })
            .collect();
        let normalized = levels.iter().map(|l| l.health).sum::<u32>().min(100);
        distribute(&mut levels, &hosts, normalized);
        for (level, groups) in levels.iter_mut().zip(&hosts.priorities) {
            if level.load == 0 {
                continue;
            }
            let count = groups.iter().map(|g| g.hosts.len()).sum::<usize>();
            let healthy = groups
                .iter()
                .flat_map(|g| &g.hosts)
                .filter(|e| usable(e))
                .count();
            let healthy_percent = 100.0 * healthy as f64 / count.max(1) as f64;
            level.panic = normalized < 100 && healthy_percent < cfg.panic_threshold;
            level.fill(groups, cfg, &usable, rng);
        }
        let next_change = hosts
            .states
            .values()
            .map(|s| s.ejected_until())
            .filter(|&until| until > now)
            .min()
            .unwrap_or(u64::MAX);
        View {
            hosts,
            levels,
            next_change,
        }
    }

    /// A host by priority load, then locality, then the cluster's policy.
    /// With a consistent-hash key the hash picks the priority too (Envoy's
    /// `chooseHostSet`), so a request keeps its host while priorities hold.
    pub(crate) fn choose(
        &self,
        policy: Policy,
        hash: Option<u64>,
        rng: &Rng,
    ) -> Option<&Arc<Endpoint>> {
        let roll = match (policy, hash) {
            (Policy::RingHash(_), Some(h)) => (h % 100) as u32,
            _ => rng.below(100) as u32,
        };
        let mut sum = 0;
        let level = self.levels.iter().find(|l| {
            sum += l.load;
            roll < sum
        })?;
        level.choose(policy, hash, rng)
    }

    /// A host by weight among every eligible one not in `exclude`.
    pub(crate) fn choose_excluding(
        &self,
        exclude: &[SocketAddr],
        rng: &Rng,
    ) -> Option<&Arc<Endpoint>> {
        let candidates: Vec<&Arc<Endpoint>> = self
            .levels
            .iter()
            .filter(|l| l.load > 0)
            .flat_map(|l| &l.pools)
            .flat_map(|p| p.hosts())
            .filter(|e| !exclude.contains(&e.info.address))
            .collect();
        weighted(&candidates, rng)
    }
}

/// Envoy's priority load: each priority in order takes its share of the
/// normalized health until 100% is spent; rounding leftovers go to the
/// first priority with load. With no health at all, everything goes to the
/// first priority that has hosts.
fn distribute(levels: &mut [Level], hosts: &HostSet, normalized: u32) {
    if normalized == 0 {
        let first = hosts
            .priorities
            .iter()
            .position(|groups| groups.iter().any(|g| !g.hosts.is_empty()));
        if let Some(p) = first {
            levels[p].load = 100;
        }
        return;
    }
    let mut remaining = 100;
    for level in levels.iter_mut() {
        level.load = remaining.min(level.health * 100 / normalized);
        remaining -= level.load;
    }
    if let Some(first) = levels.iter_mut().find(|l| l.load > 0) {
        first.load += remaining;
    }
}

impl Level {
    /// The pools of a priority with load: all hosts in panic, else the
    /// usable ones, split by locality when localities are weighted.
    fn fill(
        &mut self,
        groups: &[LocalityHosts],
        cfg: &Config,
        usable: &dyn Fn(&Endpoint) -> bool,
        rng: &Rng,
    ) {
        let pick = |g: &LocalityHosts, all: bool| -> Vec<Arc<Endpoint>> {
            g.hosts
                .iter()
                .filter(|e| all || usable(e))
                .cloned()
                .collect()
        };
        if self.panic {
            self.pools.extend(Pool::new(
                groups.iter().flat_map(|g| pick(g, true)).collect(),
                cfg.policy,
                rng,
            ));
            return;
        }
        // A ring spans every locality of the priority: hashing must not
        // depend on a random locality draw.
        if cfg.locality_weighted && !matches!(cfg.policy, Policy::RingHash(_)) {
            let overprovisioning = f64::from(cfg.assignment.overprovisioning) / 100.0;
            let mut sum = 0.0;
            for g in groups {
                let healthy = pick(g, false);
                let share = healthy.len() as f64 / g.hosts.len().max(1) as f64;
                let weight = f64::from(g.weight.unwrap_or(0)) * (overprovisioning * share).min(1.0);
                if weight > 0.0
                    && let Some(pool) = Pool::new(healthy, cfg.policy, rng)
                {
                    sum += weight;
                    self.pools.push(pool);
                    self.locality_weights.push(sum);
                }
            }
            if !self.pools.is_empty() {
                return;
            }
            self.locality_weights.clear();
        }
        self.pools.extend(Pool::new(
            groups.iter().flat_map(|g| pick(g, false)).collect(),
            cfg.policy,
            rng,
        ));
    }

    fn choose(&self, policy: Policy, hash: Option<u64>, rng: &Rng) -> Option<&Arc<Endpoint>> {
        let pool = match self.locality_weights.last() {
            Some(&total) if self.pools.len() > 1 => {
                let x = rng.unit() * total;
                let i = self.locality_weights.partition_point(|&w| w <= x);
                &self.pools[i.min(self.pools.len() - 1)]
            }
            _ => self.pools.first()?,
        };
        Some(pool.pick(policy, hash, rng))
    }
}
