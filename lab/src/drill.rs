//! `isthmus canary` and `isthmus drill failover`.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use serde::Serialize;

use crate::client::{LoadReport, Sample, load_while};
use crate::plan::{ClusterPlan, LabSpec};
use crate::policy::{self, Policy};
use crate::state::LabState;

/// The running lab's spec and state, or an error saying how to start one.
pub fn lab(dir: &Path) -> anyhow::Result<(LabSpec, LabState)> {
    let spec: LabSpec = serde_json::from_str(
        &std::fs::read_to_string(dir.join("spec.json"))
            .with_context(|| format!("no lab in {} (run `isthmus lab up` first)", dir.display()))?,
    )?;
    let state = crate::lab::running(dir)?.ok_or_else(|| {
        anyhow::anyhow!("no lab running in {} (run `isthmus lab up`)", dir.display())
    })?;
    Ok((spec, state))
}

/// `<cluster>/<workload>` → (cluster plan, outbound address).
pub fn workload(spec: &LabSpec, id: &str) -> anyhow::Result<(ClusterPlan, std::net::SocketAddr)> {
    let (c, w) = id
        .split_once('/')
        .ok_or_else(|| anyhow::anyhow!("{id:?}: expected <cluster>/<workload>, e.g. east/sleep"))?;
    let cluster = spec
        .cluster(c)
        .ok_or_else(|| anyhow::anyhow!("{id:?}: no cluster {c:?} in this lab"))?;
    let addr = cluster
        .workload(w)
        .map(|w| w.outbound)
        .ok_or_else(|| anyhow::anyhow!("{id:?}: no workload {w:?} in cluster {c}"))?;
    Ok((cluster, addr))
}

fn policy_file(dir: &Path, svc: &str, ns: &str) -> std::path::PathBuf {
    dir.join(format!("policy-{svc}-{ns}.json"))
}

/// The policy last written for a service.
pub fn current_policy(dir: &Path, svc: &str, ns: &str) -> Policy {
    std::fs::read_to_string(policy_file(dir, svc, ns))
        .ok()
        .and_then(|s| serde_json::from_str(&s).ok())
        .unwrap_or_default()
}

/// Writes a policy to every cluster and remembers it.
pub fn apply_policy(spec: &LabSpec, svc: &str, ns: &str, p: &Policy) -> anyhow::Result<()> {
    policy::write(svc, ns, &spec.plan(), p)?;
    std::fs::write(policy_file(&spec.dir, svc, ns), serde_json::to_string(p)?)?;
    Ok(())
}

/// Waits until requests from `via` to `url` are spread as `check` wants
/// (the control planes have pushed the new policy), at most `timeout`.
async fn settle(
    via: std::net::SocketAddr,
    url: &str,
    timeout: Duration,
    check: impl Fn(&LoadReport) -> bool,
) -> bool {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        let r = crate::client::load(
            via,
            url,
            50,
            Duration::from_millis(400),
            Duration::from_secs(2),
        )
        .await;
        if check(&r) {
            return true;
        }
    }
    false
}

/// `isthmus canary <svc>.<ns> --weights east=90,west=10`: writes the policy
/// and measures the resulting split from the first cluster's sleep.
pub async fn canary(
    dir: &Path,
    service: &str,
    weights: &str,
    requests: u32,
) -> anyhow::Result<LoadReport> {
    let (spec, _) = lab(dir)?;
    let (svc, ns) = policy::split_service(service)?;
    let weights = policy::parse_weights(weights, &spec.plan())?;
    apply_policy(
        &spec,
        &svc,
        &ns,
        &Policy {
            weights: weights.clone(),
            distribute: None,
        },
    )?;
    let from = spec.plan()[0].sleep().outbound;
    let url = format!("http://{svc}.{ns}.global:{}/", crate::plan::HELLO_PORT);
    // Converged when every weighted cluster answers (or the zero ones do not).
    let want: Vec<String> = weights
        .iter()
        .filter(|(_, w)| **w > 0)
        .map(|(c, _)| c.clone())
        .collect();
    let zero: Vec<String> = weights
        .iter()
        .filter(|(_, w)| **w == 0)
        .map(|(c, _)| c.clone())
        .collect();
    settle(from, &url, Duration::from_secs(10), |r| {
        r.failed == 0
            && zero.iter().all(|c| !r.by_cluster.contains_key(c))
            && (want.len() < 2
                || want.iter().all(|c| r.by_cluster.contains_key(c))
                || r.requests < 20)
    })
    .await;
    // Every control plane pushes within ~100 ms of the write; give the
    // slowest sidecar a moment so the measurement sees only the new weights.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let rps = 200;
    let secs = f64::from(requests) / f64::from(rps);
    Ok(crate::client::load(
        from,
        &url,
        rps,
        Duration::from_secs_f64(secs),
        Duration::from_secs(2),
    )
    .await)
}

/// How the drill takes a cluster's endpoints away.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// Kill the workloads (app and sidecar).
    Kill,
    /// Freeze them (SIGSTOP): connections hang, nothing answers.
    Blackhole,
    /// Cut the cluster's gateway and federation link.
    Partition,
}

/// The drill's result.
#[derive(Clone, Debug, Serialize)]
pub struct DrillReport {
    pub service: String,
    pub cluster: String,
    pub mode: Mode,
    pub from: String,
    pub requests: u64,
    pub failed: u64,
    pub failures: BTreeMap<String, u64>,
    pub time_to_failover_ms: u64,
    pub time_to_failback_ms: Option<u64>,
    pub by_cluster: BTreeMap<String, u64>,
    pub p50_ms: f64,
    pub p99_ms: f64,
}

/// The first time (since `t0`) from which 1 s of requests succeed ≥ 99%:
/// when traffic has moved.
fn recovered_at(samples: &[Sample], t0: Duration) -> Option<Duration> {
    let after: Vec<&Sample> = samples.iter().filter(|s| s.at >= t0).collect();
    for (i, s) in after.iter().enumerate() {
        let window: Vec<&&Sample> = after[i..]
            .iter()
            .take_while(|x| x.at < s.at + Duration::from_secs(1))
            .collect();
        if window.len() < 5 {
            continue;
        }
        let ok = window.iter().filter(|x| x.outcome.is_ok()).count();
        if ok * 100 >= window.len() * 99 {
            return Some((s.at + s.latency).saturating_sub(t0));
        }
    }
    None
}

/// `isthmus drill failover`.
pub async fn failover(
    dir: &Path,
    service: &str,
    cluster: &str,
    mode: Mode,
    rps: u32,
    mut log: impl FnMut(&str),
) -> anyhow::Result<DrillReport> {
    let (spec, state) = lab(dir)?;
    let (svc, ns) = policy::split_service(service)?;
    let target = spec
        .cluster(cluster)
        .ok_or_else(|| anyhow::anyhow!("--cluster {cluster:?}: no such cluster in this lab"))?;
    let plan = spec.plan();
    if plan.len() < 2 {
        bail!("a failover drill needs at least two clusters");
    }
    let other = plan
        .iter()
        .find(|c| c.name != target.name)
        .cloned()
        .unwrap_or_else(|| target.clone());
    // Kill/black-hole: the target's own client loses its local endpoints and
    // fails over to a peer. Partition: a peer's client that prefers the
    // target (distribute) loses the link and fails over to its own cluster.
    let (client, policy) = match mode {
        Mode::Kill | Mode::Blackhole => (target.clone(), Policy::default()),
        Mode::Partition => (
            other.clone(),
            Policy {
                weights: BTreeMap::new(),
                distribute: Some((region(&other.locality), region(&target.locality))),
            },
        ),
    };
    let saved = current_policy(&spec.dir, &svc, &ns);
    apply_policy(&spec, &svc, &ns, &policy)?;
    let from = client.sleep().outbound;
    let from_id = format!("{}/sleep", client.name);
    let url = format!("http://{svc}.{ns}.global:{}/", crate::plan::HELLO_PORT);
    log(&format!(
        "policy written; waiting until {from_id} prefers {}",
        target.name
    ));
    if !settle(from, &url, Duration::from_secs(15), |r| {
        r.failed == 0 && r.by_cluster.keys().all(|c| *c == target.name) && !r.by_cluster.is_empty()
    })
    .await
    {
        bail!(
            "traffic from {from_id} did not settle on {} within 15 s",
            target.name
        );
    }
    let victims: Vec<String> = match mode {
        Mode::Kill | Mode::Blackhole => {
            let w = target.helloworld();
            vec![
                format!("{}/{}-app", target.name, w.name),
                format!("{}/{}", target.name, w.name),
            ]
        }
        Mode::Partition => vec![
            format!("{}/gateway", target.name),
            format!("{}/federation", target.name),
        ],
    };
    let (take, restore) = match mode {
        Mode::Kill | Mode::Partition => ("stop", "start"),
        Mode::Blackhole => ("pause", "resume"),
    };
    // Load for 2 s healthy, take away, 4 s, restore, 8 s to see the failback.
    let (t_take, t_restore, total) = (
        Duration::from_secs(2),
        Duration::from_secs(6),
        Duration::from_secs(14),
    );
    let control = state.control.clone();
    let victims2 = victims.clone();
    let started = Instant::now();
    let actions = tokio::spawn(async move {
        tokio::time::sleep(t_take).await;
        let at_take = started.elapsed();
        for v in &victims2 {
            crate::client::control(&control, take, Some(v)).await?;
        }
        tokio::time::sleep(t_restore.saturating_sub(started.elapsed())).await;
        let at_restore = started.elapsed();
        for v in &victims2 {
            crate::client::control(&control, restore, Some(v)).await?;
        }
        anyhow::Ok((at_take, at_restore))
    });
    log(&format!(
        "load {rps} rps for 14 s from {from_id}; {take} {} at 2 s, {restore} at 6 s",
        victims.join(", ")
    ));
    let report = load_while(from, &url, rps, total, Duration::from_secs(3), |_| {}).await;
    let (at_take, at_restore) = actions.await.context("drill actions")??;
    let target_name = target.name.clone();
    let failover =
        recovered_at(&report.samples, at_take).map_or(u64::MAX, |d| d.as_millis() as u64);
    let failback = report
        .samples
        .iter()
        .filter(|s| s.at >= at_restore)
        .find(|s| matches!(&s.outcome, Ok(v) if v.starts_with(&format!("{target_name}/"))))
        .map(|s| (s.at + s.latency).saturating_sub(at_restore).as_millis() as u64);
    // Put the user's policy back.
    apply_policy(&spec, &svc, &ns, &saved)?;
    Ok(DrillReport {
        service: format!("{svc}.{ns}"),
        cluster: target.name,
        mode,
        from: from_id,
        requests: report.requests,
        failed: report.failed,
        failures: report.failures,
        time_to_failover_ms: failover,
        time_to_failback_ms: failback,
        by_cluster: report.by_cluster,
        p50_ms: report.p50_ms,
        p99_ms: report.p99_ms,
    })
}

fn region(locality: &str) -> String {
    locality.split('/').next().unwrap_or(locality).to_string()
}
