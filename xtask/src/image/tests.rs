use std::collections::BTreeMap;
use std::io::Read;
use std::path::Path;

use serde_json::Value;

use super::{elf, entrypoint, files, oci, write_archive, DEFAULT_TAG};
use crate::{setup, tasks};

/// A minimal x86-64 ELF executable: one PT_LOAD and, with `interp`, a
/// PT_INTERP naming it (as a dynamically linked binary has).
fn tiny_elf(interp: Option<&str>) -> Vec<u8> {
    let phnum: u16 = if interp.is_some() { 2 } else { 1 };
    let mut e = vec![0u8; 64 + 56 * usize::from(phnum)];
    e[..8].copy_from_slice(b"\x7fELF\x02\x01\x01\x00");
    e[16..18].copy_from_slice(&2u16.to_le_bytes()); // ET_EXEC
    e[18..20].copy_from_slice(&0x3eu16.to_le_bytes()); // x86-64
    e[20..24].copy_from_slice(&1u32.to_le_bytes());
    e[32..40].copy_from_slice(&64u64.to_le_bytes()); // e_phoff
    e[52..54].copy_from_slice(&64u16.to_le_bytes());
    e[54..56].copy_from_slice(&56u16.to_le_bytes());
    e[56..58].copy_from_slice(&phnum.to_le_bytes());
    e[64..68].copy_from_slice(&1u32.to_le_bytes()); // PT_LOAD
    if let Some(name) = interp {
        let at = e.len();
        let ph = 64 + 56;
        e[ph..ph + 4].copy_from_slice(&3u32.to_le_bytes()); // PT_INTERP
        e[ph + 8..ph + 16].copy_from_slice(&(at as u64).to_le_bytes());
        e[ph + 32..ph + 40].copy_from_slice(&(name.len() as u64 + 1).to_le_bytes());
        e.extend_from_slice(name.as_bytes());
        e.push(0);
    }
    e
}

/// A bin folder holding [`tasks::BINARIES`], static unless named in
/// `dynamic`.
fn bin_dir(dynamic: &[&str]) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    for bin in tasks::BINARIES {
        let interp = dynamic
            .contains(bin)
            .then_some("/lib64/ld-linux-x86-64.so.2");
        let mut body = tiny_elf(interp);
        body.extend_from_slice(bin.as_bytes());
        std::fs::write(dir.path().join(bin), body).unwrap();
    }
    dir
}

/// Every entry of a tar: path → (mode, bytes).
fn entries(tar_bytes: &[u8]) -> BTreeMap<String, (u32, Vec<u8>)> {
    let mut out = BTreeMap::new();
    let mut archive = tar::Archive::new(tar_bytes);
    for entry in archive.entries().unwrap() {
        let mut entry = entry.unwrap();
        let path = entry.path().unwrap().to_string_lossy().into_owned();
        let mode = entry.header().mode().unwrap();
        let mut data = Vec::new();
        entry.read_to_end(&mut data).unwrap();
        assert!(
            out.insert(path.clone(), (mode, data)).is_none(),
            "{path} twice"
        );
    }
    out
}

#[test]
fn references_are_named_as_the_runtimes_name_them() {
    let full = |r: &str| oci::Reference::parse(r).unwrap().full();
    assert_eq!(full(DEFAULT_TAG), "docker.io/library/palisade:dev");
    assert_eq!(full("palisade"), "docker.io/library/palisade:latest");
    assert_eq!(full("team/palisade:v1"), "docker.io/team/palisade:v1");
    assert_eq!(
        full("registry.example:5000/team/palisade:v1.2"),
        "registry.example:5000/team/palisade:v1.2"
    );
    assert_eq!(full("localhost/palisade:x"), "localhost/palisade:x");
    for bad in [
        "Palisade:dev",
        "palisade:",
        "palisade@sha256:00",
        "a//b:c",
        ":dev",
    ] {
        assert!(oci::Reference::parse(bad).is_err(), "{bad} accepted");
    }
}

#[test]
fn the_elf_reader_finds_the_interpreter_of_a_dynamic_binary_only() {
    assert_eq!(elf::interpreter(&tiny_elf(None)).unwrap(), None);
    assert_eq!(
        elf::interpreter(&tiny_elf(Some("/lib/ld-musl-x86_64.so.1"))).unwrap(),
        Some("/lib/ld-musl-x86_64.so.1".to_string())
    );
    // This test binary is built for the host's glibc.
    let me = std::fs::read(std::env::current_exe().unwrap()).unwrap();
    let interp = elf::interpreter(&me)
        .unwrap()
        .expect("the test binary is dynamic");
    assert!(interp.contains("ld-linux"), "{interp}");
    assert!(elf::require_static(&me).is_err());
    assert!(elf::interpreter(b"#!/bin/sh\n").is_err());
    // Cut inside the program headers.
    assert!(elf::interpreter(&tiny_elf(None)[..60]).is_err());
    let mut past_end = tiny_elf(Some("/lib/ld.so"));
    past_end.truncate(past_end.len() - 4);
    assert!(elf::interpreter(&past_end).is_err());
}

#[test]
fn a_dynamically_linked_binary_is_not_packed() {
    let bins = bin_dir(&["palisade-cni"]);
    let out = tempfile::tempdir().unwrap();
    let archive = out.path().join("image.tar");
    let err = write_archive(bins.path(), DEFAULT_TAG, &archive).unwrap_err();
    let msg = format!("{err:#}");
    assert!(
        msg.contains("palisade-cni") && msg.contains("dynamically linked"),
        "{msg}"
    );
    assert!(!archive.exists());
}

#[test]
fn the_archive_is_an_oci_layout_and_a_docker_archive_of_the_same_image() {
    let bins = bin_dir(&[]);
    let out = tempfile::tempdir().unwrap();
    let archive = out.path().join("image.tar");
    write_archive(bins.path(), DEFAULT_TAG, &archive).unwrap();
    let bytes = std::fs::read(&archive).unwrap();
    let all = entries(&bytes);
    let json = |path: &str| -> Value {
        let (_, data) = all.get(path).unwrap_or_else(|| panic!("no {path}"));
        serde_json::from_slice(data).unwrap()
    };
    // Every blob is stored under its own digest.
    for (path, (_, data)) in &all {
        if let Some(hex) = path.strip_prefix("blobs/sha256/").filter(|h| !h.is_empty()) {
            assert_eq!(oci::digest(data), format!("sha256:{hex}"), "{path}");
        }
    }
    let blob = |descriptor: &Value| -> Vec<u8> {
        let digest = descriptor["digest"].as_str().unwrap();
        let path = format!("blobs/{}", digest.replacen(':', "/", 1));
        let (_, data) = all.get(&path).unwrap_or_else(|| panic!("no {path}"));
        assert_eq!(descriptor["size"], data.len(), "{path}");
        data.clone()
    };
    assert_eq!(json("oci-layout")["imageLayoutVersion"], "1.0.0");
    let index = json("index.json");
    let entry = &index["manifests"][0];
    assert_eq!(index["manifests"].as_array().unwrap().len(), 1);
    // containerd names the image by this annotation: what the kubelet
    // asks for when a pod says `image: palisade:dev`.
    assert_eq!(
        entry["annotations"]["io.containerd.image.name"],
        "docker.io/library/palisade:dev"
    );
    assert_eq!(
        entry["annotations"]["org.opencontainers.image.ref.name"],
        "dev"
    );
    assert_eq!(entry["platform"]["os"], "linux");
    let manifest: Value = serde_json::from_slice(&blob(entry)).unwrap();
    let config: Value = serde_json::from_slice(&blob(&manifest["config"])).unwrap();
    let layers = manifest["layers"].as_array().unwrap();
    assert_eq!(layers.len(), 1);
    let layer = blob(&layers[0]);
    assert_eq!(config["rootfs"]["diff_ids"][0], oci::digest(&layer));
    assert_eq!(config["architecture"], "amd64");
    assert_eq!(
        config["config"]["Entrypoint"],
        serde_json::json!(entrypoint())
    );
    // The Docker index names the same config and layer.
    let docker = json("manifest.json");
    assert_eq!(
        docker[0]["Config"],
        format!(
            "blobs/{}",
            manifest["config"]["digest"]
                .as_str()
                .unwrap()
                .replacen(':', "/", 1)
        )
    );
    assert_eq!(
        docker[0]["Layers"][0],
        format!(
            "blobs/{}",
            layers[0]["digest"].as_str().unwrap().replacen(':', "/", 1)
        )
    );
    assert_eq!(docker[0]["RepoTags"][0], "docker.io/library/palisade:dev");
    // The layer: exactly the image's files, executable, with their
    // folders, and each file is the binary of that name.
    let layer_entries = entries(&layer);
    let mut regular: Vec<String> = layer_entries
        .keys()
        .filter(|p| !p.ends_with('/'))
        .map(|p| format!("/{p}"))
        .collect();
    regular.sort();
    let mut expected = files();
    expected.sort();
    assert_eq!(regular, expected);
    for (path, (mode, data)) in &layer_entries {
        assert_eq!(*mode, 0o755, "{path}");
        if let Some(name) = path
            .strip_prefix("usr/local/bin/")
            .filter(|n| !n.is_empty())
        {
            assert_eq!(data, &std::fs::read(bins.path().join(name)).unwrap());
        }
    }
    for folder in ["usr/", "usr/local/", "usr/local/bin/"] {
        assert!(layer_entries.contains_key(folder), "{folder}");
    }
    // Same binaries, same archive.
    let again = out.path().join("again.tar");
    write_archive(bins.path(), DEFAULT_TAG, &again).unwrap();
    assert_eq!(std::fs::read(&again).unwrap(), bytes);
}

fn dockerfile() -> String {
    std::fs::read_to_string(crate::cmd::workspace_root().join("Dockerfile")).unwrap()
}

/// The value of `ARG name=value` in the Dockerfile.
fn arg(text: &str, name: &str) -> String {
    let prefix = format!("ARG {name}=");
    text.lines()
        .find_map(|l| l.strip_prefix(&prefix))
        .unwrap_or_else(|| panic!("Dockerfile has no ARG {name}"))
        .trim()
        .to_string()
}

#[test]
fn the_dockerfile_builds_with_the_toolchains_setup_pins() {
    let text = dockerfile();
    assert_eq!(arg(&text, "EBPF_TOOLCHAIN"), setup::EBPF_TOOLCHAIN);
    assert_eq!(arg(&text, "BPF_LINKER_SERIES"), setup::BPF_LINKER_SERIES);
    assert_eq!(arg(&text, "STATIC_TARGET"), setup::STATIC_TARGET);
    let workspace =
        std::fs::read_to_string(crate::cmd::workspace_root().join("Cargo.toml")).unwrap();
    let rust_version = workspace
        .lines()
        .find_map(|l| l.strip_prefix("rust-version = "))
        .unwrap()
        .trim_matches('"')
        .to_string();
    assert!(
        arg(&text, "RUST_VERSION").starts_with(&format!("{rust_version}.")),
        "Dockerfile's RUST_VERSION is not the workspace's rust-version {rust_version}"
    );
    // The LLVM packages bpf-linker links against, and musl's compiler
    // wrapper, as setup installs them.
    for pkg in setup::APT_PACKAGES
        .iter()
        .filter(|p| p.contains("-22-") || p.starts_with("musl"))
    {
        assert!(text.contains(pkg), "Dockerfile does not install {pkg}");
    }
}

/// The Dockerfile's final stage holds exactly the files `cargo xtask
/// image` packs, with the same entrypoint, and nothing from a base image.
#[test]
fn the_dockerfile_builds_the_same_image() {
    let text = dockerfile();
    let stages: Vec<&str> = text.split("\nFROM ").collect();
    assert_eq!(stages.len(), 3, "two stages expected: build and final");
    assert!(
        stages[1].contains("--target \"${STATIC_TARGET}\""),
        "the build stage does not build for the static target"
    );
    let last = stages[2];
    assert_eq!(last.lines().next().unwrap().trim(), "scratch");
    let mut copied = Vec::new();
    let mut entry = None;
    for line in last.lines().skip(1) {
        let words: Vec<&str> = line.split_whitespace().collect();
        match words.first() {
            Some(&"COPY") => {
                assert_eq!(words[1], "--from=build", "{line}");
                let (dest, sources) = words[2..].split_last().unwrap();
                assert!(dest.ends_with('/'), "{line}");
                for src in sources {
                    let name = Path::new(src).file_name().unwrap().to_string_lossy();
                    copied.push(format!("{dest}{name}"));
                }
            }
            Some(&"ENTRYPOINT") => {
                entry = Some(
                    serde_json::from_str::<Vec<String>>(line["ENTRYPOINT".len()..].trim()).unwrap(),
                );
            }
            Some(&("ENV" | "ARG" | "LABEL")) | None => {}
            Some(other) => {
                assert!(
                    other.starts_with('#'),
                    "unexpected final-stage line: {line}"
                )
            }
        }
    }
    copied.sort();
    let mut expected = files();
    expected.sort();
    assert_eq!(copied, expected);
    assert_eq!(entry, Some(entrypoint()));
}

/// What ships is static: the binaries `tasks::cargo_build` makes (the
/// image's release build differs only by profile; the test bed runs these
/// debug ones) name no ELF interpreter. `write_archive` also refuses a
/// dynamic binary, so no archive can hold one.
#[test]
fn the_built_binaries_have_no_elf_interpreter() {
    let dir = tasks::build_binaries(false).unwrap();
    assert!(
        dir.components()
            .any(|c| c.as_os_str() == setup::STATIC_TARGET),
        "{}",
        dir.display()
    );
    for bin in tasks::BINARIES {
        let data = std::fs::read(dir.join(bin)).unwrap();
        assert_eq!(elf::interpreter(&data).unwrap(), None, "{bin}");
    }
}
