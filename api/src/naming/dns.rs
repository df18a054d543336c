//! DNS name validation: RFC 1123 hostnames and Kubernetes DNS-1123 labels/subdomains.
//!
//! Hostnames (service hosts, `ServiceEntry` hosts, SNI hosts) are case-insensitive and may
//! contain uppercase letters; Kubernetes object names (labels, subdomains, subset names) must
//! be lowercase.

use super::NameError;

/// Maximum length of a DNS name, excluding one optional trailing dot.
const MAX_NAME_LEN: usize = 253;
/// Maximum length of one DNS label.
const MAX_LABEL_LEN: usize = 63;

/// Validates an RFC 1123 hostname such as `reviews`, `reviews.default.svc.cluster.local` or,
/// when `allow_wildcard` is set, Istio-style `*.example.com` and bare `*`.
///
/// One trailing dot is ignored; the rest must be at most 253 characters of labels that are
/// 1..=63 characters of `[A-Za-z0-9-]` and do not start or end with `-`. Dotted IPv4 addresses
/// pass, as in RFC 1123.
pub fn validate_hostname(host: &str, allow_wildcard: bool) -> Result<(), NameError> {
    check_hostname(host, allow_wildcard).map_err(|reason| NameError::Hostname {
        input: host.to_owned(),
        reason,
    })
}

/// Validates a Kubernetes DNS-1123 label (object names, namespaces, subset names): 1..=63
/// characters of `[a-z0-9-]`, starting and ending with a letter or digit.
pub fn validate_dns1123_label(s: &str) -> Result<(), NameError> {
    check_dns1123_label(s).map_err(|reason| NameError::Dns1123Label {
        input: s.to_owned(),
        reason,
    })
}

/// Validates a Kubernetes DNS-1123 subdomain: DNS-1123-style lowercase labels joined by `.`,
/// at most 253 characters in total.
///
/// As in Kubernetes' `IsDNS1123Subdomain`, individual labels are not limited to 63 characters,
/// so every name the Kubernetes API server accepts is accepted here.
pub fn validate_dns1123_subdomain(s: &str) -> Result<(), NameError> {
    check_dns1123_subdomain(s).map_err(|reason| NameError::Dns1123Subdomain {
        input: s.to_owned(),
        reason,
    })
}

/// [`validate_hostname`] returning only the reason, for embedding in other errors.
pub(crate) fn check_hostname(host: &str, allow_wildcard: bool) -> Result<(), String> {
    if host.is_empty() {
        return Err("must not be empty".to_owned());
    }
    let name = host.strip_suffix('.').unwrap_or(host);
    if name.is_empty() {
        return Err("must contain at least one label, not just \".\"".to_owned());
    }
    if name.len() > MAX_NAME_LEN {
        return Err(format!(
            "must be at most {MAX_NAME_LEN} characters (got {})",
            name.len()
        ));
    }
    let labels = if allow_wildcard {
        if name == "*" {
            return Ok(());
        }
        name.strip_prefix("*.").unwrap_or(name)
    } else {
        name
    };
    labels
        .split('.')
        .try_for_each(|label| check_host_label(label, allow_wildcard))
}

fn check_host_label(label: &str, allow_wildcard: bool) -> Result<(), String> {
    if label.is_empty() {
        return Err("contains an empty label; remove the leading or doubled '.'".to_owned());
    }
    if label.contains('*') {
        return Err(if allow_wildcard {
            "'*' is only allowed as the whole first label, as in \"*.example.com\"".to_owned()
        } else {
            "wildcards ('*') are not allowed here".to_owned()
        });
    }
    if let Some(c) = label
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || *c == '-'))
    {
        return Err(format!(
            "label {label:?} contains {c:?}; only ASCII letters, digits and '-' are allowed"
        ));
    }
    if label.len() > MAX_LABEL_LEN {
        return Err(format!(
            "label {label:?} is {} characters long; labels must be at most {MAX_LABEL_LEN}",
            label.len()
        ));
    }
    if label.starts_with('-') || label.ends_with('-') {
        return Err(format!(
            "label {label:?} must start and end with a letter or digit"
        ));
    }
    Ok(())
}

/// [`validate_dns1123_label`] returning only the reason, for embedding in other errors.
pub(crate) fn check_dns1123_label(s: &str) -> Result<(), String> {
    if s.is_empty() {
        return Err("must not be empty".to_owned());
    }
    check_lowercase_chars(s)?;
    if s.len() > MAX_LABEL_LEN {
        return Err(format!(
            "must be at most {MAX_LABEL_LEN} characters (got {})",
            s.len()
        ));
    }
    if s.starts_with('-') || s.ends_with('-') {
        return Err("must start and end with a lowercase letter or digit".to_owned());
    }
    Ok(())
}

fn check_dns1123_subdomain(s: &str) -> Result<(), String> {
    if s.is_empty() {
        return Err("must not be empty".to_owned());
    }
    if s.len() > MAX_NAME_LEN {
        return Err(format!(
            "must be at most {MAX_NAME_LEN} characters (got {})",
            s.len()
        ));
    }
    for label in s.split('.') {
        if label.is_empty() {
            return Err(
                "contains an empty label; remove the leading, trailing or doubled '.'".to_owned(),
            );
        }
        check_lowercase_chars(label)?;
        if label.starts_with('-') || label.ends_with('-') {
            return Err(format!(
                "label {label:?} must start and end with a lowercase letter or digit"
            ));
        }
    }
    Ok(())
}

fn check_lowercase_chars(s: &str) -> Result<(), String> {
    match s
        .chars()
        .find(|c| !(c.is_ascii_lowercase() || c.is_ascii_digit() || *c == '-'))
    {
        None => Ok(()),
        Some(c) if c.is_ascii_uppercase() => Err(format!(
            "contains uppercase {c:?}; Kubernetes names must be lowercase"
        )),
        Some(c) => Err(format!(
            "contains {c:?}; only lowercase letters, digits and '-' are allowed"
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn label(n: usize) -> String {
        "a".repeat(n)
    }

    #[test]
    fn hostname_accepts_common_forms() {
        for host in [
            "reviews",
            "reviews.default",
            "reviews.default.svc.cluster.local",
            "reviews.default.svc.cluster.local.",
            "Reviews.Default.SVC.Cluster.Local",
            "a",
            "1.2.3.4",
            "x-1.example-2.com",
            "9gag.com",
        ] {
            assert_eq!(validate_hostname(host, false), Ok(()), "{host}");
            assert_eq!(validate_hostname(host, true), Ok(()), "{host}");
        }
    }

    #[test]
    fn hostname_rejects_malformed() {
        for host in [
            "",
            ".",
            "..",
            "a..b",
            ".a",
            "a..",
            "-a.com",
            "a-.com",
            "a.-b",
            "a_b.com",
            "a b",
            "a/b",
            "a:80",
            "héllo.com",
            "例え.jp",
            "a\u{0}b",
        ] {
            assert!(validate_hostname(host, false).is_err(), "{host:?}");
            assert!(validate_hostname(host, true).is_err(), "{host:?}");
        }
    }

    #[test]
    fn hostname_label_length_limits() {
        assert_eq!(validate_hostname(&label(63), false), Ok(()));
        let err = validate_hostname(&label(64), false).unwrap_err();
        assert!(err.reason().contains("at most 63"), "{err}");
        assert_eq!(
            validate_hostname(&format!("{}.com", label(63)), false),
            Ok(())
        );
        assert!(validate_hostname(&format!("{}.com", label(64)), false).is_err());
    }

    #[test]
    fn hostname_total_length_limit_ignores_one_trailing_dot() {
        // 4 * 63 + 3 dots = 255; trim to exactly 253.
        let l = label(63);
        let max = format!("{l}.{l}.{l}.{}", label(61));
        assert_eq!(max.len(), 253);
        assert_eq!(validate_hostname(&max, false), Ok(()));
        assert_eq!(validate_hostname(&format!("{max}."), false), Ok(()));
        assert!(validate_hostname(&format!("{max}.."), false).is_err());
        let too_long = format!("{l}.{l}.{l}.{}", label(62));
        assert_eq!(too_long.len(), 254);
        let err = validate_hostname(&too_long, false).unwrap_err();
        assert!(err.reason().contains("at most 253"), "{err}");
    }

    #[test]
    fn hostname_wildcards() {
        for host in ["*", "*.", "*.example.com", "*.com", "*.Example.COM."] {
            assert_eq!(validate_hostname(host, true), Ok(()), "{host}");
            assert!(validate_hostname(host, false).is_err(), "{host}");
        }
        for host in [
            "**",
            "*example.com",
            "foo.*.com",
            "example.*",
            "*.*.com",
            "*..com",
            "*.-a.com",
        ] {
            assert!(validate_hostname(host, true).is_err(), "{host}");
        }
        let err = validate_hostname("*.example.com", false).unwrap_err();
        assert!(err.reason().contains("not allowed"), "{err}");
        let err = validate_hostname("foo.*.com", true).unwrap_err();
        assert!(err.reason().contains("first label"), "{err}");
    }

    #[test]
    fn hostname_error_names_the_bad_label() {
        let err = validate_hostname("reviews.de_fault.svc", false).unwrap_err();
        assert_eq!(err.input(), "reviews.de_fault.svc");
        assert!(err.to_string().contains("\"de_fault\""), "{err}");
        assert!(err.to_string().contains("'_'"), "{err}");
    }

    #[test]
    fn dns1123_label_cases() {
        for ok in ["a", "0", "reviews", "v1", "my-svc-2", &label(63)] {
            assert_eq!(validate_dns1123_label(ok), Ok(()), "{ok}");
        }
        for bad in [
            "",
            "-a",
            "a-",
            "-",
            "Reviews",
            "v1.2",
            "a_b",
            "a b",
            "é",
            &label(64),
        ] {
            assert!(validate_dns1123_label(bad).is_err(), "{bad:?}");
        }
        let err = validate_dns1123_label("V1").unwrap_err();
        assert!(err.reason().contains("lowercase"), "{err}");
        assert_eq!(
            err.to_string(),
            "invalid DNS-1123 label \"V1\": contains uppercase 'V'; Kubernetes names must be \
             lowercase"
        );
    }

    #[test]
    fn dns1123_subdomain_cases() {
        for ok in [
            "a",
            "example.com",
            "my-app.v1.example",
            "0.0",
            // Kubernetes does not limit subdomain labels to 63 characters.
            &format!("{}.com", label(64)),
            &format!("{}.{}.{}.{}", label(63), label(63), label(63), label(61)),
        ] {
            assert_eq!(validate_dns1123_subdomain(ok), Ok(()), "{ok}");
        }
        for bad in [
            "",
            ".",
            "a.",
            ".a",
            "a..b",
            "Example.com",
            "a-.b",
            "a.-b",
            "a_b",
            "*.example.com",
            &label(254),
        ] {
            assert!(validate_dns1123_subdomain(bad).is_err(), "{bad:?}");
        }
    }

    proptest! {
        #[test]
        fn validators_never_panic(s in any::<String>(), wildcard in any::<bool>()) {
            let _ = validate_hostname(&s, wildcard);
            let _ = validate_dns1123_label(&s);
            let _ = validate_dns1123_subdomain(&s);
        }

        #[test]
        fn valid_labels_are_valid_hostnames_and_subdomains(
            s in "[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?"
        ) {
            prop_assert_eq!(validate_dns1123_label(&s), Ok(()));
            prop_assert_eq!(validate_dns1123_subdomain(&s), Ok(()));
            prop_assert_eq!(validate_hostname(&s, false), Ok(()));
            prop_assert_eq!(validate_hostname(&s.to_ascii_uppercase(), false), Ok(()));
        }
    }
}
