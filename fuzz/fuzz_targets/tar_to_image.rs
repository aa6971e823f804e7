//! `layer::convert::stream_tar` over arbitrary bytes, in the three output
//! modes (4 KiB blocks, 4 KiB blocks with inline tails, 512-byte tar
//! index). Conversion may refuse the input; when it succeeds, the image we
//! wrote must pass our own `erofs::fsck::check` with strict link counts and
//! every data byte read. A failure there is a writer (or fsck) bug, and the
//! target panics with the fsck error so that libFuzzer records the input.
//!
//! Output goes to unnamed temporary files in `$FUZZ_TMPDIR` (default: the
//! system temporary directory; /dev/shm keeps it off the disk).
#![no_main]

use std::path::PathBuf;

use erofs::fsck::{CheckOptions, check};
use erofs::reader::Image;
use layer::convert::{ConvertOptions, stream_tar};
use layer::tar::Limits;
use libfuzzer_sys::fuzz_target;

fn tmpdir() -> PathBuf {
    std::env::var_os("FUZZ_TMPDIR")
        .map(PathBuf::from)
        .unwrap_or_else(std::env::temp_dir)
}

const LIMITS: Limits = Limits {
    max_entries: 4096,
    max_pax_size: 64 << 10,
    max_long_name_size: 64 << 10,
    max_metadata_bytes: 1 << 20,
    max_path_len: 8 << 10,
};

fn convert(data: &[u8], inline_data: bool, tar_index: bool) {
    let dir = tmpdir();
    let out = tempfile::tempfile_in(&dir).expect("temporary output file");
    let opts = ConvertOptions {
        inline_data,
        tar_index,
        limits: LIMITS,
        compute_diff_id: false,
        // Holes expand to zeros: keep each input fast to convert.
        max_sparse_holes: 64 << 20,
        max_inodes: 8192,
    };
    let Ok(streamed) = stream_tar(data, out, &dir, &opts) else {
        return;
    };
    let Ok((file, _report)) = streamed.finish(Some([0x42; 16]), None) else {
        return;
    };
    let mode = match (inline_data, tar_index) {
        (_, true) => "tar index",
        (true, _) => "inline",
        _ => "plain",
    };
    let image = match Image::new(file) {
        Ok(i) => i,
        Err(e) => panic!("{mode}: our image does not open: {e}"),
    };
    let opts = CheckOptions {
        strict_nlink: true,
        read_data: true,
        ..CheckOptions::default()
    };
    if let Err(e) = check(&image, &opts) {
        panic!("{mode}: our image fails fsck: {e}");
    }
}

fuzz_target!(|data: &[u8]| {
    convert(data, false, false);
    convert(data, true, false);
    convert(data, false, true);
});
