//! Real traffic through attached programs: a "node" namespace (the test
//! thread's own) and a "pod" namespace joined by a veth pair, programs on
//! the node side. TCP connects are allowed or dropped by the applied state,
//! and an established connection is cut by a denying apply. Needs root.

#[path = "support/kernel.rs"]
mod kernel;
#[path = "support/netns.rs"]
mod netns;

use std::{
    io::{Read, Write},
    net::{SocketAddr, TcpListener, TcpStream},
    sync::{
        atomic::{AtomicBool, Ordering},
        mpsc,
    },
    time::{Duration, Instant},
};

use kernel::{open, StateBuilder};
use netns::{enter, veth, NetNs, VethSpec};
use policy_agent::dataplane::Dataplane;
use policy_common::{dir, ep_flags, v4_mapped};

const EP: u32 = 7;
const NODE_ADDR: [u8; 4] = [10, 99, 0, 1];
const POD_ADDR: [u8; 4] = [10, 99, 0, 2];
const PORT: u16 = 8080;

fn connect() -> Option<TcpStream> {
    let addr = SocketAddr::from((POD_ADDR, PORT));
    let s = TcpStream::connect_timeout(&addr, Duration::from_millis(700)).ok()?;
    s.set_read_timeout(Some(Duration::from_millis(700))).ok()?;
    Some(s)
}

fn echo_works(s: &mut TcpStream) -> bool {
    if s.write_all(b"ping").is_err() {
        return false;
    }
    let mut buf = [0u8; 4];
    matches!(s.read_exact(&mut buf), Ok(()) if &buf == b"ping")
}

#[test]
fn tcp_allowed_denied_and_cut() {
    let (mut dp, _pins) = open("veth");
    let pod = NetNs::new("pod");
    let allowing = StateBuilder::default()
        .endpoint(EP, ep_flags::ISOLATED_INGRESS)
        .ip(v4_mapped(NODE_ADDR), 300)
        .ip(v4_mapped(POD_ADDR), 301)
        .port(EP, dir::INGRESS, 300, 6, PORT)
        .build();
    let denying = StateBuilder::default()
        .endpoint(EP, ep_flags::ISOLATED_INGRESS)
        .ip(v4_mapped(NODE_ADDR), 300)
        .ip(v4_mapped(POD_ADDR), 301)
        .build();
    let pod_path = pod.path();
    let stop = AtomicBool::new(false);
    let (ready_tx, ready_rx) = mpsc::channel::<()>();
    let (link_tx, link_rx) = mpsc::channel::<()>();
    let (stop, pod_path) = (&stop, &pod_path);
    std::thread::scope(|s| {
        // The echo server in the pod namespace; stops when told or after
        // a deadline, so a failing test never hangs.
        s.spawn(move || {
            enter(pod_path);
            // Wait until the client side has created and moved the veth.
            let _ = link_rx.recv_timeout(Duration::from_secs(20));
            let deadline = Instant::now() + Duration::from_secs(30);
            let l = loop {
                match TcpListener::bind(SocketAddr::from((POD_ADDR, PORT))) {
                    Ok(l) => break l,
                    Err(_) if Instant::now() < deadline => {
                        std::thread::sleep(Duration::from_millis(50))
                    }
                    Err(e) => panic!("bind: {e}"),
                }
            };
            l.set_nonblocking(true).unwrap();
            let _ = ready_tx.send(());
            while !stop.load(Ordering::SeqCst) && Instant::now() < deadline {
                match l.accept() {
                    Ok((mut c, _)) => {
                        c.set_nonblocking(false).unwrap();
                        std::thread::spawn(move || {
                            let mut buf = [0u8; 64];
                            while let Ok(n) = c.read(&mut buf) {
                                if n == 0 || c.write_all(&buf[..n]).is_err() {
                                    break;
                                }
                            }
                        });
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(20)),
                }
            }
        });
        let (pod, dp) = (&pod, &mut dp);
        s.spawn(move || {
            struct Stop<'a>(&'a AtomicBool);
            impl Drop for Stop<'_> {
                fn drop(&mut self) {
                    self.0.store(true, Ordering::SeqCst);
                }
            }
            let _stop = Stop(stop);
            // SAFETY: only this thread moves to a new namespace.
            if unsafe { libc::unshare(libc::CLONE_NEWNET) } != 0 {
                panic!("unshare: {}", std::io::Error::last_os_error());
            }
            veth(
                None,
                pod,
                &VethSpec {
                    host: "pv0",
                    host_cidr: "10.99.0.1/24",
                    pod_if: "pv0p",
                    pod_cidr: "10.99.0.2/24",
                    gateway: None,
                },
            );
            let _ = link_tx.send(());
            if ready_rx.recv_timeout(Duration::from_secs(20)).is_err() {
                panic!("echo server did not start");
            }

            dp.attach_endpoint("pv0", EP).unwrap();
            kernel::sources(dp, &[(EP, &[policy_common::v4_mapped(POD_ADDR)])]);
            // Attached, no state yet: fail closed.
            if connect().is_some() {
                panic!("connected before any state was applied");
            }
            dp.apply(&allowing).unwrap();
            let Some(mut conn) = connect() else {
                panic!("connect dropped under the allowing state");
            };
            if !echo_works(&mut conn) {
                panic!("no echo on the allowed connection");
            }
            dp.apply(&denying).unwrap();
            if echo_works(&mut conn) {
                panic!("established connection still works after the denying apply");
            }
            if connect().is_some() {
                panic!("new connection accepted under the denying state");
            }
            dp.apply(&allowing).unwrap();
            let Some(mut again) = connect() else {
                panic!("connect failed after allowing again");
            };
            if !echo_works(&mut again) {
                panic!("no echo after allowing again");
            }
            dp.detach_endpoint("pv0", EP).unwrap();
        });
    });
}
