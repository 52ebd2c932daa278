//! How a layer (or a whole image archive) is compressed, and undoing it. The first bytes
//! decide, as containerd and containers/image decide: a `docker save` archive has no media
//! types, and registries hold layers whose media type and bytes disagree on gzip vs plain.
//! A media type that declares zstd is still checked against the bytes, so that a layer that
//! claims zstd but is not cannot reach the tar reader and fail there with a puzzling message.

use std::fmt;
use std::io::Read;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Compression {
    Gzip,
    Zstd,
    Plain,
}

impl fmt::Display for Compression {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Compression::Gzip => "gzip",
            Compression::Zstd => "zstd",
            Compression::Plain => "uncompressed",
        })
    }
}

const GZIP_MAGIC: [u8; 2] = [0x1f, 0x8b];
const ZSTD_MAGIC: [u8; 4] = [0x28, 0xb5, 0x2f, 0xfd];

/// A skippable zstd frame (magic 0x184D2A50..=0x184D2A5F, little endian) may open a stream.
fn skippable_frame(data: &[u8]) -> bool {
    data.len() >= 4 && data[0] & 0xf0 == 0x50 && data[1..4] == [0x2a, 0x4d, 0x18]
}

/// The compression the first bytes show.
pub fn sniff(data: &[u8]) -> Compression {
    if data.starts_with(&GZIP_MAGIC) {
        Compression::Gzip
    } else if data.starts_with(&ZSTD_MAGIC) || skippable_frame(data) {
        Compression::Zstd
    } else {
        Compression::Plain
    }
}

/// The compression a layer media type declares; None for types that say nothing usable
/// (empty, foreign). OCI writes `...tar+zstd`, Docker's schema 2 `...tar.zstd`.
pub fn declared(media_type: &str) -> Option<Compression> {
    let mt = media_type.trim();
    if mt.ends_with("+zstd") || mt.ends_with(".zstd") {
        Some(Compression::Zstd)
    } else if mt.ends_with("+gzip") || mt.ends_with(".gzip") {
        Some(Compression::Gzip)
    } else if mt.ends_with(".tar") || mt.ends_with(".tar.v1") {
        Some(Compression::Plain)
    } else {
        None
    }
}

/// Why a layer cannot be used as it is. Each renders as one line; the caller adds the
/// layer's name.
#[derive(Debug, thiserror::Error)]
pub enum LayerError {
    #[error("{kind} does not decompress: {detail}")]
    Corrupt { kind: Compression, detail: String },
    #[error("its media type {media_type} declares zstd, but it does not start with a zstd frame")]
    NotZstd { media_type: String },
    #[error("its media type {0} is an encrypted layer; decrypt the image first")]
    Encrypted(String),
}

/// The largest zstd window accepted: libzstd's own default limit for decompression
/// (`ZSTD_WINDOWLOG_LIMIT_DEFAULT`, 2^27), which `zstd --long` stays within unless told more.
const MAX_ZSTD_WINDOW: u64 = 1 << 27;

/// The uncompressed bytes of a layer or archive; `media_type` is empty where there is none.
pub fn decompress(media_type: &str, data: Vec<u8>) -> Result<Vec<u8>, LayerError> {
    if media_type.contains("+encrypted") {
        return Err(LayerError::Encrypted(media_type.to_string()));
    }
    let kind = sniff(&data);
    if declared(media_type) == Some(Compression::Zstd) && kind != Compression::Zstd {
        return Err(LayerError::NotZstd {
            media_type: media_type.to_string(),
        });
    }
    let corrupt = |detail: String| LayerError::Corrupt { kind, detail };
    match kind {
        Compression::Plain => Ok(data),
        Compression::Gzip => {
            let mut v = Vec::new();
            flate2::read::GzDecoder::new(&data[..])
                .read_to_end(&mut v)
                .map_err(|e| corrupt(e.to_string()))?;
            Ok(v)
        }
        Compression::Zstd => zstd_frames(&data).map_err(corrupt),
    }
}

/// Every frame of a zstd stream, concatenated: `zstd:chunked` layers and concatenated
/// `.zst` files hold many frames, and skippable frames (metadata) are stepped over.
fn zstd_frames(data: &[u8]) -> Result<Vec<u8>, String> {
    let mut input = data;
    let mut out = Vec::new();
    frames_into(&mut input, &mut out)?;
    Ok(out)
}

/// ruzstd's messages nest Debug output: one line, and a slice reader that ran dry
/// mid-frame (it is left empty) says that the stream was cut short.
fn decode_error(rest: &[u8], e: impl fmt::Display) -> String {
    let msg = e
        .to_string()
        .split_whitespace()
        .collect::<Vec<_>>()
        .join(" ");
    if rest.is_empty() {
        format!("the stream ends inside a frame ({msg})")
    } else {
        msg
    }
}

fn frames_into(input: &mut &[u8], out: &mut Vec<u8>) -> Result<(), String> {
    use ruzstd::decoding::errors::{FrameDecoderError, ReadFrameHeaderError};
    use ruzstd::decoding::{BlockDecodingStrategy, FrameDecoder};
    let mut dec = FrameDecoder::new();
    dec.set_max_window_size(MAX_ZSTD_WINDOW);
    while !input.is_empty() {
        match dec.init(&mut *input) {
            Ok(()) => {}
            Err(FrameDecoderError::ReadFrameHeaderError(ReadFrameHeaderError::SkipFrame {
                length,
                ..
            })) => {
                *input = input
                    .get(length as usize..)
                    .ok_or("a skippable frame runs past the end")?;
                continue;
            }
            Err(e) => return Err(decode_error(input, e)),
        }
        while !dec.is_finished() {
            dec.decode_blocks(&mut *input, BlockDecodingStrategy::UptoBytes(1 << 20))
                .map_err(|e| decode_error(input, e))?;
            dec.collect_to_writer(&mut *out)
                .map_err(|e| decode_error(input, e))?;
        }
        dec.collect_to_writer(&mut *out)
            .map_err(|e| decode_error(input, e))?;
        if let (Some(want), Some(got)) =
            (dec.get_checksum_from_data(), dec.get_calculated_checksum())
        {
            if want != got {
                return Err(format!(
                    "frame checksum {want:#010x} does not match the content's {got:#010x}"
                ));
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn media_types_and_magic() {
        assert_eq!(
            declared("application/vnd.oci.image.layer.v1.tar+zstd"),
            Some(Compression::Zstd)
        );
        assert_eq!(
            declared("application/vnd.docker.image.rootfs.diff.tar.zstd"),
            Some(Compression::Zstd)
        );
        assert_eq!(
            declared("application/vnd.docker.image.rootfs.diff.tar.gzip"),
            Some(Compression::Gzip)
        );
        assert_eq!(
            declared("application/vnd.oci.image.layer.v1.tar"),
            Some(Compression::Plain)
        );
        assert_eq!(declared(""), None);
        assert_eq!(sniff(&[0x28, 0xb5, 0x2f, 0xfd, 0]), Compression::Zstd);
        assert_eq!(sniff(&[0x5e, 0x2a, 0x4d, 0x18, 0]), Compression::Zstd);
        assert_eq!(sniff(&[0x1f, 0x8b, 8]), Compression::Gzip);
        assert_eq!(sniff(b"usr/"), Compression::Plain);
    }

    #[test]
    fn declared_zstd_that_is_not_is_refused() {
        let e = decompress(
            "application/vnd.oci.image.layer.v1.tar+zstd",
            b"usr/".to_vec(),
        );
        assert!(matches!(e, Err(LayerError::NotZstd { .. })), "{e:?}");
        let e = decompress(
            "application/vnd.oci.image.layer.v1.tar+gzip+encrypted",
            vec![0],
        );
        assert!(matches!(e, Err(LayerError::Encrypted(_))), "{e:?}");
    }
}
