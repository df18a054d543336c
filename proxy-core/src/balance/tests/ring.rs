//! RING_HASH: stickiness, weight shares, minimal movement on host changes,
//! priorities chosen by hash.

use envoy_types::pb::envoy::config::cluster::v3::cluster::LbPolicy;

use super::*;

fn hashed(b: &Balancer, hash: u64) -> SocketAddr {
    b.pick(&PickContext {
        hash: Some(hash),
        ..PickContext::default()
    })
    .expect("an endpoint")
    .address()
}

/// Spreads `i` over the whole `u64` range.
fn key(i: u64) -> u64 {
    i.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ (i >> 7)
}

#[test]
fn the_same_hash_always_reaches_the_same_host() {
    let a = flat(vec![
        ep("10.0.0.1:80"),
        ep("10.0.0.2:80"),
        ep("10.0.0.3:80"),
    ]);
    let b = seeded(&eds(LbPolicy::RingHash), &a);
    for i in 0..200 {
        let first = hashed(&b, key(i));
        for _ in 0..5 {
            assert_eq!(hashed(&b, key(i)), first);
        }
    }
    assert_eq!(b.status().lb_policy, "RING_HASH");
}

#[test]
fn hosts_get_their_weights_share_of_hashes() {
    let a = flat(vec![ep_w("10.0.0.1:80", 1), ep_w("10.0.0.2:80", 3)]);
    let b = seeded(&eds(LbPolicy::RingHash), &a);
    let n = 20_000;
    let heavy = (0..n)
        .filter(|i| hashed(&b, key(*i)) == sa("10.0.0.2:80"))
        .count();
    // 1024 points split 1:3; ketama rings are within a few percent.
    near(heavy, 15_000, 1_000);
}

#[test]
fn removing_a_host_moves_its_requests_and_few_others() {
    let four = flat(vec![
        ep("10.0.0.1:80"),
        ep("10.0.0.2:80"),
        ep("10.0.0.3:80"),
        ep("10.0.0.4:80"),
    ]);
    let c = eds(LbPolicy::RingHash);
    let b = seeded(&c, &four);
    let before: Vec<SocketAddr> = (0..2000).map(|i| hashed(&b, key(i))).collect();
    let three = flat(vec![
        ep("10.0.0.1:80"),
        ep("10.0.0.2:80"),
        ep("10.0.0.3:80"),
    ]);
    b.update(&c, Some(&three)).unwrap();
    let (mut orphaned, mut moved) = (0, 0);
    for (i, old) in before.iter().enumerate() {
        let now = hashed(&b, key(i as u64));
        if *old == sa("10.0.0.4:80") {
            assert_ne!(now, *old);
            orphaned += 1;
        } else if now != *old {
            moved += 1;
        }
    }
    near(orphaned, 500, 150);
    // The ring keeps its minimum size, so the remaining hosts gain points
    // (256 → 342 each, as in Envoy) and take a few requests from each other;
    // modulo hashing would move three quarters.
    assert!(
        moved < 300,
        "{moved} of 1500 requests left a host that stayed"
    );
}

#[test]
fn without_a_hash_any_host_may_answer() {
    let a = flat(vec![ep("10.0.0.1:80"), ep("10.0.0.2:80")]);
    let b = seeded(&eds(LbPolicy::RingHash), &a);
    let c = counts(&b, 1000);
    near(count(&c, "10.0.0.1:80"), 500, 100);
}

#[test]
fn a_request_keeps_its_host_across_failover_and_back() {
    // Priority 0 (one host) and 1 (two hosts): every hash lands on priority
    // 0 while it is healthy, and spreads over priority 1 when it is not.
    let c = eds(LbPolicy::RingHash);
    let healthy = cla(vec![
        locality(0, None, "z1", vec![ep("10.0.0.1:80")]),
        locality(1, None, "z2", vec![ep("10.0.1.1:80"), ep("10.0.1.2:80")]),
    ]);
    let b = seeded(&c, &healthy);
    assert!((0..200).all(|i| hashed(&b, key(i)) == sa("10.0.0.1:80")));
    let down = cla(vec![
        locality(
            0,
            None,
            "z1",
            vec![with_health(ep("10.0.0.1:80"), HealthStatus::Unhealthy)],
        ),
        locality(1, None, "z2", vec![ep("10.0.1.1:80"), ep("10.0.1.2:80")]),
    ]);
    b.update(&c, Some(&down)).unwrap();
    let during: Vec<SocketAddr> = (0..200).map(|i| hashed(&b, key(i))).collect();
    assert!(
        during
            .iter()
            .all(|a| a.ip().to_string().starts_with("10.0.1."))
    );
    assert!(during.contains(&sa("10.0.1.1:80")) && during.contains(&sa("10.0.1.2:80")));
    // Sticky within the failover priority too.
    assert!((0..200).all(|i| hashed(&b, key(i)) == during[i as usize]));
    b.update(&c, Some(&healthy)).unwrap();
    assert!((0..200).all(|i| hashed(&b, key(i)) == sa("10.0.0.1:80")));
}
