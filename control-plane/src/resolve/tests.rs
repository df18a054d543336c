use std::net::IpAddr;
use std::time::Duration;

use tokio::time::Instant;

use super::{HostState, ResolverOptions};

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

fn options() -> ResolverOptions {
    ResolverOptions {
        min_refresh: Duration::from_secs(5),
        max_refresh: Duration::from_secs(300),
        keep_stale: Duration::from_secs(60),
        ..ResolverOptions::default()
    }
}

#[tokio::test(start_paused = true)]
async fn refresh_follows_the_ttl_within_bounds() {
    let o = options();
    let now = Instant::now();
    let mut h = HostState::new(now);
    for (ttl, expect) in [(1, 5), (30, 30), (3600, 300)] {
        let answer = Ok((
            vec![ip("10.0.0.2"), ip("10.0.0.1"), ip("10.0.0.2")],
            secs(ttl),
        ));
        assert_eq!(h.apply(answer, now, &o), None);
        assert_eq!(h.next - now, secs(expect), "ttl {ttl}");
    }
    // Sorted, without duplicates.
    assert_eq!(
        h.good.as_ref().unwrap().0,
        vec![ip("10.0.0.1"), ip("10.0.0.2")]
    );
}

#[tokio::test(start_paused = true)]
async fn failures_keep_the_last_answer_for_a_bound_then_drop_it() {
    let o = options();
    let start = Instant::now();
    let mut h = HostState::new(start);
    h.apply(Ok((vec![ip("10.0.0.1")], secs(30))), start, &o);
    // Failures back off from min_refresh, doubling, up to a minute.
    let mut now = start + secs(30);
    let mut waits = Vec::new();
    while now - start < secs(60) {
        let err = h.apply(Err("SERVFAIL".into()), now, &o).unwrap();
        assert_eq!(err, "SERVFAIL");
        assert_eq!(h.good.as_ref().unwrap().0, vec![ip("10.0.0.1")]);
        waits.push((h.next - now).as_secs());
        now = h.next;
    }
    assert_eq!(waits, [5, 10, 20]);
    // An empty answer is a failure too; past keep_stale the answer goes.
    let err = h.apply(Ok((Vec::new(), secs(30))), now, &o).unwrap();
    assert!(
        err.contains("no A or AAAA record") && err.contains("dropped"),
        "{err}"
    );
    assert!(h.good.is_none());
    for _ in 0..10 {
        h.apply(Err("timeout".into()), now, &o);
    }
    assert_eq!(h.next - now, secs(60), "retries are capped at a minute");
    // A good answer resets everything.
    assert_eq!(h.apply(Ok((vec![ip("::1")], secs(10))), now, &o), None);
    assert_eq!((h.failures, h.next - now), (0, secs(10)));
}

fn secs(s: u64) -> Duration {
    Duration::from_secs(s)
}
