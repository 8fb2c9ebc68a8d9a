//! The agent core (`reconcile::Agent`) on the real kernel dataplane, in a
//! node namespace with pods wired by veth: for tests of what the agent
//! makes of endpoints and states, with real packets. Needs the `kernel`
//! and `netns` support modules beside it.

#![allow(dead_code)]

use std::net::{IpAddr, SocketAddr};

use policy_agent::{
    dataplane::kernel::{KernelDataplane, KernelOptions, MapSizes},
    flows::FlowHub,
    health,
    reconcile::{Agent, NewEndpoint},
};
use policy_engine::model::PodRef;

use super::kernel::PinDir;
use super::netns::{in_ns, udp_gets_through, veth, NetNs, VethSpec};

/// One pod: its namespace, name, host veth and address.
pub struct Pod {
    pub ns: NetNs,
    pub name: String,
    pub host: String,
    pub addr: [u8; 4],
}

/// A node namespace (forwarding between its veths) and pods on it, with
/// a pin folder for its agent.
pub struct Bed {
    pub node: NetNs,
    pub pods: Vec<Pod>,
    pub pins: PinDir,
    /// First two octets of every address (`10.<net>.<n>.x`).
    pub net: u8,
}

impl Bed {
    /// A node namespace tagged `tag`; pods get `10.<net>.<n>.2/24`.
    pub fn new(tag: &str, net: u8) -> Self {
        let node = NetNs::new(&format!("{tag}node"));
        node.exec(&["sysctl", "-q", "-w", "net.ipv4.ip_forward=1"]);
        Self {
            node,
            pods: Vec::new(),
            pins: PinDir::new(tag),
            net,
        }
    }

    /// Wires pod `name` (a namespace, veth `host` on the node) on subnet
    /// `10.<net>.<subnet>.0/24`, the pod at `.2`; returns its address.
    pub fn pod(&mut self, name: &str, host: &str, subnet: u8) -> [u8; 4] {
        let ns = NetNs::new(name);
        let net = self.net;
        veth(
            Some(&self.node),
            &ns,
            &VethSpec {
                host,
                host_cidr: &format!("10.{net}.{subnet}.1/24"),
                pod_if: "eth0",
                pod_cidr: &format!("10.{net}.{subnet}.2/24"),
                gateway: Some(&format!("10.{net}.{subnet}.1")),
            },
        );
        let addr = [10, net, subnet, 2];
        self.pods.push(Pod {
            ns,
            name: name.to_string(),
            host: host.to_string(),
            addr,
        });
        addr
    }

    /// Deletes pod `name`'s namespace (and so its veth), as a sandbox that
    /// died without a CNI DEL.
    /// Returns once the host veth is gone (the kernel tears a namespace
    /// down asynchronously).
    pub fn kill(&mut self, name: &str) {
        let host = self.get(name).host.clone();
        self.pods.retain(|p| p.name != name);
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while self.on_node(|| policy_agent::dataplane::kernel::ifindex_of(&host).is_some()) {
            if std::time::Instant::now() > deadline {
                panic!("{host} still there 10 s after its pod's namespace was deleted");
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
    }

    /// The pod named `name`.
    pub fn get(&self, name: &str) -> &Pod {
        self.pods
            .iter()
            .find(|p| p.name == name)
            .unwrap_or_else(|| panic!("no pod {name} in the bed"))
    }

    /// Whether a UDP datagram from pod `from` reaches pod `to` on `port`.
    pub fn reaches(&self, from: &str, to: &str, port: u16) -> bool {
        let (f, t) = (self.get(from), self.get(to));
        udp_gets_through(&f.ns, f.addr, &t.ns, SocketAddr::from((t.addr, port)))
    }

    /// Runs `f` in the node namespace.
    pub fn on_node<T: Send>(&self, f: impl FnOnce() -> T + Send) -> T {
        in_ns(&self.node, f)
    }

    /// Opens an agent on the kernel dataplane (in the node namespace) with
    /// map sizes `sizes`.
    pub fn agent(&self, sizes: MapSizes) -> Agent<KernelDataplane> {
        self.on_node(|| {
            let mut opts = KernelOptions::new(&self.pins.0);
            opts.sizes = sizes;
            let dp = KernelDataplane::open(opts)
                .unwrap_or_else(|e| panic!("opening the kernel dataplane: {e}"));
            Agent::new(dp, Vec::new())
        })
    }

    /// The CNI ADD of pod `pod` of namespace `namespace` in sandbox
    /// `container_id`, on bed pod `name`'s veth and address.
    pub fn endpoint(
        &self,
        namespace: &str,
        pod: &str,
        name: &str,
        container_id: &str,
    ) -> NewEndpoint {
        let p = self.get(name);
        NewEndpoint {
            container_id: container_id.to_string(),
            pod: PodRef::new(namespace, pod),
            ifname: p.host.clone(),
            pod_ifname: "eth0".into(),
            ips: vec![IpAddr::from(p.addr)],
        }
    }
}

/// The agent's `/metrics` text (the agent is lent to the renderer and
/// handed back).
pub fn metrics(agent: Agent<KernelDataplane>) -> (String, Agent<KernelDataplane>) {
    let view = policy_agent::shared::AgentView::of(&agent);
    let ready = view.readiness.is_ok();
    let text = health::render_view(&view, &FlowHub::new(), ready)
        .unwrap_or_else(|e| panic!("rendering the metrics: {e}"));
    (text, agent)
}
