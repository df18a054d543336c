use std::sync::OnceLock;

use rcgen::CertificateParams;
use x509_parser::extensions::GeneralName;

use super::*;
use crate::tool::{create_intermediate, create_root};

fn ca() -> &'static ClusterCa {
    static CA: OnceLock<ClusterCa> = OnceLock::new();
    CA.get_or_init(|| {
        let root = create_root("test root").unwrap();
        let east = create_intermediate(&root, "east", "east.isthmus.local").unwrap();
        east.cluster_ca(&root.trust_bundle().unwrap()).unwrap()
    })
}

fn sleep() -> SpiffeId {
    SpiffeId::new("east.isthmus.local", "sample", "sleep").unwrap()
}

/// A CSR asking for everything it should not get: other SANs, a subject, CA rights.
fn greedy_csr() -> (String, KeyPair) {
    let key = KeyPair::generate().unwrap();
    let mut params = CertificateParams::new(vec!["evil.example.com".to_owned()]).unwrap();
    params.subject_alt_names.push(SanType::URI(
        "spiffe://east.isthmus.local/ns/istio-system/sa/istiod"
            .try_into()
            .unwrap(),
    ));
    params.subject_alt_names.push(SanType::URI(
        "spiffe://west.isthmus.local/ns/sample/sa/sleep"
            .try_into()
            .unwrap(),
    ));
    params.is_ca = IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign];
    let csr = params.serialize_request(&key).unwrap().pem().unwrap();
    (csr, key)
}

fn secs(t: SystemTime) -> i64 {
    t.duration_since(SystemTime::UNIX_EPOCH).unwrap().as_secs() as i64
}

#[test]
fn leaf_carries_only_the_requested_identity() {
    let (csr, key) = greedy_csr();
    let issued = ca().sign_csr(&csr, &sleep(), None).unwrap();
    let leaf = cert::parse(&issued.chain_der[0]).unwrap();

    let sans = leaf.subject_alternative_name().unwrap().unwrap();
    assert!(sans.critical, "SAN is critical when the subject is empty");
    assert_eq!(
        sans.value.general_names,
        vec![GeneralName::URI(
            "spiffe://east.isthmus.local/ns/sample/sa/sleep"
        )]
    );
    assert_eq!(leaf.subject().iter().count(), 0, "empty subject");
    assert_eq!(
        leaf.public_key().subject_public_key.data.as_ref(),
        key.public_key_raw()
    );
    assert_eq!(issued.identity, sleep());
    assert_eq!(cert::peer_identity(&issued.chain_der[0]).unwrap(), sleep());
}

#[test]
fn leaf_is_an_mtls_end_entity() {
    let (csr, _) = greedy_csr();
    let issued = ca().sign_csr(&csr, &sleep(), None).unwrap();
    let leaf = cert::parse(&issued.chain_der[0]).unwrap();

    assert!(!leaf.is_ca());
    let bc = leaf.basic_constraints().unwrap().unwrap();
    assert!(!bc.value.ca);
    let ku = leaf.key_usage().unwrap().unwrap().value;
    assert!(ku.digital_signature() && ku.key_encipherment());
    assert!(!ku.key_cert_sign());
    let eku = leaf.extended_key_usage().unwrap().unwrap().value;
    assert!(eku.server_auth && eku.client_auth);
    assert!(!eku.any && !eku.code_signing);
    assert!(cert::check_is_ca(&leaf).is_err());
}

#[test]
fn validity_is_backdated_and_follows_ttl() {
    let (csr, _) = greedy_csr();
    let now = secs(SystemTime::now());

    let issued = ca().sign_csr(&csr, &sleep(), None).unwrap();
    let near = |a: i64, b: i64| (a - b).abs() <= 5;
    assert!(
        near(secs(issued.not_before), now - 120),
        "notBefore ≈ now − 2 min"
    );
    assert!(
        near(secs(issued.not_after), now + 24 * 3600),
        "default TTL 24h"
    );

    let short = ca()
        .sign_csr(&csr, &sleep(), Some(Duration::from_secs(3600)))
        .unwrap();
    assert!(near(secs(short.not_after), now + 3600));

    let capped = ca()
        .sign_csr(&csr, &sleep(), Some(Duration::from_secs(365 * 24 * 3600)))
        .unwrap();
    assert!(near(secs(capped.not_after), now + MAX_TTL.as_secs() as i64));

    assert_eq!(
        ca().sign_csr(&csr, &sleep(), Some(Duration::ZERO)),
        Err(IssueError::ZeroTtl)
    );
}

#[test]
fn serials_differ_for_the_same_key() {
    let (csr, _) = greedy_csr();
    let a = ca().sign_csr(&csr, &sleep(), None).unwrap();
    let b = ca().sign_csr(&csr, &sleep(), None).unwrap();
    let serial = |i: &IssuedCert| cert::parse(&i.chain_der[0]).unwrap().raw_serial().to_vec();
    assert_ne!(serial(&a), serial(&b));
}

#[test]
fn chain_is_leaf_then_intermediate() {
    let issued = ca().issue_key_and_cert(&sleep(), None).unwrap();
    assert_eq!(issued.cert.chain_der.len(), 2);
    assert_eq!(issued.cert.chain_der[1], ca().chain_der()[0]);
    assert!(issued.cert.chain_pem.starts_with(&issued.cert.cert_pem));
    assert_eq!(
        issued.cert.chain_pem.matches("BEGIN CERTIFICATE").count(),
        2
    );
    assert!(
        !issued
            .cert
            .chain_pem
            .contains(ca().trust_bundle_pem().trim())
    );
    assert!(format!("{issued:?}").contains("[secret]"));
    assert!(!format!("{issued:?}").contains("PRIVATE KEY"));
}

#[test]
fn refuses_identities_of_other_trust_domains() {
    let west = SpiffeId::new("west.isthmus.local", "sample", "sleep").unwrap();
    let err = ca().issue_key_and_cert(&west, None).unwrap_err();
    assert_eq!(
        err.to_string(),
        "cannot issue spiffe://west.isthmus.local/ns/sample/sa/sleep: this cluster's CA only \
         issues identities in trust domain \"east.isthmus.local\""
    );
}

#[test]
fn rejects_bad_csrs() {
    let err = |csr: &str| ca().sign_csr(csr, &sleep(), None).unwrap_err().to_string();
    assert!(err("").contains("CERTIFICATE REQUEST"));
    assert!(err("garbage").contains("CERTIFICATE REQUEST"));
    let not_der = "-----BEGIN CERTIFICATE REQUEST-----\nAAAA\n-----END CERTIFICATE REQUEST-----\n";
    assert!(
        err(not_der).contains("not a valid PKCS#10"),
        "{}",
        err(not_der)
    );

    // A CSR whose signature was made by another key.
    let (csr, _) = greedy_csr();
    let der = CertificateSigningRequestDer::from_pem_slice(csr.as_bytes()).unwrap();
    let mut bytes = der.as_ref().to_vec();
    let last = bytes.len() - 1;
    bytes[last] ^= 0x01;
    let tampered = format!(
        "-----BEGIN CERTIFICATE REQUEST-----\n{}-----END CERTIFICATE REQUEST-----\n",
        pem::encode_cert(&bytes)
            .lines()
            .filter(|l| !l.starts_with("-----"))
            .map(|l| format!("{l}\n"))
            .collect::<String>()
    );
    assert!(err(&tampered).contains("invalid certificate signing request"));
}
