//! Per-route policies: fault injection, mirroring, and their percentages.

use std::time::Duration;

use envoy_types::pb::envoy::config::core::v3::RuntimeFractionalPercent;
use envoy_types::pb::envoy::config::route::v3::route_action::RequestMirrorPolicy;
use envoy_types::pb::envoy::extensions::filters::common::fault::v3::{
    FaultDelay, fault_delay::FaultDelaySecifier,
};
use envoy_types::pb::envoy::extensions::filters::http::fault::v3::{
    FaultAbort as PbFaultAbort, HttpFault, fault_abort::ErrorType,
};
use envoy_types::pb::envoy::r#type::v3::{FractionalPercent, fractional_percent::DenominatorType};
use http::StatusCode;

use super::error::{Cx, RouteError};

/// A probability as Envoy's `FractionalPercent` (numerator ≤ denominator).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Percent {
    numerator: u32,
    denominator: u32,
}

impl Percent {
    /// Always.
    pub const ALWAYS: Percent = Percent {
        numerator: 1,
        denominator: 1,
    };
    /// Never.
    pub const NEVER: Percent = Percent {
        numerator: 0,
        denominator: 1,
    };

    /// Whether a request with uniformly random `r` is in the fraction.
    /// Exact: `r` is mapped onto `0..denominator` by multiply-and-shift.
    pub fn hit(&self, r: u64) -> bool {
        let bucket = (u128::from(r) * u128::from(self.denominator)) >> 64;
        bucket < u128::from(self.numerator)
    }

    /// The fraction as a percentage, 0 to 100.
    pub fn as_percent(&self) -> f64 {
        f64::from(self.numerator) * 100.0 / f64::from(self.denominator)
    }

    /// Compiles a `FractionalPercent`; a numerator above the denominator means
    /// always (as in Envoy).
    pub(crate) fn compile(p: &FractionalPercent, cx: &Cx) -> Result<Percent, RouteError> {
        let denominator = match DenominatorType::try_from(p.denominator) {
            Ok(DenominatorType::Hundred) => 100,
            Ok(DenominatorType::TenThousand) => 10_000,
            Ok(DenominatorType::Million) => 1_000_000,
            Err(_) => {
                let reason = format!("unknown denominator {}", p.denominator);
                return Err(cx.field("denominator").invalid(reason));
            }
        };
        Ok(Percent {
            numerator: p.numerator.min(denominator),
            denominator,
        })
    }

    /// `runtime_fraction.default_value`; the runtime key is skipped (the
    /// sidecar has no runtime overrides, so Envoy would use the default too).
    pub(crate) fn runtime(p: &RuntimeFractionalPercent, cx: &Cx) -> Result<Percent, RouteError> {
        let RuntimeFractionalPercent {
            default_value,
            runtime_key: _,
        } = p;
        match default_value {
            Some(v) => Percent::compile(v, &cx.field("default_value")),
            None => Err(cx.field("default_value").invalid("missing")),
        }
    }
}

// ---------------------------------------------------------------------------
// Fault injection.

/// How an injected fault aborts a request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FaultAbort {
    /// Answer with this HTTP status.
    Http(StatusCode),
    /// Answer with this gRPC status (HTTP 200, `grpc-status`).
    Grpc(u32),
}

/// Per-route fault injection (Envoy `envoy.filters.http.fault` per-filter config).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Fault {
    /// Delay this long, for this fraction of requests.
    pub delay: Option<(Duration, Percent)>,
    /// Abort so, for this fraction of requests.
    pub abort: Option<(FaultAbort, Percent)>,
}

impl Fault {
    /// Compiles an `HTTPFault`. A missing `percentage` is 0% (Envoy's
    /// default). Skipped: the `*_runtime` keys (no runtime overrides),
    /// `disable_downstream_cluster_stats` and `filter_metadata` (stats and
    /// logs). Refused: header-controlled faults, `upstream_cluster`,
    /// `headers`, `downstream_nodes`, `max_active_faults`,
    /// `response_rate_limit`, `response_body`.
    pub(crate) fn compile(f: &HttpFault, cx: &Cx) -> Result<Fault, RouteError> {
        let HttpFault {
            delay,
            abort,
            upstream_cluster,
            headers,
            downstream_nodes,
            max_active_faults,
            response_rate_limit,
            delay_percent_runtime: _,
            abort_percent_runtime: _,
            delay_duration_runtime: _,
            abort_http_status_runtime: _,
            max_active_faults_runtime: _,
            response_rate_limit_percent_runtime: _,
            abort_grpc_status_runtime: _,
            disable_downstream_cluster_stats: _,
            filter_metadata: _,
        } = f;
        cx.refuse("upstream_cluster", !upstream_cluster.is_empty())?;
        cx.refuse("headers", !headers.is_empty())?;
        cx.refuse("downstream_nodes", !downstream_nodes.is_empty())?;
        cx.refuse("max_active_faults", max_active_faults.is_some())?;
        cx.refuse("response_rate_limit", response_rate_limit.is_some())?;
        Ok(Fault {
            delay: delay
                .as_ref()
                .map(|d| fault_delay(d, &cx.field("delay")))
                .transpose()?,
            abort: abort
                .as_ref()
                .map(|a| fault_abort(a, &cx.field("abort")))
                .transpose()?,
        })
    }
}

fn percentage(p: Option<&FractionalPercent>, cx: &Cx) -> Result<Percent, RouteError> {
    p.map_or(Ok(Percent::NEVER), |p| {
        Percent::compile(p, &cx.field("percentage"))
    })
}

fn fault_delay(d: &FaultDelay, cx: &Cx) -> Result<(Duration, Percent), RouteError> {
    let FaultDelay {
        percentage: pct,
        fault_delay_secifier,
    } = d;
    let delay = match fault_delay_secifier {
        Some(FaultDelaySecifier::FixedDelay(d)) => cx.field("fixed_delay").duration(d)?,
        Some(FaultDelaySecifier::HeaderDelay(_)) => {
            return Err(cx
                .field("header_delay")
                .unsupported("a header-controlled delay"));
        }
        None => return Err(cx.invalid("no fixed_delay")),
    };
    Ok((delay, percentage(pct.as_ref(), cx)?))
}

fn fault_abort(a: &PbFaultAbort, cx: &Cx) -> Result<(FaultAbort, Percent), RouteError> {
    let PbFaultAbort {
        percentage: pct,
        response_body,
        error_type,
    } = a;
    cx.refuse("response_body", !response_body.is_empty())?;
    let abort = match error_type {
        Some(ErrorType::HttpStatus(s)) => {
            match u16::try_from(*s).ok().filter(|s| (200..600).contains(s)) {
                Some(s) => FaultAbort::Http(
                    StatusCode::from_u16(s)
                        .map_err(|_| cx.field("http_status").invalid("bad status"))?,
                ),
                None => {
                    return Err(cx
                        .field("http_status")
                        .invalid(format!("{s} is not in [200, 600)")));
                }
            }
        }
        Some(ErrorType::GrpcStatus(g)) => FaultAbort::Grpc(*g),
        Some(ErrorType::HeaderAbort(_)) => {
            return Err(cx
                .field("header_abort")
                .unsupported("a header-controlled abort"));
        }
        None => return Err(cx.invalid("no http_status or grpc_status")),
    };
    Ok((abort, percentage(pct.as_ref(), cx)?))
}

// ---------------------------------------------------------------------------
// Mirroring.

/// A shadow copy of requests to another cluster (fire and forget).
#[derive(Clone, Debug, PartialEq)]
pub struct Mirror {
    /// Cluster to mirror to.
    pub cluster: String,
    /// Percentage of requests mirrored, 0 to 100.
    pub percent: f64,
    /// Append `-shadow` to the mirrored request's authority (Envoy's default).
    pub shadow_host_suffix: bool,
    fraction: Percent,
}

impl Mirror {
    /// Whether a request with uniformly random `r` is mirrored.
    pub fn sampled(&self, r: u64) -> bool {
        self.fraction.hit(r)
    }

    /// Compiles a `RequestMirrorPolicy`. Skipped: `trace_sampled` (no
    /// tracing in the sidecar). Refused: `cluster_header`,
    /// `request_headers_mutations`, `host_rewrite_literal`.
    pub(crate) fn compile(m: &RequestMirrorPolicy, cx: &Cx) -> Result<Mirror, RouteError> {
        let RequestMirrorPolicy {
            cluster,
            cluster_header,
            runtime_fraction,
            trace_sampled: _,
            disable_shadow_host_suffix_append,
            request_headers_mutations,
            host_rewrite_literal,
        } = m;
        cx.refuse("cluster_header", !cluster_header.is_empty())?;
        cx.refuse(
            "request_headers_mutations",
            !request_headers_mutations.is_empty(),
        )?;
        cx.refuse("host_rewrite_literal", !host_rewrite_literal.is_empty())?;
        if cluster.is_empty() {
            return Err(cx.field("cluster").invalid("must not be empty"));
        }
        let fraction = match runtime_fraction {
            Some(f) => Percent::runtime(f, &cx.field("runtime_fraction"))?,
            None => Percent::ALWAYS,
        };
        Ok(Mirror {
            cluster: cluster.clone(),
            percent: fraction.as_percent(),
            shadow_host_suffix: !disable_shadow_host_suffix_append,
            fraction,
        })
    }
}
