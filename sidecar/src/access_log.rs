//! JSON access log: one line per HTTP request and per TCP connection, with
//! the field names of Istio's JSON access log (Envoy command operators).
//!
//! ```text
//! request path ─ Entry ─► AccessLog::write (serialize, try_send) ─► writer task ─► stdout
//! ```
//!
//! Writing never blocks a request: lines go through a bounded queue to one
//! writer task, and when the queue is full the line is dropped and counted
//! (`dropped`), as Envoy's buffered access log does under pressure.

use std::io::Write;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime};

use tokio::sync::mpsc;

use crate::flags::Flags;

/// Lines queued before new ones are dropped.
const QUEUE: usize = 4096;

/// Where access log lines go; cheap to clone.
#[derive(Clone, Debug)]
pub struct AccessLog {
    tx: mpsc::Sender<String>,
    dropped: Arc<AtomicU64>,
}

/// One access log record.
#[derive(Debug, Default)]
pub struct Entry<'a> {
    /// When the request (or connection) started.
    pub start_time: Option<SystemTime>,
    /// `outbound` or `inbound`.
    pub direction: &'a str,
    /// HTTP method (`-` for TCP).
    pub method: &'a str,
    /// Path and query as received.
    pub path: &'a str,
    /// `:authority` / `Host`.
    pub authority: &'a str,
    /// `HTTP/1.1`, `HTTP/2` or `TCP`.
    pub protocol: &'a str,
    /// Response status (0 for TCP).
    pub response_code: u16,
    /// Envoy response flags (`-` for none).
    pub response_flags: Flags,
    /// Request body bytes (or bytes from the downstream for TCP).
    pub bytes_received: u64,
    /// Response body bytes (or bytes to the downstream for TCP).
    pub bytes_sent: u64,
    /// Time to the response headers (HTTP) or the whole connection (TCP).
    pub duration: Duration,
    /// `x-request-id`.
    pub request_id: &'a str,
    /// The endpoint that answered.
    pub upstream_host: Option<SocketAddr>,
    /// The cluster the request went to.
    pub upstream_cluster: &'a str,
    /// The peer.
    pub downstream_remote_address: Option<SocketAddr>,
    /// The caller's SPIFFE ID (inbound, mTLS).
    pub downstream_peer_uri_san: &'a str,
    /// `user-agent`.
    pub user_agent: &'a str,
}

impl AccessLog {
    /// Lines to stdout, written by a task of the current runtime.
    pub fn stdout() -> Self {
        let (log, mut rx) = Self::channel();
        tokio::spawn(async move {
            let mut batch = Vec::new();
            while rx.recv_many(&mut batch, 256).await > 0 {
                let mut out = std::io::stdout().lock();
                for line in batch.drain(..) {
                    let _ = out.write_all(line.as_bytes());
                }
                let _ = out.flush();
            }
        });
        log
    }

    /// Lines to a channel (tests, embedding): each item is one line with its `\n`.
    pub fn channel() -> (Self, mpsc::Receiver<String>) {
        let (tx, rx) = mpsc::channel(QUEUE);
        let log = Self {
            tx,
            dropped: Arc::default(),
        };
        (log, rx)
    }

    /// Lines dropped because the writer fell behind.
    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }

    /// Queues one line for `entry`.
    pub fn write(&self, entry: &Entry<'_>) {
        if self.tx.try_send(entry.to_json_line()).is_err() {
            self.dropped.fetch_add(1, Ordering::Relaxed);
        }
    }
}

impl Entry<'_> {
    /// The record as one JSON object and a newline.
    pub fn to_json_line(&self) -> String {
        let or_null = |s: &str| {
            if s.is_empty() {
                serde_json::Value::Null
            } else {
                serde_json::Value::from(s)
            }
        };
        let addr =
            |a: Option<SocketAddr>| a.map_or(serde_json::Value::Null, |a| a.to_string().into());
        let v = serde_json::json!({
            "start_time": self.start_time.map(rfc3339),
            "direction": self.direction,
            "method": or_null(self.method),
            "path": or_null(self.path),
            "authority": or_null(self.authority),
            "protocol": self.protocol,
            "response_code": self.response_code,
            "response_flags": self.response_flags.to_string(),
            "bytes_received": self.bytes_received,
            "bytes_sent": self.bytes_sent,
            "duration": u64::try_from(self.duration.as_millis()).unwrap_or(u64::MAX),
            "x_request_id": or_null(self.request_id),
            "upstream_host": addr(self.upstream_host),
            "upstream_cluster": or_null(self.upstream_cluster),
            "downstream_remote_address": addr(self.downstream_remote_address),
            "downstream_peer_uri_san": or_null(self.downstream_peer_uri_san),
            "user_agent": or_null(self.user_agent),
        });
        let mut line = v.to_string();
        line.push('\n');
        line
    }
}

/// `2026-11-21T07:48:10.123Z` (UTC, milliseconds).
pub fn rfc3339(t: SystemTime) -> String {
    let since = t.duration_since(SystemTime::UNIX_EPOCH).unwrap_or_default();
    let secs = since.as_secs();
    let days = i64::try_from(secs / 86_400).unwrap_or(0);
    let rem = secs % 86_400;
    // Howard Hinnant's civil_from_days.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:03}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60,
        since.subsec_millis()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps_are_rfc3339_utc() {
        let t = SystemTime::UNIX_EPOCH + Duration::from_millis(1_795_247_290_123);
        assert_eq!(rfc3339(t), "2026-11-21T07:48:10.123Z");
        assert_eq!(rfc3339(SystemTime::UNIX_EPOCH), "1970-01-01T00:00:00.000Z");
        let leap = SystemTime::UNIX_EPOCH + Duration::from_secs(951_782_400);
        assert_eq!(rfc3339(leap), "2000-02-29T00:00:00.000Z");
    }

    #[test]
    fn an_entry_is_one_json_line() {
        let e = Entry {
            direction: "outbound",
            method: "GET",
            path: "/a?b=\"c\"",
            protocol: "HTTP/1.1",
            response_code: 200,
            ..Entry::default()
        };
        let line = e.to_json_line();
        assert!(line.ends_with('\n') && line.matches('\n').count() == 1);
        let v: serde_json::Value = serde_json::from_str(&line).unwrap();
        assert_eq!(v["path"], "/a?b=\"c\"");
        assert_eq!(v["response_code"], 200);
        assert!(v["upstream_host"].is_null());
    }
}
