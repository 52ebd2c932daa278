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
    pub nodes: Vec<NodeRelease>,
    pub devdax_released: Vec<String>,
    pub notes: Vec<String>,
    /// Everything asked for went back.
    pub complete: bool,
    /// The state file is gone: the host holds nothing for hpmmap.
    pub idle: bool,
}

pub fn release(host: &Host, state_path: &Path, amount: Amount) -> Result<ReleaseReport> {
    if matches!(amount, Amount::Gib(0)) {
        return Err(Error::input("--size 0: nothing to release"));
    }
    let mut report = ReleaseReport::default();
    let Some(mut session) = Session::open(host, state_path, false)? else {
        return nothing_held(amount, report);
    };
    if !state_path.exists() {
        return nothing_held(amount, report);
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
        let have = session.state.total_held();
        if n > have {
            return Err(Error::input(format!(
                "--size {n}G: hpmmap-offline holds only {have} GiB"
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
        let (done, left) = devdax::release_all(&mut session)?;
        complete &= left.is_empty();
        report.devdax_released = done;
        report.notes.extend(left);
        let stuck = session.restore_blocks(true)?;
        complete &= stuck.is_empty();
        for s in stuck {
            report.notes.push(format!("block not restored: {s}"));
        }
    }
    report.complete = complete;
    report.idle = session.finish()?;
    Ok(report)
}

fn nothing_held(amount: Amount, mut report: ReleaseReport) -> Result<ReleaseReport> {
    if let Amount::Gib(n) = amount {
        return Err(Error::input(format!(
            "--size {n}G: hpmmap-offline holds nothing (no state file)"
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
        .iter()
        .map(|(&n, s)| (n, s.held()))
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
    let held = holders::held_on_node(holders, node);
    let pool = hugetlb::node_pool(host, node)?;
    let resv = hugetlb::global_pool(host)?.resv;
    // Which of its pages a VM maps cannot be told: the ones this tool holds and no VM maps
    // bound what may be free of its own.
    let not_held = (added + adopted).saturating_sub(held);
    let free = pool.free.saturating_sub(resv);
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
    r.still_reserved = session.state.held(node);
    Ok(r)
}
