//! The route table: an Envoy v3 `RouteConfiguration` (RDS) compiled into an
//! immutable, typed form for the HTTP data path.
//!
//! ```text
//! RDS RouteConfiguration ──► RouteTable::compile (once per update; errors name config/vhost/route/field)
//! request ──► RequestInfo ──► RouteTable::find ──► virtual host by :authority ──► first matching Route
//!          Route.action: Forward { clusters.pick(r), rewrite, retry, timeout, mirrors, hash } | Redirect | Direct
//! ```
//!
//! The control plane (`isthmus_control_plane::xds::generate::routes`) emits
//! one configuration per outbound HTTP port; this side follows Envoy's
//! semantics so both agree. Every field the sidecar does not implement is a
//! compile error (an ignored field is a defect); fields that do not change
//! what happens to a request are skipped and listed where they are read:
//! stats and tracing (`virtual_clusters`, `stat_prefix`, `decorator`,
//! `tracing`, mirror `trace_sampled`), opaque `metadata`, runtime keys (the
//! sidecar has no runtime overrides, so Envoy's defaults apply), the
//! deprecated `total_weight` (Envoy uses the sum) and `validate_clusters`
//! (a missing cluster answers [`Forward::cluster_not_found`] at request time).
//!
//! A route's header mutations hold its own, its virtual host's and its
//! configuration's levels, in that order, so the least specific level wins
//! as in Envoy; the picked [`ClusterTarget`]'s apply before them. The fault
//! config is the most specific `envoy.filters.http.fault` per-filter config
//! (route, virtual host, configuration). `find` matches the path as given:
//! normalizing it (as Envoy's connection manager may) is the caller's job.

mod action;
mod compile;
mod error;
mod hash;
mod headers;
mod host;
mod matcher;
mod policy;
mod redirect;
mod retry;

use std::sync::Arc;

use http::{HeaderMap, Method};

pub use action::{
    ClusterTarget, DEFAULT_MAX_DIRECT_RESPONSE_BODY, DEFAULT_TIMEOUT, Forward, RouteAction,
    WeightedClusters,
};
pub use error::RouteError;
pub use hash::{HashHeader, HashOn, HashPolicy, combined_hash};
pub use headers::{AppendAction, HeaderAdd, HeaderOps};
pub use matcher::RouteMatcher;
pub use policy::{Fault, FaultAbort, Mirror, Percent};
pub use redirect::{Redirect, RegexRewrite, RewriteError, X_ENVOY_ORIGINAL_PATH};
pub use retry::{BackOff, RetryOn, RetryPolicy, UnknownRetryOn};

use host::DomainIndex;

/// The per-route filter config name for fault injection.
pub const FAULT_FILTER: &str = "envoy.filters.http.fault";

/// What routing looks at in a request.
#[derive(Clone, Copy, Debug)]
pub struct RequestInfo<'a> {
    /// `:method`.
    pub method: &'a Method,
    /// `:authority` (or `Host`), as sent.
    pub authority: &'a str,
    /// `:path`: path and query, as the connection manager passes it on
    /// (normalized by the caller if it normalizes).
    pub path_and_query: &'a str,
    /// Request headers.
    pub headers: &'a HeaderMap,
}

/// One compiled route.
#[derive(Debug)]
pub struct Route {
    /// The route's name (may be empty).
    pub name: String,
    /// Its virtual host's name.
    pub virtual_host: Arc<str>,
    /// When it applies.
    pub matcher: RouteMatcher,
    /// What it does.
    pub action: RouteAction,
    /// Upstream request mutations: route, virtual host, configuration levels
    /// (apply after the picked [`ClusterTarget`]'s).
    pub request_headers: HeaderOps,
    /// Downstream response mutations, levels as for requests; these apply to
    /// redirects and direct responses too.
    pub response_headers: HeaderOps,
    /// Fault injection, if any.
    pub fault: Option<Fault>,
}

/// One compiled virtual host.
#[derive(Debug)]
pub struct VirtualHost {
    name: Arc<str>,
    routes: Vec<Route>,
}

impl VirtualHost {
    /// The virtual host's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Its routes, in order.
    pub fn routes(&self) -> &[Route] {
        &self.routes
    }

    /// The first route whose matcher accepts `req`, which arrived over `scheme`.
    pub fn find(&self, req: &RequestInfo<'_>, scheme: &str) -> Option<&Route> {
        let path = matcher::path_only(req.path_and_query);
        self.routes
            .iter()
            .find(|r| r.matcher.matches_path(req, path, scheme))
    }
}

/// A compiled route configuration; immutable, cheap to share in an `Arc`.
#[derive(Debug)]
pub struct RouteTable {
    name: String,
    virtual_hosts: Vec<VirtualHost>,
    domains: DomainIndex,
}

impl RouteTable {
    /// The route configuration's name (the outbound port for sidecars).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Every virtual host, in configuration order.
    pub fn virtual_hosts(&self) -> &[VirtualHost] {
        &self.virtual_hosts
    }

    /// The virtual host for `authority` (case-insensitive; exact beats
    /// `*.suffix` beats `prefix.*` beats `*`, longer wildcards first; with a
    /// port, each step tries the authority as given, then without the port).
    pub fn virtual_host(&self, authority: &str) -> Option<&VirtualHost> {
        self.virtual_hosts.get(self.domains.lookup(authority)?)
    }

    /// The route for `req`: its virtual host by authority, then the first
    /// matching route. `None` answers 404 (no virtual host or no route).
    ///
    /// `:scheme` matchers see `http`: the sidecar's outbound listeners take
    /// plaintext HTTP (TLS from the app is proxied as TCP). Use
    /// [`find_with_scheme`](Self::find_with_scheme) when that does not hold.
    pub fn find(&self, req: &RequestInfo<'_>) -> Option<&Route> {
        self.find_with_scheme(req, "http")
    }

    /// [`find`](Self::find) for a request that arrived over `scheme`.
    pub fn find_with_scheme(&self, req: &RequestInfo<'_>, scheme: &str) -> Option<&Route> {
        self.virtual_host(req.authority)?.find(req, scheme)
    }
}

#[cfg(test)]
mod tests;
