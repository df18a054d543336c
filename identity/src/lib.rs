//! Workload identity for Isthmus: the cluster CA, SPIFFE certificates, and their verification.
//!
//! Every workload is `spiffe://<trust-domain>/ns/<ns>/sa/<sa>`. All clusters of a federation
//! share one root; each cluster has its own intermediate (Istio's `cacerts` layout) that
//! carries the cluster's trust domain as a URI SAN `spiffe://<trust-domain>`. Data flows:
//!
//! - [`tool`] creates the root and the per-cluster intermediates (`isthmus ca`, the lab) and
//!   writes them as a `cacerts` directory;
//! - [`ClusterCa`] loads and checks that directory (or a Kubernetes Secret's data) in the
//!   control plane and issues leaf certificates ([`ClusterCa::sign_csr`]) whose only SAN is
//!   the caller's SPIFFE ID;
//! - [`verify_workload_chain`] and the rustls verifiers in [`tls`] check a peer's chain with
//!   webpki **and** bind the leaf to its issuer: a leaf's trust domain must be the trust
//!   domain of the intermediate that signed it, so a compromised cluster cannot mint another
//!   cluster's identities. Sidecars, gateways and the federation controller use these.

#![forbid(unsafe_code)]

mod bundle;
mod ca;
mod cert;
mod issue;
mod pem;
pub mod tls;
pub mod tool;
mod verify;

pub use bundle::{BundleError, TrustBundle};
pub use ca::{
    CA_CERT_FILE, CA_KEY_FILE, CERT_CHAIN_FILE, CacertsPems, ClusterCa, LoadError, ROOT_CERT_FILE,
};
pub use cert::{ca_trust_domain, peer_identity};
pub use issue::{CLOCK_SKEW, DEFAULT_TTL, IssueError, IssuedCert, IssuedKeyAndCert, MAX_TTL};
pub use pem::{PemError, certs_from_pem};
pub use verify::{VerifyError, verify_workload_chain};

pub use isthmus_api::naming::SpiffeId;
pub use rustls_pki_types::{CertificateDer, PrivateKeyDer, UnixTime};
