//! The `isthmus` binary, run as a user runs it.

use std::path::Path;
use std::process::{Command, Output};

fn isthmus(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_isthmus"))
        .args(args)
        .output()
        .expect("run isthmus")
}

fn fixtures(sub: &str) -> String {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../api/tests/fixtures")
        .join(sub)
        .display()
        .to_string()
}

#[test]
fn validate_weights_90_exits_1_naming_file_resource_and_field() {
    let file = format!("{}/01-weights-sum-90.yaml", fixtures("invalid"));
    let out = isthmus(&["validate", &file]);
    assert_eq!(out.status.code(), Some(1));
    let stdout = String::from_utf8_lossy(&out.stdout);
    let line = stdout.lines().next().unwrap();
    assert!(line.starts_with(&format!("{file}:")), "{line}");
    assert!(
        line.contains(
            "VirtualService sample/helloworld: spec.http[0].route: weights sum to 90, expected 100"
        ),
        "{line}"
    );
}

#[test]
fn validate_lists_every_error_not_only_the_first() {
    let out = isthmus(&["validate", &fixtures("invalid"), &fixtures("valid")]);
    assert_eq!(out.status.code(), Some(1));
    let stdout = String::from_utf8_lossy(&out.stdout);
    let count = std::fs::read_dir(fixtures("invalid")).unwrap().count();
    let errors = stdout.lines().filter(|l| l.contains("/invalid/")).count();
    assert!(
        errors >= count,
        "{errors} errors for {count} invalid files:\n{stdout}"
    );
    assert!(
        !stdout.contains("fixtures/valid/"),
        "valid fixtures reported:\n{stdout}"
    );
}

#[test]
fn validate_valid_tree_exits_0_and_json_reports() {
    let out = isthmus(&["validate", &fixtures("valid")]);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    let out = isthmus(&["validate", "--json", &fixtures("invalid")]);
    assert_eq!(out.status.code(), Some(1));
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let first = &report["errors"][0];
    assert_eq!(first["resource"], "VirtualService sample/helloworld");
    assert_eq!(first["field"], "spec.http[0].route");
    assert_eq!(first["document"], 1);
}

#[test]
fn validate_missing_path_is_a_clear_error() {
    let out = isthmus(&["validate", "/nonexistent/isthmus.yaml"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("/nonexistent/isthmus.yaml"));
}

#[test]
fn crds_match_deploy_folder() {
    let out = isthmus(&["crds"]);
    assert!(out.status.success());
    let checked_in =
        std::fs::read(Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/crds/crds.yaml"))
            .unwrap();
    assert!(
        out.stdout == checked_in,
        "deploy/crds/crds.yaml drifted from `isthmus crds`"
    );
}

#[test]
fn version_prints() {
    let out = isthmus(&["version", "--json"]);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["version"], env!("CARGO_PKG_VERSION"));
}

/// Kills the child on drop so a failing test leaves nothing running.
struct Child(std::process::Child);

impl Drop for Child {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

#[test]
fn control_plane_process_serves_debug_and_drains_on_sigterm() {
    let dir = tempfile::tempdir().unwrap();
    let tokens = dir.path().join("tokens.yaml");
    std::fs::write(&tokens, "t: {namespace: sample, serviceAccount: sleep}\n").unwrap();
    let (xds, debug) = (free_port(), free_port());
    let mut child = Child(
        Command::new(env!("CARGO_BIN_EXE_isthmus"))
            .args([
                "control-plane",
                "--cluster",
                "east",
                "--trust-domain",
                "east.isthmus.local",
            ])
            .arg("--config-dir")
            .arg(fixtures("valid"))
            .arg("--bootstrap-tokens")
            .arg(&tokens)
            .args([
                "--listen",
                &format!("127.0.0.1:{xds}"),
                "--debug-listen",
                &format!("127.0.0.1:{debug}"),
            ])
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap(),
    );
    let cp = format!("127.0.0.1:{debug}");
    let mut out = None;
    for _ in 0..100 {
        let o = isthmus(&[
            "proxy-config",
            "clusters",
            "sidecar~~nobody.sample~sample.svc.cluster.local",
            "--control-plane",
            &cp,
        ]);
        if String::from_utf8_lossy(&o.stderr).contains("no connected proxy") {
            out = Some(o);
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    let out = out.expect("control plane answered");
    assert_eq!(out.status.code(), Some(1));

    let pid = child.0.id().to_string();
    assert!(
        Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .unwrap()
            .success()
    );
    let start = std::time::Instant::now();
    loop {
        if let Some(status) = child.0.try_wait().unwrap() {
            assert!(status.success(), "{status}");
            break;
        }
        assert!(
            start.elapsed() < std::time::Duration::from_secs(15),
            "did not drain in time"
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
}

#[test]
fn control_plane_needs_a_config_source() {
    let out = isthmus(&["control-plane", "--cluster", "east"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--config-dir"));
}

#[test]
fn ca_root_and_intermediate_make_a_loadable_cacerts_dir() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("root");
    let east = dir.path().join("east");
    let out = isthmus(&["ca", "root", "--out", root.to_str().unwrap()]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let again = isthmus(&["ca", "root", "--out", root.to_str().unwrap()]);
    assert_eq!(again.status.code(), Some(1), "never overwrite a root");
    let out = isthmus(&[
        "ca",
        "intermediate",
        "--root",
        root.to_str().unwrap(),
        "--cluster",
        "east",
        "--trust-domain",
        "east.isthmus.local",
        "--out",
        east.to_str().unwrap(),
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let ca = isthmus_identity::ClusterCa::load(&east).unwrap();
    assert_eq!(ca.trust_domain(), "east.isthmus.local");
}
