//! The Kubernetes write path: server-side apply with our field manager.

use futures::future::BoxFuture;
use isthmus_api::load::load_value;
use isthmus_api::{Resource, ResourceKey};
use kube::api::{DeleteParams, DynamicObject, Patch, PatchParams};

use super::dynamic_api;
use crate::source::{ConfigWriter, WriteError};

/// Field manager Isthmus applies with, so ownership of written fields is visible.
pub const FIELD_MANAGER: &str = "isthmus";

/// Writes objects to the API server with server-side apply.
#[derive(Clone)]
pub struct KubeWriter {
    client: kube::Client,
    field_manager: String,
}

impl std::fmt::Debug for KubeWriter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KubeWriter")
            .field("field_manager", &self.field_manager)
            .finish()
    }
}

impl KubeWriter {
    /// A writer applying as [`FIELD_MANAGER`].
    pub fn new(client: kube::Client) -> Self {
        Self {
            client,
            field_manager: FIELD_MANAGER.to_string(),
        }
    }

    /// Uses another field manager (e.g. `isthmus-federation`).
    pub fn with_field_manager(mut self, manager: impl Into<String>) -> Self {
        self.field_manager = manager.into();
        self
    }

    async fn apply_one(&self, resource: &Resource) -> Result<(), WriteError> {
        let mut value = resource.without_server_fields().to_value();
        if let Some(map) = value.as_object_mut() {
            map.remove("status");
        }
        let checked = load_value(value.clone()).map_err(WriteError::Invalid)?;
        let key = checked.key();
        let api = dynamic_api(self.client.clone(), key.kind, Some(&key.namespace));
        let obj: DynamicObject = serde_json::from_value(value)
            .map_err(|e| WriteError::Invalid(vec![isthmus_api::LoadError::new(e.to_string())]))?;
        let params = PatchParams::apply(&self.field_manager).force();
        api.patch(&key.name, &params, &Patch::Apply(&obj)).await?;
        Ok(())
    }

    async fn delete_one(&self, key: &ResourceKey) -> Result<bool, WriteError> {
        let api = dynamic_api(self.client.clone(), key.kind, Some(&key.namespace));
        match api.delete(&key.name, &DeleteParams::default()).await {
            Ok(_) => Ok(true),
            Err(kube::Error::Api(status)) if status.code == 404 => Ok(false),
            Err(e) => Err(e.into()),
        }
    }
}

impl ConfigWriter for KubeWriter {
    fn apply<'a>(&'a self, resource: &'a Resource) -> BoxFuture<'a, Result<(), WriteError>> {
        Box::pin(self.apply_one(resource))
    }

    fn delete<'a>(&'a self, key: &'a ResourceKey) -> BoxFuture<'a, Result<bool, WriteError>> {
        Box::pin(self.delete_one(key))
    }
}
