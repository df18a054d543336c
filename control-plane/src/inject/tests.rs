use serde_json::{Value, json};

use super::patch::decide;
use super::{Decision, Template};

fn ops(pod: &Value) -> Vec<Value> {
    match decide(pod, &Template::default()) {
        Decision::Inject(ops) => ops,
        Decision::Skip(reason) => panic!("skipped: {reason}"),
    }
}

#[test]
fn missing_lists_and_maps_are_created_whole() {
    let pod = json!({"metadata": {}, "spec": {"containers": [{"name": "app"}]}});
    let ops = ops(&pod);
    let paths: Vec<&str> = ops.iter().map(|o| o["path"].as_str().unwrap()).collect();
    assert_eq!(
        paths,
        [
            "/metadata/annotations",
            "/spec/initContainers",
            "/spec/containers/-",
            "/spec/volumes"
        ]
    );
}

#[test]
fn existing_maps_get_an_escaped_key() {
    let pod = json!({
        "metadata": {"annotations": {"a": "b"}},
        "spec": {"containers": [], "initContainers": [], "volumes": []},
    });
    let ops = ops(&pod);
    assert_eq!(
        ops[0]["path"],
        "/metadata/annotations/sidecar.isthmus.io~1status"
    );
    assert!(
        ops[1..]
            .iter()
            .all(|o| o["path"].as_str().unwrap().ends_with("/-"))
    );
}

#[test]
fn opt_out_host_network_and_reinjection_are_skipped() {
    let t = Template::default();
    for (pod, why) in [
        (
            json!({"metadata": {"annotations": {"sidecar.istio.io/inject": "false"}}, "spec": {"containers": []}}),
            "opted out",
        ),
        (
            json!({"metadata": {"labels": {"sidecar.istio.io/inject": "False"}}, "spec": {"containers": []}}),
            "opted out",
        ),
        (
            json!({"metadata": {}, "spec": {"hostNetwork": true, "containers": []}}),
            "hostNetwork",
        ),
        (
            json!({"metadata": {}, "spec": {"containers": [{"name": "isthmus-proxy"}]}}),
            "already injected",
        ),
        (json!({"metadata": {}, "spec": {}}), "no spec.containers"),
    ] {
        match decide(&pod, &t) {
            Decision::Skip(reason) => assert!(reason.contains(why), "{reason} for {pod}"),
            Decision::Inject(_) => panic!("injected {pod}"),
        }
    }
    // Anything but an explicit "false" injects.
    let pod = json!({"metadata": {"annotations": {"sidecar.istio.io/inject": "true"}}, "spec": {"containers": []}});
    assert!(matches!(decide(&pod, &t), Decision::Inject(_)));
}

#[test]
fn capture_annotations_reach_the_init_container() {
    let pod = json!({
        "metadata": {"annotations": {"traffic.sidecar.istio.io/excludeOutboundPorts": "5432,6379"}},
        "spec": {"containers": []},
    });
    let init = &ops(&pod)[1]["value"][0];
    let args: Vec<&str> = init["args"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a.as_str().unwrap())
        .collect();
    assert!(
        args.contains(&"--exclude-outbound-ports=5432,6379"),
        "{args:?}"
    );
}
