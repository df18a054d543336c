//! Who is asking: turning a bearer token into a namespace and service account.

pub(crate) mod bootstrap;
pub(crate) mod token_review;

use futures::future::BoxFuture;

/// An authenticated workload: the Kubernetes namespace and service account its token
/// belongs to. Its identity is `spiffe://<trust-domain>/ns/<namespace>/sa/<service_account>`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Caller {
    /// The workload's namespace.
    pub namespace: String,
    /// The workload's service account.
    pub service_account: String,
}

impl Caller {
    /// A caller from its namespace and service account.
    pub fn new(namespace: impl Into<String>, service_account: impl Into<String>) -> Self {
        Self {
            namespace: namespace.into(),
            service_account: service_account.into(),
        }
    }
}

/// Why a token did not authenticate anyone.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    /// The token is invalid, unknown, expired, for another audience, or not a service
    /// account's (gRPC `UNAUTHENTICATED`).
    #[error("{0}")]
    Rejected(String),
    /// The token could not be checked right now, e.g. the Kubernetes API is unreachable
    /// (gRPC `UNAVAILABLE`; the caller should retry).
    #[error("{0}")]
    Unavailable(String),
}

/// Checks a bearer token and says whose it is.
///
/// Implementations: [`BootstrapTokens`](super::BootstrapTokens) (directory mode) and
/// [`TokenReviewAuthenticator`](super::TokenReviewAuthenticator) (Kubernetes).
pub trait Authenticator: Send + Sync {
    /// Returns the token's owner, or why it is not accepted.
    fn authenticate<'a>(&'a self, token: &'a str) -> BoxFuture<'a, Result<Caller, AuthError>>;
}
