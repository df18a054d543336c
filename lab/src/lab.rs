//! `lab up`, `lab status`, `lab logs`, `lab down`.

use std::io::Write;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use nix::sys::signal::Signal;
use serde::Serialize;

use crate::components::components;
use crate::plan::LabSpec;
use crate::state::{LabState, Status, alive, signal};

/// How `lab up` runs.
#[derive(Clone, Debug)]
pub struct UpOptions {
    /// The `isthmus` binary the supervisor runs (default: this executable).
    pub binary: PathBuf,
    /// Time everything gets to become ready.
    pub timeout: Duration,
}

/// The tail of a log file.
pub fn tail(path: &Path, lines: usize) -> String {
    let Ok(text) = std::fs::read_to_string(path) else {
        return format!("(no log at {})", path.display());
    };
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// The running lab in `dir`, if its supervisor is alive.
pub fn running(dir: &Path) -> anyhow::Result<Option<LabState>> {
    let spec = LabSpec::new(dir);
    Ok(LabState::load(&spec.state_file())?.filter(|s| alive(s.supervisor_pid)))
}

/// Every address a lab listens on, with the component, for collision checks.
fn addresses(spec: &LabSpec) -> Vec<(String, SocketAddr, bool)> {
    let mut out = Vec::new();
    for c in components(spec) {
        for (name, addr) in &c.addresses {
            if name == "ip" {
                continue;
            }
            if let Ok(a) = addr.parse::<SocketAddr>() {
                out.push((
                    format!("{} ({name})", c.id),
                    a,
                    c.kind == crate::plan::ComponentKind::Dns && name == "listen",
                ));
            }
        }
    }
    out
}

/// Starts a lab: prepares files, starts the supervisor in the background,
/// waits until every component is ready, and prints progress and a table.
/// On failure it shows the failing component's log tail and stops what started.
pub async fn up(
    spec: &LabSpec,
    opts: &UpOptions,
    out: &mut (dyn Write + Send),
) -> anyhow::Result<LabState> {
    spec.validate().map_err(|e| anyhow::anyhow!(e))?;
    std::fs::create_dir_all(&spec.dir)
        .with_context(|| format!("creating {}", spec.dir.display()))?;
    let dir = std::fs::canonicalize(&spec.dir)?;
    let spec = LabSpec {
        dir: dir.clone(),
        ..spec.clone()
    };
    if let Some(s) = LabState::load(&spec.state_file())? {
        if alive(s.supervisor_pid) {
            bail!(
                "a lab is already running in {} (supervisor pid {}); run `isthmus lab down --dir {}` first",
                dir.display(),
                s.supervisor_pid,
                dir.display()
            );
        }
        // A supervisor that died leaves its children: stop them.
        kill_leftovers(&s);
        let _ = std::fs::remove_file(spec.state_file());
    }
    for (what, addr, udp) in addresses(&spec) {
        if let Err(e) = std::net::TcpListener::bind(addr) {
            bail!(
                "{addr} (for {what}) is not free: {e}. Another lab with the same --net-base, or another \
                 program, holds it; pick another --net-base or stop it"
            );
        }
        if udp && let Err(e) = std::net::UdpSocket::bind(addr) {
            bail!("{addr}/udp (for {what}) is not free: {e}");
        }
    }
    writeln!(
        out,
        "preparing {} ({})",
        dir.display(),
        spec.clusters.join(", ")
    )?;
    crate::prepare::prepare(&spec)?;
    std::fs::write(dir.join("spec.json"), serde_json::to_string_pretty(&spec)?)?;
    let log = std::fs::File::create(spec.log_dir().join("supervisor.log"))?;
    let mut cmd = std::process::Command::new(&opts.binary);
    cmd.args(["lab", "supervise", "--dir"])
        .arg(&dir)
        .stdin(Stdio::null())
        .stdout(Stdio::from(log.try_clone()?))
        .stderr(Stdio::from(log));
    #[cfg(unix)]
    std::os::unix::process::CommandExt::process_group(&mut cmd, 0);
    let mut supervisor = cmd
        .spawn()
        .with_context(|| format!("starting {} lab supervise", opts.binary.display()))?;

    let deadline = Instant::now() + opts.timeout;
    let mut shown = std::collections::BTreeSet::new();
    let total = components(&spec).len();
    loop {
        if let Ok(Some(status)) = supervisor.try_wait() {
            bail!(
                "the lab supervisor exited ({status}):\n{}",
                tail(&spec.log_dir().join("supervisor.log"), 20)
            );
        }
        let state = LabState::load(&spec.state_file()).ok().flatten();
        if let Some(state) = &state {
            for c in &state.components {
                if shown.contains(&c.id) {
                    continue;
                }
                if let Some(url) = &c.ready_url
                    && crate::client::ready(url).await
                {
                    shown.insert(c.id.clone());
                    let addr = c
                        .addresses
                        .get("listen")
                        .or_else(|| c.addresses.get("xds"))
                        .or_else(|| c.addresses.get("outbound"))
                        .cloned()
                        .unwrap_or_default();
                    writeln!(
                        out,
                        "  ready  {:<28} {addr}  [{}/{total}]",
                        c.id,
                        shown.len()
                    )?;
                }
            }
            if shown.len() == state.components.len() {
                writeln!(out)?;
                print_table(&status(&dir)?, out)?;
                return Ok(state.clone());
            }
        }
        if Instant::now() >= deadline {
            let mut msg = String::from("the lab did not come up in time:\n");
            if let Some(state) = &state {
                for c in state.components.iter().filter(|c| !shown.contains(&c.id)) {
                    msg.push_str(&format!(
                        "\n{} is not ready ({:?}, last exit: {}); last log lines of {}:\n{}\n",
                        c.id,
                        c.status,
                        c.last_exit.as_deref().unwrap_or("-"),
                        c.log,
                        tail(Path::new(&c.log), 15)
                    ));
                }
            }
            let _ = down(&dir, &mut std::io::sink()).await;
            bail!(msg);
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

fn kill_leftovers(s: &LabState) {
    for c in &s.components {
        if let Some(pid) = c.pid
            && alive(pid)
        {
            signal(pid, Signal::SIGCONT);
            signal(pid, Signal::SIGKILL);
        }
    }
}

/// Stops the lab in `dir`: the supervisor stops every component; anything
/// left after 10 s is killed. Succeeds when nothing runs.
pub async fn down(dir: &Path, out: &mut (dyn Write + Send)) -> anyhow::Result<()> {
    let spec = LabSpec::new(dir);
    let Some(state) = LabState::load(&spec.state_file())? else {
        writeln!(out, "no lab running in {}", dir.display())?;
        return Ok(());
    };
    if alive(state.supervisor_pid) {
        signal(state.supervisor_pid, Signal::SIGTERM);
        let deadline = Instant::now() + Duration::from_secs(10);
        while alive(state.supervisor_pid) && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        if alive(state.supervisor_pid) {
            signal(state.supervisor_pid, Signal::SIGKILL);
        }
    }
    kill_leftovers(&state);
    let _ = std::fs::remove_file(spec.state_file());
    writeln!(
        out,
        "lab in {} stopped ({} components)",
        dir.display(),
        state.components.len()
    )?;
    Ok(())
}

/// One component in `lab status`.
#[derive(Clone, Debug, Serialize)]
pub struct ComponentStatus {
    pub id: String,
    pub kind: String,
    pub status: Status,
    pub ready: bool,
    pub pid: Option<u32>,
    pub restarts: u32,
    pub addresses: std::collections::BTreeMap<String, String>,
    pub log: String,
}

/// One cluster in `lab status`.
#[derive(Clone, Debug, Serialize)]
pub struct ClusterStatus {
    pub name: String,
    pub network: String,
    pub locality: String,
    pub trust_domain: String,
    pub control_plane: String,
    pub gateway: String,
    pub dns: String,
    pub federation: String,
    pub components: Vec<ComponentStatus>,
    /// Workloads with their sidecar addresses.
    pub workloads: Vec<serde_json::Value>,
}

/// `lab status`.
#[derive(Clone, Debug, Serialize)]
pub struct StatusReport {
    pub dir: String,
    pub running: bool,
    pub supervisor_pid: Option<u32>,
    pub clusters: Vec<ClusterStatus>,
}

/// The status of the lab in `dir` (probing every component's readiness).
pub fn status(dir: &Path) -> anyhow::Result<StatusReport> {
    let spec_path = dir.join("spec.json");
    let spec: LabSpec = match std::fs::read_to_string(&spec_path) {
        Ok(s) => serde_json::from_str(&s)?,
        Err(_) => LabSpec::new(dir),
    };
    let state = LabState::load(&spec.state_file())?;
    let running = state.as_ref().is_some_and(|s| alive(s.supervisor_pid));
    let mut clusters = Vec::new();
    for c in spec.plan() {
        let comps = state
            .as_ref()
            .map(|s| {
                s.components
                    .iter()
                    .filter(|x| x.cluster == c.name)
                    .map(|x| ComponentStatus {
                        id: x.id.clone(),
                        kind: x.kind.as_str().to_string(),
                        status: x.status,
                        ready: x.ready_url.as_deref().is_some_and(probe),
                        pid: x.pid,
                        restarts: x.restarts,
                        addresses: x.addresses.clone(),
                        log: x.log.clone(),
                    })
                    .collect()
            })
            .unwrap_or_default();
        let workloads = c
            .workloads
            .iter()
            .map(|w| {
                serde_json::json!({
                    "name": w.name,
                    "id": format!("{}/{}", c.name, w.name),
                    "ip": w.ip.to_string(),
                    "outbound": w.outbound.to_string(),
                    "admin": w.admin.to_string(),
                    "app": w.app_addr.map(|a| a.to_string()),
                    "version": w.version,
                })
            })
            .collect();
        clusters.push(ClusterStatus {
            name: c.name.clone(),
            network: c.network.clone(),
            locality: c.locality.clone(),
            trust_domain: c.trust_domain.clone(),
            control_plane: c.xds.to_string(),
            gateway: c.gateway.to_string(),
            dns: c.dns.to_string(),
            federation: c.federation.to_string(),
            components: comps,
            workloads,
        });
    }
    Ok(StatusReport {
        dir: dir.display().to_string(),
        running,
        supervisor_pid: state.map(|s| s.supervisor_pid),
        clusters,
    })
}

/// A blocking readiness probe (plain HTTP/1.1 GET over a std socket, 500 ms).
fn probe(url: &str) -> bool {
    use std::io::Read;
    let Some(rest) = url.strip_prefix("http://") else {
        return false;
    };
    let (host, path) = rest.split_once('/').map_or((rest, "/"), |(h, p)| (h, p));
    let Ok(addr) = host.parse::<SocketAddr>() else {
        return false;
    };
    let Ok(mut s) = std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(500)) else {
        return false;
    };
    let _ = s.set_read_timeout(Some(Duration::from_millis(500)));
    let req = format!(
        "GET /{} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n",
        path.trim_start_matches('/')
    );
    if s.write_all(req.as_bytes()).is_err() {
        return false;
    }
    let mut buf = [0u8; 16];
    s.read(&mut buf)
        .is_ok_and(|n| buf[..n].starts_with(b"HTTP/1.1 200"))
}

/// Prints the table of clusters, components, addresses and health.
pub fn print_table(r: &StatusReport, out: &mut (dyn Write + Send)) -> anyhow::Result<()> {
    writeln!(
        out,
        "lab in {} — {}",
        r.dir,
        if r.running { "running" } else { "not running" }
    )?;
    writeln!(
        out,
        "{:<8} {:<28} {:<10} {:<7} ADDRESSES",
        "CLUSTER", "COMPONENT", "STATUS", "HEALTH"
    )?;
    for c in &r.clusters {
        for x in &c.components {
            let addrs: Vec<String> = x
                .addresses
                .iter()
                .filter(|(k, _)| k.as_str() != "ip")
                .map(|(k, v)| format!("{k}={v}"))
                .collect();
            writeln!(
                out,
                "{:<8} {:<28} {:<10} {:<7} {}",
                c.name,
                x.id.split_once('/').map_or(x.id.as_str(), |(_, n)| n),
                format!("{:?}", x.status).to_lowercase(),
                if x.ready { "ready" } else { "-" },
                addrs.join(" ")
            )?;
        }
    }
    Ok(())
}

/// `lab logs <cluster>/<component>`: the last `lines` lines.
pub fn logs(dir: &Path, id: &str, lines: usize) -> anyhow::Result<String> {
    let spec = LabSpec::new(dir);
    let (cluster, name) = id.split_once('/').ok_or_else(|| {
        anyhow::anyhow!("{id:?}: expected <cluster>/<component>, e.g. east/control-plane")
    })?;
    let path = spec.log_dir().join(format!("{cluster}-{name}.log"));
    if !path.exists() {
        let mut known: Vec<String> = std::fs::read_dir(spec.log_dir())
            .map(|d| {
                d.filter_map(|e| e.ok())
                    .map(|e| {
                        e.file_name()
                            .to_string_lossy()
                            .trim_end_matches(".log")
                            .replacen('-', "/", 1)
                    })
                    .collect()
            })
            .unwrap_or_default();
        known.sort();
        bail!(
            "no log for {id} in {}; known: {}",
            spec.log_dir().display(),
            known.join(", ")
        );
    }
    Ok(tail(&path, lines))
}
