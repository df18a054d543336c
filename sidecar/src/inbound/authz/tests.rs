//! Policies are built by the control plane's real converter from Istio YAML,
//! so these tests check that both sides agree, not just this side.

use std::collections::{BTreeMap, HashMap};
use std::net::IpAddr;

use envoy_types::pb::envoy::config::core::v3::CidrRange;
use envoy_types::pb::envoy::config::listener::v3::filter;
use envoy_types::pb::envoy::config::rbac::v3::rbac::Action as RbacAction;
use envoy_types::pb::envoy::config::rbac::v3::{
    Permission, Policy, Principal, Rbac, permission, principal,
};
use envoy_types::pb::envoy::config::route::v3::HeaderMatcher;
use envoy_types::pb::envoy::config::route::v3::header_matcher::HeaderMatchSpecifier as H;
use envoy_types::pb::envoy::extensions::filters::http::rbac::v3::Rbac as HttpRbac;
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::http_filter;
use envoy_types::pb::envoy::extensions::filters::network::rbac::v3::Rbac as NetworkRbac;
use envoy_types::pb::envoy::r#type::matcher::v3::string_matcher::MatchPattern as M;
use envoy_types::pb::envoy::r#type::matcher::v3::{RegexMatcher, StringMatcher};
use envoy_types::pb::envoy::r#type::v3::Int64Range;
use envoy_types::pb::google::protobuf::{Any, UInt32Value};
use http::{HeaderMap, HeaderName, HeaderValue, Method};
use isthmus_api::Resource;
use isthmus_api::security::AuthorizationPolicy;
use isthmus_control_plane::xds::generate::rbac::{applicable, http_filters, network_filters};
use proptest::prelude::*;
use prost::{Message, Name};

use super::*;

// ---------------------------------------------------------------------------
// Helpers.

/// Loads AuthorizationPolicies; `(name, spec)` with `spec` a YAML flow mapping,
/// all in namespace `default`.
fn load(policies: &[(&str, &str)]) -> Vec<AuthorizationPolicy> {
    let yaml: Vec<String> = policies
        .iter()
        .map(|(name, spec)| {
            format!(
                "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\n\
                 metadata: {{name: {name}, namespace: default}}\nspec: {spec}\n"
            )
        })
        .collect();
    let loaded = isthmus_api::load::load_yaml(None, &yaml.join("---\n"));
    assert!(loaded.errors.is_empty(), "{:?}", loaded.errors);
    loaded
        .resources
        .into_iter()
        .map(|r| match r {
            Resource::AuthorizationPolicy(p) => p,
            other => panic!("not an AuthorizationPolicy: {:?}", other.kind()),
        })
        .collect()
}

/// The typed_configs of the control plane's HTTP RBAC filters.
fn http_configs(policies: &[AuthorizationPolicy]) -> Vec<Any> {
    let refs: Vec<&AuthorizationPolicy> = policies.iter().collect();
    http_filters(&refs)
        .into_iter()
        .map(|f| match f.config_type {
            Some(http_filter::ConfigType::TypedConfig(any)) => any,
            other => panic!("no typed_config: {other:?}"),
        })
        .collect()
}

/// The typed_configs of the control plane's network RBAC filters.
fn tcp_configs(policies: &[AuthorizationPolicy]) -> Vec<Any> {
    let refs: Vec<&AuthorizationPolicy> = policies.iter().collect();
    network_filters(&refs)
        .into_iter()
        .map(|f| match f.config_type {
            Some(filter::ConfigType::TypedConfig(any)) => any,
            other => panic!("no typed_config: {other:?}"),
        })
        .collect()
}

fn http_authz(policies: &[(&str, &str)]) -> Authorizer {
    Authorizer::from_http_filters(&http_configs(&load(policies))).expect("compiles")
}

fn tcp_authz(policies: &[(&str, &str)]) -> Authorizer {
    Authorizer::from_network_filters(&tcp_configs(&load(policies))).expect("compiles")
}

const SLEEP: &str = "spiffe://cluster.local/ns/default/sa/sleep";

/// A request as it arrives, before normalization.
#[derive(Clone, Debug)]
struct Req {
    principal: Option<String>,
    source: IpAddr,
    destination: IpAddr,
    port: u16,
    sni: Option<String>,
    method: Method,
    target: String,
    host: String,
    headers: HeaderMap,
}

impl Req {
    fn get(target: &str) -> Self {
        Req {
            principal: Some(SLEEP.to_owned()),
            source: ip("10.0.0.1"),
            destination: ip("10.0.0.2"),
            port: 8080,
            sni: None,
            method: Method::GET,
            target: target.to_owned(),
            host: "app.example.com".to_owned(),
            headers: HeaderMap::new(),
        }
    }
    fn from(mut self, principal: &str) -> Self {
        self.principal = Some(principal.to_owned());
        self
    }
    fn anonymous(mut self) -> Self {
        self.principal = None;
        self
    }
    fn source(mut self, addr: &str) -> Self {
        self.source = ip(addr);
        self
    }
    fn port(mut self, port: u16) -> Self {
        self.port = port;
        self
    }
    fn method(mut self, method: &str) -> Self {
        self.method = Method::from_bytes(method.as_bytes()).expect("method");
        self
    }
    fn host(mut self, host: &str) -> Self {
        self.host = host.to_owned();
        self
    }
    fn header(mut self, name: &str, value: &str) -> Self {
        let name = HeaderName::from_bytes(name.as_bytes()).expect("name");
        self.headers
            .append(name, HeaderValue::from_str(value).expect("value"));
        self
    }

    /// Normalizes then checks, as the inbound HTTP stage will; `Err` is a 400.
    fn decide(&self, authz: &Authorizer) -> Result<Decision, PathError> {
        let path = normalize_path(&self.target, &self.method)?;
        let host = normalize_host(&self.host);
        let http = HttpAttributes {
            method: &self.method,
            path: &path,
            host: &host,
            headers: &self.headers,
        };
        Ok(authz.check(&self.attributes(Some(http))))
    }

    fn attributes<'a>(&'a self, http: Option<HttpAttributes<'a>>) -> RequestAttributes<'a> {
        RequestAttributes {
            peer_principal: self.principal.as_deref(),
            source_ip: self.source,
            destination_ip: self.destination,
            destination_port: self.port,
            sni: self.sni.as_deref(),
            http,
        }
    }

    fn allowed(&self, authz: &Authorizer) -> bool {
        matches!(self.decide(authz), Ok(Decision::Allow))
    }

    /// The TCP check of the same connection.
    fn tcp_allowed(&self, authz: &Authorizer) -> bool {
        authz.check(&self.attributes(None)).is_allowed()
    }
}

fn ip(s: &str) -> IpAddr {
    s.parse().expect("ip")
}

fn denied_by(policy: &str) -> Result<Decision, PathError> {
    Ok(Decision::Deny {
        policy: policy.to_owned(),
    })
}

// ---------------------------------------------------------------------------
// Istio semantics, through the control plane's converter.

#[test]
fn no_policy_allows_everything() {
    assert!(http_configs(&[]).is_empty());
    let authz = Authorizer::from_http_filters(&[]).expect("compiles");
    assert!(Req::get("/anything").anonymous().allowed(&authz));
    assert!(Req::get("/x").allowed(&Authorizer::default()));
    let tcp = Authorizer::from_network_filters(&[]).expect("compiles");
    assert!(Req::get("/").anonymous().tcp_allowed(&tcp));
}

#[test]
fn allow_nothing_denies_everything() {
    let authz = http_authz(&[("allow-nothing", "{}")]);
    assert_eq!(Req::get("/").decide(&authz), denied_by(NO_MATCHING_POLICY));
    assert!(!Req::get("/").anonymous().allowed(&authz));
    let tcp = tcp_authz(&[("allow-nothing", "{}")]);
    assert!(!Req::get("/").tcp_allowed(&tcp));
}

#[test]
fn allow_by_principal_exact_prefix_suffix_any() {
    let exact = http_authz(&[(
        "p",
        "{rules: [{from: [{source: {principals: [cluster.local/ns/default/sa/sleep]}}]}]}",
    )]);
    assert!(Req::get("/").allowed(&exact));
    assert!(
        !Req::get("/")
            .from("spiffe://cluster.local/ns/default/sa/other")
            .allowed(&exact)
    );
    assert!(
        !Req::get("/")
            .from("spiffe://cluster.local/ns/default/sa/sleeper")
            .allowed(&exact)
    );
    assert!(!Req::get("/").anonymous().allowed(&exact));

    let prefix = http_authz(&[(
        "p",
        "{rules: [{from: [{source: {principals: [\"cluster.local/ns/default/*\"]}}]}]}",
    )]);
    assert!(
        Req::get("/")
            .from("spiffe://cluster.local/ns/default/sa/x")
            .allowed(&prefix)
    );
    assert!(
        !Req::get("/")
            .from("spiffe://cluster.local/ns/prod/sa/x")
            .allowed(&prefix)
    );

    let suffix = http_authz(&[(
        "p",
        "{rules: [{from: [{source: {principals: [\"*/sa/sleep\"]}}]}]}",
    )]);
    assert!(
        Req::get("/")
            .from("spiffe://other.td/ns/x/sa/sleep")
            .allowed(&suffix)
    );
    assert!(
        !Req::get("/")
            .from("spiffe://other.td/ns/x/sa/web")
            .allowed(&suffix)
    );

    let any = http_authz(&[("p", "{rules: [{from: [{source: {principals: [\"*\"]}}]}]}")]);
    assert!(Req::get("/").from("spiffe://td/ns/a/sa/b").allowed(&any));
    assert!(!Req::get("/").anonymous().allowed(&any));
}

#[test]
fn allow_by_namespace() {
    let authz = http_authz(&[(
        "p",
        "{rules: [{from: [{source: {namespaces: [default, \"prod-*\"]}}]}]}",
    )]);
    assert!(Req::get("/").allowed(&authz));
    assert!(
        Req::get("/")
            .from("spiffe://td/ns/prod-eu/sa/x")
            .allowed(&authz)
    );
    assert!(
        !Req::get("/")
            .from("spiffe://td/ns/production/sa/x")
            .allowed(&authz)
    );
    assert!(
        !Req::get("/")
            .from("spiffe://td/ns/staging/sa/default")
            .allowed(&authz)
    );
    // The namespace is the `/ns/<ns>/` segment, not any substring.
    assert!(
        !Req::get("/")
            .from("spiffe://td/ns/x/sa/ns/default/sa/y")
            .allowed(&authz)
    );
    assert!(!Req::get("/").anonymous().allowed(&authz));
}

#[test]
fn allow_by_method_path_and_host() {
    let authz = http_authz(&[(
        "p",
        "{rules: [{to: [{operation: {methods: [GET, HEAD], paths: [\"/api/*\", /health], \
         hosts: [api.example.com, \"*.internal\"]}}]}]}",
    )]);
    let ok = Req::get("/api/v1/items").host("api.example.com");
    assert!(ok.allowed(&authz));
    assert!(ok.clone().method("HEAD").allowed(&authz));
    assert!(!ok.clone().method("POST").allowed(&authz));
    // Methods are case-sensitive.
    assert!(!ok.clone().method("get").allowed(&authz));
    assert!(Req::get("/health").host("db.internal").allowed(&authz));
    assert!(!Req::get("/health/x").host("db.internal").allowed(&authz));
    assert!(!Req::get("/apiv2").host("api.example.com").allowed(&authz));
    assert!(!Req::get("/api/v1").host("web.example.com").allowed(&authz));
    // Hosts: case, port and trailing dot do not matter; the query is not the path.
    assert!(
        Req::get("/api/v1?x=1")
            .host("API.Example.COM.:8443")
            .allowed(&authz)
    );
    assert!(
        Req::get("/health?/api/x")
            .host("api.example.com")
            .allowed(&authz)
    );
    assert!(
        !Req::get("/x?/api/x")
            .host("api.example.com")
            .allowed(&authz)
    );
}

#[test]
fn not_paths_not_methods_not_principals() {
    let authz = http_authz(&[(
        "p",
        "{rules: [{from: [{source: {notPrincipals: [cluster.local/ns/default/sa/evil]}}], \
         to: [{operation: {notPaths: [\"/private*\"], notMethods: [DELETE]}}]}]}",
    )]);
    assert!(Req::get("/x").allowed(&authz));
    assert!(!Req::get("/private/a").allowed(&authz));
    assert!(!Req::get("/x").method("DELETE").allowed(&authz));
    assert!(
        !Req::get("/x")
            .from("spiffe://cluster.local/ns/default/sa/evil")
            .allowed(&authz)
    );
    // As in Istio, "not that principal" includes peers without any identity.
    assert!(Req::get("/x").anonymous().allowed(&authz));
}

#[test]
fn ip_blocks_and_not_ip_blocks() {
    let authz = http_authz(&[(
        "p",
        "{rules: [{from: [{source: {ipBlocks: [10.1.0.0/16, 192.168.1.7, \"fd00::/8\"], \
         notIpBlocks: [10.1.9.0/24]}}]}]}",
    )]);
    assert!(Req::get("/").source("10.1.2.3").allowed(&authz));
    assert!(Req::get("/").source("192.168.1.7").allowed(&authz));
    assert!(Req::get("/").source("fd12::1").allowed(&authz));
    assert!(!Req::get("/").source("192.168.1.8").allowed(&authz));
    assert!(!Req::get("/").source("10.2.0.1").allowed(&authz));
    assert!(!Req::get("/").source("10.1.9.9").allowed(&authz));
    // An IPv4 peer seen on a dual-stack socket is still that IPv4 peer.
    assert!(Req::get("/").source("::ffff:10.1.2.3").allowed(&authz));
    assert!(!Req::get("/").source("::ffff:10.1.9.9").allowed(&authz));
}

#[test]
fn ports_and_not_ports() {
    let authz = http_authz(&[(
        "p",
        "{rules: [{to: [{operation: {ports: [\"8080\", \"9090\"], notPorts: [\"9090\"]}}]}]}",
    )]);
    assert!(Req::get("/").port(8080).allowed(&authz));
    assert!(!Req::get("/").port(9090).allowed(&authz));
    assert!(!Req::get("/").port(7070).allowed(&authz));
    let tcp = tcp_authz(&[("p", "{rules: [{to: [{operation: {ports: [\"5432\"]}}]}]}")]);
    assert!(Req::get("/").port(5432).tcp_allowed(&tcp));
    assert!(!Req::get("/").port(5433).tcp_allowed(&tcp));
}

#[test]
fn when_conditions() {
    let authz = http_authz(&[(
        "p",
        "{rules: [{when: [\
         {key: \"request.headers[X-User]\", values: [alice, \"bob*\"], notValues: [bobby]}, \
         {key: source.ip, values: [10.0.0.0/8]}, \
         {key: source.namespace, values: [default]}, \
         {key: destination.port, values: [\"8080\"]}]}]}",
    )]);
    let ok = Req::get("/").header("x-user", "alice");
    assert!(ok.allowed(&authz));
    assert!(ok.clone().header("x-other", "1").allowed(&authz));
    assert!(Req::get("/").header("x-user", "bob2").allowed(&authz));
    assert!(!Req::get("/").header("x-user", "bobby").allowed(&authz));
    assert!(!Req::get("/").header("x-user", "mallory").allowed(&authz));
    assert!(!Req::get("/").allowed(&authz), "missing header");
    // Two values are one joined value (`alice,mallory`), as in Envoy.
    assert!(!ok.clone().header("x-user", "mallory").allowed(&authz));
    assert!(!ok.clone().source("192.168.0.1").allowed(&authz));
    assert!(
        !ok.clone()
            .from("spiffe://td/ns/other/sa/sleep")
            .allowed(&authz)
    );
    assert!(!ok.clone().anonymous().allowed(&authz));
    assert!(!ok.clone().port(9090).allowed(&authz));

    let present = http_authz(&[(
        "p",
        "{rules: [{when: [{key: \"request.headers[x-token]\", values: [\"*\"]}]}]}",
    )]);
    assert!(Req::get("/").header("x-token", "t").allowed(&present));
    assert!(!Req::get("/").allowed(&present));
}

#[test]
fn deny_is_evaluated_before_allow() {
    let authz = http_authz(&[
        (
            "allow-sleep",
            "{rules: [{from: [{source: {principals: [cluster.local/ns/default/sa/sleep]}}]}]}",
        ),
        (
            "deny-admin",
            "{action: DENY, rules: [{to: [{operation: {paths: [/metrics]}}]}, \
             {to: [{operation: {paths: [\"/admin*\"]}}]}]}",
        ),
    ]);
    assert_eq!(Req::get("/x").decide(&authz), Ok(Decision::Allow));
    assert_eq!(
        Req::get("/admin/users").decide(&authz),
        denied_by("ns[default]-policy[deny-admin]-rule[1]")
    );
    assert_eq!(
        Req::get("/metrics").decide(&authz),
        denied_by("ns[default]-policy[deny-admin]-rule[0]")
    );
    assert_eq!(
        Req::get("/x").anonymous().decide(&authz),
        denied_by(NO_MATCHING_POLICY)
    );
    // A DENY policy without rules denies nothing.
    let deny_nothing = http_authz(&[("deny-nothing", "{action: DENY}")]);
    assert!(Req::get("/admin").anonymous().allowed(&deny_nothing));
    // A DENY alone does not restrict anything else.
    let deny_only = http_authz(&[(
        "deny-admin",
        "{action: DENY, rules: [{to: [{operation: {paths: [\"/admin*\"]}}]}]}",
    )]);
    assert!(Req::get("/x").anonymous().allowed(&deny_only));
}

#[test]
fn applicable_policies_follow_selectors() {
    let all = load(&[
        ("web-only", "{selector: {matchLabels: {app: web}}}"),
        ("db-only", "{selector: {matchLabels: {app: db}}}"),
    ]);
    let labels = BTreeMap::from([("app".to_owned(), "db".to_owned())]);
    let chosen = applicable(all.iter(), "istio-system", "default", &labels);
    let anys = {
        let owned: Vec<AuthorizationPolicy> = chosen.into_iter().cloned().collect();
        http_configs(&owned)
    };
    let authz = Authorizer::from_http_filters(&anys).expect("compiles");
    assert!(!Req::get("/").allowed(&authz), "allow-nothing for app=db");
}

// ---------------------------------------------------------------------------
// Bypass attempts: each must be refused both by a DENY of `/admin*` and by an
// ALLOW of only `/public/*`.

const DENY_ADMIN: (&str, &str) = (
    "deny-admin",
    "{action: DENY, rules: [{to: [{operation: {paths: [\"/admin*\"]}}]}]}",
);
const ALLOW_PUBLIC: (&str, &str) = (
    "allow-public",
    "{rules: [{to: [{operation: {paths: [\"/public/*\"]}}]}]}",
);

#[test]
fn path_bypass_attempts_are_refused() {
    let deny = http_authz(&[DENY_ADMIN]);
    let allow = http_authz(&[ALLOW_PUBLIC]);
    assert!(Req::get("/public/index.html").allowed(&deny));
    assert!(Req::get("/public/index.html").allowed(&allow));
    for (attack, normalized) in [
        ("/admin", "/admin"),
        ("//admin", "/admin"),
        ("///admin/x", "/admin/x"),
        ("/public/../admin", "/admin"),
        ("/public/%2e%2e/admin", "/admin"),
        ("/public/%2E%2E/admin", "/admin"),
        ("/public/.%2e/admin", "/admin"),
        ("/%61dmin", "/admin"),
        ("/%61%64%6D%69%6E", "/admin"),
        ("/admin%2F", "/admin/"),
        ("/admin%2f..%2f..%2fadmin", "/admin"),
        ("/public%2F..%2Fadmin", "/admin"),
        ("/public%2f..%2fadmin", "/admin"),
        ("/public\\..\\admin", "/admin"),
        ("/public/%5C../admin", "/admin"),
        ("/public/%5c..%5cadmin", "/admin"),
        ("/public/..%5Cadmin", "/admin"),
        ("/admin#frag", "/admin"),
        ("/admin#/public/x", "/admin"),
        ("/./admin", "/admin"),
        ("/public/./../admin", "/admin"),
        ("/public/x/../../admin", "/admin"),
        ("/../../admin", "/admin"),
        ("/public//../admin", "/admin"),
        ("/admin?/public/x", "/admin"),
    ] {
        let req = Req::get(attack);
        let path = normalize_path(attack, &Method::GET).expect("valid target");
        assert_eq!(path.path(), normalized, "{attack}");
        assert_eq!(
            req.decide(&deny),
            denied_by("ns[default]-policy[deny-admin]-rule[0]"),
            "DENY /admin* let {attack:?} through"
        );
        assert_eq!(
            req.decide(&allow),
            denied_by(NO_MATCHING_POLICY),
            "ALLOW /public/* let {attack:?} through"
        );
    }
}

#[test]
fn malformed_targets_are_rejected_before_matching() {
    let allow = http_authz(&[ALLOW_PUBLIC]);
    for attack in [
        "/public/%2",
        "/public/%zz/../admin",
        "/public/%00/../admin",
        "/public/\0/admin",
        "/public/\t../admin",
        "/public/ ../admin",
        "/public/\u{2215}admin",
        "public/x",
        "%2Fpublic/x",
        "*",
    ] {
        let err = Req::get(attack).decide(&allow).expect_err(attack);
        assert_eq!(err.status(), http::StatusCode::BAD_REQUEST);
    }
}

/// Istio path matching is case-sensitive: a DENY of `/admin` does not cover
/// `/ADMIN`. An application that folds case needs its own rules (or an
/// ALLOW-list, which refuses what it does not name).
#[test]
fn path_matching_is_case_sensitive() {
    let deny = http_authz(&[DENY_ADMIN]);
    let allow = http_authz(&[ALLOW_PUBLIC]);
    assert!(Req::get("/ADMIN").allowed(&deny));
    assert!(!Req::get("/ADMIN").allowed(&allow));
    assert!(!Req::get("/PUBLIC/x").allowed(&allow));
}

#[test]
fn host_bypass_attempts_are_refused() {
    let deny = http_authz(&[(
        "deny-admin-host",
        "{action: DENY, rules: [{to: [{operation: {hosts: [admin.example.com]}}]}]}",
    )]);
    for host in [
        "admin.example.com",
        "ADMIN.example.com.",
        "Admin.Example.Com:8080",
        "admin.example.com..",
        "admin.example.com.:443",
    ] {
        assert!(!Req::get("/").host(host).allowed(&deny), "{host}");
    }
    assert!(Req::get("/").host("public.example.com").allowed(&deny));

    let allow = http_authz(&[(
        "allow-public-host",
        "{rules: [{to: [{operation: {hosts: [public.example.com]}}]}]}",
    )]);
    assert!(Req::get("/").host("PUBLIC.example.com.:80").allowed(&allow));
    assert!(!Req::get("/").host("admin.example.com").allowed(&allow));
    assert!(
        !Req::get("/")
            .host("public.example.com.evil")
            .allowed(&allow)
    );

    // A host written with a port in the policy means that port.
    let deny_port = http_authz(&[(
        "deny-admin-8080",
        "{action: DENY, rules: [{to: [{operation: {hosts: [\"admin.example.com:8080\"]}}]}]}",
    )]);
    assert!(
        !Req::get("/")
            .host("ADMIN.example.com.:8080")
            .allowed(&deny_port)
    );
    assert!(
        Req::get("/")
            .host("admin.example.com:9090")
            .allowed(&deny_port)
    );
    assert!(Req::get("/").host("admin.example.com").allowed(&deny_port));
    let not_hosts = http_authz(&[(
        "allow-not-admin",
        "{rules: [{to: [{operation: {notHosts: [\"admin.*\"]}}]}]}",
    )]);
    assert!(Req::get("/").host("web.example.com:80").allowed(&not_hosts));
    assert!(
        !Req::get("/")
            .host("Admin.example.com:80")
            .allowed(&not_hosts)
    );
}

// ---------------------------------------------------------------------------
// TCP.

#[test]
fn tcp_filters_follow_istio() {
    let tcp = tcp_authz(&[(
        "p",
        "{rules: [{from: [{source: {principals: [cluster.local/ns/default/sa/sleep]}}], \
         to: [{operation: {ports: [\"5432\"]}}]}]}",
    )]);
    assert!(Req::get("/").port(5432).tcp_allowed(&tcp));
    assert!(!Req::get("/").port(5432).anonymous().tcp_allowed(&tcp));
    // An ALLOW rule with HTTP conditions grants nothing on TCP...
    let http_only = tcp_authz(&[ALLOW_PUBLIC]);
    assert!(!Req::get("/").tcp_allowed(&http_only));
    // ... and a DENY rule loses them, so it denies more.
    let deny = tcp_authz(&[DENY_ADMIN]);
    assert!(!Req::get("/").tcp_allowed(&deny));
}

#[test]
fn http_authorizer_without_http_attributes_fails_closed() {
    let deny = http_authz(&[DENY_ADMIN]);
    let req = Req::get("/");
    assert_eq!(
        deny.check(&req.attributes(None)),
        Decision::Deny {
            policy: MISSING_HTTP_ATTRIBUTES.to_owned()
        }
    );
    assert!(
        Authorizer::default()
            .check(&req.attributes(None))
            .is_allowed()
    );
}

// ---------------------------------------------------------------------------
// Hand-built configs: what the converter does not emit (yet).

fn http_any(action: RbacAction, policies: Vec<(&str, Policy)>) -> Any {
    let rules = Rbac {
        action: action as i32,
        policies: policies
            .into_iter()
            .map(|(k, v)| (k.to_owned(), v))
            .collect::<HashMap<_, _>>(),
        ..Rbac::default()
    };
    Any {
        type_url: HttpRbac::type_url(),
        value: HttpRbac {
            rules: Some(rules),
            ..HttpRbac::default()
        }
        .encode_to_vec(),
    }
}

fn policy(permission: permission::Rule, principal: principal::Identifier) -> Policy {
    Policy {
        permissions: vec![Permission {
            rule: Some(permission),
        }],
        principals: vec![Principal {
            identifier: Some(principal),
        }],
        ..Policy::default()
    }
}

fn allow_if(permission: permission::Rule) -> Authorizer {
    let p = policy(permission, principal::Identifier::Any(true));
    Authorizer::from_http_filters(&[http_any(RbacAction::Allow, vec![("p", p)])]).expect("compiles")
}

fn header(name: &str, spec: H, invert: bool, missing_as_empty: bool) -> permission::Rule {
    permission::Rule::Header(HeaderMatcher {
        name: name.to_owned(),
        header_match_specifier: Some(spec),
        invert_match: invert,
        treat_missing_header_as_empty: missing_as_empty,
    })
}

fn sm(pattern: M, ignore_case: bool) -> StringMatcher {
    StringMatcher {
        ignore_case,
        match_pattern: Some(pattern),
    }
}

fn regex(re: &str) -> RegexMatcher {
    RegexMatcher {
        regex: re.to_owned(),
        ..RegexMatcher::default()
    }
}

#[test]
fn header_matcher_semantics() {
    let present = allow_if(header("x-a", H::PresentMatch(true), false, false));
    assert!(Req::get("/").header("x-a", "").allowed(&present));
    assert!(!Req::get("/").allowed(&present));

    let absent = allow_if(header("x-a", H::PresentMatch(true), true, false));
    assert!(Req::get("/").allowed(&absent));
    assert!(!Req::get("/").header("x-a", "1").allowed(&absent));

    // An inverted string match does not match a missing header...
    let not_alice = allow_if(header(
        "x-a",
        H::StringMatch(sm(M::Exact("alice".into()), false)),
        true,
        false,
    ));
    assert!(Req::get("/").header("x-a", "bob").allowed(&not_alice));
    assert!(!Req::get("/").header("x-a", "alice").allowed(&not_alice));
    assert!(!Req::get("/").allowed(&not_alice));
    // ... unless the missing header counts as empty.
    let not_alice_or_missing = allow_if(header(
        "x-a",
        H::StringMatch(sm(M::Exact("alice".into()), false)),
        true,
        true,
    ));
    assert!(Req::get("/").allowed(&not_alice_or_missing));

    let range = allow_if(header(
        "x-n",
        H::RangeMatch(Int64Range { start: -10, end: 0 }),
        false,
        false,
    ));
    assert!(Req::get("/").header("x-n", "-1").allowed(&range));
    assert!(!Req::get("/").header("x-n", "0").allowed(&range));
    assert!(!Req::get("/").header("x-n", "x").allowed(&range));

    let joined = allow_if(header(
        "x-a",
        H::StringMatch(sm(M::Exact("a,b".into()), false)),
        false,
        false,
    ));
    assert!(
        Req::get("/")
            .header("x-a", "a")
            .header("x-a", "b")
            .allowed(&joined)
    );

    let path = allow_if(header(
        ":path",
        H::StringMatch(sm(M::Exact("/b?q=1".into()), false)),
        false,
        false,
    ));
    assert!(Req::get("/a/../b?q=1#f").allowed(&path));
}

#[test]
fn string_matcher_semantics() {
    let sni = |pattern, ic| allow_if(permission::Rule::RequestedServerName(sm(pattern, ic)));
    let with_sni = |s: &str| {
        let mut r = Req::get("/");
        r.sni = Some(s.to_owned());
        r
    };
    let exact_ic = sni(M::Exact("Api.Example".into()), true);
    assert!(with_sni("api.EXAMPLE").allowed(&exact_ic));
    let prefix = sni(M::Prefix("api.".into()), false);
    assert!(with_sni("api.x").allowed(&prefix));
    assert!(!with_sni("API.x").allowed(&prefix));
    assert!(
        !Req::get("/").allowed(&prefix),
        "no SNI is the empty string"
    );
    let suffix = sni(M::Suffix(".LOCAL".into()), true);
    assert!(with_sni("a.svc.local").allowed(&suffix));
    let contains = sni(M::Contains("SVC".into()), true);
    assert!(with_sni("a.svc.local").allowed(&contains));
    assert!(!with_sni("a.sv.local").allowed(&contains));
    // Regexes match the whole value; ignore_case does not apply to them (Envoy).
    let re = sni(M::SafeRegex(regex("a|b")), true);
    assert!(with_sni("a").allowed(&re));
    assert!(!with_sni("ab").allowed(&re));
    assert!(!with_sni("A").allowed(&re));
}

#[test]
fn cidr_defaults_and_destination() {
    let cidr = |addr: &str, len: Option<u32>| CidrRange {
        address_prefix: addr.to_owned(),
        prefix_len: len.map(|value| UInt32Value { value }),
    };
    let dest = allow_if(permission::Rule::DestinationIp(cidr("10.0.0.0", Some(30))));
    assert!(Req::get("/").allowed(&dest));
    let mut other = Req::get("/");
    other.destination = ip("10.0.0.9");
    assert!(!other.allowed(&dest));
    // Envoy: an unset prefix_len is 0, i.e. the whole address family.
    let any_v4 = allow_if(permission::Rule::DestinationIp(cidr("1.2.3.4", None)));
    assert!(other.allowed(&any_v4));
    other.destination = ip("fe80::1");
    assert!(!other.allowed(&any_v4));
    // A v4-mapped block is the IPv4 block.
    let mapped = allow_if(permission::Rule::DestinationIp(cidr(
        "::ffff:10.0.0.0",
        Some(120),
    )));
    assert!(Req::get("/").allowed(&mapped));
}

fn http_error(any: Any) -> String {
    Authorizer::from_http_filters(&[any])
        .expect_err("rejected")
        .to_string()
}

#[test]
fn unsupported_and_invalid_configs_are_rejected() {
    let any_principal = || principal::Identifier::Any(true);
    let with = |perm| http_any(RbacAction::Deny, vec![("p", policy(perm, any_principal()))]);

    #[allow(deprecated)]
    let metadata = with(permission::Rule::Metadata(Default::default()));
    let e = http_error(metadata);
    assert!(
        e.contains("filters[0].rules.policies[\"p\"].permissions[0].metadata"),
        "{e}"
    );
    assert!(e.contains("not supported"), "{e}");

    let nested = with(permission::Rule::AndRules(permission::Set {
        rules: vec![
            Permission {
                rule: Some(permission::Rule::Any(true)),
            },
            Permission { rule: None },
        ],
    }));
    let e = http_error(nested);
    assert!(
        e.contains("permissions[0].and_rules.rules[1]: permission has no rule"),
        "{e}"
    );

    let remote = http_any(
        RbacAction::Allow,
        vec![(
            "p",
            policy(
                permission::Rule::Any(true),
                principal::Identifier::RemoteIp(CidrRange::default()),
            ),
        )],
    );
    assert!(http_error(remote).contains("remote_ip"));

    let bad_regex = with(permission::Rule::UrlPath(
        envoy_types::pb::envoy::r#type::matcher::v3::PathMatcher {
            rule: Some(
                envoy_types::pb::envoy::r#type::matcher::v3::path_matcher::Rule::Path(sm(
                    M::SafeRegex(regex("a)|(b")),
                    false,
                )),
            ),
        },
    ));
    assert!(http_error(bad_regex).contains("invalid regex"));

    let empty_set = with(permission::Rule::OrRules(permission::Set { rules: vec![] }));
    assert!(http_error(empty_set).contains("at least one"));

    let no_spec = with(permission::Rule::Header(HeaderMatcher {
        name: "x".into(),
        ..HeaderMatcher::default()
    }));
    assert!(http_error(no_spec).contains("no match specifier"));

    let pseudo = with(header(":scheme", H::PresentMatch(true), false, false));
    assert!(http_error(pseudo).contains("pseudo-header"));

    let port = with(permission::Rule::DestinationPort(70000));
    assert!(http_error(port).contains("not a port number"));

    let mut unknown_action = http_any(RbacAction::Allow, vec![]);
    unknown_action.value = HttpRbac {
        rules: Some(Rbac {
            action: 7,
            ..Rbac::default()
        }),
        ..HttpRbac::default()
    }
    .encode_to_vec();
    assert!(http_error(unknown_action).contains("unknown action 7"));

    let mut garbage = http_any(RbacAction::Allow, vec![]);
    garbage.value = vec![0xff, 0xff, 0xff];
    assert!(http_error(garbage).contains("cannot decode"));

    // A network config handed to the HTTP authorizer, and the reverse.
    let tcp = tcp_configs(&load(&[("allow-nothing", "{}")]));
    assert!(
        http_error(tcp[0].clone()).contains("is not envoy.extensions.filters.http.rbac.v3.RBAC")
    );
    let http = http_configs(&load(&[("allow-nothing", "{}")]));
    assert!(Authorizer::from_network_filters(&http).is_err());
}

#[test]
fn network_filters_refuse_http_matchers() {
    let p = policy(
        header(":method", H::PresentMatch(true), false, false),
        principal::Identifier::Any(true),
    );
    let rules = Rbac {
        action: RbacAction::Deny as i32,
        policies: HashMap::from([("p".to_owned(), p)]),
        ..Rbac::default()
    };
    let any = Any {
        type_url: NetworkRbac::type_url(),
        value: NetworkRbac {
            rules: Some(rules),
            stat_prefix: "tcp.".into(),
            ..NetworkRbac::default()
        }
        .encode_to_vec(),
    };
    let e = Authorizer::from_network_filters(&[any]).expect_err("rejected");
    assert!(e.to_string().contains("HTTP only"), "{e}");
}

#[test]
fn filters_without_rules_or_with_log_action_never_deny() {
    let no_rules = Any {
        type_url: HttpRbac::type_url(),
        value: HttpRbac::default().encode_to_vec(),
    };
    let log = http_any(RbacAction::Log, vec![]);
    let authz = Authorizer::from_http_filters(&[no_rules, log]).expect("compiles");
    assert!(Req::get("/").anonymous().allowed(&authz));
}

// ---------------------------------------------------------------------------
// Normalization.

#[test]
fn normalize_path_table() {
    for (raw, path, query) in [
        ("/", "/", None),
        ("/a/b/", "/a/b/", None),
        ("/a/./b/.", "/a/b/", None),
        ("/a/b/..", "/a/", None),
        ("/a/..", "/", None),
        ("/..", "/", None),
        ("/a//../b", "/b", None),
        ("/a%2Fb%5Cc\\d", "/a/b/c/d", None),
        ("/%7euser/%41%2d%5F", "/~user/A-_", None),
        ("/a%20b%2ac", "/a%20b%2Ac", None),
        ("/a%252F", "/a%252F", None),
        ("/a?", "/a", Some("")),
        ("/a/../b?x=/../y&z=%2F#f?g", "/b", Some("x=/../y&z=%2F")),
        ("/a#f", "/a", None),
    ] {
        let n = normalize_path(raw, &Method::GET).expect(raw);
        assert_eq!((n.path(), n.query()), (path, query), "{raw}");
    }
    let star = normalize_path("*", &Method::OPTIONS).expect("asterisk-form");
    assert_eq!((star.path(), star.query()), ("*", None));
    assert_eq!(star.request_target(), "*");
}

#[test]
fn normalize_path_rejections() {
    for (raw, err) in [
        ("", PathError::NotOriginForm),
        ("a/b", PathError::NotOriginForm),
        ("\\a", PathError::NotOriginForm),
        ("http://h/a", PathError::NotOriginForm),
        ("?x", PathError::NotOriginForm),
        ("*", PathError::NotOriginForm),
        ("/a%", PathError::BadPercentEncoding { offset: 2 }),
        ("/a%4", PathError::BadPercentEncoding { offset: 2 }),
        ("/a%g1", PathError::BadPercentEncoding { offset: 2 }),
        ("/a%00", PathError::EncodedNul { offset: 2 }),
        ("/a\0", PathError::InvalidByte { offset: 2, byte: 0 }),
        (
            "/a\r\n",
            PathError::InvalidByte {
                offset: 2,
                byte: b'\r',
            },
        ),
        (
            "/a b",
            PathError::InvalidByte {
                offset: 2,
                byte: b' ',
            },
        ),
        (
            "/a\x7f",
            PathError::InvalidByte {
                offset: 2,
                byte: 0x7f,
            },
        ),
        (
            "/é",
            PathError::InvalidByte {
                offset: 1,
                byte: 0xc3,
            },
        ),
        ("/a?\x01", PathError::InvalidByte { offset: 3, byte: 1 }),
    ] {
        assert_eq!(normalize_path(raw, &Method::GET), Err(err), "{raw:?}");
    }
}

#[test]
fn normalize_host_table() {
    for (raw, host, port) in [
        ("Example.COM", "example.com", None),
        ("example.com.", "example.com", None),
        ("example.com:8080", "example.com", Some(8080)),
        ("EXAMPLE.com.:0443", "example.com", Some(443)),
        ("example.com:", "example.com", None),
        ("example.com:http", "example.com", None),
        ("[::1]:8080", "[::1]", Some(8080)),
        ("[FE80::1]", "[fe80::1]", None),
        ("10.0.0.1:80", "10.0.0.1", Some(80)),
        ("", "", None),
    ] {
        let n = normalize_host(raw);
        assert_eq!((n.as_str(), n.port()), (host, port), "{raw}");
    }
}

/// Request targets built from the pieces attacks are made of.
fn target_strategy() -> impl Strategy<Value = String> {
    let piece = prop::sample::select(vec![
        "/", "//", "\\", ".", "..", "%2e", "%2E", "%2f", "%2F", "%5c", "%5C", "%61", "%25", "%",
        "%0", "%00", "%zz", "%7e", "%20", "a", "admin", "public", "?", "#", "~", ";", "*", " ",
        "é", "\0", "\t",
    ]);
    prop::collection::vec(piece, 0..12).prop_map(|pieces| pieces.concat())
}

/// Checks the invariants of a normalized path and that it is a fixed point.
fn check_normalized(raw: &str, method: &Method) {
    let Ok(n) = normalize_path(raw, method) else {
        return;
    };
    let p = n.path();
    if p == "*" {
        assert_eq!(raw, "*");
        return;
    }
    assert!(p.starts_with('/'), "{raw:?} → {p:?}");
    assert!(!p.contains("//"), "{raw:?} → {p:?}");
    assert!(!p.contains(['\\', '#', '?']), "{raw:?} → {p:?}");
    assert!(
        p.split('/').all(|s| s != "." && s != ".."),
        "{raw:?} → {p:?}"
    );
    let upper = p.to_ascii_uppercase();
    assert!(
        !upper.contains("%2F") && !upper.contains("%5C") && !upper.contains("%2E"),
        "{raw:?} → {p:?}"
    );
    assert_eq!(
        normalize_path(&n.request_target(), method).as_ref(),
        Ok(&n),
        "not idempotent: {raw:?}"
    );
}

proptest! {
    #[test]
    fn normalize_path_is_idempotent(raw in target_strategy()) {
        check_normalized(&raw, &Method::GET);
        check_normalized(&format!("/{raw}"), &Method::OPTIONS);
    }

    #[test]
    fn normalize_path_never_panics(raw in any::<String>()) {
        check_normalized(&raw, &Method::GET);
        check_normalized(&format!("/{raw}"), &Method::GET);
    }

    #[test]
    fn normalize_host_is_idempotent(raw in "[a-zA-Z0-9.:\\[\\]é-]{0,24}") {
        let once = normalize_host(&raw);
        let twice = normalize_host(once.as_str());
        prop_assert_eq!(twice.as_str(), once.as_str());
        prop_assert_eq!(twice.port(), None);
        prop_assert!(!once.as_str().ends_with('.'));
        prop_assert!(!once.as_str().bytes().any(|b| b.is_ascii_uppercase()));
    }
}
