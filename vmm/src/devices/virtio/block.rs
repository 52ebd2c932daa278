//! virtio-blk (virtio 1.2, 5.2) over a host file: read, write (refused with IOERR on a
//! read-only disk), flush and GET_ID (the disk's serial, which the guest reads from
//! /sys/block/vdX/serial to find a disk by name rather than by probe order).

use super::chain::{Chain, ChainError};
use super::{VirtioDevice, DEVICE_ID_BLOCK};
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use thiserror::Error;
use virtio_bindings::virtio_blk::*;
use vm_memory::GuestMemoryMmap;

pub const SECTOR: u64 = 512;
/// Descriptors per queue.
pub const QUEUE_SIZE: u16 = 256;
/// The largest data descriptor the device takes (announced as size_max).
pub const SEGMENT_MAX: u32 = 1 << 20;
/// Data descriptors per request (announced as seg_max): the queue less header and status.
pub const SEGMENTS_MAX: u32 = QUEUE_SIZE as u32 - 2;
/// The serial's length limit (GET_ID answers 20 bytes).
pub const SERIAL_MAX: usize = VIRTIO_BLK_ID_BYTES as usize;
const HEADER: u64 = 16;
/// Host I/O goes through a bounce buffer of this size at most.
const BOUNCE: usize = 64 << 10;

/// `--disk PATH[,ro][,serial=NAME]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DiskSpec {
    pub path: PathBuf,
    pub ro: bool,
    pub serial: String,
}

#[derive(Debug, Error, PartialEq, Eq)]
#[error("--disk {arg}: {why}")]
pub struct DiskError {
    pub arg: String,
    pub why: String,
}

impl DiskSpec {
    /// Parses the flag's value (the file is checked by [`DiskSpec::check`]). Without
    /// serial= the serial is the file name, cut to 20 bytes.
    pub fn parse(arg: &str) -> Result<DiskSpec, DiskError> {
        let bad = |why: String| DiskError {
            arg: arg.to_string(),
            why,
        };
        let mut parts = arg.split(',');
        let path = parts.next().unwrap_or_default();
        if path.is_empty() {
            return Err(bad("no path".into()));
        }
        let mut spec = DiskSpec {
            path: PathBuf::from(path),
            ro: false,
            serial: String::new(),
        };
        let mut serial = None;
        for p in parts {
            match p.split_once('=') {
                None if p == "ro" => spec.ro = true,
                Some(("serial", s)) => serial = Some(s.to_string()),
                _ => return Err(bad(format!("unknown option '{p}' (ro, serial=NAME)"))),
            }
        }
        spec.serial = match serial {
            Some(s) => s,
            None => {
                let name = spec
                    .path
                    .file_name()
                    .map(|n| n.to_string_lossy().into_owned())
                    .unwrap_or_default();
                name.chars()
                    .filter(|c| c.is_ascii_graphic())
                    .take(SERIAL_MAX)
                    .collect()
            }
        };
        check_serial(&spec.serial).map_err(bad)?;
        Ok(spec)
    }

    /// The file exists, is a regular file (or a block device) whose size is a whole number
    /// of sectors; returns the size in bytes.
    pub fn check(&self) -> Result<u64, DiskError> {
        let bad = |why: String| DiskError {
            arg: self.path.display().to_string(),
            why,
        };
        let meta = std::fs::metadata(&self.path).map_err(|e| bad(format!("cannot open: {e}")))?;
        if meta.is_dir() {
            return Err(bad("is a directory".into()));
        }
        let size = if meta.is_file() {
            meta.len()
        } else {
            // A block device reports its size by seeking to its end.
            use std::io::Seek;
            File::open(&self.path)
                .and_then(|mut f| f.seek(std::io::SeekFrom::End(0)))
                .map_err(|e| bad(format!("cannot read its size: {e}")))?
        };
        if size == 0 || !size.is_multiple_of(SECTOR) {
            return Err(bad(format!(
                "{size} bytes is not a whole number of 512-byte sectors"
            )));
        }
        Ok(size)
    }
}

/// A serial is 1 to 20 printable ASCII bytes: what GET_ID can carry and sysfs shows.
pub fn check_serial(s: &str) -> Result<(), String> {
    if s.is_empty() || s.len() > SERIAL_MAX || !s.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(format!(
            "serial '{s}' must be 1 to {SERIAL_MAX} printable ASCII characters without spaces"
        ));
    }
    Ok(())
}

/// Counters for the report and tests.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct BlockStats {
    pub reads: u64,
    pub writes: u64,
    pub flushes: u64,
    pub refused: u64,
}

pub struct BlockDevice {
    file: File,
    path: PathBuf,
    ro: bool,
    serial: String,
    sectors: u64,
    bounce: Vec<u8>,
    pub stats: BlockStats,
}

impl BlockDevice {
    /// Opens the disk (read-only when `ro`), checking it as [`DiskSpec::check`] does.
    pub fn open(spec: &DiskSpec) -> Result<BlockDevice, DiskError> {
        let size = spec.check()?;
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(!spec.ro)
            .open(&spec.path)
            .map_err(|e| DiskError {
                arg: spec.path.display().to_string(),
                why: format!("cannot open: {e}"),
            })?;
        Ok(BlockDevice::with_file(
            file,
            &spec.path,
            size,
            spec.ro,
            &spec.serial,
        ))
    }

    /// A disk over an open file of `bytes` (a multiple of 512).
    pub fn with_file(file: File, path: &Path, bytes: u64, ro: bool, serial: &str) -> Self {
        BlockDevice {
            file,
            path: path.to_path_buf(),
            ro,
            serial: serial.to_string(),
            sectors: bytes / SECTOR,
            bounce: Vec::new(),
            stats: BlockStats::default(),
        }
    }

    pub fn bytes(&self) -> u64 {
        self.sectors * SECTOR
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Whether [sector, sector + bytes/512) lies on the disk and bytes is whole sectors.
    fn in_range(&self, sector: u64, bytes: u64) -> bool {
        bytes.is_multiple_of(SECTOR)
            && sector
                .checked_add(bytes / SECTOR)
                .is_some_and(|end| end <= self.sectors)
    }

    /// Disk -> guest, through the bounce buffer; false on a host I/O error.
    fn read_into(&mut self, mem: &GuestMemoryMmap, c: &Chain, sector: u64, len: u64) -> bool {
        let mut done = 0u64;
        while done < len {
            let n = (len - done).min(BOUNCE as u64) as usize;
            self.bounce.resize(n, 0);
            if self
                .file
                .read_exact_at(&mut self.bounce[..n], sector * SECTOR + done)
                .is_err()
                || !c.writable.write_at(mem, done, &self.bounce[..n])
            {
                return false;
            }
            done += n as u64;
        }
        true
    }

    /// Guest -> disk.
    fn write_from(&mut self, mem: &GuestMemoryMmap, c: &Chain, sector: u64, len: u64) -> bool {
        let mut done = 0u64;
        while done < len {
            let n = (len - done).min(BOUNCE as u64) as usize;
            self.bounce.resize(n, 0);
            if !c
                .readable
                .read_at(mem, HEADER + done, &mut self.bounce[..n])
                || self
                    .file
                    .write_all_at(&self.bounce[..n], sector * SECTOR + done)
                    .is_err()
            {
                return false;
            }
            done += n as u64;
        }
        true
    }
}

impl VirtioDevice for BlockDevice {
    fn name(&self) -> String {
        format!("virtio-blk {}", self.serial)
    }

    fn device_id(&self) -> u16 {
        DEVICE_ID_BLOCK
    }

    fn features(&self) -> u64 {
        let mut f = (1u64 << VIRTIO_BLK_F_FLUSH)
            | (1 << VIRTIO_BLK_F_SIZE_MAX)
            | (1 << VIRTIO_BLK_F_SEG_MAX);
        if self.ro {
            f |= 1 << VIRTIO_BLK_F_RO;
        }
        f
    }

    fn queue_max_sizes(&self) -> Vec<u16> {
        vec![QUEUE_SIZE]
    }

    fn segment_max(&self) -> u32 {
        SEGMENT_MAX
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        // struct virtio_blk_config: capacity (le64), size_max (le32), seg_max (le32); the
        // rest (geometry, blk_size, ...) is not offered and reads as zero.
        let mut cfg = [0u8; 64];
        cfg[0..8].copy_from_slice(&self.sectors.to_le_bytes());
        cfg[8..12].copy_from_slice(&SEGMENT_MAX.to_le_bytes());
        cfg[12..16].copy_from_slice(&SEGMENTS_MAX.to_le_bytes());
        for (i, b) in data.iter_mut().enumerate() {
            *b = usize::try_from(offset)
                .ok()
                .and_then(|o| o.checked_add(i))
                .and_then(|o| cfg.get(o).copied())
                .unwrap_or(0);
        }
    }

    fn process(
        &mut self,
        _queue: usize,
        c: Chain,
        mem: &GuestMemoryMmap,
    ) -> Result<u32, ChainError> {
        let head = c.head;
        let mut hdr = [0u8; HEADER as usize];
        if !c.readable.read_at(mem, 0, &mut hdr) {
            return Err(ChainError::Request {
                head,
                what: "no 16-byte request header in the device-readable buffers",
            });
        }
        let wlen = c.writable.len();
        if wlen == 0 {
            return Err(ChainError::Request {
                head,
                what: "no device-writable status byte",
            });
        }
        let ty = u32::from_le_bytes(hdr[0..4].try_into().unwrap());
        let sector = u64::from_le_bytes(hdr[8..16].try_into().unwrap());
        let data_in = wlen - 1; // writable bytes before the status byte
        let data_out = c.readable.len() - HEADER;
        let mut written = 0u64;
        let status = match ty {
            VIRTIO_BLK_T_IN => {
                if data_out == 0 && self.in_range(sector, data_in) {
                    if self.read_into(mem, &c, sector, data_in) {
                        self.stats.reads += 1;
                        written = data_in;
                        VIRTIO_BLK_S_OK
                    } else {
                        VIRTIO_BLK_S_IOERR
                    }
                } else {
                    VIRTIO_BLK_S_IOERR
                }
            }
            VIRTIO_BLK_T_OUT => {
                if self.ro {
                    self.stats.refused += 1;
                    VIRTIO_BLK_S_IOERR
                } else if data_in == 0
                    && self.in_range(sector, data_out)
                    && self.write_from(mem, &c, sector, data_out)
                {
                    self.stats.writes += 1;
                    VIRTIO_BLK_S_OK
                } else {
                    VIRTIO_BLK_S_IOERR
                }
            }
            VIRTIO_BLK_T_FLUSH => {
                self.stats.flushes += 1;
                if self.ro || self.file.sync_data().is_ok() {
                    VIRTIO_BLK_S_OK
                } else {
                    VIRTIO_BLK_S_IOERR
                }
            }
            VIRTIO_BLK_T_GET_ID => {
                // 20 bytes, NUL-padded when the serial is shorter (5.2.6.1).
                let mut id = [0u8; SERIAL_MAX];
                id[..self.serial.len()].copy_from_slice(self.serial.as_bytes());
                let n = data_in.min(SERIAL_MAX as u64) as usize;
                if c.writable.write_at(mem, 0, &id[..n]) {
                    written = n as u64;
                    VIRTIO_BLK_S_OK
                } else {
                    VIRTIO_BLK_S_IOERR
                }
            }
            _ => VIRTIO_BLK_S_UNSUPP,
        };
        if !c.writable.write_at(mem, wlen - 1, &[status as u8]) {
            return Err(ChainError::Request {
                head,
                what: "status byte not writable",
            });
        }
        // The used length counts the status byte too; a chain's total is below 2^32.
        Ok((written + 1) as u32)
    }
}
