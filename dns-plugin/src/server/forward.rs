//! Forwarding of names outside our zones to one upstream resolver (`--upstream`).
//!
//! The client's query bytes go to the upstream over UDP as they came; a
//! truncated reply is retried over TCP. The reply's records are re-encoded
//! into our response for the client (its id, its buffer size).

use std::net::SocketAddr;
use std::time::Duration;

use hickory_proto::op::Message;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpStream, UdpSocket};

/// Why an upstream query failed.
#[derive(Debug, thiserror::Error)]
pub enum ForwardError {
    #[error("upstream {upstream}: {source}")]
    Io {
        upstream: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("upstream {upstream} did not answer within {timeout:?}")]
    Timeout {
        upstream: SocketAddr,
        timeout: Duration,
    },
    #[error("upstream {upstream} sent an undecodable reply: {reason}")]
    Decode {
        upstream: SocketAddr,
        reason: String,
    },
}

/// One upstream resolver.
#[derive(Clone, Debug)]
pub struct Forwarder {
    upstream: SocketAddr,
    timeout: Duration,
}

impl Forwarder {
    pub fn new(upstream: SocketAddr, timeout: Duration) -> Forwarder {
        Forwarder { upstream, timeout }
    }

    /// Sends `query` (a DNS message in wire format) and returns the decoded reply.
    pub async fn query(&self, query: &[u8]) -> Result<Message, ForwardError> {
        let reply = tokio::time::timeout(self.timeout, self.exchange(query))
            .await
            .map_err(|_| ForwardError::Timeout {
                upstream: self.upstream,
                timeout: self.timeout,
            })??;
        Message::from_vec(&reply).map_err(|e| ForwardError::Decode {
            upstream: self.upstream,
            reason: e.to_string(),
        })
    }

    async fn exchange(&self, query: &[u8]) -> Result<Vec<u8>, ForwardError> {
        let io = |source| ForwardError::Io {
            upstream: self.upstream,
            source,
        };
        let local: SocketAddr = if self.upstream.is_ipv4() {
            ([0, 0, 0, 0], 0).into()
        } else {
            (std::net::Ipv6Addr::UNSPECIFIED, 0).into()
        };
        let socket = UdpSocket::bind(local).await.map_err(io)?;
        socket.connect(self.upstream).await.map_err(io)?;
        socket.send(query).await.map_err(io)?;
        let mut buf = vec![0u8; 65535];
        loop {
            let n = socket.recv(&mut buf).await.map_err(io)?;
            // Only a reply to this query (same id) counts; anything else is ignored.
            if n >= 12 && query.len() >= 2 && buf[..2] == query[..2] {
                let truncated = buf[2] & 0x02 != 0;
                if !truncated {
                    buf.truncate(n);
                    return Ok(buf);
                }
                break;
            }
        }
        let mut tcp = TcpStream::connect(self.upstream).await.map_err(io)?;
        let len = u16::try_from(query.len()).unwrap_or(u16::MAX);
        tcp.write_all(&len.to_be_bytes()).await.map_err(io)?;
        tcp.write_all(query).await.map_err(io)?;
        let len = tcp.read_u16().await.map_err(io)?;
        let mut reply = vec![0u8; usize::from(len)];
        tcp.read_exact(&mut reply).await.map_err(io)?;
        Ok(reply)
    }
}
