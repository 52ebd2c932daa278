use clap::Parser;
use hpmmap_vmm::config::{Args, SelftestArgs, VmConfig};
use hpmmap_vmm::{exit, vm};
use std::time::Instant;

fn main() {
    let started = Instant::now();
    if std::env::args_os().nth(1).is_some_and(|a| a == "selftest") {
        let args = match SelftestArgs::try_parse_from(std::env::args_os().skip(1)) {
            Ok(a) => a,
            Err(e) => usage_error(e),
        };
        std::process::exit(hpmmap_vmm::selftest::run(&args));
    }
    let args = match Args::try_parse() {
        Ok(a) => a,
        Err(e) => usage_error(e),
    };
    let report_path = args.report.clone();
    let cfg = match VmConfig::from_args(args) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("hpmmap-vmm: {e}");
            std::process::exit(exit::USAGE);
        }
    };
    // --jail: a keeper forks off first and stays root to clean up after the job; this
    // process goes on as the VMM and sends its report to the keeper.
    let report_pipe = match &cfg.jail {
        Some(j) => match hpmmap_vmm::jail::keeper::start(hpmmap_vmm::jail::keeper::KeeperJob {
            opts: j.clone(),
            report: report_path.clone(),
            has_vf: cfg.vf.is_some(),
            vsock: cfg.vsock.clone(),
        }) {
            Ok(child) => Some(std::fs::File::from(child.report_fd)),
            Err(e) => {
                eprintln!("hpmmap-vmm: {e}");
                std::process::exit(if e.is_input() {
                    exit::USAGE
                } else {
                    exit::VMM_FAILURE
                });
            }
        },
        None => None,
    };
    // A panic unwinds through run(), whose drops close VFIO and give the VF back; whatever
    // a claim still holds after that is put back here, before the process exits (by the
    // keeper under --jail: the jailed VMM cannot reach sysfs).
    let result = std::panic::catch_unwind(|| vm::run(&cfg, started));
    if cfg.vf.is_some() && cfg.jail.is_none() {
        for e in hpmmap_vf::restore_all() {
            eprintln!("hpmmap-vmm: --vf: restoring the host failed: {e}");
        }
    }
    let result = match result {
        Ok(r) => r,
        Err(_) => std::process::exit(exit::VMM_FAILURE),
    };
    match result {
        Ok(outcome) => {
            eprintln!("{}", outcome.report.summary());
            if let Some(mut pipe) = report_pipe {
                // The keeper writes it where --report says; the jail cannot.
                let _ = serde_json::to_writer_pretty(&mut pipe, &outcome.report);
            } else if let Some(p) = report_path {
                if let Err(e) = outcome.report.write_json(&p) {
                    eprintln!("hpmmap-vmm: --report {}: cannot write: {e}", p.display());
                    std::process::exit(exit::VMM_FAILURE);
                }
            }
            std::process::exit(outcome.exit_code);
        }
        Err(e) => {
            eprintln!("hpmmap-vmm: {e}");
            std::process::exit(e.exit_code());
        }
    }
}

fn usage_error(e: clap::Error) -> ! {
    use clap::error::ErrorKind;
    if matches!(e.kind(), ErrorKind::DisplayHelp | ErrorKind::DisplayVersion) {
        let _ = e.print();
        std::process::exit(0);
    }
    // One line naming the flag and value, not clap's usage block.
    let text = e.render().to_string();
    let head = text.split("Usage:").next().unwrap_or("bad arguments");
    let line = head
        .lines()
        .map(str::trim)
        .filter(|l| {
            !l.is_empty() && !l.starts_with("tip:") && !l.starts_with("For more information")
        })
        .collect::<Vec<_>>()
        .join(" ");
    let line = line.strip_prefix("error: ").unwrap_or(&line);
    eprintln!("hpmmap-vmm: {line} (see --help)");
    std::process::exit(exit::USAGE);
}
