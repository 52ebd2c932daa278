//! hpmmap-image: builds a bootable job image (docs/architecture.md, Interface 3).

use clap::{Parser, Subcommand};
use hpmmap_image::builder::{build, BuildOptions, RootOn};
use hpmmap_image::debs::DebCache;
use hpmmap_image::jobtree::{parse_add, parse_env, SpecError};
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(Parser)]
#[command(
    name = "hpmmap-image",
    version,
    about = "Job images from Debian's packages"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Build one job image: vmlinux (+ bzImage), initramfs.cpio.gz, manifest.json.
    Build {
        /// Output directory (new, empty, or a previous image).
        #[arg(long)]
        out: PathBuf,
        /// The job: 'CMD ARGS' (CMD found on this host; static, or with its shared
        /// libraries copied). Default: the built-in workload.
        #[arg(long)]
        job: Option<String>,
        /// Run the job directly, without the hpmmap module and hpmmap-run.
        #[arg(long)]
        no_hpmmap: bool,
        /// Copies of the job to run side by side (HPMMAP_RANK / HPMMAP_RANKS).
        #[arg(long, default_value_t = 1)]
        ranks: u32,
        /// Debian kernel ABI (e.g. 6.1.0-28-amd64). Default: what linux-image-amd64 depends on.
        #[arg(long)]
        kernel_version: Option<String>,
        /// Another kernel module from the image package to load at boot (repeatable).
        #[arg(long = "module")]
        modules: Vec<String>,
        /// Carry the InfiniBand kernel side for a ConnectX VF passed through with
        /// `hpmmap-vmm --vf`: mlx5_ib, ib_ipoib, ib_umad, ib_uverbs and what they depend on.
        /// The init then waits for the port, brings IPoIB up and reports `ib:` lines.
        #[arg(long)]
        ib: bool,
        /// Debian packages for the job's root tree, with their dependency closure from
        /// Debian's archive (comma-separated, repeatable): e.g. openmpi-bin,lammps.
        #[arg(long = "packages", value_name = "LIST")]
        packages: Vec<String>,
        /// The base of the job's root tree: a directory, an OCI image layout, or a
        /// `docker save` / `podman save` archive.
        #[arg(long, value_name = "PATH")]
        rootfs: Option<PathBuf>,
        /// A host file or directory to put in the image at GUEST (repeatable).
        #[arg(long = "add", value_name = "HOST:GUEST")]
        adds: Vec<String>,
        /// The job's working directory in the image (default: the base image's, else /out).
        #[arg(long, value_name = "DIR")]
        workdir: Option<String>,
        /// An environment variable for the job (repeatable).
        #[arg(long = "env", value_name = "K=V")]
        env: Vec<String>,
        /// Where the job's root tree goes: the initramfs or a read-only squashfs disk.
        #[arg(long, value_enum, default_value = "auto")]
        root_on: RootOn,
        /// Guest RAM the image will boot with (e.g. 2G): refuse an initramfs that does not fit.
        #[arg(long, value_name = "SIZE")]
        mem: Option<String>,
        /// Package cache root (default ${HPMMAP_CACHE:-$HOME/.cache/hpmmap}).
        #[arg(long)]
        cache: Option<PathBuf>,
        /// No progress lines.
        #[arg(long, short)]
        quiet: bool,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.cmd {
        Cmd::Build {
            out,
            job,
            no_hpmmap,
            ranks,
            kernel_version,
            modules,
            ib,
            packages,
            rootfs,
            adds,
            workdir,
            env,
            root_on,
            mem,
            cache,
            quiet,
        } => {
            let bad = |e: String| {
                eprintln!("hpmmap-image: {e}");
                ExitCode::from(2)
            };
            let parsed: Result<_, SpecError> = (|| {
                let adds = adds
                    .iter()
                    .map(|a| parse_add(a))
                    .collect::<Result<Vec<_>, _>>()?;
                let env = env
                    .iter()
                    .map(|e| parse_env(e))
                    .collect::<Result<Vec<_>, _>>()?;
                Ok((adds, env))
            })();
            let (adds, env) = match parsed {
                Ok(v) => v,
                Err(e) => return bad(e.to_string()),
            };
            let mem = match mem.as_deref().map(parse_size) {
                None => None,
                Some(Some(m)) => Some(m),
                Some(None) => {
                    return bad(format!(
                        "--mem {:?}: expected a size such as 2G or 1536M",
                        mem.unwrap()
                    ))
                }
            };
            hpmmap_image::progress::set_quiet(quiet);
            let mut o = BuildOptions::new(out);
            o.job = job;
            o.no_hpmmap = no_hpmmap;
            o.ranks = ranks;
            o.kernel_version = kernel_version;
            o.modules = modules;
            o.ib = ib;
            o.tree.packages = packages;
            o.tree.rootfs = rootfs;
            o.tree.adds = adds;
            o.tree.env = env;
            o.tree.workdir = workdir;
            o.root_on = root_on;
            o.mem = mem;
            if let Some(c) = cache {
                o.cache = DebCache::at(c);
            }
            match build(&o) {
                Ok(m) => {
                    println!("{}", o.out.display());
                    for n in &m.notes {
                        eprintln!("[hpmmap-image] note: {n}");
                    }
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("hpmmap-image: {e}");
                    ExitCode::from(if e.is_input() { 2 } else { 1 })
                }
            }
        }
    }
}

/// `2G`, `1536M`, `512K` or bytes.
fn parse_size(s: &str) -> Option<u64> {
    let (num, shift) = match s.as_bytes().last()? {
        b'G' | b'g' => (&s[..s.len() - 1], 30),
        b'M' | b'm' => (&s[..s.len() - 1], 20),
        b'K' | b'k' => (&s[..s.len() - 1], 10),
        _ => (s, 0),
    };
    num.parse::<u64>()
        .ok()?
        .checked_mul(1 << shift)
        .filter(|&v| v > 0)
}
