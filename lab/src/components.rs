//! Every process of a lab and its command line.

use std::collections::BTreeMap;
use std::path::PathBuf;

use crate::plan::{ClusterPlan, ComponentKind, LabSpec, NAMESPACE, WorkloadPlan};

/// One process the supervisor runs.
#[derive(Clone, Debug)]
pub struct Component {
    /// `<cluster>/<name>`.
    pub id: String,
    pub cluster: String,
    pub kind: ComponentKind,
    /// Arguments to the `isthmus` binary.
    pub args: Vec<String>,
    pub addresses: BTreeMap<String, String>,
    pub ready_url: Option<String>,
    pub log: PathBuf,
    /// Start phase: control planes (0), then gateways, DNS, federation, apps (1), then sidecars (2).
    pub phase: u8,
}

fn s(v: impl ToString) -> String {
    v.to_string()
}

/// The processes of every cluster, in start order.
pub fn components(spec: &LabSpec) -> Vec<Component> {
    let mut out = Vec::new();
    for c in spec.plan() {
        out.extend(cluster_components(spec, &c));
    }
    out.sort_by_key(|c| c.phase);
    out
}

#[allow(clippy::too_many_arguments)]
fn component(
    spec: &LabSpec,
    c: &ClusterPlan,
    name: &str,
    kind: ComponentKind,
    phase: u8,
    args: Vec<String>,
    addresses: &[(&str, String)],
    ready: Option<String>,
) -> Component {
    Component {
        id: format!("{}/{name}", c.name),
        cluster: c.name.clone(),
        kind,
        args,
        addresses: addresses
            .iter()
            .map(|(k, v)| ((*k).to_string(), v.clone()))
            .collect(),
        ready_url: ready,
        log: spec.log_dir().join(format!("{}-{name}.log", c.name)),
        phase,
    }
}

fn cluster_components(spec: &LabSpec, c: &ClusterPlan) -> Vec<Component> {
    let cfg = s(c.config_dir().display());
    let cacerts = s(c.cacerts_dir().display());
    let mut out = vec![
        component(
            spec,
            c,
            "control-plane",
            ComponentKind::ControlPlane,
            0,
            vec![
                s("control-plane"),
                s("--cluster"),
                c.name.clone(),
                s("--network"),
                c.network.clone(),
                s("--config-dir"),
                cfg.clone(),
                s("--ca-dir"),
                cacerts.clone(),
                // Root rotation reloads the CA in place: notice it quickly.
                s("--ca-reload-interval"),
                s("1s"),
                s("--bootstrap-tokens"),
                s(c.tokens_file().display()),
                s("--listen"),
                s(c.xds),
                s("--debug-listen"),
                s(c.debug),
            ],
            &[("xds", s(c.xds)), ("debug", s(c.debug))],
            Some(format!("http://{}/ready", c.debug)),
        ),
        component(
            spec,
            c,
            "gateway",
            ComponentKind::Gateway,
            1,
            vec![
                s("gateway"),
                s("--cluster"),
                c.name.clone(),
                s("--network"),
                c.network.clone(),
                s("--locality"),
                c.locality.clone(),
                s("--control-plane"),
                s(c.xds),
                s("--listen"),
                s(c.gateway),
                s("--admin"),
                s(c.gateway_admin),
            ],
            &[("listen", s(c.gateway)), ("admin", s(c.gateway_admin))],
            Some(format!("http://{}/ready", c.gateway_admin)),
        ),
        component(
            spec,
            c,
            "dns",
            ComponentKind::Dns,
            1,
            vec![
                s("dns"),
                s("--cluster"),
                c.name.clone(),
                s("--locality"),
                c.locality.clone(),
                s("--control-plane"),
                s(c.xds),
                s("--listen"),
                s(c.dns),
                s("--admin"),
                s(c.dns_admin),
            ],
            &[("listen", s(c.dns)), ("admin", s(c.dns_admin))],
            Some(format!("http://{}/ready", c.dns_admin)),
        ),
        component(
            spec,
            c,
            "federation",
            ComponentKind::Federation,
            1,
            vec![
                s("federation"),
                s("--cluster"),
                c.name.clone(),
                s("--config-dir"),
                cfg,
                s("--ca-dir"),
                cacerts,
                s("--listen"),
                s(c.federation),
                s("--admin"),
                s(c.federation_admin),
            ],
            &[
                ("listen", s(c.federation)),
                ("admin", s(c.federation_admin)),
            ],
            Some(format!("http://{}/ready", c.federation_admin)),
        ),
    ];
    for w in &c.workloads {
        if let Some(app) = w.app_addr {
            out.push(component(
                spec,
                c,
                &format!("{}-app", w.name),
                ComponentKind::App,
                1,
                vec![
                    s("lab"),
                    s("app"),
                    s("--service"),
                    w.app.clone(),
                    s("--app-version"),
                    w.version.clone().unwrap_or_default(),
                    s("--cluster"),
                    c.name.clone(),
                    s("--listen"),
                    s(app),
                ],
                &[("listen", s(app))],
                Some(format!("http://{app}/healthz")),
            ));
        }
        out.push(sidecar(spec, c, w));
    }
    out
}

fn sidecar(spec: &LabSpec, c: &ClusterPlan, w: &WorkloadPlan) -> Component {
    let mut labels = format!("app={}", w.app);
    if let Some(v) = &w.version {
        labels.push_str(&format!(",version={v}"));
    }
    let mut args = vec![
        s("sidecar"),
        s("--control-plane"),
        s(c.xds),
        s("--workload"),
        format!("{NAMESPACE}/{}", w.name),
        s("--service-account"),
        w.service_account.clone(),
        s("--cluster"),
        c.name.clone(),
        s("--network"),
        c.network.clone(),
        s("--locality"),
        c.locality.clone(),
        s("--label"),
        labels,
        s("--ip"),
        s(w.ip),
        s("--outbound"),
        s(w.outbound),
        s("--admin"),
        s(w.admin),
        s("--token-file"),
        s(c.token_file(w).display()),
    ];
    if let Some(app) = w.app_addr {
        args.push(s("--app-ip"));
        args.push(s(app.ip()));
    }
    component(
        spec,
        c,
        &w.name,
        ComponentKind::Sidecar,
        2,
        args,
        &[
            ("ip", s(w.ip)),
            ("outbound", s(w.outbound)),
            ("admin", s(w.admin)),
        ],
        Some(format!("http://{}/ready", w.admin)),
    )
}
