//! Attaching the programs to a pod's host-side veth (TCX links, pinned, or
//! netlink cls_bpf filters where the kernel lacks TCX), taking back the
//! links a previous agent pinned, and undoing a failed attach.

use super::*;

impl KernelDataplane {
    /// Re-points pinned links at the freshly loaded programs and forgets
    /// pins of interfaces that are gone.
    pub(super) fn adopt_links(&mut self) -> Result<(), DataplaneError> {
        let dir = self.paths.links_dir();
        let entries = fs::read_dir(&dir)
            .map_err(|e| kernel_error(format!("reading {}", dir.display()), e))?;
        for entry in entries {
            let entry = entry.map_err(|e| kernel_error(format!("reading {}", dir.display()), e))?;
            let file = entry.file_name();
            let Some((ifindex, hook)) = file.to_str().and_then(PinPaths::parse_link_name) else {
                continue;
            };
            let path = entry.path();
            let Some(ifname) = ifname_of(ifindex) else {
                remove_file(&path)?;
                let _ = self.maps.endpoints.remove(&ifindex);
                continue;
            };
            let Some((prog, _, _)) = HOOKS.iter().copied().find(|(_, _, h)| *h == hook) else {
                continue;
            };
            let replaced = PinnedLink::from_pin(&path)
                .map_err(|e| kernel_error(format!("opening {}", path.display()), e))
                .and_then(|pinned| {
                    let link = SchedClassifierLink::try_from(FdLink::from(pinned))
                        .map_err(|e| kernel_error(format!("adopting {}", path.display()), e))?;
                    let p = program(&mut self.programs, prog)?;
                    let id = p
                        .attach_to_link(link)
                        .map_err(|e| kernel_error(format!("updating {}", path.display()), e))?;
                    // Dropping our handle only closes the fd: the pin keeps
                    // the link.
                    drop(p.take_link(id));
                    Ok(())
                });
            if replaced.is_err() {
                // A defunct link (its interface was replaced): forget it.
                remove_file(&path)?;
                continue;
            }
            if let Ok(info) = self.maps.endpoints.get(&ifindex, 0) {
                self.attached.insert(
                    ifname,
                    AttachedEndpoint {
                        ifindex,
                        ep_id: info.ep_id,
                    },
                );
            }
        }
        Ok(())
    }

    /// Detaches this layout's links of `ifindex`; true if any pin was there.
    pub(super) fn detach_tcx(&self, ifindex: u32) -> Result<bool, DataplaneError> {
        let mut found = false;
        for (_, _, hook) in HOOKS {
            let pin = self.paths.link(ifindex, hook);
            found |= pin.exists();
            detach_pinned_link(&pin)?;
        }
        Ok(found)
    }

    /// Attaches (or re-points) both TCX links of `ifname`. With `probe`,
    /// returns `Ok(false)` instead of an error when the kernel refuses the
    /// first TCX link ([`tcx_refused`]), nothing being attached then.
    pub(super) fn attach_tcx(
        &mut self,
        ifname: &str,
        ifindex: u32,
        probe: bool,
    ) -> Result<bool, DataplaneError> {
        for (n, (prog, attach_type, hook)) in HOOKS.into_iter().enumerate() {
            if self.fail_attach_after == Some(n) {
                self.fail_attach_after = None;
                return Err(kernel_error(
                    format!("attaching {prog} to {ifname}"),
                    "injected failure (test)",
                ));
            }
            let pin = self.paths.link(ifindex, hook);
            let p = program(&mut self.programs, prog)?;
            if repoint_pinned(p, &pin)? {
                continue;
            }
            let id = match p.attach_with_options(
                ifname,
                attach_type,
                TcAttachOptions::TcxOrder(LinkOrder::default()),
            ) {
                Ok(id) => id,
                Err(e) if probe && n == 0 && tcx_refused(&e) => {
                    tracing::debug!(%ifname, error = %e, "TCX link refused");
                    return Ok(false);
                }
                Err(e) => return Err(kernel_error(format!("attaching {prog} to {ifname}"), e)),
            };
            pin_link(p, id, &pin)?;
        }
        Ok(true)
    }

    /// Registers `ifname` as `ep_id` and attaches both hooks (see
    /// [`Dataplane::attach_endpoint`], which undoes a failed first attach).
    pub(super) fn attach_endpoint_inner(
        &mut self,
        ifname: &str,
        ep_id: u32,
    ) -> Result<(), DataplaneError> {
        let ifindex = ifindex_of(ifname).ok_or_else(|| DataplaneError::NoSuchInterface {
            ifname: ifname.to_string(),
        })?;
        // The pod's MAC (its interface, the veth's peer): frames leaving
        // it with another Ethernet source are dropped. An endpoint whose
        // MAC cannot be read is not attached (fail closed: the ADD fails,
        // an adoption is retried and the pod stays reported unenforced).
        let mac = super::peer::peer_mac(ifindex)
            .map_err(|e| kernel_error(format!("reading the MAC of {ifname}'s peer"), e))?;
        // The endpoint is known before the programs see its first packet;
        // until a state with `ep_id` is applied its packets are dropped.
        self.maps
            .endpoints
            .insert(
                ifindex,
                EndpointInfo {
                    ep_id,
                    flags: ep_info::MAC,
                    mac,
                    pad: [0; 2],
                },
                0,
            )
            .map_err(|e| kernel_error(format!("registering {ifname} as endpoint {ep_id}"), e))?;
        match self.mode {
            AttachMode::Tcx => {
                self.attach_tcx(ifname, ifindex, false)?;
            }
            AttachMode::Netlink => self.attach_netlink(ifname)?,
            AttachMode::Auto if self.tcx_refused => self.attach_netlink(ifname)?,
            AttachMode::Auto => {
                if !self.attach_tcx(ifname, ifindex, true)? {
                    tracing::warn!(
                        %ifname,
                        "the kernel refuses TCX links: attaching with netlink (cls_bpf) from now on"
                    );
                    self.tcx_refused = true;
                    self.attach_netlink(ifname)?;
                }
            }
        }
        self.attached
            .insert(ifname.to_string(), AttachedEndpoint { ifindex, ep_id });
        Ok(())
    }

    /// Whether this dataplane attaches with TCX links (else netlink
    /// filters), as far as it knows yet.
    fn uses_tcx(&self) -> bool {
        match self.mode {
            AttachMode::Tcx => true,
            AttachMode::Netlink => false,
            AttachMode::Auto => !self.tcx_refused,
        }
    }

    /// Takes off the programs an agent of the other attach mode put on
    /// `ifname`, once ours are there (both judge alike, so the overlap is
    /// harmless; a gap would not be). Only a veth that outlived an agent
    /// can carry them: a restored endpoint's, never a new sandbox's.
    pub(super) fn detach_other_mode(&self, ifname: &str) {
        if self.uses_tcx() {
            if let Err(e) = detach_netlink(ifname) {
                tracing::debug!(%ifname, error = %e, "no netlink filters to take off");
            }
        } else if let Some(ifindex) = ifindex_of(ifname) {
            if let Err(e) = self.detach_tcx(ifindex) {
                tracing::warn!(%ifname, error = %e, "taking off the TCX links of an earlier attach mode");
            }
        }
    }

    /// Takes off whatever a failed first attach of `ifname` put in place:
    /// its links and pins, its netlink filters, its endpoint entry.
    pub(super) fn undo_attach(&mut self, ifname: &str, ifindex: u32) {
        if let Err(e) = self.detach_tcx(ifindex) {
            tracing::warn!(%ifname, error = %e, "undoing a failed attach: links");
        }
        if self.mode != AttachMode::Tcx {
            if let Err(e) = detach_netlink(ifname) {
                tracing::debug!(%ifname, error = %e, "undoing a failed attach: no netlink filter");
            }
        }
        let _ = self.maps.endpoints.remove(&ifindex);
    }

    /// Makes the next attach fail after `hooks` of its two hooks are
    /// attached, as a veth vanishing mid-attach would: only for tests of
    /// what a failed attach leaves behind.
    #[doc(hidden)]
    pub fn fail_next_attach_after(&mut self, hooks: usize) {
        self.fail_attach_after = Some(hooks);
    }

    pub(super) fn attach_netlink(&mut self, ifname: &str) -> Result<(), DataplaneError> {
        // EEXIST when the qdisc is already there; a real failure shows up
        // in the attach below.
        let _ = tc::qdisc_add_clsact(ifname);
        for (prog, attach_type, _) in HOOKS {
            let what = || format!("attaching {prog} to {ifname} (netlink)");
            let p = program(&mut self.programs, prog)?;
            let opts = || {
                TcAttachOptions::Netlink(NlOptions {
                    priority: NETLINK_PRIORITY,
                    handle: NETLINK_HANDLE,
                    classid: None,
                })
            };
            let id = match p.attach_with_options(ifname, attach_type, opts()) {
                Ok(id) => id,
                Err(_) => {
                    // Our filter is already there (a previous agent): replace
                    // its program in place.
                    let link = SchedClassifierLink::attached(
                        ifname,
                        attach_type,
                        NETLINK_PRIORITY,
                        NETLINK_HANDLE,
                        None,
                    )
                    .map_err(|e| kernel_error(what(), e))?;
                    p.attach_to_link(link)
                        .map_err(|e| kernel_error(what(), e))?
                }
            };
            let link = p.take_link(id).map_err(|e| kernel_error(what(), e))?;
            // The filter must outlive this handle (and the agent): dropping
            // the handle would detach it.
            std::mem::forget(link);
        }
        Ok(())
    }
}

/// Re-points the TCX link pinned at `pin` (a previous agent's, or ours
/// before a restart) to `p`. False when there is none to re-point; a pin
/// that no longer holds a usable link is removed then.
pub(super) fn repoint_pinned(p: &mut SchedClassifier, pin: &Path) -> Result<bool, DataplaneError> {
    if !pin.exists() {
        return Ok(false);
    }
    let updated = PinnedLink::from_pin(pin)
        .ok()
        .and_then(|l| SchedClassifierLink::try_from(FdLink::from(l)).ok())
        .and_then(|l| p.attach_to_link(l).ok());
    match updated {
        Some(id) => {
            drop(p.take_link(id));
            Ok(true)
        }
        None => {
            remove_file(pin)?;
            Ok(false)
        }
    }
}

/// Takes `p`'s new TCX link `id` and pins it at `pin`, so it outlives the
/// agent.
pub(super) fn pin_link(
    p: &mut SchedClassifier,
    id: tc::SchedClassifierLinkId,
    pin: &Path,
) -> Result<(), DataplaneError> {
    let what = || format!("pinning {}", pin.display());
    let link = p.take_link(id).map_err(|e| kernel_error(what(), e))?;
    let fd = FdLink::try_from(link).map_err(|e| kernel_error(what(), e))?;
    fd.pin(pin).map_err(|e| kernel_error(what(), e))?;
    Ok(())
}

/// Whether a TCX link create failed because the kernel has no TCX (a
/// kernel before 6.6 rejects the unknown attach type with `EINVAL`; some
/// builds answer `EOPNOTSUPP`/`ENOTSUPP`, or `E2BIG` for the larger
/// attribute), as opposed to a failure netlink would share (no interface,
/// no permission, out of memory).
pub fn tcx_refused(e: &aya::programs::ProgramError) -> bool {
    /// The kernel-internal `ENOTSUPP` some BPF paths leak to user space.
    const ENOTSUPP: i32 = 524;
    match e {
        aya::programs::ProgramError::SyscallError(aya::sys::SyscallError { io_error, .. }) => {
            matches!(
                io_error.raw_os_error(),
                Some(libc::EINVAL | libc::EOPNOTSUPP | ENOTSUPP | libc::E2BIG)
            )
        }
        _ => false,
    }
}

/// Removes Palisade's netlink filters from `ifname` if it still exists (a
/// missing filter is fine).
pub(super) fn detach_netlink(ifname: &str) -> Result<(), DataplaneError> {
    if ifindex_of(ifname).is_none() {
        return Ok(());
    }
    for (prog, attach_type, _) in HOOKS {
        match tc::qdisc_detach_program(ifname, attach_type, prog) {
            Ok(()) => {}
            Err(tc::TcError::IoError(e)) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(kernel_error(format!("detaching {prog} from {ifname}"), e)),
        }
    }
    Ok(())
}

/// Program `name` of the object as the classifier every Palisade program
/// is.
pub(super) fn classifier<'a>(
    name: &str,
    prog: &'a mut aya::programs::Program,
) -> Result<&'a mut SchedClassifier, DataplaneError> {
    prog.try_into()
        .map_err(|e| kernel_error(format!("program {name} is not a classifier"), e))
}

/// Detaches the link pinned at `path` at once (`BPF_LINK_DETACH`; merely
/// removing the pin would release it only after an RCU grace period), then
/// removes the pin. A missing pin or an already defunct link is fine.
pub(super) fn detach_pinned_link(path: &Path) -> Result<(), DataplaneError> {
    use std::os::{fd::AsRawFd, unix::ffi::OsStrExt};
    const BPF_OBJ_GET: libc::c_long = 7;
    const BPF_LINK_DETACH: libc::c_long = 34;
    #[repr(C)]
    struct ObjGet {
        pathname: u64,
        bpf_fd: u32,
        file_flags: u32,
    }
    #[repr(C)]
    struct LinkDetach {
        link_fd: u32,
    }
    let c = CString::new(path.as_os_str().as_bytes())
        .map_err(|e| kernel_error(format!("link pin path {}", path.display()), e))?;
    let get = ObjGet {
        pathname: c.as_ptr() as u64,
        bpf_fd: 0,
        file_flags: 0,
    };
    // SAFETY: a valid bpf_attr prefix for BPF_OBJ_GET; `c` outlives the call.
    let link = unsafe { super::sys::bpf(BPF_OBJ_GET, &get) }.and_then(super::sys::owned_fd);
    if let Ok(link) = link {
        let detach = LinkDetach {
            link_fd: link.as_raw_fd() as u32,
        };
        // SAFETY: a valid bpf_attr prefix for BPF_LINK_DETACH. A failure
        // means the link is already defunct, which is what we want.
        let _ = unsafe { super::sys::bpf(BPF_LINK_DETACH, &detach) };
    }
    remove_file(path)
}
