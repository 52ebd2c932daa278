//! Container images whose layers are zstd-compressed (`podman push --compression-format
//! zstd`, buildah, recent docker): an OCI layout with a gzip base layer and a zstd layer on
//! top, and the same layers in a `docker save` archive (no media types: the first bytes
//! tell). The zstd layer is written by Debian's `zstd` tool, the reference encoder, as two
//! frames with a skippable frame between (as `zstd:chunked` layers hold many frames). The
//! image's tree comes from the manifest's `tree_files`; nothing boots. Without the `zstd`
//! tool or Debian's kernel these tests fail; they do not skip.

mod common;

use hpmmap_image::manifest::{sha256_hex, Manifest};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

const BIN: &str = env!("CARGO_BIN_EXE_hpmmap-image");
const CONFIG: &str = r#"{"architecture":"amd64","os":"linux","config":{"Env":["APP_MODE=zstd"],"WorkingDir":"/app"}}"#;
const ZSTD_TYPE: &str = "application/vnd.oci.image.layer.v1.tar+zstd";
const GZIP_TYPE: &str = "application/vnd.oci.image.layer.v1.tar+gzip";

fn scratch(tag: &str) -> PathBuf {
    let base = std::env::var_os("CARGO_TARGET_TMPDIR")
        .map(PathBuf::from)
        .unwrap_or_else(std::env::temp_dir);
    let d = base.join(format!("ocizstd-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn tar_of(members: &[(&str, &[u8])]) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    for (path, data) in members {
        let mut h = tar::Header::new_ustar();
        if path.ends_with('/') {
            h.set_entry_type(tar::EntryType::Directory);
            h.set_mode(0o755);
        } else {
            h.set_mode(0o644);
        }
        h.set_size(data.len() as u64);
        b.append_data(&mut h, path, *data).unwrap();
    }
    b.into_inner().unwrap()
}

fn gzip(data: &[u8]) -> Vec<u8> {
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    gz.write_all(data).unwrap();
    gz.finish().unwrap()
}

/// One zstd frame from Debian's `zstd` (content checksum on, as it writes by default).
fn zstd_frame(data: &[u8]) -> Vec<u8> {
    zstd_with(data, &[])
}

/// A frame from stdin (no content size in the header, so the window stays as asked).
fn zstd_with(data: &[u8], extra: &[&str]) -> Vec<u8> {
    let mut c = Command::new("zstd")
        .args(["-q", "-3", "-c", "--check"])
        .args(extra)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("Debian's zstd tool (apt install zstd)");
    let mut stdin = c.stdin.take().unwrap();
    let input = data.to_vec();
    let writer = std::thread::spawn(move || stdin.write_all(&input).unwrap());
    let o = c.wait_with_output().unwrap();
    writer.join().unwrap();
    assert!(o.status.success(), "zstd failed");
    assert_eq!(o.stdout[..4], [0x28, 0xb5, 0x2f, 0xfd], "a zstd frame");
    o.stdout
}

/// Two frames with a skippable frame (metadata, as zstd:chunked puts its table there)
/// between them: one stream whose content is `data`.
fn zstd_layer(data: &[u8]) -> Vec<u8> {
    let (a, b) = data.split_at(data.len() / 2);
    let mut v = zstd_frame(a);
    let meta = b"not tar: skipped";
    v.extend_from_slice(&0x184D_2A5Eu32.to_le_bytes());
    v.extend_from_slice(&(meta.len() as u32).to_le_bytes());
    v.extend_from_slice(meta);
    v.extend_from_slice(&zstd_frame(b));
    v
}

/// Base (gzip): files, one to be whited out, a directory to be made opaque.
fn base_layer() -> Vec<u8> {
    tar_of(&[
        ("etc/", b""),
        ("etc/gone", b"lower\n"),
        ("etc/kept", b"kept\n"),
        ("opt/", b""),
        ("opt/old", b"old\n"),
        ("opt/older", b"older\n"),
    ])
}

/// Top (zstd): a whiteout, an opaque directory, new files. Large enough (a 256 KiB file)
/// that each frame holds several zstd blocks.
fn top_layer() -> Vec<u8> {
    let big: Vec<u8> = (0..256 * 1024u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8 % 7 + b'a')
        .collect();
    tar_of(&[
        ("etc/.wh.gone", b""),
        ("opt/.wh..wh..opq", b""),
        ("opt/new", b"new\n"),
        ("app/", b""),
        ("app/big", &big),
        ("app/run.sh", b"#!/bin/sh\necho hello\n"),
    ])
}

/// A `docker save` archive: manifest.json names the layer files; no media types anywhere.
fn docker_archive(path: &Path, layers: &[Vec<u8>]) {
    let names: Vec<String> = (0..layers.len())
        .map(|i| format!("l{i}/layer.tar"))
        .collect();
    let manifest = format!(
        r#"[{{"Config":"cfg.json","RepoTags":["job:latest"],"Layers":[{}]}}]"#,
        names
            .iter()
            .map(|n| format!("\"{n}\""))
            .collect::<Vec<_>>()
            .join(",")
    );
    let mut members: Vec<(&str, &[u8])> = vec![
        ("manifest.json", manifest.as_bytes()),
        ("cfg.json", CONFIG.as_bytes()),
    ];
    for (n, l) in names.iter().zip(layers) {
        members.push((n, l));
    }
    std::fs::write(path, tar_of(&members)).unwrap();
}

fn build(out: &Path, rootfs: &Path) -> Output {
    Command::new(BIN)
        .args([
            "build",
            "--quiet",
            "--no-hpmmap",
            "--job",
            "/app/run.sh",
            "--out",
        ])
        .arg(out)
        .arg("--rootfs")
        .arg(rootfs)
        .output()
        .unwrap()
}

fn build_ok(out: &Path, rootfs: &Path) -> Manifest {
    let t = std::time::Instant::now();
    let o = build(out, rootfs);
    assert!(
        o.status.success(),
        "build from {} failed: {}",
        rootfs.display(),
        String::from_utf8_lossy(&o.stderr)
    );
    eprintln!(
        "built {} in {:.1} s (this host)",
        out.display(),
        t.elapsed().as_secs_f64()
    );
    Manifest::read(out).unwrap()
}

/// The build is refused: exit 2, one line holding each of `expect`, nothing in --out.
fn refused(out: &Path, rootfs: &Path, expect: &[&str]) {
    let o = build(out, rootfs);
    let line = common::assert_refused(&o, out, &rootfs.display().to_string(), expect);
    eprintln!("refused: {line}");
}

fn assert_tree(m: &Manifest, top: &[u8]) {
    let t = &m.tree_files;
    assert!(!t.contains_key("/etc/gone"), "whited out by the zstd layer");
    assert!(
        !t.contains_key("/opt/old") && !t.contains_key("/opt/older"),
        "opaque /opt"
    );
    assert_eq!(t["/etc/kept"], sha256_hex(b"kept\n"), "the gzip base stays");
    assert_eq!(t["/opt/new"], sha256_hex(b"new\n"));
    assert_eq!(t["/app/run.sh"], sha256_hex(b"#!/bin/sh\necho hello\n"));
    let big = tar::Archive::new(top)
        .entries()
        .unwrap()
        .map(|e| e.unwrap())
        .find(|e| e.path().unwrap().to_str() == Some("app/big"))
        .map(|mut e| {
            let mut v = Vec::new();
            std::io::Read::read_to_end(&mut e, &mut v).unwrap();
            v
        })
        .unwrap();
    assert_eq!(t["/app/big"], sha256_hex(&big), "both frames decoded");
    assert!(t.keys().all(|k| !k.contains(".wh.")), "no whiteout files");
    assert_eq!(m.workdir.as_deref(), Some("/app"));
    assert!(m.env.contains(&"APP_MODE=zstd".to_string()), "{:?}", m.env);
}

/// A zstd layer over a gzip base, as an OCI layout (media type tar+zstd) and as a docker
/// save archive (magic bytes only): the same tree, whiteouts and opaque directory applied.
#[test]
fn zstd_layer_over_gzip_base_applies_files_and_whiteouts() {
    let d = scratch("ok");
    let top = top_layer();
    let zst = zstd_layer(&top);
    let layout = d.join("layout");
    common::oci_layout(
        CONFIG.as_bytes(),
        &layout,
        &[(GZIP_TYPE, gzip(&base_layer())), (ZSTD_TYPE, zst.clone())],
    );
    let m = build_ok(&d.join("img"), &layout);
    assert_tree(&m, &top);
    let archive = d.join("job.tar");
    docker_archive(&archive, &[gzip(&base_layer()), zst]);
    let m2 = build_ok(&d.join("img2"), &archive);
    assert_eq!(m.tree_files, m2.tree_files, "same layers, same tree");
    std::fs::remove_dir_all(&d).unwrap();
}

/// A truncated zstd layer (its digest taken over the truncated bytes, as a cut-off push
/// leaves it), a zstd layer whose compressed bytes or frame checksum were altered, a frame
/// asking for a 256 MiB window (over libzstd's default 128 MiB limit), and a layer declared
/// zstd that is gzip: each is one line naming the layer, exit 2, nothing in --out.
#[test]
fn corrupt_or_truncated_zstd_layers_are_refused_with_one_line() {
    let d = scratch("bad");
    let zst = zstd_layer(&top_layer());
    let cases: Vec<(&str, Vec<u8>, &str, &str)> = vec![
        (
            "truncated",
            zst[..zst.len() * 3 / 4].to_vec(),
            ZSTD_TYPE,
            "zstd does not decompress",
        ),
        (
            "flipped",
            {
                let mut v = zst.clone();
                let n = v.len();
                v[n - 40] ^= 0x55;
                v
            },
            ZSTD_TYPE,
            "zstd does not decompress",
        ),
        (
            "checksum",
            {
                let mut v = zst.clone();
                let n = v.len();
                v[n - 1] ^= 0x01;
                v
            },
            ZSTD_TYPE,
            "frame checksum",
        ),
        (
            "window",
            zstd_with(&top_layer(), &["--long=28"]),
            ZSTD_TYPE,
            "window_size is too big",
        ),
        (
            "mislabelled",
            gzip(&top_layer()),
            ZSTD_TYPE,
            "does not start with a zstd frame",
        ),
    ];
    for (tag, blob, mt, why) in cases {
        let layout = d.join(tag);
        let digests = common::oci_layout(
            CONFIG.as_bytes(),
            &layout,
            &[(GZIP_TYPE, gzip(&base_layer())), (mt, blob)],
        );
        eprintln!("{tag}");
        refused(&d.join("img"), &layout, &[&digests[1], why]);
    }
    // Without media types (docker save) the member's name is the layer's name.
    let archive = d.join("job.tar");
    docker_archive(
        &archive,
        &[gzip(&base_layer()), zst[..zst.len() / 2].to_vec()],
    );
    refused(
        &d.join("img"),
        &archive,
        &[
            "l1/layer.tar",
            "zstd does not decompress",
            "ends inside a frame",
        ],
    );
    std::fs::remove_dir_all(&d).unwrap();
}
