//! The job image manifest readers: the VMM's (vmm/src/image.rs: --image DIR) and the
//! image builder's (images/src/manifest.rs). No panic; names the VMM accepts stay inside
//! the image directory.
#![no_main]
use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    static DIR: OnceLock<std::path::PathBuf> = OnceLock::new();
    let dir = DIR.get_or_init(|| hpmmap_fuzz::scratch("image"));
    std::fs::write(dir.join("manifest.json"), data).expect("write the input");
    if let Ok(boot) = hpmmap_vmm::image::read(dir) {
        assert_eq!(boot.kernel.parent(), Some(dir.as_path()), "{:?}", boot.kernel);
        if let Some(i) = &boot.initrd {
            assert_eq!(i.parent(), Some(dir.as_path()), "{i:?}");
        }
    }
    if let Ok(m) = hpmmap_image::manifest::Manifest::read(dir) {
        // What was read writes back and reads again as the same manifest.
        std::fs::write(dir.join("manifest.json"), m.to_json()).expect("write");
        let again = hpmmap_image::manifest::Manifest::read(dir).expect("round trip");
        assert_eq!(again, m);
    }
});
