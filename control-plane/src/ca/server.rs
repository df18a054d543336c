//! The tonic `CertificateService` implementation.

use std::sync::Arc;
use std::time::Duration;

use isthmus_identity::{ClusterCa, IssueError, SpiffeId};
use tonic::metadata::MetadataMap;
use tonic::{Request, Response, Status};

use super::CurrentCa;
use super::auth::{AuthError, Authenticator};
use super::proto::certificate_service_server::{CertificateService, CertificateServiceServer};
use super::proto::{CertificateRequest, CertificateResponse};

/// Signs workload CSRs for authenticated callers. Serve it with
/// [`into_service`](Self::into_service) on a tonic server (over TLS in production: the
/// control plane's own certificate from [`ClusterCa::issue_key_and_cert`]).
pub struct CertificateServer {
    ca: CurrentCa,
    auth: Arc<dyn Authenticator>,
}

impl CertificateServer {
    /// A server issuing from `ca` to callers authenticated by `auth`.
    pub fn new(ca: Arc<ClusterCa>, auth: Arc<dyn Authenticator>) -> Self {
        Self::with_current(CurrentCa::new(ca), auth)
    }

    /// A server issuing from whatever CA `ca` holds when a request comes
    /// (swapped by the [`CaReloader`](super::CaReloader)).
    pub fn with_current(ca: CurrentCa, auth: Arc<dyn Authenticator>) -> Self {
        Self { ca, auth }
    }

    /// The tonic service to add to a `tonic::transport::Server`.
    pub fn into_service(self) -> CertificateServiceServer<Self> {
        CertificateServiceServer::new(self)
    }
}

impl std::fmt::Debug for CertificateServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CertificateServer")
            .field("ca", &self.ca)
            .finish_non_exhaustive()
    }
}

#[tonic::async_trait]
impl CertificateService for CertificateServer {
    async fn create_certificate(
        &self,
        request: Request<CertificateRequest>,
    ) -> Result<Response<CertificateResponse>, Status> {
        let token = bearer_token(request.metadata())?;
        let caller = self.auth.authenticate(token).await.map_err(|err| {
            tracing::info!(error = %err, "certificate request not authenticated");
            match err {
                AuthError::Rejected(reason) => Status::unauthenticated(reason),
                AuthError::Unavailable(reason) => Status::unavailable(reason),
            }
        })?;
        // One CA for the whole request, even if a reload swaps it meanwhile.
        let ca = self.ca.get();
        // The identity follows the credential, never the CSR.
        let identity = SpiffeId::new(
            ca.trust_domain(),
            &caller.namespace,
            &caller.service_account,
        )
        .map_err(|err| {
            Status::permission_denied(format!(
                "the authenticated workload has no valid SPIFFE identity: {err}"
            ))
        })?;
        let CertificateRequest {
            csr,
            validity_seconds,
        } = request.into_inner();
        let ttl = match u64::try_from(validity_seconds) {
            Ok(0) => None,
            Ok(secs) => Some(Duration::from_secs(secs)),
            Err(_) => {
                return Err(Status::invalid_argument(format!(
                    "validity_seconds must not be negative (got {validity_seconds}); use 0 for \
                     the default"
                )));
            }
        };
        let issued = ca.sign_csr(&csr, &identity, ttl).map_err(|err| match err {
            IssueError::InvalidCsr(_) | IssueError::ZeroTtl => {
                Status::invalid_argument(err.to_string())
            }
            IssueError::WrongTrustDomain { .. } | IssueError::Sign(_) => {
                tracing::error!(%identity, error = %err, "certificate signing failed");
                Status::internal(err.to_string())
            }
            IssueError::CaExpired => {
                tracing::error!(error = %err, "cannot issue certificates");
                Status::unavailable(err.to_string())
            }
        })?;
        tracing::info!(%identity, not_after = ?issued.not_after, "issued workload certificate");
        Ok(Response::new(CertificateResponse {
            cert_chain: issued.chain_pems(),
            trust_bundle: ca.trust_bundle().root_pems(),
        }))
    }
}

/// The token of an `authorization: Bearer <token>` header.
fn bearer_token(metadata: &MetadataMap) -> Result<&str, Status> {
    let missing = || {
        Status::unauthenticated(
            "missing credentials: send `authorization: Bearer <token>` with a service account \
             or bootstrap token",
        )
    };
    let value = metadata.get("authorization").ok_or_else(missing)?;
    let value = value
        .to_str()
        .map_err(|_| Status::unauthenticated("the authorization header is not valid ASCII"))?;
    let (scheme, token) = value.trim().split_once(' ').ok_or_else(missing)?;
    let token = token.trim();
    if !scheme.eq_ignore_ascii_case("bearer") || token.is_empty() {
        return Err(missing());
    }
    Ok(token)
}

#[cfg(test)]
mod tests {
    use tonic::metadata::MetadataValue;

    use super::*;

    fn with(value: &'static str) -> MetadataMap {
        let mut map = MetadataMap::new();
        map.insert("authorization", MetadataValue::from_static(value));
        map
    }

    #[test]
    fn parses_bearer_tokens() {
        assert_eq!(bearer_token(&with("Bearer abc")).ok(), Some("abc"));
        assert_eq!(bearer_token(&with("bearer  abc ")).ok(), Some("abc"));
        for bad in ["Basic abc", "Bearer", "Bearer ", "abc", ""] {
            let err = bearer_token(&with(bad)).unwrap_err();
            assert_eq!(err.code(), tonic::Code::Unauthenticated, "{bad:?}");
        }
        let err = bearer_token(&MetadataMap::new()).unwrap_err();
        assert!(err.message().contains("missing credentials"));
    }
}
