//! Probing the bed: where each end of a probe is, the echo servers the
//! probes reach, and the probes run with real sockets from inside the
//! source's namespace; plus the single connections and sockets tests hold
//! across a change.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::PathBuf;

use super::Testbed;
use crate::echo;
use crate::error::TestbedError;
use crate::netns;
use crate::probe::{End, Observation, PodRef, Probe};
use crate::prober::{self, Route};

impl Testbed {
    pub(super) fn start_servers(&mut self) -> Result<(), TestbedError> {
        let Some(rt) = &self.runtime else {
            return Ok(());
        };
        let handle = rt.handle().clone();
        // Dual-stack: `[::]` with IPV6_V6ONLY off serves both families.
        let any = if self.layout.dual_stack() {
            IpAddr::V6(Ipv6Addr::UNSPECIFIED)
        } else {
            IpAddr::V4(Ipv4Addr::UNSPECIFIED)
        };
        for plan in self.layout.pods.iter().filter(|p| !p.host_network) {
            if let Some(w) = self.pods.get(&plan.pod) {
                let addrs: Vec<_> = plan.ports.iter().map(|p| (any, *p)).collect();
                echo::serve(&handle, &w.netns, &addrs)?;
            }
        }
        let node: Vec<_> = self.layout.node_ports.iter().map(|p| (any, *p)).collect();
        for n in &self.nodes {
            echo::serve(&handle, &n.netns, &node)?;
        }
        if let Some(out) = &self.outside {
            let v4 = self
                .layout
                .outside
                .iter()
                .flat_map(|(ip, ports)| ports.iter().map(move |p| (IpAddr::V4(*ip), *p)));
            let v6 = self
                .layout
                .outside6
                .iter()
                .flat_map(|(ip, ports)| ports.iter().map(move |p| (IpAddr::V6(*ip), *p)));
            let addrs: Vec<_> = v4.chain(v6).collect();
            echo::serve(&handle, out, &addrs)?;
        }
        Ok(())
    }

    /// The IPv4 ClusterIP of Service `svc`, if it has one.
    pub fn cluster_ip(&self, svc: &PodRef) -> Option<IpAddr> {
        self.services
            .get(svc)
            .and_then(|ips| ips.iter().copied().find(IpAddr::is_ipv4))
    }

    /// A UDP socket inside `pod`'s namespace, bound to an ephemeral IPv4
    /// port: for tests that need one flow (one 5-tuple) across a change.
    pub fn udp_socket(&self, pod: &PodRef) -> Result<std::net::UdpSocket, TestbedError> {
        let w = self.pods.get(pod).ok_or_else(|| TestbedError::Layout {
            reason: format!("pod {}/{} is not in the test bed", pod.namespace, pod.name),
        })?;
        netns::in_netns(&w.netns, || {
            std::net::UdpSocket::bind(SocketAddr::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), 0))
        })
    }

    /// Where `end` is, reached over the family `v6` selects: (namespace,
    /// address, whether it is an outside host).
    fn locate(&self, end: &End, v6: bool) -> Result<(String, IpAddr, bool), String> {
        match end {
            End::Service(svc) => {
                let ip = self
                    .services
                    .get(svc)
                    .and_then(|ips| ips.iter().find(|ip| ip.is_ipv6() == v6))
                    .ok_or_else(|| {
                        format!("Service {end} has no ClusterIP of the probe's family")
                    })?;
                Ok((self.nodes[0].netns.clone(), *ip, false))
            }
            End::Pod(p) => {
                let w = self
                    .pods
                    .get(p)
                    .ok_or_else(|| format!("pod {end} is not in the test bed"))?;
                if !v6 {
                    return Ok((w.netns.clone(), IpAddr::V4(w.ip), false));
                }
                let ip6 = w.ip6.ok_or_else(|| {
                    format!("pod {end} has no IPv6 address (the test bed is IPv4 only)")
                })?;
                Ok((w.netns.clone(), IpAddr::V6(ip6), false))
            }
            End::Ip(IpAddr::V6(ip)) => {
                if let Some((w, ip6)) = self
                    .layout
                    .pod_by_ip6(*ip)
                    .and_then(|i| self.pods.get(&self.layout.pods[i].pod))
                    .filter(|w| !w.host_network)
                    .and_then(|w| Some((w, w.ip6?)))
                {
                    Ok((w.netns.clone(), IpAddr::V6(ip6), false))
                } else if let Some(w) = self
                    .pods
                    .values()
                    .find(|w| w.ip6 == Some(*ip) && !w.host_network)
                {
                    Ok((w.netns.clone(), IpAddr::V6(*ip), false))
                } else if let Some(n) = self.nodes.iter().find(|n| n.net.gateway6 == Some(*ip)) {
                    Ok((n.netns.clone(), IpAddr::V6(*ip), false))
                } else if let (Some(out), true) =
                    (&self.outside, self.layout.outside6.contains_key(ip))
                {
                    Ok((out.clone(), IpAddr::V6(*ip), true))
                } else {
                    Err(format!(
                        "host {ip} was not set up (only addresses of the probes given at start are)"
                    ))
                }
            }
            End::Ip(IpAddr::V4(ip)) => {
                if let Some(w) = self
                    .layout
                    .pod_by_ip(*ip)
                    .and_then(|i| self.pods.get(&self.layout.pods[i].pod))
                    .filter(|w| !w.host_network)
                {
                    // The pod the manifest gave this address (in kube mode
                    // IPAM may have given it another).
                    Ok((w.netns.clone(), IpAddr::V4(w.ip), false))
                } else if let Some(w) = self.pods.values().find(|w| w.ip == *ip && !w.host_network)
                {
                    Ok((w.netns.clone(), IpAddr::V4(*ip), false))
                } else if let Some(n) = self.nodes.iter().find(|n| n.net.gateway == *ip) {
                    Ok((n.netns.clone(), IpAddr::V4(*ip), false))
                } else if let (Some(out), true) =
                    (&self.outside, self.layout.outside.contains_key(ip))
                {
                    Ok((out.clone(), IpAddr::V4(*ip), true))
                } else {
                    Err(format!(
                        "host {ip} was not set up (only addresses of the probes given at start are)"
                    ))
                }
            }
        }
    }

    fn route(&self, probe: &Probe) -> Result<Route, String> {
        let v6 = probe_family_v6(probe)?;
        let (src_ns, src_ip, outside) = self.locate(&probe.from, v6)?;
        let to = match &probe.to {
            End::Pod(p) => self
                .pod_services
                .get(p)
                .map_or_else(|| probe.to.clone(), |svc| End::Service(svc.clone())),
            other => other.clone(),
        };
        let (_, dst_ip, _) = self.locate(&to, v6)?;
        Ok(Route {
            src_ns,
            bind: outside.then_some(src_ip),
            dst: SocketAddr::new(dst_ip, probe.port),
        })
    }

    /// [`Self::probe`], also collecting the drops every node's agent
    /// reports on its flow stream while the probes run (none when Palisade
    /// is off).
    pub fn probe_collecting_drops(
        &self,
        probes: &[Probe],
    ) -> (Vec<Observation>, Vec<agent_api::FlowRecord>) {
        self.collecting_drops(|| self.probe(probes))
    }

    /// Runs `f`, collecting the drops every node's agent reports on its
    /// flow stream meanwhile (none when Palisade is off).
    pub fn collecting_drops<T>(&self, f: impl FnOnce() -> T) -> (T, Vec<agent_api::FlowRecord>) {
        let drops = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let sockets: Vec<PathBuf> = self
            .nodes
            .iter()
            .filter_map(|n| n.agent_socket.clone())
            .collect();
        for socket in &sockets {
            let (socket, sink) = (socket.clone(), drops.clone());
            let request = agent_api::Request::Flows {
                pod: None,
                verdict: Some("dropped".into()),
            };
            std::thread::spawn(move || {
                let _ = agent_api::stream_flows(&socket, &request, |r| {
                    sink.lock().map(|mut v| v.push(r)).is_ok()
                });
            });
        }
        if !sockets.is_empty() {
            std::thread::sleep(std::time::Duration::from_millis(200));
        }
        let out = f();
        std::thread::sleep(std::time::Duration::from_millis(300));
        let drops = drops.lock().map(|v| v.clone()).unwrap_or_default();
        (out, drops)
    }

    /// Runs the probes in parallel and returns one observation per probe,
    /// in order. Blocks the calling thread (about one probe timeout when
    /// some are denied); fine to call from inside an async runtime's
    /// blocking section, not from an async task.
    pub fn probe(&self, probes: &[Probe]) -> Vec<Observation> {
        let Some(rt) = &self.runtime else {
            return Vec::new();
        };
        let handle = rt.handle().clone();
        let items: Vec<_> = probes.iter().map(|p| (p.clone(), self.route(p))).collect();
        std::thread::scope(|s| {
            s.spawn(move || prober::run(&handle, items))
                .join()
                .unwrap_or_default()
        })
    }

    /// A TCP connection from pod `from` to `to`'s address on `port` (an
    /// echo server there answers every write), made inside `from`'s
    /// namespace: for tests of connections that outlive a change.
    pub fn connect(
        &self,
        from: &PodRef,
        to: &PodRef,
        port: u16,
    ) -> Result<std::net::TcpStream, TestbedError> {
        let (Some(src), Some(dst)) = (self.pods.get(from), self.pods.get(to)) else {
            return Err(TestbedError::Environment {
                reason: format!("no wired pod {from} or {to}"),
            });
        };
        let addr = SocketAddr::new(IpAddr::V4(dst.ip), port);
        netns::in_netns(&src.netns, || {
            std::net::TcpStream::connect_timeout(&addr, std::time::Duration::from_secs(2))
        })
    }
}

/// Which family a probe runs over: the family of the address it names
/// (`true` = IPv6); IPv4 when both ends are pods. Naming an IPv4 and an
/// IPv6 address in one probe is an error.
pub(crate) fn probe_family_v6(probe: &Probe) -> Result<bool, String> {
    let family = |e: &End| match e {
        End::Ip(ip) => Some(ip.is_ipv6()),
        End::Pod(_) | End::Service(_) => None,
    };
    match (family(&probe.from), family(&probe.to)) {
        (Some(a), Some(b)) if a != b => Err(format!(
            "{} and {} are of different address families",
            probe.from, probe.to
        )),
        (Some(v6), _) | (None, Some(v6)) => Ok(v6),
        (None, None) => Ok(false),
    }
}
