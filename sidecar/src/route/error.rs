//! Compile errors, and the location (`Cx`) they carry.

use std::time::Duration;

use envoy_types::pb::google::protobuf;

/// A route configuration the sidecar cannot serve as Envoy would.
///
/// `at` names the route configuration, the virtual host and route (by name
/// and index) and the field, e.g. `route configuration "5000", virtual host
/// "reviews:5000" (virtual_hosts[0]), route "default" (routes[1]):
/// route.retry_policy.retry_on`.
#[derive(Debug, thiserror::Error)]
pub enum RouteError {
    /// A field the sidecar does not implement (Envoy would act on it).
    #[error("{at}: {what} is not supported by the Isthmus sidecar")]
    Unsupported {
        /// Where.
        at: String,
        /// What was found.
        what: String,
    },
    /// A value Envoy would reject too.
    #[error("{at}: {reason}")]
    Invalid {
        /// Where.
        at: String,
        /// What is wrong.
        reason: String,
    },
    /// A regex that does not compile.
    #[error("{at}: invalid regex {regex:?}: {source}")]
    Regex {
        /// Where.
        at: String,
        /// The regex as configured.
        regex: String,
        /// The regex error.
        #[source]
        source: regex::Error,
    },
    /// A typed config that does not decode as its type URL says.
    #[error("{at}: cannot decode {type_url}: {source}")]
    Decode {
        /// Where.
        at: String,
        /// The `Any`'s type URL.
        type_url: String,
        /// The protobuf error.
        #[source]
        source: prost::DecodeError,
    },
}

/// Where the compiler is: `route configuration "x", virtual host "y"
/// (virtual_hosts[0]), route "z" (routes[1]): field.path[2]`.
#[derive(Clone, Debug)]
pub(crate) struct Cx {
    at: String,
    in_field: bool,
}

impl Cx {
    pub(crate) fn root(config: &str) -> Cx {
        Cx {
            at: format!("route configuration {config:?}"),
            in_field: false,
        }
    }

    /// A named element of a list (virtual host, route), before any field.
    pub(crate) fn element(&self, kind: &str, name: &str, list: &str, i: usize) -> Cx {
        let at = if name.is_empty() {
            format!("{}, {kind} {list}[{i}]", self.at)
        } else {
            format!("{}, {kind} {name:?} ({list}[{i}])", self.at)
        };
        Cx {
            at,
            in_field: false,
        }
    }

    pub(crate) fn field(&self, name: &str) -> Cx {
        let sep = if self.in_field { "." } else { ": " };
        Cx {
            at: format!("{}{sep}{name}", self.at),
            in_field: true,
        }
    }

    pub(crate) fn index(&self, i: usize) -> Cx {
        Cx {
            at: format!("{}[{i}]", self.at),
            in_field: self.in_field,
        }
    }

    pub(crate) fn key(&self, key: &str) -> Cx {
        Cx {
            at: format!("{}[{key:?}]", self.at),
            in_field: self.in_field,
        }
    }

    pub(crate) fn unsupported(&self, what: impl Into<String>) -> RouteError {
        RouteError::Unsupported {
            at: self.at.clone(),
            what: what.into(),
        }
    }

    pub(crate) fn invalid(&self, reason: impl Into<String>) -> RouteError {
        RouteError::Invalid {
            at: self.at.clone(),
            reason: reason.into(),
        }
    }

    pub(crate) fn decode_error(&self, type_url: &str, source: prost::DecodeError) -> RouteError {
        RouteError::Decode {
            at: self.at.clone(),
            type_url: type_url.to_string(),
            source,
        }
    }

    /// `Err(unsupported)` for `field` when `set`.
    pub(crate) fn refuse(&self, field: &str, set: bool) -> Result<(), RouteError> {
        if set {
            Err(self.field(field).unsupported(format!("{field} (set)")))
        } else {
            Ok(())
        }
    }

    /// Compiles a matcher regex (Envoy `safe_regex`, RE2 syntax), anchored:
    /// matchers match whole values. The regex is checked as written first:
    /// wrapping an invalid one (`a)|(b`) could make it valid with another meaning.
    pub(crate) fn full_regex(&self, regex: &str) -> Result<regex::bytes::Regex, RouteError> {
        let err = |source| RouteError::Regex {
            at: self.at.clone(),
            regex: regex.to_string(),
            source,
        };
        regex::bytes::Regex::new(regex).map_err(err)?;
        regex::bytes::Regex::new(&format!("^(?:{regex})$")).map_err(err)
    }

    /// Compiles a rewrite regex (unanchored: every match is replaced).
    pub(crate) fn rewrite_regex(&self, regex: &str) -> Result<regex::Regex, RouteError> {
        regex::Regex::new(regex).map_err(|source| RouteError::Regex {
            at: self.at.clone(),
            regex: regex.to_string(),
            source,
        })
    }

    /// A protobuf duration as a `Duration`; negative or malformed ones are invalid.
    pub(crate) fn duration(&self, d: &protobuf::Duration) -> Result<Duration, RouteError> {
        let secs = u64::try_from(d.seconds);
        let nanos = u32::try_from(d.nanos).ok().filter(|n| *n < 1_000_000_000);
        match (secs, nanos) {
            (Ok(s), Some(n)) => Ok(Duration::new(s, n)),
            _ => Err(self.invalid(format!(
                "duration {}s {}ns is negative or malformed",
                d.seconds, d.nanos
            ))),
        }
    }
}
