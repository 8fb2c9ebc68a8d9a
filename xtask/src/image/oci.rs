//! A small writer of image archives: one uncompressed layer, its config,
//! its manifest, and both indexes a loader may look for in one tar file.
//!
//! - `oci-layout` + `index.json` + `blobs/sha256/*`: an OCI image layout,
//!   which `ctr images import` (containerd; also `k3s ctr`, `kind load
//!   image-archive`), Docker 25 and later, and `skopeo`/`umoci` read. The
//!   index entry carries `io.containerd.image.name` (the full reference,
//!   `docker.io/library/palisade:dev`, which containerd names the image
//!   by) and `org.opencontainers.image.ref.name` (the tag), as `docker
//!   save` writes them.
//! - `manifest.json`: the Docker archive index (config and layers by path
//!   into `blobs/`), which `docker load` before Docker 25 reads.
//!
//! Every entry has mtime 0, uid/gid 0 and a fixed order, so the same
//! binaries give the same archive, digest for digest.

use anyhow::{bail, Context, Result};
use serde_json::{json, Value};
use sha2::{Digest, Sha256};

const INDEX_MEDIA_TYPE: &str = "application/vnd.oci.image.index.v1+json";
const MANIFEST_MEDIA_TYPE: &str = "application/vnd.oci.image.manifest.v1+json";
const CONFIG_MEDIA_TYPE: &str = "application/vnd.oci.image.config.v1+json";
const LAYER_MEDIA_TYPE: &str = "application/vnd.oci.image.layer.v1.tar";
/// The creation time every image claims: the archive's entries' mtime.
const EPOCH: &str = "1970-01-01T00:00:00Z";

/// An image reference as container runtimes normalise it: `palisade:dev`
/// is `docker.io/library/palisade:dev` to containerd and to the kubelet.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Reference {
    /// Registry and repository: `docker.io/library/palisade`.
    pub repository: String,
    /// The tag: `dev`.
    pub tag: String,
}

impl Reference {
    /// Parses `name[:tag]` (no digest), normalising as Docker does: no
    /// registry means `docker.io`, and a single-component name there is
    /// under `library/`. The tag defaults to `latest`.
    pub fn parse(reference: &str) -> Result<Self> {
        if reference.contains('@') {
            bail!("{reference}: a digest reference cannot name an image being built");
        }
        let last_slash = reference.rfind('/').map_or(0, |i| i + 1);
        let (name, tag) = match reference[last_slash..].rfind(':') {
            Some(i) => (
                &reference[..last_slash + i],
                &reference[last_slash + i + 1..],
            ),
            None => (reference, "latest"),
        };
        let tag_ok = !tag.is_empty()
            && tag.len() <= 128
            && !tag.starts_with(['.', '-'])
            && tag
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "_.-".contains(c));
        let name_ok = !name.is_empty()
            && name.split('/').all(|part| !part.is_empty())
            && name
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || "._-/:".contains(c));
        if !tag_ok || !name_ok {
            bail!("{reference}: not an image reference of the form name[:tag]");
        }
        let repository = match name.split_once('/') {
            None => format!("docker.io/library/{name}"),
            Some((first, _)) if first.contains(['.', ':']) || first == "localhost" => {
                name.to_string()
            }
            Some(_) => format!("docker.io/{name}"),
        };
        Ok(Self {
            repository,
            tag: tag.to_string(),
        })
    }

    /// `repository:tag`.
    pub fn full(&self) -> String {
        format!("{}:{}", self.repository, self.tag)
    }
}

/// One regular file of the image.
pub struct File {
    /// Absolute path in the image (`/usr/local/bin/policy-agent`).
    pub path: String,
    /// Permission bits.
    pub mode: u32,
    /// Contents.
    pub data: Vec<u8>,
}

/// What the archive describes.
pub struct Image {
    /// The name it is loaded as.
    pub reference: Reference,
    /// Its files (one layer).
    pub files: Vec<File>,
    /// The config's `Entrypoint`.
    pub entrypoint: Vec<String>,
    /// The config's `Env`.
    pub env: Vec<String>,
    /// OCI architecture (`amd64`).
    pub architecture: String,
}

/// `sha256:<hex>` of `data`.
pub fn digest(data: &[u8]) -> String {
    let sum = Sha256::digest(data);
    let mut s = String::with_capacity(7 + 64);
    s.push_str("sha256:");
    for b in sum.iter() {
        s.push_str(&format!("{b:02x}"));
    }
    s
}

fn header(path: &str, size: usize, mode: u32, kind: tar::EntryType) -> Result<tar::Header> {
    let mut h = tar::Header::new_ustar();
    h.set_path(path)
        .with_context(|| format!("{path}: cannot be a tar path"))?;
    h.set_size(u64::try_from(size)?);
    h.set_mode(mode);
    h.set_uid(0);
    h.set_gid(0);
    h.set_mtime(0);
    h.set_entry_type(kind);
    h.set_cksum();
    Ok(h)
}

/// A tar of `entries` (path, bytes; a path ending in `/` is a folder).
fn tar_of(entries: &[(String, &[u8])], file_mode: u32) -> Result<Vec<u8>> {
    let mut builder = tar::Builder::new(Vec::new());
    for (path, data) in entries {
        let h = if path.ends_with('/') {
            header(path, 0, 0o755, tar::EntryType::Directory)?
        } else {
            header(path, data.len(), file_mode, tar::EntryType::Regular)?
        };
        builder.append(&h, *data)?;
    }
    Ok(builder.into_inner()?)
}

/// The layer: every file under its path, each parent folder once before
/// it, in path order.
pub fn layer(files: &[File]) -> Result<Vec<u8>> {
    let mut sorted: Vec<&File> = files.iter().collect();
    sorted.sort_by(|a, b| a.path.cmp(&b.path));
    let mut builder = tar::Builder::new(Vec::new());
    let mut folders: Vec<String> = Vec::new();
    for f in sorted {
        let Some(rel) = f.path.strip_prefix('/') else {
            bail!("{}: image paths are absolute", f.path);
        };
        if rel.is_empty() || rel.ends_with('/') || rel.split('/').any(|p| p == ".." || p == ".") {
            bail!("{}: not a file path", f.path);
        }
        let mut at = 0;
        while let Some(i) = rel[at..].find('/') {
            let folder = format!("{}/", &rel[..at + i]);
            if !folders.contains(&folder) {
                builder.append(
                    &header(&folder, 0, 0o755, tar::EntryType::Directory)?,
                    &[][..],
                )?;
                folders.push(folder);
            }
            at += i + 1;
        }
        builder.append(
            &header(rel, f.data.len(), f.mode, tar::EntryType::Regular)?,
            f.data.as_slice(),
        )?;
    }
    Ok(builder.into_inner()?)
}

fn descriptor(media_type: &str, data: &[u8]) -> Value {
    json!({"mediaType": media_type, "digest": digest(data), "size": data.len()})
}

fn blob_path(data: &[u8]) -> String {
    format!("blobs/{}", digest(data).replacen(':', "/", 1))
}

/// The whole archive, as bytes.
pub fn archive(image: &Image) -> Result<Vec<u8>> {
    let layer = layer(&image.files)?;
    let config = serde_json::to_vec(&json!({
        // Fixed, so the same binaries give the same digest (some tools,
        // umoci's `stat` among them, need a creation time to be there).
        "created": EPOCH,
        "architecture": image.architecture,
        "os": "linux",
        "config": {
            "Entrypoint": image.entrypoint,
            "Env": image.env,
        },
        "rootfs": {"type": "layers", "diff_ids": [digest(&layer)]},
        "history": [{"created": EPOCH, "created_by": "cargo xtask image"}],
    }))?;
    let manifest = serde_json::to_vec(&json!({
        "schemaVersion": 2,
        "mediaType": MANIFEST_MEDIA_TYPE,
        "config": descriptor(CONFIG_MEDIA_TYPE, &config),
        "layers": [descriptor(LAYER_MEDIA_TYPE, &layer)],
    }))?;
    let mut entry = descriptor(MANIFEST_MEDIA_TYPE, &manifest);
    entry["platform"] = json!({"architecture": image.architecture, "os": "linux"});
    entry["annotations"] = json!({
        "io.containerd.image.name": image.reference.full(),
        "org.opencontainers.image.ref.name": image.reference.tag,
    });
    let index = serde_json::to_vec(&json!({
        "schemaVersion": 2,
        "mediaType": INDEX_MEDIA_TYPE,
        "manifests": [entry],
    }))?;
    let docker = serde_json::to_vec(&json!([{
        "Config": blob_path(&config),
        "RepoTags": [image.reference.full()],
        "Layers": [blob_path(&layer)],
    }]))?;
    let layout = br#"{"imageLayoutVersion":"1.0.0"}"#;
    tar_of(
        &[
            ("oci-layout".to_string(), layout.as_slice()),
            ("index.json".to_string(), &index),
            ("manifest.json".to_string(), &docker),
            ("blobs/".to_string(), &[]),
            ("blobs/sha256/".to_string(), &[]),
            (blob_path(&layer), &layer),
            (blob_path(&config), &config),
            (blob_path(&manifest), &manifest),
        ],
        0o644,
    )
}
