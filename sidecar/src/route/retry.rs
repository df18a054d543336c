//! Retry policies: Envoy's `retry_on` conditions, counts, timeouts and back-off.

use std::time::Duration;

use envoy_types::pb::envoy::config::route::v3::{
    RetryPolicy as PbRetryPolicy, retry_policy::RetryBackOff,
    retry_policy::retry_host_predicate::ConfigType as PredicateConfig,
};
use envoy_types::pb::envoy::extensions::retry::host::previous_hosts::v3::PreviousHostsPredicate;
use http::StatusCode;
use prost::Name;

use super::error::{Cx, RouteError};

/// Conditions from Envoy's `retry_on` (`x-envoy-retry-on` and `x-envoy-retry-grpc-on` tokens).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RetryOn {
    /// `5xx`: any 5xx response, and resets, connect failures and timeouts.
    pub five_xx: bool,
    /// `gateway-error`: 502, 503, 504, and resets, connect failures and timeouts.
    pub gateway_error: bool,
    /// `reset`: the upstream reset or did not answer.
    pub reset: bool,
    /// `reset-before-request`: a reset before the request was sent.
    pub reset_before_request: bool,
    /// `connect-failure`.
    pub connect_failure: bool,
    /// `retriable-4xx`: 409.
    pub retriable_4xx: bool,
    /// `refused-stream`: HTTP/2 REFUSED_STREAM.
    pub refused_stream: bool,
    /// `retriable-status-codes`: the policy's status codes.
    pub retriable_status_codes: bool,
    /// `http3-post-connect-failure`: only about HTTP/3 upstreams, which the
    /// sidecar never uses, so it never applies.
    pub http3_post_connect_failure: bool,
    /// gRPC `cancelled` (1).
    pub cancelled: bool,
    /// gRPC `deadline-exceeded` (4).
    pub deadline_exceeded: bool,
    /// gRPC `internal` (13).
    pub internal: bool,
    /// gRPC `resource-exhausted` (8).
    pub resource_exhausted: bool,
    /// gRPC `unavailable` (14).
    pub unavailable: bool,
}

/// A `retry_on` token the sidecar does not know or implement.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("unknown or unsupported retry condition {0:?}")]
pub struct UnknownRetryOn(pub String);

impl std::str::FromStr for RetryOn {
    type Err = UnknownRetryOn;

    /// Parses a comma-separated list; tokens are trimmed, empty ones skipped.
    /// `envoy-ratelimited` and `retriable-headers` need response headers and
    /// configuration the sidecar does not implement, so they are refused.
    fn from_str(s: &str) -> Result<RetryOn, UnknownRetryOn> {
        let mut on = RetryOn::default();
        for token in s.split(',').map(str::trim).filter(|t| !t.is_empty()) {
            let flag = match token {
                "5xx" => &mut on.five_xx,
                "gateway-error" => &mut on.gateway_error,
                "reset" => &mut on.reset,
                "reset-before-request" => &mut on.reset_before_request,
                "connect-failure" => &mut on.connect_failure,
                "retriable-4xx" => &mut on.retriable_4xx,
                "refused-stream" => &mut on.refused_stream,
                "retriable-status-codes" => &mut on.retriable_status_codes,
                "http3-post-connect-failure" => &mut on.http3_post_connect_failure,
                "cancelled" => &mut on.cancelled,
                "deadline-exceeded" => &mut on.deadline_exceeded,
                "internal" => &mut on.internal,
                "resource-exhausted" => &mut on.resource_exhausted,
                "unavailable" => &mut on.unavailable,
                other => return Err(UnknownRetryOn(other.to_string())),
            };
            *flag = true;
        }
        Ok(on)
    }
}

/// Exponential back-off between retries (Envoy: fully jittered).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BackOff {
    /// Base interval; Envoy's default is 25 ms.
    pub base: Duration,
    /// Cap; Envoy's default is 10 × base.
    pub max: Duration,
}

/// A compiled `RetryPolicy`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Retries after the first attempt (Envoy's default is 1).
    pub num_retries: u32,
    /// Timeout of each attempt; `None` is the route timeout only.
    pub per_try_timeout: Option<Duration>,
    /// When to retry.
    pub retry_on: RetryOn,
    /// Statuses retried with `retriable-status-codes`.
    pub retriable_status_codes: Vec<u16>,
    /// Avoid hosts already tried (`envoy.retry_host_predicates.previous_hosts`).
    pub retry_host_predicate_previous_hosts: bool,
    /// Host selection attempts per retry when a host predicate rejects a host (≥ 1).
    pub host_selection_max_attempts: u32,
    /// Back-off between attempts.
    pub back_off: BackOff,
}

impl RetryPolicy {
    /// Whether a response with `status` (and `grpc-status`, if the response
    /// carries one in its headers) is retried.
    pub fn retry_status(&self, status: StatusCode, grpc_status: Option<i32>) -> bool {
        let on = &self.retry_on;
        let code = status.as_u16();
        if (on.five_xx && status.is_server_error())
            || (on.gateway_error && matches!(code, 502..=504))
            || (on.retriable_4xx && code == 409)
            || (on.retriable_status_codes && self.retriable_status_codes.contains(&code))
        {
            return true;
        }
        matches!(
            grpc_status,
            Some(1) if on.cancelled
        ) || matches!(grpc_status, Some(4) if on.deadline_exceeded)
            || matches!(grpc_status, Some(8) if on.resource_exhausted)
            || matches!(grpc_status, Some(13) if on.internal)
            || matches!(grpc_status, Some(14) if on.unavailable)
    }

    /// Whether a failure to connect upstream is retried.
    pub fn retry_connect_failure(&self) -> bool {
        self.retry_reset() || self.retry_on.connect_failure
    }

    /// Whether an upstream reset (or a response that never came) is retried.
    pub fn retry_reset(&self) -> bool {
        let on = &self.retry_on;
        on.five_xx || on.gateway_error || on.reset
    }

    /// Whether a reset before the request was fully sent is retried.
    pub fn retry_reset_before_request(&self) -> bool {
        self.retry_reset() || self.retry_on.reset_before_request
    }

    /// Whether an HTTP/2 REFUSED_STREAM is retried.
    pub fn retry_refused_stream(&self) -> bool {
        self.retry_reset() || self.retry_on.refused_stream
    }

    /// Whether an attempt that hit `per_try_timeout` is retried.
    pub fn retry_per_try_timeout(&self) -> bool {
        self.retry_reset()
    }

    /// Compiles `retry_policy`. Refused: `per_try_idle_timeout`,
    /// `retry_priority`, host predicates other than previous hosts,
    /// `retry_options_predicates`, `rate_limited_retry_back_off`,
    /// `retriable_headers`, `retriable_request_headers`, `refresh_cluster_on_retry`.
    pub(crate) fn compile(p: &PbRetryPolicy, cx: &Cx) -> Result<RetryPolicy, RouteError> {
        let PbRetryPolicy {
            retry_on,
            num_retries,
            per_try_timeout,
            per_try_idle_timeout,
            retry_priority,
            retry_host_predicate,
            retry_options_predicates,
            host_selection_retry_max_attempts,
            retriable_status_codes,
            retry_back_off,
            rate_limited_retry_back_off,
            retriable_headers,
            retriable_request_headers,
            refresh_cluster_on_retry,
        } = p;
        cx.refuse("per_try_idle_timeout", per_try_idle_timeout.is_some())?;
        cx.refuse("retry_priority", retry_priority.is_some())?;
        cx.refuse(
            "retry_options_predicates",
            !retry_options_predicates.is_empty(),
        )?;
        cx.refuse(
            "rate_limited_retry_back_off",
            rate_limited_retry_back_off.is_some(),
        )?;
        cx.refuse("retriable_headers", !retriable_headers.is_empty())?;
        cx.refuse(
            "retriable_request_headers",
            !retriable_request_headers.is_empty(),
        )?;
        cx.refuse("refresh_cluster_on_retry", *refresh_cluster_on_retry)?;
        let on: RetryOn = retry_on
            .parse()
            .map_err(|e: UnknownRetryOn| cx.field("retry_on").unsupported(e.to_string()))?;
        let mut previous_hosts = false;
        for (i, pred) in retry_host_predicate.iter().enumerate() {
            let cx = cx.field("retry_host_predicate").index(i);
            let Some(PredicateConfig::TypedConfig(any)) = &pred.config_type else {
                return Err(cx.invalid("no typed_config"));
            };
            if any.type_url != PreviousHostsPredicate::type_url() {
                let what = format!("retry host predicate {:?} ({})", pred.name, any.type_url);
                return Err(cx.unsupported(what));
            }
            previous_hosts = true;
        }
        let codes = retriable_status_codes
            .iter()
            .enumerate()
            .map(|(i, c)| match u16::try_from(*c) {
                Ok(c) if (100..=599).contains(&c) => Ok(c),
                _ => Err(cx
                    .field("retriable_status_codes")
                    .index(i)
                    .invalid(format!("{c} is not an HTTP status"))),
            })
            .collect::<Result<Vec<u16>, _>>()?;
        Ok(RetryPolicy {
            num_retries: num_retries.as_ref().map_or(1, |n| n.value),
            per_try_timeout: per_try_timeout
                .as_ref()
                .map(|d| cx.field("per_try_timeout").duration(d))
                .transpose()?
                .filter(|d| !d.is_zero()),
            retry_on: on,
            retriable_status_codes: codes,
            retry_host_predicate_previous_hosts: previous_hosts,
            host_selection_max_attempts: u32::try_from((*host_selection_retry_max_attempts).max(1))
                .unwrap_or(u32::MAX),
            back_off: back_off(retry_back_off.as_ref(), &cx.field("retry_back_off"))?,
        })
    }
}

fn back_off(b: Option<&RetryBackOff>, cx: &Cx) -> Result<BackOff, RouteError> {
    let default_base = Duration::from_millis(25);
    let Some(RetryBackOff {
        base_interval,
        max_interval,
    }) = b
    else {
        return Ok(BackOff {
            base: default_base,
            max: default_base * 10,
        });
    };
    let base = match base_interval {
        Some(d) => cx.field("base_interval").duration(d)?,
        None => return Err(cx.field("base_interval").invalid("missing")),
    };
    if base.is_zero() {
        return Err(cx.field("base_interval").invalid("must be positive"));
    }
    let max = match max_interval {
        Some(d) => cx.field("max_interval").duration(d)?,
        None => base * 10,
    };
    if max < base {
        return Err(cx
            .field("max_interval")
            .invalid("must not be below base_interval"));
    }
    Ok(BackOff { base, max })
}
