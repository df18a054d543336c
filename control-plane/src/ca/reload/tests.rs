use std::sync::Arc;

use isthmus_identity::tool::{RootCa, create_intermediate, create_root, write_cacerts};
use prometheus_client::encoding::text::encode;

use super::{CaMetrics, CaReloader, CaSource, CurrentCa};

fn cacerts(dir: &std::path::Path, root: &RootCa, roots: &[&RootCa], td: &str) {
    let inter = create_intermediate(root, "east", td).unwrap();
    let mut bundle = roots[0].trust_bundle().unwrap();
    for r in &roots[1..] {
        bundle = bundle.merged(&r.trust_bundle().unwrap());
    }
    let _ = std::fs::remove_dir_all(dir);
    write_cacerts(dir, &inter, &bundle).unwrap();
}

fn metrics_text(registry: &prometheus_client::registry::Registry) -> String {
    let mut out = String::new();
    encode(&mut out, registry).unwrap();
    out
}

#[tokio::test]
async fn changed_cacerts_replace_the_ca_only_when_good() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("cacerts");
    let (old, next) = (create_root("old").unwrap(), create_root("next").unwrap());
    cacerts(&dir, &old, &[&old], "east.isthmus.local");
    let mut registry = prometheus_client::registry::Registry::default();
    let metrics = CaMetrics::register(&mut registry);
    let (mut reloader, ca) = CaReloader::load(CaSource::Dir(dir.clone()), None, "unused", metrics)
        .await
        .unwrap();
    let current = CurrentCa::new(ca.clone());
    assert!(!reloader.check(&current).await, "nothing changed");

    // A file mid-rewrite: the key no longer matches. The CA stays.
    std::fs::write(dir.join("ca-key.pem"), "-----BEGIN PRIVATE KEY-----\n").unwrap();
    assert!(!reloader.check(&current).await);
    assert!(Arc::ptr_eq(&current.get(), &ca));
    assert!(
        !reloader.check(&current).await,
        "the same bad content is tried once"
    );

    // Both roots, then an intermediate under the next one.
    cacerts(&dir, &old, &[&old, &next], "east.isthmus.local");
    assert!(reloader.check(&current).await);
    assert_eq!(reloader.roots(&current.get()).len(), 2);
    cacerts(&dir, &next, &[&old, &next], "east.isthmus.local");
    assert!(reloader.check(&current).await);
    let issuer = current.get().chain_der()[0].clone();
    assert_ne!(issuer, ca.chain_der()[0]);

    // Another trust domain is refused.
    cacerts(&dir, &next, &[&next], "west.isthmus.local");
    assert!(!reloader.check(&current).await);
    assert_eq!(current.get().chain_der()[0], issuer);
    let text = metrics_text(&registry);
    assert!(
        text.contains("ca_reloads_total{source=\"cacerts\"} 2"),
        "{text}"
    );
    assert!(
        text.contains("ca_reload_errors_total{source=\"cacerts\"} 2"),
        "{text}"
    );
}

#[tokio::test]
async fn extra_roots_are_merged_and_reloaded() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("cacerts");
    let extra = tmp.path().join("peers.pem");
    let (ours, peer) = (create_root("ours").unwrap(), create_root("peer").unwrap());
    cacerts(&dir, &ours, &[&ours], "east.isthmus.local");
    // Missing at start: no extra roots.
    let (mut reloader, ca) = CaReloader::load(
        CaSource::Dir(dir.clone()),
        Some(extra.clone()),
        "unused",
        CaMetrics::default(),
    )
    .await
    .unwrap();
    let current = CurrentCa::new(ca.clone());
    assert_eq!(reloader.roots(&ca).len(), 1);
    std::fs::write(&extra, peer.cert_pem()).unwrap();
    assert!(reloader.check(&current).await);
    assert_eq!(reloader.roots(&ca).len(), 2);
    // Garbage keeps the last good roots; the file going away drops them.
    std::fs::write(&extra, "not PEM").unwrap();
    assert!(!reloader.check(&current).await);
    assert_eq!(reloader.roots(&ca).len(), 2);
    std::fs::remove_file(&extra).unwrap();
    assert!(reloader.check(&current).await);
    assert_eq!(reloader.roots(&ca).len(), 1);

    // A bad file at start is an error naming it.
    std::fs::write(&extra, "not PEM").unwrap();
    let err = CaReloader::load(
        CaSource::Dir(dir),
        Some(extra.clone()),
        "unused",
        CaMetrics::default(),
    )
    .await
    .unwrap_err()
    .to_string();
    assert!(err.contains(&extra.display().to_string()), "{err}");
}

/// A `cacerts` Secret as the API server stores it.
fn secret(inter: &isthmus_identity::tool::Intermediate, roots_pem: &str) -> serde_json::Value {
    use base64::Engine;
    let b64 = |s: &str| base64::engine::general_purpose::STANDARD.encode(s);
    serde_json::json!({
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {"name": "cacerts", "namespace": "isthmus-system"},
        "data": {
            "ca-cert.pem": b64(inter.cert_pem()),
            "ca-key.pem": b64(inter.key_pem()),
            "root-cert.pem": b64(roots_pem),
            "cert-chain.pem": b64(inter.chain_pem()),
        },
    })
}

#[tokio::test]
async fn a_changed_secret_replaces_the_ca() {
    use isthmus_test_support::apiserver::FakeApiServer;
    let (old, next) = (create_root("old").unwrap(), create_root("next").unwrap());
    let first = create_intermediate(&old, "east", "east.isthmus.local").unwrap();
    let server = FakeApiServer::start().await;
    server.register("v1", "Secret", "secrets", true);
    server.apply(secret(&first, old.cert_pem()));
    let source = CaSource::Secret {
        client: server.client(),
        secret: "isthmus-system/cacerts".into(),
    };
    let (mut reloader, ca) = CaReloader::load(source, None, "unused", CaMetrics::default())
        .await
        .unwrap();
    let current = CurrentCa::new(ca.clone());
    assert!(!reloader.check(&current).await);

    // Both roots, then a broken key (kept out), then the next intermediate.
    let both = format!("{}{}", old.cert_pem(), next.cert_pem());
    server.apply(secret(&first, &both));
    assert!(reloader.check(&current).await);
    assert_eq!(reloader.roots(&current.get()).len(), 2);
    let second = create_intermediate(&next, "east", "east.isthmus.local").unwrap();
    let mut broken = secret(&second, &both);
    broken["data"]["ca-key.pem"] = secret(&first, &both)["data"]["ca-key.pem"].clone();
    server.apply(broken);
    assert!(!reloader.check(&current).await);
    assert_eq!(current.get().chain_der()[0], first_der(&first));
    server.apply(secret(&second, &both));
    assert!(reloader.check(&current).await);
    assert_eq!(current.get().chain_der()[0], first_der(&second));
}

fn first_der(
    inter: &isthmus_identity::tool::Intermediate,
) -> isthmus_identity::CertificateDer<'static> {
    isthmus_identity::certs_from_pem(inter.cert_pem())
        .unwrap()
        .remove(0)
}
