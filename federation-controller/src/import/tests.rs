use std::collections::HashMap;

use isthmus_api::federation::{ImportPolicy, LocalCluster};

use super::*;
use crate::state::Gateway;

fn spec() -> PeerSpec {
    PeerSpec {
        name: "west".into(),
        federation_endpoint: "127.0.20.1:15021".into(),
        gateway_addresses: vec!["127.0.20.1:15443".into(), "gw.west.example:15443".into()],
        network: "net-west".into(),
        locality: "us-west/zone-a".into(),
        trust_domain: "west.isthmus.local".into(),
        trust_bundle: None,
    }
}

/// A catalog from a peer that did not filter anything, and lies about topology.
fn catalog() -> proto::Catalog {
    proto::Catalog {
        cluster: "west".into(),
        version: 3,
        services: vec![
            proto::ExportedService {
                name: "helloworld".into(),
                namespace: "sample".into(),
                ports: vec![
                    proto::Port {
                        name: "http".into(),
                        number: 5000,
                        protocol: "HTTP".into(),
                    },
                    proto::Port {
                        name: "bad".into(),
                        number: 0,
                        protocol: "HTTP".into(),
                    },
                    proto::Port {
                        name: "weird".into(),
                        number: 6000,
                        protocol: "SMOKE-SIGNALS".into(),
                    },
                ],
                groups: vec![
                    proto::EndpointGroup {
                        locality: String::new(),
                        labels: HashMap::from([
                            ("version".into(), "v2".into()),
                            ("evil".into(), "x".into()),
                            (CLUSTER_LABEL.into(), "east".into()),
                        ]),
                        service_account: "helloworld".into(),
                        healthy: 3,
                        total: 4,
                    },
                    proto::EndpointGroup {
                        locality: "us-west/zone-b".into(),
                        labels: HashMap::new(),
                        service_account: String::new(),
                        healthy: 0,
                        total: 2,
                    },
                ],
            },
            proto::ExportedService {
                name: "Not_A_Name".into(),
                namespace: "sample".into(),
                ..proto::ExportedService::default()
            },
            proto::ExportedService {
                name: "ratings".into(),
                namespace: "private".into(),
                ..proto::ExportedService::default()
            },
        ],
        ..proto::Catalog::default()
    }
}

fn peer_state(connection: Connection) -> state::Peer {
    let mut resolved = Gateway::new("gw.west.example:15443");
    resolved.resolved = vec!["10.20.0.1:15443".parse().expect("addr")];
    state::Peer {
        name: "west".into(),
        connection,
        catalog: Some(Arc::new(catalog())),
        last_contact: None,
        last_alive: Instant::now(),
        last_sync: None,
        gateways: vec![Gateway::new("127.0.20.1:15443"), resolved],
        last_error: None,
        imported: 0,
    }
}

fn federation(policy: Option<ImportPolicy>) -> Federation {
    Federation {
        source: "MeshFederation isthmus-system/east".into(),
        local: LocalCluster::default(),
        peers: BTreeMap::from([("west".into(), spec())]),
        import_policy: policy,
    }
}

#[test]
fn untrusted_catalog_is_filtered_and_topology_comes_from_our_config() {
    let peer = peer_state(Connection::Connected);
    let se = service_entry(
        &spec(),
        &peer,
        &catalog().services[0],
        &LabelAllowList::default(),
    )
    .expect("entry");
    assert_eq!(se.metadata.name.as_deref(), Some("helloworld.west"));
    assert_eq!(
        se.spec.ports.len(),
        1,
        "invalid ports are dropped: {:?}",
        se.spec.ports
    );
    // Two groups × two gateways (one a hostname, resolved by the probe).
    assert_eq!(se.spec.endpoints.len(), 4);
    let first = &se.spec.endpoints[0];
    assert_eq!(first.address, "127.0.20.1");
    assert_eq!(
        first.labels.get(CLUSTER_LABEL).map(String::as_str),
        Some("west")
    );
    assert_eq!(
        first.labels.get(NETWORK_LABEL).map(String::as_str),
        Some("net-west")
    );
    assert!(!first.labels.contains_key("evil"));
    assert_eq!(
        first.locality.as_deref(),
        Some("us-west/zone-a"),
        "peer locality as fallback"
    );
    assert_eq!(first.weight, Some(3));
    assert_eq!(se.spec.endpoints[1].address, "10.20.0.1");
    let empty = &se.spec.endpoints[2];
    assert_eq!(
        (empty.weight, empty.locality.as_deref()),
        (Some(0), Some("us-west/zone-b"))
    );
    assert_eq!(empty.service_account, None);
    // Whatever we write must load back cleanly.
    isthmus_api::load::load_value(Resource::ServiceEntry(se).to_value()).expect("valid entry");
}

#[test]
fn down_peer_or_gateway_gives_weight_zero() {
    let down = peer_state(Connection::Down);
    let se = service_entry(
        &spec(),
        &down,
        &catalog().services[0],
        &LabelAllowList::default(),
    )
    .expect("entry");
    assert!(se.spec.endpoints.iter().all(|e| e.weight == Some(0)));

    let mut one_gateway_down = peer_state(Connection::Connected);
    one_gateway_down.gateways[0].healthy = false;
    let se = service_entry(
        &spec(),
        &one_gateway_down,
        &catalog().services[0],
        &LabelAllowList::default(),
    )
    .expect("entry");
    let weights: Vec<_> = se.spec.endpoints.iter().map(|e| e.weight).collect();
    assert_eq!(weights, [Some(0), Some(3), Some(0), Some(0)]);
}

#[test]
fn desired_applies_import_policy_staleness_and_skips_bad_names() {
    let now = Instant::now();
    let peers = BTreeMap::from([("west".to_owned(), peer_state(Connection::Connected))]);
    let all = desired(
        &federation(None),
        &peers,
        &LabelAllowList::default(),
        now,
        Duration::from_secs(60),
    );
    let names: Vec<_> = all
        .keys()
        .map(|k| format!("{}/{}", k.namespace, k.name))
        .collect();
    assert_eq!(names, ["private/ratings.west", "sample/helloworld.west"]);

    let policy = ImportPolicy {
        namespaces: vec!["sample".into()],
        services: vec![],
    };
    let some = desired(
        &federation(Some(policy)),
        &peers,
        &LabelAllowList::default(),
        now,
        Duration::from_secs(60),
    );
    assert_eq!(some.len(), 1);

    let mut stale = peer_state(Connection::Down);
    stale.last_alive = now;
    let peers = BTreeMap::from([("west".to_owned(), stale)]);
    let later = now + Duration::from_secs(61);
    assert_eq!(
        desired(
            &federation(None),
            &peers,
            &LabelAllowList::default(),
            now,
            Duration::from_secs(60)
        )
        .len(),
        2
    );
    assert!(
        desired(
            &federation(None),
            &peers,
            &LabelAllowList::default(),
            later,
            Duration::from_secs(60)
        )
        .is_empty()
    );
}

/// What the importer writes reads back unchanged (JSON from the API server, YAML from the
/// directory), so [`Importer::observe`] sees no drift in its own writes.
#[test]
fn written_entries_round_trip_through_the_loader_unchanged() {
    let se = service_entry(
        &spec(),
        &peer_state(Connection::Connected),
        &catalog().services[0],
        &LabelAllowList::default(),
    )
    .expect("entry");
    let value = Resource::ServiceEntry(se.clone()).to_value();
    let yaml = serde_yaml_ng::to_string(&value).expect("yaml");
    for (how, back) in [
        ("json", isthmus_api::load::load_value(value.clone())),
        (
            "yaml",
            isthmus_api::load::load_value(serde_yaml_ng::from_str(&yaml).expect("parse")),
        ),
    ] {
        let Ok(Resource::ServiceEntry(back)) = back else {
            panic!("{how}: {back:?}");
        };
        assert_eq!(back.spec, se.spec, "{how}");
        assert_eq!(back.metadata.labels, se.metadata.labels, "{how}");
    }
}

#[tokio::test]
async fn observe_rewrites_entries_removed_or_changed_behind_our_back() {
    let dir = tempfile::tempdir().expect("tempdir");
    let writer = isthmus_config::ConfigSource::writer(&isthmus_config::dir::DirectorySource::new(
        dir.path(),
    ));
    let mut importer = Importer::new(
        writer,
        LabelAllowList::default(),
        Duration::from_secs(60),
        Metrics::register(&mut prometheus_client::registry::Registry::default()),
        State::default(),
    );
    let se = service_entry(
        &spec(),
        &peer_state(Connection::Connected),
        &catalog().services[0],
        &LabelAllowList::default(),
    )
    .expect("entry");
    let key = Resource::ServiceEntry(se.clone()).key();
    let store = isthmus_config::Store::new();
    store.register_source("test");
    store.update(|t| t.upsert("test", Resource::ServiceEntry(se.clone())));
    store.mark_synced("test");
    importer.adopt(&store.snapshot());
    let now = Instant::now();
    assert!(!importer.observe(&store.snapshot(), now), "intact");

    // Someone edits the spec: rewritten.
    let mut edited = se.clone();
    edited.spec.endpoints.clear();
    store.update(|t| t.upsert("test", Resource::ServiceEntry(edited)));
    assert!(importer.observe(&store.snapshot(), now));
    assert_eq!(importer.written(), 0);

    // Just written, not seen yet: given the grace period, then rewritten.
    store.update(|t| t.remove("test", &key));
    importer.written.insert(key.clone(), se.clone());
    importer.unconfirmed.insert(key.clone(), now);
    assert!(!importer.observe(&store.snapshot(), now + Duration::from_secs(1)));
    assert!(importer.observe(
        &store.snapshot(),
        now + CONFIRM_GRACE + Duration::from_millis(1)
    ));

    // Seen once, then deleted: rewritten at once.
    importer.written.insert(key.clone(), se.clone());
    importer.unconfirmed.insert(key.clone(), now);
    store.update(|t| t.upsert("test", Resource::ServiceEntry(se.clone())));
    assert!(!importer.observe(&store.snapshot(), now));
    store.update(|t| t.remove("test", &key));
    assert!(importer.observe(&store.snapshot(), now));
}
