//! `--role server`: the control plane under test, in its own process so its
//! RSS and CPU are its own. Generates the mesh into an `isthmus_config`
//! store, starts the controller (store → push contexts) and the ADS server
//! on 127.0.0.1:0, prints one `ready` JSON line on stdout, then applies the
//! driver's commands from stdin: `change <k>` (moves one endpoint; answers
//! once the new push context is published, or at once with `"lost": true`
//! when the store did not make a new version) and `quit`.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use anyhow::Context;
use isthmus_config::Store;
use isthmus_control_plane::xds::generate::{MeshConfig, PushContext};
use isthmus_control_plane::xds::server::{AdsOptions, AdsServer};
use isthmus_control_plane::xds::{CLUSTER, ConfigState, ENDPOINT, LISTENER, ROUTE};
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::net::TcpSocket;
use tokio_util::sync::CancellationToken;

use crate::mesh;

/// The store origin every generated object belongs to.
const ORIGIN: &str = "bench";

/// What the server is told by the driver.
#[derive(Clone, Copy, Debug)]
pub struct Settings {
    pub services: usize,
    /// Load a Sidecar resource per namespace ([`mesh::sidecar_resources`]).
    pub scoped: bool,
    pub debounce: Duration,
    pub max_debounce: Duration,
    pub endpoint_debounce: Duration,
    pub push_throttle: usize,
    /// Accept queue of the xDS listener.
    pub listen_backlog: u32,
}

/// Runs the control plane until `quit` or the end of stdin.
pub async fn run(settings: Settings) -> anyhow::Result<()> {
    let started = Instant::now();
    let mut resources = mesh::services(settings.services);
    if settings.scoped {
        resources.extend(mesh::sidecar_resources(settings.services));
    }
    let generate_ms = ms(started.elapsed());
    let store = Store::new();
    let started = Instant::now();
    store.replace_origin(ORIGIN, resources);
    let load_ms = ms(started.elapsed());

    let shutdown = CancellationToken::new();
    let started = Instant::now();
    // Builds the first push context before it returns.
    let published =
        isthmus_control_plane::controller::spawn(&store, MeshConfig::default(), shutdown.clone());
    let build_ms = ms(started.elapsed());
    let initial = published.push.borrow().clone();
    let per_proxy = generation_costs(&initial, settings.services);
    let mut push = published.push.clone();
    let ads = AdsServer::new(
        published.state.clone(),
        AdsOptions {
            debounce: settings.debounce,
            max_debounce: settings.max_debounce,
            endpoint_debounce: settings.endpoint_debounce,
            push_throttle: settings.push_throttle,
            ..AdsOptions::default()
        },
    );
    // `TcpListener::bind` (as run.rs uses) listens with a backlog of 128.
    let socket = TcpSocket::new_v4()?;
    socket.bind("127.0.0.1:0".parse()?)?;
    let listener = socket.listen(settings.listen_backlog)?;
    let addr = listener.local_addr()?;
    let serving = tokio::spawn({
        let ads = ads.clone();
        let shutdown = shutdown.clone();
        async move { ads.serve(listener, shutdown).await }
    });
    println!(
        "{}",
        json!({
            "event": "ready",
            "addr": addr.to_string(),
            "generate_ms": round(generate_ms),
            "load_ms": round(load_ms),
            "build_ms": round(build_ms),
            "services": initial.registry.len(),
            "generate_per_proxy_ms": per_proxy,
        })
    );

    let mut lines = BufReader::new(tokio::io::stdin()).lines();
    while let Some(line) = lines.next_line().await? {
        let mut words = line.split_whitespace();
        match (words.next(), words.next()) {
            (Some("change"), Some(k)) => {
                let k: usize = k.parse().context("change number")?;
                let started = Instant::now();
                let (service, endpoint) = mesh::change(k, settings.services);
                let moved = mesh::service_entry(service, Some((k, endpoint)));
                let previous = store.snapshot().version();
                store.update(|t| t.upsert(ORIGIN, moved));
                let version = store.snapshot().version();
                if version == previous {
                    // The store kept its version although the object changed:
                    // the update is lost (see docs/benchmarks/control-plane.md).
                    println!(
                        "{}",
                        json!({"event": "changed", "lost": true, "service": service, "version": version})
                    );
                    continue;
                }
                // The controller rebuilds the push context; wait until it is out.
                tokio::time::timeout(
                    Duration::from_secs(60),
                    push.wait_for(|pc| pc.version >= version),
                )
                .await
                .context("push context not rebuilt within 60 s")??;
                println!(
                    "{}",
                    json!({
                        "event": "changed",
                        "version": version,
                        "service": service,
                        "rebuild_ms": round(ms(started.elapsed())),
                    })
                );
            }
            (Some("quit"), _) => break,
            _ => anyhow::bail!("unknown command {line:?}"),
        }
    }
    shutdown.cancel();
    let _ = tokio::time::timeout(Duration::from_secs(5), serving).await;
    Ok(())
}

/// Time to generate each type for one sidecar (best of three): what every
/// push costs per proxy, since a push regenerates every subscribed type.
fn generation_costs(pc: &PushContext, services: usize) -> Value {
    let proxy = mesh::sidecar(0, services);
    let mut out = serde_json::Map::new();
    let mut names = BTreeSet::new();
    let mut total = 0.0;
    for (type_url, label) in [
        (CLUSTER, "CDS"),
        (ENDPOINT, "EDS"),
        (LISTENER, "LDS"),
        (ROUTE, "RDS"),
    ] {
        if type_url == ROUTE {
            names = mesh::HTTP_PORTS.iter().map(u16::to_string).collect();
        }
        let mut best = f64::MAX;
        for _ in 0..3 {
            let started = Instant::now();
            let resources = pc
                .generate_shared(&proxy, type_url, &names)
                .unwrap_or_default();
            best = best.min(ms(started.elapsed()));
            if type_url == CLUSTER {
                // EDS is asked for every outbound cluster.
                names = resources
                    .iter()
                    .filter(|r| r.name.starts_with("outbound|"))
                    .map(|r| r.name.clone())
                    .collect();
            }
        }
        total += best;
        out.insert(label.into(), json!(round(best)));
    }
    out.insert("total".into(), json!(round(total)));
    Value::Object(out)
}

fn round(ms: f64) -> f64 {
    (ms * 10.0).round() / 10.0
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}
