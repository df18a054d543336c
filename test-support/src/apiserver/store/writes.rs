//! The write verbs of the HTTP API (`POST`, `PUT`, merge `PATCH`, server-side apply,
//! `DELETE`) on top of `Store::write`, which fills in server-managed metadata and commits.

use serde_json::{Value, json};

use super::{KindInfo, Store, has_finalizers};
use crate::apiserver::objects::{
    ApiError, merge_patch, metadata_mut, now_rfc3339, object_mut, str_at,
};

impl Store {
    /// `POST` to a collection.
    pub(crate) fn create(
        &mut self,
        kind: &KindInfo,
        path_ns: Option<&str>,
        body: Value,
        dry_run: bool,
    ) -> Result<Value, ApiError> {
        check_type(kind, &body)?;
        let ns = match (path_ns, str_at(&body, &["metadata", "namespace"])) {
            (Some(p), Some(b)) if p != b => {
                return Err(ApiError::bad_request(
                    "the namespace of the provided object does not match the namespace sent on the request",
                ));
            }
            (p, b) => p.or(b).map(str::to_owned),
        };
        let name = match (
            str_at(&body, &["metadata", "name"]),
            str_at(&body, &["metadata", "generateName"]),
        ) {
            (Some(name), _) if !name.is_empty() => name.to_owned(),
            (_, Some(prefix)) => {
                self.uid_seq += 1;
                format!("{prefix}{:05x}", self.uid_seq)
            }
            _ => return Err(ApiError::bad_request("name or generateName is required")),
        };
        if self.get(kind, ns.as_deref(), &name).is_some() {
            return Err(ApiError::already_exists(&kind.plural, &name));
        }
        Ok(self.write(kind, ns.as_deref(), &name, None, body, dry_run))
    }

    /// `PUT` to an object (or its `status` subresource).
    pub(crate) fn replace(
        &mut self,
        kind: &KindInfo,
        ns: Option<&str>,
        name: &str,
        body: Value,
        status_only: bool,
        dry_run: bool,
    ) -> Result<Value, ApiError> {
        check_type(kind, &body)?;
        let old = self.existing(kind, ns, name, &body)?;
        let new = if status_only {
            with_status_of(old.clone(), &body)
        } else {
            keep_status(body, &old)
        };
        Ok(self.write(kind, ns, name, Some(&old), new, dry_run))
    }

    /// `PATCH` with a JSON merge patch (RFC 7386).
    pub(crate) fn merge(
        &mut self,
        kind: &KindInfo,
        ns: Option<&str>,
        name: &str,
        patch: &Value,
        status_only: bool,
        dry_run: bool,
    ) -> Result<Value, ApiError> {
        let old = self.existing(kind, ns, name, patch)?;
        let mut new = old.clone();
        match (status_only, patch.get("status")) {
            (false, _) => merge_patch(&mut new, patch),
            (true, Some(status)) => merge_patch(&mut new, &json!({ "status": status })),
            (true, None) => {}
        }
        Ok(self.write(kind, ns, name, Some(&old), new, dry_run))
    }

    /// `PATCH` with server-side apply. Returns the object and whether it was created.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn apply(
        &mut self,
        kind: &KindInfo,
        ns: Option<&str>,
        name: &str,
        patch: &Value,
        manager: &str,
        status_only: bool,
        dry_run: bool,
    ) -> Result<(Value, bool), ApiError> {
        check_type(kind, patch)?;
        check_name(kind, name, patch)?;
        let old = self.get(kind, ns, name);
        check_precondition(kind, name, old.as_ref(), patch)?;
        let mut new = match (&old, status_only) {
            (None, true) => return Err(ApiError::not_found(&kind.plural, name)),
            (None, false) => patch.clone(),
            (Some(old), true) => with_status_of(old.clone(), patch),
            (Some(old), false) => {
                let mut meta = old.get("metadata").cloned().unwrap_or_else(|| json!({}));
                let patch_meta = patch.get("metadata");
                for field in ["labels", "annotations", "finalizers", "ownerReferences"] {
                    match patch_meta.and_then(|m| m.get(field)) {
                        Some(v) => object_mut(&mut meta).insert(field.to_owned(), v.clone()),
                        None if matches!(field, "labels" | "annotations") => {
                            object_mut(&mut meta).remove(field)
                        }
                        None => None,
                    };
                }
                let mut new = keep_status(patch.clone(), old);
                object_mut(&mut new).insert("metadata".to_owned(), meta);
                new
            }
        };
        let mut managed: Vec<Value> = old
            .as_ref()
            .and_then(|o| o.get("metadata")?.get("managedFields")?.as_array().cloned())
            .unwrap_or_default();
        let entry =
            json!({"manager": manager, "operation": "Apply", "apiVersion": kind.api_version()});
        let mine = managed.iter_mut().find(|e| {
            e.get("manager").and_then(Value::as_str) == Some(manager)
                && e.get("operation").and_then(Value::as_str) == Some("Apply")
        });
        match mine {
            Some(existing) => *existing = entry,
            None => managed.push(entry),
        }
        metadata_mut(&mut new).insert("managedFields".to_owned(), Value::Array(managed));
        let created = old.is_none();
        Ok((
            self.write(kind, ns, name, old.as_ref(), new, dry_run),
            created,
        ))
    }

    /// `DELETE` of an object: removes it, or only marks it deleted while it has finalizers.
    pub(crate) fn delete(
        &mut self,
        kind: &KindInfo,
        ns: Option<&str>,
        name: &str,
        dry_run: bool,
    ) -> Result<Value, ApiError> {
        let old = self
            .get(kind, ns, name)
            .ok_or_else(|| ApiError::not_found(&kind.plural, name))?;
        if has_finalizers(&old) {
            if old
                .get("metadata")
                .and_then(|m| m.get("deletionTimestamp"))
                .is_some()
                || dry_run
            {
                return Ok(old);
            }
            let mut new = old;
            let meta = metadata_mut(&mut new);
            meta.insert("deletionTimestamp".to_owned(), now_rfc3339().into());
            meta.insert("deletionGracePeriodSeconds".to_owned(), 0.into());
            return Ok(self.commit(kind, ns, name, new, false));
        }
        if dry_run {
            return Ok(old);
        }
        Ok(self.commit(kind, ns, name, old, true))
    }

    fn existing(
        &self,
        kind: &KindInfo,
        ns: Option<&str>,
        name: &str,
        body: &Value,
    ) -> Result<Value, ApiError> {
        check_name(kind, name, body)?;
        let old = self
            .get(kind, ns, name)
            .ok_or_else(|| ApiError::not_found(&kind.plural, name))?;
        check_precondition(kind, name, Some(&old), body)?;
        Ok(old)
    }
}

/// `old` with its `status` replaced by the one in `body` (if any).
fn with_status_of(mut old: Value, body: &Value) -> Value {
    if let Some(status) = body.get("status") {
        object_mut(&mut old).insert("status".to_owned(), status.clone());
    }
    old
}

/// `new`, with the `status` of `old` if `new` has none.
fn keep_status(mut new: Value, old: &Value) -> Value {
    if new.get("status").is_none()
        && let Some(status) = old.get("status")
    {
        object_mut(&mut new).insert("status".to_owned(), status.clone());
    }
    new
}

fn check_type(kind: &KindInfo, body: &Value) -> Result<(), ApiError> {
    if !body.is_object() {
        return Err(ApiError::bad_request(
            "the request body must be a JSON object",
        ));
    }
    let api_version = kind.api_version();
    for (field, expected) in [
        ("apiVersion", api_version.as_str()),
        ("kind", kind.kind.as_str()),
    ] {
        if let Some(actual) = str_at(body, &[field])
            && actual != expected
        {
            return Err(ApiError::bad_request(format!(
                "{field} {actual:?} does not match {expected:?}"
            )));
        }
    }
    Ok(())
}

fn check_name(kind: &KindInfo, name: &str, body: &Value) -> Result<(), ApiError> {
    match str_at(body, &["metadata", "name"]) {
        Some(actual) if !actual.is_empty() && actual != name => {
            Err(ApiError::bad_request(format!(
                "the name of the object ({actual}) does not match the name on the URL ({name}) for {}",
                kind.plural
            )))
        }
        _ => Ok(()),
    }
}

fn check_precondition(
    kind: &KindInfo,
    name: &str,
    old: Option<&Value>,
    body: &Value,
) -> Result<(), ApiError> {
    match str_at(body, &["metadata", "resourceVersion"]) {
        Some(wanted) if !wanted.is_empty() => {
            let current = old.and_then(|o| str_at(o, &["metadata", "resourceVersion"]));
            if current == Some(wanted) {
                Ok(())
            } else if current.is_none() {
                Err(ApiError::not_found(&kind.plural, name))
            } else {
                Err(ApiError::conflict(&kind.plural, name))
            }
        }
        _ => Ok(()),
    }
}
