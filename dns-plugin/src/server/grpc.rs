//! CoreDNS's `grpc` plugin protocol: `coredns.dns.DnsService/Query` carries
//! one DNS message in wire format each way. A Corefile block
//! `global:53 { grpc <our address> }` delegates the zone to us (see
//! `deploy/coredns/`).
//!
//! Each query goes through the same [`Handler`] as UDP/TCP, answered as over
//! TCP (no size limit: CoreDNS truncates for its own UDP clients).

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use hickory_proto::rr::Record;
use hickory_server::net::NetError;
use hickory_server::net::runtime::TokioTime;
use hickory_server::net::xfer::Protocol;
use hickory_server::server::{Request, RequestHandler, ResponseHandler, ResponseInfo};
use hickory_server::zone_handler::MessageResponse;
use tonic::{Status, async_trait};

use super::{Handler, encode, formerr};
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
    let capture = Capture {
        id: request.metadata.id,
        slot: Arc::default(),
    };
    handler
        .handle_request::<_, TokioTime>(&request, capture.clone())
        .await;
    capture.slot.lock().ok()?.take()
}

/// A response handler that keeps the encoded message instead of sending it.
#[derive(Clone, Debug)]
struct Capture {
    /// The request's id (for a SERVFAIL if the answer cannot be encoded).
    id: u16,
    slot: Arc<Mutex<Option<Vec<u8>>>>,
}

#[async_trait]
impl ResponseHandler for Capture {
    async fn send_response<'a>(
        &mut self,
        response: MessageResponse<
            '_,
            'a,
            impl Iterator<Item = &'a Record> + Send + 'a,
            impl Iterator<Item = &'a Record> + Send + 'a,
            impl Iterator<Item = &'a Record> + Send + 'a,
            impl Iterator<Item = &'a Record> + Send + 'a,
        >,
    ) -> Result<ResponseInfo, NetError> {
        let (info, bytes) = encode(response, self.id, u16::MAX)?;
        if let Ok(mut slot) = self.slot.lock() {
            *slot = Some(bytes);
        }
        Ok(info)
    }
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
