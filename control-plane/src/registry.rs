//! Service registry (in progress).
