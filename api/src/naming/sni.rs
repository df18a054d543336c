//! The TLS SNI that addresses a service across clusters through an east-west gateway.
//!
//! Isthmus uses Istio's format so gateways interoperate with Istio's `AUTO_PASSTHROUGH`:
//! `outbound_.<port>_.<subset>_.<fqdn>`, e.g.
//! `outbound_.9080_.v1_.reviews.default.svc.cluster.local`; no subset is written as an empty
//! segment: `outbound_.9080_._.reviews.default.svc.cluster.local`.

use std::fmt;
use std::str::FromStr;

use super::NameError;
use super::dns::{check_dns1123_label, check_hostname};

const PREFIX: &str = "outbound_.";
const SEP: &str = "_.";
const EXPECTED: &str = "expected outbound_.<port>_.<subset>_.<fqdn>";

/// A parsed cross-cluster SNI `outbound_.<port>_.<subset>_.<fqdn>`.
///
/// Values built with [`Sni::new`] or parsed with [`FromStr`] have a port in 1..=65535, a
/// DNS-1123 label (or no) subset and a lowercase hostname, so `to_string()` parses back.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Sni {
    /// Service port, 1..=65535.
    pub port: u16,
    /// `DestinationRule` subset name; `None` is written as an empty segment.
    pub subset: Option<String>,
    /// Lowercase service hostname without a trailing dot.
    pub host: String,
}

impl Sni {
    /// Builds a validated SNI, lowercasing `host`; `Some("")` is treated as no subset.
    pub fn new(port: u16, subset: Option<&str>, host: &str) -> Result<Self, NameError> {
        let subset = subset.filter(|s| !s.is_empty());
        let err = |reason: String| NameError::Sni {
            input: format!("{PREFIX}{port}{SEP}{}{SEP}{host}", subset.unwrap_or("")),
            reason,
        };
        if port == 0 {
            return Err(err("port must be from 1 to 65535".to_owned()));
        }
        if let Some(subset) = subset {
            check_subset(subset).map_err(err)?;
        }
        check_host(host).map_err(err)?;
        Ok(Self {
            port,
            subset: subset.map(str::to_owned),
            host: host.to_ascii_lowercase(),
        })
    }
}

/// Whether `s` is a well-formed cross-cluster SNI, i.e. `s.parse::<Sni>()` succeeds.
pub fn is_outbound_sni(s: &str) -> bool {
    split(s).is_ok()
}

impl FromStr for Sni {
    type Err = NameError;

    /// Parses strictly: exact `outbound_.` prefix, canonical decimal port, DNS-1123 label or
    /// empty subset, and a hostname without wildcard or trailing dot (case-insensitive,
    /// lowercased).
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (port, subset, host) = split(s).map_err(|reason| NameError::Sni {
            input: s.to_owned(),
            reason,
        })?;
        Ok(Self {
            port,
            subset: (!subset.is_empty()).then(|| subset.to_owned()),
            host: host.to_ascii_lowercase(),
        })
    }
}

impl fmt::Display for Sni {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{PREFIX}{}{SEP}{}{SEP}{}",
            self.port,
            self.subset.as_deref().unwrap_or(""),
            self.host
        )
    }
}

/// Splits and validates `s`, returning `(port, subset, host)` with `host` not yet lowercased.
fn split(s: &str) -> Result<(u16, &str, &str), String> {
    let Some(rest) = s.strip_prefix(PREFIX) else {
        return Err(format!("must start with {PREFIX:?}; {EXPECTED}"));
    };
    let Some((port, rest)) = rest.split_once(SEP) else {
        return Err(format!("missing \"_.\" after the port; {EXPECTED}"));
    };
    let Some((subset, host)) = rest.split_once(SEP) else {
        return Err(format!(
            "missing \"_.\" after the subset (write \"_._.\" for no subset); {EXPECTED}"
        ));
    };
    let port = parse_port(port)?;
    if !subset.is_empty() {
        check_subset(subset)?;
    }
    check_host(host)?;
    Ok((port, subset, host))
}

fn parse_port(port: &str) -> Result<u16, String> {
    let canonical = !port.is_empty()
        && port.len() <= 5
        && !port.starts_with('0')
        && port.bytes().all(|b| b.is_ascii_digit());
    match port.parse::<u16>() {
        Ok(n) if canonical => Ok(n),
        _ => Err(format!(
            "port {port:?} must be a decimal number from 1 to 65535 without sign or leading \
             zeros"
        )),
    }
}

fn check_subset(subset: &str) -> Result<(), String> {
    check_dns1123_label(subset).map_err(|reason| format!("subset {subset:?}: {reason}"))
}

fn check_host(host: &str) -> Result<(), String> {
    if host.ends_with('.') {
        return Err(format!("host {host:?} must not end with '.' in an SNI"));
    }
    check_hostname(host, false).map_err(|reason| format!("host {host:?}: {reason}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const REVIEWS: &str = "reviews.default.svc.cluster.local";

    fn sni(s: &str) -> Result<Sni, NameError> {
        s.parse()
    }

    #[test]
    fn parses_istio_examples() {
        let parsed = sni("outbound_.9080_.v1_.reviews.default.svc.cluster.local").unwrap();
        assert_eq!(
            parsed,
            Sni {
                port: 9080,
                subset: Some("v1".into()),
                host: REVIEWS.into()
            }
        );
        let parsed = sni("outbound_.9080_._.reviews.default.svc.cluster.local").unwrap();
        assert_eq!(parsed.subset, None);
        assert_eq!(
            parsed.to_string(),
            "outbound_.9080_._.reviews.default.svc.cluster.local"
        );
        let parsed = sni("outbound_.443_._.reviews.default.global").unwrap();
        assert_eq!(parsed.host, "reviews.default.global");
        assert_eq!(sni("outbound_.80_._.reviews").unwrap().host, "reviews");
    }

    #[test]
    fn new_validates_and_formats() {
        let s = Sni::new(9080, Some("v1"), "Reviews.Default.SVC.cluster.local").unwrap();
        assert_eq!(s.host, REVIEWS);
        assert_eq!(
            s.to_string(),
            "outbound_.9080_.v1_.reviews.default.svc.cluster.local"
        );
        assert_eq!(Sni::new(9080, Some(""), REVIEWS).unwrap().subset, None);
        assert_eq!(Sni::new(9080, None, REVIEWS).unwrap().subset, None);
        assert!(Sni::new(0, None, REVIEWS).is_err());
        assert!(Sni::new(80, Some("V1"), REVIEWS).is_err());
        assert!(Sni::new(80, Some("v_1"), REVIEWS).is_err());
        assert!(Sni::new(80, None, "*.example.com").is_err());
        assert!(Sni::new(80, None, "reviews.").is_err());
        assert!(Sni::new(80, None, "").is_err());
        let err = Sni::new(0, Some("v1"), REVIEWS).unwrap_err();
        assert_eq!(
            err.input(),
            "outbound_.0_.v1_.reviews.default.svc.cluster.local"
        );
    }

    #[test]
    fn host_is_case_insensitive_and_lowercased() {
        let s = sni("outbound_.9080_.v1_.REVIEWS.Default.Svc.Cluster.Local").unwrap();
        assert_eq!(s.host, REVIEWS);
        assert_eq!(
            s.to_string(),
            "outbound_.9080_.v1_.reviews.default.svc.cluster.local"
        );
    }

    #[test]
    fn port_bounds() {
        assert_eq!(sni(&format!("outbound_.1_._.{REVIEWS}")).unwrap().port, 1);
        assert_eq!(
            sni(&format!("outbound_.65535_._.{REVIEWS}")).unwrap().port,
            65535
        );
        for port in [
            "0", "65536", "99999", "100000", "", "+80", "-80", "080", "00", "8 0", " 80", "80 ",
            "8o", "٣", "0x50", "1e3",
        ] {
            let input = format!("outbound_.{port}_._.{REVIEWS}");
            let err = sni(&input).unwrap_err();
            assert!(err.reason().contains("port"), "{port:?}: {err}");
            assert_eq!(err.input(), input);
        }
    }

    #[test]
    fn subset_rules() {
        assert_eq!(
            sni(&format!("outbound_.80_.v1-canary_.{REVIEWS}"))
                .unwrap()
                .subset
                .as_deref(),
            Some("v1-canary")
        );
        for subset in ["V1", "-v1", "v1-", "v.1", "v 1", "é", &"a".repeat(64)] {
            let err = sni(&format!("outbound_.80_.{subset}_.{REVIEWS}")).unwrap_err();
            assert!(err.reason().contains("subset"), "{subset:?}: {err}");
        }
        assert!(sni(&format!("outbound_.80_.{}_.{REVIEWS}", "a".repeat(63))).is_ok());
    }

    #[test]
    fn host_rules() {
        for host in [
            "",
            "reviews.",
            "*.example.com",
            "*",
            "a..b",
            "re_views.default",
            "-a.b",
            "héllo.com",
            "a b",
            &"a".repeat(64),
        ] {
            let err = sni(&format!("outbound_.80_._.{host}")).unwrap_err();
            assert!(err.reason().contains("host"), "{host:?}: {err}");
        }
    }

    #[test]
    fn rejects_garbage_with_clear_error() {
        let err = sni("foo").unwrap_err();
        assert_eq!(
            err.to_string(),
            "invalid SNI \"foo\": must start with \"outbound_.\"; expected \
             outbound_.<port>_.<subset>_.<fqdn>"
        );
        for garbage in [
            "",
            "outbound_.",
            "outbound_.9080",
            "outbound_.9080_.",
            "outbound_.9080_.v1",
            "outbound_.9080_.v1_.",
            "OUTBOUND_.9080_._.reviews",
            "inbound_.9080_._.reviews",
            "outbound|9080||reviews.default.svc.cluster.local",
            " outbound_.9080_._.reviews",
            "outbound_.9080_._.reviews ",
            "outbound_.9080__.reviews",
            "outbound_.9080_.v1_.v2_.reviews",
            "outbound_.９０８０_._.reviews",
            "outbound_.9080_._.😀",
            "\u{0}",
        ] {
            assert!(sni(garbage).is_err(), "{garbage:?}");
            assert!(!is_outbound_sni(garbage), "{garbage:?}");
        }
    }

    #[test]
    fn is_outbound_sni_matches_parse() {
        assert!(is_outbound_sni(
            "outbound_.9080_.v1_.reviews.default.svc.cluster.local"
        ));
        assert!(is_outbound_sni("outbound_.9080_._.Reviews.Default"));
        assert!(!is_outbound_sni("reviews.default.svc.cluster.local"));
    }

    fn host_strategy() -> impl Strategy<Value = String> {
        prop::collection::vec("[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?", 1..6)
            .prop_map(|labels| labels.join("."))
            .prop_filter("at most 253 characters", |h| h.len() <= 253)
    }

    fn sni_strategy() -> impl Strategy<Value = Sni> {
        (
            1..=u16::MAX,
            prop::option::of("[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?"),
            host_strategy(),
        )
            .prop_map(|(port, subset, host)| Sni { port, subset, host })
    }

    proptest! {
        #[test]
        fn round_trips(s in sni_strategy()) {
            let text = s.to_string();
            prop_assert!(is_outbound_sni(&text));
            prop_assert_eq!(text.parse::<Sni>(), Ok(s.clone()));
            prop_assert_eq!(
                Sni::new(s.port, s.subset.as_deref(), &s.host.to_ascii_uppercase()),
                Ok(s)
            );
        }

        #[test]
        fn uppercase_host_parses_to_lowercase(s in sni_strategy()) {
            let upper = format!(
                "outbound_.{}_.{}_.{}",
                s.port,
                s.subset.as_deref().unwrap_or(""),
                s.host.to_ascii_uppercase()
            );
            prop_assert_eq!(upper.parse::<Sni>(), Ok(s));
        }

        #[test]
        fn parse_never_panics(s in any::<String>()) {
            let parsed = s.parse::<Sni>();
            prop_assert_eq!(parsed.is_ok(), is_outbound_sni(&s));
        }

        #[test]
        fn parse_never_panics_near_valid(s in "outbound_\\.[0-9+_.a-zA-Z*é-]{0,40}") {
            if let Ok(sni) = s.parse::<Sni>() {
                prop_assert_eq!(sni.to_string(), s.to_ascii_lowercase());
            }
        }
    }
}
