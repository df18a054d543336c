//! Compilation of a `RouteConfiguration`: its virtual hosts and routes,
//! with what each level inherits (header mutations, fault, retry policy).

use std::collections::HashMap;
use std::sync::Arc;

use envoy_types::pb::envoy::config::route::v3::{
    FilterConfig, Route as PbRoute, RouteConfiguration, VirtualHost as PbVirtualHost,
};
use envoy_types::pb::envoy::extensions::filters::http::fault::v3::HttpFault;
use envoy_types::pb::google::protobuf::Any;
use prost::{Message, Name};

use super::error::{Cx, RouteError};
use super::host::DomainIndex;
use super::{
    DEFAULT_MAX_DIRECT_RESPONSE_BODY, FAULT_FILTER, Fault, HeaderOps, RetryPolicy, Route,
    RouteTable, VirtualHost, action, matcher,
};

/// What virtual hosts inherit from their route configuration.
struct Parent<'a> {
    request_headers: &'a HeaderOps,
    response_headers: &'a HeaderOps,
    /// `Some(None)`: fault injection explicitly disabled.
    fault: Option<Option<Fault>>,
    max_body: u32,
}

/// What routes inherit from their virtual host and route configuration.
struct Inherited<'a> {
    vhost: Arc<str>,
    request_headers: HeaderOps,
    response_headers: HeaderOps,
    /// `Some(None)`: fault injection explicitly disabled.
    fault: Option<Option<Fault>>,
    retry: Option<&'a RetryPolicy>,
    max_body: u32,
}

impl RouteTable {
    /// Compiles a route configuration. Errors name the route configuration,
    /// virtual host and route (by name and index) and the field.
    #[allow(deprecated)] // Deprecated fields must still be refused.
    pub fn compile(rc: &RouteConfiguration) -> Result<RouteTable, RouteError> {
        let RouteConfiguration {
            name,
            virtual_hosts,
            vhds,
            internal_only_headers,
            response_headers_to_add,
            response_headers_to_remove,
            request_headers_to_add,
            request_headers_to_remove,
            most_specific_header_mutations_wins,
            validate_clusters: _,
            max_direct_response_body_size_bytes,
            cluster_specifier_plugins,
            request_mirror_policies,
            ignore_port_in_host_matching,
            vhost_header,
            ignore_path_parameters_in_path_matching,
            typed_per_filter_config,
            metadata: _,
            route_specifiers,
        } = rc;
        let cx = Cx::root(name);
        cx.refuse("vhds", vhds.is_some())?;
        cx.refuse("internal_only_headers", !internal_only_headers.is_empty())?;
        cx.refuse(
            "most_specific_header_mutations_wins",
            *most_specific_header_mutations_wins,
        )?;
        cx.refuse(
            "cluster_specifier_plugins",
            !cluster_specifier_plugins.is_empty(),
        )?;
        cx.refuse(
            "request_mirror_policies",
            !request_mirror_policies.is_empty(),
        )?;
        cx.refuse("vhost_header", !vhost_header.is_empty())?;
        cx.refuse(
            "ignore_path_parameters_in_path_matching",
            *ignore_path_parameters_in_path_matching,
        )?;
        cx.refuse("route_specifiers", !route_specifiers.is_empty())?;
        let request_headers = HeaderOps::compile(
            request_headers_to_add,
            request_headers_to_remove,
            "request",
            &cx,
        )?;
        let response_headers = HeaderOps::compile(
            response_headers_to_add,
            response_headers_to_remove,
            "response",
            &cx,
        )?;
        let fault = fault_config(
            typed_per_filter_config,
            &cx.field("typed_per_filter_config"),
        )?;
        let max_body = max_direct_response_body_size_bytes
            .as_ref()
            .map_or(DEFAULT_MAX_DIRECT_RESPONSE_BODY, |v| v.value);
        let mut domains = DomainIndex::new(*ignore_port_in_host_matching);
        let mut compiled = Vec::with_capacity(virtual_hosts.len());
        for (i, vh) in virtual_hosts.iter().enumerate() {
            let cx = cx.element("virtual host", &vh.name, "virtual_hosts", i);
            domains.add(i, &vh.domains, &cx)?;
            let parent = Parent {
                request_headers: &request_headers,
                response_headers: &response_headers,
                fault,
                max_body,
            };
            compiled.push(virtual_host(vh, &parent, &cx)?);
        }
        Ok(RouteTable {
            name: name.clone(),
            virtual_hosts: compiled,
            domains,
        })
    }
}

/// Compiles a virtual host. Skipped: `virtual_clusters` (stats), `metadata`.
#[allow(deprecated)] // Deprecated fields must still be refused.
fn virtual_host(
    vh: &PbVirtualHost,
    parent: &Parent<'_>,
    cx: &Cx,
) -> Result<VirtualHost, RouteError> {
    let PbVirtualHost {
        name,
        domains: _, // Indexed by the caller.
        routes,
        matcher,
        require_tls,
        virtual_clusters: _,
        rate_limits,
        request_headers_to_add,
        request_headers_to_remove,
        response_headers_to_add,
        response_headers_to_remove,
        cors,
        typed_per_filter_config,
        include_request_attempt_count,
        include_attempt_count_in_response,
        retry_policy,
        retry_policy_typed_config,
        hedge_policy,
        include_is_timeout_retry_header,
        per_request_buffer_limit_bytes,
        request_body_buffer_limit,
        request_mirror_policies,
        metadata: _,
        route_specifiers,
    } = vh;
    cx.refuse("matcher", matcher.is_some())?;
    cx.refuse("require_tls", *require_tls != 0)?;
    cx.refuse("rate_limits", !rate_limits.is_empty())?;
    cx.refuse("cors", cors.is_some())?;
    cx.refuse(
        "include_request_attempt_count",
        *include_request_attempt_count,
    )?;
    cx.refuse(
        "include_attempt_count_in_response",
        *include_attempt_count_in_response,
    )?;
    cx.refuse(
        "retry_policy_typed_config",
        retry_policy_typed_config.is_some(),
    )?;
    cx.refuse("hedge_policy", hedge_policy.is_some())?;
    cx.refuse(
        "include_is_timeout_retry_header",
        *include_is_timeout_retry_header,
    )?;
    cx.refuse(
        "per_request_buffer_limit_bytes",
        per_request_buffer_limit_bytes.is_some(),
    )?;
    cx.refuse(
        "request_body_buffer_limit",
        request_body_buffer_limit.is_some(),
    )?;
    cx.refuse(
        "request_mirror_policies",
        !request_mirror_policies.is_empty(),
    )?;
    cx.refuse("route_specifiers", !route_specifiers.is_empty())?;
    let retry = retry_policy
        .as_ref()
        .map(|p| RetryPolicy::compile(p, &cx.field("retry_policy")))
        .transpose()?;
    let own_fault = fault_config(
        typed_per_filter_config,
        &cx.field("typed_per_filter_config"),
    )?;
    let inherited = Inherited {
        vhost: Arc::from(name.as_str()),
        request_headers: HeaderOps::compile(
            request_headers_to_add,
            request_headers_to_remove,
            "request",
            cx,
        )?
        .then(parent.request_headers),
        response_headers: HeaderOps::compile(
            response_headers_to_add,
            response_headers_to_remove,
            "response",
            cx,
        )?
        .then(parent.response_headers),
        fault: own_fault.or(parent.fault),
        retry: retry.as_ref(),
        max_body: parent.max_body,
    };
    let routes = routes
        .iter()
        .enumerate()
        .map(|(i, r)| route(r, &inherited, &cx.element("route", &r.name, "routes", i)))
        .collect::<Result<_, _>>()?;
    Ok(VirtualHost {
        name: inherited.vhost,
        routes,
    })
}

/// Compiles a route. Skipped: `metadata`, `decorator`, `tracing`, `stat_prefix`.
#[allow(deprecated)] // Deprecated fields must still be refused.
fn route(r: &PbRoute, inherited: &Inherited<'_>, cx: &Cx) -> Result<Route, RouteError> {
    let PbRoute {
        name,
        r#match,
        metadata: _,
        decorator: _,
        typed_per_filter_config,
        request_headers_to_add,
        request_headers_to_remove,
        response_headers_to_add,
        response_headers_to_remove,
        tracing: _,
        per_request_buffer_limit_bytes,
        stat_prefix: _,
        request_body_buffer_limit,
        route_specifiers,
        action,
    } = r;
    cx.refuse(
        "per_request_buffer_limit_bytes",
        per_request_buffer_limit_bytes.is_some(),
    )?;
    cx.refuse(
        "request_body_buffer_limit",
        request_body_buffer_limit.is_some(),
    )?;
    cx.refuse("route_specifiers", !route_specifiers.is_empty())?;
    let Some(m) = r#match else {
        return Err(cx.field("match").invalid("missing"));
    };
    let matcher = matcher::compile(m, &cx.field("match"))?;
    let action = action::compile(
        action.as_ref(),
        &matcher,
        inherited.retry,
        inherited.max_body,
        cx,
    )?;
    let fault = fault_config(
        typed_per_filter_config,
        &cx.field("typed_per_filter_config"),
    )?;
    Ok(Route {
        name: name.clone(),
        virtual_host: inherited.vhost.clone(),
        matcher,
        action,
        request_headers: HeaderOps::compile(
            request_headers_to_add,
            request_headers_to_remove,
            "request",
            cx,
        )?
        .then(&inherited.request_headers),
        response_headers: HeaderOps::compile(
            response_headers_to_add,
            response_headers_to_remove,
            "response",
            cx,
        )?
        .then(&inherited.response_headers),
        fault: fault.or(inherited.fault).flatten(),
    })
}

/// The fault config in a `typed_per_filter_config` map: `None` when absent,
/// `Some(None)` when disabled by a `FilterConfig`. Other filters' configs are refused.
fn fault_config(
    configs: &HashMap<String, Any>,
    cx: &Cx,
) -> Result<Option<Option<Fault>>, RouteError> {
    let mut keys: Vec<&String> = configs.keys().collect();
    keys.sort();
    let mut out = None;
    for key in keys {
        let cx = cx.key(key);
        if key != FAULT_FILTER {
            return Err(cx.unsupported(format!("per-route config for filter {key:?}")));
        }
        let any = &configs[key];
        let fault = if any.type_url == FilterConfig::type_url() {
            let FilterConfig {
                config,
                is_optional: _, // The sidecar always has the fault filter.
                disabled,
            } = decode::<FilterConfig>(any, &cx)?;
            match (disabled, config) {
                (true, _) => None,
                (false, Some(inner)) => Some(fault_from_any(&inner, &cx.field("config"))?),
                (false, None) => return Err(cx.field("config").invalid("missing")),
            }
        } else {
            Some(fault_from_any(any, &cx)?)
        };
        out = Some(fault);
    }
    Ok(out)
}

fn fault_from_any(any: &Any, cx: &Cx) -> Result<Fault, RouteError> {
    if any.type_url != HttpFault::type_url() {
        let what = format!("{} as the fault filter's config", any.type_url);
        return Err(cx.unsupported(what));
    }
    Fault::compile(&decode::<HttpFault>(any, cx)?, cx)
}

fn decode<T: Message + Name + Default>(any: &Any, cx: &Cx) -> Result<T, RouteError> {
    if any.type_url != T::type_url() {
        return Err(cx.invalid(format!(
            "type_url {:?} is not {}",
            any.type_url,
            T::full_name()
        )));
    }
    T::decode(any.value.as_slice()).map_err(|source| cx.decode_error(&any.type_url, source))
}
