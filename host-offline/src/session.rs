//! A locked, journaled run against the host: every change is recorded in the state file
//! before it is made and confirmed after, so that a crash at any point can be rolled back.

use crate::blocks::{self, Group};
use crate::error::{Error, Result};
use crate::host::Host;
use crate::hugetlb;
use crate::state::{self, BlockChange, NodeState, PendingResize, State};
use std::path::{Path, PathBuf};

pub struct Session<'h> {
    pub host: &'h Host,
    pub path: PathBuf,
    pub state: State,
    /// The job this run acts for (`--job`); None: the unassigned reservation.
    pub job: Option<String>,
    _lock: state::Lock,
}

impl<'h> Session<'h> {
    /// Locks and loads the state. With `create` false and no state directory there is
    /// nothing to act on: `Ok(None)`, and nothing is created.
    pub fn open(host: &'h Host, path: &Path, create: bool) -> Result<Option<Self>> {
        let Some(lock) = state::lock(path, create, || {
            host.progress(format!(
                "waiting for another hpmmap-offline using {}",
                path.display()
            ))
        })?
        else {
            return Ok(None);
        };
        let state = match state::load(path)? {
            Some(s) => {
                if s.sysfs_root != host.sys_root() || s.proc_root != host.proc_root() {
                    return Err(Error::input(format!(
                        "state file {} belongs to sysfs root {} and proc root {}, not {} and {}; \
                         not touching the host",
                        path.display(),
                        s.sysfs_root.display(),
                        s.proc_root.display(),
                        host.sys_root().display(),
                        host.proc_root().display()
                    )));
                }
                s
            }
            None => State::new(host.sys_root(), host.proc_root()),
        };
        Ok(Some(Session {
            host,
            path: path.to_path_buf(),
            state,
            job: None,
            _lock: lock,
        }))
    }

    /// Acts for `job` from now on: pages added or adopted are the job's, pages given back
    /// or forgotten come off its share.
    pub fn for_job(mut self, job: Option<&str>) -> Self {
        self.job = job.map(String::from);
        self
    }

    /// Pages of the node held for this run's job (or unassigned).
    pub fn owned(&self, node: u32) -> u64 {
        self.state.owned(self.job.as_deref(), node)
    }

    pub fn save(&mut self) -> Result<()> {
        state::save(&self.path, &mut self.state)
    }

    /// Writes the state back, or removes the file when nothing is held any more.
    pub fn finish(mut self) -> Result<bool> {
        if self.state.is_empty() {
            state::remove(&self.path)?;
            Ok(true)
        } else {
            self.save()?;
            Ok(false)
        }
    }

    /// Settles a pool resize interrupted by a crash: the kernel's current count tells how
    /// much of it happened. Returns a note for the report when there was one.
    pub fn settle_pending(&mut self) -> Result<Option<String>> {
        let Some(p) = self.state.pending.clone() else {
            return Ok(None);
        };
        let now = hugetlb::node_pool(self.host, p.node)?.nr;
        self.account(&p, now);
        self.state.pending = None;
        self.save()?;
        Ok(Some(format!(
            "settled an interrupted resize of node {} ({} -> {}): the pool is at {now}",
            p.node, p.before, p.target
        )))
    }

    fn account(&mut self, p: &PendingResize, reached: u64) {
        let entry = self.state.nodes.entry(p.node).or_insert(NodeState {
            baseline_nr: p.before,
            reserved: 0,
            adopted: 0,
        });
        let delta: i64 = if p.target > p.before {
            let added = reached.clamp(p.before, p.target) - p.before;
            entry.reserved += added;
            added as i64
        } else {
            let removed = p.before - reached.clamp(p.target, p.before);
            let gone = removed.min(entry.reserved);
            entry.reserved -= gone;
            -(gone as i64)
        };
        let job = p.job.clone();
        self.state.job_add(job.as_deref(), p.node, delta);
        self.state.fit_jobs(p.node, job.as_deref());
        self.state.prune();
    }

    /// Counts `count` free pages already in the node's pool as held for hpmmap. The pool is
    /// not touched, so there is nothing to journal beyond the count itself.
    pub fn adopt(&mut self, node: u32, count: u64) -> Result<()> {
        if count == 0 {
            return Ok(());
        }
        let nr = hugetlb::node_pool(self.host, node)?.nr;
        let entry = self.state.nodes.entry(node).or_insert(NodeState {
            baseline_nr: nr,
            reserved: 0,
            adopted: 0,
        });
        entry.adopted += count;
        let job = self.job.clone();
        self.state.job_add(job.as_deref(), node, count as i64);
        self.save()
    }

    /// Stops counting up to `count` adopted pages of the node; they stay in the pool, where
    /// they were before hpmmap-offline adopted them. Returns how many.
    pub fn unadopt(&mut self, node: u32, count: u64) -> Result<u64> {
        let Some(n) = self.state.nodes.get_mut(&node) else {
            return Ok(0);
        };
        let gone = count.min(n.adopted);
        n.adopted -= gone;
        let job = self.job.clone();
        self.state.job_add(job.as_deref(), node, -(gone as i64));
        self.state.fit_jobs(node, job.as_deref());
        self.state.prune();
        self.save()?;
        Ok(gone)
    }

    /// Takes `count` pages that went missing off the node's books: added pages first (so
    /// that the tool never shrinks the pool by a page that was not its own), then adopted.
    fn forget(&mut self, node: u32, count: u64) -> u64 {
        let Some(n) = self.state.nodes.get_mut(&node) else {
            return 0;
        };
        let from_added = count.min(n.reserved);
        n.reserved -= from_added;
        let from_adopted = (count - from_added).min(n.adopted);
        n.adopted -= from_adopted;
        // This run's job loses them first, then the unassigned part, then other jobs.
        let job = self.job.clone();
        let mine = self.state.owned(job.as_deref(), node);
        self.state.job_add(
            job.as_deref(),
            node,
            -((from_added + from_adopted).min(mine) as i64),
        );
        self.state.fit_jobs(node, job.as_deref());
        self.state.prune();
        from_added + from_adopted
    }

    /// `lost` free pages of the node's pool went away under this tool (the kernel dissolves
    /// free hugetlb pages in a block it offlines). Which ones cannot be told, so they count
    /// as this tool's first: the tool then never gives back a page that was not its own.
    /// Returns how many were counted as its own.
    pub fn pool_lost(&mut self, node: u32, lost: u64) -> Result<u64> {
        let ours = self.forget(node, lost);
        if ours > 0 {
            self.save()?;
        }
        Ok(ours)
    }

    /// The pool cannot hold fewer pages than this tool added: when someone else shrank it
    /// (an administrator writing nr_hugepages), what is gone is no longer ours to give back.
    pub fn reconcile(&mut self, node: u32) -> Result<Option<String>> {
        let held = self.state.held(node);
        if held == 0 {
            return Ok(None);
        }
        let nr = hugetlb::node_pool(self.host, node)?.nr;
        if nr >= held {
            return Ok(None);
        }
        self.forget(node, held - nr);
        self.save()?;
        Ok(Some(format!(
            "node {node}: the pool has {nr} page(s) but hpmmap-offline held {held}; \
             someone else gave back {}",
            held - nr
        )))
    }

    /// Resizes a node's pool with the journal around the write; returns the size reached.
    pub fn resize_node(&mut self, node: u32, target: u64) -> Result<u64> {
        let before = hugetlb::node_pool(self.host, node)?.nr;
        if before == target {
            return Ok(before);
        }
        let p = PendingResize {
            node,
            before,
            target,
            job: self.job.clone(),
        };
        self.state.pending = Some(p.clone());
        self.save()?;
        let written = hugetlb::set_node_nr(self.host, node, target);
        // Whatever the write returned, the kernel's count is the truth to account.
        let reached = hugetlb::node_pool(self.host, node)?.nr;
        self.account(&p, reached);
        self.state.pending = None;
        self.save()?;
        written?;
        Ok(reached)
    }

    /// Offlines every block of a group and brings each back into its zone, which hands the
    /// buddy allocator the whole range free. `Ok(Err(reason))` when the kernel refused (a
    /// block busy); the blocks already offline are brought back before returning.
    pub fn cycle_group(&mut self, group: &Group) -> Result<std::result::Result<(), String>> {
        let mut originals = Vec::new();
        for &id in &group.blocks {
            let b = blocks::read_block(self.host, id)?;
            originals.push(BlockChange {
                id,
                node: b.node,
                original_state: b.state.clone(),
                original_zone: b.zone().map(String::from),
                dax: None,
                zone_moved: false,
            });
        }
        self.state.blocks.extend(originals.iter().cloned());
        self.save()?;

        let mut offlined: Vec<&BlockChange> = Vec::new();
        let mut refusal = None;
        for c in &originals {
            match blocks::offline(self.host, c.id) {
                Ok(()) => offlined.push(c),
                Err(e) => {
                    let why = if e.timed_out() {
                        format!(
                            "memory{} did not go offline within {} s (a page in it cannot be \
                             migrated, e.g. pinned); the kernel kept it online",
                            c.id,
                            self.host.offline_limit().as_secs_f64()
                        )
                    } else if let Some(sig) = self.host.stop_requested() {
                        format!(
                            "memory{} was going offline when {} came",
                            c.id,
                            crate::stop::signal_name(sig)
                        )
                    } else {
                        format!(
                            "memory{} refused to go offline ({})",
                            c.id,
                            e.raw_os_error()
                                .map(crate::error::strerror)
                                .unwrap_or_else(|| e.to_string())
                        )
                    };
                    refusal = Some(format!(
                        "{why}; GiB {} of node {} left as it was",
                        group.first_gib,
                        c.node.map(|n| n.to_string()).unwrap_or_else(|| "?".into())
                    ));
                    break;
                }
            }
        }
        let mut stuck = Vec::new();
        let complete = refusal.is_none();
        for c in offlined {
            // A whole group offline: bring it back into a kernel zone, where a 1 GiB page
            // can be allocated (never from ZONE_MOVABLE). The zone order may refuse that
            // (EINVAL); then the block goes back where it was.
            let kernel = complete && blocks::set_state(self.host, c.id, "online_kernel").is_ok();
            if !kernel {
                if let Err(e) = self.bring_back(c) {
                    stuck.push(format!("memory{}: {e}", c.id));
                }
            }
        }
        if !stuck.is_empty() {
            self.save()?;
            return Err(Error::StateIo {
                path: self.path.clone(),
                why: format!(
                    "blocks left offline (kept in the state file; `release --all` retries): {}",
                    stuck.join("; ")
                ),
            });
        }
        let mut moved = 0;
        for c in self.state.blocks.iter_mut().filter(|c| {
            originals
                .iter()
                .any(|o| o.id == c.id && c.dax.is_none() && !c.zone_moved)
        }) {
            let now = blocks::read_block(self.host, c.id)?;
            if now.online() && now.zone() != c.original_zone.as_deref() {
                c.zone_moved = true;
                moved += 1;
            }
        }
        self.state
            .blocks
            .retain(|c| c.zone_moved || c.dax.is_some() || !originals.iter().any(|o| o.id == c.id));
        self.save()?;
        if moved > 0 {
            self.host.progress(format!(
                "GiB {}: {moved} block(s) now in a kernel zone; `release --all` moves them back",
                group.first_gib
            ));
        }
        Ok(match refusal {
            Some(r) => Err(r),
            None => Ok(()),
        })
    }

    /// Puts one block back to its recorded state and zone; falls back to a plain `online`
    /// when the zone order refuses the original zone (the memory returns to the host either
    /// way).
    pub fn bring_back(&self, c: &BlockChange) -> Result<()> {
        let now = blocks::read_block(self.host, c.id)?;
        let zone_ok = c.original_zone.is_none() || now.zone() == c.original_zone.as_deref();
        if now.state == c.original_state && (!now.online() || zone_ok) {
            return Ok(());
        }
        if now.online() {
            // online in another zone: the only way back is offline and online again
            blocks::offline(self.host, c.id)?;
        }
        if c.original_state == "online" {
            let cmd = blocks::online_command(c.original_zone.as_deref());
            if blocks::set_state(self.host, c.id, cmd).is_ok() {
                return Ok(());
            }
            blocks::set_state(self.host, c.id, "online")
        } else {
            blocks::set_state(self.host, c.id, &c.original_state)
        }
    }

    /// Restores the blocks the state lists (with `include_moved`, also those moved into a
    /// kernel zone on purpose); returns the ones that would not come back.
    pub fn restore_blocks(&mut self, include_moved: bool) -> Result<Vec<String>> {
        let mut failed = Vec::new();
        let mut kept = Vec::new();
        let dax_held: Vec<String> = self.state.devdax.iter().map(|d| d.device.clone()).collect();
        for c in std::mem::take(&mut self.state.blocks) {
            // Memory of a dax device still in devdax mode does not exist as blocks now.
            if c.dax.as_ref().is_some_and(|d| dax_held.contains(d))
                || (c.zone_moved && !include_moved)
            {
                kept.push(c);
                continue;
            }
            match self.bring_back(&c) {
                Ok(()) => {}
                Err(e) => {
                    failed.push(format!("memory{}: {e}", c.id));
                    kept.push(c);
                }
            }
        }
        self.state.blocks = kept;
        self.save()?;
        Ok(failed)
    }
}
