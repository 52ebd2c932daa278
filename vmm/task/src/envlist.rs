//! Which environment variables a task in the guest gets: the one list both sides use.
//!
//! The host's environment (slurmstepd's, the user's login shell's) describes the host: its
//! PATH, its libraries, its temporary directories, its credentials (KRB5CCNAME, SSH_AUTH_SOCK,
//! MUNGE sockets) mean nothing or the wrong thing in the guest. A task needs what describes
//! its place in the job (SLURM_*), what its MPI library reads to wire up (PMI*, PMIX*,
//! OMPI_*), and a sane PATH, HOME and LANG that the guest sets itself.

/// Prefixes of the variables carried from the host. `PMI` covers PMI_*, PMI2 and PMIX_*.
pub const PREFIXES: &[&str] = &["SLURM_", "PMI", "OMPI_"];

/// PATH of every task (the job images' own, images/src/jobtree.rs DEFAULT_PATH).
pub const FIXED_PATH: &str = "/usr/local/bin:/usr/bin:/bin:/usr/local/sbin:/usr/sbin:/sbin";
/// LANG of every task: UTF-8 without locale files the image may not carry.
pub const FIXED_LANG: &str = "C.UTF-8";
/// HOME of a task whose user has no home in the guest's passwd.
pub const FALLBACK_HOME: &str = "/";

/// A name the host may send: on a prefix, and made of the characters a shell accepts in a
/// name (so the task's shell can read it back).
pub fn allowed(name: &[u8]) -> bool {
    PREFIXES.iter().any(|p| name.starts_with(p.as_bytes()))
        && name.iter().all(|c| c.is_ascii_alphanumeric() || *c == b'_')
}

/// The prefixes as users read them, for errors and help.
pub fn describe() -> String {
    PREFIXES
        .iter()
        .map(|p| format!("{p}*"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// The allowed subset of `vars`, in order.
pub fn filter<I>(vars: I) -> Vec<(Vec<u8>, Vec<u8>)>
where
    I: IntoIterator<Item = (Vec<u8>, Vec<u8>)>,
{
    vars.into_iter().filter(|(k, _)| allowed(k)).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slurm_pmi_pmix_and_ompi_pass_everything_else_stays() {
        for ok in [
            "SLURM_PROCID",
            "SLURM_JOB_ID",
            "PMI_FD",
            "PMI_RANK",
            "PMIX_RANK",
            "PMIX_SERVER_URI2",
            "OMPI_MCA_btl",
        ] {
            assert!(allowed(ok.as_bytes()), "{ok}");
        }
        for no in [
            "PATH",
            "HOME",
            "LANG",
            "LD_PRELOAD",
            "LD_LIBRARY_PATH",
            "SSH_AUTH_SOCK",
            "KRB5CCNAME",
            "slurm_procid",
            "SLURM",
            "OMPI",
            "SLURM_A-B",
            "SLURM_X=Y",
            "",
        ] {
            assert!(!allowed(no.as_bytes()), "{no}");
        }
    }

    #[test]
    fn filter_keeps_order_and_values() {
        let v = |k: &str, x: &str| (k.as_bytes().to_vec(), x.as_bytes().to_vec());
        let got = filter([
            v("HOME", "/root"),
            v("SLURM_NTASKS", "2"),
            v("LD_PRELOAD", "x.so"),
            v("PMI_FD", "5"),
        ]);
        assert_eq!(got, vec![v("SLURM_NTASKS", "2"), v("PMI_FD", "5")]);
        assert_eq!(describe(), "SLURM_*, PMI*, OMPI_*");
    }
}
