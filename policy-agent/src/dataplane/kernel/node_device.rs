//! The node's own devices.
//!
//! - The overlay device (Flannel's `flannel.1`): `node_egress` at its tc
//!   egress judges local pods' egress to backends on other nodes after
//!   kube-proxy's translation (see `policy-ebpf/src/node.rs`). Attaching it
//!   sets `config_flags::NODE_HOOK`, which lets the pods' hooks defer
//!   packets to Services with backends elsewhere instead of failing closed.
//! - The external devices (the node's uplink, `eth0`): `node_ingress` at
//!   their tc ingress remembers each arriving packet's client, so a
//!   NodePort client that kube-proxy masquerades is judged as itself at the
//!   backend's veth (see `policy-ebpf/src/client.rs`).

use aya::programs::{links::LinkOrder, tc::TcAttachOptions, TcAttachType};
use policy_common::{config_flags, Config};

use super::attach::{pin_link, repoint_pinned};
use super::{
    ifindex_of, kernel_error, program, KernelDataplane, PROG_NODE_EGRESS, PROG_NODE_INGRESS,
};
use crate::dataplane::DataplaneError;

impl KernelDataplane {
    /// Attaches (or re-points, after a restart) `node_egress` at tc egress
    /// of `ifname`, pinned, and turns deferral of remote-backed Services
    /// on. TCX only (the overlay device of a kernel without TCX keeps the
    /// fail-closed behaviour).
    pub fn attach_node_device(&mut self, ifname: &str) -> Result<(), DataplaneError> {
        self.attach_device(ifname, PROG_NODE_EGRESS, TcAttachType::Egress, "node")?;
        let flags = self.cfg.flags | config_flags::NODE_HOOK;
        if flags != self.cfg.flags {
            let cfg = Config { flags, ..self.cfg };
            self.maps.set_config(cfg)?;
            self.cfg = cfg;
        }
        Ok(())
    }

    /// Attaches `node_ingress` at tc ingress of `ifname` (one of the node's
    /// external devices), pinned. TCX only.
    pub fn attach_external_device(&mut self, ifname: &str) -> Result<(), DataplaneError> {
        self.attach_device(ifname, PROG_NODE_INGRESS, TcAttachType::Ingress, "ext")
    }

    /// Attaches (or re-points, after a restart) program `prog` at
    /// `attach_type` of the node's device `ifname`, pinned as
    /// `<prefix>_<ifname>_<ifindex>`.
    fn attach_device(
        &mut self,
        ifname: &str,
        prog: &str,
        attach_type: TcAttachType,
        prefix: &str,
    ) -> Result<(), DataplaneError> {
        let ifindex = ifindex_of(ifname).ok_or_else(|| {
            kernel_error(
                format!("attaching {prog}"),
                format!("no interface {ifname}"),
            )
        })?;
        // bpffs refuses dots in names (`flannel.1`).
        let pin = self
            .paths
            .links_dir()
            .join(format!("{prefix}_{}_{ifindex}", ifname.replace('.', "_")));
        let p = program(&mut self.programs, prog)?;
        if !repoint_pinned(p, &pin)? {
            let id = p
                .attach_with_options(
                    ifname,
                    attach_type,
                    TcAttachOptions::TcxOrder(LinkOrder::default()),
                )
                .map_err(|e| kernel_error(format!("attaching {prog} to {ifname}"), e))?;
            pin_link(p, id, &pin)?;
        }
        Ok(())
    }
}
