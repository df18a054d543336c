//! Route configurations from the control plane's real generator, built
//! from Istio YAML, compiled and exercised: both sides must agree.

use std::time::Duration;

use envoy_types::pb::envoy::config::listener::v3::{Listener, filter::ConfigType};
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::{
    HttpConnectionManager, http_connection_manager::RouteSpecifier,
};
use http::StatusCode;
use isthmus_control_plane::registry::ClusterContext;
use isthmus_control_plane::xds::generate::clusters::PASSTHROUGH;
use isthmus_control_plane::xds::generate::routes::{DEFAULT_RETRIES, route_config};
use isthmus_control_plane::xds::generate::{MeshConfig, PushContext, listeners};
use isthmus_control_plane::xds::{ProxyInfo, ProxyRole};
use prost::Message;

use super::*;

const MESH: &str = r#"
apiVersion: v1
kind: Service
metadata: {name: reviews, namespace: sample}
spec:
  clusterIP: 10.96.0.20
  ports: [{name: http, port: 9080}]
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: reviews-1, namespace: sample, labels: {kubernetes.io/service-name: reviews}}
addressType: IPv4
ports: [{name: http, port: 9080}]
endpoints:
- addresses: [10.0.0.5]
---
apiVersion: v1
kind: Service
metadata: {name: ratings, namespace: sample}
spec:
  clusterIP: 10.96.0.21
  ports: [{name: http, port: 9080}]
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: reviews, namespace: sample}
spec:
  hosts: [reviews]
  http:
  - name: old
    match: [{uri: {exact: /old}}]
    redirect: {uri: /new, authority: new.example.com, redirectCode: 302}
  - name: api
    match:
    - uri: {prefix: /api/v1/}
      headers: {x-user: {exact: jason}}
      queryParams: {debug: {exact: "1"}}
      method: {exact: GET}
    rewrite: {uri: /}
    route:
    - destination: {host: reviews, subset: v1}
      weight: 75
      headers: {request: {set: {x-subset: v1}}}
    - {destination: {host: reviews, subset: v2}, weight: 25}
    headers:
      request: {set: {X-A: "1"}, add: {x-b: "2"}, remove: [x-c]}
      response: {set: {x-served-by: reviews}}
    timeout: 3s
    retries: {attempts: 4, perTryTimeout: 1s, retryOn: "gateway-error,connect-failure,409"}
  - name: items
    match: [{uri: {regex: "/items/[0-9]+"}, ignoreUriCase: true, withoutHeaders: {x-debug: {exact: "1"}}}]
    rewrite: {uriRegexRewrite: {match: '^/items/([0-9]+)$', rewrite: '/v2/item/\1'}, authority: items.internal}
    route: [{destination: {host: reviews}}]
  - name: faults
    match: [{headers: {end-user: {prefix: test}}, scheme: {exact: http}, authority: {prefix: reviews}}]
    fault:
      delay: {fixedDelay: 2s, percentage: {value: 50}}
      abort: {grpcStatus: UNAVAILABLE, percentage: {value: 0.1}}
    route: [{destination: {host: reviews}}]
    mirror: {host: ratings}
    mirrorPercentage: {value: 12.5}
  - route: [{destination: {host: reviews}}]
"#;

fn push_context() -> PushContext {
    let loaded = isthmus_api::load::load_yaml(Some("mesh.yaml"), MESH);
    assert!(loaded.errors.is_empty(), "{:?}", loaded.errors);
    let store = isthmus_config::Store::new();
    store.replace_origin("mesh.yaml", loaded.resources);
    let mesh = MeshConfig {
        cluster: ClusterContext {
            cluster: "east".into(),
            network: "net-east".into(),
            domain: "cluster.local".into(),
        },
        ..MeshConfig::default()
    };
    PushContext::build(&store.snapshot(), mesh)
}

fn proxy(workload: &str, ip: &str) -> ProxyInfo {
    ProxyInfo {
        id: ProxyInfo::node_id(ProxyRole::Sidecar, ip.parse().ok(), workload, "sample"),
        role: ProxyRole::Sidecar,
        ip: ip.parse().ok(),
        workload: workload.into(),
        namespace: "sample".into(),
        cluster: "east".into(),
        network: "net-east".into(),
        service_account: workload.into(),
        labels: [("app".to_string(), workload.to_string())].into(),
        locality: "us-east/us-east-1a".parse().unwrap(),
    }
}

fn generated() -> RouteTable {
    let pc = push_context();
    let rc = route_config(&pc, &proxy("sleep", "10.0.0.9"), 9080);
    RouteTable::compile(&rc).unwrap_or_else(|e| panic!("{e}"))
}

const REVIEWS: &str = "reviews.sample.svc.cluster.local";

fn cluster(subset: &str) -> String {
    format!("outbound|9080|{subset}|{REVIEWS}")
}

#[test]
fn virtual_hosts_cover_every_name_of_a_service() {
    let t = generated();
    assert_eq!(t.name(), "9080");
    for authority in [
        "reviews",
        "reviews:9080",
        "Reviews.Sample",
        "reviews.sample.svc:9080",
        "reviews.sample.svc.cluster.local",
        "10.96.0.20:9080",
    ] {
        let vh = t.virtual_host(authority).map(VirtualHost::name);
        assert_eq!(
            vh,
            Some("reviews.sample.svc.cluster.local:9080"),
            "{authority}"
        );
    }
    assert_eq!(
        t.virtual_host("ratings:9080").map(VirtualHost::name),
        Some("ratings.sample.svc.cluster.local:9080")
    );
    let other = Req::new("example.com", "/");
    let route = t.find(&other.info()).unwrap();
    assert_eq!(&*route.virtual_host, "allow_any");
    let f = forward(route);
    assert_eq!(f.clusters.pick(0).name, PASSTHROUGH);
    assert_eq!(f.timeout, None, "the control plane sends 0: no timeout");
    let retry = f.retry.as_ref().unwrap();
    assert_eq!(retry.num_retries, DEFAULT_RETRIES);
    assert!(retry.retry_connect_failure() && retry.retry_refused_stream());
    assert!(retry.retry_status(StatusCode::OK, Some(14)), "unavailable");
    assert!(!retry.retry_status(StatusCode::SERVICE_UNAVAILABLE, None));
}

#[test]
fn redirect_route() {
    let t = generated();
    let req = Req::new("reviews:9080", "/old?x=1");
    let route = t.find(&req.info()).unwrap();
    assert_eq!(route.name, "old");
    let RouteAction::Redirect(r) = &route.action else {
        panic!("not a redirect: {:?}", route.action);
    };
    assert_eq!(
        r.response_location(&req.info(), "http"),
        (
            StatusCode::FOUND,
            "http://new.example.com/new?x=1".to_string()
        )
    );
}

#[test]
fn api_route_weights_rewrite_headers_and_retries() {
    let t = generated();
    let req = Req::new("reviews", "/api/v1/users?debug=1").header("x-user", "jason");
    let route = t.find(&req.info()).unwrap();
    assert_eq!(route.name, "api");
    let post = req.clone().method(Method::POST);
    assert_ne!(t.find(&post.info()).unwrap().name, "api", ":method matcher");
    let no_debug = Req::new("reviews", "/api/v1/users").header("x-user", "jason");
    assert_ne!(
        t.find(&no_debug.info()).unwrap().name,
        "api",
        "query matcher"
    );

    let f = forward(route);
    let weights: Vec<(String, u64)> = f
        .clusters
        .targets()
        .iter()
        .map(|c| c.name.clone())
        .zip(f.clusters.weights())
        .collect();
    assert_eq!(weights, [(cluster("v1"), 75), (cluster("v2"), 25)]);
    assert_eq!(f.clusters.pick(u64::MAX / 4 * 3 - 1000).name, cluster("v1"));
    assert_eq!(f.clusters.pick(u64::MAX / 4 * 3 + 1000).name, cluster("v2"));
    assert_eq!(f.timeout, Some(Duration::from_secs(3)));
    let retry = f.retry.as_ref().unwrap();
    assert_eq!(retry.num_retries, 4);
    assert_eq!(retry.per_try_timeout, Some(Duration::from_secs(1)));
    assert!(retry.retry_on.gateway_error && retry.retry_on.connect_failure);
    assert_eq!(retry.retriable_status_codes, [409]);
    assert!(retry.retry_status(StatusCode::CONFLICT, None));
    assert!(!retry.retry_status(StatusCode::INTERNAL_SERVER_ERROR, None));

    let mut parts = http::Request::builder()
        .uri("/api/v1/users?debug=1")
        .header("host", "reviews")
        .header("x-c", "gone")
        .body(())
        .unwrap()
        .into_parts()
        .0;
    let target = f.clusters.pick(0);
    target.request_headers.apply(&mut parts.headers);
    route.request_headers.apply(&mut parts.headers);
    f.rewrite(route, &mut parts).unwrap();
    assert_eq!(parts.uri, "/users?debug=1");
    assert_eq!(
        parts.headers[X_ENVOY_ORIGINAL_PATH],
        "/api/v1/users?debug=1"
    );
    assert_eq!(parts.headers["x-a"], "1");
    assert_eq!(parts.headers["x-b"], "2");
    assert_eq!(parts.headers["x-subset"], "v1");
    assert!(!parts.headers.contains_key("x-c"));
    let mut response = HeaderMap::new();
    route.response_headers.apply(&mut response);
    assert_eq!(response["x-served-by"], "reviews");
}

#[test]
fn items_route_regex_case_and_without_headers() {
    let t = generated();
    let req = Req::new("reviews", "/items/42").header("x-debug", "0");
    let route = t.find(&req.info()).unwrap();
    assert_eq!(route.name, "items");
    // Envoy's `case_sensitive: false` does not apply to regexes, and the
    // control plane does not add `(?i)` for `ignoreUriCase` (Istio does).
    let upper = Req::new("reviews", "/ITEMS/42").header("x-debug", "0");
    assert_ne!(t.find(&upper.info()).unwrap().name, "items");
    let f = forward(route);
    let mut parts = http::Request::builder()
        .uri("/items/42?x=1")
        .header("host", "reviews:9080")
        .body(())
        .unwrap()
        .into_parts()
        .0;
    f.rewrite(route, &mut parts).unwrap();
    assert_eq!(parts.uri, "/v2/item/42?x=1");
    assert_eq!(parts.headers["host"], "items.internal");
    let debug = Req::new("reviews", "/items/42").header("x-debug", "1");
    assert_ne!(t.find(&debug.info()).unwrap().name, "items");
    // As in Envoy and Istio, an inverted matcher never matches a missing header.
    let missing = Req::new("reviews", "/items/42");
    assert_ne!(t.find(&missing.info()).unwrap().name, "items");
}

#[test]
fn fault_mirror_and_pseudo_header_matchers() {
    let t = generated();
    let req = Req::new("reviews:9080", "/x").header("end-user", "tester");
    let route = t.find(&req.info()).unwrap();
    assert_eq!(route.name, "faults");
    assert_ne!(
        t.find_with_scheme(&req.info(), "https").unwrap().name,
        "faults",
        ":scheme"
    );
    let by_vip = Req::new("10.96.0.20", "/x").header("end-user", "tester");
    assert_ne!(
        t.find(&by_vip.info()).unwrap().name,
        "faults",
        ":authority prefix"
    );

    let fault = route.fault.unwrap();
    let (delay, dp) = fault.delay.unwrap();
    assert_eq!(delay, Duration::from_secs(2));
    assert_eq!(dp.as_percent(), 50.0);
    let (abort, ap) = fault.abort.unwrap();
    assert_eq!(abort, FaultAbort::Grpc(14));
    assert!((ap.as_percent() - 0.1).abs() < 1e-9);
    let m = &forward(route).mirrors;
    assert_eq!(m.len(), 1);
    assert_eq!(
        m[0].cluster,
        "outbound|9080||ratings.sample.svc.cluster.local"
    );
    assert_eq!(m[0].percent, 12.5);

    let plain = Req::new("reviews", "/x");
    let last = t.find(&plain.info()).unwrap();
    assert_eq!(last.name, "sample/reviews/4");
    assert_eq!(last.fault, None);
    assert_eq!(forward(last).clusters.pick(0).name, cluster(""));
}

#[test]
fn every_generated_route_configuration_compiles() {
    let pc = push_context();
    for p in [proxy("sleep", "10.0.0.9"), proxy("reviews-v1", "10.0.0.5")] {
        for port in [9080, 80, 5000] {
            let rc = route_config(&pc, &p, port);
            RouteTable::compile(&rc).unwrap_or_else(|e| panic!("{}: {e}", p.workload));
        }
        // Inbound HTTP chains carry their route configuration inline.
        let mut inline = 0;
        for r in listeners::sidecar(&pc, &p) {
            let Ok(l) = Listener::decode(r.resource.value.as_slice()) else {
                continue;
            };
            for chain in &l.filter_chains {
                for filter in &chain.filters {
                    let Some(ConfigType::TypedConfig(any)) = &filter.config_type else {
                        continue;
                    };
                    if any.type_url != <HttpConnectionManager as prost::Name>::type_url() {
                        continue;
                    }
                    let hcm = HttpConnectionManager::decode(any.value.as_slice()).unwrap();
                    if let Some(RouteSpecifier::RouteConfig(rc)) = &hcm.route_specifier {
                        let t = RouteTable::compile(rc).unwrap_or_else(|e| panic!("{e}"));
                        let route = t.find(&Req::new("anything", "/x").info()).unwrap();
                        assert_eq!(forward(route).timeout, None);
                        inline += 1;
                    }
                }
            }
        }
        let expected = if p.workload == "reviews-v1" { 1 } else { 0 };
        assert!(
            inline >= expected,
            "{}: {inline} inline route configs",
            p.workload
        );
    }
}
