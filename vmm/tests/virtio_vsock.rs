//! virtio-vsock (`--vsock PATH`, issue 16.4). Bad paths are refused before anything runs
//! (no KVM needed); on the host's KVM the VMM serves PATH under the default `--seccomp kill`
//! and removes it when it ends; in the nested lab a Debian guest's socat echoes 1 MiB back
//! through a host client's `CONNECT 1234`, reaches a host listener at `PATH_5000` by
//! itself, and a CONNECT to a port nobody listens on is closed, not left hanging. Lab
//! figures are emulation figures (QEMU/TCG), never hardware.

mod common;

use common::lab::*;
use common::*;
use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const T: Duration = Duration::from_secs(60);

fn refused(args: &[&str], wants: &[&str]) {
    let r = run_vmm(args, T);
    assert_eq!(r.code, Some(2), "stderr: {}", r.stderr);
    let lines: Vec<&str> = r.stderr.lines().collect();
    assert_eq!(lines.len(), 1, "one line: {:?}", r.stderr);
    for w in wants {
        assert!(lines[0].contains(w), "{w:?} not in {:?}", lines[0]);
    }
}

#[test]
fn unusable_vsock_paths_are_refused_with_one_line() {
    let dir = TempDir::new("vsock-bad");
    let k = ready_payload(&dir);
    let taken = dir.write("taken.sock", b"not a socket");
    let taken_s = taken.to_str().unwrap();
    refused(
        &["--kernel", &k, "--mem", "64M", "--vsock", taken_s],
        &["--vsock", "taken.sock", "exists"],
    );
    assert_eq!(std::fs::read(&taken).unwrap(), b"not a socket", "untouched");
    let missing = dir.path("nodir/v.sock");
    refused(
        &[
            "--kernel",
            &k,
            "--mem",
            "64M",
            "--vsock",
            missing.to_str().unwrap(),
        ],
        &["--vsock", "does not exist"],
    );
    let long = dir.path(&"x".repeat(120));
    refused(
        &[
            "--kernel",
            &k,
            "--mem",
            "64M",
            "--vsock",
            long.to_str().unwrap(),
        ],
        &["--vsock", "too long"],
    );
    let left: Vec<_> = std::fs::read_dir(&dir.0)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(left.len(), 2, "nothing left behind: {left:?}");
}

/// The VMM on this host's KVM with a payload that has no vsock driver: PATH appears, a
/// client's CONNECT is closed when the guest does not answer (the device's deadline),
/// a client that sends garbage is closed at once, and PATH goes when the VMM stops. All
/// of it under the default `--seccomp kill`: a call outside the event thread's profile
/// would kill the VMM.
#[test]
fn vmm_serves_the_socket_under_seccomp_and_removes_it() {
    let name = "vmm_serves_the_socket_under_seccomp_and_removes_it";
    if !kvm_or_skip(name) {
        return;
    }
    serves_the_socket_and_removes_it(&[]);
}

/// A jailed VMM (the Slurm node helper's VMM_JAIL=1) binds PATH before it drops root and
/// enters its jail, serves it from there, and its keeper removes PATH after it.
#[test]
fn a_jailed_vmm_serves_the_socket_and_its_keeper_removes_it() {
    let name = "a_jailed_vmm_serves_the_socket_and_its_keeper_removes_it";
    if !root_kvm_or_skip(name, "--jail needs root") {
        return;
    }
    let jail = std::env::temp_dir().join(format!("hpmmap-vsock-jail-{}", std::process::id()));
    let j = jail.to_str().unwrap().to_string();
    serves_the_socket_and_removes_it(&["--jail", &j, "--uid", "65534", "--gid", "65534"]);
    assert!(!jail.exists(), "the keeper removed the jail");
}

fn serves_the_socket_and_removes_it(extra: &[&str]) {
    let dir = TempDir::new("vsock-host");
    let k = ready_payload(&dir);
    let sock = dir.path("v.sock");
    let serial = dir.path("serial.log");
    let mut vmm = Command::new(vmm_bin())
        .args([
            "--kernel",
            &k,
            "--mem",
            "64M",
            "--hugepages",
            "none",
            "--vsock",
        ])
        .arg(&sock)
        .arg("--serial")
        .arg(&serial)
        .args(extra)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let start = Instant::now();
    while !sock.exists() {
        assert!(start.elapsed() < T, "no {} after {T:?}", sock.display());
        if let Some(s) = vmm.try_wait().unwrap() {
            let mut e = String::new();
            vmm.stderr.take().unwrap().read_to_string(&mut e).unwrap();
            panic!("the VMM ended ({s}) before PATH appeared: {e}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    // A client on PATH; the VMM's own words if it is not there to answer.
    let mut connect = || {
        UnixStream::connect(&sock).unwrap_or_else(|e| {
            let _ = vmm.kill();
            let st = vmm.wait().unwrap();
            let mut err = String::new();
            vmm.stderr.take().unwrap().read_to_string(&mut err).unwrap();
            panic!("connect to PATH: {e}; the VMM: {st}: {err}")
        })
    };
    let mut garbage = connect();
    garbage.write_all(b"HELLO\n").unwrap();
    garbage
        .set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    let mut b = [0u8; 16];
    assert!(
        matches!(garbage.read(&mut b), Ok(0) | Err(_)),
        "a bad command is closed"
    );
    let mut c = connect();
    c.write_all(b"CONNECT 52\n").unwrap();
    c.set_read_timeout(Some(Duration::from_secs(40))).unwrap();
    let asked = Instant::now();
    let n = c.read(&mut b).unwrap_or(0);
    assert_eq!(n, 0, "no OK without a guest driver: {:?}", &b[..n]);
    let waited = asked.elapsed();
    assert!(waited < Duration::from_secs(30), "closed after {waited:?}");
    // SAFETY: kill(2) on the child this test started and has not reaped.
    unsafe { libc::kill(vmm.id() as i32, libc::SIGTERM) };
    let status = vmm.wait().unwrap();
    let mut e = String::new();
    vmm.stderr.take().unwrap().read_to_string(&mut e).unwrap();
    assert_eq!(status.code(), Some(128 + 15), "{status}: {e}");
    assert!(!sock.exists(), "PATH removed at teardown");
    println!("vsock host KVM {extra:?}: unanswered CONNECT closed after {waited:.1?}");
}

/// The guest's job: an echo service on vsock port 1234, a connection to host port 5000,
/// then it waits for the host's word on port 1235 and exits.
const JOB: &str = r#"#!/.hpmmap/bin/sh
# The job tree is Debian's socat and its libraries: the shell tools are the image's busybox.
PATH=/.hpmmap/bin:$PATH
echo "GUEST-VSOCK-MODULES $(grep -c vsock /proc/modules)"
socat VSOCK-LISTEN:1234,reuseaddr,fork EXEC:cat &
echo GUEST-ECHO-LISTENING
if echo from-the-guest | socat -t 30 - VSOCK-CONNECT:2:5000; then echo GUEST-CONNECT-OK; fi
word=$(socat -u VSOCK-LISTEN:1235 -)
echo "GUEST-HOST-SAID $word"
exit 0
"#;

const L1: &str = r#"
up() { cut -d' ' -f1 /proc/uptime; }
S=/usr/bin/socat
$S -u UNIX-LISTEN:/tmp/v.sock_5000 CREATE:/tmp/from-guest &
VMM_LIMIT=560 vmm_retrying --image /img --mem 2G --vsock /tmp/v.sock --report /tmp/r.json &
vmm_job=$!
i=0
while [ $i -lt 400 ]; do
    ok=$(printf 'CONNECT 1234\n' | timeout 60 $S -t 30 - UNIX-CONNECT:/tmp/v.sock 2>/dev/null | head -c 2)
    [ "$ok" = OK ] && break
    kill -0 $vmm_job 2>/dev/null || break
    i=$((i + 1)); sleep 1
done
echo "L1-PROBES $i"
dd if=/dev/urandom of=/tmp/data bs=1024 count=1024 2>/dev/null
echo "L1-DATA-SHA256 $(sha256sum < /tmp/data | cut -d' ' -f1)"
t0=$(up)
(printf 'CONNECT 1234\n'; cat /tmp/data) | timeout 300 $S -t 300 - UNIX-CONNECT:/tmp/v.sock > /tmp/back
echo "L1-ECHO-RC $?"
t1=$(up)
echo "L1-ECHO-SECONDS $t0 $t1"
echo "L1-OK-LINE $(head -n 1 /tmp/back)"
echo "L1-BACK-BYTES $(wc -c < /tmp/back)"
echo "L1-BACK-SHA256 $(tail -c 1048576 /tmp/back | sha256sum | cut -d' ' -f1)"
t0=$(up)
printf 'CONNECT 4321\n' | timeout 120 $S -t 100 - UNIX-CONNECT:/tmp/v.sock > /tmp/refused 2>/dev/null
echo "L1-REFUSED-RC $?"
t1=$(up)
echo "L1-REFUSED-SECONDS $t0 $t1"
echo "L1-REFUSED-BYTES $(wc -c < /tmp/refused)"
echo "L1-FROM-GUEST $(cat /tmp/from-guest)"
printf 'CONNECT 1235\ndone\n' | timeout 60 $S -t 30 - UNIX-CONNECT:/tmp/v.sock > /dev/null
wait $vmm_job
echo "VMM-STATUS=$?"
[ -e /tmp/v.sock ] && echo L1-SOCKET-LEFT
echo REPORT-BEGIN; cat /tmp/r.json; echo REPORT-END
"#;

fn field(out: &str, key: &str) -> String {
    out.lines()
        .find_map(|l| l.trim().strip_prefix(key))
        .unwrap_or_else(|| panic!("no {key} in:\n{out}"))
        .trim()
        .to_string()
}

fn seconds(out: &str, key: &str) -> f64 {
    let v: Vec<f64> = field(out, key)
        .split_whitespace()
        .map(|s| s.parse().unwrap())
        .collect();
    v[1] - v[0]
}

/// Two minutes of nested lab, so not in CI: CI's Slurm lab (tests/tests/slurm_lab.rs) runs
/// every task of its jobs through this device in the same lab (stdin, stdout, stderr,
/// signals and MPI's PMI stream), and the unit tests drive the device's flow control.
#[test]
#[ignore = "2 minutes of nested lab: cargo test -p hpmmap-vmm --test virtio_vsock -- --ignored"]
fn linux_guest_echoes_a_mebibyte_and_connects_to_the_host() {
    let name = "linux_guest_echoes_a_mebibyte_and_connects_to_the_host";
    let Some(tools) = lab_tools_or_skip(name) else {
        return;
    };
    let socat = std::path::Path::new("/usr/bin/socat");
    assert!(
        socat.is_file(),
        "socat is not installed on this host (scripts/setup-host.sh installs it)"
    );
    let dir = TempDir::new(name);
    let job = dir.write("vsock-job.sh", JOB.as_bytes());
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&job, std::fs::Permissions::from_mode(0o755)).unwrap();
    let img = dir.path("img");
    let b = run_cmd(
        Command::new(&tools.image)
            .args([
                "build",
                "--quiet",
                "--no-hpmmap",
                "--packages",
                "socat",
                "--out",
            ])
            .arg(&img)
            .arg("--add")
            .arg(format!("{}:/job/vsock-job.sh", job.display()))
            .args(["--job", "/job/vsock-job.sh"]),
        Duration::from_secs(900),
    );
    assert_eq!(b.code, Some(0), "hpmmap-image build: {}", b.stderr);
    let cmd = format!("{VMM_RETRYING}\n{L1}");
    let mut args: Vec<&str> = L2_ON_1G_PAGES.to_vec();
    args.extend(["--add", "/usr/bin/socat:/usr/bin/socat"]);
    let Some(r) = tools.run_retrying(name, &args, &img, &cmd) else {
        return;
    };
    let out = last_attempts(&r.out);
    assert_eq!(r.code, Some(0), "lab run:\n{out}");
    assert!(out.contains("VMM-STATUS=0"), "{out}");
    assert!(out.contains("GUEST-ECHO-LISTENING"), "{out}");
    let ok = field(&out, "L1-OK-LINE");
    assert!(ok.starts_with("OK "), "{out}");
    assert_eq!(field(&out, "L1-ECHO-RC"), "0", "{out}");
    let back: u64 = field(&out, "L1-BACK-BYTES").parse().unwrap();
    assert_eq!(back, (1 << 20) + ok.len() as u64 + 1, "{out}");
    assert_eq!(
        field(&out, "L1-BACK-SHA256"),
        field(&out, "L1-DATA-SHA256"),
        "1 MiB back byte-exact"
    );
    assert_eq!(
        field(&out, "L1-REFUSED-BYTES"),
        "0",
        "no OK for 4321: {out}"
    );
    let rc = field(&out, "L1-REFUSED-RC");
    assert!(rc != "124" && rc != "143", "a refused CONNECT hung: {out}");
    let refused_s = seconds(&out, "L1-REFUSED-SECONDS");
    assert!(refused_s < 60.0, "refused after {refused_s} s: {out}");
    assert_eq!(field(&out, "L1-FROM-GUEST"), "from-the-guest", "{out}");
    assert!(out.contains("GUEST-CONNECT-OK"), "{out}");
    assert!(out.contains("GUEST-HOST-SAID done"), "{out}");
    assert!(!out.contains("L1-SOCKET-LEFT"), "PATH left behind: {out}");
    let j = json_between(&out, "REPORT-BEGIN", "REPORT-END");
    assert_eq!(j["exit_reason"], "job-exit");
    let echo_s = seconds(&out, "L1-ECHO-SECONDS");
    for l in out
        .lines()
        .filter(|l| l.contains("GUEST-") || l.contains("L1-"))
    {
        println!("{}", l.trim());
    }
    println!(
        "vsock lab: 1 MiB echoed in {echo_s:.2} s = {:.2} MiB/s each way, refused CONNECT \
         closed in {refused_s:.2} s (nested lab under QEMU/TCG; emulation figures)",
        1.0 / echo_s.max(0.01)
    );
}
