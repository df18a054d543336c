//! Incremental (delta) ADS: `DeltaAggregatedResources`, as Envoy speaks it
//! (Istio's default).
//!
//! The same server, port, node handling, debounce, push throttle,
//! first-sync places and generation cache as state-of-the-world streams;
//! what differs is what travels:
//! - A response carries only resources whose content the proxy does not
//!   have (each with its version, a digest of its content), and in
//!   `removed_resources` the names it holds that are gone. An endpoint
//!   change sends each subscribed proxy the one changed assignment, and the
//!   ACK is a type URL and a nonce.
//! - Subscriptions: LDS and CDS are wildcards when the type's first request
//!   names nothing or names `*`; every type may name resources
//!   (`resource_names_subscribe` / `_unsubscribe`). A name subscribed to
//!   that does not exist is answered in `removed_resources`, as the xDS
//!   protocol asks; one subscribed again is sent again (the proxy may have
//!   dropped it). Unsubscribing needs no answer.
//! - On reconnect, `initial_resource_versions` (in the type's first
//!   request) say what the proxy has: a resource it has in the current
//!   version is not sent again, one that no longer exists is removed.
//! - Each response has a fresh nonce. A request echoing it without
//!   `error_detail` is an ACK; with one, a NACK: logged and counted, the
//!   response's resources count as not applied (the proxy keeps its
//!   previous config) and are not sent again until they change. A
//!   response the proxy never answered counts as accepted once a later one
//!   is answered.
//! - `system_version_info` is `<state version>-<digest of everything the
//!   proxy has of the type>`, for `/debug/syncz`.
//! - Make before break: when a push changes several types, additions and
//!   changes go first in CDS → EDS → LDS → RDS order, removals after.
//! - A type the generator does not know or refuses is logged and counted
//!   and gets no response; the stream stays up.

mod connection;
mod known;
mod wire;

pub(super) use connection::Connection;
pub(super) use envoy_types::pb::envoy::service::discovery::v3::DeltaDiscoveryRequest as Request;
pub(super) use wire::Response;
