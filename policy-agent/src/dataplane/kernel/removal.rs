//! Taking Palisade off a node: every program detached and every pin
//! removed, of every layout version (the uninstall path, and test
//! cleanup).

use super::*;

impl KernelDataplane {
    /// Detaches every program and removes every pin under `base`, of every
    /// layout version (the uninstall path, and test cleanup). Missing pins
    /// are not an error.
    pub fn remove_pins(base: impl AsRef<Path>) -> Result<(), DataplaneError> {
        let base = base.as_ref();
        let current = PinPaths::new(base);
        let mut folders = current.other_versions().unwrap_or_default();
        folders.push(current);
        for folder in &folders {
            if let Ok(entries) = fs::read_dir(folder.links_dir()) {
                for entry in entries.flatten() {
                    detach_pinned_link(&entry.path())?;
                }
            }
        }
        match fs::remove_dir_all(base) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(kernel_error(format!("removing {}", base.display()), e)),
        }
    }

    /// The whole node side of an uninstall: [`Self::remove_pins`], then
    /// Palisade's netlink filters (a kernel without TCX: they are not
    /// pinned) on every interface of this network namespace. Only filters
    /// running Palisade's programs are touched. Idempotent.
    pub fn remove_from_node(base: impl AsRef<Path>) -> Result<(), DataplaneError> {
        Self::remove_pins(base)?;
        let Ok(entries) = fs::read_dir("/sys/class/net") else {
            return Ok(());
        };
        for entry in entries.flatten() {
            let ifname = entry.file_name().to_string_lossy().into_owned();
            // No clsact qdisc or no filter of ours: nothing to remove.
            if let Err(e) = detach_netlink(&ifname) {
                tracing::debug!(%ifname, error = %e, "no netlink filter removed");
            }
        }
        Ok(())
    }
}
