//! `--output DIR`: the job's results come back on a disk. The VMM attaches a sparse
//! temporary file as a read-write virtio-blk with serial `hpmmap-out`; the guest's init
//! writes one POSIX ustar stream of the job's output directory at offset 0 when the job
//! ends; after the guest exits the VMM unpacks it into DIR.
//!
//! The stream is the guest's, so it is untrusted: only regular files and directories are
//! made, by relative paths without `..`, each component opened with O_NOFOLLOW from a
//! directory descriptor taken before the run (so it also works inside `--jail`); modes
//! lose setuid/setgid/sticky and group/other write; nothing is read past the disk. Links,
//! devices, FIFOs and refused paths are counted as skipped.

use std::ffi::CString;
use std::fs::File;
use std::io::Read;
use std::os::fd::{AsRawFd, FromRawFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::{Component, Path, PathBuf};
use thiserror::Error;

pub const SERIAL: &str = "hpmmap-out";
pub const DEFAULT_SIZE: u64 = 1 << 30;
const FILE_MODE_MASK: u32 = 0o755;

#[derive(Debug, Error)]
pub enum OutputError {
    #[error("--output {0}: {1}")]
    Input(PathBuf, String),
    #[error("--output {0}: {1}")]
    Host(PathBuf, std::io::Error),
}

impl OutputError {
    pub fn is_input(&self) -> bool {
        matches!(self, OutputError::Input(..))
    }
}

/// Checks `--output DIR --output-size SIZE` without changing anything.
pub fn check(dir: &Path, size: u64) -> Result<(), OutputError> {
    let bad = |why: String| Err(OutputError::Input(dir.to_path_buf(), why));
    if size == 0 || !size.is_multiple_of(512) {
        return bad(format!(
            "--output-size {size}: not a whole number of 512-byte sectors"
        ));
    }
    let parent = dir
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    if !parent.is_dir() {
        return bad(format!("directory {} does not exist", parent.display()));
    }
    if dir.exists() {
        if !dir.is_dir() {
            return bad("exists and is not a directory".into());
        }
        if std::fs::read_dir(dir).is_ok_and(|mut d| d.next().is_some()) {
            return bad("exists and is not empty".into());
        }
    }
    Ok(())
}

/// The output disk of one run: its backing file (already unlinked: nothing stays on the
/// host if the VMM dies) and the directory it is unpacked into.
pub struct OutputDisk {
    pub dir: PathBuf,
    pub bytes: u64,
    file: File,
    dir_fd: File,
    created_dir: bool,
    unpacked: bool,
}

/// What came back, for the report.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct OutputReport {
    pub dir: String,
    pub files: u64,
    pub bytes: u64,
    pub skipped: u64,
    /// Why unpacking stopped early (a damaged stream), if it did.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

impl OutputDisk {
    /// Creates DIR (if absent) and the sparse backing file beside it. `owner`: the uid and
    /// gid the (jailed) VMM unpacks as.
    pub fn create(dir: &Path, size: u64, owner: Option<(u32, u32)>) -> Result<Self, OutputError> {
        check(dir, size)?;
        let host = |e| OutputError::Host(dir.to_path_buf(), e);
        let created_dir = !dir.exists();
        if created_dir {
            std::fs::create_dir(dir).map_err(host)?;
        }
        let mut disk = OutputDisk {
            dir: dir.to_path_buf(),
            bytes: size,
            // Replaced below; a directory handle is a valid placeholder for drop.
            file: File::open(dir).map_err(host)?,
            dir_fd: std::fs::OpenOptions::new()
                .read(true)
                .custom_flags(libc::O_DIRECTORY | libc::O_NOFOLLOW)
                .open(dir)
                .map_err(host)?,
            created_dir,
            unpacked: false,
        };
        if let Some((uid, gid)) = owner {
            std::os::unix::fs::fchown(&disk.dir_fd, Some(uid), Some(gid)).map_err(host)?;
        }
        let name = dir
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| "output".into());
        let tmp = dir.with_file_name(format!(".{name}.hpmmap-out-{}", std::process::id()));
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&tmp)
            .map_err(host)?;
        // Unlinked at once: the open descriptor is all that keeps it.
        let _ = std::fs::remove_file(&tmp);
        file.set_len(size).map_err(host)?;
        disk.file = file;
        Ok(disk)
    }

    /// A second descriptor of the backing file, for the block device.
    pub fn backing(&self) -> std::io::Result<File> {
        self.file.try_clone()
    }

    /// Unpacks the stream at offset 0 of the disk into DIR.
    pub fn unpack(&mut self) -> OutputReport {
        self.unpacked = true;
        let mut r = OutputReport {
            dir: self.dir.display().to_string(),
            ..Default::default()
        };
        let reader = DiskReader {
            file: &self.file,
            pos: 0,
            end: self.bytes,
        };
        let mut ar = tar::Archive::new(reader);
        let entries = match ar.entries() {
            Ok(e) => e,
            Err(e) => {
                r.error = Some(e.to_string());
                return r;
            }
        };
        for entry in entries {
            let mut entry = match entry {
                Ok(e) => e,
                Err(e) => {
                    r.error = Some(format!("damaged tar stream: {e}"));
                    break;
                }
            };
            let raw = entry.path_bytes().into_owned();
            let Some(parts) = safe_components(&raw) else {
                r.skipped += 1;
                continue;
            };
            let ty = entry.header().entry_type();
            let mode = entry.header().mode().unwrap_or(0o644) & FILE_MODE_MASK;
            let res = if ty.is_dir() {
                if parts.is_empty() {
                    continue; // "./": DIR itself
                }
                self.make_dirs(&parts).map(|_| ())
            } else if ty.is_file() && !parts.is_empty() {
                let size = entry.size();
                self.write_file(&parts, mode, &mut entry).map(|()| {
                    r.files += 1;
                    r.bytes += size;
                })
            } else {
                r.skipped += 1;
                continue;
            };
            if let Err(e) = res {
                r.skipped += 1;
                r.error
                    .get_or_insert(format!("{}: {e}", String::from_utf8_lossy(&raw)));
            }
        }
        r
    }

    /// Opens (making what is missing) the directories `parts`, from DIR down.
    fn make_dirs(&self, parts: &[CString]) -> std::io::Result<File> {
        // SAFETY: dup of a descriptor this struct owns; the result is owned by the File.
        let mut cur = unsafe { File::from_raw_fd(fd_or_err(libc::dup(self.dir_fd.as_raw_fd()))?) };
        for p in parts {
            let fd = cur.as_raw_fd();
            // SAFETY: fd is an open directory and p a NUL-terminated single component.
            let made = unsafe { libc::mkdirat(fd, p.as_ptr(), 0o755) };
            if made != 0 {
                let e = std::io::Error::last_os_error();
                if e.raw_os_error() != Some(libc::EEXIST) {
                    return Err(e);
                }
            }
            // SAFETY: as above; O_NOFOLLOW refuses a symlink, O_DIRECTORY anything else.
            let next = fd_or_err(unsafe {
                libc::openat(
                    fd,
                    p.as_ptr(),
                    libc::O_RDONLY | libc::O_DIRECTORY | libc::O_NOFOLLOW | libc::O_CLOEXEC,
                )
            })?;
            // SAFETY: next is a new descriptor owned by nothing else.
            cur = unsafe { File::from_raw_fd(next) };
        }
        Ok(cur)
    }

    fn write_file(&self, parts: &[CString], mode: u32, src: &mut impl Read) -> std::io::Result<()> {
        let (name, dirs) = parts.split_last().expect("non-empty");
        let parent = self.make_dirs(dirs)?;
        // SAFETY: parent is an open directory, name one NUL-terminated component.
        let fd = fd_or_err(unsafe {
            libc::openat(
                parent.as_raw_fd(),
                name.as_ptr(),
                libc::O_WRONLY | libc::O_CREAT | libc::O_TRUNC | libc::O_NOFOLLOW | libc::O_CLOEXEC,
                mode as libc::c_uint,
            )
        })?;
        // SAFETY: fd is a new descriptor owned by nothing else.
        let mut f = unsafe { File::from_raw_fd(fd) };
        std::io::copy(src, &mut f)?;
        Ok(())
    }
}

impl Drop for OutputDisk {
    fn drop(&mut self) {
        // A run that never got to unpack leaves no empty DIR it made behind.
        if self.created_dir && !self.unpacked {
            let _ = std::fs::remove_dir(&self.dir);
        }
    }
}

fn fd_or_err(fd: libc::c_int) -> std::io::Result<libc::c_int> {
    if fd < 0 {
        Err(std::io::Error::last_os_error())
    } else {
        Ok(fd)
    }
}

/// The path's components if it is relative and has no `..`, root or empty name.
pub fn safe_components(raw: &[u8]) -> Option<Vec<CString>> {
    let p = Path::new(std::ffi::OsStr::from_bytes(raw));
    let mut out = Vec::new();
    for c in p.components() {
        match c {
            Component::Normal(n) => out.push(CString::new(n.as_bytes()).ok()?),
            Component::CurDir => {}
            _ => return None,
        }
    }
    Some(out)
}

/// Reads the disk from offset 0 to its end, never past it.
struct DiskReader<'a> {
    file: &'a File,
    pos: u64,
    end: u64,
}

impl Read for DiskReader<'_> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let left = self.end.saturating_sub(self.pos);
        let n = (buf.len() as u64).min(left) as usize;
        if n == 0 {
            return Ok(0);
        }
        let got = self.file.read_at(&mut buf[..n], self.pos)?;
        self.pos += got as u64;
        Ok(got)
    }
}
