//! Isthmus east-west gateway: SNI passthrough to exported services only.
//!
//! Not built yet (issue 5).
