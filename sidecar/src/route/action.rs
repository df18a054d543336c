//! What a matched route does: forward (to weighted clusters, with rewrites
//! and policies), redirect, or answer directly.

use std::time::Duration;

use bytes::Bytes;
use envoy_types::pb::envoy::config::core::v3::{
    DataSource, RoutingPriority, data_source::Specifier as DataSpecifier,
};
use envoy_types::pb::envoy::config::route::v3::{
    DirectResponseAction, RouteAction as PbRouteAction, WeightedCluster,
    route::Action as PbAction,
    route_action::{
        ClusterNotFoundResponseCode, ClusterSpecifier, HostRewriteSpecifier, InternalRedirectAction,
    },
    weighted_cluster::ClusterWeight,
};
use http::StatusCode;
use http::request::Parts;

use super::error::{Cx, RouteError};
use super::hash::{HashPolicy, combined_hash};
use super::headers::HeaderOps;
use super::matcher::RouteMatcher;
use super::policy::Mirror;
use super::redirect::{Redirect, RegexRewrite, RewriteError, rewrite_request};
use super::retry::RetryPolicy;
use super::{RequestInfo, Route};

/// Envoy's route timeout when `timeout` is absent.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(15);

/// Envoy's `max_direct_response_body_size_bytes` default.
pub const DEFAULT_MAX_DIRECT_RESPONSE_BODY: u32 = 4096;

/// What a matched route does.
#[derive(Debug)]
pub enum RouteAction {
    /// Proxy to an upstream cluster.
    Forward(Forward),
    /// Answer with a redirect.
    Redirect(Redirect),
    /// Answer with this status and body.
    Direct {
        /// Response status.
        status: StatusCode,
        /// Response body, if any.
        body: Option<Bytes>,
    },
}

/// One upstream cluster a route may pick, with its own header mutations
/// (applied before the route's).
#[derive(Clone, Debug)]
pub struct ClusterTarget {
    /// Cluster name (`outbound|<port>|<subset>|<host>`).
    pub name: String,
    /// Mutations of the upstream request.
    pub request_headers: HeaderOps,
    /// Mutations of the downstream response.
    pub response_headers: HeaderOps,
}

/// Clusters with weights; a single cluster is one target of weight 1.
#[derive(Debug)]
pub struct WeightedClusters {
    targets: Box<[ClusterTarget]>,
    /// Cumulative weights: `ends[i]` is the sum of weights `0..=i`.
    ends: Box<[u64]>,
}

impl WeightedClusters {
    /// The target for a uniformly random `r`: each target is picked with
    /// probability weight / total (exactly, up to 2⁻⁶⁴); zero weights never.
    pub fn pick(&self, r: u64) -> &ClusterTarget {
        let total = self.ends.last().copied().unwrap_or(1);
        // `v` is in `0..total`, so some `ends[i] > v` exists.
        let v = ((u128::from(r) * u128::from(total)) >> 64) as u64;
        let i = self.ends.partition_point(|&end| end <= v);
        // Never empty: compilation refuses an empty cluster list.
        &self.targets[i.min(self.targets.len() - 1)]
    }

    /// Every target, in configuration order.
    pub fn targets(&self) -> &[ClusterTarget] {
        &self.targets
    }

    /// Each target's weight, in configuration order.
    pub fn weights(&self) -> impl Iterator<Item = u64> + '_ {
        self.ends
            .iter()
            .scan(0, |prev, &end| Some(end - std::mem::replace(prev, end)))
    }
}

/// Proxying to a cluster.
#[derive(Debug)]
pub struct Forward {
    /// Where to send the request.
    pub clusters: WeightedClusters,
    /// Whole-request timeout: Envoy's 15 s when the route sets none;
    /// `None` when the route sets 0 (no timeout).
    pub timeout: Option<Duration>,
    /// The route's retry policy, else its virtual host's.
    pub retry: Option<RetryPolicy>,
    /// Shadow copies.
    pub mirrors: Vec<Mirror>,
    /// Consistent-hash inputs; see [`Forward::request_hash`].
    pub hash_policies: Vec<HashPolicy>,
    /// Replaces the matched prefix (or whole matched path).
    pub prefix_rewrite: Option<String>,
    /// Replaces every match in the path (query kept).
    pub regex_rewrite: Option<RegexRewrite>,
    /// New `:authority`.
    pub host_rewrite: Option<String>,
    /// With `host_rewrite`, append the original host to `x-forwarded-host`.
    pub append_x_forwarded_host: bool,
    /// Status when the picked cluster does not exist (Envoy's default 503).
    pub cluster_not_found: StatusCode,
}

impl Forward {
    /// Rewrites the upstream request as Envoy's router does: the path
    /// (`prefix_rewrite` relative to the prefix `route` matched, or
    /// `regex_rewrite`), saving the original in `x-envoy-original-path`, then
    /// the authority (`Host` header and URI authority).
    pub fn rewrite(&self, route: &Route, parts: &mut Parts) -> Result<(), RewriteError> {
        rewrite_request(self, &route.matcher, parts)
    }

    /// The request's hash for consistent-hash load balancing (Envoy's
    /// combination of `hash_policies`); `None` when no policy applies.
    pub fn request_hash(&self, req: &RequestInfo<'_>, source_ip: std::net::IpAddr) -> Option<u64> {
        combined_hash(&self.hash_policies, req, source_ip)
    }
}

/// Compiles `route.action`.
pub(crate) fn compile(
    action: Option<&PbAction>,
    matcher: &RouteMatcher,
    vhost_retry: Option<&RetryPolicy>,
    max_body: u32,
    cx: &Cx,
) -> Result<RouteAction, RouteError> {
    match action {
        Some(PbAction::Route(ra)) => Ok(RouteAction::Forward(forward(
            ra,
            vhost_retry,
            &cx.field("route"),
        )?)),
        Some(PbAction::Redirect(r)) => Ok(RouteAction::Redirect(Redirect::compile(
            r,
            matcher,
            &cx.field("redirect"),
        )?)),
        Some(PbAction::DirectResponse(d)) => direct(d, max_body, &cx.field("direct_response")),
        Some(PbAction::FilterAction(_)) => {
            Err(cx.field("filter_action").unsupported("a filter action"))
        }
        Some(PbAction::NonForwardingAction(_)) => Err(cx
            .field("non_forwarding_action")
            .unsupported("a non-forwarding action")),
        None => Err(cx.invalid("route has no action (unset, or unknown to this build)")),
    }
}

/// Compiles a `RouteAction`. Refused: everything the control plane does not
/// send and the sidecar does not implement (listed in the body).
#[allow(deprecated)] // Deprecated fields must still be refused.
fn forward(
    ra: &PbRouteAction,
    vhost_retry: Option<&RetryPolicy>,
    cx: &Cx,
) -> Result<Forward, RouteError> {
    let PbRouteAction {
        cluster_not_found_response_code,
        metadata_match,
        prefix_rewrite,
        regex_rewrite,
        path_rewrite_policy,
        path_rewrite,
        append_x_forwarded_host,
        timeout,
        idle_timeout,
        flush_timeout,
        early_data_policy,
        retry_policy,
        retry_policy_typed_config,
        request_mirror_policies,
        priority,
        rate_limits,
        include_vh_rate_limits,
        hash_policy,
        cors,
        max_grpc_timeout,
        grpc_timeout_offset,
        upgrade_configs,
        internal_redirect_policy,
        internal_redirect_action,
        max_internal_redirects,
        hedge_policy,
        max_stream_duration,
        cluster_specifier,
        host_rewrite_specifier,
    } = ra;
    cx.refuse("metadata_match", metadata_match.is_some())?;
    cx.refuse("path_rewrite_policy", path_rewrite_policy.is_some())?;
    cx.refuse("path_rewrite", !path_rewrite.is_empty())?;
    cx.refuse("idle_timeout", idle_timeout.is_some())?;
    cx.refuse("flush_timeout", flush_timeout.is_some())?;
    cx.refuse("early_data_policy", early_data_policy.is_some())?;
    cx.refuse(
        "retry_policy_typed_config",
        retry_policy_typed_config.is_some(),
    )?;
    cx.refuse("priority", *priority != RoutingPriority::Default as i32)?;
    cx.refuse("rate_limits", !rate_limits.is_empty())?;
    cx.refuse(
        "include_vh_rate_limits",
        include_vh_rate_limits.as_ref().is_some_and(|b| b.value),
    )?;
    cx.refuse("cors", cors.is_some())?;
    cx.refuse("max_grpc_timeout", max_grpc_timeout.is_some())?;
    cx.refuse("grpc_timeout_offset", grpc_timeout_offset.is_some())?;
    cx.refuse("upgrade_configs", !upgrade_configs.is_empty())?;
    cx.refuse(
        "internal_redirect_policy",
        internal_redirect_policy.is_some(),
    )?;
    cx.refuse(
        "internal_redirect_action",
        *internal_redirect_action != InternalRedirectAction::PassThroughInternalRedirect as i32,
    )?;
    cx.refuse("max_internal_redirects", max_internal_redirects.is_some())?;
    cx.refuse("hedge_policy", hedge_policy.is_some())?;
    cx.refuse("max_stream_duration", max_stream_duration.is_some())?;

    let clusters = match cluster_specifier {
        Some(ClusterSpecifier::Cluster(name)) if !name.is_empty() => WeightedClusters {
            targets: Box::new([ClusterTarget {
                name: name.clone(),
                request_headers: HeaderOps::default(),
                response_headers: HeaderOps::default(),
            }]),
            ends: Box::new([1]),
        },
        Some(ClusterSpecifier::Cluster(_)) => {
            return Err(cx.field("cluster").invalid("must not be empty"));
        }
        Some(ClusterSpecifier::WeightedClusters(w)) => weighted(w, &cx.field("weighted_clusters"))?,
        Some(ClusterSpecifier::ClusterHeader(_)) => {
            return Err(cx
                .field("cluster_header")
                .unsupported("a cluster from a header"));
        }
        Some(ClusterSpecifier::ClusterSpecifierPlugin(_)) => {
            return Err(cx
                .field("cluster_specifier_plugin")
                .unsupported("a cluster plugin"));
        }
        Some(ClusterSpecifier::InlineClusterSpecifierPlugin(_)) => {
            let cx = cx.field("inline_cluster_specifier_plugin");
            return Err(cx.unsupported("a cluster plugin"));
        }
        None => return Err(cx.invalid("no cluster (unset, or unknown to this build)")),
    };
    let cluster_not_found =
        match ClusterNotFoundResponseCode::try_from(*cluster_not_found_response_code) {
            Ok(ClusterNotFoundResponseCode::ServiceUnavailable) => StatusCode::SERVICE_UNAVAILABLE,
            Ok(ClusterNotFoundResponseCode::NotFound) => StatusCode::NOT_FOUND,
            Ok(ClusterNotFoundResponseCode::InternalServerError) => {
                StatusCode::INTERNAL_SERVER_ERROR
            }
            Err(_) => {
                let reason = format!("unknown code {cluster_not_found_response_code}");
                return Err(cx.field("cluster_not_found_response_code").invalid(reason));
            }
        };
    if !prefix_rewrite.is_empty() && regex_rewrite.is_some() {
        return Err(cx.invalid("prefix_rewrite and regex_rewrite are both set"));
    }
    let valid_path = |p: &str| p.starts_with('/') && p.parse::<http::uri::PathAndQuery>().is_ok();
    if !prefix_rewrite.is_empty() && !valid_path(prefix_rewrite) {
        let reason = format!("{prefix_rewrite:?} is not a path starting with '/'");
        return Err(cx.field("prefix_rewrite").invalid(reason));
    }
    let host_rewrite = match host_rewrite_specifier {
        None => None,
        Some(HostRewriteSpecifier::HostRewriteLiteral(h)) => {
            if h.parse::<http::uri::Authority>().is_err() {
                let reason = format!("{h:?} is not an authority");
                return Err(cx.field("host_rewrite_literal").invalid(reason));
            }
            Some(h.clone())
        }
        Some(HostRewriteSpecifier::AutoHostRewrite(b)) if !b.value => None,
        Some(HostRewriteSpecifier::AutoHostRewrite(_)) => {
            return Err(cx
                .field("auto_host_rewrite")
                .unsupported("auto_host_rewrite (set)"));
        }
        Some(HostRewriteSpecifier::HostRewriteHeader(_)) => {
            return Err(cx
                .field("host_rewrite_header")
                .unsupported("a host from a header"));
        }
        Some(HostRewriteSpecifier::HostRewritePathRegex(_)) => {
            return Err(cx
                .field("host_rewrite_path_regex")
                .unsupported("a host from the path"));
        }
        Some(HostRewriteSpecifier::HostRewrite(_)) => {
            let cx = cx.field("host_rewrite");
            return Err(cx.unsupported("a substitution-format host rewrite"));
        }
    };
    let retry = match retry_policy {
        Some(p) => Some(RetryPolicy::compile(p, &cx.field("retry_policy"))?),
        None => vhost_retry.cloned(),
    };
    Ok(Forward {
        clusters,
        timeout: match timeout {
            None => Some(DEFAULT_TIMEOUT),
            Some(d) => Some(cx.field("timeout").duration(d)?).filter(|d| !d.is_zero()),
        },
        retry,
        mirrors: request_mirror_policies
            .iter()
            .enumerate()
            .map(|(i, m)| Mirror::compile(m, &cx.field("request_mirror_policies").index(i)))
            .collect::<Result<_, _>>()?,
        hash_policies: hash_policy
            .iter()
            .enumerate()
            .map(|(i, h)| HashPolicy::compile(h, &cx.field("hash_policy").index(i)))
            .collect::<Result<_, _>>()?,
        prefix_rewrite: Some(prefix_rewrite.clone()).filter(|p| !p.is_empty()),
        regex_rewrite: regex_rewrite
            .as_ref()
            .map(|r| RegexRewrite::compile(r, &cx.field("regex_rewrite")))
            .transpose()?,
        host_rewrite,
        append_x_forwarded_host: *append_x_forwarded_host,
        cluster_not_found,
    })
}

/// Compiles `weighted_clusters`. Skipped: `total_weight` (deprecated; Envoy
/// uses the sum of the weights) and `runtime_key_prefix` (no runtime
/// overrides). Refused: `random_value_specifier`, and per cluster
/// `cluster_header`, `metadata_match`, `typed_per_filter_config`, host rewrites.
#[allow(deprecated)] // `total_weight` is deprecated.
fn weighted(w: &WeightedCluster, cx: &Cx) -> Result<WeightedClusters, RouteError> {
    let WeightedCluster {
        clusters,
        total_weight: _,
        runtime_key_prefix: _,
        random_value_specifier,
    } = w;
    cx.refuse("random_value_specifier", random_value_specifier.is_some())?;
    if clusters.is_empty() {
        return Err(cx
            .field("clusters")
            .invalid("must have at least one cluster"));
    }
    let mut targets = Vec::with_capacity(clusters.len());
    let mut ends = Vec::with_capacity(clusters.len());
    let mut total: u64 = 0;
    for (i, c) in clusters.iter().enumerate() {
        let cx = cx.field("clusters").index(i);
        let ClusterWeight {
            name,
            cluster_header,
            weight,
            metadata_match,
            request_headers_to_add,
            request_headers_to_remove,
            response_headers_to_add,
            response_headers_to_remove,
            typed_per_filter_config,
            host_rewrite_specifier,
        } = c;
        cx.refuse("cluster_header", !cluster_header.is_empty())?;
        cx.refuse("metadata_match", metadata_match.is_some())?;
        cx.refuse(
            "typed_per_filter_config",
            !typed_per_filter_config.is_empty(),
        )?;
        cx.refuse("host_rewrite_literal", host_rewrite_specifier.is_some())?;
        if name.is_empty() {
            return Err(cx.field("name").invalid("must not be empty"));
        }
        total += u64::from(weight.as_ref().map_or(0, |w| w.value));
        ends.push(total);
        targets.push(ClusterTarget {
            name: name.clone(),
            request_headers: HeaderOps::compile(
                request_headers_to_add,
                request_headers_to_remove,
                "request",
                &cx,
            )?,
            response_headers: HeaderOps::compile(
                response_headers_to_add,
                response_headers_to_remove,
                "response",
                &cx,
            )?,
        });
    }
    if total == 0 {
        return Err(cx.field("clusters").invalid("weights sum to 0"));
    }
    Ok(WeightedClusters {
        targets: targets.into(),
        ends: ends.into(),
    })
}

/// Compiles a `DirectResponseAction`: status in [200, 600), an inline body
/// of at most `max_body` bytes. Refused: bodies from files or the
/// environment, `body_format`.
fn direct(d: &DirectResponseAction, max_body: u32, cx: &Cx) -> Result<RouteAction, RouteError> {
    let DirectResponseAction {
        status,
        body,
        body_format,
    } = d;
    cx.refuse("body_format", body_format.is_some())?;
    let status = u16::try_from(*status)
        .ok()
        .filter(|s| (200..600).contains(s))
        .and_then(|s| StatusCode::from_u16(s).ok())
        .ok_or_else(|| {
            cx.field("status")
                .invalid(format!("{status} is not in [200, 600)"))
        })?;
    let body = match body {
        None => None,
        Some(DataSource {
            watched_directory,
            specifier,
        }) => {
            let cx = cx.field("body");
            cx.refuse("watched_directory", watched_directory.is_some())?;
            let bytes = match specifier {
                Some(DataSpecifier::InlineString(s)) => Bytes::from(s.clone()),
                Some(DataSpecifier::InlineBytes(b)) => Bytes::from(b.clone()),
                Some(DataSpecifier::Filename(_)) => {
                    return Err(cx.field("filename").unsupported("a body from a file"));
                }
                Some(DataSpecifier::EnvironmentVariable(_)) => {
                    let cx = cx.field("environment_variable");
                    return Err(cx.unsupported("a body from the environment"));
                }
                None => return Err(cx.invalid("no body source")),
            };
            if bytes.len() > max_body as usize {
                let reason = format!(
                    "{} bytes is over max_direct_response_body_size_bytes ({max_body})",
                    bytes.len()
                );
                return Err(cx.invalid(reason));
            }
            Some(bytes)
        }
    };
    Ok(RouteAction::Direct { status, body })
}
