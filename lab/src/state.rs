//! The lab's state file (`<dir>/state.json`), written by the supervisor and
//! read by every other `lab` command.

use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::plan::{ComponentKind, LabSpec};

/// What a component is doing.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Status {
    /// Not started yet.
    Pending,
    /// Its process runs.
    Running,
    /// Stopped on purpose (drill, `lab down`); not restarted.
    Stopped,
    /// Paused with SIGSTOP (black-hole drill).
    Paused,
    /// Exited unexpectedly; restarted after a backoff.
    Crashed,
}

/// One supervised process.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ComponentState {
    /// `<cluster>/<name>`, e.g. `east/control-plane`, `east/helloworld-v1`.
    pub id: String,
    pub cluster: String,
    pub kind: ComponentKind,
    pub pid: Option<u32>,
    pub status: Status,
    pub restarts: u32,
    /// Exit status of the last run, if it ended.
    pub last_exit: Option<String>,
    /// Named addresses (`xds`, `debug`, `listen`, `admin`, `outbound`, …).
    pub addresses: std::collections::BTreeMap<String, String>,
    /// Readiness URL (HTTP 200 = ready).
    pub ready_url: Option<String>,
    /// Log file.
    pub log: String,
}

/// The whole lab.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct LabState {
    pub spec: LabSpec,
    pub supervisor_pid: u32,
    /// The supervisor's control API (`127.0.0.1:<port>`).
    pub control: String,
    pub components: Vec<ComponentState>,
}

impl LabState {
    /// Reads the state file, if there is one.
    pub fn load(path: &Path) -> anyhow::Result<Option<LabState>> {
        match std::fs::read_to_string(path) {
            Ok(s) => Ok(Some(serde_json::from_str(&s).map_err(|e| {
                anyhow::anyhow!("{}: not a lab state file: {e}", path.display())
            })?)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(anyhow::anyhow!("reading {}: {e}", path.display())),
        }
    }

    /// Writes it atomically.
    pub fn save(&self, path: &Path) -> anyhow::Result<()> {
        crate::prepare::write_atomic(path, &serde_json::to_string_pretty(self)?)
    }

    /// The component with `id`.
    pub fn component(&self, id: &str) -> Option<&ComponentState> {
        self.components.iter().find(|c| c.id == id)
    }
}

/// Whether a process with `pid` exists (and is not a zombie we own).
pub fn alive(pid: u32) -> bool {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return false;
    };
    // The state is the field after the parenthesised command name.
    stat.rsplit_once(')')
        .and_then(|(_, rest)| rest.split_whitespace().next())
        .is_some_and(|state| state != "Z" && state != "X")
}

/// Sends `signal` to `pid`; false if there is no such process.
pub fn signal(pid: u32, signal: nix::sys::signal::Signal) -> bool {
    let Ok(pid) = i32::try_from(pid) else {
        return false;
    };
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), signal).is_ok()
}
