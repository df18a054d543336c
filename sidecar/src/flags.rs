//! Envoy response flags: why the proxy answered as it did (access log and
//! the `response_flags` metric label).

use std::fmt;

/// A set of response flags.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct Flags(u16);

macro_rules! flags {
    ($($name:ident = $bit:expr, $code:literal, $doc:literal;)*) => {
        impl Flags {
            $(#[doc = $doc] pub const $name: Flags = Flags(1 << $bit);)*
            const ALL: &'static [(Flags, &'static str)] = &[$((Flags::$name, $code)),*];
        }
    };
}

flags! {
    NO_ROUTE = 0, "NR", "No route or virtual host matched.";
    NO_CLUSTER = 1, "NC", "The route's cluster is unknown.";
    NO_HEALTHY_UPSTREAM = 2, "UH", "No healthy endpoint.";
    UPSTREAM_CONNECT_FAILURE = 3, "UF", "Connecting to the endpoint failed.";
    UPSTREAM_OVERFLOW = 4, "UO", "Circuit breaking (a cluster limit was reached).";
    RETRY_LIMIT = 5, "URX", "Retries exhausted.";
    UPSTREAM_TIMEOUT = 6, "UT", "The upstream did not answer in time.";
    UPSTREAM_RESET = 7, "UC", "The upstream connection ended before the response.";
    DELAY_INJECTED = 8, "DI", "Fault injection delayed the request.";
    FAULT_INJECTED = 9, "FI", "Fault injection aborted the request.";
    RBAC_DENIED = 10, "RBAC", "Authorization denied the request.";
    DOWNSTREAM_RESET = 11, "DC", "The downstream went away.";
    INVALID_REQUEST = 12, "DPE", "The downstream request was malformed.";
    DNS_FAILURE = 13, "DF", "The destination host did not resolve.";
}

impl Flags {
    /// Adds `other`.
    pub fn insert(&mut self, other: Flags) {
        self.0 |= other.0;
    }

    /// Whether every flag of `other` is set.
    pub fn contains(self, other: Flags) -> bool {
        self.0 & other.0 == other.0
    }
}

impl fmt::Display for Flags {
    /// Envoy's form: codes joined by `,`, or `-` when empty.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.0 == 0 {
            return f.write_str("-");
        }
        let mut first = true;
        for (flag, code) in Flags::ALL {
            if self.contains(*flag) {
                if !first {
                    f.write_str(",")?;
                }
                f.write_str(code)?;
                first = false;
            }
        }
        Ok(())
    }
}
