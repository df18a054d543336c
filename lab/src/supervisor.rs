//! `isthmus lab supervise`: the one background process of a lab. It starts
//! every component as a child process (logs in `<dir>/logs/`), restarts
//! what crashes (1 s, doubling to 10 s), serves a small control API for the
//! drills (stop, start, pause, resume), keeps `state.json` current, and on
//! SIGTERM stops every child (SIGTERM, then SIGKILL after 5 s) and removes
//! the state file, so nothing is left behind.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::process::Stdio;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use anyhow::Context;
use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use nix::sys::signal::Signal;
use tokio::net::TcpListener;
use tokio::process::{Child, Command};

use crate::components::{Component, components};
use crate::plan::LabSpec;
use crate::state::{ComponentState, LabState, Status};

/// Time children get to stop on SIGTERM before SIGKILL.
const STOP_GRACE: Duration = Duration::from_secs(5);
/// Time a start phase waits for its components to be ready before the next.
const PHASE_WAIT: Duration = Duration::from_secs(20);

struct Proc {
    component: Component,
    child: Option<Child>,
    state: ComponentState,
    held: bool,
    /// Stopped on purpose to be started again at once (not a crash).
    planned_restart: bool,
    backoff: Duration,
    restart_at: Option<Instant>,
}

struct Inner {
    spec: LabSpec,
    binary: std::path::PathBuf,
    control: SocketAddr,
    procs: Vec<Proc>,
    stopping: bool,
}

type Shared = Arc<Mutex<Inner>>;

fn lock(s: &Shared) -> std::sync::MutexGuard<'_, Inner> {
    s.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Inner {
    fn save(&self) {
        let state = LabState {
            spec: self.spec.clone(),
            supervisor_pid: std::process::id(),
            control: self.control.to_string(),
            components: self.procs.iter().map(|p| p.state.clone()).collect(),
        };
        if let Err(e) = state.save(&self.spec.state_file()) {
            tracing::error!(error = %e, "writing the state file");
        }
    }

    fn spawn(&mut self, i: usize) {
        let binary = self.binary.clone();
        let p = &mut self.procs[i];
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&p.component.log);
        let (out, err) = match log.and_then(|f| Ok((f.try_clone()?, f))) {
            Ok((a, b)) => (Stdio::from(a), Stdio::from(b)),
            Err(e) => {
                tracing::error!(id = %p.component.id, error = %e, "cannot open the log file");
                (Stdio::null(), Stdio::null())
            }
        };
        let mut cmd = Command::new(&binary);
        cmd.args(&p.component.args)
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .env(
                "ISTHMUS_LOG",
                std::env::var("ISTHMUS_LOG").unwrap_or_else(|_| "info".into()),
            )
            .kill_on_drop(true);
        match cmd.spawn() {
            Ok(child) => {
                p.state.pid = child.id();
                p.state.status = Status::Running;
                p.child = Some(child);
            }
            Err(e) => {
                p.state.status = Status::Crashed;
                p.state.last_exit = Some(format!("could not start {}: {e}", binary.display()));
                p.restart_at = Some(Instant::now() + p.backoff);
            }
        }
    }

    /// Reaps exited children and schedules restarts.
    fn reap(&mut self) -> bool {
        let mut changed = false;
        let now = Instant::now();
        for i in 0..self.procs.len() {
            let p = &mut self.procs[i];
            if let Some(child) = p.child.as_mut()
                && let Ok(Some(status)) = child.try_wait()
            {
                p.child = None;
                p.state.pid = None;
                p.state.last_exit = Some(status.to_string());
                changed = true;
                if p.planned_restart && !self.stopping {
                    p.planned_restart = false;
                    p.restart_at = Some(now);
                } else if !p.held && !self.stopping {
                    p.state.status = Status::Crashed;
                    p.state.restarts += 1;
                    p.restart_at = Some(now + p.backoff);
                    p.backoff = (p.backoff * 2).min(Duration::from_secs(10));
                    tracing::warn!(id = %p.component.id, %status, "component exited; restarting");
                } else {
                    p.state.status = Status::Stopped;
                }
            }
            let p = &mut self.procs[i];
            if p.child.is_none()
                && !p.held
                && !self.stopping
                && p.restart_at.is_some_and(|t| t <= now)
            {
                p.restart_at = None;
                self.spawn(i);
                changed = true;
            }
        }
        changed
    }

    fn find(&self, id: &str) -> Option<usize> {
        self.procs.iter().position(|p| p.component.id == id)
    }
}

/// Runs the supervisor for the lab in `spec.dir` until SIGTERM.
pub async fn run(spec: LabSpec, binary: std::path::PathBuf) -> anyhow::Result<()> {
    let control = TcpListener::bind("127.0.0.1:0")
        .await
        .context("binding the supervisor's control API")?;
    let control_addr = control.local_addr()?;
    let procs = components(&spec)
        .into_iter()
        .map(|component| Proc {
            state: ComponentState {
                id: component.id.clone(),
                cluster: component.cluster.clone(),
                kind: component.kind,
                pid: None,
                status: Status::Pending,
                restarts: 0,
                last_exit: None,
                addresses: component.addresses.clone(),
                ready_url: component.ready_url.clone(),
                log: component.log.display().to_string(),
            },
            component,
            child: None,
            held: false,
            planned_restart: false,
            backoff: Duration::from_secs(1),
            restart_at: None,
        })
        .collect();
    let shared: Shared = Arc::new(Mutex::new(Inner {
        spec,
        binary,
        control: control_addr,
        procs,
        stopping: false,
    }));
    lock(&shared).save();
    let (stop_tx, mut stop_rx) = tokio::sync::watch::channel(false);
    tokio::spawn(serve_control(control, shared.clone(), stop_tx.clone()));

    // Start phase by phase, waiting (bounded) for each phase to be ready.
    for phase in 0..=2u8 {
        let ids: Vec<usize> = {
            let inner = lock(&shared);
            (0..inner.procs.len())
                .filter(|i| inner.procs[*i].component.phase == phase)
                .collect()
        };
        {
            let mut inner = lock(&shared);
            for i in &ids {
                inner.spawn(*i);
            }
            inner.save();
        }
        let urls: Vec<String> = {
            let inner = lock(&shared);
            ids.iter()
                .filter_map(|i| inner.procs[*i].component.ready_url.clone())
                .collect()
        };
        let deadline = Instant::now() + PHASE_WAIT;
        while Instant::now() < deadline {
            let mut all = true;
            for u in &urls {
                if !crate::client::ready(u).await {
                    all = false;
                    break;
                }
            }
            if all || *stop_rx.borrow() {
                break;
            }
            if lock(&shared).reap() {
                lock(&shared).save();
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    let mut int = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::interrupt())?;
    let mut tick = tokio::time::interval(Duration::from_millis(200));
    loop {
        tokio::select! {
            _ = term.recv() => break,
            _ = int.recv() => break,
            r = stop_rx.changed() => if r.is_err() || *stop_rx.borrow() { break },
            _ = tick.tick() => {
                let mut inner = lock(&shared);
                if inner.reap() {
                    inner.save();
                }
            }
        }
    }
    shutdown(&shared).await;
    Ok(())
}

async fn shutdown(shared: &Shared) {
    let pids: Vec<u32> = {
        let mut inner = lock(shared);
        inner.stopping = true;
        inner
            .procs
            .iter()
            .filter_map(|p| p.child.as_ref().and_then(Child::id))
            .collect()
    };
    for pid in &pids {
        // A paused child must run to handle SIGTERM.
        crate::state::signal(*pid, Signal::SIGCONT);
        crate::state::signal(*pid, Signal::SIGTERM);
    }
    let deadline = Instant::now() + STOP_GRACE;
    loop {
        let left = {
            let mut inner = lock(shared);
            inner.reap();
            inner.procs.iter().filter(|p| p.child.is_some()).count()
        };
        if left == 0 || Instant::now() >= deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let mut inner = lock(shared);
    for p in &mut inner.procs {
        if let Some(mut c) = p.child.take() {
            let _ = c.start_kill();
            let _ = c.try_wait();
        }
    }
    let _ = std::fs::remove_file(inner.spec.state_file());
}

async fn serve_control(
    listener: TcpListener,
    shared: Shared,
    stop: tokio::sync::watch::Sender<bool>,
) {
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        let shared = shared.clone();
        let stop = stop.clone();
        tokio::spawn(async move {
            let svc = hyper::service::service_fn(move |req: Request<Incoming>| {
                let r = control(&shared, &stop, &req);
                async move { Ok::<_, std::convert::Infallible>(r) }
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(hyper_util::rt::TokioIo::new(stream), svc)
                .await;
        });
    }
}

fn reply(status: StatusCode, body: String) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from(body)));
    *r.status_mut() = status;
    r
}

/// `POST /<action>?id=<cluster>/<component>` with action stop, start,
/// restart, pause, resume; `POST /shutdown`; `GET /state`.
fn control(
    shared: &Shared,
    stop: &tokio::sync::watch::Sender<bool>,
    req: &Request<Incoming>,
) -> Response<Full<Bytes>> {
    let action = req.uri().path().trim_start_matches('/').to_string();
    let query: HashMap<String, String> = req
        .uri()
        .query()
        .unwrap_or("")
        .split('&')
        .filter_map(|kv| kv.split_once('='))
        .map(|(k, v)| (k.to_string(), v.replace("%2F", "/")))
        .collect();
    let mut inner = lock(shared);
    if action == "state" {
        let state =
            serde_json::to_string(&inner.procs.iter().map(|p| &p.state).collect::<Vec<_>>())
                .unwrap_or_default();
        return reply(StatusCode::OK, state);
    }
    if action == "shutdown" {
        let _ = stop.send(true);
        return reply(StatusCode::OK, "stopping\n".into());
    }
    let Some(id) = query.get("id") else {
        return reply(
            StatusCode::BAD_REQUEST,
            "missing ?id=<cluster>/<component>\n".into(),
        );
    };
    let Some(i) = inner.find(id) else {
        return reply(StatusCode::NOT_FOUND, format!("no component {id}\n"));
    };
    match action.as_str() {
        "stop" => {
            let p = &mut inner.procs[i];
            p.held = true;
            if let Some(c) = p.child.as_mut() {
                let _ = c.start_kill();
            }
            p.state.status = Status::Stopped;
        }
        "start" => {
            let p = &mut inner.procs[i];
            p.held = false;
            p.backoff = Duration::from_secs(1);
            if p.child.is_none() {
                inner.spawn(i);
            }
        }
        "restart" => {
            // SIGTERM (the component drains), then started again at once.
            let p = &mut inner.procs[i];
            let Some(pid) = p.child.as_ref().and_then(Child::id) else {
                return reply(StatusCode::CONFLICT, format!("{id} is not running\n"));
            };
            p.held = false;
            p.planned_restart = true;
            crate::state::signal(pid, Signal::SIGTERM);
        }
        "pause" | "resume" => {
            let p = &mut inner.procs[i];
            let Some(pid) = p.child.as_ref().and_then(Child::id) else {
                return reply(StatusCode::CONFLICT, format!("{id} is not running\n"));
            };
            let (sig, status) = if action == "pause" {
                (Signal::SIGSTOP, Status::Paused)
            } else {
                (Signal::SIGCONT, Status::Running)
            };
            crate::state::signal(pid, sig);
            p.state.status = status;
        }
        other => return reply(StatusCode::NOT_FOUND, format!("no action {other:?}\n")),
    }
    inner.save();
    reply(StatusCode::OK, format!("{action} {id}\n"))
}
