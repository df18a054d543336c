//! The traffic policy the canary and the drills write for a global service:
//! subsets by cluster, resilience (retries, outlier detection), and either
//! canary weights or locality preference. One file per service in every
//! cluster's config directory, where the callers' control planes read it.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use crate::plan::ClusterPlan;

/// How traffic to a service is spread.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Policy {
    /// Canary weights per cluster (percent, summing to 100); empty = locality preference.
    pub weights: BTreeMap<String, u32>,
    /// Send callers in the keyed region to the valued region first (drills).
    pub distribute: Option<(String, String)>,
}

/// `<svc>.<ns>` → (`svc`, `ns`).
pub fn split_service(s: &str) -> anyhow::Result<(String, String)> {
    match s.split_once('.') {
        Some((svc, ns)) if !svc.is_empty() && !ns.is_empty() && !ns.contains('.') => {
            Ok((svc.to_string(), ns.to_string()))
        }
        _ => anyhow::bail!("{s:?}: expected <service>.<namespace>, e.g. helloworld.sample"),
    }
}

/// Parses `east=90,west=10`.
pub fn parse_weights(s: &str, clusters: &[ClusterPlan]) -> anyhow::Result<BTreeMap<String, u32>> {
    let mut out = BTreeMap::new();
    for part in s.split(',').filter(|p| !p.is_empty()) {
        let (c, w) = part.split_once('=').ok_or_else(|| {
            anyhow::anyhow!("--weights {s:?}: {part:?} is not <cluster>=<percent>")
        })?;
        let w: u32 = w
            .parse()
            .map_err(|_| anyhow::anyhow!("--weights {s:?}: {w:?} is not a whole percent"))?;
        if !clusters.iter().any(|p| p.name == c) {
            let known: Vec<&str> = clusters.iter().map(|p| p.name.as_str()).collect();
            anyhow::bail!(
                "--weights {s:?}: no cluster {c:?} in this lab ({})",
                known.join(", ")
            );
        }
        out.insert(c.to_string(), w);
    }
    let sum: u32 = out.values().sum();
    if sum != 100 {
        anyhow::bail!("--weights {s:?}: weights sum to {sum}, expected 100");
    }
    Ok(out)
}

/// The DestinationRule and VirtualService for `<svc>.<ns>.global`.
pub fn yaml(svc: &str, ns: &str, clusters: &[ClusterPlan], policy: &Policy) -> String {
    let host = format!("{svc}.{ns}.global");
    let mut out = format!(
        "# Written by isthmus (canary / drill) for {host}.\n\
         apiVersion: networking.istio.io/v1\n\
         kind: DestinationRule\n\
         metadata: {{name: {svc}-global, namespace: {ns}}}\n\
         spec:\n  host: {host}\n  trafficPolicy:\n    \
         outlierDetection: {{consecutive5xxErrors: 1, consecutiveGatewayErrors: 1, interval: 1s, baseEjectionTime: 1s, maxEjectionPercent: 100}}\n"
    );
    if let Some((from, to)) = &policy.distribute {
        let _ = write!(
            out,
            "    loadBalancer:\n      simple: ROUND_ROBIN\n      localityLbSetting:\n        enabled: true\n        \
             distribute:\n        - from: \"{from}/*\"\n          to: {{\"{to}/*\": 100}}\n"
        );
    }
    out.push_str("  subsets:\n");
    for c in clusters {
        let _ = writeln!(
            out,
            "  - {{name: {n}, labels: {{topology.istio.io/cluster: {n}}}}}",
            n = c.name
        );
    }
    // The same subsets for the cluster-local name: a peer's gateway routes
    // `outbound_.<port>_.<subset>_.<host>` by the subsets of its own service.
    let _ = write!(
        out,
        "---\n\
         apiVersion: networking.istio.io/v1\n\
         kind: DestinationRule\n\
         metadata: {{name: {svc}-subsets, namespace: {ns}}}\n\
         spec:\n  host: {svc}.{ns}.svc.cluster.local\n  subsets:\n"
    );
    for c in clusters {
        let _ = writeln!(
            out,
            "  - {{name: {n}, labels: {{topology.istio.io/cluster: {n}}}}}",
            n = c.name
        );
    }
    let _ = write!(
        out,
        "---\n\
         apiVersion: networking.istio.io/v1\n\
         kind: VirtualService\n\
         metadata: {{name: {svc}-global, namespace: {ns}}}\n\
         spec:\n  hosts: [{host}]\n  http:\n  - retries: {{attempts: 3, perTryTimeout: 500ms, retryOn: \"connect-failure,reset,5xx,gateway-error\"}}\n    route:\n"
    );
    if policy.weights.is_empty() {
        let _ = writeln!(out, "    - destination: {{host: {host}}}");
    } else {
        for (c, w) in &policy.weights {
            let _ = writeln!(
                out,
                "    - {{destination: {{host: {host}, subset: {c}}}, weight: {w}}}"
            );
        }
    }
    out
}

/// Writes the policy into every cluster's config directory.
pub fn write(svc: &str, ns: &str, clusters: &[ClusterPlan], policy: &Policy) -> anyhow::Result<()> {
    let text = yaml(svc, ns, clusters, policy);
    for c in clusters {
        crate::prepare::write_atomic(
            &c.config_dir().join(format!("policy-{svc}-{ns}.yaml")),
            &text,
        )?;
    }
    Ok(())
}
