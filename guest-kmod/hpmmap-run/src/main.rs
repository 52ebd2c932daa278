//! `hpmmap-run [--page-size 1G|2M] [--node N] [--no-fallback] -- PROG ARGS`: registers
//! itself with the hpmmap module, effective at exec, then execs PROG, so an unmodified
//! binary (or an MPI rank started through it) runs with hpmmap memory.

use std::ffi::OsString;
use std::os::unix::process::CommandExt;
use std::process::{Command, ExitCode};

use clap::Parser;
use hpmmap_run::{register_on_exec, Options, PageSize};

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
    let err = Command::new(&cli.command[0]).args(&cli.command[1..]).exec();
    eprintln!(
        "hpmmap-run: cannot execute {}: {err}",
        cli.command[0].to_string_lossy()
    );
    ExitCode::from(if err.kind() == std::io::ErrorKind::NotFound {
        127
    } else {
        126
    })
}
