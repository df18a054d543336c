//! The cluster CA's gRPC certificate service (port 15012): a workload's sidecar sends a
//! CSR with its credential and gets back a certificate for its own SPIFFE identity.
//!
//! Request path: `authorization: Bearer <token>` → [`Authenticator`] (Kubernetes
//! TokenReview, or bootstrap tokens in directory mode) → the caller's namespace and service
//! account → `spiffe://<ca trust domain>/ns/<ns>/sa/<sa>` → [`ClusterCa::sign_csr`]. The
//! identity always follows the token; nothing in the CSR can change it.
//!
//! The CA in use lives in a [`CurrentCa`]; [`CaReloader`] swaps it when the
//! `cacerts` change and publishes the trust bundle (root rotation without a
//! restart).
//!
//! [`ClusterCa::sign_csr`]: isthmus_identity::ClusterCa::sign_csr

mod auth;
mod reload;
mod server;

pub use auth::bootstrap::{BootstrapTokens, TokensError};
pub use auth::token_review::TokenReviewAuthenticator;
pub use auth::{AuthError, Authenticator, Caller};
pub use reload::{CaMetrics, CaReloader, CaSource, CurrentCa, ReloadError};
pub(crate) use reload::{ca_from_secret, fetch_secret};
pub use server::CertificateServer;

/// Generated protobuf and gRPC code for `isthmus.ca.v1` (from the `isthmus-proto` crate).
pub use isthmus_proto::ca as proto;
