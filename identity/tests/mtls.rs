//! Real rustls mTLS handshakes over loopback TCP between workloads of different clusters.

mod common;

use std::sync::Arc;

use common::*;
use isthmus_identity::tls::{WorkloadCert, client_config, server_config};
use isthmus_identity::{SpiffeId, peer_identity};
use rustls::pki_types::ServerName;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::{TlsAcceptor, TlsConnector};

/// Serves one connection: completes the handshake, reports the client's SPIFFE ID, echoes.
async fn serve_once(
    listener: TcpListener,
    config: rustls::ServerConfig,
) -> Result<SpiffeId, String> {
    let (tcp, _) = listener.accept().await.map_err(|e| e.to_string())?;
    let mut tls = TlsAcceptor::from(Arc::new(config))
        .accept(tcp)
        .await
        .map_err(|e| e.to_string())?;
    let client = {
        let (_, conn) = tls.get_ref();
        let certs = conn.peer_certificates().ok_or("no client certificate")?;
        peer_identity(&certs[0]).map_err(|e| e.to_string())?
    };
    let mut buf = [0u8; 4];
    tls.read_exact(&mut buf).await.map_err(|e| e.to_string())?;
    tls.write_all(&buf).await.map_err(|e| e.to_string())?;
    tls.shutdown().await.map_err(|e| e.to_string())?;
    Ok(client)
}

async fn connect(
    addr: std::net::SocketAddr,
    config: rustls::ClientConfig,
) -> Result<Vec<u8>, String> {
    let tcp = TcpStream::connect(addr).await.map_err(|e| e.to_string())?;
    // The SNI is a routing key, not an identity.
    let sni = ServerName::try_from("outbound_.9080_.v1_.reviews.sample.svc.cluster.local")
        .map_err(|e| e.to_string())?;
    let mut tls = TlsConnector::from(Arc::new(config))
        .connect(sni, tcp)
        .await
        .map_err(|e| e.to_string())?;
    tls.write_all(b"ping").await.map_err(|e| e.to_string())?;
    let mut buf = Vec::new();
    tls.read_to_end(&mut buf).await.map_err(|e| e.to_string())?;
    Ok(buf)
}

struct Pair {
    fed: Federation,
    sleep: WorkloadCert,
    reviews: WorkloadCert,
}

fn pair() -> Pair {
    let fed = federation();
    let sleep = fed
        .east_ca
        .issue_key_and_cert(&id(EAST_TD, "sample", "sleep"), None)
        .unwrap();
    let reviews = fed
        .west_ca
        .issue_key_and_cert(&id(WEST_TD, "sample", "reviews"), None)
        .unwrap();
    Pair {
        sleep: WorkloadCert::from(&sleep),
        reviews: WorkloadCert::from_pem(&reviews.cert.chain_pem, &reviews.key_pem).unwrap(),
        fed,
    }
}

async fn handshake(
    server: rustls::ServerConfig,
    client: rustls::ClientConfig,
) -> (Result<SpiffeId, String>, Result<Vec<u8>, String>) {
    let listener = TcpListener::bind(("127.0.0.1", 0)).await.unwrap();
    let addr = listener.local_addr().unwrap();
    let server = tokio::spawn(serve_once(listener, server));
    let client = connect(addr, client).await;
    (server.await.unwrap(), client)
}

#[tokio::test]
async fn cross_cluster_mtls_carries_the_callers_identity() {
    let p = pair();
    let server = server_config(&p.reviews, &p.fed.bundle).unwrap();
    let client =
        client_config(&p.sleep, &p.fed.bundle, [id(WEST_TD, "sample", "reviews")]).unwrap();
    let (seen, echoed) = handshake(server, client).await;
    assert_eq!(seen, Ok(id(EAST_TD, "sample", "sleep")));
    assert_eq!(echoed.as_deref(), Ok(&b"ping"[..]));
}

#[tokio::test]
async fn client_refuses_an_unexpected_server_identity() {
    let p = pair();
    let server = server_config(&p.reviews, &p.fed.bundle).unwrap();
    let client =
        client_config(&p.sleep, &p.fed.bundle, [id(WEST_TD, "sample", "ratings")]).unwrap();
    let (seen, echoed) = handshake(server, client).await;
    let err = echoed.unwrap_err();
    assert!(err.contains("UnexpectedIdentity"), "{err}");
    assert!(seen.is_err());
}

#[tokio::test]
async fn server_refuses_a_forged_client_identity() {
    let p = pair();
    // A compromised east mints a west identity and presents it to west's server.
    let forged = forge_leaf(
        &p.fed.east,
        &["spiffe://west.isthmus.local/ns/sample/sa/admin"],
        valid_now(),
    );
    let forged_cert = WorkloadCert::new(
        forged.chain.clone(),
        rustls::pki_types::PrivateKeyDer::Pkcs8(forged.key.serialize_der().into()),
    )
    .unwrap();
    let server = server_config(&p.reviews, &p.fed.bundle).unwrap();
    let client = client_config(
        &forged_cert,
        &p.fed.bundle,
        [id(WEST_TD, "sample", "reviews")],
    )
    .unwrap();
    let (seen, _) = handshake(server, client).await;
    let err = seen.unwrap_err();
    assert!(err.contains("TrustDomainMismatch"), "{err}");
}

#[tokio::test]
async fn peers_under_another_root_are_refused_both_ways() {
    let p = pair();
    let other = federation_named("Someone else's root");
    let stranger = WorkloadCert::from(
        &other
            .east_ca
            .issue_key_and_cert(&id(EAST_TD, "sample", "sleep"), None)
            .unwrap(),
    );
    // Unknown client (it trusts the server, the server does not trust it).
    let server = server_config(&p.reviews, &p.fed.bundle).unwrap();
    let both = p.fed.bundle.merged(&other.bundle);
    let client = client_config(&stranger, &both, [id(WEST_TD, "sample", "reviews")]).unwrap();
    let (seen, _) = handshake(server, client).await;
    let err = seen.unwrap_err();
    assert!(err.contains("UnknownIssuer"), "{err}");
    // Unknown server.
    let server = server_config(&stranger, &both).unwrap();
    let client =
        client_config(&p.reviews, &p.fed.bundle, [id(EAST_TD, "sample", "sleep")]).unwrap();
    let (_, echoed) = handshake(server, client).await;
    let err = echoed.unwrap_err();
    assert!(err.contains("UnknownIssuer"), "{err}");
}
