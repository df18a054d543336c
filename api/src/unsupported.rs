//! A marker for Istio fields Isthmus knows but does not implement.
//!
//! Declaring such a field as `Option<Unsupported>` keeps Istio's YAML
//! shape visible in our types and makes loading fail with the field's path
//! (`spec.http[0].corsPolicy: ...`) instead of silently dropping it.

use std::borrow::Cow;

use schemars::{JsonSchema, Schema, SchemaGenerator, json_schema};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// Message attached to a field declared `Unsupported`.
pub const UNSUPPORTED: &str = "Istio field not supported by Isthmus";

/// A field that exists in Istio's API but not in Isthmus; any value is an error.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Unsupported {}

impl<'de> Deserialize<'de> for Unsupported {
    fn deserialize<D: Deserializer<'de>>(_: D) -> Result<Self, D::Error> {
        Err(serde::de::Error::custom(UNSUPPORTED))
    }
}

impl Serialize for Unsupported {
    fn serialize<S: Serializer>(&self, _: S) -> Result<S::Ok, S::Error> {
        match *self {}
    }
}

impl JsonSchema for Unsupported {
    fn schema_name() -> Cow<'static, str> {
        "Unsupported".into()
    }

    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        json_schema!({
            "x-kubernetes-preserve-unknown-fields": true,
            "description": "Accepted by Istio; Isthmus rejects it when the resource is loaded."
        })
    }

    fn inline_schema() -> bool {
        true
    }
}
