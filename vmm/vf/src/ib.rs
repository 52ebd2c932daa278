//! InfiniBand VFs: node and port GUIDs, link policy, P_Keys.
//!
//! A mlx5 VF comes up with zero GUIDs and the SM will not give it a LID, so it cannot join
//! the fabric. mlx5_core (MLNX_OFED's) offers per-VF attributes on the PF's PCI device:
//! `sriov/<N>/node`, `sriov/<N>/port` (GUIDs as `xx:xx:xx:xx:xx:xx:xx:xx`) and
//! `sriov/<N>/policy` (`Down`, `Up`, `Follow`: whether the VF's port is down, up, or
//! follows the physical port). N is the VF's index, the N of the PF's `virtfnN` link.
//! The claim sets them before the guest gets the VF and writes the originals back on
//! release; see [`crate::claim`].

use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;

use crate::discover::list_vfs;
use crate::error::VfError;
use crate::pci::PciAddr;
use crate::sysfs::Sysfs;

/// A 64-bit EUI-64 node or port GUID.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Guid(pub u64);

impl Guid {
    /// The forms administrators and the kernel write: `0x0002c90300a1b2c3` or
    /// `0002c90300a1b2c3` (16 hex digits), `00:02:c9:03:00:a1:b2:c3` (mlx5's sriov
    /// attributes) or `0002:c903:00a1:b2c3` (the infiniband class's `node_guid`). Always all
    /// 64 bits: a short GUID is a typo, not a small number.
    pub fn parse_any(s: &str) -> Result<Guid, String> {
        let t = s.trim();
        let body = t
            .strip_prefix("0x")
            .or_else(|| t.strip_prefix("0X"))
            .unwrap_or(t);
        let groups: Vec<&str> = body.split(':').collect();
        let ok_shape = match groups.len() {
            1 => groups[0].len() == 16,
            4 => groups.iter().all(|g| g.len() == 4),
            8 => groups.iter().all(|g| g.len() == 2),
            _ => false,
        };
        let hex: String = groups.concat();
        if !ok_shape || !hex.chars().all(|c| c.is_ascii_hexdigit()) {
            return Err("not a 64-bit GUID (16 hex digits, e.g. 0x0002c90300a1b2c3 or 00:02:c9:03:00:a1:b2:c3)".into());
        }
        u64::from_str_radix(&hex, 16)
            .map(Guid)
            .map_err(|e| e.to_string())
    }

    /// A GUID a user may give a VF: all 64 bits, not 0 (unset) and not all ones.
    pub fn parse_user(s: &str) -> Result<Guid, VfError> {
        let bad = |reason: &str| VfError::BadGuid {
            value: s.to_string(),
            reason: reason.to_string(),
        };
        let g = Guid::parse_any(s).map_err(|r| bad(&r))?;
        match g.0 {
            0 => Err(bad("0 means 'no GUID': the SM ignores such a port")),
            u64::MAX => Err(bad("all ones is reserved")),
            _ => Ok(g),
        }
    }

    /// mlx5's sriov attribute format.
    pub fn sysfs(&self) -> String {
        let b = self.0.to_be_bytes();
        b.iter()
            .map(|x| format!("{x:02x}"))
            .collect::<Vec<_>>()
            .join(":")
    }
}

/// As OpenSM, ibstat and partitions.conf write it.
impl fmt::Display for Guid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:#018x}", self.0)
    }
}

/// A P_Key as the user gives it: the 15-bit key and, in bit 15, full (1) or limited (0)
/// membership. Limited members talk only to full members of the same partition.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Pkey(u16);

impl Pkey {
    pub const FULL: u16 = 0x8000;

    /// `0x8123` (full member of partition 0x0123) or `0x0123` (limited member).
    pub fn parse(s: &str) -> Result<Pkey, VfError> {
        let bad = |reason: &str| VfError::BadPkey {
            value: s.to_string(),
            reason: reason.to_string(),
        };
        let t = s.trim();
        let Some(hex) = t.strip_prefix("0x").or_else(|| t.strip_prefix("0X")) else {
            return Err(bad(
                "write P_Keys in hex with 0x: 0x8123 (full member) or 0x0123 (limited member)",
            ));
        };
        if hex.is_empty() || !hex.chars().all(|c| c.is_ascii_hexdigit()) {
            return Err(bad("not a hex number"));
        }
        let v = u32::from_str_radix(hex.trim_start_matches('0'), 16).unwrap_or(0);
        if hex.trim_start_matches('0').len() > 4 || v > 0xffff {
            return Err(bad("out of range: a P_Key is 16 bits (0x0001-0x7ffe, with 0x8000 set for full membership)"));
        }
        Pkey::from_raw(v as u16).map_err(|r| bad(&r))
    }

    pub fn from_raw(v: u16) -> Result<Pkey, String> {
        match v & 0x7fff {
            0 => Err("0x0000 / 0x8000 is the invalid P_Key".into()),
            0x7fff => Err("0x7fff / 0xffff is the default partition, which every port is in; a job needs its own".into()),
            _ => Ok(Pkey(v)),
        }
    }

    /// The 15-bit partition key (what partitions.conf names the partition by).
    pub fn base(&self) -> u16 {
        self.0 & 0x7fff
    }
    pub fn full(&self) -> bool {
        self.0 & Self::FULL != 0
    }
    pub fn raw(&self) -> u16 {
        self.0
    }
}

impl fmt::Display for Pkey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:#06x}", self.0)
    }
}

/// mlx5's VF port state policy.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LinkPolicy {
    Down,
    Up,
    Follow,
}

impl LinkPolicy {
    pub fn as_str(&self) -> &'static str {
        match self {
            LinkPolicy::Down => "Down",
            LinkPolicy::Up => "Up",
            LinkPolicy::Follow => "Follow",
        }
    }
}

impl FromStr for LinkPolicy {
    type Err = ();
    fn from_str(s: &str) -> Result<Self, ()> {
        match s.trim() {
            "Down" => Ok(LinkPolicy::Down),
            "Up" => Ok(LinkPolicy::Up),
            "Follow" => Ok(LinkPolicy::Follow),
            _ => Err(()),
        }
    }
}

/// Checks a job name: it becomes part of an OpenSM partition name and of file names.
pub fn validate_job(s: &str) -> Result<(), VfError> {
    let ok = !s.is_empty()
        && s.len() <= 64
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'));
    if ok {
        Ok(())
    } else {
        Err(VfError::BadJob {
            value: s.to_string(),
        })
    }
}

/// `--vf-guid`, `--pkey`, `--job`: what an InfiniBand VF gets besides the binding.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct IbOptions {
    /// Node and port GUID for the VF; derived from the PF's GUID when None.
    pub guid: Option<Guid>,
    /// The job's partition; None leaves the VF in no job partition.
    pub pkey: Option<Pkey>,
    /// Names the job in claim records and partitions.conf; `pid<N>` when None.
    pub job: Option<String>,
}

impl IbOptions {
    /// From the command line's strings; every error is an input error and nothing on the
    /// host has been looked at yet.
    pub fn parse(
        guid: Option<&str>,
        pkey: Option<&str>,
        job: Option<&str>,
    ) -> Result<IbOptions, VfError> {
        let guid = guid.map(Guid::parse_user).transpose()?;
        let pkey = pkey.map(Pkey::parse).transpose()?;
        if let Some(j) = job {
            validate_job(j)?;
        }
        Ok(IbOptions {
            guid,
            pkey,
            job: job.map(str::to_string),
        })
    }
}

/// An InfiniBand port on a PF: its IB device and node GUID.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IbPort {
    pub ibdev: String,
    pub node_guid: Option<Guid>,
}

/// The PF's InfiniBand device when its port runs InfiniBand (not RoCE / Ethernet).
/// None for an Ethernet port or a device with no RDMA driver.
pub fn ib_port_of(sysfs: &Sysfs, pf: PciAddr) -> Result<Option<IbPort>, VfError> {
    let dir = sysfs.pci_dev(pf).join("infiniband");
    for ibdev in sysfs.list(&dir)?.unwrap_or_default() {
        let d = dir.join(&ibdev);
        let ll = sysfs.read_opt(&d.join("ports/1/link_layer"))?;
        let is_ib = match ll {
            Some(l) => l.trim() == "InfiniBand",
            // Older trees without ports/: an IPoIB netdev (type 32, ARPHRD_INFINIBAND)
            // on the PF says the same.
            None => pf_has_ipoib(sysfs, pf)?,
        };
        if is_ib {
            let node_guid = sysfs
                .read_opt(&d.join("node_guid"))?
                .and_then(|g| Guid::parse_any(&g).ok());
            return Ok(Some(IbPort { ibdev, node_guid }));
        }
    }
    Ok(None)
}

fn pf_has_ipoib(sysfs: &Sysfs, pf: PciAddr) -> Result<bool, VfError> {
    let net = sysfs.pci_dev(pf).join("net");
    for n in sysfs.list(&net)?.unwrap_or_default() {
        if sysfs.read_opt(&net.join(&n).join("type"))?.as_deref() == Some("32") {
            return Ok(true);
        }
    }
    Ok(false)
}

/// N of the PF's `virtfnN` link that points at `vf`.
pub fn vf_index(sysfs: &Sysfs, pf: PciAddr, vf: PciAddr) -> Result<u32, VfError> {
    list_vfs(sysfs, pf)?
        .into_iter()
        .find(|(_, a)| *a == vf)
        .map(|(i, _)| i)
        .ok_or_else(|| VfError::BadAttr {
            path: sysfs.pci_dev(pf),
            value: vf.to_string(),
            expected: "a virtfnN link to the VF",
        })
}

/// GUIDs for VF `index` of a PF: locally administered (0x02 in the top byte, so never a
/// vendor-assigned GUID), the VF index in the next 16 bits, and the PF GUID's low 40 bits,
/// which carry the adapter's serial (a ConnectX GUID is OUI, 0x0300, then the serial's 24
/// bits). Two VFs of one PF never collide, and neither do VFs of two PFs whose GUIDs
/// differ in their low 40 bits, which holds for one vendor's adapters.
pub fn derive_guid(pf_guid: Guid, index: u32) -> Guid {
    Guid((0x02 << 56) | (u64::from(index & 0xffff) << 40) | (pf_guid.0 & 0xff_ffff_ffff))
}

/// The VF's three attribute files.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VfIbAttrs {
    pub node: PathBuf,
    pub port: PathBuf,
    pub policy: PathBuf,
}

pub fn vf_attrs(sysfs: &Sysfs, pf: PciAddr, index: u32) -> VfIbAttrs {
    let d = sysfs.pci_dev(pf).join(format!("sriov/{index}"));
    VfIbAttrs {
        node: d.join("node"),
        port: d.join("port"),
        policy: d.join("policy"),
    }
}

/// What the VF had before, and what it gets.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IbSetup {
    pub pf: PciAddr,
    pub index: u32,
    pub guid: Guid,
    pub pkey: Option<Pkey>,
    /// The attributes as read before the claim, written back verbatim on release.
    pub orig_node: String,
    pub orig_port: String,
    pub orig_policy: String,
}

impl IbSetup {
    /// Attribute files in the order they are set (and, reversed, restored), with the
    /// value to set and the value to restore.
    pub fn steps(&self, sysfs: &Sysfs) -> [(PathBuf, String, String); 3] {
        let a = vf_attrs(sysfs, self.pf, self.index);
        [
            (a.node, self.guid.sysfs(), self.orig_node.clone()),
            (a.port, self.guid.sysfs(), self.orig_port.clone()),
            (
                a.policy,
                LinkPolicy::Follow.as_str().into(),
                self.orig_policy.clone(),
            ),
        ]
    }
}

/// Reads what setting up VF `index` of an InfiniBand PF will change; writes nothing.
/// Refuses a driver without the attributes: a VF without GUIDs cannot join the fabric.
pub fn plan(
    sysfs: &Sysfs,
    pf: PciAddr,
    port: &IbPort,
    index: u32,
    opts: &IbOptions,
) -> Result<IbSetup, VfError> {
    let a = vf_attrs(sysfs, pf, index);
    let mut orig = Vec::new();
    for p in [&a.node, &a.port, &a.policy] {
        match sysfs.read_opt(p)? {
            Some(v) => orig.push(v.trim().to_string()),
            None => {
                return Err(VfError::GuidUnsupported {
                    pf,
                    driver: sysfs.driver_of(pf)?.unwrap_or_else(|| "no driver".into()),
                    path: p.clone(),
                })
            }
        }
    }
    let guid = match (opts.guid, port.node_guid) {
        (Some(g), _) => g,
        (None, Some(pf_guid)) if pf_guid.0 != 0 => derive_guid(pf_guid, index),
        (None, _) => {
            return Err(VfError::BadAttr {
                path: sysfs
                    .pci_dev(pf)
                    .join(format!("infiniband/{}/node_guid", port.ibdev)),
                value: "missing or zero".into(),
                expected: "the PF's node GUID to derive VF GUIDs from (or pass --vf-guid)",
            })
        }
    };
    let [node, port_v, policy]: [String; 3] = orig.try_into().expect("three attributes");
    Ok(IbSetup {
        pf,
        index,
        guid,
        pkey: opts.pkey,
        orig_node: node,
        orig_port: port_v,
        orig_policy: policy,
    })
}

/// One write of a VF attribute, with a driver's refusal told apart from other failures.
pub fn write_attr(sysfs: &Sysfs, path: &std::path::Path, value: &str) -> Result<(), VfError> {
    sysfs.write(path, value).map_err(|e| match e {
        VfError::Sysfs { path, source, .. }
            if matches!(
                source.raw_os_error(),
                Some(libc::EINVAL | libc::EOPNOTSUPP | libc::EPERM | libc::EIO | 524)
            ) =>
        {
            // 524 is the kernel's ENOTSUPP, which mlx5 returns for a port type without
            // the attribute.
            VfError::GuidRefused {
                path,
                value: value.to_string(),
                source,
            }
        }
        e => e,
    })
}

/// Writes back the original attributes for the steps in `done` (the first `done` steps
/// were applied), last first. Every step is tried; the first error is returned.
pub fn restore(sysfs: &Sysfs, setup: &IbSetup, done: usize) -> Result<(), VfError> {
    let mut first = None;
    for (path, _, orig) in setup.steps(sysfs).into_iter().take(done).rev() {
        // The kernel prints "Invalid policy" for a state it has no name for; writing it
        // back would fail, and there is nothing better to restore.
        if orig.parse::<LinkPolicy>().is_err() && path.ends_with("policy") {
            continue;
        }
        if !path.exists() {
            // The VFs were disabled: the attributes went with them.
            continue;
        }
        if let Err(e) = write_attr(sysfs, &path, &orig) {
            first.get_or_insert(e);
        }
    }
    first.map_or(Ok(()), Err)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn guid_forms_and_rejections() {
        let g = Guid(0x0002_c903_00a1_b2c3);
        for s in [
            "0x0002c90300a1b2c3",
            "0002c90300a1b2c3",
            "00:02:c9:03:00:a1:b2:c3",
            "0002:c903:00a1:b2c3",
        ] {
            assert_eq!(Guid::parse_user(s).unwrap(), g, "{s}");
        }
        assert_eq!(g.sysfs(), "00:02:c9:03:00:a1:b2:c3");
        assert_eq!(g.to_string(), "0x0002c90300a1b2c3");
        for s in [
            "0x2c90300a1b2c3",
            "0x10002c90300a1b2c3",
            "00:02:c9:03:00:a1:b2",
            "0:2:c9:3:0:a1:b2:c3",
            "xyz",
            "",
            "0x0000000000000000",
            "ff:ff:ff:ff:ff:ff:ff:ff",
        ] {
            let e = Guid::parse_user(s).unwrap_err();
            assert!(matches!(e, VfError::BadGuid { .. }), "{s}");
            assert!(e.is_input_error());
        }
    }

    #[test]
    fn pkey_range_and_membership() {
        let p = Pkey::parse("0x8123").unwrap();
        assert_eq!((p.base(), p.full()), (0x123, true));
        let p = Pkey::parse("0x0123").unwrap();
        assert_eq!(
            (p.base(), p.full(), p.to_string()),
            (0x123, false, "0x0123".into())
        );
        assert_eq!(Pkey::parse("0x7ffe").unwrap().base(), 0x7ffe);
        assert_eq!(Pkey::parse("0x0001").unwrap().base(), 1);
        for s in [
            "0x0000", "0x8000", "0x7fff", "0xffff", "0x10000", "0x1ffff", "123", "0x", "0xg1",
            "-0x1",
        ] {
            let e = Pkey::parse(s).unwrap_err();
            assert!(matches!(e, VfError::BadPkey { .. }), "{s}");
        }
    }

    #[test]
    fn derived_guids_are_distinct_per_vf_and_local() {
        let pf = Guid(0x9803_9b03_006c_4f10);
        let a = derive_guid(pf, 0);
        let b = derive_guid(pf, 1);
        assert_ne!(a, b);
        assert_eq!(a, Guid(0x0200_0003_006c_4f10));
        assert_eq!(b, Guid(0x0200_0103_006c_4f10));
        assert_eq!(a.0 >> 56, 0x02, "locally administered");
        assert_ne!(derive_guid(Guid(0x9803_9b03_006c_4f11), 0), a);
    }

    #[test]
    fn job_names() {
        assert!(validate_job("job-42.a_b").is_ok());
        for j in [
            "",
            "a b",
            "a:b",
            "a;b",
            "a=b",
            "a,b",
            "a#b",
            &"x".repeat(65),
        ] {
            assert!(validate_job(j).is_err(), "{j}");
        }
    }
}
