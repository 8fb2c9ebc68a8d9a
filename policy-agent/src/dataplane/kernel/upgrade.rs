//! Map-layout upgrades: taking over from an agent of another layout (or
//! of other map sizes), carrying its tracked flows, and retiring its
//! version folder once every endpoint runs the new programs.

use super::*;

impl KernelDataplane {
    /// Whether a switch from another layout's pins is still to finish
    /// (see [`open`](Self::open)).
    pub fn upgrade_pending(&self) -> bool {
        self.upgrade.is_some()
    }

    /// Restored endpoints waiting for the first apply to be attached.
    pub fn pending_endpoints(&self) -> BTreeMap<String, AttachedEndpoint> {
        self.upgrade
            .as_ref()
            .map(|u| u.pending.clone())
            .unwrap_or_default()
    }

    /// Finishes a layout upgrade (called by [`apply`](Dataplane::apply)
    /// once a state is in the new maps): attaches the new programs to every
    /// restored endpoint, then detaches that interface's old links, then
    /// detaches whatever the old folders still hold and removes them. An
    /// endpoint whose interface is gone is forgotten; one that fails to
    /// attach stays pending (its old links stay too) and the old folders
    /// stay until a later call succeeds. No-op without an upgrade.
    pub fn finish_upgrade(&mut self) -> Result<(), DataplaneError> {
        let Some(mut up) = self.upgrade.take() else {
            return Ok(());
        };
        let mut failure = None;
        // Tracked flows first, so the new programs know every established
        // flow from their first packet; again once all are switched, for
        // flows the old programs started meanwhile.
        let carried = self.carry_conntrack(&up.old);
        for (ifname, ep) in std::mem::take(&mut up.pending) {
            match self.attach_endpoint(&ifname, ep.ep_id) {
                Ok(()) => {
                    let now = self.attached.get(&ifname).map(|a| a.ifindex);
                    if now != Some(ep.ifindex) {
                        // The interface was replaced since restore.
                        let _ = self.maps.endpoints.remove(&ep.ifindex);
                    }
                    for old in &up.old {
                        for (_, _, hook) in HOOKS {
                            if let Err(e) = detach_pinned_link(&old.link(ep.ifindex, hook)) {
                                // Removing the old folder below retries it.
                                failure.get_or_insert(e);
                            }
                        }
                    }
                }
                Err(DataplaneError::NoSuchInterface { .. }) => {
                    let _ = self.maps.endpoints.remove(&ep.ifindex);
                    tracing::info!(%ifname, "restored interface gone before the upgrade finished");
                }
                Err(e) => {
                    up.pending.insert(ifname, ep);
                    failure.get_or_insert(e);
                }
            }
        }
        let carried = carried + self.carry_conntrack(&up.old);
        tracing::info!(carried, "tracked flows carried over to the new maps");
        if failure.is_none() {
            for old in &up.old {
                if let Err(e) = remove_version_folder(old) {
                    failure.get_or_insert(e);
                }
            }
        }
        if let Some(e) = failure {
            // Kept for the next try; what already switched over is not
            // pending any more.
            self.upgrade = Some(up);
            return Err(e);
        }
        tracing::info!("map layout upgrade finished: old links detached, old pins removed");
        Ok(())
    }

    /// Copies the old folders' tracked flows into the new conntrack map
    /// (see [`carry`]); a failure is logged, not fatal (those flows' replies
    /// are then judged as new packets).
    pub(super) fn carry_conntrack(&mut self, old: &[PinPaths]) -> usize {
        let mut n = 0;
        for folder in old {
            match carry::conntrack(folder, &mut self.maps.conntrack, self.cfg.revision) {
                Ok(copied) => n += copied,
                Err(e) => tracing::warn!(error = %e, "tracked flows not carried over"),
            }
        }
        n
    }
}

/// Detaches every link pinned in the version folder `old` and removes the
/// folder (its maps go once nothing uses them).
pub(super) fn remove_version_folder(old: &PinPaths) -> Result<(), DataplaneError> {
    if let Ok(entries) = fs::read_dir(old.links_dir()) {
        for entry in entries.flatten() {
            detach_pinned_link(&entry.path())?;
        }
    }
    let dir = old.version_dir();
    match fs::remove_dir_all(&dir) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(kernel_error(format!("removing {}", dir.display()), e)),
    }
}

/// Refuses a pin folder whose config map has another layout (it would not
/// be understood).
pub(super) fn check_pinned_layout(paths: &PinPaths) -> Result<(), DataplaneError> {
    let path = paths.map(names::CONFIG);
    if !path.exists() {
        return Ok(());
    }
    let what = || format!("checking {}", path.display());
    let data = MapData::from_pin(&path).map_err(|e| kernel_error(what(), e))?;
    let config: Array<MapData, Config> =
        Array::try_from(Map::Array(data)).map_err(|e| kernel_error(what(), e))?;
    let cfg = config.get(&0, 0).map_err(|e| kernel_error(what(), e))?;
    if cfg.layout_version != 0 && cfg.layout_version != LAYOUT_VERSION {
        return Err(kernel_error(
            what(),
            format!(
                "pinned maps have layout version {}, this agent understands {LAYOUT_VERSION}",
                cfg.layout_version
            ),
        ));
    }
    Ok(())
}
