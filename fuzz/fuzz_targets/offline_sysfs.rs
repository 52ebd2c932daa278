//! hpmmap-offline's sysfs and procfs parsers (host-offline/src: hugetlb, blocks, devdax,
//! holders, status) over a recorded host tree (tests/fixtures/lab-pmem-devdax) whose files
//! the input rewrites, and the smaps / numa_maps parsers over raw bytes. No panic.
#![no_main]
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;

use hpmmap_offline::host::Host;
use hpmmap_offline::{blocks, devdax, holders, hugetlb, status};

#[derive(Arbitrary, Debug)]
struct Input {
    edits: Vec<(u16, Vec<u8>)>,
    raw: Vec<u8>,
}

struct Tree {
    root: PathBuf,
    files: Vec<(PathBuf, Vec<u8>)>,
}

fn walk(dir: &Path, out: &mut Vec<PathBuf>) {
    let Ok(rd) = std::fs::read_dir(dir) else {
        return;
    };
    for e in rd.flatten() {
        let Ok(t) = e.file_type() else { continue };
        if t.is_dir() {
            walk(&e.path(), out);
        } else if t.is_file() {
            out.push(e.path());
        }
    }
}

fn tree() -> &'static Tree {
    static T: OnceLock<Tree> = OnceLock::new();
    T.get_or_init(|| {
        let src = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../host-offline/tests/fixtures/lab-pmem-devdax");
        let root = hpmmap_fuzz::scratch("sysfs").join("host");
        let _ = std::fs::remove_dir_all(&root);
        let ok = std::process::Command::new("cp")
            .arg("-a")
            .arg(&src)
            .arg(&root)
            .status()
            .expect("cp")
            .success();
        assert!(ok, "copy {}", src.display());
        let mut files = Vec::new();
        walk(&root, &mut files);
        files.sort();
        let files = files
            .into_iter()
            .map(|p| {
                let b = std::fs::read(&p).unwrap_or_default();
                (p, b)
            })
            .collect();
        Tree { root, files }
    })
}

fuzz_target!(|input: Input| {
    let t = tree();
    let mut touched = Vec::new();
    for (i, bytes) in input.edits.iter().take(16) {
        let (p, _) = &t.files[usize::from(*i) % t.files.len()];
        std::fs::write(p, bytes).expect("edit");
        touched.push(usize::from(*i) % t.files.len());
    }
    let host = Host::new(t.root.join("sys"), t.root.join("proc")).quiet(true);
    let state = t.root.join("no-state.json");
    if let Ok(s) = status::gather(&host, &state) {
        let _ = status::render_text(&s);
    }
    let bs = blocks::block_size(&host).unwrap_or(0);
    let all = blocks::list_blocks(&host);
    let _ = blocks::summarize(&all, bs, None);
    for node in hugetlb::nodes(&host).into_iter().take(8) {
        let _ = hugetlb::node_pool(&host, node);
        let _ = hugetlb::node_mem(&host, node);
        let _ = blocks::summarize(&all, bs, Some(node));
    }
    let _ = hugetlb::memory_nodes(&host);
    let _ = hugetlb::global_pool(&host);
    for d in devdax::list(&host) {
        let _ = devdax::users(&host, &d.name);
    }
    let _ = holders::vm_holders(&host);
    if let Ok(text) = std::str::from_utf8(&input.raw) {
        let _ = holders::smaps_1g_pages(text);
        let _ = holders::numa_maps_1g_pages(text);
    }
    for i in touched {
        let (p, orig) = &t.files[i];
        std::fs::write(p, orig).expect("restore");
    }
});
