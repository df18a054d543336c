//! Worker threads (`--concurrency`): each owns the downstream connections
//! it is given and keeps its own upstream connections, reused from one
//! request to the next; without workers everything runs on the caller's
//! runtime and shares one pool.

mod support;

use std::net::SocketAddr;
use std::sync::atomic::Ordering;

use http::StatusCode;
use support::*;

/// A plain HTTP service outside the mesh, answered by `app`.
fn external(app: SocketAddr) -> String {
    format!(
        r#"
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{name: plain, namespace: sample}}
spec:
  hosts: [plain.example.com]
  location: MESH_EXTERNAL
  resolution: STATIC
  ports: [{{number: 8080, name: http}}]
  endpoints: [{{address: {}}}]
"#,
        app.ip()
    )
}

/// Sends `per_client` requests, one after another, from each of `clients`
/// downstream connections in turn; every answer must be 200.
async fn sequential(via: SocketAddr, clients: usize, per_client: usize) {
    let clients: Vec<Client> = (0..clients).map(|_| client()).collect();
    for i in 0..per_client {
        for (k, c) in clients.iter().enumerate() {
            let r = get(c, via, "plain.example.com:8080", &format!("/{k}/{i}")).await;
            assert_eq!(r.status, StatusCode::OK, "{r:?}");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_worker_reuses_its_own_upstream_connection() {
    let net = 97;
    let app = App::start(SocketAddr::new(ip(net, 131), 8080), "plain", Behavior::Echo).await;
    let yaml = format!("{}\n---\n{}", services(net), external(app.addr));
    let mesh = Mesh::start(net, &yaml).await;

    // Two workers, four downstream connections (two each), 20 requests
    // one after another: one upstream connection per worker, each reused.
    let mut spec = Spec::new("sleep", "sleep", 21, &[("app", "sleep")]);
    spec.workers = 2;
    let sleep = mesh.sidecar_with(spec).await;
    sequential(sleep.outbound(), 4, 5).await;
    assert_eq!(
        app.hits.load(Ordering::Relaxed),
        2,
        "upstream connections: one per worker"
    );
    drop(sleep);

    // No workers: the connections run on this runtime and share one pool.
    app.hits.store(0, Ordering::Relaxed);
    let mut spec = Spec::new("sleep", "sleep", 22, &[("app", "sleep")]);
    spec.workers = 0;
    let sleep = mesh.sidecar_with(spec).await;
    sequential(sleep.outbound(), 4, 5).await;
    assert_eq!(
        app.hits.load(Ordering::Relaxed),
        1,
        "one shared upstream connection"
    );
}
