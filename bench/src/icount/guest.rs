//! The instruction-count guest: hpmmap-image's job image (Debian's kernel, busybox,
//! hpmmap.ko, hpmmap-run, the rank binary as the job) with an initramfs overlay (this run's
//! init and script, stress-ng), the counting plugin, and one QEMU/TCG boot per
//! configuration through `hpmmap_image::qemu`.

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use hpmmap_image::builder::{build, BuildOptions};
use hpmmap_image::cpio::Archive;

use super::error::IcountError;
use super::machine::{RANK_TEXT_HI, RANK_TEXT_LO, VCPUS};
use super::plan::{IcountConfig, Plan, GUEST_MEM_MIB, POOL_BASE, POOL_SIZE};

/// The plugin's source, built with the host's C compiler into the run's directory.
pub const PLUGIN_SOURCE: &str = include_str!("../../icount/hpmmap-icount.c");

/// The files one run needs, built once.
#[derive(Clone, Debug)]
pub struct Parts {
    pub plugin: PathBuf,
    pub rank_binary: PathBuf,
    pub image: PathBuf,
    pub stress_ng: Option<PathBuf>,
    pub kernel_version: String,
}

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("bench/ has a parent")
        .to_path_buf()
}

/// Builds the plugin (`cc -shared -fPIC`) into `dir`.
pub fn build_plugin(dir: &Path) -> Result<PathBuf, IcountError> {
    let src = dir.join("hpmmap-icount.c");
    let so = dir.join("hpmmap-icount.so");
    std::fs::write(&src, PLUGIN_SOURCE).map_err(|e| IcountError::Io(src.clone(), e))?;
    let out = Command::new(std::env::var_os("CC").unwrap_or_else(|| "cc".into()))
        .args([
            "-shared",
            "-fPIC",
            "-O2",
            "-Wall",
            "-fvisibility=hidden",
            "-o",
        ])
        .arg(&so)
        .arg(&src)
        .output()
        .map_err(|e| IcountError::Build {
            what: "the QEMU plugin".into(),
            why: format!("cannot run cc: {e}"),
        })?;
    if !out.status.success() {
        return Err(IcountError::Build {
            what: "the QEMU plugin".into(),
            why: String::from_utf8_lossy(&out.stderr).into_owned(),
        });
    }
    Ok(so)
}

/// `hpmmap-workload`, static and not position-independent, its code linked at
/// [`RANK_TEXT_LO`] so the plugin can tell the rank's instructions from everyone else's.
pub fn build_rank_binary() -> Result<PathBuf, IcountError> {
    let ws = workspace_root();
    let target = ws.join("target/hpmmap-icount-static");
    let out = Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()))
        .current_dir(&ws)
        .args([
            "build",
            "--quiet",
            "--release",
            "--target",
            "x86_64-unknown-linux-gnu",
            "-p",
            "hpmmap-bench",
            "--bin",
            "hpmmap-workload",
        ])
        .env(
            "RUSTFLAGS",
            format!(
                "-C target-feature=+crt-static -C relocation-model=static -C link-arg=-Wl,--image-base={RANK_TEXT_LO:#x}"
            ),
        )
        .env_remove("CARGO_ENCODED_RUSTFLAGS")
        .env("CARGO_TARGET_DIR", &target)
        .output()
        .map_err(|e| IcountError::Build {
            what: "hpmmap-workload (static)".into(),
            why: e.to_string(),
        })?;
    if !out.status.success() {
        return Err(IcountError::Build {
            what: "hpmmap-workload (static)".into(),
            why: String::from_utf8_lossy(&out.stderr).into_owned(),
        });
    }
    let bin = target.join("x86_64-unknown-linux-gnu/release/hpmmap-workload");
    let data = std::fs::read(&bin).map_err(|e| IcountError::Io(bin.clone(), e))?;
    check_rank_elf(&data).map_err(|why| IcountError::RankBinary {
        path: bin.display().to_string(),
        why,
    })?;
    Ok(bin)
}

/// A static executable (`ET_EXEC`, no interpreter) whose executable segments all lie in
/// the plugin's rank range: otherwise the rank's instructions would be counted as someone
/// else's.
pub fn check_rank_elf(d: &[u8]) -> Result<(), String> {
    let u16_at = |o: usize| d.get(o..o + 2).map(|b| u16::from_le_bytes([b[0], b[1]]));
    let u32_at = |o: usize| {
        d.get(o..o + 4)
            .map(|b| u32::from_le_bytes(b.try_into().unwrap()))
    };
    let u64_at = |o: usize| {
        d.get(o..o + 8)
            .map(|b| u64::from_le_bytes(b.try_into().unwrap()))
    };
    if d.get(..5) != Some(b"\x7fELF\x02") {
        return Err("not a 64-bit ELF file".into());
    }
    if u16_at(16) != Some(2) {
        return Err("not ET_EXEC (position-independent?)".into());
    }
    let (Some(phoff), Some(phent), Some(phnum)) = (u64_at(32), u16_at(54), u16_at(56)) else {
        return Err("truncated ELF header".into());
    };
    let mut exec_segments = 0;
    for i in 0..phnum as usize {
        let o = phoff as usize + i * phent as usize;
        let (Some(kind), Some(flags), Some(vaddr), Some(memsz)) =
            (u32_at(o), u32_at(o + 4), u64_at(o + 16), u64_at(o + 40))
        else {
            return Err("truncated program headers".into());
        };
        match kind {
            3 => return Err("has an interpreter (dynamically linked)".into()),
            1 if flags & 1 != 0 => {
                if vaddr < RANK_TEXT_LO || vaddr + memsz > RANK_TEXT_HI {
                    return Err(format!(
                        "code segment {vaddr:#x}+{memsz:#x} outside {RANK_TEXT_LO:#x}..{RANK_TEXT_HI:#x}"
                    ));
                }
                exec_segments += 1;
            }
            _ => {}
        }
    }
    if exec_segments == 0 {
        return Err("no executable segment".into());
    }
    Ok(())
}

/// The job image with the rank binary as its job (hpmmap-image: kernel, busybox, module,
/// hpmmap-run), built into `dir`.
pub fn build_image(dir: &Path, rank_binary: &Path) -> Result<(PathBuf, String), IcountError> {
    let out = dir.join("image");
    let mut o = BuildOptions::new(&out);
    o.job = Some(rank_binary.display().to_string());
    let m = build(&o).map_err(|e| IcountError::Image(e.to_string()))?;
    if !m.hpmmap {
        return Err(IcountError::Image(format!(
            "the image has no hpmmap (module or hpmmap-run missing): {}",
            m.notes.join("; ")
        )));
    }
    Ok((out, m.kernel_version))
}

pub fn find_stress_ng() -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .map(|d| d.join("stress-ng"))
        .find(|p| p.is_file())
}

/// Builds every part; `dir` keeps them for the run.
pub fn prepare(dir: &Path) -> Result<Parts, IcountError> {
    std::fs::create_dir_all(dir).map_err(|e| IcountError::Io(dir.to_path_buf(), e))?;
    let qemu = hpmmap_image::qemu::qemu_binary().ok_or(IcountError::NoQemu)?;
    let help = Command::new(&qemu)
        .args(["-plugin", "help"])
        .output()
        .map_err(|e| IcountError::NoPlugins(e.to_string()))?;
    if !String::from_utf8_lossy(&help.stdout).contains("file=") {
        return Err(IcountError::NoPlugins(
            String::from_utf8_lossy(&help.stderr).into_owned(),
        ));
    }
    hpmmap_image::progress::step("icount: building the counting plugin");
    let plugin = build_plugin(dir)?;
    hpmmap_image::progress::step("icount: building hpmmap-workload (static, code at 0x10000000)");
    let rank_binary = build_rank_binary()?;
    let (image, kernel_version) = build_image(dir, &rank_binary)?;
    Ok(Parts {
        plugin,
        rank_binary,
        image,
        stress_ng: find_stress_ng(),
        kernel_version,
    })
}

/// The guest's init for one configuration: the images crate's common start (mounts,
/// modules), THP mode, the hugetlb reservation or the hpmmap module, then the script on
/// vCPU 0.
pub fn init_script(abi: &str, plan: &Plan, config: IcountConfig) -> String {
    let mut s = hpmmap_image::init::prelude(abi);
    s += &format!(
        "echo {} > /sys/kernel/mm/transparent_hugepage/enabled\n",
        config.thp()
    );
    // Pages the rank's madvise asks for are not the point in `4k`; defrag as Debian ships.
    if config == IcountConfig::Hugetlb {
        s += &format!(
            "echo {} > /proc/sys/vm/nr_hugepages\n",
            plan.hugetlb_pages()
        );
    }
    if config == IcountConfig::Hpmmap {
        s += &format!(
            "insmod /{} pool_base={POOL_BASE:#x} pool_size={POOL_SIZE:#x} || echo HPMMAP-ICOUNT-ERROR insmod hpmmap.ko failed\n",
            hpmmap_image::init::HPMMAP_KO
        );
    }
    s += "cd /root\ntaskset -c 0 sh /bench/plan.sh\necho HPMMAP-ICOUNT-DONE\nsync\npoweroff -f\nwhile :; do sleep 60; done\n";
    s
}

/// The image's initramfs followed by an overlay (the kernel unpacks concatenated archives
/// in order; later files replace earlier ones).
pub fn initrd(
    parts: &Parts,
    plan: &Plan,
    config: IcountConfig,
    out: &Path,
) -> Result<(), IcountError> {
    let m = hpmmap_image::manifest::Manifest::read(&parts.image)
        .map_err(|e| IcountError::Image(e.to_string()))?;
    let base_path = parts.image.join(&m.initramfs);
    let mut data = std::fs::read(&base_path).map_err(|e| IcountError::Io(base_path, e))?;
    // An archive after a compressed one must start on a 4-byte boundary; zeros between
    // archives are skipped.
    data.resize(data.len().div_ceil(512) * 512, 0);
    let mut a = Archive::new();
    a.file(
        "init",
        0o755,
        init_script(&parts.kernel_version, plan, config).into_bytes(),
    );
    a.dir("bench");
    a.file("bench/plan.sh", 0o644, plan.script(config).into_bytes());
    if let Some(sn) = &parts.stress_ng {
        hpmmap_image::rootfs::add_program(&mut a, "usr/bin/stress-ng", sn)
            .map_err(|e| IcountError::Image(format!("adding stress-ng: {e}")))?;
    }
    data.extend(a.to_newc());
    std::fs::write(out, data).map_err(|e| IcountError::Io(out.to_path_buf(), e))
}

/// QEMU's arguments for one boot.
pub fn qemu_args(
    parts: &Parts,
    config: IcountConfig,
    initrd: &Path,
    console: &Path,
    plugin_log: &Path,
) -> Result<Vec<OsString>, IcountError> {
    let m = hpmmap_image::manifest::Manifest::read(&parts.image)
        .map_err(|e| IcountError::Image(e.to_string()))?;
    let mut v: Vec<OsString> = Vec::new();
    let mut push = |s: String| v.push(s.into());
    for s in [
        "-accel",
        "tcg,thread=single",
        "-icount",
        "shift=0,sleep=off",
        "-machine",
        "q35",
        "-cpu",
        "max",
        "-nodefaults",
        "-no-user-config",
        "-display",
        "none",
        "-no-reboot",
        "-d",
        "plugin",
    ] {
        push(s.into());
    }
    push("-plugin".into());
    push(format!(
        "{},rank_lo={RANK_TEXT_LO:#x},rank_hi={RANK_TEXT_HI:#x}",
        parts.plugin.display()
    ));
    push("-D".into());
    push(plugin_log.display().to_string());
    push("-smp".into());
    push(VCPUS.to_string());
    push("-m".into());
    push(format!("{GUEST_MEM_MIB}M"));
    push("-serial".into());
    push(format!("file:{}", console.display()));
    push("-kernel".into());
    push(parts.image.join(&m.bzimage).display().to_string());
    push("-initrd".into());
    push(initrd.display().to_string());
    push("-append".into());
    push(format!(
        "{} memmap={}G${}G transparent_hugepage={}",
        m.cmdline,
        POOL_SIZE >> 30,
        POOL_BASE >> 30,
        config.thp()
    ));
    Ok(v)
}

/// What one boot left.
pub struct Boot {
    pub console: String,
    pub plugin_log: String,
    pub wall_secs: f64,
}

/// Boots one configuration and runs its script.
pub fn boot(
    parts: &Parts,
    plan: &Plan,
    config: IcountConfig,
    dir: &Path,
    timeout: Duration,
) -> Result<Boot, IcountError> {
    let initrd_path = dir.join(format!("initrd-{}.cpio", config.name()));
    initrd(parts, plan, config, &initrd_path)?;
    let console = dir.join(format!("console-{}.log", config.name()));
    let plugin_log = dir.join(format!("icount-{}.log", config.name()));
    let _ = std::fs::remove_file(&plugin_log);
    let args = qemu_args(parts, config, &initrd_path, &console, &plugin_log)?;
    let f = hpmmap_image::qemu::run(&args, timeout, &console);
    let _ = std::fs::remove_file(&initrd_path);
    let f = f.map_err(|e| IcountError::Qemu(e.to_string()))?;
    let log =
        std::fs::read_to_string(&plugin_log).map_err(|e| IcountError::Io(plugin_log.clone(), e))?;
    Ok(Boot {
        console: f.console,
        plugin_log: log,
        wall_secs: f.elapsed.as_secs_f64(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn elf_check_wants_a_static_exec_in_the_rank_range() {
        let mut e = vec![0u8; 64 + 56];
        e[..5].copy_from_slice(b"\x7fELF\x02");
        e[16] = 2;
        e[32..40].copy_from_slice(&64u64.to_le_bytes());
        e[54] = 56;
        e[56] = 1;
        e[64] = 1; // PT_LOAD
        e[68] = 5; // R X
        e[80..88].copy_from_slice(&(RANK_TEXT_LO + 0x1000).to_le_bytes());
        e[104..112].copy_from_slice(&0x10000u64.to_le_bytes());
        assert_eq!(check_rank_elf(&e), Ok(()));
        let mut low = e.clone();
        low[80..88].copy_from_slice(&0x401000u64.to_le_bytes());
        assert!(check_rank_elf(&low).unwrap_err().contains("outside"));
        let mut pie = e.clone();
        pie[16] = 3;
        assert!(check_rank_elf(&pie).unwrap_err().contains("ET_EXEC"));
    }
}
