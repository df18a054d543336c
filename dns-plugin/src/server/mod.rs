//! The request path: a hickory-server [`RequestHandler`] answering from the
//! current [`Snapshot`], loaded with one atomic read per query.
//!
//! `handle_request`: header checks (opcode, EDNS version, exactly one
//! question) → zone → [`Snapshot::lookup`] → records handed to hickory's
//! encoder, which applies the client's UDP size and sets TC. Names outside
//! the zones are REFUSED, or forwarded to `upstream`. The same handler serves
//! TCP (hickory's listener), CoreDNS's gRPC plugin ([`grpc`]) and every UDP
//! query that the fast path ([`fast`], run by our own receive loop in
//! [`udp`]) leaves to it; with `--udp-fast-path off`, hickory-server's own
//! UDP listener sends it every UDP query. The per-source rate limit applies
//! to UDP only, in whichever loop receives the datagram.

pub mod fast;
pub mod forward;
pub mod grpc;
pub mod ratelimit;
pub mod udp;

use std::sync::Arc;
use std::time::Instant;

use arc_swap::ArcSwap;
use hickory_proto::ProtoError;
use hickory_proto::op::{
    Edns, Header, HeaderCounts, Message, MessageType, Metadata, OpCode, ResponseCode,
};
use hickory_proto::rr::{DNSClass, Record, RecordType};
use hickory_proto::serialize::binary::{BinDecodable, BinDecoder, BinEncodable, BinEncoder};
use hickory_server::net::runtime::Time;
use hickory_server::net::xfer::Protocol;
use hickory_server::server::{Request, RequestHandler, ResponseHandler, ResponseInfo};
use hickory_server::zone_handler::{MessageResponse, MessageResponseBuilder};

use crate::metrics::DnsMetrics;
use crate::zone::{Found, Snapshot};
use fast::FastAnswer;
use forward::Forwarder;
use ratelimit::RateLimiter;

/// Largest UDP payload we answer with, whatever the client advertises.
pub const MAX_UDP_PAYLOAD: u16 = 4096;

/// Answers DNS requests from the current snapshot.
#[derive(Clone, Debug)]
pub struct Handler {
    snapshot: Arc<ArcSwap<Snapshot>>,
    upstream: Option<Arc<Forwarder>>,
    rate_limit: Option<Arc<RateLimiter>>,
    metrics: DnsMetrics,
}

impl Handler {
    pub fn new(
        snapshot: Arc<ArcSwap<Snapshot>>,
        upstream: Option<Forwarder>,
        rate_limit: Option<RateLimiter>,
        metrics: DnsMetrics,
    ) -> Handler {
        Handler {
            snapshot,
            upstream: upstream.map(Arc::new),
            rate_limit: rate_limit.map(Arc::new),
            metrics,
        }
    }

    /// Counts one UDP query from `src`; false (and counted as dropped) when it
    /// is over the per-source rate limit. Dropped, not answered: an answer would
    /// still reflect traffic at a spoofed source. TCP is never limited.
    pub fn allow_udp(&self, src: std::net::IpAddr) -> bool {
        match &self.rate_limit {
            Some(limiter) if !limiter.allow(src) => {
                self.metrics.rate_limited.inc();
                false
            }
            _ => true,
        }
    }

    /// Answers a UDP query on the fast path ([`fast::answer`]) into `out`;
    /// `None` when it needs the full handler. Counts what it answers.
    pub fn answer_fast(&self, query: &[u8], out: &mut [u8]) -> Option<FastAnswer> {
        let started = Instant::now();
        let snapshot = self.snapshot.load();
        let answer = fast::answer(&snapshot, query, self.upstream.is_some(), out)?;
        self.metrics
            .observe(Some(answer.qtype), ResponseCode::NoError, started.elapsed());
        Some(answer)
    }

    pub fn metrics(&self) -> &DnsMetrics {
        &self.metrics
    }
}

/// The records of one answer, borrowed from the snapshot.
struct Answer<'a> {
    rcode: ResponseCode,
    authoritative: bool,
    answers: [&'a [Record]; 3],
    soa: Option<&'a Record>,
    additionals: &'a [Record],
}

impl<'a> Answer<'a> {
    fn error(rcode: ResponseCode) -> Answer<'a> {
        Answer {
            rcode,
            authoritative: false,
            answers: [&[], &[], &[]],
            soa: None,
            additionals: &[],
        }
    }
}

#[async_trait::async_trait]
impl RequestHandler for Handler {
    async fn handle_request<R: ResponseHandler, T: Time>(
        &self,
        request: &Request,
        response: R,
    ) -> ResponseInfo {
        // hickory-server's UDP listener (`--udp-fast-path off`) comes here unlimited;
        // our own UDP loop checks the limit before any work and calls `answer`.
        if request.protocol() == Protocol::Udp && !self.allow_udp(request.src().ip()) {
            return info_without_response(request, ResponseCode::Refused);
        }
        self.answer(request, response).await
    }
}

impl Handler {
    /// Answers `request` (no rate limit here) and counts it.
    pub async fn answer<R: ResponseHandler>(&self, request: &Request, response: R) -> ResponseInfo {
        let started = Instant::now();
        let qtype = request.queries.queries().first().map(|q| q.query_type());
        let info = self.respond(request, response).await;
        self.metrics
            .observe(qtype, info.response_code, started.elapsed());
        info
    }

    async fn respond<R: ResponseHandler>(&self, request: &Request, response: R) -> ResponseInfo {
        let snapshot = self.snapshot.load_full();
        let edns = response_edns(request);
        let answer = match self.classify(request, &snapshot) {
            Ok(answer) => answer,
            Err(Forward) => return self.forward(request, edns.as_ref(), response).await,
        };
        let mut metadata = Metadata::response_from_request(&request.metadata);
        metadata.response_code = answer.rcode;
        metadata.authoritative = answer.authoritative;
        metadata.recursion_available = self.upstream.is_some();
        let builder = MessageResponseBuilder::new(&request.queries, edns.as_ref());
        let message = builder.build(
            metadata,
            answer.answers.into_iter().flatten(),
            std::iter::empty(),
            answer.soa,
            answer.additionals,
        );
        send(response, message, request).await
    }

    /// Decides the answer from the snapshot, or that the query goes upstream.
    fn classify<'a>(
        &self,
        request: &Request,
        snapshot: &'a Snapshot,
    ) -> Result<Answer<'a>, Forward> {
        if request.metadata.op_code != OpCode::Query {
            return Ok(Answer::error(ResponseCode::NotImp));
        }
        if request.edns.as_ref().is_some_and(|e| e.version() > 0) {
            return Ok(Answer::error(ResponseCode::BADVERS));
        }
        let [query] = request.queries.queries() else {
            // No question (or several, which no server answers): FORMERR, RFC 9619.
            return Ok(Answer::error(ResponseCode::FormErr));
        };
        let name = query.name();
        let Some(zone) = snapshot.zone_for(name) else {
            return if self.upstream.is_some() {
                Err(Forward)
            } else {
                Ok(Answer::error(ResponseCode::Refused))
            };
        };
        if !matches!(query.query_class(), DNSClass::IN | DNSClass::ANY) {
            return Ok(Answer::error(ResponseCode::Refused));
        }
        let qtype = query.query_type();
        let mut answer = Answer {
            rcode: ResponseCode::NoError,
            authoritative: true,
            answers: [&[], &[], &[]],
            soa: None,
            additionals: &[],
        };
        match Snapshot::lookup(zone, name) {
            Found::Apex => {
                let soa = std::slice::from_ref(&zone.soa);
                let ns = std::slice::from_ref(&zone.ns);
                answer.answers = match qtype {
                    RecordType::SOA => [soa, &[], &[]],
                    RecordType::NS => [ns, &[], &[]],
                    RecordType::ANY => [soa, ns, &[]],
                    _ => [&[], &[], &[]],
                };
            }
            Found::Node(node) => {
                answer.answers = node.answers(qtype);
                if matches!(qtype, RecordType::SRV | RecordType::ANY) && !node.srv.is_empty() {
                    answer.additionals = &node.additionals;
                }
            }
            Found::EmptyNonTerminal => {}
            Found::NxDomain => answer.rcode = ResponseCode::NXDomain,
        }
        if answer.answers.iter().all(|s| s.is_empty()) {
            // NXDOMAIN or NODATA: the SOA tells resolvers how long to cache the absence.
            answer.soa = Some(&zone.soa);
        }
        Ok(answer)
    }

    async fn forward<R: ResponseHandler>(
        &self,
        request: &Request,
        edns: Option<&Edns>,
        response: R,
    ) -> ResponseInfo {
        let upstream = self
            .upstream
            .as_ref()
            .expect("forward only with an upstream");
        let mut metadata = Metadata::response_from_request(&request.metadata);
        metadata.recursion_available = true;
        let reply: Message = match upstream.query(request.as_slice()).await {
            Ok(reply) => reply,
            Err(error) => {
                tracing::debug!(%error, "upstream query failed");
                self.metrics.upstream_errors.inc();
                metadata.response_code = ResponseCode::ServFail;
                let message =
                    MessageResponseBuilder::new(&request.queries, edns).build_no_records(metadata);
                return send(response, message, request).await;
            }
        };
        metadata.response_code = reply.metadata.response_code;
        metadata.authentic_data = false;
        let message = MessageResponseBuilder::new(&request.queries, edns).build(
            metadata,
            reply.answers.iter(),
            reply.authorities.iter(),
            std::iter::empty(),
            reply.additionals.iter(),
        );
        send(response, message, request).await
    }
}

/// The query is outside our zones and an upstream is configured.
struct Forward;

async fn send<'a, R: ResponseHandler>(
    mut response: R,
    message: hickory_server::zone_handler::MessageResponse<
        '_,
        'a,
        impl Iterator<Item = &'a Record> + Send + 'a,
        impl Iterator<Item = &'a Record> + Send + 'a,
        impl Iterator<Item = &'a Record> + Send + 'a,
        impl Iterator<Item = &'a Record> + Send + 'a,
    >,
    request: &Request,
) -> ResponseInfo {
    match response.send_response(message).await {
        Ok(info) => info,
        Err(error) => {
            tracing::debug!(%error, src = %request.src(), "sending response failed");
            info_without_response(request, ResponseCode::ServFail)
        }
    }
}

/// A response handler that encodes the response (at most `max_size` bytes:
/// hickory sets TC and leaves out what does not fit) and keeps it for the
/// caller to deliver — the UDP loop sends it, the gRPC service returns it.
/// A response that cannot be encoded becomes a bare SERVFAIL, as hickory's
/// own UDP/TCP path does.
#[derive(Clone, Debug)]
pub(crate) struct Capture {
    /// The request's id (for that SERVFAIL).
    id: u16,
    max_size: u16,
    slot: Arc<std::sync::Mutex<Option<Vec<u8>>>>,
}

impl Capture {
    pub(crate) fn new(id: u16, max_size: u16) -> Capture {
        Capture {
            id,
            max_size,
            slot: Arc::default(),
        }
    }

    /// The encoded response, once the handler has sent it.
    pub(crate) fn take(&self) -> Option<Vec<u8>> {
        self.slot.lock().ok()?.take()
    }

    fn encode<'a>(
        &self,
        response: MessageResponse<
            '_,
            'a,
            impl Iterator<Item = &'a Record> + Send + 'a,
            impl Iterator<Item = &'a Record> + Send + 'a,
            impl Iterator<Item = &'a Record> + Send + 'a,
            impl Iterator<Item = &'a Record> + Send + 'a,
        >,
    ) -> Result<(ResponseInfo, Vec<u8>), ProtoError> {
        let mut bytes = Vec::with_capacity(512);
        let mut encoder = BinEncoder::new(&mut bytes);
        encoder.set_max_size(self.max_size);
        match response.destructive_emit(&mut encoder) {
            Ok(info) => Ok((info, bytes)),
            Err(error) => {
                tracing::warn!(%error, "encoding a response failed; answering SERVFAIL");
                let mut metadata = Metadata::new(self.id, MessageType::Response, OpCode::Query);
                metadata.response_code = ResponseCode::ServFail;
                let header = Header {
                    metadata,
                    counts: HeaderCounts::default(),
                };
                let bytes = header.to_bytes()?;
                Ok((ResponseInfo::from(header), bytes))
            }
        }
    }
}

#[async_trait::async_trait]
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
    ) -> Result<ResponseInfo, hickory_server::net::NetError> {
        let (info, bytes) = self.encode(response)?;
        if let Ok(mut slot) = self.slot.lock() {
            *slot = Some(bytes);
        }
        Ok(info)
    }
}

/// FORMERR echoing the id and opcode of a message whose header decodes but
/// whose body does not. `None` for fewer than 12 bytes or a response.
pub(crate) fn formerr(message: &[u8]) -> Option<Vec<u8>> {
    let header = Header::read(&mut BinDecoder::new(message)).ok()?;
    if header.metadata.message_type == MessageType::Response {
        return None;
    }
    let mut metadata = Metadata::response_from_request(&header.metadata);
    metadata.response_code = ResponseCode::FormErr;
    let out = Header {
        metadata,
        counts: HeaderCounts::default(),
    };
    out.to_bytes().ok()
}

/// The largest UDP response for `request`: its EDNS buffer size (at least
/// 512, at most [`MAX_UDP_PAYLOAD`]), 512 without EDNS (RFC 1035 §4.2.1).
pub(crate) fn udp_max_size(request: &Request) -> u16 {
    request
        .edns
        .as_ref()
        .map_or(512, |e| e.max_payload().clamp(512, MAX_UDP_PAYLOAD))
}

/// The response's EDNS: present when the request had one, with our buffer size
/// (the client's, at least 512, at most [`MAX_UDP_PAYLOAD`]). hickory's encoder
/// limits UDP answers to it (512 without EDNS) and sets TC.
fn response_edns(request: &Request) -> Option<Edns> {
    let req = request.edns.as_ref()?;
    let mut edns = Edns::new();
    edns.set_max_payload(req.max_payload().clamp(512, MAX_UDP_PAYLOAD));
    edns.set_version(0);
    Some(edns)
}

fn info_without_response(request: &Request, rcode: ResponseCode) -> ResponseInfo {
    let mut metadata = Metadata::response_from_request(&request.metadata);
    metadata.response_code = rcode;
    ResponseInfo::from(Header {
        metadata,
        counts: HeaderCounts::default(),
    })
}
