//! What Isthmus's loader says about a MeshFederation read from an API server, split into what
//! stops `isthmus link` and what it only reports.
//!
//! Link copies `spec.local`'s cluster, network, locality and trust domain into the other
//! cluster's peer entry, so an error there stops it. Any other error (say an empty
//! `spec.local.gatewayAddresses`) was in the object before link touched it: link reports it as a
//! warning and refuses only writes that would add an error of their own.

use anyhow::anyhow;
use isthmus_api::LoadError;
use isthmus_api::federation::MeshFederationSpec;
use isthmus_api::load::load_value;
use kube::api::DynamicObject;

/// The fields of `spec.local` that become the peer entry elsewhere.
const COPIED: [&str; 4] = ["cluster", "network", "locality", "trustDomain"];

/// A MeshFederation's spec and its validation errors.
pub(super) struct Checked {
    pub spec: MeshFederationSpec,
    pub errors: Vec<LoadError>,
}

impl Checked {
    /// Errors in the fields link copies into a peer entry.
    pub fn copied_errors(&self) -> Vec<&LoadError> {
        self.errors
            .iter()
            .filter(|e| {
                e.field.as_deref().is_some_and(|f| {
                    COPIED
                        .iter()
                        .any(|c| f.strip_prefix("spec.local.") == Some(*c))
                })
            })
            .collect()
    }

    /// Errors in `self` that `before` did not have.
    pub fn new_errors(&self, before: &Checked) -> Vec<&LoadError> {
        self.errors
            .iter()
            .filter(|e| !before.errors.contains(e))
            .collect()
    }
}

/// Loads `object` like every Isthmus source does. Fails only if its spec does not even have
/// the MeshFederation shape (an unknown field, a wrong type).
pub(super) fn check(object: &DynamicObject) -> anyhow::Result<Checked> {
    let errors = load_value(serde_json::to_value(object)?)
        .err()
        .unwrap_or_default();
    let spec = serde_json::from_value(object.data["spec"].clone()).map_err(|e| {
        if errors.is_empty() {
            anyhow!("spec: {e}")
        } else {
            anyhow!("{}", join(errors.iter()))
        }
    })?;
    Ok(Checked { spec, errors })
}

/// Errors as one line.
pub(super) fn join<'a>(errors: impl IntoIterator<Item = &'a LoadError>) -> String {
    errors
        .into_iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join("; ")
}
