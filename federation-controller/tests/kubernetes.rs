//! Kubernetes mode: two real federation controllers, each against its own
//! fake API server (list+watch, server-side apply, /status, finalizers over
//! real HTTP), linked over real mTLS on loopback with CAs from `cacerts`
//! Secrets. Export → ServiceEntry in the peer's API server, MeshFederation
//! status, unexport, MeshFederation deletion (finalizer), API-server restart,
//! CA Secret reload.

mod support;

use std::time::Duration;

use isthmus_federation::CaSource;
use isthmus_test_support::apiserver::RequestAction;
use serde_json::Value;
use support::k8s::*;
use support::*;

const FAST: Duration = Duration::from_secs(1);
const SLOW: Duration = Duration::from_secs(10);

/// east and west, each with its own API server, linked both ways, gateways up, east
/// serving `helloworld` (not exported yet); both connected.
async fn east_west() -> (KubeCluster, KubeCluster) {
    let net = test_net();
    let root = root();
    let (e, w) = (
        ClusterSpec::new("east", net, 1),
        ClusterSpec::new("west", net, 2),
    );
    let mut east = KubeCluster::new(e.clone(), &root).await;
    let mut west = KubeCluster::new(w.clone(), &root).await;
    east.link(&[&w]);
    west.link(&[&e]);
    east.add_service("helloworld", 2);
    east.base.start_gateway().await;
    west.base.start_gateway().await;
    east.start().await;
    west.start().await;
    eventually("west connected to east", SLOW, || {
        west.base
            .running()
            .status()
            .peers
            .iter()
            .find(|p| p.name == "east" && p.connection == "CONNECTED")
            .map(|_| ())
    })
    .await;
    (east, west)
}

fn finalizers(mf: &Value) -> Vec<String> {
    mf["metadata"]["finalizers"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|f| f.as_str().map(str::to_owned))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn export_applies_a_service_entry_in_the_peer_and_status_follows() {
    let (mut east, mut west) = east_west().await;
    for c in [&east, &west] {
        let (f, _) = eventually("finalizer added", SLOW, || {
            let f = finalizers(&c.mesh()?);
            (!f.is_empty()).then_some(f)
        })
        .await;
        assert_eq!(f, ["federation.isthmus.io/cleanup"]);
    }
    assert!(west.imported().is_empty(), "nothing exported yet");

    east.export("helloworld");
    let (se, took) = eventually("helloworld.east in west's API server", SLOW, || {
        west.imported().remove("helloworld.east")
    })
    .await;
    println!("export in east's API server → ServiceEntry in west's: {took:?}");
    assert!(took < FAST, "export → import took {took:?}");
    assert_eq!(se["metadata"]["namespace"], "sample");
    assert_eq!(
        se["metadata"]["labels"]["federation.isthmus.io/peer"],
        "east"
    );
    let managers: Vec<&str> = se["metadata"]["managedFields"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|m| m["manager"].as_str())
        .collect();
    assert_eq!(
        managers,
        ["isthmus-federation"],
        "server-side applied by us"
    );
    assert_eq!(
        se["spec"]["hosts"],
        serde_json::json!([
            "helloworld.sample.global",
            "helloworld.sample.svc.clusterset.local"
        ])
    );
    let ep = &se["spec"]["endpoints"][0];
    assert_eq!(ep["address"], east.spec().ip.to_string());
    assert_eq!(ep["weight"], 2, "two ready endpoints behind east's gateway");
    assert!(east.imported().is_empty(), "nothing flows back");

    // The status subresource of west's MeshFederation says what happened.
    let (peer, _) = eventually(
        "east Connected with 1 import in west's status",
        SLOW,
        || {
            west.peer_status("east")
                .filter(|p| p["connection"] == "Connected" && p["importedServices"] == 1)
        },
    )
    .await;
    assert_eq!(peer["exportedServices"], 1);
    assert!(
        peer["lastSync"].as_str().is_some_and(|t| t.ends_with('Z')),
        "{peer}"
    );
    assert!(peer["probeLatencyMs"].as_f64().is_some(), "{peer}");
    assert!(peer.get("lastError").is_none(), "{peer}");
    let mf = west.mesh().unwrap();
    assert_eq!(
        mf["status"]["observedGeneration"],
        mf["metadata"]["generation"]
    );
    let ready = &mf["status"]["conditions"][0];
    assert_eq!(
        (&ready["type"], &ready["status"], &ready["reason"]),
        (
            &Value::from("Ready"),
            &Value::from("True"),
            &Value::from("PeersConnected")
        )
    );
    let status_writes: Vec<_> = west
        .api
        .requests()
        .into_iter()
        .filter(|r| r.action == RequestAction::Patch && r.path.ends_with("/status"))
        .collect();
    assert!(!status_writes.is_empty());
    for r in &status_writes {
        assert!(r.path.contains("/meshfederations/mesh/status"), "{r:?}");
        assert_eq!(
            r.param("fieldManager").as_deref(),
            Some("isthmus-federation")
        );
    }

    east.unexport("helloworld");
    let ((), took) = eventually("helloworld.east removed from west", SLOW, || {
        west.imported().is_empty().then_some(())
    })
    .await;
    println!("unexport → ServiceEntry deleted: {took:?}");
    eventually("west's status shows no import", SLOW, || {
        west.peer_status("east")
            .filter(|p| p["importedServices"] == 0)
    })
    .await;
    east.base.stop().await;
    west.base.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deleting_the_mesh_federation_removes_its_imports_then_releases_it() {
    let (mut east, mut west) = east_west().await;
    east.add_service("reviews", 1);
    east.export("helloworld");
    east.export("reviews");
    eventually("both imported in west", SLOW, || {
        (west.imported().len() == 2).then_some(())
    })
    .await;
    eventually("finalizer on west's MeshFederation", SLOW, || {
        (!finalizers(&west.mesh()?).is_empty()).then_some(())
    })
    .await;

    let deleting = west
        .api
        .delete(MF_API, "MeshFederation", Some(NS), MESH)
        .expect("west's MeshFederation");
    assert!(
        deleting["metadata"]["deletionTimestamp"].is_string(),
        "the finalizer holds the object: {deleting}"
    );
    let ((), took) = eventually("west's MeshFederation gone", SLOW, || {
        west.mesh().is_none().then_some(())
    })
    .await;
    println!("MeshFederation deleted → imports removed and finalizer released: {took:?}");
    assert!(
        west.imported().is_empty(),
        "the finalizer was released before every import was removed: {:?}",
        west.imported().keys()
    );
    let requests = west.api.requests();
    let last_se_delete = requests
        .iter()
        .rposition(|r| r.action == RequestAction::Delete && r.path.contains("/serviceentries/"))
        .expect("ServiceEntries deleted through the API");
    let release = requests
        .iter()
        .rposition(|r| {
            r.action == RequestAction::Patch && r.path.ends_with("/meshfederations/mesh")
        })
        .expect("finalizer released with a patch");
    assert!(last_se_delete < release, "imports removed first");
    // east is untouched.
    assert!(east.mesh().is_some());
    east.base.stop().await;
    west.base.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_server_restarts_resync() {
    let (mut east, mut west) = east_west().await;
    east.export("helloworld");
    eventually("imported in west", SLOW, || {
        west.imported().remove("helloworld.east")
    })
    .await;

    // While west's API server is down, someone deletes the import and history is
    // compacted: the watch cannot resume, the source re-lists, the import is written again.
    west.api.stop().await;
    west.api
        .delete(SE_API, "ServiceEntry", Some("sample"), "helloworld.east")
        .expect("import existed");
    west.api.compact();
    west.api.start_again().await;
    let (_, took) = eventually("import restored in west", SLOW, || {
        west.imported().remove("helloworld.east")
    })
    .await;
    println!("west API server back (re-list) → import restored: {took:?}");

    // east's API server restarts; what changes there afterwards still reaches west.
    east.api.restart().await;
    east.add_service("reviews", 1);
    east.export("reviews");
    let (_, took) = eventually("reviews imported after east's restart", SLOW, || {
        west.imported().remove("reviews.east")
    })
    .await;
    println!("east API server restarted → new export imported in west: {took:?}");
    eventually("west's status counts both", SLOW, || {
        west.peer_status("east")
            .filter(|p| p["importedServices"] == 2 && p["connection"] == "Connected")
    })
    .await;
    east.base.stop().await;
    west.base.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_ca_comes_from_its_secret_and_follows_it() {
    let net = test_net();
    let root = root();
    let mut east = KubeCluster::new(ClusterSpec::new("east", net, 1), &root).await;
    east.link(&[]);

    let mut missing = east.options();
    missing.ca = CaSource::Secret(format!("{NS}/nope"));
    let e = isthmus_federation::start(missing, tokio_util::sync::CancellationToken::new())
        .await
        .expect_err("no such Secret");
    assert!(
        e.to_string().starts_with("CA Secret isthmus-system/nope: "),
        "{e}"
    );
    let mut malformed = east.options();
    malformed.ca = CaSource::Secret("cacerts".into());
    let e = isthmus_federation::start(malformed, tokio_util::sync::CancellationToken::new())
        .await
        .expect_err("not namespace/name");
    assert_eq!(
        e.to_string(),
        "CA Secret cacerts: must be <namespace>/<name>"
    );

    east.start().await;
    let bundle = east.base.trust_bundle_out();
    let roots = |path: &std::path::Path| {
        std::fs::read_to_string(path)
            .unwrap_or_default()
            .matches("BEGIN CERTIFICATE")
            .count()
    };
    eventually("trust bundle written", SLOW, || {
        (roots(&bundle) == 1).then_some(())
    })
    .await;

    // A root rotation step: the Secret now trusts the old and a new root.
    let next = support::root();
    let both = root
        .trust_bundle()
        .unwrap()
        .merged(&next.trust_bundle().unwrap());
    let dir = tempfile::tempdir().unwrap();
    write_ca(dir.path(), &root, "east", &east.spec().trust_domain, &both);
    east.api.apply(cacerts_secret(dir.path()));
    let (_, took) = eventually("the new root trusted", SLOW, || {
        (roots(&bundle) == 2).then_some(())
    })
    .await;
    println!("CA Secret changed → reloaded: {took:?}");
    east.base.stop().await;
}
