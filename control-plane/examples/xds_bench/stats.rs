//! Process figures from `/proc` and percentiles.

use std::time::Duration;

/// Memory and CPU of one process at one moment.
#[derive(Clone, Copy, Debug, Default)]
pub struct ProcStats {
    /// Resident set size (`VmRSS`), bytes.
    pub rss: u64,
    /// Peak resident set size so far (`VmHWM`), bytes.
    pub hwm: u64,
    /// User + system CPU time so far.
    pub cpu: Duration,
}

impl ProcStats {
    /// Reads `/proc/<pid>/status` and `/proc/<pid>/stat` (`pid` `None` = this process).
    pub fn read(pid: Option<u32>) -> Option<Self> {
        let dir = match pid {
            Some(p) => format!("/proc/{p}"),
            None => "/proc/self".into(),
        };
        let status = std::fs::read_to_string(format!("{dir}/status")).ok()?;
        let kb = |key: &str| {
            status
                .lines()
                .find_map(|l| l.strip_prefix(key))
                .and_then(|v| v.split_whitespace().next()?.parse::<u64>().ok())
                .map(|v| v * 1024)
        };
        let stat = std::fs::read_to_string(format!("{dir}/stat")).ok()?;
        // Fields after the parenthesised command name; utime and stime are fields 14 and 15.
        let rest = &stat[stat.rfind(')')? + 2..];
        let fields: Vec<&str> = rest.split_whitespace().collect();
        let ticks: u64 =
            fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?;
        Some(Self {
            rss: kb("VmRSS:")?,
            hwm: kb("VmHWM:")?,
            cpu: Duration::from_millis(ticks * 1000 / clock_ticks()),
        })
    }
}

/// `sysconf(_SC_CLK_TCK)`: 100 on every Linux we run on (no libc call: the
/// crate forbids unsafe code).
fn clock_ticks() -> u64 {
    100
}

/// Nearest-rank percentile of `values` (sorted in place); `None` when empty.
pub fn percentile(values: &mut [f64], p: f64) -> Option<f64> {
    if values.is_empty() {
        return None;
    }
    values.sort_by(f64::total_cmp);
    let rank = ((p / 100.0) * values.len() as f64).ceil() as usize;
    Some(values[rank.clamp(1, values.len()) - 1])
}

/// Milliseconds, for reports.
pub fn ms(d: Duration) -> f64 {
    (d.as_secs_f64() * 1000.0 * 10.0).round() / 10.0
}

/// Mebibytes, for reports.
pub fn mib(bytes: u64) -> f64 {
    (bytes as f64 / (1024.0 * 1024.0) * 10.0).round() / 10.0
}
