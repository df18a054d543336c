use isthmus_api::load::load_yaml;

use super::*;
use crate::registry::Protocol;

fn sidecars(yaml: &str) -> (Sidecars, Vec<String>) {
    let loaded = load_yaml(Some("sc.yaml"), yaml);
    assert!(loaded.errors.is_empty(), "{:?}", loaded.errors);
    let resources: Vec<Arc<Resource>> = loaded.resources.into_iter().map(Arc::new).collect();
    let mut warnings = Vec::new();
    let s = Sidecars::build(&resources, "istio-system", &mut warnings);
    (s, warnings)
}

fn sidecar(ns: &str, name: &str, selector: Option<&str>, hosts: &str) -> String {
    let selector = selector
        .map(|s| format!("  workloadSelector:\n    labels: {{{s}}}\n"))
        .unwrap_or_default();
    format!(
        "apiVersion: networking.istio.io/v1\nkind: Sidecar\nmetadata: {{name: {name}, namespace: {ns}}}\nspec:\n{selector}  egress:\n  - hosts: [{hosts}]\n---\n"
    )
}

fn proxy(ns: &str, labels: &[(&str, &str)]) -> ProxyInfo {
    ProxyInfo {
        id: format!("sidecar~10.0.0.1~w.{ns}~{ns}.svc.cluster.local"),
        role: ProxyRole::Sidecar,
        ip: None,
        workload: "w".into(),
        namespace: ns.into(),
        cluster: "east".into(),
        network: String::new(),
        service_account: "default".into(),
        labels: labels
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
        locality: Default::default(),
    }
}

fn chosen(s: &Sidecars, p: &ProxyInfo) -> Option<String> {
    s.select(p, "istio-system").map(|s| s.name.to_string())
}

#[test]
fn selector_then_namespace_default_then_root_default() {
    let yaml = [
        sidecar("istio-system", "mesh", None, "\"./*\""),
        sidecar("sample", "default", None, "\"./*\""),
        sidecar("sample", "sleep", Some("app: sleep"), "\"./*\""),
        sidecar("other", "only-web", Some("app: web"), "\"./*\""),
    ]
    .concat();
    let (s, warnings) = sidecars(&yaml);
    assert!(warnings.is_empty(), "{warnings:?}");
    assert_eq!(
        chosen(&s, &proxy("sample", &[("app", "sleep"), ("v", "1")])).as_deref(),
        Some("sample/sleep")
    );
    assert_eq!(
        chosen(&s, &proxy("sample", &[("app", "web")])).as_deref(),
        Some("sample/default")
    );
    // A selector of another namespace never applies; the root default does.
    assert_eq!(
        chosen(&s, &proxy("other", &[("app", "sleep")])).as_deref(),
        Some("istio-system/mesh")
    );
    assert_eq!(
        chosen(&s, &proxy("other", &[("app", "web")])).as_deref(),
        Some("other/only-web")
    );
    let mut gateway = proxy("sample", &[("app", "sleep")]);
    gateway.role = ProxyRole::Gateway;
    assert_eq!(chosen(&s, &gateway), None, "gateways are never scoped");
}

#[test]
fn no_sidecar_means_no_scope() {
    let (s, _) = sidecars(&sidecar("sample", "sleep", Some("app: sleep"), "\"./*\""));
    assert_eq!(chosen(&s, &proxy("sample", &[("app", "web")])), None);
    assert_eq!(chosen(&s, &proxy("other", &[])), None);
    assert!(!s.is_empty());
}

#[test]
fn ties_pick_the_first_by_name_and_warn_naming_both() {
    let yaml = [
        sidecar("sample", "zz", None, "\"./*\""),
        sidecar("sample", "aa", None, "\"./*\""),
        sidecar("sample", "sel-b", Some("app: sleep"), "\"./*\""),
        sidecar("sample", "sel-a", Some("app: sleep, v: \"1\""), "\"./*\""),
        sidecar("sample", "disjoint", Some("app: web"), "\"./*\""),
        sidecar("istio-system", "rooted", Some("app: sleep"), "\"./*\""),
    ]
    .concat();
    let (s, warnings) = sidecars(&yaml);
    assert_eq!(
        chosen(&s, &proxy("sample", &[])).as_deref(),
        Some("sample/aa")
    );
    assert_eq!(
        chosen(&s, &proxy("sample", &[("app", "sleep"), ("v", "1")])).as_deref(),
        Some("sample/sel-a")
    );
    assert_eq!(
        chosen(&s, &proxy("sample", &[("app", "sleep")])).as_deref(),
        Some("sample/sel-b")
    );
    assert_eq!(
        warnings,
        [
            "Sidecar istio-system/rooted: in the root namespace a workloadSelector limits it to workloads of istio-system; only Sidecars without one are mesh-wide",
            "Sidecar sample/aa and Sidecar sample/zz both have no workloadSelector in namespace sample; sample/aa (first by name) applies",
            "Sidecar sample/sel-a and Sidecar sample/sel-b may select the same workloads; sample/sel-a (first by name) applies to those",
        ]
    );
}

fn service(host: &str, ns: &str, ports: &[(u16, Protocol)]) -> Service {
    Service::for_test(host, ns, ports)
}

#[test]
fn ports_hosts_and_namespaces_decide_what_is_imported() {
    let yaml = r#"apiVersion: networking.istio.io/v1
kind: Sidecar
metadata: {name: s, namespace: sample}
spec:
  egress:
  - port: {number: 9080, protocol: HTTP}
    hosts: [prod/reviews.prod.svc.cluster.local]
  - port: {number: 5432}
    hosts: ["~/*"]
  - hosts: ["./*", "*/*.example.com", "west/*"]
"#;
    let (s, _) = sidecars(yaml);
    let scope = s.select(&proxy("sample", &[]), "istio-system").unwrap();
    let admits = |svc: &Service, port: u16| scope.admits(svc, svc.port(port).unwrap());
    let http = Protocol::Http;
    let own = service(
        "a.sample.svc.cluster.local",
        "sample",
        &[(80, http), (9080, http), (5432, Protocol::Tcp)],
    );
    assert!(admits(&own, 80));
    assert!(!admits(&own, 9080), "port 9080 has its own listener");
    assert!(!admits(&own, 5432), "~/* imports nothing");
    assert!(scope.admits_any(&own));
    let reviews = service(
        "reviews.prod.svc.cluster.local",
        "prod",
        &[(9080, http), (80, http)],
    );
    assert!(admits(&reviews, 9080));
    assert!(!admits(&reviews, 80));
    let tcp_reviews = service(
        "reviews.prod.svc.cluster.local",
        "prod",
        &[(9080, Protocol::Tcp)],
    );
    assert!(!admits(&tcp_reviews, 9080), "the listener is HTTP");
    let ext = service("api.example.com", "ext", &[(443, Protocol::Tls)]);
    assert!(admits(&ext, 443));
    // A .global name counts by the namespace in the name, wherever it is declared.
    let global = service("hello.west.global", "isthmus-system", &[(80, http)]);
    assert!(admits(&global, 80));
    let global_elsewhere = service("hello.east.global", "west", &[(80, http)]);
    assert!(!admits(&global_elsewhere, 80));
    let clusterset = service("hello.west.svc.clusterset.local", "x", &[(80, http)]);
    assert!(admits(&clusterset, 80));
    let unrelated = service("db.prod.svc.cluster.local", "prod", &[(80, http)]);
    assert!(!scope.admits_any(&unrelated));
}

#[test]
fn empty_egress_imports_everything() {
    let yaml = "apiVersion: networking.istio.io/v1\nkind: Sidecar\nmetadata: {name: s, namespace: sample}\nspec:\n  workloadSelector: {labels: {app: a}}\n";
    let (s, _) = sidecars(yaml);
    let scope = s
        .select(&proxy("sample", &[("app", "a")]), "istio-system")
        .unwrap();
    let svc = service("x.y.svc.cluster.local", "y", &[(80, Protocol::Http)]);
    assert!(scope.admits_any(&svc));
}
