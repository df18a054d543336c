//! DNS over UDP: one receive loop per socket.
//!
//! hickory-server's UDP listener spawns a task per datagram and hands each
//! response through a channel to the socket's task. Here the loop reads a
//! datagram, answers A/AAAA queries for service names in place
//! ([`Handler::answer_fast`]: no allocation, no task) and sends the answer
//! from the same buffer; only the rest — other types, absent names, TC,
//! forwarding, malformed packets — becomes a task through the full
//! [`Handler`], at most [`SLOW_IN_FLIGHT`] at a time per socket (a
//! forwarded query may wait seconds for its upstream).
//!
//! The per-source rate limit applies to every UDP query, fast or not,
//! before any work: a dropped query gets no answer, so a spoofed source
//! cannot use us as a reflector.
//!
//! `--udp-fast-path off` registers the sockets with hickory-server's own UDP
//! listener instead (every query through the handler, as before this loop
//! existed): the reference behaviour, at about three quarters of the speed.

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;

use hickory_proto::op::MessageType;
use hickory_server::net::xfer::Protocol;
use hickory_server::server::Request;
use tokio::net::UdpSocket;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use super::{Capture, Handler, MAX_UDP_PAYLOAD, formerr, udp_max_size};

/// Datagrams read per wake-up before the loop checks for shutdown again.
const BATCH: usize = 64;
/// Queries per socket on the full path at once; more are dropped (and counted).
pub const SLOW_IN_FLIGHT: usize = 1024;
/// Receive buffer: the largest UDP payload, so an oversize datagram is seen whole
/// (and refused as malformed) instead of cut to a prefix that might parse.
const RECV_BUFFER: usize = 65_535;

/// Serves DNS on `socket` until `shutdown`; then waits for the queries on the
/// full path to finish (the caller bounds that wait).
pub async fn serve(socket: UdpSocket, handler: Handler, shutdown: CancellationToken) {
    let socket = Arc::new(socket);
    let mut recv = vec![0u8; RECV_BUFFER];
    let mut out = vec![0u8; usize::from(MAX_UDP_PAYLOAD)];
    let slots = Arc::new(Semaphore::new(SLOW_IN_FLIGHT));
    let mut slow = JoinSet::new();
    loop {
        tokio::select! {
            biased;
            () = shutdown.cancelled() => break,
            ready = socket.readable() => {
                if let Err(error) = ready {
                    tracing::error!(%error, "DNS UDP socket failed; no longer serving on it");
                    break;
                }
            }
        }
        for _ in 0..BATCH {
            let (len, src) = match socket.try_recv_from(&mut recv) {
                Ok(received) => received,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(error) => {
                    // E.g. a queued ICMP error: about one datagram, not the socket.
                    tracing::debug!(%error, "receiving a DNS datagram failed");
                    continue;
                }
            };
            if src.port() == 0 || src.ip().is_unspecified() {
                continue; // nowhere to answer
            }
            if !handler.allow_udp(src.ip()) {
                continue;
            }
            let query = &recv[..len];
            if let Some(answer) = handler.answer_fast(query, &mut out) {
                send(&socket, &out[..answer.len], src).await;
                continue;
            }
            let Ok(slot) = slots.clone().try_acquire_owned() else {
                handler.metrics().udp_overflow.inc();
                continue;
            };
            slow.spawn(full_path(
                handler.clone(),
                socket.clone(),
                query.to_vec(),
                src,
                slot,
            ));
        }
        while slow.try_join_next().is_some() {}
    }
    while slow.join_next().await.is_some() {}
}

async fn send(socket: &UdpSocket, bytes: &[u8], dst: SocketAddr) {
    let sent = match socket.try_send_to(bytes, dst) {
        Err(e) if e.kind() == io::ErrorKind::WouldBlock => socket.send_to(bytes, dst).await,
        other => other,
    };
    if let Err(error) = sent {
        tracing::debug!(%error, %dst, "sending a DNS response failed");
    }
}

/// One query through the full handler, as hickory's UDP listener would run it.
async fn full_path(
    handler: Handler,
    socket: Arc<UdpSocket>,
    query: Vec<u8>,
    src: SocketAddr,
    _slot: OwnedSemaphorePermit,
) {
    let malformed = formerr(&query);
    let request = match Request::from_bytes(query, src, Protocol::Udp) {
        Ok(request) => request,
        Err(_) => {
            // Fewer than 12 bytes or a response: silence. Else FORMERR.
            if let Some(reply) = malformed {
                send(&socket, &reply, src).await;
            }
            return;
        }
    };
    if request.metadata.message_type == MessageType::Response {
        return; // never answer a response: reflection
    }
    let reply = Capture::new(request.metadata.id, udp_max_size(&request));
    handler.answer(&request, reply.clone()).await;
    if let Some(bytes) = reply.take() {
        send(&socket, &bytes, src).await;
    }
}
