//! One real node: a network namespace joined to the control plane's
//! underlay, and an init process (the cache's `pause`, which reaps
//! orphans) holding mount, UTS and PID namespaces of the node's own, in
//! which containerd and the kubelet run as on a machine of their own:
//!
//! - **mounts**: a fresh sysfs (the node's links), the cgroup hierarchies
//!   mounted again, a bpffs of its own, a tmpfs on `/run` (containerd's
//!   state and socket, the pods' network namespaces, `/run/flannel`,
//!   `/run/palisade`), and the node's own folders bound over
//!   `/etc/cni/net.d`, `/opt/cni/bin`, `/var/lib/{kubelet,containerd,cni}`
//!   and `/var/log/{pods,containers}`. Their mount points are made in
//!   overlays of `/etc`, `/opt`, `/var/lib` and `/var/log` whose upper
//!   layers are the node's, so the machine's folders stay as they were.
//!   Then `/` is made shared, so Bidirectional and HostToContainer volumes
//!   work inside the node, in peer groups of its own;
//! - **sysctls** the kubelet sets machine-wide (`vm.overcommit_memory`,
//!   `kernel.panic`, ...) are files of the node bound over `/proc/sys`;
//! - **cgroups**: the kubelet's `--cgroup-root` is a cgroup of the node's
//!   own in every hierarchy, removed when the node goes;
//! - **PID namespace**: hostPID pods see the node's processes, not the
//!   machine's, and killing the init ends everything the node ran
//!   (containerd, its shims, the containers, the kubelet) at once.
//!
//! The files inside the node are read and written through
//! `/proc/<init>/root`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::cleanup::Tracked;
use crate::controlplane::{ControlPlane, NodeLink};
use crate::daemon::{Daemon, DaemonSpec};
use crate::error::TestbedError;
use crate::netns::run;

use super::images::ImageArchive;

/// The folders each node has of its own (bound over the machine's).
const NODE_DIRS: &[&str] = &[
    "/etc/cni/net.d",
    "/opt/cni/bin",
    "/var/lib/kubelet",
    "/var/lib/containerd",
    "/var/lib/cni",
    "/var/log/pods",
    "/var/log/containers",
];
/// Where those folders' mount points are made (overlays).
const OVERLAID: &[&str] = &["/etc", "/opt", "/var/lib", "/var/log"];
/// Kernel tunables the kubelet writes machine-wide.
const SYSCTL_STAND_INS: &[&str] = &[
    "vm/overcommit_memory",
    "vm/panic_on_oom",
    "kernel/panic",
    "kernel/panic_on_oops",
    "kernel/keys/root_maxkeys",
    "kernel/keys/root_maxbytes",
];
/// containerd's socket inside the node.
pub const CONTAINERD_SOCKET: &str = "/run/containerd/containerd.sock";
/// How long containerd may take to open its socket.
const CONTAINERD_TIMEOUT: Duration = Duration::from_secs(30);
/// How long the node's processes may take to end once its init is gone.
const STOP_TIMEOUT: Duration = Duration::from_secs(15);

/// What a node needs.
#[derive(Debug)]
pub struct RealNodeSpec<'a> {
    /// The control plane (its node kubeconfig for this node must exist).
    pub cp: &'a ControlPlane,
    /// The node's place on the underlay (its namespace exists).
    pub link: NodeLink,
    /// The node's scratch folder (made here).
    pub dir: PathBuf,
    /// Files copied into the node's `/opt/cni/bin`, by name there.
    pub cni_plugins: Vec<(String, PathBuf)>,
    /// Images imported into the node's containerd.
    pub images: Vec<ImageArchive>,
}

/// A running node. Everything it runs is ended, and its cgroups removed,
/// with the resources it was started with (see [`NodeTeardown`]); the
/// network namespace and the scratch folder are the caller's.
#[derive(Debug)]
pub struct RealNode {
    link: NodeLink,
    dir: PathBuf,
    init: u32,
    resources: Tracked,
}

/// What ends a node: held by the bed's resources, so that drop, an error
/// half-way and Ctrl-C all end it.
#[derive(Debug)]
pub(crate) struct NodeTeardown {
    name: String,
    /// `unshare`, parent of the init: killing it kills the init
    /// (`--kill-child`), and the init's end ends the PID namespace.
    holder: Option<Daemon>,
    init: u32,
    /// containerd and the kubelet (nsenter's pids: see
    /// [`DaemonSpec::node_init`]).
    daemons: Vec<Daemon>,
    cgroup: String,
    cgroup_roots: Vec<PathBuf>,
}

/// The machine's cgroup v1 hierarchies and the unified one: (folder under
/// /sys/fs/cgroup, mount type, mount options).
fn hierarchies() -> Result<Vec<(String, &'static str, String)>, TestbedError> {
    let text = std::fs::read_to_string("/proc/self/cgroup").map_err(|source| TestbedError::Io {
        path: "/proc/self/cgroup".into(),
        source,
    })?;
    let mut found = Vec::new();
    for line in text.lines() {
        let mut parts = line.splitn(3, ':');
        let (Some(id), Some(controllers)) = (parts.next(), parts.next()) else {
            continue;
        };
        if id == "0" {
            found.push(("unified".to_string(), "cgroup2", String::new()));
        } else if let Some(name) = controllers.strip_prefix("name=") {
            found.push((name.to_string(), "cgroup", format!("none,name={name}")));
        } else if !controllers.is_empty() {
            found.push((controllers.to_string(), "cgroup", controllers.to_string()));
        }
    }
    Ok(found)
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> TestbedError + '_ {
    move |source| TestbedError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// The mounts that make the node's view of the machine: a shell script
/// run once inside the node's namespaces.
fn mount_script(dir: &Path, hostname: &str, hierarchies: &[(String, &str, String)]) -> String {
    let d = dir.display();
    let mut s = String::from("set -e\nmount -t sysfs sysfs /sys\n");
    s.push_str("mount -t tmpfs -o mode=755 cgroup /sys/fs/cgroup\n");
    for (folder, kind, options) in hierarchies {
        s.push_str(&format!("mkdir -p /sys/fs/cgroup/{folder}\n"));
        if options.is_empty() {
            s.push_str(&format!("mount -t {kind} {kind} /sys/fs/cgroup/{folder}\n"));
        } else {
            s.push_str(&format!(
                "mount -t {kind} -o {options} {kind} /sys/fs/cgroup/{folder}\n"
            ));
        }
        // Co-mounted controllers (`cpu,cpuacct`) are reached by each name.
        if folder.contains(',') {
            for one in folder.split(',') {
                s.push_str(&format!("ln -s {folder} /sys/fs/cgroup/{one}\n"));
            }
        }
    }
    s.push_str("mount -t bpf bpf /sys/fs/bpf\n");
    s.push_str("mount -t tmpfs -o mode=755 tmpfs /run\n");
    for (i, top) in OVERLAID.iter().enumerate() {
        s.push_str(&format!(
            "mkdir -p {d}/overlay/{i}/upper {d}/overlay/{i}/work\n\
             mount -t overlay overlay -o lowerdir={top},upperdir={d}/overlay/{i}/upper,workdir={d}/overlay/{i}/work {top}\n"
        ));
    }
    for (i, path) in NODE_DIRS.iter().enumerate() {
        s.push_str(&format!(
            "mkdir -p {path} {d}/dirs/{i}\nmount --bind {d}/dirs/{i} {path}\n"
        ));
    }
    s.push_str("mkdir -p /run/containerd /run/flannel /run/palisade /run/netns\n");
    for (i, sysctl) in SYSCTL_STAND_INS.iter().enumerate() {
        s.push_str(&format!(
            "cat /proc/sys/{sysctl} > {d}/sysctl-{i}\nmount --bind {d}/sysctl-{i} /proc/sys/{sysctl}\n"
        ));
    }
    s.push_str("mount --make-rshared /\n");
    s.push_str(&format!("hostname {hostname}\n"));
    s
}

/// containerd's configuration for a node (CRI with cgroupfs, the CNI
/// folders, the sandbox image the cache holds).
fn containerd_config(sandbox_image: &str) -> String {
    format!(
        r#"version = 2
root = "/var/lib/containerd"
state = "/run/containerd"
[grpc]
  address = "{CONTAINERD_SOCKET}"
[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "{sandbox_image}"
  # This machine's bounding set lacks CAP_SYS_RESOURCE: runc cannot give
  # the pause container its oom_score_adj of -998.
  restrict_oom_score_adj = true
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        SystemdCgroup = false
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "/opt/cni/bin"
    conf_dir = "/etc/cni/net.d"
[plugins."io.containerd.internal.v1.opt"]
  path = "/var/lib/containerd/opt"
"#
    )
}

/// The child of `parent` (the init `unshare --fork` starts).
fn wait_for_child(parent: u32, timeout: Duration) -> Result<u32, TestbedError> {
    let deadline = Instant::now() + timeout;
    loop {
        let path = format!("/proc/{parent}/task/{parent}/children");
        if let Some(pid) = std::fs::read_to_string(&path)
            .ok()
            .and_then(|c| c.split_whitespace().next()?.parse().ok())
        {
            return Ok(pid);
        }
        if Instant::now() > deadline {
            return Err(TestbedError::Timeout {
                what: format!("the init process of the node (child of {parent})"),
                after: timeout,
            });
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

impl RealNode {
    /// Makes the node's namespaces and mounts, starts containerd, imports
    /// the images, and starts the kubelet. The node registers itself; it
    /// is Ready once a CNI configuration is in `/etc/cni/net.d` (write
    /// one with [`Self::write_file`]).
    pub(crate) fn start(
        spec: RealNodeSpec<'_>,
        resources: &Tracked,
    ) -> Result<RealNode, TestbedError> {
        let name = spec.link.name.clone();
        let kubeconfig = spec
            .cp
            .node_kubeconfig(&name)
            .ok_or_else(|| TestbedError::Environment {
                reason: format!("the control plane has no credentials for node {name}"),
            })?
            .to_path_buf();
        let bin = spec.cp.kube_bin().to_path_buf();
        for b in ["kubelet", "pause"] {
            if !bin.join(b).is_file() {
                return Err(TestbedError::MissingBinary {
                    what: format!("{b} (run `cargo xtask setup`)"),
                    path: bin.join(b),
                });
            }
        }
        let dir = spec.dir.clone();
        std::fs::create_dir_all(&dir).map_err(io_err(&dir))?;
        let cgroup = spec.link.netns.clone();
        let index = resources.with(|r| {
            r.nodes.push(NodeTeardown {
                name: name.clone(),
                holder: None,
                init: 0,
                daemons: Vec::new(),
                cgroup: cgroup.clone(),
                cgroup_roots: Vec::new(),
            });
            r.nodes.len() - 1
        });
        let with = |f: &mut dyn FnMut(&mut NodeTeardown)| {
            resources.with(|r| {
                if let Some(t) = r.nodes.get_mut(index) {
                    f(t);
                }
            })
        };
        // The kubelet's cgroup root, in every hierarchy of the machine.
        let hier = hierarchies()?;
        for (folder, _, _) in &hier {
            let root = Path::new("/sys/fs/cgroup").join(folder);
            if !root.is_dir() {
                continue;
            }
            let mine = root.join(&cgroup);
            std::fs::create_dir_all(&mine).map_err(io_err(&mine))?;
            with(&mut |t| t.cgroup_roots.push(root.clone()));
            if folder.split(',').any(|c| c == "cpuset") {
                for file in ["cpuset.cpus", "cpuset.mems"] {
                    let value = std::fs::read_to_string(mine.parent().unwrap_or(&mine).join(file))
                        .unwrap_or_default();
                    std::fs::write(mine.join(file), value.trim()).map_err(io_err(&mine))?;
                }
            }
        }
        let holder = Daemon::start(
            DaemonSpec::new(
                &format!("{name}-init"),
                Path::new("/usr/bin/unshare"),
                &spec.link.netns,
                &dir.join("init.log"),
            )
            .args([
                "--mount",
                "--uts",
                "--pid",
                "--fork",
                "--kill-child",
                "--mount-proc",
                "--propagation",
                "private",
            ])
            .args([bin.join("pause")]),
        )?;
        let holder_pid = holder.pid();
        let mut holder = Some(holder);
        with(&mut |t| t.holder = holder.take());
        let init = wait_for_child(holder_pid, Duration::from_secs(10))?;
        with(&mut |t| t.init = init);
        let node = RealNode {
            link: spec.link.clone(),
            dir: dir.clone(),
            init,
            resources: resources.clone(),
        };
        node.exec(&["sh", "-c", &mount_script(&dir, &name, &hier)])?;

        for (file, from) in &spec.cni_plugins {
            let to = node.path(&format!("/opt/cni/bin/{file}"));
            std::fs::copy(from, &to).map_err(io_err(from))?;
        }
        let config = dir.join("containerd.toml");
        std::fs::write(&config, containerd_config(super::images::PAUSE_IMAGE))
            .map_err(io_err(&config))?;
        let containerd = Daemon::start(
            DaemonSpec::in_node(
                &format!("containerd-{name}"),
                Path::new("/usr/bin/containerd"),
                node.init,
                &dir.join("containerd.log"),
            )
            .args([Path::new("--config"), &config]),
        )?;
        let failure = containerd.failure("no socket yet".into());
        let mut containerd = Some(containerd);
        with(&mut |t| t.daemons.extend(containerd.take()));
        let socket = node.path(CONTAINERD_SOCKET);
        let deadline = Instant::now() + CONTAINERD_TIMEOUT;
        while !socket.exists() {
            if Instant::now() > deadline {
                return Err(failure);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        for image in &spec.images {
            node.import(image)?;
        }
        let kubelet = DaemonSpec::in_node(
            &format!("kubelet-{name}"),
            &bin.join("kubelet"),
            node.init,
            &dir.join("kubelet.log"),
        )
        .args([
            format!("--kubeconfig={}", kubeconfig.display()),
            "--container-runtime=remote".into(),
            format!("--container-runtime-endpoint=unix://{CONTAINERD_SOCKET}"),
            "--cgroup-driver=cgroupfs".into(),
            format!("--cgroup-root=/{cgroup}"),
            "--fail-swap-on=false".into(),
            format!("--hostname-override={name}"),
            format!("--node-ip={}", spec.link.addr),
            "--root-dir=/var/lib/kubelet".into(),
            "--cert-dir=/var/lib/kubelet/pki".into(),
            "--volume-plugin-dir=/var/lib/kubelet/volume-plugins".into(),
            "--read-only-port=0".into(),
            "--cluster-domain=cluster.local".into(),
            "--runtime-request-timeout=5m".into(),
            // The machine's disk is shared by every node: no node evicts
            // pods for what the others use.
            "--eviction-hard=".into(),
            "--image-gc-high-threshold=100".into(),
            "--v=1".into(),
        ]);
        let mut kubelet = Some(Daemon::start(kubelet)?);
        with(&mut |t| t.daemons.extend(kubelet.take()));
        Ok(node)
    }

    /// Runs `args` inside the node's namespaces (network, mount, UTS) and
    /// returns its stdout.
    pub fn exec(&self, args: &[&str]) -> Result<String, TestbedError> {
        let pid = self.init.to_string();
        let mut full = vec!["-t", pid.as_str(), "-n", "-m", "-u", "-p", "--"];
        full.extend_from_slice(args);
        run("nsenter", &full)
    }

    /// Imports `image` into the node's containerd (namespace `k8s.io`,
    /// the CRI's), named as it says.
    pub fn import(&self, image: &ImageArchive) -> Result<(), TestbedError> {
        let archive = image.path.display().to_string();
        self.exec(&[
            "ctr",
            "-a",
            CONTAINERD_SOCKET,
            "-n",
            "k8s.io",
            "images",
            "import",
            "--base-name",
            image.base_name(),
            &archive,
        ])
        .map(drop)
    }

    /// `path` inside the node, as seen from the machine.
    pub fn path(&self, path: &str) -> PathBuf {
        PathBuf::from(format!("/proc/{}/root{path}", self.init))
    }

    /// Writes `text` to `path` inside the node, atomically (a temporary
    /// file renamed into place, as Flannel's installer writes its conflist).
    pub fn write_file(&self, path: &str, text: &str) -> Result<(), TestbedError> {
        let target = self.path(path);
        if let Some(parent) = target.parent() {
            std::fs::create_dir_all(parent).map_err(io_err(parent))?;
        }
        let tmp = self.path(&format!("{path}.tmp-palisade-bed"));
        std::fs::write(&tmp, text).map_err(io_err(&tmp))?;
        std::fs::rename(&tmp, &target).map_err(io_err(&target))
    }

    /// Reads `path` inside the node.
    pub fn read_file(&self, path: &str) -> Result<Vec<u8>, TestbedError> {
        let p = self.path(path);
        std::fs::read(&p).map_err(io_err(&p))
    }

    /// The node's place on the underlay.
    pub fn link(&self) -> &NodeLink {
        &self.link
    }

    /// The node's name.
    pub fn name(&self) -> &str {
        &self.link.name
    }

    /// The node's scratch folder (logs: `containerd.log`, `kubelet.log`).
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The last `lines` lines of the kubelet's log.
    pub fn kubelet_log_tail(&self, lines: usize) -> String {
        crate::daemon::log_tail(&self.dir.join("kubelet.log"), lines)
    }

    /// Whether containerd or the kubelet has exited (their names).
    pub fn dead(&self) -> Vec<String> {
        let name = self.link.name.clone();
        self.resources.with(|r| {
            r.nodes
                .iter_mut()
                .filter(|t| t.name == name)
                .flat_map(|t| t.daemons.iter_mut())
                .filter_map(|d| d.exited().map(|_| d.name().to_string()))
                .collect()
        })
    }
}

impl NodeTeardown {
    /// Ends everything the node runs and removes its cgroups; idempotent.
    pub fn stop(&mut self) {
        let Some(mut holder) = self.holder.take() else {
            return;
        };
        holder.stop();
        // The init's end ends the PID namespace: wait until the kernel has
        // reaped it, so that the cgroups are empty.
        let deadline = Instant::now() + STOP_TIMEOUT;
        while Path::new(&format!("/proc/{}", self.init)).exists() && Instant::now() < deadline {
            if std::fs::read_to_string(format!("/proc/{}/stat", self.init))
                .is_ok_and(|s| s.contains(") Z "))
            {
                break;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        for mut d in self.daemons.drain(..) {
            d.stop();
        }
        for root in &self.cgroup_roots {
            remove_cgroup_tree(&root.join(&self.cgroup), deadline);
        }
    }
}

/// Removes a cgroup and every cgroup below it, deepest first, retrying
/// while their last processes exit.
fn remove_cgroup_tree(top: &Path, deadline: Instant) {
    let mut dirs = Vec::new();
    let mut stack = vec![top.to_path_buf()];
    while let Some(d) = stack.pop() {
        if let Ok(entries) = std::fs::read_dir(&d) {
            for e in entries.flatten() {
                if e.file_type().is_ok_and(|t| t.is_dir()) {
                    stack.push(e.path());
                }
            }
        }
        dirs.push(d);
    }
    // Deeper paths are longer.
    dirs.sort_by_key(|d| std::cmp::Reverse(d.components().count()));
    for d in dirs {
        loop {
            match std::fs::remove_dir(&d) {
                Ok(()) => break,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => break,
                Err(e) if Instant::now() > deadline => {
                    tracing::warn!("cleanup: cgroup {}: {e}", d.display());
                    break;
                }
                Err(_) => std::thread::sleep(Duration::from_millis(50)),
            }
        }
    }
}

impl Drop for NodeTeardown {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Per node, what is in the node's `/etc/cni/net.d` (name → bytes).
pub fn cni_configs(node: &RealNode) -> BTreeMap<String, Vec<u8>> {
    let dir = node.path("/etc/cni/net.d");
    let mut out = BTreeMap::new();
    if let Ok(entries) = std::fs::read_dir(&dir) {
        for e in entries.flatten() {
            if let (Some(name), Ok(bytes)) = (
                e.file_name().to_str().map(str::to_string),
                std::fs::read(e.path()),
            ) {
                out.insert(name, bytes);
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_mount_script_binds_every_node_folder_and_shares_root_last() {
        let h = vec![
            (
                "cpu,cpuacct".to_string(),
                "cgroup",
                "cpu,cpuacct".to_string(),
            ),
            ("unified".to_string(), "cgroup2", String::new()),
        ];
        let s = mount_script(Path::new("/tmp/n0"), "node-0", &h);
        for (i, d) in NODE_DIRS.iter().enumerate() {
            let bind = format!("mount --bind /tmp/n0/dirs/{i} {d}\n");
            assert!(s.contains(&bind), "{d}");
        }
        assert!(s.contains("ln -s cpu,cpuacct /sys/fs/cgroup/cpuacct"));
        assert!(s.contains("mount -t cgroup2 cgroup2 /sys/fs/cgroup/unified"));
        let shared = s.find("--make-rshared").unwrap();
        assert!(s.rfind("mount --bind").unwrap() < shared);
        assert!(s.ends_with("hostname node-0\n"));
    }
}
