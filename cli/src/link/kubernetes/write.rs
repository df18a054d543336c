//! Writing one peer entry into a MeshFederation on the API server, safely against other
//! writers (the federation controller writes the same object's status and finalizers).
//!
//! The CRD's `spec.peers` is a plain list (not `x-kubernetes-list-type: map`), so server-side
//! apply would own the whole list and drop peers another manager wrote. Instead: read,
//! change only the entry named like the peer, and replace with the object's
//! `resourceVersion` as a precondition; on `409 Conflict` read again and redo, a bounded number
//! of times. Everything else in the object (other peers, unknown fields, finalizers, status)
//! is written back as read.

use std::time::Duration;

use anyhow::{Context, bail};
use isthmus_api::federation::Peer;
use kube::api::{Api, DynamicObject, PostParams};
use serde_json::Value;

use super::check::{check, join};
use super::discover::with_type;

/// Attempts before giving up when every write conflicts (client-go's `DefaultRetry` has 5).
pub(super) const MAX_ATTEMPTS: u32 = 5;
/// Field manager recorded for link's writes.
const FIELD_MANAGER: &str = "isthmus-link";

/// What writing a peer entry did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub(super) enum Outcome {
    Added,
    Updated,
    Unchanged,
}

impl std::fmt::Display for Outcome {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Added => "added",
            Self::Updated => "updated",
            Self::Unchanged => "unchanged",
        })
    }
}

/// `object` with `peer` in `spec.peers`: an entry with the same name is replaced (later
/// duplicates of the name dropped), other entries are kept as they are.
pub(super) fn with_peer(
    object: &DynamicObject,
    peer: &Peer,
) -> anyhow::Result<(DynamicObject, Outcome)> {
    let mut object = object.clone();
    let Some(spec) = object.data.get_mut("spec").and_then(Value::as_object_mut) else {
        bail!("spec is not a mapping");
    };
    let peers = spec
        .entry("peers")
        .or_insert_with(|| Value::Array(Vec::new()));
    if peers.is_null() {
        *peers = Value::Array(Vec::new());
    }
    let Some(peers) = peers.as_array_mut() else {
        bail!("spec.peers is not a list");
    };
    let named = |p: &Value| p["name"].as_str() == Some(peer.name.as_str());
    let entry = serde_json::to_value(peer)?;
    let outcome = match peers.iter().position(named) {
        None => {
            peers.push(entry);
            Outcome::Added
        }
        Some(i) => {
            let same = serde_json::from_value::<Peer>(peers[i].clone()).is_ok_and(|p| p == *peer);
            let duplicates = peers.iter().filter(|p| named(p)).count() > 1;
            if same && !duplicates {
                return Ok((object, Outcome::Unchanged));
            }
            peers[i] = entry;
            let mut seen = 0;
            peers.retain(|p| {
                seen += usize::from(named(p));
                !named(p) || seen == 1
            });
            Outcome::Updated
        }
    };
    Ok((object, outcome))
}

/// Writes `peer` into the MeshFederation `object` (as last read) through `api`; returns what
/// changed and how many writes conflicted with another writer first.
pub(super) async fn write_peer(
    api: &Api<DynamicObject>,
    object: DynamicObject,
    peer: &Peer,
    context: &str,
) -> anyhow::Result<(Outcome, u32)> {
    let name = object.metadata.name.clone().unwrap_or_default();
    let namespace = object.metadata.namespace.clone().unwrap_or_default();
    let what = format!("context {context}: MeshFederation {namespace}/{name}");
    let params = PostParams {
        field_manager: Some(FIELD_MANAGER.to_owned()),
        ..PostParams::default()
    };
    let mut current = object;
    for attempt in 0..MAX_ATTEMPTS {
        let (changed, outcome) = with_peer(&current, peer).with_context(|| what.clone())?;
        if outcome == Outcome::Unchanged {
            return Ok((outcome, attempt));
        }
        // Never add anything Isthmus itself would reject.
        let before = check(&current).with_context(|| what.clone())?;
        let after = check(&changed).with_context(|| what.clone())?;
        let new = after.new_errors(&before);
        if !new.is_empty() {
            bail!(
                "context {context}: writing peer {} would make it invalid: {}",
                peer.name,
                join(new)
            );
        }
        match api.replace(&name, &params, &changed).await {
            Ok(_) => return Ok((outcome, attempt)),
            Err(kube::Error::Api(status)) if status.code == 409 => {
                if attempt + 1 == MAX_ATTEMPTS {
                    break;
                }
                tracing::debug!(%what, attempt, "conflict, reading again");
                tokio::time::sleep(Duration::from_millis(10 << attempt)).await;
                current = api
                    .get(&name)
                    .await
                    .map(with_type)
                    .with_context(|| format!("{what}: reading it again after a conflict"))?;
            }
            Err(e) => return Err(e).with_context(|| format!("{what}: writing peer {}", peer.name)),
        }
    }
    bail!(
        "{what}: every one of {MAX_ATTEMPTS} writes conflicted with another writer (HTTP 409); \
         peer {} was not written here, run isthmus link again",
        peer.name
    )
}
