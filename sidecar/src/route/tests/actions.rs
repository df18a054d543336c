//! Forward (weighted clusters, rewrites, timeouts), redirects and direct responses.

use envoy_types::pb::envoy::config::core::v3::{DataSource, data_source::Specifier};
use envoy_types::pb::envoy::config::route::v3::{
    DirectResponseAction, RedirectAction, WeightedCluster,
    redirect_action::{PathRewriteSpecifier, RedirectResponseCode, SchemeRewriteSpecifier},
    route_action::{ClusterNotFoundResponseCode, HostRewriteSpecifier},
    weighted_cluster::ClusterWeight,
};
use envoy_types::pb::envoy::r#type::matcher::v3::{RegexMatchAndSubstitute, RegexMatcher};
use envoy_types::pb::google::protobuf::{Duration as PbDuration, UInt32Value};
use http::StatusCode;
use http::request::Parts;

use super::*;

fn weighted(weights: &[(&str, u32)]) -> Action {
    Action::Route(PbRouteAction {
        cluster_specifier: Some(ClusterSpecifier::WeightedClusters(WeightedCluster {
            clusters: weights
                .iter()
                .map(|(name, w)| ClusterWeight {
                    name: name.to_string(),
                    weight: Some(UInt32Value { value: *w }),
                    ..ClusterWeight::default()
                })
                .collect(),
            ..WeightedCluster::default()
        })),
        ..PbRouteAction::default()
    })
}

fn clusters_of(action: Action) -> RouteTable {
    table(vec![route("r", prefix("/"), action)])
}

fn first_forward(t: &RouteTable) -> &Forward {
    forward(&t.virtual_hosts()[0].routes()[0])
}

/// `ceil(i / n × 2⁶⁴)`: evenly spread random values.
fn spread(i: u128, n: u128) -> u64 {
    u64::try_from((i << 64).div_ceil(n)).unwrap_or(u64::MAX)
}

#[test]
fn weighted_pick_is_exactly_proportional() {
    let t = clusters_of(weighted(&[("a", 90), ("b", 10)]));
    let w = &first_forward(&t).clusters;
    assert_eq!(w.weights().collect::<Vec<_>>(), [90, 10]);
    assert_eq!(w.pick(0).name, "a");
    assert_eq!(w.pick(u64::MAX).name, "b");
    let boundary = spread(90, 100);
    assert_eq!(w.pick(boundary - 1).name, "a");
    assert_eq!(w.pick(boundary).name, "b");
    let picks: Vec<&str> = (0..1000)
        .map(|i| w.pick(spread(i, 1000)).name.as_str())
        .collect();
    assert_eq!(picks.iter().filter(|n| **n == "a").count(), 900);
    assert_eq!(picks.iter().filter(|n| **n == "b").count(), 100);

    let t = clusters_of(weighted(&[("a", 1), ("zero", 0), ("b", 2)]));
    let w = &first_forward(&t).clusters;
    let picks: Vec<&str> = (0..300)
        .map(|i| w.pick(spread(i, 300)).name.as_str())
        .collect();
    assert_eq!(
        picks.iter().filter(|n| **n == "zero").count(),
        0,
        "zero weight is never picked"
    );
    assert_eq!(picks.iter().filter(|n| **n == "a").count(), 100);
    assert_eq!(w.targets().len(), 3);
}

#[test]
fn a_single_cluster_is_one_target_of_weight_one() {
    let t = clusters_of(to("only"));
    let w = &first_forward(&t).clusters;
    assert_eq!(w.weights().collect::<Vec<_>>(), [1]);
    for r in [0, 1 << 63, u64::MAX] {
        assert_eq!(w.pick(r).name, "only");
    }
}

#[test]
fn weighted_cluster_errors() {
    let e = error(vec![route(
        "r",
        prefix("/"),
        weighted(&[("a", 0), ("b", 0)]),
    )]);
    assert!(
        e.contains("route.weighted_clusters.clusters: weights sum to 0"),
        "{e}"
    );
    let e = error(vec![route(
        "r",
        prefix("/"),
        weighted(&[("a", 1), ("", 1)]),
    )]);
    assert!(
        e.contains("route.weighted_clusters.clusters[1].name"),
        "{e}"
    );
    let e = error(vec![route("r", prefix("/"), to(""))]);
    assert!(e.contains("route.cluster: must not be empty"), "{e}");
}

#[test]
fn timeouts_default_to_15s_and_zero_means_none() {
    let with_timeout = |t: Option<PbDuration>| {
        Action::Route(PbRouteAction {
            timeout: t,
            ..forward_action("c")
        })
    };
    let t = clusters_of(with_timeout(None));
    assert_eq!(
        first_forward(&t).timeout,
        Some(std::time::Duration::from_secs(15))
    );
    let t = clusters_of(with_timeout(Some(PbDuration::default())));
    assert_eq!(first_forward(&t).timeout, None);
    let t = clusters_of(with_timeout(Some(PbDuration {
        seconds: 2,
        nanos: 500_000_000,
    })));
    assert_eq!(
        first_forward(&t).timeout,
        Some(std::time::Duration::from_millis(2500))
    );
    let e = error(vec![route(
        "r",
        prefix("/"),
        with_timeout(Some(PbDuration {
            seconds: -1,
            nanos: 0,
        })),
    )]);
    assert!(
        e.contains("route.timeout: duration -1s 0ns is negative"),
        "{e}"
    );
    let t = clusters_of(to("c"));
    assert_eq!(
        first_forward(&t).cluster_not_found,
        StatusCode::SERVICE_UNAVAILABLE
    );
    let t = clusters_of(Action::Route(PbRouteAction {
        cluster_not_found_response_code: ClusterNotFoundResponseCode::NotFound as i32,
        ..forward_action("c")
    }));
    assert_eq!(first_forward(&t).cluster_not_found, StatusCode::NOT_FOUND);
}

fn parts(uri: &str, host: Option<&str>) -> Parts {
    let mut b = http::Request::builder().uri(uri);
    if let Some(h) = host {
        b = b.header("host", h);
    }
    b.body(()).unwrap().into_parts().0
}

/// Rewrites `uri` with the only route of `t` (which must match it).
fn rewritten(t: &RouteTable, uri: &str) -> (String, Option<String>) {
    let req = Req::get(uri);
    let route = t.find(&req.info()).expect("route matches");
    let mut p = parts(uri, Some("svc"));
    forward(route).rewrite(route, &mut p).unwrap();
    let original = p
        .headers
        .get(X_ENVOY_ORIGINAL_PATH)
        .map(|v| v.to_str().unwrap().to_string());
    (p.uri.to_string(), original)
}

fn prefix_rewrite(m: RouteMatch, rewrite: &str) -> RouteTable {
    table(vec![route(
        "r",
        m,
        Action::Route(PbRouteAction {
            prefix_rewrite: rewrite.into(),
            ..forward_action("c")
        }),
    )])
}

#[test]
fn prefix_rewrite_replaces_the_matched_prefix() {
    // Envoy's documented trailing-slash behaviour.
    let t = prefix_rewrite(prefix("/prefix/"), "/");
    assert_eq!(rewritten(&t, "/prefix/etc").0, "/etc");
    let t = prefix_rewrite(prefix("/prefix"), "/");
    assert_eq!(rewritten(&t, "/prefix/etc").0, "//etc");
    assert_eq!(rewritten(&t, "/prefix").0, "/");

    let t = prefix_rewrite(prefix("/api/v1"), "/");
    assert_eq!(
        rewritten(&t, "/api/v1/users?x=1"),
        (
            "//users?x=1".to_string(),
            Some("/api/v1/users?x=1".to_string())
        )
    );
    assert_eq!(rewritten(&t, "/api/v1?x=1").0, "/?x=1");
    let t = prefix_rewrite(prefix("/api/v1/"), "/v2/");
    assert_eq!(rewritten(&t, "/api/v1/users").0, "/v2/users");

    let ci = RouteMatch {
        case_sensitive: Some(envoy_types::pb::google::protobuf::BoolValue { value: false }),
        ..prefix("/API")
    };
    assert_eq!(rewritten(&prefix_rewrite(ci, "/v2"), "/api/x").0, "/v2/x");
    let exact = path_match(PathSpecifier::Path("/old".into()));
    assert_eq!(
        rewritten(&prefix_rewrite(exact, "/new"), "/old?q=1").0,
        "/new?q=1"
    );
    let sep = path_match(PathSpecifier::PathSeparatedPrefix("/svc".into()));
    assert_eq!(rewritten(&prefix_rewrite(sep, "/"), "/svc/a").0, "//a");
    let re = path_match(PathSpecifier::SafeRegex(RegexMatcher {
        regex: "/items/[0-9]+".into(),
        ..RegexMatcher::default()
    }));
    assert_eq!(
        rewritten(&prefix_rewrite(re, "/item"), "/items/7?x").0,
        "/item?x",
        "a regex match is the whole path"
    );

    let t = table(vec![route("r", prefix("/"), to("c"))]);
    assert_eq!(rewritten(&t, "/a?b").0, "/a?b");
    assert_eq!(
        rewritten(&t, "/a?b").1,
        None,
        "no rewrite, no original path"
    );
    let e = error(vec![route(
        "r",
        prefix("/"),
        Action::Route(PbRouteAction {
            prefix_rewrite: "v2".into(),
            ..forward_action("c")
        }),
    )]);
    assert!(e.contains("route.prefix_rewrite"), "{e}");
}

fn regex_sub(pattern: &str, substitution: &str) -> RegexMatchAndSubstitute {
    RegexMatchAndSubstitute {
        pattern: Some(RegexMatcher {
            regex: pattern.into(),
            ..RegexMatcher::default()
        }),
        substitution: substitution.into(),
    }
}

fn regex_rewrite(pattern: &str, substitution: &str) -> Action {
    Action::Route(PbRouteAction {
        regex_rewrite: Some(regex_sub(pattern, substitution)),
        ..forward_action("c")
    })
}

#[test]
fn regex_rewrite_replaces_every_match_and_keeps_the_query() {
    // Envoy's documented examples (RE2 `\N` groups).
    let t = clusters_of(regex_rewrite(r"^/service/([^/]+)(/.*)$", r"\2/instance/\1"));
    assert_eq!(
        rewritten(&t, "/service/foo/v1/api?x=1").0,
        "/v1/api/instance/foo?x=1"
    );
    let t = clusters_of(regex_rewrite("one", "two"));
    assert_eq!(
        rewritten(&t, "/xxx/one/yyy/one/zzz").0,
        "/xxx/two/yyy/two/zzz"
    );
    let t = clusters_of(regex_rewrite(r"^(.*?)one(.*)$", r"\1two\2"));
    assert_eq!(
        rewritten(&t, "/xxx/one/yyy/one/zzz").0,
        "/xxx/two/yyy/one/zzz"
    );
    let t = clusters_of(regex_rewrite("(?i)/xxx/", "/yyy/"));
    assert_eq!(rewritten(&t, "/aaa/XxX/bbb").0, "/aaa/yyy/bbb");
    let t = clusters_of(regex_rewrite("/a", "/$1"));
    assert_eq!(
        rewritten(&t, "/a").0,
        "/$1",
        "'$' is literal in RE2 substitutions"
    );

    for (pattern, sub, field) in [
        ("/(a)", r"\2", "substitution"),
        ("/a", r"\x", "substitution"),
        ("(", "/", "pattern"),
    ] {
        let e = error(vec![route("r", prefix("/"), regex_rewrite(pattern, sub))]);
        assert!(e.contains(&format!("route.regex_rewrite.{field}")), "{e}");
    }
    let both = Action::Route(PbRouteAction {
        prefix_rewrite: "/x".into(),
        regex_rewrite: Some(regex_sub("a", "b")),
        ..forward_action("c")
    });
    let e = error(vec![route("r", prefix("/"), both)]);
    assert!(
        e.contains("prefix_rewrite and regex_rewrite are both set"),
        "{e}"
    );
}

#[test]
fn host_rewrite_sets_the_authority() {
    let t = clusters_of(Action::Route(PbRouteAction {
        host_rewrite_specifier: Some(HostRewriteSpecifier::HostRewriteLiteral(
            "new.host:81".into(),
        )),
        append_x_forwarded_host: true,
        ..forward_action("c")
    }));
    let r0 = &t.virtual_hosts()[0].routes()[0];
    let mut p = parts("/x", Some("svc"));
    forward(r0).rewrite(r0, &mut p).unwrap();
    assert_eq!(p.headers["host"], "new.host:81");
    assert_eq!(p.headers["x-forwarded-host"], "svc");
    let mut p = parts("/x", Some("svc"));
    p.headers
        .insert("x-forwarded-host", HeaderValue::from_static("edge"));
    forward(r0).rewrite(r0, &mut p).unwrap();
    assert_eq!(p.headers["x-forwarded-host"], "edge,svc");
    let mut p = parts("http://svc:80/x", None);
    forward(r0).rewrite(r0, &mut p).unwrap();
    assert_eq!(p.uri.to_string(), "http://new.host:81/x");
    assert!(
        !p.headers.contains_key("host"),
        "HTTP/2 style: the URI carries the authority"
    );
    assert_eq!(p.headers["x-forwarded-host"], "svc:80");

    let bad = Action::Route(PbRouteAction {
        host_rewrite_specifier: Some(HostRewriteSpecifier::HostRewriteLiteral("a b".into())),
        ..forward_action("c")
    });
    let e = error(vec![route("r", prefix("/"), bad)]);
    assert!(e.contains("route.host_rewrite_literal"), "{e}");
}

fn redirect(r: RedirectAction) -> RouteTable {
    redirect_at(prefix("/"), r)
}

fn redirect_at(m: RouteMatch, r: RedirectAction) -> RouteTable {
    table(vec![route("r", m, Action::Redirect(r))])
}

fn location(t: &RouteTable, authority: &str, pq: &str, scheme: &str) -> (StatusCode, String) {
    let req = Req::new(authority, pq);
    let route = t.find(&req.info()).expect("route matches");
    match &route.action {
        RouteAction::Redirect(r) => r.response_location(&req.info(), scheme),
        other => panic!("not a redirect: {other:?}"),
    }
}

fn path_redirect(p: &str, strip_query: bool) -> RedirectAction {
    RedirectAction {
        path_rewrite_specifier: Some(PathRewriteSpecifier::PathRedirect(p.into())),
        strip_query,
        ..RedirectAction::default()
    }
}

#[test]
fn redirect_paths_and_queries_follow_envoy() {
    // Envoy's documented examples.
    let t = redirect(path_redirect("/new-path-1", false));
    assert_eq!(
        location(&t, "svc", "/old-path-1?bar=1", "http"),
        (
            StatusCode::MOVED_PERMANENTLY,
            "http://svc/new-path-1?bar=1".to_string()
        )
    );
    let t = redirect(path_redirect("/new-path-2", true));
    assert_eq!(
        location(&t, "svc", "/old-path-2?bar=1", "http").1,
        "http://svc/new-path-2"
    );
    let t = redirect(path_redirect("/new-path-3?foo=1", true));
    assert_eq!(
        location(&t, "svc", "/old-path-3?bar=1", "http").1,
        "http://svc/new-path-3?foo=1"
    );

    let t = redirect(RedirectAction::default());
    assert_eq!(
        location(&t, "svc:8080", "/a?b", "http").1,
        "http://svc:8080/a?b"
    );
    let t = redirect(RedirectAction {
        strip_query: true,
        ..RedirectAction::default()
    });
    assert_eq!(location(&t, "svc", "/a?b", "http").1, "http://svc/a");

    let t = redirect_at(
        prefix("/old/"),
        RedirectAction {
            path_rewrite_specifier: Some(PathRewriteSpecifier::PrefixRewrite("/new/".into())),
            ..RedirectAction::default()
        },
    );
    assert_eq!(
        location(&t, "svc", "/old/a?q=1", "http").1,
        "http://svc/new/a?q=1"
    );
    let t = redirect(RedirectAction {
        path_rewrite_specifier: Some(PathRewriteSpecifier::RegexRewrite(regex_sub("o+", "0"))),
        strip_query: true,
        ..RedirectAction::default()
    });
    assert_eq!(
        location(&t, "svc", "/foo/boo?x", "http").1,
        "http://svc/f0/b0"
    );
}

#[test]
fn redirect_hosts_ports_schemes_and_codes() {
    let t = redirect(RedirectAction {
        host_redirect: "new.example.com".into(),
        ..RedirectAction::default()
    });
    assert_eq!(
        location(&t, "svc:8080", "/p", "http").1,
        "http://new.example.com/p"
    );
    let t = redirect(RedirectAction {
        port_redirect: 8443,
        ..RedirectAction::default()
    });
    assert_eq!(
        location(&t, "svc:8080", "/p", "http").1,
        "http://svc:8443/p"
    );
    assert_eq!(
        location(&t, "[::1]:8080", "/p", "http").1,
        "http://[::1]:8443/p"
    );
    let t = redirect(RedirectAction {
        host_redirect: "h".into(),
        port_redirect: 81,
        ..RedirectAction::default()
    });
    assert_eq!(location(&t, "svc", "/p", "http").1, "http://h:81/p");

    let https = redirect(RedirectAction {
        scheme_rewrite_specifier: Some(SchemeRewriteSpecifier::HttpsRedirect(true)),
        ..RedirectAction::default()
    });
    assert_eq!(
        location(&https, "svc:80", "/p", "http").1,
        "https://svc/p",
        "default port dropped"
    );
    assert_eq!(
        location(&https, "svc:8080", "/p", "http").1,
        "https://svc:8080/p"
    );
    assert_eq!(
        location(&https, "svc:443", "/p", "https").1,
        "https://svc:443/p",
        "same scheme keeps the port"
    );
    let http = redirect(RedirectAction {
        scheme_rewrite_specifier: Some(SchemeRewriteSpecifier::SchemeRedirect("HTTP".into())),
        ..RedirectAction::default()
    });
    assert_eq!(location(&http, "svc:443", "/p", "https").1, "http://svc/p");
    assert_eq!(location(&http, "svc:80", "/p", "http").1, "http://svc:80/p");

    for (code, status) in [
        (RedirectResponseCode::MovedPermanently, 301),
        (RedirectResponseCode::Found, 302),
        (RedirectResponseCode::SeeOther, 303),
        (RedirectResponseCode::TemporaryRedirect, 307),
        (RedirectResponseCode::PermanentRedirect, 308),
    ] {
        let t = redirect(RedirectAction {
            response_code: code as i32,
            ..RedirectAction::default()
        });
        assert_eq!(location(&t, "svc", "/", "http").0.as_u16(), status);
        let RouteAction::Redirect(r) = &t.virtual_hosts()[0].routes()[0].action else {
            panic!("not a redirect");
        };
        assert_eq!(r.status().as_u16(), status);
    }
    let e = error(vec![route(
        "r",
        prefix("/"),
        Action::Redirect(RedirectAction {
            response_code: 9,
            ..RedirectAction::default()
        }),
    )]);
    assert!(
        e.contains("redirect.response_code: unknown response code 9"),
        "{e}"
    );
    let e = error(vec![route(
        "r",
        prefix("/"),
        Action::Redirect(RedirectAction {
            port_redirect: 70000,
            ..RedirectAction::default()
        }),
    )]);
    assert!(e.contains("redirect.port_redirect"), "{e}");
}

fn direct(status: u32, body: Option<Specifier>) -> Action {
    Action::DirectResponse(DirectResponseAction {
        status,
        body: body.map(|s| DataSource {
            specifier: Some(s),
            ..DataSource::default()
        }),
        ..DirectResponseAction::default()
    })
}

#[test]
fn direct_responses() {
    let t = table(vec![
        route(
            "gone",
            prefix("/gone"),
            direct(410, Some(Specifier::InlineString("gone\n".into()))),
        ),
        route(
            "bytes",
            prefix("/bytes"),
            direct(200, Some(Specifier::InlineBytes(vec![0, 1]))),
        ),
        route("empty", prefix("/"), direct(404, None)),
    ]);
    let action = |p: &str| {
        let req = Req::get(p);
        match &t.find(&req.info()).unwrap().action {
            RouteAction::Direct { status, body } => (status.as_u16(), body.clone()),
            other => panic!("not direct: {other:?}"),
        }
    };
    assert_eq!(
        action("/gone"),
        (410, Some(bytes::Bytes::from_static(b"gone\n")))
    );
    assert_eq!(
        action("/bytes"),
        (200, Some(bytes::Bytes::from_static(&[0, 1])))
    );
    assert_eq!(action("/x"), (404, None));

    let e = error(vec![route("r", prefix("/"), direct(600, None))]);
    assert!(
        e.contains("direct_response.status: 600 is not in [200, 600)"),
        "{e}"
    );
    let big = || direct(200, Some(Specifier::InlineString("x".repeat(5000))));
    let e = error(vec![route("r", prefix("/"), big())]);
    assert!(
        e.contains("direct_response.body: 5000 bytes is over"),
        "{e}"
    );
    let mut rc = config(vec![vhost(
        "vh",
        &["*"],
        vec![route("r", prefix("/"), big())],
    )]);
    rc.max_direct_response_body_size_bytes = Some(UInt32Value { value: 8192 });
    assert!(RouteTable::compile(&rc).is_ok());
    let e = error(vec![route(
        "r",
        prefix("/"),
        direct(200, Some(Specifier::Filename("/etc/x".into()))),
    )]);
    assert!(
        e.contains("direct_response.body.filename") && e.contains("not supported"),
        "{e}"
    );
}
