//! `isthmus validate`: load files the way the directory source does and report every error.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context;
use isthmus_api::load::load_yaml;
use isthmus_api::{LoadError, ResourceKey};
use isthmus_config::dir::is_config_file;
use serde::Serialize;

#[derive(Debug, Default, Serialize)]
struct Report {
    files: usize,
    resources: usize,
    errors: Vec<LoadError>,
}

/// Validates `paths`, writes the report to `out`, and returns the exit code.
pub(crate) fn run(paths: &[PathBuf], json: bool, out: &mut impl Write) -> anyhow::Result<ExitCode> {
    let mut files = Vec::new();
    for p in paths {
        collect(p, true, &mut files).with_context(|| format!("reading {}", p.display()))?;
    }
    let mut report = Report {
        files: files.len(),
        ..Report::default()
    };
    let mut defined: BTreeMap<ResourceKey, String> = BTreeMap::new();
    for file in &files {
        let name = file.display().to_string();
        let text = match std::fs::read(file).map(String::from_utf8) {
            Ok(Ok(text)) => text,
            Ok(Err(_)) => {
                report
                    .errors
                    .push(LoadError::new("file is not UTF-8").at(Some(&name), None));
                continue;
            }
            Err(e) => {
                report
                    .errors
                    .push(LoadError::new(format!("cannot read: {e}")).at(Some(&name), None));
                continue;
            }
        };
        let loaded = load_yaml(Some(&name), &text);
        report.errors.extend(loaded.errors);
        for r in &loaded.resources {
            let key = r.key();
            if let Some(first) = defined.get(&key) {
                report.errors.push(
                    LoadError::new(format!(
                        "also defined in {first}; only one definition takes effect"
                    ))
                    .with_resource(&key)
                    .at(Some(&name), None),
                );
            } else {
                defined.insert(key, name.clone());
            }
        }
        report.resources += loaded.resources.len();
    }
    if json {
        serde_json::to_writer_pretty(&mut *out, &report)?;
        writeln!(out)?;
    } else {
        for e in &report.errors {
            writeln!(out, "{e}")?;
        }
        let verdict = if report.errors.is_empty() {
            "all valid"
        } else {
            "invalid"
        };
        writeln!(
            out,
            "{} files, {} resources, {} errors: {verdict}",
            report.files,
            report.resources,
            report.errors.len()
        )?;
    }
    Ok(if report.errors.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

/// Files named explicitly are always read; directories contribute their YAML files.
fn collect(path: &Path, explicit: bool, out: &mut Vec<PathBuf>) -> std::io::Result<()> {
    let meta = std::fs::metadata(path)?;
    if meta.is_dir() {
        let mut entries: Vec<PathBuf> = std::fs::read_dir(path)?
            .map(|e| e.map(|e| e.path()))
            .collect::<Result<_, _>>()?;
        entries.sort();
        for entry in entries {
            let hidden = entry
                .file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with('.'));
            if !hidden && (entry.is_dir() || is_config_file(&entry)) {
                collect(&entry, false, out)?;
            }
        }
    } else if explicit || is_config_file(path) {
        out.push(path.to_path_buf());
    }
    Ok(())
}
