//! `isthmus iptables`: print, install or remove the transparent-capture rules.
//!
//! In Kubernetes the sidecar's init container runs `isthmus iptables --apply`
//! (with `NET_ADMIN`) in the pod's network namespace, as Istio's
//! `istio-iptables` does; by default the command only prints the rules.

use std::io::Write;
use std::process::ExitCode;

use isthmus_sidecar::capture::iptables::List;
use isthmus_sidecar::capture::{
    self, Backend, CaptureOptions, Cidr, Family, OptionsError, Port, Rules, Selection,
};

/// Flags of `isthmus iptables`; defaults are Istio's for an injected pod.
#[derive(Debug, clap::Args)]
#[command(group = clap::ArgGroup::new("action").args(["apply", "cleanup", "print"]))]
pub(crate) struct Args {
    /// Install the rules in this network namespace (`iptables-restore --noflush`),
    /// replacing ours from an earlier run, then print them.
    #[arg(long)]
    apply: bool,
    /// Remove our chains (ISTIO_*) and the jumps to them; other rules stay.
    #[arg(long)]
    cleanup: bool,
    /// Print the rules without installing them (the default).
    #[arg(long)]
    print: bool,
    /// How to print: an `iptables-restore` script or one command per rule.
    #[arg(long, value_enum, default_value_t = Format::Script)]
    format: Format,
    /// The proxy's uid; its own connections are not captured.
    #[arg(long, default_value_t = capture::iptables::DEFAULT_PROXY_ID)]
    proxy_uid: u32,
    /// The proxy's gid; its own connections are not captured.
    #[arg(long, default_value_t = capture::iptables::DEFAULT_PROXY_ID)]
    proxy_gid: u32,
    /// The sidecar's outbound listener port.
    #[arg(long, default_value_t = capture::iptables::DEFAULT_OUTBOUND_PORT)]
    outbound_port: u16,
    /// The sidecar's inbound listener port.
    #[arg(long, default_value_t = capture::iptables::DEFAULT_INBOUND_PORT)]
    inbound_port: u16,
    /// Inbound destination ports to capture: `*`, a comma-separated list, or '' for none.
    #[arg(long, default_value = "*", value_name = "PORTS")]
    inbound_ports: Selection<Port>,
    /// Inbound ports never captured, with `--inbound-ports '*'`; the sidecar's
    /// own 15000,15008,15020,15021,15090 never are.
    #[arg(long, default_value = "", value_name = "PORTS")]
    exclude_inbound_ports: List<Port>,
    /// Outbound destinations to capture: `*` or comma-separated CIDRs.
    #[arg(long, default_value = "*", value_name = "CIDRS")]
    include_outbound_cidrs: Selection<Cidr>,
    /// Outbound destinations never captured (comma-separated CIDRs).
    #[arg(long, default_value = "", value_name = "CIDRS")]
    exclude_outbound_cidrs: List<Cidr>,
    /// Outbound destination ports never captured (comma-separated).
    #[arg(long, default_value = "", value_name = "PORTS")]
    exclude_outbound_ports: List<Port>,
    /// Do not send the proxy's connections to its own pod address to the inbound port.
    #[arg(long)]
    no_redirect_loopback: bool,
    /// Also capture IPv6 (`ip6tables`); with --cleanup, also clean IPv6.
    #[arg(long)]
    ipv6: bool,
    /// Which iptables build --apply and --cleanup run.
    #[arg(long, value_enum, default_value_t = BackendArg::Default)]
    backend: BackendArg,
}

/// How `--print` shows the rules.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum Format {
    /// `iptables-restore --noflush` input, one block per family.
    Script,
    /// One `iptables -t nat ...` command per line, for an empty table.
    Commands,
}

/// Which iptables build to run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum BackendArg {
    /// `iptables-restore` as installed (nf_tables on Debian).
    Default,
    /// `iptables-legacy-restore` (x_tables).
    Legacy,
    /// `iptables-nft-restore`.
    Nft,
}

impl Args {
    fn options(&self) -> CaptureOptions {
        CaptureOptions {
            proxy_uid: self.proxy_uid,
            proxy_gid: self.proxy_gid,
            outbound_port: self.outbound_port,
            inbound_port: self.inbound_port,
            inbound_ports: self.inbound_ports.clone(),
            exclude_inbound_ports: self.exclude_inbound_ports.0.clone(),
            include_outbound_cidrs: self.include_outbound_cidrs.clone(),
            exclude_outbound_cidrs: self.exclude_outbound_cidrs.0.clone(),
            exclude_outbound_ports: self.exclude_outbound_ports.0.clone(),
            redirect_loopback: !self.no_redirect_loopback,
            ipv6: self.ipv6,
        }
    }

    fn backend(&self) -> Backend {
        match self.backend {
            BackendArg::Default => Backend::Default,
            BackendArg::Legacy => Backend::Legacy,
            BackendArg::Nft => Backend::Nft,
        }
    }
}

/// Runs `isthmus iptables`, writing what it did or the rules to `out`.
pub(crate) fn run(args: Args, out: &mut impl Write) -> anyhow::Result<ExitCode> {
    if args.cleanup {
        let families = if args.ipv6 {
            &[Family::V4, Family::V6][..]
        } else {
            &[Family::V4][..]
        };
        let removed = capture::cleanup(families, args.backend())?;
        for (family, r) in families.iter().zip(&removed) {
            let (jumps, chains) = (r.jumps.len(), r.chains.len());
            writeln!(
                out,
                "{}: removed {jumps} jumps and {chains} chains",
                family.iptables()
            )?;
        }
        return Ok(ExitCode::SUCCESS);
    }
    let rules = args.options().rules().map_err(flag_error)?;
    if args.apply {
        capture::apply(&rules, args.backend())?;
    }
    print(&rules, args.format, out)?;
    Ok(ExitCode::SUCCESS)
}

fn print(rules: &Rules, format: Format, out: &mut impl Write) -> std::io::Result<()> {
    match format {
        Format::Script => out.write_all(rules.restore_scripts().as_bytes()),
        Format::Commands => {
            for argv in rules.commands() {
                writeln!(out, "{}", argv.join(" "))?;
            }
            Ok(())
        }
    }
}

/// Names the flag rather than the option field (they match one to one).
fn flag_error(e: OptionsError) -> anyhow::Error {
    match e {
        OptionsError::Field { field, message } => {
            anyhow::anyhow!("--{}: {message}", field.replace('_', "-"))
        }
        other => other.into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Debug, Parser)]
    struct Cli {
        #[command(flatten)]
        args: Args,
    }

    fn output(argv: &[&str]) -> anyhow::Result<String> {
        let cli = Cli::try_parse_from(std::iter::once("iptables").chain(argv.iter().copied()))?;
        let mut out = Vec::new();
        run(cli.args, &mut out)?;
        Ok(String::from_utf8(out)?)
    }

    #[test]
    fn prints_the_default_script() {
        let text = output(&[]).unwrap();
        assert_eq!(
            text,
            CaptureOptions::default().rules().unwrap().restore_scripts()
        );
        assert!(text.starts_with("# iptables-restore --noflush\n*nat\n:ISTIO_INBOUND - [0:0]\n"));
        assert_eq!(output(&["--print"]).unwrap(), text);
    }

    #[test]
    fn flags_reach_the_rules() {
        let text = output(&[
            "--format=commands",
            "--proxy-uid=101",
            "--inbound-ports=",
            "--exclude-outbound-cidrs=10.96.0.0/12, fd00::/8",
            "--exclude-outbound-ports=22",
            "--no-redirect-loopback",
            "--ipv6",
        ])
        .unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert!(
            lines.contains(&"iptables -t nat -A ISTIO_OUTPUT -m owner --uid-owner 101 -j RETURN")
        );
        assert!(lines.contains(&"iptables -t nat -A ISTIO_OUTPUT -d 10.96.0.0/12 -j RETURN"));
        assert!(lines.contains(&"ip6tables -t nat -A ISTIO_OUTPUT -d fd00::/8 -j RETURN"));
        assert!(lines.contains(&"ip6tables -t nat -A ISTIO_OUTPUT -p tcp --dport 22 -j RETURN"));
        assert!(
            !text.contains("PREROUTING"),
            "--inbound-ports '' captures nothing inbound"
        );
        assert!(!text.contains("-j ISTIO_IN_REDIRECT\n"), "{text}");
    }

    #[test]
    fn errors_name_the_flag() {
        let err = |argv: &[&str]| output(argv).unwrap_err().to_string();
        assert_eq!(
            err(&["--inbound-ports=8080,15000"]),
            "--inbound-ports: 15000 is the sidecar admin port (/ready, /metrics), never captured; leave it out"
        );
        assert_eq!(
            err(&["--exclude-outbound-cidrs=fd00::/8"]),
            "--exclude-outbound-cidrs: fd00::/8 is IPv6 but IPv6 capture is off; turn it on or drop it"
        );
        let parse = err(&["--exclude-outbound-cidrs=10.0.0.1/8"]);
        assert!(
            parse.contains("\"10.0.0.1/8\" is not a CIDR: host bits are set after /8"),
            "{parse}"
        );
        let parse = err(&["--exclude-inbound-ports=80,http"]);
        assert!(
            parse.contains("\"http\" is not a port number (1-65535)"),
            "{parse}"
        );
        let both = err(&["--apply", "--cleanup"]);
        assert!(both.contains("cannot be used with"), "{both}");
    }
}
