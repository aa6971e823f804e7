//! `layer::tar::TarReader` over arbitrary bytes: every entry is read (data
//! capped), then `finish`. Never a panic, a hang or an unbounded
//! allocation; plus the reader's own contract:
//!
//! * an entry's data is exactly `Entry::size` bytes unless reading fails;
//! * header offsets increase, the data follows its header, both inside the
//!   input, and `position()` never passes the end of the input;
//! * after `Ok(None)` the reader keeps returning `Ok(None)`; after an error
//!   it returns `Poisoned`.
#![no_main]

use std::io::Read;

use layer::tar::{Limits, TarError, TarReader};
use libfuzzer_sys::fuzz_target;

/// Small limits, so that the fuzzer reaches them instead of spending its
/// time on big allocations.
const LIMITS: Limits = Limits {
    max_entries: 4096,
    max_pax_size: 64 << 10,
    max_long_name_size: 64 << 10,
    max_metadata_bytes: 1 << 20,
    max_path_len: 8 << 10,
};

/// Logical bytes read per entry at most (sparse entries can declare huge
/// holes that read as zeros; the rest is skipped by `next_entry`).
const DATA_CAP: u64 = 1 << 20;

fuzz_target!(|data: &[u8]| {
    let len = data.len() as u64;
    let mut tr = TarReader::new(data, LIMITS);
    let mut buf = vec![0u8; 16 << 10];
    let mut last_header: Option<u64> = None;
    loop {
        let entry = match tr.next_entry() {
            Ok(Some(e)) => e,
            Ok(None) => {
                assert!(
                    matches!(tr.next_entry(), Ok(None)),
                    "Ok(None) is not sticky"
                );
                break;
            }
            Err(_) => {
                assert!(
                    matches!(tr.next_entry(), Err(TarError::Poisoned)),
                    "an error is not sticky"
                );
                return;
            }
        };
        assert!(tr.position() <= len, "position past the end of the input");
        if let Some(prev) = last_header {
            assert!(entry.header_offset > prev, "header offsets do not increase");
        }
        last_header = Some(entry.header_offset);
        assert!(entry.header_offset.is_multiple_of(512) && entry.data_offset.is_multiple_of(512));
        assert!(entry.data_offset > entry.header_offset);
        assert!(entry.mtime_nsec < 1_000_000_000);
        assert!(entry.mode <= 0o7777);
        // Read the data, at most DATA_CAP bytes.
        let mut got = 0u64;
        let mut failed = false;
        while got < DATA_CAP {
            let want = buf.len().min((DATA_CAP - got) as usize);
            match tr.data().read(&mut buf[..want]) {
                Ok(0) => break,
                Ok(n) => got += n as u64,
                Err(_) => {
                    failed = true;
                    break;
                }
            }
        }
        assert!(got <= entry.size, "data yielded more than Entry::size");
        if !failed && got < DATA_CAP {
            assert_eq!(got, entry.size, "data ended before Entry::size");
        }
        if entry.sparse.is_none() && got > 0 {
            assert!(entry.data_offset + got <= len, "data beyond the input");
        }
        if failed {
            // The stream is in an unknown state; whatever next_entry says
            // must not panic.
            let _ = tr.next_entry();
            return;
        }
    }
    let _ = tr.finish();
});
