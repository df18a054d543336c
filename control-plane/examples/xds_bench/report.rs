//! One run's results: a JSON summary (one line, for scripts) and a table.

use std::time::Duration;

use serde_json::{Value, json};

use crate::Args;
use crate::client::TYPE_NAMES;
use crate::stats::{mib, ms, percentile};
use crate::tracker::SyncTimes;

/// The targets of issue 3.
const TARGET_CHANGE_P99_MS: f64 = 100.0;
const TARGET_FULL_PUSH_MS: f64 = 2000.0;
const TARGET_RSS_MIB: f64 = 1024.0;

/// One measured config change.
#[derive(Clone, Debug)]
pub struct ChangeResult {
    /// Sidecars the change should reach (those importing the service).
    pub expected: usize,
    /// Store update → new push context published (server side).
    pub rebuild_ms: f64,
    /// Store update → the last sidecar's ACK; `None` if some never ACKed in time.
    pub all_acked_ms: Option<f64>,
    /// Store update → each sidecar's ACK.
    pub per_proxy_ms: Vec<f64>,
    pub reached: usize,
}

/// Everything one run measured.
#[derive(Debug)]
pub struct Report {
    services: usize,
    clients: usize,
    /// `delta` or `sotw`.
    protocol: &'static str,
    debounce_ms: u64,
    clients_per_connection: usize,
    /// The control plane's `ready` line (generation, load and build times).
    pub startup: Value,
    pub rss_idle: u64,
    pub rss_synced: u64,
    pub rss_end: u64,
    pub rss_peak: u64,
    pub full_push: SyncTimes,
    pub full_push_server_cpu: Duration,
    pub full_push_client_cpu: Duration,
    pub changes: Vec<ChangeResult>,
    pub change_server_cpu: Duration,
    pub change_client_cpu: Duration,
    /// Responses per type during the change phase.
    pub change_responses: [u64; 4],
    pub sizes: [(usize, usize); 4],
    pub failures: Vec<String>,
    pub aborted: Option<String>,
    /// Changes the store dropped (no new version): skipped, not measured.
    pub lost_updates: usize,
    /// With `--scoped`: whether Sidecar resources scope the sidecars.
    scoped: bool,
    /// EDS responses sidecars ACKed for changes they do not import (must be 0).
    pub out_of_scope_eds: usize,
    /// Streams the sidecars reopened, and the first error that made them.
    pub reconnects: usize,
    pub reconnect_error: Option<String>,
    listen_backlog: u32,
    /// `/proc/loadavg` when the run started: other work on the machine skews wall times.
    load_at_start: String,
}

impl Report {
    pub fn new(args: &Args) -> Self {
        Self {
            services: args.services,
            clients: args.clients,
            protocol: if args.delta { "delta" } else { "sotw" },
            debounce_ms: args.debounce_ms,
            clients_per_connection: args.clients_per_connection,
            startup: Value::Null,
            rss_idle: 0,
            rss_synced: 0,
            rss_end: 0,
            rss_peak: 0,
            full_push: SyncTimes::default(),
            full_push_server_cpu: Duration::ZERO,
            full_push_client_cpu: Duration::ZERO,
            changes: Vec::new(),
            change_server_cpu: Duration::ZERO,
            change_client_cpu: Duration::ZERO,
            change_responses: [0; 4],
            sizes: [(0, 0); 4],
            failures: Vec::new(),
            aborted: None,
            lost_updates: 0,
            scoped: args.scoped,
            out_of_scope_eds: 0,
            reconnects: 0,
            reconnect_error: None,
            listen_backlog: args.listen_backlog,
            load_at_start: std::fs::read_to_string("/proc/loadavg")
                .map(|l| l.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
                .unwrap_or_default(),
        }
    }

    pub fn full_push_complete(&self) -> bool {
        self.full_push.synced_ms.len() == self.clients
    }

    pub fn to_json(&self) -> Value {
        let mut synced = self.full_push.synced_ms.clone();
        let mut all: Vec<f64> = self.changes.iter().filter_map(|c| c.all_acked_ms).collect();
        let mut per_proxy: Vec<f64> = self
            .changes
            .iter()
            .flat_map(|c| c.per_proxy_ms.iter().copied())
            .collect();
        let mut rebuild: Vec<f64> = self.changes.iter().map(|c| c.rebuild_ms).collect();
        let measured = all.len();
        let per_change = |d: Duration| (measured > 0).then(|| ms(d) / measured as f64);
        let sizes: serde_json::Map<String, Value> = TYPE_NAMES
            .iter()
            .zip(self.sizes)
            .map(|(t, (n, b))| (t.to_string(), json!({"resources": n, "bytes": b})))
            .collect();
        let responses: serde_json::Map<String, Value> = TYPE_NAMES
            .iter()
            .zip(self.change_responses)
            .map(|(t, n)| (t.to_string(), json!(n)))
            .collect();
        json!({
            "services": self.services,
            "protocol": self.protocol,
            "scoped": self.scoped,
            "endpoints_per_service": crate::mesh::ENDPOINTS,
            "clients": self.clients,
            "clients_per_connection": self.clients_per_connection,
            "debounce_ms": self.debounce_ms,
            "load_at_start": self.load_at_start,
            "startup": self.startup,
            "full_push": {
                "synced": synced.len(),
                "failed": self.full_push.failed,
                "elapsed_ms": self.full_push.elapsed_ms,
                "proxies_acked_once": TYPE_NAMES
                    .iter()
                    .zip(self.full_push.acked_once)
                    .map(|(t, n)| (t.to_string(), json!(n)))
                    .collect::<serde_json::Map<_, _>>(),
                "all_synced_ms": percentile(&mut synced, 100.0).filter(|_| self.full_push_complete()),
                "proxy_p50_ms": percentile(&mut synced, 50.0),
                "proxy_p99_ms": percentile(&mut synced, 99.0),
                "server_cpu_ms": ms(self.full_push_server_cpu),
                "client_cpu_ms": ms(self.full_push_client_cpu),
            },
            "change": {
                "attempted": self.changes.len(),
                "lost_updates": self.lost_updates,
                "measured": measured,
                "fewest_proxies_reached": self.changes.iter().map(|c| c.reached).min(),
                "proxies_expected_mean": (!self.changes.is_empty()).then(|| {
                    self.changes.iter().map(|c| c.expected).sum::<usize>() as f64
                        / self.changes.len() as f64
                }),
                "out_of_scope_eds": self.out_of_scope_eds,
                "rebuild_p50_ms": percentile(&mut rebuild, 50.0),
                "all_acked_p50_ms": percentile(&mut all, 50.0),
                "all_acked_p99_ms": percentile(&mut all, 99.0),
                "all_acked_max_ms": percentile(&mut all, 100.0),
                "proxy_p50_ms": percentile(&mut per_proxy, 50.0),
                "proxy_p99_ms": percentile(&mut per_proxy, 99.0),
                "server_cpu_ms_per_change": per_change(self.change_server_cpu),
                "client_cpu_ms_per_change": per_change(self.change_client_cpu),
                "responses": responses,
            },
            "rss_mib": {
                "idle": mib(self.rss_idle),
                "synced": (self.rss_synced > 0).then(|| mib(self.rss_synced)),
                "end": mib(self.rss_end),
                "peak": mib(self.rss_peak),
                "per_proxy_kib": (self.rss_synced > 0).then(|| (self.rss_synced.saturating_sub(self.rss_idle) as f64
                    / self.clients.max(1) as f64 / 1024.0).round()),
            },
            "proxy0_last_response": sizes,
            "failures": self.failures,
            "reconnects": self.reconnects,
            "first_reconnect_error": self.reconnect_error,
            "listen_backlog": self.listen_backlog,
            "aborted": self.aborted,
        })
    }

    /// A human-readable summary, with the targets.
    pub fn table(&self) -> String {
        let j = self.to_json();
        let f = |v: &Value| match v.as_f64() {
            Some(x) => format!("{x:.1}"),
            None => "—".into(),
        };
        let verdict = |ok: bool| if ok { "meets" } else { "MISSES" };
        let fp = &j["full_push"];
        let ch = &j["change"];
        let rss = &j["rss_mib"];
        let mut out = format!(
            "services {} × {} endpoints, {} sidecars ({} per connection, {}{}), debounce {} ms (load average at start {})\n",
            self.services,
            crate::mesh::ENDPOINTS,
            self.clients,
            self.clients_per_connection,
            if self.protocol == "delta" {
                "incremental xDS"
            } else {
                "state-of-the-world xDS"
            },
            if self.scoped {
                ", scoped by Sidecar resources"
            } else {
                ""
            },
            self.debounce_ms,
            self.load_at_start,
        );
        out += &format!(
            "  startup: generate {} ms, store load {} ms, first push context {} ms\n",
            f(&j["startup"]["generate_ms"]),
            f(&j["startup"]["load_ms"]),
            f(&j["startup"]["build_ms"])
        );
        let g = &j["startup"]["generate_per_proxy_ms"];
        out += &format!(
            "  generation for one sidecar: CDS {} + EDS {} + LDS {} + RDS {} = {} ms\n",
            f(&g["CDS"]),
            f(&g["EDS"]),
            f(&g["LDS"]),
            f(&g["RDS"]),
            f(&g["total"])
        );
        if fp["all_synced_ms"].is_null() {
            let once = &fp["proxies_acked_once"];
            out += &format!(
                "  full push INCOMPLETE after {} ms: CDS/EDS/LDS/RDS ACKed by {}/{}/{}/{} sidecars\n",
                f(&fp["elapsed_ms"]),
                once["CDS"],
                once["EDS"],
                once["LDS"],
                once["RDS"]
            );
        }
        let full_ok = fp["all_synced_ms"]
            .as_f64()
            .is_some_and(|v| v < TARGET_FULL_PUSH_MS);
        out += &format!(
            "  full push: {} of {} synced, all in {} ms (per proxy p50 {} / p99 {} ms; server CPU {} ms) — {} the < 2 s target\n",
            fp["synced"],
            self.clients,
            f(&fp["all_synced_ms"]),
            f(&fp["proxy_p50_ms"]),
            f(&fp["proxy_p99_ms"]),
            f(&fp["server_cpu_ms"]),
            verdict(full_ok),
        );
        let change_ok = ch["measured"].as_u64().unwrap_or(0) > 0
            && ch["measured"] == ch["attempted"]
            && ch["all_acked_p99_ms"]
                .as_f64()
                .is_some_and(|v| v < TARGET_CHANGE_P99_MS);
        out += &format!(
            "  one endpoint change ({} of {} measured): all ACKed p50 {} / p99 {} ms (per proxy p50 {} / p99 {}; rebuild p50 {} ms; server CPU {} ms/change) — {} the p99 < 100 ms target\n",
            ch["measured"],
            ch["attempted"],
            f(&ch["all_acked_p50_ms"]),
            f(&ch["all_acked_p99_ms"]),
            f(&ch["proxy_p50_ms"]),
            f(&ch["proxy_p99_ms"]),
            f(&ch["rebuild_p50_ms"]),
            f(&ch["server_cpu_ms_per_change"]),
            verdict(change_ok),
        );
        let rss_ok = rss["peak"].as_f64().is_some_and(|v| v < TARGET_RSS_MIB);
        out += &format!(
            "  control-plane RSS: idle {} MiB, synced {} MiB, peak {} MiB ({} KiB per proxy) — {} the < 1 GB target\n",
            f(&rss["idle"]),
            f(&rss["synced"]),
            f(&rss["peak"]),
            f(&rss["per_proxy_kib"]),
            verdict(rss_ok),
        );
        if self.scoped {
            out += &format!(
                "  scoped: a change reaches {} sidecars on average; EDS pushes to sidecars outside the scope: {}\n",
                f(&ch["proxies_expected_mean"]),
                self.out_of_scope_eds
            );
        }
        if self.lost_updates > 0 {
            out += &format!(
                "  {} change(s) lost by the store (no new version), not measured\n",
                self.lost_updates
            );
        }
        if let Some(error) = &self.reconnect_error {
            out += &format!(
                "  sidecar reconnects: {} (first: {error})\n",
                self.reconnects
            );
        }
        for failure in &self.failures {
            out += &format!("  client failures: {failure}\n");
        }
        if let Some(why) = &self.aborted {
            out += &format!("  ABORTED: {why}\n");
        }
        out
    }
}

/// A Markdown table of runs (JSON summaries, one per line), for the docs.
pub fn markdown(runs: &[Value]) -> String {
    let f = |v: &Value| match v.as_f64() {
        Some(x) if x >= 100.0 => format!("{x:.0}"),
        Some(x) => format!("{x:.1}"),
        None => "—".into(),
    };
    let mut out = String::from(
        "| protocol | services | sidecars | debounce ms | full push: all synced ms | change: all ACKed p50 / p99 ms | change: per-proxy p50 / p99 ms | server CPU ms / change | generation ms / proxy (CDS+EDS+LDS+RDS) | RSS synced / peak MiB | KiB / proxy | notes |\n|---|---:|---:|---:|---:|---|---|---:|---:|---|---:|---|\n",
    );
    for r in runs {
        let fp = &r["full_push"];
        let ch = &r["change"];
        let rss = &r["rss_mib"];
        let mut notes = Vec::new();
        if fp["all_synced_ms"].is_null() {
            let once = &fp["proxies_acked_once"];
            notes.push(format!(
                "{} of {} synced after {} s (CDS/EDS/LDS/RDS ACKed by {}/{}/{}/{})",
                fp["synced"],
                r["clients"],
                f(&(fp["elapsed_ms"].as_f64().unwrap_or_default() / 1000.0).into()),
                once["CDS"],
                once["EDS"],
                once["LDS"],
                once["RDS"]
            ));
        }
        if ch["measured"] != ch["attempted"] {
            notes.push(format!(
                "{} of {} changes converged",
                ch["measured"], ch["attempted"]
            ));
        }
        if ch["lost_updates"].as_u64().is_some_and(|n| n > 0) {
            notes.push(format!(
                "{} change(s) lost by the store",
                ch["lost_updates"]
            ));
        }
        if r["scoped"] == true {
            notes.push(format!(
                "scoped by Sidecar (./* + 5 services); a change reaches {} sidecars, {} EDS pushes out of scope",
                f(&ch["proxies_expected_mean"]),
                ch["out_of_scope_eds"]
            ));
        }
        if let Some(why) = r["aborted"].as_str() {
            notes.push(format!("aborted: {why}"));
        }
        if r["reconnects"].as_u64().is_some_and(|n| n > 0) {
            notes.push(format!("{} reconnects", r["reconnects"]));
        }
        if r["listen_backlog"].as_u64().is_some_and(|b| b != 1024) {
            notes.push(format!("listen backlog {}", r["listen_backlog"]));
        }
        if fp["failed"].as_u64().is_some_and(|n| n > 0) {
            notes.push(format!("{} sidecars gave up", fp["failed"]));
        }
        out += &format!(
            "| {} | {} | {} | {} | {} | {} / {} | {} / {} | {} | {} | {} / {} | {} | {} |\n",
            r["protocol"].as_str().unwrap_or("sotw"),
            r["services"],
            r["clients"],
            r["debounce_ms"],
            f(&fp["all_synced_ms"]),
            f(&ch["all_acked_p50_ms"]),
            f(&ch["all_acked_p99_ms"]),
            f(&ch["proxy_p50_ms"]),
            f(&ch["proxy_p99_ms"]),
            if ch["measured"] == 0 {
                "—".into()
            } else {
                f(&ch["server_cpu_ms_per_change"])
            },
            f(&r["startup"]["generate_per_proxy_ms"]["total"]),
            f(&rss["synced"]),
            f(&rss["peak"]),
            f(&rss["per_proxy_kib"]),
            notes.join("; "),
        );
    }
    out
}
