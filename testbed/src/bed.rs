//! The test bed: a node namespace with a bridge, one namespace per pod wired
//! by the real CNI plugins, an "outside" namespace for off-cluster hosts,
//! echo servers everywhere, and (optionally) the Palisade agent and plugin.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddrV4};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};

use crate::agent::{log_tail, Agent, AgentPaths};
use crate::cleanup::Tracked;
use crate::cni::{self, Network};
use crate::echo;
use crate::error::TestbedError;
use crate::layout::Layout;
use crate::netns::{self, ip_in, sysctl_in};
use crate::probe::{validate_probes, End, Observation, PodRef, Probe, Snapshot};
use crate::prober::{self, Route};

/// Where Palisade's bpffs folders go (one per test bed).
pub const BPFFS_ROOT: &str = "/sys/fs/bpf";
/// Name of the chained plugin binary in `bin_dir`.
pub const PLUGIN_BINARY: &str = "palisade-cni";
/// Name of the agent binary in `bin_dir`.
pub const AGENT_BINARY: &str = "policy-agent";

static COUNTER: AtomicUsize = AtomicUsize::new(0);

/// What to build.
#[derive(Clone, Debug, Default)]
pub struct TestbedOptions {
    /// Cluster manifests (Namespaces, Pods with `status.podIP`,
    /// NetworkPolicies); also handed to the agent.
    pub manifests: Vec<PathBuf>,
    /// `false`: the plain bridge, what Flannel gives (policies ignored).
    /// `true`: `palisade-cni` chained after the bridge and `policy-agent`
    /// running in the node namespace.
    pub palisade: bool,
    /// Holds `policy-agent` and `palisade-cni` (used when `palisade`).
    pub bin_dir: PathBuf,
    /// Probes that will be run: their outside addresses become hosts and
    /// their destination ports get echo servers (declared container ports
    /// are always served).
    pub probes: Vec<Probe>,
}

/// A wired pod.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WiredPod {
    /// Its namespace (the node's for hostNetwork pods).
    pub netns: String,
    /// Its IPv4 address (the node's for hostNetwork pods).
    pub ip: Ipv4Addr,
    /// Whether it shares the node's namespace.
    pub host_network: bool,
}

/// A running test bed; dropping it removes everything it created.
#[derive(Debug)]
pub struct Testbed {
    runtime: Option<tokio::runtime::Runtime>,
    resources: Tracked,
    node: String,
    outside: Option<String>,
    layout: Layout,
    pods: BTreeMap<PodRef, WiredPod>,
    agent: Option<(PathBuf, PathBuf)>,
}

fn bpffs_mounted() -> bool {
    std::fs::read_to_string("/proc/self/mountinfo").is_ok_and(|m| {
        m.lines().any(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            f.get(4) == Some(&BPFFS_ROOT)
                && f.iter()
                    .skip_while(|x| **x != "-")
                    .nth(1)
                    .is_some_and(|t| *t == "bpf")
        })
    })
}

/// Loads cluster manifests into a snapshot (bad input → [`TestbedError::Manifest`]).
/// Warnings (skipped objects) are logged.
pub fn load_snapshot(paths: &[PathBuf]) -> Result<Snapshot, TestbedError> {
    let loaded = policy_engine::manifest::load_paths(paths)
        .map_err(|source| TestbedError::Manifest { source })?;
    for w in &loaded.warnings {
        tracing::warn!("{w}");
    }
    Ok(loaded.snapshot)
}

impl Testbed {
    /// Loads `opts.manifests` and builds the test bed for them.
    pub fn start(opts: TestbedOptions) -> Result<Testbed, TestbedError> {
        let snapshot = load_snapshot(&opts.manifests)?;
        Self::start_with_snapshot(opts, &snapshot)
    }

    /// Builds the test bed for an already loaded `snapshot` (the agent, when
    /// enabled, still reads `opts.manifests`).
    pub fn start_with_snapshot(
        opts: TestbedOptions,
        snapshot: &Snapshot,
    ) -> Result<Testbed, TestbedError> {
        validate_probes(snapshot, &opts.probes)?;
        let layout = Layout::new(snapshot, &opts.probes)?;
        // SAFETY: geteuid has no preconditions and cannot fail.
        if unsafe { libc::geteuid() } != 0 {
            return Err(TestbedError::Environment {
                reason: "the test bed needs root (network namespaces, CNI plugins, bpffs)".into(),
            });
        }
        let id = format!(
            "pal-{}-{}",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::Relaxed)
        );
        let resources = Tracked::new();

        let state_dir = std::env::temp_dir().join(&id);
        // Names carry our pid: anything already there is a dead process's.
        let _ = std::fs::remove_dir_all(&state_dir);
        std::fs::create_dir_all(&state_dir).map_err(|source| TestbedError::Io {
            path: state_dir.clone(),
            source,
        })?;
        resources.with(|r| r.dirs.push(state_dir.clone()));

        let node = format!("{id}-node");
        resources.with(|r| r.netns.push(node.clone()));
        netns::create(&node)?;
        sysctl_in(&node, "net.ipv4.ip_forward=1")?;

        let mut agent_paths = None;
        if opts.palisade {
            let plugin = opts.bin_dir.join(PLUGIN_BINARY);
            if !plugin.is_file() {
                return Err(TestbedError::MissingBinary {
                    what: PLUGIN_BINARY.into(),
                    path: plugin,
                });
            }
            if !bpffs_mounted() {
                return Err(TestbedError::Environment {
                    reason: format!(
                        "no bpffs at {BPFFS_ROOT} (mount -t bpf bpf {BPFFS_ROOT}, or run `cargo xtask setup`)"
                    ),
                });
            }
            let paths = AgentPaths {
                binary: opts.bin_dir.join(AGENT_BINARY),
                socket: state_dir.join("cni.sock"),
                bpffs_dir: Path::new(BPFFS_ROOT).join(format!("palisade-tb-{id}")),
                log: state_dir.join("agent.log"),
            };
            // A leftover of a dead process with our pid: not to be adopted.
            let _ = std::fs::remove_dir_all(&paths.bpffs_dir);
            resources.with(|r| r.dirs.push(paths.bpffs_dir.clone()));
            let agent = Agent::start(
                paths.clone(),
                &node,
                &opts.manifests,
                &layout.gateway.to_string(),
            )?;
            resources.with(|r| r.agent = Some(agent));
            agent_paths = Some(paths);
        }

        let network = Network {
            conflist: cni::conflist(
                &id,
                layout.subnet,
                layout.gateway,
                &state_dir,
                agent_paths.as_ref().map(|p| p.socket.as_path()),
            ),
            cni_path: vec![PathBuf::from(cni::SYSTEM_CNI_DIR), opts.bin_dir.clone()],
            node_netns: node.clone(),
        };
        resources.with(|r| r.network = Some(network.clone()));

        let mut pods = BTreeMap::new();
        for (i, plan) in layout.pods.iter().enumerate() {
            let name = format!("{}/{}", plan.pod.namespace, plan.pod.name);
            if plan.host_network {
                pods.insert(
                    plan.pod.clone(),
                    WiredPod {
                        netns: node.clone(),
                        ip: layout.gateway,
                        host_network: true,
                    },
                );
                continue;
            }
            let ns = format!("{id}-p{i}");
            resources.with(|r| r.netns.push(ns.clone()));
            netns::create(&ns)?;
            let container_id = format!("{id}-c{i}");
            let att = network.add(
                &name,
                &plan.pod.namespace,
                &plan.pod.name,
                &container_id,
                &ns,
                plan.requested.as_slice(),
            )?;
            let ip = att.ipv4();
            resources.with(|r| r.attachments.push(att));
            let ip = ip.ok_or_else(|| TestbedError::Cni {
                command: "ADD",
                pod: name.clone(),
                plugin: "bridge".into(),
                message: "the result holds no IPv4 address".into(),
                stderr: String::new(),
            })?;
            pods.insert(
                plan.pod.clone(),
                WiredPod {
                    netns: ns,
                    ip,
                    host_network: false,
                },
            );
        }

        let outside = if layout.outside.is_empty() {
            None
        } else {
            let ns = format!("{id}-out");
            resources.with(|r| r.netns.push(ns.clone()));
            wire_outside(&node, &ns, layout.outside.keys().copied())?;
            Some(ns)
        };

        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .map_err(|source| TestbedError::Runtime { source })?;
        let mut bed = Testbed {
            runtime: Some(runtime),
            resources,
            node,
            outside,
            layout,
            pods,
            agent: agent_paths.map(|p| (p.log, p.socket)),
        };
        bed.start_servers()?;
        Ok(bed)
    }

    fn start_servers(&mut self) -> Result<(), TestbedError> {
        let Some(rt) = &self.runtime else {
            return Ok(());
        };
        let handle = rt.handle().clone();
        for plan in self.layout.pods.iter().filter(|p| !p.host_network) {
            if let Some(w) = self.pods.get(&plan.pod) {
                let addrs: Vec<_> = plan
                    .ports
                    .iter()
                    .map(|p| (Ipv4Addr::UNSPECIFIED, *p))
                    .collect();
                echo::serve(&handle, &w.netns, &addrs)?;
            }
        }
        let node: Vec<_> = self
            .layout
            .node_ports
            .iter()
            .map(|p| (Ipv4Addr::UNSPECIFIED, *p))
            .collect();
        echo::serve(&handle, &self.node, &node)?;
        if let Some(out) = &self.outside {
            let addrs: Vec<_> = self
                .layout
                .outside
                .iter()
                .flat_map(|(ip, ports)| ports.iter().map(move |p| (*ip, *p)))
                .collect();
            echo::serve(&handle, out, &addrs)?;
        }
        Ok(())
    }

    fn locate(&self, end: &End) -> Result<(String, Ipv4Addr, bool), String> {
        match end {
            End::Pod(p) => self
                .pods
                .get(p)
                .map(|w| (w.netns.clone(), w.ip, false))
                .ok_or_else(|| format!("pod {end} is not in the test bed")),
            End::Ip(IpAddr::V6(_)) => Err(format!("{end}: IPv6 is not wired yet")),
            End::Ip(IpAddr::V4(ip)) => {
                if let Some(w) = self.pods.values().find(|w| w.ip == *ip && !w.host_network) {
                    Ok((w.netns.clone(), *ip, false))
                } else if *ip == self.layout.gateway {
                    Ok((self.node.clone(), *ip, false))
                } else if let (Some(out), true) =
                    (&self.outside, self.layout.outside.contains_key(ip))
                {
                    Ok((out.clone(), *ip, true))
                } else {
                    Err(format!(
                        "host {ip} was not set up (only addresses of the probes given at start are)"
                    ))
                }
            }
        }
    }

    fn route(&self, probe: &Probe) -> Result<Route, String> {
        let (src_ns, src_ip, outside) = self.locate(&probe.from)?;
        let (_, dst_ip, _) = self.locate(&probe.to)?;
        Ok(Route {
            src_ns,
            bind: outside.then_some(src_ip),
            dst: SocketAddrV4::new(dst_ip, probe.port),
        })
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

    /// The wired pods, their namespaces and addresses.
    pub fn pods(&self) -> &BTreeMap<PodRef, WiredPod> {
        &self.pods
    }

    /// The node namespace's name (the bridge `cni0` and the agent live there).
    pub fn node_netns(&self) -> &str {
        &self.node
    }

    /// The outside hosts' namespace, if any probe needed one.
    pub fn outside_netns(&self) -> Option<&str> {
        self.outside.as_deref()
    }

    /// The node's address on the bridge (the pods' gateway).
    pub fn node_addr(&self) -> Ipv4Addr {
        self.layout.gateway
    }

    /// The pod subnet as `(network, prefix length)`.
    pub fn pod_subnet(&self) -> (Ipv4Addr, u8) {
        self.layout.subnet
    }

    /// The agent's log file (palisade on).
    pub fn agent_log(&self) -> Option<&Path> {
        self.agent.as_ref().map(|(log, _)| log.as_path())
    }

    /// The last `lines` lines of the agent's log ("" when palisade is off).
    pub fn agent_log_tail(&self, lines: usize) -> String {
        self.agent_log()
            .map(|l| log_tail(l, lines))
            .unwrap_or_default()
    }

    /// The agent's CNI socket (palisade on).
    pub fn agent_socket(&self) -> Option<&Path> {
        self.agent.as_ref().map(|(_, s)| s.as_path())
    }
}

impl Drop for Testbed {
    fn drop(&mut self) {
        if let Some(rt) = self.runtime.take() {
            rt.shutdown_background();
        }
        self.resources.cleanup();
    }
}

/// Connects the outside namespace to the node by a veth (`out0` on the
/// node, `eth0` outside) holding every outside address as a /32; the node
/// routes each /32 to it and answers ARP for the pods (proxy ARP), no NAT.
fn wire_outside(
    node: &str,
    outside: &str,
    addrs: impl Iterator<Item = Ipv4Addr>,
) -> Result<(), TestbedError> {
    netns::create(outside)?;
    ip_in(
        node,
        &[
            "link", "add", "out0", "type", "veth", "peer", "name", "eth0", "netns", outside,
        ],
    )?;
    ip_in(node, &["link", "set", "out0", "up"])?;
    sysctl_in(node, "net.ipv4.conf.out0.proxy_arp=1")?;
    // Proxy ARP answers after a random delay of up to 0.8 s by default.
    sysctl_in(node, "net.ipv4.neigh.out0.proxy_delay=0")?;
    ip_in(outside, &["link", "set", "eth0", "up"])?;
    for ip in addrs {
        let host = format!("{ip}/32");
        ip_in(outside, &["addr", "add", &host, "dev", "eth0"])?;
        ip_in(node, &["route", "add", &host, "dev", "out0"])?;
    }
    ip_in(outside, &["route", "add", "default", "dev", "eth0"])?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::probe::{parse_probes, Protocol};
    use policy_engine::model::{ContainerPort, PodInfo};

    fn pod(ns: &str, name: &str, ip: Option<&str>, ports: &[u16]) -> (PodRef, PodInfo) {
        (
            PodRef {
                namespace: ns.into(),
                name: name.into(),
            },
            PodInfo {
                ips: ip.iter().map(|i| i.parse().unwrap()).collect(),
                ports: ports
                    .iter()
                    .map(|p| ContainerPort {
                        name: None,
                        port: *p,
                        protocol: Protocol::Tcp,
                    })
                    .collect(),
                ..Default::default()
            },
        )
    }

    #[test]
    fn plain_bridge_end_to_end() {
        let snapshot = Snapshot {
            pods: [
                pod("prod", "db", Some("10.244.1.10"), &[3306]),
                pod("prod", "api", Some("10.244.1.11"), &[8080]),
                pod("dev", "api", Some("10.244.2.11"), &[8080]),
                pod("dev", "dyn", None, &[80]),
            ]
            .into_iter()
            .collect(),
            ..Default::default()
        };
        let probes = parse_probes(
            r#"{"from": "prod/api", "to": "prod/db", "port": 3306, "allowed": true}
{"from": "dev/api", "to": "prod/db", "port": 3306, "protocol": "UDP", "allowed": true}
{"from": "203.0.113.10", "to": "prod/db", "port": 3306, "allowed": true}
{"from": "prod/db", "to": "203.0.113.10", "port": 80, "allowed": true}
{"from": "prod/db", "to": "203.0.113.11", "port": 443, "protocol": "UDP", "allowed": true}
{"from": "dev/dyn", "to": "prod/api", "port": 8080, "allowed": true}
{"from": "prod/api", "to": "dev/dyn", "port": 80, "allowed": true}
{"from": "prod/api", "to": "prod/db", "port": 9, "protocol": "SCTP", "allowed": false}"#,
            Path::new("t"),
        )
        .unwrap();
        let bed = Testbed::start_with_snapshot(
            TestbedOptions {
                probes: probes.clone(),
                ..Default::default()
            },
            &snapshot,
        )
        .unwrap();
        let t0 = std::time::Instant::now();
        let seen = bed.probe(&probes);
        eprintln!("{}", crate::report::table(&seen));
        assert_eq!(crate::report::mismatches(&seen), 0);
        assert_eq!(seen[7].allowed, None);
        // A port nobody serves is refused quickly: the test can fail.
        let closed = parse_probes(
            r#"{"from": "prod/api", "to": "prod/db", "port": 3307, "allowed": true}"#,
            Path::new("t"),
        )
        .unwrap();
        assert_eq!(bed.probe(&closed)[0].allowed, Some(false));
        eprintln!("probing took {:?}", t0.elapsed());
        let node = bed.node_netns().to_string();
        drop(bed);
        assert!(!netns::netns_path(&node).exists());
    }
}
