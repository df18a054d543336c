//! `StreamAggregatedResources` and `DeltaAggregatedResources` over gRPC
//! without tonic's codec: requests are read from the HTTP/2 body and
//! decoded (state-of-the-world ones with names as slices,
//! [`wire::Request`]); responses are written as pieces of shared, already
//! encoded resources ([`wire::Chunks`]).
//!
//! tonic's generic path encodes every response into one per-stream buffer
//! that keeps the capacity of the largest response sent (5.4 MB of CDS at
//! 10k services, for every proxy, for as long as the stream lives), and
//! decodes every ACK's names into owned strings. Here a stream holds the
//! `Arc`s of what it sends and at most one [`wire::CHUNK`] of copied bytes.
//!
//! The rest of gRPC is tonic's: the server (HTTP/2, keepalive, routing by
//! service name) and [`Status`] for errors and trailers.

use std::collections::VecDeque;
use std::convert::Infallible;
use std::future::{Ready, ready};
use std::marker::PhantomData;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use bytes::{Buf, BufMut, Bytes, BytesMut};
use http_body_util::BodyExt;
use hyper::body::Frame;
use tokio::sync::mpsc;
use tonic::Status;
use tonic::body::Body;
use tonic::codegen::Service;
use tonic::server::NamedService;
use tonic::transport::server::TcpConnectInfo;

use super::AdsServer;
use super::stream::End;
use super::wire::{self, Chunks, GRPC_HEADER, Incoming, Outgoing};

/// gRPC name of the ADS service.
const SERVICE: &str = "envoy.service.discovery.v3.AggregatedDiscoveryService";
const STREAM_PATH: &str =
    "/envoy.service.discovery.v3.AggregatedDiscoveryService/StreamAggregatedResources";
const DELTA_PATH: &str =
    "/envoy.service.discovery.v3.AggregatedDiscoveryService/DeltaAggregatedResources";
/// Largest request accepted (tonic's default decoding limit).
const MAX_REQUEST: usize = 4 * 1024 * 1024;

/// The ADS gRPC service, for `tonic::transport::Server::add_service`.
#[derive(Clone, Debug)]
pub struct AdsService {
    pub(super) server: AdsServer,
}

impl NamedService for AdsService {
    const NAME: &'static str = SERVICE;
}

impl Service<http::Request<Body>> for AdsService {
    type Response = http::Response<Body>;
    type Error = Infallible;
    type Future = Ready<Result<Self::Response, Infallible>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: http::Request<Body>) -> Self::Future {
        let response = match request.uri().path() {
            STREAM_PATH => match compression(&request) {
                Some(encoding) => Status::unimplemented(format!(
                    "requests compressed with {encoding:?} are not supported; send them uncompressed"
                ))
                .into_http(),
                None => self.open(request),
            },
            DELTA_PATH => match compression(&request) {
                Some(encoding) => Status::unimplemented(format!(
                    "requests compressed with {encoding:?} are not supported; send them uncompressed"
                ))
                .into_http(),
                None => self.open_delta(request),
            },
            other => Status::unimplemented(format!("no method {other}")).into_http(),
        };
        ready(Ok(response))
    }
}

impl AdsService {
    /// Starts serving one stream (in its own task); answers with the
    /// response headers and a body fed by that task.
    fn open(&self, request: http::Request<Body>) -> http::Response<Body> {
        let peer = request
            .extensions()
            .get::<TcpConnectInfo>()
            .and_then(TcpConnectInfo::remote_addr);
        respond(
            self.server
                .open_stream(Requests::new(request.into_body()), peer),
        )
    }

    /// Starts serving one `DeltaAggregatedResources` stream.
    fn open_delta(&self, request: http::Request<Body>) -> http::Response<Body> {
        let peer = request
            .extensions()
            .get::<TcpConnectInfo>()
            .and_then(TcpConnectInfo::remote_addr);
        respond(
            self.server
                .open_delta_stream(Requests::new(request.into_body()), peer),
        )
    }
}

/// The response headers and a body fed by a stream's task, or the status
/// refusing the stream.
fn respond<M: Outgoing + Unpin>(
    opened: Result<mpsc::Receiver<Result<M, Status>>, Status>,
) -> http::Response<Body> {
    match opened {
        Ok(responses) => {
            let mut response = http::Response::new(Body::new(ResponseBody::new(responses)));
            response.headers_mut().insert(
                http::header::CONTENT_TYPE,
                http::HeaderValue::from_static("application/grpc"),
            );
            response
        }
        Err(status) => status.into_http(),
    }
}

/// The request's `grpc-encoding` when it is not `identity`.
fn compression(request: &http::Request<Body>) -> Option<String> {
    let encoding = request.headers().get("grpc-encoding")?;
    let encoding = String::from_utf8_lossy(encoding.as_bytes()).into_owned();
    (encoding != "identity").then_some(encoding)
}

/// The requests of one stream, decoded as they arrive.
#[derive(Debug)]
pub(super) struct Requests<R = wire::Request> {
    body: Body,
    /// Received data not yet decoded.
    buffered: Received,
    ended: bool,
    _message: PhantomData<fn() -> R>,
}

impl<R: Incoming> Requests<R> {
    pub(super) fn new(body: Body) -> Self {
        Self {
            body,
            buffered: Received::default(),
            ended: false,
            _message: PhantomData,
        }
    }

    /// The next request, or `None` once the proxy closed its side.
    ///
    /// Cancel safe: what was received is kept until a whole message is in.
    pub(super) async fn message(&mut self) -> Result<Option<R>, End> {
        loop {
            if let Some(message) = self.take_message()? {
                return Ok(Some(message));
            }
            if self.ended {
                if self.buffered.len > 0 {
                    return Err(reject::<R>(format!(
                        "the stream ended inside a message ({} bytes of it)",
                        self.buffered.len
                    )));
                }
                return Ok(None);
            }
            match self.body.frame().await {
                None => self.ended = true,
                Some(Ok(frame)) => {
                    // Trailers end the stream; nothing in them matters here.
                    if let Ok(data) = frame.into_data() {
                        self.buffered.push(data);
                    }
                }
                Some(Err(status)) => {
                    tracing::debug!(code = ?status.code(), message = status.message(), "request stream failed");
                    return Err(End::Gone);
                }
            }
        }
    }

    /// Decodes the first buffered message if it is complete.
    fn take_message(&mut self) -> Result<Option<R>, End> {
        let Some(header) = self.buffered.header() else {
            return Ok(None);
        };
        match header[0] {
            0 => {}
            1 => {
                return Err(reject::<R>(format!(
                    "compressed message; send {}s uncompressed",
                    R::NAME
                )));
            }
            flag => {
                return Err(reject::<R>(format!("invalid gRPC compression flag {flag}")));
            }
        }
        let len = u32::from_be_bytes([header[1], header[2], header[3], header[4]]) as usize;
        if len > MAX_REQUEST {
            return Err(reject::<R>(format!(
                "message of {len} bytes is over the limit of {MAX_REQUEST}"
            )));
        }
        if self.buffered.len < GRPC_HEADER + len {
            return Ok(None);
        }
        self.buffered.advance(GRPC_HEADER);
        // Decoded from the received frames in place: names are slices of them.
        R::decode_from((&mut self.buffered).take(len))
            .map(Some)
            .map_err(|e| reject::<R>(e.to_string()))
    }
}

/// Received HTTP/2 data frames, read as one buffer without joining them.
#[derive(Debug, Default)]
struct Received {
    chunks: VecDeque<Bytes>,
    len: usize,
}

impl Received {
    fn push(&mut self, data: Bytes) {
        if !data.is_empty() {
            self.len += data.len();
            self.chunks.push_back(data);
        }
    }

    /// The first five bytes (the gRPC message prefix), if they are in.
    fn header(&self) -> Option<[u8; GRPC_HEADER]> {
        if self.len < GRPC_HEADER {
            return None;
        }
        let mut header = [0u8; GRPC_HEADER];
        let mut filled = 0;
        for chunk in &self.chunks {
            let n = (GRPC_HEADER - filled).min(chunk.len());
            header[filled..filled + n].copy_from_slice(&chunk[..n]);
            filled += n;
            if filled == GRPC_HEADER {
                break;
            }
        }
        Some(header)
    }
}

impl Buf for Received {
    fn remaining(&self) -> usize {
        self.len
    }

    fn chunk(&self) -> &[u8] {
        self.chunks.front().map_or(&[], |c| &c[..])
    }

    fn advance(&mut self, mut n: usize) {
        assert!(n <= self.len, "advancing past the received data");
        self.len -= n;
        while n > 0 {
            let Some(front) = self.chunks.front_mut() else {
                return;
            };
            if n < front.len() {
                front.advance(n);
                return;
            }
            n -= front.len();
            self.chunks.pop_front();
        }
    }

    /// A slice of the first frame when it holds all `len` bytes (a name
    /// usually does); a copy only for what spans frames.
    fn copy_to_bytes(&mut self, len: usize) -> Bytes {
        if let Some(front) = self.chunks.front_mut()
            && front.len() >= len
        {
            let taken = front.split_to(len);
            if front.is_empty() {
                self.chunks.pop_front();
            }
            self.len -= len;
            return taken;
        }
        let mut out = BytesMut::with_capacity(len);
        out.put((&mut *self).take(len));
        out.freeze()
    }
}

fn reject<R: Incoming>(reason: String) -> End {
    End::Reject(Status::invalid_argument(format!(
        "reading {}: {reason}",
        R::NAME
    )))
}

/// Where a stream's task sends its responses, then maybe a final status.
pub(super) type ResponseTx<M = wire::Response> = mpsc::Sender<Result<M, Status>>;

/// The HTTP/2 body of one stream: each response in pieces as the
/// connection takes them, then the gRPC status in trailers (`OK` when the
/// stream's task ends without one).
#[derive(Debug)]
struct ResponseBody<M> {
    responses: mpsc::Receiver<Result<M, Status>>,
    sending: Option<Chunks<M>>,
    done: bool,
}

impl<M: Outgoing> ResponseBody<M> {
    fn new(responses: mpsc::Receiver<Result<M, Status>>) -> Self {
        Self {
            responses,
            sending: None,
            done: false,
        }
    }

    fn trailers(&mut self, status: &Status) -> Poll<Option<Result<Frame<Bytes>, Status>>> {
        self.done = true;
        let mut trailers = http::HeaderMap::new();
        if let Err(e) = status.add_header(&mut trailers) {
            return Poll::Ready(Some(Err(e)));
        }
        Poll::Ready(Some(Ok(Frame::trailers(trailers))))
    }
}

impl<M: Outgoing + Unpin> hyper::body::Body for ResponseBody<M> {
    type Data = Bytes;
    type Error = Status;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Status>>> {
        loop {
            if self.done {
                return Poll::Ready(None);
            }
            if let Some(piece) = self.sending.as_mut().and_then(Iterator::next) {
                return Poll::Ready(Some(Ok(Frame::data(piece))));
            }
            self.sending = None;
            match ready!(self.responses.poll_recv(cx)) {
                Some(Ok(response)) => match Chunks::new(response) {
                    Ok(chunks) => self.sending = Some(chunks),
                    Err(len) => {
                        let status = Status::internal(format!(
                            "a DiscoveryResponse of {len} bytes is over gRPC's 4 GiB message limit"
                        ));
                        return self.trailers(&status);
                    }
                },
                Some(Err(status)) => return self.trailers(&status),
                None => return self.trailers(&Status::ok("")),
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.done
    }
}

#[cfg(test)]
mod tests;
