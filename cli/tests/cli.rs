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
