//! HTTP handlers: serve routed requests from the [`Store`], as JSON documents or watch
//! streams, with errors as Kubernetes `Status` objects.

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
use super::route::{Query, Route, classify, route};
use super::store::{KindInfo, Store};
use super::token_review;
use super::watch::{WatchOptions, gone_line, watch_stream};
use super::{ExpiredWatchResponse, RequestRecord, Shared, lock};

/// Response body type: a full JSON document or a streamed watch.
pub(crate) type Body = UnsyncBoxBody<Bytes, Infallible>;

/// Watch duration when the request has no (or a zero) `timeoutSeconds`.
const DEFAULT_WATCH_TIMEOUT: Duration = Duration::from_secs(1800);

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
    if let Some(review) = token_review::answer(&shared, &parts.method, parts.uri.path(), &body) {
        return Ok(review.map_or_else(|err| error_response(&err), |obj| json_response(201, &obj)));
    }
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
