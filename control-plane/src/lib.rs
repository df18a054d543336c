//! Isthmus control plane: service registry, Envoy v3 xDS over ADS, cluster CA.
//!
//! Not built yet (issue 3). It will subscribe to the `isthmus-config` store
//! and serve sidecars, gateways and the DNS server.
