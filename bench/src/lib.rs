//! hpmmap's isolation benchmark (issue 6; the paper's section 4, Fig. 8).
//!
//! - [`workloads`]: `cg`, `stream`, `gups`, `faults`, run by the `hpmmap-workload` binary as
//!   N forked ranks with a shared-memory barrier ([`comm`], [`ranks`]), memory mapped as the
//!   run's [`memory::AllocMode`] says, printing the line format of [`report`].
//! - The `hpmmap-bench` harness: the types every part of it shares ([`model`]), competing
//!   commodity workloads ([`competitor`]), stopping on a signal ([`signals`]), running one
//!   child program ([`child`]), the interleaved run plan and its execution in named steps
//!   ([`harness`]), statistics ([`stats`]), the markdown / JSON table ([`table`]), the SVG
//!   plot ([`svg`]), the files written ([`output`]) and the platform line ([`platform`]).
//! - The VM configurations ([`config`]): job images booted by `hpmmap-vmm` ([`vm`]), run on
//!   this host's KVM or, where it cannot boot Linux, in one nested-lab boot ([`lab`]);
//!   [`runner`] holds who runs a cell.
//!
//! Modules import only from the layers below them (bench/README.md, "Module layers").

pub mod child;
pub mod comm;
pub mod competitor;
pub mod config;
pub mod harness;
pub mod hugepages;
pub mod icount;
pub mod lab;
pub mod memory;
pub mod model;
pub mod output;
pub mod platform;
pub mod ranks;
pub mod report;
pub mod runner;
pub mod signals;
pub mod stats;
pub mod svg;
pub mod table;
pub mod vm;
pub mod workloads;
