//! Per-job reservations (issue 13.4): `reserve --job ID`, `release --job ID`, status per
//! job, and the commands without --job, against the recorded one-node host with the
//! kernel's reaction to writes SIMULATED by tests/common/fake_kernel.rs.

mod common;

use common::fake_kernel::FakeKernel;
use common::trees::{self, Tree};
use hpmmap_offline::host::Host;
use hpmmap_offline::release::{self, Amount};
use hpmmap_offline::reserve::{self, Placement, ReserveOptions};
use hpmmap_offline::size::GIB;
use hpmmap_offline::{state, status};

fn host(t: &Tree, k: &FakeKernel) -> Host {
    Host::new(t.sys(), t.proc())
        .with_writer(k.writer())
        .quiet(true)
}

fn opts(size_gib: u64, job: Option<&str>) -> ReserveOptions {
    ReserveOptions {
        size_gib,
        placement: Placement::Node(0),
        keep_bytes: GIB,
        allow_partial: false,
        offline_blocks: true,
        job: job.map(String::from),
    }
}

fn kernel(t: &Tree, free_ranges: u64) -> FakeKernel {
    let k = FakeKernel::new(t.dir.path());
    k.with(|m| {
        m.free_ranges.insert(0, free_ranges);
    });
    k
}

fn no_violations(k: &FakeKernel) {
    k.with(|m| assert!(m.violations.is_empty(), "{:?}", m.violations));
}

/// An hpmmap-vmm of `job` mapping `pages` on node 0 (its command line names the job).
fn add_job_vm(t: &Tree, pid: u32, job: &str, pages: u64) {
    trees::add_vm(t, pid, 0, pages);
    t.write(
        &format!("proc/{pid}/cmdline"),
        &format!("hpmmap-vmm\0--mem\0{pages}G\0--job\0{job}\0"),
    );
}

#[test]
fn two_jobs_hold_their_own_pages_and_one_release_never_takes_the_others() {
    let t = trees::one_node("twojobs");
    let before = t.snapshot();
    let k = kernel(&t, 8);
    let h = host(&t, &k);
    let a = reserve::reserve(&h, &t.state(), &opts(2, Some("alpha"))).unwrap();
    assert!(a.complete, "{a:?}");
    let b = reserve::reserve(&h, &t.state(), &opts(3, Some("beta"))).unwrap();
    assert!(b.complete, "{b:?}");
    assert_eq!(
        (b.nodes[0].others, b.nodes[0].added, b.nodes[0].target),
        (2, 3, 5),
        "beta's 3 come on top of alpha's 2"
    );
    // Idempotent per job: asking again for alpha's 2 changes nothing.
    let writes = k.with(|m| m.writes.len());
    let again = reserve::reserve(&h, &t.state(), &opts(2, Some("alpha"))).unwrap();
    assert_eq!(again.nodes[0].added, 0);
    assert_eq!(k.with(|m| m.writes.len()), writes);
    assert_eq!(t.nr(0), 5);

    let st = state::load(&t.state()).unwrap().unwrap();
    assert_eq!(
        (
            st.owned(Some("alpha"), 0),
            st.owned(Some("beta"), 0),
            st.unassigned(0)
        ),
        (2, 3, 0)
    );
    let s = status::gather(&h, &t.state()).unwrap();
    let names: Vec<(&str, u64)> = s.jobs.iter().map(|j| (j.job.as_str(), j.pages)).collect();
    assert_eq!(names, [("alpha", 2), ("beta", 3)]);
    let text = status::render_text(&s);
    assert!(
        text.contains("job alpha: 2 GiB (node 0: 2); no hpmmap-vmm running"),
        "{text}"
    );
    assert!(text.contains("job beta: 3 GiB (node 0: 3)"), "{text}");

    // The commands without --job see only what no job holds: nothing here.
    let e = release::release(&h, &t.state(), Amount::Gib(1)).unwrap_err();
    assert!(e.is_input(), "{e}");
    let all = release::release(&h, &t.state(), Amount::All).unwrap();
    assert!(all.complete && !all.idle, "{all:?}");
    assert_eq!(t.nr(0), 5, "release --all without --job took a job's pages");
    assert!(
        all.notes
            .iter()
            .any(|n| n.contains("job alpha still holds 2 GiB")),
        "{:?}",
        all.notes
    );

    // alpha's release gives back alpha's pages only.
    let r = release::release_for(&h, &t.state(), Amount::All, Some("alpha")).unwrap();
    assert!(r.complete && !r.idle, "{r:?}");
    assert_eq!((r.nodes[0].released, r.nodes[0].still_reserved), (2, 0));
    assert_eq!(t.nr(0), 3);
    let st = state::load(&t.state()).unwrap().unwrap();
    assert!(!st.jobs.contains_key("alpha"));
    assert_eq!(st.owned(Some("beta"), 0), 3);

    // A job that holds nothing: --size is an input error, a plain release a no-op.
    let e = release::release_for(&h, &t.state(), Amount::Gib(1), Some("alpha")).unwrap_err();
    assert!(
        e.is_input() && e.to_string().contains("job alpha holds nothing"),
        "{e}"
    );
    let e = release::release_for(&h, &t.state(), Amount::Gib(4), Some("beta")).unwrap_err();
    assert!(e.to_string().contains("job beta holds only 3 GiB"), "{e}");

    let r = release::release_for(&h, &t.state(), Amount::Gib(1), Some("beta")).unwrap();
    assert_eq!(r.nodes[0].released, 1);
    let r = release::release_for(&h, &t.state(), Amount::All, Some("beta")).unwrap();
    assert!(r.complete && r.idle, "{r:?}");
    assert!(!t.state().exists());
    trees::assert_same(&before, &t.snapshot());
    no_violations(&k);
}

#[test]
fn a_jobs_release_keeps_what_its_vm_maps_and_leaves_the_other_jobs_free_pages() {
    let t = trees::one_node("jobvm");
    let k = kernel(&t, 8);
    let h = host(&t, &k);
    reserve::reserve(&h, &t.state(), &opts(2, Some("alpha"))).unwrap();
    reserve::reserve(&h, &t.state(), &opts(2, Some("beta"))).unwrap();
    // alpha's VMM maps both of alpha's pages; beta's VMM has not started.
    add_job_vm(&t, 5001, "alpha", 2);
    let s = status::gather(&h, &t.state()).unwrap();
    assert_eq!(s.jobs[0].vmm_pids, [5001]);
    assert_eq!(s.vm_holders[0].job.as_deref(), Some("alpha"));

    let r = release::release_for(&h, &t.state(), Amount::All, Some("alpha")).unwrap();
    assert!(!r.complete, "{r:?}");
    assert_eq!((r.nodes[0].released, r.nodes[0].still_reserved), (0, 2));
    assert_eq!(t.nr(0), 4, "beta's two free pages must stay in the pool");
    assert!(
        r.nodes[0].reasons[0].contains("pid 5001"),
        "{:?}",
        r.nodes[0].reasons
    );

    // beta's release takes beta's free pages while alpha's VM runs.
    let r = release::release_for(&h, &t.state(), Amount::All, Some("beta")).unwrap();
    assert!(r.complete, "{r:?}");
    assert_eq!(t.nr(0), 2);
    trees::remove_vm(&t, 5001, 0, 2);
    let r = release::release_for(&h, &t.state(), Amount::All, Some("alpha")).unwrap();
    assert!(r.complete && r.idle, "{r:?}");
    assert_eq!(t.nr(0), 0);
    no_violations(&k);
}

#[test]
fn boot_time_pages_are_adopted_per_job_and_the_pool_ends_as_the_admin_set_it() {
    let t = trees::one_node("jobadopt");
    let k = kernel(&t, 8);
    let h = host(&t, &k);
    hpmmap_offline::hugetlb::set_node_nr(&h, 0, 4).unwrap();
    let before = t.snapshot();
    let a = reserve::reserve(&h, &t.state(), &opts(2, Some("alpha"))).unwrap();
    assert_eq!((a.nodes[0].adopted, a.nodes[0].added), (2, 0));
    let b = reserve::reserve(&h, &t.state(), &opts(3, Some("beta"))).unwrap();
    assert_eq!((b.nodes[0].adopted, b.nodes[0].added), (2, 1));
    assert_eq!(t.nr(0), 5);
    // A reservation without --job beside them: one more page, unassigned.
    let n = reserve::reserve(&h, &t.state(), &opts(1, None)).unwrap();
    assert_eq!((n.nodes[0].others, n.nodes[0].added), (5, 1));
    let st = state::load(&t.state()).unwrap().unwrap();
    assert_eq!((st.added(0), st.adopted(0), st.unassigned(0)), (2, 4, 1));

    let r = release::release_for(&h, &t.state(), Amount::All, Some("beta")).unwrap();
    assert!(r.complete, "{r:?}");
    // beta gives 3: the pool shrinks by the 2 added pages, one adopted page is forgotten.
    assert_eq!((r.nodes[0].released, r.nodes[0].unadopted), (3, 1));
    assert_eq!(t.nr(0), 4);
    let r = release::release(&h, &t.state(), Amount::All).unwrap();
    assert_eq!((r.nodes[0].released, r.nodes[0].unadopted), (1, 1));
    let r = release::release_for(&h, &t.state(), Amount::All, Some("alpha")).unwrap();
    assert!(r.complete && r.idle, "{r:?}");
    assert_eq!(t.nr(0), 4, "the boot-time pages stay");
    trees::assert_same(&before, &t.snapshot());
    no_violations(&k);
}

#[test]
fn a_short_job_reservation_is_rolled_back_and_the_job_forgotten() {
    let t = trees::one_node("jobshort");
    let k = kernel(&t, 3);
    k.with(|m| m.busy.extend(0..400));
    let h = host(&t, &k);
    reserve::reserve(&h, &t.state(), &opts(1, Some("alpha"))).unwrap();
    let mut o = opts(4, Some("beta"));
    o.offline_blocks = false;
    let r = reserve::reserve(&h, &t.state(), &o).unwrap();
    assert!(!r.complete && r.rolled_back, "{r:?}");
    let st = state::load(&t.state()).unwrap().unwrap();
    assert!(!st.jobs.contains_key("beta"), "{st:?}");
    assert_eq!((st.owned(Some("alpha"), 0), t.nr(0)), (1, 1));
    no_violations(&k);
}

#[test]
fn a_version_1_state_file_is_migrated_and_its_pages_stay_unassigned() {
    let t = trees::one_node("v1");
    let k = kernel(&t, 4);
    let h = host(&t, &k);
    hpmmap_offline::hugetlb::set_node_nr(&h, 0, 2).unwrap();
    std::fs::create_dir_all(t.state().parent().unwrap()).unwrap();
    std::fs::write(
        t.state(),
        format!(
            r#"{{"format":"hpmmap-offline-state","version":1,"sysfs_root":"{}","proc_root":"{}","nodes":{{"0":{{"baseline_nr":0,"reserved":2}}}}}}"#,
            t.sys().display(),
            t.proc().display()
        ),
    )
    .unwrap();
    reserve::reserve(&h, &t.state(), &opts(1, Some("alpha"))).unwrap();
    let text = std::fs::read_to_string(t.state()).unwrap();
    let v: serde_json::Value = serde_json::from_str(&text).unwrap();
    assert_eq!(v["version"], 2);
    assert_eq!(v["jobs"]["alpha"]["nodes"]["0"], 1);
    let st = state::load(&t.state()).unwrap().unwrap();
    assert_eq!((st.unassigned(0), st.held(0)), (2, 3));
    let r = release::release(&h, &t.state(), Amount::All).unwrap();
    assert_eq!(r.nodes[0].released, 2);
    assert_eq!(t.nr(0), 1);
    release::release_for(&h, &t.state(), Amount::All, Some("alpha")).unwrap();
    assert!(!t.state().exists());
}

#[test]
fn bad_job_names_are_input_errors_that_change_nothing() {
    let t = trees::one_node("badjob");
    let before = t.snapshot();
    let k = kernel(&t, 4);
    let h = host(&t, &k);
    for bad in ["", "a/b", "../x", "with space"] {
        let e = reserve::reserve(&h, &t.state(), &opts(1, Some(bad))).unwrap_err();
        assert!(e.is_input(), "{bad}: {e}");
        let e = release::release_for(&h, &t.state(), Amount::All, Some(bad)).unwrap_err();
        assert!(e.is_input(), "{bad}: {e}");
    }
    assert!(!t.state().parent().unwrap().exists());
    trees::assert_same(&before, &t.snapshot());
}

/// The lab's recorded device-dax host: a job takes the device as it is; another job is
/// refused it while the first holds it; `release --job` hands it back to no one.
#[test]
fn a_dax_device_held_for_one_job_is_refused_to_another() {
    use hpmmap_offline::devdax::{self, DevdaxOptions};
    let t = trees::lab("lab-pmem-devdax", "jobdax");
    let before = t.snapshot();
    let k = FakeKernel::new(t.dir.path());
    let h = host(&t, &k);
    let dax = |job: &str, device: Option<&str>| DevdaxOptions {
        size_gib: 1,
        node: Some(0),
        device: device.map(String::from),
        job: Some(job.into()),
    };
    let r = devdax::reserve_devdax(&h, &t.state(), &dax("alpha", None)).unwrap();
    assert_eq!((r.device.as_str(), r.changed), ("dax0.0", false));
    let st = state::load(&t.state()).unwrap().unwrap();
    assert_eq!(st.jobs["alpha"].devdax, ["dax0.0"]);
    // Idempotent for alpha.
    devdax::reserve_devdax(&h, &t.state(), &dax("alpha", None)).unwrap();
    let e = devdax::reserve_devdax(&h, &t.state(), &dax("beta", Some("dax0.0"))).unwrap_err();
    assert!(
        e.is_input() && e.to_string().contains("held for job alpha"),
        "{e}"
    );
    let e = devdax::reserve_devdax(&h, &t.state(), &dax("beta", None)).unwrap_err();
    assert!(e.is_input() && e.to_string().contains("none found"), "{e}");
    let s = status::gather(&h, &t.state()).unwrap();
    assert!(
        status::render_text(&s).contains("job alpha: 0 GiB, dax dax0.0;"),
        "{}",
        status::render_text(&s)
    );
    // While alpha's VMM maps it, alpha's release keeps it.
    t.write(
        "proc/4242/maps",
        "7f0000000000-7f0080000000 rw-s 00000000 00:06 42 /dev/dax0.0\n",
    );
    release::release_for(&h, &t.state(), Amount::All, Some("alpha")).unwrap();
    assert!(state::load(&t.state())
        .unwrap()
        .unwrap()
        .jobs
        .contains_key("alpha"));
    std::fs::remove_dir_all(t.path("proc/4242")).unwrap();
    let r = release::release_for(&h, &t.state(), Amount::All, Some("alpha")).unwrap();
    assert!(r.idle, "{r:?}");
    devdax::reserve_devdax(&h, &t.state(), &dax("beta", None)).unwrap();
    release::release_for(&h, &t.state(), Amount::All, Some("beta")).unwrap();
    assert!(k.with(|m| m.writes.is_empty()));
    std::fs::remove_dir_all(t.path("run")).ok();
    trees::assert_same(&before, &t.snapshot());
}
