//! `reserve`: hold the 1 GiB pages a job needs on the chosen node(s): first the free pages
//! already in the pool that nobody holds (a host that set `hugepages=N` at boot, as the
//! README recommends), then by growing the pool, compacting and then cycling memory blocks
//! when free memory is too fragmented, never taking the node's free memory below the
//! `--keep` floor.

use crate::blocks::{self, Group};
use crate::error::{Error, Result};
use crate::host::Host;
use crate::hugetlb;
use crate::pageflags;
use crate::session::Session;
use crate::size::{human, GIB};
use serde::Serialize;
use std::collections::VecDeque;
use std::path::Path;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Placement {
    Node(u32),
    Spread,
    /// The only memory node; an input error when there are several.
    Auto,
}

#[derive(Debug, Clone)]
pub struct ReserveOptions {
    pub size_gib: u64,
    pub placement: Placement,
    pub keep_bytes: u64,
    /// Keep what was obtained when the whole size could not be (default: give it back).
    pub allow_partial: bool,
    /// Cycle memory blocks when compaction is not enough.
    pub offline_blocks: bool,
    /// The job the pages are for (`--job ID`); None: the unassigned reservation.
    pub job: Option<String>,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct NodeOutcome {
    pub node: u32,
    /// Pages this tool should hold on the node when done (every job's).
    pub target: u64,
    /// Of `target`, pages held for other jobs (or, for a job, for no job): the run's own
    /// share is `target - others` asked, `held() - others` obtained.
    pub others: u64,
    /// Pages it held before this run.
    pub had: u64,
    /// Free pages of the existing pool this run adopted (0 after a rollback).
    pub adopted: u64,
    /// Pages added by this run (0 after a rollback).
    pub added: u64,
    pub compacted: bool,
    pub groups_cycled: u64,
    /// Pages this run obtained and then gave back because the whole size was not there.
    pub given_back: u64,
    /// Why pages are missing, when they are.
    pub reasons: Vec<String>,
}

impl NodeOutcome {
    pub fn short(&self) -> u64 {
        self.target.saturating_sub(self.held())
    }

    /// What the tool holds on the node after this run.
    pub fn held(&self) -> u64 {
        self.had + self.adopted + self.added
    }
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct ReserveReport {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub job: Option<String>,
    pub nodes: Vec<NodeOutcome>,
    pub complete: bool,
    pub rolled_back: bool,
    pub notes: Vec<String>,
}

/// Input checks that need no state and change nothing; returns the per-node targets.
pub fn plan(host: &Host, opts: &ReserveOptions) -> Result<Vec<(u32, u64)>> {
    if let Some(j) = &opts.job {
        crate::state::validate_job(j)?;
    }
    hugetlb::check_support(host)?;
    if opts.size_gib == 0 {
        return Err(Error::input("--size 0: nothing to reserve"));
    }
    let mem_nodes = hugetlb::memory_nodes(host);
    let nodes: Vec<u32> = match opts.placement {
        Placement::Node(n) => {
            hugetlb::check_node(host, n)?;
            vec![n]
        }
        Placement::Spread => mem_nodes.clone(),
        Placement::Auto => match mem_nodes.as_slice() {
            [n] => vec![*n],
            [] => return Err(Error::input("this host lists no NUMA node with memory")),
            _ => {
                return Err(Error::input(format!(
                    "this host has several memory nodes ({}): pass --node N or --spread",
                    hugetlb::join_nodes(&mem_nodes)
                )))
            }
        },
    };
    if nodes.is_empty() {
        return Err(Error::input(
            "--spread: this host lists no NUMA node with memory",
        ));
    }
    for &n in &nodes {
        hugetlb::check_node(host, n)?;
    }
    let count = nodes.len() as u64;
    let mut out = Vec::new();
    for (i, &n) in nodes.iter().enumerate() {
        let share = opts.size_gib / count + u64::from((i as u64) < opts.size_gib % count);
        let mem = hugetlb::node_mem(host, n)?;
        if share * GIB + opts.keep_bytes > mem.total_bytes {
            return Err(Error::input(format!(
                "--size {} GiB: node {n} has {} of memory; {share} GiB plus the --keep floor of {} \
                 cannot fit",
                opts.size_gib,
                human(mem.total_bytes),
                human(opts.keep_bytes)
            )));
        }
        if share > 0 {
            out.push((n, share));
        }
    }
    Ok(out)
}

pub fn reserve(host: &Host, state_path: &Path, opts: &ReserveOptions) -> Result<ReserveReport> {
    let targets = plan(host, opts)?;
    let mut session = Session::open(host, state_path, true)?
        .expect("created on demand")
        .for_job(opts.job.as_deref());
    let mut report = ReserveReport {
        job: opts.job.clone(),
        ..Default::default()
    };
    if let Some(n) = session.settle_pending()? {
        report.notes.push(n);
    }
    for failed in session.restore_blocks(false)? {
        report.notes.push(format!(
            "block from an interrupted run still not restored: {failed}"
        ));
    }
    for &(node, _) in &targets {
        if let Some(n) = session.reconcile(node)? {
            report.notes.push(n);
        }
    }
    for &(node, target) in &targets {
        // The run's own share (the job's, or the unassigned part) grows to `target`; what
        // the node holds for others stays as it is.
        let held = session.state.held(node);
        let mine = session.owned(node);
        report.nodes.push(NodeOutcome {
            node,
            target: held - mine + target.max(mine),
            others: held - mine,
            had: held,
            ..Default::default()
        });
    }
    if let Some(job) = &opts.job {
        // Marked before the first change: a reserve killed half-way leaves its process's
        // pid here, and `recover` gives the job back what it held before.
        let had = targets
            .iter()
            .map(|&(n, _)| (n, session.owned(n)))
            .collect();
        let boot = crate::jobs::boot_id(host);
        let now = unix_now();
        let e = session.state.jobs.entry(job.clone()).or_default();
        if e.created_unix == 0 {
            e.created_unix = now;
        }
        e.boot_id = boot;
        e.reserving = Some(crate::jobs::me(host, had));
        session.save()?;
    }
    let run = grow_all(&mut session, opts, &mut report);
    let done = |session: &mut Session| {
        if let Some(job) = &opts.job {
            if let Some(e) = session.state.jobs.get_mut(job) {
                e.reserving = None;
            }
            session.state.prune();
        }
    };
    if let Err(e) = run {
        let undo = rollback(&mut session, &mut report);
        if undo.is_ok() {
            done(&mut session);
        }
        let _ = session.finish();
        return Err(match undo {
            Ok(()) => e,
            Err(u) => Error::StateIo {
                path: state_path.into(),
                why: format!("{e}; rolling back this run also failed: {u}"),
            },
        });
    }
    report.complete = report.nodes.iter().all(|n| n.short() == 0);
    if !report.complete && !opts.allow_partial {
        rollback(&mut session, &mut report)?;
        report.rolled_back = true;
    }
    done(&mut session);
    session.finish()?;
    Ok(report)
}

fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

fn grow_all(
    session: &mut Session,
    opts: &ReserveOptions,
    report: &mut ReserveReport,
) -> Result<()> {
    for i in 0..report.nodes.len() {
        let node = report.nodes[i].node;
        adopt_free(session, &mut report.nodes[i])?;
        let o = &report.nodes[i];
        let want = o.target.saturating_sub(o.held());
        if want == 0 {
            session.host.progress(format!(
                "node {node}: {} reserved{}",
                human(o.held() * GIB),
                if o.adopted > 0 {
                    format!(" ({} GiB adopted from the pool already there)", o.adopted)
                } else if o.had > 0 {
                    " already".to_string()
                } else {
                    String::new()
                }
            ));
            continue;
        }
        grow_node(session, node, want, opts, &mut report.nodes[i])?;
    }
    Ok(())
}

/// Free pages of the node's pool that nobody holds: free, minus the pages mappings have
/// reserved and not yet faulted, minus everything this tool holds there already (all of
/// it may still be free, so this never counts one of its own pages twice).
pub fn adoptable(session: &Session, node: u32) -> Result<u64> {
    let pool = hugetlb::node_pool(session.host, node)?;
    let resv = hugetlb::global_pool(session.host)?.resv;
    Ok(pool
        .free
        .saturating_sub(resv)
        .saturating_sub(session.state.held(node)))
}

/// A host prepared with boot-time pages (`hugepagesz=1G hugepages=N`) has what the job
/// needs in the pool already: those pages are counted as held, the pool stays as it is,
/// and `release` later forgets them instead of shrinking the pool.
fn adopt_free(session: &mut Session, out: &mut NodeOutcome) -> Result<()> {
    let want = out.target.saturating_sub(out.held());
    let take = want.min(adoptable(session, out.node)?);
    if take > 0 {
        session.adopt(out.node, take)?;
        out.adopted += take;
    }
    Ok(())
}

fn grow_node(
    session: &mut Session,
    node: u32,
    want: u64,
    opts: &ReserveOptions,
    out: &mut NodeOutcome,
) -> Result<()> {
    let host = session.host;
    let mut groups: Option<VecDeque<Group>> = None;
    let mut flags_unreadable = false;
    while out.added < want {
        if let Some(signal) = host.stop_requested() {
            return Err(Error::Interrupted { signal });
        }
        let mem = hugetlb::node_mem(host, node)?;
        if mem.free_bytes < opts.keep_bytes + GIB {
            out.reasons.push(format!(
                "stopped at the --keep floor: node {node} has {} free and keeps {}",
                human(mem.free_bytes),
                human(opts.keep_bytes)
            ));
            break;
        }
        let before = hugetlb::node_pool(host, node)?.nr;
        let reached = session.resize_node(node, before + 1)?;
        if reached > before {
            out.added += 1;
            host.progress(format!("node {node}: {}/{want} GiB", out.added));
            continue;
        }
        if !out.compacted {
            out.compacted = true;
            host.progress(format!("node {node}: no free 1 GiB range; compacting"));
            if let Err(e) = hugetlb::compact(host, node) {
                out.reasons.push(format!("compaction failed: {e}"));
            }
            continue;
        }
        if !opts.offline_blocks {
            out.reasons.push(
                "no free 1 GiB range after compaction, and block cycling is off (--no-offline)"
                    .into(),
            );
            break;
        }
        let queue = groups.get_or_insert_with(|| {
            let bs = blocks::block_size(host);
            match bs {
                Some(bs) => {
                    let (good, skipped) =
                        blocks::candidate_groups(&blocks::list_blocks(host), node, bs);
                    if !skipped.is_empty() {
                        let sample: Vec<String> = skipped
                            .iter()
                            .take(3)
                            .map(|(g, why)| format!("GiB {g} {why}"))
                            .collect();
                        out.reasons.push(format!(
                            "{} GiB range(s) of node {node} cannot be cycled, e.g. {}",
                            skipped.len(),
                            sample.join("; ")
                        ));
                    }
                    good.into()
                }
                None => {
                    out.reasons.push(
                        "no memory-hotplug sysfs (devices/system/memory): cannot cycle blocks"
                            .into(),
                    );
                    VecDeque::new()
                }
            }
        });
        let Some(group) = next_group(host, queue, out, &mut flags_unreadable) else {
            out.reasons.push(format!(
                "no free 1 GiB range on node {node} after compaction and after cycling every \
                 candidate block group"
            ));
            break;
        };
        host.progress(format!(
            "node {node}: cycling memory{}..memory{} (GiB {}) offline and back",
            group.blocks[0],
            group.blocks[group.blocks.len() - 1],
            group.first_gib
        ));
        let pool_before = hugetlb::node_pool(host, node)?.nr;
        match session.cycle_group(&group)? {
            Ok(()) => out.groups_cycled += 1,
            Err(why) => out.reasons.push(why),
        }
        // The kernel dissolves free hugetlb pages in a block it offlines. next_group passes
        // over ranges that hold them, but without kpageflags it cannot see them: count what
        // the pool really holds, never what the steps added up to.
        let pool_after = hugetlb::node_pool(host, node)?.nr;
        if pool_after < pool_before {
            let lost = pool_before - pool_after;
            let mut ours = session.pool_lost(node, lost)?;
            for count in [&mut out.added, &mut out.adopted, &mut out.had] {
                let n = ours.min(*count);
                *count -= n;
                ours -= n;
            }
            out.reasons.push(format!(
                "cycling GiB {} dissolved {lost} free 1 GiB page(s) of node {node}'s pool",
                group.first_gib
            ));
        }
    }
    Ok(())
}

/// The next group to cycle, passing over GiB ranges that hold hugetlb pages: offlining one
/// would dissolve its free pages, such as one this run just reserved.
fn next_group(
    host: &Host,
    queue: &mut VecDeque<Group>,
    out: &mut NodeOutcome,
    flags_unreadable: &mut bool,
) -> Option<Group> {
    while let Some(group) = queue.pop_front() {
        match pageflags::holds_hugetlb(host, group.first_gib * GIB, GIB) {
            Ok(false) => return Some(group),
            Ok(true) => out.reasons.push(format!(
                "GiB {} holds hugetlb pages; passed over (offlining dissolves free ones)",
                group.first_gib
            )),
            Err(why) => {
                if !*flags_unreadable {
                    *flags_unreadable = true;
                    out.reasons.push(format!(
                        "cannot read page flags ({why}): ranges holding hugetlb pages are not \
                         recognized before cycling"
                    ));
                }
                return Some(group);
            }
        }
    }
    None
}

/// Gives back the pages this run added (only free ones: a page a VM already mapped stays)
/// and stops holding the pages it adopted (they stay in the pool, as before the run).
fn rollback(session: &mut Session, report: &mut ReserveReport) -> Result<()> {
    for o in report.nodes.iter_mut() {
        if o.adopted > 0 {
            let gone = session.unadopt(o.node, o.adopted)?;
            o.adopted -= gone;
        }
        if o.added == 0 {
            continue;
        }
        let pool = hugetlb::node_pool(session.host, o.node)?;
        let resv = hugetlb::global_pool(session.host)?.resv;
        let give = o.added.min(pool.free.saturating_sub(resv));
        let reached = session.resize_node(o.node, pool.nr - give)?;
        let given = pool.nr - reached;
        if given < o.added {
            o.reasons.push(format!(
                "rollback gave back {given} of the {} GiB this run added (the rest is in use)",
                o.added
            ));
        }
        o.given_back = given.min(o.added);
        o.added -= o.given_back;
    }
    Ok(())
}
