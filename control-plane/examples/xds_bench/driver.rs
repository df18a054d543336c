//! `--role driver` (the default): starts the control plane as a child
//! process of this binary, connects the simulated sidecars, and measures
//! (b) the full push to every sidecar, then (a) a series of one-endpoint
//! changes, watching (c) the control plane's RSS and CPU in `/proc`.
//!
//! Every wait is bounded; a control plane whose RSS passes
//! `--max-server-rss-mib` is stopped and the run reported as aborted.

use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context, bail};
use serde_json::Value;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader, Lines};
use tokio::process::{ChildStdin, ChildStdout, Command};
use tokio::sync::mpsc;
use tokio::time::{Instant, sleep, sleep_until};
use tokio_util::sync::CancellationToken;
use tonic::transport::Endpoint;

use crate::Args;
use crate::client::{self, Event};
use crate::mesh;
use crate::report::{ChangeResult, Report};
use crate::stats::{ProcStats, mib};
use crate::tracker::Tracker;

/// Starts the control plane, runs both phases, stops it.
pub async fn run(args: &Args) -> anyhow::Result<Report> {
    let exe = std::env::current_exe().context("locating this binary")?;
    let mut child = Command::new(exe)
        .args(["--role", "server"])
        .args(["--services", &args.services.to_string()])
        .args(["--debounce-ms", &args.debounce_ms.to_string()])
        .args(["--max-debounce-ms", &args.max_debounce_ms.to_string()])
        .args([
            "--endpoint-debounce-ms",
            &args.endpoint_debounce_ms.to_string(),
        ])
        .args(["--push-throttle", &args.push_throttle.to_string()])
        .args(["--listen-backlog", &args.listen_backlog.to_string()])
        .args(args.scoped.then_some("--scoped"))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .context("starting the control plane process")?;
    let pid = child.id().context("control plane has no pid")?;
    let mut stdin = child.stdin.take().context("no stdin")?;
    let mut lines = BufReader::new(child.stdout.take().context("no stdout")?).lines();

    let mut report = Report::new(args);
    let ready = read_event(&mut lines, "ready", Duration::from_secs(600)).await?;
    report.startup = ready.clone();
    let addr = ready["addr"]
        .as_str()
        .context("ready without addr")?
        .to_string();
    let monitor = Monitor::start(pid, args.max_server_rss_mib * 1024 * 1024);
    report.rss_idle = monitor.stats().rss;

    let (events_tx, mut events) = mpsc::unbounded_channel();
    let mut tracker = Tracker::new(args.clients);
    full_push(
        args,
        &addr,
        &monitor,
        events_tx,
        &mut events,
        &mut tracker,
        &mut report,
    )
    .await?;
    // Changes are measured on the sidecars that synced (failures are reported).
    if !report.full_push.synced_ms.is_empty() && !monitor.aborted.is_cancelled() {
        report.rss_synced = monitor.stats().rss;
        // Let anything in flight settle before the first change.
        drain(&mut events, &mut tracker, Duration::from_millis(500)).await;
        let outcome = changes(
            args,
            &monitor,
            &mut stdin,
            &mut lines,
            &mut events,
            &mut tracker,
            &mut report,
        )
        .await;
        // A control plane stopped for its memory cannot answer: that is reported, not an error.
        if let Err(e) = outcome
            && !monitor.aborted.is_cancelled()
        {
            return Err(e);
        }
    }
    let end = monitor.stats();
    report.rss_end = end.rss;
    report.rss_peak = end.hwm;
    report.sizes = tracker.sizes();
    report.failures = tracker.failures();
    report.reconnects = tracker.reconnects;
    report.reconnect_error = tracker.reconnect_error.clone();
    report.aborted = monitor.reason();

    let _ = stdin.write_all(b"quit\n").await;
    if tokio::time::timeout(Duration::from_secs(10), child.wait())
        .await
        .is_err()
    {
        let _ = child.kill().await;
    }
    Ok(report)
}

/// (b): every sidecar connects at once; done when each has ACKed CDS, EDS, LDS and RDS.
async fn full_push(
    args: &Args,
    addr: &str,
    monitor: &Monitor,
    events_tx: mpsc::UnboundedSender<Event>,
    events: &mut mpsc::UnboundedReceiver<Event>,
    tracker: &mut Tracker,
    report: &mut Report,
) -> anyhow::Result<()> {
    let per = args.clients_per_connection.max(1);
    let endpoint = Endpoint::from_shared(format!("http://{addr}"))?
        .tcp_nodelay(true)
        .initial_stream_window_size(8 << 20)
        .initial_connection_window_size(32 << 20);
    let channels: Vec<_> = (0..args.clients.div_ceil(per))
        .map(|_| endpoint.connect_lazy())
        .collect();
    let server_before = monitor.stats();
    let self_before = ProcStats::read(None).unwrap_or_default();
    let started = Instant::now();
    for c in 0..args.clients {
        let node = mesh::sidecar(c, args.services).to_node();
        tokio::spawn(client::run(
            c,
            node,
            channels[c / per].clone(),
            events_tx.clone(),
            args.delta,
        ));
    }
    drop(events_tx);
    let deadline = started + Duration::from_secs(args.sync_timeout_s);
    while !tracker.all_synced() {
        tokio::select! {
            ev = events.recv() => match ev {
                Some(ev) => tracker.on(ev),
                None => break,
            },
            () = sleep_until(deadline) => break,
            () = monitor.aborted.cancelled() => break,
        }
    }
    let server_after = monitor.stats();
    let self_after = ProcStats::read(None).unwrap_or_default();
    report.full_push = tracker.sync_times(started);
    report.full_push_server_cpu = server_after.cpu.saturating_sub(server_before.cpu);
    report.full_push_client_cpu = self_after.cpu.saturating_sub(self_before.cpu);
    Ok(())
}

/// (a): `--changes` one-endpoint changes, one at a time; each is done when
/// every sidecar has ACKed an EDS response generated from its store version.
async fn changes(
    args: &Args,
    monitor: &Monitor,
    stdin: &mut ChildStdin,
    lines: &mut Lines<BufReader<ChildStdout>>,
    events: &mut mpsc::UnboundedReceiver<Event>,
    tracker: &mut Tracker,
    report: &mut Report,
) -> anyhow::Result<()> {
    let server_before = monitor.stats();
    let self_before = ProcStats::read(None).unwrap_or_default();
    tracker.reset_counts();
    for k in 0..args.changes {
        if monitor.aborted.is_cancelled() {
            break;
        }
        let (service, _) = mesh::change(k, args.services);
        tracker.begin_change(|c| !args.scoped || mesh::imports(c, service, args.services));
        let started = Instant::now();
        stdin.write_all(format!("change {k}\n").as_bytes()).await?;
        stdin.flush().await?;
        let reply = read_event(lines, "changed", Duration::from_secs(120)).await?;
        let version = reply["version"]
            .as_u64()
            .context("changed without version")?;
        if reply["lost"] == true {
            eprintln!(
                "change {k}: the store made no new version for service {} (update lost); not measured",
                reply["service"]
            );
            report.lost_updates += 1;
            continue;
        }
        let deadline = started + Duration::from_secs(args.change_timeout_s);
        let mut timed_out = false;
        while !tracker.all_reached(version) {
            tokio::select! {
                ev = events.recv() => match ev {
                    Some(ev) => tracker.on(ev),
                    None => { timed_out = true; break }
                },
                () = sleep_until(deadline) => { timed_out = true; break }
                () = monitor.aborted.cancelled() => { timed_out = true; break }
            }
        }
        let (per_proxy, reached) = tracker.change_latencies(version, started);
        let slowest = per_proxy.iter().copied().fold(0.0, f64::max);
        eprintln!(
            "change {k}: store version {version}, {reached} of {} sidecars ACKed, last after {slowest:.1} ms",
            tracker.expected()
        );
        report.changes.push(ChangeResult {
            expected: tracker.expected(),
            rebuild_ms: reply["rebuild_ms"].as_f64().unwrap_or_default(),
            all_acked_ms: (!timed_out).then_some(slowest),
            per_proxy_ms: per_proxy,
            reached,
        });
        if timed_out {
            let why = if monitor.aborted.is_cancelled() {
                "before the control plane was stopped".to_string()
            } else {
                format!("within {} s", args.change_timeout_s)
            };
            eprintln!(
                "change {k}: only {reached} of {} sidecars ACKed {why}; stopping changes",
                tracker.expected()
            );
            break;
        }
        drain(
            events,
            tracker,
            Duration::from_millis(args.change_interval_ms),
        )
        .await;
        // A sidecar that does not import the service must not have been pushed.
        report.out_of_scope_eds += tracker.unexpected_eds();
    }
    let server_after = monitor.stats();
    let self_after = ProcStats::read(None).unwrap_or_default();
    report.change_server_cpu = server_after.cpu.saturating_sub(server_before.cpu);
    report.change_client_cpu = self_after.cpu.saturating_sub(self_before.cpu);
    report.change_responses = tracker.counts();
    Ok(())
}

/// Feeds events to the tracker for `period`.
async fn drain(
    events: &mut mpsc::UnboundedReceiver<Event>,
    tracker: &mut Tracker,
    period: Duration,
) {
    let until = Instant::now() + period;
    loop {
        tokio::select! {
            ev = events.recv() => match ev {
                Some(ev) => tracker.on(ev),
                None => return sleep_until(until).await,
            },
            () = sleep_until(until) => return,
        }
    }
}

/// Reads stdout lines until a JSON object with `"event": event`.
async fn read_event(
    lines: &mut Lines<BufReader<ChildStdout>>,
    event: &str,
    limit: Duration,
) -> anyhow::Result<Value> {
    let read = async {
        while let Some(line) = lines.next_line().await? {
            let v: Value = serde_json::from_str(&line)
                .with_context(|| format!("control plane said {line:?}"))?;
            if v["event"] == event {
                return Ok(v);
            }
        }
        bail!("control plane exited before {event:?}")
    };
    tokio::time::timeout(limit, read)
        .await
        .with_context(|| format!("no {event:?} from the control plane within {limit:?}"))?
}

/// Watches the control plane in `/proc`: samples its RSS every 100 ms,
/// stops it (and says why) once the RSS passes `limit` bytes, and keeps the
/// last sample so figures survive the process.
struct Monitor {
    pid: u32,
    aborted: CancellationToken,
    state: Arc<Mutex<MonitorState>>,
}

#[derive(Default)]
struct MonitorState {
    last: ProcStats,
    reason: Option<String>,
}

impl Monitor {
    fn start(pid: u32, limit: u64) -> Self {
        let monitor = Self {
            pid,
            aborted: CancellationToken::new(),
            state: Arc::default(),
        };
        let (aborted, state) = (monitor.aborted.clone(), monitor.state.clone());
        tokio::spawn(async move {
            while let Some(s) = ProcStats::read(Some(pid)) {
                if let Ok(mut st) = state.lock() {
                    st.last = s;
                }
                if s.rss > limit {
                    let why = format!(
                        "control plane RSS {} MiB passed the {} MiB limit",
                        mib(s.rss),
                        mib(limit)
                    );
                    eprintln!("{why}; stopping it");
                    if let Ok(mut st) = state.lock() {
                        st.reason = Some(why);
                    }
                    aborted.cancel();
                    // Our own child, by pid (tokio's handle is owned by `run`).
                    let _ = std::process::Command::new("kill")
                        .arg(pid.to_string())
                        .status();
                    return;
                }
                sleep(Duration::from_millis(100)).await;
            }
        });
        monitor
    }

    /// The control plane's figures now, or the last ones seen if it is gone.
    fn stats(&self) -> ProcStats {
        let mut st = self.state.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(s) = ProcStats::read(Some(self.pid)) {
            st.last = s;
        }
        st.last
    }

    fn reason(&self) -> Option<String> {
        self.state.lock().ok().and_then(|st| st.reason.clone())
    }
}
