use std::sync::Arc;
use std::time::Duration;

use tokio::io::AsyncWriteExt;

use super::internal::parse_in_pieces;
use super::*;

const SNI: &str = "outbound_.5000_.v1_.helloworld.sample.svc.cluster.local";

/// A ClientHello handshake message (header included) with these extensions.
fn hello(extensions: &[(u16, Vec<u8>)]) -> Vec<u8> {
    let mut body = vec![3, 3];
    body.extend([0xab; 32]);
    body.push(32);
    body.extend([0x11; 32]);
    body.extend([0, 4, 0x13, 0x01, 0x13, 0x02]);
    body.extend([1, 0]);
    let mut exts = Vec::new();
    for (kind, data) in extensions {
        exts.extend(kind.to_be_bytes());
        exts.extend((data.len() as u16).to_be_bytes());
        exts.extend(data);
    }
    body.extend((exts.len() as u16).to_be_bytes());
    body.extend(exts);
    let mut msg = vec![1];
    msg.extend(&(body.len() as u32).to_be_bytes()[1..]);
    msg.extend(body);
    msg
}

fn sni_ext(names: &[(u8, &str)]) -> (u16, Vec<u8>) {
    let mut list = Vec::new();
    for (t, n) in names {
        list.push(*t);
        list.extend((n.len() as u16).to_be_bytes());
        list.extend(n.as_bytes());
    }
    let mut data = (list.len() as u16).to_be_bytes().to_vec();
    data.extend(list);
    (0, data)
}

fn alpn_ext(names: &[&str]) -> (u16, Vec<u8>) {
    let mut list = Vec::new();
    for n in names {
        list.push(n.len() as u8);
        list.extend(n.as_bytes());
    }
    let mut data = (list.len() as u16).to_be_bytes().to_vec();
    data.extend(list);
    (16, data)
}

/// Frames handshake bytes into records of at most `size` payload bytes.
fn records(handshake: &[u8], size: usize) -> Vec<u8> {
    let mut out = Vec::new();
    for chunk in handshake.chunks(size) {
        out.extend([22, 3, 1]);
        out.extend((chunk.len() as u16).to_be_bytes());
        out.extend(chunk);
    }
    out
}

fn parse(data: &[u8]) -> Result<Option<ClientHello>, HelloError> {
    Reassembler::new(DEFAULT_MAX_HELLO).advance(data)
}

/// What rustls sends first, for this SNI and ALPN.
fn rustls_hello(sni: &str, alpn: &[&str]) -> Vec<u8> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(rustls::RootCertStore::empty())
        .with_no_client_auth();
    config.alpn_protocols = alpn.iter().map(|a| a.as_bytes().to_vec()).collect();
    let name = rustls::pki_types::ServerName::try_from(sni.to_string()).unwrap();
    let mut conn = rustls::ClientConnection::new(Arc::new(config), name).unwrap();
    let mut out = Vec::new();
    conn.write_tls(&mut out).unwrap();
    out
}

#[test]
fn reads_sni_and_alpn_from_a_rustls_client_hello() {
    let bytes = rustls_hello(SNI, &["istio-peer-exchange", "h2"]);
    let hello = parse(&bytes).unwrap().unwrap();
    assert_eq!(hello.sni.as_deref(), Some(SNI));
    assert_eq!(hello.alpn, ["istio-peer-exchange", "h2"]);
}

#[test]
fn the_sni_is_lowercased() {
    let msg = hello(&[sni_ext(&[(
        0,
        "Outbound_.5000_._.HelloWorld.sample.global",
    )])]);
    let hello = parse(&records(&msg, 1 << 14)).unwrap().unwrap();
    assert_eq!(
        hello.sni.as_deref(),
        Some("outbound_.5000_._.helloworld.sample.global")
    );
}

#[test]
fn a_client_hello_split_across_records_and_reads_is_reassembled() {
    let msg = rustls_hello(SNI, &["h2"]);
    // Re-frame the handshake message (after the one record header) into 7-byte records.
    let reframed = records(&msg[5..], 7);
    assert!(reframed.len() > msg.len() + 100);
    let whole = parse(&reframed).unwrap().unwrap();
    assert_eq!(whole.sni.as_deref(), Some(SNI));
    // Every cut point of TCP delivery gives the same answer, and none before the end.
    let every_byte: Vec<usize> = (1..reframed.len()).collect();
    assert_eq!(
        parse_in_pieces(&reframed, &every_byte, DEFAULT_MAX_HELLO).unwrap(),
        Some(whole.clone())
    );
    let mut r = Reassembler::new(DEFAULT_MAX_HELLO);
    assert_eq!(r.advance(&reframed[..reframed.len() - 1]).unwrap(), None);
    assert_eq!(r.advance(&reframed).unwrap(), Some(whole));
}

#[test]
fn bytes_after_the_client_hello_do_not_matter() {
    let mut bytes = rustls_hello(SNI, &[]);
    bytes.extend([23, 3, 3, 0, 5, 1, 2, 3, 4, 5]);
    assert_eq!(parse(&bytes).unwrap().unwrap().sni.as_deref(), Some(SNI));
}

#[test]
fn no_server_name_is_a_hello_without_sni() {
    let msg = hello(&[alpn_ext(&["h2"])]);
    let hello = parse(&records(&msg, 1 << 14)).unwrap().unwrap();
    assert_eq!(hello.sni, None);
    assert_eq!(hello.alpn, ["h2"]);
    // No extensions at all (TLS 1.2 allows it).
    let mut bare = self::hello(&[]);
    bare.truncate(bare.len() - 2);
    let len = bare.len() - 4;
    bare[1..4].copy_from_slice(&(len as u32).to_be_bytes()[1..]);
    assert_eq!(parse(&records(&bare, 100)).unwrap().unwrap().sni, None);
}

#[test]
fn non_tls_input_is_refused_at_once() {
    for input in [
        &b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"[..],
        b"SSH-2.0-OpenSSH_9.6\r\n",
        // An SSLv2-framed ClientHello.
        &[0x80, 0x2e, 0x01, 0x03, 0x01],
        // A TLS alert record.
        &[21, 3, 3, 0, 2, 2, 40],
        // A handshake record with a wrong version.
        &[22, 4, 1, 0, 1, 1],
    ] {
        assert_eq!(parse(input), Err(HelloError::NotTls), "{input:?}");
    }
}

#[test]
fn a_server_hello_is_not_a_client_hello() {
    let mut msg = hello(&[sni_ext(&[(0, SNI)])]);
    msg[0] = 2;
    assert_eq!(parse(&records(&msg, 100)), Err(HelloError::NotClientHello));
}

#[test]
fn oversize_is_refused_as_soon_as_a_length_says_so() {
    // A handshake header announcing 20 KiB: refused with only 9 bytes read.
    let header = [22, 3, 1, 0, 4, 1, 0, 0x50, 0];
    assert_eq!(parse(&header), Err(HelloError::TooLarge));
    // A real one over the limit, padded, in many records.
    let msg = hello(&[sni_ext(&[(0, SNI)]), (21, vec![0; 17_000])]);
    let framed = records(&msg, 4000);
    assert_eq!(parse(&framed), Err(HelloError::TooLarge));
    // The same within a larger limit is fine.
    assert!(
        Reassembler::new(32 * 1024)
            .advance(&framed)
            .unwrap()
            .is_some()
    );
}

#[test]
fn malformed_hellos_are_refused() {
    let cases: Vec<(Vec<u8>, &str)> = vec![
        (
            hello(&[sni_ext(&[(0, SNI)]), sni_ext(&[(0, "other")])]),
            "an extension appears twice",
        ),
        (
            hello(&[sni_ext(&[(0, SNI), (0, "other")])]),
            "two host names",
        ),
        (
            hello(&[sni_ext(&[(0, "evil\0.example")])]),
            "server name is not a DNS host name",
        ),
        (
            hello(&[sni_ext(&[(0, "")])]),
            "server name is not a DNS host name",
        ),
        (
            hello(&[sni_ext(&[(1, "not-a-host-name")])]),
            "server_name extension without a host name",
        ),
        (hello(&[alpn_ext(&["h2", ""])]), "empty ALPN protocol name"),
    ];
    for (msg, what) in cases {
        assert_eq!(
            parse(&records(&msg, 1 << 14)),
            Err(HelloError::Malformed(what)),
            "{what}"
        );
    }
    // An extension length beyond its list.
    let mut msg = hello(&[sni_ext(&[(0, SNI)])]);
    let n = msg.len();
    msg[n - SNI.len() - 4] += 1;
    assert!(matches!(
        parse(&records(&msg, 1 << 14)),
        Err(HelloError::Malformed(_))
    ));
    // An empty record, and an alert between two fragments.
    assert_eq!(
        parse(&[22, 3, 1, 0, 0]),
        Err(HelloError::Malformed("empty handshake record"))
    );
    let msg = hello(&[sni_ext(&[(0, SNI)])]);
    let mut interleaved = records(&msg[..10], 10);
    interleaved.extend([21, 3, 3, 0, 2, 1, 0]);
    assert_eq!(
        parse(&interleaved),
        Err(HelloError::Malformed(
            "a non-handshake record inside the ClientHello"
        ))
    );
}

#[tokio::test]
async fn reading_over_a_stream_stops_at_the_hello_and_keeps_every_byte() {
    let bytes = rustls_hello(SNI, &["h2"]);
    let (mut client, mut server) = tokio::io::duplex(64 * 1024);
    let sent = bytes.clone();
    let writer = tokio::spawn(async move {
        // Three TCP-like pieces with pauses.
        for piece in sent.chunks(sent.len() / 3 + 1) {
            client.write_all(piece).await.unwrap();
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        client
    });
    let mut buf = Vec::new();
    let hello = read_client_hello(
        &mut server,
        &mut buf,
        DEFAULT_MAX_HELLO,
        Duration::from_secs(5),
    )
    .await
    .unwrap();
    assert_eq!(hello.sni.as_deref(), Some(SNI));
    assert_eq!(buf, bytes);
    drop(writer.await.unwrap());
}

#[tokio::test(start_paused = true)]
async fn a_slow_client_times_out_and_an_early_close_is_reported() {
    let bytes = rustls_hello(SNI, &[]);
    let (mut client, mut server) = tokio::io::duplex(64 * 1024);
    client.write_all(&bytes[..20]).await.unwrap();
    let mut buf = Vec::new();
    let err = read_client_hello(
        &mut server,
        &mut buf,
        DEFAULT_MAX_HELLO,
        Duration::from_secs(10),
    )
    .await
    .unwrap_err();
    assert!(matches!(err, DetectError::Timeout(_)), "{err}");
    assert_eq!(err.reason(), "client_hello_timeout");

    let (mut client, mut server) = tokio::io::duplex(64 * 1024);
    client.write_all(&bytes[..20]).await.unwrap();
    drop(client);
    let mut buf = Vec::new();
    let err = read_client_hello(
        &mut server,
        &mut buf,
        DEFAULT_MAX_HELLO,
        Duration::from_secs(10),
    )
    .await
    .unwrap_err();
    assert!(matches!(err, DetectError::Closed(20)), "{err}");
}

#[test]
fn bytes_past_the_limit_never_change_the_answer() {
    // A ClientHello announcing 500 bytes, 496 of them in two records (510
    // bytes), then an alert record whose header straddles the 512-byte
    // limit: whole or cut anywhere, the answer is TooLarge (found by fuzzing).
    let mut handshake = vec![1, 0, 1, 0xf4];
    handshake.resize(500, 7);
    let mut data = records(&handshake, 250);
    assert_eq!(data.len(), 510);
    data.extend([21, 3, 3, 0, 2, 1, 0]);
    let cuts: Vec<usize> = (2..data.len()).step_by(2).collect();
    assert_eq!(parse_in_pieces(&data, &[], 512), Err(HelloError::TooLarge));
    assert_eq!(
        parse_in_pieces(&data, &cuts, 512),
        Err(HelloError::TooLarge)
    );
}
