//! Loading a cluster CA from Istio's `cacerts` layout, and every way it can be wrong.

mod common;

use std::path::Path;

use common::*;
use isthmus_identity::tool::{create_intermediate, create_root, write_cacerts};
use isthmus_identity::{
    CA_CERT_FILE, CA_KEY_FILE, CERT_CHAIN_FILE, CacertsPems, ClusterCa, LoadError, ROOT_CERT_FILE,
    TrustBundle,
};
use rcgen::{CertificateParams, KeyPair};

fn write_east(dir: &Path) -> Federation {
    let fed = federation();
    write_cacerts(dir, &fed.east, &fed.bundle).unwrap();
    fed
}

fn replace(dir: &Path, file: &str, contents: &str) {
    std::fs::write(dir.join(file), contents).unwrap();
}

#[test]
fn loads_a_generated_cacerts_directory() {
    let dir = tempfile::tempdir().unwrap();
    let fed = write_east(dir.path());
    let ca = ClusterCa::load(dir.path()).unwrap();
    assert_eq!(ca.trust_domain(), EAST_TD);
    assert_eq!(ca.trust_bundle_pem(), fed.root.cert_pem());
    // The chain handed out stops below the root.
    assert_eq!(ca.chain_pem(), fed.east.cert_pem());
    assert_eq!(ca.chain_der().len(), 1);
    assert!(format!("{ca:?}").contains(EAST_TD));
    assert!(!format!("{ca:?}").contains("PRIVATE"));
}

#[test]
fn from_pems_is_the_same_check_for_secret_data() {
    let fed = federation();
    let ca = ClusterCa::from_pems(CacertsPems {
        ca_cert: fed.east.cert_pem(),
        ca_key: fed.east.key_pem(),
        root_cert: fed.root.cert_pem(),
        cert_chain: fed.east.chain_pem(),
    })
    .unwrap();
    assert_eq!(ca.trust_domain(), EAST_TD);

    let err = ClusterCa::from_pems(CacertsPems {
        ca_cert: fed.east.cert_pem(),
        ca_key: fed.west.key_pem(),
        root_cert: fed.root.cert_pem(),
        cert_chain: fed.east.chain_pem(),
    })
    .unwrap_err();
    assert_eq!(
        err.to_string(),
        "ca-key.pem does not match ca-cert.pem: the private key belongs to another certificate"
    );
}

#[test]
fn missing_file_is_named() {
    let dir = tempfile::tempdir().unwrap();
    write_east(dir.path());
    for file in [CA_CERT_FILE, CA_KEY_FILE, ROOT_CERT_FILE, CERT_CHAIN_FILE] {
        let saved = std::fs::read_to_string(dir.path().join(file)).unwrap();
        std::fs::remove_file(dir.path().join(file)).unwrap();
        let err = ClusterCa::load(dir.path()).unwrap_err();
        assert!(matches!(err, LoadError::Read { .. }), "{err:?}");
        let path = dir.path().join(file).display().to_string();
        assert!(
            err.to_string()
                .starts_with(&format!("cannot read {path}: ")),
            "{err}"
        );
        replace(dir.path(), file, &saved);
    }
    ClusterCa::load(dir.path()).unwrap();
}

#[test]
fn rejects_a_key_of_another_certificate() {
    let dir = tempfile::tempdir().unwrap();
    let fed = write_east(dir.path());
    replace(dir.path(), CA_KEY_FILE, fed.west.key_pem());
    let err = ClusterCa::load(dir.path()).unwrap_err();
    assert!(matches!(err, LoadError::KeyMismatch { .. }), "{err:?}");
    assert!(
        err.to_string().contains("ca-key.pem does not match"),
        "{err}"
    );
    assert!(err.to_string().contains(&dir.path().display().to_string()));
}

#[test]
fn rejects_a_non_ca_certificate() {
    let dir = tempfile::tempdir().unwrap();
    let fed = write_east(dir.path());
    // A leaf with a matching key, as if a workload certificate had been copied in.
    let leaf = forge_leaf(&fed.east, &["spiffe://east.isthmus.local"], valid_now());
    let leaf_pem = leaf.leaf_pem;
    replace(dir.path(), CA_CERT_FILE, &leaf_pem);
    replace(dir.path(), CA_KEY_FILE, &leaf.key.serialize_pem());
    replace(
        dir.path(),
        CERT_CHAIN_FILE,
        &format!("{leaf_pem}{}", fed.east.chain_pem()),
    );
    let err = ClusterCa::load(dir.path()).unwrap_err();
    assert!(matches!(err, LoadError::NotCa { .. }), "{err:?}");
    assert!(
        err.to_string()
            .contains("ca-cert.pem is not a CA certificate"),
        "{err}"
    );
}

#[test]
fn rejects_a_chain_that_does_not_reach_the_root() {
    let dir = tempfile::tempdir().unwrap();
    write_east(dir.path());
    let stranger = create_root("another federation").unwrap();
    replace(dir.path(), ROOT_CERT_FILE, stranger.cert_pem());
    let err = ClusterCa::load(dir.path()).unwrap_err();
    assert!(matches!(err, LoadError::Untrusted { .. }), "{err:?}");
    let msg = err.to_string();
    assert!(msg.contains("ca-cert.pem is not trusted by"), "{msg}");
    assert!(msg.contains("root-cert.pem"), "{msg}");
    assert!(msg.contains("does not chain to a root"), "{msg}");
}

#[test]
fn rejects_an_intermediate_without_trust_domain() {
    let fed = federation();
    // An intermediate made outside Isthmus: a CA, chained to the root, but no SPIFFE URI.
    let issuer = rcgen::Issuer::from_ca_cert_pem(
        fed.root.cert_pem(),
        KeyPair::from_pem(fed.root.key_pem()).unwrap(),
    )
    .unwrap();
    let key = KeyPair::generate().unwrap();
    let mut params = CertificateParams::default();
    params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Constrained(0));
    let cert = params.signed_by(&key, &issuer).unwrap().pem();
    let err = ClusterCa::from_pems(CacertsPems {
        ca_cert: &cert,
        ca_key: &key.serialize_pem(),
        root_cert: fed.root.cert_pem(),
        cert_chain: &cert,
    })
    .unwrap_err();
    assert!(
        err.to_string()
            .starts_with("ca-cert.pem: it carries no trust domain"),
        "{err}"
    );
}

#[test]
fn rejects_bad_file_contents() {
    let fed = federation();
    let pems = CacertsPems {
        ca_cert: fed.east.cert_pem(),
        ca_key: fed.east.key_pem(),
        root_cert: fed.root.cert_pem(),
        cert_chain: fed.east.chain_pem(),
    };
    let err = |pems| ClusterCa::from_pems(pems).unwrap_err().to_string();
    assert_eq!(
        err(CacertsPems {
            ca_cert: "",
            ..pems
        }),
        "ca-cert.pem: no PEM \"CERTIFICATE\" block found"
    );
    assert!(
        err(CacertsPems {
            ca_key: "junk",
            ..pems
        })
        .starts_with("ca-key.pem: no PEM")
    );
    assert!(
        err(CacertsPems {
            ca_cert: fed.east.chain_pem(),
            ..pems
        })
        .starts_with("ca-cert.pem: holds 2 certificates")
    );
    assert!(
        err(CacertsPems {
            cert_chain: fed.west.chain_pem(),
            ..pems
        })
        .starts_with("cert-chain.pem: must start with the certificate of ca-cert.pem")
    );
    // The intermediate itself as the "root": leaves would have no intermediate above them.
    let msg = err(CacertsPems {
        root_cert: fed.east.cert_pem(),
        ..pems
    });
    assert!(
        msg.starts_with("ca-cert.pem is not trusted by root-cert.pem: "),
        "{msg}"
    );
    assert!(msg.contains("issued directly by a root"), "{msg}");
    // A leaf is no root.
    let leaf = forge_leaf(
        &fed.east,
        &["spiffe://east.isthmus.local/ns/a/sa/b"],
        valid_now(),
    );
    let msg = err(CacertsPems {
        root_cert: &leaf.leaf_pem,
        ..pems
    });
    assert!(
        msg.starts_with("root-cert.pem: trust bundle: root #0"),
        "{msg}"
    );
    assert!(msg.contains("basicConstraints cA is not set"), "{msg}");
}

#[test]
fn several_roots_during_rotation() {
    let fed = federation();
    let new_root = create_root("Isthmus test root 2").unwrap();
    let both = format!("{}{}", fed.root.cert_pem(), new_root.cert_pem());
    let bundle = TrustBundle::from_pem(&both).unwrap();
    assert_eq!(bundle.len(), 2);
    let new_east = create_intermediate(&new_root, "east", EAST_TD).unwrap();
    for intermediate in [&fed.east, &new_east] {
        let ca = intermediate.cluster_ca(&bundle).unwrap();
        assert_eq!(ca.trust_bundle().len(), 2);
        assert_eq!(ca.trust_bundle_pem(), both);
    }
}

#[test]
fn development_ca_works_on_its_own() {
    let ca = ClusterCa::self_signed_dev("dev.local").unwrap();
    assert_eq!(ca.trust_domain(), "dev.local");
    let issued = ca
        .issue_key_and_cert(&id("dev.local", "default", "app"), None)
        .unwrap();
    isthmus_identity::verify_workload_chain(
        &issued.cert.chain_der,
        ca.trust_bundle(),
        isthmus_identity::UnixTime::now(),
    )
    .unwrap();
    assert!(ClusterCa::self_signed_dev("Bad Domain").is_err());
}
