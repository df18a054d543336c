//! The chart rendered offline and checked: every manifest against the
//! Kubernetes API types (k8s-openapi, nothing dropped in a round trip), the
//! CRDs against the generated ones, every container's arguments against the
//! real `isthmus` flags, Services against their Deployments; then applied to
//! a fake API server with server-side apply.

use std::collections::BTreeSet;
use std::path::Path;

use clap::Parser as _;
use k8s_openapi::api::admissionregistration::v1::MutatingWebhookConfiguration;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{ConfigMap, Namespace, Secret, Service, ServiceAccount};
use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding, Role, RoleBinding};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::{Value, json};

use super::render::{Context, render};
use super::*;

fn chart_dir() -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/helm/isthmus")
}

/// The values of every configuration CI checks: defaults, kind's (NodePort,
/// federation on), and everything optional off (development CA).
fn value_sets() -> Vec<(&'static str, Value)> {
    let defaults = default_values().unwrap();
    let mut kind = defaults.clone();
    for s in [
        "gateway.serviceType=NodePort",
        "gateway.nodePort=31443",
        "federation.enabled=true",
        "locality=eu-west/eu-west-1a",
        "webhook.failurePolicy=Ignore",
    ] {
        set_value(&mut kind, s).unwrap();
    }
    let mut off = defaults.clone();
    for s in [
        "gateway.enabled=false",
        "dns.enabled=false",
        "webhook.enabled=false",
        "ca.secretName=",
    ] {
        set_value(&mut off, s).unwrap();
    }
    vec![("defaults", defaults), ("kind", kind), ("off", off)]
}

fn strip_nulls(v: &mut Value) {
    match v {
        Value::Object(map) => {
            map.retain(|_, v| !v.is_null());
            map.values_mut().for_each(strip_nulls);
        }
        Value::Array(list) => list.iter_mut().for_each(strip_nulls),
        _ => {}
    }
}

fn round_trip<T: DeserializeOwned + Serialize>(m: &Value) -> Result<(), String> {
    let typed: T = serde_json::from_value(m.clone()).map_err(|e| e.to_string())?;
    let mut back = serde_json::to_value(&typed).unwrap();
    let mut orig = m.clone();
    strip_nulls(&mut back);
    strip_nulls(&mut orig);
    if back == orig {
        Ok(())
    } else {
        Err(format!(
            "fields lost or changed in a round trip through k8s-openapi:\n{}\nvs\n{}",
            serde_yaml_ng::to_string(&orig).unwrap(),
            serde_yaml_ng::to_string(&back).unwrap()
        ))
    }
}

/// Checks a manifest against its Kubernetes type (an unknown field is dropped
/// by the typed round trip and reported).
fn validate(m: &Value) -> Result<(), String> {
    match (
        m["apiVersion"].as_str().unwrap_or(""),
        m["kind"].as_str().unwrap_or(""),
    ) {
        ("v1", "Namespace") => round_trip::<Namespace>(m),
        ("v1", "Secret") => round_trip::<Secret>(m),
        ("v1", "ServiceAccount") => round_trip::<ServiceAccount>(m),
        ("v1", "Service") => round_trip::<Service>(m),
        ("v1", "ConfigMap") => round_trip::<ConfigMap>(m),
        ("apps/v1", "Deployment") => round_trip::<Deployment>(m),
        ("rbac.authorization.k8s.io/v1", "ClusterRole") => round_trip::<ClusterRole>(m),
        ("rbac.authorization.k8s.io/v1", "ClusterRoleBinding") => {
            round_trip::<ClusterRoleBinding>(m)
        }
        ("rbac.authorization.k8s.io/v1", "Role") => round_trip::<Role>(m),
        ("rbac.authorization.k8s.io/v1", "RoleBinding") => round_trip::<RoleBinding>(m),
        ("admissionregistration.k8s.io/v1", "MutatingWebhookConfiguration") => {
            round_trip::<MutatingWebhookConfiguration>(m)
        }
        ("apiextensions.k8s.io/v1", "CustomResourceDefinition") => {
            round_trip::<CustomResourceDefinition>(m)
        }
        // Our own kind: what the controller's loader accepts (unknown fields refused).
        ("federation.isthmus.io/v1alpha1", "MeshFederation") => {
            isthmus_api::load::load_value(m.clone())
                .map(|_| ())
                .map_err(|e| format!("{e:?}"))
        }
        (v, k) => Err(format!("no schema check for {v} {k}")),
    }
}

fn name_of(m: &Value) -> String {
    format!(
        "{} {}",
        m["kind"].as_str().unwrap_or("?"),
        m["metadata"]["name"].as_str().unwrap_or("?")
    )
}

#[test]
fn embedded_chart_is_the_whole_chart_directory() {
    let mut on_disk = BTreeSet::new();
    for sub in ["", "crds", "templates"] {
        for e in std::fs::read_dir(chart_dir().join(sub)).unwrap() {
            let e = e.unwrap();
            if std::fs::metadata(e.path()).unwrap().is_file() {
                let name = e.file_name().into_string().unwrap();
                on_disk.insert(if sub.is_empty() {
                    name
                } else {
                    format!("{sub}/{name}")
                });
            }
        }
    }
    on_disk.remove("README.md");
    let embedded: BTreeSet<String> = CHART_FILES.iter().map(|(p, _)| p.to_string()).collect();
    assert_eq!(embedded, on_disk, "add new chart files to CHART_FILES");
    for (path, text) in CHART_FILES {
        assert_eq!(
            std::fs::read_to_string(chart_dir().join(path)).unwrap(),
            *text
        );
    }
}

#[test]
fn chart_crds_are_the_generated_ones() {
    assert_eq!(
        chart_file("crds/crds.yaml"),
        isthmus_api::crds::to_yaml(),
        "deploy/helm/isthmus/crds/crds.yaml must stay a symlink to deploy/crds/crds.yaml"
    );
}

#[test]
fn every_rendered_manifest_matches_its_kubernetes_schema() {
    for (set, values) in value_sets() {
        let mut values = values;
        let cacerts = [("ca-cert.pem".to_string(), "x".to_string())];
        let with_ca = values["ca"]["secretName"] != "";
        let manifests = manifests(
            &mut values,
            "isthmus-system",
            with_ca.then_some(&cacerts[..]),
        )
        .unwrap_or_else(|e| panic!("{set}: {e:#}"));
        let mut seen = BTreeSet::new();
        for m in &manifests {
            validate(m).unwrap_or_else(|e| panic!("{set}: {}: {e}", name_of(m)));
            let ns = m["metadata"]["namespace"].as_str();
            let (_, namespaced) = api_resource(
                m["apiVersion"].as_str().unwrap(),
                m["kind"].as_str().unwrap(),
            )
            .unwrap_or_else(|| panic!("{set}: {} cannot be applied", name_of(m)));
            assert_eq!(ns.is_some(), namespaced, "{set}: {} namespace", name_of(m));
            if namespaced {
                assert_eq!(ns, Some("isthmus-system"), "{set}: {}", name_of(m));
            }
            assert!(seen.insert(name_of(m)), "{set}: {} twice", name_of(m));
        }
        assert_eq!(manifests[0]["kind"], "CustomResourceDefinition");
    }
}

#[test]
fn values_switch_components_on_and_off() {
    let kinds = |values: &Value| -> BTreeSet<String> {
        render_chart(values, "isthmus-system")
            .unwrap()
            .iter()
            .map(name_of)
            .collect()
    };
    let sets = value_sets();
    let (defaults, kind, off) = (kinds(&sets[0].1), kinds(&sets[1].1), kinds(&sets[2].1));
    assert!(defaults.contains("Deployment isthmus-eastwestgateway"));
    assert!(
        defaults.contains("MutatingWebhookConfiguration isthmus-sidecar-injector-isthmus-system")
    );
    assert!(defaults.contains("Role isthmus-control-plane-cacerts"));
    assert!(defaults.contains("Deployment isthmus-federation"));
    assert!(
        defaults.contains("Role isthmus-federation-cacerts"),
        "the CA Secret, and only it"
    );
    assert!(kind.contains("Deployment isthmus-federation"));
    assert!(
        !off.contains("Deployment isthmus-federation"),
        "dev CA: cannot federate"
    );
    assert!(defaults.contains("MeshFederation mesh"));
    assert!(!off.contains("MeshFederation mesh"));
    assert!(
        !off.contains("Role isthmus-control-plane-cacerts"),
        "dev CA: no Secret to read"
    );
    assert!(off.contains("Deployment isthmus-control-plane"));
    for gone in [
        "Deployment isthmus-eastwestgateway",
        "Deployment isthmus-dns",
    ] {
        assert!(!off.contains(gone), "{gone}");
    }
    assert!(
        !off.iter()
            .any(|k| k.starts_with("MutatingWebhookConfiguration"))
    );
}

fn deployments(manifests: &[Value]) -> Vec<Deployment> {
    manifests
        .iter()
        .filter(|m| m["kind"] == "Deployment")
        .map(|m| serde_json::from_value(m.clone()).unwrap())
        .collect()
}

/// The rendered arguments of every component parse with the real `isthmus` flags.
#[test]
fn container_arguments_are_real_isthmus_flags() {
    let values = &value_sets()[1].1;
    for d in deployments(&render_chart(values, "isthmus-system").unwrap()) {
        let spec = d.spec.template.spec.unwrap();
        for c in spec.containers {
            // The gateway runs its thin binary, whose flags are `isthmus gateway`'s.
            let thin =
                c.command.as_deref() == Some(&["/usr/local/bin/isthmus-gateway".to_string()][..]);
            let mut argv = vec![if thin { "isthmus-gateway" } else { "isthmus" }.to_string()];
            argv.extend(c.args.unwrap_or_default());
            let parsed = if thin {
                #[derive(Debug, clap::Parser)]
                struct GatewayCli {
                    #[command(flatten)]
                    _args: isthmus_gateway::cli::GatewayArgs,
                }
                GatewayCli::try_parse_from(&argv).map(drop)
            } else {
                crate::Cli::try_parse_from(&argv).map(drop)
            };
            if let Err(e) = parsed {
                panic!("{}: {argv:?}: {e}", c.name);
            }
            assert_eq!(thin, c.name == "gateway", "{}", c.name);
        }
    }
}

/// What the webhook injects parses too (downward-API variables filled in).
#[test]
fn injected_arguments_are_real_isthmus_flags() {
    use isthmus_control_plane::inject::{Decision, Template, review};
    let pod = json!({"metadata": {"labels": {"app": "reviews", "version": "v2"}},
                     "spec": {"containers": [{"name": "app"}]}});
    let req = json!({"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview",
        "request": {"uid": "u", "operation": "CREATE", "namespace": "sample",
                    "resource": {"group": "", "version": "v1", "resource": "pods"}, "object": pod}});
    let template = Template {
        cluster: "east".into(),
        network: "network-east".into(),
        locality: "eu-west/eu-west-1a".into(),
        ..Template::default()
    };
    let (_, Decision::Inject(ops)) = review(req.to_string().as_bytes(), &template).unwrap() else {
        panic!("not injected");
    };
    let mut sidecars = 0;
    for op in ops
        .iter()
        .filter(|o| o["path"].as_str().unwrap().contains("ontainers"))
    {
        let c = if op["value"].is_array() {
            &op["value"][0]
        } else {
            &op["value"]
        };
        // The sidecar container runs the thin `isthmus-sidecar` binary (its
        // flags are `isthmus sidecar`'s, from the same library struct).
        let thin = c["command"][0].as_str() == Some("/usr/local/bin/isthmus-sidecar");
        let mut argv = vec![if thin { "isthmus-sidecar" } else { "isthmus" }.to_string()];
        for a in c["args"].as_array().unwrap() {
            argv.push(
                a.as_str()
                    .unwrap()
                    .replace("$(POD_NAMESPACE)", "sample")
                    .replace("$(POD_NAME)", "reviews-v2-abc")
                    .replace("$(POD_IP)", "10.244.1.7")
                    .replace("$(SERVICE_ACCOUNT)", "reviews"),
            );
        }
        if thin {
            #[derive(Debug, clap::Parser)]
            struct SidecarCli {
                #[command(flatten)]
                _args: isthmus_sidecar::cli::SidecarArgs,
            }
            SidecarCli::try_parse_from(&argv).unwrap_or_else(|e| panic!("{argv:?}: {e}"));
        } else {
            crate::Cli::try_parse_from(&argv).unwrap_or_else(|e| panic!("{argv:?}: {e}"));
        }
        sidecars += usize::from(thin);
    }
    assert_eq!(sidecars, 1, "the injected sidecar runs isthmus-sidecar");
}

/// Services select a Deployment and name ports its containers have; the
/// webhook points at the control plane's Service port.
#[test]
fn services_and_webhook_point_at_real_ports() {
    let manifests = render_chart(&value_sets()[1].1, "isthmus-system").unwrap();
    let deployments = deployments(&manifests);
    for m in manifests.iter().filter(|m| m["kind"] == "Service") {
        let svc: Service = serde_json::from_value(m.clone()).unwrap();
        let spec = svc.spec.unwrap();
        let selector = spec.selector.unwrap();
        let d = deployments
            .iter()
            .find(|d| {
                let labels = d
                    .spec
                    .template
                    .metadata
                    .as_ref()
                    .unwrap()
                    .labels
                    .as_ref()
                    .unwrap();
                selector.iter().all(|(k, v)| labels.get(k) == Some(v))
            })
            .unwrap_or_else(|| panic!("Service {:?} selects no Deployment", svc.metadata.name));
        let ports: Vec<_> = d
            .spec
            .template
            .spec
            .as_ref()
            .unwrap()
            .containers
            .iter()
            .flat_map(|c| c.ports.clone().unwrap_or_default())
            .collect();
        for p in spec.ports.unwrap() {
            use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
            let Some(IntOrString::String(target)) = &p.target_port else {
                panic!(
                    "Service {:?} port {:?}: use a named targetPort",
                    svc.metadata.name, p.name
                );
            };
            let protocol = p.protocol.clone().unwrap_or("TCP".into());
            assert!(
                ports.iter().any(|cp| cp.name.as_ref() == Some(target)
                    && cp.protocol.clone().unwrap_or("TCP".into()) == protocol),
                "Service {:?}: no container port {target}/{protocol}",
                svc.metadata.name
            );
        }
    }
    let hook: MutatingWebhookConfiguration = serde_json::from_value(
        manifests
            .iter()
            .find(|m| m["kind"] == "MutatingWebhookConfiguration")
            .unwrap()
            .clone(),
    )
    .unwrap();
    let w = &hook.webhooks.unwrap()[0];
    let svc = w.client_config.service.as_ref().unwrap();
    assert_eq!(
        (svc.name.as_str(), svc.port, svc.path.as_deref()),
        ("isthmus-control-plane", Some(443), Some("/inject"))
    );
    assert_eq!(w.failure_policy.as_deref(), Some("Ignore"));
    let selector = w
        .namespace_selector
        .as_ref()
        .unwrap()
        .match_labels
        .as_ref()
        .unwrap();
    assert_eq!(selector["isthmus-injection"], "enabled");
}

#[test]
fn renderer_follows_go_template_rules_and_refuses_the_rest() {
    let ctx = Context {
        values: json!({"a": {"b": "x y", "n": 15443, "zero": 0, "empty": "", "on": true,
                             "list": ["h:1", "h:2"], "none": []}}),
        release_name: "isthmus".into(),
        release_namespace: "ns".into(),
        chart_version: "0.1.0".into(),
        app_version: "0.1.0".into(),
    };
    let r = |src: &str| render("t.yaml", src, &ctx);
    assert_eq!(r("k: {{ .Values.a.b | quote }}\n").unwrap(), "k: \"x y\"\n");
    assert_eq!(
        r("p: {{ .Values.a.n }} ns: {{ .Release.Namespace }}").unwrap(),
        "p: 15443 ns: ns"
    );
    assert_eq!(
        r("a\n{{- if .Values.a.zero }}\nzero\n{{- else }}\nnonzero\n{{- end }}\nb").unwrap(),
        "a\nnonzero\nb"
    );
    assert_eq!(r("{{- if .Values.a.empty }}x{{ end }}y").unwrap(), "y");
    assert_eq!(r("{{ if .Values.a.on -}}\n   on{{ end }}").unwrap(), "on");
    assert_eq!(r("{{/* note */}}z").unwrap(), "z");
    assert_eq!(
        r("l: {{ .Values.a.list | toJson }} e: {{ .Values.a.none | toJson }}").unwrap(),
        r#"l: ["h:1","h:2"] e: []"#
    );
    for (bad, why) in [
        ("{{ .Values.a.missing }}", "no value"),
        ("{{ .Values.a }}", "map or list"),
        ("{{ toYaml .Values.a }}", "unsupported template expression"),
        ("{{ .Values.a.b | upper }}", "unsupported template function"),
        ("{{ if .Values.a.on }}x", "if without end"),
        ("x{{ end }}", "end without if"),
        ("{{ .Values.a.b", "unclosed"),
    ] {
        let e = r(bad).unwrap_err().to_string();
        assert!(e.contains(why), "{bad}: {e}");
    }
}

#[test]
fn set_values_are_typed_like_helm_set() {
    let mut v = json!({"gateway": {"enabled": true, "serviceType": "LoadBalancer"}});
    set_value(&mut v, "gateway.enabled=false").unwrap();
    set_value(&mut v, "gateway.nodePort=31443").unwrap();
    set_value(&mut v, "network=net-1").unwrap();
    assert_eq!(
        v,
        json!({"gateway": {"enabled": false, "serviceType": "LoadBalancer", "nodePort": 31443}, "network": "net-1"})
    );
    assert!(set_value(&mut v, "novalue").is_err());
}

#[tokio::test]
async fn install_applies_everything_with_server_side_apply() {
    let server = isthmus_test_support::apiserver::FakeApiServer::start().await;
    for (v, k, p, n) in [
        ("v1", "Secret", "secrets", true),
        ("v1", "ServiceAccount", "serviceaccounts", true),
        ("v1", "ConfigMap", "configmaps", true),
        ("apps/v1", "Deployment", "deployments", true),
        (
            "rbac.authorization.k8s.io/v1",
            "ClusterRole",
            "clusterroles",
            false,
        ),
        (
            "rbac.authorization.k8s.io/v1",
            "ClusterRoleBinding",
            "clusterrolebindings",
            false,
        ),
        ("rbac.authorization.k8s.io/v1", "Role", "roles", true),
        (
            "rbac.authorization.k8s.io/v1",
            "RoleBinding",
            "rolebindings",
            true,
        ),
        (
            "admissionregistration.k8s.io/v1",
            "MutatingWebhookConfiguration",
            "mutatingwebhookconfigurations",
            false,
        ),
        (
            "apiextensions.k8s.io/v1",
            "CustomResourceDefinition",
            "customresourcedefinitions",
            false,
        ),
        (
            "federation.isthmus.io/v1alpha1",
            "MeshFederation",
            "meshfederations",
            true,
        ),
    ] {
        server.register(v, k, p, n);
    }
    let mut values = default_values().unwrap();
    let m = manifests(&mut values, "isthmus-system", None).unwrap();
    let applied = apply(server.client(), &m).await.unwrap();
    assert_eq!(applied.len(), m.len());
    // Applying again converges (server-side apply is idempotent).
    apply(server.client(), &m).await.unwrap();
    let cp = server
        .get(
            "apps/v1",
            "Deployment",
            Some("isthmus-system"),
            "isthmus-control-plane",
        )
        .expect("control plane Deployment");
    assert_eq!(
        cp["spec"]["template"]["spec"]["serviceAccountName"],
        "isthmus-control-plane"
    );
    let hook = server
        .get(
            "admissionregistration.k8s.io/v1",
            "MutatingWebhookConfiguration",
            None,
            "isthmus-sidecar-injector-isthmus-system",
        )
        .unwrap();
    let bundle = hook["webhooks"][0]["clientConfig"]["caBundle"]
        .as_str()
        .unwrap();
    assert!(!bundle.is_empty(), "caBundle filled by install");
    let tls = server
        .get(
            "v1",
            "Secret",
            Some("isthmus-system"),
            "isthmus-webhook-tls",
        )
        .unwrap();
    assert!(tls["data"]["tls.key"].as_str().is_some());
    assert!(
        server
            .get("v1", "Namespace", None, "isthmus-system")
            .is_some()
    );
    assert!(
        server
            .requests()
            .iter()
            .filter(|r| r.method == "PATCH")
            .all(|r| r.query.contains("fieldManager=isthmus-install")),
        "every write is a server-side apply by isthmus-install"
    );
}

/// The chart's MeshFederation is what `isthmus link` reads: this cluster's local section
/// from the values, and no peers (server-side apply then leaves the peers link wrote alone
/// on an upgrade; the fake API server's apply replaces whole objects, so that part is not
/// shown here).
#[test]
fn mesh_federation_is_rendered_without_peers() {
    let mut values = default_values().unwrap();
    for s in [
        "cluster=west",
        "network=net-west",
        "locality=us-west/zone-a",
        "trustDomain=west.isthmus.local",
    ] {
        set_value(&mut values, s).unwrap();
    }
    merge(
        &mut values,
        json!({"federation": {"gatewayAddresses": ["203.0.113.7:15443"]}}),
    );
    let m = manifests(&mut values, "isthmus-system", None).unwrap();
    let mf = m
        .iter()
        .find(|m| m["kind"] == "MeshFederation")
        .expect("rendered");
    assert_eq!(mf["metadata"]["name"], "mesh");
    assert_eq!(
        mf["spec"],
        json!({"local": {"cluster": "west", "network": "net-west", "locality": "us-west/zone-a",
               "trustDomain": "west.isthmus.local", "gatewayAddresses": ["203.0.113.7:15443"],
               "federationListen": "0.0.0.0:15021"}})
    );
    let defaults = render_chart(&default_values().unwrap(), "isthmus-system").unwrap();
    let mf = defaults
        .iter()
        .find(|m| m["kind"] == "MeshFederation")
        .unwrap();
    assert_eq!(mf["spec"]["local"]["gatewayAddresses"], json!([]));

    assert!(
        mf["spec"].get("peers").is_none(),
        "peers are link's, never the chart's"
    );
}
