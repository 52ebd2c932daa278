//! hpmmap-image: builds a bootable job image (docs/architecture.md, Interface 3).

use clap::{Parser, Subcommand};
use hpmmap_image::builder::{build, BuildOptions};
use hpmmap_image::debs::DebCache;
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
            cache,
            quiet,
        } => {
            hpmmap_image::progress::set_quiet(quiet);
            let mut o = BuildOptions::new(out);
            o.job = job;
            o.no_hpmmap = no_hpmmap;
            o.ranks = ranks;
            o.kernel_version = kernel_version;
            o.modules = modules;
            o.ib = ib;
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
