//! Multicluster service hostnames.
//!
//! A Kubernetes service `<svc>` in namespace `<ns>` is reachable under three names:
//! `<svc>.<ns>.svc.cluster.local` (this cluster only), `<svc>.<ns>.svc.clusterset.local`
//! (the Kubernetes MCS API name, every cluster in the set) and `<svc>.<ns>.global` (Istio's
//! legacy multicluster name, kept for compatibility).

use std::fmt;
use std::str::FromStr;

use super::NameError;
use super::dns::check_dns1123_label;

const EXPECTED: &str = "expected <service>.<namespace>, e.g. reviews.default";

/// Which multicluster domain a service hostname belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum HostKind {
    /// `<svc>.<ns>.global`: Istio-style mesh-wide name.
    Global,
    /// `<svc>.<ns>.svc.clusterset.local`: Kubernetes MCS API name across the cluster set.
    ClusterSet,
    /// `<svc>.<ns>.svc.cluster.local`: the service in the local cluster only.
    ClusterLocal,
}

impl HostKind {
    /// Every kind, for iterating over all the names of a service.
    pub const ALL: [Self; 3] = [Self::Global, Self::ClusterSet, Self::ClusterLocal];

    /// The domain that follows `<svc>.<ns>.` for this kind, without leading or trailing dot.
    pub const fn suffix(self) -> &'static str {
        match self {
            Self::Global => "global",
            Self::ClusterSet => "svc.clusterset.local",
            Self::ClusterLocal => "svc.cluster.local",
        }
    }
}

/// A Kubernetes service identified by name and namespace, written `<svc>.<ns>`.
///
/// Both parts are DNS-1123 labels when built with [`ServiceName::new`] or parsed.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ServiceName {
    /// Service name, e.g. `reviews`.
    pub name: String,
    /// Namespace, e.g. `default`.
    pub namespace: String,
}

impl ServiceName {
    /// Builds a validated service name; both parts must be DNS-1123 labels.
    pub fn new(name: &str, namespace: &str) -> Result<Self, NameError> {
        check_parts(name, namespace).map_err(|reason| NameError::ServiceName {
            input: format!("{name}.{namespace}"),
            reason,
        })?;
        Ok(Self {
            name: name.to_owned(),
            namespace: namespace.to_owned(),
        })
    }

    /// The hostname of this service for `kind`, e.g. `reviews.default.global`.
    pub fn host(&self, kind: HostKind) -> String {
        format!("{}.{}.{}", self.name, self.namespace, kind.suffix())
    }

    /// `<svc>.<ns>.global`, the Istio-style mesh-wide name.
    pub fn global_host(&self) -> String {
        self.host(HostKind::Global)
    }

    /// `<svc>.<ns>.svc.clusterset.local`, the MCS API cluster-set name.
    pub fn clusterset_host(&self) -> String {
        self.host(HostKind::ClusterSet)
    }

    /// `<svc>.<ns>.svc.cluster.local`, the cluster-local name.
    pub fn cluster_local_host(&self) -> String {
        self.host(HostKind::ClusterLocal)
    }

    /// Recognises one of the three service hostnames (case-insensitive, one trailing dot
    /// allowed); returns the lowercased service and the kind, or `None` for any other host.
    pub fn from_host(host: &str) -> Option<(ServiceName, HostKind)> {
        let host = host.strip_suffix('.').unwrap_or(host).to_ascii_lowercase();
        let (kind, rest) = HostKind::ALL.into_iter().find_map(|kind| {
            let rest = host.strip_suffix(kind.suffix())?.strip_suffix('.')?;
            Some((kind, rest))
        })?;
        let (name, namespace) = rest.split_once('.')?;
        check_parts(name, namespace).ok()?;
        Some((
            ServiceName {
                name: name.to_owned(),
                namespace: namespace.to_owned(),
            },
            kind,
        ))
    }
}

impl FromStr for ServiceName {
    type Err = NameError;

    /// Parses `<svc>.<ns>` (as given on the command line); both parts must be lowercase
    /// DNS-1123 labels.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let err = |reason: String| NameError::ServiceName {
            input: s.to_owned(),
            reason,
        };
        let Some((name, namespace)) = s.split_once('.') else {
            return Err(err(format!("missing the namespace; {EXPECTED}")));
        };
        if namespace.contains('.') {
            return Err(err(format!(
                "has more than two dot-separated parts; {EXPECTED}"
            )));
        }
        check_parts(name, namespace).map_err(err)?;
        Ok(Self {
            name: name.to_owned(),
            namespace: namespace.to_owned(),
        })
    }
}

impl fmt::Display for ServiceName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}", self.name, self.namespace)
    }
}

fn check_parts(name: &str, namespace: &str) -> Result<(), String> {
    check_dns1123_label(name).map_err(|reason| format!("service name {name:?}: {reason}"))?;
    check_dns1123_label(namespace).map_err(|reason| format!("namespace {namespace:?}: {reason}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn reviews() -> ServiceName {
        ServiceName {
            name: "reviews".into(),
            namespace: "default".into(),
        }
    }

    #[test]
    fn hosts() {
        let s = reviews();
        assert_eq!(s.global_host(), "reviews.default.global");
        assert_eq!(s.clusterset_host(), "reviews.default.svc.clusterset.local");
        assert_eq!(s.cluster_local_host(), "reviews.default.svc.cluster.local");
        assert_eq!(s.to_string(), "reviews.default");
    }

    #[test]
    fn from_host_recognises_each_kind() {
        assert_eq!(
            ServiceName::from_host("reviews.default.global"),
            Some((reviews(), HostKind::Global))
        );
        assert_eq!(
            ServiceName::from_host("reviews.default.svc.clusterset.local"),
            Some((reviews(), HostKind::ClusterSet))
        );
        assert_eq!(
            ServiceName::from_host("reviews.default.svc.cluster.local"),
            Some((reviews(), HostKind::ClusterLocal))
        );
    }

    #[test]
    fn from_host_is_case_insensitive_and_accepts_trailing_dot() {
        assert_eq!(
            ServiceName::from_host("Reviews.DEFAULT.Svc.Cluster.Local."),
            Some((reviews(), HostKind::ClusterLocal))
        );
        assert_eq!(
            ServiceName::from_host("REVIEWS.DEFAULT.GLOBAL."),
            Some((reviews(), HostKind::Global))
        );
    }

    #[test]
    fn from_host_rejects_others() {
        for host in [
            "",
            ".",
            "global",
            ".global",
            "reviews.global",
            "default.global",
            ".default.global",
            "reviews..global",
            "reviews.default.global..",
            "a.reviews.default.global",
            "reviews.default.svc.global",
            "reviews.default.svc",
            "reviews.default.svc.cluster",
            "reviews.default.cluster.local",
            "reviews.default.svc.cluster.local.com",
            "reviews.default.svc.clusterset.local.x",
            "reviews.default.svc.cluster.localx",
            "reviews.defaultglobal",
            "re_views.default.global",
            "-reviews.default.global",
            "reviews.default-.global",
            "rëviews.default.global",
            "reviews.default.globa",
            "*.default.global",
            "reviews.default.ＧＬＯＢＡＬ",
            "reviews.default.\u{212a}lobal",
            "\u{212a}afka.default.global",
        ] {
            assert_eq!(ServiceName::from_host(host), None, "{host:?}");
        }
        let long = "a".repeat(64);
        assert_eq!(
            ServiceName::from_host(&format!("{long}.default.global")),
            None
        );
        let max = "a".repeat(63);
        assert!(ServiceName::from_host(&format!("{max}.{max}.svc.clusterset.local")).is_some());
    }

    #[test]
    fn parse_service_name() {
        assert_eq!("reviews.default".parse::<ServiceName>(), Ok(reviews()));
        assert_eq!(ServiceName::new("reviews", "default"), Ok(reviews()));
        let err = "reviews".parse::<ServiceName>().unwrap_err();
        assert_eq!(
            err.to_string(),
            "invalid service name \"reviews\": missing the namespace; expected \
             <service>.<namespace>, e.g. reviews.default"
        );
        for bad in [
            "",
            ".",
            "reviews.",
            ".default",
            "reviews.default.svc",
            "reviews.default.",
            "Reviews.default",
            "reviews.Default",
            "re_views.default",
            "reviews.default ",
            "rëviews.default",
            "*.default",
        ] {
            assert!(bad.parse::<ServiceName>().is_err(), "{bad:?}");
        }
        let err = ServiceName::new("reviews", "De").unwrap_err();
        assert!(err.reason().starts_with("namespace \"De\""), "{err}");
    }

    fn label() -> impl Strategy<Value = String> {
        "[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?"
    }

    fn service() -> impl Strategy<Value = ServiceName> {
        (label(), label()).prop_map(|(name, namespace)| ServiceName { name, namespace })
    }

    fn kind() -> impl Strategy<Value = HostKind> {
        prop::sample::select(HostKind::ALL.to_vec())
    }

    proptest! {
        #[test]
        fn host_round_trips(s in service(), kind in kind()) {
            let host = s.host(kind);
            prop_assert_eq!(ServiceName::from_host(&host), Some((s.clone(), kind)));
            prop_assert_eq!(
                ServiceName::from_host(&format!("{}.", host.to_ascii_uppercase())),
                Some((s, kind))
            );
            prop_assert!(crate::naming::validate_hostname(&host, false).is_ok());
        }

        #[test]
        fn named_hosts_round_trip(s in service()) {
            prop_assert_eq!(
                ServiceName::from_host(&s.global_host()),
                Some((s.clone(), HostKind::Global))
            );
            prop_assert_eq!(
                ServiceName::from_host(&s.clusterset_host()),
                Some((s.clone(), HostKind::ClusterSet))
            );
            prop_assert_eq!(
                ServiceName::from_host(&s.cluster_local_host()),
                Some((s, HostKind::ClusterLocal))
            );
        }

        #[test]
        fn display_round_trips(s in service()) {
            prop_assert_eq!(s.to_string().parse::<ServiceName>(), Ok(s.clone()));
            prop_assert_eq!(ServiceName::new(&s.name, &s.namespace), Ok(s));
        }

        #[test]
        fn parse_never_panics(s in any::<String>()) {
            let _ = s.parse::<ServiceName>();
            let _ = ServiceName::from_host(&s);
        }

        #[test]
        fn from_host_output_is_lowercase(
            s in "[a-zA-Z0-9.é-]{0,20}\\.(global|svc\\.cluster(set)?\\.local)\\.?"
        ) {
            if let Some((svc, kind)) = ServiceName::from_host(&s) {
                let expected = s.strip_suffix('.').unwrap_or(&s).to_ascii_lowercase();
                prop_assert_eq!(svc.host(kind), expected);
            }
        }
    }
}
