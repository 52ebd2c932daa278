//! A Slurm cluster of nested-lab L1s: `hpmmap-lab cluster --nodes N`. Every node is the
//! lab's own L1 (`Lab`: SVM+NPT, VT-d, igb with VFs, 1 GiB pages) with its igb PF on one
//! QEMU multicast socket network (a switch on the host's loopback), a hostname (nodeK) and
//! address (10.16.0.K), and Debian's munge and slurm-wlm 22.05 unpacked into the initramfs
//! from the lab's package cache: munged on every node, slurmctld on node 1, slurmd on all,
//! one munge key and one generated slurm.conf. With `slurm/spank` in the workspace, its
//! SPANK plugin and node helper are built and installed by one plugstack.conf line.
//!
//! The caller's command runs on node 1 once every node is idle; the nodes boot together.

use super::{Lab, LabConfig, LabError, LabOutput};
use crate::cpio::Archive;
use crate::packages;
use crate::progress::step;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

/// Packages whose programs the cluster runs; apt's closure of them comes along (the image
/// builder's `--packages` fetcher: shared cache, alternatives links, docs trimmed).
pub const SLURM_PACKAGES: &str = "munge,slurmctld,slurmd,slurm-client";
/// Where L1 finds the node script and the SPANK pieces.
const NODE_SCRIPT: &str = "lab/cluster/node.sh";
pub const SPANK_SO: &str = "usr/lib/x86_64-linux-gnu/slurm-wlm/spank_hpmmap.so";
pub const NODE_HELPER: &str = "usr/libexec/hpmmap-slurm/hpmmap-slurm-node";
/// How long node 1 waits for every slurmd to register.
const IDLE_WAIT_SECS: u32 = 240;
/// The most nodes: one /24 and the host's 2 cores already make 2 slow.
pub const MAX_NODES: u32 = 8;
/// L1 memory Slurm may hand to jobs (RealMemory, MiB): L1 less its boot-time 1 GiB pages
/// (the kernel does not count them in MemTotal, and slurmd refuses a node whose RealMemory
/// is above what it finds) and 1 GiB for L1's kernel, initramfs and daemons.
fn real_memory_mib(cfg: &LabConfig) -> u64 {
    ((cfg.mem >> 20).saturating_sub(1024 * (u64::from(cfg.hugepages_1g) + 1))).max(512)
}

#[derive(Debug, Clone)]
pub struct ClusterConfig {
    pub nodes: u32,
    /// Every node's L1 (memory, vCPUs, 1 GiB pages, timeout, added files, log directory:
    /// node K logs under `work/nodeK`).
    pub node: LabConfig,
}

pub struct Cluster {
    cfg: ClusterConfig,
    lab: Lab,
    /// Whether the SPANK plugin is installed in the nodes.
    pub spank: bool,
}

#[derive(Debug)]
pub struct ClusterOutput {
    /// Node 1's run: the caller's command's output and status.
    pub head: LabOutput,
    /// Every other node's run (its slurmd log tail), node 2 first.
    pub others: Vec<Result<LabOutput, LabError>>,
}

impl Cluster {
    /// Gathers the lab, Slurm and munge, builds the SPANK plugin, writes the configuration.
    pub fn prepare(cfg: ClusterConfig) -> Result<Cluster, LabError> {
        if !(1..=MAX_NODES).contains(&cfg.nodes) {
            return Err(LabError::Nodes(cfg.nodes));
        }
        let mut lab = Lab::prepare(cfg.node.clone())?;
        // The node helper's task client (slurm/node): only the cluster's nodes run it.
        super::carry_bin(lab.base_mut(), &cfg.node, "hpmmap-task")?;
        let tree = packages::install(&cfg.node.cache, &[SLURM_PACKAGES.to_string()])?;
        step(format!(
            "lab cluster: {} packages for munge and slurm-wlm",
            tree.versions.len()
        ));
        // Busybox and the lab's files come first: the closure's own pidof, tar and the like
        // do not replace them.
        add_tree(lab.base_mut(), &tree.root, &tree.root)?;
        let a = lab.base_mut();
        a.file(
            NODE_SCRIPT,
            0o644,
            include_bytes!("cluster-node.sh").to_vec(),
        );
        a.file("etc/munge/munge.key", 0o400, munge_key()?);
        a.file("etc/hosts", 0o644, hosts(cfg.nodes).into_bytes());
        a.file(
            "etc/slurm/slurm.conf",
            0o644,
            slurm_conf(cfg.nodes, &cfg.node).into_bytes(),
        );
        a.file(
            "etc/slurm/cgroup.conf",
            0o644,
            b"CgroupPlugin=cgroup/v1\nCgroupMountpoint=/sys/fs/cgroup\n".to_vec(),
        );
        let spank = cfg.node.workspace.join("slurm/spank/Makefile").is_file();
        let plugstack = if spank {
            let so = build_spank(&cfg.node.workspace)?;
            let helper = cfg.node.workspace.join("slurm/node/hpmmap-slurm-node");
            let read = |p: &Path| std::fs::read(p).map_err(|e| LabError::Io(p.to_path_buf(), e));
            let a = lab.base_mut();
            a.file(SPANK_SO, 0o755, read(&so)?);
            a.file(NODE_HELPER, 0o755, read(&helper)?);
            // The lab's binaries live in /lab/bin; QEMU/TCG's nested SVM wants one L1 CPU
            // running guests (DESIGN.md), so the VMM is pinned to the last one. VF_IP: node K's
            // job VM gets 10.17.0.K on its --hpmmap-vf (slurm/lab/mpi.sh's ranks across nodes).
            a.file(
                "etc/hpmmap-slurm/node.conf",
                0o644,
                format!(
                    "PATH=$PATH:/lab/bin\nVMM_TASKSET={}\nVF_IP=10.17.0.$(hostname | tr -dc 0-9)/24\n",
                    cfg.node.cpus.saturating_sub(1)
                )
                .into_bytes(),
            );
            format!("required /{SPANK_SO}\n")
        } else {
            step("lab cluster: no slurm/spank in the workspace; nodes without the plugin");
            String::new()
        };
        lab.base_mut()
            .file("etc/slurm/plugstack.conf", 0o644, plugstack.into_bytes());
        lab.allow_command(".");
        Ok(Cluster { cfg, lab, spank })
    }

    /// Boots every node, runs `cmd` on node 1 once all are idle, returns every node's run.
    /// Node 1's status is the command's; a node that fails to set up fails its run.
    pub fn run(&self, cmd: &str) -> Result<ClusterOutput, LabError> {
        let n = self.cfg.nodes;
        // One multicast group per run, so clusters of other runs on this host never meet.
        let port = 20000 + (std::process::id() % 20000) as u16;
        let group = format!("230.0.16.{}", 1 + std::process::id() % 250);
        let work = self.cfg.node.work.clone().unwrap_or_else(|| {
            std::env::temp_dir().join(format!("hpmmap-cluster-{}", crate::progress::unique()))
        });
        let mut labs = Vec::new();
        for k in 1..=n {
            let mut c = self.cfg.node.clone();
            c.netdev = Some(format!(
                "socket,id=n0,mcast={group}:{port},localaddr=127.0.0.1"
            ));
            c.mac = Some(format!("52:54:00:16:00:{k:02x}"));
            // A node's VF (`--hpmmap-vf`) must answer in its 4 GiB L1.
            c.phys_bits = Some(super::VF_PHYS_BITS);
            c.work = Some(work.join(format!("node{k}")));
            labs.push(self.lab.with_config(c)?);
        }
        step(format!(
            "lab cluster: {n} nodes on mcast {group}:{port}; logs in {}",
            work.display()
        ));
        let head_cmd = format!(
            ". /{NODE_SCRIPT} 1 {n} || exit 90\ncluster_wait_idle {IDLE_WAIT_SECS} || exit 91\n{cmd}\n"
        );
        std::thread::scope(|s| {
            let others: Vec<_> = labs[1..]
                .iter()
                .enumerate()
                .map(|(i, lab)| {
                    let k = i + 2;
                    s.spawn(move || {
                        lab.run(&format!(
                            ". /{NODE_SCRIPT} {k} {n} || exit 90\ncluster_serve\n"
                        ))
                    })
                })
                .collect();
            let head = labs[0].run(&head_cmd);
            let others = others
                .into_iter()
                .map(|h| h.join().expect("node thread"))
                .collect();
            Ok(ClusterOutput {
                head: head?,
                others,
            })
        })
    }

    pub fn config(&self) -> &ClusterConfig {
        &self.cfg
    }
}

/// Adds an unpacked package tree, keeping its symlinks; paths already there stay.
fn add_tree(a: &mut Archive, root: &Path, dir: &Path) -> Result<(), LabError> {
    let io = |p: &Path| {
        let p = p.to_path_buf();
        move |e| LabError::Io(p, e)
    };
    let mut entries: Vec<_> = std::fs::read_dir(dir).map_err(io(dir))?.flatten().collect();
    entries.sort_by_key(|e| e.file_name());
    for e in entries {
        let path = e.path();
        let rel = path
            .strip_prefix(root)
            .expect("under root")
            .to_string_lossy()
            .into_owned();
        if rel.starts_with('.') {
            continue;
        }
        let meta = std::fs::symlink_metadata(&path).map_err(io(&path))?;
        if meta.is_dir() {
            a.dir(&rel);
            add_tree(a, root, &path)?;
        } else if meta.file_type().is_symlink() {
            let t = std::fs::read_link(&path).map_err(io(&path))?;
            if !a.contains(&rel) {
                a.symlink(&rel, &t.to_string_lossy());
            }
        } else if !a.contains(&rel) {
            use std::os::unix::fs::PermissionsExt;
            let mode = meta.permissions().mode() & 0o7777;
            a.file(&rel, mode, std::fs::read(&path).map_err(io(&path))?);
        }
    }
    Ok(())
}

/// A fresh munge key for this cluster (munge wants at least 32 bytes; 1 KiB as mungekey).
fn munge_key() -> Result<Vec<u8>, LabError> {
    use std::io::Read;
    let p = Path::new("/dev/urandom");
    let mut key = vec![0u8; 1024];
    std::fs::File::open(p)
        .and_then(|mut f| f.read_exact(&mut key))
        .map_err(|e| LabError::Io(p.to_path_buf(), e))?;
    Ok(key)
}

pub fn hosts(nodes: u32) -> String {
    let mut s = String::from("127.0.0.1 localhost\n");
    for k in 1..=nodes {
        s.push_str(&format!("10.16.0.{k} node{k}\n"));
    }
    s
}

/// slurm.conf for N lab nodes: node 1 is the controller; root runs everything (the lab has
/// no other users); proctrack/linuxproc and task/none, as DESIGN.md measured slurmd here.
pub fn slurm_conf(nodes: u32, node: &LabConfig) -> String {
    let mut s = String::from(
        "# Generated by hpmmap-lab cluster (images/src/lab/cluster.rs).
ClusterName=hpmmaplab
SlurmctldHost=node1(10.16.0.1)
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CryptoType=crypto/munge
MpiDefault=none
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
SchedulerType=sched/backfill
ReturnToService=2
StateSaveLocation=/var/spool/slurmctld
SlurmdSpoolDir=/var/spool/slurmd
SlurmctldPidFile=/run/slurm/slurmctld.pid
SlurmdPidFile=/run/slurm/slurmd.pid
SlurmctldLogFile=/var/log/slurm/slurmctld.log
SlurmdLogFile=/var/log/slurm/slurmd.log
PlugStackConfig=/etc/slurm/plugstack.conf
SlurmctldTimeout=60
SlurmdTimeout=120
InactiveLimit=0
KillWait=10
MinJobAge=300
",
    );
    for k in 1..=nodes {
        s.push_str(&format!(
            "NodeName=node{k} NodeAddr=10.16.0.{k} CPUs={} RealMemory={} State=UNKNOWN\n",
            node.cpus,
            real_memory_mib(node)
        ));
    }
    s.push_str("PartitionName=lab Nodes=ALL Default=YES MaxTime=INFINITE State=UP\n");
    s
}

/// Builds the SPANK plugin with slurm/spank's Makefile into target/slurm-spank.
fn build_spank(ws: &Path) -> Result<PathBuf, LabError> {
    let out = ws.join("target/slurm-spank");
    step("lab cluster: building slurm/spank");
    let o = Command::new("make")
        .arg("-s")
        .arg("-C")
        .arg(ws.join("slurm/spank"))
        .arg(format!("OUT={}", out.display()))
        .output()
        .map_err(|e| LabError::Io(PathBuf::from("make"), e))?;
    if !o.status.success() {
        return Err(LabError::Spank(
            String::from_utf8_lossy(&o.stderr).trim().to_string(),
        ));
    }
    Ok(out.join("spank_hpmmap.so"))
}

/// How long a cluster run may take by default: nodes boot side by side on the host's cores.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(900);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slurm_conf_names_every_node_with_its_address() {
        let cfg = LabConfig {
            mem: 3 << 30,
            cpus: 2,
            hugepages_1g: 1,
            ..LabConfig::default()
        };
        let s = slurm_conf(2, &cfg);
        assert!(s.contains("NodeName=node1 NodeAddr=10.16.0.1 CPUs=2 RealMemory=1024"));
        assert!(s.contains("NodeName=node2 NodeAddr=10.16.0.2 CPUs=2 RealMemory=1024"));
        assert!(s.contains("SlurmctldHost=node1(10.16.0.1)"));
        assert_eq!(hosts(2).lines().count(), 3);
    }
}
