//! `hpmmap-image build`: one bootable job image from Debian's packages and this workspace.

use crate::cpio::{Archive, Node};
use crate::debs::{DebCache, DebError};
use crate::init::{job_init, job_runner, tree_runner, JobInit, Launch, HPMMAP_KO};
use crate::job::{find_program, split, JobError};
use crate::jobtree::{self, JobTree, SpecError, TreeSpec};
use crate::kernel::{
    default_abi, headers_debs, kernel_deb, parse_abi, unpack_headers, unpack_kernel, KernelError,
};
use crate::manifest::{self, sha256_hex, Manifest};
use crate::outdir::{self, OutError, Staging};
use crate::progress::step;
use crate::rootdisk::{self, DiskError};
use crate::rootfs::{self, RootfsError};
use crate::workspace::{self, PartError};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use thiserror::Error;

/// Kernel command line every image needs; the VMM appends `hpmmap.pv=`. no_timer_check:
/// emulated (TCG) or nested guests on a loaded host can miss the IO-APIC timer check's
/// ticks and panic.
pub const CMDLINE: &str = "console=ttyS0 no_timer_check panic=-1 quiet";

/// Modules every job image loads: the lab's VF driver (an igb VF passed to L2),
/// virtio-blk on PCI or MMIO for the `hpmmap-out` results disk, and virtio-vsock for
/// `hpmmap-vmm --vsock` (vsock and vmw_vsock_virtio_transport_common follow as
/// dependencies; without the device the driver loads and binds nothing).
pub const JOB_MODULES: [&str; 5] = [
    "igbvf",
    "virtio_pci",
    "virtio_mmio",
    "virtio_blk",
    "vmw_vsock_virtio_transport",
];

/// A job tree larger than this goes on the read-only root disk under `--root-on auto`.
pub const ROOT_DISK_THRESHOLD: u64 = 64 << 20;
/// Guest RAM an initramfs image must leave for the kernel and the job besides itself.
pub const RAM_HEADROOM: u64 = 384 << 20;

/// Where the job tree goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum RootOn {
    /// The initramfs when the tree is small (up to 64 MiB of files), the disk otherwise.
    Auto,
    /// Always the initramfs (what the VMM boots without a virtio-blk disk).
    Initramfs,
    /// Always the read-only squashfs disk.
    Disk,
}

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
    #[error(transparent)]
    Spec(#[from] SpecError),
    #[error(transparent)]
    Disk(#[from] DiskError),
    #[error("--mem {mem_mib} MiB: the image needs {need_mib} MiB of guest RAM in its initramfs ({files_mib} MiB of files, {gz_mib} MiB compressed, {headroom} MiB for the kernel and the job); give more --mem or put the tree on the root disk (--root-on disk)", headroom = RAM_HEADROOM >> 20)]
    TooLarge {
        mem_mib: u64,
        need_mib: u64,
        files_mib: u64,
        gz_mib: u64,
    },
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
        match self {
            BuildError::Spec(e) => e.is_input(),
            BuildError::Disk(_) | BuildError::Part(_) | BuildError::Io(..) => false,
            _ => true,
        }
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
    /// The job's own root tree (`--rootfs`, `--packages`, `--add`, `--env`, `--workdir`).
    pub tree: TreeSpec,
    pub root_on: RootOn,
    /// Guest RAM the image will boot with (`--mem`): an initramfs that does not fit is refused.
    pub mem: Option<u64>,
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
            tree: TreeSpec::default(),
            root_on: RootOn::Auto,
            mem: None,
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
        let w = workspace::builtin_workload(&opts.workspace)?;
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
            let shown = std::iter::once(workspace::WORKLOAD_NAME.to_string())
                .chain(p.argv[1..].iter().cloned())
                .collect::<Vec<_>>()
                .join(" ");
            Ok((shown, p))
        }
        Some(j) => {
            let words = split(j)?;
            if words[0] == workspace::WORKLOAD_NAME {
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

/// The job in a job tree: its argv there and how its ranks start.
fn tree_job(
    opts: &BuildOptions,
    jt: &mut JobTree,
    notes: &mut Vec<String>,
) -> Result<(String, Vec<String>, Launch), BuildError> {
    let (text, argv) = match &opts.job {
        Some(j) if split(j)?[0] != workspace::WORKLOAD_NAME => {
            let words = split(j)?;
            let host = find_program(&words[0]).ok();
            if let (Some(h), None) = (&host, jt.find(&words[0])) {
                // Fails now when it cannot run in the guest.
                crate::job::runtime_files(h)?;
            }
            (j.clone(), jt.job_argv(j, host.as_deref())?)
        }
        _ => {
            let (text, p) = resolve_job(opts, notes)?;
            let data = read(&p.host)?;
            crate::tree::put(&mut jt.archive, &p.guest, Node::File { mode: 0o755, data })
                .map_err(SpecError::from)?;
            (text, p.argv)
        }
    };
    let name = argv[0].rsplit('/').next().unwrap_or("");
    let launchers = [
        "mpirun",
        "mpiexec",
        "orterun",
        "mpirun.openmpi",
        "mpiexec.hydra",
        "srun",
    ];
    let launch = match jt.find("mpirun") {
        Some(m) if !launchers.contains(&name) => {
            notes.push(format!(
                "MPI: {} ranks through {m}, each under hpmmap-run when hpmmap is on",
                opts.ranks
            ));
            Launch::Mpirun(m)
        }
        _ => Launch::Copies,
    };
    Ok((text, argv, launch))
}

/// The initramfs of an image whose job tree is on the root disk: the guest's tools only.
fn system_only(tree: &Archive) -> Archive {
    let mut a = Archive::new();
    let pre = format!("{}/", jobtree::SYS);
    for (p, n) in tree.entries() {
        if p.starts_with(&pre) {
            a.insert(p, n.clone());
        }
    }
    for d in ["proc", "sys", "dev", "tmp", "run", "root"] {
        a.dir(d);
    }
    a
}

pub fn build(opts: &BuildOptions) -> Result<Manifest, BuildError> {
    // Cheap checks first: bad input fails before anything is downloaded or written.
    if !(1..=1024).contains(&opts.ranks) {
        return Err(BuildError::Ranks(opts.ranks));
    }
    outdir::check(&opts.out, &manifest::IMAGE_FILES)?;
    opts.tree.check()?;
    let abi = match &opts.kernel_version {
        Some(v) => parse_abi(v)?,
        None => default_abi(&opts.cache)?,
    };
    let mut notes = Vec::new();
    let tree_wanted = opts.tree.wanted();
    // The job tree first: an unknown package or a broken container image fails before
    // the kernel is fetched.
    let mut jt = if tree_wanted {
        Some(jobtree::assemble(&opts.tree, &opts.cache)?)
    } else {
        None
    };
    let (job_text, argv, launch, prog) = match jt.as_mut() {
        Some(t) => {
            let (text, argv, launch) = tree_job(opts, t, &mut notes)?;
            (text, argv, Some(launch), None)
        }
        None => {
            let (text, p) = resolve_job(opts, &mut notes)?;
            (text, p.argv.clone(), None, Some(p))
        }
    };

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
    // The task agent serves Slurm's tasks in the VM (`hpmmap.serve=1`, `--vsock`), with or
    // without hpmmap.
    let agent = match workspace::agent_source(&opts.workspace) {
        Some(_) => Some(workspace::cargo_static(
            &opts.workspace,
            "hpmmap-task",
            jobtree::AGENT_NAME,
            None,
        )?),
        None => {
            notes.push("hpmmap-agent not in this workspace: the image cannot serve tasks".into());
            None
        }
    };

    step("assembling the initramfs");
    let mut wanted: Vec<&str> = JOB_MODULES.to_vec();
    if opts.ib {
        wanted.extend(IB_MODULES);
    }
    wanted.extend(opts.modules.iter().map(|s| s.as_str()));
    let mut tree_files = BTreeMap::new();
    let mut root_disk = None;
    let mut env = vec![];
    let mut workdir = None;
    let (mut a, sys, mods) = match jt.as_mut() {
        None => {
            let prog = prog.as_ref().unwrap();
            let mut a = rootfs::base(&bb)?;
            let mods = rootfs::add_modules(&mut a, &kernel, &wanted)?;
            rootfs::add_program(&mut a, &prog.guest, &prog.host)?;
            a.file(
                "job/run",
                0o755,
                job_runner(&prog.argv, opts.ranks).into_bytes(),
            );
            (a, String::new(), mods)
        }
        Some(t) => {
            let launch = launch.as_ref().unwrap();
            let runner = tree_runner(&argv, opts.ranks, &t.exports(), &t.workdir, launch);
            let run = if hpmmap { hpmmap_run.as_deref() } else { None };
            t.add_system(&bb, run, agent.as_deref(), runner)?;
            notes.append(&mut t.notes);
            tree_files = crate::tree::hashes(&t.archive);
            env = t.env.iter().map(|(k, v)| format!("{k}={v}")).collect();
            workdir = Some(t.workdir.clone());
            for (k, v) in &t.packages {
                packages.insert(k.clone(), v.clone());
            }
            let size = t.archive.data_bytes();
            let on_disk = match opts.root_on {
                RootOn::Disk => true,
                RootOn::Initramfs => false,
                RootOn::Auto => size > ROOT_DISK_THRESHOLD,
            };
            let mut a = if on_disk {
                notes.push(format!(
                    "root tree ({} MiB of files) on the read-only disk {} (serial {}), under a tmpfs overlay",
                    size >> 20,
                    rootdisk::FILE_NAME,
                    rootdisk::SERIAL
                ));
                wanted.extend(rootdisk::MODULES);
                root_disk = Some(std::mem::take(&mut t.archive));
                system_only(root_disk.as_ref().unwrap())
            } else {
                notes.push(format!(
                    "root tree ({} MiB of files) in the initramfs",
                    size >> 20
                ));
                std::mem::take(&mut t.archive)
            };
            let mods = rootfs::add_modules_in(&mut a, &kernel, &wanted, jobtree::SYS)?;
            for (p, n) in [
                (
                    "dev/console",
                    Node::CharDev {
                        mode: 0o600,
                        major: 5,
                        minor: 1,
                    },
                ),
                (
                    "dev/null",
                    Node::CharDev {
                        mode: 0o666,
                        major: 1,
                        minor: 3,
                    },
                ),
            ] {
                crate::tree::put(&mut a, p, n).map_err(SpecError::from)?;
            }
            (a, format!("{}/", jobtree::SYS), mods)
        }
    };
    if hpmmap {
        let ko = hpmmap_ko.as_ref().unwrap();
        a.file(&format!("{sys}{HPMMAP_KO}"), 0o644, read(ko)?);
        if !tree_wanted {
            a.file("bin/hpmmap-run", 0o755, read(hpmmap_run.as_ref().unwrap())?);
        }
    }
    if let (Some(ag), false) = (&agent, tree_wanted) {
        a.file(&format!("bin/{}", jobtree::AGENT_NAME), 0o755, read(ag)?);
    }
    a.insert(
        "init",
        Node::File {
            mode: 0o755,
            data: job_init(&JobInit {
                abi: abi.clone(),
                hpmmap,
                tree: tree_wanted,
                root_disk: root_disk.is_some(),
                workdir: workdir.clone(),
            })
            .into_bytes(),
        },
    );

    let staging = Staging::new(&opts.out)?;
    let dir = staging.dir();
    let mut files = BTreeMap::new();
    let mut put = |name: &str, data: Vec<u8>| -> Result<(), BuildError> {
        files.insert(name.to_string(), sha256_hex(&data));
        let p = dir.join(name);
        std::fs::write(&p, data).map_err(|e| BuildError::Io(p, e))
    };
    let initramfs_bytes = a.data_bytes();
    let gz = a.to_gzip();
    if let Some(mem) = opts.mem {
        let need = initramfs_bytes + gz.len() as u64 + RAM_HEADROOM;
        if need > mem {
            return Err(BuildError::TooLarge {
                mem_mib: mem >> 20,
                need_mib: need.div_ceil(1 << 20),
                files_mib: initramfs_bytes >> 20,
                gz_mib: (gz.len() as u64) >> 20,
            });
        }
    }
    step("writing vmlinux, bzImage, initramfs.cpio.gz");
    put(manifest::KERNEL, read(&kernel.vmlinux())?)?;
    put(manifest::BZIMAGE, read(&kernel.bzimage())?)?;
    put(manifest::INITRAMFS, gz)?;
    let rootfs = match &root_disk {
        None => None,
        Some(t) => {
            step(format!(
                "writing {} (mksquashfs, zstd)",
                rootdisk::FILE_NAME
            ));
            let f = dir.join(rootdisk::FILE_NAME);
            rootdisk::build(t, &dir.join(".tree"), &f)?;
            let data = read(&f)?;
            Some(manifest::RootImage {
                file: rootdisk::FILE_NAME.into(),
                format: rootdisk::FORMAT.into(),
                sha256: sha256_hex(&data),
                bytes: data.len() as u64,
            })
        }
    };
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
        rootfs,
        initramfs_bytes,
        tree_files,
        env,
        workdir,
        launcher: launch.map(|l| match l {
            Launch::Copies => "copies".to_string(),
            Launch::Mpirun(m) => m,
        }),
        user: tree_wanted.then(|| jobtree::JOB_USER.to_string()),
        agent: agent.as_ref().map(|_| {
            let dir = if tree_wanted {
                format!("/{}/bin", jobtree::SYS)
            } else {
                "/bin".to_string()
            };
            format!("{dir}/{}", jobtree::AGENT_NAME)
        }),
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
