//! `hpmmap-image build`: one bootable job image from Debian's packages and this workspace.

use crate::debs::{DebCache, DebError};
use crate::init::{job_init, job_runner, JobInit, HPMMAP_KO};
use crate::job::{find_program, split, JobError};
use crate::kernel::{
    default_abi, headers_debs, kernel_deb, parse_abi, unpack_headers, unpack_kernel, KernelError,
};
use crate::manifest::{self, sha256_hex, Manifest};
use crate::outdir::{self, OutError, Staging};
use crate::progress::step;
use crate::rootfs::{self, RootfsError};
use crate::workspace::{self, PartError};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use thiserror::Error;

/// Kernel command line every image needs; the VMM appends `hpmmap.pv=`. no_timer_check:
/// emulated (TCG) or nested guests on a loaded host can miss the IO-APIC timer check's
/// ticks and panic.
pub const CMDLINE: &str = "console=ttyS0 no_timer_check panic=-1 quiet";

/// Modules every job image loads: the lab's VF driver (an igb VF passed to L2).
pub const JOB_MODULES: [&str; 1] = ["igbvf"];

#[derive(Debug, Error)]
pub enum BuildError {
    #[error("--ranks {0}: must be between 1 and 1024")]
    Ranks(u32),
    #[error(transparent)]
    Job(#[from] JobError),
    #[error(transparent)]
    Out(#[from] OutError),
    #[error(transparent)]
    Kernel(#[from] KernelError),
    #[error(transparent)]
    Rootfs(#[from] RootfsError),
    #[error(transparent)]
    Part(#[from] PartError),
    #[error("{0}: {1}")]
    Io(PathBuf, std::io::Error),
}

impl From<DebError> for BuildError {
    fn from(e: DebError) -> Self {
        BuildError::Kernel(KernelError::Deb(e))
    }
}

impl BuildError {
    /// Bad input (flags, paths, versions, packages that cannot be had) rather than a
    /// failure of the build tools; the CLI exits 2 for these.
    pub fn is_input(&self) -> bool {
        !matches!(self, BuildError::Part(_) | BuildError::Io(..))
    }
}

/// `--ib`: a ConnectX VF's driver, its RDMA side, IPoIB, and the character devices verbs
/// programs open (umad, uverbs); their dependencies (ib_core, mlx5_core's) follow.
pub const IB_MODULES: [&str; 4] = ["mlx5_ib", "ib_ipoib", "ib_umad", "ib_uverbs"];

#[derive(Debug, Clone)]
pub struct BuildOptions {
    pub out: PathBuf,
    pub job: Option<String>,
    pub no_hpmmap: bool,
    pub ranks: u32,
    pub kernel_version: Option<String>,
    /// More kernel modules from the image package to load at boot.
    pub modules: Vec<String>,
    /// The InfiniBand kernel side for a ConnectX VF (`IB_MODULES`), which the init's
    /// `ib_check` brings up when one is passed through.
    pub ib: bool,
    pub cache: DebCache,
    pub workspace: PathBuf,
}

impl BuildOptions {
    pub fn new(out: impl Into<PathBuf>) -> Self {
        Self {
            out: out.into(),
            job: None,
            no_hpmmap: false,
            ranks: 1,
            kernel_version: None,
            modules: vec![],
            ib: false,
            cache: DebCache::from_env(),
            workspace: workspace::root(),
        }
    }
}

/// The job program as it will appear in the guest: (argv with /job/bin paths, host file).
struct JobProgram {
    argv: Vec<String>,
    host: PathBuf,
    guest: String,
}

fn resolve_job(
    opts: &BuildOptions,
    notes: &mut Vec<String>,
) -> Result<(String, JobProgram), BuildError> {
    let mut builtin = |args: Vec<String>| -> Result<JobProgram, BuildError> {
        let w = workspace::builtin_workload(opts.cache.root())?;
        let guest = format!("/job/bin/{}", w.name);
        let args = if args.is_empty() {
            w.args.clone()
        } else {
            args
        };
        notes.push(format!("workload: {}", w.description));
        Ok(JobProgram {
            argv: std::iter::once(guest.clone()).chain(args).collect(),
            host: w.binary,
            guest,
        })
    };
    match &opts.job {
        None => {
            let p = builtin(vec![])?;
            let shown = std::iter::once(workspace::TRIAD_NAME.to_string())
                .chain(p.argv[1..].iter().cloned())
                .collect::<Vec<_>>()
                .join(" ");
            Ok((shown, p))
        }
        Some(j) => {
            let words = split(j)?;
            if words[0] == workspace::TRIAD_NAME {
                return Ok((j.clone(), builtin(words[1..].to_vec())?));
            }
            let host = find_program(&words[0])?;
            // Fail now, before any download, when it cannot run in the guest.
            crate::job::runtime_files(&host)?;
            let name = host.file_name().unwrap().to_string_lossy().into_owned();
            let guest = format!("/job/bin/{name}");
            let argv = std::iter::once(guest.clone())
                .chain(words[1..].iter().cloned())
                .collect();
            Ok((j.clone(), JobProgram { argv, host, guest }))
        }
    }
}

pub fn build(opts: &BuildOptions) -> Result<Manifest, BuildError> {
    // Cheap checks first: bad input fails before anything is downloaded or written.
    if !(1..=1024).contains(&opts.ranks) {
        return Err(BuildError::Ranks(opts.ranks));
    }
    outdir::check(&opts.out, &manifest::IMAGE_FILES)?;
    let abi = match &opts.kernel_version {
        Some(v) => parse_abi(v)?,
        None => default_abi(&opts.cache)?,
    };
    let mut notes = Vec::new();
    let (job_text, prog) = resolve_job(opts, &mut notes)?;

    step(format!("kernel {abi}"));
    // Every package is fetched before anything is unpacked or built, so a missing one
    // fails fast.
    let image = kernel_deb(&opts.cache, &abi)?;
    let header_debs = if opts.no_hpmmap {
        None
    } else {
        Some(headers_debs(&opts.cache, &abi, &image.version)?)
    };
    let bb = rootfs::busybox(&opts.cache)?;
    let kernel = unpack_kernel(&opts.cache, &abi, image)?;
    let mut packages = BTreeMap::new();
    packages.insert(kernel.image.name.clone(), kernel.image.version.clone());
    packages.insert(bb.deb.name.clone(), bb.deb.version.clone());

    // hpmmap parts: the module needs headers of exactly this ABI.
    let mut hpmmap_ko = None;
    let mut hpmmap_run = None;
    match header_debs {
        None => notes.push("--no-hpmmap: the job runs directly, without the hpmmap module".into()),
        Some(debs) => {
            let headers = unpack_headers(&opts.cache, &abi, debs)?;
            for d in &headers.debs {
                packages.insert(d.name.clone(), d.version.clone());
            }
            match workspace::module_source(&opts.workspace) {
                Some(src) => {
                    hpmmap_ko = Some(workspace::build_module(
                        &src,
                        &headers.kdir,
                        &abi,
                        opts.cache.root(),
                    )?)
                }
                None => notes.push(format!(
                    "hpmmap module not in this workspace ({} missing): not included",
                    opts.workspace.join("guest-kmod/module/Makefile").display()
                )),
            }
            match workspace::hpmmap_run_source(&opts.workspace) {
                Some(_) => {
                    hpmmap_run = Some(workspace::cargo_static(
                        &opts.workspace,
                        "hpmmap-run",
                        "hpmmap-run",
                        None,
                    )?)
                }
                None => notes.push("hpmmap-run not in this workspace: not included".into()),
            }
            if hpmmap_ko.is_none() || hpmmap_run.is_none() {
                notes.push(
                    "the job runs directly (hpmmap needs both the module and hpmmap-run)".into(),
                );
            }
        }
    }
    let hpmmap = hpmmap_ko.is_some() && hpmmap_run.is_some();

    step("assembling the initramfs");
    let mut a = rootfs::base(&bb)?;
    let mut wanted: Vec<&str> = JOB_MODULES.to_vec();
    if opts.ib {
        wanted.extend(IB_MODULES);
    }
    wanted.extend(opts.modules.iter().map(|s| s.as_str()));
    let mods = rootfs::add_modules(&mut a, &kernel, &wanted)?;
    if hpmmap {
        let ko = hpmmap_ko.as_ref().unwrap();
        a.file(HPMMAP_KO, 0o644, read(ko)?);
        a.file("bin/hpmmap-run", 0o755, read(hpmmap_run.as_ref().unwrap())?);
    }
    rootfs::add_program(&mut a, &prog.guest, &prog.host)?;
    a.file(
        "job/run",
        0o755,
        job_runner(&prog.argv, opts.ranks).into_bytes(),
    );
    a.file(
        "init",
        0o755,
        job_init(&JobInit {
            abi: abi.clone(),
            hpmmap,
        })
        .into_bytes(),
    );

    let staging = Staging::new(&opts.out)?;
    let dir = staging.dir();
    let mut files = BTreeMap::new();
    let mut put = |name: &str, data: Vec<u8>| -> Result<(), BuildError> {
        files.insert(name.to_string(), sha256_hex(&data));
        let p = dir.join(name);
        std::fs::write(&p, data).map_err(|e| BuildError::Io(p, e))
    };
    step("writing vmlinux, bzImage, initramfs.cpio.gz");
    put(manifest::KERNEL, read(&kernel.vmlinux())?)?;
    put(manifest::BZIMAGE, read(&kernel.bzimage())?)?;
    put(manifest::INITRAMFS, a.to_gzip())?;
    let m = Manifest {
        format: manifest::FORMAT,
        kernel: manifest::KERNEL.into(),
        bzimage: manifest::BZIMAGE.into(),
        initramfs: manifest::INITRAMFS.into(),
        cmdline: CMDLINE.into(),
        kernel_version: abi,
        job: job_text,
        hpmmap,
        ranks: opts.ranks,
        packages,
        files,
        modules: mods.iter().map(|m| m.name.clone()).collect(),
        notes,
    };
    let mp = dir.join(manifest::FILE_NAME);
    std::fs::write(&mp, m.to_json()).map_err(|e| BuildError::Io(mp, e))?;
    staging.commit(&manifest::IMAGE_FILES)?;
    step(format!("image ready in {}", opts.out.display()));
    Ok(m)
}

fn read(p: &Path) -> Result<Vec<u8>, BuildError> {
    std::fs::read(p).map_err(|e| BuildError::Io(p.to_path_buf(), e))
}
