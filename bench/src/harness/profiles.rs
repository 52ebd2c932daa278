//! A profile's competing load on this host: the build loops and stress-ng, started around
//! the profile's cells.

use std::path::PathBuf;

use anyhow::Result;

use crate::competitor::{self, BuildLoop, Competitor};
use crate::model::Profile;

/// What starting a profile's competitors needs (prepared once per run).
pub struct Profiles {
    pub build_src: Option<PathBuf>,
    pub build_objs: Vec<PathBuf>,
    pub jobs: usize,
    pub cpus: Vec<usize>,
    pub logs: PathBuf,
    pub stress_vm: String,
    pub stress_mmap: String,
}

impl Profiles {
    pub fn start(&self, p: Profile) -> Result<Vec<Competitor>> {
        let mut v = Vec::new();
        for k in 0..p.builds() {
            let b = BuildLoop {
                src: self.build_src.clone().expect("prepared"),
                obj: self.build_objs[k].clone(),
                jobs: self.jobs,
            };
            let log = self.logs.join(format!("build-{k}.log"));
            v.push(Competitor::start(
                &format!("build {k}"),
                b.command(),
                &self.cpus,
                &log,
            )?);
        }
        if p == Profile::B {
            let log = self.logs.join("stress-ng.log");
            let cmd = competitor::stress_command(&self.stress_vm, &self.stress_mmap);
            v.push(Competitor::start("stress-ng", cmd, &self.cpus, &log)?);
        }
        Ok(v)
    }
}
