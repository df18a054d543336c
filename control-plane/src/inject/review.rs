//! `admission.k8s.io/v1` AdmissionReview in, AdmissionReview out.

use base64::Engine as _;
use serde_json::{Value, json};

use super::Template;
use super::patch::{Decision, decide};

/// Why a request body is not an AdmissionReview we can answer (HTTP 400).
#[derive(Debug, thiserror::Error)]
pub enum ReviewError {
    #[error("body is not JSON: {0}")]
    Json(#[from] serde_json::Error),
    #[error("expected apiVersion admission.k8s.io/v1 kind AdmissionReview, got {0} {1}")]
    NotAReview(String, String),
    #[error("AdmissionReview has no request.uid")]
    NoUid,
}

/// Answers one AdmissionReview: the review to send back and what was decided.
///
/// # Errors
/// If `body` is not an `admission.k8s.io/v1` AdmissionReview with a request uid.
pub fn review(body: &[u8], template: &Template) -> Result<(Value, Decision), ReviewError> {
    let review: Value = serde_json::from_slice(body)?;
    let field = |v: &Value, key: &str| v.get(key).and_then(Value::as_str).unwrap_or("").to_owned();
    let (api_version, kind) = (field(&review, "apiVersion"), field(&review, "kind"));
    if api_version != "admission.k8s.io/v1" || kind != "AdmissionReview" {
        return Err(ReviewError::NotAReview(api_version, kind));
    }
    let request = review.get("request").unwrap_or(&Value::Null);
    let uid = request
        .get("uid")
        .and_then(Value::as_str)
        .ok_or(ReviewError::NoUid)?;

    let is_pod = request.pointer("/resource/group") == Some(&json!(""))
        && request.pointer("/resource/resource") == Some(&json!("pods"))
        && request
            .get("subResource")
            .is_none_or(|s| s.as_str().unwrap_or("").is_empty());
    let decision = if !is_pod {
        Decision::Skip("not a pod")
    } else if field(request, "operation") != "CREATE" {
        Decision::Skip("not a CREATE")
    } else {
        match request.get("object") {
            Some(pod) if pod.is_object() => decide(pod, template),
            _ => Decision::Skip("request has no object"),
        }
    };

    let mut response = json!({"uid": uid, "allowed": true});
    if let Decision::Inject(ops) = &decision {
        let patch = serde_json::to_vec(ops)?;
        response["patchType"] = json!("JSONPatch");
        response["patch"] = json!(base64::engine::general_purpose::STANDARD.encode(patch));
    }
    let answer = json!({
        "apiVersion": "admission.k8s.io/v1",
        "kind": "AdmissionReview",
        "response": response,
    });
    Ok((answer, decision))
}
