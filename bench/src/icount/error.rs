//! What can stop an instruction-count run.

#[derive(Debug, thiserror::Error)]
pub enum IcountError {
    #[error("qemu-system-x86_64 is not installed")]
    NoQemu,
    #[error("QEMU cannot load TCG plugins (-plugin): {0}")]
    NoPlugins(String),
    #[error("building {what}: {why}")]
    Build { what: String, why: String },
    #[error("the rank binary {path}: {why}")]
    RankBinary { path: String, why: String },
    #[error("job image: {0}")]
    Image(String),
    #[error("QEMU: {0}")]
    Qemu(String),
    #[error("guest output: {0}")]
    Parse(String),
    #[error("{0}: {1}")]
    Io(std::path::PathBuf, std::io::Error),
}
