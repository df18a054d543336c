//! HTTP/1.1 upgrades (WebSocket and any other `Upgrade` token) across the mesh.
//!
//! ```text
//! app ─HTTP/1.1 Upgrade─► outbound ─► route (matches, header ops, rewrite, fault)
//!   ─► own connection: mTLS, ALPN http/1.1 ─► inbound ─► authz ─► own HTTP/1.1 connection to the app
//!   ◄── 101 Switching Protocols ── each hop answers 101 downstream, then splices the upgraded bytes
//! ```
//!
//! When the mesh hop between sidecars is HTTP/2 (HTTP/2 ports,
//! `h2UpgradePolicy: UPGRADE`), an upgrade still crosses it as HTTP/1.1 on
//! a connection of its own rather than as an extended CONNECT stream
//! (RFC 8441). Why:
//! - it is what Istio does by default (Envoy keeps a WebSocket on HTTP/1.1
//!   upstream unless told otherwise), and what every app already speaks;
//! - an upgraded connection lives for minutes or hours: sharing a pooled
//!   HTTP/2 connection buys nothing but ties its bytes to HTTP/2 flow control
//!   and to the lifetime (`maxRequestsPerConnection`, certificate rotation)
//!   of a connection short requests also use;
//! - the inbound side already accepts HTTP/1.1 over mTLS (ALPN `http/1.1`),
//!   so authorization and identity work unchanged;
//! - extended CONNECT would need `:protocol` support on both ends and a
//!   translation back to HTTP/1.1 for the app anyway.
//!
//! `Upgrade: h2c` is not a tunnel: it is dropped and the request is proxied
//! as a plain HTTP/1.1 request (as Envoy does). Upgraded bytes are not
//! drained: they end when either side closes, or after an hour idle.

use http::header::{self, HeaderMap, HeaderValue};
use http::{Request, Version};
use hyper::upgrade::OnUpgrade;
use hyper_util::rt::TokioIo;
use isthmus_proxy_core::transport::{SpliceConfig, splice};

/// The `Upgrade` token of an HTTP/1.1 upgrade request (`Connection: upgrade`
/// plus `Upgrade`), `None` for any other request and for `h2c`.
pub fn requested<B>(req: &Request<B>) -> Option<HeaderValue> {
    if req.version() != Version::HTTP_11 || !connection_has_upgrade(req.headers()) {
        return None;
    }
    let token = req.headers().get(header::UPGRADE)?;
    let h2c = token
        .to_str()
        .is_ok_and(|t| t.trim().eq_ignore_ascii_case("h2c"));
    (!h2c).then(|| token.clone())
}

fn connection_has_upgrade(headers: &HeaderMap) -> bool {
    headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|t| t.trim().eq_ignore_ascii_case("upgrade"))
}

/// Puts the upgrade headers back after the hop-by-hop headers were removed.
pub fn restore(headers: &mut HeaderMap, token: HeaderValue) {
    headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    headers.insert(header::UPGRADE, token);
}

/// Once both sides have switched protocols, splices their bytes (in a task
/// of its own: the HTTP connections that carried the handshake are done).
pub fn tunnel(downstream: OnUpgrade, upstream: OnUpgrade) {
    tokio::spawn(async move {
        let (down, up) = match tokio::try_join!(downstream, upstream) {
            Ok(both) => both,
            Err(e) => {
                tracing::debug!(error = %e, "upgrade did not complete");
                return;
            }
        };
        let mut down = TokioIo::new(down);
        let mut up = TokioIo::new(up);
        if let Err(e) = splice(&mut down, &mut up, &SpliceConfig::default(), &()).await {
            tracing::debug!(error = %e, "upgraded connection ended with an error");
        }
    });
}
