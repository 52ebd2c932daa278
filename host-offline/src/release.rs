//! `release`: give 1 GiB pages (and blocks, and dax devices) this tool took back to the
//! host. Never shrinks the pool under a page that a running hpmmap-vmm maps, nor under
//! pages other processes use or have reserved. Pages it adopted from a pool that was there
//! before (boot-time `hugepages=N`) are only forgotten: the pool stays as it was.

use crate::devdax;
use crate::error::{Error, Result};
use crate::holders;
use crate::host::Host;
use crate::hugetlb;
use crate::session::Session;
use serde::Serialize;
use std::path::Path;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Amount {
    All,
    Gib(u64),
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct NodeRelease {
    pub node: u32,
    pub asked: u64,
    /// Pages given back to the host (the pool shrank by them) plus adopted pages forgotten.
    pub released: u64,
    /// Of `released`, adopted pages: they stay in the pool, where they were before.
    pub unadopted: u64,
    pub still_reserved: u64,
    pub reasons: Vec<String>,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct ReleaseReport {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub job: Option<String>,
    pub nodes: Vec<NodeRelease>,
    pub devdax_released: Vec<String>,
    pub notes: Vec<String>,
    /// Everything asked for went back.
    pub complete: bool,
    /// The state file is gone: the host holds nothing for hpmmap.
    pub idle: bool,
}

pub fn release(host: &Host, state_path: &Path, amount: Amount) -> Result<ReleaseReport> {
    release_for(host, state_path, amount, None)
}

/// `release [--job ID]`: with a job, only that job's pages and dax devices; without, only
/// what no job holds (and, once no job holds anything, the blocks and devices too).
pub fn release_for(
    host: &Host,
    state_path: &Path,
    amount: Amount,
    job: Option<&str>,
) -> Result<ReleaseReport> {
    if matches!(amount, Amount::Gib(0)) {
        return Err(Error::input("--size 0: nothing to release"));
    }
    if let Some(j) = job {
        crate::state::validate_job(j)?;
    }
    let mut report = ReleaseReport {
        job: job.map(String::from),
        ..Default::default()
    };
    let Some(session) = Session::open(host, state_path, false)? else {
        return nothing_held(amount, report, job);
    };
    let mut session = session.for_job(job);
    if !state_path.exists() {
        return nothing_held(amount, report, job);
    }
    if let Some(j) = job {
        if !session.state.jobs.contains_key(j) {
            if let Amount::Gib(n) = amount {
                return Err(Error::input(format!(
                    "--job {j} --size {n}G: job {j} holds nothing"
                )));
            }
            report.notes.push(format!("job {j} holds nothing"));
            report.complete = true;
            report.idle = false;
            drop(session);
            report.idle = !state_path.exists();
            return Ok(report);
        }
    }
    if let Some(n) = session.settle_pending()? {
        report.notes.push(n);
    }
    let nodes: Vec<u32> = session.state.nodes.keys().copied().collect();
    for node in nodes {
        if let Some(n) = session.reconcile(node)? {
            report.notes.push(n);
        }
    }
    if let Amount::Gib(n) = amount {
        let nodes: Vec<u32> = session.state.nodes.keys().copied().collect();
        let have: u64 = nodes.iter().map(|&n| session.owned(n)).sum();
        if n > have {
            return Err(Error::input(format!(
                "--size {n}G: {} holds only {have} GiB",
                match job {
                    Some(j) => format!("job {j}"),
                    None if session.state.jobs.is_empty() => "hpmmap-offline".to_string(),
                    None => "hpmmap-offline (outside the jobs' reservations)".to_string(),
                }
            )));
        }
    }
    let holders = holders::vm_holders(host);
    let plan = split(&session, amount);
    let mut complete = true;
    for (node, asked) in plan {
        let r = release_node(&mut session, &holders, node, asked)?;
        complete &= r.released == r.asked;
        report.nodes.push(r);
    }
    if amount == Amount::All {
        // dax devices first: a device going back to system-ram mode brings back the
        // memory blocks that the block restore below then onlines.
        let owned_by_jobs: Vec<String> = session
            .state
            .jobs
            .values()
            .flat_map(|j| j.devdax.iter().cloned())
            .collect();
        let mine: Vec<String> = job
            .and_then(|j| session.state.jobs.get(j))
            .map(|j| j.devdax.clone())
            .unwrap_or_default();
        let (done, left) = devdax::release_which(&mut session, |d| match job {
            Some(_) => mine.iter().any(|m| m == d),
            None => !owned_by_jobs.iter().any(|m| m == d),
        })?;
        // The job's devices go back to no one: those restored, and those used as they were
        // (nothing to restore) that no process maps any more.
        let still: Vec<String> = session
            .state
            .devdax
            .iter()
            .map(|c| c.device.clone())
            .collect();
        let mapped: Vec<String> = mine
            .iter()
            .filter(|d| !devdax::users(host, d).is_empty())
            .cloned()
            .collect();
        if let Some(j) = job.and_then(|j| session.state.jobs.get_mut(j)) {
            j.devdax
                .retain(|d| !done.contains(d) && (still.contains(d) || mapped.contains(d)));
        }
        complete &= left.is_empty();
        report.devdax_released = done;
        report.notes.extend(left);
        // Blocks moved into a kernel zone hold the pool's pages: they go back to their
        // zone only once no job holds pages (offlining them would dissolve a job's free
        // pages). Blocks of an interrupted run are restored in any case.
        session.state.prune();
        let jobs_left = !session.state.jobs.is_empty();
        let stuck = session.restore_blocks(!jobs_left)?;
        complete &= stuck.is_empty();
        for s in stuck {
            report.notes.push(format!("block not restored: {s}"));
        }
        if jobs_left && job.is_none() {
            for (name, j) in &session.state.jobs {
                report.notes.push(format!(
                    "job {name} still holds {} GiB{} (release --job {name}, or recover)",
                    j.total(),
                    if j.devdax.is_empty() {
                        String::new()
                    } else {
                        format!(" and {}", j.devdax.join(", "))
                    }
                ));
            }
        }
    }
    if let Some(j) = job {
        if session
            .state
            .jobs
            .get(j)
            .is_some_and(|s| s.total() == 0 && s.devdax.is_empty())
        {
            // a reserve that was killed half-way is settled by this release
            session.state.jobs.remove(j);
        }
        session.state.prune();
    }
    report.complete = complete;
    report.idle = session.finish()?;
    Ok(report)
}

fn nothing_held(
    amount: Amount,
    mut report: ReleaseReport,
    job: Option<&str>,
) -> Result<ReleaseReport> {
    if let Amount::Gib(n) = amount {
        return Err(Error::input(format!(
            "--size {n}G: {} nothing (no state file)",
            match job {
                Some(j) => format!("job {j} holds"),
                None => "hpmmap-offline holds".into(),
            }
        )));
    }
    report
        .notes
        .push("nothing reserved by hpmmap-offline".into());
    report.complete = true;
    report.idle = true;
    Ok(report)
}

/// Which nodes give how much: all of each, or `n` GiB taken from the nodes holding most.
fn split(session: &Session, amount: Amount) -> Vec<(u32, u64)> {
    let mut held: Vec<(u32, u64)> = session
        .state
        .nodes
        .keys()
        .map(|&n| (n, session.owned(n)))
        .filter(|&(_, r)| r > 0)
        .collect();
    match amount {
        Amount::All => held,
        Amount::Gib(mut left) => {
            held.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
            let mut out = Vec::new();
            for (n, r) in held {
                if left == 0 {
                    break;
                }
                let take = r.min(left);
                left -= take;
                out.push((n, take));
            }
            out.sort();
            out
        }
    }
}

fn release_node(
    session: &mut Session,
    holders: &[holders::Holder],
    node: u32,
    asked: u64,
) -> Result<NodeRelease> {
    let host = session.host;
    let mut r = NodeRelease {
        node,
        asked,
        ..Default::default()
    };
    let added = session.state.added(node);
    let adopted = session.state.adopted(node);
    let job = session.job.clone();
    // The VMs of this run's owner (the job's, or those of no job for the unassigned part)
    // map some of its pages; the other owners' pages that their VMs do not map yet must
    // stay free in the pool for them.
    let jobs: Vec<String> = session.state.jobs.keys().cloned().collect();
    let owner_of =
        |h: &holders::Holder| -> Option<String> { h.job.clone().filter(|j| jobs.contains(j)) };
    let mapped_by = |o: Option<&str>| -> u64 {
        let mine: Vec<holders::Holder> = holders
            .iter()
            .filter(|h| owner_of(h).as_deref() == o)
            .cloned()
            .collect();
        holders::held_on_node(&mine, node)
    };
    let held = mapped_by(job.as_deref());
    let others_need: u64 = std::iter::once(None)
        .chain(jobs.iter().map(|j| Some(j.as_str())))
        .filter(|o| *o != job.as_deref())
        .map(|o| session.state.owned(o, node).saturating_sub(mapped_by(o)))
        .sum();
    let pool = hugetlb::node_pool(host, node)?;
    let resv = hugetlb::global_pool(host)?.resv;
    // Which of its pages a VM maps cannot be told: the ones this owner holds and no VM of
    // its maps bound what may be free of its own.
    let owned = session.owned(node);
    let not_held = owned.saturating_sub(held);
    let free = pool.free.saturating_sub(resv).saturating_sub(others_need);
    let give = asked.min(added).min(not_held).min(free);
    if give > 0 {
        host.progress(format!("node {node}: giving back {give} GiB"));
        let reached = session.resize_node(node, pool.nr - give)?;
        r.released = pool.nr.saturating_sub(reached).min(give);
        if r.released < give {
            r.reasons.push(format!(
                "kernel kept {} page(s) on node {node}",
                give - r.released
            ));
        }
    }
    // Adopted pages were in the pool before: forgetting them is all it takes, whether a VM
    // still maps them or not.
    let left = asked - r.released;
    // A job's adopted pages that its VM still maps stay the job's until the VM is gone.
    let left = match job {
        Some(_) => left.min(not_held.saturating_sub(r.released)),
        None => left,
    };
    if left > 0 && adopted > 0 {
        r.unadopted = session.unadopt(node, left.min(adopted))?;
        r.released += r.unadopted;
    }
    if r.released < asked {
        if held > 0 && not_held < asked {
            let pids: Vec<String> = holders
                .iter()
                .filter(|h| h.on_node(node) > 0 || h.per_node.is_empty())
                .map(|h| h.pid.to_string())
                .collect();
            r.reasons.push(format!(
                "{held} GiB on node {node} mapped by running hpmmap-vmm (pid {}); kept",
                pids.join(", ")
            ));
        }
        if free < asked.min(added).min(not_held) {
            r.reasons.push(format!(
                "only {free} free 1 GiB page(s) on node {node} (others in use or reserved by \
                 processes); kept the rest"
            ));
        }
    }
    r.still_reserved = session.owned(node);
    Ok(r)
}
