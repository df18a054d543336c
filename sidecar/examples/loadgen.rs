//! Fixed-rate HTTP/1.1 load with latency percentiles, for
//! `scripts/bench-sidecar.sh` (wrk has no rate limit, wrk2 is not in
//! Debian, h2load reports no percentiles).
//!
//! `loadgen <url> --host <host> --rate <rps> --connections <n> --seconds <s>`
//!
//! Open loop, as wrk2: each of `n` keep-alive connections sends its share
//! of the rate on a fixed schedule. A request's latency runs from when it
//! was *due* if the previous response on its connection came after that
//! (the system under test held it back: no coordinated omission), else from
//! when it was sent (tokio's millisecond timer waking this generator late is
//! not the proxy's latency). The first second is warm-up and not counted.
//! Prints one JSON line.

use std::time::{Duration, Instant};

use bytes::Bytes;
use http::Request;
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::TokioIo;

struct Args {
    url: http::Uri,
    host: String,
    rate: f64,
    connections: usize,
    seconds: f64,
}

fn args() -> Result<Args, String> {
    let mut it = std::env::args().skip(1);
    let mut url = None;
    let (mut host, mut rate, mut connections, mut seconds) = (None, 1000.0, 16, 20.0);
    while let Some(a) = it.next() {
        let mut value = || it.next().ok_or(format!("{a} needs a value"));
        match a.as_str() {
            "--host" => host = Some(value()?),
            "--rate" => rate = value()?.parse().map_err(|e| format!("--rate: {e}"))?,
            "--connections" => {
                connections = value()?
                    .parse()
                    .map_err(|e| format!("--connections: {e}"))?;
            }
            "--seconds" => seconds = value()?.parse().map_err(|e| format!("--seconds: {e}"))?,
            u if url.is_none() => url = Some(u.parse().map_err(|e| format!("url: {e}"))?),
            other => return Err(format!("unexpected argument {other:?}")),
        }
    }
    let url: http::Uri =
        url.ok_or("usage: loadgen <url> [--host h] [--rate rps] [--connections n] [--seconds s]")?;
    let host = host.unwrap_or_else(|| url.authority().map(|a| a.to_string()).unwrap_or_default());
    if rate <= 0.0 || connections == 0 || seconds <= 0.0 {
        return Err("rate, connections and seconds must be positive".into());
    }
    Ok(Args {
        url,
        host,
        rate,
        connections,
        seconds,
    })
}

/// One connection's share: latencies in microseconds, and errors.
async fn connection(
    args: &Args,
    index: usize,
    start: Instant,
    warm_up: Instant,
) -> (Vec<u32>, u64) {
    let addr = args
        .url
        .authority()
        .map(|a| a.as_str().to_string())
        .unwrap_or_default();
    let path = args
        .url
        .path_and_query()
        .map_or("/", |p| p.as_str())
        .to_string();
    let interval = Duration::from_secs_f64(args.connections as f64 / args.rate);
    let end = start + Duration::from_secs_f64(args.seconds + 1.0);
    // Spread the connections' schedules over one interval.
    let mut due = start + interval.mul_f64(index as f64 / args.connections as f64);
    let (mut latencies, mut errors) = (Vec::new(), 0u64);
    let mut sender = None;
    let mut previous_done = start;
    while due < end {
        tokio::time::sleep_until(due.into()).await;
        // A request whose predecessor on this connection answered after it
        // was due waited for the system under test: that wait counts. A late
        // wake-up of this generator's timer does not.
        let sent_at = if previous_done > due {
            due
        } else {
            Instant::now()
        };
        if sender.is_none() {
            sender = match tokio::net::TcpStream::connect(&addr).await {
                Ok(tcp) => {
                    let _ = tcp.set_nodelay(true);
                    match hyper::client::conn::http1::handshake(TokioIo::new(tcp)).await {
                        Ok((s, conn)) => {
                            tokio::spawn(conn);
                            Some(s)
                        }
                        Err(_) => None,
                    }
                }
                Err(_) => None,
            };
        }
        let ok = match sender.as_mut() {
            Some(s) => {
                let req = Request::get(path.as_str())
                    .header("host", args.host.as_str())
                    .body(Empty::<Bytes>::new())
                    .expect("a valid request");
                match s.send_request(req).await {
                    Ok(resp) => {
                        let status = resp.status();
                        resp.into_body().collect().await.is_ok() && status.is_success()
                    }
                    Err(_) => false,
                }
            }
            None => false,
        };
        previous_done = Instant::now();
        if !ok {
            sender = None;
        }
        if due >= warm_up {
            if ok {
                let us = (previous_done - sent_at)
                    .as_micros()
                    .min(u128::from(u32::MAX));
                latencies.push(us as u32);
            } else {
                errors += 1;
            }
        }
        due += interval;
    }
    (latencies, errors)
}

fn main() {
    let args = match args() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("loadgen: {e}");
            std::process::exit(2);
        }
    };
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a runtime");
    let args = std::sync::Arc::new(args);
    let (latencies, errors) = rt.block_on(async {
        let start = Instant::now() + Duration::from_millis(50);
        let warm_up = start + Duration::from_secs(1);
        let runs: Vec<_> = (0..args.connections)
            .map(|i| {
                let args = args.clone();
                tokio::spawn(async move { connection(&args, i, start, warm_up).await })
            })
            .collect();
        let (mut all, mut errors) = (Vec::new(), 0);
        for run in runs {
            let (l, e) = run.await.expect("a connection task");
            all.extend(l);
            errors += e;
        }
        (all, errors)
    });
    let measured = args.seconds;
    let mut sorted = latencies;
    sorted.sort_unstable();
    let pct = |p: f64| {
        if sorted.is_empty() {
            0
        } else {
            sorted[((sorted.len() as f64 * p).ceil() as usize).clamp(1, sorted.len()) - 1]
        }
    };
    let line = serde_json::json!({
        "requests": sorted.len(),
        "errors": errors,
        "rps": sorted.len() as f64 / measured,
        "p50_us": pct(0.50),
        "p90_us": pct(0.90),
        "p99_us": pct(0.99),
        "p999_us": pct(0.999),
        "max_us": sorted.last().copied().unwrap_or(0),
    });
    println!("{line}");
}
