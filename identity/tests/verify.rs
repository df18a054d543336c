//! Verifying workload chains: webpki validation plus trust-domain binding.

mod common;

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use common::*;
use isthmus_identity::tool::{create_intermediate, create_root};
use isthmus_identity::{TrustBundle, UnixTime, VerifyError, verify_workload_chain};
use rcgen::{CertificateParams, KeyPair};

fn now() -> UnixTime {
    UnixTime::now()
}

fn csr() -> String {
    let key = KeyPair::generate().unwrap();
    CertificateParams::default()
        .serialize_request(&key)
        .unwrap()
        .pem()
        .unwrap()
}

#[test]
fn issued_chain_verifies() {
    let fed = federation();
    let sleep = id(EAST_TD, "sample", "sleep");
    let issued = fed.east_ca.sign_csr(&csr(), &sleep, None).unwrap();
    assert_eq!(
        verify_workload_chain(&issued.chain_der, &fed.bundle, now()),
        Ok(sleep.clone())
    );
    // Sending the root along is harmless.
    let mut with_root = issued.chain_der.clone();
    with_root.push(der(fed.root.cert_pem()));
    assert_eq!(
        verify_workload_chain(&with_root, &fed.bundle, now()),
        Ok(sleep)
    );
}

#[test]
fn issued_chain_verifies_with_stock_rustls() {
    let fed = federation();
    let issued = fed
        .east_ca
        .issue_key_and_cert(&id(EAST_TD, "sample", "sleep"), None)
        .unwrap();
    let mut roots = rustls::RootCertStore::empty();
    roots.add(der(fed.root.cert_pem())).unwrap();
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let client_verifier =
        rustls::server::WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
            .build()
            .unwrap();
    let (leaf, intermediates) = issued.cert.chain_der.split_first().unwrap();
    client_verifier
        .verify_client_cert(leaf, intermediates, now())
        .unwrap();
}

#[test]
fn compromised_cluster_cannot_mint_another_clusters_identity() {
    let fed = federation();
    // east's intermediate signs a west identity: a valid signature chain to the shared root...
    let forged = forge_leaf(
        &fed.east,
        &["spiffe://west.isthmus.local/ns/sample/sa/reviews"],
        valid_now(),
    );
    let err = verify_workload_chain(&forged.chain, &fed.bundle, now()).unwrap_err();
    // ...but the binding check rejects it.
    assert_eq!(
        err,
        VerifyError::TrustDomainMismatch {
            identity: "spiffe://west.isthmus.local/ns/sample/sa/reviews".into(),
            issuer_trust_domain: EAST_TD.into(),
            issuer: "O=Isthmus, CN=Isthmus intermediate CA east".into(),
        }
    );
    assert!(
        err.to_string()
            .contains("may only issue identities in its own trust domain")
    );

    // Listing west's intermediate in the chain as well does not help: the binding is checked
    // on the path webpki actually validated.
    let mut chain = forged.chain.clone();
    chain.insert(1, der(fed.west.cert_pem()));
    assert!(matches!(
        verify_workload_chain(&chain, &fed.bundle, now()),
        Err(VerifyError::TrustDomainMismatch { .. })
    ));

    // And the same forgery in east's own trust domain is fine.
    let honest = forge_leaf(
        &fed.east,
        &["spiffe://east.isthmus.local/ns/a/sa/b"],
        valid_now(),
    );
    assert!(verify_workload_chain(&honest.chain, &fed.bundle, now()).is_ok());
}

#[test]
fn both_roots_accepted_during_rotation() {
    let fed = federation();
    let new_root = create_root("Isthmus test root 2").unwrap();
    let new_west = create_intermediate(&new_root, "west", WEST_TD).unwrap();
    let bundle = fed.bundle.merged(&new_root.trust_bundle().unwrap());
    assert_eq!(bundle.len(), 2);
    let new_west_ca = new_west.cluster_ca(&bundle).unwrap();

    let old = fed
        .east_ca
        .issue_key_and_cert(&id(EAST_TD, "sample", "sleep"), None)
        .unwrap();
    let new = new_west_ca
        .issue_key_and_cert(&id(WEST_TD, "sample", "helloworld"), None)
        .unwrap();
    for issued in [&old, &new] {
        assert_eq!(
            verify_workload_chain(&issued.cert.chain_der, &bundle, now()),
            Ok(issued.cert.identity.clone())
        );
    }
    // Before the new root is distributed, its leaves are unknown.
    let err = verify_workload_chain(&new.cert.chain_der, &fed.bundle, now()).unwrap_err();
    assert!(
        matches!(
            &err,
            VerifyError::Untrusted {
                error: webpki::Error::UnknownIssuer,
                ..
            }
        ),
        "{err:?}"
    );
    assert!(
        err.to_string().contains("does not chain to a root"),
        "{err}"
    );
}

#[test]
fn expired_and_not_yet_valid_certificates_are_rejected() {
    let fed = federation();
    let issued = fed
        .east_ca
        .issue_key_and_cert(
            &id(EAST_TD, "sample", "sleep"),
            Some(Duration::from_secs(3600)),
        )
        .unwrap();
    let later = UnixTime::since_unix_epoch(
        (SystemTime::now() + Duration::from_secs(7200))
            .duration_since(SystemTime::UNIX_EPOCH)
            .unwrap(),
    );
    let err = verify_workload_chain(&issued.cert.chain_der, &fed.bundle, later).unwrap_err();
    assert!(
        matches!(
            &err,
            VerifyError::Untrusted {
                error: webpki::Error::CertExpired { .. },
                ..
            }
        ),
        "{err:?}"
    );
    assert!(err.to_string().contains("expired"), "{err}");

    let now_t = SystemTime::now();
    let expired = forge_leaf(
        &fed.east,
        &["spiffe://east.isthmus.local/ns/a/sa/b"],
        (
            now_t - Duration::from_secs(7200),
            now_t - Duration::from_secs(3600),
        ),
    );
    assert!(matches!(
        verify_workload_chain(&expired.chain, &fed.bundle, now()),
        Err(VerifyError::Untrusted {
            error: webpki::Error::CertExpired { .. },
            ..
        })
    ));
    let future = forge_leaf(
        &fed.east,
        &["spiffe://east.isthmus.local/ns/a/sa/b"],
        (
            now_t + Duration::from_secs(3600),
            now_t + Duration::from_secs(7200),
        ),
    );
    assert!(matches!(
        verify_workload_chain(&future.chain, &fed.bundle, now()),
        Err(VerifyError::Untrusted {
            error: webpki::Error::CertNotValidYet { .. },
            ..
        })
    ));
}

#[test]
fn leaf_must_carry_exactly_one_spiffe_id() {
    let fed = federation();
    let cases: [&[&str]; 3] = [
        &[],
        &[
            "spiffe://east.isthmus.local/ns/a/sa/b",
            "spiffe://east.isthmus.local/ns/a/sa/c",
        ],
        &["https://east.isthmus.local/ns/a/sa/b"],
    ];
    for uris in cases {
        let forged = forge_leaf(&fed.east, uris, valid_now());
        let err = verify_workload_chain(&forged.chain, &fed.bundle, now()).unwrap_err();
        assert!(
            matches!(err, VerifyError::LeafIdentity(_)),
            "{uris:?}: {err:?}"
        );
    }
}

#[test]
fn leaf_signed_directly_by_the_root_is_rejected() {
    let fed = federation();
    // Treat the root as if it were an intermediate: forge_leaf only needs cert + key.
    let issuer = rcgen::Issuer::from_ca_cert_pem(
        fed.root.cert_pem(),
        KeyPair::from_pem(fed.root.key_pem()).unwrap(),
    )
    .unwrap();
    let key = KeyPair::generate().unwrap();
    let mut params = CertificateParams::default();
    params.subject_alt_names = vec![rcgen::SanType::URI(
        "spiffe://east.isthmus.local/ns/a/sa/b".try_into().unwrap(),
    )];
    let leaf = params.signed_by(&key, &issuer).unwrap();
    let err = verify_workload_chain(&[leaf.der().clone()], &fed.bundle, now()).unwrap_err();
    assert!(matches!(err, VerifyError::NoIntermediate { .. }), "{err:?}");
}

#[test]
fn garbage_and_empty_chains() {
    let fed = federation();
    assert_eq!(
        verify_workload_chain(&[], &fed.bundle, now()),
        Err(VerifyError::EmptyChain)
    );
    let garbage = vec![b"not a certificate".to_vec().into()];
    assert!(matches!(
        verify_workload_chain(&garbage, &fed.bundle, now()),
        Err(VerifyError::Malformed(_))
    ));
}

#[test]
fn bundle_rejects_non_roots() {
    assert!(TrustBundle::from_pem("").is_err());
    assert!(TrustBundle::from_der(vec![]).is_err());
    let fed = federation();
    let doubled = format!("{}{}", fed.root.cert_pem(), fed.root.cert_pem());
    assert_eq!(TrustBundle::from_pem(&doubled).unwrap().len(), 1);
    assert_eq!(
        TrustBundle::from_pem(&doubled).unwrap().root_pems().len(),
        1
    );
}
