//! Kubernetes mode of `isthmus link --context <a> --context <b>`: reads each cluster's
//! MeshFederation, gateway and federation addresses and root certificate from its API server
//! ([`discover`]), then writes each cluster's peer entry into the other's MeshFederation
//! ([`write`]).

mod check;
mod discover;
mod write;

use std::io::Write;
use std::path::Path;
use std::process::ExitCode;

use anyhow::{Context, bail};
use kube::config::{KubeConfigOptions, Kubeconfig};

use super::LinkArgs;
use discover::{Cluster, Overrides};
use write::write_peer;

/// A client for `context` of the kubeconfig at `path`, else of the default kubeconfig
/// ($KUBECONFIG, else ~/.kube/config).
async fn client(path: Option<&Path>, context: &str) -> anyhow::Result<kube::Client> {
    let options = KubeConfigOptions {
        context: Some(context.to_owned()),
        ..KubeConfigOptions::default()
    };
    let config = match path {
        Some(path) => {
            let kubeconfig = Kubeconfig::read_from(path)
                .with_context(|| format!("reading kubeconfig {}", path.display()))?;
            kube::Config::from_custom_kubeconfig(kubeconfig, &options).await
        }
        None => kube::Config::from_kubeconfig(&options).await,
    }
    .with_context(|| {
        let file = path.map_or("$KUBECONFIG or ~/.kube/config".into(), |p| {
            p.display().to_string()
        });
        format!("kubeconfig context {context:?} ({file})")
    })?;
    kube::Client::try_from(config).with_context(|| format!("kubeconfig context {context:?}"))
}

/// `host:port` with a non-empty host and a numeric port.
fn check_host_port(flag: &str, value: &str) -> anyhow::Result<()> {
    let ok = value
        .rsplit_once(':')
        .is_some_and(|(host, port)| !host.is_empty() && port.parse::<u16>().is_ok_and(|p| p > 0));
    if !ok {
        bail!("{flag} {value:?}: expected <context>=<host:port>");
    }
    Ok(())
}

/// The `--gateway-address` and `--federation-endpoint` values for `context`, checking that
/// every one names one of the two contexts.
fn overrides(args: &LinkArgs, context: &str) -> anyhow::Result<Overrides> {
    let mut found = Overrides::default();
    for (flag, values) in [
        ("--gateway-address", &args.gateway_addresses),
        ("--federation-endpoint", &args.federation_endpoints),
    ] {
        for pair in values {
            let Some((ctx, address)) = pair.split_once('=') else {
                bail!("{flag} {pair:?}: expected <context>=<host:port>");
            };
            if !args.contexts.iter().any(|c| c == ctx) {
                bail!("{flag} {pair:?}: {ctx:?} is not one of the --context values");
            }
            check_host_port(flag, pair)?;
            if ctx != context {
                continue;
            }
            if flag == "--gateway-address" {
                found.gateway.push(address.to_owned());
            } else if found.federation.replace(address.to_owned()).is_some() {
                bail!("{flag}: give one federation endpoint per context ({ctx:?} has several)");
            }
        }
    }
    Ok(found)
}

async fn read_cluster(args: &LinkArgs, context: &str) -> anyhow::Result<Cluster> {
    let overrides = overrides(args, context)?;
    let client = client(args.kubeconfig.as_deref(), context).await?;
    discover::cluster(client, context, &args.namespace, &args.ca_secret, overrides).await
}

/// Links the clusters behind contexts `a` and `b`.
pub(super) async fn run(
    args: &LinkArgs,
    (a, b): (&str, &str),
    out: &mut impl Write,
) -> anyhow::Result<ExitCode> {
    let (a, b) = tokio::try_join!(read_cluster(args, a), read_cluster(args, b))?;
    if a.local.cluster == b.local.cluster {
        bail!(
            "contexts {} and {} are both cluster {:?} (spec.local.cluster of their \
             MeshFederations); link two different clusters",
            a.context,
            b.context,
            a.local.cluster
        );
    }
    let (peer_a, peer_b) = (a.peer(), b.peer());
    let (in_a, conflicts_a) = write_peer(&a.api, a.object.clone(), &peer_b, &a.context).await?;
    let (in_b, conflicts_b) = write_peer(&b.api, b.object.clone(), &peer_a, &b.context).await?;
    let (name_a, name_b) = (&a.local.cluster, &b.local.cluster);
    if args.json {
        let reach = |c: &Cluster| {
            serde_json::json!({
                "gatewayAddresses": c.gateway.source,
                "federationEndpoint": c.federation.source,
                "trustBundle": c.trust_bundle_source,
            })
        };
        let report = serde_json::json!({
            "linked": [name_a, name_b],
            "contexts": { (name_a): a.context, (name_b): b.context },
            "objects": {
                (name_a): format!("{}/{}", a.namespace, a.name()),
                (name_b): format!("{}/{}", b.namespace, b.name()),
            },
            "peers": { (name_a): peer_b, (name_b): peer_a },
            "changes": { (name_a): in_a, (name_b): in_b },
            "conflicts": { (name_a): conflicts_a, (name_b): conflicts_b },
            "sources": { (name_a): reach(&a), (name_b): reach(&b) },
            "warnings": a.warnings.iter().chain(&b.warnings).collect::<Vec<_>>(),
        });
        writeln!(out, "{}", serde_json::to_string_pretty(&report)?)?;
        return Ok(ExitCode::SUCCESS);
    }
    for warning in a.warnings.iter().chain(&b.warnings) {
        writeln!(out, "warning: {warning}")?;
    }
    writeln!(out, "linked {name_a} and {name_b}:")?;
    for (c, outcome, conflicts, peer) in [
        (&a, in_a, conflicts_a, &peer_b),
        (&b, in_b, conflicts_b, &peer_a),
    ] {
        let retried = match conflicts {
            0 => String::new(),
            n => format!(
                " (after {n} conflicting write{})",
                if n == 1 { "" } else { "s" }
            ),
        };
        writeln!(
            out,
            "  {name} (context {ctx}): MeshFederation {ns}/{mf}: peer {peer} {outcome}{retried}",
            name = c.local.cluster,
            ctx = c.context,
            ns = c.namespace,
            mf = c.name(),
            peer = peer.name,
        )?;
    }
    for c in [&a, &b] {
        writeln!(out, "  peers reach {}:", c.local.cluster)?;
        let endpoint = &c.federation.addresses[0];
        let more = match c.federation.addresses.len() {
            1 => String::new(),
            n => format!(", first of {n}"),
        };
        writeln!(
            out,
            "    federation {endpoint} (from {}{more})",
            c.federation.source
        )?;
        writeln!(
            out,
            "    gateway {} (from {})",
            c.gateway.addresses.join(", "),
            c.gateway.source
        )?;
        writeln!(out, "    trust bundle: {}", c.trust_bundle_source)?;
    }
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests;
