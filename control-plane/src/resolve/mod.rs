//! Hostname gateway addresses: MeshFederations may name an east-west gateway
//! by hostname (`lb.example.com:15443`, typical for cloud load balancers).
//! This task resolves every such hostname (A and AAAA) and publishes the
//! addresses, which the controller folds into the push context like any
//! config change (see [`crate::controller`]).
//!
//! Data path: the store (MeshFederations) → the hostnames they name
//! ([`gateway_hostnames`]) → one lookup per hostname, again when its record
//! TTL runs out (at least every `min_refresh`, at most every `max_refresh`) →
//! `watch<Arc<ResolvedGateways>>`.
//!
//! A failed lookup (timeout, SERVFAIL, no address) keeps the last good answer
//! for `keep_stale`, is logged and counted
//! (`isthmus_control_plane_gateway_dns_errors_total{host}`), and is retried
//! with a backoff from `min_refresh` to one minute. After `keep_stale` without
//! a good answer the hostname's addresses are dropped (checked at each retry).

#[cfg(test)]
mod tests;

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use hickory_resolver::TokioResolver;
use hickory_resolver::config::{LookupIpStrategy, NameServerConfig, ResolverConfig};
use hickory_resolver::net::runtime::TokioRuntimeProvider;
use isthmus_config::Store;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use tokio::sync::watch;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::xds::generate::gateway_hostnames;

/// Resolved gateway hostnames (lowercase, no trailing dot) → their
/// addresses, sorted, without duplicates. A hostname without a good answer
/// (yet, or for longer than `keep_stale`) is absent.
pub type ResolvedGateways = BTreeMap<String, Vec<IpAddr>>;

/// How hostnames are resolved and how often.
#[derive(Clone, Debug)]
pub struct ResolverOptions {
    /// Name servers to ask (UDP, then TCP); empty: the system's
    /// (`/etc/resolv.conf`, with its search domains).
    pub name_servers: Vec<SocketAddr>,
    /// Shortest time between two lookups of a hostname (also the first retry after a failure).
    pub min_refresh: Duration,
    /// Longest time an answer is used without asking again, whatever its TTL.
    pub max_refresh: Duration,
    /// How long the last good answer is kept while lookups fail.
    pub keep_stale: Duration,
    /// Time one lookup may take.
    pub timeout: Duration,
}

impl Default for ResolverOptions {
    fn default() -> Self {
        Self {
            name_servers: Vec::new(),
            min_refresh: Duration::from_secs(5),
            max_refresh: Duration::from_secs(300),
            keep_stale: Duration::from_secs(600),
            timeout: Duration::from_secs(5),
        }
    }
}

/// Longest wait between retries of a failing hostname.
const MAX_RETRY: Duration = Duration::from_secs(60);

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct HostLabel {
    host: String,
}

/// Metrics of the resolver (`gateway_dns_*`). [`Default`] gives unregistered handles.
#[derive(Clone, Debug, Default)]
pub struct ResolverMetrics {
    lookups: Family<HostLabel, Counter>,
    errors: Family<HostLabel, Counter>,
    addresses: Family<HostLabel, Gauge>,
}

impl ResolverMetrics {
    /// Registers the metrics in `registry`.
    pub fn register(registry: &mut Registry) -> Self {
        let m = Self::default();
        registry.register(
            "gateway_dns_lookups",
            "Lookups of hostname gateway addresses",
            m.lookups.clone(),
        );
        registry.register(
            "gateway_dns_errors",
            "Failed lookups of hostname gateway addresses (the last good answer is kept for a while)",
            m.errors.clone(),
        );
        registry.register(
            "gateway_dns_addresses",
            "Addresses in use for a hostname gateway",
            m.addresses.clone(),
        );
        m
    }
}

/// What is known about one hostname.
#[derive(Clone, Debug)]
struct HostState {
    /// The last good answer and when it came.
    good: Option<(Vec<IpAddr>, Instant)>,
    /// When to ask again.
    next: Instant,
    /// Failed lookups in a row.
    failures: u32,
}

/// The answer to one lookup: addresses and how long they are valid.
type Answer = Result<(Vec<IpAddr>, Duration), String>;

impl HostState {
    fn new(now: Instant) -> Self {
        Self {
            good: None,
            next: now,
            failures: 0,
        }
    }

    /// Takes a lookup's answer; returns the error to log, if any.
    fn apply(&mut self, answer: Answer, now: Instant, o: &ResolverOptions) -> Option<String> {
        match answer {
            Ok((mut ips, ttl)) if !ips.is_empty() => {
                ips.sort();
                ips.dedup();
                self.good = Some((ips, now));
                self.failures = 0;
                self.next = now + ttl.clamp(o.min_refresh, o.max_refresh.max(o.min_refresh));
                None
            }
            other => {
                let error = other.err().unwrap_or_else(|| "no A or AAAA record".into());
                self.failures = self.failures.saturating_add(1);
                let backoff = o
                    .min_refresh
                    .saturating_mul(1 << (self.failures - 1).min(8))
                    .min(MAX_RETRY.max(o.min_refresh));
                self.next = now + backoff;
                if self
                    .good
                    .as_ref()
                    .is_some_and(|(_, at)| now.duration_since(*at) >= o.keep_stale)
                {
                    self.good = None;
                    return Some(format!(
                        "{error}; no good answer for {:?}, its addresses are dropped",
                        o.keep_stale
                    ));
                }
                Some(error)
            }
        }
    }
}

/// Resolves the gateway hostnames of the store's MeshFederations until
/// `shutdown`; the receiver always holds the current answers.
pub fn spawn(
    store: &Store,
    options: ResolverOptions,
    metrics: ResolverMetrics,
    shutdown: CancellationToken,
) -> watch::Receiver<Arc<ResolvedGateways>> {
    let (tx, rx) = watch::channel(Arc::new(ResolvedGateways::new()));
    let mut sub = store.subscribe();
    let mut task = Task {
        options,
        metrics,
        tx,
        hosts: BTreeMap::new(),
        resolver: None,
    };
    tokio::spawn(async move {
        loop {
            task.refresh_due().await;
            let wake = task.hosts.values().map(|h| h.next).min();
            tokio::select! {
                () = shutdown.cancelled() => return,
                update = sub.next() => match update {
                    Some(update) => task.follow(&gateway_hostnames(&update.snapshot)),
                    None => return,
                },
                () = sleep_until(wake) => {}
            }
        }
    });
    rx
}

/// The resolver task's state.
struct Task {
    options: ResolverOptions,
    metrics: ResolverMetrics,
    tx: watch::Sender<Arc<ResolvedGateways>>,
    hosts: BTreeMap<String, HostState>,
    /// Built at the first lookup (and again after it failed to build).
    resolver: Option<TokioResolver>,
}

impl Task {
    /// Looks up every hostname whose time has come, and publishes.
    async fn refresh_due(&mut self) {
        let now = Instant::now();
        let due: Vec<String> = self
            .hosts
            .iter()
            .filter(|(_, h)| h.next <= now)
            .map(|(name, _)| name.clone())
            .collect();
        if due.is_empty() {
            return;
        }
        let answers = lookup_all(&mut self.resolver, &self.options, &due).await;
        let now = Instant::now();
        for (host, answer) in due.iter().zip(answers) {
            let Some(state) = self.hosts.get_mut(host) else {
                continue;
            };
            let label = HostLabel { host: host.clone() };
            self.metrics.lookups.get_or_create(&label).inc();
            let before = state.good.as_ref().map(|(ips, _)| ips.clone());
            if let Some(error) = state.apply(answer, now, &self.options) {
                self.metrics.errors.get_or_create(&label).inc();
                tracing::warn!(%host, %error, failures = state.failures, retry_in = ?state.next - now, "resolving a gateway hostname");
            }
            let after = state.good.as_ref().map(|(ips, _)| ips.clone());
            if before != after {
                tracing::info!(%host, addresses = ?after.as_deref().unwrap_or_default(), "gateway hostname resolved");
            }
            let n = after.map_or(0, |ips| ips.len());
            self.metrics
                .addresses
                .get_or_create(&label)
                .set(i64::try_from(n).unwrap_or(i64::MAX));
        }
        self.publish();
    }

    /// Follows the set of hostnames the config names: new ones are looked
    /// up at once, gone ones are forgotten.
    fn follow(&mut self, wanted: &BTreeSet<String>) {
        let before = self.hosts.len();
        let metrics = &self.metrics;
        self.hosts.retain(|host, _| {
            let keep = wanted.contains(host);
            if !keep {
                metrics.addresses.remove(&HostLabel { host: host.clone() });
            }
            keep
        });
        if self.hosts.len() != before {
            self.publish();
        }
        let now = Instant::now();
        for host in wanted {
            self.hosts
                .entry(host.clone())
                .or_insert_with(|| HostState::new(now));
        }
    }

    /// Sends the good answers, if they differ from the published ones.
    fn publish(&self) {
        let current: ResolvedGateways = self
            .hosts
            .iter()
            .filter_map(|(h, s)| Some((h.clone(), s.good.as_ref()?.0.clone())))
            .collect();
        self.tx.send_if_modified(|published| {
            if **published == current {
                return false;
            }
            *published = Arc::new(current);
            true
        });
    }
}

/// Sleeps until `at`, or forever.
async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// Looks every host up at once (building the resolver first if needed).
async fn lookup_all(
    resolver: &mut Option<TokioResolver>,
    options: &ResolverOptions,
    hosts: &[String],
) -> Vec<Answer> {
    if resolver.is_none() {
        match build_resolver(options) {
            Ok(r) => *resolver = Some(r),
            Err(error) => return hosts.iter().map(|_| Err(error.clone())).collect(),
        }
    }
    let Some(resolver) = resolver.as_ref() else {
        return Vec::new();
    };
    futures::future::join_all(hosts.iter().map(|host| async move {
        let lookup = tokio::time::timeout(options.timeout, resolver.lookup_ip(host.as_str()));
        match lookup.await {
            Err(_) => Err(format!("no answer within {:?}", options.timeout)),
            Ok(Err(e)) => Err(e.to_string()),
            Ok(Ok(answer)) => {
                let ttl = answer
                    .valid_until()
                    .saturating_duration_since(std::time::Instant::now());
                Ok((answer.iter().collect(), ttl))
            }
        }
    }))
    .await
}

/// A resolver on the configured name servers, or the system's.
fn build_resolver(options: &ResolverOptions) -> Result<TokioResolver, String> {
    let mut builder = if options.name_servers.is_empty() {
        TokioResolver::builder_tokio()
            .map_err(|e| format!("reading the system DNS configuration (/etc/resolv.conf): {e}"))?
    } else {
        let servers = options
            .name_servers
            .iter()
            .map(|addr| {
                let mut server = NameServerConfig::udp_and_tcp(addr.ip());
                for c in &mut server.connections {
                    c.port = addr.port();
                }
                server
            })
            .collect();
        TokioResolver::builder_with_config(
            ResolverConfig::from_name_servers(servers),
            TokioRuntimeProvider::default(),
        )
    };
    let o = builder.options_mut();
    o.ip_strategy = LookupIpStrategy::Ipv4AndIpv6;
    o.timeout = options.timeout;
    // The resolver's cache never outlives our own refresh bounds.
    o.positive_max_ttl = Some(options.max_refresh);
    o.negative_max_ttl = Some(options.min_refresh);
    builder
        .build()
        .map_err(|e| format!("building the DNS resolver: {e}"))
}
