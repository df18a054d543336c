//! How the client reaches the control plane: a [`Connector`] makes a fresh
//! gRPC channel for every connection attempt. Plaintext HTTP/2 for now;
//! mTLS plugs in as another connector (a tonic `Endpoint` with a TLS
//! config or a custom connector still yields a [`Channel`]).

use std::fmt;
use std::time::Duration;

use futures::future::BoxFuture;
use tonic::transport::{Channel, Endpoint};

use super::XdsError;

/// Why a connection attempt failed (connectors may use any error).
pub type ConnectError = Box<dyn std::error::Error + Send + Sync>;

/// HTTP/2 pings that notice a control plane that vanished without closing.
const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(30);
const KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(10);
/// TCP connect timeout of the plaintext connector.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// Makes the channel for one connection attempt.
pub trait Connector: Send + Sync + 'static {
    /// Connects (eagerly: errors surface here, not on the first RPC).
    fn connect(&self) -> BoxFuture<'static, Result<Channel, ConnectError>>;

    /// Where this connector goes, for logs.
    fn target(&self) -> String;
}

/// Plaintext HTTP/2 to `http://host:port`.
#[derive(Clone)]
pub struct PlaintextConnector {
    endpoint: Endpoint,
}

impl PlaintextConnector {
    /// A connector for `uri` (`http://host:port`) with TCP no-delay, a 5 s
    /// connect timeout and HTTP/2 keepalive pings.
    pub fn new(uri: &str) -> Result<Self, XdsError> {
        let endpoint =
            Endpoint::from_shared(uri.to_string()).map_err(|source| XdsError::Endpoint {
                uri: uri.to_string(),
                source,
            })?;
        Ok(Self::from_endpoint(
            endpoint
                .connect_timeout(CONNECT_TIMEOUT)
                .tcp_nodelay(true)
                .http2_keep_alive_interval(KEEPALIVE_INTERVAL)
                .keep_alive_timeout(KEEPALIVE_TIMEOUT)
                .keep_alive_while_idle(true),
        ))
    }

    /// A connector for a fully configured endpoint.
    pub fn from_endpoint(endpoint: Endpoint) -> Self {
        Self { endpoint }
    }
}

impl fmt::Debug for PlaintextConnector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PlaintextConnector")
            .field("uri", &self.endpoint.uri().to_string())
            .finish()
    }
}

impl Connector for PlaintextConnector {
    fn connect(&self) -> BoxFuture<'static, Result<Channel, ConnectError>> {
        let endpoint = self.endpoint.clone();
        Box::pin(async move { Ok(endpoint.connect().await?) })
    }

    fn target(&self) -> String {
        self.endpoint.uri().to_string()
    }
}
