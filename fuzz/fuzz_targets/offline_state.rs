//! hpmmap-offline's state file reader (host-offline/src/state.rs), which `release --all`
//! trusts after a crash: any bytes either refuse with an input error or give a state that
//! saves and loads back the same. No panic.
#![no_main]
use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;

use hpmmap_offline::state;

fuzz_target!(|data: &[u8]| {
    static DIR: OnceLock<std::path::PathBuf> = OnceLock::new();
    let dir = DIR.get_or_init(|| hpmmap_fuzz::scratch("state"));
    let path = dir.join("state.json");
    std::fs::write(&path, data).expect("write the input");
    if let Ok(Some(mut st)) = state::load(&path) {
        let _ = st.total_held();
        let _ = st.is_empty();
        let saved = dir.join("saved.json");
        state::save(&saved, &mut st).expect("a loaded state saves");
        let again = state::load(&saved).expect("a saved state loads").expect("present");
        assert_eq!(format!("{again:?}"), format!("{st:?}"));
    }
});
