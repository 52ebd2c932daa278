//! Job images, built for real from Debian's packages and booted under QEMU/TCG
//! `-machine microvm` (no KVM): exit statuses come back, manifests match, builds are
//! reproducible, and every bad input is a clear error that leaves nothing behind.

mod common;

use hpmmap_image::debs::DebCache;
use hpmmap_image::kernel::default_abi;
use hpmmap_image::manifest::Manifest;
use hpmmap_image::qemu::{boot_microvm, qemu_binary};
use hpmmap_testkit::Tier;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

const BIN: &str = env!("CARGO_BIN_EXE_hpmmap-image");

fn scratch(tag: &str) -> PathBuf {
    let base = std::env::var_os("CARGO_TARGET_TMPDIR")
        .map(PathBuf::from)
        .unwrap_or_else(std::env::temp_dir);
    let d = base.join(format!("image-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// A qemu-tier skip (with the reason) when Debian's kernel cannot be had from apt or the cache.
fn kernel_available(test: &str) -> bool {
    let cache = DebCache::from_env();
    let ready = match default_abi(&cache) {
        Ok(abi) if cache.knows(&format!("linux-image-{abi}")) => Ok(()),
        Ok(abi) => Err(format!(
            "linux-image-{abi} is neither in apt nor in {}",
            cache.debs_dir().display()
        )),
        Err(e) => Err(e.to_string()),
    };
    hpmmap_testkit::enter(Tier::Qemu, test, ready)
}

fn qemu_available(test: &str) -> bool {
    let ready = match qemu_binary() {
        Some(_) => Ok(()),
        None => Err("qemu-system-x86_64 is not installed".to_string()),
    };
    hpmmap_testkit::enter(Tier::Qemu, test, ready)
}

fn build(out: &Path, args: &[&str]) -> Output {
    let o = Command::new(BIN)
        .args(["build", "--out"])
        .arg(out)
        .args(args)
        .output()
        .unwrap();
    eprintln!("{}", String::from_utf8_lossy(&o.stderr));
    o
}

fn build_ok(out: &Path, args: &[&str]) -> Manifest {
    let o = build(out, args);
    assert!(
        o.status.success(),
        "build {args:?} failed: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    Manifest::read(out).unwrap()
}

fn boot(image: &Path, extra: &str) -> hpmmap_image::qemu::JobRun {
    // 2 GiB: room for a 1 GiB memmap= pool at 1 GiB where a test asks for one.
    let r = boot_microvm(
        image,
        extra,
        2048,
        Duration::from_secs(180),
        &image.with_extension("run"),
    )
    .unwrap_or_else(|e| panic!("booting {}: {e}", image.display()));
    eprintln!(
        "booted {} in {:.1} s (QEMU/TCG microvm)",
        image.display(),
        r.elapsed.as_secs_f64()
    );
    r
}

#[test]
fn job_exit_status_comes_back_zero_and_nonzero() {
    if !kernel_available("job_exit_status_comes_back_zero_and_nonzero")
        || !qemu_available("job_exit_status_comes_back_zero_and_nonzero")
    {
        return;
    }
    let d = scratch("status");
    // busybox-static is a static ELF: copied as is.
    let fail = d.join("fail");
    let m = build_ok(
        &fail,
        &[
            "--no-hpmmap",
            "--job",
            "/bin/busybox sh -c 'echo job says hi; exit 3'",
        ],
    );
    assert!(!m.hpmmap);
    let r = boot(&fail, "");
    assert!(r.console.contains("job says hi"), "{}", r.console);
    assert_eq!(r.status, 3, "{}", r.console);
    // hpmmap.pv= naming no PV device (microvm has none): the init checks MAGIC, writes
    // nothing there, and the status still comes back on the console.
    let r = boot(&fail, "hpmmap.pv=0xfeb00000");
    assert!(
        r.console.contains("no hpmmap PV device at 0xfeb00000"),
        "{}",
        r.console
    );
    assert_eq!(r.status, 3, "{}", r.console);

    // /bin/true is dynamic: it runs only if its loader and libc came along.
    let dynamic = d.join("dynamic");
    build_ok(&dynamic, &["--no-hpmmap", "--job", "true"]);
    let r = boot(&dynamic, "");
    assert_eq!(r.status, 0, "{}", r.console);
    let r2 = {
        let img = d.join("dynfalse");
        build_ok(&img, &["--no-hpmmap", "--job", "false"]);
        boot(&img, "")
    };
    assert_eq!(r2.status, 1, "{}", r2.console);
    std::fs::remove_dir_all(&d).unwrap();
}

#[test]
fn default_image_runs_the_builtin_workload_with_ranks() {
    if !kernel_available("default_image_runs_the_builtin_workload_with_ranks")
        || !qemu_available("default_image_runs_the_builtin_workload_with_ranks")
    {
        return;
    }
    let d = scratch("default");
    let img = d.join("img");
    let m = build_ok(
        &img,
        &[
            "--no-hpmmap",
            "--ranks",
            "2",
            "--job",
            "hpmmap-workload stream --mem-per-rank 12M --iters 2",
        ],
    );
    assert_eq!(m.ranks, 2);
    let r = boot(&img, "");
    assert_eq!(r.status, 0, "{}", r.console);
    // One verified STREAM result per rank, with the arguments the job line gave.
    let results = r
        .console
        .lines()
        .filter(|l| {
            l.contains("HPMMAP-RESULT v=1 workload=stream")
                && l.contains(" mem_per_rank=12582912 iters=2 ")
                && l.contains(" valid=1 ")
        })
        .count();
    assert_eq!(results, 2, "{}", r.console);
    assert!(
        r.console.contains("hpmmap-init: platform:"),
        "{}",
        r.console
    );
    std::fs::remove_dir_all(&d).unwrap();
}

/// The default build (hpmmap on): when the workspace has the module and hpmmap-run they
/// are built against the image kernel's headers, and with a memmap= pool the job runs
/// through hpmmap-run.
#[test]
fn hpmmap_image_loads_the_module_with_a_memmap_pool() {
    if !kernel_available("hpmmap_image_loads_the_module_with_a_memmap_pool")
        || !qemu_available("hpmmap_image_loads_the_module_with_a_memmap_pool")
    {
        return;
    }
    let ws = hpmmap_image::workspace::root();
    let d = scratch("hpmmap");
    let img = d.join("img");
    let m = build_ok(
        &img,
        &[
            "--job",
            "hpmmap-workload stream --mem-per-rank 24M --iters 2",
        ],
    );
    let have = hpmmap_image::workspace::module_source(&ws).is_some()
        && hpmmap_image::workspace::hpmmap_run_source(&ws).is_some();
    assert_eq!(m.hpmmap, have, "{:?}", m.notes);
    assert!(
        m.packages.keys().any(|p| p.starts_with("linux-headers-")),
        "{:?}",
        m.packages
    );
    if !have {
        let why = format!(
            "guest-kmod/module or guest-kmod/hpmmap-run missing; image built without hpmmap: {:?}",
            m.notes
        );
        hpmmap_testkit::skip(Tier::Tools, "image with the hpmmap module", why);
        return;
    }
    let r = boot(
        &img,
        "memmap=1G$0x40000000 hpmmap_pool=0x40000000@0x40000000",
    );
    assert!(r.console.contains("job runs hpmmap"), "{}", r.console);
    assert!(r.console.contains("hpmmap counters:"), "{}", r.console);
    assert_eq!(r.status, 0, "{}", r.console);
    // Without a pool the init says so and runs the job directly.
    let r = boot(&img, "");
    assert!(
        r.console.contains("running the job without hpmmap"),
        "{}",
        r.console
    );
    assert_eq!(r.status, 0, "{}", r.console);
    std::fs::remove_dir_all(&d).unwrap();
}

#[test]
fn manifest_hashes_match_and_builds_are_reproducible() {
    if !kernel_available("manifest_hashes_match_and_builds_are_reproducible") {
        return;
    }
    let d = scratch("repro");
    let a = build_ok(&d.join("a"), &["--no-hpmmap", "--job", "true"]);
    let b = build_ok(&d.join("b"), &["--no-hpmmap", "--job", "true"]);
    assert!(
        a.verify(&d.join("a")).is_empty(),
        "hash mismatch: {:?}",
        a.verify(&d.join("a"))
    );
    assert_eq!(a.files.len(), 3);
    for f in ["vmlinux", "bzImage", "initramfs.cpio.gz"] {
        assert!(a.files.contains_key(f), "{f} missing from {:?}", a.files);
    }
    assert_eq!(a.files, b.files, "two builds differ");
    // Every image carries the task agent (served steps under Slurm, vmm/task).
    assert_eq!(a.agent.as_deref(), Some("/bin/hpmmap-agent"));
    assert_eq!(
        std::fs::read(d.join("a/manifest.json")).unwrap(),
        std::fs::read(d.join("b/manifest.json")).unwrap()
    );
    // vmlinux is the PVH-bootable ELF.
    let v = std::fs::read(d.join("a/vmlinux")).unwrap();
    assert!(hpmmap_image::kernel::pvh_entry(&v).is_some());
    // Rebuilding over a previous image replaces it; a tampered file is detected.
    build_ok(&d.join("a"), &["--no-hpmmap", "--job", "true"]);
    std::fs::write(d.join("a/bzImage"), b"tampered").unwrap();
    assert_eq!(a.verify(&d.join("a")), ["bzImage"]);
    std::fs::remove_dir_all(&d).unwrap();
}

/// `--ib` (issue 18): the image carries a ConnectX VF's InfiniBand kernel side with its
/// dependencies in load order, and the init runs the InfiniBand check.
#[test]
fn ib_image_carries_the_infiniband_kernel_side() {
    if !kernel_available("ib_image_carries_the_infiniband_kernel_side") {
        return;
    }
    let d = scratch("ib");
    let m = build_ok(&d.join("img"), &["--no-hpmmap", "--job", "true", "--ib"]);
    let pos = |name: &str| {
        m.modules
            .iter()
            .position(|x| x == name)
            .unwrap_or_else(|| panic!("{name} not in {:?}", m.modules))
    };
    for name in [
        "mlx5_core",
        "mlx5_ib",
        "ib_core",
        "ib_ipoib",
        "ib_umad",
        "ib_uverbs",
    ] {
        pos(name);
    }
    assert!(
        pos("mlx5_core") < pos("mlx5_ib"),
        "load order {:?}",
        m.modules
    );
    assert!(
        pos("ib_core") < pos("ib_ipoib"),
        "load order {:?}",
        m.modules
    );
    let plain = build_ok(&d.join("plain"), &["--no-hpmmap", "--job", "true"]);
    assert!(
        !plain.modules.iter().any(|x| x == "mlx5_ib"),
        "{:?}",
        plain.modules
    );
    std::fs::remove_dir_all(&d).unwrap();
}

/// Each bad input: exit 2, one line naming the flag/value/path, and no output written.
fn refused(out: &Path, args: &[&str], envs: &[(&str, &str)], expect: &[&str]) {
    let o = Command::new(BIN)
        .args(["build", "--quiet", "--out"])
        .arg(out)
        .args(args)
        .envs(envs.iter().copied())
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(2), "{args:?}: {err}");
    let line = err
        .lines()
        .find(|l| l.starts_with("hpmmap-image:"))
        .unwrap_or("");
    for e in expect {
        assert!(line.contains(e), "{args:?}: expected {e:?} in {err}");
    }
    common::assert_nothing_left(out, &format!("{args:?}"));
}

#[test]
fn bad_inputs_are_clear_errors_and_leave_nothing() {
    let d = scratch("bad");
    let out = d.join("img");
    refused(&out, &["--ranks", "0"], &[], &["--ranks 0"]);
    refused(
        &out,
        &["--kernel-version", "banana"],
        &[],
        &["--kernel-version banana"],
    );
    refused(
        &out,
        &["--job", "hpmmap-no-such-program"],
        &[],
        &["--job", "hpmmap-no-such-program", "not found"],
    );
    refused(
        &out,
        &["--job", "'unbalanced"],
        &[],
        &["--job", "unbalanced quote"],
    );
    refused(
        &out,
        &["--job", "/etc/passwd"],
        &[],
        &["/etc/passwd", "neither an ELF"],
    );
    refused(
        &out,
        &["--job", "/nonexistent/prog"],
        &[],
        &["/nonexistent/prog"],
    );

    // A dynamic job whose library is gone: refused with the library's name.
    let lib = d.join("libhpmmapgone.so");
    let prog = d.join("needs-gone-lib");
    let src = d.join("p.c");
    std::fs::write(&src, "int gone(void); int main(void){return gone();}").unwrap();
    std::fs::write(d.join("l.c"), "int gone(void){return 0;}").unwrap();
    let cc = Command::new("sh")
        .arg("-c")
        .arg(format!(
            "gcc -shared -fPIC -o {lib} {dir}/l.c && gcc -o {prog} {src} -L{dir} -lhpmmapgone && rm {lib} {dir}/l.c {src}",
            lib = lib.display(),
            dir = d.display(),
            prog = prog.display(),
            src = src.display()
        ))
        .status();
    if matches!(cc, Ok(s) if s.success()) {
        refused(
            &out,
            &["--job", prog.to_str().unwrap()],
            &[],
            &["libhpmmapgone.so", "cannot be resolved"],
        );
        std::fs::remove_file(&prog).unwrap();
    } else {
        hpmmap_testkit::skip(
            Tier::Tools,
            "missing-library job refused",
            "gcc cannot build the missing-library job",
        );
    }

    // An output directory with other content is refused and left as it was.
    let busy = d.join("busy");
    std::fs::create_dir_all(&busy).unwrap();
    std::fs::write(busy.join("thesis.tex"), "keep me").unwrap();
    let o = Command::new(BIN)
        .args(["build", "--quiet", "--out"])
        .arg(&busy)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(2), "{err}");
    assert!(
        err.contains("--out") && err.contains("other content (thesis.tex)"),
        "{err}"
    );
    assert_eq!(
        std::fs::read_to_string(busy.join("thesis.tex")).unwrap(),
        "keep me"
    );
    std::fs::remove_dir_all(&busy).unwrap();

    if kernel_available("bad_inputs_are_clear_errors_and_leave_nothing") {
        refused(
            &out,
            &["--kernel-version", "6.1.0-999"],
            &[],
            &["--kernel-version 6.1.0-999-amd64", "unknown kernel version"],
        );

        // No network and an empty cache: apt-get download fails; the error names the
        // package and the cache. The apt config sends every download to a closed port.
        let empty_cache = d.join("empty-cache");
        let apt_conf = d.join("apt-offline.conf");
        std::fs::write(
            &apt_conf,
            "Acquire::http::Proxy \"http://127.0.0.1:9\";\nAcquire::https::Proxy \"http://127.0.0.1:9\";\nAcquire::Retries \"0\";\n",
        )
        .unwrap();
        let cache_s = empty_cache.display().to_string();
        refused(
            &out,
            &["--no-hpmmap", "--job", "true"],
            &[
                ("HPMMAP_CACHE", &cache_s),
                ("APT_CONFIG", apt_conf.to_str().unwrap()),
            ],
            &[
                "apt-get download failed",
                "linux-image-",
                &format!("{cache_s}/debs"),
            ],
        );

        // Headers missing: the image package is cached but neither apt (no lists) nor
        // the cache has its headers.
        let real = DebCache::from_env();
        let abi = default_abi(&real).unwrap();
        let image = real.get(&format!("linux-image-{abi}"), None).unwrap();
        let only_image = d.join("image-only-cache");
        std::fs::create_dir_all(only_image.join("debs")).unwrap();
        std::fs::hard_link(
            &image.path,
            only_image
                .join("debs")
                .join(image.path.file_name().unwrap()),
        )
        .or_else(|_| {
            std::fs::copy(
                &image.path,
                only_image
                    .join("debs")
                    .join(image.path.file_name().unwrap()),
            )
            .map(|_| ())
        })
        .unwrap();
        let no_lists = d.join("no-lists");
        std::fs::create_dir_all(no_lists.join("partial")).unwrap();
        let apt_nolists = d.join("apt-nolists.conf");
        std::fs::write(
            &apt_nolists,
            format!(
                "Dir::State::Lists \"{}\";\nDir::Cache::pkgcache \"\";\nDir::Cache::srcpkgcache \"\";\nAcquire::http::Proxy \"http://127.0.0.1:9\";\n",
                no_lists.display()
            ),
        )
        .unwrap();
        let c = only_image.display().to_string();
        refused(
            &out,
            &["--kernel-version", &abi, "--job", "true"],
            &[
                ("HPMMAP_CACHE", &c),
                ("APT_CONFIG", apt_nolists.to_str().unwrap()),
            ],
            &[
                "headers missing",
                &format!("linux-headers-{abi}"),
                "--no-hpmmap",
            ],
        );
    }
    std::fs::remove_dir_all(&d).unwrap();
}
