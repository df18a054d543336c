//! The lab's files are valid Isthmus config, its plan is collision-free,
//! and its policies say what the canary and drills need.

use std::collections::BTreeSet;

use crate::plan::LabSpec;
use crate::policy::{Policy, parse_weights, split_service, yaml};

fn valid(text: &str, what: &str) -> usize {
    let loaded = isthmus_api::load::load_yaml(Some(what), text);
    assert!(
        loaded.errors.is_empty(),
        "{what}: {:?}\n{text}",
        loaded.errors
    );
    loaded.resources.len()
}

#[test]
fn generated_config_is_valid_and_complete() {
    let spec = LabSpec {
        clusters: vec!["east".into(), "west".into(), "central".into()],
        net_base: 10,
        dir: "/nonexistent".into(),
    };
    let plan = spec.plan();
    for c in &plan {
        assert_eq!(valid(&crate::prepare::services(c), "services"), 4);
        let fed = crate::prepare::federation(c, &plan);
        assert_eq!(valid(&fed, "federation"), 2);
        for p in plan.iter().filter(|p| p.name != c.name) {
            assert!(fed.contains(&format!("name: {}", p.name)), "{fed}");
            assert!(fed.contains(&p.gateway.to_string()), "{fed}");
        }
    }
    let weights = parse_weights("east=90,west=10,central=0", &plan).unwrap();
    for policy in [
        Policy::default(),
        Policy {
            weights,
            distribute: None,
        },
        Policy {
            weights: Default::default(),
            distribute: Some(("us-west".into(), "us-east".into())),
        },
    ] {
        let text = yaml("helloworld", "sample", &plan, &policy);
        assert_eq!(valid(&text, "policy"), 3, "{text}");
    }
}

#[test]
fn addresses_are_unique_and_ranges_are_per_cluster() {
    let spec = LabSpec {
        clusters: vec!["east".into(), "west".into(), "central".into()],
        net_base: 10,
        dir: "/x".into(),
    };
    spec.validate().unwrap();
    let mut seen = BTreeSet::new();
    for c in crate::components::components(&spec) {
        for (name, a) in &c.addresses {
            if name == "ip" {
                continue;
            }
            assert!(seen.insert(a.clone()), "{a} used twice ({})", c.id);
            assert!(a.starts_with("127.0."), "{a}");
        }
    }
    let plan = spec.plan();
    assert_eq!(plan[0].xds.to_string(), "127.0.10.1:15010");
    assert_eq!(plan[1].gateway.to_string(), "127.0.20.2:15443");
    assert_eq!(plan[0].locality, "us-east/us-east-1a");
    assert_eq!(plan[1].locality, "us-west/us-west-1a");
}

#[test]
fn bad_input_is_refused_with_the_field() {
    let mut spec = LabSpec::new("/x");
    spec.clusters = vec!["east".into(), "east".into()];
    assert!(spec.validate().unwrap_err().contains("twice"));
    spec.clusters = vec!["East_1".into()];
    assert!(spec.validate().unwrap_err().contains("--clusters"));
    spec.clusters = (0..30).map(|i| format!("c{i}")).collect();
    assert!(spec.validate().unwrap_err().contains("--net-base"));
    let plan = LabSpec::new("/x").plan();
    assert!(
        parse_weights("east=90,west=20", &plan)
            .unwrap_err()
            .to_string()
            .contains("sum to 110")
    );
    assert!(
        parse_weights("east=90,mars=10", &plan)
            .unwrap_err()
            .to_string()
            .contains("mars")
    );
    assert!(parse_weights("east", &plan).is_err());
    assert!(split_service("helloworld").is_err());
    assert_eq!(
        split_service("helloworld.sample").unwrap(),
        ("helloworld".into(), "sample".into())
    );
}
