//! The `nat`-table rules of transparent capture, as Istio's `istio-iptables` writes them.
//!
//! Four chains, named as Istio names them so operators recognise them:
//!
//! - `PREROUTING -p tcp -j ISTIO_INBOUND`: connections arriving at the pod.
//!   `ISTIO_INBOUND` returns excluded ports (always the sidecar's own,
//!   [`SIDECAR_PORTS`]) and sends the rest to `ISTIO_IN_REDIRECT`, which
//!   redirects them to the inbound listener (15006).
//! - `OUTPUT -p tcp -j ISTIO_OUTPUT`: connections opened inside the pod.
//!   Excluded ports and CIDRs return; the proxy's own connections (by uid and
//!   gid) return, except the ones it makes to the pod's own address over `lo`,
//!   which go to `ISTIO_IN_REDIRECT` (a call to yourself passes through the
//!   inbound side); the app's connections over `lo` return; the rest go to
//!   `ISTIO_REDIRECT`, which redirects them to the outbound listener (15001).
//!
//! Only TCP is captured. Everything here is pure: [`CaptureOptions::rules`]
//! validates and returns data; installing it is [`super::apply`].

use std::collections::BTreeSet;
use std::fmt;
use std::net::IpAddr;
use std::str::FromStr;

/// Our chains in the `nat` table, in the order they are declared.
pub const CHAINS: [&str; 4] = [
    ISTIO_INBOUND,
    ISTIO_REDIRECT,
    ISTIO_IN_REDIRECT,
    ISTIO_OUTPUT,
];

const ISTIO_INBOUND: &str = "ISTIO_INBOUND";
const ISTIO_REDIRECT: &str = "ISTIO_REDIRECT";
const ISTIO_IN_REDIRECT: &str = "ISTIO_IN_REDIRECT";
const ISTIO_OUTPUT: &str = "ISTIO_OUTPUT";

/// Ports inside the pod that inbound capture never redirects, with why.
///
/// 15000 is ours; the others are Istio's well-known sidecar ports, kept out of
/// capture too so Istio-style probes and scrapes keep working when a workload
/// moves over. The capture ports themselves (15001, 15006) are *not* here: a
/// peer dialling them directly is captured and handled by the inbound listener.
pub const SIDECAR_PORTS: [(u16, &str); 5] = [
    (15000, "the sidecar admin port (/ready, /metrics)"),
    (15008, "Istio's HBONE tunnel port"),
    (15020, "Istio's merged metrics port"),
    (15021, "Istio's health port"),
    (15090, "Istio's proxy Prometheus port"),
];

/// The default uid and gid of the proxy, as Istio's.
pub const DEFAULT_PROXY_ID: u32 = 1337;
/// The default outbound capture port (the sidecar's outbound listener).
pub const DEFAULT_OUTBOUND_PORT: u16 = 15001;
/// The default inbound capture port (the sidecar's inbound listener).
pub const DEFAULT_INBOUND_PORT: u16 = 15006;

/// A multiport match takes at most 15 ports.
const MULTIPORT_MAX: usize = 15;

/// Invalid capture options; the message names the option.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum OptionsError {
    /// A port that is not 1-65535.
    #[error("{value:?} is not a port number (1-65535)")]
    Port {
        /// The text given.
        value: String,
    },
    /// A CIDR that does not parse or has host bits set.
    #[error("{value:?} is not a CIDR: {reason}")]
    Cidr {
        /// The text given.
        value: String,
        /// What is wrong with it.
        reason: String,
    },
    /// A valid value that does not fit with the other options.
    #[error("{field}: {message}")]
    Field {
        /// The option (field of [`CaptureOptions`]).
        field: &'static str,
        /// What is wrong and what to do.
        message: String,
    },
}

fn field(field: &'static str, message: impl Into<String>) -> OptionsError {
    OptionsError::Field {
        field,
        message: message.into(),
    }
}

/// An address family: `iptables` or `ip6tables`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Family {
    /// IPv4 (`iptables`).
    V4,
    /// IPv6 (`ip6tables`).
    V6,
}

impl Family {
    /// The family of an address.
    pub fn of(addr: IpAddr) -> Family {
        match addr {
            IpAddr::V4(_) => Family::V4,
            IpAddr::V6(_) => Family::V6,
        }
    }

    /// The command that manages this family's tables.
    pub fn iptables(self) -> &'static str {
        match self {
            Family::V4 => "iptables",
            Family::V6 => "ip6tables",
        }
    }

    fn localhost(self) -> &'static str {
        match self {
            Family::V4 => "127.0.0.1/32",
            Family::V6 => "::1/128",
        }
    }

    /// The source address of inbound passthrough connections (Istio's 127.0.0.6).
    fn passthrough_source(self) -> &'static str {
        match self {
            Family::V4 => "127.0.0.6/32",
            Family::V6 => "::6/128",
        }
    }
}

/// An IP prefix such as `10.0.0.0/8`; a bare address means a single host.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Cidr {
    addr: IpAddr,
    prefix: u8,
}

impl Cidr {
    /// A prefix; fails when `prefix` is too long or `addr` has host bits set.
    pub fn new(addr: IpAddr, prefix: u8) -> Result<Cidr, OptionsError> {
        let value = format!("{addr}/{prefix}");
        let err = |reason: String| OptionsError::Cidr {
            value: value.clone(),
            reason,
        };
        let host_bits = match addr {
            IpAddr::V4(a) if prefix <= 32 => u32::from(a).checked_shl(u32::from(prefix)),
            IpAddr::V6(a) if prefix <= 128 => {
                let rest = u128::from(a).checked_shl(u32::from(prefix));
                rest.map(|r| u32::from(r != 0))
            }
            _ => {
                let max = if addr.is_ipv4() { 32 } else { 128 };
                return Err(err(format!("prefix length {prefix} is over {max}")));
            }
        };
        if host_bits.is_some_and(|bits| bits != 0) {
            return Err(err(format!(
                "host bits are set after /{prefix}; write the network address"
            )));
        }
        Ok(Cidr { addr, prefix })
    }

    /// The network address.
    pub fn addr(&self) -> IpAddr {
        self.addr
    }

    /// The prefix length.
    pub fn prefix(&self) -> u8 {
        self.prefix
    }

    /// The address family.
    pub fn family(&self) -> Family {
        Family::of(self.addr)
    }
}

impl FromStr for Cidr {
    type Err = OptionsError;

    fn from_str(s: &str) -> Result<Cidr, OptionsError> {
        let err = |reason: &str| OptionsError::Cidr {
            value: s.to_owned(),
            reason: reason.to_owned(),
        };
        let (addr, prefix) = match s.split_once('/') {
            Some((addr, prefix)) => (addr, Some(prefix)),
            None => (s, None),
        };
        let addr: IpAddr = addr
            .parse()
            .map_err(|_| err("not an IPv4 or IPv6 address"))?;
        let prefix = match prefix {
            Some(p) => p
                .parse::<u8>()
                .map_err(|_| err("the prefix length is not a number"))?,
            None if addr.is_ipv4() => 32,
            None => 128,
        };
        Cidr::new(addr, prefix)
    }
}

impl fmt::Display for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix)
    }
}

/// `*` (everything) or a comma-separated list (possibly empty: nothing).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum Selection<T> {
    /// `*`.
    #[default]
    All,
    /// Only these.
    Only(Vec<T>),
}

impl<T: FromStr<Err = OptionsError>> FromStr for Selection<T> {
    type Err = OptionsError;

    fn from_str(s: &str) -> Result<Self, OptionsError> {
        if s.trim() == "*" {
            return Ok(Selection::All);
        }
        Ok(Selection::Only(s.parse::<List<T>>()?.0))
    }
}

/// A comma-separated list; the empty string is the empty list.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct List<T>(pub Vec<T>);

impl<T: FromStr<Err = OptionsError>> FromStr for List<T> {
    type Err = OptionsError;

    fn from_str(s: &str) -> Result<Self, OptionsError> {
        s.split(',')
            .map(str::trim)
            .filter(|item| !item.is_empty())
            .map(str::parse)
            .collect::<Result<_, _>>()
            .map(List)
    }
}

/// A TCP port, 1-65535.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Port(pub u16);

impl FromStr for Port {
    type Err = OptionsError;

    fn from_str(s: &str) -> Result<Port, OptionsError> {
        match s.trim().parse::<u16>() {
            Ok(p) if p != 0 => Ok(Port(p)),
            _ => Err(OptionsError::Port {
                value: s.to_owned(),
            }),
        }
    }
}

impl fmt::Display for Port {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// What to capture; the defaults are Istio's defaults for an injected pod.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CaptureOptions {
    /// The proxy's uid: its connections are not captured (default 1337).
    pub proxy_uid: u32,
    /// The proxy's gid: its connections are not captured (default 1337).
    pub proxy_gid: u32,
    /// Where outbound connections are redirected (default 15001).
    pub outbound_port: u16,
    /// Where inbound connections are redirected (default 15006).
    pub inbound_port: u16,
    /// Destination ports of inbound connections to capture (default `*`).
    pub inbound_ports: Selection<Port>,
    /// Inbound ports never captured, on top of [`SIDECAR_PORTS`]; only
    /// meaningful with `inbound_ports: All`.
    pub exclude_inbound_ports: Vec<Port>,
    /// Destinations of outbound connections to capture (default `*`).
    pub include_outbound_cidrs: Selection<Cidr>,
    /// Destinations never captured; wins over `include_outbound_cidrs`.
    pub exclude_outbound_cidrs: Vec<Cidr>,
    /// Destination ports of outbound connections never captured.
    pub exclude_outbound_ports: Vec<Port>,
    /// Send the proxy's own connections to the pod's address (over `lo`) to
    /// the inbound port, as Istio does (default true).
    pub redirect_loopback: bool,
    /// Also write `ip6tables` rules (default false).
    pub ipv6: bool,
}

impl Default for CaptureOptions {
    fn default() -> Self {
        CaptureOptions {
            proxy_uid: DEFAULT_PROXY_ID,
            proxy_gid: DEFAULT_PROXY_ID,
            outbound_port: DEFAULT_OUTBOUND_PORT,
            inbound_port: DEFAULT_INBOUND_PORT,
            inbound_ports: Selection::All,
            exclude_inbound_ports: Vec::new(),
            include_outbound_cidrs: Selection::All,
            exclude_outbound_cidrs: Vec::new(),
            exclude_outbound_ports: Vec::new(),
            redirect_loopback: true,
            ipv6: false,
        }
    }
}

/// One rule: `-A <chain> <args>`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rule {
    /// The chain it is appended to.
    pub chain: &'static str,
    /// The match and target arguments.
    pub args: Vec<String>,
}

impl fmt::Display for Rule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "-A {} {}", self.chain, self.args.join(" "))
    }
}

/// The rules of one address family, in the `nat` table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RuleSet {
    /// `iptables` or `ip6tables`.
    pub family: Family,
    /// The rules, in order.
    pub rules: Vec<Rule>,
}

impl RuleSet {
    /// The `iptables-restore --noflush` input: declaring a chain creates it or
    /// empties it, so the script can be applied over an earlier version.
    pub fn restore_script(&self) -> String {
        self.restore_script_with(&[])
    }

    /// The restore script with `lines` (such as `-D` of stale jumps) run
    /// before the rules, in the same transaction.
    pub(crate) fn restore_script_with(&self, lines: &[String]) -> String {
        let mut out = String::from("*nat\n");
        for chain in CHAINS {
            out.push_str(&format!(":{chain} - [0:0]\n"));
        }
        for line in lines {
            out.push_str(&format!("{line}\n"));
        }
        for rule in &self.rules {
            out.push_str(&format!("{rule}\n"));
        }
        out.push_str("COMMIT\n");
        out
    }

    /// The same rules as separate commands (argument vectors, program first),
    /// for a table that does not have our chains yet.
    pub fn commands(&self) -> Vec<Vec<String>> {
        let cmd = |args: &[&str]| -> Vec<String> {
            let base = [self.family.iptables(), "-t", "nat"];
            base.iter().chain(args).map(|s| (*s).to_owned()).collect()
        };
        let chains = CHAINS.iter().map(|chain| cmd(&["-N", chain]));
        let rules = self
            .rules
            .iter()
            .map(|rule| [cmd(&["-A", rule.chain]), rule.args.clone()].concat());
        chains.chain(rules).collect()
    }
}

/// The rules of every enabled family.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rules {
    /// `iptables` rules.
    pub v4: RuleSet,
    /// `ip6tables` rules, when IPv6 is on.
    pub v6: Option<RuleSet>,
}

impl Rules {
    /// Each family's rules.
    pub fn sets(&self) -> impl Iterator<Item = &RuleSet> {
        std::iter::once(&self.v4).chain(&self.v6)
    }

    /// Every family's restore script, each headed by a comment naming the
    /// command that takes it.
    pub fn restore_scripts(&self) -> String {
        self.sets()
            .map(|set| {
                let cmd = set.family.iptables();
                format!("# {cmd}-restore --noflush\n{}", set.restore_script())
            })
            .collect()
    }

    /// Every family's commands.
    pub fn commands(&self) -> Vec<Vec<String>> {
        self.sets().flat_map(RuleSet::commands).collect()
    }
}

impl CaptureOptions {
    /// Checks the options against each other; the error names the option.
    pub fn validate(&self) -> Result<(), OptionsError> {
        for (name, id) in [("proxy_uid", self.proxy_uid), ("proxy_gid", self.proxy_gid)] {
            if id == u32::MAX {
                return Err(field(name, "4294967295 is (uid_t)-1, not an id"));
            }
        }
        for (name, port) in [
            ("outbound_port", self.outbound_port),
            ("inbound_port", self.inbound_port),
        ] {
            if port == 0 {
                return Err(field(name, "port 0 cannot be a listener's port"));
            }
        }
        if self.outbound_port == self.inbound_port {
            return Err(field(
                "inbound_port",
                format!("{} is also the outbound port", self.inbound_port),
            ));
        }
        let lists = [
            ("inbound_ports", self.inbound_ports()),
            ("exclude_inbound_ports", &self.exclude_inbound_ports[..]),
            ("exclude_outbound_ports", &self.exclude_outbound_ports[..]),
        ];
        for (name, ports) in lists {
            if ports.contains(&Port(0)) {
                return Err(field(name, "port 0 is not a destination port"));
            }
        }
        for port in self.inbound_ports() {
            if let Some((_, what)) = SIDECAR_PORTS.iter().find(|(p, _)| *p == port.0) {
                return Err(field(
                    "inbound_ports",
                    format!("{port} is {what}, never captured; leave it out"),
                ));
            }
            if self.exclude_inbound_ports.contains(port) {
                return Err(field(
                    "inbound_ports",
                    format!("{port} is also in exclude_inbound_ports"),
                ));
            }
        }
        if !self.ipv6 {
            let include = match &self.include_outbound_cidrs {
                Selection::All => &[][..],
                Selection::Only(cidrs) => cidrs,
            };
            let lists = [
                ("include_outbound_cidrs", include),
                ("exclude_outbound_cidrs", &self.exclude_outbound_cidrs[..]),
            ];
            for (name, cidrs) in lists {
                if let Some(c) = cidrs.iter().find(|c| c.family() == Family::V6) {
                    return Err(field(
                        name,
                        format!("{c} is IPv6 but IPv6 capture is off; turn it on or drop it"),
                    ));
                }
            }
        }
        Ok(())
    }

    /// Validates, then returns the rules of every enabled family.
    pub fn rules(&self) -> Result<Rules, OptionsError> {
        self.validate()?;
        Ok(Rules {
            v4: self.rule_set(Family::V4),
            v6: self.ipv6.then(|| self.rule_set(Family::V6)),
        })
    }

    fn inbound_ports(&self) -> &[Port] {
        match &self.inbound_ports {
            Selection::All => &[],
            Selection::Only(ports) => ports,
        }
    }

    fn rule_set(&self, family: Family) -> RuleSet {
        let heads = [
            (ISTIO_REDIRECT, redirect_to(self.outbound_port)),
            (ISTIO_IN_REDIRECT, redirect_to(self.inbound_port)),
        ];
        let rules = heads
            .into_iter()
            .chain(self.inbound_rules())
            .chain(self.output_rules(family))
            .map(|(chain, args)| Rule { chain, args })
            .collect();
        RuleSet { family, rules }
    }

    /// The `PREROUTING` jump and `ISTIO_INBOUND`.
    fn inbound_rules(&self) -> Vec<(&'static str, Vec<String>)> {
        let include = match &self.inbound_ports {
            Selection::Only(ports) if ports.is_empty() => return Vec::new(),
            Selection::Only(ports) => dedup(ports.iter().copied()),
            Selection::All => Vec::new(),
        };
        let mut rules = vec![("PREROUTING", args(&["-p", "tcp", "-j", ISTIO_INBOUND]))];
        if include.is_empty() {
            let sidecar = SIDECAR_PORTS.iter().map(|(p, _)| Port(*p));
            let excluded = dedup(sidecar.chain(self.exclude_inbound_ports.iter().copied()));
            for ports in port_matches(&excluded) {
                let rule = [args(&["-p", "tcp"]), ports, args(&["-j", "RETURN"])].concat();
                rules.push((ISTIO_INBOUND, rule));
            }
            rules.push((ISTIO_INBOUND, args(&["-p", "tcp", "-j", ISTIO_IN_REDIRECT])));
        } else {
            for ports in port_matches(&include) {
                let rule = [
                    args(&["-p", "tcp"]),
                    ports,
                    args(&["-j", ISTIO_IN_REDIRECT]),
                ]
                .concat();
                rules.push((ISTIO_INBOUND, rule));
            }
        }
        rules
    }

    /// The `OUTPUT` jump and `ISTIO_OUTPUT`, in Istio's order.
    fn output_rules(&self, family: Family) -> Vec<(&'static str, Vec<String>)> {
        let jump = ("OUTPUT", args(&["-p", "tcp", "-j", ISTIO_OUTPUT]));
        let body = self
            .output_chain(family)
            .into_iter()
            .map(|rule| (ISTIO_OUTPUT, rule));
        std::iter::once(jump).chain(body).collect()
    }

    fn output_chain(&self, family: Family) -> Vec<Vec<String>> {
        let localhost = family.localhost();
        let mut rules = Vec::new();
        for ports in port_matches(&dedup(self.exclude_outbound_ports.iter().copied())) {
            rules.push([args(&["-p", "tcp"]), ports, args(&["-j", "RETURN"])].concat());
        }
        let passthrough = family.passthrough_source();
        rules.push(args(&["-o", "lo", "-s", passthrough, "-j", "RETURN"]));
        let of_family = |cidrs: &[Cidr]| -> Vec<Cidr> {
            dedup(cidrs.iter().filter(|c| c.family() == family).copied())
        };
        let include = match &self.include_outbound_cidrs {
            Selection::All => None,
            Selection::Only(cidrs) => Some(of_family(cidrs)),
        };
        // An included loopback range means the app's loopback traffic is captured too.
        let include_loopback = include.iter().flatten().any(|c| c.addr().is_loopback());
        let sidecar: Vec<Port> = SIDECAR_PORTS.iter().map(|(p, _)| Port(*p)).collect();
        for (flag, id) in [
            ("--uid-owner", self.proxy_uid),
            ("--gid-owner", self.proxy_gid),
        ] {
            let id = id.to_string();
            if self.redirect_loopback {
                let head = args(&["-o", "lo", "!", "-d", localhost, "-p", "tcp"]);
                let tail = args(&["-m", "owner", flag, &id, "-j", ISTIO_IN_REDIRECT]);
                rules.push([head, negated_port_match(&sidecar), tail].concat());
            }
            if !include_loopback {
                rules.push(args(&[
                    "-o", "lo", "-m", "owner", "!", flag, &id, "-j", "RETURN",
                ]));
            }
            rules.push(args(&["-m", "owner", flag, &id, "-j", "RETURN"]));
        }
        rules.push(args(&["-d", localhost, "-j", "RETURN"]));
        for cidr in of_family(&self.exclude_outbound_cidrs) {
            rules.push(args(&["-d", &cidr.to_string(), "-j", "RETURN"]));
        }
        match include {
            None => rules.push(args(&["-j", ISTIO_REDIRECT])),
            Some(cidrs) => {
                for cidr in cidrs {
                    rules.push(args(&["-d", &cidr.to_string(), "-j", ISTIO_REDIRECT]));
                }
            }
        }
        rules
    }
}

fn args(items: &[&str]) -> Vec<String> {
    items.iter().map(|s| (*s).to_owned()).collect()
}

fn redirect_to(port: u16) -> Vec<String> {
    args(&[
        "-p",
        "tcp",
        "-j",
        "REDIRECT",
        "--to-ports",
        &port.to_string(),
    ])
}

/// Keeps the first of each item, in order.
fn dedup<T: Ord + Copy>(items: impl Iterator<Item = T>) -> Vec<T> {
    let mut seen = BTreeSet::new();
    items.filter(|item| seen.insert(*item)).collect()
}

/// Matches for "destination port is one of `ports`", one per rule (any matches).
fn port_matches(ports: &[Port]) -> Vec<Vec<String>> {
    ports
        .chunks(MULTIPORT_MAX)
        .map(|chunk| match chunk {
            [one] => args(&["--dport", &one.to_string()]),
            many => args(&["-m", "multiport", "--dports", &join(many)]),
        })
        .collect()
}

/// One rule's matches for "destination port is none of `ports`" (all must hold).
fn negated_port_match(ports: &[Port]) -> Vec<String> {
    ports
        .chunks(MULTIPORT_MAX)
        .flat_map(|chunk| match chunk {
            [one] => args(&["!", "--dport", &one.to_string()]),
            many => args(&["-m", "multiport", "!", "--dports", &join(many)]),
        })
        .collect()
}

fn join(ports: &[Port]) -> String {
    ports
        .iter()
        .map(Port::to_string)
        .collect::<Vec<_>>()
        .join(",")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn script(options: &CaptureOptions) -> String {
        options.rules().unwrap().restore_scripts()
    }

    fn err(options: &CaptureOptions) -> String {
        options.validate().unwrap_err().to_string()
    }

    const HEAD: &str = "*nat
:ISTIO_INBOUND - [0:0]
:ISTIO_REDIRECT - [0:0]
:ISTIO_IN_REDIRECT - [0:0]
:ISTIO_OUTPUT - [0:0]
-A ISTIO_REDIRECT -p tcp -j REDIRECT --to-ports 15001
-A ISTIO_IN_REDIRECT -p tcp -j REDIRECT --to-ports 15006
";

    #[test]
    fn defaults_are_istio_defaults() {
        let want = format!(
            "# iptables-restore --noflush
{HEAD}-A PREROUTING -p tcp -j ISTIO_INBOUND
-A ISTIO_INBOUND -p tcp -m multiport --dports 15000,15008,15020,15021,15090 -j RETURN
-A ISTIO_INBOUND -p tcp -j ISTIO_IN_REDIRECT
-A OUTPUT -p tcp -j ISTIO_OUTPUT
-A ISTIO_OUTPUT -o lo -s 127.0.0.6/32 -j RETURN
-A ISTIO_OUTPUT -o lo ! -d 127.0.0.1/32 -p tcp -m multiport ! --dports 15000,15008,15020,15021,15090 -m owner --uid-owner 1337 -j ISTIO_IN_REDIRECT
-A ISTIO_OUTPUT -o lo -m owner ! --uid-owner 1337 -j RETURN
-A ISTIO_OUTPUT -m owner --uid-owner 1337 -j RETURN
-A ISTIO_OUTPUT -o lo ! -d 127.0.0.1/32 -p tcp -m multiport ! --dports 15000,15008,15020,15021,15090 -m owner --gid-owner 1337 -j ISTIO_IN_REDIRECT
-A ISTIO_OUTPUT -o lo -m owner ! --gid-owner 1337 -j RETURN
-A ISTIO_OUTPUT -m owner --gid-owner 1337 -j RETURN
-A ISTIO_OUTPUT -d 127.0.0.1/32 -j RETURN
-A ISTIO_OUTPUT -j ISTIO_REDIRECT
COMMIT
"
        );
        assert_eq!(script(&CaptureOptions::default()), want);
    }

    #[test]
    fn selected_ports_and_cidrs_in_both_families() {
        let options = CaptureOptions {
            proxy_uid: 101,
            proxy_gid: 102,
            outbound_port: 16001,
            inbound_port: 16006,
            inbound_ports: "8080, 9090".parse().unwrap(),
            include_outbound_cidrs: "10.0.0.0/8,127.0.0.0/8,2001:db8::/32".parse().unwrap(),
            exclude_outbound_cidrs: "10.96.0.0/12,fd00::/8".parse::<List<_>>().unwrap().0,
            exclude_outbound_ports: vec![Port(22), Port(3306), Port(22)],
            redirect_loopback: false,
            ipv6: true,
            ..CaptureOptions::default()
        };
        let head = HEAD.replace("15001", "16001").replace("15006", "16006");
        let want = format!(
            "# iptables-restore --noflush
{head}-A PREROUTING -p tcp -j ISTIO_INBOUND
-A ISTIO_INBOUND -p tcp -m multiport --dports 8080,9090 -j ISTIO_IN_REDIRECT
-A OUTPUT -p tcp -j ISTIO_OUTPUT
-A ISTIO_OUTPUT -p tcp -m multiport --dports 22,3306 -j RETURN
-A ISTIO_OUTPUT -o lo -s 127.0.0.6/32 -j RETURN
-A ISTIO_OUTPUT -m owner --uid-owner 101 -j RETURN
-A ISTIO_OUTPUT -m owner --gid-owner 102 -j RETURN
-A ISTIO_OUTPUT -d 127.0.0.1/32 -j RETURN
-A ISTIO_OUTPUT -d 10.96.0.0/12 -j RETURN
-A ISTIO_OUTPUT -d 10.0.0.0/8 -j ISTIO_REDIRECT
-A ISTIO_OUTPUT -d 127.0.0.0/8 -j ISTIO_REDIRECT
COMMIT
# ip6tables-restore --noflush
{head}-A PREROUTING -p tcp -j ISTIO_INBOUND
-A ISTIO_INBOUND -p tcp -m multiport --dports 8080,9090 -j ISTIO_IN_REDIRECT
-A OUTPUT -p tcp -j ISTIO_OUTPUT
-A ISTIO_OUTPUT -p tcp -m multiport --dports 22,3306 -j RETURN
-A ISTIO_OUTPUT -o lo -s ::6/128 -j RETURN
-A ISTIO_OUTPUT -o lo -m owner ! --uid-owner 101 -j RETURN
-A ISTIO_OUTPUT -m owner --uid-owner 101 -j RETURN
-A ISTIO_OUTPUT -o lo -m owner ! --gid-owner 102 -j RETURN
-A ISTIO_OUTPUT -m owner --gid-owner 102 -j RETURN
-A ISTIO_OUTPUT -d ::1/128 -j RETURN
-A ISTIO_OUTPUT -d fd00::/8 -j RETURN
-A ISTIO_OUTPUT -d 2001:db8::/32 -j ISTIO_REDIRECT
COMMIT
"
        );
        // The IPv4 loopback include drops the app-loopback RETURN in IPv4 only.
        assert_eq!(script(&options), want);
    }

    #[test]
    fn nothing_inbound_nothing_outbound_as_commands() {
        let options = CaptureOptions {
            proxy_uid: 0,
            proxy_gid: 0,
            inbound_ports: "".parse().unwrap(),
            include_outbound_cidrs: Selection::Only(Vec::new()),
            redirect_loopback: false,
            ..CaptureOptions::default()
        };
        let commands: Vec<String> = options
            .rules()
            .unwrap()
            .commands()
            .iter()
            .map(|argv| argv.join(" "))
            .collect();
        assert_eq!(
            commands,
            [
                "iptables -t nat -N ISTIO_INBOUND",
                "iptables -t nat -N ISTIO_REDIRECT",
                "iptables -t nat -N ISTIO_IN_REDIRECT",
                "iptables -t nat -N ISTIO_OUTPUT",
                "iptables -t nat -A ISTIO_REDIRECT -p tcp -j REDIRECT --to-ports 15001",
                "iptables -t nat -A ISTIO_IN_REDIRECT -p tcp -j REDIRECT --to-ports 15006",
                "iptables -t nat -A OUTPUT -p tcp -j ISTIO_OUTPUT",
                "iptables -t nat -A ISTIO_OUTPUT -o lo -s 127.0.0.6/32 -j RETURN",
                "iptables -t nat -A ISTIO_OUTPUT -o lo -m owner ! --uid-owner 0 -j RETURN",
                "iptables -t nat -A ISTIO_OUTPUT -m owner --uid-owner 0 -j RETURN",
                "iptables -t nat -A ISTIO_OUTPUT -o lo -m owner ! --gid-owner 0 -j RETURN",
                "iptables -t nat -A ISTIO_OUTPUT -m owner --gid-owner 0 -j RETURN",
                "iptables -t nat -A ISTIO_OUTPUT -d 127.0.0.1/32 -j RETURN",
            ]
        );
    }

    #[test]
    fn inbound_excludes_join_the_sidecar_ports_once() {
        let options = CaptureOptions {
            exclude_inbound_ports: "22,15021,22".parse::<List<_>>().unwrap().0,
            ..CaptureOptions::default()
        };
        let rules = options.rules().unwrap().v4.rules;
        let excluded: Vec<String> = rules
            .iter()
            .filter(|r| r.chain == "ISTIO_INBOUND")
            .map(Rule::to_string)
            .collect();
        assert_eq!(
            excluded,
            [
                "-A ISTIO_INBOUND -p tcp -m multiport --dports 15000,15008,15020,15021,15090,22 -j RETURN",
                "-A ISTIO_INBOUND -p tcp -j ISTIO_IN_REDIRECT",
            ]
        );
    }

    #[test]
    fn long_port_lists_are_split_for_multiport() {
        let ports: Vec<Port> = (1..=16).map(|p| Port(1000 + p)).collect();
        let options = CaptureOptions {
            exclude_outbound_ports: ports.clone(),
            inbound_ports: Selection::Only(vec![Port(80)]),
            ..CaptureOptions::default()
        };
        let rules: Vec<String> = options
            .rules()
            .unwrap()
            .v4
            .rules
            .iter()
            .map(Rule::to_string)
            .collect();
        let first: Vec<String> = ports[..15].iter().map(Port::to_string).collect();
        assert!(rules.contains(&format!(
            "-A ISTIO_OUTPUT -p tcp -m multiport --dports {} -j RETURN",
            first.join(",")
        )));
        assert!(rules.contains(&"-A ISTIO_OUTPUT -p tcp --dport 1016 -j RETURN".to_owned()));
        assert!(
            rules.contains(&"-A ISTIO_INBOUND -p tcp --dport 80 -j ISTIO_IN_REDIRECT".to_owned())
        );
        let many: Vec<Port> = (1..=17).map(Port).collect();
        assert_eq!(
            negated_port_match(&many).join(" "),
            "-m multiport ! --dports 1,2,3,4,5,6,7,8,9,10,11,12,13,14,15 -m multiport ! --dports 16,17"
        );
    }

    #[test]
    fn parsing_ports_cidrs_and_selections() {
        assert_eq!(" 80 ".parse::<Port>(), Ok(Port(80)));
        for bad in ["0", "65536", "http", "-1", ""] {
            assert_eq!(
                bad.parse::<Port>().unwrap_err().to_string(),
                format!("{bad:?} is not a port number (1-65535)")
            );
        }
        assert_eq!("*".parse::<Selection<Port>>(), Ok(Selection::All));
        assert_eq!("".parse::<Selection<Port>>(), Ok(Selection::Only(vec![])));
        assert_eq!(
            "80, 443,".parse::<Selection<Port>>(),
            Ok(Selection::Only(vec![Port(80), Port(443)]))
        );
        assert!("80,*".parse::<Selection<Port>>().is_err());

        let cidr = |s: &str| {
            s.parse::<Cidr>()
                .map(|c| c.to_string())
                .map_err(|e| e.to_string())
        };
        assert_eq!(cidr("10.0.0.0/8"), Ok("10.0.0.0/8".into()));
        assert_eq!(cidr("10.1.2.3"), Ok("10.1.2.3/32".into()));
        assert_eq!(cidr("0.0.0.0/0"), Ok("0.0.0.0/0".into()));
        assert_eq!(cidr("2001:db8::/32"), Ok("2001:db8::/32".into()));
        assert_eq!(cidr("::1"), Ok("::1/128".into()));
        assert_eq!(
            cidr("10.0.0.1/8"),
            Err("\"10.0.0.1/8\" is not a CIDR: host bits are set after /8; write the network address".into())
        );
        assert_eq!(
            cidr("2001:db8::1/32"),
            Err("\"2001:db8::1/32\" is not a CIDR: host bits are set after /32; write the network address".into())
        );
        assert_eq!(
            cidr("10.0.0.0/33"),
            Err("\"10.0.0.0/33\" is not a CIDR: prefix length 33 is over 32".into())
        );
        assert_eq!(
            cidr("10.0.0.0/x"),
            Err("\"10.0.0.0/x\" is not a CIDR: the prefix length is not a number".into())
        );
        assert_eq!(
            cidr("example.com/8"),
            Err("\"example.com/8\" is not a CIDR: not an IPv4 or IPv6 address".into())
        );
    }

    #[test]
    fn validation_names_the_option() {
        let base = CaptureOptions::default;
        let cases = [
            (
                CaptureOptions {
                    inbound_ports: "8080,15021".parse().unwrap(),
                    ..base()
                },
                "inbound_ports: 15021 is Istio's health port, never captured; leave it out",
            ),
            (
                CaptureOptions {
                    inbound_ports: "8080".parse().unwrap(),
                    exclude_inbound_ports: vec![Port(8080)],
                    ..base()
                },
                "inbound_ports: 8080 is also in exclude_inbound_ports",
            ),
            (
                CaptureOptions {
                    proxy_uid: u32::MAX,
                    ..base()
                },
                "proxy_uid: 4294967295 is (uid_t)-1, not an id",
            ),
            (
                CaptureOptions {
                    proxy_gid: u32::MAX,
                    ..base()
                },
                "proxy_gid: 4294967295 is (uid_t)-1, not an id",
            ),
            (
                CaptureOptions {
                    inbound_port: 15001,
                    ..base()
                },
                "inbound_port: 15001 is also the outbound port",
            ),
            (
                CaptureOptions {
                    outbound_port: 0,
                    ..base()
                },
                "outbound_port: port 0 cannot be a listener's port",
            ),
            (
                CaptureOptions {
                    exclude_outbound_ports: vec![Port(0)],
                    ..base()
                },
                "exclude_outbound_ports: port 0 is not a destination port",
            ),
            (
                CaptureOptions {
                    exclude_outbound_cidrs: vec!["fd00::/8".parse().unwrap()],
                    ..base()
                },
                "exclude_outbound_cidrs: fd00::/8 is IPv6 but IPv6 capture is off; turn it on or drop it",
            ),
            (
                CaptureOptions {
                    include_outbound_cidrs: "2001:db8::/32".parse().unwrap(),
                    ..base()
                },
                "include_outbound_cidrs: 2001:db8::/32 is IPv6 but IPv6 capture is off; turn it on or drop it",
            ),
        ];
        for (options, want) in cases {
            assert_eq!(err(&options), want);
            assert!(options.rules().is_err());
        }
        let dual = CaptureOptions {
            ipv6: true,
            include_outbound_cidrs: "2001:db8::/32".parse().unwrap(),
            ..base()
        };
        assert!(dual.rules().unwrap().v6.is_some());
    }
}
