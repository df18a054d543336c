//! Kubernetes service-account tokens, checked by the API server with an
//! `authentication.k8s.io/v1` TokenReview bound to an audience.

use futures::future::BoxFuture;
use k8s_openapi::api::authentication::v1::{TokenReview, TokenReviewSpec};
use kube::Api;
use kube::api::PostParams;

use super::{AuthError, Authenticator, Caller};

const SERVICE_ACCOUNT_PREFIX: &str = "system:serviceaccount:";

/// Authenticates projected service-account tokens through the Kubernetes API.
///
/// The token must be valid for `audience` (the sidecar mounts a token projected for it,
/// e.g. `istio-ca`), and belong to a service account (`system:serviceaccount:<ns>:<sa>`).
/// The control plane needs RBAC permission to `create` `tokenreviews`.
#[derive(Clone)]
pub struct TokenReviewAuthenticator {
    client: kube::Client,
    audience: String,
}

impl TokenReviewAuthenticator {
    /// An authenticator asking the API server behind `client`, for tokens of `audience`.
    pub fn new(client: kube::Client, audience: impl Into<String>) -> Self {
        Self {
            client,
            audience: audience.into(),
        }
    }

    async fn review(&self, token: &str) -> Result<Caller, AuthError> {
        let review = TokenReview {
            spec: TokenReviewSpec {
                token: token.to_owned(),
                audiences: Some(vec![self.audience.clone()]),
            },
            ..TokenReview::default()
        };
        let api: Api<TokenReview> = Api::all(self.client.clone());
        let reviewed = api
            .create(&PostParams::default(), &review)
            .await
            .map_err(|err| {
                AuthError::Unavailable(format!(
                    "cannot check the token with a Kubernetes TokenReview: {err} (the control \
                     plane needs permission to create tokenreviews.authentication.k8s.io)"
                ))
            })?;
        let status = reviewed.status.unwrap_or_default();
        if status.authenticated != Some(true) {
            return Err(AuthError::Rejected(match status.error {
                Some(error) if !error.is_empty() => format!("token rejected: {error}"),
                _ => "token rejected by the Kubernetes API server".to_owned(),
            }));
        }
        // The API server echoes the audiences the token is valid for; a server that ignored
        // the requested audience must not let a token for another service through.
        if !status
            .audiences
            .as_ref()
            .is_some_and(|audiences| audiences.contains(&self.audience))
        {
            return Err(AuthError::Rejected(format!(
                "token is not valid for audience {:?}",
                self.audience
            )));
        }
        let username = status
            .user
            .and_then(|user| user.username)
            .unwrap_or_default();
        parse_service_account(&username).ok_or_else(|| {
            AuthError::Rejected(format!(
                "token belongs to {username:?}, not to a service account \
                 ({SERVICE_ACCOUNT_PREFIX}<namespace>:<name>)"
            ))
        })
    }
}

/// `system:serviceaccount:<ns>:<sa>` → the caller.
fn parse_service_account(username: &str) -> Option<Caller> {
    let rest = username.strip_prefix(SERVICE_ACCOUNT_PREFIX)?;
    let (namespace, service_account) = rest.split_once(':')?;
    if namespace.is_empty() || service_account.is_empty() || service_account.contains(':') {
        return None;
    }
    Some(Caller::new(namespace, service_account))
}

impl Authenticator for TokenReviewAuthenticator {
    fn authenticate<'a>(&'a self, token: &'a str) -> BoxFuture<'a, Result<Caller, AuthError>> {
        Box::pin(self.review(token))
    }
}

impl std::fmt::Debug for TokenReviewAuthenticator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenReviewAuthenticator")
            .field("audience", &self.audience)
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn service_account_usernames() {
        assert_eq!(
            parse_service_account("system:serviceaccount:sample:sleep"),
            Some(Caller::new("sample", "sleep"))
        );
        for bad in [
            "",
            "admin",
            "system:serviceaccount:sample",
            "system:serviceaccount::sleep",
            "system:serviceaccount:sample:",
            "system:serviceaccount:a:b:c",
            "system:node:worker-1",
        ] {
            assert_eq!(parse_service_account(bad), None, "{bad}");
        }
    }
}
