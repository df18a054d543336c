//! Federation-wide virtual IPs for global services.
//!
//! Every cluster must give `reviews.default.global` the same VIP without
//! talking to the others (per-cluster VIP ranges that collide are a known
//! Istio/Admiral pitfall). So a VIP is a function of the name:
//!
//! 1. A ServiceEntry for the `.global`/clusterset host that declares
//!    `addresses` keeps them; addresses inside the range are reserved first.
//! 2. Every other service, taken in ascending order of its global name
//!    `<svc>.<ns>.global`, takes the first free slot of its own probe
//!    sequence: slot *i* = `mix64(fnv1a64(name) + i) mod N`, where *N* is
//!    the number of usable addresses in the range (network and broadcast
//!    addresses of an IPv4 range excluded) and `mix64` is the splitmix64
//!    finalizer. After 64 probes the first free address after the last
//!    probe (wrapping) is taken.
//!
//! Clusters that know the same set of global names therefore compute the
//! same VIPs; a VIP only moves when a name that sorts earlier newly lands
//! on its slot. The default range, `240.240.0.0/16`, is reserved space
//! (240/4) that no real host uses.

use std::collections::HashSet;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::str::FromStr;

/// The default VIP range.
pub const DEFAULT_RANGE: &str = "240.240.0.0/16";
const PROBES: u64 = 64;

/// A CIDR range VIPs are taken from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct VipRange {
    base: IpAddr,
    prefix: u8,
}

impl Default for VipRange {
    fn default() -> Self {
        DEFAULT_RANGE.parse().expect("static range")
    }
}

/// A range that cannot hold VIPs.
#[derive(Debug, thiserror::Error)]
#[error("VIP range {input:?}: {reason}")]
pub struct RangeError {
    input: String,
    reason: &'static str,
}

impl FromStr for VipRange {
    type Err = RangeError;
    fn from_str(s: &str) -> Result<Self, RangeError> {
        let err = |reason| RangeError {
            input: s.to_string(),
            reason,
        };
        let (ip, prefix) = s
            .split_once('/')
            .ok_or_else(|| err("expected <address>/<prefix length>"))?;
        let ip: IpAddr = ip.parse().map_err(|_| err("not an IP address"))?;
        let prefix: u8 = prefix.parse().map_err(|_| err("bad prefix length"))?;
        let (bits, max) = match ip {
            IpAddr::V4(_) => (32, 30),
            IpAddr::V6(_) => (128, 126),
        };
        if prefix > max {
            return Err(err("too small: needs at least 2 usable addresses"));
        }
        let base = mask(ip, prefix, bits);
        Ok(VipRange { base, prefix })
    }
}

impl std::fmt::Display for VipRange {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.base, self.prefix)
    }
}

fn mask(ip: IpAddr, prefix: u8, bits: u32) -> IpAddr {
    let keep = |v: u128| {
        if prefix == 0 {
            0
        } else {
            v & (u128::MAX << (bits - u32::from(prefix)))
        }
    };
    match ip {
        IpAddr::V4(v4) => IpAddr::V4(Ipv4Addr::from(keep(u128::from(u32::from(v4))) as u32)),
        IpAddr::V6(v6) => IpAddr::V6(Ipv6Addr::from(keep(u128::from(v6)))),
    }
}

impl VipRange {
    fn bits(&self) -> u32 {
        if self.base.is_ipv4() { 32 } else { 128 }
    }

    /// Usable addresses, capped at 2^63 for huge IPv6 ranges.
    fn usable(&self) -> u64 {
        let host_bits = self.bits() - u32::from(self.prefix);
        if host_bits >= 63 {
            1 << 63
        } else if self.base.is_ipv4() {
            (1u64 << host_bits) - 2
        } else {
            (1u64 << host_bits) - 1
        }
    }

    /// The `index`-th usable address (0-based; skips the network address).
    fn address(&self, index: u64) -> IpAddr {
        let offset = u128::from(index) + 1;
        match self.base {
            IpAddr::V4(b) => IpAddr::V4(Ipv4Addr::from(u32::from(b) + offset as u32)),
            IpAddr::V6(b) => IpAddr::V6(Ipv6Addr::from(u128::from(b) + offset)),
        }
    }

    /// Index of `ip` in the range, if it is a usable address of it.
    fn index_of(&self, ip: IpAddr) -> Option<u64> {
        let delta = match (self.base, ip) {
            (IpAddr::V4(b), IpAddr::V4(i)) => u128::from(u32::from(i).checked_sub(u32::from(b))?),
            (IpAddr::V6(b), IpAddr::V6(i)) => u128::from(i).checked_sub(u128::from(b))?,
            _ => return None,
        };
        let index = u64::try_from(delta.checked_sub(1)?).ok()?;
        (index < self.usable()).then_some(index)
    }

    /// Whether `ip` is inside the range.
    pub fn contains(&self, ip: IpAddr) -> bool {
        self.index_of(ip).is_some()
    }
}

/// Assigns VIPs: `names` are global names (`reviews.default.global`) with the
/// addresses their ServiceEntries declare. Returns one VIP list per name, in
/// the same order; empty only when the range is full.
pub fn allocate(range: &VipRange, names: &[(String, Vec<IpAddr>)]) -> Vec<Vec<IpAddr>> {
    let usable = range.usable();
    let mut used: HashSet<u64> = names
        .iter()
        .flat_map(|(_, declared)| declared.iter().filter_map(|ip| range.index_of(*ip)))
        .collect();
    let mut out: Vec<Vec<IpAddr>> = names.iter().map(|(_, declared)| declared.clone()).collect();
    let mut order: Vec<usize> = (0..names.len())
        .filter(|&i| names[i].1.is_empty())
        .collect();
    order.sort_by(|&a, &b| names[a].0.cmp(&names[b].0));
    for i in order {
        if used.len() as u64 >= usable {
            tracing::warn!(name = %names[i].0, range = %range, "VIP range full; no VIP");
            continue;
        }
        let h = fnv1a64(names[i].0.as_bytes());
        let mut slot = mix64(h) % usable;
        let mut probe = 0;
        while used.contains(&slot) {
            probe += 1;
            slot = if probe < PROBES {
                mix64(h.wrapping_add(probe)) % usable
            } else {
                (slot + 1) % usable
            };
        }
        used.insert(slot);
        out[i] = vec![range.address(slot)];
    }
    out
}

fn fnv1a64(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in bytes {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

/// splitmix64's finalizer: spreads FNV's weak low bits over the whole word.
fn mix64(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}
