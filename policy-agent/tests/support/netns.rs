//! Named network namespaces, veth pairs into them, and UDP traffic with
//! sequence numbers for tests that count every packet.

#![allow(dead_code)]

use std::{
    collections::BTreeSet,
    fs::File,
    net::{SocketAddr, UdpSocket},
    os::fd::AsRawFd,
    process::Command,
    sync::{
        atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering},
        Mutex,
    },
    time::{Duration, Instant},
};

use super::kernel::run;

static COUNTER: AtomicUsize = AtomicUsize::new(0);

/// A named network namespace (`/run/netns/<name>`), deleted on drop.
pub struct NetNs(pub String);

impl NetNs {
    /// A new namespace whose name holds the pid, a counter and `tag`, with
    /// its loopback up.
    pub fn new(tag: &str) -> Self {
        let n = COUNTER.fetch_add(1, Ordering::SeqCst);
        let name = format!("palisade-t{}-{n}-{tag}", std::process::id());
        run(&["ip", "netns", "add", &name]);
        let ns = Self(name);
        ns.exec(&["ip", "link", "set", "lo", "up"]);
        ns
    }

    /// `/run/netns/<name>`.
    pub fn path(&self) -> String {
        format!("/run/netns/{}", self.0)
    }

    /// Runs a command inside the namespace (`nsenter --net`, which keeps
    /// /sys and bpffs as they are), panicking on failure.
    pub fn exec(&self, args: &[&str]) {
        let net = format!("--net={}", self.path());
        let mut full = vec!["nsenter", &net];
        full.extend_from_slice(args);
        run(&full);
    }

    /// Moves the calling thread into the namespace.
    pub fn enter(&self) {
        enter(&self.path());
    }
}

impl Drop for NetNs {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.0]).status();
    }
}

/// Runs `f` on a thread inside `ns` and returns its result.
pub fn in_ns<T: Send>(ns: &NetNs, f: impl FnOnce() -> T + Send) -> T {
    std::thread::scope(|s| {
        s.spawn(|| {
            ns.enter();
            f()
        })
        .join()
        .expect("namespace thread panicked")
    })
}

/// Moves the calling thread into the network namespace at `path`.
pub fn enter(path: &str) {
    let f = File::open(path).unwrap_or_else(|e| panic!("{path}: {e}"));
    // SAFETY: a valid namespace fd; affects only this thread.
    if unsafe { libc::setns(f.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
        panic!("setns {path}: {}", std::io::Error::last_os_error());
    }
}

/// Creates veth `host` in `host_ns` (`None`: the calling thread's
/// namespace) with its peer `peer` in `pod` as `pod_if`, addresses
/// `host_cidr` / `pod_cidr` on the two sides, both up. With `gateway`, the
/// pod gets a default route via it.
pub struct VethSpec<'a> {
    pub host: &'a str,
    pub host_cidr: &'a str,
    pub pod_if: &'a str,
    pub pod_cidr: &'a str,
    pub gateway: Option<&'a str>,
}

/// Wires `spec` between `host_ns` (or the calling thread's namespace) and
/// `pod`. The veth goes away with the pod namespace.
pub fn veth(host_ns: Option<&NetNs>, pod: &NetNs, spec: &VethSpec) {
    let tmp = format!("pvt{}", COUNTER.fetch_add(1, Ordering::SeqCst));
    let host_exec = |args: &[&str]| match host_ns {
        Some(ns) => ns.exec(args),
        None => run(args),
    };
    host_exec(&[
        "ip", "link", "add", spec.host, "type", "veth", "peer", "name", &tmp,
    ]);
    host_exec(&["ip", "link", "set", &tmp, "netns", &pod.0]);
    host_exec(&["ip", "addr", "add", spec.host_cidr, "dev", spec.host]);
    host_exec(&["ip", "link", "set", spec.host, "up"]);
    pod.exec(&["ip", "link", "set", &tmp, "name", spec.pod_if]);
    pod.exec(&["ip", "addr", "add", spec.pod_cidr, "dev", spec.pod_if]);
    pod.exec(&["ip", "link", "set", spec.pod_if, "up"]);
    if let Some(gw) = spec.gateway {
        pod.exec(&["ip", "route", "add", "default", "via", gw]);
    }
}

/// Sets a large receive buffer (as root, past `rmem_max`) so a paced
/// sender never overflows it.
pub fn big_rcvbuf(s: &UdpSocket) {
    let size: libc::c_int = 16 << 20;
    // SAFETY: a valid socket fd and an int option value.
    let r = unsafe {
        libc::setsockopt(
            s.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_RCVBUFFORCE,
            &size as *const libc::c_int as *const libc::c_void,
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if r != 0 {
        panic!("SO_RCVBUFFORCE: {}", std::io::Error::last_os_error());
    }
}

/// The `RcvbufErrors` counter of the calling thread's network namespace.
pub fn udp_rcvbuf_errors() -> u64 {
    let text = std::fs::read_to_string("/proc/thread-self/net/snmp").unwrap_or_default();
    let mut lines = text.lines().filter(|l| l.starts_with("Udp: "));
    let (Some(head), Some(vals)) = (lines.next(), lines.next()) else {
        return 0;
    };
    head.split_whitespace()
        .zip(vals.split_whitespace())
        .find(|(k, _)| *k == "RcvbufErrors")
        .and_then(|(_, v)| v.parse().ok())
        .unwrap_or(0)
}

/// Sequence numbers received on one UDP port.
#[derive(Default)]
pub struct Received {
    pub seqs: Mutex<BTreeSet<u64>>,
}

impl Received {
    pub fn count(&self) -> usize {
        self.seqs.lock().unwrap().len()
    }
    /// Forgets everything received (between phases of a test).
    pub fn clear(&self) {
        self.seqs.lock().unwrap().clear();
    }
    /// Waits until nothing new arrived for 150 ms (at most 2 s); returns
    /// the count.
    pub fn settle(&self) -> usize {
        let deadline = Instant::now() + Duration::from_secs(2);
        let mut last = self.count();
        loop {
            std::thread::sleep(Duration::from_millis(150));
            let now = self.count();
            if now == last || Instant::now() > deadline {
                return now;
            }
            last = now;
        }
    }
    /// Waits up to `timeout` for the first datagram; true if one came.
    pub fn wait_first(&self, timeout: Duration) -> bool {
        let t0 = Instant::now();
        while self.count() == 0 && t0.elapsed() < timeout {
            std::thread::sleep(Duration::from_millis(5));
        }
        self.count() > 0
    }
    /// Sequence numbers below `sent` that never arrived.
    pub fn missing(&self, sent: u64) -> Vec<u64> {
        let seqs = self.seqs.lock().unwrap();
        (0..sent).filter(|s| !seqs.contains(s)).collect()
    }
}

/// Binds a UDP socket with a big buffer on `addr` (retrying while the
/// address is not up yet).
pub fn bind_udp(addr: SocketAddr) -> UdpSocket {
    let deadline = Instant::now() + Duration::from_secs(10);
    let s = loop {
        match UdpSocket::bind(addr) {
            Ok(s) => break s,
            Err(_) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(20)),
            Err(e) => panic!("bind {addr}: {e}"),
        }
    };
    big_rcvbuf(&s);
    s.set_read_timeout(Some(Duration::from_millis(100)))
        .unwrap();
    s
}

/// Binds `addr` (see [`bind_udp`]), counts itself in `bound`, then
/// [`receive`]s into `into` until `stop`.
pub fn serve_udp(addr: SocketAddr, into: &Received, stop: &AtomicBool, bound: &AtomicUsize) {
    let sock = bind_udp(addr);
    bound.fetch_add(1, Ordering::SeqCst);
    receive(&sock, into, stop);
}

/// Waits (at most 10 s) until `n` receivers are bound.
pub fn wait_bound(bound: &AtomicUsize, n: usize) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while bound.load(Ordering::SeqCst) < n {
        if Instant::now() > deadline {
            panic!(
                "only {} of {n} receivers bound",
                bound.load(Ordering::SeqCst)
            );
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// Reads datagrams (8-byte big-endian sequence numbers) from `s` into
/// `into` until `stop` is set and the socket has been quiet for 100 ms.
pub fn receive(s: &UdpSocket, into: &Received, stop: &AtomicBool) {
    let mut buf = [0u8; 64];
    loop {
        match s.recv(&mut buf) {
            Ok(n) if n >= 8 => {
                let seq = u64::from_be_bytes(buf[..8].try_into().unwrap());
                into.seqs.lock().unwrap().insert(seq);
            }
            Ok(_) => {}
            Err(_) => {
                if stop.load(Ordering::SeqCst) {
                    return;
                }
            }
        }
    }
}

/// A sender of numbered datagrams to several destinations in turn, one
/// round per call.
pub struct Sender {
    socks: Vec<(UdpSocket, SocketAddr)>,
    /// Datagrams sent per destination.
    pub sent: Vec<u64>,
}

impl Sender {
    /// One socket per destination, bound to `src` (port chosen by the kernel).
    pub fn new(src: [u8; 4], dsts: &[SocketAddr]) -> Self {
        let socks = dsts
            .iter()
            .map(|d| {
                let s = UdpSocket::bind(SocketAddr::from((src, 0)))
                    .unwrap_or_else(|e| panic!("bind sender: {e}"));
                (s, *d)
            })
            .collect::<Vec<_>>();
        let sent = vec![0; socks.len()];
        Self { socks, sent }
    }

    /// Sends the next datagram to every destination. A send error fails
    /// the test (it would hide a packet from the count).
    pub fn round(&mut self) {
        for (i, (s, d)) in self.socks.iter().enumerate() {
            let seq = self.sent[i];
            s.send_to(&seq.to_be_bytes(), d)
                .unwrap_or_else(|e| panic!("send to {d}: {e}"));
            self.sent[i] += 1;
        }
    }

    /// Waits about `gap` between rounds, yielding the core (a sleep would
    /// be far coarser, a spin would starve the other threads).
    pub fn pace(gap: Duration) {
        let until = Instant::now() + gap;
        while Instant::now() < until {
            std::thread::yield_now();
        }
    }
}

/// Sets every flag it holds when dropped, so receivers and senders stop
/// even when the thread holding it panics.
pub struct StopOnDrop<'a>(pub [&'a AtomicBool; 2]);

impl Drop for StopOnDrop<'_> {
    fn drop(&mut self) {
        for flag in self.0 {
            flag.store(true, Ordering::SeqCst);
        }
    }
}

/// Moves the calling thread into `ns`, waits until `stop` is set and then
/// returns the UDP receive buffer errors counted in `ns`.
pub fn rcvbuf_errors_at_stop(ns: &NetNs, stop: &AtomicBool) -> u64 {
    ns.enter();
    while !stop.load(Ordering::SeqCst) {
        std::thread::sleep(Duration::from_millis(20));
    }
    udp_rcvbuf_errors()
}

/// Sends a datagram from `src` in `client` to `dst` in `server` every 50 ms
/// for up to 3 s; true once one arrives.
pub fn udp_gets_through(client: &NetNs, src: [u8; 4], server: &NetNs, dst: SocketAddr) -> bool {
    let got = Received::default();
    let (stop, bound) = (AtomicBool::new(false), AtomicUsize::new(0));
    std::thread::scope(|s| {
        s.spawn(|| {
            server.enter();
            serve_udp(dst, &got, &stop, &bound);
        });
        s.spawn(|| {
            client.enter();
            wait_bound(&bound, 1);
            let mut snd = Sender::new(src, &[dst]);
            let deadline = Instant::now() + Duration::from_secs(3);
            while got.count() == 0 && Instant::now() < deadline {
                snd.round();
                std::thread::sleep(Duration::from_millis(50));
            }
            std::thread::sleep(Duration::from_millis(50));
            stop.store(true, Ordering::SeqCst);
        });
    });
    got.count() > 0
}

/// Moves the calling thread into `ns` and runs [`serve_udp`] there.
pub fn serve_udp_in(
    ns: &NetNs,
    addr: SocketAddr,
    into: &Received,
    stop: &AtomicBool,
    bound: &AtomicUsize,
) {
    ns.enter();
    serve_udp(addr, into, stop, bound);
}

/// Moves the calling thread into `ns`, waits until `receivers` receivers
/// are bound, then sends rounds to `dsts` from `src` about `gap` apart,
/// counting them in `rounds`, until `stop` is set; returns the datagrams
/// sent per destination.
pub fn send_paced(
    ns: &NetNs,
    src: [u8; 4],
    dsts: &[SocketAddr],
    gap: Duration,
    stop: &AtomicBool,
    (bound, receivers): (&AtomicUsize, usize),
    rounds: &AtomicU64,
) -> Vec<u64> {
    ns.enter();
    // A datagram reaching an unbound port would be lost to the test.
    wait_bound(bound, receivers);
    let mut snd = Sender::new(src, dsts);
    while !stop.load(Ordering::SeqCst) {
        snd.round();
        rounds.fetch_add(1, Ordering::SeqCst);
        Sender::pace(gap);
    }
    snd.sent
}
