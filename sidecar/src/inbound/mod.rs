//! Inbound side: traffic from other workloads to this one (mTLS, authorization).

pub mod authz;
