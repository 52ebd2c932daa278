//! Confinement of the VMM process: seccomp filters per kind of thread (`seccomp`).

pub mod seccomp;
