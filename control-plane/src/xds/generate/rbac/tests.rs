use std::collections::BTreeMap;

use envoy_types::pb::envoy::config::core::v3::CidrRange;
use envoy_types::pb::envoy::config::listener::v3::filter;
use envoy_types::pb::envoy::config::rbac::v3::permission::Rule as P;
use envoy_types::pb::envoy::config::rbac::v3::principal::Identifier as I;
use envoy_types::pb::envoy::config::rbac::v3::rbac::Action as RbacAction;
use envoy_types::pb::envoy::config::rbac::v3::{Permission, Policy, Principal, Rbac, principal};
use envoy_types::pb::envoy::config::route::v3::HeaderMatcher;
use envoy_types::pb::envoy::config::route::v3::header_matcher::HeaderMatchSpecifier as H;
use envoy_types::pb::envoy::extensions::filters::http::rbac::v3::Rbac as HttpRbac;
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::http_filter;
use envoy_types::pb::envoy::extensions::filters::network::rbac::v3::Rbac as NetworkRbac;
use envoy_types::pb::envoy::r#type::matcher::v3::string_matcher::MatchPattern as M;
use envoy_types::pb::envoy::r#type::matcher::v3::{PathMatcher, StringMatcher, path_matcher};
use isthmus_api::Resource;
use isthmus_api::security::{
    Action, AuthorizationPolicy, AuthorizationPolicySpec, Condition, Operation, Rule, RuleFrom,
    RuleTo, Source,
};
use prost::{Message, Name};

use super::*;

// ---------------------------------------------------------------------------
// Helpers.

/// Parses AuthorizationPolicies from YAML (each document must load cleanly).
fn load(yaml: &str) -> Vec<AuthorizationPolicy> {
    let loaded = isthmus_api::load::load_yaml(None, yaml);
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

fn one(yaml: &str) -> AuthorizationPolicy {
    let mut v = load(yaml);
    assert_eq!(v.len(), 1);
    v.remove(0)
}

/// A policy built in code (for values validation would reject).
fn policy(ns: &str, name: &str, action: Option<Action>, rules: Vec<Rule>) -> AuthorizationPolicy {
    let mut p = AuthorizationPolicy::new(
        name,
        AuthorizationPolicySpec {
            action,
            rules,
            ..AuthorizationPolicySpec::default()
        },
    );
    p.metadata.namespace = Some(ns.to_owned());
    p
}

/// Decoded HTTP filters: (action, policies).
fn http(policies: &[&AuthorizationPolicy]) -> Vec<Rbac> {
    http_filters(policies)
        .into_iter()
        .map(|f| {
            assert_eq!(f.name, "envoy.filters.http.rbac");
            let Some(http_filter::ConfigType::TypedConfig(any)) = f.config_type else {
                panic!("no typed_config")
            };
            assert_eq!(
                any.type_url,
                "type.googleapis.com/envoy.extensions.filters.http.rbac.v3.RBAC"
            );
            let rbac = HttpRbac::decode(any.value.as_slice()).expect("decodes");
            rbac.rules.expect("rules")
        })
        .collect()
}

/// Decoded network filters.
fn tcp(policies: &[&AuthorizationPolicy]) -> Vec<Rbac> {
    network_filters(policies)
        .into_iter()
        .map(|f| {
            assert_eq!(f.name, "envoy.filters.network.rbac");
            let Some(filter::ConfigType::TypedConfig(any)) = f.config_type else {
                panic!("no typed_config")
            };
            assert_eq!(any.type_url, NetworkRbac::type_url());
            let rbac = NetworkRbac::decode(any.value.as_slice()).expect("decodes");
            assert_eq!(rbac.stat_prefix, "tcp.");
            rbac.rules.expect("rules")
        })
        .collect()
}

fn action(r: &Rbac) -> RbacAction {
    RbacAction::try_from(r.action).expect("known action")
}

fn names(r: &Rbac) -> Vec<&str> {
    let mut v: Vec<&str> = r.policies.keys().map(String::as_str).collect();
    v.sort_unstable();
    v
}

/// The single policy of a single filter.
fn only_policy(rbacs: &[Rbac]) -> &Policy {
    assert_eq!(rbacs.len(), 1);
    assert_eq!(rbacs[0].policies.len(), 1, "{:?}", names(&rbacs[0]));
    rbacs[0].policies.values().next().expect("one policy")
}

fn perm(p: &Policy) -> &P {
    assert_eq!(p.permissions.len(), 1);
    p.permissions[0].rule.as_ref().expect("rule")
}

fn princ(p: &Policy) -> &I {
    assert_eq!(p.principals.len(), 1);
    p.principals[0].identifier.as_ref().expect("identifier")
}

fn and_rules(r: &P) -> Vec<&P> {
    match r {
        P::AndRules(s) => s
            .rules
            .iter()
            .map(|p| p.rule.as_ref().expect("rule"))
            .collect(),
        other => panic!("not and_rules: {other:?}"),
    }
}

fn or_rules(r: &P) -> Vec<&P> {
    match r {
        P::OrRules(s) => s
            .rules
            .iter()
            .map(|p| p.rule.as_ref().expect("rule"))
            .collect(),
        other => panic!("not or_rules: {other:?}"),
    }
}

fn not_rule(r: &P) -> &P {
    match r {
        P::NotRule(p) => p.rule.as_ref().expect("rule"),
        other => panic!("not not_rule: {other:?}"),
    }
}

fn and_ids(i: &I) -> Vec<&I> {
    match i {
        I::AndIds(s) => s
            .ids
            .iter()
            .map(|p| p.identifier.as_ref().expect("id"))
            .collect(),
        other => panic!("not and_ids: {other:?}"),
    }
}

fn or_ids(i: &I) -> Vec<&I> {
    match i {
        I::OrIds(s) => s
            .ids
            .iter()
            .map(|p| p.identifier.as_ref().expect("id"))
            .collect(),
        other => panic!("not or_ids: {other:?}"),
    }
}

fn not_id(i: &I) -> &I {
    match i {
        I::NotId(p) => p.identifier.as_ref().expect("id"),
        other => panic!("not not_id: {other:?}"),
    }
}

/// The principal_name pattern of an `authenticated` identifier.
fn principal_name(i: &I) -> &M {
    match i {
        I::Authenticated(principal::Authenticated {
            principal_name:
                Some(StringMatcher {
                    match_pattern: Some(m),
                    ..
                }),
        }) => m,
        other => panic!("not authenticated: {other:?}"),
    }
}

fn exact(s: &str) -> M {
    M::Exact(s.into())
}
fn prefix(s: &str) -> M {
    M::Prefix(s.into())
}
fn suffix(s: &str) -> M {
    M::Suffix(s.into())
}
fn safe_regex(m: &M) -> &str {
    match m {
        M::SafeRegex(r) => &r.regex,
        other => panic!("not safe_regex: {other:?}"),
    }
}

fn cidr_range(addr: &str, len: u32) -> CidrRange {
    CidrRange {
        address_prefix: addr.into(),
        prefix_len: Some(UInt32Value { value: len }),
    }
}

fn header_of(r: &P) -> &HeaderMatcher {
    match r {
        P::Header(h) => h,
        other => panic!("not header: {other:?}"),
    }
}

fn string_match(h: &HeaderMatcher) -> &StringMatcher {
    match &h.header_match_specifier {
        Some(H::StringMatch(m)) => m,
        other => panic!("not string_match: {other:?}"),
    }
}

fn path_of(r: &P) -> &M {
    match r {
        P::UrlPath(PathMatcher {
            rule:
                Some(path_matcher::Rule::Path(StringMatcher {
                    match_pattern: Some(m),
                    ignore_case: false,
                })),
        }) => m,
        other => panic!("not url_path: {other:?}"),
    }
}

const ANY_P: P = P::Any(true);
const ANY_I: I = I::Any(true);

fn labels(kv: &[(&str, &str)]) -> BTreeMap<String, String> {
    kv.iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect()
}

// ---------------------------------------------------------------------------
// Selection.

#[test]
fn applicable_selects_by_namespace_selector_and_root() {
    let all = load(
        r#"
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: ns-wide, namespace: app}
spec: {}
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: for-web, namespace: app}
spec:
  selector: {matchLabels: {app: web}}
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: for-web-v2, namespace: app}
spec:
  selector: {matchLabels: {app: web, version: v2}}
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: for-db, namespace: app}
spec:
  selector: {matchLabels: {app: db}}
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: other-ns, namespace: other}
spec: {}
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: mesh-wide, namespace: istio-system}
spec: {}
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: mesh-web, namespace: istio-system}
spec:
  selector: {matchLabels: {app: web}}
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: mesh-db, namespace: istio-system}
spec:
  selector: {matchLabels: {app: db}}
"#,
    );
    let web = labels(&[("app", "web"), ("version", "v1")]);
    let got: Vec<&str> = applicable(all.iter(), "istio-system", "app", &web)
        .into_iter()
        .map(|p| p.metadata.name.as_deref().unwrap_or_default())
        .collect();
    assert_eq!(got, ["ns-wide", "for-web", "mesh-wide", "mesh-web"]);

    // A workload in a namespace with no policy of its own still gets the mesh-wide ones.
    let got: Vec<&str> = applicable(all.iter(), "istio-system", "elsewhere", &web)
        .into_iter()
        .map(|p| p.metadata.name.as_deref().unwrap_or_default())
        .collect();
    assert_eq!(got, ["mesh-wide", "mesh-web"]);

    // No labels: only selector-less policies.
    let got: Vec<&str> = applicable(all.iter(), "istio-system", "other", &BTreeMap::new())
        .into_iter()
        .map(|p| p.metadata.name.as_deref().unwrap_or_default())
        .collect();
    assert_eq!(got, ["other-ns", "mesh-wide"]);
}

#[test]
fn applicable_ignores_policies_without_namespace() {
    let mut p = policy("x", "p", None, vec![]);
    p.metadata.namespace = None;
    assert!(applicable([&p].into_iter(), "istio-system", "", &BTreeMap::new()).is_empty());
}

// ---------------------------------------------------------------------------
// Filters and ordering.

#[test]
fn no_policy_no_filter() {
    assert!(http_filters(&[]).is_empty());
    assert!(network_filters(&[]).is_empty());
}

#[test]
fn allow_nothing_is_an_allow_filter_without_policies() {
    let p = one(r#"
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: allow-nothing, namespace: app}
spec: {}
"#);
    for rbacs in [http(&[&p]), tcp(&[&p])] {
        assert_eq!(rbacs.len(), 1);
        assert_eq!(action(&rbacs[0]), RbacAction::Allow);
        assert!(rbacs[0].policies.is_empty());
    }
}

#[test]
fn empty_rule_matches_everything() {
    let p = one(r#"
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: allow-all, namespace: app}
spec:
  rules: [{}]
"#);
    let rbacs = http(&[&p]);
    assert_eq!(names(&rbacs[0]), ["ns[app]-policy[allow-all]-rule[0]"]);
    let pol = only_policy(&rbacs);
    assert_eq!(perm(pol), &ANY_P);
    assert_eq!(princ(pol), &ANY_I);
    assert_eq!(only_policy(&tcp(&[&p])), pol);
}

#[test]
fn deny_then_allow_one_policy_per_rule() {
    let ps = load(
        r#"
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: allow-a, namespace: app}
spec:
  action: ALLOW
  rules:
  - from: [{source: {namespaces: [a]}}]
  - from: [{source: {namespaces: [b]}}]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: deny-x, namespace: app}
spec:
  action: DENY
  rules:
  - from: [{source: {namespaces: [x]}}]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: mesh, namespace: istio-system}
spec:
  rules:
  - to: [{operation: {ports: ["8080"]}}]
"#,
    );
    let refs: Vec<&AuthorizationPolicy> = ps.iter().collect();
    for rbacs in [http(&refs), tcp(&refs)] {
        assert_eq!(rbacs.len(), 2);
        assert_eq!(action(&rbacs[0]), RbacAction::Deny);
        assert_eq!(names(&rbacs[0]), ["ns[app]-policy[deny-x]-rule[0]"]);
        assert_eq!(action(&rbacs[1]), RbacAction::Allow);
        assert_eq!(
            names(&rbacs[1]),
            [
                "ns[app]-policy[allow-a]-rule[0]",
                "ns[app]-policy[allow-a]-rule[1]",
                "ns[istio-system]-policy[mesh]-rule[0]",
            ]
        );
    }
}

#[test]
fn deny_only_has_no_allow_filter() {
    let p = policy("app", "d", Some(Action::Deny), vec![Rule::default()]);
    let rbacs = http(&[&p]);
    assert_eq!(rbacs.len(), 1);
    assert_eq!(action(&rbacs[0]), RbacAction::Deny);
    // A DENY policy without rules denies nothing.
    let empty = policy("app", "d", Some(Action::Deny), vec![]);
    let rbacs = http(&[&empty]);
    assert_eq!(action(&rbacs[0]), RbacAction::Deny);
    assert!(rbacs[0].policies.is_empty());
}

#[test]
fn encoding_is_deterministic_and_decodes_as_envoy_types() {
    let rules: Vec<Rule> = (0..20)
        .map(|i| Rule {
            to: vec![RuleTo {
                operation: Operation {
                    ports: vec![(1000 + i).to_string()],
                    ..Operation::default()
                },
            }],
            ..Rule::default()
        })
        .collect();
    let p = policy("app", "many", None, rules);
    let a = http_filters(&[&p]);
    let b = http_filters(&[&p]);
    assert_eq!(a, b);
    let a = network_filters(&[&p]);
    assert_eq!(a, network_filters(&[&p]));

    // Same content as the envoy-types message (whose map encodes in hash order).
    let rbacs = http(&[&p]);
    assert_eq!(rbacs[0].policies.len(), 20);
    assert_eq!(
        perm(&rbacs[0].policies["ns[app]-policy[many]-rule[7]"]),
        &P::DestinationPort(1007)
    );
    let reencoded = HttpRbac {
        rules: Some(rbacs[0].clone()),
        ..HttpRbac::default()
    };
    let back = HttpRbac::decode(reencoded.encode_to_vec().as_slice()).expect("decodes");
    assert_eq!(back.rules.as_ref(), Some(&rbacs[0]));
}

// ---------------------------------------------------------------------------
// Sources.

#[test]
fn principals_exact_prefix_suffix_any_and_scheme() {
    let p = one(r#"
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: p, namespace: app}
spec:
  rules:
  - from:
    - source:
        principals:
        - cluster.local/ns/x/sa/y
        - spiffe://east.local/ns/x/sa/y
        - cluster.local/ns/team-*
        - "*/sa/admin"
        - "*"
"#);
    let rbacs = http(&[&p]);
    let pol = only_policy(&rbacs);
    assert_eq!(perm(pol), &ANY_P);
    let ids = or_ids(princ(pol));
    let got: Vec<&M> = ids.iter().map(|i| principal_name(i)).collect();
    assert_eq!(
        got,
        [
            &exact("spiffe://cluster.local/ns/x/sa/y"),
            &exact("spiffe://east.local/ns/x/sa/y"),
            &prefix("spiffe://cluster.local/ns/team-"),
            &suffix("/sa/admin"),
            &prefix("spiffe://"),
        ]
    );
}

#[test]
fn single_principal_is_not_wrapped() {
    let p = one(r#"
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: p, namespace: app}
spec:
  rules:
  - from: [{source: {principals: [cluster.local/ns/x/sa/y]}}]
"#);
    let rbacs = http(&[&p]);
    assert_eq!(
        principal_name(princ(only_policy(&rbacs))),
        &exact("spiffe://cluster.local/ns/x/sa/y")
    );
}

#[test]
fn namespaces_become_spiffe_regexes() {
    let p = one(r#"
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: p, namespace: app}
spec:
  rules:
  - from:
    - source:
        namespaces: [prod, "team-*", "*"]
        notNamespaces: [kube-system]
"#);
    let rbacs = http(&[&p]);
    let parts = and_ids(princ(only_policy(&rbacs)));
    assert_eq!(parts.len(), 2);
    let re: Vec<&str> = or_ids(parts[0])
        .into_iter()
        .map(|i| safe_regex(principal_name(i)))
        .collect();
    assert_eq!(
        re,
        [
            "^spiffe://[^/]+/ns/prod/sa/[^/]+$",
            "^spiffe://[^/]+/ns/team-[^/]*/sa/[^/]+$",
            "^spiffe://[^/]+/ns/[^/]*/sa/[^/]+$",
        ]
    );
    assert_eq!(
        safe_regex(principal_name(not_id(parts[1]))),
        "^spiffe://[^/]+/ns/kube-system/sa/[^/]+$"
    );
}

#[test]
fn namespace_regex_escapes_metacharacters() {
    assert_eq!(
        namespace_regex("a.b+c*"),
        r"^spiffe://[^/]+/ns/a\.b\+c[^/]*/sa/[^/]+$"
    );
}

#[test]
fn ip_blocks_and_not_ip_blocks() {
    let p = one(r#"
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: p, namespace: app}
spec:
  rules:
  - from:
    - source:
        ipBlocks: [10.0.0.0/8, 192.168.1.7, "fd00::/64", "::1"]
        notIpBlocks: [10.1.2.3]
"#);
    let rbacs = http(&[&p]);
    let parts = and_ids(princ(only_policy(&rbacs)));
    let ips: Vec<&CidrRange> = or_ids(parts[0])
        .into_iter()
        .map(|i| match i {
            I::DirectRemoteIp(c) => c,
            other => panic!("{other:?}"),
        })
        .collect();
    assert_eq!(
        ips,
        [
            &cidr_range("10.0.0.0", 8),
            &cidr_range("192.168.1.7", 32),
            &cidr_range("fd00::", 64),
            &cidr_range("::1", 128),
        ]
    );
    assert_eq!(
        not_id(parts[1]),
        &I::DirectRemoteIp(cidr_range("10.1.2.3", 32))
    );
}

#[test]
fn from_entries_are_ored_and_source_fields_anded() {
    let p = one(r#"
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: p, namespace: app}
spec:
  rules:
  - from:
    - source: {principals: [cluster.local/ns/a/sa/b], notPrincipals: [cluster.local/ns/a/sa/c]}
    - source: {ipBlocks: [1.2.3.4]}
"#);
    let rbacs = http(&[&p]);
    let alts = or_ids(princ(only_policy(&rbacs)));
    assert_eq!(alts.len(), 2);
    let first = and_ids(alts[0]);
    assert_eq!(
        principal_name(first[0]),
        &exact("spiffe://cluster.local/ns/a/sa/b")
    );
    assert_eq!(
        principal_name(not_id(first[1])),
        &exact("spiffe://cluster.local/ns/a/sa/c")
    );
    assert_eq!(alts[1], &I::DirectRemoteIp(cidr_range("1.2.3.4", 32)));
}

// ---------------------------------------------------------------------------
// Operations.

#[test]
fn operation_fields() {
    let p = one(r#"
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: p, namespace: app}
spec:
  rules:
  - to:
    - operation:
        hosts: [api.example.com, "*.example.com", "*"]
        notHosts: ["admin.*"]
        methods: [GET, HEAD]
        notMethods: [DELETE]
        paths: [/exact, /api/*, "*.json", "*"]
        notPaths: [/admin]
        ports: ["8080", "9090"]
        notPorts: ["15000"]
"#);
    let rbacs = http(&[&p]);
    let pol = only_policy(&rbacs);
    assert_eq!(princ(pol), &ANY_I);
    let parts = and_rules(perm(pol));
    assert_eq!(parts.len(), 8);

    // hosts: :authority, case-insensitive; `*` = present.
    let hosts = or_rules(parts[0]);
    for (r, want) in hosts[..2]
        .iter()
        .zip([exact("api.example.com"), suffix(".example.com")])
    {
        let h = header_of(r);
        assert_eq!(h.name, ":authority");
        let m = string_match(h);
        assert!(m.ignore_case);
        assert_eq!(m.match_pattern.as_ref(), Some(&want));
    }
    assert_eq!(
        header_of(hosts[2]).header_match_specifier,
        Some(H::PresentMatch(true))
    );
    let not_host = header_of(not_rule(parts[1]));
    assert_eq!(string_match(not_host).match_pattern, Some(prefix("admin.")));

    // methods: :method exact.
    let methods: Vec<&M> = or_rules(parts[2])
        .into_iter()
        .map(|r| {
            let h = header_of(r);
            assert_eq!(h.name, ":method");
            assert!(!string_match(h).ignore_case);
            string_match(h).match_pattern.as_ref().expect("pattern")
        })
        .collect();
    assert_eq!(methods, [&exact("GET"), &exact("HEAD")]);
    assert_eq!(
        string_match(header_of(not_rule(parts[3]))).match_pattern,
        Some(exact("DELETE"))
    );

    // paths: url_path.
    let paths = or_rules(parts[4]);
    assert_eq!(path_of(paths[0]), &exact("/exact"));
    assert_eq!(path_of(paths[1]), &prefix("/api/"));
    assert_eq!(path_of(paths[2]), &suffix(".json"));
    assert_eq!(safe_regex(path_of(paths[3])), ".+");
    assert_eq!(path_of(not_rule(parts[5])), &exact("/admin"));

    // ports.
    assert_eq!(
        or_rules(parts[6]),
        [&P::DestinationPort(8080), &P::DestinationPort(9090)]
    );
    assert_eq!(not_rule(parts[7]), &P::DestinationPort(15000));
}

#[test]
fn to_entries_are_ored_and_rule_parts_anded() {
    let p = one(r#"
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: p, namespace: app}
spec:
  rules:
  - from: [{source: {namespaces: [a]}}]
    to:
    - operation: {methods: [GET]}
    - operation: {ports: ["81"]}
    when:
    - key: destination.port
      values: ["80"]
"#);
    let rbacs = http(&[&p]);
    let pol = only_policy(&rbacs);
    let parts = and_rules(perm(pol));
    assert_eq!(parts.len(), 2);
    let alts = or_rules(parts[0]);
    assert_eq!(
        string_match(header_of(alts[0])).match_pattern,
        Some(exact("GET"))
    );
    assert_eq!(alts[1], &P::DestinationPort(81));
    assert_eq!(parts[1], &P::DestinationPort(80));
    assert_eq!(
        safe_regex(principal_name(princ(pol))),
        "^spiffe://[^/]+/ns/a/sa/[^/]+$"
    );
}

// ---------------------------------------------------------------------------
// Conditions.

#[test]
fn when_conditions() {
    let p = one(r#"
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: p, namespace: app}
spec:
  rules:
  - when:
    - key: source.ip
      values: [10.0.0.0/16]
      notValues: [10.0.9.9]
    - key: source.namespace
      values: [prod]
    - key: source.principal
      notValues: [cluster.local/ns/prod/sa/bad]
    - key: request.headers[X-Tenant]
      values: [acme, "beta-*"]
    - key: destination.ip
      values: [10.1.0.1]
    - key: destination.port
      notValues: ["9000"]
    - key: connection.sni
      values: ["*.svc.cluster.local"]
"#);
    let rbacs = http(&[&p]);
    let pol = only_policy(&rbacs);

    let perms = and_rules(perm(pol));
    assert_eq!(
        perms,
        [
            &P::DestinationIp(cidr_range("10.1.0.1", 32)),
            &P::NotRule(Box::new(Permission {
                rule: Some(P::DestinationPort(9000))
            })),
            &P::RequestedServerName(StringMatcher {
                match_pattern: Some(suffix(".svc.cluster.local")),
                ignore_case: false,
            }),
        ]
    );

    let ids = and_ids(princ(pol));
    assert_eq!(ids.len(), 5);
    assert_eq!(ids[0], &I::DirectRemoteIp(cidr_range("10.0.0.0", 16)));
    assert_eq!(
        not_id(ids[1]),
        &I::DirectRemoteIp(cidr_range("10.0.9.9", 32))
    );
    assert_eq!(
        safe_regex(principal_name(ids[2])),
        "^spiffe://[^/]+/ns/prod/sa/[^/]+$"
    );
    assert_eq!(
        principal_name(not_id(ids[3])),
        &exact("spiffe://cluster.local/ns/prod/sa/bad")
    );
    let headers: Vec<&HeaderMatcher> = or_ids(ids[4])
        .into_iter()
        .map(|i| match i {
            I::Header(h) => h,
            other => panic!("{other:?}"),
        })
        .collect();
    assert_eq!(headers[0].name, "x-tenant");
    assert_eq!(string_match(headers[0]).match_pattern, Some(exact("acme")));
    assert_eq!(
        string_match(headers[1]).match_pattern,
        Some(prefix("beta-"))
    );
}

// ---------------------------------------------------------------------------
// TCP.

const MIXED: &str = r#"
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: p, namespace: app}
spec:
  action: ACTION
  rules:
  # 0: TCP only.
  - from: [{source: {namespaces: [a]}}]
    to: [{operation: {ports: ["80"]}}]
  # 1: HTTP method + port.
  - to: [{operation: {methods: [GET], ports: ["81"]}}]
  # 2: HTTP only.
  - to: [{operation: {paths: [/admin]}}]
  # 3: header condition + TCP condition.
  - from: [{source: {ipBlocks: [1.2.3.4]}}]
    when:
    - key: request.headers[x-a]
      values: [b]
    - key: destination.port
      values: ["82"]
  # 4: notHosts only.
  - to: [{operation: {notHosts: [a.com]}}]
"#;

#[test]
fn tcp_allow_drops_rules_with_http_conditions() {
    let p = one(&MIXED.replace("ACTION", "ALLOW"));
    let rbacs = tcp(&[&p]);
    assert_eq!(rbacs.len(), 1);
    assert_eq!(action(&rbacs[0]), RbacAction::Allow);
    assert_eq!(names(&rbacs[0]), ["ns[app]-policy[p]-rule[0]"]);
    let pol = &rbacs[0].policies["ns[app]-policy[p]-rule[0]"];
    assert_eq!(perm(pol), &P::DestinationPort(80));
    // The HTTP filter keeps everything.
    assert_eq!(http(&[&p])[0].policies.len(), 5);

    // An ALLOW policy whose rules all need HTTP denies all TCP traffic.
    let http_only = policy(
        "app",
        "h",
        None,
        vec![Rule {
            to: vec![RuleTo {
                operation: Operation {
                    methods: vec!["GET".into()],
                    ..Operation::default()
                },
            }],
            ..Rule::default()
        }],
    );
    let rbacs = tcp(&[&http_only]);
    assert_eq!(action(&rbacs[0]), RbacAction::Allow);
    assert!(rbacs[0].policies.is_empty());
}

#[test]
fn tcp_deny_drops_only_http_conditions() {
    let p = one(&MIXED.replace("ACTION", "DENY"));
    let rbacs = tcp(&[&p]);
    assert_eq!(rbacs.len(), 1);
    assert_eq!(action(&rbacs[0]), RbacAction::Deny);
    assert_eq!(rbacs[0].policies.len(), 5);
    let get = |i: usize| &rbacs[0].policies[&format!("ns[app]-policy[p]-rule[{i}]")];

    // 0: unchanged.
    assert_eq!(perm(get(0)), &P::DestinationPort(80));
    assert!(matches!(princ(get(0)), I::Authenticated(_)));
    // 1: method dropped, port kept.
    assert_eq!(perm(get(1)), &P::DestinationPort(81));
    // 2: only a path: the operation matches anything (deny all TCP).
    assert_eq!(perm(get(2)), &ANY_P);
    assert_eq!(princ(get(2)), &ANY_I);
    // 3: header condition dropped.
    assert_eq!(perm(get(3)), &P::DestinationPort(82));
    assert_eq!(princ(get(3)), &I::DirectRemoteIp(cidr_range("1.2.3.4", 32)));
    // 4: notHosts dropped.
    assert_eq!(perm(get(4)), &ANY_P);

    // Over HTTP the same rules keep their HTTP conditions.
    let rbacs = http(&[&p]);
    let pol = &rbacs[0].policies["ns[app]-policy[p]-rule[1]"];
    assert_eq!(and_rules(perm(pol)).len(), 2);
}

// ---------------------------------------------------------------------------
// Values validation would reject: fail closed.

#[test]
fn invalid_values_fail_closed() {
    let bad = |key: &str, value: &str| Rule {
        when: vec![Condition {
            key: key.into(),
            values: vec![value.into()],
            not_values: vec![],
        }],
        ..Rule::default()
    };
    let good = Rule {
        from: vec![RuleFrom {
            source: Source {
                ip_blocks: vec!["1.2.3.4".into()],
                ..Source::default()
            },
        }],
        ..Rule::default()
    };
    let rules = vec![
        good,
        bad("destination.port", "http"),
        bad("source.ip", "not-an-ip"),
        bad("destination.ip", "10.0.0.0/33"),
        bad("no.such.key", "x"),
    ];

    // ALLOW: the broken rules grant nothing.
    let allow = policy("app", "a", Some(Action::Allow), rules.clone());
    let rbacs = http(&[&allow]);
    assert_eq!(names(&rbacs[0]), ["ns[app]-policy[a]-rule[0]"]);

    // DENY: the broken rules deny everything.
    let deny = policy("app", "d", Some(Action::Deny), rules);
    let rbacs = http(&[&deny]);
    assert_eq!(rbacs[0].policies.len(), 5);
    for i in 1..5 {
        let pol = &rbacs[0].policies[&format!("ns[app]-policy[d]-rule[{i}]")];
        assert_eq!(perm(pol), &ANY_P);
        assert_eq!(princ(pol), &ANY_I);
    }
}

#[test]
fn patterns() {
    assert_eq!(pattern("*"), Pattern::Any);
    assert_eq!(pattern("**"), Pattern::Any);
    assert_eq!(pattern("a"), Pattern::Exact("a"));
    assert_eq!(pattern("a*"), Pattern::Prefix("a"));
    assert_eq!(pattern("*a"), Pattern::Suffix("a"));
    assert_eq!(pattern("*a*"), Pattern::Contains("a"));
    assert_eq!(pattern("a*b"), Pattern::Exact("a*b"));
}

#[test]
fn or_of_nothing_matches_nothing() {
    let never: Principal = any_of(vec![]);
    assert_eq!(
        never.identifier,
        Some(I::NotId(Box::new(Principal {
            identifier: Some(ANY_I)
        })))
    );
    let always: Permission = all_of(vec![]);
    assert_eq!(always.rule, Some(ANY_P));
}
