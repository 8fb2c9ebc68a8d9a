//! Generation writes and flips: a new state is written into the inactive
//! generation of every map, then one config write flips the datapath to it
//! (the revision names the generation); the next write waits until no
//! packet can still be reading the generation it is about to reuse.

use super::*;

impl KernelDataplane {
    /// Waits for the RCU grace period begun at the last flip, if any: then
    /// no program still reads the inactive generation (tc programs run in
    /// an RCU read-side section, and read `Config` once per packet).
    pub(super) fn wait_until_inactive_unused(&mut self) {
        let Some(pending) = self.pending_grace.take() else {
            return;
        };
        match pending.wait() {
            Ok(blocked) => {
                tracing::debug!(
                    ?blocked,
                    "RCU grace period before writing the inactive generation"
                );
                let s = &mut self.grace_stats;
                s.waits += 1;
                s.total += blocked;
                s.max = s.max.max(blocked);
            }
            // `wait` slept instead: good enough to go on.
            Err(e) => tracing::warn!(error = %e, "waiting for an RCU grace period"),
        }
    }

    /// The state the active generation holds (read back from the maps if
    /// not known).
    pub fn active_state(&mut self) -> Result<MapState, DataplaneError> {
        let gen = (self.cfg.revision & 1) as u8;
        self.generation(gen).cloned()
    }

    /// Grace periods waited for so far (see [`apply`](Dataplane::apply)).
    pub fn grace_stats(&self) -> GraceStats {
        self.grace_stats
    }

    /// Whether grace periods are waited for with the kernel's help (a
    /// map-in-map update) rather than by sleeping
    /// [`rcu::FALLBACK_SLEEP`].
    pub fn grace_uses_kernel(&self) -> bool {
        self.grace.uses_kernel()
    }

    pub(super) fn generation(&mut self, gen: u8) -> Result<&MapState, DataplaneError> {
        let slot = usize::from(gen & 1);
        if self.mirrors[slot].is_none() {
            self.mirrors[slot] = Some(self.maps.read_generation(gen)?);
        }
        self.mirrors[slot]
            .as_ref()
            .ok_or_else(|| kernel_error("generation mirror", "missing after read-back"))
    }

    /// Writes the inactive generation, then flips to it with one write of
    /// `Config`. If a flip happened since the last grace period, first
    /// waits for one (see [`rcu`]): a packet judged against the generation
    /// active before the last flip must not see it change under it.
    /// Writes `state` into the inactive generation, then flips to it with
    /// one config write (see [`Dataplane::apply`]).
    pub(super) fn apply_state(&mut self, state: &MapState) -> Result<(), DataplaneError> {
        self.wait_until_inactive_unused();
        // The datapath derives the generation from the revision (one
        // 32-bit read): the next revision names the target generation.
        let revision = self.cfg.revision.wrapping_add(1);
        let target = (revision & 1) as u8;
        let mut ops = diff(self.generation(target)?, state);
        // Removals first: the target generation then never holds more than
        // the larger of its old and new contents, so a state that fits its
        // half of a map can be written while the other half is live.
        ops.sort_by_key(|op| !is_removal(op));
        let slot = usize::from(target);
        if let Err(e) = self.maps.write(target, &ops) {
            self.mirrors[slot] = None;
            return Err(e);
        }
        self.mirrors[slot] = Some(state.clone());
        let cfg = Config {
            layout_version: LAYOUT_VERSION,
            active_gen: u32::from(target),
            revision,
            ..self.cfg
        };
        let flipped = self.maps.set_config(cfg);
        // Even a failed write may have flipped: the grace period that makes
        // the generation left reusable begins after the write either way,
        // and runs while the agent does other work.
        self.pending_grace = Some(self.grace.start());
        flipped?;
        self.cfg = cfg;
        if self.upgrade.is_some() {
            // The state is applied either way; what did not switch over
            // yet stays enforced by the old programs and is retried on the
            // next apply.
            if let Err(e) = self.finish_upgrade() {
                tracing::error!(error = %e, "map layout upgrade not finished; retrying on the next apply");
            }
        }
        Ok(())
    }
}

pub(super) fn is_removal(op: &MapOp) -> bool {
    matches!(
        op,
        MapOp::DelEndpoint(_) | MapOp::DelIpcache(_) | MapOp::DelCidr(_) | MapOp::DelPolicy(_)
    )
}
