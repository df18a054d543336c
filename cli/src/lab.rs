//! `isthmus lab …`, `isthmus canary`, `isthmus drill failover`: the local
//! federation and its traffic tools (library: `isthmus-lab`).

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use clap::{Args, Subcommand, ValueEnum};
use isthmus_lab::LabSpec;
use isthmus_lab::drill::{self, Mode};
use isthmus_lab::lab::{self, UpOptions};

/// Default state directory of the lab.
pub(crate) const DEFAULT_DIR: &str = ".isthmus-lab";

#[derive(Debug, Args)]
pub(crate) struct Dir {
    /// The lab's state directory (config, certificates, logs).
    #[arg(long, default_value = DEFAULT_DIR, env = "ISTHMUS_LAB_DIR", global = true)]
    dir: PathBuf,
}

/// `isthmus lab …`
#[derive(Debug, Subcommand)]
pub(crate) enum LabCommand {
    /// Start a federation of clusters as local processes and wait until it is ready.
    Up {
        /// Cluster names (each gets its own 127.0.x.0/24 and locality).
        #[arg(long, value_delimiter = ',', default_value = "east,west")]
        clusters: Vec<String>,
        /// Third octet of the first cluster's loopback range (then +10 per cluster).
        #[arg(long, default_value_t = 10)]
        net_base: u8,
        /// Time everything gets to become ready.
        #[arg(long, default_value = "90s", value_parser = crate::control_plane::parse_duration)]
        timeout: Duration,
        #[command(flatten)]
        dir: Dir,
    },
    /// Every cluster's components, addresses and health.
    Status {
        /// Print JSON.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        dir: Dir,
    },
    /// The log of one component (`<cluster>/<component>`, e.g. east/control-plane).
    Logs {
        component: String,
        /// Lines from the end.
        #[arg(long, short = 'n', default_value_t = 50)]
        lines: usize,
        #[command(flatten)]
        dir: Dir,
    },
    /// Stop everything the lab started.
    Down {
        #[command(flatten)]
        dir: Dir,
    },
    /// Send one request through a workload's sidecar: `lab curl east/sleep http://helloworld.sample.global:5000/`.
    Curl {
        /// `<cluster>/<workload>`.
        from: String,
        url: String,
        #[command(flatten)]
        dir: Dir,
    },
    /// Load through a workload's sidecar at a fixed rate, with a report.
    Load {
        /// `<cluster>/<workload>`.
        #[arg(long)]
        from: String,
        #[arg(long)]
        url: String,
        #[arg(long, default_value_t = 50)]
        rps: u32,
        #[arg(long, default_value = "10s", value_parser = crate::control_plane::parse_duration)]
        duration: Duration,
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        dir: Dir,
    },
    /// Replace the shared root CA of the running lab without dropping a request.
    RotateRoot {
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        dir: Dir,
    },
    /// The whole tour: up, a cross-cluster call, a 90/10 canary, a failover drill, down.
    Demo {
        #[arg(long, default_value_t = 10)]
        net_base: u8,
        #[command(flatten)]
        dir: Dir,
    },
    /// (internal) Run the lab supervisor in the foreground.
    #[command(hide = true)]
    Supervise {
        #[command(flatten)]
        dir: Dir,
    },
    /// (internal) The demo application.
    #[command(hide = true)]
    App {
        #[arg(long)]
        service: String,
        #[arg(long)]
        app_version: String,
        #[arg(long)]
        cluster: String,
        #[arg(long)]
        listen: std::net::SocketAddr,
    },
}

/// `isthmus drill …`
#[derive(Debug, Subcommand)]
pub(crate) enum DrillCommand {
    /// Take a cluster's endpoints away under load, measure failover and failback.
    Failover {
        /// `<svc>.<ns>`.
        #[arg(long)]
        service: String,
        /// The cluster whose endpoints go away.
        #[arg(long)]
        cluster: String,
        #[arg(long, value_enum, default_value = "kill")]
        mode: DrillMode,
        #[arg(long, default_value_t = 100)]
        rps: u32,
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        dir: Dir,
    },
}

#[derive(Clone, Copy, Debug, ValueEnum)]
pub(crate) enum DrillMode {
    Kill,
    Blackhole,
    Partition,
}

/// `isthmus canary` arguments.
#[derive(Debug, Args)]
pub(crate) struct CanaryArgs {
    /// `<svc>.<ns>`.
    service: String,
    /// `<cluster>=<percent>,…` summing to 100.
    #[arg(long)]
    weights: String,
    /// Requests used to show the resulting distribution.
    #[arg(long, default_value_t = 400)]
    requests: u32,
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    dir: Dir,
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Runtime::new()?)
}

fn up_options(timeout: Duration) -> anyhow::Result<UpOptions> {
    Ok(UpOptions {
        binary: std::env::current_exe().context("locating the isthmus binary")?,
        timeout,
    })
}

/// Runs `isthmus lab …`.
pub(crate) fn run(cmd: LabCommand) -> anyhow::Result<ExitCode> {
    let mut out = std::io::stdout();
    match cmd {
        LabCommand::Up {
            clusters,
            net_base,
            timeout,
            dir,
        } => {
            let spec = LabSpec {
                clusters,
                net_base,
                dir: dir.dir,
            };
            runtime()?.block_on(lab::up(&spec, &up_options(timeout)?, &mut out))?;
            writeln!(
                out,
                "\nthe lab is up: try `isthmus lab curl east/sleep http://helloworld.sample.global:5000/`"
            )?;
        }
        LabCommand::Status { json, dir } => {
            let r = lab::status(&dir.dir)?;
            if json {
                writeln!(out, "{}", serde_json::to_string_pretty(&r)?)?;
            } else {
                lab::print_table(&r, &mut out)?;
            }
            if !r.running {
                return Ok(ExitCode::from(3));
            }
        }
        LabCommand::Logs {
            component,
            lines,
            dir,
        } => {
            writeln!(out, "{}", lab::logs(&dir.dir, &component, lines)?)?;
        }
        LabCommand::Down { dir } => runtime()?.block_on(lab::down(&dir.dir, &mut out))?,
        LabCommand::Curl { from, url, dir } => {
            let (spec, _) = drill::lab(&dir.dir)?;
            let (_, via) = drill::workload(&spec, &from)?;
            let c = isthmus_lab::client::http_client();
            let r = runtime()?
                .block_on(isthmus_lab::client::send(
                    &c,
                    via,
                    &url,
                    Duration::from_secs(10),
                ))
                .map_err(|f| anyhow::anyhow!("{url} from {from}: {f}"))?;
            writeln!(out, "HTTP {} ({:.1} ms)", r.status, r.latency_ms)?;
            if let Some(flags) = r.headers.get("x-isthmus-response-flags") {
                writeln!(out, "response flags: {flags}")?;
            }
            write!(out, "{}", r.body)?;
            if !(200..300).contains(&r.status) {
                return Ok(ExitCode::FAILURE);
            }
        }
        LabCommand::Load {
            from,
            url,
            rps,
            duration,
            json,
            dir,
        } => {
            let (spec, _) = drill::lab(&dir.dir)?;
            let (_, via) = drill::workload(&spec, &from)?;
            let r = runtime()?.block_on(isthmus_lab::client::load(
                via,
                &url,
                rps,
                duration,
                Duration::from_secs(5),
            ));
            print_load(&r, json, &mut out)?;
        }
        LabCommand::RotateRoot { json, dir } => {
            let r = runtime()?.block_on(isthmus_lab::rotate::rotate_root(&dir.dir, |m| {
                if !json {
                    eprintln!("rotate-root: {m}");
                }
            }))?;
            if json {
                writeln!(out, "{}", serde_json::to_string_pretty(&r)?)?;
            } else {
                writeln!(
                    out,
                    "root rotated in {} ({} steps, {:.1} s); the old root stays trusted until you drop it",
                    r.clusters.join(", "),
                    r.restarted.len(),
                    r.duration_ms as f64 / 1000.0
                )?;
            }
        }
        LabCommand::Demo { net_base, dir } => return demo(&dir.dir, net_base, &mut out),
        LabCommand::Supervise { dir } => {
            let spec: LabSpec = serde_json::from_str(
                &std::fs::read_to_string(dir.dir.join("spec.json"))
                    .with_context(|| format!("no spec.json in {}", dir.dir.display()))?,
            )?;
            let binary = std::env::current_exe()?;
            runtime()?.block_on(isthmus_lab::supervisor::run(spec, binary))?;
        }
        LabCommand::App {
            service,
            app_version: version,
            cluster,
            listen,
        } => {
            let id = isthmus_lab::app::AppIdentity {
                service,
                version,
                cluster,
            };
            runtime()?.block_on(isthmus_lab::app::serve(listen, id))?;
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn print_load(
    r: &isthmus_lab::client::LoadReport,
    json: bool,
    out: &mut impl Write,
) -> anyhow::Result<()> {
    if json {
        writeln!(out, "{}", serde_json::to_string_pretty(r)?)?;
        return Ok(());
    }
    writeln!(
        out,
        "{} requests in {:.1} s, {} failed; latency p50 {:.1} ms, p90 {:.1} ms, p99 {:.1} ms",
        r.requests, r.duration_s, r.failed, r.p50_ms, r.p90_ms, r.p99_ms
    )?;
    let ok = (r.requests - r.failed).max(1) as f64;
    for (v, n) in &r.by_version {
        writeln!(out, "  {v:<16} {n:>6}  {:>5.1}%", *n as f64 * 100.0 / ok)?;
    }
    for (f, n) in &r.failures {
        writeln!(out, "  failed: {f:<24} {n}")?;
    }
    Ok(())
}

/// Runs `isthmus canary`.
pub(crate) fn canary(args: CanaryArgs) -> anyhow::Result<ExitCode> {
    let mut out = std::io::stdout();
    let r = runtime()?.block_on(drill::canary(
        &args.dir.dir,
        &args.service,
        &args.weights,
        args.requests,
    ))?;
    if !args.json {
        writeln!(
            out,
            "canary {} {} written to every cluster; measured split:",
            args.service, args.weights
        )?;
    }
    print_load(&r, args.json, &mut out)?;
    Ok(ExitCode::SUCCESS)
}

/// Runs `isthmus drill …`.
pub(crate) fn drill_cmd(cmd: DrillCommand) -> anyhow::Result<ExitCode> {
    let DrillCommand::Failover {
        service,
        cluster,
        mode,
        rps,
        json,
        dir,
    } = cmd;
    let mode = match mode {
        DrillMode::Kill => Mode::Kill,
        DrillMode::Blackhole => Mode::Blackhole,
        DrillMode::Partition => Mode::Partition,
    };
    let mut out = std::io::stdout();
    let r = runtime()?.block_on(drill::failover(
        &dir.dir,
        &service,
        &cluster,
        mode,
        rps,
        |m| {
            if !json {
                eprintln!("drill: {m}");
            }
        },
    ))?;
    print_drill(&r, json, &mut out)?;
    Ok(ExitCode::SUCCESS)
}

fn print_drill(r: &drill::DrillReport, json: bool, out: &mut impl Write) -> anyhow::Result<()> {
    if json {
        writeln!(out, "{}", serde_json::to_string_pretty(r)?)?;
        return Ok(());
    }
    writeln!(
        out,
        "failover drill: {} in {} ({:?}), load from {}",
        r.service, r.cluster, r.mode, r.from
    )?;
    writeln!(out, "  requests            {}", r.requests)?;
    writeln!(out, "  failed              {}", r.failed)?;
    writeln!(out, "  time to failover    {} ms", r.time_to_failover_ms)?;
    match r.time_to_failback_ms {
        Some(ms) => writeln!(out, "  time to failback    {ms} ms")?,
        None => writeln!(out, "  time to failback    (not seen)")?,
    }
    writeln!(
        out,
        "  latency p50/p99     {:.1} / {:.1} ms",
        r.p50_ms, r.p99_ms
    )?;
    for (c, n) in &r.by_cluster {
        writeln!(out, "  served by {c:<10} {n}")?;
    }
    for (f, n) in &r.failures {
        writeln!(out, "  failed: {f:<22} {n}")?;
    }
    Ok(())
}

/// `lab demo`: up, one cross-cluster call, a 90/10 canary, a drill, down.
fn demo(dir: &Path, net_base: u8, out: &mut std::io::Stdout) -> anyhow::Result<ExitCode> {
    let rt = runtime()?;
    let spec = LabSpec {
        clusters: vec!["east".into(), "west".into()],
        net_base,
        dir: dir.to_path_buf(),
    };
    writeln!(out, "== 1/5 isthmus lab up")?;
    rt.block_on(lab::up(&spec, &up_options(Duration::from_secs(90))?, out))?;
    let result = (|| -> anyhow::Result<()> {
        let spec: LabSpec = serde_json::from_str(&std::fs::read_to_string(dir.join("spec.json"))?)?;
        let east = spec.plan()[0].clone();
        writeln!(
            out,
            "\n== 2/5 a cross-cluster call: everything to west (canary east=0,west=100), then \
             east/sleep → helloworld.sample.global through both gateways, mTLS end to end"
        )?;
        rt.block_on(drill::canary(
            dir,
            "helloworld.sample",
            "east=0,west=100",
            100,
        ))?;
        let c = isthmus_lab::client::http_client();
        let url = "http://helloworld.sample.global:5000/";
        let r = rt
            .block_on(isthmus_lab::client::send(
                &c,
                east.sleep().outbound,
                url,
                Duration::from_secs(10),
            ))
            .map_err(|f| anyhow::anyhow!("cross-cluster call failed: {f}"))?;
        write!(out, "HTTP {} {}", r.status, r.body)?;
        writeln!(
            out,
            "\n== 3/5 isthmus canary helloworld.sample --weights east=90,west=10"
        )?;
        let r = rt.block_on(drill::canary(
            dir,
            "helloworld.sample",
            "east=90,west=10",
            400,
        ))?;
        print_load(&r, false, out)?;
        writeln!(
            out,
            "\n== 4/5 isthmus drill failover --service helloworld.sample --cluster east --mode kill"
        )?;
        let r = rt.block_on(drill::failover(
            dir,
            "helloworld.sample",
            "east",
            Mode::Kill,
            100,
            |m| {
                eprintln!("drill: {m}");
            },
        ))?;
        print_drill(&r, false, out)?;
        Ok(())
    })();
    writeln!(out, "\n== 5/5 isthmus lab down")?;
    rt.block_on(lab::down(dir, out))?;
    result?;
    Ok(ExitCode::SUCCESS)
}
