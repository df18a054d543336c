//! The UDP fast path: A and AAAA queries for a service name, answered from
//! bytes encoded when the snapshot was built ([`WireAnswers`]).
//!
//! Nearly every query a mesh DNS server sees is one of these, so they skip
//! message decoding, record cloning and hickory's encoder: the response is
//! the query's header and question copied, the pre-encoded answer records
//! appended (owner = a pointer to the question's name), and an OPT record
//! when the query had one. Anything else — another type or class, a name
//! that is absent, the apex or an empty non-terminal (those answers carry
//! the SOA), an answer too big for the client's buffer (TC), EDNS other
//! than version 0, a compressed or malformed question, trailing bytes —
//! returns `None` and goes to [`super::Handler`] through hickory, which
//! decides exactly as before. The two paths give the same answer; the unit
//! tests compare them query by query.

use hickory_proto::rr::RecordType;

use super::MAX_UDP_PAYLOAD;
use crate::zone::{Snapshot, WireAnswers};

const HEADER: usize = 12;
/// Longest name in wire format, root label included (RFC 1035 §2.3.4).
const MAX_NAME: usize = 255;
const TYPE_A: u16 = 1;
const TYPE_AAAA: u16 = 28;
const TYPE_OPT: u16 = 41;
const CLASS_IN: u16 = 1;
/// Header flag bits that must be clear in a query we answer here: QR, the
/// opcode (QUERY is 0), AA, TC, Z and the RCODE. RD, RA, AD and CD may be set.
const FLAGS_MUST_BE_CLEAR: u16 = 0xFE4F;
const FLAG_QR: u16 = 0x8000;
const FLAG_AA: u16 = 0x0400;
const FLAG_RD: u16 = 0x0100;
const FLAG_RA: u16 = 0x0080;
const FLAG_CD: u16 = 0x0010;

/// A response written by [`answer`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FastAnswer {
    /// Bytes of the response at the start of the output buffer.
    pub len: usize,
    pub qtype: RecordType,
}

/// The query's parts the response needs.
struct Query<'q> {
    flags: u16,
    /// The question section as received (name in the client's letter case).
    question: &'q [u8],
    qtype: RecordType,
    /// The client's EDNS buffer size, when it sent an OPT record.
    edns_payload: Option<u16>,
}

/// Answers `query` into `out` when it is an A/AAAA query for a name with
/// such records in `snapshot`; `None` leaves it to the full handler.
pub fn answer(
    snapshot: &Snapshot,
    query: &[u8],
    recursion_available: bool,
    out: &mut [u8],
) -> Option<FastAnswer> {
    let mut wire = [0u8; MAX_NAME];
    let mut starts = [0usize; MAX_NAME / 2 + 1];
    let (parsed, name_len, labels) = parse(query, &mut wire, &mut starts)?;
    let (_, node) = snapshot.node_by_wire(&wire[..name_len], &starts[..labels])?;
    let records: &WireAnswers = match parsed.qtype {
        RecordType::A => &node.a_wire,
        _ => &node.aaaa_wire,
    };
    if records.count == 0 {
        return None;
    }
    let opt_len = if parsed.edns_payload.is_some() { 11 } else { 0 };
    let len = HEADER + parsed.question.len() + records.bytes.len() + opt_len;
    // Without EDNS a UDP answer is at most 512 bytes (RFC 1035 §4.2.1); a bigger one is
    // truncated by the full handler.
    let limit = parsed.edns_payload.map_or(512, usize::from);
    if len > limit || len > out.len() {
        return None;
    }
    let mut flags = FLAG_QR | FLAG_AA | (parsed.flags & (FLAG_RD | FLAG_CD));
    if recursion_available {
        flags |= FLAG_RA;
    }
    out[..2].copy_from_slice(&query[..2]);
    out[2..4].copy_from_slice(&flags.to_be_bytes());
    out[4..6].copy_from_slice(&1u16.to_be_bytes());
    out[6..8].copy_from_slice(&records.count.to_be_bytes());
    out[8..10].copy_from_slice(&0u16.to_be_bytes());
    out[10..12].copy_from_slice(&u16::from(opt_len > 0).to_be_bytes());
    let mut at = HEADER;
    for part in [parsed.question, &records.bytes[..]] {
        out[at..at + part.len()].copy_from_slice(part);
        at += part.len();
    }
    if let Some(payload) = parsed.edns_payload {
        // Root owner, type OPT, our buffer size, extended RCODE 0, version 0, no flags, no options.
        out[at..at + 3].copy_from_slice(&[0, 0, TYPE_OPT as u8]);
        out[at + 3..at + 5].copy_from_slice(&payload.to_be_bytes());
        out[at + 5..at + 11].fill(0);
        at += 11;
    }
    debug_assert_eq!(at, len);
    Some(FastAnswer {
        len,
        qtype: parsed.qtype,
    })
}

/// Reads a query the fast path can answer: the header checks, the question
/// (name lowercased into `wire`, label offsets into `starts`) and an
/// optional EDNS(0) OPT record, with nothing after it.
fn parse<'q>(
    query: &'q [u8],
    wire: &mut [u8; MAX_NAME],
    starts: &mut [usize; MAX_NAME / 2 + 1],
) -> Option<(Query<'q>, usize, usize)> {
    let u16_at = |at: usize| -> Option<u16> {
        let b = query.get(at..at + 2)?;
        Some(u16::from_be_bytes([b[0], b[1]]))
    };
    let flags = u16_at(2)?;
    if flags & FLAGS_MUST_BE_CLEAR != 0 {
        return None;
    }
    let (qd, an, ns, ar) = (u16_at(4)?, u16_at(6)?, u16_at(8)?, u16_at(10)?);
    if qd != 1 || an != 0 || ns != 0 || ar > 1 {
        return None;
    }
    let mut pos = HEADER;
    let mut labels = 0;
    loop {
        let len = usize::from(*query.get(pos)?);
        let n = pos - HEADER;
        if len == 0 {
            wire[n] = 0;
            pos += 1;
            break;
        }
        // A compression pointer or an extended label type: the full decoder decides.
        if len & 0xC0 != 0 || n + len + 2 > MAX_NAME {
            return None;
        }
        let label = query.get(pos + 1..pos + 1 + len)?;
        starts[labels] = n;
        labels += 1;
        wire[n] = len as u8;
        for (to, from) in wire[n + 1..n + 1 + len].iter_mut().zip(label) {
            *to = from.to_ascii_lowercase();
        }
        pos += 1 + len;
    }
    let name_len = pos - HEADER;
    let qtype = match u16_at(pos)? {
        TYPE_A => RecordType::A,
        TYPE_AAAA => RecordType::AAAA,
        _ => return None,
    };
    if u16_at(pos + 2)? != CLASS_IN {
        return None;
    }
    pos += 4;
    let question = &query[HEADER..pos];
    let mut edns_payload = None;
    if ar == 1 {
        // OPT: root owner (one zero byte), TYPE, CLASS = buffer size, TTL = extended RCODE,
        // version, flags; RDLENGTH; options.
        if *query.get(pos)? != 0 || u16_at(pos + 1)? != TYPE_OPT {
            return None;
        }
        let payload = u16_at(pos + 3)?;
        let (ext_rcode, version) = (*query.get(pos + 5)?, *query.get(pos + 6)?);
        if ext_rcode != 0 || version != 0 {
            return None;
        }
        let rdlen = usize::from(u16_at(pos + 9)?);
        pos += 11;
        let options = query.get(pos..pos + rdlen)?;
        if !options_well_formed(options) {
            return None;
        }
        pos += rdlen;
        edns_payload = Some(payload.clamp(512, MAX_UDP_PAYLOAD));
    }
    if pos != query.len() {
        return None;
    }
    let parsed = Query {
        flags,
        question,
        qtype,
        edns_payload,
    };
    Some((parsed, name_len, labels))
}

/// EDNS options as code/length/value triples that fill `options` exactly,
/// none of which hickory's decoder checks the content of: their content is
/// ignored, as the full handler ignores options it does not implement
/// (cookies, padding, keepalive). NSID (3) and client subnet (8) are decoded
/// and validated by hickory, so queries with them take the full path.
fn options_well_formed(mut options: &[u8]) -> bool {
    const NSID: u16 = 3;
    const SUBNET: u16 = 8;
    while !options.is_empty() {
        let Some(header) = options.get(..4) else {
            return false;
        };
        if matches!(u16::from_be_bytes([header[0], header[1]]), NSID | SUBNET) {
            return false;
        }
        let len = usize::from(u16::from_be_bytes([header[2], header[3]]));
        let Some(rest) = options.get(4 + len..) else {
            return false;
        };
        options = rest;
    }
    true
}

#[cfg(test)]
mod tests;
