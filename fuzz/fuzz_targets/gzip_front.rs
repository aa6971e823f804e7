//! The decompression front end over arbitrary bytes: `open_reader`
//! (sniffing) and `decompress` forced to gzip and to zstd, each read to the
//! end or to a cap. Never a panic or an unbounded allocation; a plain
//! (unrecognised) input must come back byte for byte.
#![no_main]

use std::io::{BufReader, Read};

use layer::compression::{Compression, decompress, open_reader};
use libfuzzer_sys::fuzz_target;

/// Decompressed bytes read per decoder at most (compression bombs).
const CAP: u64 = 4 << 20;

fn drain(r: &mut dyn Read) -> (Vec<u8>, bool) {
    let mut out = Vec::new();
    let ok = r.take(CAP).read_to_end(&mut out).is_ok();
    (out, ok)
}

fuzz_target!(|data: &[u8]| {
    if let Ok((compression, mut r)) = open_reader(data) {
        let (out, ok) = drain(&mut r);
        if compression == Compression::None {
            assert!(ok, "reading plain input failed");
            assert_eq!(out, data, "plain input did not come back unchanged");
        }
    }
    for c in [Compression::Gzip, Compression::Zstd] {
        if let Ok(mut r) = decompress(c, BufReader::new(data)) {
            let _ = drain(&mut r);
        }
    }
});
