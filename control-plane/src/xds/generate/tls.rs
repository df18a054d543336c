//! Transport sockets: Istio-style mutual TLS with SDS secrets and SPIFFE SAN checks.

use envoy_types::pb::envoy::config::core::v3::{TransportSocket, transport_socket::ConfigType};
use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::{
    CertificateValidationContext, CommonTlsContext, DownstreamTlsContext, SdsSecretConfig,
    SubjectAltNameMatcher, UpstreamTlsContext, common_tls_context,
    subject_alt_name_matcher::SanType,
};
use envoy_types::pb::envoy::r#type::matcher::v3::{StringMatcher, string_matcher::MatchPattern};

use super::{ads, bool_value};

/// SDS name of the workload certificate.
pub const WORKLOAD_CERT: &str = "default";
/// SDS name of the trust bundle.
pub const ROOT_CA: &str = "ROOTCA";
/// ALPN that marks mesh mTLS (as Istio).
pub const MESH_ALPN: &str = "istio";

fn sds(name: &str) -> SdsSecretConfig {
    SdsSecretConfig {
        name: name.to_string(),
        sds_config: Some(ads()),
    }
}

/// Common context: our certificate, and the trust bundle with SAN matchers.
fn common(sans: &[String], exact: bool, alpn: Vec<String>) -> CommonTlsContext {
    let matchers = sans
        .iter()
        .map(|san| SubjectAltNameMatcher {
            san_type: SanType::Uri as i32,
            matcher: Some(StringMatcher {
                match_pattern: Some(if exact {
                    MatchPattern::Exact(san.clone())
                } else {
                    MatchPattern::Prefix(san.clone())
                }),
                ..StringMatcher::default()
            }),
            ..SubjectAltNameMatcher::default()
        })
        .collect();
    CommonTlsContext {
        tls_certificate_sds_secret_configs: vec![sds(WORKLOAD_CERT)],
        alpn_protocols: alpn,
        validation_context_type: Some(
            common_tls_context::ValidationContextType::CombinedValidationContext(
                common_tls_context::CombinedCertificateValidationContext {
                    default_validation_context: Some(CertificateValidationContext {
                        match_typed_subject_alt_names: matchers,
                        ..CertificateValidationContext::default()
                    }),
                    validation_context_sds_secret_config: Some(sds(ROOT_CA)),
                    ..Default::default()
                },
            ),
        ),
        ..CommonTlsContext::default()
    }
}

/// Client side of mesh mTLS: expects one of `sans` (exact SPIFFE IDs) and sends `sni`.
pub fn upstream(sans: &[String], sni: &str) -> TransportSocket {
    let ctx = UpstreamTlsContext {
        common_tls_context: Some(common(sans, true, vec![MESH_ALPN.to_string()])),
        sni: sni.to_string(),
        ..UpstreamTlsContext::default()
    };
    TransportSocket {
        name: "envoy.transport_sockets.tls".into(),
        config_type: Some(ConfigType::TypedConfig(envoy_types::util::pack_any(ctx))),
    }
}

/// Server side of mesh mTLS: a client certificate is required; any SPIFFE ID
/// under one of `trust_domain_prefixes` (`spiffe://east.isthmus.local/`) is accepted
/// here and authorization decides the rest.
pub fn downstream(trust_domain_prefixes: &[String]) -> TransportSocket {
    let ctx = DownstreamTlsContext {
        common_tls_context: Some(common(
            trust_domain_prefixes,
            false,
            vec![MESH_ALPN.into(), "h2".into(), "http/1.1".into()],
        )),
        require_client_certificate: Some(bool_value(true)),
        ..DownstreamTlsContext::default()
    };
    TransportSocket {
        name: "envoy.transport_sockets.tls".into(),
        config_type: Some(ConfigType::TypedConfig(envoy_types::util::pack_any(ctx))),
    }
}
