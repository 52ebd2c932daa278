//! Slurm tasks inside the job's VM (issue 16, item 4): the wire format of the task channel
//! ([`protocol`]), the environment allow-list both ends enforce ([`envlist`]), the guest
//! agent that runs tasks ([`agent`], binary `hpmmap-agent`) and the host client that
//! slurmstepd's task runs ([`client`], binary `hpmmap-task`), and the relay that carries a
//! task's PMI descriptor into the VM ([`pmi`]).

pub mod agent;
pub mod client;
pub mod envlist;
pub mod pmi;
pub mod protocol;
mod sys;
pub mod usage;
