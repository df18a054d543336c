//! `isthmus lab rotate-root`: replaces the shared root CA of a running lab
//! without dropping a request, following the procedure in
//! `docs/federation.md`:
//!
//! 1. Create the next root. Every cluster trusts both roots (its cacerts
//!    `root-cert.pem` becomes the bundle; the control plane is restarted to
//!    serve it as `ROOTCA`, sidecars merge it with what the CA gave them).
//!    Wait until every sidecar trusts two roots.
//! 2. Cluster by cluster: a new intermediate under the next root, the
//!    control plane restarted on it (sidecars keep serving on their last
//!    config meanwhile), then each sidecar asked for a new leaf
//!    (`POST /renew` on its admin server; open connections keep the old
//!    one). Old and new leaves verify everywhere because every cluster
//!    trusts both roots.
//! 3. The next root becomes the lab's root (`root/`; the old one is kept in
//!    `root-old/`). Dropping the old root from the bundles is a later,
//!    separate step once no leaf chains to it.

use std::time::{Duration, Instant};

use anyhow::Context;
use isthmus_identity::tool::{RootCa, create_intermediate, create_root, write_cacerts};
use serde::Serialize;

use crate::client::control;

/// What the rotation did.
#[derive(Clone, Debug, Serialize)]
pub struct RotationReport {
    pub clusters: Vec<String>,
    pub restarted: Vec<String>,
    pub duration_ms: u64,
}

async fn wait_ready(url: &str, what: &str, timeout: Duration) -> anyhow::Result<()> {
    let deadline = Instant::now() + timeout;
    // A restarted component may still answer on its old process for a moment.
    tokio::time::sleep(Duration::from_millis(300)).await;
    while Instant::now() < deadline {
        if crate::client::ready(url).await {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    anyhow::bail!("{what} did not become ready within {timeout:?} after its restart")
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
    let (spec, state) = crate::drill::lab(dir)?;
    let old = RootCa::load(spec.root_dir()).context("loading the lab's root CA")?;
    let next = create_root("Isthmus lab root CA (next)")?;
    let next_dir = spec.dir.join("root-next");
    next.write(&next_dir)
        .with_context(|| format!("writing {}", next_dir.display()))?;
    let bundle = old.trust_bundle()?.merged(&next.trust_bundle()?);
    let mut restarted = Vec::new();
    let plan = spec.plan();

    log("1/3 every cluster trusts the old and the next root");
    for c in &plan {
        crate::prepare::write_atomic(&c.cacerts_dir().join("root-cert.pem"), &bundle.to_pem())?;
        let id = format!("{}/control-plane", c.name);
        control(&state.control, "restart", Some(&id)).await?;
        wait_ready(
            &format!("http://{}/ready", c.debug),
            &id,
            Duration::from_secs(30),
        )
        .await?;
        restarted.push(id);
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
        std::fs::rename(c.cacerts_dir(), &old_dir)?;
        std::fs::rename(&staged, c.cacerts_dir())?;
        let id = format!("{}/control-plane", c.name);
        control(&state.control, "restart", Some(&id)).await?;
        wait_ready(
            &format!("http://{}/ready", c.debug),
            &id,
            Duration::from_secs(30),
        )
        .await?;
        restarted.push(id);
        // New leaves without a restart: each sidecar asks its CA now; open
        // connections keep their old leaf, which still verifies.
        for w in &c.workloads {
            renew(&w.admin.to_string()).await?;
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
        duration_ms: started.elapsed().as_millis() as u64,
    })
}
