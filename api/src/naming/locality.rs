//! Localities (`region/zone/subzone`), proximity ranking and `localityLbSetting` patterns.
//!
//! Localities come from the `topology.kubernetes.io/region`, `topology.kubernetes.io/zone`
//! and `topology.istio.io/subzone` labels and drive locality-aware load balancing and
//! cross-cluster failover.

use std::fmt;
use std::str::FromStr;

use super::NameError;

const EXPECTED: &str = "expected region[/zone[/subzone]]";
const EXPECTED_PATTERN: &str = "expected region[/zone[/subzone]], the last may be '*'";
const PART_NAMES: [&str; 3] = ["region", "zone", "subzone"];

/// Where a workload runs; an empty string means the part is unknown.
///
/// Parsed values have a non-empty region and no zone-less subzone, so `to_string()` parses
/// back; the all-empty [`Default`] value is the unknown locality and prints as `""`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash)]
pub struct Locality {
    /// Region, e.g. `us-west1`; empty when unknown.
    pub region: String,
    /// Zone within the region, e.g. `us-west1-a`; empty when unknown.
    pub zone: String,
    /// Subzone within the zone (Istio's `topology.istio.io/subzone`); empty when unknown.
    pub subzone: String,
}

/// How close two localities are; orders closer before farther (`SameSubzone < Remote`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Proximity {
    /// Same region, zone and subzone, all known.
    SameSubzone,
    /// Same region and zone, both known.
    SameZone,
    /// Same known region.
    SameRegion,
    /// Different regions, or the region is unknown on either side.
    Remote,
}

impl Locality {
    /// Whether no part of the locality is known (the [`Default`] value).
    pub const fn is_unknown(&self) -> bool {
        self.region.is_empty() && self.zone.is_empty() && self.subzone.is_empty()
    }

    /// How close `other` is to `self`; symmetric.
    ///
    /// A level only matches when it is known (non-empty) on both sides and every coarser
    /// level matches too, so unknown localities, even two of them, are always `Remote`:
    /// we never prefer an endpoint because we know nothing about where it is.
    pub fn proximity(&self, other: &Locality) -> Proximity {
        let same = |a: &str, b: &str| !a.is_empty() && a == b;
        if !same(&self.region, &other.region) {
            Proximity::Remote
        } else if !same(&self.zone, &other.zone) {
            Proximity::SameRegion
        } else if !same(&self.subzone, &other.subzone) {
            Proximity::SameZone
        } else {
            Proximity::SameSubzone
        }
    }

    fn parts(&self) -> [&str; 3] {
        [&self.region, &self.zone, &self.subzone]
    }
}

impl FromStr for Locality {
    type Err = NameError;

    /// Parses `region`, `region/zone` or `region/zone/subzone`; segments must be non-empty
    /// and contain no whitespace, control characters or `*`.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let err = |reason: String| NameError::Locality {
            input: s.to_owned(),
            reason,
        };
        let segments = split_segments(s, EXPECTED).map_err(err)?;
        for (what, segment) in PART_NAMES.iter().zip(&segments) {
            check_segment(what, segment).map_err(err)?;
        }
        let part = |i: usize| {
            segments
                .get(i)
                .map_or_else(String::new, |s| (*s).to_owned())
        };
        Ok(Self {
            region: part(0),
            zone: part(1),
            subzone: part(2),
        })
    }
}

impl fmt::Display for Locality {
    /// Writes `region/zone/subzone`, omitting trailing unknown parts.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let parts = self.parts();
        let len = parts
            .iter()
            .rposition(|p| !p.is_empty())
            .map_or(0, |i| i + 1);
        f.write_str(&parts[..len].join("/"))
    }
}

/// Stably sorts `items` from closest to farthest from `origin` (see [`Locality::proximity`]).
pub fn sort_by_proximity<T>(
    items: &mut [T],
    origin: &Locality,
    locality_of: impl Fn(&T) -> &Locality,
) {
    items.sort_by_key(|item| origin.proximity(locality_of(item)));
}

/// An Istio `localityLbSetting` locality pattern (`distribute.from`/`to`), e.g.
/// `us-west/zone1/*`, `us-west/*`, `us-west/zone1/sz1` or `*`.
///
/// As in Istio, omitted trailing parts match anything, so `us-west` and `us-west/*` match
/// the same localities; they remain distinct values so each prints back as written.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct LocalityPattern {
    /// Literal leading parts (region, zone, subzone), at most three.
    literal: Vec<String>,
    /// Whether the pattern ends with a `*` segment.
    wildcard: bool,
}

impl LocalityPattern {
    /// The pattern `*`, matching every locality including the unknown one.
    pub const fn any() -> Self {
        Self {
            literal: Vec::new(),
            wildcard: true,
        }
    }

    /// The literal leading parts, region first (empty for `*`).
    pub fn literal_parts(&self) -> &[String] {
        &self.literal
    }

    /// Whether the pattern was written with a trailing `*` segment.
    pub const fn has_wildcard(&self) -> bool {
        self.wildcard
    }

    /// Whether `locality` matches: each literal part equals the corresponding locality part.
    pub fn matches(&self, locality: &Locality) -> bool {
        self.literal
            .iter()
            .zip(locality.parts())
            .all(|(want, have)| want == have)
    }
}

impl FromStr for LocalityPattern {
    type Err = NameError;

    /// Parses up to three `/`-separated segments; the last may be `*`, no other `*` is
    /// allowed, and segments must be non-empty without whitespace or control characters.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let err = |reason: String| NameError::LocalityPattern {
            input: s.to_owned(),
            reason,
        };
        let mut segments = split_segments(s, EXPECTED_PATTERN).map_err(err)?;
        let wildcard = segments.last().is_some_and(|last| *last == "*");
        if wildcard {
            segments.pop();
        }
        for (what, segment) in PART_NAMES.iter().zip(&segments) {
            if segment.contains('*') {
                return Err(err(
                    "'*' may only appear as the whole last segment, as in \"us-west/*\"".to_owned(),
                ));
            }
            check_segment(what, segment).map_err(err)?;
        }
        Ok(Self {
            literal: segments.into_iter().map(str::to_owned).collect(),
            wildcard,
        })
    }
}

impl fmt::Display for LocalityPattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.literal.join("/"))?;
        match (self.wildcard, self.literal.is_empty()) {
            (false, _) => Ok(()),
            (true, true) => f.write_str("*"),
            (true, false) => f.write_str("/*"),
        }
    }
}

/// Splits on `/` into one to three segments.
fn split_segments<'a>(s: &'a str, expected: &str) -> Result<Vec<&'a str>, String> {
    if s.is_empty() {
        return Err(format!("must not be empty; {expected}"));
    }
    let segments: Vec<&str> = s.split('/').collect();
    if segments.len() > 3 {
        return Err(format!(
            "has {} '/'-separated segments, at most 3 are allowed; {expected}",
            segments.len()
        ));
    }
    Ok(segments)
}

fn check_segment(what: &str, s: &str) -> Result<(), String> {
    if s.is_empty() {
        return Err(format!(
            "{what} must not be empty; remove the leading, trailing or doubled '/'"
        ));
    }
    if let Some(c) = s
        .chars()
        .find(|c| c.is_whitespace() || c.is_control() || *c == '*')
    {
        return Err(format!("{what} {s:?} must not contain {c:?}"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn loc(s: &str) -> Locality {
        s.parse().unwrap()
    }

    fn pat(s: &str) -> LocalityPattern {
        s.parse().unwrap()
    }

    #[test]
    fn parse_and_display() {
        assert_eq!(
            loc("us-west/zone1/sz1"),
            Locality {
                region: "us-west".into(),
                zone: "zone1".into(),
                subzone: "sz1".into()
            }
        );
        assert_eq!(loc("us-west/zone1").subzone, "");
        assert_eq!(loc("us-west").zone, "");
        for s in [
            "us-west",
            "us-west/zone1",
            "us-west/zone1/sz1",
            "Europe_1/Zone.A/rack:9",
        ] {
            assert_eq!(loc(s).to_string(), s);
        }
        assert_eq!(Locality::default().to_string(), "");
        let zone_only = Locality {
            zone: "z".into(),
            ..Locality::default()
        };
        assert_eq!(zone_only.to_string(), "/z");
    }

    #[test]
    fn parse_rejects() {
        for bad in [
            "",
            "/",
            "/zone",
            "us-west/",
            "us-west//sz",
            "a/b/c/",
            "a/b/c/d",
            " us-west",
            "us west",
            "us-west/zone\t1",
            "us-west/*",
            "*",
            "us-*",
            "a\u{0}",
            "a/\u{a0}",
        ] {
            assert!(bad.parse::<Locality>().is_err(), "{bad:?}");
        }
        let err = "".parse::<Locality>().unwrap_err();
        assert_eq!(
            err.to_string(),
            "invalid locality \"\": must not be empty; expected region[/zone[/subzone]]"
        );
        let err = "us-west//sz".parse::<Locality>().unwrap_err();
        assert!(err.reason().starts_with("zone must not be empty"), "{err}");
        assert!(loc("ünïcode/zöne").zone == "zöne");
    }

    #[test]
    fn proximity_levels() {
        let origin = loc("r1/z1/s1");
        assert_eq!(origin.proximity(&loc("r1/z1/s1")), Proximity::SameSubzone);
        assert_eq!(origin.proximity(&loc("r1/z1/s2")), Proximity::SameZone);
        assert_eq!(origin.proximity(&loc("r1/z1")), Proximity::SameZone);
        assert_eq!(origin.proximity(&loc("r1/z2/s1")), Proximity::SameRegion);
        assert_eq!(origin.proximity(&loc("r1")), Proximity::SameRegion);
        assert_eq!(origin.proximity(&loc("r2/z1/s1")), Proximity::Remote);
        assert_eq!(origin.proximity(&Locality::default()), Proximity::Remote);
        assert_eq!(loc("r1/z1").proximity(&loc("r1/z1")), Proximity::SameZone);
        assert_eq!(loc("r1").proximity(&loc("r1")), Proximity::SameRegion);
        // Unknown never counts as close, even to another unknown.
        let unknown = Locality::default();
        assert!(unknown.is_unknown());
        assert_eq!(unknown.proximity(&unknown), Proximity::Remote);
        let no_region = Locality {
            zone: "z1".into(),
            subzone: "s1".into(),
            ..Locality::default()
        };
        assert_eq!(no_region.proximity(&no_region), Proximity::Remote);
        // Zone names are only compared within the same region.
        assert_eq!(loc("r1/z1").proximity(&loc("r2/z1")), Proximity::Remote);
    }

    #[test]
    fn proximity_order() {
        assert!(Proximity::SameSubzone < Proximity::SameZone);
        assert!(Proximity::SameZone < Proximity::SameRegion);
        assert!(Proximity::SameRegion < Proximity::Remote);
    }

    #[test]
    fn sort_is_by_proximity_and_stable() {
        let origin = loc("r1/z1/s1");
        let mut items = vec![
            ("a", loc("r2")),
            ("b", loc("r1/z2")),
            ("c", Locality::default()),
            ("d", loc("r1/z1/s1")),
            ("e", loc("r1/z1/s9")),
            ("f", loc("r1/z3")),
            ("g", loc("r1/z1/s1")),
        ];
        sort_by_proximity(&mut items, &origin, |(_, l)| l);
        let order: Vec<&str> = items.iter().map(|(n, _)| *n).collect();
        assert_eq!(order, ["d", "g", "e", "b", "f", "a", "c"]);
    }

    #[test]
    fn patterns_parse_and_display() {
        for s in [
            "*",
            "us-west/*",
            "us-west/zone1/*",
            "us-west",
            "us-west/zone1",
            "us-west/zone1/sz1",
        ] {
            assert_eq!(pat(s).to_string(), s);
        }
        assert_eq!(pat("*"), LocalityPattern::any());
        assert_eq!(pat("us-west/*").literal_parts(), ["us-west"]);
        assert!(pat("us-west/*").has_wildcard());
        assert!(!pat("us-west").has_wildcard());
        for bad in [
            "",
            "/",
            "*/zone1",
            "*/*",
            "us-*",
            "us-west/z*",
            "us-west/**",
            "us-west/zone1/sz1/*",
            "a/b/c/d",
            "us-west/",
            "us-west//*",
            "us west/*",
            "/*",
        ] {
            assert!(bad.parse::<LocalityPattern>().is_err(), "{bad:?}");
        }
        let err = "*/zone1".parse::<LocalityPattern>().unwrap_err();
        assert!(err.reason().contains("last segment"), "{err}");
    }

    #[test]
    fn pattern_matching() {
        let l = loc("us-west/zone1/sz1");
        for p in [
            "*",
            "us-west",
            "us-west/*",
            "us-west/zone1",
            "us-west/zone1/*",
            "us-west/zone1/sz1",
        ] {
            assert!(pat(p).matches(&l), "{p}");
        }
        for p in [
            "us-east",
            "us-east/*",
            "us-west/zone2",
            "us-west/zone2/*",
            "us-west/zone1/sz2",
            "US-WEST/*",
        ] {
            assert!(!pat(p).matches(&l), "{p}");
        }
        assert!(pat("*").matches(&Locality::default()));
        assert!(!pat("us-west/*").matches(&Locality::default()));
        assert!(pat("us-west/*").matches(&loc("us-west")));
        assert!(!pat("us-west/zone1").matches(&loc("us-west")));
        assert!(!pat("us-west/zone1/sz1").matches(&loc("us-west/zone1")));
    }

    fn segment() -> impl Strategy<Value = String> {
        "[^/*\\s\\p{Cc}]{1,16}"
    }

    fn locality() -> impl Strategy<Value = Locality> {
        locality_with(segment())
    }

    /// Localities drawn from a tiny alphabet, so that they often share region and zone.
    fn near_locality() -> impl Strategy<Value = Locality> {
        locality_with("[ab]")
    }

    fn locality_with(segment: impl Strategy<Value = String>) -> impl Strategy<Value = Locality> {
        prop::collection::vec(segment, 1..=3).prop_map(|parts| {
            let part = |i: usize| parts.get(i).cloned().unwrap_or_default();
            Locality {
                region: part(0),
                zone: part(1),
                subzone: part(2),
            }
        })
    }

    fn pattern() -> impl Strategy<Value = LocalityPattern> {
        (prop::collection::vec(segment(), 0..=3), any::<bool>()).prop_filter_map(
            "1..=3 segments",
            |(literal, wildcard)| {
                let n = literal.len() + usize::from(wildcard);
                (1..=3)
                    .contains(&n)
                    .then_some(LocalityPattern { literal, wildcard })
            },
        )
    }

    proptest! {
        #[test]
        fn locality_round_trips(l in locality()) {
            prop_assert_eq!(l.to_string().parse::<Locality>(), Ok(l.clone()));
            prop_assert_eq!(l.proximity(&l), match (l.zone.is_empty(), l.subzone.is_empty()) {
                (true, _) => Proximity::SameRegion,
                (false, true) => Proximity::SameZone,
                (false, false) => Proximity::SameSubzone,
            });
        }

        #[test]
        fn pattern_round_trips(p in pattern()) {
            prop_assert_eq!(p.to_string().parse::<LocalityPattern>(), Ok(p));
        }

        #[test]
        fn locality_matches_its_own_patterns(l in locality()) {
            let text = l.to_string();
            prop_assert!(pat(&text).matches(&l));
            prop_assert!(LocalityPattern::any().matches(&l));
            if l.subzone.is_empty() {
                let wild = pat(&format!("{text}/*"));
                prop_assert!(wild.matches(&l));
            }
        }

        #[test]
        fn proximity_is_symmetric(a in near_locality(), b in near_locality()) {
            prop_assert_eq!(a.proximity(&b), b.proximity(&a));
        }

        #[test]
        fn sort_orders_by_proximity(
            origin in near_locality(),
            items in prop::collection::vec(near_locality(), 0..100),
        ) {
            let mut sorted: Vec<(usize, Locality)> = items.into_iter().enumerate().collect();
            sort_by_proximity(&mut sorted, &origin, |(_, l)| l);
            for w in sorted.windows(2) {
                let (a, b) = (origin.proximity(&w[0].1), origin.proximity(&w[1].1));
                prop_assert!(a < b || (a == b && w[0].0 < w[1].0));
            }
        }

        #[test]
        fn parse_never_panics(s in any::<String>()) {
            let _ = s.parse::<Locality>();
            let _ = s.parse::<LocalityPattern>();
        }

        #[test]
        fn parse_never_panics_near_valid(s in "[a-z*/ é]{0,12}") {
            if let Ok(l) = s.parse::<Locality>() {
                prop_assert_eq!(l.to_string(), s.clone());
            }
            if let Ok(p) = s.parse::<LocalityPattern>() {
                prop_assert_eq!(p.to_string(), s);
            }
        }
    }
}
