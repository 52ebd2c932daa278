//! The kernel loader (vmm/src/loader.rs over linux-loader's ELF and bzImage readers) on
//! arbitrary files: no panic, and a kernel that loads ends inside the guest kernel's
//! usable RAM with its entry point inside what was loaded or the bzImage's 64-bit entry.
#![no_main]
use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use vm_memory::{GuestAddress, GuestMemoryMmap};

use hpmmap_vmm::loader::{load_kernel, probe_kernel};
use hpmmap_vmm::memory::layout::GuestLayout;

const MEM: usize = 64 << 20;

fuzz_target!(|data: &[u8]| {
    static SETUP: OnceLock<(std::path::PathBuf, GuestMemoryMmap, GuestLayout)> = OnceLock::new();
    let (path, mem, layout) = SETUP.get_or_init(|| {
        let dir = hpmmap_fuzz::scratch("kernel");
        let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), MEM)]).expect("guest memory");
        let layout = GuestLayout::new(1 << 30, None).expect("layout");
        (dir.join("kernel"), mem, layout)
    });
    std::fs::write(path, data).expect("write the input");
    let probed = probe_kernel(path);
    match load_kernel(mem, layout, path) {
        Ok(k) => {
            assert!(probed.is_ok());
            assert!(k.end <= layout.low_usable_end(), "ends at {:#x}", k.end);
        }
        Err(_) => {}
    }
});
