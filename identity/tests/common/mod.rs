//! Shared fixtures: one root, two clusters (east, west) with their own intermediates.
#![allow(dead_code)]

use std::time::{Duration, SystemTime};

use isthmus_identity::tool::{Intermediate, RootCa, create_intermediate, create_root};
use isthmus_identity::{CertificateDer, ClusterCa, SpiffeId, TrustBundle};
use rcgen::{
    CertificateParams, DistinguishedName, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, SanType,
};

pub const EAST_TD: &str = "east.isthmus.local";
pub const WEST_TD: &str = "west.isthmus.local";

pub struct Federation {
    pub root: RootCa,
    pub bundle: TrustBundle,
    pub east: Intermediate,
    pub west: Intermediate,
    pub east_ca: ClusterCa,
    pub west_ca: ClusterCa,
}

pub fn federation() -> Federation {
    federation_named("Isthmus test root")
}

/// A federation whose root has the common name `root_name`.
pub fn federation_named(root_name: &str) -> Federation {
    let root = create_root(root_name).unwrap();
    let bundle = root.trust_bundle().unwrap();
    let east = create_intermediate(&root, "east", EAST_TD).unwrap();
    let west = create_intermediate(&root, "west", WEST_TD).unwrap();
    Federation {
        east_ca: east.cluster_ca(&bundle).unwrap(),
        west_ca: west.cluster_ca(&bundle).unwrap(),
        root,
        bundle,
        east,
        west,
    }
}

pub fn id(td: &str, ns: &str, sa: &str) -> SpiffeId {
    SpiffeId::new(td, ns, sa).unwrap()
}

pub fn der(pem: &str) -> CertificateDer<'static> {
    use rustls_pki_types::pem::PemObject;
    CertificateDer::from_pem_slice(pem.as_bytes()).unwrap()
}

/// A leaf built directly with rcgen and signed with `signer`'s key — what a compromised
/// cluster (or a buggy CA) could mint.
pub fn forge_leaf(
    signer: &Intermediate,
    uris: &[&str],
    validity: (SystemTime, SystemTime),
) -> Forged {
    let issuer = Issuer::from_ca_cert_pem(
        signer.cert_pem(),
        KeyPair::from_pem(signer.key_pem()).unwrap(),
    )
    .unwrap();
    let key = KeyPair::generate().unwrap();
    let mut params = CertificateParams::default();
    params.distinguished_name = DistinguishedName::new();
    params.subject_alt_names = uris
        .iter()
        .map(|uri| SanType::URI((*uri).try_into().unwrap()))
        .collect();
    params.is_ca = IsCa::ExplicitNoCa;
    params.extended_key_usages = vec![
        ExtendedKeyUsagePurpose::ServerAuth,
        ExtendedKeyUsagePurpose::ClientAuth,
    ];
    params.not_before = validity.0.into();
    params.not_after = validity.1.into();
    params.use_authority_key_identifier_extension = true;
    let leaf = params.signed_by(&key, &issuer).unwrap();
    Forged {
        chain: vec![leaf.der().clone(), der(signer.cert_pem())],
        leaf_pem: leaf.pem(),
        key,
    }
}

/// A leaf made by [`forge_leaf`].
pub struct Forged {
    /// `[leaf, signer]`.
    pub chain: Vec<CertificateDer<'static>>,
    /// The leaf alone, PEM.
    pub leaf_pem: String,
    /// The leaf's key.
    pub key: KeyPair,
}

/// Valid from an hour ago for a day.
pub fn valid_now() -> (SystemTime, SystemTime) {
    let now = SystemTime::now();
    (
        now - Duration::from_secs(3600),
        now + Duration::from_secs(86400),
    )
}
