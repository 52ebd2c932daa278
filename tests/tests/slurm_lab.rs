//! Slurm with hpmmap, in the nested lab: `hpmmap-lab cluster` boots L1s (QEMU/TCG with
//! SVM+NPT, igb, 1 GiB pages) joined by one QEMU socket network, with Debian's munge and
//! slurm-wlm 22.05 and the SPANK plugin of slurm/; slurm/lab/scenario.sh then submits on
//! node1. The scenario, read top to bottom: bad options are refused at submit time and
//! leave no job and no drained node; srun with --hpmmap-image boots one VM per node and
//! runs each task's command inside it through the task channel (virtio-vsock, the guest's
//! hpmmap-agent): Slurm's variables, stdin, stdout and stderr apart, and the tasks' exit
//! status; afterwards nothing of the job is left on any node; a VM larger than the node's
//! free 1 GiB pages fails its step with one line and drains nothing; sbatch's two steps run
//! in the same VM per node with their own statuses; scancel while tasks run in the VMs
//! leaves nothing; MPICH ranks wire up in one VM, then across both nodes' VMs over their
//! igb VFs. CI runs the two-node scenario (92-200 s here); the one-node variant is
//! `-- --ignored` (figures in slurm/README.md). Figures printed are emulation figures
//! (nested lab under QEMU/TCG).

use hpmmap_image::builder::{build, BuildOptions};
use hpmmap_image::lab::cluster::{Cluster, ClusterConfig};
use hpmmap_image::lab::{parse_add, LabConfig};
use hpmmap_tests::*;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Each node's L1: with 3 GiB the boot-time 1 GiB page was not there (free_1g=0: L1's own
/// boot allocations took every 1 GiB-aligned range); 4 GiB leaves one.
const NODE_MEM: u64 = 4 << 30;

const SCENARIO: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../slurm/lab/scenario.sh");
const MPI_SCENARIO: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../slurm/lab/mpi.sh");
const MPI_VF_SCENARIO: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../slurm/lab/mpi-vf.sh");
const ALLREDUCE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../slurm/lab/allreduce.c");

fn work_dir(name: &str) -> PathBuf {
    let d = PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
        .join(format!("slurm-lab-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// A job image without the hpmmap module: a 1 GiB VM has no pool behind its first GiB,
/// and this scenario is about the VM's life, not the module.
fn image(base: &std::path::Path, name: &str, job: &str) -> String {
    let out = base.join(name);
    let mut opts = BuildOptions::new(&out);
    opts.job = Some(job.to_string());
    opts.no_hpmmap = true;
    build(&opts).unwrap_or_else(|e| panic!("hpmmap-image build {name}: {e}"));
    format!("{}:/images/{name}", out.display())
}

/// Fails the test (after recording the tier) where the nested lab cannot run.
fn lab_or_fail(name: &str) {
    let why_not = lab_skip_reason();
    if !lab_ready(&format!("slurm_lab {name}"), why_not.clone()) {
        panic!(
            "the nested lab cannot run here: {}",
            why_not.unwrap_or_default()
        );
    }
    for bin in ["hpmmap-vmm", "hpmmap-offline", "hpmmap-task"] {
        built_host_binary(bin).unwrap_or_else(|e| panic!("{e}"));
    }
}

/// Boots a cluster of `nodes` with `adds` (HOST:GUEST) in every node, runs `cmd` on node1
/// once every node is idle and returns node1's output; the images in `base` are removed
/// afterwards (about 70 MiB each, rebuilt every run), the nodes' logs stay.
fn boot_and_run(base: &Path, nodes: u32, adds: &[String], cmd: &str, limit: Duration) -> String {
    let node = LabConfig {
        mem: NODE_MEM,
        cpus: 2,
        hugepages_1g: 1,
        timeout: limit,
        adds: adds.iter().map(|a| parse_add(a).unwrap()).collect(),
        work: Some(base.join("cluster")),
        ..LabConfig::default()
    };
    let cluster = Cluster::prepare(ClusterConfig { nodes, node }).expect("cluster prepared");
    assert!(cluster.spank, "the SPANK plugin is installed");
    let out = cluster.run(cmd).expect("cluster ran");
    for a in adds {
        if let Some((host, guest)) = a.rsplit_once(':') {
            if guest.starts_with("/images/") {
                let _ = std::fs::remove_dir_all(host);
            }
        }
    }
    for (i, o) in out.others.iter().enumerate() {
        match o {
            Ok(o) => eprintln!("--- node{} ---\n{}", i + 2, o.output),
            Err(e) => eprintln!("--- node{}: {e}", i + 2),
        }
    }
    eprintln!(
        "--- node1 ({:.0} s, nested lab under QEMU/TCG) ---\n{}",
        out.head.elapsed.as_secs_f64(),
        out.head.output
    );
    assert_eq!(out.head.status, 0, "node1's command exit status");
    let o = out.head.output;
    assert_eq!(
        value(&o, "scenario"),
        Some("done"),
        "the scenario ran to its end"
    );
    o
}

/// Boots the cluster and runs the scenario; the scenario's output (node1's command).
fn scenario(name: &str, nodes: u32, full: bool) -> String {
    lab_or_fail(name);
    let base = work_dir(name);
    let adds = [
        image(
            &base,
            "ok",
            "/bin/busybox sh -c 'echo hpmmap-lab-job-ran; exit 3'",
        ),
        format!("{SCENARIO}:/lab/slurm-scenario.sh"),
        mpi_image(&base),
        format!("{MPI_SCENARIO}:/lab/mpi.sh"),
        format!("{MPI_VF_SCENARIO}:/lab/mpi-vf.sh"),
    ];
    // The MPI parts share the cluster's boot: two ranks on node1, after the scenario; with
    // two nodes, then one rank in each node's VM over the VFs (last: it leaves VFs behind).
    let cmd = format!(
        "sh /lab/slurm-scenario.sh {nodes} {} && sh /lab/mpi.sh 1 2{}",
        if full { "full" } else { "short" },
        if nodes > 1 {
            " && sh /lab/mpi-vf.sh"
        } else {
            ""
        }
    );
    let limit = Duration::from_secs(if full { 1500 } else { 900 });
    boot_and_run(&base, nodes, &adds, &cmd, limit)
}

/// Every node of the cluster holds nothing of hpmmap and none is drained.
fn assert_clean(o: &str, when: &str, nodes: u32) {
    let lines = prefixed(o, &format!("{when}: "));
    assert_eq!(
        lines.len(),
        nodes as usize,
        "{when}: one line per node: {lines:?}"
    );
    for l in &lines {
        for fact in ["vmm=0", "rundirs=0", "vfio=0", "jobs=[]", "free_1g=1"] {
            assert!(l.contains(fact), "{when}: {l} lacks {fact}");
        }
    }
    assert_eq!(
        value(o, &format!("{when}_drained")),
        Some("0"),
        "{when}: drained nodes"
    );
}

fn assert_bad_options_refused(o: &str, nodes: u32) {
    let help = prefixed(o, "help: ");
    for opt in [
        "--hpmmap-image",
        "--hpmmap-mem",
        "--hpmmap-vcpus",
        "--hpmmap-vf",
    ] {
        assert!(
            help.iter()
                .any(|l| l.contains(opt) && l.contains("[hpmmap]")),
            "srun --help lists {opt}, tagged: {help:?}"
        );
    }
    for (key, why) in [
        ("bad_image", "/no/such/image: No such file or directory"),
        ("bad_mem", "not whole GiB"),
        ("bad_vcpus", "outside 1.."),
        ("bad_sbatch", "not a job image"),
    ] {
        assert_ne!(value(o, &format!("{key}_rc")), Some("0"), "{key} refused");
        let lines = prefixed(o, &format!("{key}: "));
        assert!(
            lines.iter().any(|l| l.contains(why)),
            "{key}: one line names the cause ({why}): {lines:?}"
        );
    }
    assert_eq!(value(o, "queue_after_bad"), Some("0"), "no job was queued");
    assert_clean(o, "after_bad", nodes);
    // Known only on the node: the step fails at its start with the VMM's own words.
    assert_ne!(
        value(o, "bad_vf_rc"),
        Some("0"),
        "a VF the node lacks fails the step"
    );
    let lines = prefixed(o, "bad_vf: ");
    assert!(
        lines
            .iter()
            .any(|l| l.contains("'0000:7f:1f.7': no such device")),
        "the cause reaches the user: {lines:?}"
    );
    assert_clean(o, "after_bad_vf", nodes);
}

fn assert_srun_ran_one_vm_per_node(o: &str, nodes: u32) {
    assert_eq!(
        value(o, "srun_rc"),
        Some(if nodes > 1 { "3" } else { "0" }),
        "srun's status is its tasks' (task 1 exits 3)"
    );
    let out = prefixed(o, "srun_out: ");
    for t in 0..nodes {
        let want = format!("in-vm host=job serve=1 task={t} of={nodes} stdin=piped-in");
        assert!(
            out.iter().any(|l| *l == want),
            "task {t} ran in its node's VM with Slurm's variables and srun's stdin: {want:?} not in {out:?}"
        );
    }
    assert!(
        !out.iter().any(|l| l.contains("hpmmap-lab-job-ran")),
        "the image's own job does not run in a VM that serves tasks: {out:?}"
    );
    let err = prefixed(o, "srun_task_err: ");
    for t in 0..nodes {
        assert!(
            err.iter().any(|l| *l == format!("in-vm-stderr task={t}")),
            "task {t}'s stderr came back apart: {err:?}"
        );
    }
    let starts = value(o, "srun_vm_starts").expect("srun_vm_starts");
    for k in 1..=nodes {
        assert!(
            starts.contains(&format!("node{k}=1")),
            "one VM on node{k}: {starts}"
        );
    }
    assert_clean(o, "after_srun", nodes);
}

/// One node, the bad options, one srun job: a quicker look while working on the plugin.
#[test]
#[ignore]
fn one_node_refuses_bad_options_and_runs_an_srun_job_in_one_vm() {
    let o = scenario("short", 1, false);
    assert_bad_options_refused(&o, 1);
    assert_srun_ran_one_vm_per_node(&o, 1);
}

/// The whole scenario on two nodes.
#[test]
fn two_nodes_srun_sbatch_and_scancel() {
    let o = scenario("full", 2, true);
    assert_bad_options_refused(&o, 2);
    assert_srun_ran_one_vm_per_node(&o, 2);
    let np = prefixed(&o, "nopages_out: ");
    assert!(
        np.iter()
            .any(|l| l.starts_with("hpmmap: no 2G of free 1 GiB pages on node")),
        "a VM larger than the free 1 GiB pages: one line at step start: {np:?}"
    );
    assert!(np.contains(&"step_rc=1"), "the step failed: {np:?}");
    assert_clean(&o, "after_nopages", 2);
    let sb = prefixed(&o, "sbatch_out: ");
    assert!(
        sb.contains(&"step1_rc=4"),
        "step 1 ran `exit 4` in the VMs: {sb:?}"
    );
    assert!(
        sb.contains(&"step2_rc=0"),
        "step 2 ran `true` in the same VMs: {sb:?}"
    );
    let starts = value(&o, "sbatch_vm_starts").expect("sbatch_vm_starts");
    assert!(
        starts.contains("node1=1") && starts.contains("node2=1"),
        "two steps, one VM per node: {starts}"
    );
    assert_clean(&o, "after_sbatch", 2);
    assert_eq!(value(&o, "cancel_vms_running"), Some("2"), "both VMs ran");
    assert_eq!(value(&o, "cancel_state"), Some("CANCELLED"));
    assert_clean(&o, "after_cancel", 2);
    assert_mpi_ranks_wired_up(&o);
    assert_mpi_ranks_talk_over_the_vfs(&o);
}

/// The MPI image: the lab's allreduce.c built with Debian's mpicc.mpich, on Debian's
/// libmpich12; its HOST:/images/mpi add.
fn mpi_image(base: &Path) -> String {
    let prog = base.join("allreduce");
    let cc = std::process::Command::new("mpicc.mpich")
        .args(["-O2", "-o"])
        .arg(&prog)
        .arg(ALLREDUCE)
        .output()
        .unwrap_or_else(|e| panic!("mpicc.mpich: {e} (apt-get install libmpich-dev)"));
    assert!(
        cc.status.success(),
        "{}",
        String::from_utf8_lossy(&cc.stderr)
    );
    let out = base.join("mpi");
    let mut opts = BuildOptions::new(&out);
    opts.job = Some("/job/allreduce".into());
    opts.no_hpmmap = true;
    opts.tree.packages = vec!["libmpich12".into()];
    opts.tree.adds =
        vec![
            hpmmap_image::jobtree::parse_add(&format!("{}:/job/allreduce", prog.display()))
                .unwrap(),
        ];
    build(&opts).unwrap_or_else(|e| panic!("hpmmap-image build mpi: {e}"));
    format!("{}:/images/mpi", out.display())
}

/// Issue 16.5, the wire-up half: MPICH ranks started by `srun --mpi=pmi2` ran inside the
/// job's VM and found each other through Slurm's own PMI server, whose descriptor (PMI_FD)
/// hpmmap-task relays over the task channel; the VM ended with the job.
fn assert_mpi_ranks_wired_up(o: &str) {
    assert_eq!(value(o, "mpi_scenario"), Some("done"), "mpi.sh ran");
    assert_eq!(value(o, "mpi_rc"), Some("0"), "srun's status");
    let lines = prefixed(o, "mpi_out: ");
    for r in 0..2 {
        let want = format!("allreduce rank={r} size=2 sum=3 host=job");
        assert!(
            lines.iter().any(|l| *l == want),
            "rank {r} in the VM saw both ranks: {want:?} not in {lines:?}"
        );
    }
    assert_eq!(
        value(o, "mpi_vmms_left"),
        Some("0"),
        "the VM ended with the job"
    );
}

/// Issue 16.5, the other half: one rank in each node's VM, each VM with its node's igb VF
/// (`--hpmmap-vf`) at 10.17.0.K (node.conf's VF_IP, the guest init's `hpmmap.ip=`): the
/// allreduce needs both ranks, and the only path between the two VMs is the VFs, whose
/// packet counters in each VM grew during it; the VMs ended and the VFs left vfio-pci; and a
/// second allocation got the same VFs and pages and did it again.
fn assert_mpi_ranks_talk_over_the_vfs(o: &str) {
    assert_eq!(value(o, "mpivf_scenario"), Some("done"), "mpi-vf.sh ran");
    // Two allocations one after the other: the second reuses the first's VFs and pages.
    for round in 1..=2 {
        let k = format!("mpivf_r{round}");
        assert_eq!(value(o, &format!("{k}_rc")), Some("0"), "{k}: the MPI step");
        assert_eq!(
            value(o, &format!("{k}_salloc_rc")),
            Some("0"),
            "{k}: salloc"
        );
        let lines = prefixed(o, &format!("{k}_out: "));
        for r in 0..2 {
            let want = format!("allreduce rank={r} size=2 sum=3 host=job");
            assert!(
                lines.iter().any(|l| *l == want),
                "{k}: rank {r} saw the rank in the other node's VM: {want:?} not in {lines:?}"
            );
        }
        for node in 0..2 {
            let counters = |when: &str| -> (String, u64, u64) {
                let v = value(o, &format!("{k}_{when}_node{node}"))
                    .unwrap_or_else(|| panic!("{k}_{when}_node{node} in {o}"));
                let f: Vec<&str> = v.split(',').collect();
                assert_eq!(f.len(), 3, "address,rx,tx: {v}");
                (
                    f[0].to_string(),
                    f[1].parse().unwrap(),
                    f[2].parse().unwrap(),
                )
            };
            let (addr, rx0, tx0) = counters("before");
            let (_, rx1, tx1) = counters("after");
            assert_eq!(
                addr,
                format!("10.17.0.{}", node + 1),
                "{k}: node{}'s VM",
                node + 1
            );
            assert!(
                rx1 > rx0 && tx1 > tx0,
                "{k}: node{}'s VF carried the allreduce: rx {rx0}->{rx1}, tx {tx0}->{tx1}",
                node + 1
            );
        }
        assert_eq!(
            value(o, &format!("{k}_vmms_left")),
            Some("0"),
            "{k}: the VMs ended"
        );
        assert_eq!(
            value(o, &format!("{k}_vfio")),
            Some("0"),
            "{k}: the VFs left vfio-pci"
        );
    }
}

/// The MPI part alone on one node: two ranks in one VM (their data goes through the VM's
/// shared memory; ranks in different nodes' VMs need the VFs: issue 16.5's other half).
#[test]
#[ignore = "a minute of nested lab; the two-node test runs the same part"]
fn mpich_ranks_wire_up_through_srun_pmi2_in_the_vm() {
    lab_or_fail("mpi");
    let base = work_dir("mpi");
    let adds = [mpi_image(&base), format!("{MPI_SCENARIO}:/lab/mpi.sh")];
    let o = boot_and_run(
        &base,
        1,
        &adds,
        "sh /lab/mpi.sh 1 2 && echo scenario=done",
        Duration::from_secs(900),
    );
    assert_mpi_ranks_wired_up(&o);
}
