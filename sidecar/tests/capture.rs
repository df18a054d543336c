//! Transparent capture for real, in network namespaces this test creates.
//!
//! Layout: a "pod" namespace and a "peer" namespace joined by a veth pair,
//! pod 192.0.2.2/24 + 2001:db8::2/64, peer 192.0.2.1/24 + 2001:db8::1/64
//! (documentation prefixes; no packet leaves the two namespaces).
//!
//! [`capture_in_network_namespaces`] builds that (deleted on drop, pass or
//! fail) and re-runs this binary inside the pod namespace as [`netns_helper`].
//! The helper applies the rules with `capture::apply` and plays the proxy: it
//! runs as root, so the rules exclude uid/gid 0 (`--proxy-uid 0`). The app is
//! `bash` (`/dev/tcp`) under `setpriv` as nobody (65534), the peer is `bash` in
//! the peer namespace. Every check is a real connection and
//! `original_destination` on the accepted socket.
//!
//! Needs root and the Debian packages iproute2, iptables, util-linux (setpriv)
//! and bash. `ISTHMUS_SKIP_NETNS_TESTS=1` skips it.

use std::io::Read;
use std::net::SocketAddr;
use std::os::unix::fs::MetadataExt;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail, ensure};
use isthmus_sidecar::capture::{self, Backend, CaptureOptions, Family, Port, original_destination};
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpSocket, TcpStream};

/// Set for the helper: `"<pod namespace> <peer namespace>"`.
const HELPER_ENV: &str = "ISTHMUS_CAPTURE_HELPER";
/// What the helper prints last when every check passed.
const PASSED: &str = "capture scenario passed";
/// Tools are in sbin, which a CI environment may leave off `PATH`.
const SBIN: &str = "/usr/local/sbin:/usr/sbin:/sbin";

fn path() -> String {
    let current = std::env::var("PATH").unwrap_or_default();
    format!("{current}:{SBIN}")
}

fn command(program: &str) -> Command {
    let mut cmd = Command::new(program);
    cmd.env("PATH", path());
    cmd
}

fn run(program: &str, args: &[&str]) -> anyhow::Result<()> {
    let out = command(program)
        .args(args)
        .output()
        .with_context(|| format!("running {program}"))?;
    ensure!(
        out.status.success(),
        "{program} {} failed: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr).trim()
    );
    Ok(())
}

/// Network namespaces, deleted on drop.
struct Namespaces(Vec<String>);

impl Namespaces {
    fn add(&mut self, name: &str) {
        // A namespace left by a killed earlier run with our pid.
        let _ = command("ip").args(["netns", "del", name]).output();
        run("ip", &["netns", "add", name]).unwrap();
        self.0.push(name.to_owned());
        run("ip", &["-n", name, "link", "set", "lo", "up"]).unwrap();
    }
}

impl Drop for Namespaces {
    fn drop(&mut self) {
        for name in &self.0 {
            if let Err(e) = run("ip", &["netns", "del", name]) {
                eprintln!("leaving network namespace {name}: {e:#}");
            }
        }
    }
}

fn preflight() {
    let root = std::fs::metadata("/proc/self")
        .map(|m| m.uid() == 0)
        .unwrap_or(false);
    assert!(
        root,
        "this test creates network namespaces and must run as root (or set ISTHMUS_SKIP_NETNS_TESTS=1)"
    );
    let dirs: Vec<String> = path().split(':').map(str::to_owned).collect();
    for tool in [
        "ip",
        "iptables-restore",
        "iptables-save",
        "ip6tables-restore",
        "setpriv",
        "bash",
    ] {
        let found = dirs
            .iter()
            .any(|d| std::path::Path::new(d).join(tool).exists());
        assert!(
            found,
            "{tool} is missing: apt-get install -y iproute2 iptables util-linux bash (or set ISTHMUS_SKIP_NETNS_TESTS=1)"
        );
    }
}

#[test]
fn capture_in_network_namespaces() {
    if std::env::var_os("ISTHMUS_SKIP_NETNS_TESTS").is_some() {
        eprintln!("skipped: ISTHMUS_SKIP_NETNS_TESTS is set");
        return;
    }
    preflight();
    let pid = std::process::id();
    let (pod, peer) = (
        format!("isthmus-test-{pid}"),
        format!("isthmus-test-{pid}-peer"),
    );
    let mut namespaces = Namespaces(Vec::new());
    namespaces.add(&pod);
    namespaces.add(&peer);
    let (pod_if, peer_if) = (format!("is{pid}a"), format!("is{pid}b"));
    run(
        "ip",
        &[
            "link", "add", &pod_if, "netns", &pod, "type", "veth", "peer", "name", &peer_if,
            "netns", &peer,
        ],
    )
    .unwrap();
    for (ns, dev, v4, v6) in [
        (&pod, &pod_if, "192.0.2.2/24", "2001:db8::2/64"),
        (&peer, &peer_if, "192.0.2.1/24", "2001:db8::1/64"),
    ] {
        run("ip", &["-n", ns, "addr", "add", v4, "dev", dev]).unwrap();
        run("ip", &["-n", ns, "addr", "add", v6, "dev", dev, "nodad"]).unwrap();
        run("ip", &["-n", ns, "link", "set", dev, "up"]).unwrap();
    }

    let exe = std::env::current_exe().unwrap();
    let exe = exe.to_str().unwrap();
    let args = [
        "netns",
        "exec",
        &pod,
        exe,
        "--exact",
        "netns_helper",
        "--ignored",
        "--nocapture",
    ];
    let (ok, output) = run_with_deadline(
        command("ip")
            .args(args)
            .env(HELPER_ENV, format!("{pod} {peer}")),
        Duration::from_secs(60),
    );
    println!("{output}");
    assert!(
        ok && output.contains(PASSED),
        "the helper in {pod} failed (output above)"
    );
    drop(namespaces);
}

/// Runs `cmd` to completion or kills it at `deadline`; stdout and stderr together.
fn run_with_deadline(cmd: &mut Command, deadline: Duration) -> (bool, String) {
    let mut child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let readers = [
        child
            .stdout
            .take()
            .map(|p| Box::new(p) as Box<dyn Read + Send>),
        child
            .stderr
            .take()
            .map(|p| Box::new(p) as Box<dyn Read + Send>),
    ]
    .map(|pipe| {
        std::thread::spawn(move || {
            let mut text = String::new();
            if let Some(mut pipe) = pipe {
                let _ = pipe.read_to_string(&mut text);
            }
            text
        })
    });
    let start = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break Some(status);
        }
        if start.elapsed() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let output: Vec<String> = readers
        .into_iter()
        .map(|r| r.join().unwrap_or_default())
        .collect();
    let timed_out = if status.is_none() {
        "\n(killed: deadline passed)"
    } else {
        ""
    };
    (
        status.is_some_and(|s| s.success()),
        format!("{}{timed_out}", output.join("\n")),
    )
}

#[tokio::test]
#[ignore = "the half of capture_in_network_namespaces that runs inside its pod namespace"]
async fn netns_helper() {
    let Ok(names) = std::env::var(HELPER_ENV) else {
        return;
    };
    let peer = names
        .split_whitespace()
        .nth(1)
        .expect("pod and peer namespace names")
        .to_owned();
    let result = tokio::time::timeout(Duration::from_secs(45), scenario(&peer)).await;
    let result = result.unwrap_or_else(|_| Err(anyhow::anyhow!("the scenario took over 45 s")));
    if let Err(e) = &result {
        println!("FAILED: {e:#}");
        for save in ["iptables-save", "ip6tables-save"] {
            if let Ok(out) = command(save).args(["-t", "nat"]).output() {
                println!("{save} -t nat:\n{}", String::from_utf8_lossy(&out.stdout));
            }
        }
        // Best effort: the namespace is deleted anyway.
        let _ = capture::cleanup(&[Family::V4, Family::V6], Backend::Default);
    }
    result.unwrap();
    println!("{PASSED}");
}

/// The proxy's listeners, bound where the rules redirect to.
struct Proxy {
    outbound_v4: TcpListener,
    outbound_v6: TcpListener,
    /// Dual-stack `[::]:15006`: IPv4 connections arrive v4-mapped.
    inbound: TcpListener,
}

async fn scenario(peer: &str) -> anyhow::Result<()> {
    let options = CaptureOptions {
        proxy_uid: 0,
        proxy_gid: 0,
        exclude_outbound_ports: vec![Port(9999)],
        ipv6: true,
        ..CaptureOptions::default()
    };
    let rules = options.rules()?;
    capture::apply(&rules, Backend::Default)?;
    // Applying again replaces the rules instead of adding a second set.
    capture::apply(&rules, Backend::Default)?;
    for save in ["iptables-save", "ip6tables-save"] {
        let saved = String::from_utf8(command(save).args(["-t", "nat"]).output()?.stdout)?;
        let jumps = saved
            .lines()
            .filter(|l| l.starts_with("-A PREROUTING") || l.starts_with("-A OUTPUT"))
            .count();
        ensure!(
            jumps == 2,
            "{save}: {jumps} jumps from PREROUTING/OUTPUT after two applies:\n{saved}"
        );
    }
    println!("ok: applied twice, one set of rules per family");

    let proxy = Proxy {
        outbound_v4: TcpListener::bind("127.0.0.1:15001").await?,
        outbound_v6: TcpListener::bind("[::1]:15001").await?,
        inbound: dual_stack("[::]:15006".parse()?)?,
    };
    let app = |dst: &str| {
        client(
            &[
                "setpriv",
                "--reuid=65534",
                "--regid=65534",
                "--clear-groups",
            ],
            dst,
        )
    };
    let from_peer = |dst: &str| client(&["ip", "netns", "exec", peer], dst);

    // The app's outbound connections reach the outbound listener.
    captured(app("192.0.2.1:8080"), &proxy.outbound_v4, "192.0.2.1:8080").await?;
    captured(
        app("[2001:db8::1]:8080"),
        &proxy.outbound_v6,
        "[2001:db8::1]:8080",
    )
    .await?;
    // Excluded outbound ports, and the proxy's own connections, go out as they are.
    refused(app("192.0.2.1:9999")).await?;
    for dst in ["192.0.2.1:8080", "[2001:db8::1]:8080"] {
        let err = TcpStream::connect(dst)
            .await
            .err()
            .context("the proxy's own connection was captured")?;
        ensure!(
            err.kind() == std::io::ErrorKind::ConnectionRefused,
            "proxy → {dst}: {err}"
        );
        println!("ok: proxy → {dst} not captured (refused by the peer)");
    }
    // Connections arriving at the pod reach the inbound listener, except to sidecar ports.
    captured(
        from_peer("192.0.2.2:9080"),
        &proxy.inbound,
        "192.0.2.2:9080",
    )
    .await?;
    captured(
        from_peer("[2001:db8::2]:9080"),
        &proxy.inbound,
        "[2001:db8::2]:9080",
    )
    .await?;
    refused(from_peer("192.0.2.2:15021")).await?;
    // The proxy calling its own pod goes through the inbound side; the app doing so does not.
    let accept = tokio::time::timeout(Duration::from_secs(10), proxy.inbound.accept());
    let (own, accepted) = tokio::join!(TcpStream::connect("192.0.2.2:9080"), accept);
    let (accepted, _) = accepted.context("proxy → own pod: not captured")??;
    drop(own?);
    let orig = original_destination(&accepted)?;
    ensure!(
        orig == "192.0.2.2:9080".parse()?,
        "proxy → own pod: original destination {orig}"
    );
    println!(
        "ok: proxy → 192.0.2.2:9080 (own pod, over lo) captured by the inbound listener, original destination {orig}"
    );
    refused(app("192.0.2.2:9080")).await?;

    let removed = capture::cleanup(&[Family::V4, Family::V6], Backend::Default)?;
    for r in &removed {
        ensure!(
            r.chains.len() == 4 && r.jumps.len() == 2,
            "cleanup removed {r:?}"
        );
    }
    for save in ["iptables-save", "ip6tables-save"] {
        let saved = String::from_utf8(command(save).args(["-t", "nat"]).output()?.stdout)?;
        ensure!(!saved.contains("ISTIO"), "{save} after cleanup:\n{saved}");
    }
    refused(app("192.0.2.1:8080")).await?;
    let again = capture::cleanup(&[Family::V4, Family::V6], Backend::Default)?;
    ensure!(
        again
            .iter()
            .all(|r| r.chains.is_empty() && r.jumps.is_empty()),
        "second cleanup: {again:?}"
    );
    println!(
        "ok: cleanup removed 4 chains and 2 jumps per family; the app is no longer captured; cleanup again is a no-op"
    );
    drop(proxy);
    Ok(())
}

fn dual_stack(addr: SocketAddr) -> anyhow::Result<TcpListener> {
    let socket = socket2::Socket::new(socket2::Domain::IPV6, socket2::Type::STREAM, None)?;
    socket.set_only_v6(false)?;
    // Tokio needs it non-blocking; a blocking accept would stall the runtime.
    socket.set_nonblocking(true)?;
    let socket = TcpSocket::from_std_stream(socket.into());
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    Ok(socket.listen(16)?)
}

/// A client that connects to `dst`, prints the first line it reads and exits.
struct Client {
    cmd: tokio::process::Command,
    what: String,
}

/// `bash` connecting with `/dev/tcp`, run under `prefix` (a uid or a namespace).
fn client(prefix: &[&str], dst: &str) -> Client {
    let dst: SocketAddr = dst.parse().expect("test address");
    let script = r#"exec 3<>"/dev/tcp/$1/$2" || exit 7; read -r line <&3; echo "$line""#;
    let mut cmd = tokio::process::Command::new(prefix[0]);
    cmd.args(&prefix[1..])
        .args([
            "bash",
            "-c",
            script,
            "bash",
            &dst.ip().to_string(),
            &dst.port().to_string(),
        ])
        .env("PATH", path())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    let who = if prefix[0] == "setpriv" {
        "app (uid 65534)"
    } else {
        "peer"
    };
    Client {
        cmd,
        what: format!("{who} → {dst}"),
    }
}

/// `client`'s connection arrives at `listener` with original destination `want`.
async fn captured(mut client: Client, listener: &TcpListener, want: &str) -> anyhow::Result<()> {
    let what = &client.what;
    let child = client.cmd.spawn()?;
    let accepted = tokio::time::timeout(Duration::from_secs(10), listener.accept()).await;
    let Ok(accepted) = accepted else {
        let out = tokio::time::timeout(Duration::from_secs(5), child.wait_with_output()).await;
        let stderr = out.map(|o| o.map(|o| String::from_utf8_lossy(&o.stderr).into_owned()));
        bail!("{what}: not captured by this listener: {stderr:?}");
    };
    let (mut stream, _) = accepted?;
    let orig = original_destination(&stream)?;
    ensure!(
        orig == want.parse::<SocketAddr>()?,
        "{what}: original destination {orig}, want {want}"
    );
    stream.write_all(b"captured\n").await?;
    let out = tokio::time::timeout(Duration::from_secs(10), child.wait_with_output()).await??;
    ensure!(
        out.status.success() && out.stdout == b"captured\n",
        "{what}: client {}: {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    let local = stream.local_addr()?;
    println!("ok: {what} captured by the listener on {local}, original destination {orig}");
    Ok(())
}

/// `client`'s connection is not captured: nothing listens at its destination.
async fn refused(mut client: Client) -> anyhow::Result<()> {
    let what = &client.what;
    let child = client.cmd.spawn()?;
    let out = tokio::time::timeout(Duration::from_secs(10), child.wait_with_output())
        .await
        .with_context(|| format!("{what}: connected and waited (captured?)"))??;
    let stderr = String::from_utf8_lossy(&out.stderr);
    ensure!(
        !out.status.success() && stderr.contains("Connection refused"),
        "{what}: want connection refused, got {}: {}{stderr}",
        out.status,
        String::from_utf8_lossy(&out.stdout)
    );
    println!("ok: {what} not captured (refused)");
    Ok(())
}
