//! Retries, fault injection, mirroring, hash policies.

use std::hash::Hasher;
use std::net::IpAddr;
use std::time::Duration;

use envoy_types::pb::envoy::config::core::v3::RuntimeFractionalPercent;
use envoy_types::pb::envoy::config::core::v3::TypedExtensionConfig;
use envoy_types::pb::envoy::config::route::v3::{
    FilterConfig, RetryPolicy as PbRetryPolicy,
    retry_policy::{RetryBackOff, RetryHostPredicate, retry_host_predicate},
    route_action::{HashPolicy as PbHashPolicy, RequestMirrorPolicy, hash_policy},
};
use envoy_types::pb::envoy::extensions::filters::common::fault::v3::{
    FaultDelay, fault_delay::FaultDelaySecifier,
};
use envoy_types::pb::envoy::extensions::filters::http::fault::v3::{
    FaultAbort as PbFaultAbort, HttpFault, fault_abort::ErrorType,
};
use envoy_types::pb::envoy::extensions::retry::host::previous_hosts::v3::PreviousHostsPredicate;
use envoy_types::pb::envoy::r#type::v3::{FractionalPercent, fractional_percent::DenominatorType};
use envoy_types::pb::google::protobuf::{Any, Duration as PbDuration, UInt32Value};
use envoy_types::util::pack_any;
use http::StatusCode;
use twox_hash::XxHash64;

use super::*;

fn with_retry(p: PbRetryPolicy) -> Action {
    Action::Route(PbRouteAction {
        retry_policy: Some(p),
        ..forward_action("c")
    })
}

fn retry_on(on: &str) -> PbRetryPolicy {
    PbRetryPolicy {
        retry_on: on.into(),
        ..PbRetryPolicy::default()
    }
}

fn compiled_retry(p: PbRetryPolicy) -> RetryPolicy {
    let t = table(vec![route("r", prefix("/"), with_retry(p))]);
    forward(&t.virtual_hosts()[0].routes()[0])
        .retry
        .clone()
        .unwrap()
}

#[test]
fn retry_on_parses_every_envoy_token() {
    let on: RetryOn =
        " 5xx,gateway-error , reset,reset-before-request,connect-failure,retriable-4xx,\
        refused-stream,retriable-status-codes,http3-post-connect-failure,cancelled,\
        deadline-exceeded,internal,resource-exhausted,unavailable,,"
            .parse()
            .unwrap();
    assert!(
        on.five_xx
            && on.gateway_error
            && on.reset
            && on.reset_before_request
            && on.connect_failure
            && on.retriable_4xx
            && on.refused_stream
            && on.retriable_status_codes
            && on.http3_post_connect_failure
            && on.cancelled
            && on.deadline_exceeded
            && on.internal
            && on.resource_exhausted
            && on.unavailable
    );
    assert_eq!("".parse::<RetryOn>(), Ok(RetryOn::default()));
    assert_eq!(
        "5xx,retry-on-teapot".parse::<RetryOn>(),
        Err(UnknownRetryOn("retry-on-teapot".into()))
    );
    for unsupported in ["envoy-ratelimited", "retriable-headers", "503"] {
        assert!(unsupported.parse::<RetryOn>().is_err(), "{unsupported}");
    }
    let e = error(vec![route(
        "api",
        prefix("/"),
        with_retry(retry_on("5xx,bogus")),
    )]);
    assert!(
        e.contains(r#"route "api" (routes[0]): route.retry_policy.retry_on"#)
            && e.contains("\"bogus\""),
        "{e}"
    );
}

#[test]
fn retry_conditions_follow_envoy() {
    let p = |on: &str, codes: &[u32]| {
        compiled_retry(PbRetryPolicy {
            retriable_status_codes: codes.to_vec(),
            ..retry_on(on)
        })
    };
    let s = |c: u16| StatusCode::from_u16(c).unwrap();
    let five = p("5xx", &[]);
    for c in [500, 501, 502, 503, 504, 599] {
        assert!(five.retry_status(s(c), None), "5xx retries {c}");
    }
    assert!(!five.retry_status(s(404), None) && !five.retry_status(s(200), Some(14)));
    assert!(five.retry_connect_failure() && five.retry_reset() && five.retry_per_try_timeout());
    let gw = p("gateway-error", &[]);
    assert!(!gw.retry_status(s(500), None));
    for c in [502, 503, 504] {
        assert!(gw.retry_status(s(c), None), "gateway-error retries {c}");
    }
    assert!(gw.retry_connect_failure() && gw.retry_reset());
    let cf = p("connect-failure", &[]);
    assert!(cf.retry_connect_failure() && !cf.retry_reset() && !cf.retry_status(s(503), None));
    let reset = p("reset", &[]);
    assert!(reset.retry_reset() && reset.retry_connect_failure() && reset.retry_refused_stream());
    let rbr = p("reset-before-request", &[]);
    assert!(rbr.retry_reset_before_request() && !rbr.retry_reset());
    let refused = p("refused-stream", &[]);
    assert!(refused.retry_refused_stream() && !refused.retry_reset());
    let c4 = p("retriable-4xx", &[]);
    assert!(c4.retry_status(s(409), None) && !c4.retry_status(s(404), None));
    let codes = p("retriable-status-codes", &[418, 503]);
    assert_eq!(codes.retriable_status_codes, [418, 503]);
    assert!(codes.retry_status(s(418), None) && !codes.retry_status(s(500), None));
    let codes_off = p("5xx", &[418]);
    assert!(
        !codes_off.retry_status(s(418), None),
        "codes need retriable-status-codes"
    );
    let grpc = p(
        "cancelled,deadline-exceeded,resource-exhausted,unavailable",
        &[],
    );
    for code in [1, 4, 8, 14] {
        assert!(grpc.retry_status(s(200), Some(code)), "grpc {code}");
    }
    assert!(!grpc.retry_status(s(200), Some(13)) && !grpc.retry_status(s(200), None));
    assert!(p("internal", &[]).retry_status(s(200), Some(13)));
    let e = error(vec![route(
        "r",
        prefix("/"),
        with_retry(PbRetryPolicy {
            retriable_status_codes: vec![99],
            ..retry_on("retriable-status-codes")
        }),
    )]);
    assert!(
        e.contains("route.retry_policy.retriable_status_codes[0]"),
        "{e}"
    );
}

#[test]
fn retry_defaults_back_off_predicates_and_virtual_host_fallback() {
    let p = compiled_retry(retry_on("5xx"));
    assert_eq!(p.num_retries, 1, "Envoy's default");
    assert_eq!(p.per_try_timeout, None);
    assert_eq!(
        p.back_off,
        BackOff {
            base: Duration::from_millis(25),
            max: Duration::from_millis(250),
        }
    );
    assert!(!p.retry_host_predicate_previous_hosts);
    assert_eq!(p.host_selection_max_attempts, 1);

    let p = compiled_retry(PbRetryPolicy {
        num_retries: Some(UInt32Value { value: 3 }),
        per_try_timeout: Some(PbDuration {
            seconds: 0,
            nanos: 500_000_000,
        }),
        retry_back_off: Some(RetryBackOff {
            base_interval: Some(PbDuration {
                seconds: 1,
                nanos: 0,
            }),
            max_interval: None,
        }),
        retry_host_predicate: vec![RetryHostPredicate {
            name: "envoy.retry_host_predicates.previous_hosts".into(),
            config_type: Some(retry_host_predicate::ConfigType::TypedConfig(pack_any(
                PreviousHostsPredicate {},
            ))),
        }],
        host_selection_retry_max_attempts: 5,
        ..retry_on("5xx")
    });
    assert_eq!(p.num_retries, 3);
    assert_eq!(p.per_try_timeout, Some(Duration::from_millis(500)));
    assert_eq!(p.back_off.max, Duration::from_secs(10));
    assert!(p.retry_host_predicate_previous_hosts);
    assert_eq!(p.host_selection_max_attempts, 5);

    let other_predicate = PbRetryPolicy {
        retry_host_predicate: vec![RetryHostPredicate {
            name: "canary".into(),
            config_type: Some(retry_host_predicate::ConfigType::TypedConfig(Any {
                type_url: "type.googleapis.com/x.Canary".into(),
                value: vec![],
            })),
        }],
        ..retry_on("5xx")
    };
    let e = error(vec![route("r", prefix("/"), with_retry(other_predicate))]);
    assert!(
        e.contains("route.retry_policy.retry_host_predicate[0]") && e.contains("not supported"),
        "{e}"
    );
    let e = error(vec![route(
        "r",
        prefix("/"),
        with_retry(PbRetryPolicy {
            retry_priority: Some(Default::default()),
            ..retry_on("5xx")
        }),
    )]);
    assert!(e.contains("route.retry_policy.retry_priority"), "{e}");

    // A route without a policy takes its virtual host's; its own wins.
    let vh = PbVirtualHost {
        retry_policy: Some(retry_on("gateway-error")),
        ..vhost(
            "vh",
            &["*"],
            vec![
                route("inherits", prefix("/a"), to("c")),
                route("own", prefix("/"), with_retry(retry_on("reset"))),
            ],
        )
    };
    let t = RouteTable::compile(&config(vec![vh])).unwrap();
    let retry = |p: &str| {
        forward(t.find(&Req::get(p).info()).unwrap())
            .retry
            .clone()
            .unwrap()
    };
    assert!(retry("/a").retry_on.gateway_error);
    assert!(retry("/b").retry_on.reset && !retry("/b").retry_on.gateway_error);
}

fn fraction(numerator: u32, denominator: DenominatorType) -> FractionalPercent {
    FractionalPercent {
        numerator,
        denominator: denominator as i32,
    }
}

fn fault_any(f: HttpFault) -> std::collections::HashMap<String, Any> {
    [(FAULT_FILTER.to_string(), pack_any(f))].into()
}

fn faulty(name: &str, m: RouteMatch, f: HttpFault) -> PbRoute {
    PbRoute {
        typed_per_filter_config: fault_any(f),
        ..route(name, m, to("c"))
    }
}

fn delay(secs: i64, pct: Option<FractionalPercent>) -> FaultDelay {
    FaultDelay {
        percentage: pct,
        fault_delay_secifier: Some(FaultDelaySecifier::FixedDelay(PbDuration {
            seconds: secs,
            nanos: 0,
        })),
    }
}

fn abort(kind: ErrorType, pct: Option<FractionalPercent>) -> PbFaultAbort {
    PbFaultAbort {
        percentage: pct,
        error_type: Some(kind),
        ..PbFaultAbort::default()
    }
}

#[test]
fn percent_hits_are_exact_for_every_denominator() {
    let at = |n: u32, d: DenominatorType| {
        let f = HttpFault {
            delay: Some(delay(1, Some(fraction(n, d)))),
            ..HttpFault::default()
        };
        let t = table(vec![faulty("r", prefix("/"), f)]);
        t.virtual_hosts()[0].routes()[0]
            .fault
            .unwrap()
            .delay
            .unwrap()
            .1
    };
    for (d, denominator) in [
        (DenominatorType::Hundred, 100u128),
        (DenominatorType::TenThousand, 10_000),
        (DenominatorType::Million, 1_000_000),
    ] {
        let p = at(25, d);
        let boundary = u64::try_from((25u128 << 64).div_ceil(denominator)).unwrap();
        assert!(p.hit(0) && p.hit(boundary - 1), "{d:?}");
        assert!(!p.hit(boundary) && !p.hit(u64::MAX), "{d:?}");
        assert!((p.as_percent() - 2_500.0 / denominator as f64).abs() < 1e-9);
    }
    let always = at(200, DenominatorType::Hundred);
    assert!(
        always.hit(u64::MAX),
        "a numerator over the denominator means always"
    );
    assert_eq!(always.as_percent(), 100.0);
    let never = at(0, DenominatorType::Million);
    assert!(!never.hit(0));
    assert!(Percent::ALWAYS.hit(u64::MAX) && !Percent::NEVER.hit(0));
}

#[test]
fn faults_from_per_filter_config() {
    let f = HttpFault {
        delay: Some(delay(7, Some(fraction(100, DenominatorType::Hundred)))),
        abort: Some(abort(
            ErrorType::HttpStatus(503),
            Some(fraction(10, DenominatorType::Hundred)),
        )),
        delay_percent_runtime: "fault.delay".into(),
        ..HttpFault::default()
    };
    let grpc = HttpFault {
        abort: Some(abort(ErrorType::GrpcStatus(14), None)),
        ..HttpFault::default()
    };
    let disabled = FilterConfig {
        disabled: true,
        ..FilterConfig::default()
    };
    let wrapped = FilterConfig {
        config: Some(pack_any(f.clone())),
        ..FilterConfig::default()
    };
    let vh = PbVirtualHost {
        typed_per_filter_config: fault_any(grpc),
        ..vhost(
            "vh",
            &["*"],
            vec![
                faulty("route", prefix("/route"), f),
                PbRoute {
                    typed_per_filter_config: [(FAULT_FILTER.to_string(), pack_any(disabled))]
                        .into(),
                    ..route("disabled", prefix("/disabled"), to("c"))
                },
                PbRoute {
                    typed_per_filter_config: [(FAULT_FILTER.to_string(), pack_any(wrapped))].into(),
                    ..route("wrapped", prefix("/wrapped"), to("c"))
                },
                route("inherits", prefix("/"), to("c")),
            ],
        )
    };
    let t = RouteTable::compile(&config(vec![vh])).unwrap();
    let fault = |p: &str| t.find(&Req::get(p).info()).unwrap().fault;
    let own = fault("/route").unwrap();
    let (d, dp) = own.delay.unwrap();
    assert_eq!(d, Duration::from_secs(7));
    assert_eq!(dp.as_percent(), 100.0);
    let (a, ap) = own.abort.unwrap();
    assert_eq!(a, FaultAbort::Http(StatusCode::SERVICE_UNAVAILABLE));
    assert_eq!(ap.as_percent(), 10.0);
    assert_eq!(fault("/wrapped"), Some(own));
    assert_eq!(
        fault("/disabled"),
        None,
        "FilterConfig.disabled turns the inherited fault off"
    );
    let inherited = fault("/x").unwrap();
    assert_eq!(inherited.abort.unwrap().0, FaultAbort::Grpc(14));
    assert!(
        !inherited.abort.unwrap().1.hit(0),
        "a missing percentage is 0%"
    );
    assert_eq!(inherited.delay, None);

    let bad = |f: HttpFault| error(vec![faulty("r", prefix("/"), f)]);
    let e = bad(HttpFault {
        abort: Some(abort(ErrorType::HttpStatus(600), None)),
        ..HttpFault::default()
    });
    assert!(
        e.contains(r#"typed_per_filter_config["envoy.filters.http.fault"].abort.http_status"#),
        "{e}"
    );
    let e = bad(HttpFault {
        headers: vec![Default::default()],
        ..HttpFault::default()
    });
    assert!(e.contains("headers") && e.contains("not supported"), "{e}");
    let e = bad(HttpFault {
        max_active_faults: Some(UInt32Value { value: 1 }),
        ..HttpFault::default()
    });
    assert!(e.contains("max_active_faults"), "{e}");
    let e = error(vec![PbRoute {
        typed_per_filter_config: [("envoy.filters.http.rbac".to_string(), Any::default())].into(),
        ..route("r", prefix("/"), to("c"))
    }]);
    assert!(
        e.contains(r#"typed_per_filter_config["envoy.filters.http.rbac"]"#),
        "{e}"
    );
    let e = error(vec![PbRoute {
        typed_per_filter_config: [(
            FAULT_FILTER.to_string(),
            pack_any(TypedExtensionConfig::default()),
        )]
        .into(),
        ..route("r", prefix("/"), to("c"))
    }]);
    assert!(e.contains("TypedExtensionConfig"), "{e}");
}

#[test]
fn mirrors_with_percentages() {
    let mirror = |cluster: &str, pct: Option<FractionalPercent>| RequestMirrorPolicy {
        cluster: cluster.into(),
        runtime_fraction: pct.map(|p| RuntimeFractionalPercent {
            default_value: Some(p),
            runtime_key: "ignored".into(),
        }),
        ..RequestMirrorPolicy::default()
    };
    let action = Action::Route(PbRouteAction {
        request_mirror_policies: vec![
            mirror("shadow", Some(fraction(250_000, DenominatorType::Million))),
            mirror("all", None),
        ],
        ..forward_action("c")
    });
    let t = table(vec![route("r", prefix("/"), action)]);
    let m = &forward(&t.virtual_hosts()[0].routes()[0]).mirrors;
    assert_eq!((m[0].cluster.as_str(), m[0].percent), ("shadow", 25.0));
    assert!(m[0].sampled(0) && !m[0].sampled(u64::MAX / 2));
    assert_eq!((m[1].cluster.as_str(), m[1].percent), ("all", 100.0));
    assert!(m[1].sampled(u64::MAX) && m[1].shadow_host_suffix);
    let e = error(vec![route(
        "r",
        prefix("/"),
        Action::Route(PbRouteAction {
            request_mirror_policies: vec![mirror("", None)],
            ..forward_action("c")
        }),
    )]);
    assert!(
        e.contains("route.request_mirror_policies[0].cluster"),
        "{e}"
    );
}

fn hash_route(policies: Vec<hash_policy::PolicySpecifier>, terminal: &[bool]) -> RouteTable {
    let hash_policy = policies
        .into_iter()
        .zip(terminal.iter().chain(std::iter::repeat(&false)))
        .map(|(p, t)| PbHashPolicy {
            terminal: *t,
            policy_specifier: Some(p),
        })
        .collect();
    table(vec![route(
        "r",
        prefix("/"),
        Action::Route(PbRouteAction {
            hash_policy,
            ..forward_action("c")
        }),
    )])
}

fn header_policy(name: &str) -> hash_policy::PolicySpecifier {
    hash_policy::PolicySpecifier::Header(hash_policy::Header {
        header_name: name.into(),
        regex_rewrite: None,
    })
}

fn xx(parts: &[&[u8]]) -> u64 {
    let mut h = XxHash64::with_seed(0);
    for p in parts {
        h.write(p);
    }
    h.finish()
}

#[test]
fn hash_policies_follow_envoy() {
    let ip: IpAddr = "10.1.2.3".parse().unwrap();
    let t = hash_route(vec![header_policy("x-user")], &[]);
    let f = forward(&t.virtual_hosts()[0].routes()[0]);
    let one = Req::get("/").header("x-user", "b").header("x-user", "a");
    let other_order = Req::get("/").header("x-user", "a").header("x-user", "b");
    assert_eq!(f.request_hash(&one.info(), ip), Some(xx(&[b"a", b"b"])));
    assert_eq!(
        f.request_hash(&one.info(), ip),
        f.request_hash(&other_order.info(), ip)
    );
    assert_eq!(f.request_hash(&Req::get("/").info(), ip), None);
    let t = hash_route(vec![header_policy(":authority")], &[]);
    let f = forward(&t.virtual_hosts()[0].routes()[0]);
    assert_eq!(
        f.request_hash(&Req::new("svc:80", "/").info(), ip),
        Some(xx(&[b"svc:80"]))
    );

    let q = hash_policy::PolicySpecifier::QueryParameter(hash_policy::QueryParameter {
        name: "u".into(),
    });
    let t = hash_route(vec![q], &[]);
    let f = forward(&t.virtual_hosts()[0].routes()[0]);
    assert_eq!(
        f.request_hash(&Req::get("/?a=1&u=x%20y").info(), ip),
        Some(xx(&[b"x%20y"]))
    );
    assert_eq!(f.request_hash(&Req::get("/?a=1").info(), ip), None);

    let src =
        hash_policy::PolicySpecifier::ConnectionProperties(hash_policy::ConnectionProperties {
            source_ip: true,
        });
    let t = hash_route(vec![src], &[]);
    let f = forward(&t.virtual_hosts()[0].routes()[0]);
    assert_eq!(
        f.request_hash(&Req::get("/").info(), ip),
        Some(xx(&[b"10.1.2.3"]))
    );
}

#[test]
fn cookie_hash_and_generated_cookie() {
    let ip: IpAddr = "10.1.2.3".parse().unwrap();
    let cookie = |ttl: Option<PbDuration>| {
        hash_policy::PolicySpecifier::Cookie(hash_policy::Cookie {
            name: "session".into(),
            ttl,
            path: "/app".into(),
            attributes: vec![],
        })
    };
    let t = hash_route(vec![cookie(None)], &[]);
    let f = forward(&t.virtual_hosts()[0].routes()[0]);
    let with = Req::get("/").header("cookie", "a=1; session=\"abc\"; b=2");
    assert_eq!(f.request_hash(&with.info(), ip), Some(xx(&[b"abc"])));
    assert_eq!(f.request_hash(&Req::get("/").info(), ip), None);
    assert_eq!(
        f.hash_policies[0].new_cookie(&Req::get("/").info(), ip),
        None,
        "no ttl, no cookie"
    );

    let t = hash_route(
        vec![cookie(Some(PbDuration {
            seconds: 3600,
            nanos: 0,
        }))],
        &[],
    );
    let f = forward(&t.virtual_hosts()[0].routes()[0]);
    let without = Req::get("/");
    let set = f.hash_policies[0].new_cookie(&without.info(), ip).unwrap();
    let value = format!("{:016x}", xx(&[b"10.1.2.3"]));
    assert_eq!(
        set,
        format!("session=\"{value}\"; Max-Age=3600; Path=/app; HttpOnly")
    );
    assert_eq!(
        f.request_hash(&without.info(), ip),
        Some(xx(&[value.as_bytes()])),
        "hash of the cookie it sets"
    );
    assert_eq!(f.hash_policies[0].new_cookie(&with.info(), ip), None);
}

#[test]
fn combined_hashes_rotate_and_stop_at_terminal() {
    let ip: IpAddr = "10.1.2.3".parse().unwrap();
    let req = Req::get("/").header("a", "1").header("b", "2");
    let (ha, hb) = (xx(&[b"1"]), xx(&[b"2"]));
    let t = hash_route(vec![header_policy("a"), header_policy("b")], &[]);
    let f = forward(&t.virtual_hosts()[0].routes()[0]);
    assert_eq!(
        f.request_hash(&req.info(), ip),
        Some(ha.rotate_left(1) ^ hb)
    );
    assert_eq!(
        combined_hash(&f.hash_policies, &req.info(), ip),
        Some(ha.rotate_left(1) ^ hb)
    );
    let t = hash_route(vec![header_policy("a"), header_policy("b")], &[true]);
    let f = forward(&t.virtual_hosts()[0].routes()[0]);
    assert_eq!(
        f.request_hash(&req.info(), ip),
        Some(ha),
        "terminal with a hash stops"
    );
    let t = hash_route(vec![header_policy("missing"), header_policy("b")], &[true]);
    let f = forward(&t.virtual_hosts()[0].routes()[0]);
    assert_eq!(
        f.request_hash(&req.info(), ip),
        Some(hb),
        "terminal without a hash goes on"
    );
    let t = hash_route(
        vec![
            header_policy("a"),
            header_policy("missing"),
            header_policy("b"),
        ],
        &[false, true],
    );
    let f = forward(&t.virtual_hosts()[0].routes()[0]);
    assert_eq!(
        f.request_hash(&req.info(), ip),
        Some(ha),
        "a terminal policy stops once any hash exists"
    );
    assert_eq!(combined_hash(&[], &req.info(), ip), None);

    let e = error(vec![route(
        "r",
        prefix("/"),
        Action::Route(PbRouteAction {
            hash_policy: vec![PbHashPolicy {
                terminal: false,
                policy_specifier: Some(hash_policy::PolicySpecifier::FilterState(
                    hash_policy::FilterState { key: "k".into() },
                )),
            }],
            ..forward_action("c")
        }),
    )]);
    assert!(e.contains("route.hash_policy[0].filter_state"), "{e}");
}
