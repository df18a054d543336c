//! The DNS server on loopback, fed by a fake control plane over the real
//! feed protocol, queried with real DNS messages over UDP, TCP and CoreDNS's
//! gRPC protocol.

mod support;

use std::time::Duration;

use hickory_proto::op::{Message, ResponseCode};
use hickory_proto::rr::{RData, RecordType};
use isthmus_dns::coredns::DnsPacket;
use isthmus_dns::coredns::dns_service_client::DnsServiceClient;
use isthmus_dns::zone::Policy;
use support::*;

fn reviews(version: u64, east_healthy: bool) -> isthmus_proto::dns::Snapshot {
    snapshot(
        version,
        vec![service(
            "reviews",
            "default",
            "240.240.3.4",
            vec![
                cluster("central", &["10.3.0.1"], "eu-central/eu-central-1a", true),
                cluster(
                    "east",
                    &["10.1.0.1", "10.1.0.2"],
                    "us-east/us-east-1a",
                    east_healthy,
                ),
                cluster("west", &["10.2.0.1"], "us-east/us-east-1b", true),
            ],
        )],
    )
}

async fn setup(policy: Policy) -> (FakeFeed, Dns) {
    let feed = FakeFeed::start("127.0.0.1:0".parse().unwrap(), reviews(1, true)).await;
    let mut o = options("east", feed.addr, policy);
    o.locality = "us-east/us-east-1a".parse().unwrap();
    let dns = Dns::start(o).await;
    dns.wait_version(1).await;
    (feed, dns)
}

#[tokio::test]
async fn answers_records_in_both_zones_over_udp_and_tcp() {
    let (_feed, dns) = setup(Policy::Vip).await;
    for name in [
        "reviews.default.global.",
        "ReViEwS.Default.SVC.ClusterSet.Local.",
    ] {
        let (m, _) = udp(dns.addr, &query(name, RecordType::A, None)).await;
        assert_eq!(m.metadata.response_code, ResponseCode::NoError, "{name}");
        assert!(m.metadata.authoritative);
        // The question comes back byte for byte, letter case included (0x20 anti-spoofing).
        let mut asked = query(name, RecordType::A, None).to_vec().unwrap();
        let question = asked.len() - 12;
        for (i, b) in asked[12..12 + question - 4].iter_mut().enumerate() {
            if i % 2 == 0 {
                *b = b.to_ascii_uppercase();
            }
        }
        let reply = udp_raw(dns.addr, &asked, Duration::from_secs(5))
            .await
            .unwrap();
        assert_eq!(reply[12..12 + question], asked[12..], "{name}");
        assert_eq!(addresses(&m), ips(&["240.240.3.4"]), "{name}");
        assert_eq!(m.answers[0].ttl, 5);
        let m = tcp(dns.addr, &query(name, RecordType::A, None)).await;
        assert_eq!(addresses(&m), ips(&["240.240.3.4"]), "{name} over TCP");
    }

    // AAAA of a service with only an IPv4 VIP: NODATA with the SOA.
    let (m, _) = udp(
        dns.addr,
        &query("reviews.default.global.", RecordType::AAAA, None),
    )
    .await;
    assert_eq!(m.metadata.response_code, ResponseCode::NoError);
    assert!(m.answers.is_empty());
    assert!(matches!(m.authorities[0].data, RData::SOA(_)));

    // SRV for a named port, target's address in the additional section.
    let (m, _) = udp(
        dns.addr,
        &query(
            "_grpc-api._tcp.reviews.default.global.",
            RecordType::SRV,
            None,
        ),
    )
    .await;
    let RData::SRV(srv) = &m.answers[0].data else {
        panic!("{m:?}")
    };
    assert_eq!(srv.port, 9090);
    assert_eq!(srv.target.to_ascii(), "reviews.default.global.");
    assert!(m.additionals.iter().any(|r| matches!(r.data, RData::A(_))));
    // SRV at the service name: every port.
    let (m, _) = udp(
        dns.addr,
        &query(
            "reviews.default.svc.clusterset.local.",
            RecordType::SRV,
            None,
        ),
    )
    .await;
    assert_eq!(m.answers.len(), 2);

    // SOA and NS at the apex; serial is the feed version.
    let (m, _) = udp(dns.addr, &query("global.", RecordType::SOA, None)).await;
    let RData::SOA(soa) = &m.answers[0].data else {
        panic!("{m:?}")
    };
    assert_eq!(soa.serial, 1);
    let (m, _) = udp(dns.addr, &query("clusterset.local.", RecordType::NS, None)).await;
    assert!(matches!(m.answers[0].data, RData::NS(_)));

    // Unknown name in a zone: NXDOMAIN with the SOA; the namespace exists (NODATA).
    let (m, _) = udp(
        dns.addr,
        &query("ratings.default.global.", RecordType::A, None),
    )
    .await;
    assert_eq!(m.metadata.response_code, ResponseCode::NXDomain);
    assert!(matches!(m.authorities[0].data, RData::SOA(_)));
    let (m, _) = udp(dns.addr, &query("default.global.", RecordType::A, None)).await;
    assert_eq!(m.metadata.response_code, ResponseCode::NoError);

    // Outside every zone and no upstream: REFUSED.
    let (m, _) = udp(dns.addr, &query("example.com.", RecordType::A, None)).await;
    assert_eq!(m.metadata.response_code, ResponseCode::Refused);
}

#[tokio::test]
async fn endpoints_policy_orders_by_locality_from_the_local_cluster() {
    let (_feed, dns) = setup(Policy::Endpoints).await;
    let (m, _) = udp(
        dns.addr,
        &query("reviews.default.global.", RecordType::A, None),
    )
    .await;
    // Local cluster, then the same region (west is in us-east), then others.
    assert_eq!(
        addresses(&m),
        ips(&["10.1.0.1", "10.1.0.2", "10.2.0.1", "10.3.0.1"])
    );

    // A server in another cluster and region orders from its own point of view.
    let mut o = options("central", _feed.addr, Policy::Endpoints);
    o.locality = "us-east/us-east-1b".parse().unwrap();
    let other = Dns::start(o).await;
    other.wait_version(1).await;
    let (m, _) = udp(
        other.addr,
        &query("reviews.default.global.", RecordType::A, None),
    )
    .await;
    assert_eq!(
        addresses(&m),
        ips(&["10.3.0.1", "10.2.0.1", "10.1.0.1", "10.1.0.2"])
    );
}

#[tokio::test]
async fn failover_when_a_clusters_health_drops_to_zero_and_back() {
    let (feed, dns) = setup(Policy::Endpoints).await;
    let ask = || async {
        let (m, _) = udp(
            dns.addr,
            &query("reviews.default.global.", RecordType::A, None),
        )
        .await;
        addresses(&m)
    };
    assert_eq!(
        ask().await[0],
        "10.1.0.1".parse::<std::net::IpAddr>().unwrap()
    );

    feed.publish(reviews(2, false));
    dns.wait_version(2).await;
    assert_eq!(ask().await, ips(&["10.2.0.1", "10.3.0.1"]), "east left out");

    // Nothing healthy anywhere: answer everything rather than nothing.
    let mut all_down = reviews(3, false);
    for c in &mut all_down.services[0].clusters {
        c.healthy = 0;
        c.endpoints.iter_mut().for_each(|e| e.healthy = false);
    }
    feed.publish(all_down);
    dns.wait_version(3).await;
    assert_eq!(ask().await.len(), 4);

    feed.publish(reviews(4, true));
    dns.wait_version(4).await;
    assert_eq!(
        ask().await,
        ips(&["10.1.0.1", "10.1.0.2", "10.2.0.1", "10.3.0.1"]),
        "east back"
    );
}

#[tokio::test]
async fn truncates_without_edns_and_answers_in_full_with_edns_4096() {
    let forty: Vec<String> = (0..40).map(|i| format!("10.9.0.{}", i + 1)).collect();
    let forty: Vec<&str> = forty.iter().map(String::as_str).collect();
    let big = snapshot(
        1,
        vec![service(
            "big",
            "default",
            "240.240.9.9",
            vec![cluster("east", &forty, "", true)],
        )],
    );
    let feed = FakeFeed::start("127.0.0.1:0".parse().unwrap(), big).await;
    let dns = Dns::start(options("east", feed.addr, Policy::Endpoints)).await;
    dns.wait_version(1).await;

    let (m, len) = udp(dns.addr, &query("big.default.global.", RecordType::A, None)).await;
    assert!(
        m.metadata.truncation,
        "40 A records do not fit in 512 bytes"
    );
    assert!(len <= 512, "{len} bytes");
    assert!(addresses(&m).len() < 40);

    let (m, len) = udp(
        dns.addr,
        &query("big.default.global.", RecordType::A, Some(4096)),
    )
    .await;
    assert!(!m.metadata.truncation);
    assert_eq!(addresses(&m).len(), 40);
    assert!(len > 512);
    assert_eq!(m.edns.as_ref().map(|e| e.max_payload()), Some(4096));

    // TCP: always in full.
    let m = tcp(dns.addr, &query("big.default.global.", RecordType::A, None)).await;
    assert!(!m.metadata.truncation);
    assert_eq!(addresses(&m).len(), 40);
}

#[tokio::test]
async fn empty_question_is_formerr_and_other_opcodes_notimp() {
    let (_feed, dns) = setup(Policy::Vip).await;
    let mut m = query("reviews.default.global.", RecordType::A, None);
    m.queries.clear();
    let (reply, _) = udp(dns.addr, &m).await;
    assert_eq!(reply.metadata.response_code, ResponseCode::FormErr);

    let mut m = query("reviews.default.global.", RecordType::A, None);
    m.metadata.op_code = hickory_proto::op::OpCode::Status;
    let (reply, _) = udp(dns.addr, &m).await;
    assert_eq!(reply.metadata.response_code, ResponseCode::NotImp);

    // EDNS version 1: BADVERS.
    let mut m = query("reviews.default.global.", RecordType::A, Some(1232));
    m.edns.as_mut().unwrap().set_version(1);
    let (reply, _) = udp(dns.addr, &m).await;
    // 16 is BADVERS in a response with OPT (hickory names the code BADSIG).
    assert_eq!(u16::from(reply.metadata.response_code), 16);
}

/// Hand-made bad packets: each gets FORMERR, silence or a closed connection —
/// and the server answers a good query afterwards.
fn malformed_corpus() -> Vec<Vec<u8>> {
    let good = query("reviews.default.global.", RecordType::A, None)
        .to_vec()
        .unwrap();
    let mut corpus = vec![
        vec![],
        vec![0],
        vec![0xff; 11],
        good[..12].to_vec(),
        good[..good.len() - 3].to_vec(),
    ];
    // Header says 5 questions, carries 1.
    let mut v = good.clone();
    v[5] = 5;
    corpus.push(v);
    // Header says 65535 answers.
    let mut v = good.clone();
    v[6] = 0xff;
    v[7] = 0xff;
    corpus.push(v);
    // A compression pointer to itself.
    let mut v = good[..12].to_vec();
    v.extend_from_slice(&[0xc0, 0x0c, 0, 1, 0, 1]);
    corpus.push(v);
    // A label longer than 63 bytes.
    let mut v = good[..12].to_vec();
    v.push(64);
    v.extend_from_slice(&[b'a'; 64]);
    v.extend_from_slice(&[0, 0, 1, 0, 1]);
    corpus.push(v);
    // A name longer than 255 bytes.
    let mut v = good[..12].to_vec();
    for _ in 0..5 {
        v.push(63);
        v.extend_from_slice(&[b'b'; 63]);
    }
    v.extend_from_slice(&[0, 0, 1, 0, 1]);
    corpus.push(v);
    // A response, not a query (must not be answered: reflection).
    let mut v = good.clone();
    v[2] |= 0x80;
    corpus.push(v);
    // An OPT record with a broken length.
    let mut v = query("reviews.default.global.", RecordType::A, Some(4096))
        .to_vec()
        .unwrap();
    let n = v.len();
    v[n - 2] = 0xff;
    corpus.push(v);
    // Every byte flipped in turn.
    for i in 0..good.len() {
        let mut v = good.clone();
        v[i] ^= 0xff;
        corpus.push(v);
    }
    // Seeds checked in for the fuzzer.
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/corpus/request");
    if let Ok(entries) = std::fs::read_dir(dir) {
        for e in entries.flatten() {
            corpus.push(std::fs::read(e.path()).unwrap());
        }
    }
    corpus
}

#[tokio::test]
async fn malformed_packets_never_crash_the_server() {
    let (_feed, dns) = setup(Policy::Vip).await;
    let corpus = malformed_corpus();
    for (i, bytes) in corpus.iter().enumerate() {
        if let Some(reply) = udp_raw(dns.addr, bytes, Duration::from_millis(100)).await
            && let Ok(m) = Message::from_vec(&reply)
        {
            assert!(
                m.metadata.message_type == hickory_proto::op::MessageType::Response,
                "#{i}"
            );
            if i < 12 {
                assert_ne!(
                    m.metadata.response_code,
                    ResponseCode::NoError,
                    "#{i} {m:?}"
                );
            }
        }
        let _ = tcp_raw_wait(dns.addr, bytes, Duration::from_millis(100)).await;
    }
    // Still serving, over both transports.
    let (m, _) = udp(
        dns.addr,
        &query("reviews.default.global.", RecordType::A, None),
    )
    .await;
    assert_eq!(addresses(&m), ips(&["240.240.3.4"]));
    let m = tcp(
        dns.addr,
        &query("reviews.default.global.", RecordType::A, None),
    )
    .await;
    assert_eq!(addresses(&m), ips(&["240.240.3.4"]));
}

#[tokio::test]
async fn coredns_grpc_plugin_protocol() {
    let (_feed, dns) = setup(Policy::Endpoints).await;
    let addr = dns.running().grpc.unwrap();
    let mut client = DnsServiceClient::connect(format!("http://{addr}"))
        .await
        .unwrap();
    let q = query("reviews.default.svc.clusterset.local.", RecordType::A, None);
    let reply = client
        .query(DnsPacket {
            msg: q.to_vec().unwrap(),
        })
        .await
        .unwrap()
        .into_inner();
    let m = Message::from_vec(&reply.msg).unwrap();
    assert_eq!(m.metadata.id, q.metadata.id);
    assert_eq!(
        addresses(&m),
        ips(&["10.1.0.1", "10.1.0.2", "10.2.0.1", "10.3.0.1"])
    );

    let q = query("nope.default.global.", RecordType::A, None);
    let reply = client
        .query(DnsPacket {
            msg: q.to_vec().unwrap(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        Message::from_vec(&reply.msg)
            .unwrap()
            .metadata
            .response_code,
        ResponseCode::NXDomain
    );

    // Garbage: FORMERR when a header decodes, INVALID_ARGUMENT when not even that.
    let mut bad = q.to_vec().unwrap();
    bad.truncate(14);
    let reply = client
        .query(DnsPacket { msg: bad })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        Message::from_vec(&reply.msg)
            .unwrap()
            .metadata
            .response_code,
        ResponseCode::FormErr
    );
    let err = client
        .query(DnsPacket { msg: vec![1, 2, 3] })
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::InvalidArgument);
}

#[tokio::test]
async fn keeps_serving_while_the_control_plane_is_away_and_reconnects() {
    let feed = FakeFeed::start("127.0.0.1:0".parse().unwrap(), reviews(1, true)).await;
    let addr = feed.addr;
    let dns = Dns::start(options("east", addr, Policy::Vip)).await;
    dns.wait_version(1).await;
    feed.stop();
    drop(feed);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (m, _) = udp(
        dns.addr,
        &query("reviews.default.global.", RecordType::A, None),
    )
    .await;
    assert_eq!(
        addresses(&m),
        ips(&["240.240.3.4"]),
        "last snapshot still served"
    );
    let (status, _) = http_get(dns.running().admin.unwrap(), "/ready").await;
    assert_eq!(status, 200);

    // The control plane comes back (same address) with new data.
    let mut next = reviews(1, true);
    next.services[0].vips = vec!["240.240.5.6".into()];
    let _feed = FakeFeed::start(addr, next).await;
    for _ in 0..200 {
        let (m, _) = udp(
            dns.addr,
            &query("reviews.default.global.", RecordType::A, None),
        )
        .await;
        if addresses(&m) == ips(&["240.240.5.6"]) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("never reconnected");
}

#[tokio::test]
async fn ready_and_metrics() {
    // No control plane yet: not ready, but answering (REFUSED outside, NXDOMAIN inside).
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let nowhere = listener.local_addr().unwrap();
    drop(listener);
    let dns = Dns::start(options("east", nowhere, Policy::Vip)).await;
    let admin = dns.running().admin.unwrap();
    assert_eq!(http_get(admin, "/ready").await.0, 503);
    let (m, _) = udp(
        dns.addr,
        &query("reviews.default.global.", RecordType::A, None),
    )
    .await;
    assert_eq!(m.metadata.response_code, ResponseCode::NXDomain);

    let (_feed, dns) = setup(Policy::Vip).await;
    let admin = dns.running().admin.unwrap();
    assert_eq!(http_get(admin, "/ready").await.0, 200);
    udp(
        dns.addr,
        &query("reviews.default.global.", RecordType::A, None),
    )
    .await;
    udp(
        dns.addr,
        &query("nope.default.global.", RecordType::AAAA, None),
    )
    .await;
    let (status, body) = http_get(admin, "/metrics").await;
    assert_eq!(status, 200);
    for want in [
        r#"isthmus_dns_queries_total{qtype="A",rcode="NOERROR"} 1"#,
        r#"isthmus_dns_queries_total{qtype="AAAA",rcode="NXDOMAIN"} 1"#,
        r#"isthmus_dns_zone_services{zone="global."} 1"#,
        r#"isthmus_dns_zone_services{zone="clusterset.local."} 1"#,
        "isthmus_dns_request_duration_seconds_count 2",
        "isthmus_dns_snapshot_version 1",
        "isthmus_dns_feed_connected 1",
    ] {
        assert!(body.contains(want), "missing {want:?} in\n{body}");
    }
}

#[tokio::test]
async fn forwards_other_names_to_an_upstream() {
    // The upstream: another of our servers, authoritative for `upstream.test.`.
    let feed = FakeFeed::start("127.0.0.1:0".parse().unwrap(), reviews(1, true)).await;
    let mut o = options("east", feed.addr, Policy::Vip);
    o.zones = vec![isthmus_dns::zone::ZoneConfig::new("upstream.test.", Policy::Vip).unwrap()];
    let upstream = Dns::start(o).await;
    upstream.wait_version(1).await;

    let mut o = options("east", feed.addr, Policy::Vip);
    o.upstream = Some(upstream.addr);
    let dns = Dns::start(o).await;
    dns.wait_version(1).await;
    let (m, _) = udp(
        dns.addr,
        &query("reviews.default.upstream.test.", RecordType::A, None),
    )
    .await;
    assert_eq!(addresses(&m), ips(&["240.240.3.4"]));
    assert!(!m.metadata.authoritative);
    assert!(m.metadata.recursion_available);
    let (m, _) = udp(
        dns.addr,
        &query("nope.default.upstream.test.", RecordType::A, None),
    )
    .await;
    assert_eq!(m.metadata.response_code, ResponseCode::NXDomain);
    // Our own zones are still ours.
    let (m, _) = udp(
        dns.addr,
        &query("reviews.default.global.", RecordType::A, None),
    )
    .await;
    assert!(m.metadata.authoritative);
}

#[tokio::test]
async fn rate_limit_drops_a_flooding_source_over_udp_only() {
    for fast_path in [true, false] {
        let feed = FakeFeed::start("127.0.0.1:0".parse().unwrap(), reviews(1, true)).await;
        let mut o = options("east", feed.addr, Policy::Vip);
        o.rate_limit = Some(5);
        o.udp_fast_path = fast_path;
        let dns = Dns::start(o).await;
        dns.wait_version(1).await;
        // One query the fast path answers, one it leaves to the handler (NXDOMAIN).
        for name in ["reviews.default.global.", "nope.default.global."] {
            let q = query(name, RecordType::A, None).to_vec().unwrap();
            let mut answered = 0;
            for _ in 0..20 {
                if udp_raw(dns.addr, &q, Duration::from_millis(50))
                    .await
                    .is_some()
                {
                    answered += 1;
                }
            }
            assert!(
                (5..=10).contains(&answered),
                "{name} (fast path {fast_path}): {answered} of 20 answered"
            );
            // TCP is not limited.
            assert!(tcp_raw(dns.addr, &q).await.is_ok());
        }
    }
}

#[tokio::test]
async fn hickory_udp_listener_answers_the_same_with_the_fast_path_off() {
    let feed = FakeFeed::start("127.0.0.1:0".parse().unwrap(), reviews(1, true)).await;
    let mut fast = options("east", feed.addr, Policy::Vip);
    fast.locality = "us-east/us-east-1a".parse().unwrap();
    let mut plain = fast.clone();
    plain.udp_fast_path = false;
    let (fast, plain) = (Dns::start(fast).await, Dns::start(plain).await);
    fast.wait_version(1).await;
    plain.wait_version(1).await;
    for (name, qtype, edns) in [
        ("reviews.default.global.", RecordType::A, None),
        ("Reviews.Default.Global.", RecordType::A, Some(1232)),
        ("reviews.default.svc.clusterset.local.", RecordType::A, None),
        ("reviews.default.global.", RecordType::AAAA, None),
        ("nope.default.global.", RecordType::A, None),
        ("example.com.", RecordType::A, None),
    ] {
        let q = query(name, qtype, edns);
        let (a, _) = udp(fast.addr, &q).await;
        let (b, _) = udp(plain.addr, &q).await;
        assert_eq!(a, b, "{name} {qtype}");
    }
}

#[tokio::test]
async fn shuts_down_gracefully_on_cancel() {
    let (_feed, mut dns) = setup(Policy::Vip).await;
    let addr = dns.addr;
    dns.shutdown.cancel();
    let running = dns.running.take().unwrap();
    tokio::time::timeout(Duration::from_secs(5), running.wait())
        .await
        .expect("stops within the grace period")
        .unwrap();
    assert!(
        udp_raw(
            addr,
            &query("reviews.default.global.", RecordType::A, None)
                .to_vec()
                .unwrap(),
            Duration::from_millis(200)
        )
        .await
        .is_none()
    );
}
