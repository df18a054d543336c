use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use envoy_types::pb::google::protobuf::Any;
use tokio::sync::watch;
use tokio::time::{Instant, advance, timeout};

use super::debounce::{self, Update};
use super::names::Interner;
use super::push::{Digest, Step, make_before_break, version_info};
use super::wire::RequestNames;
use crate::xds::{
    CLUSTER, ConfigState, ENDPOINT, GenerateError, LISTENER, ProxyInfo, ROUTE, SharedResource,
    SharedState, XdsResource,
};

struct Version(u64);

impl ConfigState for Version {
    fn version(&self) -> u64 {
        self.0
    }

    fn generate(
        &self,
        _: &ProxyInfo,
        type_url: &str,
        _: &BTreeSet<String>,
    ) -> Result<Vec<XdsResource>, GenerateError> {
        Err(GenerateError::UnknownType(type_url.into()))
    }
}

fn state(v: u64) -> SharedState {
    Arc::new(Version(v))
}

fn res(name: &str, body: &str) -> Arc<SharedResource> {
    SharedResource::new(XdsResource {
        name: name.into(),
        resource: Any {
            type_url: CLUSTER.into(),
            value: body.as_bytes().to_vec(),
        },
    })
}

fn names(step: &Step) -> Vec<&str> {
    step.resources.iter().map(|r| r.name.as_str()).collect()
}

/// Starts a debouncer (100 ms quiet, 1 s max) fed by the returned sender.
fn debouncer() -> (watch::Sender<SharedState>, watch::Receiver<Arc<Update>>) {
    let (src_tx, src_rx) = watch::channel(state(0));
    let (tx, rx) = watch::channel(Update::initial(state(0)));
    tokio::spawn(debounce::run(
        src_rx,
        tx,
        debounce::Debounce::uniform(Duration::from_millis(100), Duration::from_secs(1)),
    ));
    (src_tx, rx)
}

async fn next(rx: &mut watch::Receiver<Arc<Update>>) -> (u64, Instant) {
    timeout(Duration::from_secs(10), rx.changed())
        .await
        .expect("debounced update")
        .expect("debouncer alive");
    let u = rx.borrow_and_update().clone();
    (u.state.version(), u.changed_at.expect("a change"))
}

#[tokio::test(start_paused = true)]
async fn debounce_waits_for_quiet() {
    let (src, mut rx) = debouncer();
    let start = Instant::now();
    for v in 1..=5 {
        src.send_replace(state(v));
        // Let the debouncer see it before time moves.
        tokio::task::yield_now().await;
        advance(Duration::from_millis(30)).await;
    }
    let (version, changed_at) = next(&mut rx).await;
    assert_eq!(version, 5);
    // Last change at 120 ms, then 100 ms of quiet.
    let waited = start.elapsed();
    assert!(
        waited >= Duration::from_millis(220) && waited < Duration::from_millis(260),
        "{waited:?}"
    );
    assert!(changed_at - start < Duration::from_millis(5));
    assert!(!rx.has_changed().expect("alive"));
}

#[tokio::test(start_paused = true)]
async fn debounce_is_bounded_by_max() {
    let (src, mut rx) = debouncer();
    let start = Instant::now();
    let feeder = tokio::spawn(async move {
        for v in 1..=40 {
            src.send_replace(state(v));
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        src
    });
    let (version, _) = next(&mut rx).await;
    let waited = start.elapsed();
    assert!(waited >= Duration::from_secs(1) && waited < Duration::from_millis(1100));
    assert!((19..=21).contains(&version), "{version}");
    let (later, _) = next(&mut rx).await;
    assert!(later > version);
    drop(feeder.await);
}

#[tokio::test(start_paused = true)]
async fn debounce_publishes_last_value_when_source_closes() {
    let (src, mut rx) = debouncer();
    src.send_replace(state(7));
    drop(src);
    assert_eq!(next(&mut rx).await.0, 7);
    assert!(
        timeout(Duration::from_secs(5), rx.changed())
            .await
            .expect("no hang")
            .is_err()
    );
}

#[test]
fn digest_sees_bodies_and_names_only() {
    let a = Step::new(CLUSTER, vec![res("b", "2"), res("a", "1")]);
    let b = Step::new(ENDPOINT, vec![res("a", "1"), res("b", "2")]);
    assert_eq!(a.digest, b.digest, "order and type do not matter");
    assert_eq!(names(&a), ["a", "b"], "sorted by name");
    assert_ne!(a.digest, Digest::of(&[res("a", "1"), res("b", "3")]));
    assert_ne!(a.digest, Digest::of(&[res("a", "1"), res("c", "2")]));
    assert_ne!(Digest::of(&[]), Digest::of(&[res("", "")]));
    let v = version_info(42, a.digest);
    assert!(v.starts_with("42-") && v.len() == 15, "{v}");
}

#[test]
fn digest_replaces_members() {
    let before = Digest::of(&[res("a", "1"), res("b", "2"), res("c", "3")]);
    let after = before.replace(&[res("b", "2")], &[res("b", "9")]);
    assert_eq!(
        after,
        Digest::of(&[res("a", "1"), res("b", "9"), res("c", "3")])
    );
    assert_eq!(after.replace(&[res("b", "9")], &[res("b", "2")]), before);
}

#[test]
fn removed_cluster_goes_last_after_union() {
    let old = vec![res("a", "1"), res("b", "1")];
    let old_hash = Digest::of(&old);
    let changed = vec![
        Step::new(CLUSTER, vec![res("a", "1"), res("c", "1")]),
        Step::new(ENDPOINT, vec![res("a", "e")]),
        Step::new(ROUTE, vec![res("r", "to-c")]),
    ];
    let steps = make_before_break(changed, Some((&old, old_hash)));
    let order: Vec<(&str, Vec<&str>)> = steps
        .iter()
        .map(|s| (s.type_url.as_str(), names(s)))
        .collect();
    assert_eq!(
        order,
        vec![
            (CLUSTER, vec!["a", "b", "c"]),
            (ENDPOINT, vec!["a"]),
            (ROUTE, vec!["r"]),
            (CLUSTER, vec!["a", "c"]),
        ]
    );
}

#[test]
fn union_equal_to_what_the_proxy_has_is_skipped() {
    let old = vec![res("a", "1"), res("b", "1")];
    let changed = vec![
        Step::new(CLUSTER, vec![res("a", "1")]),
        Step::new(LISTENER, vec![res("l", "2")]),
    ];
    let steps = make_before_break(changed, Some((&old, Digest::of(&old))));
    let order: Vec<&str> = steps.iter().map(|s| s.type_url.as_str()).collect();
    assert_eq!(order, vec![LISTENER, CLUSTER]);
}

#[test]
fn no_union_without_removal_or_other_changes() {
    let old = vec![res("a", "1")];
    let hash = Digest::of(&old);
    let added = vec![
        Step::new(CLUSTER, vec![res("a", "1"), res("b", "1")]),
        Step::new(LISTENER, vec![res("l", "1")]),
    ];
    assert_eq!(make_before_break(added.clone(), Some((&old, hash))), added);
    let alone = vec![Step::new(CLUSTER, vec![])];
    assert_eq!(make_before_break(alone.clone(), Some((&old, hash))), alone);
    let first = vec![Step::new(CLUSTER, vec![]), Step::new(LISTENER, vec![])];
    assert_eq!(make_before_break(first.clone(), None), first);
}

/// A state whose changes are endpoints only.
struct Endpoints(u64);

impl ConfigState for Endpoints {
    fn version(&self) -> u64 {
        self.0
    }

    fn generate(
        &self,
        _: &ProxyInfo,
        type_url: &str,
        _: &BTreeSet<String>,
    ) -> Result<Vec<XdsResource>, GenerateError> {
        Err(GenerateError::UnknownType(type_url.into()))
    }

    fn changes_since(&self, _: u64) -> crate::xds::Changes {
        crate::xds::Changes::Endpoints(crate::xds::EndpointChanges::default())
    }
}

#[tokio::test(start_paused = true)]
async fn endpoint_only_burst_has_the_short_debounce() {
    let (src_tx, src_rx) = watch::channel(state(0));
    let (tx, mut rx) = watch::channel(Update::initial(state(0)));
    tokio::spawn(debounce::run(
        src_rx,
        tx,
        debounce::Debounce {
            quiet: Duration::from_millis(100),
            endpoints_quiet: Duration::from_millis(10),
            max: Duration::from_secs(1),
        },
    ));
    let start = Instant::now();
    src_tx.send_replace(Arc::new(Endpoints(1)));
    let (version, _) = next(&mut rx).await;
    assert_eq!(version, 1);
    let waited = start.elapsed();
    assert!(
        waited >= Duration::from_millis(10) && waited < Duration::from_millis(20),
        "{waited:?}"
    );

    // Another change joining the burst brings the full debounce back.
    let start = Instant::now();
    src_tx.send_replace(Arc::new(Endpoints(2)));
    tokio::task::yield_now().await;
    advance(Duration::from_millis(5)).await;
    src_tx.send_replace(state(3));
    let (version, _) = next(&mut rx).await;
    assert_eq!(version, 3);
    let waited = start.elapsed();
    assert!(
        waited >= Duration::from_millis(105) && waited < Duration::from_millis(125),
        "{waited:?}"
    );
}

#[test]
fn ack_names_are_recognised_without_interning() {
    let interner = Interner::default();
    let requested = RequestNames::of(&[b"b", b"a", b"c"]);
    let names = interner.intern(&requested).expect("UTF-8");
    assert_eq!(names.len(), 3);
    // The same request again: its wire hash.
    let same = RequestNames::of(&[b"b", b"a", b"c"]);
    assert_eq!(same.wire(), requested.wire());
    assert!(names.same_as(&same).is_some());
    // Any order, as bytes: the digest, and the stream then keeps the new
    // order's wire hash.
    let again = RequestNames::of(&[b"c", b"b", b"a"]);
    assert_ne!(again.wire(), requested.wire());
    let reordered = names.same_as(&again).expect("same set");
    assert_eq!(reordered, names);
    assert_eq!(
        reordered.same_as(&RequestNames::of(&[b"c", b"b", b"a"])),
        Some(reordered.clone())
    );
    assert!(names.same_as(&RequestNames::of(&[b"c", b"b"])).is_none());
    assert!(
        names
            .same_as(&RequestNames::of(&[b"c", b"b", b"x"]))
            .is_none()
    );
    assert!(
        names
            .same_as(&RequestNames::of(&[b"b", b"a", b"d"]))
            .is_none()
    );
    // Longer names, differing in one byte past the first eight.
    let long = |last: &'static [u8]| {
        let name = [&b"outbound|80||svc-1.sample.svc.cluster.local"[..], last].concat();
        RequestNames::of(&[b"a", &name])
    };
    let long_names = interner.intern(&long(b"x")).expect("UTF-8");
    assert!(long_names.same_as(&long(b"x")).is_some());
    assert!(long_names.same_as(&long(b"y")).is_none());
    // Interned once: another stream with the same names shares the set.
    let shared = interner.intern(&again).expect("UTF-8");
    assert!(Arc::ptr_eq(&names.set, &shared.set));
}

#[test]
fn names_split_by_other_fields_are_recognised_by_their_digest() {
    use prost::Message as _;
    // resource_names, type_url, resource_names: legal protobuf, not adjacent.
    let mut message = Vec::new();
    prost::encoding::bytes::encode(3, &b"a".to_vec(), &mut message);
    prost::encoding::string::encode(4, &ENDPOINT.to_string(), &mut message);
    prost::encoding::bytes::encode(3, &b"b".to_vec(), &mut message);
    let split = super::wire::Request::decode(&message[..]).expect("decodes");
    assert_eq!(split.type_url, ENDPOINT);
    let requested = split.resource_names;
    assert_eq!(requested.wire(), None);
    let names = Interner::default().intern(&requested).expect("UTF-8");
    assert_eq!(names.len(), 2);
    assert!(names.same_as(&RequestNames::of(&[b"a", b"b"])).is_some());
    assert!(names.same_as(&requested).is_some());
    let _ = envoy_types::pb::envoy::service::discovery::v3::DiscoveryRequest::decode(&message[..])
        .expect("and prost agrees it is a request");
}

#[test]
fn names_that_are_not_utf8_are_refused_with_their_index() {
    let requested = RequestNames::of(&[b"ok", b"\xff\xfe"]);
    let error = Interner::default()
        .intern(&requested)
        .expect_err("not UTF-8");
    assert_eq!(error.to_string(), "resource_names[1] is not UTF-8");
}
