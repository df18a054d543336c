//! SDS: the trust bundle (`ROOTCA`).
//!
//! The workload certificate (`default`) is not served by the control plane:
//! the proxy generates its own key, obtains the certificate from the CA
//! service with a CSR, and serves it to itself, so private keys never cross
//! the network (Istio's agent works the same way).

use std::collections::BTreeSet;

use envoy_types::pb::envoy::config::core::v3::{DataSource, data_source::Specifier};
use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::{
    CertificateValidationContext, Secret, secret::Type,
};

use super::{PushContext, resource, tls};
use crate::xds::{ProxyInfo, XdsResource};

/// Secrets for the requested names that the control plane serves.
pub fn generate(
    pc: &PushContext,
    _proxy: &ProxyInfo,
    names: &BTreeSet<String>,
) -> Vec<XdsResource> {
    names
        .iter()
        .filter(|n| n.as_str() == tls::ROOT_CA && !pc.mesh.trust_bundle_pem.is_empty())
        .map(|n| {
            resource(
                n.clone(),
                Secret {
                    name: n.clone(),
                    r#type: Some(Type::ValidationContext(CertificateValidationContext {
                        trusted_ca: Some(DataSource {
                            specifier: Some(Specifier::InlineString(
                                pc.mesh.trust_bundle_pem.clone(),
                            )),
                            ..DataSource::default()
                        }),
                        ..CertificateValidationContext::default()
                    })),
                },
            )
        })
        .collect()
}
