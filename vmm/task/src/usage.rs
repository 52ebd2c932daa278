//! Command-line errors as one line (clap prints its message, a usage block and a hint): the
//! SPANK plugin and slurmstepd log a task's stderr line by line, and one line naming the
//! problem is what a user reads there.

use clap::error::ErrorKind;
use std::process::ExitCode;

/// Parses the command line; `--help` and `--version` print and exit 0, an error prints
/// `NAME: MESSAGE` on one line and gives exit status 2.
pub fn parse<P: clap::Parser>(name: &str) -> Result<P, ExitCode> {
    match P::try_parse() {
        Ok(p) => Ok(p),
        Err(e) if matches!(e.kind(), ErrorKind::DisplayHelp | ErrorKind::DisplayVersion) => {
            let _ = e.print();
            Err(ExitCode::SUCCESS)
        }
        Err(e) => {
            eprintln!("{name}: {}", one_line(&e.to_string()));
            Err(ExitCode::from(2))
        }
    }
}

/// clap's message without its usage block and hint, its lines joined.
fn one_line(msg: &str) -> String {
    let msg = msg.split("\n\nUsage:").next().unwrap_or(msg);
    let msg = msg.split("\n\nFor more information").next().unwrap_or(msg);
    let msg = msg.strip_prefix("error: ").unwrap_or(msg);
    msg.split_whitespace().collect::<Vec<_>>().join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_clap_message_becomes_one_line() {
        let m = "error: the following required arguments were not provided:\n  --vsock <PATH>\n\n\
                 Usage: hpmmap-task --vsock <PATH> -- <ARGV>...\n\nFor more information, try '--help'.\n";
        assert_eq!(
            one_line(m),
            "the following required arguments were not provided: --vsock <PATH>"
        );
        assert_eq!(
            one_line(
                "error: unexpected argument 'x' found\n\nFor more information, try '--help'.\n"
            ),
            "unexpected argument 'x' found"
        );
    }
}
