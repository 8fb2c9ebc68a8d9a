//! Running probes: each source socket is made inside the source's namespace
//! (bound to the source address for outside hosts), then all probes run in
//! parallel as tokio tasks. Allowed = the payload came back echoed.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::Duration;

use socket2::{Domain, Protocol as SockProto, Socket, Type};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::runtime::Handle;
use tokio::time::timeout;

use crate::netns::in_netns;
use crate::probe::{Observation, Probe, Protocol};

/// How long a probe waits for an answer before calling it denied.
pub const PROBE_TIMEOUT: Duration = Duration::from_secs(1);

/// Where a probe runs from and to.
#[derive(Clone, Debug)]
pub(crate) struct Route {
    /// Namespace the source socket is made in.
    pub src_ns: String,
    /// Source address to bind (outside hosts hold many).
    pub bind: Option<IpAddr>,
    /// Destination (its family is the probe's).
    pub dst: SocketAddr,
}

enum Client {
    Tcp(std::net::TcpStream),
    Udp(std::net::UdpSocket),
}

fn client(protocol: Protocol, dst: SocketAddr, bind: Option<IpAddr>) -> std::io::Result<Client> {
    let any = match dst {
        SocketAddr::V4(_) => IpAddr::V4(Ipv4Addr::UNSPECIFIED),
        SocketAddr::V6(_) => IpAddr::V6(Ipv6Addr::UNSPECIFIED),
    };
    let local = SocketAddr::new(bind.unwrap_or(any), 0);
    let (ty, proto) = match protocol {
        Protocol::Udp => (Type::DGRAM, SockProto::UDP),
        _ => (Type::STREAM, SockProto::TCP),
    };
    let s = Socket::new(Domain::for_address(dst), ty, Some(proto))?;
    s.set_nonblocking(true)?;
    if bind.is_some() || protocol == Protocol::Udp {
        s.bind(&local.into())?;
    }
    Ok(match protocol {
        Protocol::Udp => Client::Udp(s.into()),
        _ => Client::Tcp(s.into()),
    })
}

fn payload(probe: &Probe) -> Vec<u8> {
    format!("palisade-probe {probe}\n").into_bytes()
}

async fn tcp(sock: std::net::TcpStream, dst: SocketAddr, payload: Vec<u8>) -> (bool, String) {
    let sock = tokio::net::TcpSocket::from_std_stream(sock);
    let mut conn = match timeout(PROBE_TIMEOUT, sock.connect(dst)).await {
        Err(_) => return (false, "connect: no answer within 1s".into()),
        Ok(Err(e)) => return (false, format!("connect: {e}")),
        Ok(Ok(c)) => c,
    };
    let exchange = async {
        conn.write_all(&payload).await?;
        let mut back = vec![0u8; payload.len()];
        conn.read_exact(&mut back).await?;
        Ok::<_, std::io::Error>(back)
    };
    match timeout(PROBE_TIMEOUT, exchange).await {
        Err(_) => (false, "connected, but no echo within 1s".into()),
        Ok(Err(e)) => (false, format!("connected, then {e}")),
        Ok(Ok(back)) if back == payload => (true, "echoed".into()),
        Ok(Ok(_)) => (false, "connected, but the echo differs".into()),
    }
}

async fn udp(sock: std::net::UdpSocket, dst: SocketAddr, payload: Vec<u8>) -> (bool, String) {
    let sock = match tokio::net::UdpSocket::from_std(sock) {
        Ok(s) => s,
        Err(e) => return (false, format!("socket: {e}")),
    };
    if let Err(e) = sock.connect(dst).await {
        return (false, format!("connect: {e}"));
    }
    // Two sends half the timeout apart; either echo counts.
    let half = PROBE_TIMEOUT / 2;
    let mut buf = vec![0u8; payload.len() + 16];
    for _ in 0..2 {
        if let Err(e) = sock.send(&payload).await {
            return (false, format!("send: {e}"));
        }
        match timeout(half, sock.recv(&mut buf)).await {
            Err(_) => continue,
            Ok(Err(e)) => return (false, format!("recv: {e}")),
            Ok(Ok(n)) if buf[..n] == payload[..] => return (true, "echoed".into()),
            Ok(Ok(_)) => return (false, "answer differs from the datagram sent".into()),
        }
    }
    (false, "no echo within 1s".into())
}

/// Runs `probes` (each with its route, or the reason it cannot run) and
/// returns one observation per probe, in order. Blocks on `handle`; call it
/// from a thread outside any runtime.
pub(crate) fn run(
    handle: &Handle,
    probes: Vec<(Probe, Result<Route, String>)>,
) -> Vec<Observation> {
    // Make the sockets, one thread per source namespace.
    let mut by_ns: BTreeMap<String, Vec<usize>> = BTreeMap::new();
    for (i, (p, route)) in probes.iter().enumerate() {
        if let (Ok(r), Protocol::Tcp | Protocol::Udp) = (route, p.protocol) {
            by_ns.entry(r.src_ns.clone()).or_default().push(i);
        }
    }
    let mut sockets: BTreeMap<usize, Result<Client, String>> = BTreeMap::new();
    for (ns, idxs) in &by_ns {
        let made = in_netns(ns, || {
            Ok(idxs
                .iter()
                .map(|&i| {
                    let (p, r) = &probes[i];
                    let made = match r {
                        Ok(r) => client(p.protocol, r.dst, r.bind),
                        Err(e) => Err(std::io::Error::other(e.clone())),
                    };
                    (i, made.map_err(|e| format!("socket: {e}")))
                })
                .collect::<Vec<_>>())
        });
        match made {
            Ok(list) => sockets.extend(list),
            Err(e) => sockets.extend(idxs.iter().map(|&i| (i, Err(e.to_string())))),
        }
    }

    let tasks: Vec<_> = probes
        .iter()
        .enumerate()
        .map(|(i, (p, route))| {
            let sock = sockets.remove(&i);
            let route = route.clone();
            let payload = payload(p);
            let protocol = p.protocol;
            handle.spawn(async move {
                let route = match route {
                    Err(reason) => return (None, format!("skipped: {reason}")),
                    Ok(r) => r,
                };
                if protocol == Protocol::Sctp {
                    return (
                        None,
                        "skipped: no SCTP sockets in this kernel (unsupported, not a verdict)"
                            .into(),
                    );
                }
                let t0 = std::time::Instant::now();
                let (allowed, detail) = match sock {
                    None => (None, "skipped: no socket".into()),
                    Some(Err(e)) => (None, format!("skipped: {e}")),
                    Some(Ok(Client::Tcp(s))) => {
                        let (ok, d) = tcp(s, route.dst, payload).await;
                        (Some(ok), d)
                    }
                    Some(Ok(Client::Udp(s))) => {
                        let (ok, d) = udp(s, route.dst, payload).await;
                        (Some(ok), d)
                    }
                };
                let ms = t0.elapsed().as_secs_f64() * 1000.0;
                (allowed, format!("{detail} ({ms:.1} ms)"))
            })
        })
        .collect();
    let results = handle.block_on(async {
        let mut out = Vec::with_capacity(tasks.len());
        for t in tasks {
            out.push(
                t.await
                    .unwrap_or_else(|e| (None, format!("skipped: probe task failed: {e}"))),
            );
        }
        out
    });
    probes
        .into_iter()
        .zip(results)
        .map(|((probe, _), (allowed, detail))| Observation {
            probe,
            allowed,
            detail,
        })
        .collect()
}
