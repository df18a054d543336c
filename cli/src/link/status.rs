//! `isthmus status`: peers as the federation controllers see them (their admin `/status`).

use std::io::Write;
use std::net::SocketAddr;
use std::process::ExitCode;
use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::{Context, bail};
use clap::Args;
use isthmus_federation::admin::Status;

/// Arguments of `isthmus status`.
#[derive(Debug, Args)]
pub(crate) struct StatusArgs {
    /// Admin address of a federation controller (repeat for several clusters).
    #[arg(long = "admin", default_value = "127.0.0.1:15022")]
    admins: Vec<SocketAddr>,
    /// Print JSON.
    #[arg(long)]
    json: bool,
}

async fn fetch_status(admin: SocketAddr) -> anyhow::Result<Status> {
    use http_body_util::{BodyExt, Empty};
    let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .build_http::<Empty<bytes::Bytes>>();
    let uri: hyper::Uri = format!("http://{admin}/status").parse()?;
    let response = tokio::time::timeout(std::time::Duration::from_secs(3), client.get(uri))
        .await
        .with_context(|| format!("{admin}: no answer within 3 s"))?
        .with_context(|| format!("{admin}: is a federation controller's admin server there?"))?;
    let status = response.status();
    let body = response.into_body().collect().await?.to_bytes();
    if !status.is_success() {
        bail!("{admin}/status: HTTP {status}");
    }
    serde_json::from_slice(&body).with_context(|| format!("{admin}/status: unexpected answer"))
}

fn ago(unix: Option<u64>) -> String {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    unix.map_or_else(
        || "never".into(),
        |t| format!("{}s ago", now.saturating_sub(t)),
    )
}

/// Runs `isthmus status`.
pub(crate) fn status(args: &StatusArgs, out: &mut impl Write) -> anyhow::Result<ExitCode> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let statuses = rt.block_on(async {
        let mut all = Vec::new();
        for admin in &args.admins {
            all.push(fetch_status(*admin).await);
        }
        all
    });
    if args.json {
        let json: Vec<serde_json::Value> = statuses
            .iter()
            .zip(&args.admins)
            .map(|(s, admin)| match s {
                Ok(s) => serde_json::to_value(s).unwrap_or_default(),
                Err(e) => serde_json::json!({ "admin": admin, "error": format!("{e:#}") }),
            })
            .collect();
        writeln!(out, "{}", serde_json::to_string_pretty(&json)?)?;
    } else {
        for (s, admin) in statuses.iter().zip(&args.admins) {
            let s = match s {
                Ok(s) => s,
                Err(e) => {
                    writeln!(out, "{admin}: {e:#}\n")?;
                    continue;
                }
            };
            writeln!(
                out,
                "CLUSTER {}  exports {} service(s), catalog v{}",
                s.cluster, s.exported, s.catalog_version
            )?;
            writeln!(
                out,
                "{:<12} {:<6} {:<11} {:>9} {:>8} {:>8} {:<10} LAST ERROR",
                "PEER", "STATE", "CONNECTION", "PROBE", "EXPORTED", "IMPORTED", "LAST SYNC"
            )?;
            for p in &s.peers {
                writeln!(
                    out,
                    "{:<12} {:<6} {:<11} {:>9} {:>8} {:>8} {:<10} {}",
                    p.name,
                    p.state,
                    p.connection,
                    p.probe_latency_ms
                        .map_or_else(|| "-".into(), |ms| format!("{ms:.1}ms")),
                    p.exported,
                    p.imported,
                    ago(p.last_sync),
                    p.last_error.as_deref().unwrap_or("-"),
                )?;
            }
            writeln!(out)?;
        }
    }
    let failed = statuses.iter().any(Result::is_err);
    Ok(if failed {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    })
}
