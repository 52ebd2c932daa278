//! Issue 15.5 in the nested lab: a real MPI application from Debian's packages as a job image,
//! booted as L2 under `hpmmap-vmm` (root tree on the read-only virtio-blk disk, results back
//! through `--output`). LAMMPS's bundled melt example with 1 and with 2 ranks, each image built
//! with and without hpmmap: the thermo table is the same, the hpmmap runs take no hpmmap
//! fault with one registered process per rank, and `log.lammps` comes back on the host side
//! of the VMM. Debian's hpcc with 2 ranks under hpmmap passes its own checks as L2 under
//! hpmmap-vmm, with one counters line per rank. Four L2 boots of a 160 MB squashfs tree take minutes of TCG, so this is its own
//! command (images/README.md): `cargo test -p hpmmap-tests --test mpi_image_lab -- --ignored`.
//! Figures from here are emulation figures (nested lab under QEMU/TCG), never hardware.

use hpmmap_image::lab::{parse_add, Lab, LabConfig, MAX_BOOTS};
use hpmmap_tests::*;
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

const SCENARIO: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/lab/mpi-image.sh");
const RETRY: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/lab/retry.sh");
const TEST: &str = "lammps_melt_under_hpmmap_vmm_gives_the_same_thermo_as_without_hpmmap";
const HPCCINF: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/lab/hpccinf.txt");

/// LAMMPS's melt deck from Debian's lammps-examples.
fn melt_deck(dir: &Path) -> PathBuf {
    let cache = hpmmap_image::debs::DebCache::from_env();
    let deb = cache.get("lammps-examples", None).expect("lammps-examples");
    let deck = dir.join("melt");
    std::fs::create_dir_all(&deck).unwrap();
    let melt = deb
        .read_member("./usr/share/lammps/examples/melt/in.melt")
        .unwrap();
    std::fs::write(deck.join("in.melt"), melt).unwrap();
    deck
}

fn build_image(tool: &Path, out: &Path, deck: &Path, ranks: u32, hpmmap: bool) {
    let mut c = Command::new(tool);
    c.args(["build", "--quiet", "--out"]).arg(out);
    c.args(["--packages", "openmpi-bin,lammps", "--add"])
        .arg(format!("{}:/job/melt", deck.display()));
    c.args([
        "--workdir",
        "/job/melt",
        "--job",
        "lmp -in in.melt -log /out/log.lammps",
    ]);
    c.args(["--ranks", &ranks.to_string()]);
    if !hpmmap {
        c.arg("--no-hpmmap");
    }
    let o = c.output().unwrap();
    assert!(
        o.status.success(),
        "hpmmap-image build: {}",
        String::from_utf8_lossy(&o.stderr)
    );
}

/// The lab's tier check and the host tools: hpmmap-image and an empty work directory.
fn lab_and_tools(test: &str, what: &str) -> Option<(PathBuf, PathBuf)> {
    let why = lab_skip_reason()
        .or_else(|| built_host_binary("hpmmap-vmm").err())
        .or_else(|| built_host_binary("hpmmap-image").err());
    if !lab_ready(test, why) {
        return None;
    }
    let tool = built_host_binary("hpmmap-image").unwrap();
    let base = std::env::temp_dir().join(format!("hpmmap-{what}-lab-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&base);
    std::fs::create_dir_all(&base).unwrap();
    Some((tool, base))
}

#[test]
#[ignore = "minutes of nested lab: cargo test -p hpmmap-tests --test mpi_image_lab -- --ignored"]
fn lammps_melt_under_hpmmap_vmm_gives_the_same_thermo_as_without_hpmmap() {
    let Some((tool, base)) = lab_and_tools(TEST, "mpi") else {
        return;
    };
    let deck = melt_deck(&base);
    let images = [
        ("lmp1", 1, true),
        ("nohp1", 1, false),
        ("lmp2", 2, true),
        ("nohp2", 2, false),
    ];
    for (name, ranks, hpmmap) in images {
        build_image(&tool, &base.join(name), &deck, ranks, hpmmap);
    }
    // One L1 per rank count keeps its initramfs (two 160 MB trees) and RAM modest.
    for pair in images.chunks(2) {
        let mut adds = vec![
            parse_add(&format!("{SCENARIO}:/root/mpi-image.sh")).unwrap(),
            parse_add(&format!("{RETRY}:/root/retry.sh")).unwrap(),
        ];
        for (name, ..) in pair {
            adds.push(parse_add(&format!("{}:/{name}", base.join(name).display())).unwrap());
        }
        let lab = Lab::prepare(LabConfig {
            mem: 6 << 30,
            hugepages_1g: 3,
            timeout: Duration::from_secs(2400),
            adds,
            ..LabConfig::default()
        })
        .unwrap();
        let names: Vec<&str> = pair.iter().map(|(n, ..)| *n).collect();
        let out = lab
            .run_rebooting(
                &format!("sh /root/mpi-image.sh {}", names.join(" ")),
                MAX_BOOTS,
            )
            .unwrap();
        let o = &out.output;
        println!("{o}");
        let get = |img: &str, key: &str| {
            value(o, &format!("{img} {key}"))
                .unwrap_or_else(|| panic!("no '{img} {key}=' line:\n{o}"))
                .to_string()
        };
        let (hp, plain) = (pair[0].0, pair[1].0);
        let ranks = pair[0].1;
        for img in [hp, plain] {
            assert_eq!(get(img, "vmm_rc"), "0", "{img}:\n{o}");
            assert_eq!(
                get(img, "thermo_rows"),
                "7",
                "{img}: steps 0..250 and the header:\n{o}"
            );
            let r: Value = serde_json::from_str(&get(img, "report")).unwrap();
            assert_eq!(r["exit_reason"], "job-exit", "{img}");
            assert_eq!(r["output"]["files"], 1, "{img}: log.lammps came back");
            assert!(
                r["image"]["rootfs_bytes"].as_u64().unwrap() > 100 << 20,
                "{img}"
            );
        }
        assert_eq!(
            get(hp, "thermo_md5"),
            get(plain, "thermo_md5"),
            "the same thermo table with and without hpmmap ({ranks} ranks)"
        );
        let hp_lines = prefixed(o, &format!("{hp}: "));
        let counters = hpmmap_counters(&hp_lines).expect("hpmmap counters");
        assert_eq!(counters["faults"], "0", "{ranks} ranks: {counters:?}");
        let peak = hp_lines
            .iter()
            .find_map(|l| l.split("hpmmap peak registered processes: ").nth(1))
            .expect("peak registered line");
        assert_eq!(
            peak.trim(),
            ranks.to_string(),
            "one registered process per rank"
        );
        assert!(
            o.contains(&format!("{plain}: hpmmap-init: platform:"))
                && o.contains("job runs direct")
        );
    }
    let _ = std::fs::remove_dir_all(&base);
}

/// Issue 15.5's hpcc half under the VMM: Debian's hpcc with 2 ranks, every rank under
/// hpmmap-run, as L2 under hpmmap-vmm (root tree on the read-only disk, hpccoutf.txt back
/// through --output) passes HPL's residual check, STREAM's validation and RandomAccess, and
/// each rank's counters line says it took no fault in hpmmap memory.
#[test]
#[ignore = "minutes of nested lab: cargo test -p hpmmap-tests --test mpi_image_lab -- --ignored"]
fn hpcc_passes_its_checks_under_hpmmap_vmm() {
    let Some((tool, base)) = lab_and_tools("hpcc_passes_its_checks_under_hpmmap_vmm", "hpcc")
    else {
        return;
    };
    let img = base.join("hpcc");
    let o = Command::new(&tool)
        .args(["build", "--quiet", "--out"])
        .arg(&img)
        .args(["--packages", "hpcc", "--add"])
        .arg(format!("{HPCCINF}:/out/hpccinf.txt"))
        .args(["--workdir", "/out", "--job", "hpcc", "--ranks", "2"])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let lab = Lab::prepare(LabConfig {
        mem: 6 << 30,
        hugepages_1g: 3,
        timeout: Duration::from_secs(2400),
        adds: vec![
            parse_add(&format!("{SCENARIO}:/root/mpi-image.sh")).unwrap(),
            parse_add(&format!("{RETRY}:/root/retry.sh")).unwrap(),
            parse_add(&format!("{}:/hpcc", img.display())).unwrap(),
        ],
        ..LabConfig::default()
    })
    .unwrap();
    let out = lab
        .run_rebooting("sh /root/mpi-image.sh hpcc", MAX_BOOTS)
        .unwrap();
    let o = &out.output;
    println!("{o}");
    let get = |key: &str| {
        value(o, &format!("hpcc {key}"))
            .unwrap_or_else(|| panic!("no 'hpcc {key}=' line:\n{o}"))
            .to_string()
    };
    assert_eq!(get("vmm_rc"), "0", "{o}");
    assert!(get("hpcc_residual").ends_with("PASSED"), "HPL: {o}");
    assert_ne!(get("hpcc_stream_validates"), "0", "STREAM: {o}");
    assert_eq!(get("hpcc_ra_errors"), "0", "RandomAccess: {o}");
    assert_eq!(get("hpcc_success"), "1", "{o}");
    assert_eq!(get("hpcc_failed"), "0", "{o}");
    let ranks: Vec<&str> = prefixed(o, "hpcc: hpmmap-init: hpmmap-run: rank ")
        .into_iter()
        .collect();
    assert_eq!(ranks.len(), 2, "one counters line per rank: {o}");
    for r in &ranks {
        assert!(r.contains(" faults=0 "), "{r}");
    }
    let _ = std::fs::remove_dir_all(&base);
}
