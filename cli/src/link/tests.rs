use clap::Parser;
use isthmus_api::Resource;
use isthmus_api::load::load_yaml;

use super::*;

/// `isthmus link`'s arguments as clap parses them.
#[derive(Debug, Parser)]
struct Cmd {
    #[command(flatten)]
    link: LinkArgs,
}

pub(super) fn parse(args: &[&str]) -> LinkArgs {
    let argv = std::iter::once("link").chain(args.iter().copied());
    Cmd::try_parse_from(argv)
        .unwrap_or_else(|e| panic!("{args:?}: {e}"))
        .link
}

fn mode_error(args: &[&str]) -> String {
    let args = parse(args);
    mode(&args).expect_err("a mode error").to_string()
}

#[test]
fn mode_is_two_names_or_two_contexts() {
    let args = parse(&["east", "west", "--lab-dir", "/tmp/lab"]);
    assert_eq!(mode(&args).unwrap(), Mode::Directory("east", "west"));
    let args = parse(&[
        "--context",
        "kind-east",
        "--context",
        "kind-west",
        "--gateway-address",
        "kind-east=172.18.0.2:31443",
    ]);
    assert_eq!(
        mode(&args).unwrap(),
        Mode::Kubernetes("kind-east", "kind-west")
    );
    assert_eq!(args.namespace, "isthmus-system");
    assert_eq!(args.ca_secret, "cacerts");

    for (args, expected) in [
        (&["--context", "a"][..], "exactly two kubeconfig contexts"),
        (
            &["--context", "a", "--context", "b", "--context", "c"],
            "got 3",
        ),
        (&["--context", "a", "--context", "a"], "with itself"),
        (&["east", "--context", "a", "--context", "b"], "not both"),
        (&["east"], "links two clusters"),
        (&[], "name two clusters"),
        (
            &["east", "west", "--gateway-address", "east=1.2.3.4:15443"],
            "only apply with --context",
        ),
        (
            &["--context", "a", "--context", "b", "--lab-dir", "/tmp"],
            "only apply to directory mode",
        ),
    ] {
        let e = mode_error(args);
        assert!(e.contains(expected), "{args:?}: {e}");
    }
}

const EAST: &str = "# lab\napiVersion: federation.isthmus.io/v1alpha1\nkind: MeshFederation\nmetadata: {name: mesh, namespace: isthmus-system}\nspec:\n  local:\n    cluster: east\n    network: net-east\n    locality: r1/z1\n    trustDomain: east.isthmus.local\n    gatewayAddresses: [\"127.0.10.2:15443\"]\n    federationListen: \"127.0.10.4:15021\"\n  peers: []\n---\napiVersion: multicluster.x-k8s.io/v1alpha1\nkind: ServiceExport\nmetadata: {name: helloworld, namespace: sample}\n";

#[test]
fn link_writes_both_peer_entries_and_keeps_other_documents() {
    let dir = tempfile::tempdir().expect("tempdir");
    for (name, octet) in [("east", 10), ("west", 20)] {
        let d = dir.path().join("clusters").join(name).join("config");
        std::fs::create_dir_all(&d).expect("mkdir");
        let text = EAST
            .replace("east", name)
            .replace("127.0.10.", &format!("127.0.{octet}."));
        std::fs::write(d.join("federation.yaml"), text).expect("write");
    }
    let lab = dir.path().display().to_string();
    let args = parse(&["east", "west", "--lab-dir", &lab]);
    let mut out = Vec::new();
    link(&args, &mut out).expect("link");
    // Twice is the same as once.
    link(&args, &mut out).expect("link again");
    let east = dir.path().join("clusters/east/config/federation.yaml");
    let text = std::fs::read_to_string(&east).expect("read");
    let loaded = load_yaml(None, &text);
    assert!(loaded.errors.is_empty(), "{:?}", loaded.errors);
    assert_eq!(loaded.resources.len(), 2, "the ServiceExport stays");
    let Resource::MeshFederation(mf) = &loaded.resources[0] else {
        panic!("first document is the MeshFederation")
    };
    assert_eq!(mf.spec.peers.len(), 1);
    let west = &mf.spec.peers[0];
    assert_eq!(west.name, "west");
    assert_eq!(west.federation_endpoint, "127.0.20.4:15021");
    assert_eq!(west.gateway_addresses, ["127.0.20.2:15443"]);
    assert_eq!(west.trust_domain, "west.isthmus.local");
}
