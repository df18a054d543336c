use super::*;

#[test]
fn pem_round_trip() {
    for len in [0usize, 1, 2, 3, 47, 48, 49, 200] {
        let der: Vec<u8> = (0..len).map(|i| (i * 37 % 256) as u8).collect();
        let pem = encode_cert(&der);
        let parsed: Vec<_> = CertificateDer::pem_slice_iter(pem.as_bytes())
            .collect::<Result<_, _>>()
            .unwrap();
        if len == 0 {
            // An empty block is not a certificate; only check the framing.
            assert!(pem.starts_with("-----BEGIN CERTIFICATE-----\n"));
            continue;
        }
        assert_eq!(parsed, vec![CertificateDer::from(der)], "len {len}");
        assert!(pem.lines().all(|line| line.len() <= 64));
    }
}

#[test]
fn long_der_lengths() {
    assert_eq!(tlv(0x04, &[7; 5])[..2], [0x04, 5]);
    assert_eq!(tlv(0x04, &[7; 200])[..3], [0x04, 0x81, 200]);
    assert_eq!(tlv(0x04, &[7; 1200])[..4], [0x04, 0x82, 0x04, 0xb0]);
}

/// Keys made by OpenSSL 3 in each of the encodings Istio's `cacerts` may use (throwaway
/// test keys, generated once with `openssl genrsa -traditional` / `openssl ecparam -genkey`,
/// each next to its `openssl pkcs8 -topk8` form).
#[test]
fn loads_every_key_encoding_openssl_writes() {
    let pairs = [
        (
            include_str!("testdata/rsa-pkcs1.pem"),
            include_str!("testdata/rsa-pkcs8.pem"),
        ),
        (
            include_str!("testdata/ec-p256-sec1.pem"),
            include_str!("testdata/ec-p256-pkcs8.pem"),
        ),
        (
            include_str!("testdata/ec-p384-sec1.pem"),
            include_str!("testdata/ec-p384-pkcs8.pem"),
        ),
    ];
    for (traditional, pkcs8) in pairs {
        let a = parse_key(traditional).unwrap();
        let b = parse_key(pkcs8).unwrap();
        assert_eq!(a.public_key_raw(), b.public_key_raw());
        assert_eq!(a.algorithm(), b.algorithm());
    }
    let key = KeyPair::generate().unwrap();
    assert_eq!(
        parse_key(&key.serialize_pem()).unwrap().public_key_raw(),
        key.public_key_raw()
    );
}

#[test]
fn rejects_garbage_keys() {
    assert!(parse_key("").unwrap_err().contains("no PEM"));
    let not_a_key = "-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n";
    assert!(parse_key(not_a_key).unwrap_err().contains("unsupported"));
    assert!(parse_certs("hello").unwrap_err().contains("no PEM"));
}
