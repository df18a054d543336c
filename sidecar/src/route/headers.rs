//! Header mutations: Envoy's `*_headers_to_add` / `*_headers_to_remove`.

use envoy_types::pb::envoy::config::core::v3::{
    HeaderValue as PbHeaderValue, HeaderValueOption,
    header_value_option::HeaderAppendAction as PbAction,
};
use http::{HeaderMap, HeaderName, HeaderValue};

use super::error::{Cx, RouteError};

/// What to do with a header that is added (Envoy `HeaderValueOption.append_action`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AppendAction {
    /// Append a value, adding the header if absent (Envoy's default; legacy `append: true`).
    AppendIfExistsOrAdd,
    /// Add only if the header is absent.
    AddIfAbsent,
    /// Replace every value, adding the header if absent ("set"; legacy `append: false`).
    OverwriteIfExistsOrAdd,
    /// Replace every value, only if the header exists.
    OverwriteIfExists,
}

/// One header to add.
#[derive(Clone, Debug)]
pub struct HeaderAdd {
    /// Lower-case header name.
    pub name: HeaderName,
    /// The value (Envoy `%%` already unescaped).
    pub value: HeaderValue,
    /// How it combines with existing values.
    pub action: AppendAction,
}

/// The mutations of one level (cluster, route, virtual host, route configuration).
#[derive(Clone, Debug, Default)]
struct Stage {
    remove: Vec<HeaderName>,
    add: Vec<HeaderAdd>,
}

/// Header mutations, as stages applied in order; each stage removes its
/// headers first, then adds (Envoy's `HeaderParser::evaluateHeaders`).
///
/// A route's ops hold the route's, its virtual host's and its route
/// configuration's stages, in that order, so the least specific level wins
/// as in Envoy. Apply a picked [`ClusterTarget`](super::ClusterTarget)'s ops
/// before the route's.
#[derive(Clone, Debug, Default)]
pub struct HeaderOps {
    stages: Vec<Stage>,
}

impl HeaderOps {
    /// Whether applying changes nothing.
    pub fn is_empty(&self) -> bool {
        self.stages.is_empty()
    }

    /// Applies every stage to `headers`.
    ///
    /// Within a stage, as in Envoy: removals first; then adds in order, where
    /// appends take effect at once and overwrites are collected, after which
    /// every overwritten name is removed and its collected values added.
    pub fn apply(&self, headers: &mut HeaderMap) {
        for stage in &self.stages {
            for name in &stage.remove {
                headers.remove(name);
            }
            let mut overwrite: Vec<&HeaderAdd> = Vec::new();
            for add in &stage.add {
                match add.action {
                    AppendAction::AppendIfExistsOrAdd => {
                        headers.append(add.name.clone(), add.value.clone());
                    }
                    AppendAction::AddIfAbsent => {
                        if !headers.contains_key(&add.name) {
                            headers.append(add.name.clone(), add.value.clone());
                        }
                    }
                    AppendAction::OverwriteIfExists => {
                        if headers.contains_key(&add.name) {
                            overwrite.push(add);
                        }
                    }
                    AppendAction::OverwriteIfExistsOrAdd => overwrite.push(add),
                }
            }
            for add in &overwrite {
                headers.remove(&add.name);
            }
            for add in overwrite {
                headers.append(add.name.clone(), add.value.clone());
            }
        }
    }

    /// Every header this adds, in order (for inspection and logs).
    pub fn adds(&self) -> impl Iterator<Item = &HeaderAdd> {
        self.stages.iter().flat_map(|s| &s.add)
    }

    /// Every header this removes, in order.
    pub fn removes(&self) -> impl Iterator<Item = &HeaderName> {
        self.stages.iter().flat_map(|s| &s.remove)
    }

    /// `self`'s stages, then `next`'s.
    pub(crate) fn then(mut self, next: &HeaderOps) -> HeaderOps {
        self.stages.extend(next.stages.iter().cloned());
        self
    }

    /// Compiles one level's `{direction}_headers_to_add` and
    /// `{direction}_headers_to_remove` (`direction` is `request` or `response`).
    pub(crate) fn compile(
        add: &[HeaderValueOption],
        remove: &[String],
        direction: &str,
        cx: &Cx,
    ) -> Result<HeaderOps, RouteError> {
        let add_field = format!("{direction}_headers_to_add");
        let remove_field = format!("{direction}_headers_to_remove");
        let remove = remove
            .iter()
            .enumerate()
            .map(|(i, n)| modifiable(n, &cx.field(&remove_field).index(i)))
            .collect::<Result<Vec<_>, _>>()?;
        let mut adds = Vec::with_capacity(add.len());
        for (i, opt) in add.iter().enumerate() {
            if let Some(a) = header_add(opt, &cx.field(&add_field).index(i))? {
                adds.push(a);
            }
        }
        if remove.is_empty() && adds.is_empty() {
            return Ok(HeaderOps::default());
        }
        Ok(HeaderOps {
            stages: vec![Stage { remove, add: adds }],
        })
    }
}

/// A header name that config may add or remove: Envoy refuses pseudo-headers and `host`.
fn modifiable(name: &str, cx: &Cx) -> Result<HeaderName, RouteError> {
    let lower = name.to_ascii_lowercase();
    if lower.starts_with(':') || lower == "host" {
        return Err(cx.invalid(format!(
            "{name:?} may not be modified (pseudo-header or host)"
        )));
    }
    HeaderName::from_bytes(lower.as_bytes())
        .map_err(|_| cx.invalid(format!("{name:?} is not a header name")))
}

/// `None` for an empty value without `keep_empty_value` (Envoy drops it).
#[allow(deprecated)] // The legacy `append` is still valid config.
fn header_add(opt: &HeaderValueOption, cx: &Cx) -> Result<Option<HeaderAdd>, RouteError> {
    let HeaderValueOption {
        header,
        append,
        append_action,
        keep_empty_value,
    } = opt;
    let Some(PbHeaderValue {
        key,
        value,
        raw_value,
    }) = header
    else {
        return Err(cx.field("header").invalid("missing"));
    };
    let name = modifiable(key, &cx.field("header.key"))?;
    let action = match (append, PbAction::try_from(*append_action)) {
        (Some(_), Ok(a)) if a != PbAction::AppendIfExistsOrAdd => {
            return Err(cx.invalid("append and append_action are both set"));
        }
        (Some(b), _) if b.value => AppendAction::AppendIfExistsOrAdd,
        (Some(_), _) => AppendAction::OverwriteIfExistsOrAdd,
        (None, Ok(PbAction::AppendIfExistsOrAdd)) => AppendAction::AppendIfExistsOrAdd,
        (None, Ok(PbAction::AddIfAbsent)) => AppendAction::AddIfAbsent,
        (None, Ok(PbAction::OverwriteIfExistsOrAdd)) => AppendAction::OverwriteIfExistsOrAdd,
        (None, Ok(PbAction::OverwriteIfExists)) => AppendAction::OverwriteIfExists,
        (None, Err(_)) => {
            let reason = format!("unknown append_action {append_action}");
            return Err(cx.field("append_action").invalid(reason));
        }
    };
    let bytes: Vec<u8> = match (value.is_empty(), raw_value.is_empty()) {
        (_, true) => unescape(value, &cx.field("header.value"))?.into_bytes(),
        (true, false) => raw_value.clone(),
        (false, false) => {
            return Err(cx
                .field("header")
                .invalid("value and raw_value are both set"));
        }
    };
    if bytes.is_empty() && !keep_empty_value {
        return Ok(None);
    }
    let value = HeaderValue::from_bytes(&bytes).map_err(|_| {
        cx.field("header.value")
            .invalid(format!("{value:?} is not a header value"))
    })?;
    Ok(Some(HeaderAdd {
        name,
        value,
        action,
    }))
}

/// Envoy header values are substitution formats: `%%` is a literal `%`;
/// `%COMMAND%` operators are refused (the sidecar does not evaluate them).
fn unescape(value: &str, cx: &Cx) -> Result<String, RouteError> {
    if !value.contains('%') {
        return Ok(value.to_string());
    }
    let mut out = String::with_capacity(value.len());
    let mut rest = value;
    while let Some(i) = rest.find('%') {
        out.push_str(&rest[..i]);
        let after = &rest[i + 1..];
        if let Some(tail) = after.strip_prefix('%') {
            out.push('%');
            rest = tail;
        } else {
            let op = after.split('%').next().unwrap_or_default();
            return Err(cx.unsupported(format!(
                "substitution format operator %{op}% in {value:?} (write %% for a literal %)"
            )));
        }
    }
    out.push_str(rest);
    Ok(out)
}
