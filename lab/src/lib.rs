//! `isthmus lab`: a whole federation of clusters as local processes on one
//! machine, and the traffic tools that drive it (curl, load, canary,
//! failover drills). The CLI and the e2e-multicluster scenarios both use
//! this library; there is no second harness.
//!
//! ```text
//! plan (addresses, names) ─► prepare (certs, config dirs, tokens)
//!   ─► supervisor (child processes, restarts, control API, state.json)
//!   ─► client (curl, load) ─► policy / drill (canary weights, failover)
//! ```

#![forbid(unsafe_code)]

pub mod app;
pub mod client;
pub mod components;
pub mod drill;
pub mod lab;
pub mod plan;
pub mod policy;
pub mod prepare;
pub mod rotate;
pub mod state;
pub mod supervisor;

pub use plan::LabSpec;

#[cfg(test)]
mod tests;
