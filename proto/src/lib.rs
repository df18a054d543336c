//! Isthmus's own gRPC APIs, generated from `proto/isthmus/**` at build time
//! (protox: no `protoc` on the machine). Servers and clients of every
//! component use these modules; there is one copy of each message type.

#![forbid(unsafe_code)]
#![allow(missing_docs)]

/// `isthmus.ca.v1`: a workload sends a CSR and its credential, gets its certificate chain.
#[allow(clippy::all, clippy::pedantic)]
pub mod ca {
    tonic::include_proto!("isthmus.ca.v1");
}

/// `isthmus.dns.v1`: the control plane streams full snapshots of the cross-cluster names
/// (VIPs, ports, per-cluster endpoints, locality and health) to the DNS server.
#[allow(clippy::all, clippy::pedantic)]
pub mod dns {
    tonic::include_proto!("isthmus.dns.v1");
}

/// `isthmus.federation.v1`: a federation controller streams its cluster's exported catalog
/// (services, ports, endpoint groups with health, trust bundle) to linked peers over mTLS.
#[allow(clippy::all, clippy::pedantic)]
pub mod federation {
    tonic::include_proto!("isthmus.federation.v1");
}
