//! CoreDNS's `grpc` plugin protocol: `coredns.dns.DnsService/Query` carries
//! one DNS message in wire format each way. A Corefile block
//! `global:53 { grpc <our address> }` delegates the zone to us (see
//! `deploy/coredns/`).
//!
//! Each query goes through the same [`Handler`] as UDP/TCP, answered as over
//! TCP (no size limit: CoreDNS truncates for its own UDP clients).

use std::net::SocketAddr;

use hickory_server::net::runtime::TokioTime;
use hickory_server::net::xfer::Protocol;
use hickory_server::server::{Request, RequestHandler};
use tonic::{Status, async_trait};

use super::{Capture, Handler, formerr};
use crate::coredns::DnsPacket;
use crate::coredns::dns_service_server::{DnsService, DnsServiceServer};

/// Answers one DNS message given as bytes, as the TCP listener would.
///
/// `None` when no answer is due: fewer than 12 bytes (not even a header) or
/// a response rather than a query. An undecodable message gets FORMERR.
pub async fn answer_bytes(handler: &Handler, message: &[u8], src: SocketAddr) -> Option<Vec<u8>> {
    let request = match Request::from_bytes(message.to_vec(), src, Protocol::Tcp) {
        Ok(request) => request,
        Err(_) => return formerr(message),
    };
    if request.metadata.message_type == hickory_proto::op::MessageType::Response {
        return None;
    }
    let capture = Capture::new(request.metadata.id, u16::MAX);
    handler
        .handle_request::<_, TokioTime>(&request, capture.clone())
        .await;
    capture.take()
}

/// The gRPC service.
#[derive(Clone, Debug)]
pub struct CoreDnsService {
    handler: Handler,
}

impl CoreDnsService {
    pub fn new(handler: Handler) -> CoreDnsService {
        CoreDnsService { handler }
    }

    /// The tonic service to add to a server.
    pub fn into_service(self) -> DnsServiceServer<CoreDnsService> {
        DnsServiceServer::new(self)
    }
}

#[async_trait]
impl DnsService for CoreDnsService {
    async fn query(
        &self,
        request: tonic::Request<DnsPacket>,
    ) -> Result<tonic::Response<DnsPacket>, Status> {
        let src = request
            .remote_addr()
            .unwrap_or_else(|| SocketAddr::from(([0, 0, 0, 0], 0)));
        let packet = request.into_inner();
        match answer_bytes(&self.handler, &packet.msg, src).await {
            Some(msg) => Ok(tonic::Response::new(DnsPacket { msg })),
            None => Err(Status::invalid_argument("not a DNS query message")),
        }
    }
}
