//! What a scenario may add to the lab's L1 beyond the machine: words for its kernel command
//! line (`--append`), more modules of its kernel (`--modules`), the hpmmap guest module
//! built for its kernel (`--hpmmap-ko`), and a copy of its own kernel for an L2 that boots
//! Debian's kernel directly (`--kernel-at`). With these the shell labs that used to boot
//! QEMU themselves (the guest module suite, the device-dax lab, the VF end-to-end run) are
//! scenarios of the one lab.

use super::LabError;
use crate::cpio::Archive;
use crate::debs::DebCache;
use crate::kernel::{headers_debs, unpack_headers, Kernel};
use crate::kmods::ModError;
use crate::progress::step;
use crate::rootfs::RootfsError;
use crate::workspace;
use std::path::Path;

/// Where `--hpmmap-ko` puts the modules in L1 (the guest suite's place since it began).
pub const HPMMAP_KO_DIR: &str = "lib/hpmmap";

/// Words the lab writes itself: a second value would fight the lab's own (the serial
/// console the run's status is read from, the panic that ends a crashed L1).
const LAB_OWNED: [&str; 3] = ["console", "panic", "init"];

/// Checks one `--append` value: kernel command line words, none of them the lab's own.
pub fn check_append(words: &str) -> Result<(), LabError> {
    let bad = |why: String| Err(LabError::Append(words.to_string(), why));
    if words.trim().is_empty() {
        return bad("empty".into());
    }
    if words.chars().any(|c| c.is_control()) {
        return bad("control characters (a newline?) in kernel arguments".into());
    }
    for w in words.split_whitespace() {
        let key = w.split('=').next().unwrap_or(w);
        if LAB_OWNED.contains(&key) {
            return bad(format!("{key}= is set by the lab itself"));
        }
    }
    Ok(())
}

/// Checks one `--modules` name (the kernel decides later whether it has it).
pub fn check_module(name: &str) -> Result<(), LabError> {
    let ok = !name.is_empty()
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-');
    if ok {
        Ok(())
    } else {
        Err(LabError::Module(
            name.to_string(),
            "not a module name (letters, digits, - and _)".into(),
        ))
    }
}

/// A module the kernel lacks is the caller's mistake (exit 2), not a broken lab.
pub fn module_error(e: RootfsError) -> LabError {
    match e {
        RootfsError::Mod(ModError::Missing { name, dir }) => LabError::Module(
            name,
            format!("not a module of L1's kernel ({})", dir.display()),
        ),
        e => e.into(),
    }
}

/// Builds guest-kmod/module against L1's kernel headers with its test hooks (hpmmap.ko and
/// hpmmap_test.ko, through the image builder's `workspace::build_module`, cached by ABI and
/// source) and places both under /lib/hpmmap, not loaded: the scenario loads them with the
/// parameters it tests.
pub fn add_hpmmap_ko(
    a: &mut Archive,
    cache: &DebCache,
    kernel: &Kernel,
    ws: &Path,
) -> Result<(), LabError> {
    let src = workspace::module_source(ws).ok_or_else(|| {
        LabError::HpmmapKo(format!(
            "{} is missing",
            ws.join("guest-kmod/module/Makefile").display()
        ))
    })?;
    let debs = headers_debs(cache, &kernel.abi, &kernel.image.version)?;
    let headers = unpack_headers(cache, &kernel.abi, debs)?;
    let ko = workspace::build_module_with(
        &src,
        &headers.kdir,
        &kernel.abi,
        cache.root(),
        workspace::ModuleHooks::Test,
    )?;
    let dir = ko.parent().expect("a built module lies in a directory");
    for name in ["hpmmap.ko", "hpmmap_test.ko"] {
        let p = dir.join(name);
        let data = std::fs::read(&p).map_err(|e| LabError::Io(p.clone(), e))?;
        a.file(&format!("{HPMMAP_KO_DIR}/{name}"), 0o644, data);
    }
    step(format!(
        "lab: hpmmap.ko and hpmmap_test.ko for {} in /{HPMMAP_KO_DIR}",
        kernel.abi
    ));
    Ok(())
}

/// Places L1's bzImage at `guest` (an L2 of the same Debian kernel).
pub fn add_kernel_copy(a: &mut Archive, kernel: &Kernel, guest: &str) -> Result<(), LabError> {
    let bz = kernel.bzimage();
    let data = std::fs::read(&bz).map_err(|e| LabError::Io(bz.clone(), e))?;
    a.file(guest.trim_start_matches('/'), 0o644, data);
    Ok(())
}

/// Checks `--kernel-at`: an absolute path below /, without `..`.
pub fn check_kernel_at(guest: &str) -> Result<(), LabError> {
    if !guest.starts_with('/') || guest == "/" || guest.split('/').any(|c| c == "..") {
        return Err(LabError::KernelAt(
            guest.to_string(),
            "must be absolute, below /, without ..".into(),
        ));
    }
    Ok(())
}

/// L1's kernel command line: the lab's words, then the scenario's.
pub fn command_line(lab: &str, append: &[String]) -> String {
    let mut s = lab.to_string();
    for w in append {
        s.push(' ');
        s.push_str(w.trim());
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn append_takes_kernel_words_and_refuses_the_labs_own() {
        check_append("memmap=2G$0x100000000 hpmmap_pool=2G@0x100000000").unwrap();
        check_append("movablecore=5G").unwrap();
        for (bad, why) in [
            ("", "empty"),
            ("  ", "empty"),
            ("a=1\nb=2", "control characters"),
            ("console=tty0", "console= is set by the lab"),
            ("quiet panic=10", "panic= is set by the lab"),
            ("init=/bin/sh", "init= is set by the lab"),
        ] {
            let e = check_append(bad).unwrap_err().to_string();
            assert!(e.starts_with(&format!("--append {bad}: ")), "{e}");
            assert!(e.contains(why), "{bad:?}: {e}");
            assert!(check_append(bad).unwrap_err().is_input());
        }
        // panic_on_warn is not panic=
        check_append("panic_on_warn=1 oops=panic").unwrap();
    }

    #[test]
    fn module_names_and_kernel_paths() {
        check_module("loop").unwrap();
        check_module("kvm-amd").unwrap();
        for bad in ["", "../x", "a b", "x.ko/"] {
            let e = check_module(bad).unwrap_err();
            assert!(e.is_input(), "{bad:?}");
            assert!(
                e.to_string().starts_with(&format!("--modules {bad}:")),
                "{e}"
            );
        }
        check_kernel_at("/lab/bzImage").unwrap();
        for bad in ["lab/bzImage", "/", "/lab/../x"] {
            let e = check_kernel_at(bad).unwrap_err();
            assert!(e.is_input());
            assert!(
                e.to_string().starts_with(&format!("--kernel-at {bad}:")),
                "{e}"
            );
        }
    }

    #[test]
    fn a_missing_module_is_the_callers_mistake() {
        let e = module_error(RootfsError::Mod(ModError::Missing {
            name: "nosuch".into(),
            dir: "/k/lib/modules/6.1.0-57-amd64".into(),
        }));
        assert!(e.is_input());
        assert!(e
            .to_string()
            .starts_with("--modules nosuch: not a module of L1's kernel"));
    }

    #[test]
    fn appended_words_follow_the_labs() {
        let line = command_line(
            "console=ttyS0 quiet",
            &["memmap=2G$4G".into(), " movablecore=5G ".into()],
        );
        assert_eq!(line, "console=ttyS0 quiet memmap=2G$4G movablecore=5G");
        assert_eq!(command_line("console=ttyS0", &[]), "console=ttyS0");
    }
}
