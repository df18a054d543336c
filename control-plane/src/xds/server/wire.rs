//! The ADS messages as they go over the wire, without the copies a generic
//! codec makes.
//!
//! - [`Request`] is `DiscoveryRequest` with resource names left in the
//!   received message ([`RequestNames`]): a state-of-the-world ACK repeats
//!   every subscribed name (11,000 at 10k services), and an ACK is usually
//!   recognised by one hash of the names' bytes as they came (taken while
//!   decoding), without a value (or a reference count) per name.
//! - [`Response`] is a `DiscoveryResponse` whose resources are the shared,
//!   already encoded `Any`s ([`SharedResource::encoded`]). [`Chunks`] writes
//!   it as a gRPC message in pieces of at most [`CHUNK`] bytes, each a fresh
//!   buffer (a large resource goes out as the shared bytes themselves), so a
//!   stream holds at most one piece instead of a buffer as large as its
//!   largest response. The bytes are exactly those prost writes for the
//!   same `DiscoveryResponse` (fields in tag order, defaults omitted).

use std::sync::Arc;

use bytes::{Buf, BufMut, Bytes, BytesMut};
use envoy_types::pb::envoy::config::core::v3::Node;
use envoy_types::pb::google::rpc::Status as RpcStatus;
use prost::DecodeError;
use prost::encoding::{
    DecodeContext, WireType, check_wire_type, decode_key, decode_varint, encode_key, encode_varint,
    encoded_len_varint, key_len, skip_field,
};

use super::names::NamesDigest;
use crate::xds::SharedResource;

/// Largest piece [`Chunks`] copies into; larger resources go out uncopied.
pub(super) const CHUNK: usize = 32 * 1024;
/// gRPC message prefix: compressed flag and big-endian length.
pub(super) const GRPC_HEADER: usize = 5;

/// Field numbers of `DiscoveryRequest`.
const REQ_VERSION_INFO: u32 = 1;
const REQ_NODE: u32 = 2;
const REQ_RESOURCE_NAMES: u32 = 3;
const REQ_TYPE_URL: u32 = 4;
const REQ_RESPONSE_NONCE: u32 = 5;
const REQ_ERROR_DETAIL: u32 = 6;

/// `DiscoveryRequest` with its resource names left in the received message
/// (names are checked to be UTF-8 only when they are interned).
#[derive(Clone, Debug, Default, PartialEq)]
pub(super) struct Request {
    pub(super) version_info: String,
    pub(super) node: Option<Node>,
    pub(super) resource_names: RequestNames,
    pub(super) type_url: String,
    pub(super) response_nonce: String,
    pub(super) error_detail: Option<RpcStatus>,
}

/// The `resource_names` of a received request: the message they are in,
/// their count, and a hash of their encoding ([`wire`](Self::wire)).
#[derive(Clone, Debug, Default, PartialEq)]
pub(super) struct RequestNames {
    message: Bytes,
    count: usize,
    wire: Option<u64>,
}

impl RequestNames {
    /// The order-independent digest of the names (read again from the
    /// message: only when [`wire`](Self::wire) did not recognise them).
    pub(super) fn digest(&self) -> NamesDigest {
        NamesDigest::of(self.iter())
    }

    /// A hash of the names' fields exactly as they were encoded, in request
    /// order; `None` without names or when other fields came between them.
    /// Envoy repeats its names in the same order on every ACK, so equal
    /// hashes recognise an unchanged subscription with one pass over its
    /// bytes; a reordering only costs the [`digest`](Self::digest).
    pub(super) fn wire(&self) -> Option<u64> {
        self.wire
    }

    #[cfg(test)]
    pub(super) fn len(&self) -> usize {
        self.count
    }

    /// The names in request order (read again from the message).
    pub(super) fn iter(&self) -> impl Iterator<Item = &[u8]> {
        let mut rest = &self.message[..];
        std::iter::from_fn(move || {
            // The message was checked when it was decoded.
            while !rest.is_empty() {
                let (tag, wire_type) = decode_key(&mut rest).ok()?;
                if tag == REQ_RESOURCE_NAMES {
                    let len = usize::try_from(decode_varint(&mut rest).ok()?).ok()?;
                    let (name, after) = rest.split_at_checked(len)?;
                    rest = after;
                    return Some(name);
                }
                skip_field(wire_type, tag, &mut rest, DecodeContext::default()).ok()?;
            }
            None
        })
    }

    /// Names as a request would carry them (tests).
    #[cfg(test)]
    pub(super) fn of(names: &[&[u8]]) -> Self {
        let mut message = Vec::new();
        for name in names {
            prost::encoding::bytes::encode(REQ_RESOURCE_NAMES, &name.to_vec(), &mut message);
        }
        Request::decode(&message[..])
            .expect("names decode")
            .resource_names
    }
}

/// A request message as a stream reads it off the wire.
pub(super) trait Incoming: Sized + Send + 'static {
    /// The message's name, for errors.
    const NAME: &'static str;

    /// Decodes one message (the whole of `buf`).
    fn decode_from(buf: impl Buf) -> Result<Self, DecodeError>;
}

impl Incoming for Request {
    const NAME: &'static str = "DiscoveryRequest";

    fn decode_from(buf: impl Buf) -> Result<Self, DecodeError> {
        Request::decode(buf)
    }
}

impl Request {
    /// Decodes one `DiscoveryRequest` (the whole of `buf`). The names are
    /// not copied when `buf` is one piece (`Buf::copy_to_bytes`).
    pub(super) fn decode(mut buf: impl Buf) -> Result<Self, DecodeError> {
        let message = buf.copy_to_bytes(buf.remaining());
        let mut request = Request::default();
        // Names seen, and the span of their fields while they are adjacent.
        let mut names = 0;
        let mut span: Option<(usize, usize)> = None;
        let mut adjacent = true;
        let ctx = DecodeContext::default();
        let mut rest = &message[..];
        while !rest.is_empty() {
            let field_start = message.len() - rest.len();
            let (tag, wire_type) = decode_key(&mut rest)?;
            match tag {
                REQ_VERSION_INFO => prost::encoding::string::merge(
                    wire_type,
                    &mut request.version_info,
                    &mut rest,
                    ctx.clone(),
                )?,
                REQ_NODE => prost::encoding::message::merge(
                    wire_type,
                    request.node.get_or_insert_with(Node::default),
                    &mut rest,
                    ctx.clone(),
                )?,
                REQ_RESOURCE_NAMES => {
                    check_wire_type(WireType::LengthDelimited, wire_type)?;
                    // This name and the ones right after it in one loop
                    // (an ACK repeats thousands).
                    skip_name(&mut rest)?;
                    names += 1;
                    while let [NAMES_KEY, after @ ..] = rest {
                        rest = after;
                        skip_name(&mut rest)?;
                        names += 1;
                    }
                    let field_end = message.len() - rest.len();
                    span = match span {
                        None => Some((field_start, field_end)),
                        Some((start, end)) => {
                            adjacent &= end == field_start;
                            Some((start, field_end))
                        }
                    };
                }
                REQ_TYPE_URL => prost::encoding::string::merge(
                    wire_type,
                    &mut request.type_url,
                    &mut rest,
                    ctx.clone(),
                )?,
                REQ_RESPONSE_NONCE => prost::encoding::string::merge(
                    wire_type,
                    &mut request.response_nonce,
                    &mut rest,
                    ctx.clone(),
                )?,
                REQ_ERROR_DETAIL => prost::encoding::message::merge(
                    wire_type,
                    request.error_detail.get_or_insert_with(RpcStatus::default),
                    &mut rest,
                    ctx.clone(),
                )?,
                _ => skip_field(wire_type, tag, &mut rest, ctx.clone())?,
            }
        }
        let wire = span
            .filter(|_| adjacent)
            .map(|(start, end)| wire_hash(&message[start..end]));
        request.resource_names = RequestNames {
            message: if names == 0 { Bytes::new() } else { message },
            count: names,
            wire,
        };
        Ok(request)
    }
}

/// The key of a `resource_names` field: field 3, length-delimited.
const NAMES_KEY: u8 = (REQ_RESOURCE_NAMES as u8) << 3 | WireType::LengthDelimited as u8;

/// Steps over one name (its length and bytes; the key is read), checking
/// the length against what is left: names under 128 bytes here, others
/// (and errors) by prost.
fn skip_name(rest: &mut &[u8]) -> Result<(), DecodeError> {
    if let &[len @ 0..0x80, ref after @ ..] = *rest
        && let Some(after) = after.get(usize::from(len)..)
    {
        *rest = after;
        return Ok(());
    }
    skip_field(
        WireType::LengthDelimited,
        REQ_RESOURCE_NAMES,
        rest,
        DecodeContext::default(),
    )
}

/// The hash of [`RequestNames::wire`]: foldhash's, which takes long inputs
/// 16 bytes at a time with independent lanes (several GB/s). Not keyed: a
/// proxy that makes a collision only hides a change of its own names.
fn wire_hash(bytes: &[u8]) -> u64 {
    use std::hash::BuildHasher;
    foldhash::quality::FixedState::with_seed(0x6973_7468_6d75_7321).hash_one(bytes)
}

/// One `DiscoveryResponse` to send.
#[derive(Clone, Debug)]
pub(super) struct Response {
    pub(super) version_info: String,
    /// Shared with the stream's state (CDS keeps them for make before break).
    pub(super) resources: Arc<Vec<Arc<SharedResource>>>,
    pub(super) type_url: String,
    pub(super) nonce: String,
    pub(super) control_plane: &'static str,
}

/// Field numbers of `DiscoveryResponse`.
const VERSION_INFO: u32 = 1;
const RESOURCES: u32 = 2;
const TYPE_URL: u32 = 4;
const NONCE: u32 = 5;
const CONTROL_PLANE: u32 = 6;
/// `ControlPlane.identifier`.
const IDENTIFIER: u32 = 1;

/// Length of a length-delimited field with a `len`-byte body.
pub(super) fn delimited_len(tag: u32, len: usize) -> usize {
    key_len(tag) + encoded_len_varint(len as u64) + len
}

/// Length of a proto3 string field (omitted when empty).
pub(super) fn string_len(tag: u32, value: &str) -> usize {
    if value.is_empty() {
        0
    } else {
        delimited_len(tag, value.len())
    }
}

pub(super) fn put_delimited_head(tag: u32, len: usize, buf: &mut impl BufMut) {
    encode_key(tag, WireType::LengthDelimited, buf);
    encode_varint(len as u64, buf);
}

pub(super) fn put_string(tag: u32, value: &str, buf: &mut impl BufMut) {
    if !value.is_empty() {
        put_delimited_head(tag, value.len(), buf);
        buf.put_slice(value.as_bytes());
    }
}

/// A response message made of a head, shared encoded resources (each after
/// a small prefix of its own) and a tail, written by [`Chunks`]. The
/// resources' bytes end each resource's field, so they can go out uncopied.
pub(super) trait Outgoing: Send + 'static {
    /// Length of the fields before the resources.
    fn head_len(&self) -> usize;
    fn put_head(&self, buf: &mut BytesMut);
    fn resources(&self) -> &[Arc<SharedResource>];
    /// Length of what precedes resource `r`'s encoded bytes.
    fn prefix_len(&self, r: &SharedResource) -> usize;
    fn put_prefix(&self, r: &SharedResource, buf: &mut BytesMut);
    /// Length of the fields after the resources.
    fn tail_len(&self) -> usize;
    fn put_tail(&self, buf: &mut BytesMut);

    /// Length of the encoded message.
    fn encoded_len(&self) -> usize {
        self.head_len()
            + self
                .resources()
                .iter()
                .map(|r| self.prefix_len(r) + r.encoded.len())
                .sum::<usize>()
            + self.tail_len()
    }
}

impl Response {
    /// The `ControlPlane` message's body length.
    fn control_plane_len(&self) -> usize {
        string_len(IDENTIFIER, self.control_plane)
    }

    /// As prost would encode the equivalent `DiscoveryResponse` (tests, and
    /// the reference the chunked encoding must equal).
    #[cfg(test)]
    pub(super) fn to_message(
        &self,
    ) -> envoy_types::pb::envoy::service::discovery::v3::DiscoveryResponse {
        envoy_types::pb::envoy::service::discovery::v3::DiscoveryResponse {
            version_info: self.version_info.clone(),
            resources: self.resources.iter().map(|r| r.resource()).collect(),
            type_url: self.type_url.clone(),
            nonce: self.nonce.clone(),
            control_plane: Some(envoy_types::pb::envoy::config::core::v3::ControlPlane {
                identifier: self.control_plane.to_string(),
            }),
            ..Default::default()
        }
    }
}

impl Outgoing for Response {
    fn head_len(&self) -> usize {
        string_len(VERSION_INFO, &self.version_info)
    }

    fn put_head(&self, buf: &mut BytesMut) {
        put_string(VERSION_INFO, &self.version_info, buf);
    }

    fn resources(&self) -> &[Arc<SharedResource>] {
        &self.resources
    }

    fn prefix_len(&self, r: &SharedResource) -> usize {
        delimited_len(RESOURCES, r.encoded.len()) - r.encoded.len()
    }

    fn put_prefix(&self, r: &SharedResource, buf: &mut BytesMut) {
        put_delimited_head(RESOURCES, r.encoded.len(), buf);
    }

    fn tail_len(&self) -> usize {
        string_len(TYPE_URL, &self.type_url)
            + string_len(NONCE, &self.nonce)
            + delimited_len(CONTROL_PLANE, self.control_plane_len())
    }

    fn put_tail(&self, buf: &mut BytesMut) {
        put_string(TYPE_URL, &self.type_url, buf);
        put_string(NONCE, &self.nonce, buf);
        put_delimited_head(CONTROL_PLANE, self.control_plane_len(), buf);
        put_string(IDENTIFIER, self.control_plane, buf);
    }
}

/// The gRPC message of one response in pieces.
#[derive(Debug)]
pub(super) struct Chunks<M> {
    response: M,
    /// Length of the encoded message.
    len: usize,
    /// Next resource to write.
    next: usize,
    /// A large resource's bytes, due after the piece holding its prefix.
    held: Option<Bytes>,
    /// Bytes of the message not yet written (sizes the pieces).
    remaining: usize,
    started: bool,
    finished: bool,
}

impl<M: Outgoing> Chunks<M> {
    /// Fails if the message is larger than gRPC's 4 GiB length prefix allows.
    pub(super) fn new(response: M) -> Result<Self, usize> {
        let len = response.encoded_len();
        if u32::try_from(len).is_err() {
            return Err(len);
        }
        Ok(Self {
            response,
            len,
            next: 0,
            held: None,
            remaining: GRPC_HEADER + len,
            started: false,
            finished: false,
        })
    }

    fn head(&self, buf: &mut BytesMut) {
        buf.put_u8(0); // not compressed
        // Checked in `new`.
        buf.put_u32(u32::try_from(self.len).unwrap_or(u32::MAX));
        self.response.put_head(buf);
    }
}

impl<M: Outgoing> Iterator for Chunks<M> {
    type Item = Bytes;

    fn next(&mut self) -> Option<Bytes> {
        if let Some(held) = self.held.take() {
            self.remaining = self.remaining.saturating_sub(held.len());
            return Some(held);
        }
        if self.finished {
            return None;
        }
        let piece = self.piece();
        self.remaining = self.remaining.saturating_sub(piece.len());
        Some(piece)
    }
}

impl<M: Outgoing> Chunks<M> {
    /// The next piece written into a fresh buffer.
    fn piece(&mut self) -> Bytes {
        let mut buf = BytesMut::with_capacity(self.remaining.min(CHUNK));
        if !self.started {
            self.started = true;
            self.head(&mut buf);
        }
        while let Some(resource) = self.response.resources().get(self.next) {
            let body = &resource.encoded;
            let len = self.response.prefix_len(resource) + body.len();
            if body.len() > CHUNK / 2 {
                // Large: its prefix ends this piece, its shared bytes are the next.
                self.next += 1;
                self.response.put_prefix(resource, &mut buf);
                self.held = Some(body.clone());
                return buf.freeze();
            }
            if buf.len() + len > CHUNK {
                return buf.freeze();
            }
            self.next += 1;
            self.response.put_prefix(resource, &mut buf);
            buf.put_slice(body);
        }
        if !buf.is_empty() && buf.len() + self.response.tail_len() > CHUNK {
            return buf.freeze();
        }
        self.response.put_tail(&mut buf);
        self.finished = true;
        buf.freeze()
    }
}

/// The whole gRPC message of `response` (prefix included), in one buffer.
#[cfg(test)]
pub(super) fn encode<M: Outgoing + Clone>(response: &M) -> Vec<u8> {
    let chunks = Chunks::new(response.clone()).expect("below 4 GiB");
    let mut out = Vec::new();
    for chunk in chunks {
        out.extend_from_slice(&chunk);
    }
    out
}

#[cfg(test)]
mod tests;
