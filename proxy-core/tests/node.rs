//! The node the client sends is the node the control plane understands.

use std::collections::BTreeMap;

use isthmus_control_plane::xds::{ProxyInfo, ProxyRole};
use isthmus_proxy_core::xds::{NodeInfo, NodeRole};

#[test]
fn the_control_plane_reads_our_node() {
    let info = NodeInfo {
        role: NodeRole::Sidecar,
        ip: "127.0.10.21".parse().ok(),
        workload: "sleep-7f9c".into(),
        namespace: "sample".into(),
        cluster: "east".into(),
        network: "net-east".into(),
        service_account: "sleep".into(),
        labels: BTreeMap::from([("app".to_string(), "sleep".to_string())]),
        locality: "us-east/us-east-1a/rack-1".parse().unwrap(),
    };
    let parsed = ProxyInfo::from_node(&info.to_node()).unwrap();
    assert_eq!(
        parsed,
        ProxyInfo {
            id: ProxyInfo::node_id(ProxyRole::Sidecar, info.ip, "sleep-7f9c", "sample"),
            role: ProxyRole::Sidecar,
            ip: info.ip,
            workload: "sleep-7f9c".into(),
            namespace: "sample".into(),
            cluster: "east".into(),
            network: "net-east".into(),
            service_account: "sleep".into(),
            labels: info.labels.clone(),
            locality: info.locality.clone(),
        }
    );

    let gateway = NodeInfo {
        role: NodeRole::Gateway,
        ip: None,
        service_account: String::new(),
        labels: BTreeMap::new(),
        locality: Default::default(),
        ..info
    };
    let parsed = ProxyInfo::from_node(&gateway.to_node()).unwrap();
    assert_eq!(parsed.role, ProxyRole::Gateway);
    assert_eq!(parsed.ip, None);
    assert_eq!(parsed.service_account, "default");
}
