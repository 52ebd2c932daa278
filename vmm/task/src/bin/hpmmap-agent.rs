//! `hpmmap-agent --listen vsock:52|unix:PATH [--user NAME] [--hpmmap-run PATH | --no-hpmmap]
//! [--env-file FILE] [--grace MS]`:
//! runs the tasks the host's `hpmmap-task` asks for, one per connection (vmm/task/README.md).

use clap::Parser;
use hpmmap_task::agent::{self, listen::Listen, listen::Listener, user};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

#[derive(Parser, Debug)]
#[command(
    name = "hpmmap-agent",
    version,
    about = "Guest agent: runs Slurm tasks sent over the task channel (vsock port 52)"
)]
struct Cli {
    /// Where to listen: vsock:PORT in the job's VM, unix:PATH for tests.
    #[arg(long, value_name = "vsock:PORT|unix:PATH")]
    listen: Listen,
    /// Run tasks as this user of /etc/passwd (setgid and setuid before exec).
    #[arg(long, value_name = "NAME")]
    user: Option<String>,
    /// The launcher of tasks that ask for hpmmap.
    #[arg(long, value_name = "PATH", default_value = "/bin/hpmmap-run")]
    hpmmap_run: PathBuf,
    /// This VM has no hpmmap (no module, or an image built with --no-hpmmap): tasks that
    /// ask for it run directly.
    #[arg(long, conflicts_with = "hpmmap_run")]
    no_hpmmap: bool,
    /// The image's environment, NAME=VALUE lines: every task starts from it (PATH, library
    /// paths), under the host's allow-listed variables.
    #[arg(long, value_name = "FILE")]
    env_file: Option<PathBuf>,
    /// Milliseconds between SIGHUP and SIGKILL for a task whose host went away.
    #[arg(long, value_name = "MS", default_value_t = 5000)]
    grace: u64,
}

fn main() -> ExitCode {
    let cli = match hpmmap_task::usage::parse::<Cli>("hpmmap-agent") {
        Ok(c) => c,
        Err(code) => return code,
    };
    let user = match cli.user.as_deref() {
        None => None,
        Some(name) => match user::lookup(name, std::path::Path::new("/etc/passwd")) {
            Ok(u) => Some(u),
            Err(e) => {
                eprintln!("hpmmap-agent: --user: {e}");
                return ExitCode::from(2);
            }
        },
    };
    let base_env = match cli.env_file.as_deref().map(agent::read_env_file) {
        None => Vec::new(),
        Some(Ok(v)) => v,
        Some(Err(e)) => {
            eprintln!("hpmmap-agent: --env-file {e}");
            return ExitCode::from(2);
        }
    };
    let listener = match Listener::bind(&cli.listen) {
        Ok(l) => l,
        Err(e) => {
            eprintln!("hpmmap-agent: cannot listen on {}: {e}", cli.listen);
            return ExitCode::from(1);
        }
    };
    eprintln!("hpmmap-agent: listening on {}", cli.listen);
    let e = agent::serve(
        listener,
        agent::Config {
            hpmmap_run: (!cli.no_hpmmap).then_some(cli.hpmmap_run),
            base_env,
            user,
            grace: Duration::from_millis(cli.grace),
        },
    );
    eprintln!("hpmmap-agent: giving up on {}: {e}", cli.listen);
    ExitCode::from(1)
}
