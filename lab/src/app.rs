//! The demo application (`isthmus lab app`): answers every request with
//! who it is and who called, as JSON, like Istio's helloworld sample.
//!
//! ```json
//! {"service":"helloworld","version":"v1","cluster":"east","path":"/hello",
//!  "caller":"spiffe://west.isthmus.local/ns/sample/sa/sleep"}
//! ```
//!
//! `caller` comes from `x-forwarded-client-cert`, which the destination
//! sidecar sets from the verified client certificate.

use std::convert::Infallible;
use std::net::SocketAddr;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpListener;

/// Who the app is.
#[derive(Clone, Debug)]
pub struct AppIdentity {
    pub service: String,
    pub version: String,
    pub cluster: String,
}

/// Serves until the process ends.
pub async fn serve(listen: SocketAddr, id: AppIdentity) -> anyhow::Result<()> {
    let listener = TcpListener::bind(listen)
        .await
        .map_err(|e| anyhow::anyhow!("binding the demo app on {listen}: {e}"))?;
    tracing::info!(%listen, service = %id.service, version = %id.version, "demo app listening");
    loop {
        let (stream, _) = match listener.accept().await {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(error = %e, "accept failed");
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                continue;
            }
        };
        let id = id.clone();
        tokio::spawn(async move {
            let svc = hyper::service::service_fn(move |req: Request<Incoming>| {
                let id = id.clone();
                async move { Ok::<_, Infallible>(answer(&id, &req)) }
            });
            let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                .serve_connection(TokioIo::new(stream), svc)
                .await;
        });
    }
}

fn answer(id: &AppIdentity, req: &Request<Incoming>) -> Response<Full<Bytes>> {
    let caller = req
        .headers()
        .get("x-forwarded-client-cert")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').find_map(|kv| kv.strip_prefix("URI=")))
        .map(str::to_string);
    let body = serde_json::json!({
        "service": id.service,
        "version": id.version,
        "cluster": id.cluster,
        "path": req.uri().path(),
        "caller": caller,
    });
    let mut resp = Response::new(Full::new(Bytes::from(format!("{body}\n"))));
    *resp.status_mut() = StatusCode::OK;
    resp.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/json"),
    );
    resp
}
