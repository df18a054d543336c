//! Route table tests: hand-built configurations for each Envoy feature, and
//! configurations from the control plane's real generator
//! ([`generated`]), so both sides are checked to agree.

mod actions;
mod errors;
mod generated;
mod headers;
mod hosts;
mod matching;
mod policies;

use envoy_types::pb::envoy::config::route::v3::{
    Route as PbRoute, RouteAction as PbRouteAction, RouteConfiguration, RouteMatch,
    VirtualHost as PbVirtualHost, route::Action, route_action::ClusterSpecifier,
    route_match::PathSpecifier,
};
use http::{HeaderMap, HeaderName, HeaderValue, Method};

use super::*;

/// An owned request to build [`RequestInfo`]s from.
#[derive(Clone, Debug)]
struct Req {
    method: Method,
    authority: String,
    path_and_query: String,
    headers: HeaderMap,
}

impl Req {
    fn new(authority: &str, path_and_query: &str) -> Req {
        Req {
            method: Method::GET,
            authority: authority.into(),
            path_and_query: path_and_query.into(),
            headers: HeaderMap::new(),
        }
    }

    fn get(path_and_query: &str) -> Req {
        Req::new("svc", path_and_query)
    }

    fn method(mut self, m: Method) -> Req {
        self.method = m;
        self
    }

    fn header(mut self, name: &str, value: &str) -> Req {
        self.headers.append(
            HeaderName::from_bytes(name.as_bytes()).unwrap(),
            HeaderValue::from_str(value).unwrap(),
        );
        self
    }

    fn info(&self) -> RequestInfo<'_> {
        RequestInfo {
            method: &self.method,
            authority: &self.authority,
            path_and_query: &self.path_and_query,
            headers: &self.headers,
        }
    }
}

fn path_match(p: PathSpecifier) -> RouteMatch {
    RouteMatch {
        path_specifier: Some(p),
        ..RouteMatch::default()
    }
}

fn prefix(p: &str) -> RouteMatch {
    path_match(PathSpecifier::Prefix(p.into()))
}

fn forward_action(cluster: &str) -> PbRouteAction {
    PbRouteAction {
        cluster_specifier: Some(ClusterSpecifier::Cluster(cluster.into())),
        ..PbRouteAction::default()
    }
}

fn to(cluster: &str) -> Action {
    Action::Route(forward_action(cluster))
}

fn route(name: &str, m: RouteMatch, action: Action) -> PbRoute {
    PbRoute {
        name: name.into(),
        r#match: Some(m),
        action: Some(action),
        ..PbRoute::default()
    }
}

fn vhost(name: &str, domains: &[&str], routes: Vec<PbRoute>) -> PbVirtualHost {
    PbVirtualHost {
        name: name.into(),
        domains: domains.iter().map(|d| d.to_string()).collect(),
        routes,
        ..PbVirtualHost::default()
    }
}

fn config(virtual_hosts: Vec<PbVirtualHost>) -> RouteConfiguration {
    RouteConfiguration {
        name: "80".into(),
        virtual_hosts,
        ..RouteConfiguration::default()
    }
}

/// A table with one catch-all virtual host holding `routes`.
fn table(routes: Vec<PbRoute>) -> RouteTable {
    RouteTable::compile(&config(vec![vhost("vh", &["*"], routes)])).unwrap()
}

/// The compile error's message for one catch-all virtual host holding `routes`.
fn error(routes: Vec<PbRoute>) -> String {
    RouteTable::compile(&config(vec![vhost("vh", &["*"], routes)]))
        .unwrap_err()
        .to_string()
}

/// The name of the route `req` takes.
fn found<'t>(t: &'t RouteTable, req: &Req) -> Option<&'t str> {
    t.find(&req.info()).map(|r| r.name.as_str())
}

fn forward(r: &Route) -> &Forward {
    match &r.action {
        RouteAction::Forward(f) => f,
        other => panic!("not a forward: {other:?}"),
    }
}

#[test]
fn route_table_is_send_sync_and_named() {
    fn assert_send_sync<T: Send + Sync>() {}
    assert_send_sync::<RouteTable>();
    let t = table(vec![route("r", prefix("/"), to("c"))]);
    assert_eq!(t.name(), "80");
    assert_eq!(t.virtual_hosts()[0].name(), "vh");
    assert_eq!(t.virtual_hosts()[0].routes().len(), 1);
}
