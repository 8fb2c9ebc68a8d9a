//! TCP and UDP echo servers: sockets made inside the target namespace,
//! served by tokio tasks of the test bed's runtime.

use std::net::{IpAddr, SocketAddr};

use socket2::{Domain, Protocol as SockProto, Socket, Type};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::runtime::Handle;

use crate::error::TestbedError;
use crate::netns::in_netns;

/// Bound, not yet served sockets of one namespace.
struct Bound {
    tcp: Vec<std::net::TcpListener>,
    udp: Vec<std::net::UdpSocket>,
}

fn bind(addr: SocketAddr, ty: Type, proto: SockProto) -> std::io::Result<Socket> {
    let s = Socket::new(Domain::for_address(addr), ty, Some(proto))?;
    s.set_reuse_address(true)?;
    if addr.ip() == IpAddr::from(std::net::Ipv6Addr::UNSPECIFIED) {
        // `[::]` serves both families.
        s.set_only_v6(false)?;
    }
    s.set_nonblocking(true)?;
    s.bind(&addr.into())?;
    Ok(s)
}

/// Starts TCP and UDP echo servers on every `(address, port)` inside
/// namespace `ns` (`0.0.0.0` for a pod, `[::]` for a dual-stack one, which
/// serves both families; the host's own address outside).
pub(crate) fn serve(
    handle: &Handle,
    ns: &str,
    addrs: &[(IpAddr, u16)],
) -> Result<(), TestbedError> {
    let bound = in_netns(ns, || {
        let mut b = Bound {
            tcp: Vec::new(),
            udp: Vec::new(),
        };
        for (ip, port) in addrs {
            let addr = SocketAddr::new(*ip, *port);
            let t = bind(addr, Type::STREAM, SockProto::TCP)?;
            t.listen(128)?;
            b.tcp.push(t.into());
            b.udp.push(bind(addr, Type::DGRAM, SockProto::UDP)?.into());
        }
        Ok(b)
    })?;
    let _guard = handle.enter();
    let ns_err = |source| TestbedError::Netns {
        name: ns.to_string(),
        source,
    };
    for l in bound.tcp {
        let listener = tokio::net::TcpListener::from_std(l).map_err(ns_err)?;
        handle.spawn(async move {
            while let Ok((mut conn, _)) = listener.accept().await {
                tokio::spawn(async move {
                    let mut buf = [0u8; 2048];
                    while let Ok(n @ 1..) = conn.read(&mut buf).await {
                        if conn.write_all(&buf[..n]).await.is_err() {
                            break;
                        }
                    }
                });
            }
        });
    }
    for u in bound.udp {
        let sock = tokio::net::UdpSocket::from_std(u).map_err(ns_err)?;
        handle.spawn(async move {
            let mut buf = [0u8; 2048];
            while let Ok((n, peer)) = sock.recv_from(&mut buf).await {
                let _ = sock.send_to(&buf[..n], peer).await;
            }
        });
    }
    Ok(())
}
