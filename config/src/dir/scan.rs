//! One pass over the directory tree: what was added, changed or removed.

use std::collections::BTreeMap;
use std::hash::{DefaultHasher, Hash, Hasher};
use std::io;
use std::path::{Path, PathBuf};

use isthmus_api::load::{MAX_INPUT_BYTES, load_yaml};

use crate::store::{ErrorKey, Store};

/// Remembers what each file held at the last scan.
#[derive(Debug)]
pub struct Scanner {
    root: PathBuf,
    files: BTreeMap<PathBuf, u64>,
    /// Files whose last load had errors.
    broken: std::collections::BTreeSet<PathBuf>,
}

/// What one scan did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ScanReport {
    /// YAML files present.
    pub files: usize,
    /// Files added, changed or removed since the last scan.
    pub changed: usize,
    /// Files that currently have errors.
    pub errors: usize,
}

impl Scanner {
    /// A scanner for `root` that has seen nothing yet.
    pub fn new(root: &Path) -> Self {
        Self {
            root: root.to_path_buf(),
            files: BTreeMap::new(),
            broken: std::collections::BTreeSet::new(),
        }
    }

    /// Rescans the tree and applies every difference to `store` in one update.
    pub fn rescan(&mut self, store: &Store) -> io::Result<ScanReport> {
        let meta = std::fs::metadata(&self.root)?;
        if !meta.is_dir() {
            return Err(io::Error::new(
                io::ErrorKind::NotADirectory,
                "not a directory",
            ));
        }
        let mut found = BTreeMap::new();
        collect(&self.root, &mut found)?;
        let mut report = ScanReport {
            files: found.len(),
            ..ScanReport::default()
        };
        let removed: Vec<PathBuf> = self
            .files
            .keys()
            .filter(|p| !found.contains_key(*p))
            .cloned()
            .collect();
        let mut loads = Vec::new();
        for (path, text) in found {
            let hash = {
                let mut h = DefaultHasher::new();
                text.hash(&mut h);
                h.finish()
            };
            if self.files.get(&path) != Some(&hash) {
                let origin = path.display().to_string();
                let loaded = load_file(&origin, &text);
                if loaded.errors.is_empty() {
                    self.broken.remove(&path);
                } else {
                    self.broken.insert(path.clone());
                }
                loads.push((origin, loaded));
                self.files.insert(path, hash);
            }
        }
        report.changed = removed.len() + loads.len();
        store.update(|t| {
            for path in &removed {
                t.remove_origin(&path.display().to_string());
            }
            for (origin, loaded) in loads {
                if loaded.errors.is_empty() {
                    t.replace_origin(&origin, loaded.resources);
                    t.set_errors(ErrorKey::origin(&origin), Vec::new());
                } else {
                    for e in &loaded.errors {
                        tracing::warn!(error = %e, "config file rejected; keeping its last good version");
                    }
                    t.set_errors(ErrorKey::origin(&origin), loaded.errors);
                }
            }
        });
        for path in removed {
            self.files.remove(&path);
            self.broken.remove(&path);
        }
        report.errors = self.broken.len();
        Ok(report)
    }
}

fn load_file(origin: &str, text: &Result<String, String>) -> isthmus_api::load::Loaded {
    match text {
        Ok(text) => load_yaml(Some(origin), text),
        Err(e) => isthmus_api::load::Loaded {
            resources: Vec::new(),
            errors: vec![isthmus_api::LoadError::new(e.clone()).at(Some(origin), None)],
        },
    }
}

/// Whether a path is a YAML file we read (hidden and temporary files are skipped).
pub fn is_config_file(path: &Path) -> bool {
    let name = path
        .file_name()
        .and_then(|n| n.to_str())
        .unwrap_or_default();
    !name.starts_with('.')
        && !name.ends_with('~')
        && path.extension().is_some_and(|e| e == "yaml" || e == "yml")
}

/// Reads every config file under `dir` (file contents, or the read error as text).
fn collect(dir: &Path, out: &mut BTreeMap<PathBuf, Result<String, String>>) -> io::Result<()> {
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let path = entry.path();
        let name = entry.file_name();
        if name.to_string_lossy().starts_with('.') {
            continue;
        }
        let ty = entry.file_type()?;
        let is_dir = ty.is_dir() || ty.is_symlink() && path.is_dir();
        if is_dir {
            collect(&path, out)?;
        } else if is_config_file(&path) {
            let text = match std::fs::metadata(&path) {
                Ok(m) if m.len() > MAX_INPUT_BYTES as u64 => Err(format!(
                    "file is {} bytes, over the {MAX_INPUT_BYTES} byte limit",
                    m.len()
                )),
                _ => std::fs::read(&path)
                    .map_err(|e| format!("cannot read: {e}"))
                    .and_then(|b| {
                        String::from_utf8(b).map_err(|_| "file is not UTF-8".to_string())
                    }),
            };
            // A file deleted between listing and reading is simply gone.
            if matches!(&text, Err(e) if e.contains("No such file")) {
                continue;
            }
            out.insert(path, text);
        }
    }
    Ok(())
}
