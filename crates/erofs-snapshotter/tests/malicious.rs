//! Hostile and broken layers, built byte by byte: `convert` must refuse
//! each with a non-zero exit, an `error: ...` message naming the problem
//! (entry and byte offset where there is one), and no output file, not
//! even a temporary one, left behind. A few near-misses must be accepted
//! with Go archive/tar's (containerd's) meaning.
//!
//! No root needed; the gzip/zstd cases need those commands, and the cases
//! that look inside an accepted image need fsck.erofs (erofs-utils).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use common::typeflag;
use common::*;

/// Layout of one case: the input in its own directory, the output in an
/// otherwise empty one (so leftovers are easy to see).
struct Case {
    _tmp: tempfile::TempDir,
    input: PathBuf,
    out_dir: PathBuf,
    output: PathBuf,
}

fn case(name: &str, bytes: &[u8]) -> Case {
    let tmp = tempdir();
    let in_dir = tmp.path().join("in");
    let out_dir = tmp.path().join("out");
    fs::create_dir_all(&in_dir).unwrap();
    fs::create_dir_all(&out_dir).unwrap();
    let input = in_dir.join(name);
    write_bytes(&input, bytes);
    let output = out_dir.join("layer.erofs");
    Case {
        _tmp: tmp,
        input,
        out_dir,
        output,
    }
}

/// Convert must fail, say `error:` and every `want` substring on stderr,
/// and leave nothing in the output directory.
fn assert_rejected(name: &str, bytes: &[u8], flags: &[&str], want: &[&str]) {
    let c = case(name, bytes);
    let r = convert(&c.input, &c.output, flags).failed();
    eprintln!("{name}: {}", r.stderr.trim_end());
    let mut problems = Vec::new();
    if !r.stderr.contains("error: ") {
        problems.push("stderr has no 'error: ' line".to_string());
    }
    for w in want {
        if !r.stderr.contains(w) {
            problems.push(format!("stderr lacks {w:?}"));
        }
    }
    if c.output.exists() {
        problems.push(format!(
            "output {} exists after a failed conversion",
            c.output.display()
        ));
    }
    let left = dir_names(&c.out_dir);
    if !left.is_empty() {
        problems.push(format!("files left in the output directory: {left:?}"));
    }
    assert!(
        problems.is_empty(),
        "{name}: {}\n--- stderr ---\n{}",
        problems.join("; "),
        r.stderr
    );
}

/// Convert must succeed; returns fsck.erofs's extraction of the image.
fn accepted_extract(name: &str, bytes: &[u8]) -> Option<(tempfile::TempDir, PathBuf)> {
    if !require(&["fsck.erofs"]) {
        return None;
    }
    let c = case(name, bytes);
    convert_ok(&c.input, &c.output, &[]);
    run(Command::new("fsck.erofs").arg(&c.output)).ok();
    let x = c._tmp.path().join("extract");
    run(Command::new("fsck.erofs")
        .arg(format!("--extract={}", x.display()))
        .arg(&c.output))
    .ok();
    Some((c._tmp, x))
}

/// Every path below `root`, relative, sorted.
fn all_paths(root: &Path) -> Vec<String> {
    let mut v: Vec<String> = snapshot(root)
        .into_keys()
        .filter(|k| k != b".")
        .map(|k| show(&k))
        .collect();
    v.sort();
    v
}

fn tar_of(build: impl FnOnce(&mut TarBuilder)) -> Vec<u8> {
    let mut t = TarBuilder::new();
    build(&mut t);
    t.finish()
}

// --- names -------------------------------------------------------------

#[test]
fn dotdot_name_is_rejected() {
    let tar = tar_of(|t| {
        t.file("../escape", b"x");
    });
    assert_rejected(
        "dotdot.tar",
        &tar,
        &[],
        &[
            r#"entry "../escape" at offset 0"#,
            "contains a '..' component",
        ],
    );
}

#[test]
fn inner_dotdot_escaping_name_is_rejected() {
    let tar = tar_of(|t| {
        t.file("ok", b"fine");
        t.file("a/../../b", b"x");
    });
    assert_rejected(
        "inner-dotdot.tar",
        &tar,
        &[],
        &[
            r#"entry "a/../../b" at offset 1024"#,
            "contains a '..' component",
        ],
    );
}

/// A leading `/` is stripped, as GNU tar and containerd do.
#[test]
fn absolute_name_is_stored_relative() {
    let tar = tar_of(|t| {
        t.file("/etc/passwd", b"root:x:0:0::/root:/bin/sh\n");
    });
    let Some((_tmp, x)) = accepted_extract("absolute.tar", &tar) else {
        return;
    };
    assert_eq!(all_paths(&x), ["etc", "etc/passwd"]);
    assert_eq!(
        fs::read(x.join("etc/passwd")).unwrap(),
        b"root:x:0:0::/root:/bin/sh\n"
    );
}

#[test]
fn empty_name_is_rejected() {
    let tar = tar_of(|t| {
        t.entry(&Header::new(b"", typeflag::FILE, 1), b"x");
    });
    assert_rejected(
        "empty-name.tar",
        &tar,
        &[],
        &[r#"entry "" at offset 0"#, "empty entry name"],
    );
}

#[test]
fn name_component_over_255_bytes_is_rejected() {
    let name = format!("dir/{}", "x".repeat(256));
    let tar = tar_of(|t| {
        t.file(&name, b"x");
    });
    assert_rejected(
        "long-component.tar",
        &tar,
        &[],
        &[
            &format!(r#"entry "{name}" at offset"#),
            "component of 256 bytes",
        ],
    );
}

#[test]
fn file_under_a_regular_file_is_rejected() {
    let tar = tar_of(|t| {
        t.file("f", b"a file");
        t.file("f/g", b"under a file");
    });
    assert_rejected(
        "file-under-file.tar",
        &tar,
        &[],
        &[
            r#"entry "f/g" at offset 1024"#,
            "a parent component is not a directory",
        ],
    );
}

// --- hard links --------------------------------------------------------

#[test]
fn hard_link_to_missing_target_is_rejected() {
    let tar = tar_of(|t| {
        t.hardlink("link", "missing");
    });
    assert_rejected(
        "link-missing.tar",
        &tar,
        &[],
        &[
            r#"entry "link" at offset 0"#,
            "hard link target /missing does not exist",
        ],
    );
}

#[test]
fn hard_link_to_parent_path_is_rejected() {
    let tar = tar_of(|t| {
        t.file("f", b"x");
        t.hardlink("link", "../outside");
    });
    assert_rejected(
        "link-dotdot.tar",
        &tar,
        &[],
        &["at offset 1024", "../outside", "contains a '..' component"],
    );
}

#[test]
fn hard_link_to_directory_is_rejected() {
    let tar = tar_of(|t| {
        t.dir("d/");
        t.hardlink("l", "d");
    });
    assert_rejected(
        "link-dir.tar",
        &tar,
        &[],
        &[r#"entry "l" at offset 512"#, "is a directory"],
    );
}

// --- whiteouts ---------------------------------------------------------

#[test]
fn bare_whiteout_prefix_is_rejected() {
    let tar = tar_of(|t| {
        t.dir("dir/");
        t.file("dir/.wh.", b"");
    });
    assert_rejected(
        "bare-wh.tar",
        &tar,
        &[],
        &[r#"entry "dir/.wh." at offset 512"#, "empty target name"],
    );
}

#[test]
fn whiteout_of_dot_is_rejected() {
    let tar = tar_of(|t| {
        t.dir("dir/");
        t.file("dir/.wh..", b"");
    });
    assert_rejected(
        "wh-dot.tar",
        &tar,
        &[],
        &[
            r#"entry "dir/.wh.." at offset 512"#,
            "whiteout entry targets '.'",
        ],
    );
}

// --- framing -----------------------------------------------------------

#[test]
fn tar_truncated_inside_file_data_is_rejected() {
    let mut tar = tar_of(|t| {
        t.file("first", b"ok");
        t.file("cut", &pattern(2000, 1));
    });
    tar.truncate(1024 + 512 + 1000);
    assert_rejected(
        "truncated-data.tar",
        &tar,
        &[],
        &[
            r#"entry "cut" at offset 1024"#,
            "archive truncated at offset 2536",
        ],
    );
}

#[test]
fn tar_truncated_inside_a_header_is_rejected() {
    let mut tar = tar_of(|t| {
        t.file("first", b"ok");
        t.file("second", b"ok");
    });
    tar.truncate(1024 + 200);
    assert_rejected(
        "truncated-header.tar",
        &tar,
        &[],
        &["archive truncated at offset 1224"],
    );
}

#[test]
fn garbage_after_end_of_archive_is_rejected() {
    let mut tar = tar_of(|t| {
        t.file("f", b"x");
    });
    tar.extend_from_slice(&[0xab; 512]);
    assert_rejected(
        "trailing-garbage.tar",
        &tar,
        &[],
        &["non-zero data after end of archive at offset 2048"],
    );
}

/// TARmageddon (CVE-2025-62518): the PAX size (512) overrides the ustar
/// size (0). Go archive/tar reads 512 bytes of data, which here hold a
/// fake header; that header must become file content, never an entry.
#[test]
fn pax_size_overrides_ustar_size() {
    let smuggled = Header::new(b"smuggled", typeflag::FILE, 0).block();
    let tar = tar_of(|t| {
        t.pax(&[("size", b"512")]);
        t.entry(&Header::new(b"outer", typeflag::FILE, 0), &smuggled);
    });
    let Some((_tmp, x)) = accepted_extract("tarmageddon.tar", &tar) else {
        return;
    };
    assert_eq!(all_paths(&x), ["outer"], "entries Go archive/tar would see");
    assert_eq!(
        fs::read(x.join("outer")).unwrap(),
        smuggled.to_vec(),
        "content of outer"
    );
}

#[test]
fn symlink_target_with_nul_is_rejected() {
    let tar = tar_of(|t| {
        t.pax(&[("linkpath", b"a\0b")]);
        let mut h = Header::new(b"sym", typeflag::SYMLINK, 0);
        h.linkname = b"a".to_vec();
        t.entry(&h, b"");
    });
    assert_rejected(
        "symlink-nul.tar",
        &tar,
        &[],
        &["invalid PAX header at offset 0", "malformed record"],
    );
}

#[test]
fn more_entries_than_max_entries_is_rejected() {
    let tar = tar_of(|t| {
        for i in 0..11 {
            t.file(&format!("f{i:02}"), b"x");
        }
    });
    assert_rejected(
        "many.tar",
        &tar,
        &["--max-entries", "10"],
        &["limit exceeded at offset 10240", "too many entries"],
    );
    // Exactly at the limit is fine.
    let ten = tar_of(|t| {
        for i in 0..10 {
            t.file(&format!("f{i:02}"), b"x");
        }
    });
    let c = case("ten.tar", &ten);
    convert_ok(&c.input, &c.output, &["--max-entries", "10"]);
}

// --- compression -------------------------------------------------------

fn compressed(cmd: &str, tar: &[u8]) -> Option<Vec<u8>> {
    if !require(&[cmd]) {
        return None;
    }
    let tmp = tempdir();
    let p = tmp.path().join("layer.tar");
    write_bytes(&p, tar);
    let out = tmp.path().join("layer.z");
    let script = match cmd {
        "gzip" => r#"gzip -n -c "$1" > "$2""#,
        _ => r#"zstd -q -c "$1" > "$2""#,
    };
    bash(script, &[p.as_os_str(), out.as_os_str()]).ok();
    Some(fs::read(out).unwrap())
}

fn sample_tar() -> Vec<u8> {
    tar_of(|t| {
        t.file("a", &pattern(20_000, 11));
        t.file("b", &pattern(20_000, 12));
    })
}

/// Compressible content, so gzip emits Huffman-coded blocks (random data
/// would go into stored blocks, where a flipped byte only shows in the CRC).
fn text_tar() -> Vec<u8> {
    tar_of(|t| {
        t.file(
            "text",
            "all work and no play makes jack a dull boy\n"
                .repeat(2000)
                .as_bytes(),
        );
    })
}

#[test]
fn corrupted_gzip_deflate_stream_is_rejected() {
    let Some(mut gz) = compressed("gzip", &text_tar()) else {
        return;
    };
    let mid = gz.len() / 2;
    gz[mid] ^= 0xff;
    assert_rejected(
        "bad-deflate.tar.gz",
        &gz,
        &[],
        &["corrupt gzip stream does not have a matching checksum"],
    );
}

#[test]
fn corrupted_gzip_crc_is_rejected() {
    let Some(mut gz) = compressed("gzip", &sample_tar()) else {
        return;
    };
    let crc = gz.len() - 8;
    gz[crc] ^= 0xff;
    assert_rejected(
        "bad-crc.tar.gz",
        &gz,
        &[],
        &["corrupt gzip stream does not have a matching checksum"],
    );
}

#[test]
fn corrupted_zstd_is_rejected() {
    let Some(mut zst) = compressed("zstd", &sample_tar()) else {
        return;
    };
    let mid = zst.len() / 2;
    zst[mid] ^= 0xff;
    assert_rejected(
        "bad.tar.zst",
        &zst,
        &[],
        &["Restored data doesn't match checksum"],
    );
}

/// Fuzzer findings (fuzz/regressions/, docs/fuzzing.md), kept as tests.
fn regression(name: &str) -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../fuzz/regressions")
        .join(name)
}

/// A tar index must declare and hold whole 512-byte blocks of tar, even
/// for a stream that is empty or ends mid-block.
#[test]
fn tar_index_of_short_streams_is_valid() {
    for name in ["tar-index-empty.tar", "tar-index-unaligned-513.tar"] {
        let tmp = tempdir();
        let image = tmp.path().join("idx.erofs");
        convert_ok(&regression(name), &image, &["--tar-index"]);
        let len = std::fs::metadata(&image).unwrap().len();
        assert_eq!(len % 512, 0, "{name}: image length {len}");
        cli(["fsck".as_ref(), image.as_os_str()]).ok();
    }
}

/// A sparse entry declaring a terabyte of holes in a 3.5 KiB tar is
/// refused at once instead of expanding into the image.
#[test]
fn sparse_hole_bomb_is_refused() {
    let tmp = tempdir();
    let image = tmp.path().join("s.erofs");
    let r = convert(&regression("sparse-realsize-1tib.tar"), &image, &[]);
    assert!(!r.success());
    assert!(r.stderr.contains("bytes of holes"), "{}", r.stderr);
    assert!(!image.exists());
}
