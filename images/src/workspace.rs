//! Parts that come from this workspace rather than Debian: the hpmmap guest module (Kbuild
//! against the image kernel's headers), `hpmmap-run` and other static Rust guest binaries,
//! and the built-in workload.

use crate::progress;
use std::path::{Path, PathBuf};
use std::process::Command;
use thiserror::Error;

#[derive(Debug, Error)]
pub enum PartError {
    #[error("building {what} failed ({cmd}): {detail}")]
    Build {
        what: String,
        cmd: String,
        detail: String,
    },
    #[error("{0}: {1}")]
    Io(PathBuf, std::io::Error),
}

fn io(p: &Path) -> impl FnOnce(std::io::Error) -> PartError + '_ {
    move |e| PartError::Io(p.to_path_buf(), e)
}

/// The workspace root: $HPMMAP_WORKSPACE, else the nearest directory above the current
/// one holding images/Cargo.toml, else the tree this binary was built from.
pub fn root() -> PathBuf {
    if let Some(p) = std::env::var_os("HPMMAP_WORKSPACE").filter(|p| !p.is_empty()) {
        return PathBuf::from(p);
    }
    if let Ok(mut d) = std::env::current_dir() {
        loop {
            if d.join("images/Cargo.toml").is_file() && d.join("Cargo.toml").is_file() {
                return d;
            }
            if !d.pop() {
                break;
            }
        }
    }
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

/// Where cargo builds of static guest binaries go: beside the caller's target dir, in a
/// directory of their own (different RUSTFLAGS would otherwise rebuild everything).
pub fn guest_target_dir(ws: &Path) -> PathBuf {
    let base = std::env::var_os("CARGO_TARGET_DIR")
        .filter(|p| !p.is_empty())
        .map(PathBuf::from)
        .unwrap_or_else(|| ws.join("target"));
    base.join("hpmmap-guest-static")
}

fn run(mut cmd: Command, what: &str) -> Result<(), PartError> {
    let shown = format!("{cmd:?}");
    let out = cmd.output().map_err(|e| PartError::Build {
        what: what.to_string(),
        cmd: shown.clone(),
        detail: e.to_string(),
    })?;
    if !out.status.success() {
        let err = String::from_utf8_lossy(&out.stderr);
        let tail: Vec<&str> = err.lines().rev().take(15).collect();
        let tail: Vec<&str> = tail.into_iter().rev().collect();
        return Err(PartError::Build {
            what: what.to_string(),
            cmd: shown,
            detail: tail.join("\n"),
        });
    }
    Ok(())
}

/// `RUSTFLAGS='-C target-feature=+crt-static' cargo build --release --target
/// x86_64-unknown-linux-gnu` of one binary (the workspace convention for guest binaries).
/// `manifest` names a Cargo.toml outside the workspace's members, or None for `-p package`.
pub fn cargo_static(
    ws: &Path,
    package: &str,
    bin: &str,
    manifest: Option<&Path>,
) -> Result<PathBuf, PartError> {
    let target = guest_target_dir(ws);
    progress::step(format!(
        "building {bin} (static, release) in {}",
        target.display()
    ));
    let mut cmd = Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()));
    cmd.current_dir(ws)
        .args([
            "build",
            "--quiet",
            "--release",
            "--target",
            "x86_64-unknown-linux-gnu",
        ])
        .args(["--bin", bin])
        .env("RUSTFLAGS", "-C target-feature=+crt-static")
        .env_remove("CARGO_ENCODED_RUSTFLAGS")
        .env("CARGO_TARGET_DIR", &target);
    match manifest {
        Some(m) => cmd.arg("--manifest-path").arg(m),
        None => cmd.args(["-p", package]),
    };
    run(cmd, bin)?;
    Ok(target.join("x86_64-unknown-linux-gnu/release").join(bin))
}

pub fn module_source(ws: &Path) -> Option<PathBuf> {
    let d = ws.join("guest-kmod/module");
    d.join("Makefile").is_file().then_some(d)
}

pub fn hpmmap_run_source(ws: &Path) -> Option<PathBuf> {
    let d = ws.join("guest-kmod/hpmmap-run");
    d.join("Cargo.toml").is_file().then_some(d)
}

/// The task agent's crate (vmm/task), if this workspace has it.
pub fn agent_source(ws: &Path) -> Option<PathBuf> {
    let d = ws.join("vmm/task");
    d.join("Cargo.toml").is_file().then_some(d)
}

/// Source files of an out-of-tree module (not its build products), sorted.
fn module_files(src: &Path) -> Result<Vec<PathBuf>, PartError> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(src)
        .map_err(io(src))?
        .flatten()
        .map(|e| e.path())
        .filter(|p| {
            let n = p.file_name().unwrap().to_string_lossy();
            p.is_file()
                && (n == "Makefile"
                    || n == "Kbuild"
                    || (n.ends_with(".c") && !n.ends_with(".mod.c"))
                    || n.ends_with(".h"))
        })
        .collect();
    v.sort();
    Ok(v)
}

/// Whether a module build also makes `hpmmap_test.ko`, the guest suite's test hooks
/// (`make HPMMAP_TEST=m`). Job images never carry it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ModuleHooks {
    None,
    Test,
}

/// Builds hpmmap.ko against `kdir` in a copy of the sources under the cache (the
/// engineer's own tree is left alone), keyed by ABI and source hash, so a rebuild with
/// unchanged sources reuses the same .ko bytes.
pub fn build_module(
    src: &Path,
    kdir: &Path,
    abi: &str,
    cache_root: &Path,
) -> Result<PathBuf, PartError> {
    build_module_with(src, kdir, abi, cache_root, ModuleHooks::None)
}

/// `build_module`, with the test hooks beside hpmmap.ko when asked (their own cache
/// directory, so an image build never picks up a tree that has them). This is the one
/// place the project builds the module: job images and the lab's `--hpmmap-ko` (the guest
/// suite) both come here.
pub fn build_module_with(
    src: &Path,
    kdir: &Path,
    abi: &str,
    cache_root: &Path,
    hooks: ModuleHooks,
) -> Result<PathBuf, PartError> {
    use sha2::{Digest, Sha256};
    let files = module_files(src)?;
    let mut h = Sha256::new();
    for f in &files {
        h.update(f.file_name().unwrap().as_encoded_bytes());
        h.update(std::fs::read(f).map_err(io(f))?);
    }
    let key: String = h.finalize()[..8]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    let suffix = match hooks {
        ModuleHooks::None => "",
        ModuleHooks::Test => "-test",
    };
    let dir = cache_root.join("kmod").join(format!("{abi}-{key}{suffix}"));
    let ko = dir.join("hpmmap.ko");
    let built = |d: &Path| {
        d.join("hpmmap.ko").is_file()
            && (hooks == ModuleHooks::None || d.join("hpmmap_test.ko").is_file())
    };
    if built(&dir) {
        return Ok(ko);
    }
    let tmp = cache_root
        .join("kmod")
        .join(format!(".build-{}-{key}", crate::progress::unique()));
    let _ = std::fs::remove_dir_all(&tmp);
    std::fs::create_dir_all(&tmp).map_err(io(&tmp))?;
    for f in &files {
        let d = tmp.join(f.file_name().unwrap());
        std::fs::copy(f, &d).map_err(io(&d))?;
    }
    progress::step(format!(
        "building the hpmmap module against {}",
        kdir.display()
    ));
    let mut cmd = Command::new("make");
    cmd.arg("-C")
        .arg(&tmp)
        .arg(format!("KDIR={}", kdir.display()));
    if hooks == ModuleHooks::Test {
        cmd.arg("HPMMAP_TEST=m");
    }
    let r = run(cmd, "the hpmmap module (guest-kmod/module)").and_then(|_| {
        if built(&tmp) {
            Ok(())
        } else {
            Err(PartError::Build {
                what: "the hpmmap module".into(),
                cmd: "make".into(),
                detail: format!(
                    "make succeeded but wrote no {}",
                    match hooks {
                        ModuleHooks::None => "hpmmap.ko",
                        ModuleHooks::Test => "hpmmap.ko and hpmmap_test.ko",
                    }
                ),
            })
        }
    });
    if let Err(e) = r {
        let _ = std::fs::remove_dir_all(&tmp);
        return Err(e);
    }
    // Kbuild builds in place; rename publishes the finished directory at once.
    if std::fs::rename(&tmp, &dir).is_err() {
        let _ = std::fs::remove_dir_all(&tmp);
    }
    Ok(ko)
}

/// The built-in workload is bench's `hpmmap-workload` (the same STREAM, CG, GUPS and fault
/// kernels the benchmark measures), built static like the other guest binaries, so an image
/// and the benchmark run one program.
pub const WORKLOAD_NAME: &str = "hpmmap-workload";

pub struct Workload {
    pub name: &'static str,
    pub binary: PathBuf,
    pub args: Vec<String>,
    pub description: &'static str,
}

/// bench/'s crate, if this workspace has it.
pub fn workload_source(ws: &Path) -> Option<PathBuf> {
    let d = ws.join("bench");
    d.join("Cargo.toml").is_file().then_some(d)
}

pub fn builtin_workload(ws: &Path) -> Result<Workload, PartError> {
    if workload_source(ws).is_none() {
        return Err(PartError::Build {
            what: "the built-in workload".into(),
            cmd: format!("cargo build -p hpmmap-bench --bin {WORKLOAD_NAME}"),
            detail: format!(
                "{} has no bench/Cargo.toml (set HPMMAP_WORKSPACE to an hpmmap checkout, or pass --job)",
                ws.display()
            ),
        });
    }
    Ok(Workload {
        name: WORKLOAD_NAME,
        binary: cargo_static(ws, "hpmmap-bench", WORKLOAD_NAME, None)?,
        // Three 32 MiB arrays, five timed passes: small enough for a 1 GiB pool.
        args: ["stream", "--mem-per-rank", "96M", "--iters", "5"]
            .map(String::from)
            .to_vec(),
        description: "built-in hpmmap-workload (bench/, static Rust): STREAM by default",
    })
}
