//! The directory write path: atomic files under `generated/`.

use std::io::Write;
use std::path::{Path, PathBuf};

use futures::future::BoxFuture;
use isthmus_api::load::load_value;
use isthmus_api::{Resource, ResourceKey};

use crate::source::{ConfigWriter, WriteError};
use crate::store::{ErrorKey, Store};

/// Subfolder of the config directory that holds written objects.
pub const GENERATED_DIR: &str = "generated";

/// Writes one file per object into `<root>/generated/`, atomically (temp file + rename).
#[derive(Clone, Debug)]
pub struct DirWriter {
    dir: PathBuf,
    store: Option<Store>,
}

impl DirWriter {
    /// A writer into `root/generated`; with a store, the store is updated at once
    /// instead of waiting for the watcher.
    pub fn new(root: &Path, store: Option<Store>) -> Self {
        Self {
            dir: root.join(GENERATED_DIR),
            store,
        }
    }

    /// The file that holds the object with `key`.
    pub fn path_of(&self, key: &ResourceKey) -> PathBuf {
        // Kubernetes names never contain `_`, so this cannot collide.
        let ns = if key.namespace.is_empty() {
            "_cluster"
        } else {
            &key.namespace
        };
        self.dir
            .join(format!("{ns}_{}_{}.yaml", key.kind.plural(), key.name))
    }

    fn write(&self, resource: &Resource) -> Result<(), WriteError> {
        let mut value = resource.without_server_fields().to_value();
        if let Some(status) = value.as_object_mut() {
            status.remove("status");
        }
        let checked = load_value(value.clone()).map_err(WriteError::Invalid)?;
        let key = checked.key();
        let path = self.path_of(&key);
        let io = |source| WriteError::Io {
            path: path.display().to_string(),
            source,
        };
        std::fs::create_dir_all(&self.dir).map_err(io)?;
        let yaml = serde_yaml_ng::to_string(&value).map_err(|e| io(std::io::Error::other(e)))?;
        let tmp = self
            .dir
            .join(format!(".{}.tmp-{}", key.name, std::process::id()));
        let result = (|| {
            let mut f = std::fs::File::create(&tmp)?;
            f.write_all(b"# Written by Isthmus; edits are overwritten.\n")?;
            f.write_all(yaml.as_bytes())?;
            f.sync_all()?;
            std::fs::rename(&tmp, &path)
        })();
        if let Err(e) = result {
            let _ = std::fs::remove_file(&tmp);
            return Err(io(e));
        }
        if let Some(store) = &self.store {
            let origin = path.display().to_string();
            store.update(|t| {
                t.replace_origin(&origin, vec![checked]);
                t.set_errors(ErrorKey::origin(&origin), Vec::new());
            });
        }
        Ok(())
    }

    fn remove(&self, key: &ResourceKey) -> Result<bool, WriteError> {
        let path = self.path_of(key);
        let existed = match std::fs::remove_file(&path) {
            Ok(()) => true,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => false,
            Err(source) => {
                return Err(WriteError::Io {
                    path: path.display().to_string(),
                    source,
                });
            }
        };
        if let Some(store) = &self.store {
            store.remove_origin(&path.display().to_string());
        }
        Ok(existed)
    }
}

impl ConfigWriter for DirWriter {
    fn apply<'a>(&'a self, resource: &'a Resource) -> BoxFuture<'a, Result<(), WriteError>> {
        Box::pin(async move { self.write(resource) })
    }

    fn delete<'a>(&'a self, key: &'a ResourceKey) -> BoxFuture<'a, Result<bool, WriteError>> {
        Box::pin(async move { self.remove(key) })
    }
}
