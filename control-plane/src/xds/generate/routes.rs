//! RDS: one route configuration per outbound HTTP port (named by the port),
//! one virtual host per service on that port, routes from VirtualService.

use std::collections::{BTreeSet, HashMap};

use envoy_types::pb::envoy::config::core::v3::{
    HeaderValue, HeaderValueOption, RuntimeFractionalPercent,
    header_value_option::HeaderAppendAction,
};
use envoy_types::pb::envoy::config::route::v3::{
    HeaderMatcher, QueryParameterMatcher, RedirectAction, RetryPolicy, Route, RouteAction,
    RouteConfiguration, RouteMatch, VirtualHost, WeightedCluster,
    header_matcher::HeaderMatchSpecifier,
    query_parameter_matcher::QueryParameterMatchSpecifier,
    redirect_action,
    route::Action,
    route_action::{
        ClusterSpecifier, HashPolicy, HostRewriteSpecifier, RequestMirrorPolicy, hash_policy,
        hash_policy::PolicySpecifier,
    },
    route_match::PathSpecifier,
    weighted_cluster::ClusterWeight,
};
use envoy_types::pb::envoy::extensions::filters::common::fault::v3::{
    FaultDelay, fault_delay::FaultDelaySecifier,
};
use envoy_types::pb::envoy::extensions::filters::http::fault::v3::{
    FaultAbort, HttpFault, fault_abort::ErrorType,
};
use envoy_types::pb::envoy::r#type::matcher::v3::{
    RegexMatchAndSubstitute, RegexMatcher, StringMatcher, string_matcher::MatchPattern,
};
use envoy_types::pb::envoy::r#type::v3::{FractionalPercent, fractional_percent::DenominatorType};
use isthmus_api::networking::{
    Destination, HeaderOperations, Headers, HttpMatchRequest, HttpRoute, Percent, StringMatch,
    VirtualService,
};

use super::clusters::PASSTHROUGH;
use super::{
    EffectivePolicy, PushContext, bool_value, cluster_name, duration, qualify, resource, u32_value,
};
use crate::registry::Service;
use crate::xds::{ProxyInfo, XdsResource};

/// Istio's default retry policy when a route sets none.
pub const DEFAULT_RETRY_ON: &str =
    "connect-failure,refused-stream,unavailable,cancelled,retriable-status-codes";
/// Istio's default number of retries.
pub const DEFAULT_RETRIES: u32 = 2;

/// Route configurations for the requested names (outbound ports).
pub fn generate(pc: &PushContext, proxy: &ProxyInfo, names: &BTreeSet<String>) -> Vec<XdsResource> {
    names
        .iter()
        .filter_map(|n| {
            let port = n.parse().ok()?;
            Some(
                pc.cache
                    .route(n, &pc.view_key(proxy), proxy, pc.uses_source_labels, || {
                        resource(n.clone(), route_config(pc, proxy, port))
                    }),
            )
        })
        .collect()
}

/// The route configuration for outbound HTTP port `port`.
pub fn route_config(pc: &PushContext, proxy: &ProxyInfo, port: u16) -> RouteConfiguration {
    let mut used = BTreeSet::new();
    let mut virtual_hosts = Vec::new();
    let scope = pc.sidecar_for(proxy);
    for svc in pc.registry.services() {
        let Some(svc_port) = svc.port(port) else {
            continue;
        };
        if !super::visible(&svc.export_to, Some(&svc.namespace), &proxy.namespace)
            || !svc_port.protocol.is_http()
            || scope.is_some_and(|s| !s.admits(svc, svc_port))
        {
            continue;
        }
        let domains: Vec<String> = domains(pc, proxy, svc, port)
            .into_iter()
            .filter(|d| used.insert(d.clone()))
            .collect();
        if domains.is_empty() {
            continue;
        }
        let routes = match virtual_service_for(pc, proxy, &svc.hostname) {
            Some(vs) => http_routes(pc, proxy, vs, port),
            None => {
                let mut route = default_route(cluster_name(port, None, &svc.hostname));
                if let Some(Action::Route(ra)) = &mut route.action {
                    ra.hash_policy = hash_policy(pc, proxy, [(svc.hostname.as_str(), port, None)]);
                }
                vec![route]
            }
        };
        virtual_hosts.push(VirtualHost {
            name: format!("{}:{port}", svc.hostname),
            domains,
            routes,
            ..VirtualHost::default()
        });
    }
    virtual_hosts.push(VirtualHost {
        name: "allow_any".into(),
        domains: vec!["*".into()],
        routes: vec![default_route(PASSTHROUGH.to_string())],
        ..VirtualHost::default()
    });
    RouteConfiguration {
        name: port.to_string(),
        virtual_hosts,
        validate_clusters: Some(bool_value(false)),
        ..RouteConfiguration::default()
    }
}

/// Host names a caller may use for `svc` on `port`: the FQDN, short forms
/// inside the service's namespace, and its virtual IPs, each with and without the port.
fn domains(pc: &PushContext, proxy: &ProxyInfo, svc: &Service, port: u16) -> Vec<String> {
    let mut names = vec![svc.hostname.clone()];
    let suffix = format!(".svc.{}", pc.mesh.cluster.domain);
    if let Some(name) = &svc.name
        && svc.hostname.ends_with(&suffix)
    {
        names.push(format!("{}.{}.svc", name.name, name.namespace));
        names.push(format!("{}.{}", name.name, name.namespace));
        if proxy.namespace == name.namespace {
            names.push(name.name.clone());
        }
    }
    names.extend(svc.addresses.iter().map(|a| a.to_string()));
    names
        .iter()
        .flat_map(|n| [n.clone(), format!("{n}:{port}")])
        .collect()
}

/// The VirtualService for a host, as seen by this proxy: exact hosts before wildcards.
fn virtual_service_for<'a>(
    pc: &'a PushContext,
    proxy: &'a ProxyInfo,
    host: &str,
) -> Option<&'a VirtualService> {
    let applies_to_mesh = |vs: &VirtualService| {
        vs.spec.gateways.is_empty() || vs.spec.gateways.iter().any(|g| g == "mesh")
    };
    let domain = &pc.mesh.cluster.domain;
    let ns_of = |vs: &VirtualService| vs.metadata.namespace.clone().unwrap_or_default();
    let candidates: Vec<&VirtualService> = pc
        .virtual_services_for(&proxy.namespace)
        .filter(|vs| applies_to_mesh(vs))
        .collect();
    candidates
        .iter()
        .find(|vs| {
            vs.spec
                .hosts
                .iter()
                .any(|h| qualify(h, &ns_of(vs), domain) == host)
        })
        .or_else(|| {
            candidates.iter().find(|vs| {
                vs.spec
                    .hosts
                    .iter()
                    .any(|h| h == "*" || h.strip_prefix('*').is_some_and(|s| host.ends_with(s)))
            })
        })
        .copied()
}

fn default_route(cluster: String) -> Route {
    Route {
        name: "default".into(),
        r#match: Some(RouteMatch {
            path_specifier: Some(PathSpecifier::Prefix("/".into())),
            ..RouteMatch::default()
        }),
        action: Some(Action::Route(RouteAction {
            cluster_specifier: Some(ClusterSpecifier::Cluster(cluster)),
            timeout: Some(duration(std::time::Duration::ZERO)),
            retry_policy: Some(retry_policy(None)),
            ..RouteAction::default()
        })),
        ..Route::default()
    }
}

/// Envoy routes for a VirtualService's `http` section on `port`.
fn http_routes(pc: &PushContext, proxy: &ProxyInfo, vs: &VirtualService, port: u16) -> Vec<Route> {
    let ns = vs.metadata.namespace.clone().unwrap_or_default();
    let vs_name = vs.metadata.name.clone().unwrap_or_default();
    let mut out = Vec::new();
    for (i, hr) in vs.spec.http.iter().enumerate() {
        let matches: Vec<RouteMatch> = if hr.r#match.is_empty() {
            vec![RouteMatch {
                path_specifier: Some(PathSpecifier::Prefix("/".into())),
                ..RouteMatch::default()
            }]
        } else {
            hr.r#match
                .iter()
                .filter(|m| applies(m, proxy, port))
                .map(route_match)
                .collect()
        };
        let action = action(pc, proxy, hr, &ns, port);
        for m in matches {
            out.push(Route {
                name: hr
                    .name
                    .clone()
                    .unwrap_or_else(|| format!("{ns}/{vs_name}/{i}")),
                r#match: Some(m),
                action: Some(action.clone()),
                request_headers_to_add: header_ops(
                    hr.headers.as_ref().and_then(|h| h.request.as_ref()),
                ),
                request_headers_to_remove: removed(
                    hr.headers.as_ref().and_then(|h| h.request.as_ref()),
                ),
                response_headers_to_add: header_ops(
                    hr.headers.as_ref().and_then(|h| h.response.as_ref()),
                ),
                response_headers_to_remove: removed(
                    hr.headers.as_ref().and_then(|h| h.response.as_ref()),
                ),
                typed_per_filter_config: fault(hr),
                ..Route::default()
            });
        }
    }
    out
}

/// Whether a match's proxy-side conditions (port, source labels, namespace, gateways) hold.
fn applies(m: &HttpMatchRequest, proxy: &ProxyInfo, port: u16) -> bool {
    m.port.is_none_or(|p| p == u32::from(port))
        && m.source_labels
            .iter()
            .all(|(k, v)| proxy.labels.get(k) == Some(v))
        && m.source_namespace
            .as_ref()
            .is_none_or(|ns| *ns == proxy.namespace)
        && (m.gateways.is_empty() || m.gateways.iter().any(|g| g == "mesh"))
}

fn string_matcher(m: &StringMatch, ignore_case: bool) -> Option<StringMatcher> {
    let pattern = if let Some(e) = &m.exact {
        MatchPattern::Exact(e.clone())
    } else if let Some(p) = &m.prefix {
        MatchPattern::Prefix(p.clone())
    } else {
        MatchPattern::SafeRegex(RegexMatcher {
            regex: m.regex.clone()?,
            ..RegexMatcher::default()
        })
    };
    Some(StringMatcher {
        match_pattern: Some(pattern),
        ignore_case,
    })
}

fn header(name: &str, m: &StringMatch, invert: bool) -> HeaderMatcher {
    HeaderMatcher {
        name: name.to_string(),
        header_match_specifier: Some(match string_matcher(m, false) {
            Some(sm) => HeaderMatchSpecifier::StringMatch(sm),
            None => HeaderMatchSpecifier::PresentMatch(true),
        }),
        invert_match: invert,
        ..HeaderMatcher::default()
    }
}

fn route_match(m: &HttpMatchRequest) -> RouteMatch {
    let path = match &m.uri {
        Some(StringMatch { exact: Some(e), .. }) => PathSpecifier::Path(e.clone()),
        Some(StringMatch {
            prefix: Some(p), ..
        }) => PathSpecifier::Prefix(p.clone()),
        Some(StringMatch { regex: Some(r), .. }) => PathSpecifier::SafeRegex(RegexMatcher {
            regex: r.clone(),
            ..RegexMatcher::default()
        }),
        _ => PathSpecifier::Prefix("/".into()),
    };
    let mut headers: Vec<HeaderMatcher> =
        m.headers.iter().map(|(k, v)| header(k, v, false)).collect();
    headers.extend(m.without_headers.iter().map(|(k, v)| header(k, v, true)));
    for (name, sm) in [
        (":method", &m.method),
        (":authority", &m.authority),
        (":scheme", &m.scheme),
    ] {
        if let Some(sm) = sm {
            headers.push(header(name, sm, false));
        }
    }
    RouteMatch {
        path_specifier: Some(path),
        case_sensitive: m.ignore_uri_case.filter(|i| *i).map(|_| bool_value(false)),
        headers,
        query_parameters: m
            .query_params
            .iter()
            .map(|(k, v)| QueryParameterMatcher {
                name: k.clone(),
                query_parameter_match_specifier: Some(match string_matcher(v, false) {
                    Some(sm) => QueryParameterMatchSpecifier::StringMatch(sm),
                    None => QueryParameterMatchSpecifier::PresentMatch(true),
                }),
            })
            .collect(),
        ..RouteMatch::default()
    }
}

/// The host and service port a VirtualService destination refers to.
fn destination_target(pc: &PushContext, d: &Destination, vs_ns: &str, port: u16) -> (String, u16) {
    let host = qualify(&d.host, vs_ns, &pc.mesh.cluster.domain);
    let svc_port = match d.port.map(|p| p.number) {
        Some(n) => u16::try_from(n).unwrap_or(port),
        None => match pc.registry.service(&host) {
            Some(svc) if svc.port(port).is_none() && svc.ports.len() == 1 => svc.ports[0].port,
            _ => port,
        },
    };
    (host, svc_port)
}

/// The cluster a VirtualService destination refers to.
fn destination_cluster(pc: &PushContext, d: &Destination, vs_ns: &str, port: u16) -> String {
    let (host, svc_port) = destination_target(pc, d, vs_ns, port);
    cluster_name(svc_port, d.subset.as_deref(), &host)
}

/// Envoy `hash_policy` for a route, as Istio builds it: the consistent hash
/// of the first destination (host, port, subset) whose DestinationRule has
/// one. Empty when none does.
fn hash_policy<'a>(
    pc: &PushContext,
    proxy: &ProxyInfo,
    destinations: impl IntoIterator<Item = (&'a str, u16, Option<&'a str>)>,
) -> Vec<HashPolicy> {
    let consistent = destinations.into_iter().find_map(|(host, port, subset)| {
        let svc = pc.registry.service(host)?;
        let dr = pc.destination_rule(host, &proxy.namespace, &svc.namespace);
        EffectivePolicy::resolve(dr, port, subset)
            .load_balancer?
            .consistent_hash
            .as_ref()
    });
    let Some(ch) = consistent else {
        return Vec::new();
    };
    let specifier = if let Some(name) = &ch.http_header_name {
        PolicySpecifier::Header(hash_policy::Header {
            header_name: name.to_ascii_lowercase(),
            ..hash_policy::Header::default()
        })
    } else if let Some(c) = &ch.http_cookie {
        PolicySpecifier::Cookie(hash_policy::Cookie {
            name: c.name.clone(),
            ttl: c.ttl.map(|t| duration(t.get())),
            path: c.path.clone().unwrap_or_default(),
            ..hash_policy::Cookie::default()
        })
    } else if ch.use_source_ip == Some(true) {
        PolicySpecifier::ConnectionProperties(hash_policy::ConnectionProperties { source_ip: true })
    } else if let Some(name) = &ch.http_query_parameter_name {
        PolicySpecifier::QueryParameter(hash_policy::QueryParameter { name: name.clone() })
    } else {
        return Vec::new();
    };
    vec![HashPolicy {
        policy_specifier: Some(specifier),
        ..HashPolicy::default()
    }]
}

fn action(pc: &PushContext, proxy: &ProxyInfo, hr: &HttpRoute, ns: &str, port: u16) -> Action {
    if let Some(r) = &hr.redirect {
        let code = match r.redirect_code.unwrap_or(301) {
            302 => redirect_action::RedirectResponseCode::Found,
            303 => redirect_action::RedirectResponseCode::SeeOther,
            307 => redirect_action::RedirectResponseCode::TemporaryRedirect,
            308 => redirect_action::RedirectResponseCode::PermanentRedirect,
            _ => redirect_action::RedirectResponseCode::MovedPermanently,
        };
        return Action::Redirect(RedirectAction {
            host_redirect: r.authority.clone().unwrap_or_default(),
            port_redirect: r.port.unwrap_or_default(),
            path_rewrite_specifier: r
                .uri
                .clone()
                .map(redirect_action::PathRewriteSpecifier::PathRedirect),
            scheme_rewrite_specifier: r
                .scheme
                .clone()
                .map(redirect_action::SchemeRewriteSpecifier::SchemeRedirect),
            response_code: code as i32,
            ..RedirectAction::default()
        });
    }
    let clusters: Vec<ClusterWeight> = hr
        .route
        .iter()
        .map(|d| ClusterWeight {
            name: destination_cluster(pc, &d.destination, ns, port),
            weight: Some(u32_value(
                u32::try_from(d.weight.unwrap_or(100)).unwrap_or(0),
            )),
            request_headers_to_add: header_ops(d.headers.as_ref().and_then(|h| h.request.as_ref())),
            request_headers_to_remove: removed(d.headers.as_ref().and_then(|h| h.request.as_ref())),
            response_headers_to_add: header_ops(
                d.headers.as_ref().and_then(|h| h.response.as_ref()),
            ),
            response_headers_to_remove: removed(
                d.headers.as_ref().and_then(|h| h.response.as_ref()),
            ),
            ..ClusterWeight::default()
        })
        .collect();
    let specifier = match clusters.as_slice() {
        [one] if !has_headers(&hr.route[0].headers) => ClusterSpecifier::Cluster(one.name.clone()),
        _ => ClusterSpecifier::WeightedClusters(WeightedCluster {
            clusters,
            ..WeightedCluster::default()
        }),
    };
    let rewrite = hr.rewrite.as_ref();
    let targets: Vec<(String, u16)> = hr
        .route
        .iter()
        .map(|d| destination_target(pc, &d.destination, ns, port))
        .collect();
    let hash_policy = hash_policy(
        pc,
        proxy,
        targets
            .iter()
            .zip(&hr.route)
            .map(|((h, p), d)| (h.as_str(), *p, d.destination.subset.as_deref())),
    );
    Action::Route(RouteAction {
        cluster_specifier: Some(specifier),
        hash_policy,
        timeout: Some(duration(hr.timeout.map(|t| t.get()).unwrap_or_default())),
        retry_policy: match &hr.retries {
            Some(r) if r.attempts == 0 => None,
            r => Some(retry_policy(r.as_ref())),
        },
        request_mirror_policies: hr
            .mirror
            .iter()
            .map(|m| RequestMirrorPolicy {
                cluster: destination_cluster(pc, m, ns, port),
                runtime_fraction: Some(RuntimeFractionalPercent {
                    default_value: Some(fraction(
                        hr.mirror_percentage.as_ref().map_or(100.0, |p| p.value),
                    )),
                    ..RuntimeFractionalPercent::default()
                }),
                ..RequestMirrorPolicy::default()
            })
            .collect(),
        prefix_rewrite: rewrite.and_then(|r| r.uri.clone()).unwrap_or_default(),
        regex_rewrite: rewrite
            .and_then(|r| r.uri_regex_rewrite.as_ref())
            .map(|rr| RegexMatchAndSubstitute {
                pattern: Some(RegexMatcher {
                    regex: rr.r#match.clone(),
                    ..RegexMatcher::default()
                }),
                substitution: rr.rewrite.clone(),
            }),
        host_rewrite_specifier: rewrite
            .and_then(|r| r.authority.clone())
            .map(HostRewriteSpecifier::HostRewriteLiteral),
        ..RouteAction::default()
    })
}

fn has_headers(h: &Option<Headers>) -> bool {
    h.as_ref()
        .is_some_and(|h| h.request.is_some() || h.response.is_some())
}

fn retry_policy(r: Option<&isthmus_api::networking::HttpRetry>) -> RetryPolicy {
    let on = r
        .and_then(|r| r.retry_on.clone())
        .unwrap_or_else(|| DEFAULT_RETRY_ON.to_string());
    let (codes, conditions): (Vec<&str>, Vec<&str>) = on
        .split(',')
        .map(str::trim)
        .partition(|c| c.parse::<u32>().is_ok());
    let mut conditions: Vec<&str> = conditions;
    if !codes.is_empty() && !conditions.contains(&"retriable-status-codes") {
        conditions.push("retriable-status-codes");
    }
    RetryPolicy {
        retry_on: conditions.join(","),
        retriable_status_codes: codes.iter().filter_map(|c| c.parse().ok()).collect(),
        num_retries: Some(u32_value(
            r.map_or(DEFAULT_RETRIES, |r| u32::try_from(r.attempts).unwrap_or(0)),
        )),
        per_try_timeout: r.and_then(|r| r.per_try_timeout).map(|d| duration(d.get())),
        ..RetryPolicy::default()
    }
}

/// A percentage as a fraction per million (Envoy's most precise denominator).
fn fraction(percent: f64) -> FractionalPercent {
    FractionalPercent {
        numerator: (percent.clamp(0.0, 100.0) * 10_000.0).round() as u32,
        denominator: DenominatorType::Million as i32,
    }
}

fn percent(p: Option<&Percent>) -> Option<FractionalPercent> {
    Some(fraction(p.map_or(100.0, |p| p.value)))
}

fn fault(hr: &HttpRoute) -> HashMap<String, envoy_types::pb::google::protobuf::Any> {
    let Some(f) = &hr.fault else {
        return HashMap::new();
    };
    let config = HttpFault {
        delay: f.delay.as_ref().and_then(|d| {
            Some(FaultDelay {
                fault_delay_secifier: Some(FaultDelaySecifier::FixedDelay(duration(
                    d.fixed_delay?.get(),
                ))),
                percentage: percent(d.percentage.as_ref()),
            })
        }),
        abort: f.abort.as_ref().map(|a| FaultAbort {
            error_type: match (a.http_status, &a.grpc_status) {
                (Some(s), _) => Some(ErrorType::HttpStatus(s)),
                (None, Some(g)) => Some(ErrorType::GrpcStatus(grpc_code(g))),
                (None, None) => None,
            },
            percentage: percent(a.percentage.as_ref()),
            ..FaultAbort::default()
        }),
        ..HttpFault::default()
    };
    HashMap::from([(
        "envoy.filters.http.fault".to_string(),
        envoy_types::util::pack_any(config),
    )])
}

fn grpc_code(name: &str) -> u32 {
    isthmus_api::networking::GRPC_STATUS_NAMES
        .iter()
        .position(|c| *c == name)
        .and_then(|i| u32::try_from(i).ok())
        .unwrap_or(2)
}

fn header_ops(ops: Option<&HeaderOperations>) -> Vec<HeaderValueOption> {
    let Some(ops) = ops else { return Vec::new() };
    let opt = |k: &String, v: &String, action: HeaderAppendAction| HeaderValueOption {
        header: Some(HeaderValue {
            key: k.to_ascii_lowercase(),
            value: v.clone(),
            ..HeaderValue::default()
        }),
        append_action: action as i32,
        ..HeaderValueOption::default()
    };
    ops.set
        .iter()
        .map(|(k, v)| opt(k, v, HeaderAppendAction::OverwriteIfExistsOrAdd))
        .chain(
            ops.add
                .iter()
                .map(|(k, v)| opt(k, v, HeaderAppendAction::AppendIfExistsOrAdd)),
        )
        .collect()
}

fn removed(ops: Option<&HeaderOperations>) -> Vec<String> {
    ops.map(|o| o.remove.iter().map(|h| h.to_ascii_lowercase()).collect())
        .unwrap_or_default()
}
