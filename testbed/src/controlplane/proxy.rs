//! kube-proxy in iptables mode inside a node namespace, as
//! `system:kube-proxy` (bound to `system:node-proxier` by the bootstrap
//! RBAC), for node `hostname-override`.
//!
//! It must change nothing outside the node namespace: its iptables rules,
//! `route_localnet` and the bridge netfilter switches are per namespace,
//! but `nf_conntrack_max` and the conntrack hash size are the machine's,
//! so `--conntrack-max-per-core=0` leaves them alone (and the TCP timeouts,
//! per namespace anyway, are left as they are). Its health and metrics
//! listeners stay on the node's loopback, away from the pods' ports.

use std::path::Path;
use std::time::Duration;

use super::{ControlPlane, NodeLink, CLUSTER_CIDR};
use crate::daemon::{Daemon, DaemonSpec};
use crate::error::TestbedError;
use crate::netns::{netns_path, run};

/// How long kube-proxy may take to program its chains.
pub(super) const READY_TIMEOUT: Duration = Duration::from_secs(60);

/// Starts kube-proxy for `node` with `kubeconfig`.
pub(super) fn start(
    cp: &ControlPlane,
    node: &NodeLink,
    kubeconfig: &Path,
) -> Result<Daemon, TestbedError> {
    let name = format!("kube-proxy-{}", node.name);
    let spec = DaemonSpec::new(
        &name,
        &cp.kube_bin().join("kube-proxy"),
        &node.netns,
        &cp.dir().join(format!("{name}.log")),
    )
    .args([
        format!("--kubeconfig={}", kubeconfig.display()),
        "--proxy-mode=iptables".into(),
        format!("--hostname-override={}", node.name),
        format!("--bind-address={}", node.addr),
        format!("--cluster-cidr={CLUSTER_CIDR}"),
        "--conntrack-max-per-core=0".into(),
        "--conntrack-min=0".into(),
        "--conntrack-tcp-timeout-established=0".into(),
        "--conntrack-tcp-timeout-close-wait=0".into(),
        "--healthz-bind-address=127.0.0.1:10256".into(),
        "--metrics-bind-address=127.0.0.1:10249".into(),
        "--oom-score-adj=0".into(),
        "--v=1".into(),
    ]);
    Daemon::start(spec)
}

/// The `nat` table's `KUBE-SERVICES` chain in `netns` (`iptables -S`),
/// as kube-proxy programmed it.
pub fn services_chain(netns: &str) -> Result<String, TestbedError> {
    let net = format!("--net={}", netns_path(netns).display());
    run(
        "nsenter",
        &[&net, "iptables", "-w", "-t", "nat", "-S", "KUBE-SERVICES"],
    )
}

/// Whether kube-proxy has programmed the `kubernetes` Service into
/// `KUBE-SERVICES` in `netns` (its first full sync).
pub(super) fn services_chain_programmed(netns: &str) -> Result<bool, String> {
    match services_chain(netns) {
        Ok(rules) => Ok(rules.contains(&format!("{}/32", super::KUBERNETES_SERVICE_IP))),
        Err(e) => Err(e.to_string()),
    }
}

/// Whether kube-proxy in `netns` translates every ClusterIP of `ips`: each
/// is in the `nat` table's `KUBE-SERVICES` chain and none is rejected in
/// the `filter` table as having no endpoints (what kube-proxy programs for
/// a Service until its Endpoints hold a ready address).
pub fn translates(netns: &str, ips: &[std::net::IpAddr]) -> Result<bool, TestbedError> {
    let nat = services_chain(netns)?;
    let net = format!("--net={}", netns_path(netns).display());
    // The filter chain exists once kube-proxy has synced at least once.
    let filter = run(
        "nsenter",
        &[
            &net,
            "iptables",
            "-w",
            "-t",
            "filter",
            "-S",
            "KUBE-SERVICES",
        ],
    )
    .unwrap_or_default();
    Ok(ips.iter().filter(|ip| ip.is_ipv4()).all(|ip| {
        let dst = format!("-d {ip}/32 ");
        nat.contains(&dst)
            && !filter
                .lines()
                .any(|l| l.contains(&dst) && l.contains("has no endpoints"))
    }))
}
