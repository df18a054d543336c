//! The pump between real loopback sockets, each test with bulk copied
//! through a buffer and spliced through a pipe.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use isthmus_proxy_core::transport::{Direction, Pump, SpliceEnd, Transfer, splice_with};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use super::*;
use crate::run::{DEFAULT_BULK_BUFFER, DEFAULT_PIPE_SIZE};

/// Every wait is bounded by this.
const WAIT: Duration = Duration::from_secs(20);

/// Both ways of moving bulk, at the gateway's default sizes.
const DEFAULTS: [Bulk; 2] = [
    Bulk::Copy(DEFAULT_BULK_BUFFER),
    Bulk::Splice(DEFAULT_PIPE_SIZE),
];

/// Both ways of moving bulk, one page at a time: many fill/write rounds,
/// partial writes included.
const ONE_PAGE: [Bulk; 2] = [Bulk::Copy(4096), Bulk::Splice(4096)];

/// Sums what the splice reports.
#[derive(Default)]
struct Sums(Mutex<(u64, u64)>);

impl Transfer for Sums {
    fn transferred(&self, direction: Direction, bytes: u64) {
        let mut s = self.0.lock().unwrap();
        match direction {
            Direction::ToUpstream => s.0 += bytes,
            Direction::ToDownstream => s.1 += bytes,
        }
    }
}

/// A connected loopback TCP pair.
async fn tcp_pair() -> (TcpStream, TcpStream) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let client = TcpStream::connect(listener.local_addr().unwrap());
    let (client, accepted) = tokio::join!(client, listener.accept());
    (client.unwrap(), accepted.unwrap().0)
}

type SpliceTask = tokio::task::JoinHandle<Result<SpliceStats, SpliceError>>;

/// Pumps between the proxy's two sockets, `down` (to the client) and
/// `up` (to the server), in a task of its own.
fn start_splice(
    mut down: TcpStream,
    mut up: TcpStream,
    bulk: Bulk,
    idle: Option<Duration>,
    sums: std::sync::Arc<Sums>,
) -> SpliceTask {
    let (to_up, to_down) = AdaptivePump::pair(bulk);
    tokio::spawn(async move { splice_with(&mut down, &mut up, to_up, to_down, idle, &*sums).await })
}

/// client ⇄ (down ⇄ pipes ⇄ up) ⇄ server: returns the client, the server
/// and the splice task.
async fn spliced(
    bulk: Bulk,
    idle: Option<Duration>,
    sums: std::sync::Arc<Sums>,
) -> (TcpStream, TcpStream, SpliceTask) {
    let (client, down) = tcp_pair().await;
    let (up, server) = tcp_pair().await;
    (client, server, start_splice(down, up, bulk, idle, sums))
}

/// Everything `stream` sends until EOF (bounded by [`WAIT`]).
async fn read_all(stream: &mut TcpStream) -> Vec<u8> {
    let mut got = Vec::new();
    tokio::time::timeout(WAIT, stream.read_to_end(&mut got))
        .await
        .unwrap()
        .unwrap();
    got
}

/// A pattern with a prime period, so a byte dropped, duplicated or
/// reordered anywhere shows: byte `i` of a stream is `(i + seed) % 251`.
struct Pattern(Vec<u8>);

impl Pattern {
    const CHUNK: usize = 64 * 1024;

    fn new() -> Self {
        Self((0..251 + Self::CHUNK).map(|i| (i % 251) as u8).collect())
    }

    fn at(&self, offset: u64, len: usize) -> &[u8] {
        let start = (offset % 251) as usize;
        &self.0[start..start + len.min(Self::CHUNK)]
    }
}

/// Writes `total` pattern bytes starting at `seed`, then shuts down.
async fn send(stream: &mut (impl AsyncWriteExt + Unpin), pattern: &Pattern, seed: u64, total: u64) {
    let mut sent = 0u64;
    while sent < total {
        let len = (total - sent).min(Pattern::CHUNK as u64) as usize;
        stream
            .write_all(pattern.at(seed + sent, len))
            .await
            .unwrap();
        sent += len as u64;
    }
    stream.shutdown().await.unwrap();
}

/// Reads to EOF, checking every byte against the pattern; returns the count.
async fn receive(stream: &mut (impl AsyncReadExt + Unpin), pattern: &Pattern, seed: u64) -> u64 {
    let mut buf = vec![0u8; Pattern::CHUNK];
    let mut got = 0u64;
    loop {
        let n = stream.read(&mut buf).await.unwrap();
        if n == 0 {
            return got;
        }
        assert!(
            buf[..n] == *pattern.at(seed + got, n),
            "bytes {got}..{} differ from what was sent",
            got + n as u64
        );
        got += n as u64;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sixty_four_mib_each_way_arrive_byte_exact_and_are_counted() {
    const TOTAL: u64 = 64 << 20;
    let sums = std::sync::Arc::new(Sums::default());
    for bulk in ONE_PAGE.into_iter().chain(DEFAULTS) {
        let (client, server, task) = spliced(bulk, None, sums.clone()).await;
        let (mut client_read, mut client_write) = client.into_split();
        let (mut server_read, mut server_write) = server.into_split();
        let pattern = Pattern::new();
        let run = async {
            tokio::join!(
                send(&mut client_write, &pattern, 0, TOTAL),
                send(&mut server_write, &pattern, 100, TOTAL),
                receive(&mut server_read, &pattern, 0),
                receive(&mut client_read, &pattern, 100),
            )
        };
        let ((), (), at_server, at_client) = tokio::time::timeout(WAIT, run).await.unwrap();
        assert_eq!((at_server, at_client), (TOTAL, TOTAL), "{bulk:?}");
        let stats = tokio::time::timeout(WAIT, task)
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        assert_eq!(
            (stats.to_upstream, stats.to_downstream, stats.end),
            (TOTAL, TOTAL, SpliceEnd::Closed)
        );
    }
    assert_eq!(*sums.0.lock().unwrap(), (4 * TOTAL, 4 * TOTAL));
}

/// Writes `message` on `from` and reads it whole on `to`.
async fn exchange(from: &mut TcpStream, to: &mut TcpStream, message: &[u8]) {
    let mut got = vec![0u8; message.len()];
    let (sent, read) = tokio::join!(from.write_all(message), to.read_exact(&mut got));
    sent.unwrap();
    read.unwrap();
    assert!(
        got == message,
        "a {}-byte message arrived changed",
        message.len()
    );
}

/// Request/response traffic of every size around the pipe's: each message
/// is read whole before the next is sent, so a message stuck in the proxy
/// (readiness cleared with bytes left) stalls the exchange.
#[tokio::test]
async fn request_response_exchanges_of_every_size_never_stall() {
    for bulk in DEFAULTS {
        exchanges_of_every_size(bulk).await;
    }
}

async fn exchanges_of_every_size(bulk: Bulk) {
    let sums = std::sync::Arc::new(Sums::default());
    let (mut client, mut server, task) = spliced(bulk, None, sums).await;
    let pattern = Pattern::new();
    // Around the small-read buffer (4 KiB), around the pipe, and beyond it.
    let sizes = [
        1, 7, 100, 1448, 4095, 4096, 4097, 8191, 16384, 65535, 65536, 65537, 200_000,
    ];
    let mut total = 0u64;
    tokio::time::timeout(Duration::from_secs(20), async {
        for round in 0..40u64 {
            for &size in &sizes {
                let size = size + (round as usize % 3);
                let mut message = Vec::with_capacity(size);
                while message.len() < size {
                    let len = (size - message.len()).min(Pattern::CHUNK);
                    message.extend_from_slice(pattern.at(total + message.len() as u64, len));
                }
                exchange(&mut client, &mut server, &message).await;
                exchange(&mut server, &mut client, &message).await;
                total += size as u64;
            }
        }
    })
    .await
    .unwrap_or_else(|_| panic!("every exchange completes ({bulk:?})"));
    drop((client, server));
    let stats = task.await.unwrap().unwrap();
    assert_eq!((stats.to_upstream, stats.to_downstream), (total, total));
}

#[tokio::test]
async fn a_client_half_close_reaches_the_server_which_can_still_answer() {
    for bulk in ONE_PAGE {
        client_half_close(bulk).await;
    }
}

async fn client_half_close(bulk: Bulk) {
    let (mut client, mut server, task) = spliced(bulk, None, Default::default()).await;
    client.write_all(b"request").await.unwrap();
    client.shutdown().await.unwrap();
    let got = read_all(&mut server).await;
    assert_eq!(got, b"request");
    for _ in 0..3 {
        server.write_all(b"part ").await.unwrap();
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    drop(server);
    let answer = read_all(&mut client).await;
    assert_eq!(answer, b"part part part ");
    let stats = task.await.unwrap().unwrap();
    assert_eq!((stats.to_upstream, stats.to_downstream), (7, 15));
    assert_eq!(stats.end, SpliceEnd::Closed);
}

/// Bytes and the FIN already queued when a direction first reads (the
/// FIN seen before the read, so EOF comes without a read of its own): all
/// bytes pass, then the half-close, at every size around the copy buffer.
#[tokio::test]
async fn bytes_queued_with_the_fin_before_the_first_read_all_pass_then_the_half_close() {
    let pattern = Pattern::new();
    let sizes = [1, COPY_SIZE - 1, COPY_SIZE, COPY_SIZE + 1, 100_000];
    for (bulk, len) in DEFAULTS.into_iter().flat_map(|b| sizes.map(|len| (b, len))) {
        let (mut client, down) = tcp_pair().await;
        let (up, mut server) = tcp_pair().await;
        send(&mut client, &pattern, 7, len as u64).await;
        // Let the bytes and the FIN reach the proxy's socket first.
        tokio::time::sleep(Duration::from_millis(20)).await;
        let task = start_splice(down, up, bulk, None, Default::default());
        let got = tokio::time::timeout(WAIT, receive(&mut server, &pattern, 7))
            .await
            .unwrap();
        assert_eq!(got, len as u64, "{len} bytes sent ({bulk:?})");
        // The server answers on its half, then closes.
        server.write_all(b"done").await.unwrap();
        drop(server);
        let answer = read_all(&mut client).await;
        assert_eq!(answer, b"done");
        let stats = task.await.unwrap().unwrap();
        assert_eq!((stats.to_upstream, stats.to_downstream), (len as u64, 4));
    }
}

#[tokio::test]
async fn a_server_half_close_reaches_the_client_which_can_still_send() {
    for bulk in ONE_PAGE {
        server_half_close(bulk).await;
    }
}

async fn server_half_close(bulk: Bulk) {
    let (mut client, mut server, task) = spliced(bulk, None, Default::default()).await;
    server.write_all(b"banner").await.unwrap();
    server.shutdown().await.unwrap();
    let got = read_all(&mut client).await;
    assert_eq!(got, b"banner");
    client.write_all(b"still talking").await.unwrap();
    drop(client);
    let heard = read_all(&mut server).await;
    assert_eq!(heard, b"still talking");
    let stats = task.await.unwrap().unwrap();
    assert_eq!((stats.to_upstream, stats.to_downstream), (13, 6));
    assert_eq!(stats.end, SpliceEnd::Closed);
}

#[tokio::test]
async fn an_idle_connection_ends_after_the_timeout_and_traffic_postpones_it() {
    let idle = Duration::from_millis(300);
    let start = Instant::now();
    let (mut client, mut server, task) = spliced(ONE_PAGE[0], Some(idle), Default::default()).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    client.write_all(b"x").await.unwrap();
    let mut b = [0u8; 1];
    server.read_exact(&mut b).await.unwrap();
    let moved_at = start.elapsed();
    let stats = tokio::time::timeout(WAIT, task)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    let elapsed = start.elapsed();
    assert_eq!((stats.end, stats.to_upstream), (SpliceEnd::IdleTimeout, 1));
    assert!(
        elapsed >= moved_at + idle,
        "{elapsed:?} < {moved_at:?} + {idle:?}"
    );
    assert!(elapsed < Duration::from_secs(5), "{elapsed:?}");
    // The timeout leaves the sockets to their owner; dropping them (as the
    // gateway does) closes both peers.
    let mut rest = Vec::new();
    let n = tokio::time::timeout(WAIT, client.read_to_end(&mut rest))
        .await
        .unwrap();
    assert!(n.is_ok() && rest.is_empty(), "{n:?} {rest:?}");
}

/// The server streams until the splice fails; the one who resets decides
/// which side the error names.
async fn reset_mid_transfer(bulk: Bulk, reset_client: bool) -> SpliceError {
    let (mut client, mut server, task) = spliced(bulk, None, Default::default()).await;
    let pattern = Pattern::new();
    let streaming = async {
        let mut sent = 0u64;
        while server
            .write_all(pattern.at(sent, Pattern::CHUNK))
            .await
            .is_ok()
        {
            sent += Pattern::CHUNK as u64;
            if sent >= 1 << 30 {
                break;
            }
        }
    };
    let reader = async {
        let mut buf = vec![0u8; Pattern::CHUNK];
        let mut got = 0;
        while got < (1 << 20) {
            let n = client.read(&mut buf).await.unwrap();
            assert!(n > 0);
            got += n;
        }
    };
    tokio::time::timeout(WAIT, async {
        tokio::select! {
            () = streaming => panic!("the server stopped streaming"),
            () = reader => {}
        }
    })
    .await
    .unwrap();
    // Linger 0: closing sends a RST instead of a FIN.
    if reset_client {
        client.set_zero_linger().unwrap();
        drop(client);
    } else {
        server.set_zero_linger().unwrap();
        drop(server);
        // The client keeps reading: a pump notices the reset when it reads
        // again, after writing out what it holds.
        tokio::spawn(async move {
            let mut buf = vec![0u8; Pattern::CHUNK];
            while matches!(client.read(&mut buf).await, Ok(n) if n > 0) {}
        });
    }
    tokio::time::timeout(WAIT, task)
        .await
        .expect("the splice ends")
        .unwrap()
        .unwrap_err()
}

#[tokio::test]
async fn a_client_reset_mid_transfer_is_an_error_naming_the_downstream() {
    for bulk in DEFAULTS {
        let err = reset_mid_transfer(bulk, true).await;
        assert_eq!(err.side, "downstream", "{err} ({bulk:?})");
        assert!(err.to_downstream >= 1 << 20, "{err} ({bulk:?})");
    }
}

#[tokio::test]
async fn a_server_reset_mid_transfer_is_an_error_naming_the_upstream() {
    for bulk in DEFAULTS {
        let err = reset_mid_transfer(bulk, false).await;
        assert_eq!(err.side, "upstream", "{err} ({bulk:?})");
    }
}

/// Writes `message` on `client` and drives `pump` (`down` → `up`) until
/// `server` has read it whole.
async fn through(
    pump: &mut AdaptivePump,
    [client, down, up, server]: [&mut TcpStream; 4],
    message: &[u8],
) {
    let mut got = vec![0u8; message.len()];
    let pump_until_read = async {
        tokio::select! {
            ended = std::future::poll_fn(|cx| pump.poll_pump(cx, down, up, Direction::ToUpstream, &())) => {
                panic!("the pump ended: {ended:?}")
            }
            read = server.read_exact(&mut got) => { read.unwrap(); }
        }
    };
    let (sent, ()) = tokio::time::timeout(WAIT, async {
        tokio::join!(client.write_all(message), pump_until_read)
    })
    .await
    .expect("the message arrives");
    sent.unwrap();
    assert!(
        got == message,
        "a {}-byte message arrived changed",
        message.len()
    );
}

#[tokio::test]
async fn small_messages_are_copied_through_the_stack_and_bulk_through_the_store() {
    for bulk in DEFAULTS {
        messages_then_bulk_then_messages(bulk).await;
    }
}

async fn messages_then_bulk_then_messages(bulk: Bulk) {
    let (mut client, mut down) = tcp_pair().await;
    let (mut up, mut server) = tcp_pair().await;
    let mut pump = AdaptivePump::new(bulk, Default::default());
    let pattern = Pattern::new();
    macro_rules! ends {
        () => {
            [&mut client, &mut down, &mut up, &mut server]
        };
    }
    for size in [1, 100, 1448, 4096, COPY_SIZE - 1] {
        for _ in 0..5 {
            through(&mut pump, ends!(), pattern.at(size as u64, size)).await;
        }
    }
    assert_eq!(
        pump.stored(),
        (false, 0),
        "small messages make no store ({bulk:?})"
    );

    // A megabyte at once: after a full copy read, the rest goes through
    // the store.
    let mut megabyte = Vec::with_capacity(1 << 20);
    while megabyte.len() < 1 << 20 {
        megabyte.extend_from_slice(pattern.at(megabyte.len() as u64, Pattern::CHUNK));
    }
    through(&mut pump, ends!(), &megabyte).await;
    let (_, stored) = pump.stored();
    assert!(stored > 0, "bulk went through the store ({bulk:?})");

    // Small messages are copied again (after at most one short read into
    // the store, if the megabyte's last read was a full one).
    for _ in 0..20 {
        through(&mut pump, ends!(), b"small again").await;
    }
    let (held, after) = pump.stored();
    assert!(
        after - stored <= 11,
        "{} more bytes stored ({bulk:?})",
        after - stored
    );
    // A buffer's memory goes back with the bulk; a pipe is kept.
    assert_eq!(held, matches!(bulk, Bulk::Splice(_)), "{bulk:?}");
    let moved = 5 * (1 + 100 + 1448 + 4096 + COPY_SIZE as u64 - 1) + (1 << 20) + 20 * 11;
    assert_eq!(pump.written(), moved);
}

#[tokio::test]
async fn the_pipe_takes_the_size_asked_for_rounded_to_pages() {
    let pipe = pipe::Pipe::new(100_000).unwrap();
    assert_eq!(pipe.capacity, 128 * 1024);
    let pipe = pipe::Pipe::new(1).unwrap();
    assert_eq!(pipe.capacity, 4096);
}

#[tokio::test]
async fn with_zero_copy_off_or_on_the_gateway_splice_moves_the_same_bytes() {
    for bulk in DEFAULTS {
        let (mut client, mut down) = tcp_pair().await;
        let (mut up, mut server) = tcp_pair().await;
        let task =
            tokio::spawn(async move { splice_sockets(&mut down, &mut up, None, bulk, &()).await });
        client.write_all(b"ping").await.unwrap();
        client.shutdown().await.unwrap();
        let mut got = Vec::new();
        server.read_to_end(&mut got).await.unwrap();
        server.write_all(b"pong").await.unwrap();
        drop(server);
        let mut answer = Vec::new();
        client.read_to_end(&mut answer).await.unwrap();
        assert_eq!((&got[..], &answer[..]), (&b"ping"[..], &b"pong"[..]));
        let stats = tokio::time::timeout(WAIT, task)
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        assert_eq!((stats.to_upstream, stats.to_downstream), (4, 4));
    }
}
