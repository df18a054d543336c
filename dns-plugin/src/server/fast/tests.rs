use std::net::Ipv4Addr;

use hickory_proto::op::{Message, ResponseCode};
use hickory_proto::rr::{RData, RecordType};

use super::{FastAnswer, answer};
use crate::internal::{fast_path_agrees, handle_udp_fast, sample_feed};
use crate::zone::{AnswerConfig, DEFAULT_TTL, Policy, Snapshot, ZoneConfig};

const A: u16 = 1;
const AAAA: u16 = 28;
const SRV: u16 = 33;

/// A query in wire format: id 0x1234, RD, one question, optional OPT record.
fn query(name: &str, qtype: u16, edns: Option<(u16, &[u8])>) -> Vec<u8> {
    let mut q = vec![0x12, 0x34, 0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0];
    for label in name.trim_end_matches('.').split('.') {
        q.push(label.len() as u8);
        q.extend_from_slice(label.as_bytes());
    }
    q.push(0);
    q.extend_from_slice(&qtype.to_be_bytes());
    q.extend_from_slice(&1u16.to_be_bytes());
    if let Some((payload, options)) = edns {
        q[11] = 1;
        q.extend_from_slice(&[0, 0, 41]);
        q.extend_from_slice(&payload.to_be_bytes());
        q.extend_from_slice(&[0, 0, 0, 0]);
        q.extend_from_slice(&(options.len() as u16).to_be_bytes());
        q.extend_from_slice(options);
    }
    q
}

fn fast(q: &[u8]) -> Option<Message> {
    let bytes = handle_udp_fast(q)?;
    fast_path_agrees(q).unwrap();
    Some(Message::from_vec(&bytes).expect("fast answer decodes"))
}

fn addresses(m: &Message) -> Vec<String> {
    m.answers
        .iter()
        .map(|r| match &r.data {
            RData::A(a) => a.to_string(),
            RData::AAAA(a) => a.to_string(),
            other => panic!("unexpected {other:?}"),
        })
        .collect()
}

#[test]
fn answers_a_and_aaaa_like_the_full_handler_in_both_zones() {
    let m = fast(&query("reviews.default.global", A, None)).expect("fast path");
    assert_eq!(m.metadata.id, 0x1234);
    assert!(m.metadata.authoritative && m.metadata.recursion_desired);
    assert!(!m.metadata.recursion_available, "no upstream configured");
    assert_eq!(m.metadata.response_code, ResponseCode::NoError);
    assert_eq!(addresses(&m), ["240.240.1.2"]);
    assert_eq!(m.answers[0].ttl, 5);
    assert!(m.edns.is_none(), "no EDNS asked, none given");

    let m = fast(&query("reviews.default.global", AAAA, None)).expect("fast path");
    assert_eq!(addresses(&m), ["fd00::1"]);

    // clusterset.local answers endpoints, local cluster first.
    let m = fast(&query("reviews.default.svc.clusterset.local", A, None)).expect("fast path");
    assert_eq!(addresses(&m), ["10.0.0.1", "192.0.2.1"]);
}

#[test]
fn keeps_the_question_as_asked_and_points_the_answer_at_it() {
    let q = query("ReViEwS.DeFault.GLOBAL", A, None);
    let bytes = handle_udp_fast(&q).expect("fast path");
    fast_path_agrees(&q).unwrap();
    // Header and question copied (the id, and the name in the client's case: 0x20 encoding).
    assert_eq!(bytes[12..q.len()], q[12..]);
    // The answer's owner is a pointer to offset 12.
    assert_eq!(bytes[q.len()..q.len() + 2], [0xC0, 0x0C]);
    // A 4-byte A record: 2 (name) + 10 (fixed) + 4.
    assert_eq!(bytes.len(), q.len() + 16);
}

#[test]
fn echoes_edns_with_our_buffer_size_and_ignores_cookies() {
    let cookie = [0, 10, 0, 8, 1, 2, 3, 4, 5, 6, 7, 8];
    let m = fast(&query("reviews.default.global", A, Some((1232, &cookie)))).expect("fast path");
    let edns = m.edns.as_ref().expect("OPT in the answer");
    assert_eq!(edns.max_payload(), 1232);
    assert_eq!(edns.version(), 0);
    // Tiny and huge buffer sizes are clamped to 512..=4096, as by the full handler.
    let m = fast(&query("reviews.default.global", A, Some((100, &[])))).expect("fast path");
    assert_eq!(m.edns.as_ref().unwrap().max_payload(), 512);
    let m = fast(&query("reviews.default.global", A, Some((65000, &[])))).expect("fast path");
    assert_eq!(m.edns.as_ref().unwrap().max_payload(), 4096);
}

#[test]
fn leaves_everything_else_to_the_full_handler() {
    let mut cases: Vec<(&str, Vec<u8>)> = vec![
        ("SRV", query("reviews.default.global", SRV, None)),
        ("absent name", query("ratings.default.global", A, None)),
        ("apex", query("global", A, None)),
        ("empty non-terminal", query("default.global", A, None)),
        ("outside the zones", query("example.com", A, None)),
        (
            "port SRV name asked for A",
            query("_http._tcp.reviews.default.global", A, None),
        ),
        (
            "EDNS with NSID",
            query("reviews.default.global", A, Some((1232, &[0, 3, 0, 0]))),
        ),
        (
            "EDNS with client subnet",
            query("reviews.default.global", A, Some((1232, &[0, 8, 0, 1, 9]))),
        ),
        (
            "EDNS option overrunning",
            query("reviews.default.global", A, Some((1232, &[0, 10, 0, 9, 1]))),
        ),
    ];
    let base = query("reviews.default.global", A, None);
    let mut with = |what: &'static str, edit: &dyn Fn(&mut Vec<u8>)| {
        let mut q = base.clone();
        edit(&mut q);
        cases.push((what, q));
    };
    with("class CH", &|q| {
        let n = q.len();
        q[n - 1] = 3;
    });
    with("a response", &|q| q[2] |= 0x80);
    with("opcode STATUS", &|q| q[2] |= 2 << 3);
    with("TC set", &|q| q[2] |= 0x02);
    with("RCODE set", &|q| q[3] |= 0x01);
    with("two questions", &|q| q[5] = 2);
    with("an answer section", &|q| q[7] = 1);
    with("trailing byte", &|q| q.push(0));
    with("cut short", &|q| q.truncate(q.len() - 1));
    with("header only", &|q| q.truncate(12));
    with("EDNS count without OPT", &|q| q[11] = 1);
    with("compressed question name", &|q| {
        // The name is a pointer to itself.
        q.truncate(12);
        q.extend_from_slice(&[0xC0, 0x0C, 0, 1, 0, 1]);
    });
    let mut v1 = query("reviews.default.global", A, Some((1232, &[])));
    let at = v1.len() - 5;
    v1[at] = 1; // EDNS version 1: BADVERS from the full handler
    cases.push(("EDNS version 1", v1));
    for (what, q) in &cases {
        assert_eq!(handle_udp_fast(q), None, "{what} took the fast path");
        fast_path_agrees(q).unwrap();
    }
}

/// A snapshot with one service of `n` endpoints in `global.` (endpoints policy).
fn wide_snapshot(n: u8) -> Snapshot {
    let mut feed = sample_feed();
    feed.services[0].vips.clear();
    feed.services[0].clusters[0].endpoints = (1..=n)
        .map(|i| isthmus_proto::dns::Endpoint {
            address: Ipv4Addr::new(10, 1, 0, i).to_string(),
            locality: "us-east/us-east-1a".into(),
            healthy: true,
            weight: 1,
        })
        .collect();
    let config = AnswerConfig {
        zones: ZoneConfig::defaults(Policy::Endpoints),
        cluster: "east".into(),
        locality: "us-east/us-east-1a".parse().unwrap(),
        ttl: DEFAULT_TTL,
    };
    Snapshot::build(&feed, &config)
}

#[test]
fn an_answer_over_the_clients_buffer_goes_to_the_full_handler_for_tc() {
    let snapshot = wide_snapshot(40);
    let mut out = vec![0u8; 4096];
    // 40 A records = 40 × 16 bytes: over 512 without EDNS (the full handler truncates) …
    let plain = query("reviews.default.global", A, None);
    assert_eq!(answer(&snapshot, &plain, false, &mut out), None);
    // … and answered in full with EDNS 4096.
    let edns = query("reviews.default.global", A, Some((4096, &[])));
    let FastAnswer { len, qtype } = answer(&snapshot, &edns, false, &mut out).expect("fits");
    assert_eq!(qtype, RecordType::A);
    let m = Message::from_vec(&out[..len]).unwrap();
    assert_eq!(m.answers.len(), 41, "40 endpoints and the remote cluster's");
    assert!(!m.metadata.truncation);
    // An output buffer too small is not overrun.
    let mut small = vec![0u8; 100];
    assert_eq!(answer(&snapshot, &edns, false, &mut small), None);
    // Recursion available is reported when there is an upstream.
    let FastAnswer { len, .. } = answer(&snapshot, &edns, true, &mut out).unwrap();
    assert!(
        Message::from_vec(&out[..len])
            .unwrap()
            .metadata
            .recursion_available
    );
}

/// Small deterministic generator for the mutation test (no dependency).
struct XorShift(u64);

impl XorShift {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

#[test]
fn mutated_queries_never_make_the_two_paths_disagree() {
    let seeds = [
        query("reviews.default.global", A, None),
        query(
            "REVIEWS.default.global",
            AAAA,
            Some((1232, &[0, 10, 0, 8, 1, 2, 3, 4, 5, 6, 7, 8])),
        ),
        query("reviews.default.svc.clusterset.local", A, Some((512, &[]))),
    ];
    let mut rng = XorShift(0x9E37_79B9_7F4A_7C15);
    let mut fast_answers = 0;
    for i in 0..30_000 {
        let mut q = seeds[i % seeds.len()].clone();
        for _ in 0..=rng.next() % 3 {
            let at = (rng.next() as usize) % q.len();
            match rng.next() % 4 {
                0 => q[at] = rng.next() as u8,
                1 => q[at] ^= 1 << (rng.next() % 8),
                2 => q.truncate(at),
                _ => q.insert(at, rng.next() as u8),
            }
            if q.is_empty() {
                break;
            }
        }
        if handle_udp_fast(&q).is_some() {
            fast_answers += 1;
        }
        if let Err(difference) = fast_path_agrees(&q) {
            panic!("query {q:02x?}:\n{difference}");
        }
    }
    // Flipped flag bits like RD/CD and case changes keep many on the fast path.
    assert!(
        fast_answers > 500,
        "only {fast_answers} mutated queries took the fast path"
    );
}
