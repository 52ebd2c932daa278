//! Helpers shared by the fuzz targets.

use std::path::PathBuf;

/// A scratch directory per fuzzing process (targets that drive file readers write their
/// input there). Removed by `scripts/test.d/fuzz.sh` through the parent directory.
pub fn scratch(name: &str) -> PathBuf {
    let base = std::env::var_os("HPMMAP_FUZZ_TMP")
        .map(PathBuf::from)
        .unwrap_or_else(std::env::temp_dir);
    let d = base.join(format!("hpmmap-fuzz-{name}-{}", std::process::id()));
    std::fs::create_dir_all(&d).expect("scratch directory");
    d
}
