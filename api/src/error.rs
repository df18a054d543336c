//! The error every loader and validator reports: where, what, why.

use std::fmt;

/// One problem with one input, located as precisely as we know:
/// `<file>:<document #>: <Kind> <ns>/<name>: <field path>: <message>`.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error, serde::Serialize)]
pub struct LoadError {
    /// File (or other origin) the object came from.
    pub file: Option<String>,
    /// 1-based index of the YAML document within the file.
    pub document: Option<usize>,
    /// `Kind namespace/name` of the object, once known.
    pub resource: Option<String>,
    /// Field path such as `spec.http[0].route`.
    pub field: Option<String>,
    /// What is wrong, in words a user can act on.
    pub message: String,
}

impl LoadError {
    /// An error with only a message; callers add location with the `with_*` methods.
    pub fn new(message: impl Into<String>) -> Self {
        Self {
            file: None,
            document: None,
            resource: None,
            field: None,
            message: message.into(),
        }
    }

    /// Sets the field path.
    pub fn with_field(mut self, field: impl Into<String>) -> Self {
        let field = field.into();
        self.field = (!field.is_empty()).then_some(field);
        self
    }

    /// Sets the resource (`Kind ns/name`).
    pub fn with_resource(mut self, resource: impl fmt::Display) -> Self {
        self.resource = Some(resource.to_string());
        self
    }

    /// Sets the file and document index.
    pub fn at(mut self, file: Option<&str>, document: Option<usize>) -> Self {
        if file.is_some() {
            self.file = file.map(str::to_string);
        }
        if document.is_some() {
            self.document = document;
        }
        self
    }
}

impl fmt::Display for LoadError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (&self.file, self.document) {
            (Some(file), Some(doc)) => write!(f, "{file}:{doc}: ")?,
            (Some(file), None) => write!(f, "{file}: ")?,
            (None, Some(doc)) => write!(f, "document {doc}: ")?,
            (None, None) => {}
        }
        if let Some(resource) = &self.resource {
            write!(f, "{resource}: ")?;
        }
        if let Some(field) = &self.field {
            write!(f, "{field}: ")?;
        }
        f.write_str(&self.message)
    }
}
