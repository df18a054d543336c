//! SPIFFE workload identities in the Kubernetes form `spiffe://<td>/ns/<ns>/sa/<sa>`.
//!
//! Istio writes the same identity without the scheme (`cluster.local/ns/default/sa/sleep`) in
//! `AuthorizationPolicy` principals and in its `source.principal` attribute; both forms are
//! handled here, along with principal patterns (`*`, `prefix*`, `*suffix`).

use std::fmt;
use std::str::FromStr;

use super::NameError;

const SCHEME: &str = "spiffe://";
const EXPECTED_ID: &str = "expected spiffe://<trust-domain>/ns/<namespace>/sa/<service-account>";
const EXPECTED_PRINCIPAL: &str = "expected <trust-domain>/ns/<namespace>/sa/<service-account>";
/// Maximum trust domain length from the SPIFFE specification.
const MAX_TRUST_DOMAIN_LEN: usize = 255;
/// Maximum SPIFFE ID length (including the scheme) from the SPIFFE specification.
const MAX_ID_LEN: usize = 2048;

/// A Kubernetes workload identity `spiffe://<trust_domain>/ns/<namespace>/sa/<service_account>`.
///
/// Values built with [`SpiffeId::new`] or parsed are valid, so `to_string()` parses back.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SpiffeId {
    /// Trust domain, e.g. `cluster.local`; see [`validate_trust_domain`].
    pub trust_domain: String,
    /// Kubernetes namespace of the workload.
    pub namespace: String,
    /// Kubernetes service account of the workload.
    pub service_account: String,
}

impl SpiffeId {
    /// Builds a validated identity; segments must be `[A-Za-z0-9._-]+` and not `.` or `..`.
    pub fn new(
        trust_domain: &str,
        namespace: &str,
        service_account: &str,
    ) -> Result<Self, NameError> {
        let input = format!("{SCHEME}{trust_domain}/ns/{namespace}/sa/{service_account}");
        let check = || -> Result<(), String> {
            check_trust_domain(trust_domain)
                .map_err(|reason| format!("trust domain {trust_domain:?}: {reason}"))?;
            check_segment("namespace", namespace)?;
            check_segment("service account", service_account)?;
            check_id_len(input.len())
        };
        match check() {
            Ok(()) => Ok(Self {
                trust_domain: trust_domain.to_owned(),
                namespace: namespace.to_owned(),
                service_account: service_account.to_owned(),
            }),
            Err(reason) => Err(NameError::SpiffeId { input, reason }),
        }
    }

    /// Parses Istio's scheme-less principal form `<td>/ns/<ns>/sa/<sa>`, e.g.
    /// `cluster.local/ns/default/sa/sleep`.
    pub fn from_istio_principal(s: &str) -> Result<Self, NameError> {
        let err = |reason: String| NameError::Principal {
            input: s.to_owned(),
            reason,
        };
        if has_scheme_ignoring_case(s) {
            return Err(err(format!(
                "Istio principals are written without the \"spiffe://\" scheme; \
                 {EXPECTED_PRINCIPAL}"
            )));
        }
        check_id_len(SCHEME.len() + s.len()).map_err(err)?;
        parse_principal(s).map_err(err)
    }

    /// Formats the identity in Istio's scheme-less principal form `<td>/ns/<ns>/sa/<sa>`.
    pub fn to_istio_principal(&self) -> String {
        format!(
            "{}/ns/{}/sa/{}",
            self.trust_domain, self.namespace, self.service_account
        )
    }
}

impl FromStr for SpiffeId {
    type Err = NameError;

    /// Parses `spiffe://<td>/ns/<ns>/sa/<sa>` strictly: lowercase scheme, valid trust domain,
    /// exactly that path, no query, fragment, port or percent-encoding.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let err = |reason: String| NameError::SpiffeId {
            input: s.to_owned(),
            reason,
        };
        let Some(principal) = s.strip_prefix(SCHEME) else {
            return Err(err(if has_scheme_ignoring_case(s) {
                format!("the scheme must be lowercase \"spiffe://\"; {EXPECTED_ID}")
            } else {
                format!("must start with \"spiffe://\"; {EXPECTED_ID}")
            }));
        };
        check_id_len(s.len()).map_err(err)?;
        parse_principal(principal).map_err(err)
    }
}

impl fmt::Display for SpiffeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{SCHEME}{}/ns/{}/sa/{}",
            self.trust_domain, self.namespace, self.service_account
        )
    }
}

/// Validates a SPIFFE trust domain such as `cluster.local`: 1..=255 characters of
/// `[a-z0-9._-]`, no leading, trailing or doubled `.`.
pub fn validate_trust_domain(s: &str) -> Result<(), NameError> {
    check_trust_domain(s).map_err(|reason| NameError::TrustDomain {
        input: s.to_owned(),
        reason,
    })
}

/// Validates an `AuthorizationPolicy` principal: `*`, a prefix match `xxx*`, a suffix match
/// `*xxx`, or an exact principal `<td>/ns/<ns>/sa/<sa>` (optionally with `spiffe://`).
///
/// For prefix and suffix matches only the absence of whitespace and of a second `*` is
/// checked, since the fixed part may be any fragment of an identity.
pub fn validate_principal_pattern(s: &str) -> Result<(), NameError> {
    check_principal_pattern(s).map_err(|reason| NameError::Principal {
        input: s.to_owned(),
        reason,
    })
}

fn check_principal_pattern(s: &str) -> Result<(), String> {
    if s == "*" {
        return Ok(());
    }
    if s.is_empty() {
        return Err("must not be empty; use \"*\" to match any principal".to_owned());
    }
    if let Some(fixed) = s.strip_prefix('*').or_else(|| s.strip_suffix('*')) {
        if fixed.contains('*') {
            return Err(
                "only one '*' is allowed, at the start (suffix match) or the end (prefix match)"
                    .to_owned(),
            );
        }
        if fixed.chars().any(char::is_whitespace) {
            return Err("must not contain whitespace".to_owned());
        }
        return Ok(());
    }
    if s.contains('*') {
        return Err(
            "'*' is only allowed at the start (suffix match) or the end (prefix match)".to_owned(),
        );
    }
    let principal = s.strip_prefix(SCHEME).unwrap_or(s);
    check_id_len(SCHEME.len() + principal.len())?;
    parse_principal(principal).map(drop)
}

/// Parses `<td>/ns/<ns>/sa/<sa>` (the part of a SPIFFE ID after the scheme).
fn parse_principal(s: &str) -> Result<SpiffeId, String> {
    let Some((trust_domain, path)) = s.split_once('/') else {
        return Err(format!(
            "missing the /ns/.../sa/... path; {EXPECTED_PRINCIPAL}"
        ));
    };
    check_trust_domain(trust_domain)
        .map_err(|reason| format!("trust domain {trust_domain:?}: {reason}"))?;
    let mut parts = path.split('/');
    match (
        parts.next(),
        parts.next(),
        parts.next(),
        parts.next(),
        parts.next(),
    ) {
        (Some("ns"), Some(namespace), Some("sa"), Some(service_account), None) => {
            check_segment("namespace", namespace)?;
            check_segment("service account", service_account)?;
            Ok(SpiffeId {
                trust_domain: trust_domain.to_owned(),
                namespace: namespace.to_owned(),
                service_account: service_account.to_owned(),
            })
        }
        _ => Err(format!(
            "path \"/{path}\" must be exactly /ns/<namespace>/sa/<service-account>"
        )),
    }
}

fn check_trust_domain(s: &str) -> Result<(), String> {
    if s.is_empty() {
        return Err("must not be empty".to_owned());
    }
    if let Some(c) = s
        .chars()
        .find(|c| !(c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '.' | '-' | '_')))
    {
        return Err(if c.is_ascii_uppercase() {
            format!("contains uppercase {c:?}; trust domains must be lowercase")
        } else {
            format!("contains {c:?}; only lowercase letters, digits, '.', '-' and '_' are allowed")
        });
    }
    if s.len() > MAX_TRUST_DOMAIN_LEN {
        return Err(format!(
            "must be at most {MAX_TRUST_DOMAIN_LEN} characters (got {})",
            s.len()
        ));
    }
    if s.starts_with('.') || s.ends_with('.') || s.contains("..") {
        return Err("must not start or end with '.' or contain \"..\"".to_owned());
    }
    Ok(())
}

fn check_segment(what: &str, s: &str) -> Result<(), String> {
    if s.is_empty() {
        return Err(format!("{what} must not be empty"));
    }
    if s == "." || s == ".." {
        return Err(format!("{what} must not be {s:?}"));
    }
    if let Some(c) = s
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_')))
    {
        return Err(format!(
            "{what} {s:?} contains {c:?}; only letters, digits, '.', '-' and '_' are allowed"
        ));
    }
    Ok(())
}

fn check_id_len(len: usize) -> Result<(), String> {
    if len > MAX_ID_LEN {
        return Err(format!(
            "SPIFFE IDs must be at most {MAX_ID_LEN} bytes (got {len})"
        ));
    }
    Ok(())
}

fn has_scheme_ignoring_case(s: &str) -> bool {
    s.get(..SCHEME.len())
        .is_some_and(|p| p.eq_ignore_ascii_case(SCHEME))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn id(s: &str) -> Result<SpiffeId, NameError> {
        s.parse()
    }

    fn sleep() -> SpiffeId {
        SpiffeId {
            trust_domain: "cluster.local".into(),
            namespace: "default".into(),
            service_account: "sleep".into(),
        }
    }

    #[test]
    fn parses_and_formats() {
        let parsed = id("spiffe://cluster.local/ns/default/sa/sleep").unwrap();
        assert_eq!(parsed, sleep());
        assert_eq!(
            parsed.to_string(),
            "spiffe://cluster.local/ns/default/sa/sleep"
        );
        assert_eq!(
            parsed.to_istio_principal(),
            "cluster.local/ns/default/sa/sleep"
        );
        assert_eq!(
            SpiffeId::new("cluster.local", "default", "sleep"),
            Ok(sleep())
        );
        let odd = id("spiffe://my_td-1.example/ns/Team.A_b-c/sa/...x").unwrap();
        assert_eq!(odd.namespace, "Team.A_b-c");
        assert_eq!(odd.service_account, "...x");
    }

    #[test]
    fn istio_principal_form() {
        assert_eq!(
            SpiffeId::from_istio_principal("cluster.local/ns/default/sa/sleep"),
            Ok(sleep())
        );
        let err = SpiffeId::from_istio_principal("spiffe://cluster.local/ns/default/sa/sleep")
            .unwrap_err();
        assert!(err.reason().contains("without"), "{err}");
        assert!(matches!(err, NameError::Principal { .. }));
        for bad in [
            "",
            "cluster.local",
            "cluster.local/ns/default",
            "/ns/default/sa/sleep",
            "cluster.local/ns/default/sa/sleep/",
            "Cluster.local/ns/default/sa/sleep",
        ] {
            assert!(SpiffeId::from_istio_principal(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn rejects_bad_scheme() {
        let err = id("cluster.local/ns/default/sa/sleep").unwrap_err();
        assert_eq!(
            err.to_string(),
            "invalid SPIFFE ID \"cluster.local/ns/default/sa/sleep\": must start with \
             \"spiffe://\"; expected spiffe://<trust-domain>/ns/<namespace>/sa/<service-account>"
        );
        let err = id("SPIFFE://cluster.local/ns/default/sa/sleep").unwrap_err();
        assert!(err.reason().contains("lowercase"), "{err}");
        for bad in [
            "spiffe:/cluster.local/ns/a/sa/b",
            "spiffe:cluster.local/ns/a/sa/b",
            "https://cluster.local/ns/a/sa/b",
            " spiffe://cluster.local/ns/a/sa/b",
        ] {
            assert!(id(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn rejects_bad_trust_domain() {
        for bad in [
            "spiffe:///ns/a/sa/b",
            "spiffe://Cluster.Local/ns/a/sa/b",
            "spiffe://.cluster.local/ns/a/sa/b",
            "spiffe://cluster.local./ns/a/sa/b",
            "spiffe://cluster..local/ns/a/sa/b",
            "spiffe://cluster.local:8080/ns/a/sa/b",
            "spiffe://user@cluster.local/ns/a/sa/b",
            "spiffe://clüster.local/ns/a/sa/b",
        ] {
            let err = id(bad).unwrap_err();
            assert!(err.reason().contains("trust domain"), "{bad:?}: {err}");
        }
    }

    #[test]
    fn rejects_bad_path() {
        for bad in [
            "spiffe://cluster.local",
            "spiffe://cluster.local/",
            "spiffe://cluster.local/ns/default",
            "spiffe://cluster.local/ns/default/sa",
            "spiffe://cluster.local/ns/default/sa/",
            "spiffe://cluster.local/ns//sa/sleep",
            "spiffe://cluster.local/ns/default/sa/sleep/",
            "spiffe://cluster.local/ns/default/sa/sleep/extra",
            "spiffe://cluster.local//ns/default/sa/sleep",
            "spiffe://cluster.local/sa/sleep/ns/default",
            "spiffe://cluster.local/NS/default/SA/sleep",
            "spiffe://cluster.local/ns/./sa/sleep",
            "spiffe://cluster.local/ns/../sa/sleep",
            "spiffe://cluster.local/ns/default/sa/..",
            "spiffe://cluster.local/ns/default/sa/.",
            "spiffe://cluster.local/ns/def%20ault/sa/sleep",
            "spiffe://cluster.local/ns/default/sa/sleep?x=1",
            "spiffe://cluster.local/ns/default/sa/sleep#frag",
            "spiffe://cluster.local/ns/default/sa/sl eep",
            "spiffe://cluster.local/ns/défault/sa/sleep",
        ] {
            assert!(id(bad).is_err(), "{bad:?}");
        }
        let err = id("spiffe://cluster.local/ns/../sa/sleep").unwrap_err();
        assert_eq!(err.reason(), "namespace must not be \"..\"");
    }

    #[test]
    fn new_validates() {
        assert!(SpiffeId::new("", "a", "b").is_err());
        assert!(SpiffeId::new("td", "", "b").is_err());
        assert!(SpiffeId::new("td", "a", "..").is_err());
        assert!(SpiffeId::new("td", "a/b", "c").is_err());
        assert!(SpiffeId::new("TD", "a", "b").is_err());
        let err = SpiffeId::new("td", "a", "b c").unwrap_err();
        assert_eq!(err.input(), "spiffe://td/ns/a/sa/b c");
    }

    #[test]
    fn length_limits() {
        let td = "a".repeat(255);
        assert_eq!(validate_trust_domain(&td), Ok(()));
        assert!(validate_trust_domain(&"a".repeat(256)).is_err());
        let long_sa = "s".repeat(2048 - "spiffe://td/ns/n/sa/".len());
        assert!(SpiffeId::new("td", "n", &long_sa).is_ok());
        assert!(SpiffeId::new("td", "n", &format!("{long_sa}s")).is_err());
        assert!(id(&format!("spiffe://td/ns/n/sa/{long_sa}s")).is_err());
    }

    #[test]
    fn trust_domain_rules() {
        for ok in [
            "cluster.local",
            "a",
            "my_td",
            "td-1.example.org",
            "-._-",
            "0",
        ] {
            assert_eq!(validate_trust_domain(ok), Ok(()), "{ok}");
        }
        for bad in ["", ".", "a.", ".a", "a..b", "A", "a b", "a/b", "a:1", "é"] {
            assert!(validate_trust_domain(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn principal_patterns() {
        for ok in [
            "*",
            "cluster.local/ns/default/sa/sleep",
            "spiffe://cluster.local/ns/default/sa/sleep",
            "cluster.local/ns/default/*",
            "cluster.local/*",
            "*/ns/default/sa/sleep",
            "*/sa/sleep",
            "*sleep",
            "spiffe://cluster.local/*",
            "anything-goes-é*",
        ] {
            assert_eq!(validate_principal_pattern(ok), Ok(()), "{ok}");
        }
        for bad in [
            "",
            "**",
            "*a*",
            "a*b",
            "a**",
            "* a",
            "a\t*",
            "cluster.local",
            "cluster.local/ns/default",
            "sleep",
            "spiffe://cluster.local/ns/default/sa/..",
            "SPIFFE://cluster.local/ns/default/sa/sleep",
            "cluster.local/ns/default/sa/sleep ",
        ] {
            assert!(validate_principal_pattern(bad).is_err(), "{bad:?}");
        }
        let err = validate_principal_pattern("").unwrap_err();
        assert!(err.to_string().contains("\"*\""), "{err}");
    }

    fn segment() -> impl Strategy<Value = String> {
        "[A-Za-z0-9._-]{1,30}".prop_filter("not . or ..", |s| s != "." && s != "..")
    }

    fn trust_domain() -> impl Strategy<Value = String> {
        prop::collection::vec("[a-z0-9_-]{1,20}", 1..5).prop_map(|labels| labels.join("."))
    }

    fn spiffe_id() -> impl Strategy<Value = SpiffeId> {
        (trust_domain(), segment(), segment()).prop_map(|(trust_domain, ns, sa)| SpiffeId {
            trust_domain,
            namespace: ns,
            service_account: sa,
        })
    }

    proptest! {
        #[test]
        fn round_trips(x in spiffe_id()) {
            prop_assert_eq!(x.to_string().parse::<SpiffeId>(), Ok(x.clone()));
            prop_assert_eq!(SpiffeId::from_istio_principal(&x.to_istio_principal()), Ok(x.clone()));
            prop_assert_eq!(
                SpiffeId::new(&x.trust_domain, &x.namespace, &x.service_account),
                Ok(x.clone())
            );
            prop_assert_eq!(validate_trust_domain(&x.trust_domain), Ok(()));
            prop_assert_eq!(validate_principal_pattern(&x.to_string()), Ok(()));
            prop_assert_eq!(validate_principal_pattern(&x.to_istio_principal()), Ok(()));
        }

        #[test]
        fn parse_never_panics(s in any::<String>()) {
            let _ = s.parse::<SpiffeId>();
            let _ = SpiffeId::from_istio_principal(&s);
            let _ = validate_trust_domain(&s);
            let _ = validate_principal_pattern(&s);
        }

        #[test]
        fn parse_never_panics_near_valid(s in "(spiffe://)?[a-zA-Z./_*é -]{0,40}") {
            if let Ok(x) = s.parse::<SpiffeId>() {
                prop_assert_eq!(x.to_string(), s.clone());
            }
            if let Ok(x) = SpiffeId::from_istio_principal(&s) {
                prop_assert_eq!(x.to_istio_principal(), s.clone());
            }
            let _ = validate_principal_pattern(&s);
        }
    }
}
