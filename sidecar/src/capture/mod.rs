//! Transparent capture: how a pod's TCP connections reach the sidecar.
//!
//! In Kubernetes an init container (`isthmus iptables --apply`) installs
//! `nat`-table rules in the pod's network namespace, as Istio's
//! `istio-iptables` does: connections the app opens are redirected to the
//! outbound listener (15001), connections arriving at the pod to the inbound
//! listener (15006). The listeners then read where each connection was going
//! with [`original_destination`]. Outside Kubernetes (`isthmus lab`) nothing
//! is installed and the listeners are dialled directly.
//!
//! - [`iptables`]: the rules as data, validated, rendered as an
//!   `iptables-restore` script or as commands (pure).
//! - here: [`apply`] and [`cleanup`] run `iptables-save`/`iptables-restore`.
//! - [`original_dst`]: `SO_ORIGINAL_DST` on an accepted connection.

pub mod iptables;
pub mod original_dst;

use std::io::Write;
use std::process::{Command, ExitStatus, Stdio};

pub use iptables::{CHAINS, CaptureOptions, Cidr, Family, OptionsError, Port, Rules, Selection};
pub use original_dst::original_destination;

/// Which build of the iptables tools to run.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Backend {
    /// `iptables-restore` and friends as installed (on Debian, the nf_tables
    /// build, chosen by `update-alternatives`).
    #[default]
    Default,
    /// `iptables-legacy-restore` and friends (x_tables), for hosts whose
    /// kernel or policy has no nf_tables.
    Legacy,
    /// `iptables-nft-restore` and friends, explicitly.
    Nft,
}

impl Backend {
    /// The program `tool` (`save` or `restore`) for `family`.
    fn program(self, family: Family, tool: &str) -> String {
        let base = family.iptables();
        match self {
            Backend::Default => format!("{base}-{tool}"),
            Backend::Legacy => format!("{base}-legacy-{tool}"),
            Backend::Nft => format!("{base}-nft-{tool}"),
        }
    }
}

/// Installing or removing rules failed.
#[derive(Debug, thiserror::Error)]
pub enum CaptureError {
    /// The options are invalid.
    #[error(transparent)]
    Options(#[from] OptionsError),
    /// A tool could not be started.
    #[error("cannot run {program} (on Debian it is in the package `iptables`)")]
    Spawn {
        /// The program.
        program: String,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// A tool ran and failed.
    #[error("{program} failed ({status}): {stderr}")]
    Failed {
        /// The program and its arguments.
        program: String,
        /// Its exit status.
        status: ExitStatus,
        /// What it printed on stderr.
        stderr: String,
    },
}

/// What [`cleanup`] removed in one family.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Removed {
    /// Jumps to our chains (`-A PREROUTING -p tcp -j ISTIO_INBOUND`, ...).
    pub jumps: Vec<String>,
    /// Our chains that existed.
    pub chains: Vec<String>,
}

/// Installs `rules` in the current network namespace, one atomic
/// `iptables-restore --noflush` per family. Applying again replaces the
/// previous rules (jumps already there are removed in the same transaction).
pub fn apply(rules: &Rules, backend: Backend) -> Result<(), CaptureError> {
    for set in rules.sets() {
        let saved = run(backend, set.family, "save", &["-t", "nat"], None)?;
        let (stale_jumps, _) = ours(&saved);
        let deletes: Vec<String> = stale_jumps.iter().map(|jump| delete(jump)).collect();
        let script = set.restore_script_with(&deletes);
        run(
            backend,
            set.family,
            "restore",
            &["--noflush"],
            Some(&script),
        )?;
    }
    Ok(())
}

/// Removes our chains and every jump to them from the `nat` table of each
/// family in `families`, leaving every other rule alone. Safe to repeat.
pub fn cleanup(families: &[Family], backend: Backend) -> Result<Vec<Removed>, CaptureError> {
    let mut removed = Vec::new();
    for &family in families {
        let saved = run(backend, family, "save", &["-t", "nat"], None)?;
        if let Some(script) = cleanup_script(&saved) {
            run(backend, family, "restore", &["--noflush"], Some(&script))?;
        }
        let (jumps, chains) = ours(&saved);
        removed.push(Removed { jumps, chains });
    }
    Ok(removed)
}

/// The `iptables-restore --noflush` input that removes what `saved` (the
/// output of `iptables-save -t nat`) holds of ours, or `None` if nothing.
pub fn cleanup_script(saved: &str) -> Option<String> {
    let (jumps, chains) = ours(saved);
    if jumps.is_empty() && chains.is_empty() {
        return None;
    }
    let mut out = String::from("*nat\n");
    for jump in &jumps {
        out.push_str(&format!("{}\n", delete(jump)));
    }
    // Flush all first: our chains jump to each other.
    for op in ["-F", "-X"] {
        for chain in &chains {
            out.push_str(&format!("{op} {chain}\n"));
        }
    }
    out.push_str("COMMIT\n");
    Some(out)
}

/// The rules outside our chains that jump to them, and which of our chains
/// exist, in `iptables-save` output of the `nat` table.
fn ours(saved: &str) -> (Vec<String>, Vec<String>) {
    let mut jumps = Vec::new();
    let mut chains = Vec::new();
    let mut in_nat = false;
    for line in saved.lines().map(str::trim) {
        if let Some(table) = line.strip_prefix('*') {
            in_nat = table == "nat";
            continue;
        }
        if !in_nat {
            continue;
        }
        if let Some(decl) = line.strip_prefix(':') {
            let name = decl.split_whitespace().next().unwrap_or_default();
            if CHAINS.contains(&name) {
                chains.push(name.to_owned());
            }
        } else if let Some(rule) = line.strip_prefix("-A ") {
            let mut words = rule.split_whitespace();
            let chain = words.next().unwrap_or_default();
            let words: Vec<&str> = words.collect();
            let targets_ours = words
                .windows(2)
                .any(|w| matches!(w[0], "-j" | "-g") && CHAINS.contains(&w[1]));
            if targets_ours && !CHAINS.contains(&chain) {
                jumps.push(line.to_owned());
            }
        }
    }
    (jumps, chains)
}

fn delete(rule: &str) -> String {
    format!("-D {}", rule.strip_prefix("-A ").unwrap_or(rule))
}

/// Runs an iptables tool, feeding `stdin`, and returns its stdout.
fn run(
    backend: Backend,
    family: Family,
    tool: &str,
    args: &[&str],
    stdin: Option<&str>,
) -> Result<String, CaptureError> {
    let program = backend.program(family, tool);
    let spawn_err = |source| CaptureError::Spawn {
        program: program.clone(),
        source,
    };
    let mut child = Command::new(&program)
        .args(args)
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(spawn_err)?;
    if let (Some(text), Some(mut pipe)) = (stdin, child.stdin.take()) {
        // A tool that exits early closes the pipe; its status says why.
        let _ = pipe.write_all(text.as_bytes());
    }
    let output = child.wait_with_output().map_err(spawn_err)?;
    if !output.status.success() {
        return Err(CaptureError::Failed {
            program: format!("{program} {}", args.join(" ")),
            status: output.status,
            stderr: String::from_utf8_lossy(&output.stderr).trim().to_owned(),
        });
    }
    Ok(String::from_utf8_lossy(&output.stdout).into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `iptables-save -t nat` of a pod with our rules and someone else's.
    const SAVED: &str = "# Generated by iptables-save v1.8.9 (nf_tables)
*nat
:PREROUTING ACCEPT [0:0]
:INPUT ACCEPT [0:0]
:OUTPUT ACCEPT [0:0]
:POSTROUTING ACCEPT [0:0]
:ISTIO_INBOUND - [0:0]
:ISTIO_IN_REDIRECT - [0:0]
:ISTIO_OUTPUT - [0:0]
:ISTIO_REDIRECT - [0:0]
:OTHER - [0:0]
-A PREROUTING -p tcp -j ISTIO_INBOUND
-A PREROUTING -p udp --dport 53 -j OTHER
-A OUTPUT -p tcp -j ISTIO_OUTPUT
-A OUTPUT -d 10.0.0.0/8 -m comment --comment \"not ours\" -j RETURN
-A ISTIO_INBOUND -p tcp -j ISTIO_IN_REDIRECT
-A ISTIO_IN_REDIRECT -p tcp -j REDIRECT --to-ports 15006
-A ISTIO_OUTPUT -j ISTIO_REDIRECT
-A ISTIO_REDIRECT -p tcp -j REDIRECT --to-ports 15001
-A OTHER -j ISTIO_OUTPUT
COMMIT
# Completed
";

    #[test]
    fn cleanup_removes_only_our_chains_and_the_jumps_to_them() {
        assert_eq!(
            cleanup_script(SAVED).unwrap(),
            "*nat
-D PREROUTING -p tcp -j ISTIO_INBOUND
-D OUTPUT -p tcp -j ISTIO_OUTPUT
-D OTHER -j ISTIO_OUTPUT
-F ISTIO_INBOUND
-F ISTIO_IN_REDIRECT
-F ISTIO_OUTPUT
-F ISTIO_REDIRECT
-X ISTIO_INBOUND
-X ISTIO_IN_REDIRECT
-X ISTIO_OUTPUT
-X ISTIO_REDIRECT
COMMIT
"
        );
    }

    #[test]
    fn cleanup_of_a_clean_table_is_nothing() {
        let clean = "*nat\n:PREROUTING ACCEPT [0:0]\n:OUTPUT ACCEPT [0:0]\nCOMMIT\n";
        assert_eq!(cleanup_script(clean), None);
        // Our names in another table are not ours to remove.
        assert_eq!(
            cleanup_script("*raw\n:ISTIO_OUTPUT - [0:0]\nCOMMIT\n"),
            None
        );
    }

    #[test]
    fn reapplying_deletes_the_old_jumps_in_the_same_transaction() {
        let (jumps, _) = ours(SAVED);
        let deletes: Vec<String> = jumps.iter().map(|j| delete(j)).collect();
        let script = CaptureOptions::default()
            .rules()
            .unwrap()
            .v4
            .restore_script_with(&deletes);
        let lines: Vec<&str> = script.lines().collect();
        assert_eq!(
            lines[..8],
            [
                "*nat",
                ":ISTIO_INBOUND - [0:0]",
                ":ISTIO_REDIRECT - [0:0]",
                ":ISTIO_IN_REDIRECT - [0:0]",
                ":ISTIO_OUTPUT - [0:0]",
                "-D PREROUTING -p tcp -j ISTIO_INBOUND",
                "-D OUTPUT -p tcp -j ISTIO_OUTPUT",
                "-D OTHER -j ISTIO_OUTPUT",
            ]
        );
        assert_eq!(lines.last(), Some(&"COMMIT"));
    }

    #[test]
    fn backends_name_their_programs() {
        assert_eq!(
            Backend::Default.program(Family::V4, "restore"),
            "iptables-restore"
        );
        assert_eq!(
            Backend::Legacy.program(Family::V6, "save"),
            "ip6tables-legacy-save"
        );
        assert_eq!(
            Backend::Nft.program(Family::V4, "save"),
            "iptables-nft-save"
        );
    }
}
