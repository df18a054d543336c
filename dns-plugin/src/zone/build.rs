//! Feed message → [`Snapshot`]: every record built once, per zone.

use std::collections::{HashMap, HashSet};
use std::net::IpAddr;

use hickory_proto::rr::rdata::{A, AAAA, NS, SOA, SRV};
use hickory_proto::rr::{LowerName, Name, RData, Record};
use isthmus_proto::dns as proto;

use super::{
    AnswerConfig, Layout, NameHasher, Node, Policy, Snapshot, WireAnswers, ZoneConfig, ZoneData,
    order,
};

impl Snapshot {
    /// Builds every zone's records from one feed message.
    ///
    /// Services or ports whose names are not valid DNS labels are skipped
    /// (the control plane validates them; this keeps a bad one from
    /// breaking the whole snapshot).
    pub fn build(feed: &proto::Snapshot, config: &AnswerConfig) -> Snapshot {
        let ttl = u32::try_from(config.ttl.as_secs()).unwrap_or(u32::MAX);
        let zones = config
            .zones
            .iter()
            .map(|zone| build_zone(zone, feed, config, ttl))
            .collect();
        Snapshot {
            version: feed.version,
            zones,
            from_feed: true,
        }
    }
}

fn build_zone(
    zone: &ZoneConfig,
    feed: &proto::Snapshot,
    config: &AnswerConfig,
    ttl: u32,
) -> ZoneData {
    let origin = zone.origin.clone();
    let mut names: HashMap<Box<[u8]>, Node, NameHasher> =
        HashMap::with_capacity_and_hasher(feed.services.len() * 2, NameHasher::default());
    let mut empty_non_terminals = HashSet::with_hasher(NameHasher::default());
    let mut services = 0;
    for svc in &feed.services {
        let Some(base) = service_labels(zone.layout, &svc.name, &svc.namespace) else {
            tracing::debug!(name = %svc.name, namespace = %svc.namespace, "not a DNS name; skipped");
            continue;
        };
        let Ok(owner) = Name::from_labels(base.iter().map(String::as_bytes))
            .and_then(|n| n.append_domain(&origin))
        else {
            continue;
        };
        let addresses = match zone.policy {
            Policy::Vip if !svc.vips.is_empty() => parse_ips(svc.vips.iter()),
            _ => order::order_endpoints(svc, &config.cluster, &config.locality),
        };
        let mut node = Node::default();
        for ip in &addresses {
            match ip {
                IpAddr::V4(v4) => {
                    node.a
                        .push(Record::from_rdata(owner.clone(), ttl, RData::A(A(*v4))))
                }
                IpAddr::V6(v6) => node.aaaa.push(Record::from_rdata(
                    owner.clone(),
                    ttl,
                    RData::AAAA(AAAA(*v6)),
                )),
            }
        }
        node.a_wire = WireAnswers::encode(&node.a).unwrap_or_default();
        node.aaaa_wire = WireAnswers::encode(&node.aaaa).unwrap_or_default();
        let additionals: Vec<Record> = node.a.iter().chain(&node.aaaa).cloned().collect();
        for port in &svc.ports {
            let (Ok(number), Ok(label)) = (u16::try_from(port.number), port_label(&port.name))
            else {
                continue;
            };
            let srv = RData::SRV(SRV::new(0, 100, number, owner.clone()));
            node.srv
                .push(Record::from_rdata(owner.clone(), ttl, srv.clone()));
            let Ok(port_owner) =
                Name::from_labels([label.as_bytes(), b"_tcp"]).and_then(|n| n.append_name(&owner))
            else {
                continue;
            };
            let port_node = Node {
                srv: vec![Record::from_rdata(port_owner, ttl, srv)],
                additionals: additionals.clone(),
                ..Node::default()
            };
            names.insert(
                key([label.as_str(), "_tcp"]
                    .into_iter()
                    .chain(base.iter().map(String::as_str))),
                port_node,
            );
        }
        node.additionals = additionals;
        // `_tcp.<svc>...` exists as soon as a port does.
        if !node.srv.is_empty() {
            empty_non_terminals.insert(key(
                std::iter::once("_tcp").chain(base.iter().map(String::as_str))
            ));
        }
        // Every suffix of the service's relative name exists too (`<ns>`, `<ns>.svc`, `svc`).
        for skip in 1..base.len() {
            empty_non_terminals.insert(key(base[skip..].iter().map(String::as_str)));
        }
        names.insert(key(base.iter().map(String::as_str)), node);
        services += 1;
    }
    let serial = u32::try_from(feed.version % (u64::from(u32::MAX) + 1)).unwrap_or(0);
    ZoneData {
        config: zone.clone(),
        origin: LowerName::new(&origin),
        origin_labels: origin.iter().count(),
        origin_wire: origin_wire(&origin),
        names,
        empty_non_terminals,
        soa: soa_record(&origin, serial, ttl),
        ns: Record::from_rdata(origin.clone(), ttl, RData::NS(NS(nameserver(&origin)))),
        services,
    }
}

/// The lowercase wire form of a fully qualified name, root label included.
fn origin_wire(origin: &Name) -> Box<[u8]> {
    let mut out = Vec::with_capacity(origin.len() + 1);
    for label in origin.to_lowercase().iter() {
        out.push(label.len() as u8);
        out.extend_from_slice(label);
    }
    out.push(0);
    out.into_boxed_slice()
}

/// `ns.<zone>`: the name this server calls itself in SOA and NS records.
pub(super) fn nameserver(origin: &Name) -> Name {
    origin
        .prepend_label("ns")
        .unwrap_or_else(|_| origin.clone())
}

fn soa_record(origin: &Name, serial: u32, ttl: u32) -> Record {
    let rname = origin
        .prepend_label("hostmaster")
        .unwrap_or_else(|_| origin.clone());
    // refresh/retry/expire matter only to secondaries (we have none); minimum is the
    // negative-caching TTL, kept as short as positive answers so a new service resolves fast.
    let soa = SOA::new(nameserver(origin), rname, serial, 60, 10, 3600, ttl);
    Record::from_rdata(origin.clone(), ttl, RData::SOA(soa))
}

/// Relative labels of a service in a zone, lowercased; `None` unless both are DNS labels.
fn service_labels(layout: Layout, name: &str, namespace: &str) -> Option<Vec<String>> {
    let ok = |s: &str| {
        !s.is_empty() && s.len() <= 63 && s.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
    };
    if !ok(name) || !ok(namespace) {
        return None;
    }
    let mut labels = vec![name.to_ascii_lowercase(), namespace.to_ascii_lowercase()];
    if layout == Layout::Mcs {
        labels.push("svc".into());
    }
    Some(labels)
}

/// `_<port name>` for SRV, lowercased.
fn port_label(name: &str) -> Result<String, ()> {
    if name.is_empty()
        || name.len() > 62
        || !name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    {
        return Err(());
    }
    Ok(format!("_{}", name.to_ascii_lowercase()))
}

/// Wire-format key of relative labels (length-prefixed, so a label containing a dot
/// can never alias two labels).
fn key<'a>(labels: impl Iterator<Item = &'a str>) -> Box<[u8]> {
    let mut out = Vec::with_capacity(64);
    for l in labels {
        out.push(l.len() as u8);
        out.extend_from_slice(l.as_bytes());
    }
    out.into_boxed_slice()
}

fn parse_ips<'a>(addrs: impl Iterator<Item = &'a String>) -> Vec<IpAddr> {
    let mut out: Vec<IpAddr> = Vec::new();
    for a in addrs {
        if let Ok(ip) = a.parse()
            && !out.contains(&ip)
        {
            out.push(ip);
        }
    }
    out
}
