//! `authentication.k8s.io/v1` TokenReview answers, for testing token authentication.
//!
//! Once [`FakeApiServer::set_token_reviews`] has been called, a `POST` of a TokenReview to
//! `/apis/authentication.k8s.io/v1/tokenreviews` is answered like the real API server does,
//! from the configured tokens, and nothing is stored:
//! - an unknown token: `authenticated: false` with an `error`;
//! - a known token reviewed with `spec.audiences`: authenticated only if the token's
//!   audiences intersect them, and `status.audiences` is that intersection;
//! - a known token reviewed without audiences: authenticated, with the token's audiences.

use std::collections::HashMap;

use http::Method;
use serde_json::{Value, json};

use super::objects::ApiError;
use super::{FakeApiServer, Shared, lock};

const PATH: &str = "/apis/authentication.k8s.io/v1/tokenreviews";

/// What the fake API server knows about one bearer token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FakeToken {
    /// The user the token authenticates, e.g. `system:serviceaccount:sample:sleep`.
    pub username: String,
    /// The audiences the token was issued for, e.g. `["istio-ca"]`.
    pub audiences: Vec<String>,
}

impl FakeToken {
    /// A service account token `system:serviceaccount:<namespace>:<name>` for `audiences`.
    pub fn service_account(namespace: &str, name: &str, audiences: &[&str]) -> Self {
        Self {
            username: format!("system:serviceaccount:{namespace}:{name}"),
            audiences: audiences.iter().map(|a| (*a).to_owned()).collect(),
        }
    }
}

impl FakeApiServer {
    /// Answers TokenReview creates from `tokens` (token → owner), replacing any earlier
    /// set, like the real API server: an unknown token, or one whose audiences do not
    /// intersect the review's `spec.audiences`, is `authenticated: false` with an `error`;
    /// otherwise `status.audiences` is that intersection (the token's audiences when the
    /// review names none) and `status.user.username` the token's user. Nothing is stored.
    /// The kind is registered so the request log shows reviews as
    /// [`RequestAction::Create`](super::RequestAction::Create).
    pub fn set_token_reviews(&self, tokens: impl IntoIterator<Item = (String, FakeToken)>) {
        self.register(
            "authentication.k8s.io/v1",
            "TokenReview",
            "tokenreviews",
            false,
        );
        *lock(&self.shared.token_reviews) = Some(tokens.into_iter().collect());
    }
}

/// The answer to a TokenReview create, or `None` if the request is something else or no
/// tokens were configured.
pub(crate) fn answer(
    shared: &Shared,
    method: &Method,
    path: &str,
    body: &[u8],
) -> Option<Result<Value, ApiError>> {
    if method != Method::POST || path.trim_end_matches('/') != PATH {
        return None;
    }
    let tokens = lock(&shared.token_reviews);
    let tokens = tokens.as_ref()?;
    Some(review(tokens, body))
}

fn review(tokens: &HashMap<String, FakeToken>, body: &[u8]) -> Result<Value, ApiError> {
    let request: Value = serde_json::from_slice(body)
        .map_err(|err| ApiError::bad_request(format!("invalid JSON body: {err}")))?;
    let spec = &request["spec"];
    let token = spec["token"].as_str().unwrap_or_default();
    let wanted: Vec<&str> = spec["audiences"]
        .as_array()
        .map(|a| a.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default();
    let status = match tokens.get(token) {
        None => json!({"authenticated": false, "user": {}, "error": "invalid bearer token"}),
        Some(known) => {
            let audiences: Vec<&str> = if wanted.is_empty() {
                known.audiences.iter().map(String::as_str).collect()
            } else {
                wanted
                    .iter()
                    .copied()
                    .filter(|w| known.audiences.iter().any(|a| a == w))
                    .collect()
            };
            if audiences.is_empty() && !wanted.is_empty() {
                json!({
                    "authenticated": false,
                    "user": {},
                    "error": format!(
                        "[invalid bearer token, token audiences {:?} is invalid for the target \
                         audiences {wanted:?}]",
                        known.audiences
                    ),
                })
            } else {
                json!({
                    "authenticated": true,
                    "user": {"username": known.username, "groups": ["system:authenticated"]},
                    "audiences": audiences,
                })
            }
        }
    };
    Ok(json!({
        "apiVersion": "authentication.k8s.io/v1",
        "kind": "TokenReview",
        "metadata": {"creationTimestamp": null},
        "spec": spec,
        "status": status,
    }))
}
