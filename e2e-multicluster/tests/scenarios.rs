//! Multi-cluster scenarios on `isthmus lab` (real processes, real mTLS,
//! real DNS packets). Each test runs its scenarios in sequence on one lab,
//! to keep CI time down; the two tests use different loopback ranges.

use std::collections::BTreeMap;
use std::time::Duration;

use isthmus_e2e::Lab;
use isthmus_lab::client::{self, http_client, send};
use isthmus_lab::drill::{self, Mode};

const URL: &str = "http://helloworld.sample.global:5000/";

async fn load(lab: &Lab, from: &str, rps: u32, secs: f64) -> client::LoadReport {
    let (_, via) = drill::workload(&lab.spec, from).unwrap();
    client::load(
        via,
        URL,
        rps,
        Duration::from_secs_f64(secs),
        Duration::from_secs(3),
    )
    .await
}

/// Waits (bounded) until requests from `from` satisfy `f`.
async fn until(lab: &Lab, from: &str, what: &str, f: impl Fn(&client::LoadReport) -> bool) {
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let r = load(lab, from, 40, 0.5).await;
        if f(&r) {
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{what}: last report {r:?}"
        );
    }
}

/// A/AAAA query over UDP; the addresses answered.
fn dns_query(server: std::net::SocketAddr, name: &str) -> Vec<String> {
    use hickory_proto::op::{Message, Query};
    use hickory_proto::rr::{Name, RData, RecordType};
    let mut m = Message::query();
    m.metadata.id = 4242;
    m.metadata.recursion_desired = true;
    m.add_query(Query::query(Name::from_ascii(name).unwrap(), RecordType::A));
    let sock = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    sock.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
    sock.send_to(&m.to_vec().unwrap(), server).unwrap();
    let mut buf = [0u8; 4096];
    let Ok((n, _)) = sock.recv_from(&mut buf) else {
        return Vec::new();
    };
    let resp = Message::from_vec(&buf[..n]).unwrap();
    resp.answers
        .iter()
        .filter_map(|r| match &r.data {
            RData::A(a) => Some(a.to_string()),
            _ => None,
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_cluster_federation() {
    let lab = Lab::up(&["east", "west"], 150).await.expect("lab up");
    let plan = lab.spec.plan();
    let (east, west) = (&plan[0], &plan[1]);

    // Locality preference: each client stays in its own cluster while healthy.
    until(&lab, "east/sleep", "east/sleep reaches east", |r| {
        r.failed == 0 && r.by_cluster.keys().collect::<Vec<_>>() == ["east"]
    })
    .await;
    let r = load(&lab, "east/sleep", 100, 2.0).await;
    assert_eq!(r.failed, 0, "{r:?}");
    assert_eq!(r.by_cluster.get("east").copied(), Some(r.requests), "{r:?}");
    let r = load(&lab, "west/sleep", 100, 1.0).await;
    assert_eq!(r.by_cluster.get("west").copied(), Some(r.requests), "{r:?}");

    // .global resolves through the lab's DNS in both clusters.
    for c in [east, west] {
        let addrs = dns_query(c.dns, "helloworld.sample.global.");
        assert!(!addrs.is_empty(), "{} DNS answered nothing", c.name);
    }

    // Cross-cluster call with the caller's identity checked at the destination:
    // everything from west to east (canary 100/0) through both gateways.
    drill::canary(lab.dir(), "helloworld.sample", "east=100,west=0", 100)
        .await
        .expect("canary");
    until(&lab, "west/sleep", "west/sleep reaches east", |r| {
        r.failed == 0 && r.by_cluster.keys().collect::<Vec<_>>() == ["east"]
    })
    .await;
    let c = http_client();
    let reply = send(&c, west.sleep().outbound, URL, Duration::from_secs(5))
        .await
        .unwrap();
    let j = reply.json().unwrap();
    assert_eq!(j["cluster"], "east", "{j}");
    assert_eq!(
        j["caller"], "spiffe://west.isthmus.local/ns/sample/sa/sleep",
        "{j}"
    );

    // 90/10 canary within statistical bounds.
    let r = drill::canary(lab.dir(), "helloworld.sample", "east=90,west=10", 1000)
        .await
        .expect("canary");
    assert_eq!(r.failed, 0, "{r:?}");
    let west_share = r.by_cluster.get("west").copied().unwrap_or(0);
    // Binomial(1000, 0.1): ±5 sd.
    assert!(
        (52..=148).contains(&west_share),
        "west got {west_share} of {}: {r:?}",
        r.requests
    );

    // Failover by kill: zero failures with retries, failover < 1 s, failback seen.
    let d = drill::failover(
        lab.dir(),
        "helloworld.sample",
        "east",
        Mode::Kill,
        100,
        |m| eprintln!("{m}"),
    )
    .await
    .expect("kill drill");
    eprintln!("kill drill: {d:?}");
    assert_eq!(d.failed, 0, "{d:?}");
    assert!(d.time_to_failover_ms < 1000, "{d:?}");
    assert!(d.by_cluster.contains_key("west"), "{d:?}");
    assert!(d.time_to_failback_ms.is_some(), "{d:?}");

    // Failover by black-hole: failover < 3 s.
    let d = drill::failover(
        lab.dir(),
        "helloworld.sample",
        "east",
        Mode::Blackhole,
        100,
        |m| eprintln!("{m}"),
    )
    .await
    .expect("blackhole drill");
    eprintln!("blackhole drill: {d:?}");
    assert_eq!(d.failed, 0, "{d:?}");
    assert!(d.time_to_failover_ms < 3000, "{d:?}");

    // Federation partition: failover, heal: failback.
    let d = drill::failover(
        lab.dir(),
        "helloworld.sample",
        "east",
        Mode::Partition,
        100,
        |m| eprintln!("{m}"),
    )
    .await
    .expect("partition drill");
    eprintln!("partition drill: {d:?}");
    assert!(d.time_to_failover_ms < 3000, "{d:?}");
    assert!(d.time_to_failback_ms.is_some(), "{d:?}");

    // Control plane killed: traffic keeps flowing.
    let state = isthmus_lab::state::LabState::load(&lab.spec.state_file())
        .unwrap()
        .unwrap();
    client::control(&state.control, "stop", Some("east/control-plane"))
        .await
        .unwrap();
    let r = load(&lab, "east/sleep", 100, 2.0).await;
    assert_eq!(r.failed, 0, "{r:?}");
    client::control(&state.control, "start", Some("east/control-plane"))
        .await
        .unwrap();

    // Root rotation under load: every cluster trusts both roots, then issues
    // from the next one; no request fails, and calls keep working after.
    let (_, east_via) = drill::workload(&lab.spec, "east/sleep").unwrap();
    let (_, west_via) = drill::workload(&lab.spec, "west/sleep").unwrap();
    drill::canary(lab.dir(), "helloworld.sample", "east=50,west=50", 100)
        .await
        .expect("canary");
    let load_east = tokio::spawn(client::load(
        east_via,
        URL,
        50,
        Duration::from_secs(25),
        Duration::from_secs(3),
    ));
    let load_west = tokio::spawn(client::load(
        west_via,
        URL,
        50,
        Duration::from_secs(25),
        Duration::from_secs(3),
    ));
    let rotation = isthmus_lab::rotate::rotate_root(lab.dir(), |m| eprintln!("{m}")).await;
    let (le, lw) = (load_east.await.unwrap(), load_west.await.unwrap());
    let rotation = rotation.expect("rotation");
    eprintln!("rotation: {rotation:?}\neast load: {le:?}\nwest load: {lw:?}");
    assert!(
        rotation.duration_ms < 25_000,
        "rotation outlasted the load: {rotation:?}"
    );
    assert_eq!(
        le.failed + lw.failed,
        0,
        "east {:?} / west {:?}",
        le.failures,
        lw.failures
    );
    assert!(
        le.by_cluster.len() == 2 && lw.by_cluster.len() == 2,
        "{le:?} {lw:?}"
    );

    let status = isthmus_lab::lab::status(lab.dir()).unwrap();
    let by_id: BTreeMap<_, _> = status
        .clusters
        .iter()
        .flat_map(|c| c.components.iter().map(|x| (x.id.clone(), x.clone())))
        .collect();
    assert!(
        by_id.contains_key("east/gateway") && by_id.contains_key("west/dns"),
        "{by_id:?}"
    );

    lab.down().await.expect("down leaves nothing behind");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_cluster_federation() {
    let lab = Lab::up(&["east", "west", "central"], 180)
        .await
        .expect("lab up");
    // Every cluster serves its own version and reaches the others.
    drill::canary(
        lab.dir(),
        "helloworld.sample",
        "east=34,west=33,central=33",
        300,
    )
    .await
    .expect("canary");
    until(
        &lab,
        "central/sleep",
        "central/sleep reaches all three",
        |r| r.failed == 0 && r.by_cluster.len() == 3,
    )
    .await;
    lab.down().await.expect("down leaves nothing behind");
}
