//! The protocol state machines, without I/O.

mod delta;
mod sotw;

use std::collections::BTreeSet;

use envoy_types::pb::envoy::config::core::v3::Node;

use super::state::{Outcome, State};

/// A sidecar's protocol state; the workload certificate (`default`) is local.
fn new_state() -> State {
    State::new(
        Node {
            id: "sidecar~127.0.0.1~sleep.sample~sample.svc.cluster.local".into(),
            ..Node::default()
        },
        BTreeSet::new(),
        ["default".to_string()].into(),
    )
}

/// Whether an accepted response publishes; panics on any other outcome.
fn accepted(outcome: &Outcome) -> bool {
    match outcome {
        Outcome::Accepted { publish } => *publish,
        other => panic!("expected an accepted response, got {other:?}"),
    }
}
