//! Where a captured connection was going: `SO_ORIGINAL_DST`.
//!
//! A connection redirected by the capture rules arrives at a sidecar
//! listener; conntrack remembers its destination before NAT, which the kernel
//! returns for `SO_ORIGINAL_DST` (IPv4) and `IP6T_SO_ORIGINAL_DST` (IPv6).

use std::io;
use std::net::SocketAddr;

use tokio::net::TcpStream;

/// The destination `stream` had before the capture rules redirected it.
///
/// Falls back to the local address (so for a connection that was not
/// redirected, the address it was accepted on) when the kernel has no NAT
/// record for it: conntrack is not loaded in the namespace (no rules were
/// ever installed, as in `isthmus lab` or on a developer machine), or it holds
/// no entry for this connection (it was flushed, or the platform is not
/// Linux). A listener that sees its own address back was dialled directly,
/// and must not proxy to itself.
///
/// IPv4 connections accepted on a dual-stack IPv6 socket are asked with the
/// IPv4 option; every address returned is canonical (IPv4, not `::ffff:a.b.c.d`).
pub fn original_destination(stream: &TcpStream) -> io::Result<SocketAddr> {
    let local = stream.local_addr()?;
    let local = SocketAddr::new(local.ip().to_canonical(), local.port());
    match nat_destination(stream, local) {
        Ok(addr) => Ok(SocketAddr::new(addr.ip().to_canonical(), addr.port())),
        Err(e) if no_nat_record(&e) => Ok(local),
        Err(e) => Err(e),
    }
}

#[cfg(target_os = "linux")]
fn nat_destination(stream: &TcpStream, local: SocketAddr) -> io::Result<SocketAddr> {
    let socket = socket2::SockRef::from(stream);
    // `local` is canonical, so a v4-mapped connection counts as IPv4 here.
    let addr = match local {
        SocketAddr::V4(_) => socket.original_dst_v4()?,
        SocketAddr::V6(_) => socket.original_dst_v6()?,
    };
    addr.as_socket().ok_or_else(|| {
        io::Error::new(
            io::ErrorKind::InvalidData,
            "the original destination is not an IP socket address",
        )
    })
}

#[cfg(not(target_os = "linux"))]
fn nat_destination(_: &TcpStream, _: SocketAddr) -> io::Result<SocketAddr> {
    Err(io::ErrorKind::NotFound.into())
}

/// `ENOENT`: conntrack has no entry; `ENOPROTOOPT`: conntrack is not loaded.
fn no_nat_record(e: &io::Error) -> bool {
    e.kind() == io::ErrorKind::NotFound || e.raw_os_error() == Some(libc::ENOPROTOOPT)
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::net::TcpListener;

    /// Without capture rules the original destination is where we accepted.
    async fn accepted_on(listen: &str, dial: &str) -> (SocketAddr, SocketAddr) {
        let socket = match listen.parse::<SocketAddr>().unwrap() {
            SocketAddr::V4(_) => tokio::net::TcpSocket::new_v4().unwrap(),
            SocketAddr::V6(_) => {
                let s = socket2::Socket::new(socket2::Domain::IPV6, socket2::Type::STREAM, None)
                    .unwrap();
                s.set_only_v6(false).unwrap();
                s.set_nonblocking(true).unwrap();
                tokio::net::TcpSocket::from_std_stream(s.into())
            }
        };
        socket.bind(listen.parse().unwrap()).unwrap();
        let listener: TcpListener = socket.listen(8).unwrap();
        let port = listener.local_addr().unwrap().port();
        let dial: SocketAddr = format!("{dial}:{port}").parse().unwrap();
        let _client = TcpStream::connect(dial).await.unwrap();
        let (accepted, _) = listener.accept().await.unwrap();
        (original_destination(&accepted).unwrap(), dial)
    }

    #[tokio::test]
    async fn not_redirected_ipv4_is_the_local_address() {
        let (orig, dialled) = accepted_on("127.0.0.1:0", "127.0.0.1").await;
        assert_eq!(orig, dialled);
    }

    #[tokio::test]
    async fn not_redirected_ipv6_is_the_local_address() {
        let (orig, dialled) = accepted_on("[::1]:0", "[::1]").await;
        assert_eq!(orig, dialled);
    }

    #[tokio::test]
    async fn ipv4_on_a_dual_stack_socket_is_canonical() {
        let (orig, dialled) = accepted_on("[::]:0", "127.0.0.1").await;
        assert_eq!(orig, dialled);
        assert!(orig.is_ipv4());
    }
}
