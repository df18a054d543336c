//! Test fixtures shared by the Isthmus crates.
//!
//! Isthmus talks to Kubernetes through `kube-rs`, but tests run on machines with no
//! Kubernetes API server. This crate provides [`apiserver::FakeApiServer`]: a small,
//! in-process API server that speaks the subset of the Kubernetes REST protocol that
//! `kube-rs` uses (list, get, create, replace, merge patch, server-side apply, delete and
//! chunked watch streams with resource versions, bookmarks and `410 Gone`) over real
//! HTTP/1.1 on loopback. Tests point a real [`kube::Client`] at it, drive state from the
//! test side with plain [`serde_json::Value`] objects, and can simulate API-server
//! restarts and etcd compaction to exercise watcher recovery paths.
//!
//! ```no_run
//! # async fn demo() {
//! use isthmus_test_support::apiserver::FakeApiServer;
//! use serde_json::json;
//!
//! let server = FakeApiServer::start().await;
//! server.apply(json!({
//!     "apiVersion": "v1",
//!     "kind": "Service",
//!     "metadata": {"name": "reviews", "namespace": "default"},
//!     "spec": {"ports": [{"port": 9080}]}
//! }));
//! let client = server.client();
//! // ... hand `client` to the code under test ...
//! server.restart().await; // drop every connection, keep the stored objects
//! # }
//! ```
//!
//! This crate is only meant for `[dev-dependencies]`.

#![forbid(unsafe_code)]
pub mod apiserver;
