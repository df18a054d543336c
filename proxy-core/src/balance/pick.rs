//! What a request brings to a pick and how it reports back.

use std::fmt;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;

use super::Shared;
use super::endpoint::{Endpoint, EndpointInfo};

/// What a request brings to [`Balancer::pick`](super::Balancer::pick).
#[derive(Clone, Copy, Debug, Default)]
pub struct PickContext<'a> {
    /// Consistent-hash key of the request (the route's `hash_policy`);
    /// used by RING_HASH clusters, ignored by the others.
    pub hash: Option<u64>,
    /// Addresses this request already tried (retry host predicate, connect
    /// retries): avoided whenever another host that takes load exists (as
    /// in Envoy, a retry does not move to a priority that takes no load).
    pub exclude: &'a [SocketAddr],
    /// The connection's original destination: the only choice, and required,
    /// for ORIGINAL_DST (passthrough) clusters; ignored by others.
    pub original_dst: Option<SocketAddr>,
}

/// The chosen endpoint of one request. Its active-request count drops when
/// the pick is reported or dropped (dropping unreported = [`Outcome::Cancelled`]).
#[must_use = "a pick counts as an active request until reported or dropped"]
pub struct Pick {
    pub(super) endpoint: Arc<Endpoint>,
    pub(super) shared: Arc<Shared>,
    pub(super) reported: bool,
}

impl Pick {
    /// Where to connect.
    pub fn address(&self) -> SocketAddr {
        self.endpoint.info.address
    }

    /// The endpoint's locality, hostname, metadata, weight and health.
    pub fn endpoint(&self) -> &EndpointInfo {
        &self.endpoint.info
    }

    /// Ends the request and feeds its outcome to outlier detection.
    pub fn report(mut self, outcome: Outcome) {
        self.reported = true;
        self.endpoint.state.active.fetch_sub(1, Relaxed);
        self.shared.record(&self.endpoint, outcome);
    }
}

impl fmt::Debug for Pick {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Pick")
            .field("address", &self.endpoint.info.address)
            .field("reported", &self.reported)
            .finish_non_exhaustive()
    }
}

impl Drop for Pick {
    fn drop(&mut self) {
        if !self.reported {
            self.endpoint.state.active.fetch_sub(1, Relaxed);
        }
    }
}

/// How a request to a picked endpoint ended, for outlier detection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// The request succeeded (any non-5xx response, or a TCP session that
    /// worked): resets every consecutive-error counter.
    Success,
    /// An HTTP response: 5xx counts as an error, 502/503/504 also as gateway
    /// errors; anything else as success.
    HttpStatus(u16),
    /// The connection could not be established.
    ConnectFailure,
    /// The upstream did not answer in time.
    Timeout,
    /// The upstream reset the connection or stream.
    Reset,
    /// The caller gave up: counts neither as success nor as failure.
    Cancelled,
    /// The connection was established; resets the local-origin counter when
    /// `split_external_local_origin_errors` is set, otherwise ignored (the
    /// request's own outcome follows).
    LocalOriginSuccess,
}
