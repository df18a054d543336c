//! Zones and the immutable answer snapshot.
//!
//! A [`Snapshot`] is built once per feed message ([`Snapshot::build`]) and
//! never changes: every record the server can answer is already there, in
//! the order this server's cluster and locality want. The request path only
//! does [`Snapshot::lookup`] (a hash lookup on the query name's wire labels).

mod build;
mod order;

use std::collections::{HashMap, HashSet};

/// Hash state of the name tables: foldhash, seeded per process (query names
/// come from the network; a fixed seed would let a client aim at collisions).
/// SipHash was a tenth of the UDP fast path's CPU.
type NameHasher = foldhash::fast::RandomState;
use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use hickory_proto::rr::{LowerName, Name, RData, Record, RecordType};
use isthmus_api::naming::Locality;

pub use order::order_endpoints;

/// Default TTL of every answer.
pub const DEFAULT_TTL: Duration = Duration::from_secs(5);

/// What an A/AAAA query for a service returns.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Policy {
    /// The service's virtual IP; the caller's sidecar balances.
    #[default]
    Vip,
    /// Endpoint (or remote gateway) addresses, ordered by locality.
    Endpoints,
}

impl FromStr for Policy {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s.to_ascii_lowercase().as_str() {
            "vip" => Ok(Policy::Vip),
            "endpoints" => Ok(Policy::Endpoints),
            other => Err(format!(
                "unknown answer policy {other:?}: expected vip or endpoints"
            )),
        }
    }
}

impl fmt::Display for Policy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Policy::Vip => "vip",
            Policy::Endpoints => "endpoints",
        })
    }
}

/// How service names sit in a zone.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Layout {
    /// `<svc>.<ns>.<zone>` (Istio's `.global`).
    Global,
    /// `<svc>.<ns>.svc.<zone>` (Kubernetes MCS, `clusterset.local`).
    Mcs,
}

impl Layout {
    /// MCS for zones ending in `clusterset.local.`, Global otherwise.
    pub fn for_origin(origin: &Name) -> Layout {
        let mcs = Name::from_ascii("clusterset.local.").expect("static name");
        if mcs.zone_of(origin) {
            Layout::Mcs
        } else {
            Layout::Global
        }
    }
}

/// One zone this server is authoritative for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ZoneConfig {
    /// The apex, fully qualified (`global.`).
    pub origin: Name,
    pub policy: Policy,
    pub layout: Layout,
}

impl ZoneConfig {
    /// A zone with the layout its name implies.
    pub fn new(origin: &str, policy: Policy) -> Result<ZoneConfig, String> {
        let mut origin = Name::from_ascii(origin).map_err(|e| format!("zone {origin:?}: {e}"))?;
        origin.set_fqdn(true);
        let origin = origin.to_lowercase();
        Ok(ZoneConfig {
            layout: Layout::for_origin(&origin),
            origin,
            policy,
        })
    }

    /// `global.` and `clusterset.local.` with one policy.
    pub fn defaults(policy: Policy) -> Vec<ZoneConfig> {
        ["global.", "clusterset.local."]
            .into_iter()
            .map(|z| ZoneConfig::new(z, policy).expect("static zone"))
            .collect()
    }
}

/// What answers are built for: the zones and who "local" is.
#[derive(Clone, Debug)]
pub struct AnswerConfig {
    pub zones: Vec<ZoneConfig>,
    /// This server's cluster: its endpoints come first.
    pub cluster: String,
    /// This server's locality: then endpoints by proximity to it.
    pub locality: Locality,
    pub ttl: Duration,
}

/// Records of one owner name.
#[derive(Clone, Debug, Default)]
pub struct Node {
    pub a: Vec<Record>,
    pub aaaa: Vec<Record>,
    pub srv: Vec<Record>,
    /// Addresses of SRV targets.
    pub additionals: Vec<Record>,
    /// `a` encoded for the UDP fast path ([`WireAnswers`]).
    pub a_wire: WireAnswers,
    /// `aaaa` encoded for the UDP fast path.
    pub aaaa_wire: WireAnswers,
}

/// An answer section encoded once, when the snapshot is built: each record's
/// owner is the 2-byte pointer `0xC00C` to the question's name (which always
/// starts at offset 12), so the bytes fit any query for the name, in
/// whatever letter case it was asked.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct WireAnswers {
    /// Records in `bytes` (the response's ANCOUNT).
    pub count: u16,
    pub bytes: Box<[u8]>,
}

impl WireAnswers {
    /// Encodes A and AAAA records; `None` for any other type (not needed by the fast path).
    pub fn encode(records: &[Record]) -> Option<WireAnswers> {
        let mut bytes = Vec::with_capacity(records.len() * 28);
        for record in records {
            let mut octets = [0u8; 16];
            let rdata: &[u8] = match &record.data {
                RData::A(a) => {
                    octets[..4].copy_from_slice(&a.0.octets());
                    &octets[..4]
                }
                RData::AAAA(aaaa) => {
                    octets.copy_from_slice(&aaaa.0.octets());
                    &octets
                }
                _ => return None,
            };
            bytes.extend_from_slice(&[0xC0, 0x0C]);
            bytes.extend_from_slice(&u16::from(record.record_type()).to_be_bytes());
            bytes.extend_from_slice(&u16::from(record.dns_class).to_be_bytes());
            bytes.extend_from_slice(&record.ttl.to_be_bytes());
            bytes.extend_from_slice(&(rdata.len() as u16).to_be_bytes());
            bytes.extend_from_slice(rdata);
        }
        Some(WireAnswers {
            count: u16::try_from(records.len()).ok()?,
            bytes: bytes.into_boxed_slice(),
        })
    }
}

impl Node {
    /// The answer records for `qtype` (as three slices, concatenated by the caller).
    pub fn answers(&self, qtype: RecordType) -> [&[Record]; 3] {
        match qtype {
            RecordType::A => [&self.a, &[], &[]],
            RecordType::AAAA => [&[], &self.aaaa, &[]],
            RecordType::SRV => [&[], &[], &self.srv],
            RecordType::ANY => [&self.a, &self.aaaa, &self.srv],
            _ => [&[], &[], &[]],
        }
    }
}

/// One zone's names in a snapshot.
#[derive(Debug)]
pub struct ZoneData {
    pub config: ZoneConfig,
    origin: LowerName,
    origin_labels: usize,
    /// The origin in lowercase wire format, root label included (`\x06global\x00`).
    pub(crate) origin_wire: Box<[u8]>,
    /// Relative name in wire labels (`\x07reviews\x07default`) → records.
    names: HashMap<Box<[u8]>, Node, NameHasher>,
    /// Names that exist only because something is below them (`default.global.`).
    empty_non_terminals: HashSet<Box<[u8]>, NameHasher>,
    pub soa: Record,
    pub ns: Record,
    /// Services in the zone.
    pub services: usize,
}

/// What a name inside a zone is.
#[derive(Debug)]
pub enum Found<'a> {
    Apex,
    Node(&'a Node),
    /// Exists, no records of its own (NODATA for every type).
    EmptyNonTerminal,
    NxDomain,
}

/// Every answer, for one feed version.
#[derive(Debug)]
pub struct Snapshot {
    pub version: u64,
    pub zones: Vec<ZoneData>,
    /// Whether it came from the control plane (false for the empty start snapshot).
    pub from_feed: bool,
}

/// Longest relative name we look up (DNS names are at most 255 bytes).
const MAX_KEY: usize = 255;

impl Snapshot {
    /// A snapshot with the zones and no services (before the first feed message).
    pub fn empty(config: &AnswerConfig) -> Snapshot {
        let mut s = Snapshot::build(&isthmus_proto::dns::Snapshot::default(), config);
        s.from_feed = false;
        s
    }

    /// The zone `name` is in (the longest matching origin), with its index.
    pub fn zone_for(&self, name: &LowerName) -> Option<&ZoneData> {
        self.zones
            .iter()
            .filter(|z| z.origin.zone_of(name))
            .max_by_key(|z| z.origin_labels)
    }

    /// Finds `name` in `zone`. No allocation.
    pub fn lookup<'a>(zone: &'a ZoneData, name: &LowerName) -> Found<'a> {
        let labels = name.iter().count();
        let relative = labels.saturating_sub(zone.origin_labels);
        if relative == 0 {
            return Found::Apex;
        }
        let mut key = [0u8; MAX_KEY];
        let mut len = 0;
        for label in name.iter().take(relative) {
            let end = len + 1 + label.len();
            if end > MAX_KEY {
                return Found::NxDomain;
            }
            key[len] = label.len() as u8;
            key[len + 1..end].copy_from_slice(label);
            len = end;
        }
        let key = &key[..len];
        if let Some(node) = zone.names.get(key) {
            Found::Node(node)
        } else if zone.empty_non_terminals.contains(key) {
            Found::EmptyNonTerminal
        } else {
            Found::NxDomain
        }
    }

    /// Finds a name given as lowercase wire labels with the root label
    /// (`\x07reviews\x07default\x06global\x00`): the zone it is in (the longest
    /// matching origin) and its node. `None` when no zone holds it, or it is
    /// the apex, an empty non-terminal or absent (the slow path answers those).
    /// `starts` are the offsets of the labels in `wire`. No allocation.
    pub(crate) fn node_by_wire<'a>(
        &'a self,
        wire: &[u8],
        starts: &[usize],
    ) -> Option<(&'a ZoneData, &'a Node)> {
        let mut best: Option<(&ZoneData, usize)> = None;
        for zone in &self.zones {
            let Some(at) = wire.len().checked_sub(zone.origin_wire.len()) else {
                continue;
            };
            if starts.contains(&at)
                && wire[at..] == *zone.origin_wire
                && best.is_none_or(|(b, _)| zone.origin_labels > b.origin_labels)
            {
                best = Some((zone, at));
            }
        }
        let (zone, at) = best?;
        if at == 0 {
            return None;
        }
        zone.names.get(&wire[..at]).map(|node| (zone, node))
    }

    /// Number of services (the same in every zone).
    pub fn services(&self) -> usize {
        self.zones.first().map_or(0, |z| z.services)
    }
}

#[cfg(test)]
mod tests;
