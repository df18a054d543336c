//! Helpers for Kubernetes-shaped JSON: `Status` errors, metadata access, JSON merge patch,
//! timestamps, and label/field selectors.

use std::fmt;
use std::time::{SystemTime, UNIX_EPOCH};

use serde_json::{Map, Value, json};

/// An error in the shape of a Kubernetes `Status` object.
///
/// Returned by the fallible test-side helpers and sent over HTTP (as `Status` JSON with the
/// same HTTP status code) by the fake API server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiError {
    /// HTTP status code, e.g. `404`.
    pub code: u16,
    /// Machine-readable reason, e.g. `NotFound`, `AlreadyExists`, `Conflict`, `Expired`.
    pub reason: String,
    /// Human-readable message.
    pub message: String,
}

impl ApiError {
    pub(crate) fn new(code: u16, reason: &str, message: impl Into<String>) -> Self {
        Self {
            code,
            reason: reason.to_owned(),
            message: message.into(),
        }
    }

    pub(crate) fn bad_request(message: impl Into<String>) -> Self {
        Self::new(400, "BadRequest", message)
    }

    pub(crate) fn not_found(plural: &str, name: &str) -> Self {
        Self::new(404, "NotFound", format!("{plural} \"{name}\" not found"))
    }

    pub(crate) fn already_exists(plural: &str, name: &str) -> Self {
        Self::new(
            409,
            "AlreadyExists",
            format!("{plural} \"{name}\" already exists"),
        )
    }

    pub(crate) fn conflict(plural: &str, name: &str) -> Self {
        Self::new(
            409,
            "Conflict",
            format!(
                "Operation cannot be fulfilled on {plural} \"{name}\": the object has been \
                 modified; please apply your changes to the latest version and try again"
            ),
        )
    }

    /// The error the real API server sends for a resourceVersion that has been compacted.
    pub(crate) fn gone() -> Self {
        Self::new(410, "Expired", "too old resource version")
    }

    /// This error as a Kubernetes `Status` object.
    pub fn to_status(&self) -> Value {
        json!({
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Failure",
            "message": self.message,
            "reason": self.reason,
            "code": self.code,
        })
    }
}

impl fmt::Display for ApiError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}: {}", self.code, self.reason, self.message)
    }
}

impl std::error::Error for ApiError {}

/// Makes `value` an object (replacing any non-object) and returns its map.
pub(crate) fn object_mut(value: &mut Value) -> &mut Map<String, Value> {
    if !value.is_object() {
        *value = Value::Object(Map::new());
    }
    match value {
        Value::Object(map) => map,
        _ => unreachable!("value was just made an object"),
    }
}

/// The `metadata` map of `obj`, created if missing.
pub(crate) fn metadata_mut(obj: &mut Value) -> &mut Map<String, Value> {
    object_mut(
        object_mut(obj)
            .entry("metadata")
            .or_insert_with(|| Value::Object(Map::new())),
    )
}

/// The string at a path of object keys, if present.
pub(crate) fn str_at<'a>(obj: &'a Value, path: &[&str]) -> Option<&'a str> {
    path.iter()
        .try_fold(obj, |v, key| v.get(key))
        .and_then(Value::as_str)
}

/// Applies an RFC 7386 JSON merge patch to `target`.
pub(crate) fn merge_patch(target: &mut Value, patch: &Value) {
    let Value::Object(patch) = patch else {
        *target = patch.clone();
        return;
    };
    let target = object_mut(target);
    for (key, value) in patch {
        if value.is_null() {
            target.remove(key);
        } else {
            merge_patch(target.entry(key.clone()).or_insert(Value::Null), value);
        }
    }
}

/// The current time as an RFC 3339 UTC timestamp with second precision.
pub(crate) fn now_rfc3339() -> String {
    let secs = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let (year, month, day) = civil_from_days((secs / 86_400) as i64);
    let rem = secs % 86_400;
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

/// Converts days since 1970-01-01 to a (year, month, day) civil date.
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let month = (if mp < 10 { mp + 3 } else { mp - 9 }) as u32;
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

/// One requirement of a label selector.
#[derive(Debug, Clone, PartialEq, Eq)]
enum LabelReq {
    Eq(String, String),
    NotEq(String, String),
    In(String, Vec<String>),
    NotIn(String, Vec<String>),
    Exists(String),
    NotExists(String),
}

/// One requirement of a field selector: a dotted path compared to a value.
#[derive(Debug, Clone, PartialEq, Eq)]
struct FieldReq {
    path: Vec<String>,
    value: String,
    negate: bool,
}

/// Which objects a list or watch request selects: namespace, label and field selectors.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Filter {
    namespace: Option<String>,
    labels: Vec<LabelReq>,
    fields: Vec<FieldReq>,
}

impl Filter {
    /// Parses the selectors of a request; unsupported syntax is a `400 BadRequest`.
    pub(crate) fn parse(
        namespace: Option<&str>,
        label_selector: Option<&str>,
        field_selector: Option<&str>,
    ) -> Result<Self, ApiError> {
        let labels = split_top_level(label_selector.unwrap_or_default())
            .map(parse_label_req)
            .collect::<Result<_, _>>()?;
        let fields = split_top_level(field_selector.unwrap_or_default())
            .map(parse_field_req)
            .collect::<Result<_, _>>()?;
        Ok(Self {
            namespace: namespace.map(str::to_owned),
            labels,
            fields,
        })
    }

    /// Whether `obj` is selected.
    pub(crate) fn matches(&self, obj: &Value) -> bool {
        if let Some(ns) = &self.namespace
            && str_at(obj, &["metadata", "namespace"]) != Some(ns)
        {
            return false;
        }
        let labels = obj.get("metadata").and_then(|m| m.get("labels"));
        let label = |k: &str| labels.and_then(|l| l.get(k)).and_then(Value::as_str);
        let labels_ok = self.labels.iter().all(|req| match req {
            LabelReq::Eq(k, v) => label(k) == Some(v),
            LabelReq::NotEq(k, v) => label(k) != Some(v),
            LabelReq::In(k, vs) => label(k).is_some_and(|l| vs.iter().any(|v| v == l)),
            LabelReq::NotIn(k, vs) => !label(k).is_some_and(|l| vs.iter().any(|v| v == l)),
            LabelReq::Exists(k) => label(k).is_some(),
            LabelReq::NotExists(k) => label(k).is_none(),
        });
        labels_ok
            && self.fields.iter().all(|req| {
                let found = req.path.iter().try_fold(obj, |v, key| v.get(key));
                let actual = match found {
                    Some(Value::String(s)) => s.clone(),
                    Some(Value::Null) | None => String::new(),
                    Some(other) => other.to_string(),
                };
                (actual == req.value) != req.negate
            })
    }
}

/// Splits a selector on commas that are not inside parentheses, dropping empty terms.
fn split_top_level(selector: &str) -> impl Iterator<Item = &str> {
    let mut depth = 0usize;
    let mut start = 0;
    let mut terms = Vec::new();
    for (i, c) in selector.char_indices() {
        match c {
            '(' => depth += 1,
            ')' => depth = depth.saturating_sub(1),
            ',' if depth == 0 => {
                terms.push(&selector[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    terms.push(&selector[start..]);
    terms.into_iter().map(str::trim).filter(|t| !t.is_empty())
}

fn selector_key(key: &str, term: &str) -> Result<String, ApiError> {
    let key = key.trim();
    if key.is_empty() || key.contains(char::is_whitespace) {
        return Err(ApiError::bad_request(format!(
            "unable to parse selector term {term:?}"
        )));
    }
    Ok(key.to_owned())
}

fn parse_label_req(term: &str) -> Result<LabelReq, ApiError> {
    if let Some(key) = term.strip_prefix('!') {
        return Ok(LabelReq::NotExists(selector_key(key, term)?));
    }
    if let (Some(open), Some(values)) = (term.find('('), term.strip_suffix(')')) {
        let values: Vec<String> = values[open + 1..]
            .split(',')
            .map(|v| v.trim().to_owned())
            .filter(|v| !v.is_empty())
            .collect();
        let head = term[..open].trim();
        return match head.rsplit_once(char::is_whitespace) {
            Some((key, "in")) => Ok(LabelReq::In(selector_key(key, term)?, values)),
            Some((key, "notin")) => Ok(LabelReq::NotIn(selector_key(key, term)?, values)),
            _ => Err(ApiError::bad_request(format!(
                "unable to parse selector term {term:?}"
            ))),
        };
    }
    if let Some((key, value)) = term.split_once("!=") {
        return Ok(LabelReq::NotEq(
            selector_key(key, term)?,
            value.trim().to_owned(),
        ));
    }
    if let Some((key, value)) = term.split_once("==").or_else(|| term.split_once('=')) {
        return Ok(LabelReq::Eq(
            selector_key(key, term)?,
            value.trim().to_owned(),
        ));
    }
    Ok(LabelReq::Exists(selector_key(term, term)?))
}

fn parse_field_req(term: &str) -> Result<FieldReq, ApiError> {
    let (path, value, negate) = if let Some((p, v)) = term.split_once("!=") {
        (p, v, true)
    } else if let Some((p, v)) = term.split_once("==").or_else(|| term.split_once('=')) {
        (p, v, false)
    } else {
        return Err(ApiError::bad_request(format!(
            "invalid field selector term {term:?}: expected field=value or field!=value"
        )));
    };
    Ok(FieldReq {
        path: selector_key(path, term)?
            .split('.')
            .map(str::to_owned)
            .collect(),
        value: value.trim().to_owned(),
        negate,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn merge_patch_follows_rfc7386() {
        let mut target = json!({"a": "b", "c": {"d": "e", "f": "g"}, "l": [1, 2]});
        merge_patch(
            &mut target,
            &json!({"a": "z", "c": {"f": null}, "l": [3], "n": {"x": 1}}),
        );
        assert_eq!(
            target,
            json!({"a": "z", "c": {"d": "e"}, "l": [3], "n": {"x": 1}})
        );
    }

    #[test]
    fn civil_dates() {
        assert_eq!(civil_from_days(0), (1970, 1, 1));
        assert_eq!(civil_from_days(19_782), (2024, 2, 29));
        assert_eq!(now_rfc3339().len(), "2024-02-29T00:00:00Z".len());
    }

    #[test]
    fn selectors() {
        let obj = json!({"metadata": {"name": "a", "namespace": "ns", "labels": {"app": "web", "tier": "fe"}}});
        let sel = |l: &str, f: &str| Filter::parse(Some("ns"), Some(l), Some(f)).unwrap();
        assert!(sel("app=web,tier", "metadata.name=a").matches(&obj));
        assert!(sel("app==web,!missing,other!=x", "metadata.name!=b").matches(&obj));
        assert!(sel("app in (web, api),tier notin (be)", "").matches(&obj));
        assert!(!sel("app=api", "").matches(&obj));
        assert!(!sel("", "metadata.name=b").matches(&obj));
        assert!(
            !Filter::parse(Some("other"), None, None)
                .unwrap()
                .matches(&obj)
        );
        assert!(Filter::parse(None, Some("app in web"), None).is_err());
        assert!(Filter::parse(None, None, Some("metadata.name")).is_err());
    }
}
