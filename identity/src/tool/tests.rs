use super::*;

#[test]
fn root_is_a_self_signed_ca() {
    let root = create_root("Isthmus test root").unwrap();
    let der = pem::parse_certs(root.cert_pem()).unwrap();
    let parsed = cert::parse(&der[0]).unwrap();
    assert!(cert::check_is_ca(&parsed).is_ok());
    assert_eq!(parsed.subject(), parsed.issuer());
    assert!(
        parsed
            .subject()
            .to_string()
            .contains("CN=Isthmus test root")
    );
    let (not_before, not_after) = cert::validity(&parsed);
    let lifetime = not_after.duration_since(not_before).unwrap();
    assert!(lifetime >= ROOT_VALIDITY);
    assert!(format!("{root:?}").contains("[secret]"));
    assert!(!format!("{root:?}").contains("PRIVATE KEY"));
}

#[test]
fn intermediate_carries_trust_domain_and_path_len_zero() {
    let root = create_root("root").unwrap();
    let east = create_intermediate(&root, "east", "east.isthmus.local").unwrap();
    assert_eq!(east.trust_domain(), "east.isthmus.local");
    assert_eq!(east.cluster_name(), "east");
    let der = pem::parse_certs(east.cert_pem()).unwrap();
    let parsed = cert::parse(&der[0]).unwrap();
    assert_eq!(
        cert::ca_trust_domain_of(&parsed).unwrap(),
        "east.isthmus.local"
    );
    let bc = parsed.basic_constraints().unwrap().unwrap().value;
    assert!(bc.ca);
    assert_eq!(bc.path_len_constraint, Some(0));
    assert!(east.chain_pem().starts_with(east.cert_pem()));
    assert!(east.chain_pem().ends_with(root.cert_pem()));
}

#[test]
fn rejects_bad_names() {
    let root = create_root("root").unwrap();
    let err = create_intermediate(&root, "East_1", "east.isthmus.local").unwrap_err();
    assert!(err.to_string().starts_with("cluster name: "), "{err}");
    let err = create_intermediate(&root, "east", "East.Local").unwrap_err();
    assert!(err.to_string().contains("trust domain"), "{err}");
}

#[test]
fn writes_cacerts_with_a_private_key_file() {
    let dir = tempfile::tempdir().unwrap();
    let cacerts = dir.path().join("east/cacerts");
    let root = create_root("root").unwrap();
    let east = create_intermediate(&root, "east", "east.isthmus.local").unwrap();
    write_cacerts(&cacerts, &east, &root.trust_bundle().unwrap()).unwrap();

    for name in [CA_CERT_FILE, CA_KEY_FILE, ROOT_CERT_FILE, CERT_CHAIN_FILE] {
        assert!(cacerts.join(name).is_file(), "{name}");
    }
    assert!(!cacerts.join("ca-key.pem.tmp").exists());
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = |name: &str| {
            std::fs::metadata(cacerts.join(name))
                .unwrap()
                .permissions()
                .mode()
                & 0o777
        };
        assert_eq!(mode(CA_KEY_FILE), 0o600);
        assert_eq!(mode(CA_CERT_FILE), 0o644);
    }
    assert_eq!(
        std::fs::read_to_string(cacerts.join(CA_KEY_FILE)).unwrap(),
        east.key_pem()
    );
    // Overwriting keeps the mode and replaces the content.
    let again = create_intermediate(&root, "east", "east.isthmus.local").unwrap();
    write_cacerts(&cacerts, &again, &root.trust_bundle().unwrap()).unwrap();
    assert_eq!(
        std::fs::read_to_string(cacerts.join(CA_KEY_FILE)).unwrap(),
        again.key_pem()
    );
}

#[test]
fn root_round_trips_through_a_directory() {
    let dir = tempfile::tempdir().unwrap();
    let root = create_root("root").unwrap();
    root.write(dir.path()).unwrap();
    let loaded = RootCa::load(dir.path()).unwrap();
    assert_eq!(loaded.cert_pem(), root.cert_pem());
    // The loaded root can still sign intermediates.
    create_intermediate(&loaded, "west", "west.isthmus.local").unwrap();

    let other = create_root("other").unwrap();
    let err = RootCa::from_pem(root.cert_pem(), other.key_pem()).unwrap_err();
    assert_eq!(
        err.to_string(),
        "root-key.pem: does not match root-cert.pem"
    );
    let err = RootCa::load(dir.path().join("missing")).unwrap_err();
    assert!(err.to_string().contains("root-cert.pem"), "{err}");
}
