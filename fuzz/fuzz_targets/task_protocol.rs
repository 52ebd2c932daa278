//! The task channel's decoder (vmm/task/src/protocol.rs), which each side runs on what the
//! other sends (the agent in the guest on the host's frames, the client on the guest's): no
//! panic, no allocation past a frame's limit, and every frame it accepts encodes back to the
//! same bytes (an Error text only when it was valid UTF-8, which the decoder may replace).
#![no_main]
use libfuzzer_sys::fuzz_target;

use hpmmap_task::protocol::{decode, read_frame, Frame, HEADER_LEN, MAX_SPAWN};

fuzz_target!(|data: &[u8]| {
    let mut rest = data;
    let mut stream = data;
    while !rest.is_empty() {
        let Ok((frame, used)) = decode(rest) else {
            // The stream reader fails on the same bytes too (never a different frame).
            assert!(!matches!(read_frame(&mut stream), Ok(Some(_))));
            return;
        };
        assert!(used >= HEADER_LEN && used <= HEADER_LEN + MAX_SPAWN);
        let same_text = match &frame {
            Frame::Error(_) => std::str::from_utf8(&rest[HEADER_LEN..used]).is_ok(),
            _ => true,
        };
        if same_text {
            assert_eq!(
                frame.encode().expect("an accepted frame encodes"),
                &rest[..used],
                "{frame:?}"
            );
        }
        assert_eq!(read_frame(&mut stream).ok().flatten(), Some(frame));
        rest = &rest[used..];
    }
});
