//! The real-node room of the test bed: nodes that run as a user's nodes
//! run — containerd 1.6 and runc from Debian, the kubelet built from the
//! same Kubernetes 1.20.2 source as the control plane — each in a network
//! namespace with mount, UTS and PID namespaces of its own, so that the
//! DaemonSet, the image, the init containers, the securityContext and the
//! kubelet's probes are the real ones.
//!
//! - [`node`]: one node (namespaces and mounts, cgroups, containerd, the
//!   kubelet) and its teardown;
//! - [`images`]: the pause and agnhost images, made without Docker;
//! - [`containers`]: one container as its node knows it (its log file,
//!   its cgroup, its processes);
//! - [`flannel`]: what Flannel does on a node (conflist, `subnet.env`,
//!   VXLAN), played by the bed;
//! - [`e2e`]: the upstream e2e suite run against such a cluster;
//! - [`cluster`]: the control plane, the nodes, kube-proxy on each, and
//!   Palisade installed with `kubectl apply -k`;
//! - [`workload`]: objects applied, pods waited for until Ready, and
//!   connections tried from inside a pod (`agnhost connect`);
//! - [`scenario`]: a scenario's manifests as real objects and agnhost
//!   pods, its probes run inside the client pods.
//!
//! What stays played rather than real: flanneld (its VXLAN entries are
//! written once, from the bed's own plan) and cluster DNS (none; pods fall
//! back to the node's resolver, and the suites used dial ClusterIPs).

pub mod cluster;
pub mod containers;
pub mod e2e;
pub mod flannel;
pub mod images;
pub mod node;
pub mod scenario;
pub mod workload;
