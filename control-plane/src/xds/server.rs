//! ADS server (in progress).
