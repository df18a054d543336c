//! The cluster CA loaded from a Kubernetes Secret in Istio's cacerts layout,
//! through kube-rs against the fake API server.

use isthmus_control_plane::run::load_ca_secret;
use isthmus_identity::tool::{create_intermediate, create_root};
use isthmus_test_support::apiserver::FakeApiServer;
use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use serde_json::json;

/// A Secret with these PEM entries, as the API server stores it (base64 data).
fn secret(name: &str, entries: &[(&str, &str)]) -> serde_json::Value {
    let secret = Secret {
        metadata: ObjectMeta {
            name: Some(name.into()),
            namespace: Some("isthmus-system".into()),
            ..ObjectMeta::default()
        },
        data: Some(
            entries
                .iter()
                .map(|(k, v)| (k.to_string(), ByteString(v.as_bytes().to_vec())))
                .collect(),
        ),
        ..Secret::default()
    };
    let mut v = serde_json::to_value(secret).unwrap();
    v["apiVersion"] = json!("v1");
    v["kind"] = json!("Secret");
    v
}

#[tokio::test]
async fn ca_loads_from_a_secret_and_errors_name_the_key() {
    let root = create_root("Isthmus test root").unwrap();
    let east = create_intermediate(&root, "east", "east.isthmus.local").unwrap();
    let server = FakeApiServer::start().await;
    server.register("v1", "Secret", "secrets", true);
    server.apply(secret(
        "cacerts",
        &[
            ("ca-cert.pem", east.cert_pem()),
            ("ca-key.pem", east.key_pem()),
            ("root-cert.pem", root.cert_pem()),
            ("cert-chain.pem", east.chain_pem()),
        ],
    ));
    let ca = load_ca_secret(server.client(), "isthmus-system/cacerts")
        .await
        .unwrap();
    assert_eq!(ca.trust_domain(), "east.isthmus.local");

    server.apply(secret("partial", &[("ca-cert.pem", east.cert_pem())]));
    let err = load_ca_secret(server.client(), "isthmus-system/partial")
        .await
        .err()
        .unwrap()
        .to_string();
    assert!(
        err.contains("isthmus-system/partial") && err.contains("ca-key.pem"),
        "{err}"
    );
    let err = load_ca_secret(server.client(), "nonamespace")
        .await
        .err()
        .unwrap()
        .to_string();
    assert!(err.contains("<namespace>/<name>"), "{err}");
}
