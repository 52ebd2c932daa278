//! `hpmmap-task --vsock PATH [--port 52] [--cwd DIR] [--env K=V ...] [--pass-env]
//! [--no-wrap] -- ARGV...`: runs one task in the job's VM and exits with its status
//! (vmm/task/README.md). Exit 2: bad usage; 255: the channel failed.

use clap::Parser;
use hpmmap_task::client::{self, connect::Target, connect::DEFAULT_PORT, pmifd, signals};
use hpmmap_task::envlist;
use hpmmap_task::protocol::{Frame, Spawn};
use std::ffi::OsString;
use std::os::fd::OwnedFd;
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(Parser, Debug)]
#[command(
    name = "hpmmap-task",
    version,
    about = "Run one Slurm task inside the job's VM (through hpmmap-agent)"
)]
struct Cli {
    /// The VMM's vsock socket (hpmmap-vmm --vsock PATH).
    #[arg(
        long,
        value_name = "PATH",
        required_unless_present = "unix",
        conflicts_with = "unix"
    )]
    vsock: Option<PathBuf>,
    /// The agent's vsock port in the guest.
    #[arg(long, default_value_t = DEFAULT_PORT)]
    port: u32,
    /// The agent's own Unix socket (hpmmap-agent --listen unix:PATH), no CONNECT: for tests.
    #[arg(long, value_name = "PATH")]
    unix: Option<PathBuf>,
    /// Working directory in the guest (absolute; default: this one).
    #[arg(long, value_name = "DIR")]
    cwd: Option<PathBuf>,
    /// A variable for the task (its name on the allow-list); wins over --pass-env.
    #[arg(long = "env", value_name = "K=V")]
    env: Vec<OsString>,
    /// Pass this process's allow-listed variables (SLURM_*, PMI*, OMPI_*); with PMI_FD set,
    /// relay that descriptor to the task (which gets its own PMI_FD in the guest).
    #[arg(long)]
    pass_env: bool,
    /// Run the program directly instead of under hpmmap-run.
    #[arg(long)]
    no_wrap: bool,
    /// Task id for the agent's log (default: $SLURM_PROCID, else 0).
    #[arg(long, value_name = "N")]
    task: Option<u32>,
    /// The program and its arguments.
    #[arg(last = true, required = true, value_name = "ARGV")]
    argv: Vec<OsString>,
}

fn spawn_of(cli: Cli) -> Result<(Target, Spawn, Option<OwnedFd>), String> {
    let target = match (cli.vsock, cli.unix) {
        (Some(path), _) => Target::Vsock {
            path,
            port: cli.port,
        },
        (None, Some(p)) => Target::Unix(p),
        (None, None) => unreachable!("clap requires one of --vsock and --unix"),
    };
    let cwd = match cli.cwd {
        Some(d) if d.is_absolute() => d,
        Some(d) => return Err(format!("--cwd {}: must be an absolute path", d.display())),
        None => std::env::current_dir().map_err(|e| format!("the current directory: {e}"))?,
    };
    // slurmstepd's PMI socket (srun --mpi=pmi2), relayed to the task; only with --pass-env,
    // which is what carries the PMI variables that tell a rank to use it.
    let pmi = match std::env::var_os("PMI_FD") {
        Some(v) if cli.pass_env => Some(pmifd::take(&v.to_string_lossy())?),
        _ => None,
    };
    let mut env: Vec<(Vec<u8>, Vec<u8>)> = if cli.pass_env {
        envlist::filter(std::env::vars_os().map(|(k, v)| (k.into_vec(), v.into_vec())))
    } else {
        Vec::new()
    };
    for kv in cli.env {
        let b = kv.as_bytes();
        let Some(eq) = b.iter().position(|&c| c == b'=') else {
            return Err(format!("--env {}: expected K=V", kv.to_string_lossy()));
        };
        let (k, v) = (&b[..eq], &b[eq + 1..]);
        if !envlist::allowed(k) {
            return Err(format!(
                "--env {}: not on the allow-list ({})",
                String::from_utf8_lossy(k),
                envlist::describe()
            ));
        }
        env.retain(|(ek, _)| ek != k);
        env.push((k.to_vec(), v.to_vec()));
    }
    let task = cli.task.unwrap_or_else(|| {
        std::env::var("SLURM_PROCID")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    });
    let spawn = Spawn {
        argv: cli.argv.into_iter().map(OsString::into_vec).collect(),
        cwd: cwd.into_os_string().into_vec(),
        env,
        task,
        wrap: !cli.no_wrap,
        pmi: pmi.is_some(),
    };
    spawn.check()?;
    // Refused here as bad input (2), not later as a channel failure (255).
    if let Err(e) = Frame::Spawn(spawn.clone()).encode() {
        return Err(format!("the command line and environment: {e}"));
    }
    Ok((target, spawn, pmi))
}

fn main() -> ExitCode {
    // First, before any thread exists: the forwarded signals are blocked for all of them.
    let sink = match signals::start() {
        Ok(s) => s,
        Err(e) => {
            eprintln!("hpmmap-task: cannot set up signal forwarding: {e}");
            return ExitCode::from(255);
        }
    };
    let cli = match hpmmap_task::usage::parse::<Cli>("hpmmap-task") {
        Ok(c) => c,
        Err(code) => return code,
    };
    let (target, spawn, pmi) = match spawn_of(cli) {
        Ok(x) => x,
        Err(e) => {
            eprintln!("hpmmap-task: {e}");
            return ExitCode::from(2);
        }
    };
    match client::run(&target, spawn, &sink, pmi) {
        Ok(code) => ExitCode::from(code),
        Err(e) => {
            eprintln!("hpmmap-task: {e}");
            ExitCode::from(255)
        }
    }
}
