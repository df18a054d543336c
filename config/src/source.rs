//! The traits every config source implements.

use std::sync::Arc;

use futures::future::BoxFuture;
use isthmus_api::{LoadError, Resource, ResourceKey};
use tokio_util::sync::CancellationToken;

use crate::store::Store;

/// A source of resources: loads them into a [`Store`] and keeps it current.
pub trait ConfigSource: Send + 'static {
    /// A short name for logs and readiness (`dir:/etc/isthmus`, `kubernetes`).
    fn name(&self) -> String;

    /// Feeds `store` until `shutdown` is cancelled. The store counts as synced
    /// once the source's first full load is in.
    fn run(
        self: Box<Self>,
        store: Store,
        shutdown: CancellationToken,
    ) -> BoxFuture<'static, Result<(), SourceError>>;

    /// The write path into the same place the source reads from.
    fn writer(&self) -> Arc<dyn ConfigWriter>;
}

/// Writes objects where a source will read them back.
pub trait ConfigWriter: Send + Sync + std::fmt::Debug {
    /// Creates or replaces `resource` (validated first; nothing invalid is written).
    fn apply<'a>(&'a self, resource: &'a Resource) -> BoxFuture<'a, Result<(), WriteError>>;

    /// Deletes the object; `Ok(false)` when it did not exist.
    fn delete<'a>(&'a self, key: &'a ResourceKey) -> BoxFuture<'a, Result<bool, WriteError>>;
}

/// Why a source stopped.
#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    #[error("config directory {path}: {source}")]
    Directory {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("watching config directory {path}: {source}")]
    Watch {
        path: String,
        #[source]
        source: notify::Error,
    },
}

/// Why a write failed.
#[derive(Debug, thiserror::Error)]
pub enum WriteError {
    #[error("refusing to write an invalid object: {}", .0.iter().map(ToString::to_string).collect::<Vec<_>>().join("; "))]
    Invalid(Vec<LoadError>),
    #[error("writing {path}: {source}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("Kubernetes API: {0}")]
    Kube(#[from] kube::Error),
}
