//! Overlay upper directory → OCI layer tar, on the real filesystem (root
//! needed for devices, ownership and `trusted.*` xattrs).
//!
//! One upper holds every case: files of awkward sizes, devices, a FIFO, a
//! socket, hard links, a whiteout (and a second one sharing its inode, as
//! overlayfs makes them), an xwhiteout, opaque and "x"-marked directories,
//! capabilities, long and escaping names and links, ids and times outside
//! the ustar range. The exported tar is read back by our reader and by Go's
//! `archive/tar` and must give exactly the expected list; converted to
//! EROFS it must show the overlay forms again.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

#[path = "common/go.rs"]
mod go;

use std::fs;
use std::io::Read;
use std::os::unix::fs::{PermissionsExt, lchown, symlink};
use std::path::Path;

use erofs::reader::Image;
use layer::Compression;
use layer::Digest;
use layer::convert::{ConvertOptions, stream_tar};
use layer::export::{ExportError, ExportOptions, ExportStats, export, export_layer};
use layer::tar::{Limits, TarReader};
use rustix::fs::{AtFlags, CWD, FileType, Mode, Timestamps, XattrFlags};

const T: i64 = 1_700_000_000;

fn is_root() -> bool {
    // /proc/self belongs to the effective uid.
    fs::metadata("/proc/self").is_ok_and(|m| std::os::unix::fs::MetadataExt::uid(&m) == 0)
}

/// Root is required; skipped loudly otherwise (and failed under CI).
fn root_or_skip() -> bool {
    if is_root() {
        return true;
    }
    assert!(std::env::var_os("CI").is_none(), "export tests need root");
    eprintln!("!! SKIPPED: export tests need root");
    false
}

fn tempdir() -> tempfile::TempDir {
    tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap()
}

fn set_time(p: &Path, sec: i64, nsec: i64) {
    let ts = rustix::fs::Timespec {
        tv_sec: sec,
        tv_nsec: nsec,
    };
    let times = Timestamps {
        last_access: ts,
        last_modification: ts,
    };
    rustix::fs::utimensat(CWD, p, &times, AtFlags::SYMLINK_NOFOLLOW).unwrap();
}

fn chmod(p: &Path, mode: u32) {
    fs::set_permissions(p, fs::Permissions::from_mode(mode)).unwrap();
}

fn xattr(p: &Path, name: &str, value: &[u8]) {
    rustix::fs::lsetxattr(p, name, value, XattrFlags::empty()).unwrap();
}

fn mknod(p: &Path, ftype: FileType, mode: u32, major: u32, minor: u32) {
    rustix::fs::mknodat(
        CWD,
        p,
        ftype,
        Mode::from_raw_mode(mode),
        rustix::fs::makedev(major, minor),
    )
    .unwrap();
    chmod(p, mode);
}

fn file(p: &Path, data: &[u8], mode: u32) {
    fs::write(p, data).unwrap();
    chmod(p, mode);
}

/// A v2 file capability: cap_net_raw, effective.
const CAP: [u8; 20] = [
    0x01, 0, 0, 0x02, 0, 0x20, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
];

fn long_name() -> String {
    format!("long/{}", "n".repeat(150))
}

fn long_target() -> String {
    format!("/{}", "t".repeat(200))
}

/// The upper directory with every case; all times set last, since
/// creating children changes a directory's mtime.
fn build_upper(up: &Path) {
    let p = |s: &str| up.join(s);
    for d in ["a", "bin", "dev", "etc", "long", "sizes", "var", "x", "z"] {
        fs::create_dir(p(d)).unwrap();
        chmod(&p(d), 0o755);
    }
    chmod(&p("var"), 0o1777);
    file(&p("a/hard1"), b"linked\n", 0o644);
    lchown(p("a/hard1"), Some(1000), Some(1000)).unwrap();
    xattr(&p("a/hard1"), "user.k", b"v");
    fs::hard_link(p("a/hard1"), p("z/hard2")).unwrap();
    drop(std::os::unix::net::UnixListener::bind(p("a/sock")).unwrap());

    file(&p("bin/ping"), b"#!ping\n", 0o755);
    chmod(&p("bin/ping"), 0o4755);
    xattr(&p("bin/ping"), "security.capability", &CAP);
    xattr(&p("bin"), "trusted.overlay.origin", b"");

    mknod(&p("dev/null"), FileType::CharacterDevice, 0o666, 1, 3);
    mknod(&p("dev/sda"), FileType::BlockDevice, 0o660, 8, 0);
    lchown(p("dev/sda"), Some(0), Some(6)).unwrap();
    mknod(&p("dev/fifo"), FileType::Fifo, 0o600, 0, 0);

    xattr(&p("etc"), "trusted.overlay.opaque", b"y");
    file(&p("etc/passwd"), b"root:x:0:0::/root:/bin/sh\n", 0o644);
    mknod(&p("etc/removed"), FileType::CharacterDevice, 0, 0, 0);
    // overlayfs links one whiteout inode for many deletions.
    fs::hard_link(p("etc/removed"), p("var/gone")).unwrap();

    symlink("/etc/shadow", p("escape")).unwrap();
    symlink("/", p("evil")).unwrap();
    symlink("../../..", p("up")).unwrap();
    symlink(long_target(), p("longlink")).unwrap();
    file(&p(&long_name()), b"long", 0o600);
    file(&p("old"), b"", 0o644);
    file(&p("big-ids"), b"ids", 0o640);
    lchown(p("big-ids"), Some(3_000_000), Some(4_000_000)).unwrap();
    file(&p("café"), b"utf-8", 0o644);

    file(&p("sizes/0"), b"", 0o644);
    file(&p("sizes/512"), &[b'a'; 512], 0o644);
    file(&p("sizes/513"), &[b'b'; 513], 0o644);

    xattr(&p("x"), "trusted.overlay.opaque", b"x");
    file(&p("x/xw"), b"", 0o644);
    xattr(&p("x/xw"), "trusted.overlay.whiteout", b"y");

    let mut all = vec![up.to_path_buf()];
    let mut stack = vec![up.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in fs::read_dir(&d).unwrap() {
            let e = e.unwrap();
            all.push(e.path());
            if e.file_type().unwrap().is_dir() {
                stack.push(e.path());
            }
        }
    }
    for q in all {
        set_time(&q, T, 0);
    }
    set_time(&p("etc/passwd"), T + 5, 123_456_789);
    set_time(&p("etc/removed"), T + 7, 0);
    set_time(&p("old"), -101, 500_000_000);
}

/// One expected line in the oracle's format.
#[allow(clippy::too_many_arguments)]
fn line(
    typeflag: u8,
    name: &str,
    link: &str,
    data: &[u8],
    mode: u32,
    ids: (u64, u64),
    mtime: (i64, u32),
    dev: (u32, u32),
    xattrs: &[(&str, &[u8])],
) -> String {
    let mut x: Vec<String> = xattrs
        .iter()
        .map(|(k, v)| format!("{}={}", go::hx(k.as_bytes()), go::hx(v)))
        .collect();
    x.sort();
    format!(
        "{:02x} {} {} {} {} {:o} {} {} - - {}.{:09} {} {} [{}]",
        typeflag,
        go::hx(name.as_bytes()),
        go::hx(link.as_bytes()),
        data.len(),
        Digest::of(data).hex(),
        mode,
        ids.0,
        ids.1,
        mtime.0,
        mtime.1,
        dev.0,
        dev.1,
        x.join(","),
    )
}

/// The exact entry list of the upper from [`build_upper`]; `clamp` is
/// the `source_date_epoch` applied.
fn expected(clamp: Option<i64>) -> Vec<String> {
    let t = |sec: i64, nsec: u32| match clamp {
        Some(e) if (sec, nsec) > (e, 0) => (e, 0),
        _ => (sec, nsec),
    };
    let dir = |name: &str, mode: u32| line(b'5', name, "", b"", mode, (0, 0), t(T, 0), (0, 0), &[]);
    let reg = |name: &str, data: &[u8], mode: u32| {
        line(b'0', name, "", data, mode, (0, 0), t(T, 0), (0, 0), &[])
    };
    let marker =
        |name: &str, mtime: (i64, u32)| line(b'0', name, "", b"", 0, (0, 0), mtime, (0, 0), &[]);
    let sym = |name: &str, target: &str| {
        line(b'2', name, target, b"", 0o777, (0, 0), t(T, 0), (0, 0), &[])
    };
    let long = long_name();
    vec![
        dir("a/", 0o755),
        line(
            b'0',
            "a/hard1",
            "",
            b"linked\n",
            0o644,
            (1000, 1000),
            t(T, 0),
            (0, 0),
            &[("user.k", b"v")],
        ),
        line(
            b'0',
            "big-ids",
            "",
            b"ids",
            0o640,
            (3_000_000, 4_000_000),
            t(T, 0),
            (0, 0),
            &[],
        ),
        dir("bin/", 0o755),
        line(
            b'0',
            "bin/ping",
            "",
            b"#!ping\n",
            0o4755,
            (0, 0),
            t(T, 0),
            (0, 0),
            &[("security.capability", &CAP)],
        ),
        reg("café", b"utf-8", 0o644),
        dir("dev/", 0o755),
        line(
            b'6',
            "dev/fifo",
            "",
            b"",
            0o600,
            (0, 0),
            t(T, 0),
            (0, 0),
            &[],
        ),
        line(
            b'3',
            "dev/null",
            "",
            b"",
            0o666,
            (0, 0),
            t(T, 0),
            (1, 3),
            &[],
        ),
        line(
            b'4',
            "dev/sda",
            "",
            b"",
            0o660,
            (0, 6),
            t(T, 0),
            (8, 0),
            &[],
        ),
        sym("escape", "/etc/shadow"),
        dir("etc/", 0o755),
        marker("etc/.wh..wh..opq", t(T, 0)),
        line(
            b'0',
            "etc/passwd",
            "",
            b"root:x:0:0::/root:/bin/sh\n",
            0o644,
            (0, 0),
            t(T + 5, 123_456_789),
            (0, 0),
            &[],
        ),
        marker("etc/.wh.removed", t(T + 7, 0)),
        sym("evil", "/"),
        dir("long/", 0o755),
        line(
            b'0',
            &long,
            "",
            b"long",
            0o600,
            (0, 0),
            t(T, 0),
            (0, 0),
            &[],
        ),
        sym("longlink", &long_target()),
        line(
            b'0',
            "old",
            "",
            b"",
            0o644,
            (0, 0),
            t(-101, 500_000_000),
            (0, 0),
            &[],
        ),
        dir("sizes/", 0o755),
        reg("sizes/0", b"", 0o644),
        reg("sizes/512", &[b'a'; 512], 0o644),
        reg("sizes/513", &[b'b'; 513], 0o644),
        sym("up", "../../.."),
        dir("var/", 0o1777),
        // The shared whiteout inode was last touched through etc/removed.
        marker("var/.wh.gone", t(T + 7, 0)),
        dir("x/", 0o755),
        marker("x/.wh.xw", t(T, 0)),
        dir("z/", 0o755),
        line(
            b'1',
            "z/hard2",
            "a/hard1",
            b"",
            0o644,
            (1000, 1000),
            t(T, 0),
            (0, 0),
            &[],
        ),
        "END".to_owned(),
    ]
}

fn expected_stats(entries: u64) -> ExportStats {
    ExportStats {
        entries,
        whiteouts: 3,
        opaque_dirs: 1,
        hard_links: 1,
        skipped_sockets: 1,
        // bin's origin, etc's and x's opaque, x/xw's whiteout.
        dropped_xattrs: 4,
    }
}

/// Our reader's lines for an uncompressed archive.
fn read_ours(tar: &[u8]) -> Vec<String> {
    let mut r = TarReader::new(tar, Limits::default());
    let mut out = Vec::new();
    while let Some(e) = r.next_entry().unwrap() {
        let mut data = Vec::new();
        r.data().read_to_end(&mut data).unwrap();
        out.push(go::entry_line(&e, &data));
    }
    out.push("END".to_owned());
    out
}

fn export_plain(up: &Path, epoch: Option<i64>) -> (Vec<u8>, ExportStats) {
    let mut tar = Vec::new();
    let stats = export(up, &mut tar, epoch).unwrap();
    (tar, stats)
}

fn assert_lines(what: &str, got: &[String], want: &[String]) {
    if got != want {
        let mut msg = format!("{what}: entry lists differ\n");
        for i in 0..got.len().max(want.len()) {
            let (g, w) = (got.get(i), want.get(i));
            let mark = if g == w { " " } else { "!" };
            msg += &format!("{mark} got:  {g:?}\n{mark} want: {w:?}\n");
        }
        panic!("{msg}");
    }
}

#[test]
fn exact_entry_list_by_our_reader_and_go() {
    if !root_or_skip() {
        return;
    }
    let tmp = tempdir();
    let up = tmp.path().join("upper");
    fs::create_dir(&up).unwrap();
    build_upper(&up);

    let (tar, stats) = export_plain(&up, None);
    let want = expected(None);
    let ours = read_ours(&tar);
    assert_lines("our reader", &ours, &want);
    assert_eq!(stats, expected_stats(want.len() as u64 - 1));
    assert!(
        !ours.iter().any(|l| l.contains(&go::hx(b"evil/"))),
        "a symlink was descended"
    );
    assert_eq!(tar.len() % 512, 0);
    assert!(tar.ends_with(&[0; 1024]));

    let epoch = T + 6;
    let (clamped, _) = export_plain(&up, Some(epoch));
    assert_lines("clamped", &read_ours(&clamped), &expected(Some(epoch)));

    let Some(oracle) = go::oracle_or_skip("the Go check of exported layers") else {
        return;
    };
    assert_lines("go archive/tar", &go::run_go(&oracle, &tar), &want);
    assert_lines(
        "go archive/tar, clamped",
        &go::run_go(&oracle, &clamped),
        &expected(Some(epoch)),
    );
}

fn xattr_of(img: &Image<fs::File>, path: &[u8], name: &[u8]) -> Option<Vec<u8>> {
    let nid = img.lookup(path).unwrap().unwrap();
    let inode = img.inode(nid).unwrap();
    inode
        .xattrs()
        .iter()
        .find(|x| x.name == name)
        .map(|x| x.value.clone())
}

#[test]
fn round_trip_through_convert_restores_overlay_forms() {
    if !root_or_skip() {
        return;
    }
    let tmp = tempdir();
    let up = tmp.path().join("upper");
    fs::create_dir(&up).unwrap();
    build_upper(&up);
    let (tar, _) = export_plain(&up, None);

    let image = tmp.path().join("layer.erofs");
    let out = fs::File::create(&image).unwrap();
    let streamed = stream_tar(&tar[..], out, tmp.path(), &ConvertOptions::default()).unwrap();
    let (_, report) = streamed.finish(None, None).unwrap();
    assert_eq!(report.diff_id, Some(Digest::of(&tar)));

    let img = Image::open(&image).unwrap();
    let node = |p: &[u8]| img.inode(img.lookup(p).unwrap().unwrap()).unwrap();
    for w in [&b"etc/removed"[..], b"var/gone", b"x/xw"] {
        let inode = node(w);
        assert_eq!(u32::from(inode.mode()) & 0o170000, 0o020000, "{w:?}");
        assert_eq!(inode.rdev(), Some((0, 0)), "{w:?}");
    }
    assert_eq!(
        xattr_of(&img, b"etc", b"trusted.overlay.opaque").as_deref(),
        Some(&b"y"[..])
    );
    assert_eq!(xattr_of(&img, b"x", b"trusted.overlay.opaque"), None);
    assert_eq!(xattr_of(&img, b"bin", b"trusted.overlay.origin"), None);
    assert_eq!(
        xattr_of(&img, b"bin/ping", b"security.capability").as_deref(),
        Some(&CAP[..])
    );
    assert_eq!(img.lookup(b"etc/.wh.removed").unwrap(), None);
    assert!(img.lookup(b"etc/passwd").unwrap().is_some());
    assert_eq!(
        img.lookup(b"a/hard1").unwrap(),
        img.lookup(b"z/hard2").unwrap()
    );
    assert_eq!(node(b"a/hard1").nlink(), 2);
    assert_eq!(img.symlink_target(&node(b"evil")).unwrap(), b"/");
    assert_eq!(img.lookup(b"a/sock").unwrap(), None);
}

fn gunzip(b: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    flate2::read::MultiGzDecoder::new(b)
        .read_to_end(&mut out)
        .unwrap();
    out
}

#[test]
fn compressed_outputs_carry_both_digests_and_are_deterministic() {
    if !root_or_skip() {
        return;
    }
    let tmp = tempdir();
    let up = tmp.path().join("upper");
    fs::create_dir(&up).unwrap();
    build_upper(&up);
    let (tar, stats) = export_plain(&up, None);
    let diff_id = Digest::of(&tar);

    for compression in [Compression::None, Compression::Gzip, Compression::Zstd] {
        let opts = ExportOptions {
            compression,
            source_date_epoch: None,
        };
        let mut blob = Vec::new();
        let got = export_layer(&up, &mut blob, &opts).unwrap();
        assert_eq!(got.diff_id, diff_id, "{compression}");
        assert_eq!(got.uncompressed_size, tar.len() as u64, "{compression}");
        assert_eq!(got.digest, Digest::of(&blob), "{compression}");
        assert_eq!(got.size, blob.len() as u64, "{compression}");
        assert_eq!(got.stats, stats, "{compression}");
        let plain = match compression {
            Compression::None => blob.clone(),
            Compression::Gzip => gunzip(&blob),
            Compression::Zstd => zstd::decode_all(&blob[..]).unwrap(),
        };
        assert!(plain == tar, "{compression}: decompressed bytes differ");

        let mut again = Vec::new();
        export_layer(&up, &mut again, &opts).unwrap();
        assert!(again == blob, "{compression}: two exports differ");

        if compression == Compression::Gzip {
            let path = tmp.path().join("layer.tar.gz");
            fs::write(&path, &blob).unwrap();
            let st = std::process::Command::new("gzip")
                .arg("-t")
                .arg(&path)
                .status()
                .unwrap();
            assert!(st.success(), "gzip -t failed");
        }
    }
}

#[test]
fn opaque_root_comes_first_and_empty_upper_is_an_empty_layer() {
    if !root_or_skip() {
        return;
    }
    let tmp = tempdir();
    let up = tmp.path().join("upper");
    fs::create_dir(&up).unwrap();
    let (tar, stats) = export_plain(&up, None);
    assert_eq!(tar, vec![0; 1024]);
    assert_eq!(stats, ExportStats::default());

    file(&up.join("f"), b"", 0o644);
    xattr(&up, "trusted.overlay.opaque", b"y");
    set_time(&up.join("f"), T, 0);
    set_time(&up, T + 1, 0);
    let (tar, _) = export_plain(&up, None);
    let want = vec![
        line(
            b'0',
            ".wh..wh..opq",
            "",
            b"",
            0,
            (0, 0),
            (T + 1, 0),
            (0, 0),
            &[],
        ),
        line(b'0', "f", "", b"", 0o644, (0, 0), (T, 0), (0, 0), &[]),
        "END".to_owned(),
    ];
    assert_lines("opaque root", &read_ours(&tar), &want);
}

#[test]
fn refuses_what_a_layer_cannot_express() {
    if !root_or_skip() {
        return;
    }
    let tmp = tempdir();

    let up = tmp.path().join("reserved");
    fs::create_dir(&up).unwrap();
    file(&up.join(".wh.x"), b"", 0o644);
    let err = export(&up, std::io::sink(), None).unwrap_err();
    assert!(matches!(err, ExportError::ReservedName { .. }), "{err}");

    let up = tmp.path().join("redirect");
    fs::create_dir_all(up.join("d")).unwrap();
    xattr(&up.join("d"), "trusted.overlay.redirect", b"/old");
    let err = export(&up, std::io::sink(), None).unwrap_err();
    assert!(matches!(err, ExportError::OverlayFeature { .. }), "{err}");
    assert!(
        err.to_string().contains("trusted.overlay.redirect"),
        "{err}"
    );

    let up = tmp.path().join("metacopy");
    fs::create_dir(&up).unwrap();
    file(&up.join("f"), b"", 0o644);
    xattr(&up.join("f"), "trusted.overlay.metacopy", b"");
    let err = export(&up, std::io::sink(), None).unwrap_err();
    assert!(matches!(err, ExportError::OverlayFeature { .. }), "{err}");
}

#[test]
fn symlinked_upper_components_are_never_descended() {
    if !root_or_skip() {
        return;
    }
    let tmp = tempdir();
    let outside = tmp.path().join("outside");
    fs::create_dir(&outside).unwrap();
    file(&outside.join("secret"), b"secret", 0o600);
    let up = tmp.path().join("upper");
    fs::create_dir(&up).unwrap();
    symlink(&outside, up.join("d")).unwrap();
    symlink(outside.join("secret"), up.join("s")).unwrap();
    let (tar, stats) = export_plain(&up, None);
    let lines = read_ours(&tar);
    assert_eq!(stats.entries, 2, "{lines:?}");
    assert!(
        lines[0].starts_with(&format!("32 {} ", go::hx(b"d"))),
        "{lines:?}"
    );
    assert!(
        lines[1].starts_with(&format!("32 {} ", go::hx(b"s"))),
        "{lines:?}"
    );
    let secret_hash = Digest::of(b"secret").hex();
    assert!(!lines.iter().any(|l| l.contains(&secret_hash)));
}

/// The directory reader shares the export's walking primitives: it must
/// still take the same upper, every file type included, as it is.
#[test]
fn directory_reader_takes_the_same_upper() {
    if !root_or_skip() {
        return;
    }
    let tmp = tempdir();
    let up = tmp.path().join("upper");
    fs::create_dir(&up).unwrap();
    build_upper(&up);
    let image = tmp.path().join("dir.erofs");
    let out = fs::File::create(&image).unwrap();
    let mut writer =
        erofs::writer::ImageWriter::new(out, erofs::writer::WriterOptions::default()).unwrap();
    let (tree, stats) = layer::dir::read_dir_tree(&up, &mut writer).unwrap();
    writer.finish(&tree).unwrap();
    // Every name below the root, second links and the socket included.
    assert_eq!(stats.entries, 31);
    let img = Image::open(&image).unwrap();
    let node = |p: &[u8]| img.inode(img.lookup(p).unwrap().unwrap()).unwrap();
    assert_eq!(node(b"etc/removed").rdev(), Some((0, 0)));
    assert_eq!(
        xattr_of(&img, b"etc", b"trusted.overlay.opaque").as_deref(),
        Some(&b"y"[..])
    );
    assert_eq!(
        img.lookup(b"a/hard1").unwrap(),
        img.lookup(b"z/hard2").unwrap()
    );
    assert_eq!(node(b"a/sock").mode() & 0o170000, 0o140000);
    assert_eq!(img.symlink_target(&node(b"up")).unwrap(), b"../../..");
    assert_eq!(
        img.read_all(&node(b"sizes/513"), 1 << 20).unwrap(),
        [b'b'; 513]
    );
}
