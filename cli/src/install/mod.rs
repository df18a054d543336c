//! `isthmus install --cluster <name> --context <kube context>`: renders the
//! Helm chart in `deploy/helm/isthmus` (embedded in the binary, rendered by
//! [`render`], the same templates `helm install` reads) and applies every
//! manifest with server-side apply (field manager `isthmus-install`).
//!
//! On top of the chart it creates what a chart should not generate: the
//! namespace, the `cacerts` Secret from `--ca-dir` (this cluster's
//! intermediate, `isthmus ca intermediate`) and the webhook's serving
//! certificate (a fresh CA per install; its bundle goes into the
//! MutatingWebhookConfiguration). `--dry-run` prints the YAML instead.

pub mod render;

#[cfg(test)]
mod tests;

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context as _, bail};
use serde_json::{Value, json};

use render::{Context, documents};

/// The chart, embedded: (path inside the chart, text).
pub const CHART_FILES: &[(&str, &str)] = &[
    (
        "Chart.yaml",
        include_str!("../../../deploy/helm/isthmus/Chart.yaml"),
    ),
    (
        "values.yaml",
        include_str!("../../../deploy/helm/isthmus/values.yaml"),
    ),
    (
        "crds/crds.yaml",
        include_str!("../../../deploy/helm/isthmus/crds/crds.yaml"),
    ),
    (
        "templates/control-plane.yaml",
        include_str!("../../../deploy/helm/isthmus/templates/control-plane.yaml"),
    ),
    (
        "templates/webhook.yaml",
        include_str!("../../../deploy/helm/isthmus/templates/webhook.yaml"),
    ),
    (
        "templates/gateway.yaml",
        include_str!("../../../deploy/helm/isthmus/templates/gateway.yaml"),
    ),
    (
        "templates/dns.yaml",
        include_str!("../../../deploy/helm/isthmus/templates/dns.yaml"),
    ),
    (
        "templates/federation.yaml",
        include_str!("../../../deploy/helm/isthmus/templates/federation.yaml"),
    ),
];

/// Field manager of every object `isthmus install` applies.
pub const FIELD_MANAGER: &str = "isthmus-install";

/// Arguments of `isthmus install`.
#[derive(Debug, clap::Args)]
pub(crate) struct InstallArgs {
    /// This cluster's name (chart value `cluster`).
    #[arg(long)]
    cluster: String,
    /// Kubeconfig context to install into (default: the current one).
    #[arg(long)]
    context: Option<String>,
    /// Namespace of the Isthmus components.
    #[arg(long, default_value = "isthmus-system")]
    namespace: String,
    /// A values file (YAML) merged over the chart's values.yaml.
    #[arg(long, short = 'f')]
    values: Vec<PathBuf>,
    /// One value, `a.b=c` (after the files; `true`/`false`/integers are typed).
    #[arg(long = "set", value_name = "KEY=VALUE")]
    set: Vec<String>,
    /// This cluster's cacerts directory (`isthmus ca intermediate`): stored as the
    /// `ca.secretName` Secret. Without it that Secret must exist already.
    #[arg(long)]
    ca_dir: Option<PathBuf>,
    /// Print the manifests instead of applying them.
    #[arg(long)]
    dry_run: bool,
}

/// Deep-merges `over` into `base` (maps merge, anything else replaces).
pub fn merge(base: &mut Value, over: Value) {
    match (base, over) {
        (Value::Object(b), Value::Object(o)) => {
            for (k, v) in o {
                merge(b.entry(k).or_insert(Value::Null), v);
            }
        }
        (b, o) => *b = o,
    }
}

/// `a.b=c` → `{"a": {"b": c}}`, with `c` typed as Helm's `--set` does.
pub fn set_value(values: &mut Value, assignment: &str) -> anyhow::Result<()> {
    let Some((path, raw)) = assignment.split_once('=') else {
        bail!("--set {assignment:?}: expected key=value");
    };
    let value = match raw {
        "true" => Value::Bool(true),
        "false" => Value::Bool(false),
        "null" => Value::Null,
        n if n.parse::<i64>().is_ok() => json!(n.parse::<i64>()?),
        s => Value::from(s),
    };
    let over = path.rsplit('.').fold(value, |v, key| json!({ key: v }));
    merge(values, over);
    Ok(())
}

/// The chart's default values.
pub fn default_values() -> anyhow::Result<Value> {
    Ok(serde_yaml_ng::from_str(chart_file("values.yaml"))?)
}

fn chart_file(path: &str) -> &'static str {
    CHART_FILES
        .iter()
        .find(|(p, _)| *p == path)
        .map(|(_, t)| *t)
        .unwrap_or_default()
}

/// Renders the chart: CRDs first, then every template, each document parsed.
pub fn render_chart(values: &Value, namespace: &str) -> anyhow::Result<Vec<Value>> {
    let chart: Value = serde_yaml_ng::from_str(chart_file("Chart.yaml"))?;
    let ctx = Context {
        values: values.clone(),
        release_name: "isthmus".into(),
        release_namespace: namespace.into(),
        chart_version: chart["version"].as_str().unwrap_or_default().into(),
        app_version: chart["appVersion"].as_str().unwrap_or_default().into(),
    };
    let mut out = Vec::new();
    for (path, text) in CHART_FILES {
        let rendered = if path.starts_with("crds/") {
            (*text).to_string()
        } else if path.starts_with("templates/") {
            render::render(path, text, &ctx)?
        } else {
            continue;
        };
        for doc in documents(&rendered) {
            let v: Value = serde_yaml_ng::from_str(&doc)
                .with_context(|| format!("{path}: rendered YAML does not parse:\n{doc}"))?;
            out.push(v);
        }
    }
    Ok(out)
}

/// A CA and a serving certificate for `isthmus-control-plane.<ns>.svc`:
/// (cert PEM, key PEM, CA PEM).
pub fn webhook_cert(namespace: &str) -> anyhow::Result<(String, String, String)> {
    use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair};
    let ca_key = KeyPair::generate()?;
    let mut ca = CertificateParams::default();
    ca.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    ca.distinguished_name.push(
        DnType::CommonName,
        format!("isthmus webhook CA ({namespace})"),
    );
    ca.not_after = rcgen::date_time_ymd(2036, 1, 1);
    let ca_cert = ca.self_signed(&ca_key)?;
    let service = format!("isthmus-control-plane.{namespace}.svc");
    let mut leaf =
        CertificateParams::new(vec![service.clone(), format!("{service}.cluster.local")])?;
    leaf.distinguished_name.push(DnType::CommonName, service);
    leaf.not_after = rcgen::date_time_ymd(2036, 1, 1);
    let key = KeyPair::generate()?;
    let cert = leaf.signed_by(&key, &rcgen::Issuer::new(ca, ca_key))?;
    Ok((cert.pem(), key.serialize_pem(), ca_cert.pem()))
}

fn b64(s: &str) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.encode(s)
}

/// Everything `isthmus install` applies, in order.
pub fn manifests(
    values: &mut Value,
    namespace: &str,
    cacerts: Option<&[(String, String)]>,
) -> anyhow::Result<Vec<Value>> {
    let (cert, key, ca) = webhook_cert(namespace)?;
    merge(values, json!({"webhook": {"caBundle": b64(&ca)}}));
    let mut out = vec![json!({
        "apiVersion": "v1", "kind": "Namespace",
        "metadata": {"name": namespace, "labels": {"app.kubernetes.io/part-of": "isthmus"}},
    })];
    let secret = |name: &str, kind: &str, data: serde_json::Map<String, Value>| {
        json!({
            "apiVersion": "v1", "kind": "Secret", "type": kind,
            "metadata": {"name": name, "namespace": namespace,
                         "labels": {"app.kubernetes.io/part-of": "isthmus"}},
            "data": data,
        })
    };
    let tls_name = values["webhook"]["tlsSecretName"]
        .as_str()
        .unwrap_or("isthmus-webhook-tls");
    let mut tls = serde_json::Map::new();
    tls.insert("tls.crt".into(), b64(&cert).into());
    tls.insert("tls.key".into(), b64(&key).into());
    out.push(secret(tls_name, "kubernetes.io/tls", tls));
    if let Some(files) = cacerts {
        let name = values["ca"]["secretName"].as_str().unwrap_or_default();
        if name.is_empty() {
            bail!("--ca-dir given but the value ca.secretName is empty");
        }
        let data = files
            .iter()
            .map(|(k, v)| (k.clone(), Value::from(b64(v))))
            .collect();
        out.push(secret(name, "Opaque", data));
    }
    // CRDs first, as Helm installs crds/ before the templates.
    let (mut all, rest): (Vec<Value>, Vec<Value>) = render_chart(values, namespace)?
        .into_iter()
        .partition(|m| m["kind"] == "CustomResourceDefinition");
    all.extend(out);
    all.extend(rest);
    Ok(all)
}

/// Plural and scope of every kind `isthmus install` applies.
pub fn api_resource(api_version: &str, kind: &str) -> Option<(&'static str, bool)> {
    Some(match (api_version, kind) {
        ("v1", "Namespace") => ("namespaces", false),
        ("v1", "Secret") => ("secrets", true),
        ("v1", "ServiceAccount") => ("serviceaccounts", true),
        ("v1", "Service") => ("services", true),
        ("v1", "ConfigMap") => ("configmaps", true),
        ("apps/v1", "Deployment") => ("deployments", true),
        ("rbac.authorization.k8s.io/v1", "ClusterRole") => ("clusterroles", false),
        ("rbac.authorization.k8s.io/v1", "ClusterRoleBinding") => ("clusterrolebindings", false),
        ("rbac.authorization.k8s.io/v1", "Role") => ("roles", true),
        ("rbac.authorization.k8s.io/v1", "RoleBinding") => ("rolebindings", true),
        ("admissionregistration.k8s.io/v1", "MutatingWebhookConfiguration") => {
            ("mutatingwebhookconfigurations", false)
        }
        ("apiextensions.k8s.io/v1", "CustomResourceDefinition") => {
            ("customresourcedefinitions", false)
        }
        ("federation.isthmus.io/v1alpha1", "MeshFederation") => ("meshfederations", true),
        _ => return None,
    })
}

/// Server-side applies `manifests` in order.
pub async fn apply(client: kube::Client, manifests: &[Value]) -> anyhow::Result<Vec<String>> {
    use kube::api::{ApiResource, DynamicObject, Patch, PatchParams};
    let mut applied = Vec::new();
    for m in manifests {
        let (api_version, kind) = (
            m["apiVersion"].as_str().unwrap_or(""),
            m["kind"].as_str().unwrap_or(""),
        );
        let (plural, namespaced) = api_resource(api_version, kind)
            .with_context(|| format!("isthmus install does not know {api_version} {kind}"))?;
        let (group, version) = api_version.rsplit_once('/').unwrap_or(("", api_version));
        let ar = ApiResource {
            group: group.into(),
            version: version.into(),
            api_version: api_version.into(),
            kind: kind.into(),
            plural: plural.into(),
        };
        let name = m["metadata"]["name"].as_str().unwrap_or_default();
        let api: kube::Api<DynamicObject> = if namespaced {
            let ns = m["metadata"]["namespace"].as_str().unwrap_or("default");
            kube::Api::namespaced_with(client.clone(), ns, &ar)
        } else {
            kube::Api::all_with(client.clone(), &ar)
        };
        let obj: DynamicObject = serde_json::from_value(m.clone())?;
        api.patch(
            name,
            &PatchParams::apply(FIELD_MANAGER).force(),
            &Patch::Apply(&obj),
        )
        .await
        .with_context(|| format!("applying {kind} {name}"))?;
        applied.push(format!("{kind} {name}"));
    }
    Ok(applied)
}

/// Runs `isthmus install`.
pub(crate) fn run(args: InstallArgs, out: &mut impl Write) -> anyhow::Result<ExitCode> {
    let mut values = default_values()?;
    for file in &args.values {
        let text =
            std::fs::read_to_string(file).with_context(|| format!("reading {}", file.display()))?;
        let over: Value =
            serde_yaml_ng::from_str(&text).with_context(|| format!("{}", file.display()))?;
        merge(&mut values, over);
    }
    set_value(&mut values, &format!("cluster={}", args.cluster))?;
    for s in &args.set {
        set_value(&mut values, s)?;
    }
    let cacerts = match &args.ca_dir {
        Some(dir) => Some(
            [
                "ca-cert.pem",
                "ca-key.pem",
                "root-cert.pem",
                "cert-chain.pem",
            ]
            .iter()
            .map(|f| {
                let path = dir.join(f);
                std::fs::read_to_string(&path)
                    .map(|t| (f.to_string(), t))
                    .with_context(|| format!("reading {}", path.display()))
            })
            .collect::<anyhow::Result<Vec<_>>>()?,
        ),
        None => None,
    };
    let manifests = manifests(&mut values, &args.namespace, cacerts.as_deref())?;
    if args.dry_run {
        for m in &manifests {
            writeln!(out, "---\n{}", serde_yaml_ng::to_string(m)?.trim_end())?;
        }
        return Ok(ExitCode::SUCCESS);
    }
    let rt = tokio::runtime::Runtime::new()?;
    let applied = rt.block_on(async {
        let options = kube::config::KubeConfigOptions {
            context: args.context.clone(),
            ..Default::default()
        };
        let config = kube::Config::from_kubeconfig(&options)
            .await
            .with_context(|| format!("kubeconfig context {:?}", args.context))?;
        apply(kube::Client::try_from(config)?, &manifests).await
    })?;
    for a in &applied {
        writeln!(out, "applied {a}")?;
    }
    writeln!(
        out,
        "isthmus installed in {} ({} objects). Label namespaces for sidecars: \
         kubectl label namespace <ns> isthmus-injection=enabled",
        args.namespace,
        applied.len()
    )?;
    Ok(ExitCode::SUCCESS)
}
