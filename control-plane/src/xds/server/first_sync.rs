//! Where a stream is in its first sync (both protocols).
//!
//! A stream waits for a place ([`Inner::syncing`]) before its first
//! response and keeps it until the proxy has answered every response, LDS
//! included (Envoy asks for LDS after CDS and EDS), or for
//! [`first_sync_hold`](super::AdsOptions::first_sync_hold).
//! The places are as many as the push throttle, so a mass connect is served
//! a proxy's whole sync at a time (its requests wait only for the push
//! throttle, which few streams compete for) instead of type by type over
//! every proxy.

use tokio::sync::OwnedSemaphorePermit;
use tokio::time::Instant;
use tracing::debug;

use super::Inner;

pub(super) enum FirstSync {
    /// No response sent yet.
    Waiting,
    /// Holding a place until the proxy is synced or the deadline passes.
    Holding {
        _place: OwnedSemaphorePermit,
        until: Instant,
    },
    /// Synced, or gave up its place.
    Done,
}

impl FirstSync {
    /// Takes a place before the stream's first response (waits for one).
    pub(super) async fn take_place(&mut self, inner: &Inner) {
        if !matches!(self, FirstSync::Waiting) {
            return;
        }
        *self = match inner.syncing.clone().acquire_owned().await {
            Ok(place) => FirstSync::Holding {
                _place: place,
                until: Instant::now() + inner.first_sync_hold,
            },
            Err(_) => FirstSync::Done,
        };
    }

    /// When the stream gives up its place if the proxy has not synced by
    /// then; `None` when it holds none.
    pub(super) fn deadline(&self) -> Option<Instant> {
        match self {
            FirstSync::Holding { until, .. } => Some(*until),
            FirstSync::Waiting | FirstSync::Done => None,
        }
    }

    pub(super) fn is_holding(&self) -> bool {
        matches!(self, FirstSync::Holding { .. })
    }

    /// Gives the place up: the proxy synced (`synced`), or took too long.
    pub(super) fn end(&mut self, inner: &Inner, synced: bool) {
        if let FirstSync::Holding { until, .. } = self {
            let held = (Instant::now() + inner.first_sync_hold).saturating_duration_since(*until);
            debug!(synced, held_ms = held.as_millis(), "first sync over");
            *self = FirstSync::Done;
        }
    }
}
