//! Passive health checking: per-address consecutive-error counters fed by
//! each pick's [`Outcome`], and the ejection arithmetic. The decision to
//! eject (enforcement, `max_ejection_percent`) is taken under the balancer's
//! writer lock, which then rebuilds the tables.

use std::sync::atomic::Ordering::Relaxed;
use std::sync::atomic::{AtomicU32, AtomicU64};
use std::time::Duration;

use envoy_types::pb::envoy::config::cluster::v3::OutlierDetection;
use envoy_types::pb::google::protobuf::{Duration as PbDuration, UInt32Value};

use super::Outcome;
use super::config::{BalanceError, duration};
use super::pool::Rng;

/// Live state of one address, kept across updates while the address remains.
#[derive(Debug, Default)]
pub(crate) struct HostState {
    pub(crate) active: AtomicU64,
    consecutive_5xx: AtomicU32,
    consecutive_gateway: AtomicU32,
    consecutive_local: AtomicU32,
    /// Clock time (ns) the current or last ejection ends; 0 before the first.
    ejected_until: AtomicU64,
    /// Ejection-time multiplier, before decay since `ejected_until`.
    multiplier: AtomicU32,
    ejections: AtomicU64,
}

impl HostState {
    pub(crate) fn is_ejected(&self, now: u64) -> bool {
        now < self.ejected_until.load(Relaxed)
    }

    /// Nanoseconds of ejection left at `now`.
    pub(crate) fn ejected_for(&self, now: u64) -> Option<u64> {
        let until = self.ejected_until.load(Relaxed);
        (now < until).then(|| until - now)
    }

    pub(crate) fn ejected_until(&self) -> u64 {
        self.ejected_until.load(Relaxed)
    }

    pub(crate) fn ejections(&self) -> u64 {
        self.ejections.load(Relaxed)
    }

    /// (5xx, gateway, local origin) consecutive errors.
    pub(crate) fn counters(&self) -> (u32, u32, u32) {
        (
            self.consecutive_5xx.load(Relaxed),
            self.consecutive_gateway.load(Relaxed),
            self.consecutive_local.load(Relaxed),
        )
    }

    fn reset_external(&self) {
        self.consecutive_5xx.store(0, Relaxed);
        self.consecutive_gateway.store(0, Relaxed);
    }
}

/// Which counter reached its threshold.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Trigger {
    Gateway,
    Consecutive5xx,
    LocalOrigin,
}

/// `OutlierDetection` with Envoy's defaults filled in; times in nanoseconds.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct OutlierConfig {
    consecutive_5xx: u32,
    enforcing_5xx: u32,
    consecutive_gateway: u32,
    enforcing_gateway: u32,
    split_local: bool,
    consecutive_local: u32,
    enforcing_local: u32,
    interval: u64,
    base: u64,
    max: u64,
    jitter: u64,
    max_ejection_percent: u32,
    always_eject_one: bool,
}

pub(crate) fn parse(cluster: &str, od: &OutlierDetection) -> Result<OutlierConfig, BalanceError> {
    let field = |f: &str| format!("outlier_detection.{f}");
    let err = |f: &str, reason: &str| BalanceError::new(cluster, field(f), reason);
    let percent = |f: &str, v: Option<UInt32Value>, default: u32| match v {
        None => Ok(default),
        Some(v) if v.value <= 100 => Ok(v.value),
        Some(v) => Err(err(f, &format!("{} is not a percentage", v.value))),
    };
    let time = |f: &str, v: Option<&PbDuration>, default: Duration, zero_ok: bool| match v {
        None => Ok(nanos(default)),
        Some(d) => duration(d)
            .filter(|d| zero_ok || !d.is_zero())
            .map(nanos)
            .ok_or_else(|| err(f, "must be a positive duration")),
    };
    // Statistical ejection is not implemented: unset counts as disabled.
    for (f, v) in [
        ("enforcing_success_rate", od.enforcing_success_rate),
        (
            "enforcing_local_origin_success_rate",
            od.enforcing_local_origin_success_rate,
        ),
        (
            "enforcing_failure_percentage",
            od.enforcing_failure_percentage,
        ),
        (
            "enforcing_failure_percentage_local_origin",
            od.enforcing_failure_percentage_local_origin,
        ),
    ] {
        if v.is_some_and(|v| v.value > 0) {
            return Err(err(
                f,
                "success-rate and failure-percentage ejection are not supported; set it to 0",
            ));
        }
    }
    if !od.monitors.is_empty() {
        return Err(err(
            "monitors",
            "outlier detection monitors are not supported",
        ));
    }
    if od.detect_degraded_hosts.is_some_and(|v| v.value) {
        return Err(err("detect_degraded_hosts", "is not supported"));
    }
    Ok(OutlierConfig {
        consecutive_5xx: od.consecutive_5xx.map_or(5, |v| v.value),
        enforcing_5xx: percent(
            "enforcing_consecutive_5xx",
            od.enforcing_consecutive_5xx,
            100,
        )?,
        consecutive_gateway: od.consecutive_gateway_failure.map_or(5, |v| v.value),
        enforcing_gateway: percent(
            "enforcing_consecutive_gateway_failure",
            od.enforcing_consecutive_gateway_failure,
            0,
        )?,
        split_local: od.split_external_local_origin_errors,
        consecutive_local: od.consecutive_local_origin_failure.map_or(5, |v| v.value),
        enforcing_local: percent(
            "enforcing_consecutive_local_origin_failure",
            od.enforcing_consecutive_local_origin_failure,
            100,
        )?,
        interval: time(
            "interval",
            od.interval.as_ref(),
            Duration::from_secs(10),
            false,
        )?,
        base: time(
            "base_ejection_time",
            od.base_ejection_time.as_ref(),
            Duration::from_secs(30),
            false,
        )?,
        max: time(
            "max_ejection_time",
            od.max_ejection_time.as_ref(),
            Duration::from_secs(300),
            false,
        )?,
        jitter: time(
            "max_ejection_time_jitter",
            od.max_ejection_time_jitter.as_ref(),
            Duration::ZERO,
            true,
        )?,
        max_ejection_percent: percent("max_ejection_percent", od.max_ejection_percent, 10)?,
        always_eject_one: od.always_eject_one_host.is_some_and(|v| v.value),
    })
}

fn nanos(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

impl OutlierConfig {
    /// Counts one outcome; returns the counters that reached their threshold
    /// (each restarts from 0 when it does).
    pub(crate) fn record(&self, s: &HostState, outcome: Outcome) -> [Option<Trigger>; 2] {
        match outcome {
            Outcome::Cancelled => [None, None],
            Outcome::Success => {
                s.reset_external();
                s.consecutive_local.store(0, Relaxed);
                [None, None]
            }
            Outcome::HttpStatus(code) if (500..600).contains(&code) => {
                self.external_error(s, matches!(code, 502..=504))
            }
            Outcome::HttpStatus(_) => {
                s.reset_external();
                [None, None]
            }
            Outcome::LocalOriginSuccess => {
                if self.split_local {
                    s.consecutive_local.store(0, Relaxed);
                }
                [None, None]
            }
            Outcome::ConnectFailure | Outcome::Timeout | Outcome::Reset => {
                if self.split_local {
                    let hit = bump(&s.consecutive_local, self.consecutive_local);
                    [hit.then_some(Trigger::LocalOrigin), None]
                } else {
                    // Envoy maps them to 503/504 when not split.
                    self.external_error(s, true)
                }
            }
        }
    }

    fn external_error(&self, s: &HostState, gateway: bool) -> [Option<Trigger>; 2] {
        let gateway_hit = if gateway {
            bump(&s.consecutive_gateway, self.consecutive_gateway)
        } else {
            s.consecutive_gateway.store(0, Relaxed);
            false
        };
        let hit_5xx = bump(&s.consecutive_5xx, self.consecutive_5xx);
        [
            gateway_hit.then_some(Trigger::Gateway),
            hit_5xx.then_some(Trigger::Consecutive5xx),
        ]
    }

    /// Percent chance that `trigger` ejects.
    pub(crate) fn enforcing(&self, trigger: Trigger) -> u32 {
        match trigger {
            Trigger::Gateway => self.enforcing_gateway,
            Trigger::Consecutive5xx => self.enforcing_5xx,
            Trigger::LocalOrigin => self.enforcing_local,
        }
    }

    /// Whether one more of `total` addresses may be ejected while `ejected`
    /// are: below `max_ejection_percent` before this ejection, so a first
    /// host is always ejectable unless the percentage is 0.
    pub(crate) fn may_eject(&self, ejected: usize, total: usize) -> bool {
        let (ejected, total) = (ejected as u64, total as u64);
        (self.always_eject_one && ejected == 0)
            || ejected * 100 < u64::from(self.max_ejection_percent) * total
    }

    /// Ejects `s` from `now` for `base × multiplier` (capped), the multiplier
    /// first losing one per `interval` spent un-ejected since the last ejection.
    pub(crate) fn eject(&self, s: &HostState, now: u64, rng: &Rng) {
        let mut multiplier = self.multiplier(s, now);
        if u64::from(multiplier).saturating_mul(self.base) < self.max.saturating_add(self.base) {
            multiplier += 1;
        }
        let cap = self.base.max(self.max);
        let mut time = u64::from(multiplier).saturating_mul(self.base).min(cap);
        if self.jitter > 0 {
            time = time.saturating_add(rng.below(self.jitter.saturating_add(1)));
        }
        s.multiplier.store(multiplier, Relaxed);
        s.ejected_until.store(now.saturating_add(time), Relaxed);
        s.ejections.fetch_add(1, Relaxed);
    }

    /// The multiplier at `now`, after its decay.
    pub(crate) fn multiplier(&self, s: &HostState, now: u64) -> u32 {
        let stored = s.multiplier.load(Relaxed);
        let until = s.ejected_until.load(Relaxed);
        let healthy_intervals = now.saturating_sub(until) / self.interval;
        stored.saturating_sub(u32::try_from(healthy_intervals).unwrap_or(u32::MAX))
    }
}

/// Counts one more error; true, and restarts the count, when it reaches
/// `threshold` (0 disables).
fn bump(counter: &AtomicU32, threshold: u32) -> bool {
    let n = counter.fetch_add(1, Relaxed).saturating_add(1);
    if threshold > 0 && n >= threshold {
        counter.store(0, Relaxed);
        true
    } else {
        false
    }
}
