//! What the image tests share: how a refused build must look.
// Each test file compiles this module on its own and uses a part of it.
#![allow(dead_code)]

use hpmmap_image::manifest::sha256_hex;
use std::path::Path;
use std::process::Output;

/// Nothing of a refused build is left: no --out, no staging directory beside it.
pub fn assert_nothing_left(out: &Path, what: &str) {
    assert!(!out.exists(), "{what}: left {} behind", out.display());
    let stray: Vec<_> = std::fs::read_dir(out.parent().unwrap())
        .unwrap()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with('.'))
        .collect();
    assert!(stray.is_empty(), "{what}: left temporaries: {stray:?}");
}

/// A refused build: exit 2, one line on stderr holding each of `expect`, nothing left.
/// Returns the line.
pub fn assert_refused(o: &Output, out: &Path, what: &str, expect: &[&str]) -> String {
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(2), "{what}: {err}");
    let lines: Vec<&str> = err.lines().collect();
    assert_eq!(lines.len(), 1, "{what}: one line: {err}");
    for e in expect {
        assert!(lines[0].contains(e), "{what}: expected {e:?} in {err}");
    }
    assert_nothing_left(out, what);
    lines[0].to_string()
}

/// An OCI image layout directory (oci-layout, index.json, blobs/sha256/) with `config` and
/// the given (media type, blob) layers; returns the layers' digests.
pub fn oci_layout(config: &[u8], dir: &Path, layers: &[(&str, Vec<u8>)]) -> Vec<String> {
    let blobs = dir.join("blobs/sha256");
    std::fs::create_dir_all(&blobs).unwrap();
    let put = |data: &[u8]| {
        let h = sha256_hex(data);
        std::fs::write(blobs.join(&h), data).unwrap();
        (format!("sha256:{h}"), data.len())
    };
    let (c, cn) = put(config);
    let mut digests = Vec::new();
    let mut descs = Vec::new();
    for (mt, data) in layers {
        let (d, n) = put(data);
        descs.push(format!(
            r#"{{"mediaType":"{mt}","digest":"{d}","size":{n}}}"#
        ));
        digests.push(d);
    }
    let m = format!(
        r#"{{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"{c}","size":{cn}}},"layers":[{}]}}"#,
        descs.join(",")
    );
    let (md, mn) = put(m.as_bytes());
    std::fs::write(dir.join("oci-layout"), r#"{"imageLayoutVersion":"1.0.0"}"#).unwrap();
    std::fs::write(
        dir.join("index.json"),
        format!(
            r#"{{"schemaVersion":2,"manifests":[{{"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"{md}","size":{mn},"platform":{{"architecture":"amd64","os":"linux"}}}}]}}"#
        ),
    )
    .unwrap();
    digests
}
