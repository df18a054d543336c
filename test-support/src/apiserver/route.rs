//! Request routing: query-string decoding and mapping Kubernetes REST paths to a kind,
//! namespace, name and subresource.
//!
//! Supported paths: `/api/v1/{plural}`, `/api/v1/namespaces/{ns}/{plural}`,
//! `/apis/{group}/{version}/{plural}`, `/apis/{group}/{version}/namespaces/{ns}/{plural}`,
//! each optionally followed by `/{name}` and then `/status`.

use http::Method;

use super::RequestAction;
use super::objects::ApiError;
use super::store::{KindInfo, Store};

/// Decoded query parameters.
#[derive(Debug, Default)]
pub(crate) struct Query(Vec<(String, String)>);

impl Query {
    pub(crate) fn parse(raw: &str) -> Self {
        Self(
            raw.split('&')
                .filter(|p| !p.is_empty())
                .map(|pair| {
                    let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
                    (percent_decode(k), percent_decode(v))
                })
                .collect(),
        )
    }

    pub(crate) fn get(&self, key: &str) -> Option<&str> {
        self.0
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    pub(crate) fn flag(&self, key: &str) -> bool {
        matches!(self.get(key), Some("true" | "1"))
    }
}

fn percent_decode(s: &str) -> String {
    let mut out = Vec::with_capacity(s.len());
    let mut i = 0;
    while let Some(&b) = s.as_bytes().get(i) {
        let hex = s
            .get(i + 1..i + 3)
            .and_then(|h| u8::from_str_radix(h, 16).ok());
        match (b, hex) {
            (b'%', Some(byte)) => {
                out.push(byte);
                i += 3;
                continue;
            }
            (b'+', _) => out.push(b' '),
            _ => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// A resolved request target.
#[derive(Debug)]
pub(crate) struct Route {
    pub kind: KindInfo,
    pub namespace: Option<String>,
    /// `None` for a collection.
    pub name: Option<String>,
    /// Whether the `/status` subresource is addressed.
    pub status: bool,
}

pub(crate) fn route(store: &Store, path: &str) -> Result<Route, ApiError> {
    let not_found = || {
        ApiError::new(
            404,
            "NotFound",
            "the server could not find the requested resource",
        )
    };
    let segs: Vec<&str> = path.trim_matches('/').split('/').collect();
    let (group, version, rest) = match segs.as_slice() {
        ["api", version, rest @ ..] => ("", *version, rest),
        ["apis", group, version, rest @ ..] => (*group, *version, rest),
        _ => return Err(not_found()),
    };
    let (namespace, plural, name, status) = match rest {
        [plural] => (None, *plural, None, false),
        [plural, name] => (None, *plural, Some(*name), false),
        [plural, name, "status"] => (None, *plural, Some(*name), true),
        ["namespaces", ns, plural] => (Some(*ns), *plural, None, false),
        ["namespaces", ns, plural, name] => (Some(*ns), *plural, Some(*name), false),
        ["namespaces", ns, plural, name, "status"] => (Some(*ns), *plural, Some(*name), true),
        _ => return Err(not_found()),
    };
    let kind = store
        .kind_for_resource(group, version, plural)
        .ok_or_else(not_found)?;
    // Namespaced objects are only addressable inside a namespace; cluster-scoped never are.
    if (namespace.is_some() && !kind.namespaced)
        || (kind.namespaced && name.is_some() && namespace.is_none())
    {
        return Err(not_found());
    }
    Ok(Route {
        kind,
        namespace: namespace.map(str::to_owned),
        name: name.map(str::to_owned),
        status,
    })
}

pub(crate) fn classify(method: &Method, route: Option<&Route>, query: &Query) -> RequestAction {
    let Some(route) = route else {
        return RequestAction::Other;
    };
    match (method, route.name.is_some()) {
        (&Method::GET, false) if query.flag("watch") => RequestAction::Watch,
        (&Method::GET, false) => RequestAction::List,
        (&Method::GET, true) => RequestAction::Get,
        (&Method::POST, false) => RequestAction::Create,
        (&Method::PUT, true) => RequestAction::Replace,
        (&Method::PATCH, true) => RequestAction::Patch,
        (&Method::DELETE, true) => RequestAction::Delete,
        (&Method::DELETE, false) => RequestAction::DeleteCollection,
        _ => RequestAction::Other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decodes_queries_as_kube_sends_them() {
        let q = Query::parse("&watch=true&labelSelector=app%3Dweb%2Ctier+x&resourceVersion=5");
        assert!(q.flag("watch"));
        assert_eq!(q.get("labelSelector"), Some("app=web,tier x"));
        assert_eq!(q.get("resourceVersion"), Some("5"));
        assert_eq!(percent_decode("%zz%4"), "%zz%4");
    }

    #[test]
    fn routes_core_group_and_namespaces() {
        let store = Store::default();
        let r = route(&store, "/api/v1/namespaces/default/services/reviews").unwrap();
        assert_eq!(
            (
                r.kind.plural.as_str(),
                r.namespace.as_deref(),
                r.name.as_deref()
            ),
            ("services", Some("default"), Some("reviews"))
        );
        let r = route(&store, "/api/v1/namespaces/istio-system").unwrap();
        assert_eq!(
            (r.kind.kind.as_str(), r.name.as_deref()),
            ("Namespace", Some("istio-system"))
        );
        assert!(
            route(&store, "/api/v1/namespaces/istio-system/status")
                .unwrap()
                .status
        );
        let r = route(&store, "/apis/discovery.k8s.io/v1/endpointslices").unwrap();
        assert_eq!((r.kind.kind.as_str(), r.name), ("EndpointSlice", None));
        assert_eq!(route(&store, "/api/v1/services/x").unwrap_err().code, 404);
        assert_eq!(
            route(&store, "/api/v1/namespaces/a/nodes")
                .unwrap_err()
                .code,
            404
        );
        assert_eq!(route(&store, "/apis/nope/v1/things").unwrap_err().code, 404);
        assert_eq!(route(&store, "/healthz").unwrap_err().code, 404);
    }
}
