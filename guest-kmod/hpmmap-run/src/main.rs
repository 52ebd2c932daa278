//! `hpmmap-run [--page-size 1G|2M] [--node N] [--no-fallback] -- PROG ARGS`: registers
//! itself with the hpmmap module, effective at exec, then runs PROG as its child, so an
//! unmodified binary (or an MPI rank started through it) runs with hpmmap memory. When
//! PROG ends, one line with the rank's counters goes to stderr (and is appended to the
//! file `HPMMAP_RANK_LOG` names, for a job init to collect); hpmmap-run then exits as
//! PROG did.

use std::ffi::OsString;
use std::io::Write;
use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;
use hpmmap_run::rank::{append_line, mpi_rank, rank_line, read_rank, RankError};
use hpmmap_run::{register_on_exec, supervise, Options, PageSize};

#[derive(Parser, Debug)]
#[command(name = "hpmmap-run", version, about = "Run a program on hpmmap memory")]
struct Cli {
    /// Largest page to map the program's memory with: 1G or 2M.
    #[arg(long, default_value = "1G")]
    page_size: PageSize,
    /// NUMA node of the pool to take memory from (default: the CPU's own node).
    #[arg(long)]
    node: Option<u32>,
    /// Fail allocations with ENOMEM when the pool is exhausted instead of using Linux memory.
    #[arg(long)]
    no_fallback: bool,
    /// The program and its arguments.
    #[arg(required = true, trailing_var_arg = true, allow_hyphen_values = true)]
    command: Vec<OsString>,
}

/// The rank's record is written while its address space is torn down, before the
/// parent can reap it; only when something else held the address space a moment
/// longer does it come later. A rank that ran on Linux memory has none: give up then.
fn read_after_exit(pid: i32) -> Result<hpmmap_run::rank::RankStats, RankError> {
    let mut tries = 0;
    loop {
        match read_rank(pid, true) {
            Err(RankError::NotFound) if tries < 20 => {
                tries += 1;
                std::thread::sleep(Duration::from_millis(50));
            }
            r => return r,
        }
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let opts = Options {
        page_size: cli.page_size,
        node: cli.node,
        no_fallback: cli.no_fallback,
    };
    if let Err(e) = register_on_exec(&opts) {
        eprintln!("hpmmap-run: {e}");
        return ExitCode::from(1);
    }
    let mut child = match supervise::spawn(&cli.command) {
        Ok(c) => c,
        Err(err) => {
            eprintln!(
                "hpmmap-run: cannot execute {}: {err}",
                cli.command[0].to_string_lossy()
            );
            return ExitCode::from(if err.kind() == std::io::ErrorKind::NotFound {
                127
            } else {
                126
            });
        }
    };
    let status = match supervise::wait(&mut child) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("hpmmap-run: waiting for the program failed: {e}");
            return ExitCode::from(1);
        }
    };
    let pid = child.id();
    let line = rank_line(
        pid,
        mpi_rank(|k| std::env::var(k).ok()),
        &read_after_exit(pid as i32),
    );
    // A closed stderr must not change how hpmmap-run ends: no eprintln! (it panics).
    let _ = writeln!(std::io::stderr(), "{line}");
    if let Some(path) = std::env::var_os("HPMMAP_RANK_LOG").filter(|p| !p.is_empty()) {
        if let Err(e) = append_line(std::path::Path::new(&path), &line) {
            let _ = writeln!(
                std::io::stderr(),
                "hpmmap-run: cannot append to {}: {e}",
                std::path::Path::new(&path).display()
            );
        }
    }
    supervise::exit_like(status)
}
