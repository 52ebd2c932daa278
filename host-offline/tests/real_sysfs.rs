//! For real, on this machine's kernel: reserve 2 GiB of 1 GiB pages, see them in status,
//! see a running "hpmmap-vmm" hold one (a child process mapping a 1 GiB hugetlb memfd),
//! check release keeps that page, then give everything back and find the host as it was.
//!
//! The 1 GiB hugetlb counters are shared with other engineers' tests on this machine: the
//! test holds an exclusive flock on /tmp/hpmmap-hugetlb.lock throughout and asserts deltas
//! against the counters it found at the start.

mod common;

use std::fs;
use std::io::{BufRead, BufReader, Write};
use std::os::unix::io::AsRawFd;
use std::path::Path;
use std::process::{Child, Command, Output, Stdio};

const BIN: &str = env!("CARGO_BIN_EXE_hpmmap-offline");
const NODE0: &str = "/sys/devices/system/node/node0/hugepages/hugepages-1048576kB";
const LOCK: &str = "/tmp/hpmmap-hugetlb.lock";
/// The round trip's request; a block with a pinned page would hold each try 20 s (the
/// default limit), so the limit is 5 s here.
const RESERVE_2G: &[&str] = &[
    "reserve",
    "--size",
    "2G",
    "--node",
    "0",
    "--keep",
    "1G",
    "--offline-timeout",
    "5",
];

fn counters() -> (u64, u64) {
    let r = |f: &str| -> u64 {
        fs::read_to_string(format!("{NODE0}/{f}"))
            .unwrap()
            .trim()
            .parse()
            .unwrap()
    };
    (r("nr_hugepages"), r("free_hugepages"))
}

fn hpmmap(state: &Path, args: &[&str]) -> Output {
    Command::new(BIN)
        .arg("--state-file")
        .arg(state)
        .args(args)
        .output()
        .unwrap()
}

fn status(state: &Path) -> serde_json::Value {
    let o = hpmmap(state, &["status", "--json"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    serde_json::from_slice(&o.stdout).unwrap()
}

fn show(o: &Output) -> String {
    format!(
        "exit {:?}\nstdout:\n{}\nstderr:\n{}",
        o.status.code(),
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

struct Holder(Child);

impl Holder {
    /// Starts this test binary's `vm_page_holder_child` as a process named hpmmap-vmm.
    fn start() -> Self {
        let mut c = Command::new(std::env::current_exe().unwrap())
            .args([
                "--ignored",
                "--exact",
                "vm_page_holder_child",
                "--nocapture",
                "--test-threads=1",
            ])
            .env("HPMMAP_HOLDER_CHILD", "1")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        // Read the child's output on a thread so that a child stuck before mapping its page
        // fails the test within a minute instead of holding the shared lock forever.
        let out = BufReader::new(c.stdout.take().unwrap());
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in out.lines() {
                let Ok(line) = line else { break };
                if line.contains("HOLDER READY") {
                    let _ = tx.send(());
                }
            }
        });
        if rx.recv_timeout(std::time::Duration::from_secs(60)).is_err() {
            let _ = c.kill();
            panic!(
                "holder child did not map its 1 GiB page within 60 s: {:?}",
                c.wait()
            );
        }
        Holder(c)
    }
    fn pid(&self) -> u32 {
        self.0.id()
    }
    fn stop(mut self) {
        drop(self.0.stdin.take());
        let st = self.0.wait().unwrap();
        assert!(st.success(), "holder child: {st}");
    }
}

impl Drop for Holder {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Not a test of its own: the process `real_reserve_status_release_round_trip` starts to play
/// a running VM. It names itself hpmmap-vmm, maps and touches one 1 GiB hugetlb page, and
/// holds it until its stdin closes.
#[test]
#[ignore = "helper process started by real_reserve_status_release_round_trip"]
fn vm_page_holder_child() {
    if std::env::var_os("HPMMAP_HOLDER_CHILD").is_none() {
        println!("SKIP: helper process only, started by the real-sysfs test");
        return;
    }
    fs::write("/proc/self/comm", "hpmmap-vmm").unwrap();
    // SAFETY: plain syscalls on a descriptor and a mapping this function owns; the mapping is
    // 1 GiB long and written only inside it.
    unsafe {
        let fd = libc::memfd_create(
            c"hpmmap-guest-ram".as_ptr(),
            libc::MFD_HUGETLB | libc::MFD_HUGE_1GB,
        );
        assert!(fd >= 0, "memfd_create: {}", std::io::Error::last_os_error());
        assert_eq!(libc::ftruncate(fd, 1 << 30), 0);
        let p = libc::mmap(
            std::ptr::null_mut(),
            1 << 30,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_SHARED,
            fd,
            0,
        );
        assert_ne!(
            p,
            libc::MAP_FAILED,
            "mmap: {}",
            std::io::Error::last_os_error()
        );
        std::ptr::write_volatile(p as *mut u8, 1);
    }
    println!("HOLDER READY");
    std::io::stdout().flush().unwrap();
    let mut sink = String::new();
    while std::io::stdin().read_line(&mut sink).unwrap_or(0) > 0 {}
}

#[test]
fn real_reserve_status_release_round_trip() {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        hpmmap_testkit::skip(
            hpmmap_testkit::Tier::Root,
            "real_reserve_status_release_round_trip",
            "not root; the real-sysfs test changes /sys",
        );
        return;
    }
    if !Path::new(NODE0).join("nr_hugepages").exists() {
        hpmmap_testkit::skip(
            hpmmap_testkit::Tier::Hugetlb,
            "real_reserve_status_release_round_trip",
            format!("no 1 GiB hugetlb pool on node 0 ({NODE0} missing)"),
        );
        return;
    }
    hpmmap_testkit::ran(
        hpmmap_testkit::Tier::Hugetlb,
        "real_reserve_status_release_round_trip",
    );
    let lock = fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(LOCK)
        .unwrap();
    // SAFETY: flock on a descriptor we own.
    assert_eq!(unsafe { libc::flock(lock.as_raw_fd(), libc::LOCK_EX) }, 0);

    let dir = common::Scratch::new("real");
    let state = dir.path().join("offline.json");
    let start = status(&state);
    let others: Vec<_> = start["vm_holders"].as_array().unwrap().to_vec();
    if !others.is_empty() {
        hpmmap_testkit::not_applicable(
            hpmmap_testkit::Tier::Hugetlb,
            "real_reserve_status_release_round_trip",
            format!("another hpmmap-vmm maps 1 GiB pages ({others:?}); deltas would be ambiguous"),
        );
        return;
    }
    let (nr0, free0) = counters();
    // Free pages already in the pool (boot-time hugepages=, a leftover) are adopted first:
    // the request asks for them plus 2, so that the pool grows by 2 whatever was there.
    let resv0 = start["global_1g"]["resv"].as_u64().unwrap_or(0);
    let a0 = free0.saturating_sub(resv0);
    let size = format!("{}G", a0 + 2);
    let mut reserve_args = RESERVE_2G.to_vec();
    reserve_args[2] = &size;

    let o = hpmmap(&state, &reserve_args);
    if o.status.code() == Some(3) {
        // The host has no 2 free GiB ranges it can make (memory in use everywhere, blocks
        // that refuse to go offline): exit 3 with the reasons, and nothing kept or offline.
        let end = status(&state);
        assert_eq!(counters(), (nr0, free0), "{}", show(&o));
        assert_eq!(
            end["nodes"][0]["blocks"]["offline"],
            start["nodes"][0]["blocks"]["offline"],
            "{}",
            show(&o)
        );
        assert!(String::from_utf8_lossy(&o.stdout).contains("could not get"));
        assert!(!state.exists(), "a refused reserve kept its adopted pages");
        hpmmap_testkit::not_applicable(
            hpmmap_testkit::Tier::Hugetlb,
            "real_reserve_status_release_round_trip (rest of the round trip)",
            format!(
                "this host could not give 2 GiB of 1 GiB pages; the refusal left it unchanged: {}",
                show(&o)
            ),
        );
        return;
    }
    assert_eq!(o.status.code(), Some(0), "{}", show(&o));
    assert_eq!(counters(), (nr0 + 2, free0 + 2), "{}", show(&o));
    let s = status(&state);
    assert_eq!(s["nodes"][0]["reserved_by_hpmmap"], a0 + 2);
    assert_eq!(s["nodes"][0]["adopted_by_hpmmap"], a0);
    assert_eq!(s["nodes"][0]["pages_1g"]["nr"], nr0 + 2);
    assert_eq!(s["state"]["nodes"]["0"]["reserved"], 2);
    assert_eq!(
        String::from_utf8_lossy(&o.stdout).contains("already in the pool adopted"),
        a0 > 0,
        "{}",
        show(&o)
    );
    println!("reserve: {}", String::from_utf8_lossy(&o.stdout).trim());

    // Idempotent: the same request again changes nothing.
    let o = hpmmap(&state, &reserve_args);
    assert_eq!(o.status.code(), Some(0), "{}", show(&o));
    assert_eq!(counters(), (nr0 + 2, free0 + 2));

    // A running "VM" maps one of the pages: status names its pid.
    let holder = Holder::start();
    let s = status(&state);
    let held = s["nodes"][0]["held_by"].as_array().unwrap();
    assert_eq!(held.len(), 1, "{s}");
    assert_eq!(held[0]["pid"], holder.pid());
    assert_eq!(held[0]["pages"], 1);
    assert_eq!(counters(), (nr0 + 2, free0 + 1));
    let text = hpmmap(&state, &["status"]);
    println!(
        "status with the holder:\n{}",
        String::from_utf8_lossy(&text.stdout)
    );
    let o = hpmmap(&state, &["release", "--all"]);
    if a0 == 0 {
        // Only the 2 added pages are held, and the VM maps one: that one is kept.
        assert_eq!(o.status.code(), Some(3), "{}", show(&o));
        assert!(
            String::from_utf8_lossy(&o.stdout).contains(&format!("pid {}", holder.pid())),
            "{}",
            show(&o)
        );
        assert_eq!(counters(), (nr0 + 1, free0), "release took the VM's page");
        assert!(state.exists());
        holder.stop();
        let o = hpmmap(&state, &["release", "--all"]);
        assert_eq!(o.status.code(), Some(0), "{}", show(&o));
    } else {
        // The VM's page counts against the adopted ones (which page it is cannot be told):
        // both added pages go back, the adopted ones stay in the pool.
        assert_eq!(o.status.code(), Some(0), "{}", show(&o));
        assert_eq!(counters(), (nr0, free0 - 1), "{}", show(&o));
        holder.stop();
    }
    assert_eq!(counters(), (nr0, free0));
    assert!(!state.exists(), "state file left after release --all");
    let end = status(&state);
    assert_eq!(end["nodes"][0]["pages_1g"], start["nodes"][0]["pages_1g"]);
    assert_eq!(end["global_1g"], start["global_1g"]);
    assert_eq!(end["nodes"][0]["reserved_by_hpmmap"], 0);
    assert!(end["state"].is_null());
    assert_eq!(
        end["nodes"][0]["blocks"]["offline"],
        start["nodes"][0]["blocks"]["offline"]
    );
}

/// The frame behind a virtual address of this process (root sees PFNs in pagemap).
fn pfn_of(addr: usize) -> Option<u64> {
    use std::os::unix::fs::FileExt;
    let f = fs::File::open("/proc/self/pagemap").ok()?;
    let mut word = [0u8; 8];
    f.read_exact_at(&mut word, (addr / 4096 * 8) as u64).ok()?;
    let e = u64::from_ne_bytes(word);
    (e >> 63 == 1 && e & ((1 << 55) - 1) != 0).then_some(e & ((1 << 55) - 1))
}

/// For real: a page held by a pipe (vmsplice takes a reference, so migration fails) keeps
/// its memory block from ever going offline; the kernel retries until a signal. The tool's
/// bounded offline gives up at its limit and the kernel leaves the block online.
#[test]
fn offline_of_a_block_with_a_pinned_page_is_given_up_at_the_limit() {
    use hpmmap_offline::{blocks, host::Host};
    use std::time::{Duration, Instant};
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        hpmmap_testkit::skip(
            hpmmap_testkit::Tier::Root,
            "offlining a real memory block",
            "not root; the test takes a real memory block offline",
        );
        return;
    }
    let host = Host::new("/sys", "/proc")
        .quiet(true)
        .with_offline_limit(Duration::from_secs(3));
    let Some(bs) = blocks::block_size(&host) else {
        hpmmap_testkit::not_applicable(
            hpmmap_testkit::Tier::Root,
            "offlining a real memory block",
            "no memory-hotplug sysfs on this kernel",
        );
        return;
    };
    let lock = fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(LOCK)
        .unwrap();
    // SAFETY: flock on a descriptor we own.
    assert_eq!(unsafe { libc::flock(lock.as_raw_fd(), libc::LOCK_EX) }, 0);

    const LEN: usize = 64 << 20;
    // SAFETY: an anonymous private mapping this test owns and unmaps at the end.
    let base = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            LEN,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
            -1,
            0,
        )
    };
    assert_ne!(base, libc::MAP_FAILED);
    let mut tried = std::collections::BTreeSet::new();
    let mut busy = Vec::new();
    for off in (0..LEN).step_by(1 << 20) {
        let addr = base as usize + off;
        // SAFETY: inside the mapping.
        unsafe { std::ptr::write_volatile(addr as *mut u8, 1) };
        let Some(pfn) = pfn_of(addr) else { continue };
        let id = pfn * 4096 / bs;
        let Ok(b) = blocks::read_block(&host, id) else {
            continue;
        };
        if !b.online() || !b.removable || b.zone() == Some("none") || !tried.insert(id) {
            continue;
        }
        let mut fds = [0; 2];
        // SAFETY: pipe fills two descriptors; vmsplice reads one page of our mapping.
        let spliced = unsafe {
            assert_eq!(libc::pipe(fds.as_mut_ptr()), 0);
            let iov = libc::iovec {
                iov_base: addr as *mut libc::c_void,
                iov_len: 4096,
            };
            libc::vmsplice(fds[1], &iov, 1, 0)
        };
        assert_eq!(spliced, 4096, "{}", std::io::Error::last_os_error());
        let t = Instant::now();
        let r = blocks::offline(&host, id);
        let took = t.elapsed();
        let after = blocks::read_block(&host, id).unwrap();
        // SAFETY: closing the pipe releases the page.
        unsafe {
            libc::close(fds[0]);
            libc::close(fds[1]);
        }
        match r {
            Err(e) if e.timed_out() => {
                println!("memory{id} (pfn {pfn:#x} pinned): {e} after {took:?}");
                assert!(
                    took >= Duration::from_secs(3) && took < Duration::from_secs(20),
                    "{took:?}"
                );
                assert_eq!(
                    after.state, "online",
                    "the kernel must keep the block online"
                );
                // SAFETY: unmapping what this test mapped.
                unsafe { libc::munmap(base, LEN) };
                return;
            }
            Err(e) if e.raw_os_error() == Some(libc::EBUSY) => busy.push(id),
            Ok(()) => {
                let back = blocks::set_state(&host, id, "online");
                panic!("memory{id} went offline with a pinned page in it (brought back: {back:?})");
            }
            Err(e) => panic!("memory{id}: {e}"),
        }
        if tried.len() >= 6 {
            break;
        }
    }
    // SAFETY: unmapping what this test mapped.
    unsafe { libc::munmap(base, LEN) };
    hpmmap_testkit::not_applicable(
        hpmmap_testkit::Tier::Root,
        "offlining a real memory block",
        format!(
            "every block tried refused at once (EBUSY, unmovable pages): {busy:?}; none showed \
             the endless retry"
        ),
    );
}
