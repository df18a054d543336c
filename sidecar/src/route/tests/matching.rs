//! Path, header, query parameter and gRPC matchers; route order.

use envoy_types::pb::envoy::config::route::v3::{
    HeaderMatcher, QueryParameterMatcher, header_matcher::HeaderMatchSpecifier as H,
    query_parameter_matcher::QueryParameterMatchSpecifier as Q, route_match::GrpcRouteMatchOptions,
};
use envoy_types::pb::envoy::r#type::matcher::v3::{
    RegexMatcher, StringMatcher, string_matcher::MatchPattern as M,
};
use envoy_types::pb::envoy::r#type::v3::Int64Range;
use envoy_types::pb::google::protobuf::BoolValue;

use super::*;

fn regex(r: &str) -> RegexMatcher {
    RegexMatcher {
        regex: r.into(),
        ..RegexMatcher::default()
    }
}

fn sm(pattern: M, ignore_case: bool) -> StringMatcher {
    StringMatcher {
        match_pattern: Some(pattern),
        ignore_case,
    }
}

fn header(name: &str, spec: H) -> HeaderMatcher {
    HeaderMatcher {
        name: name.into(),
        header_match_specifier: Some(spec),
        ..HeaderMatcher::default()
    }
}

/// Whether a single route matching `m` takes `req`.
fn takes(m: &RouteMatch, req: &Req) -> bool {
    found(&table(vec![route("r", m.clone(), to("c"))]), req).is_some()
}

fn with_headers(headers: Vec<HeaderMatcher>) -> RouteMatch {
    RouteMatch {
        headers,
        ..prefix("/")
    }
}

#[test]
fn prefix_is_case_sensitive_unless_configured_and_ignores_the_query() {
    let m = prefix("/api");
    for p in ["/api", "/apix", "/api/v1?x=1", "/api#frag"] {
        assert!(takes(&m, &Req::get(p)), "{p}");
    }
    for p in ["/ap", "/API", "/?/api", "/x/api"] {
        assert!(!takes(&m, &Req::get(p)), "{p}");
    }
    let insensitive = RouteMatch {
        case_sensitive: Some(BoolValue { value: false }),
        ..prefix("/api")
    };
    assert!(takes(&insensitive, &Req::get("/API/x")));
    assert!(takes(&insensitive, &Req::get("/aPi")));
}

#[test]
fn exact_path_regex_and_separated_prefix() {
    let exact = path_match(PathSpecifier::Path("/exact".into()));
    assert!(takes(&exact, &Req::get("/exact")));
    assert!(
        takes(&exact, &Req::get("/exact?q=1")),
        "query is not part of the path"
    );
    assert!(!takes(&exact, &Req::get("/exact/")));
    assert!(!takes(&exact, &Req::get("/EXACT")));
    let exact_ci = RouteMatch {
        case_sensitive: Some(BoolValue { value: false }),
        ..exact.clone()
    };
    assert!(takes(&exact_ci, &Req::get("/EXACT")));

    let re = path_match(PathSpecifier::SafeRegex(regex("/items/[0-9]+")));
    assert!(takes(&re, &Req::get("/items/12")));
    assert!(
        takes(&re, &Req::get("/items/12?x=/a")),
        "matched without the query"
    );
    assert!(
        !takes(&re, &Req::get("/items/12/x")),
        "regexes match the whole path"
    );
    assert!(!takes(&re, &Req::get("/v1/items/12")));
    let re_ci = RouteMatch {
        case_sensitive: Some(BoolValue { value: false }),
        ..path_match(PathSpecifier::SafeRegex(regex("/items")))
    };
    assert!(
        !takes(&re_ci, &Req::get("/ITEMS")),
        "case_sensitive does not apply to regexes"
    );

    let sep = path_match(PathSpecifier::PathSeparatedPrefix("/sep".into()));
    for p in ["/sep", "/sep/", "/sep/x", "/sep?x=1"] {
        assert!(takes(&sep, &Req::get(p)), "{p}");
    }
    for p in ["/sepx", "/se", "/SEP"] {
        assert!(!takes(&sep, &Req::get(p)), "{p}");
    }
    for bad in ["/sep/", "sep", "/a?b"] {
        let e = error(vec![route(
            "r",
            path_match(PathSpecifier::PathSeparatedPrefix(bad.into())),
            to("c"),
        )]);
        assert!(e.contains("match.path_separated_prefix"), "{e}");
    }
}

#[test]
fn string_matchers_on_headers() {
    let cases: Vec<(StringMatcher, &str, bool)> = vec![
        (sm(M::Exact("Jason".into()), false), "Jason", true),
        (sm(M::Exact("Jason".into()), false), "jason", false),
        (sm(M::Exact("Jason".into()), true), "jASON", true),
        (sm(M::Prefix("ab".into()), false), "abc", true),
        (sm(M::Prefix("AB".into()), true), "abc", true),
        (sm(M::Prefix("ab".into()), false), "xab", false),
        (sm(M::Suffix("yz".into()), false), "xyz", true),
        (sm(M::Suffix("YZ".into()), true), "xyz", true),
        (sm(M::Suffix("yz".into()), false), "yzx", false),
        (sm(M::Contains("mid".into()), false), "a-mid-b", true),
        (sm(M::Contains("MID".into()), true), "a-mid-b", true),
        (sm(M::Contains("mid".into()), false), "a-mi-d", false),
        (sm(M::SafeRegex(regex("v[0-9]")), false), "v1", true),
        (sm(M::SafeRegex(regex("v[0-9]")), false), "v12", false),
        (sm(M::SafeRegex(regex("v[0-9]")), true), "V1", false),
    ];
    for (matcher, value, expected) in cases {
        let m = with_headers(vec![header("x-user", H::StringMatch(matcher.clone()))]);
        assert_eq!(
            takes(&m, &Req::get("/").header("x-user", value)),
            expected,
            "{matcher:?} on {value:?}"
        );
    }
}

#[test]
#[allow(deprecated)]
fn legacy_header_specifiers_range_and_presence() {
    let cases: Vec<(H, Option<&str>, bool)> = vec![
        (H::ExactMatch("a".into()), Some("a"), true),
        (H::ExactMatch("a".into()), Some("A"), false),
        (H::PrefixMatch("ab".into()), Some("abc"), true),
        (H::SuffixMatch("bc".into()), Some("abc"), true),
        (H::ContainsMatch("b".into()), Some("abc"), true),
        (H::SafeRegexMatch(regex("a.c")), Some("abc"), true),
        (H::SafeRegexMatch(regex("a.c")), Some("abcd"), false),
        (
            H::RangeMatch(Int64Range { start: -10, end: 0 }),
            Some("-1"),
            true,
        ),
        (
            H::RangeMatch(Int64Range { start: -10, end: 0 }),
            Some("0"),
            false,
        ),
        (
            H::RangeMatch(Int64Range { start: -10, end: 0 }),
            Some("x"),
            false,
        ),
        (H::PresentMatch(true), Some(""), true),
        (H::PresentMatch(true), None, false),
        (H::PresentMatch(false), None, true),
        (H::PresentMatch(false), Some("a"), false),
        (H::ExactMatch("".into()), Some(""), true),
        (H::ExactMatch("".into()), None, false),
    ];
    for (spec, value, expected) in cases {
        let m = with_headers(vec![header("x-h", spec.clone())]);
        let mut req = Req::get("/");
        if let Some(v) = value {
            req = req.header("x-h", v);
        }
        assert_eq!(takes(&m, &req), expected, "{spec:?} on {value:?}");
    }
    let no_specifier = with_headers(vec![HeaderMatcher {
        name: "x-h".into(),
        ..HeaderMatcher::default()
    }]);
    assert!(
        takes(&no_specifier, &Req::get("/").header("x-h", "v")),
        "presence"
    );
    assert!(!takes(&no_specifier, &Req::get("/")));
    let empty_range = with_headers(vec![header(
        "x",
        H::RangeMatch(Int64Range { start: 1, end: 1 }),
    )]);
    let e = error(vec![route("r", empty_range, to("c"))]);
    assert!(e.contains("match.headers[0].range_match"), "{e}");
}

#[test]
fn invert_and_missing_headers_follow_envoy() {
    let exact = |invert: bool, missing_as_empty: bool| {
        with_headers(vec![HeaderMatcher {
            invert_match: invert,
            treat_missing_header_as_empty: missing_as_empty,
            ..header("x-h", H::StringMatch(sm(M::Exact("a".into()), false)))
        }])
    };
    let present = Req::get("/").header("x-h", "a");
    let other = Req::get("/").header("x-h", "b");
    let missing = Req::get("/");
    assert!(!takes(&exact(true, false), &present));
    assert!(takes(&exact(true, false), &other));
    assert!(
        !takes(&exact(true, false), &missing),
        "a missing header never matches"
    );
    assert!(
        takes(&exact(true, true), &missing),
        "empty does not equal 'a', inverted"
    );
    assert!(!takes(&exact(false, true), &missing));
    let empty_regex = with_headers(vec![HeaderMatcher {
        treat_missing_header_as_empty: true,
        ..header("x-h", H::StringMatch(sm(M::SafeRegex(regex("^$")), false)))
    }]);
    assert!(takes(&empty_regex, &missing));
    let present_inverted = with_headers(vec![HeaderMatcher {
        invert_match: true,
        ..header("x-h", H::PresentMatch(true))
    }]);
    assert!(takes(&present_inverted, &missing));
    assert!(!takes(&present_inverted, &present));
}

#[test]
fn several_header_values_are_joined_with_commas() {
    let m = with_headers(vec![header(
        "x-h",
        H::StringMatch(sm(M::Exact("a,b".into()), false)),
    )]);
    assert!(takes(
        &m,
        &Req::get("/").header("x-h", "a").header("x-h", "b")
    ));
    assert!(!takes(&m, &Req::get("/").header("x-h", "a")));
}

#[test]
fn pseudo_headers_read_the_request_line() {
    let exact = |s: &str| H::StringMatch(sm(M::Exact(s.into()), false));
    let method = with_headers(vec![header(":method", exact("POST"))]);
    assert!(takes(&method, &Req::get("/").method(Method::POST)));
    assert!(!takes(&method, &Req::get("/")));
    let authority = with_headers(vec![header(":authority", exact("svc:8080"))]);
    assert!(takes(&authority, &Req::new("svc:8080", "/")));
    assert!(!takes(&authority, &Req::new("svc", "/")));
    let host = with_headers(vec![header("Host", exact("svc"))]);
    assert!(takes(&host, &Req::new("svc", "/")), "host is :authority");
    let path = with_headers(vec![header(":path", exact("/a?b=1"))]);
    assert!(
        takes(&path, &Req::get("/a?b=1")),
        ":path includes the query"
    );
    let scheme = with_headers(vec![header(":scheme", exact("https"))]);
    let t = table(vec![route("r", scheme, to("c"))]);
    let req = Req::get("/");
    assert!(t.find(&req.info()).is_none(), "find() means plaintext http");
    assert!(t.find_with_scheme(&req.info(), "https").is_some());
    let e = error(vec![route(
        "r",
        with_headers(vec![header(":protocol", exact("x"))]),
        to("c"),
    )]);
    assert!(
        e.contains("match.headers[0].name") && e.contains(":protocol"),
        "{e}"
    );
}

#[test]
fn query_parameters_first_value_undecoded() {
    let q = |name: &str, spec: Option<Q>| RouteMatch {
        query_parameters: vec![QueryParameterMatcher {
            name: name.into(),
            query_parameter_match_specifier: spec,
        }],
        ..prefix("/")
    };
    let exact = |v: &str| Some(Q::StringMatch(sm(M::Exact(v.into()), false)));
    assert!(takes(&q("debug", exact("1")), &Req::get("/x?a=2&debug=1")));
    assert!(
        !takes(&q("debug", exact("1")), &Req::get("/x?debug=2&debug=1")),
        "first value"
    );
    assert!(!takes(&q("debug", exact("1")), &Req::get("/x")));
    assert!(!takes(&q("debug", exact("1")), &Req::get("/x#debug=1")));
    assert!(
        takes(&q("debug", exact("")), &Req::get("/x?debug")),
        "no '=' is an empty value"
    );
    assert!(
        takes(&q("n", exact("a%20b")), &Req::get("/x?n=a%20b")),
        "not decoded"
    );
    assert!(takes(
        &q("debug", Some(Q::PresentMatch(true))),
        &Req::get("/?debug=0")
    ));
    assert!(!takes(
        &q("debug", Some(Q::PresentMatch(true))),
        &Req::get("/?debugx=0")
    ));
    let prefix_ci = Some(Q::StringMatch(sm(M::Prefix("AB".into()), true)));
    assert!(takes(&q("v", prefix_ci), &Req::get("/?v=abc")));
}

#[test]
fn grpc_option_requires_a_grpc_content_type() {
    let m = RouteMatch {
        grpc: Some(GrpcRouteMatchOptions {}),
        ..prefix("/")
    };
    for ct in [
        "application/grpc",
        "application/grpc+proto",
        "application/grpc;x=1",
    ] {
        assert!(takes(&m, &Req::get("/").header("content-type", ct)), "{ct}");
    }
    assert!(!takes(
        &m,
        &Req::get("/").header("content-type", "application/json")
    ));
    assert!(!takes(&m, &Req::get("/")));
}

#[test]
fn first_matching_route_wins() {
    let t = table(vec![
        route(
            "exact",
            path_match(PathSpecifier::Path("/a".into())),
            to("c1"),
        ),
        route(
            "jason",
            with_headers(vec![header("end-user", H::PresentMatch(true))]),
            to("c2"),
        ),
        route("a", prefix("/a"), to("c3")),
        route("all", prefix("/"), to("c4")),
    ]);
    assert_eq!(
        found(&t, &Req::get("/a").header("end-user", "x")),
        Some("exact")
    );
    assert_eq!(
        found(&t, &Req::get("/ab").header("end-user", "x")),
        Some("jason")
    );
    assert_eq!(found(&t, &Req::get("/ab")), Some("a"));
    assert_eq!(found(&t, &Req::get("/b")), Some("all"));
    let none = table(vec![route("a", prefix("/a"), to("c"))]);
    assert_eq!(found(&none, &Req::get("/b")), None);
}
