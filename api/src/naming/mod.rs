//! Naming conventions shared by every Isthmus component.
//!
//! Every component (control plane, sidecar, gateway, DNS plugin, federation controller, CLI)
//! must agree byte-for-byte on how names are spelled, so the parsers and formatters live here:
//!
//! - [`dns`]: RFC 1123 hostnames (with Istio-style `*.` wildcards) and Kubernetes
//!   DNS-1123 labels/subdomains.
//! - [`sni`]: the TLS SNI used for cross-cluster hops through east-west gateways, in Istio's
//!   `outbound_.<port>_.<subset>_.<fqdn>` form (e.g.
//!   `outbound_.9080_.v1_.reviews.default.svc.cluster.local`).
//! - [`spiffe`]: workload identities `spiffe://<trust-domain>/ns/<ns>/sa/<sa>`, Istio's
//!   scheme-less principal form, and `AuthorizationPolicy` principal patterns.
//! - [`global`]: multicluster service hosts: `<svc>.<ns>.global`,
//!   `<svc>.<ns>.svc.clusterset.local` (MCS API) and `<svc>.<ns>.svc.cluster.local`.
//! - [`locality`]: `region/zone/subzone` localities, proximity ranking and Istio
//!   `localityLbSetting` patterns.
//!
//! Parsers are strict (one canonical spelling per value, so `parse(x.to_string()) == x`),
//! never panic on untrusted input, and report failures as [`NameError`], which quotes the
//! offending input and says what was expected.

pub mod dns;
pub mod global;
pub mod locality;
pub mod sni;
pub mod spiffe;

pub use dns::{validate_dns1123_label, validate_dns1123_subdomain, validate_hostname};
pub use global::{HostKind, ServiceName};
pub use locality::{Locality, LocalityPattern, Proximity, sort_by_proximity};
pub use sni::{Sni, is_outbound_sni};
pub use spiffe::{SpiffeId, validate_principal_pattern, validate_trust_domain};

/// A name that does not follow Isthmus naming conventions.
///
/// Each variant carries the offending input verbatim and a reason a user can act on; the
/// `Display` form quotes (and escapes) the input, e.g.
/// `invalid SNI "foo": expected outbound_.<port>_.<subset>_.<fqdn>`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum NameError {
    /// Not an RFC 1123 hostname (optionally with a leading `*.` wildcard).
    #[error("invalid hostname {input:?}: {reason}")]
    Hostname {
        /// The rejected input.
        input: String,
        /// What is wrong and what was expected.
        reason: String,
    },
    /// Not a Kubernetes DNS-1123 label (`[a-z0-9-]`, 1..=63, alphanumeric at both ends).
    #[error("invalid DNS-1123 label {input:?}: {reason}")]
    Dns1123Label {
        /// The rejected input.
        input: String,
        /// What is wrong and what was expected.
        reason: String,
    },
    /// Not a Kubernetes DNS-1123 subdomain (lowercase labels joined by `.`, at most 253).
    #[error("invalid DNS-1123 subdomain {input:?}: {reason}")]
    Dns1123Subdomain {
        /// The rejected input.
        input: String,
        /// What is wrong and what was expected.
        reason: String,
    },
    /// Not an Isthmus/Istio cross-cluster SNI.
    #[error("invalid SNI {input:?}: {reason}")]
    Sni {
        /// The rejected input.
        input: String,
        /// What is wrong and what was expected.
        reason: String,
    },
    /// Not a valid SPIFFE trust domain.
    #[error("invalid trust domain {input:?}: {reason}")]
    TrustDomain {
        /// The rejected input.
        input: String,
        /// What is wrong and what was expected.
        reason: String,
    },
    /// Not a `spiffe://<td>/ns/<ns>/sa/<sa>` identity.
    #[error("invalid SPIFFE ID {input:?}: {reason}")]
    SpiffeId {
        /// The rejected input.
        input: String,
        /// What is wrong and what was expected.
        reason: String,
    },
    /// Not an Istio principal (`<td>/ns/<ns>/sa/<sa>`) or principal pattern.
    #[error("invalid principal {input:?}: {reason}")]
    Principal {
        /// The rejected input.
        input: String,
        /// What is wrong and what was expected.
        reason: String,
    },
    /// Not a `<svc>.<ns>` service name.
    #[error("invalid service name {input:?}: {reason}")]
    ServiceName {
        /// The rejected input.
        input: String,
        /// What is wrong and what was expected.
        reason: String,
    },
    /// Not a `region/zone/subzone` locality.
    #[error("invalid locality {input:?}: {reason}")]
    Locality {
        /// The rejected input.
        input: String,
        /// What is wrong and what was expected.
        reason: String,
    },
    /// Not a `localityLbSetting` locality pattern such as `us-west/zone1/*`.
    #[error("invalid locality pattern {input:?}: {reason}")]
    LocalityPattern {
        /// The rejected input.
        input: String,
        /// What is wrong and what was expected.
        reason: String,
    },
}

impl NameError {
    /// The rejected input, verbatim, whatever the variant.
    pub fn input(&self) -> &str {
        self.parts().0
    }

    /// Why the input was rejected, without the quoted input.
    pub fn reason(&self) -> &str {
        self.parts().1
    }

    fn parts(&self) -> (&str, &str) {
        match self {
            Self::Hostname { input, reason }
            | Self::Dns1123Label { input, reason }
            | Self::Dns1123Subdomain { input, reason }
            | Self::Sni { input, reason }
            | Self::TrustDomain { input, reason }
            | Self::SpiffeId { input, reason }
            | Self::Principal { input, reason }
            | Self::ServiceName { input, reason }
            | Self::Locality { input, reason }
            | Self::LocalityPattern { input, reason } => (input, reason),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_display_quotes_input_and_reason() {
        let err = NameError::Sni {
            input: "foo".into(),
            reason: "expected outbound_.<port>_.<subset>_.<fqdn>".into(),
        };
        assert_eq!(
            err.to_string(),
            r#"invalid SNI "foo": expected outbound_.<port>_.<subset>_.<fqdn>"#
        );
        assert_eq!(err.input(), "foo");
        assert_eq!(err.reason(), "expected outbound_.<port>_.<subset>_.<fqdn>");
    }

    #[test]
    fn error_display_escapes_control_characters() {
        let err = NameError::Hostname {
            input: "a\nb\u{0}".into(),
            reason: "x".into(),
        };
        assert_eq!(err.to_string(), r#"invalid hostname "a\nb\0": x"#);
    }

    #[test]
    fn reexports_are_usable() {
        assert!(validate_hostname("reviews", false).is_ok());
        assert!(is_outbound_sni(
            "outbound_.9080_.v1_.reviews.default.svc.cluster.local"
        ));
        assert!("cluster.local".parse::<SpiffeId>().is_err());
        assert_eq!(
            "reviews.default"
                .parse::<ServiceName>()
                .unwrap()
                .global_host(),
            "reviews.default.global"
        );
        assert!(
            "*".parse::<LocalityPattern>()
                .unwrap()
                .matches(&Locality::default())
        );
    }
}
