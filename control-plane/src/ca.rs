//! Certificate service (in progress).
