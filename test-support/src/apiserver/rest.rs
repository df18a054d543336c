//! HTTP routing and handlers: maps Kubernetes REST paths and verbs onto the [`Store`].
//!
//! Supported paths: `/api/v1/{plural}`, `/api/v1/namespaces/{ns}/{plural}`,
//! `/apis/{group}/{version}/{plural}`, `/apis/{group}/{version}/namespaces/{ns}/{plural}`,
//! each optionally followed by `/{name}` and then `/status`.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures::StreamExt;
use http::{Method, Request, Response, StatusCode, header};
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use serde_json::{Value, json};
use tokio::sync::watch;

use super::objects::{ApiError, Filter};
use super::store::{KindInfo, Store};
use super::watch::{WatchOptions, gone_line, watch_stream};
use super::{ExpiredWatchResponse, RequestAction, RequestRecord, Shared, lock};

/// Response body type: a full JSON document or a streamed watch.
pub(crate) type Body = UnsyncBoxBody<Bytes, Infallible>;

/// Watch duration when the request has no (or a zero) `timeoutSeconds`.
const DEFAULT_WATCH_TIMEOUT: Duration = Duration::from_secs(1800);

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

    fn flag(&self, key: &str) -> bool {
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
struct Route {
    kind: KindInfo,
    namespace: Option<String>,
    name: Option<String>,
    status: bool,
}

fn route(store: &Store, path: &str) -> Result<Route, ApiError> {
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

fn classify(method: &Method, route: Option<&Route>, query: &Query) -> RequestAction {
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

fn json_response(code: u16, value: &Value) -> Response<Body> {
    let body = Full::new(Bytes::from(serde_json::to_vec(value).unwrap_or_default()));
    let mut response = Response::new(body.boxed_unsync());
    *response.status_mut() =
        StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        "application/json".parse().expect("valid header"),
    );
    response
}

fn error_response(err: &ApiError) -> Response<Body> {
    json_response(err.code, &err.to_status())
}

fn parse_body(body: &Bytes, yaml_allowed: bool) -> Result<Value, ApiError> {
    serde_json::from_slice(body).or_else(|err| {
        if yaml_allowed {
            serde_yaml_ng::from_slice(body)
                .map_err(|e| ApiError::bad_request(format!("invalid YAML body: {e}")))
        } else {
            Err(ApiError::bad_request(format!("invalid JSON body: {err}")))
        }
    })
}

/// Serves one HTTP request.
pub(crate) async fn handle(
    shared: Arc<Shared>,
    shutdown: watch::Receiver<bool>,
    req: Request<Incoming>,
) -> Result<Response<Body>, Infallible> {
    let (parts, body) = req.into_parts();
    let raw_query = parts.uri.query().unwrap_or_default().to_owned();
    let query = Query::parse(&raw_query);
    let route = route(&lock(&shared.store), parts.uri.path());
    lock(&shared.requests).push(RequestRecord {
        method: parts.method.to_string(),
        path: parts.uri.path().to_owned(),
        query: raw_query,
        action: classify(&parts.method, route.as_ref().ok(), &query),
    });
    let body = match body.collect().await {
        Ok(collected) => collected.to_bytes(),
        Err(err) => {
            return Ok(error_response(&ApiError::bad_request(format!(
                "reading body: {err}"
            ))));
        }
    };
    let content_type = parts
        .headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .unwrap_or_default()
        .trim()
        .to_owned();
    let response = match route {
        Ok(route) => dispatch(
            &shared,
            shutdown,
            &parts.method,
            &route,
            &query,
            &content_type,
            &body,
        ),
        Err(err) => Err(err),
    };
    Ok(response.unwrap_or_else(|err| error_response(&err)))
}

fn dispatch(
    shared: &Shared,
    shutdown: watch::Receiver<bool>,
    method: &Method,
    route: &Route,
    query: &Query,
    content_type: &str,
    body: &Bytes,
) -> Result<Response<Body>, ApiError> {
    let Route {
        kind,
        namespace,
        status,
        ..
    } = route;
    let ns = namespace.as_deref();
    let dry_run = query.get("dryRun") == Some("All");
    let filter = || Filter::parse(ns, query.get("labelSelector"), query.get("fieldSelector"));
    let mut store = lock(&shared.store);
    let Some(name) = route.name.as_deref() else {
        return match *method {
            Method::GET if query.flag("watch") => {
                drop(store);
                watch(shared, shutdown, kind, query, filter()?)
            }
            Method::GET => {
                let compacted = store.compacted_version();
                let requested = query
                    .get("resourceVersion")
                    .and_then(|v| v.parse::<u64>().ok());
                if query.get("resourceVersionMatch") == Some("Exact")
                    && requested.is_some_and(|rv| rv < compacted)
                {
                    return Err(ApiError::gone());
                }
                Ok(json_response(
                    200,
                    &list_json(&store, kind, store.list(kind, &filter()?)),
                ))
            }
            Method::POST => Ok(json_response(
                201,
                &store.create(kind, ns, parse_body(body, false)?, dry_run)?,
            )),
            Method::DELETE => {
                let mut deleted = Vec::new();
                for obj in store.list(kind, &filter()?) {
                    let (obj_ns, obj_name) = (
                        obj["metadata"]["namespace"].as_str(),
                        obj["metadata"]["name"].as_str(),
                    );
                    deleted.push(store.delete(
                        kind,
                        obj_ns,
                        obj_name.unwrap_or_default(),
                        dry_run,
                    )?);
                }
                Ok(json_response(200, &list_json(&store, kind, deleted)))
            }
            _ => Err(ApiError::new(
                405,
                "MethodNotAllowed",
                format!("{method} is not supported on a collection"),
            )),
        };
    };
    let not_found = || ApiError::not_found(&kind.plural, name);
    match *method {
        Method::GET => Ok(json_response(
            200,
            &store.get(kind, ns, name).ok_or_else(not_found)?,
        )),
        Method::PUT => Ok(json_response(
            200,
            &store.replace(kind, ns, name, parse_body(body, false)?, *status, dry_run)?,
        )),
        Method::DELETE if *status => Err(ApiError::new(
            405,
            "MethodNotAllowed",
            "cannot delete a status subresource",
        )),
        Method::DELETE => Ok(json_response(200, &store.delete(kind, ns, name, dry_run)?)),
        Method::PATCH => match content_type {
            "application/apply-patch+yaml" => {
                let manager = query
                    .get("fieldManager")
                    .filter(|m| !m.is_empty())
                    .ok_or_else(|| {
                        ApiError::bad_request(
                            "fieldManager: Required value: is required for apply patch",
                        )
                    })?;
                let patch = parse_body(body, true)?;
                let (obj, created) =
                    store.apply(kind, ns, name, &patch, manager, *status, dry_run)?;
                Ok(json_response(if created { 201 } else { 200 }, &obj))
            }
            "application/merge-patch+json" | "application/strategic-merge-patch+json" => {
                let patch = parse_body(body, false)?;
                Ok(json_response(
                    200,
                    &store.merge(kind, ns, name, &patch, *status, dry_run)?,
                ))
            }
            other => Err(ApiError::new(
                415,
                "UnsupportedMediaType",
                format!("the fake API server does not support patch content type {other:?}"),
            )),
        },
        _ => Err(ApiError::new(
            405,
            "MethodNotAllowed",
            format!("{method} is not supported on an object"),
        )),
    }
}

fn list_json(store: &Store, kind: &KindInfo, items: Vec<Value>) -> Value {
    json!({
        "apiVersion": kind.api_version(),
        "kind": format!("{}List", kind.kind),
        "metadata": { "resourceVersion": store.resource_version().to_string() },
        "items": items,
    })
}

fn watch(
    shared: &Shared,
    shutdown: watch::Receiver<bool>,
    kind: &KindInfo,
    query: &Query,
    filter: Filter,
) -> Result<Response<Body>, ApiError> {
    let from = match query.get("resourceVersion") {
        None | Some("" | "0") => None,
        Some(rv) => Some(
            rv.parse::<u64>()
                .map_err(|_| ApiError::bad_request(format!("invalid resourceVersion {rv:?}")))?,
        ),
    };
    let timeout = query
        .get("timeoutSeconds")
        .and_then(|t| t.parse::<u64>().ok())
        .filter(|t| *t > 0)
        .map_or(DEFAULT_WATCH_TIMEOUT, Duration::from_secs);
    let send_initial = query.flag("sendInitialEvents");
    let subscription = lock(&shared.store).subscribe(kind, from, send_initial);
    let sub = match subscription {
        Ok(sub) => sub,
        Err(gone) => {
            return match *lock(&shared.expired_response) {
                ExpiredWatchResponse::HttpGone => Err(gone),
                ExpiredWatchResponse::ErrorEvent => {
                    let mut response = json_response(200, &Value::Null);
                    *response.body_mut() = Full::new(gone_line()).boxed_unsync();
                    Ok(response)
                }
            };
        }
    };
    let opts = WatchOptions {
        filter,
        timeout,
        bookmarks: query.flag("allowWatchBookmarks"),
        initial_events_end: send_initial,
    };
    let stream = watch_stream(
        kind.clone(),
        sub,
        opts,
        shutdown,
        Arc::clone(&shared.open_watches),
    );
    let body = StreamBody::new(stream.map(|line| Ok::<_, Infallible>(Frame::data(line))));
    let mut response = json_response(200, &Value::Null);
    *response.body_mut() = body.boxed_unsync();
    Ok(response)
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
