//! The Isthmus DNS server: authoritative answers for cross-cluster names,
//! `<svc>.<ns>.global` and `<svc>.<ns>.svc.clusterset.local`, with
//! locality-aware failover.
//!
//! # Place in the data flow
//!
//! ```text
//! control plane registry ──isthmus.dns.v1.DnsFeed/Watch──► feed ──► zone::Snapshot ──ArcSwap──► server::Handler
//!   (services, endpoints,     full snapshot on connect and      (records built once,            (hickory-server
//!    health per cluster)      after every change, ~100 ms)       ordered for this cluster)        UDP/TCP, CoreDNS gRPC)
//! ```
//!
//! - [`feed`] keeps one `Watch` stream to the control plane. Every message is
//!   a full snapshot; it is turned into an immutable [`zone::Snapshot`] and
//!   swapped in atomically. When the control plane is away the server keeps
//!   answering from the last snapshot and reconnects with jittered
//!   exponential backoff.
//! - [`zone`] builds every answer ahead of time: for each configured zone and
//!   service the A/AAAA/SRV records, already ordered for this server's
//!   cluster and locality (`--cluster`, `--locality`), so the request path is a
//!   hash lookup and a copy into the response — no lock, no allocation of
//!   records.
//! - [`server`] is a hickory-server [`RequestHandler`](hickory_server::server::RequestHandler)
//!   (the same handler serves UDP, TCP and CoreDNS's `grpc` plugin protocol),
//!   plus the optional upstream forwarder and per-source rate limit.
//! - [`run::start`] wires it all, with the admin HTTP server (`/ready`,
//!   `/metrics`) and one cancellation token for graceful shutdown.
//!
//! # The feed protocol (`isthmus.dns.v1`)
//!
//! `DnsFeed.Watch(WatchRequest) returns (stream Snapshot)`, served by the
//! control plane on its gRPC port (15010) next to ADS. A `Snapshot` is the
//! complete list of global services: name, namespace, VIPs, named ports and,
//! per cluster, the addresses that reach the service there (pods locally,
//! east-west gateways for remote clusters as imported by the federation
//! controller), each endpoint's locality and health, and the cluster's
//! healthy/total counts. See `proto/proto/isthmus/dns/v1/dns.proto`.
//!
//! # VIPs
//!
//! The control plane gives each global service the `addresses` of its
//! ServiceEntry when it declares any; otherwise one address derived from the
//! name `<svc>.<ns>.global` by hashing into a range (default
//! `240.240.0.0/16`), so every cluster computes the same VIP for the same
//! name without coordination; collisions are resolved deterministically
//! (names in ascending order each take the first free slot of their own probe
//! sequence). See `isthmus_control_plane::dns_feed::vip`.
//!
//! # Answers
//!
//! | Query | Answer |
//! | --- | --- |
//! | A/AAAA `<svc>.<ns>.<zone>` | policy `vip`: the VIP; policy `endpoints`: healthy addresses, this cluster first, then by locality proximity; clusters with no healthy endpoint left out; if none is healthy, all |
//! | SRV `_<port>._tcp.<svc>.<ns>.<zone>` | `0 100 <port> <svc>.<ns>.<zone>`, addresses in the additional section |
//! | SRV `<svc>.<ns>.<zone>` | one SRV per named port |
//! | SOA/NS at the apex | the zone's SOA (serial = snapshot version) and NS |
//! | unknown name in a zone | NXDOMAIN, SOA in the authority section |
//! | existing name, other type | NOERROR, no answer, SOA in the authority section |
//! | name outside every zone | REFUSED, or forwarded with `--upstream` |
//!
//! The clusterset zone uses the MCS layout `<svc>.<ns>.svc.clusterset.local`.
//! TTL 5 s by default. UDP answers honour the client's EDNS buffer size
//! (512 bytes without EDNS) and set TC when they do not fit.

#![forbid(unsafe_code)]

pub mod admin;
pub mod feed;
pub mod metrics;
pub mod run;
pub mod server;
pub mod zone;

/// Entry points for fuzz targets; not a stable API.
#[cfg(any(feature = "fuzzing", test))]
#[doc(hidden)]
pub mod internal;

/// CoreDNS's `grpc` plugin protocol (`coredns.dns.DnsService`).
#[allow(
    clippy::all,
    clippy::pedantic,
    missing_docs,
    missing_debug_implementations
)]
pub mod coredns {
    tonic::include_proto!("coredns.dns");
}
