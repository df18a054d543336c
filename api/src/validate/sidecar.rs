//! Sidecar: Istio's rules for egress hosts and listeners, and what Isthmus
//! sidecars can do with `outboundTrafficPolicy`.

use std::collections::BTreeSet;

use super::Ctx;
use crate::naming;
use crate::networking::{OutboundTrafficMode, SidecarSpec};

pub(super) fn sidecar(cx: &mut Ctx, spec: &SidecarSpec) {
    if let Some(ws) = &spec.workload_selector {
        cx.field("workloadSelector", |cx| {
            if ws.labels.is_empty() {
                cx.error_at(
                    "labels",
                    "at least one label is required (omit workloadSelector to select every workload)",
                );
            }
            cx.labels("labels", &ws.labels);
        });
    }
    let mut ports = BTreeSet::new();
    let portless = spec.egress.iter().filter(|e| e.port.is_none()).count();
    cx.each("egress", &spec.egress, |cx, e| {
        if let Some(p) = &e.port {
            cx.field("port", |cx| {
                cx.field("number", |cx| {
                    cx.port(p.number);
                    if !ports.insert(p.number) {
                        cx.error(format!(
                            "port {} has more than one egress listener",
                            p.number
                        ));
                    }
                });
                if let Some(proto) = &p.protocol {
                    cx.field("protocol", |cx| super::networking::protocol(cx, proto));
                }
            });
        } else if portless > 1 {
            cx.error_at(
                "port",
                "only one egress listener may omit port (it takes every other port)",
            );
        }
        if e.hosts.is_empty() {
            cx.error_at("hosts", "at least one host is required");
        }
        cx.each("hosts", &e.hosts, |cx, h| egress_host(cx, h));
    });
    if let Some(policy) = &spec.outbound_traffic_policy
        && policy.mode == Some(OutboundTrafficMode::RegistryOnly)
    {
        cx.error_at(
            "outboundTrafficPolicy.mode",
            "REGISTRY_ONLY is not supported: Isthmus sidecars pass connections to \
             unknown destinations through (ALLOW_ANY)",
        );
    }
}

/// `<namespace>/<dnsName>` as Istio validates it.
fn egress_host(cx: &mut Ctx, entry: &str) {
    let Some((ns, host)) = entry.split_once('/') else {
        cx.error(format!(
            "host {entry:?} must be <namespace>/<dnsName> (namespace: a name, ., * or ~)"
        ));
        return;
    };
    if ns.is_empty() || host.is_empty() {
        cx.error(format!(
            "host {entry:?}: namespace and dnsName must not be empty"
        ));
        return;
    }
    if !matches!(ns, "*" | "." | "~") {
        cx.check(
            naming::validate_dns1123_label(ns),
            &format!("host {entry:?}: namespace must be ., *, ~ or a namespace"),
        );
    }
    if let Err(e) = naming::validate_hostname(host, true) {
        cx.error(format!("host {entry:?}: {e}"));
    }
}
