//! Compile errors name the configuration, virtual host, route and field;
//! fields the sidecar does not implement are refused, never ignored.

use envoy_types::pb::envoy::config::core::v3::RuntimeFractionalPercent;
use envoy_types::pb::envoy::config::route::v3::{
    CorsPolicy, HeaderMatcher, HedgePolicy, Vhds, header_matcher::HeaderMatchSpecifier,
    route_action::UpgradeConfig,
};
use envoy_types::pb::envoy::r#type::matcher::v3::{
    RegexMatcher, StringMatcher, string_matcher::MatchPattern,
};
use envoy_types::pb::google::protobuf::Duration as PbDuration;

use super::*;

fn bad_regex_route() -> PbRoute {
    let matcher = StringMatcher {
        match_pattern: Some(MatchPattern::SafeRegex(RegexMatcher {
            regex: "a)|(b".into(),
            ..RegexMatcher::default()
        })),
        ignore_case: false,
    };
    route(
        "bad-route",
        RouteMatch {
            headers: vec![HeaderMatcher {
                name: "x".into(),
                header_match_specifier: Some(HeaderMatchSpecifier::StringMatch(matcher)),
                ..HeaderMatcher::default()
            }],
            ..prefix("/")
        },
        to("c"),
    )
}

#[test]
fn errors_name_configuration_virtual_host_route_and_field() {
    let rc = RouteConfiguration {
        name: "9080".into(),
        virtual_hosts: vec![
            vhost("ok", &["ok"], vec![route("r", prefix("/"), to("c"))]),
            vhost(
                "reviews:9080",
                &["reviews"],
                vec![route("fine", prefix("/a"), to("c")), bad_regex_route()],
            ),
        ],
        ..RouteConfiguration::default()
    };
    let e = RouteTable::compile(&rc).unwrap_err();
    assert!(matches!(e, RouteError::Regex { .. }));
    let e = e.to_string();
    let at = r#"route configuration "9080", virtual host "reviews:9080" (virtual_hosts[1]), route "bad-route" (routes[1]): match.headers[0].string_match.safe_regex: invalid regex "a)|(b""#;
    assert!(e.starts_with(at), "{e}");

    // Unnamed routes and virtual hosts are named by index.
    let rc = config(vec![vhost(
        "",
        &["*"],
        vec![
            PbRoute {
                name: String::new(),
                ..route("", prefix("/"), to("c"))
            },
            PbRoute {
                action: None,
                ..route("", prefix("/"), to("c"))
            },
        ],
    )]);
    let e = RouteTable::compile(&rc).unwrap_err().to_string();
    assert_eq!(
        e,
        r#"route configuration "80", virtual host virtual_hosts[0], route routes[1]: route has no action (unset, or unknown to this build)"#
    );
    let e = error(vec![PbRoute {
        r#match: None,
        ..route("m", prefix("/"), to("c"))
    }]);
    assert!(
        e.ends_with(r#"route "m" (routes[0]): match: missing"#),
        "{e}"
    );
}

#[test]
#[allow(deprecated)] // `cors` is deprecated but must still be refused.
fn unimplemented_fields_are_refused_by_name() {
    let action = |ra: PbRouteAction| vec![route("r", prefix("/"), Action::Route(ra))];
    let cases: Vec<(Vec<PbRoute>, &str)> = vec![
        (
            action(PbRouteAction {
                upgrade_configs: vec![UpgradeConfig {
                    upgrade_type: "websocket".into(),
                    ..UpgradeConfig::default()
                }],
                ..forward_action("c")
            }),
            "route.upgrade_configs",
        ),
        (
            action(PbRouteAction {
                idle_timeout: Some(PbDuration::default()),
                ..forward_action("c")
            }),
            "route.idle_timeout",
        ),
        (
            action(PbRouteAction {
                hedge_policy: Some(HedgePolicy::default()),
                ..forward_action("c")
            }),
            "route.hedge_policy",
        ),
        (
            action(PbRouteAction {
                cluster_specifier: Some(ClusterSpecifier::ClusterHeader("x-cluster".into())),
                ..PbRouteAction::default()
            }),
            "route.cluster_header",
        ),
        (
            action(PbRouteAction {
                path_rewrite: "/x".into(),
                ..forward_action("c")
            }),
            "route.path_rewrite",
        ),
        (
            vec![route(
                "r",
                RouteMatch {
                    runtime_fraction: Some(RuntimeFractionalPercent::default()),
                    ..prefix("/")
                },
                to("c"),
            )],
            "match.runtime_fraction",
        ),
        (
            vec![route(
                "r",
                path_match(PathSpecifier::ConnectMatcher(Default::default())),
                to("c"),
            )],
            "match.connect_matcher",
        ),
        (
            vec![PbRoute {
                request_body_buffer_limit: Some(Default::default()),
                ..route("r", prefix("/"), to("c"))
            }],
            "request_body_buffer_limit",
        ),
    ];
    for (routes, field) in cases {
        let e = error(routes);
        assert!(
            e.contains(&format!(r#"route "r" (routes[0]): {field}"#))
                && e.contains("not supported"),
            "{field}: {e}"
        );
    }

    let vh_cases: Vec<(PbVirtualHost, &str)> = vec![
        (
            PbVirtualHost {
                cors: Some(CorsPolicy::default()),
                ..vhost("v", &["*"], vec![])
            },
            "cors",
        ),
        (
            PbVirtualHost {
                require_tls: 2,
                ..vhost("v", &["*"], vec![])
            },
            "require_tls",
        ),
        (
            PbVirtualHost {
                include_request_attempt_count: true,
                ..vhost("v", &["*"], vec![])
            },
            "include_request_attempt_count",
        ),
    ];
    for (vh, field) in vh_cases {
        let e = RouteTable::compile(&config(vec![vh]))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains(&format!(r#"virtual host "v" (virtual_hosts[0]): {field}"#)),
            "{e}"
        );
    }

    let mut rc = config(vec![]);
    rc.vhds = Some(Vhds::default());
    let e = RouteTable::compile(&rc).unwrap_err().to_string();
    assert_eq!(
        e,
        r#"route configuration "80": vhds: vhds (set) is not supported by the Isthmus sidecar"#
    );
    let mut rc = config(vec![]);
    rc.internal_only_headers = vec!["x-internal".into()];
    assert!(RouteTable::compile(&rc).is_err());
    let mut rc = config(vec![]);
    rc.most_specific_header_mutations_wins = true;
    assert!(RouteTable::compile(&rc).is_err());
}

#[test]
fn skipped_fields_do_not_change_routing() {
    use envoy_types::pb::envoy::config::core::v3::Metadata;
    use envoy_types::pb::envoy::config::route::v3::{Decorator, VirtualCluster};
    use envoy_types::pb::google::protobuf::BoolValue;
    let r = PbRoute {
        metadata: Some(Metadata::default()),
        decorator: Some(Decorator::default()),
        stat_prefix: "stats".into(),
        ..route("r", prefix("/"), to("c"))
    };
    let vh = PbVirtualHost {
        virtual_clusters: vec![VirtualCluster::default()],
        ..vhost("vh", &["*"], vec![r])
    };
    let mut rc = config(vec![vh]);
    rc.validate_clusters = Some(BoolValue { value: true });
    let t = RouteTable::compile(&rc).unwrap();
    assert_eq!(found(&t, &Req::get("/x")), Some("r"));
}
