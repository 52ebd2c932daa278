//! Writing a run's results: results.md (the table), results.json and results.svg (the
//! plot), each replaced whole.

use std::path::Path;

use anyhow::{Context, Result};

use crate::svg;
use crate::table::Results;

/// Writes `path` through a temporary file and a rename: never half-written.
pub fn write_atomic(path: &Path, text: &str) -> Result<()> {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, text).with_context(|| format!("writing {}", tmp.display()))?;
    std::fs::rename(&tmp, path).with_context(|| format!("renaming to {}", path.display()))?;
    Ok(())
}

/// results.md, results.json and results.svg in `dir`.
pub fn write_all(dir: &Path, r: &Results) -> Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    write_atomic(&dir.join("results.json"), &r.to_json())?;
    write_atomic(&dir.join("results.svg"), &svg::plot(r))?;
    write_atomic(&dir.join("results.md"), &r.to_markdown())?;
    Ok(())
}
