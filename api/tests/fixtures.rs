//! Every manifest under tests/fixtures/valid loads cleanly; every one under
//! tests/fixtures/invalid fails with the field and message its header names.

use std::path::{Path, PathBuf};

use isthmus_api::load::load_yaml;

fn files(dir: &str) -> Vec<PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(dir);
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .collect();
    files.sort();
    files
}

#[test]
fn valid_manifests_load() {
    let files = files("valid");
    assert!(files.len() >= 15, "want at least 15 realistic manifests");
    let mut failures = Vec::new();
    let mut count = 0;
    for f in &files {
        let text = std::fs::read_to_string(f).unwrap();
        let loaded = load_yaml(Some(&f.display().to_string()), &text);
        failures.extend(loaded.errors.iter().map(ToString::to_string));
        assert!(
            !loaded.resources.is_empty() || !loaded.errors.is_empty(),
            "{} is empty",
            f.display()
        );
        count += loaded.resources.len();
    }
    assert!(
        failures.is_empty(),
        "valid fixtures failed:\n{}",
        failures.join("\n")
    );
    assert!(count >= 50, "only {count} resources loaded");
}

#[test]
fn invalid_manifests_fail_at_the_named_field() {
    let files = files("invalid");
    assert!(files.len() >= 15);
    let mut failures = Vec::new();
    for f in &files {
        let text = std::fs::read_to_string(f).unwrap();
        let header = |prefix: &str| {
            text.lines()
                .find_map(|l| l.strip_prefix(prefix))
                .map(str::trim)
                .unwrap_or_else(|| panic!("{} lacks {prefix}", f.display()))
                .to_string()
        };
        let (field, message) = (header("# expect-field:"), header("# expect-message:"));
        let loaded = load_yaml(Some("x.yaml"), &text);
        let hit = loaded.errors.iter().any(|e| {
            e.field.as_deref() == Some(field.as_str())
                && e.message.to_lowercase().contains(&message)
        });
        if !hit {
            failures.push(format!(
                "{}: want {field}: ..{message}.., got {:?}",
                f.display(),
                loaded
                    .errors
                    .iter()
                    .map(ToString::to_string)
                    .collect::<Vec<_>>()
            ));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}
