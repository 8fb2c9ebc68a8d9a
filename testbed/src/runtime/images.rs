//! The container images real nodes run, made without Docker or a registry:
//! OCI archives packed with Debian's `umoci` from binaries of the
//! Kubernetes cache, and imported into each node's containerd with `ctr`
//! under the exact names the kubelet and the upstream suite ask for, so
//! nothing is ever pulled.
//!
//! - `registry.k8s.io/pause:3.4`: containerd's sandbox image, the cache's
//!   static `pause` (built from the 1.20.2 tree's `build/pause`);
//! - `k8s.gcr.io/e2e-test-images/agnhost:2.21`: what the 1.20.2 e2e suite
//!   names (`test/utils/image/manifest.go`): the tree's static `agnhost`,
//!   porter's certificate, and Debian's static busybox with one link per
//!   applet (the suite's clients need `sh` and `seq`, its hostexec pods
//!   `nsenter`, `lsmod` and `grep`); upstream's extra tools (dig, curl,
//!   iperf) are not there, and this suite does not use them.
//!
//! The archives are made once into [`images_dir`] and reused.

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::controlplane::kube_bin_dir;
use crate::error::TestbedError;
use crate::netns::run;

/// The sandbox image containerd runs for every pod.
pub const PAUSE_IMAGE: &str = "registry.k8s.io/pause:3.4";
/// The image the 1.20.2 e2e suite's pods run, and the bed's pods too.
pub const AGNHOST_IMAGE: &str = "k8s.gcr.io/e2e-test-images/agnhost:2.21";
/// Debian's static busybox.
const BUSYBOX: &str = "/bin/busybox";

/// One image archive: where it is and the name it is imported as.
#[derive(Clone, Debug)]
pub struct ImageArchive {
    /// The OCI archive.
    pub path: PathBuf,
    /// `repository:tag`.
    pub name: String,
}

impl ImageArchive {
    /// The repository part of the name (what `ctr images import
    /// --base-name` wants: the archive's index carries only the tag).
    pub fn base_name(&self) -> &str {
        self.name.rsplit_once(':').map_or(&self.name, |(b, _)| b)
    }
}

/// Where the image archives are kept: beside the Kubernetes binaries.
pub fn images_dir() -> PathBuf {
    let bin = kube_bin_dir();
    bin.parent()
        .map_or_else(|| bin.join("images"), |p| p.join("images"))
}

/// The name nodes import Palisade's image as: what the CRI makes of the
/// manifests' `palisade:dev`, and what `overlays/testbed` names.
pub const PALISADE_IMAGE_NAME: &str = "docker.io/library/palisade:dev";
/// The variable naming Palisade's image archive for the tests (`cargo
/// xtask test` sets it).
pub const PALISADE_IMAGE_ENV: &str = "PALISADE_IMAGE";

/// The repository this crate is part of.
pub fn workspace_dir() -> PathBuf {
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR"));
    manifest
        .parent()
        .map_or_else(|| manifest.to_path_buf(), Path::to_path_buf)
}

/// Palisade's image archive as the tests find it: [`PALISADE_IMAGE_ENV`],
/// else `target/palisade-image.oci.tar` as `cargo xtask image` writes it.
pub fn palisade_image_for_tests() -> Result<ImageArchive, TestbedError> {
    let path = std::env::var_os(PALISADE_IMAGE_ENV)
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            workspace_dir()
                .join("target")
                .join("palisade-image.oci.tar")
        });
    if !path.is_file() {
        return Err(TestbedError::Environment {
            reason: format!(
                "Palisade's image archive {} is missing: run `cargo xtask image`, or the tests \
                 through `cargo xtask test`, or point {PALISADE_IMAGE_ENV} at it",
                path.display()
            ),
        });
    }
    Ok(ImageArchive {
        path,
        name: PALISADE_IMAGE_NAME.into(),
    })
}

/// The pause and agnhost archives, made first if missing.
pub fn test_images() -> Result<Vec<ImageArchive>, TestbedError> {
    let dir = images_dir();
    std::fs::create_dir_all(&dir).map_err(|source| TestbedError::Io {
        path: dir.clone(),
        source,
    })?;
    let bin = kube_bin_dir();
    let pause = ImageArchive {
        path: dir.join("pause-3.4.oci.tar"),
        name: PAUSE_IMAGE.into(),
    };
    if !pause.path.is_file() {
        build(
            &pause.path,
            "3.4",
            &[File::exe(&bin.join("pause"), "pause")],
            &["--config.entrypoint", "/pause"],
        )?;
    }
    let agnhost = ImageArchive {
        path: dir.join("agnhost-2.21.oci.tar"),
        name: AGNHOST_IMAGE.into(),
    };
    if !agnhost.path.is_file() {
        let mut files = busybox_files()?;
        files.extend([
            File::exe(&bin.join("agnhost"), "agnhost"),
            File::link("agnhost", "agnhost-2"),
            File::plain(&bin.join("localhost.crt"), "localhost.crt"),
            File::plain(&bin.join("localhost.key"), "localhost.key"),
        ]);
        build(
            &agnhost.path,
            "2.21",
            &files,
            &[
                "--config.entrypoint",
                "/agnhost",
                "--config.cmd",
                "pause",
                "--config.env",
                "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
            ],
        )?;
    }
    Ok(vec![pause, agnhost])
}

/// A file of an image's root filesystem.
#[derive(Clone, Debug)]
pub(crate) enum File {
    /// A copy of a host file, with its mode.
    Copy {
        from: PathBuf,
        to: String,
        mode: u32,
    },
    /// A symbolic link `to` → `target`.
    Link { target: String, to: String },
    /// A text file.
    Text { text: String, to: String },
    /// A folder with its mode.
    Dir { to: String, mode: u32 },
}

impl File {
    fn exe(from: &Path, to: &str) -> File {
        File::Copy {
            from: from.to_path_buf(),
            to: to.into(),
            mode: 0o755,
        }
    }
    fn plain(from: &Path, to: &str) -> File {
        File::Copy {
            from: from.to_path_buf(),
            to: to.into(),
            mode: 0o644,
        }
    }
    fn link(target: &str, to: &str) -> File {
        File::Link {
            target: target.into(),
            to: to.into(),
        }
    }
}

/// Debian's static busybox in `/bin`, a link per applet, `/etc/passwd`,
/// `/etc/group` and a world-writable `/tmp`.
pub(crate) fn busybox_files() -> Result<Vec<File>, TestbedError> {
    let applets = run(BUSYBOX, &["--list"]).map_err(|e| TestbedError::Environment {
        reason: format!("{BUSYBOX} (Debian's busybox-static, `cargo xtask setup`): {e}"),
    })?;
    let mut files = vec![
        File::exe(Path::new(BUSYBOX), "bin/busybox"),
        File::Dir {
            to: "tmp".into(),
            mode: 0o1777,
        },
        File::Text {
            text: "root:x:0:0:root:/root:/bin/sh\n".into(),
            to: "etc/passwd".into(),
        },
        File::Text {
            text: "root:x:0:\n".into(),
            to: "etc/group".into(),
        },
    ];
    for dir in ["usr/bin", "sbin", "usr/sbin", "usr/local/bin"] {
        files.push(File::Dir {
            to: dir.into(),
            mode: 0o755,
        });
    }
    files.extend(
        applets
            .lines()
            .map(str::trim)
            .filter(|a| !a.is_empty() && *a != "busybox" && !a.contains('/'))
            .map(|a| File::link("busybox", &format!("bin/{a}"))),
    );
    Ok(files)
}

fn umoci(args: &[&str]) -> Result<(), TestbedError> {
    run("umoci", args).map(drop)
}

/// Packs `files` into an OCI archive at `out` tagged `tag` (umoci, then a
/// tar of the layout), written beside `out` and renamed into place.
pub(crate) fn build(
    out: &Path,
    tag: &str,
    files: &[File],
    config: &[&str],
) -> Result<(), TestbedError> {
    let work = out.with_extension(format!("build-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&work);
    let result = build_in(&work, out, tag, files, config);
    let _ = std::fs::remove_dir_all(&work);
    result
}

fn build_in(
    work: &Path,
    out: &Path,
    tag: &str,
    files: &[File],
    config: &[&str],
) -> Result<(), TestbedError> {
    let io = |path: &Path| {
        let path = path.to_path_buf();
        move |source| TestbedError::Io { path, source }
    };
    std::fs::create_dir_all(work).map_err(io(work))?;
    let layout = work.join("layout");
    let bundle = work.join("bundle");
    let image = format!("{}:{tag}", layout.display());
    let bundle_s = bundle.display().to_string();
    umoci(&["init", "--layout", &layout.display().to_string()])?;
    umoci(&["new", "--image", &image])?;
    umoci(&["unpack", "--image", &image, &bundle_s])?;
    let root = bundle.join("rootfs");
    for f in files {
        match f {
            File::Copy { from, to, mode } => {
                let dest = root.join(to);
                if let Some(parent) = dest.parent() {
                    std::fs::create_dir_all(parent).map_err(io(parent))?;
                }
                std::fs::copy(from, &dest).map_err(io(from))?;
                set_mode(&dest, *mode)?;
            }
            File::Link { target, to } => {
                let dest = root.join(to);
                if let Some(parent) = dest.parent() {
                    std::fs::create_dir_all(parent).map_err(io(parent))?;
                }
                std::os::unix::fs::symlink(target, &dest).map_err(io(&dest))?;
            }
            File::Text { text, to } => {
                let dest = root.join(to);
                if let Some(parent) = dest.parent() {
                    std::fs::create_dir_all(parent).map_err(io(parent))?;
                }
                std::fs::write(&dest, text).map_err(io(&dest))?;
            }
            File::Dir { to, mode } => {
                let dest = root.join(to);
                std::fs::create_dir_all(&dest).map_err(io(&dest))?;
                set_mode(&dest, *mode)?;
            }
        }
    }
    umoci(&["repack", "--image", &image, &bundle_s])?;
    let mut args = vec![
        "config",
        "--image",
        &image,
        "--architecture",
        "amd64",
        "--os",
        "linux",
    ];
    args.extend_from_slice(config);
    umoci(&args)?;
    umoci(&["gc", "--layout", &layout.display().to_string()])?;
    let partial = out.with_extension("partial");
    let status = Command::new("tar")
        .arg("-C")
        .arg(&layout)
        .arg("-cf")
        .arg(&partial)
        .arg(".")
        .status()
        .map_err(|source| TestbedError::Spawn {
            command: "tar".into(),
            source,
        })?;
    if !status.success() {
        return Err(TestbedError::Command {
            command: format!("tar -C {} -cf {}", layout.display(), partial.display()),
            status: status.to_string(),
            stderr: String::new(),
        });
    }
    std::fs::rename(&partial, out).map_err(io(out))
}

fn set_mode(path: &Path, mode: u32) -> Result<(), TestbedError> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).map_err(|source| {
        TestbedError::Io {
            path: path.to_path_buf(),
            source,
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base_names_drop_the_tag_only() {
        let a = ImageArchive {
            path: PathBuf::new(),
            name: AGNHOST_IMAGE.into(),
        };
        assert_eq!(a.base_name(), "k8s.gcr.io/e2e-test-images/agnhost");
        let p = ImageArchive {
            path: PathBuf::new(),
            name: "docker.io/library/palisade:dev".into(),
        };
        assert_eq!(p.base_name(), "docker.io/library/palisade");
    }
}
