//! Durations as Istio writes them (`10s`, `1.5s`, `100ms`, `1m30s`, `2h`).
//!
//! Istio's CRDs accept Go-style duration strings; we parse them once, at
//! load time, so a bad value is reported with its field path instead of
//! surfacing later as a proxy misconfiguration.

use std::borrow::Cow;
use std::fmt;
use std::str::FromStr;

use schemars::{JsonSchema, Schema, SchemaGenerator, json_schema};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// A non-negative duration parsed from a Go-style duration string.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Duration(pub std::time::Duration);

/// Why a duration string was rejected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid duration {input:?}: {reason} (examples: 10s, 1.5s, 100ms, 1m30s)")]
pub struct DurationError {
    input: String,
    reason: &'static str,
}

impl Duration {
    /// The wrapped standard duration.
    pub fn get(self) -> std::time::Duration {
        self.0
    }

    /// A duration of `ms` milliseconds.
    pub fn from_millis(ms: u64) -> Self {
        Self(std::time::Duration::from_millis(ms))
    }
}

impl FromStr for Duration {
    type Err = DurationError;

    fn from_str(input: &str) -> Result<Self, Self::Err> {
        let err = |reason| DurationError {
            input: input.to_string(),
            reason,
        };
        let s = input.trim();
        if s.is_empty() {
            return Err(err("empty"));
        }
        if s == "0" {
            return Ok(Self::default());
        }
        if s.starts_with('-') {
            return Err(err("negative durations are not allowed"));
        }
        let mut total_nanos: u128 = 0;
        let mut rest = s;
        while !rest.is_empty() {
            let num_len = rest
                .find(|c: char| !(c.is_ascii_digit() || c == '.'))
                .ok_or_else(|| err("missing unit (use ns, us, ms, s, m or h)"))?;
            if num_len == 0 {
                return Err(err("expected a number"));
            }
            let (num, after) = rest.split_at(num_len);
            let unit_len = after
                .find(|c: char| c.is_ascii_digit() || c == '.')
                .unwrap_or(after.len());
            let (unit, next) = after.split_at(unit_len);
            let unit_nanos: u128 = match unit {
                "ns" => 1,
                "us" | "µs" => 1_000,
                "ms" => 1_000_000,
                "s" => 1_000_000_000,
                "m" => 60_000_000_000,
                "h" => 3_600_000_000_000,
                _ => return Err(err("unknown unit (use ns, us, ms, s, m or h)")),
            };
            total_nanos = total_nanos
                .checked_add(scaled(num, unit_nanos).ok_or_else(|| err("bad number"))?)
                .ok_or_else(|| err("too large"))?;
            rest = next;
        }
        let secs = u64::try_from(total_nanos / 1_000_000_000).map_err(|_| err("too large"))?;
        // The remainder of a division by 1e9 always fits in u32.
        let nanos = (total_nanos % 1_000_000_000) as u32;
        Ok(Self(std::time::Duration::new(secs, nanos)))
    }
}

/// `num` (decimal, optional fraction) times `unit_nanos`, in nanoseconds.
fn scaled(num: &str, unit_nanos: u128) -> Option<u128> {
    let (int, frac) = num.split_once('.').unwrap_or((num, ""));
    if int.is_empty() && frac.is_empty() || frac.contains('.') || int.len() > 20 {
        return None;
    }
    let int: u128 = if int.is_empty() { 0 } else { int.parse().ok()? };
    let mut value = int.checked_mul(unit_nanos)?;
    let mut scale = unit_nanos;
    for digit in frac.bytes().take(18) {
        scale /= 10;
        value = value.checked_add(u128::from(digit - b'0') * scale)?;
    }
    Some(value)
}

impl fmt::Display for Duration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let d = self.0;
        if d.subsec_nanos() == 0 {
            write!(f, "{}s", d.as_secs())
        } else if d.subsec_nanos().is_multiple_of(1_000_000) {
            write!(f, "{}ms", d.as_millis())
        } else {
            write!(f, "{}ns", d.as_nanos())
        }
    }
}

impl Serialize for Duration {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Duration {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

impl JsonSchema for Duration {
    fn schema_name() -> Cow<'static, str> {
        "Duration".into()
    }

    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        json_schema!({ "type": "string", "description": "A duration such as 10s, 1.5s or 100ms." })
    }

    fn inline_schema() -> bool {
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(s: &str) -> u128 {
        s.parse::<Duration>().unwrap().0.as_millis()
    }

    #[test]
    fn parses_istio_forms() {
        assert_eq!(ms("10s"), 10_000);
        assert_eq!(ms("1.5s"), 1_500);
        assert_eq!(ms("100ms"), 100);
        assert_eq!(ms("1m30s"), 90_000);
        assert_eq!(ms("2h"), 7_200_000);
        assert_eq!(ms("0"), 0);
        assert_eq!(ms(".5s"), 500);
        assert_eq!("250us".parse::<Duration>().unwrap().0.as_micros(), 250);
    }

    #[test]
    fn rejects_garbage() {
        for bad in [
            "",
            "10",
            "10 seconds",
            "-1s",
            "1.2.3s",
            "s",
            "1d",
            "10sx",
            ".s",
            "99999999999999999999999h",
        ] {
            assert!(
                bad.parse::<Duration>().is_err(),
                "{bad:?} should be rejected"
            );
        }
    }

    #[test]
    fn display_round_trips() {
        for s in ["10s", "1500ms", "7ns"] {
            let d: Duration = s.parse().unwrap();
            assert_eq!(d.to_string().parse::<Duration>().unwrap(), d);
        }
    }
}
