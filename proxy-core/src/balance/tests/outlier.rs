//! Outlier detection on a paused clock, and state kept across updates.

use std::time::Duration;

use envoy_types::pb::envoy::config::cluster::v3::OutlierDetection;
use envoy_types::pb::envoy::config::cluster::v3::cluster::LbPolicy;
use envoy_types::pb::google::protobuf::{Duration as PbDuration, UInt32Value};
use tokio::time::advance;

use super::*;

fn u32v(value: u32) -> Option<UInt32Value> {
    Some(UInt32Value { value })
}

fn with_outlier(od: OutlierDetection) -> Cluster {
    let mut c = eds(LbPolicy::RoundRobin);
    c.outlier_detection = Some(od);
    c
}

fn three() -> ClusterLoadAssignment {
    flat(vec![
        ep("10.0.0.1:80"),
        ep("10.0.0.2:80"),
        ep("10.0.0.3:80"),
    ])
}

/// Picks until `addr` comes up and reports `outcome` on it (other picks are dropped).
fn report_on(b: &Balancer, addr: &str, outcome: Outcome) {
    for _ in 0..1000 {
        let p = pick(b);
        if p.address() == sa(addr) {
            p.report(outcome);
            return;
        }
    }
    panic!("{addr} was never picked");
}

fn report_n(b: &Balancer, addr: &str, outcome: Outcome, n: usize) {
    for _ in 0..n {
        report_on(b, addr, outcome);
    }
}

fn outlier(b: &Balancer, addr: &str) -> OutlierStatus {
    b.status()
        .endpoints
        .into_iter()
        .find(|e| e.info.address == sa(addr))
        .expect("endpoint")
        .outlier
}

fn ejected(b: &Balancer, addr: &str) -> bool {
    outlier(b, addr).ejected
}

fn picked(b: &Balancer, addr: &str) -> bool {
    count(&counts(b, 300), addr) > 0
}

#[tokio::test(start_paused = true)]
async fn five_consecutive_5xx_eject_at_once() {
    let b = seeded(&with_outlier(OutlierDetection::default()), &three());
    report_n(&b, "10.0.0.1:80", Outcome::HttpStatus(500), 4);
    assert!(!ejected(&b, "10.0.0.1:80"));
    assert_eq!(outlier(&b, "10.0.0.1:80").consecutive_5xx, 4);
    report_on(&b, "10.0.0.1:80", Outcome::HttpStatus(500));
    let o = outlier(&b, "10.0.0.1:80");
    assert!(o.ejected);
    assert_eq!(o.ejected_for_ms, Some(30_000));
    assert_eq!(o.ejection_count, 1);
    assert!(!picked(&b, "10.0.0.1:80"));
}

#[tokio::test(start_paused = true)]
async fn success_and_non_5xx_reset_the_counter_but_cancel_does_not() {
    let b = seeded(&with_outlier(OutlierDetection::default()), &three());
    report_n(&b, "10.0.0.1:80", Outcome::HttpStatus(503), 4);
    report_on(&b, "10.0.0.1:80", Outcome::Success);
    report_n(&b, "10.0.0.1:80", Outcome::HttpStatus(503), 4);
    report_on(&b, "10.0.0.1:80", Outcome::HttpStatus(404));
    report_n(&b, "10.0.0.1:80", Outcome::HttpStatus(503), 4);
    assert!(!ejected(&b, "10.0.0.1:80"));
    report_on(&b, "10.0.0.1:80", Outcome::Cancelled);
    report_on(&b, "10.0.0.1:80", Outcome::HttpStatus(503));
    assert!(ejected(&b, "10.0.0.1:80"));
}

#[tokio::test(start_paused = true)]
async fn ejection_lasts_base_times_n_then_fails_back() {
    let b = seeded(&with_outlier(OutlierDetection::default()), &three());
    report_n(&b, "10.0.0.1:80", Outcome::HttpStatus(500), 5);
    advance(Duration::from_millis(29_900)).await;
    assert!(!picked(&b, "10.0.0.1:80"));
    advance(Duration::from_millis(100)).await;
    // Un-ejected on the next pick: it is used again.
    assert!(picked(&b, "10.0.0.1:80"));
    assert!(!ejected(&b, "10.0.0.1:80"));
    // Ejected again right away: twice the base time.
    report_n(&b, "10.0.0.1:80", Outcome::HttpStatus(500), 5);
    let o = outlier(&b, "10.0.0.1:80");
    assert_eq!((o.ejected_for_ms, o.ejection_count), (Some(60_000), 2));
    advance(Duration::from_secs(59)).await;
    assert!(ejected(&b, "10.0.0.1:80"));
    advance(Duration::from_secs(1)).await;
    assert!(picked(&b, "10.0.0.1:80"));
    // Healthy for two intervals (10 s each): the multiplier is back to 0.
    assert_eq!(outlier(&b, "10.0.0.1:80").ejection_multiplier, 2);
    advance(Duration::from_secs(10)).await;
    assert_eq!(outlier(&b, "10.0.0.1:80").ejection_multiplier, 1);
    advance(Duration::from_secs(10)).await;
    assert_eq!(outlier(&b, "10.0.0.1:80").ejection_multiplier, 0);
    report_n(&b, "10.0.0.1:80", Outcome::HttpStatus(500), 5);
    assert_eq!(outlier(&b, "10.0.0.1:80").ejected_for_ms, Some(30_000));
}

#[tokio::test(start_paused = true)]
async fn ejection_time_is_capped() {
    let od = OutlierDetection {
        base_ejection_time: Some(PbDuration {
            seconds: 100,
            nanos: 0,
        }),
        max_ejection_time: Some(PbDuration {
            seconds: 150,
            nanos: 0,
        }),
        ..OutlierDetection::default()
    };
    let b = seeded(&with_outlier(od), &three());
    let mut times = Vec::new();
    for _ in 0..3 {
        report_n(&b, "10.0.0.1:80", Outcome::HttpStatus(500), 5);
        let ms = outlier(&b, "10.0.0.1:80").ejected_for_ms.unwrap();
        times.push(ms);
        advance(Duration::from_millis(ms)).await;
    }
    assert_eq!(times, [100_000, 150_000, 150_000]);
}

#[tokio::test(start_paused = true)]
async fn max_ejection_percent_is_respected_but_one_host_may_go() {
    let four = flat((1..=4).map(|i| ep(&format!("10.0.0.{i}:80"))).collect());
    let od = OutlierDetection {
        max_ejection_percent: u32v(50),
        ..OutlierDetection::default()
    };
    let b = seeded(&with_outlier(od), &four);
    for i in 1..=3 {
        report_n(&b, &format!("10.0.0.{i}:80"), Outcome::HttpStatus(500), 5);
    }
    let ejected_now = b
        .status()
        .endpoints
        .iter()
        .filter(|e| e.outlier.ejected)
        .count();
    assert_eq!(ejected_now, 2);

    // Envoy's default 10% still ejects one of two hosts, and only one.
    let two = flat(vec![ep("10.0.0.1:80"), ep("10.0.0.2:80")]);
    let b = seeded(&with_outlier(OutlierDetection::default()), &two);
    report_n(&b, "10.0.0.1:80", Outcome::HttpStatus(500), 5);
    report_n(&b, "10.0.0.2:80", Outcome::HttpStatus(500), 5);
    assert!(ejected(&b, "10.0.0.1:80"));
    assert!(!ejected(&b, "10.0.0.2:80"));
    assert_eq!(count(&counts(&b, 100), "10.0.0.2:80"), 100);

    // 0% ejects nothing.
    let od = OutlierDetection {
        max_ejection_percent: u32v(0),
        ..OutlierDetection::default()
    };
    let b = seeded(&with_outlier(od), &two);
    report_n(&b, "10.0.0.1:80", Outcome::HttpStatus(500), 5);
    assert!(!ejected(&b, "10.0.0.1:80"));
}

#[tokio::test(start_paused = true)]
async fn every_host_ejected_means_panic() {
    let two = flat(vec![ep("10.0.0.1:80"), ep("10.0.0.2:80")]);
    let od = OutlierDetection {
        max_ejection_percent: u32v(100),
        ..OutlierDetection::default()
    };
    let b = seeded(&with_outlier(od), &two);
    report_n(&b, "10.0.0.1:80", Outcome::HttpStatus(500), 5);
    report_n(&b, "10.0.0.2:80", Outcome::HttpStatus(500), 5);
    assert!(ejected(&b, "10.0.0.1:80") && ejected(&b, "10.0.0.2:80"));
    assert!(b.status().priorities[0].panic);
    assert_eq!(counts(&b, 100).len(), 2);
}

#[tokio::test(start_paused = true)]
async fn gateway_errors() {
    // Only the gateway counter: 3 of 502/503/504 (or connect failures) in a row.
    let od = OutlierDetection {
        consecutive_5xx: u32v(0),
        consecutive_gateway_failure: u32v(3),
        enforcing_consecutive_gateway_failure: u32v(100),
        ..OutlierDetection::default()
    };
    let b = seeded(&with_outlier(od), &three());
    report_n(&b, "10.0.0.1:80", Outcome::HttpStatus(502), 2);
    // A non-gateway 5xx restarts the gateway count.
    report_on(&b, "10.0.0.1:80", Outcome::HttpStatus(500));
    report_n(&b, "10.0.0.1:80", Outcome::HttpStatus(504), 2);
    assert!(!ejected(&b, "10.0.0.1:80"));
    report_on(&b, "10.0.0.1:80", Outcome::ConnectFailure);
    assert!(ejected(&b, "10.0.0.1:80"));

    // Envoy's default enforcing_consecutive_gateway_failure is 0: no ejection.
    let od = OutlierDetection {
        consecutive_5xx: u32v(0),
        ..OutlierDetection::default()
    };
    let b = seeded(&with_outlier(od), &three());
    report_n(&b, "10.0.0.1:80", Outcome::HttpStatus(503), 12);
    assert!(!ejected(&b, "10.0.0.1:80"));
}

#[tokio::test(start_paused = true)]
async fn local_origin_errors_count_as_5xx_unless_split() {
    let b = seeded(&with_outlier(OutlierDetection::default()), &three());
    report_n(&b, "10.0.0.1:80", Outcome::ConnectFailure, 2);
    report_n(&b, "10.0.0.1:80", Outcome::Timeout, 2);
    report_on(&b, "10.0.0.1:80", Outcome::LocalOriginSuccess);
    report_on(&b, "10.0.0.1:80", Outcome::Reset);
    assert!(ejected(&b, "10.0.0.1:80"));

    let od = OutlierDetection {
        split_external_local_origin_errors: true,
        consecutive_local_origin_failure: u32v(3),
        ..OutlierDetection::default()
    };
    let b = seeded(&with_outlier(od), &three());
    // Local errors do not reach the 5xx counter, nor 5xx the local one.
    report_n(&b, "10.0.0.1:80", Outcome::HttpStatus(500), 4);
    report_n(&b, "10.0.0.1:80", Outcome::ConnectFailure, 2);
    report_on(&b, "10.0.0.1:80", Outcome::LocalOriginSuccess);
    report_n(&b, "10.0.0.1:80", Outcome::Timeout, 2);
    let o = outlier(&b, "10.0.0.1:80");
    assert!(!o.ejected);
    assert_eq!(
        (o.consecutive_5xx, o.consecutive_local_origin_failure),
        (4, 2)
    );
    report_on(&b, "10.0.0.1:80", Outcome::Reset);
    assert!(ejected(&b, "10.0.0.1:80"));
}

#[tokio::test(start_paused = true)]
async fn enforcement_percentage_zero_never_ejects() {
    let od = OutlierDetection {
        enforcing_consecutive_5xx: u32v(0),
        ..OutlierDetection::default()
    };
    let b = seeded(&with_outlier(od), &three());
    report_n(&b, "10.0.0.1:80", Outcome::HttpStatus(500), 20);
    assert!(!ejected(&b, "10.0.0.1:80"));
}

#[tokio::test(start_paused = true)]
async fn update_keeps_state_of_remaining_endpoints() {
    let c = with_outlier(OutlierDetection::default());
    let b = seeded(&c, &three());
    report_n(&b, "10.0.0.1:80", Outcome::HttpStatus(500), 3);
    report_n(&b, "10.0.0.2:80", Outcome::HttpStatus(500), 5);
    let in_flight = loop {
        let p = pick(&b);
        if p.address() == sa("10.0.0.1:80") {
            break p;
        }
    };
    report_n(&b, "10.0.0.3:80", Outcome::HttpStatus(500), 2);
    // 10.0.0.3 leaves; 10.0.0.4 arrives; 10.0.0.1 moves to another locality.
    let next = cla(vec![
        locality(0, None, "z1", vec![ep("10.0.0.2:80"), ep("10.0.0.4:80")]),
        locality(0, None, "z2", vec![ep("10.0.0.1:80")]),
    ]);
    advance(Duration::from_secs(5)).await;
    b.update(&c, Some(&next)).unwrap();
    let s = outlier(&b, "10.0.0.1:80");
    assert_eq!(s.consecutive_5xx, 3);
    let status = b.status();
    let one = status
        .endpoints
        .iter()
        .find(|e| e.info.address == sa("10.0.0.1:80"));
    assert_eq!(one.unwrap().active_requests, 1);
    assert_eq!(one.unwrap().info.locality.zone, "z2");
    let two = outlier(&b, "10.0.0.2:80");
    assert!(two.ejected);
    assert_eq!(two.ejected_for_ms, Some(25_000));
    assert_eq!(outlier(&b, "10.0.0.4:80").consecutive_5xx, 0);
    // The request in flight finishes against the kept state.
    in_flight.report(Outcome::HttpStatus(500));
    assert_eq!(outlier(&b, "10.0.0.1:80").consecutive_5xx, 4);
    // A returning address starts afresh.
    b.update(&c, Some(&three())).unwrap();
    assert_eq!(outlier(&b, "10.0.0.3:80").consecutive_5xx, 0);
    assert_eq!(b.status().endpoints.len(), 3);
}

#[tokio::test(start_paused = true)]
async fn a_removed_host_is_not_ejected_by_late_reports() {
    let c = with_outlier(OutlierDetection::default());
    let b = seeded(&c, &three());
    report_n(&b, "10.0.0.1:80", Outcome::HttpStatus(500), 4);
    let late = loop {
        let p = pick(&b);
        if p.address() == sa("10.0.0.1:80") {
            break p;
        }
    };
    b.update(&c, Some(&flat(vec![ep("10.0.0.2:80"), ep("10.0.0.3:80")])))
        .unwrap();
    late.report(Outcome::HttpStatus(500));
    assert!(b.status().endpoints.iter().all(|e| !e.outlier.ejected));
}

#[tokio::test(start_paused = true)]
async fn a_shared_gateway_address_is_ejected_everywhere() {
    // A remote network's gateway listed in two localities and two priorities.
    let a = cla(vec![
        locality(
            0,
            None,
            "z1",
            vec![ep("10.0.0.1:80"), ep("192.0.2.10:15443")],
        ),
        locality(
            0,
            None,
            "z2",
            vec![ep("10.0.0.2:80"), ep("192.0.2.10:15443")],
        ),
        locality(
            1,
            None,
            "z3",
            vec![ep("192.0.2.10:15443"), ep("10.0.1.1:80")],
        ),
    ]);
    let b = seeded(&with_outlier(OutlierDetection::default()), &a);
    report_n(&b, "192.0.2.10:15443", Outcome::ConnectFailure, 5);
    let s = b.status();
    let gw: Vec<_> = s
        .endpoints
        .iter()
        .filter(|e| e.info.address == sa("192.0.2.10:15443"))
        .collect();
    assert_eq!(gw.len(), 3);
    assert!(
        gw.iter()
            .all(|e| e.outlier.ejected && e.outlier.ejection_count == 1)
    );
    assert!(!picked(&b, "192.0.2.10:15443"));
}
