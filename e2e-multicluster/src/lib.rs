//! Multi-cluster end-to-end harness and scenarios.
//!
//! Not built yet (issue 8): the lab and its e2e suite arrive with `isthmus lab`.
