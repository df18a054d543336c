//! Virtual host selection by authority.

use super::*;

/// A table with one virtual host per `(name, domains)`, each with one route named after it.
fn hosts(list: &[(&str, &[&str])]) -> RouteTable {
    let vhosts = list
        .iter()
        .map(|(name, domains)| vhost(name, domains, vec![route(name, prefix("/"), to(name))]))
        .collect();
    RouteTable::compile(&config(vhosts)).unwrap()
}

fn vh<'t>(t: &'t RouteTable, authority: &str) -> Option<&'t str> {
    t.virtual_host(authority).map(VirtualHost::name)
}

#[test]
fn authority_matches_with_and_without_port_case_insensitively() {
    let t = hosts(&[
        (
            "reviews",
            &["reviews.default.svc", "reviews.default.svc:9080", "Reviews"],
        ),
        ("ported", &["only.ported:8080"]),
    ]);
    assert_eq!(vh(&t, "reviews.default.svc"), Some("reviews"));
    assert_eq!(vh(&t, "REVIEWS.Default.svc:9080"), Some("reviews"));
    assert_eq!(
        vh(&t, "reviews:9080"),
        Some("reviews"),
        "domains are lower-cased too"
    );
    assert_eq!(
        vh(&t, "reviews.default.svc:1234"),
        Some("reviews"),
        "port dropped as a fallback"
    );
    assert_eq!(vh(&t, "only.ported:8080"), Some("ported"));
    assert_eq!(
        vh(&t, "only.ported"),
        None,
        "a domain with a port needs that port"
    );
    assert_eq!(vh(&t, "only.ported:9090"), None);
    assert_eq!(vh(&t, "reviews.default"), None);
    assert_eq!(vh(&t, ""), None);
    let long = format!("{}.reviews", "A".repeat(300));
    assert_eq!(
        vh(&t, &long),
        None,
        "long authorities are lower-cased on the heap"
    );
    let t = hosts(&[("long", &[&long])]);
    assert_eq!(vh(&t, &long.to_ascii_uppercase()), Some("long"));
}

#[test]
fn exact_beats_suffix_beats_prefix_beats_any() {
    let t = hosts(&[
        ("any", &["*"]),
        ("prefix", &["api.*"]),
        ("short-suffix", &["*.com"]),
        ("long-suffix", &["*.example.com"]),
        ("exact", &["api.example.com"]),
    ]);
    assert_eq!(vh(&t, "api.example.com"), Some("exact"));
    assert_eq!(vh(&t, "API.EXAMPLE.COM:443"), Some("exact"));
    assert_eq!(
        vh(&t, "www.example.com"),
        Some("long-suffix"),
        "longest suffix first"
    );
    assert_eq!(
        vh(&t, "api.other.com"),
        Some("short-suffix"),
        "suffix before prefix"
    );
    assert_eq!(vh(&t, "api.other.org"), Some("prefix"));
    assert_eq!(vh(&t, "api.other.org:80"), Some("prefix"));
    assert_eq!(vh(&t, "other.org"), Some("any"));
    assert_eq!(
        vh(&t, ".example.com"),
        Some("short-suffix"),
        "'*' needs at least one character"
    );
    assert_eq!(vh(&t, "example.com"), Some("short-suffix"));
    assert_eq!(vh(&t, "example.org"), Some("any"));
    assert_eq!(vh(&t, "api."), Some("any"));
}

#[test]
fn wildcards_against_ports_and_ipv6() {
    let t = hosts(&[
        ("ported-suffix", &["*.svc:8080"]),
        ("suffix", &["*.svc"]),
        ("v6", &["[::1]"]),
        ("v4", &["10.0.0.1"]),
    ]);
    assert_eq!(vh(&t, "a.svc:8080"), Some("ported-suffix"));
    assert_eq!(vh(&t, "a.svc:9090"), Some("suffix"));
    assert_eq!(vh(&t, "a.svc"), Some("suffix"));
    assert_eq!(vh(&t, "[::1]:80"), Some("v6"));
    assert_eq!(vh(&t, "[::1]"), Some("v6"));
    assert_eq!(vh(&t, "10.0.0.1:80"), Some("v4"));
    assert_eq!(
        vh(&t, "::1"),
        None,
        "a bare IPv6 address has no port to drop"
    );
}

#[test]
fn ignore_port_in_host_matching() {
    let mut rc = config(vec![vhost(
        "a",
        &["a.b"],
        vec![route("r", prefix("/"), to("c"))],
    )]);
    rc.ignore_port_in_host_matching = true;
    let t = RouteTable::compile(&rc).unwrap();
    assert_eq!(vh(&t, "a.b:80"), Some("a"));
    let mut rc = config(vec![vhost(
        "a",
        &["a.b:80"],
        vec![route("r", prefix("/"), to("c"))],
    )]);
    rc.ignore_port_in_host_matching = true;
    let t = RouteTable::compile(&rc).unwrap();
    assert_eq!(vh(&t, "a.b:80"), None, "domains keep their port");
}

#[test]
fn find_goes_through_the_virtual_host() {
    let t = hosts(&[("one", &["one"]), ("two", &["two"])]);
    assert_eq!(found(&t, &Req::new("two:80", "/x")), Some("two"));
    assert_eq!(found(&t, &Req::new("three", "/x")), None);
}

#[test]
fn bad_and_duplicate_domains_are_errors() {
    let compile = |vhosts: Vec<PbVirtualHost>| {
        RouteTable::compile(&config(vhosts))
            .unwrap_err()
            .to_string()
    };
    let r = || vec![route("r", prefix("/"), to("c"))];
    let e = compile(vec![vhost("a", &["x"], r()), vhost("b", &["X"], r())]);
    assert!(
        e.contains(r#"virtual host "b" (virtual_hosts[1]): domains[0]"#),
        "{e}"
    );
    let e = compile(vec![vhost("a", &["*"], r()), vhost("b", &["*"], r())]);
    assert!(e.contains("virtual_hosts[1]"), "{e}");
    let e = compile(vec![vhost("a", &["x", "x"], r())]);
    assert!(e.contains("domains[1]"), "{e}");
    for bad in ["a*b", "*a*", "", "**"] {
        let e = compile(vec![vhost("a", &[bad], r())]);
        assert!(e.contains("domains[0]"), "{bad:?}: {e}");
    }
    let e = compile(vec![vhost("a", &[], r())]);
    assert!(e.contains("domains: must have at least one domain"), "{e}");
}
