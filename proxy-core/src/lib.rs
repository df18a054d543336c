//! What the sidecar and the east-west gateway share: the xDS client that
//! keeps a validated, atomically swapped copy of the proxy's config, and
//! the transport/TLS plumbing both data planes use.
