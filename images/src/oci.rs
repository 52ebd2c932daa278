//! A container image as the job's base: a `docker save` / `podman save` archive (its
//! `manifest.json` names the layers), an OCI image layout (`oci-layout`, `index.json`,
//! `blobs/sha256/...`) as a directory or as a tar archive. Layers are applied in order,
//! with whiteouts (`.wh.NAME` removes NAME of the layers below, `.wh..wh..opq` empties the
//! directory of what the layers below put there); the image config gives the default
//! environment and working directory. Layers may be plain, gzip or zstd tars
//! (`compression`).

mod compression;

use crate::cpio::{Archive, Node};
use crate::manifest::sha256_hex;
use crate::tree::{put, resolve, TreeError};
use serde::Deserialize;
use std::collections::BTreeMap;
use std::io::Read;
use std::path::{Path, PathBuf};
use thiserror::Error;

#[derive(Debug, Error)]
pub enum OciError {
    #[error(
        "--rootfs {0}: not a container image (no manifest.json, and no oci-layout with index.json)"
    )]
    NotAnImage(PathBuf),
    #[error("--rootfs {path}: {detail}")]
    Bad { path: PathBuf, detail: String },
    #[error("--rootfs {0}: {1}")]
    Io(PathBuf, std::io::Error),
    #[error("--rootfs {path}: layer {layer}: {source}")]
    Layer {
        path: PathBuf,
        /// The digest (OCI layout) or the member name (`docker save`).
        layer: String,
        source: compression::LayerError,
    },
}

const INDEX_TYPES: [&str; 2] = [
    "application/vnd.oci.image.index.v1+json",
    "application/vnd.docker.distribution.manifest.list.v2+json",
];

/// The image, ready to apply.
pub struct Image {
    /// Layer tars, uncompressed, bottom first.
    pub layers: Vec<Vec<u8>>,
    /// `KEY=VALUE` from the config's Env.
    pub env: Vec<String>,
    pub workdir: Option<String>,
    /// `format` and the digests or names the layers came from, for the manifest's notes.
    pub description: String,
}

#[derive(Deserialize)]
struct Descriptor {
    #[serde(rename = "mediaType", default)]
    media_type: String,
    digest: String,
    #[serde(default)]
    platform: Option<Platform>,
}

#[derive(Deserialize)]
struct Platform {
    #[serde(default)]
    architecture: String,
}

#[derive(Deserialize)]
struct Index {
    manifests: Vec<Descriptor>,
}

#[derive(Deserialize)]
struct OciManifest {
    config: Descriptor,
    layers: Vec<Descriptor>,
}

#[derive(Deserialize)]
struct DockerEntry {
    #[serde(rename = "Config")]
    config: String,
    #[serde(rename = "Layers")]
    layers: Vec<String>,
}

#[derive(Deserialize, Default)]
struct ConfigFile {
    #[serde(default)]
    config: Option<RunConfig>,
}

#[derive(Deserialize, Default)]
struct RunConfig {
    #[serde(rename = "Env", default)]
    env: Option<Vec<String>>,
    #[serde(rename = "WorkingDir", default)]
    working_dir: Option<String>,
}

/// Where the image's files are: a directory or the members of a tar archive.
enum Source {
    Dir(PathBuf),
    Tar(BTreeMap<String, Vec<u8>>),
}

impl Source {
    fn get(&self, origin: &Path, name: &str) -> Result<Vec<u8>, OciError> {
        let clean = name.trim_start_matches("./").trim_start_matches('/');
        if clean.split('/').any(|c| c == "..") {
            return Err(bad(origin, format!("member {name:?} leaves the image")));
        }
        match self {
            Source::Dir(d) => {
                std::fs::read(d.join(clean)).map_err(|e| bad(origin, format!("{clean}: {e}")))
            }
            Source::Tar(m) => m
                .get(clean)
                .cloned()
                .ok_or_else(|| bad(origin, format!("{clean} is missing from the archive"))),
        }
    }

    fn has(&self, name: &str) -> bool {
        match self {
            Source::Dir(d) => d.join(name).is_file(),
            Source::Tar(m) => m.contains_key(name),
        }
    }
}

fn bad(path: &Path, detail: String) -> OciError {
    OciError::Bad {
        path: path.to_path_buf(),
        detail,
    }
}

/// Every regular member of a tar archive by path; None when `data` is not a tar archive.
fn tar_members(data: &[u8]) -> Option<BTreeMap<String, Vec<u8>>> {
    if data.len() < 512 || &data[257..262] != b"ustar" {
        return None;
    }
    let mut out = BTreeMap::new();
    let mut ar = tar::Archive::new(data);
    for e in ar.entries().ok()? {
        let mut e = e.ok()?;
        if !e.header().entry_type().is_file() {
            continue;
        }
        let p = e.path().ok()?.to_string_lossy().into_owned();
        let p = p.trim_start_matches("./").to_string();
        let mut v = Vec::new();
        e.read_to_end(&mut v).ok()?;
        out.insert(p, v);
    }
    Some(out)
}

/// Uncompressed layer bytes; `layer` names it in errors, `media_type` is empty where the
/// image gives none.
fn layer_tar(
    origin: &Path,
    layer: &str,
    media_type: &str,
    data: Vec<u8>,
) -> Result<Vec<u8>, OciError> {
    compression::decompress(media_type, data).map_err(|source| OciError::Layer {
        path: origin.to_path_buf(),
        layer: layer.to_string(),
        source,
    })
}

fn blob(src: &Source, origin: &Path, digest: &str) -> Result<Vec<u8>, OciError> {
    let (alg, hex) = digest
        .split_once(':')
        .ok_or_else(|| bad(origin, format!("digest {digest:?} has no algorithm")))?;
    if alg != "sha256" || hex.len() != 64 || !hex.bytes().all(|c| c.is_ascii_hexdigit()) {
        return Err(bad(
            origin,
            format!("digest {digest:?} is not a sha256 digest"),
        ));
    }
    let data = src.get(origin, &format!("blobs/sha256/{hex}"))?;
    if sha256_hex(&data) != hex.to_ascii_lowercase() {
        return Err(bad(
            origin,
            format!("blob {digest} does not match its digest"),
        ));
    }
    Ok(data)
}

fn json<T: for<'a> Deserialize<'a>>(origin: &Path, what: &str, data: &[u8]) -> Result<T, OciError> {
    serde_json::from_slice(data).map_err(|e| bad(origin, format!("{what}: {e}")))
}

fn config(origin: &Path, data: &[u8]) -> Result<RunConfig, OciError> {
    Ok(json::<ConfigFile>(origin, "image config", data)?
        .config
        .unwrap_or_default())
}

/// Opens `path` when it is a container image; Ok(None) for a plain directory (a root
/// tree given as is).
pub fn open(path: &Path) -> Result<Option<Image>, OciError> {
    let meta = std::fs::metadata(path).map_err(|e| OciError::Io(path.to_path_buf(), e))?;
    let src = if meta.is_dir() {
        if !path.join("oci-layout").is_file() && !path.join("manifest.json").is_file() {
            return Ok(None);
        }
        Source::Dir(path.to_path_buf())
    } else {
        let data = std::fs::read(path).map_err(|e| OciError::Io(path.to_path_buf(), e))?;
        // `docker save | gzip` or `| zstd`: the archive itself may be compressed.
        let data = compression::decompress("", data)
            .map_err(|e| bad(path, format!("the archive itself: {e}")))?;
        Source::Tar(tar_members(&data).ok_or_else(|| OciError::NotAnImage(path.to_path_buf()))?)
    };
    if src.has("index.json") {
        oci_layout(&src, path).map(Some)
    } else if src.has("manifest.json") {
        docker(&src, path).map(Some)
    } else {
        Err(OciError::NotAnImage(path.to_path_buf()))
    }
}

fn oci_layout(src: &Source, origin: &Path) -> Result<Image, OciError> {
    let mut index: Index = json(origin, "index.json", &src.get(origin, "index.json")?)?;
    // Follow nested indexes (a multi-platform image) to this machine's manifest.
    for _ in 0..4 {
        let pick = index
            .manifests
            .iter()
            .position(|d| {
                d.platform
                    .as_ref()
                    .map(|p| p.architecture == "amd64")
                    .unwrap_or(true)
            })
            .ok_or_else(|| bad(origin, "no amd64 manifest in the index".into()))?;
        let d = index.manifests.swap_remove(pick);
        let data = blob(src, origin, &d.digest)?;
        if INDEX_TYPES.contains(&d.media_type.as_str()) {
            index = json(origin, "nested index", &data)?;
            continue;
        }
        let m: OciManifest = json(origin, "image manifest", &data)?;
        let cfg = config(origin, &blob(src, origin, &m.config.digest)?)?;
        let mut layers = Vec::new();
        for l in &m.layers {
            let data = blob(src, origin, &l.digest)?;
            layers.push(layer_tar(origin, &l.digest, &l.media_type, data)?);
        }
        return Ok(Image {
            description: format!(
                "OCI layout {} ({} layers)",
                origin.display(),
                m.layers.len()
            ),
            layers,
            env: cfg.env.unwrap_or_default(),
            workdir: cfg.working_dir.filter(|w| !w.is_empty()),
        });
    }
    Err(bad(origin, "indexes nested too deep".into()))
}

fn docker(src: &Source, origin: &Path) -> Result<Image, OciError> {
    let entries: Vec<DockerEntry> =
        json(origin, "manifest.json", &src.get(origin, "manifest.json")?)?;
    let e = entries
        .into_iter()
        .next()
        .ok_or_else(|| bad(origin, "manifest.json lists no image".into()))?;
    let cfg = config(origin, &src.get(origin, &e.config)?)?;
    let mut layers = Vec::new();
    for l in &e.layers {
        layers.push(layer_tar(origin, l, "", src.get(origin, l)?)?);
    }
    Ok(Image {
        description: format!(
            "image archive {} ({} layers)",
            origin.display(),
            e.layers.len()
        ),
        layers,
        env: cfg.env.unwrap_or_default(),
        workdir: cfg.working_dir.filter(|w| !w.is_empty()),
    })
}

/// Applies one layer: its whiteouts against the layers below first, then its entries.
pub fn apply_layer(a: &mut Archive, layer: &[u8], n: usize) -> Result<(), TreeError> {
    let err = |detail: String| TreeError::Bad {
        path: format!("layer {n}"),
        detail,
    };
    let mut entries = Vec::new();
    let mut ar = tar::Archive::new(layer);
    for e in ar.entries().map_err(|e| err(e.to_string()))? {
        let mut e = e.map_err(|e| err(e.to_string()))?;
        let path = e
            .path()
            .map_err(|e| err(e.to_string()))?
            .to_string_lossy()
            .into_owned();
        let link = e
            .link_name()
            .map_err(|e| err(e.to_string()))?
            .map(|l| l.to_string_lossy().into_owned());
        let kind = e.header().entry_type();
        let mode = e.header().mode().unwrap_or(0o644) & 0o7777;
        let mut data = Vec::new();
        if kind.is_file() {
            e.read_to_end(&mut data).map_err(|e| err(e.to_string()))?;
        }
        entries.push((path, kind, mode, link, data));
    }
    for (path, ..) in &entries {
        let (dir, name) = path
            .trim_end_matches('/')
            .rsplit_once('/')
            .unwrap_or(("", path.as_str()));
        if name == ".wh..wh..opq" {
            let marker = resolve(a, path.trim_end_matches('/'))?;
            let d = marker.strip_suffix(".wh..wh..opq").unwrap_or("");
            a.clear_dir(d.trim_end_matches('/'));
        } else if let Some(gone) = name.strip_prefix(".wh.") {
            let p = resolve(a, &format!("{dir}/{gone}"))?;
            a.remove_tree(&p);
        }
    }
    for (path, kind, mode, link, data) in entries {
        let name = path.trim_end_matches('/').rsplit('/').next().unwrap_or("");
        if name.starts_with(".wh.") || path.trim_matches(['.', '/']).is_empty() {
            continue;
        }
        use tar::EntryType as T;
        let node = match kind {
            T::Directory => Node::Dir { mode },
            T::Regular | T::Continuous => Node::File { mode, data },
            T::Symlink => Node::Symlink {
                target: link.ok_or_else(|| err(format!("{path}: symlink without target")))?,
            },
            T::Link => {
                let t = link.ok_or_else(|| err(format!("{path}: hard link without target")))?;
                let tp = resolve(a, &t)?;
                match a.get(&tp) {
                    Some(Node::File { mode, data }) => Node::File {
                        mode: *mode,
                        data: data.clone(),
                    },
                    _ => return Err(err(format!("{path}: hard link to {t}, which is no file"))),
                }
            }
            // Device nodes, FIFOs: the guest's devtmpfs and tmpfs provide what a job needs.
            _ => continue,
        };
        put(a, &path, node)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A tar with (path, kind, data/target) members.
    pub fn tar_of(members: &[(&str, char, &str)]) -> Vec<u8> {
        let mut b = tar::Builder::new(Vec::new());
        for (p, k, d) in members {
            let mut h = tar::Header::new_ustar();
            h.set_mode(if *k == 'd' { 0o755 } else { 0o644 });
            match k {
                'd' => {
                    h.set_entry_type(tar::EntryType::Directory);
                    h.set_size(0);
                    b.append_data(&mut h, p, &[][..]).unwrap();
                }
                'l' => {
                    h.set_entry_type(tar::EntryType::Symlink);
                    h.set_size(0);
                    b.append_link(&mut h, p, d).unwrap();
                }
                'h' => {
                    h.set_entry_type(tar::EntryType::Link);
                    h.set_size(0);
                    b.append_link(&mut h, p, d).unwrap();
                }
                _ => {
                    h.set_size(d.len() as u64);
                    b.append_data(&mut h, p, d.as_bytes()).unwrap();
                }
            }
        }
        b.into_inner().unwrap()
    }

    #[test]
    fn layers_apply_with_whiteouts() {
        let mut a = Archive::new();
        let l1 = tar_of(&[
            ("etc/", 'd', ""),
            ("etc/a", 'f', "a"),
            ("etc/b", 'f', "b"),
            ("opt/", 'd', ""),
            ("opt/old", 'f', "o"),
            ("usr/bin/", 'd', ""),
            ("bin", 'l', "usr/bin"),
        ]);
        let l2 = tar_of(&[
            ("etc/.wh.a", 'f', ""),
            ("opt/new", 'f', "n"),
            ("opt/.wh..wh..opq", 'f', ""),
            ("bin/tool", 'f', "t"),
            ("etc/b2", 'h', "etc/b"),
        ]);
        apply_layer(&mut a, &l1, 0).unwrap();
        apply_layer(&mut a, &l2, 1).unwrap();
        assert!(!a.contains("etc/a"), "whited out");
        assert!(a.contains("etc/b"));
        assert!(!a.contains("opt/old"), "opaque dir emptied of lower layers");
        assert!(a.contains("opt/new"), "the layer's own entry stays");
        assert!(a.contains("usr/bin/tool"), "through the merged-usr link");
        assert!(!a.contains("etc/.wh.a") && !a.contains("opt/.wh..wh..opq"));
        assert_eq!(
            a.get("etc/b2"),
            Some(&Node::File {
                mode: 0o644,
                data: b"b".to_vec()
            })
        );
    }

    #[test]
    fn not_an_image() {
        let d = std::env::temp_dir().join(format!("hpmmap-oci-{}", std::process::id()));
        std::fs::create_dir_all(&d).unwrap();
        let f = d.join("x.tar");
        std::fs::write(&f, b"not a tar at all").unwrap();
        assert!(matches!(open(&f), Err(OciError::NotAnImage(_))));
        std::fs::write(&f, tar_of(&[("hello", 'f', "x")])).unwrap();
        assert!(matches!(open(&f), Err(OciError::NotAnImage(_))));
        assert!(
            open(&d).unwrap().is_none(),
            "a plain directory is a root tree"
        );
        std::fs::remove_dir_all(&d).unwrap();
    }
}
