//! A renderer for the strict subset of Helm's Go templates that the chart in
//! `deploy/helm/isthmus` uses, so that `isthmus install` (and CI, where no
//! `helm` binary can be installed) produce what `helm template` produces.
//!
//! Supported: text; `{{ pipeline }}` where a pipeline is `.Values.a.b`,
//! `.Release.Namespace`, `.Release.Name`, `.Chart.Version`,
//! `.Chart.AppVersion` or a `"string"`, optionally `| quote` or `| toJson`
//! (a list or map as one line of JSON, which is YAML); `{{ if
//! pipeline }}` / `{{ else }}` / `{{ end }}` with Go's truthiness;
//! `{{/* comments */}}`; `{{-` and `-}}` whitespace trimming. Anything else
//! is an error naming the template and line, never a guess. A value that is
//! missing or is a map or list is an error too (Helm would print
//! `<no value>` or `map[...]`).

use serde_json::Value;

/// What templates can read.
#[derive(Debug, Clone)]
pub struct Context {
    pub values: Value,
    pub release_name: String,
    pub release_namespace: String,
    pub chart_version: String,
    pub app_version: String,
}

/// A template that cannot be rendered.
#[derive(Debug, thiserror::Error)]
#[error("{template}:{line}: {reason}")]
pub struct RenderError {
    pub template: String,
    pub line: usize,
    pub reason: String,
}

#[derive(Debug)]
enum Node<'a> {
    Text(String),
    Print(&'a str, usize),
    If {
        cond: &'a str,
        line: usize,
        then: Vec<Node<'a>>,
        otherwise: Vec<Node<'a>>,
    },
}

/// Nodes collected so far, and the open `if` (condition, line, then-branch once `else` was seen).
type Frame<'a> = (
    Vec<Node<'a>>,
    Option<(&'a str, usize, Option<Vec<Node<'a>>>)>,
);

/// Renders one template file.
///
/// # Errors
/// On syntax outside the supported subset, unbalanced `if`/`end`, or a missing value.
pub fn render(name: &str, src: &str, ctx: &Context) -> Result<String, RenderError> {
    let err = |line: usize, reason: String| RenderError {
        template: name.to_string(),
        line,
        reason,
    };
    // Tokenize into text and actions, applying the trim markers.
    let mut pieces: Vec<(Option<&str>, String, usize)> = Vec::new(); // (action, text, line)
    let mut rest = src;
    let mut trim_next = false;
    while !rest.is_empty() {
        let offset = src.len() - rest.len();
        let line = src[..offset].matches('\n').count() + 1;
        let (text, after) = match rest.find("{{") {
            Some(i) => (&rest[..i], Some(&rest[i + 2..])),
            None => (rest, None),
        };
        let mut text = if trim_next { text.trim_start() } else { text }.to_string();
        trim_next = false;
        let Some(after) = after else {
            pieces.push((None, text, line));
            break;
        };
        let action_line = line + text.matches('\n').count();
        let (action, tail) = after
            .split_once("}}")
            .ok_or_else(|| err(action_line, "unclosed {{".into()))?;
        let mut action = action;
        if let Some(a) = action.strip_prefix("- ") {
            text.truncate(text.trim_end().len());
            action = a;
        }
        if let Some(a) = action.strip_suffix(" -") {
            trim_next = true;
            action = a;
        }
        pieces.push((None, text, line));
        pieces.push((Some(action.trim()), String::new(), action_line));
        rest = tail;
    }
    // Parse into a tree of if/else blocks.
    let mut stack: Vec<Frame> = vec![(Vec::new(), None)];
    for (action, text, line) in pieces {
        let top = &mut stack.last_mut().expect("root frame").0;
        let Some(action) = action else {
            if !text.is_empty() {
                top.push(Node::Text(text));
            }
            continue;
        };
        if action.starts_with("/*") && action.ends_with("*/") {
            continue;
        } else if let Some(cond) = action.strip_prefix("if ") {
            stack.push((Vec::new(), Some((cond.trim(), line, None))));
        } else if action == "else" {
            let frame = stack.last_mut().expect("root frame");
            match &mut frame.1 {
                Some((_, _, otherwise @ None)) => {
                    *otherwise = Some(std::mem::take(&mut frame.0));
                }
                _ => return Err(err(line, "else without if".into())),
            }
        } else if action == "end" {
            let (nodes, open) = stack.pop().expect("root frame");
            let Some((cond, if_line, then)) = open else {
                return Err(err(line, "end without if".into()));
            };
            let (then, otherwise) = match then {
                Some(then) => (then, nodes),
                None => (nodes, Vec::new()),
            };
            stack.last_mut().expect("root frame").0.push(Node::If {
                cond,
                line: if_line,
                then,
                otherwise,
            });
        } else {
            top.push(Node::Print(action, line));
        }
    }
    if stack.len() != 1 {
        let line = stack.last().and_then(|f| f.1.as_ref()).map_or(0, |o| o.1);
        return Err(err(line, "if without end".into()));
    }
    let mut out = String::new();
    emit(&stack.pop().expect("root frame").0, ctx, &mut out).map_err(|(line, r)| err(line, r))?;
    Ok(out)
}

fn emit(nodes: &[Node], ctx: &Context, out: &mut String) -> Result<(), (usize, String)> {
    for node in nodes {
        match node {
            Node::Text(t) => out.push_str(t),
            Node::Print(pipeline, line) => {
                out.push_str(&print(&eval(pipeline, ctx, *line)?, *line)?)
            }
            Node::If {
                cond,
                line,
                then,
                otherwise,
            } => {
                let branch = if truthy(&eval(cond, ctx, *line)?) {
                    then
                } else {
                    otherwise
                };
                emit(branch, ctx, out)?;
            }
        }
    }
    Ok(())
}

fn eval(pipeline: &str, ctx: &Context, line: usize) -> Result<Value, (usize, String)> {
    let mut stages = pipeline.split('|').map(str::trim);
    let term = stages.next().unwrap_or_default();
    let mut value = if let Some(path) = term.strip_prefix(".Values.") {
        path.split('.')
            .try_fold(&ctx.values, |v, key| v.get(key))
            .cloned()
            .ok_or_else(|| (line, format!("no value at .Values.{path}")))?
    } else {
        match term {
            ".Release.Namespace" => Value::from(ctx.release_namespace.clone()),
            ".Release.Name" => Value::from(ctx.release_name.clone()),
            ".Chart.Version" => Value::from(ctx.chart_version.clone()),
            ".Chart.AppVersion" => Value::from(ctx.app_version.clone()),
            t if t.len() >= 2
                && t.starts_with('"')
                && t.ends_with('"')
                && !t[1..t.len() - 1].contains(['"', '\\']) =>
            {
                Value::from(&t[1..t.len() - 1])
            }
            other => return Err((line, format!("unsupported template expression {other:?}"))),
        }
    };
    for stage in stages {
        value = match stage {
            "quote" => {
                Value::from(serde_json::to_string(&print(&value, line)?).unwrap_or_default())
            }
            "toJson" => Value::from(serde_json::to_string(&value).unwrap_or_default()),
            other => return Err((line, format!("unsupported template function {other:?}"))),
        };
    }
    Ok(value)
}

fn print(v: &Value, line: usize) -> Result<String, (usize, String)> {
    match v {
        Value::String(s) => Ok(s.clone()),
        Value::Bool(b) => Ok(b.to_string()),
        Value::Number(n) => Ok(match n.as_f64() {
            Some(f) if f.fract() == 0.0 && f.abs() < 1e6 => format!("{f:.0}"),
            _ => {
                return Err((
                    line,
                    format!("number {n} would print differently in Helm (float64)"),
                ));
            }
        }),
        Value::Null => Err((line, "value is null".into())),
        Value::Array(_) | Value::Object(_) => Err((line, "cannot print a map or list".into())),
    }
}

/// Go template truthiness: false, 0, nil and empty strings/collections are false.
fn truthy(v: &Value) -> bool {
    match v {
        Value::Null => false,
        Value::Bool(b) => *b,
        Value::Number(n) => n.as_f64() != Some(0.0),
        Value::String(s) => !s.is_empty(),
        Value::Array(a) => !a.is_empty(),
        Value::Object(o) => !o.is_empty(),
    }
}

/// Splits rendered YAML into documents, dropping empty ones (as Helm does).
pub fn documents(rendered: &str) -> Vec<String> {
    let mut docs = vec![String::new()];
    for line in rendered.lines() {
        if line.trim_end() == "---" {
            docs.push(String::new());
        } else {
            let doc = docs.last_mut().expect("one document");
            doc.push_str(line);
            doc.push('\n');
        }
    }
    docs.retain(|d| {
        d.lines()
            .any(|l| !l.trim().is_empty() && !l.trim_start().starts_with('#'))
    });
    docs
}
