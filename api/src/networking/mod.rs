//! `networking.istio.io/v1` kinds, with Istio's field names and YAML shapes.
//!
//! `v1beta1` and `v1alpha3` documents load into the same types: for the
//! fields Isthmus supports the three versions are identical.

mod common;
mod destination_rule;
mod gateway;
mod service_entry;
mod sidecar;
mod virtual_service;

pub use common::*;
pub use destination_rule::*;
pub use gateway::*;
pub use service_entry::*;
pub use sidecar::*;
pub use virtual_service::*;

/// The API group of every kind in this module.
pub const GROUP: &str = "networking.istio.io";
