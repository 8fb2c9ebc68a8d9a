//! Kube mode after start: the cluster in the control plane, and pods
//! created through the API as the played kubelet meets them.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use super::wire::no_address;
use super::{Testbed, WiredPod};
use crate::controlplane::cluster::{pod_ref, KubeCluster};
use crate::echo;
use crate::error::TestbedError;
use crate::netns;
use crate::node::no_dad;

impl Testbed {
    /// Kube mode: the cluster in the control plane (the API server, the
    /// node, the agent's credentials).
    pub fn kube(&self) -> Option<&KubeCluster> {
        self.cluster.as_ref()
    }

    /// Kube mode: a pod created through the API after start, as on a real
    /// node: the Pod object (bound to the node), a namespace wired by CNI
    /// ADD, its status (IPs, Running, Ready), echo servers on its declared
    /// container ports; returns once the agent has applied it. Probes may
    /// name it from then on.
    pub fn add_pod(
        &mut self,
        pod: &k8s_openapi::api::core::v1::Pod,
    ) -> Result<WiredPod, TestbedError> {
        let Some(cluster) = &self.cluster else {
            return Err(TestbedError::Environment {
                reason: "pods can be added only in kube mode".into(),
            });
        };
        let pod_ref = pod_ref(pod);
        let name = format!("{}/{}", pod_ref.namespace, pod_ref.name);
        if self.pods.contains_key(&pod_ref) {
            return Err(TestbedError::Layout {
                reason: format!("pod {name} is already in the test bed"),
            });
        }
        let network = self.first_network()?;
        crate::controlplane::kubelet::create_pod(
            cluster.control_plane(),
            pod,
            &cluster.node().name,
        )?;
        let i = self.added;
        self.added += 1;
        let ns = format!("{}-a{i}", self.id);
        self.resources.with(|r| r.netns.push(ns.clone()));
        netns::create(&ns)?;
        if self.layout.dual_stack() {
            no_dad(&ns)?;
        }
        let container_id = format!("{}-ca{i}", self.id);
        let att = network.add_ips(
            &name,
            &pod_ref.namespace,
            &pod_ref.name,
            &container_id,
            &ns,
            &[],
        )?;
        let (ip, ip6) = (att.ipv4(), att.ipv6());
        self.resources.with(|r| r.attachments.push((0, att)));
        let ip = ip.ok_or_else(|| no_address(&name, "IPv4 address"))?;
        let ips: Vec<IpAddr> = [Some(IpAddr::V4(ip)), ip6.map(IpAddr::V6)]
            .into_iter()
            .flatten()
            .collect();
        cluster.pod_running(&pod_ref, &ips, &cluster.node().name)?;
        let ports: std::collections::BTreeSet<u16> = pod
            .spec
            .iter()
            .flat_map(|s| &s.containers)
            .flat_map(|c| c.ports.iter().flatten())
            .filter_map(|p| u16::try_from(p.container_port).ok())
            .collect();
        if let Some(rt) = &self.runtime {
            let any = if self.layout.dual_stack() {
                IpAddr::V6(Ipv6Addr::UNSPECIFIED)
            } else {
                IpAddr::V4(Ipv4Addr::UNSPECIFIED)
            };
            let addrs: Vec<_> = ports.iter().map(|p| (any, *p)).collect();
            echo::serve(rt.handle(), &ns, &addrs)?;
        }
        let wired = WiredPod {
            netns: ns,
            node: 0,
            ip,
            ip6,
            host_network: false,
        };
        self.pods.insert(pod_ref, wired.clone());
        self.wait_for_agent_sync()?;
        Ok(wired)
    }
}
