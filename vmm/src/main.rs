use clap::Parser;
use hpmmap_vmm::config::{Args, VmConfig};
use hpmmap_vmm::{exit, vm};
use std::time::Instant;

fn main() {
    let started = Instant::now();
    let args = match Args::try_parse() {
        Ok(a) => a,
        Err(e) => {
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
                    !l.is_empty()
                        && !l.starts_with("tip:")
                        && !l.starts_with("For more information")
                })
                .collect::<Vec<_>>()
                .join(" ");
            let line = line.strip_prefix("error: ").unwrap_or(&line);
            eprintln!("hpmmap-vmm: {line} (see --help)");
            std::process::exit(exit::USAGE);
        }
    };
    let report_path = args.report.clone();
    let cfg = match VmConfig::from_args(args) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("hpmmap-vmm: {e}");
            std::process::exit(exit::USAGE);
        }
    };
    match vm::run(&cfg, started) {
        Ok(outcome) => {
            eprintln!("{}", outcome.report.summary());
            if let Some(p) = report_path {
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
