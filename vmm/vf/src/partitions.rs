//! Fabric isolation between tenants: OpenSM's partitions.conf from the running jobs.
//!
//! The subnet manager, not the host, decides which ports may talk: it programs each
//! port's P_Key table and the switches enforce it. A job's VFs become members of the
//! job's partition (full or limited, from the P_Key's top bit); two jobs with different
//! P_Keys share no partition, so their packets are dropped, provided the VFs are not full
//! members of a common partition such as Default (checked by [`isolation_problems`]).
//!
//! `hpmmap-vf partitions` rewrites one marked block of the SM's partitions.conf from the
//! claim records, keeps everything else the admin wrote, and sends opensm SIGHUP (a heavy
//! sweep, which re-reads the file). The grammar is the one documented in opensm(8) of
//! OpenSM 3.3 ("PARTITION CONFIGURATION"); [`parse`] implements it, as the test for
//! what is written (OpenSM itself parses the file only when it owns a port).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use crate::error::VfError;
use crate::ib::Guid;
use crate::records::{self, ClaimRecord};
use crate::sysfs::Sysfs;

pub const BEGIN: &str = "# BEGIN hpmmap-vf";
pub const END: &str = "# END hpmmap-vf";
/// The SM's own port is a full member; everyone else only a limited one, so ports in the
/// default partition reach the SM (and full members the admin lists) but not each other.
pub const DEFAULT_LINE: &str = "Default=0x7fff,ipoib : ALL=limited, SELF=full ;";

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Membership {
    Full,
    Limited,
    Both,
}

impl Membership {
    fn parse(s: &str) -> Membership {
        // opensm(8): "When omitted (or unrecognized) limited membership is assumed."
        match s.trim() {
            "full" => Membership::Full,
            "both" => Membership::Both,
            _ => Membership::Limited,
        }
    }
    pub fn is_full(&self) -> bool {
        matches!(self, Membership::Full | Membership::Both)
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Member {
    Guid(u64),
    All,
    AllCas,
    AllSwitches,
    AllRouters,
    SelfPort,
}

impl Member {
    /// Whether a channel adapter port with this GUID (a VF is one) is covered.
    fn covers_ca(&self, guid: u64) -> bool {
        match self {
            Member::Guid(g) => *g == guid,
            Member::All | Member::AllCas => true,
            _ => false,
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Partition {
    pub name: String,
    /// The 15-bit key; None when OpenSM is left to generate one.
    pub pkey: Option<u16>,
    pub ipoib: bool,
    pub members: Vec<(Member, Membership)>,
    pub mgids: Vec<String>,
    /// 1-based line of the definition.
    pub line: usize,
    /// Inside the block this tool writes.
    pub generated: bool,
}

const MGROUP_FLAGS: &[&str] = &["rate", "mtu", "sl", "scope", "Q_Key", "TClass", "FlowLabel"];

fn number(s: &str) -> Option<u64> {
    let t = s.trim();
    match t.strip_prefix("0x").or_else(|| t.strip_prefix("0X")) {
        Some(h) => u64::from_str_radix(h, 16).ok(),
        None => t.parse().ok(),
    }
}

/// Parses partitions.conf as opensm(8) documents it:
/// `[Name][=PKey][,ipoib][,indx0][,mgroup_flag]*[,defmember=full|limited|both] :
/// [PortGUID[=full|limited|both]][,...] [mgid=GID[,mgroup_flag]* NEWLINE]* ;`,
/// `#` to the end of a line a comment, white space allowed around delimiters.
/// Errors carry the line number.
pub fn parse(text: &str) -> Result<Vec<Partition>, (usize, String)> {
    let mut out = Vec::new();
    let mut stmt = String::new();
    let mut stmt_line = 0;
    let mut in_block = false;
    let mut block_of_stmt = false;
    for (i, raw) in text.lines().enumerate() {
        let n = i + 1;
        let t = raw.trim();
        if t.starts_with(BEGIN) {
            in_block = true;
        } else if t.starts_with(END) {
            in_block = false;
        }
        let code = raw.split('#').next().unwrap_or("");
        for c in code.chars() {
            if c == ';' {
                if !stmt.trim().is_empty() {
                    let mut p = statement(&stmt, stmt_line)?;
                    p.generated = block_of_stmt;
                    out.push(p);
                }
                stmt.clear();
                continue;
            }
            if stmt.trim().is_empty() && !c.is_whitespace() {
                stmt_line = n;
                block_of_stmt = in_block;
            }
            stmt.push(c);
        }
        stmt.push('\n');
    }
    if !stmt.trim().is_empty() {
        return Err((stmt_line, "partition definition not ended by ';'".into()));
    }
    Ok(out)
}

fn statement(s: &str, line: usize) -> Result<Partition, (usize, String)> {
    let err = |m: String| (line, m);
    let (def, props) = s
        .split_once(':')
        .ok_or_else(|| err("no ':' between the partition definition and its members".into()))?;
    let mut items = def.split(',');
    let head = items.next().unwrap_or("").trim();
    let (name, pkey) = match head.split_once('=') {
        Some((n, k)) => {
            let v =
                number(k).ok_or_else(|| err(format!("P_Key '{}' is not a number", k.trim())))?;
            if v > 0xffff {
                return Err(err(format!("P_Key '{}' is over 16 bits", k.trim())));
            }
            (n.trim().to_string(), Some((v & 0x7fff) as u16))
        }
        None => (head.to_string(), None),
    };
    if name.chars().any(char::is_whitespace) {
        return Err(err(format!("partition name '{name}' contains white space")));
    }
    let mut p = Partition {
        name,
        pkey,
        ipoib: false,
        members: Vec::new(),
        mgids: Vec::new(),
        line,
        generated: false,
    };
    let mut defmember = Membership::Limited;
    for f in items.map(str::trim) {
        let (k, v) = f
            .split_once('=')
            .map_or((f, None), |(k, v)| (k.trim(), Some(v.trim())));
        match (k, v) {
            ("ipoib", None) => p.ipoib = true,
            ("indx0", None) => {}
            ("defmember", Some(m)) if ["full", "limited", "both"].contains(&m) => {
                defmember = Membership::parse(m)
            }
            (k, Some(v)) if MGROUP_FLAGS.contains(&k) && number(v).is_some() => {}
            _ => return Err(err(format!("unknown partition flag '{f}'"))),
        }
    }
    let mut props = props.to_string();
    // opensm(8) shows "Name = 0x80 : defmember=limited : members": a second ':' after a
    // leading defmember sets it for this line.
    if let Some(rest) = props.trim_start().strip_prefix("defmember=") {
        if let Some((m, tail)) = rest.split_once(':') {
            defmember = Membership::parse(m);
            props = tail.to_string();
        }
    }
    let mut in_mgid = false;
    for item in props.split([',', '\n']).map(str::trim) {
        if item.is_empty() {
            continue;
        }
        let (k, v) = item
            .split_once('=')
            .map_or((item, None), |(k, v)| (k.trim(), Some(v.trim())));
        if k == "mgid" {
            let g = v.unwrap_or("");
            if !g.to_ascii_lowercase().starts_with("ff") || !g.contains(':') {
                return Err(err(format!("mgid '{g}' is not a multicast GID")));
            }
            p.mgids.push(g.to_string());
            in_mgid = true;
            continue;
        }
        if in_mgid && MGROUP_FLAGS.contains(&k) {
            if v.and_then(number).is_none() {
                return Err(err(format!("multicast flag '{item}' needs a number")));
            }
            continue;
        }
        in_mgid = false;
        let member = match k {
            "ALL" => Member::All,
            "ALL_CAS" => Member::AllCas,
            "ALL_SWITCHES" => Member::AllSwitches,
            "ALL_ROUTERS" => Member::AllRouters,
            "SELF" => Member::SelfPort,
            g => Member::Guid(
                number(g).ok_or_else(|| err(format!("port '{g}' is not a GUID or keyword")))?,
            ),
        };
        p.members
            .push((member, v.map_or(defmember, Membership::parse)));
    }
    Ok(p)
}

/// The partition through which two VF port GUIDs could exchange packets: both members,
/// at least one of them full.
pub fn shared_partition(parts: &[Partition], a: Guid, b: Guid) -> Option<&Partition> {
    let membership = |p: &Partition, g: Guid| -> Option<bool> {
        let ms: Vec<bool> = p
            .members
            .iter()
            .filter(|(m, _)| m.covers_ca(g.0))
            .map(|(_, ms)| ms.is_full())
            .collect();
        (!ms.is_empty()).then(|| ms.iter().any(|f| *f))
    };
    parts
        .iter()
        .find(|p| match (membership(p, a), membership(p, b)) {
            (Some(fa), Some(fb)) => fa || fb,
            _ => false,
        })
}

/// One job's partition: its key and its VFs' port GUIDs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct JobPartition {
    pub job: String,
    pub pkey: u16,
    /// (port GUID, full member, where: "VF on host (pid)")
    pub ports: Vec<(Guid, bool, String)>,
}

/// The partitions of running jobs, from claim records (those without a P_Key are in no
/// job partition). Fails when two jobs claim one key: that would join them.
pub fn jobs_from_records(recs: &[ClaimRecord]) -> Result<Vec<JobPartition>, VfError> {
    let mut by_key: BTreeMap<u16, JobPartition> = BTreeMap::new();
    for r in recs {
        let Some(ib) = &r.ib else { continue };
        let Some(pk) = ib.pkey else { continue };
        let e = by_key.entry(pk.base()).or_insert_with(|| JobPartition {
            job: r.job.clone(),
            pkey: pk.base(),
            ports: Vec::new(),
        });
        if e.job != r.job {
            return Err(VfError::PkeyInUse {
                pkey: format!("{:#06x}", pk.base()),
                job: e.job.clone(),
                path: PathBuf::from(format!("claim of VF {} by job '{}'", r.vf, r.job)),
            });
        }
        e.ports.push((
            ib.guid,
            pk.full(),
            format!("VF {} on {} (pid {})", r.vf, r.host, r.pid),
        ));
    }
    Ok(by_key.into_values().collect())
}

/// partitions.conf with the block of job partitions replaced (or appended); everything
/// else in `existing` is kept. Without an existing file, the default partition line
/// comes first so the SM keeps its own full membership.
pub fn render(existing: Option<&str>, jobs: &[JobPartition]) -> String {
    let mut out = String::new();
    match existing {
        Some(text) => {
            let mut skipping = false;
            for l in text.lines() {
                let t = l.trim_start();
                if t.starts_with(BEGIN) {
                    skipping = true;
                    continue;
                }
                if t.starts_with(END) {
                    skipping = false;
                    continue;
                }
                if !skipping {
                    out.push_str(l);
                    out.push('\n');
                }
            }
        }
        None => {
            out.push_str("# OpenSM partitions (opensm(8), PARTITION CONFIGURATION).\n");
            out.push_str(
                "# Ports are limited members of Default: they reach the SM, not each other.\n",
            );
            out.push_str(DEFAULT_LINE);
            out.push('\n');
        }
    }
    out.push_str(&format!(
        "{BEGIN}: job partitions from 'hpmmap-vf partitions'; edits inside are lost\n"
    ));
    for j in jobs {
        for (_, _, why) in &j.ports {
            out.push_str(&format!("# job '{}': {why}\n", j.job));
        }
        let members: Vec<String> = j
            .ports
            .iter()
            .map(|(g, full, _)| format!("{g}={}", if *full { "full" } else { "limited" }))
            .collect();
        out.push_str(&format!(
            "hpmmap_{}={:#06x},ipoib : {} ;\n",
            j.job,
            j.pkey,
            members.join(", ")
        ));
    }
    out.push_str(END);
    out.push('\n');
    out
}

/// What would let ports of different jobs reach each other, or put a job's VF where the
/// admin did not mean it to be: a full-member default rule covering the VFs, a job key
/// the admin's own partitions use, a job VF in one of the admin's partitions.
pub fn isolation_problems(parts: &[Partition], jobs: &[JobPartition]) -> Vec<String> {
    let mut out = Vec::new();
    let static_parts: Vec<&Partition> = parts.iter().filter(|p| !p.generated).collect();
    for p in &static_parts {
        let full_all = p
            .members
            .iter()
            .any(|(m, ms)| matches!(m, Member::All | Member::AllCas) && ms.is_full());
        if full_all {
            out.push(format!(
                "line {}: partition '{}' makes every channel adapter a full member, so VFs of different jobs reach each other through it; use ALL=limited and list the host ports that need full membership",
                p.line, p.name
            ));
        }
    }
    for j in jobs {
        for p in &static_parts {
            if p.pkey == Some(j.pkey) {
                out.push(format!(
                    "line {}: P_Key {:#06x} of job '{}' is also the admin's partition '{}'",
                    p.line, j.pkey, j.job, p.name
                ));
            }
            for (g, _, why) in &j.ports {
                if p.members.iter().any(|(m, _)| *m == Member::Guid(g.0)) {
                    out.push(format!(
                        "line {}: port GUID {g} of job '{}' ({why}) is already in partition '{}'",
                        p.line, j.job, p.name
                    ));
                }
            }
        }
    }
    out
}

/// Claim records of running jobs from the registry directories (this host's
/// `/run/hpmmap/vf`, or directories collected from several nodes).
pub fn live_records(sysfs: &Sysfs, dirs: &[PathBuf]) -> (Vec<ClaimRecord>, Vec<String>) {
    let mut recs = Vec::new();
    let mut notes = Vec::new();
    for d in dirs {
        for (p, r) in records::list_in(d) {
            match r {
                Ok(r) if records::is_live(sysfs, &r) => recs.push(r),
                Ok(r) => notes.push(format!(
                    "{}: job '{}' (pid {}) is gone; left out (run 'hpmmap-vf recover' on {})",
                    p.display(),
                    r.job,
                    r.pid,
                    r.host
                )),
                Err(e) => notes.push(format!("{e}; left out")),
            }
        }
    }
    (recs, notes)
}

/// Reads and parses an existing partitions.conf; None when there is none.
pub fn read(path: &Path) -> Result<Option<(String, Vec<Partition>)>, VfError> {
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(source) => {
            return Err(VfError::Sysfs {
                op: "read",
                path: path.to_path_buf(),
                source,
            })
        }
    };
    let parts = parse(&text).map_err(|(line, reason)| VfError::BadPartitions {
        path: path.to_path_buf(),
        line,
        reason,
    })?;
    Ok(Some((text, parts)))
}

/// The outcome of [`update`].
#[derive(Debug)]
pub struct Update {
    pub text: String,
    pub jobs: Vec<JobPartition>,
    pub notes: Vec<String>,
    pub problems: Vec<String>,
}

/// Renders the new partitions.conf for `path` from the records and checks it: it must
/// parse under the documented grammar, and every pair of jobs must share no partition.
/// Writes nothing.
pub fn update(sysfs: &Sysfs, path: &Path, dirs: &[PathBuf]) -> Result<Update, VfError> {
    let (recs, notes) = live_records(sysfs, dirs);
    let jobs = jobs_from_records(&recs)?;
    let existing = read(path)?;
    let text = render(existing.as_ref().map(|(t, _)| t.as_str()), &jobs);
    let parts = parse(&text).map_err(|(line, reason)| VfError::BadPartitions {
        path: path.to_path_buf(),
        line,
        reason: format!("in the generated file: {reason}"),
    })?;
    let mut problems = isolation_problems(&parts, &jobs);
    for (i, a) in jobs.iter().enumerate() {
        for b in &jobs[i + 1..] {
            for (ga, _, _) in &a.ports {
                for (gb, _, _) in &b.ports {
                    if let Some(p) = shared_partition(&parts, *ga, *gb) {
                        let msg = format!(
                            "jobs '{}' and '{}' can reach each other through partition '{}' (line {})",
                            a.job, b.job, p.name, p.line
                        );
                        if !problems.contains(&msg) {
                            problems.push(msg);
                        }
                    }
                }
            }
        }
    }
    Ok(Update {
        text,
        jobs,
        notes,
        problems,
    })
}

/// Processes named opensm, from /proc.
pub fn find_opensm(sysfs: &Sysfs) -> Vec<u32> {
    let proc_root = sysfs.proc("");
    let mut pids: Vec<u32> = sysfs
        .list(&proc_root)
        .ok()
        .flatten()
        .unwrap_or_default()
        .iter()
        .filter_map(|e| e.parse::<u32>().ok())
        .filter(|pid| {
            sysfs
                .read_opt(&proc_root.join(pid.to_string()).join("comm"))
                .ok()
                .flatten()
                .is_some_and(|c| c == "opensm")
        })
        .collect();
    pids.sort_unstable();
    pids
}

/// Sends SIGHUP: opensm starts a heavy sweep, which re-reads partitions.conf.
pub fn signal_opensm(pid: u32) -> std::io::Result<()> {
    let pid =
        libc::pid_t::try_from(pid).map_err(|_| std::io::Error::from_raw_os_error(libc::ESRCH))?;
    // SAFETY: kill(2) with a positive pid found as opensm in /proc and a plain signal
    // number touches no memory of ours.
    if unsafe { libc::kill(pid, libc::SIGHUP) } == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn documented_forms_parse() {
        // The forms opensm(8) documents, written afresh.
        let text = "\
Default=0x7fff : ALL, SELF=full ;   # limited for all, full for the SM
Other = 0x0300 , ipoib, defmember=full : 0x0002c90300000001, 0x2=limited,
   0x3=both ;
Mixed,ipoib : 0x123456=full, 0x3456789034=limi, 0x2134af2306 ;
Split = 0x80 : defmember=full : 0x10, 0x11=limited;
Mc=0x7ffe,ipoib,rate=3,mtu=4:
    mgid=ff12:401b::0707,sl=1   # a group
    mgid=ff12::1,Q_Key=0x1,TClass=0
    ALL_CAS=full, ALL_SWITCHES, ALL_ROUTERS;
Empty=0x22: ;
";
        let p = parse(text).unwrap();
        assert_eq!(p.len(), 6);
        assert_eq!(p[0].pkey, Some(0x7fff));
        assert_eq!(
            p[0].members,
            vec![
                (Member::All, Membership::Limited),
                (Member::SelfPort, Membership::Full)
            ]
        );
        assert_eq!(
            p[1].members[0],
            (Member::Guid(0x0002_c903_0000_0001), Membership::Full)
        );
        assert_eq!(p[1].members[1].1, Membership::Limited);
        assert_eq!(p[1].members[2].1, Membership::Both);
        assert_eq!((p[1].line, p[1].ipoib), (2, true));
        assert_eq!(p[2].pkey, None);
        assert_eq!(
            p[2].members[1].1,
            Membership::Limited,
            "unrecognised = limited"
        );
        assert_eq!(p[3].members[0].1, Membership::Full);
        assert_eq!(p[4].mgids.len(), 2);
        assert_eq!(p[4].members.len(), 3);
        assert!(p[5].members.is_empty());
    }

    #[test]
    fn grammar_errors_name_the_line() {
        for (text, line) in [
            ("Default=0x7fff : ALL=full\n", 1),
            ("A=0x1 : 0x1 ;\nB=0x2 0x3 ;\n", 2),
            ("\n\nA=zz : ALL ;", 3),
            ("A=0x10000 : ALL ;", 1),
            ("A=0x1,bogus : ALL ;", 1),
            ("A=0x1 : 0xnotaguid ;", 1),
            ("A=0x1 : mgid=1234::1 ;", 1),
        ] {
            let e = parse(text).expect_err(text);
            assert_eq!(e.0, line, "{text}: {e:?}");
        }
    }

    #[test]
    fn reachability_follows_membership() {
        let p = parse(
            "Default=0x7fff : ALL=limited, SELF=full ;\nA=0x1 : 0x1=full, 0x2=full ;\nB=0x2 : 0x3=full, 0x4=limited ;\n",
        )
        .unwrap();
        let g = Guid;
        assert_eq!(shared_partition(&p, g(1), g(2)).unwrap().name, "A");
        assert_eq!(shared_partition(&p, g(3), g(4)).unwrap().name, "B");
        assert!(shared_partition(&p, g(1), g(3)).is_none());
        assert!(shared_partition(&p, g(2), g(4)).is_none());
        let open = parse("Default=0x7fff : ALL=full ;").unwrap();
        assert_eq!(shared_partition(&open, g(1), g(3)).unwrap().name, "Default");
        let limited = parse("X=0x5 : 0x1, 0x2 ;").unwrap();
        assert!(
            shared_partition(&limited, g(1), g(2)).is_none(),
            "two limited members"
        );
    }
}
