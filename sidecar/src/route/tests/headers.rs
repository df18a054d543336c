//! Header mutations: append actions, legacy `append`, levels.

use envoy_types::pb::envoy::config::core::v3::{
    HeaderValue as PbHeaderValue, HeaderValueOption, header_value_option::HeaderAppendAction as A,
};
use envoy_types::pb::envoy::config::route::v3::{WeightedCluster, weighted_cluster::ClusterWeight};
use envoy_types::pb::google::protobuf::{BoolValue, UInt32Value};

use super::*;

fn opt(key: &str, value: &str, action: A) -> HeaderValueOption {
    HeaderValueOption {
        header: Some(PbHeaderValue {
            key: key.into(),
            value: value.into(),
            ..PbHeaderValue::default()
        }),
        append_action: action as i32,
        ..HeaderValueOption::default()
    }
}

/// Route-level request header ops from `add` and `remove`.
fn ops(add: Vec<HeaderValueOption>, remove: &[&str]) -> Result<HeaderOps, String> {
    let r = PbRoute {
        request_headers_to_add: add,
        request_headers_to_remove: remove.iter().map(|s| s.to_string()).collect(),
        ..route("r", prefix("/"), to("c"))
    };
    RouteTable::compile(&config(vec![vhost("vh", &["*"], vec![r])]))
        .map(|t| t.virtual_hosts()[0].routes()[0].request_headers.clone())
        .map_err(|e| e.to_string())
}

fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
    let mut h = HeaderMap::new();
    for (k, v) in pairs {
        h.append(
            HeaderName::from_bytes(k.as_bytes()).unwrap(),
            v.parse().unwrap(),
        );
    }
    h
}

fn values(h: &HeaderMap, name: &str) -> Vec<String> {
    h.get_all(name)
        .iter()
        .map(|v| v.to_str().unwrap().to_string())
        .collect()
}

/// The values of `x` after applying one `x: new` with `action` to a map with `x: existing`.
fn after(action: A, existing: Option<&str>) -> Vec<String> {
    let mut h = headers(&existing.map(|v| vec![("x", v)]).unwrap_or_default());
    ops(vec![opt("x", "new", action)], &[])
        .unwrap()
        .apply(&mut h);
    values(&h, "x")
}

#[test]
fn append_actions_follow_envoy() {
    assert_eq!(after(A::AppendIfExistsOrAdd, Some("old")), ["old", "new"]);
    assert_eq!(after(A::AppendIfExistsOrAdd, None), ["new"]);
    assert_eq!(after(A::AddIfAbsent, Some("old")), ["old"]);
    assert_eq!(after(A::AddIfAbsent, None), ["new"]);
    assert_eq!(after(A::OverwriteIfExistsOrAdd, Some("old")), ["new"]);
    assert_eq!(after(A::OverwriteIfExistsOrAdd, None), ["new"]);
    assert_eq!(after(A::OverwriteIfExists, Some("old")), ["new"]);
    assert_eq!(after(A::OverwriteIfExists, None), Vec::<String>::new());
}

#[test]
#[allow(deprecated)] // The legacy `append` flag.
fn legacy_append_flag() {
    let legacy = |append: bool| HeaderValueOption {
        append: Some(BoolValue { value: append }),
        ..opt("x", "new", A::AppendIfExistsOrAdd)
    };
    let mut h = headers(&[("x", "old")]);
    ops(vec![legacy(true)], &[]).unwrap().apply(&mut h);
    assert_eq!(values(&h, "x"), ["old", "new"]);
    let mut h = headers(&[("x", "old")]);
    ops(vec![legacy(false)], &[]).unwrap().apply(&mut h);
    assert_eq!(values(&h, "x"), ["new"]);
    let both = HeaderValueOption {
        append: Some(BoolValue { value: true }),
        ..opt("x", "v", A::AddIfAbsent)
    };
    let e = ops(vec![both], &[]).unwrap_err();
    assert!(
        e.contains("request_headers_to_add[0]: append and append_action are both set"),
        "{e}"
    );
}

#[test]
fn one_level_removes_then_appends_then_overwrites() {
    let o = ops(
        vec![
            opt("x-set", "s1", A::OverwriteIfExistsOrAdd),
            opt("x-set", "a", A::AppendIfExistsOrAdd),
            opt("x-set", "s2", A::OverwriteIfExistsOrAdd),
            opt("x-removed", "back", A::AppendIfExistsOrAdd),
            opt("x-absent", "1", A::AddIfAbsent),
            opt("x-absent", "2", A::AddIfAbsent),
            opt("x-ow", "later", A::OverwriteIfExists),
        ],
        &["x-removed", "X-Gone"],
    )
    .unwrap();
    let mut h = headers(&[
        ("x-set", "old"),
        ("x-removed", "old"),
        ("x-gone", "old"),
        ("keep", "k"),
    ]);
    o.apply(&mut h);
    // Overwrites wipe every value of their name, appended ones included, then add theirs.
    assert_eq!(values(&h, "x-set"), ["s1", "s2"]);
    assert_eq!(
        values(&h, "x-removed"),
        ["back"],
        "removal comes before adding"
    );
    assert_eq!(values(&h, "x-gone"), Vec::<String>::new());
    assert_eq!(values(&h, "x-absent"), ["1"]);
    assert_eq!(values(&h, "x-ow"), Vec::<String>::new());
    assert_eq!(values(&h, "keep"), ["k"]);
    assert_eq!(o.removes().count(), 2);
    assert_eq!(o.adds().count(), 7);
    assert!(!o.is_empty());
    assert!(ops(vec![], &[]).unwrap().is_empty());
}

#[test]
fn values_empty_values_and_names() {
    let dropped = ops(vec![opt("x", "", A::AppendIfExistsOrAdd)], &[]).unwrap();
    assert!(dropped.is_empty(), "an empty value is dropped");
    let kept = HeaderValueOption {
        keep_empty_value: true,
        ..opt("x", "", A::AppendIfExistsOrAdd)
    };
    let mut h = HeaderMap::new();
    ops(vec![kept], &[]).unwrap().apply(&mut h);
    assert_eq!(values(&h, "x"), [""]);

    let mut h = HeaderMap::new();
    ops(vec![opt("X-Rate", "50%%", A::AppendIfExistsOrAdd)], &[])
        .unwrap()
        .apply(&mut h);
    assert_eq!(
        values(&h, "x-rate"),
        ["50%"],
        "names are lower-cased, %% unescaped"
    );
    let raw = HeaderValueOption {
        header: Some(PbHeaderValue {
            key: "x-raw".into(),
            raw_value: b"r\xff".to_vec(),
            ..PbHeaderValue::default()
        }),
        ..HeaderValueOption::default()
    };
    let mut h = HeaderMap::new();
    ops(vec![raw], &[]).unwrap().apply(&mut h);
    assert_eq!(h["x-raw"].as_bytes(), b"r\xff");

    let e = ops(
        vec![opt(
            "x",
            "%DOWNSTREAM_REMOTE_ADDRESS%",
            A::AppendIfExistsOrAdd,
        )],
        &[],
    )
    .unwrap_err();
    assert!(
        e.contains("request_headers_to_add[0].header.value")
            && e.contains("DOWNSTREAM_REMOTE_ADDRESS"),
        "{e}"
    );
    let e = ops(vec![opt("x", "a\nb", A::AppendIfExistsOrAdd)], &[]).unwrap_err();
    assert!(e.contains("is not a header value"), "{e}");
    for bad in [":path", "host", "Host", "a b"] {
        let e = ops(vec![opt(bad, "v", A::AppendIfExistsOrAdd)], &[]).unwrap_err();
        assert!(
            e.contains("request_headers_to_add[0].header.key"),
            "{bad}: {e}"
        );
        let e = ops(vec![], &[bad]).unwrap_err();
        assert!(e.contains("request_headers_to_remove[0]"), "{bad}: {e}");
    }
}

#[test]
fn levels_apply_route_then_virtual_host_then_configuration() {
    let set = |v: &str| vec![opt("x-level", v, A::OverwriteIfExistsOrAdd)];
    let add = |v: &str| vec![opt("x-all", v, A::AppendIfExistsOrAdd)];
    let r = PbRoute {
        request_headers_to_add: [set("route"), add("route")].concat(),
        response_headers_to_add: set("route"),
        action: Some(Action::Route(PbRouteAction {
            cluster_specifier: Some(ClusterSpecifier::WeightedClusters(WeightedCluster {
                clusters: vec![ClusterWeight {
                    name: "c".into(),
                    weight: Some(UInt32Value { value: 1 }),
                    request_headers_to_add: set("cluster"),
                    response_headers_to_remove: vec!["x-secret".into()],
                    ..ClusterWeight::default()
                }],
                ..WeightedCluster::default()
            })),
            ..PbRouteAction::default()
        })),
        ..route("r", prefix("/"), to("c"))
    };
    let vh = PbVirtualHost {
        request_headers_to_add: [set("vhost"), add("vhost")].concat(),
        ..vhost("vh", &["*"], vec![r])
    };
    let mut rc = config(vec![vh]);
    rc.request_headers_to_add = [set("config"), add("config")].concat();
    rc.response_headers_to_remove = vec!["server".into()];
    let t = RouteTable::compile(&rc).unwrap();
    let route = &t.virtual_hosts()[0].routes()[0];
    let target = forward(route).clusters.pick(0);

    let mut h = HeaderMap::new();
    target.request_headers.apply(&mut h);
    route.request_headers.apply(&mut h);
    assert_eq!(
        values(&h, "x-level"),
        ["config"],
        "the least specific level wins"
    );
    assert_eq!(values(&h, "x-all"), ["route", "vhost", "config"]);

    let mut h = headers(&[("server", "app"), ("x-secret", "s")]);
    target.response_headers.apply(&mut h);
    route.response_headers.apply(&mut h);
    assert_eq!(values(&h, "x-level"), ["route"]);
    assert!(!h.contains_key("server") && !h.contains_key("x-secret"));
}
