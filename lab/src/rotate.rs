//! `isthmus lab rotate-root`: replaces the shared root CA of a running lab
//! without dropping a request, following the procedure in
//! `docs/federation.md`:
//!
//! No component restarts: control planes reload their `cacerts` directory
//! when it changes (the lab polls it every second).
//!
//! 1. Create the next root. Every cluster trusts both roots (its cacerts
//!    `root-cert.pem` becomes the bundle; the control plane reloads it and
//!    pushes it as `ROOTCA`, sidecars merge it with what the CA gave them).
//!    Wait until every sidecar's admin `/certs` shows two roots.
//! 2. Cluster by cluster: a new intermediate under the next root swapped
//!    in; wait until the control plane reloaded it (its
//!    `isthmus_control_plane_ca_reloads_total` grows), then ask each sidecar
//!    for a new leaf (`POST /renew` on its admin server; open connections
//!    keep the old one) and check that `/certs` shows the new intermediate
//!    as the issuer. Old and new leaves verify everywhere because every
//!    cluster trusts both roots.
//! 3. The next root becomes the lab's root (`root/`; the old one is kept in
//!    `root-old/`). Dropping the old root from the bundles is a later,
//!    separate step once no leaf chains to it.

use std::time::{Duration, Instant};

use anyhow::Context;
use isthmus_identity::tool::{RootCa, create_intermediate, create_root, write_cacerts};
use serde::Serialize;

/// What the rotation did.
#[derive(Clone, Debug, Serialize)]
pub struct RotationReport {
    pub clusters: Vec<String>,
    /// Components acted on: sidecars asked for a new certificate. (No
    /// control plane is restarted any more; see `reloaded`.)
    pub restarted: Vec<String>,
    /// Control planes that reloaded their new intermediate, with how long it took.
    pub reloaded: Vec<String>,
    pub duration_ms: u64,
}

/// How many times the control plane at `debug` reloaded its cacerts, from `/metrics`.
async fn ca_reloads(debug: &str) -> Option<u64> {
    let c = crate::client::http_client();
    let req = http::Request::get(format!("http://{debug}/metrics"))
        .body(http_body_util::Full::new(bytes::Bytes::new()))
        .ok()?;
    let resp = tokio::time::timeout(Duration::from_secs(2), c.request(req))
        .await
        .ok()?
        .ok()?;
    let body = http_body_util::BodyExt::collect(resp.into_body())
        .await
        .ok()?
        .to_bytes();
    let text = String::from_utf8_lossy(&body);
    let line = "isthmus_control_plane_ca_reloads_total{source=\"cacerts\"} ";
    Some(
        text.lines()
            .find_map(|l| l.strip_prefix(line))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(0),
    )
}

/// Waits until the control plane at `debug` reloaded its cacerts more than `before` times.
async fn wait_reloaded(debug: &str, id: &str, before: u64) -> anyhow::Result<Duration> {
    let started = Instant::now();
    let timeout = Duration::from_secs(15);
    while started.elapsed() < timeout {
        if ca_reloads(debug).await.is_some_and(|n| n > before) {
            return Ok(started.elapsed());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    anyhow::bail!("{id} did not reload its new cacerts within {timeout:?} (see its log)")
}

/// Lowercase hex of DER bytes, as sidecars' `/certs` shows the issuer.
fn hex(der: &[u8]) -> String {
    der.iter().map(|b| format!("{b:02x}")).collect()
}

/// Asks a sidecar for a new certificate until it is issued by `issuer_hex`.
async fn renew_from(admin: &str, issuer_hex: &str) -> anyhow::Result<()> {
    for _ in 0..5 {
        renew(admin).await?;
        let issuer = sidecar_certs(admin)
            .await
            .and_then(|c| c["issuer_der_hex"].as_str().map(str::to_string));
        if issuer.as_deref() == Some(issuer_hex) {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    anyhow::bail!("{admin}: still not issued by the new intermediate after 5 renewals")
}

/// `POST /renew` on a sidecar's admin server, then waits for a new generation.
async fn renew(admin: &str) -> anyhow::Result<()> {
    let before = sidecar_certs(admin)
        .await
        .map(|c| c["generation"].as_u64())
        .unwrap_or(None);
    let c = crate::client::http_client();
    let req = http::Request::post(format!("http://{admin}/renew"))
        .body(http_body_util::Full::new(bytes::Bytes::new()))?;
    let resp = tokio::time::timeout(Duration::from_secs(2), c.request(req))
        .await
        .map_err(|_| anyhow::anyhow!("{admin}: /renew timed out"))??;
    anyhow::ensure!(
        resp.status().is_success(),
        "{admin}: /renew answered {}",
        resp.status()
    );
    let deadline = Instant::now() + Duration::from_secs(15);
    while Instant::now() < deadline {
        let now = sidecar_certs(admin)
            .await
            .map(|c| c["generation"].as_u64())
            .unwrap_or(None);
        if now.is_some() && now != before {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    anyhow::bail!("{admin}: no new certificate within 15 s")
}

async fn sidecar_certs(admin: &str) -> Option<serde_json::Value> {
    let c = crate::client::http_client();
    let req = http::Request::get(format!("http://{admin}/certs"))
        .body(http_body_util::Full::new(bytes::Bytes::new()))
        .ok()?;
    let resp = tokio::time::timeout(Duration::from_secs(1), c.request(req))
        .await
        .ok()?
        .ok()?;
    let body = http_body_util::BodyExt::collect(resp.into_body())
        .await
        .ok()?
        .to_bytes();
    serde_json::from_slice(&body).ok()
}

/// Roots a sidecar trusts, from its admin `/certs`.
async fn sidecar_roots(admin: &str) -> Option<u64> {
    sidecar_certs(admin).await?["roots"].as_u64()
}

/// Rotates the lab's root CA (see the module docs).
pub async fn rotate_root(
    dir: &std::path::Path,
    mut log: impl FnMut(&str),
) -> anyhow::Result<RotationReport> {
    let started = Instant::now();
    let (spec, _state) = crate::drill::lab(dir)?;
    let old = RootCa::load(spec.root_dir()).context("loading the lab's root CA")?;
    let next = create_root("Isthmus lab root CA (next)")?;
    let next_dir = spec.dir.join("root-next");
    next.write(&next_dir)
        .with_context(|| format!("writing {}", next_dir.display()))?;
    let bundle = old.trust_bundle()?.merged(&next.trust_bundle()?);
    let mut restarted = Vec::new();
    let mut reloaded = Vec::new();
    let plan = spec.plan();

    log("1/3 every cluster trusts the old and the next root (control planes reload it)");
    for c in &plan {
        crate::prepare::write_atomic(&c.cacerts_dir().join("root-cert.pem"), &bundle.to_pem())?;
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    for c in &plan {
        for w in &c.workloads {
            loop {
                if sidecar_roots(&w.admin.to_string())
                    .await
                    .is_some_and(|n| n >= 2)
                {
                    break;
                }
                anyhow::ensure!(
                    Instant::now() < deadline,
                    "{}/{} does not trust the next root after 30 s",
                    c.name,
                    w.name
                );
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }

    log("2/3 cluster by cluster: an intermediate under the next root, new workload certificates");
    for c in &plan {
        let inter = create_intermediate(&next, &c.name, &c.trust_domain)?;
        let staged = c.dir.join("cacerts-next");
        let _ = std::fs::remove_dir_all(&staged);
        write_cacerts(&staged, &inter, &bundle)?;
        let old_dir = c.dir.join("cacerts-old");
        let _ = std::fs::remove_dir_all(&old_dir);
        let id = format!("{}/control-plane", c.name);
        let debug = c.debug.to_string();
        let before = ca_reloads(&debug)
            .await
            .with_context(|| format!("{id}: no /metrics on {debug}"))?;
        std::fs::rename(c.cacerts_dir(), &old_dir)?;
        std::fs::rename(&staged, c.cacerts_dir())?;
        let took = wait_reloaded(&debug, &id, before).await?;
        reloaded.push(format!("{id} ({} ms)", took.as_millis()));
        // New leaves without a restart: each sidecar asks its CA now; open
        // connections keep their old leaf, which still verifies.
        let issuer = isthmus_identity::certs_from_pem(inter.cert_pem())?;
        let issuer = hex(issuer
            .first()
            .context("the new intermediate has no certificate")?);
        for w in &c.workloads {
            renew_from(&w.admin.to_string(), &issuer).await?;
            restarted.push(format!("{}/{} (certificate renewed)", c.name, w.name));
        }
    }

    log("3/3 the next root is the lab's root (the old one is kept in root-old/)");
    let old_dir = spec.dir.join("root-old");
    let _ = std::fs::remove_dir_all(&old_dir);
    std::fs::rename(spec.root_dir(), &old_dir)?;
    std::fs::rename(&next_dir, spec.root_dir())?;
    Ok(RotationReport {
        clusters: plan.iter().map(|c| c.name.clone()).collect(),
        restarted,
        reloaded,
        duration_ms: started.elapsed().as_millis() as u64,
    })
}
