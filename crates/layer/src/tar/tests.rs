#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use super::*;
use crate::testkit::*;
use proptest::prelude::*;

/// Reads every entry and its data. Data errors are turned back into the
/// `TarError` inside the `io::Error`.
fn read_all_with(bytes: &[u8], limits: Limits) -> Result<Vec<(Entry, Vec<u8>)>, TarError> {
    let mut tr = TarReader::new(bytes, limits);
    let mut out = Vec::new();
    while let Some(e) = tr.next_entry()? {
        let mut data = Vec::new();
        tr.data().read_to_end(&mut data).map_err(unwrap_io)?;
        assert_eq!(data.len() as u64, e.size);
        out.push((e, data));
    }
    Ok(out)
}

fn read_all(bytes: &[u8]) -> Result<Vec<(Entry, Vec<u8>)>, TarError> {
    read_all_with(bytes, Limits::default())
}

fn unwrap_io(e: io::Error) -> TarError {
    match e.get_ref().and_then(|i| i.downcast_ref::<TarError>()) {
        Some(_) => *e.into_inner().unwrap().downcast::<TarError>().unwrap(),
        None => TarError::Io {
            offset: u64::MAX,
            source: e,
        },
    }
}

fn names(entries: &[(Entry, Vec<u8>)]) -> Vec<String> {
    entries
        .iter()
        .map(|(e, _)| String::from_utf8_lossy(&e.path).into_owned())
        .collect()
}

fn only(bytes: &[u8]) -> (Entry, Vec<u8>) {
    let mut v = read_all(bytes).unwrap();
    assert_eq!(v.len(), 1, "{:?}", names(&v));
    v.remove(0)
}

// ---- field parsers -------------------------------------------------------

#[test]
fn octal_fields_parse_like_go() {
    let cases: &[(&[u8], Option<i64>)] = &[
        (b"0000644\0", Some(0o644)),
        (b" 644 \0\0\0", Some(0o644)),
        (b"\x00\x00\x00644\x00", Some(0o644)),
        (b"644", Some(0o644)),
        (b"12\x0034", Some(0o12)),
        (b"        ", Some(0)),
        (b"\0\0\0\0", Some(0)),
        (b"", Some(0)),
        (b"77777777777", Some(0o77777777777)),
        (b"777777777777", Some(0o777777777777)),
        (b"1 2", None),
        (b"8", None),
        (b"-1", None),
        (b"+1", None),
        (b"0x10", None),
        (b"1_0", None),
    ];
    for (field, want) in cases {
        assert_eq!(parse_numeric(field), *want, "{field:?}");
    }
}

#[test]
fn base256_fields_parse_like_go() {
    let mut f = [0u8; 12];
    f[0] = 0x80;
    f[4..].copy_from_slice(&(9u64 << 30).to_be_bytes());
    assert_eq!(parse_numeric(&f), Some(9 << 30));

    let mut f = [0xffu8; 12];
    f[4..].copy_from_slice(&(-86400i64).to_be_bytes());
    assert_eq!(parse_numeric(&f), Some(-86400));
    assert_eq!(parse_numeric(&[0xff; 8]), Some(-1));
    assert_eq!(
        parse_numeric(&[
            0x80, 0, 0, 0, 0x7f, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff
        ]),
        Some(i64::MAX)
    );
    assert_eq!(
        parse_numeric(&[0xff, 0xff, 0xff, 0xff, 0x80, 0, 0, 0, 0, 0, 0, 0]),
        Some(i64::MIN)
    );
    assert_eq!(
        parse_numeric(&[0xc0, 0, 0, 0, 0x80, 0, 0, 0, 0, 0, 0, 0]),
        None
    );
    // Does not fit in 63 bits.
    assert_eq!(
        parse_numeric(&[0x80, 0, 0, 0, 0x80, 0, 0, 0, 0, 0, 0, 0]),
        None
    );
    assert_eq!(
        parse_numeric(&[0x80, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0]),
        None
    );
    // Second byte 0x40 set on a positive value is just data.
    assert_eq!(parse_numeric(&[0x80, 0x40]), Some(0x40));
}

#[test]
fn go_parse_int_matches_strconv() {
    let cases: &[(&[u8], Option<i64>)] = &[
        (b"0", Some(0)),
        (b"+7", Some(7)),
        (b"-7", Some(-7)),
        (b"007", Some(7)),
        (b"9223372036854775807", Some(i64::MAX)),
        (b"-9223372036854775808", Some(i64::MIN)),
        (b"9223372036854775808", None),
        (b"-9223372036854775809", None),
        (b"99999999999999999999999", None),
        (b"", None),
        (b"+", None),
        (b"-", None),
        (b" 1", None),
        (b"1 ", None),
        (b"1_0", None),
        (b"0x1", None),
        (b"--1", None),
    ];
    for (s, want) in cases {
        assert_eq!(go_parse_int(s), *want, "{:?}", String::from_utf8_lossy(s));
    }
}

#[test]
fn pax_time_matches_go() {
    type Case<'a> = (&'a [u8], Option<(i64, u32)>);
    let cases: &[Case<'_>] = &[
        (b"1700000000", Some((1_700_000_000, 0))),
        (b"1.5", Some((1, 500_000_000))),
        (b"1.", Some((1, 0))),
        (b"-1.5", Some((-2, 500_000_000))),
        (b"-0.25", Some((-1, 750_000_000))),
        (b"-1.0", Some((-1, 0))),
        (b"0.000000001", Some((0, 1))),
        (b"12.3456789999", Some((12, 345_678_999))),
        (b"-9223372036854775808.5", Some((i64::MAX, 500_000_000))),
        (b"+3.1", Some((3, 100_000_000))),
        (b".5", None),
        (b"1.2.3", None),
        (b"1.-2", None),
        (b"1e3", None),
        (b"", None),
    ];
    for (s, want) in cases {
        assert_eq!(parse_pax_time(s), *want, "{:?}", String::from_utf8_lossy(s));
    }
}

#[test]
fn pax_records_match_go() {
    type Rec<'a> = Option<(&'a [u8], &'a [u8], &'a [u8])>;
    let cases: &[(&[u8], Rec<'_>)] = &[
        (b"11 path=ab\nrest", Some((b"path", b"ab", b"rest"))),
        (b"8 path=\n", Some((b"path", b"", b""))),
        (b"+11 path=a\n", Some((b"path", b"a", b""))),
        (b"011 path=a\n", Some((b"path", b"a", b""))),
        (b"11 k=v=w\0x\n", Some((b"k", b"v=w\0x", b""))),
        (b"8 k=a\nb\nc\n", Some((b"k", b"a\nb", b"c\n"))),
        (b"20 path=a\n", None),
        (b"4 a=\n", None),
        (b"11 path=ab", None),
        (b"10 pathab\n", None),
        (b"7 =abc\n", None),
        (b"10path=ab\n", None),
        (b"11 path=a\0\n", None),
        (b"8 a\0b=c\n", None),
        (b"-5 a=b\n", None),
        (b"2 \n", None),
        (b"", None),
        (b"\0\0\0", None),
    ];
    for (s, want) in cases {
        assert_eq!(
            parse_pax_record(s),
            *want,
            "{:?}",
            String::from_utf8_lossy(s)
        );
    }
}

#[test]
fn padding_and_header_only_types() {
    assert_eq!(padding(0), 0);
    assert_eq!(padding(1), 511);
    assert_eq!(padding(512), 0);
    assert_eq!(padding(u64::MAX), 1);
    for t in b'1'..=b'6' {
        assert!(is_header_only(t));
    }
    for t in [b'0', 0, b'7', b'x', b'g', b'L', b'S', b'V'] {
        assert!(!is_header_only(t));
    }
}

// ---- well-formed archives ------------------------------------------------

#[test]
fn tar_crate_archive_reads_every_kind() {
    let entries = read_all(&tar_crate_archive()).unwrap();
    let by_name = |n: &str| {
        entries
            .iter()
            .find(|(e, _)| e.path == n.as_bytes())
            .unwrap_or_else(|| panic!("{n} missing in {:?}", names(&entries)))
    };

    let (e, data) = by_name("dir/child.txt");
    assert_eq!(
        (e.kind, e.mode, e.uid, e.gid, e.mtime),
        (EntryKind::Regular, 0o4755, 1000, 1001, 1_700_000_000)
    );
    assert_eq!(
        (e.uname.as_slice(), e.gname.as_slice(), data.as_slice()),
        (&b"alice"[..], &b"staff"[..], &b"hello"[..])
    );
    assert_eq!(e.header_offset, 0);
    assert_eq!(e.data_offset, 512);

    // The directory comes after its child; order is preserved.
    let dir_pos = entries
        .iter()
        .position(|(e, _)| e.kind == EntryKind::Directory)
        .unwrap();
    assert!(dir_pos > 0);
    assert_eq!(entries[dir_pos].0.mode, 0o1777);

    let long = format!("deep/{}/file-with-a-long-name", "d".repeat(120));
    assert_eq!(by_name(&long).1, b"abc");
    let c255 = format!("dir/{}", "c".repeat(255));
    assert_eq!(by_name(&c255).1, b"xyz");

    let (e, _) = by_name("dir/link");
    assert_eq!(
        (e.kind, e.link_name.as_slice(), e.size),
        (EntryKind::Symlink, &b"../target"[..], 0)
    );
    assert_eq!(
        by_name("dir/longlink").0.link_name,
        "t/".repeat(80).as_bytes()
    );
    let (e, _) = by_name("dir/hard");
    assert_eq!(
        (e.kind, e.link_name.as_slice()),
        (EntryKind::HardLink, &b"dir/child.txt"[..])
    );

    let (e, _) = by_name("dev/null");
    assert_eq!(
        (e.kind, e.dev_major, e.dev_minor),
        (EntryKind::CharDevice, 1, 3)
    );
    let (e, _) = by_name("dev/sda");
    assert_eq!(
        (e.kind, e.dev_major, e.dev_minor),
        (EntryKind::BlockDevice, 8, 0)
    );
    assert_eq!(by_name("dev/big").0.dev_major, 0o7777777);
    assert_eq!(by_name("run/fifo").0.kind, EntryKind::Fifo);

    let (e, data) = by_name("bin/ping");
    assert_eq!(data, b"ping");
    assert_eq!((e.mtime, e.mtime_nsec), (1_700_000_000, 123_456_789));
    let all: Vec<u8> = (0..=255).collect();
    assert_eq!(
        e.xattrs,
        vec![
            (b"user.overlay.origin".to_vec(), vec![]),
            (
                b"security.capability".to_vec(),
                vec![1, 0, 0, 2, 0, 0x20, 0, 0]
            ),
            (b"user.binary".to_vec(), all),
        ]
    );

    let (e, data) = entries.last().unwrap();
    assert_eq!(e.path, [b'l', b'a', b't', b'i', b'n', 0xe9, b'-', 0xff]);
    assert_eq!(data, b"latin1");
    assert!(entries.iter().all(|(e, _)| e.data_offset % 512 == 0));
}

#[test]
fn partial_reads_then_skip() {
    let archive = cat(&[&file(b"a", &[7u8; 5000]), &file(b"b", b"bee"), &end()]);
    let mut tr = TarReader::new(&archive[..], Limits::default());
    let a = tr.next_entry().unwrap().unwrap();
    assert_eq!(a.size, 5000);
    let mut buf = [0u8; 100];
    tr.data().read_exact(&mut buf).unwrap();
    assert_eq!(tr.remaining(), 4900);
    let b = tr.next_entry().unwrap().unwrap();
    assert_eq!(b.path, b"b");
    assert_eq!(b.header_offset, 512 + 5120);
    assert_eq!(b.data_offset, 512 + 5120 + 512);
    assert!(tr.next_entry().unwrap().is_none());
    assert!(tr.next_entry().unwrap().is_none());
    assert_eq!(tr.position(), archive.len() as u64);
    let mut rest = tr.into_inner();
    assert!(rest.is_empty() || rest.read(&mut buf).unwrap() == 0);
}

// ---- the TARmageddon family ----------------------------------------------

#[test]
fn tarmageddon_pax_size_wins_over_zero_ustar_size() {
    let entries = read_all(&tarmageddon()).unwrap();
    assert_eq!(names(&entries), ["carrier", "after"]);
    // The smuggled header is carrier's *data*, never an entry.
    assert!(entries[0].1.starts_with(&file(b"smuggled", b"evil")[..512]));
    assert_eq!(entries[1].1, b"ok");
}

#[test]
fn pax_size_wins_over_nonzero_ustar_size() {
    let entries = read_all(&pax_size_overrides_nonzero_ustar()).unwrap();
    assert_eq!(names(&entries), ["a", "b"]);
    assert_eq!(entries[0].1, b"0123456789");
    assert_eq!(entries[1].1, b"bb");
}

#[test]
fn pax_then_long_name_then_file_binds_size_to_the_file() {
    let entries = read_all(&pax_then_longname_then_file()).unwrap();
    assert_eq!(
        names(&entries),
        ["n/".repeat(70) + "file", "next".to_string()]
    );
    assert_eq!(entries[0].1, b"12345");
}

#[test]
fn header_only_types_never_own_data() {
    let symlink = Hdr::ustar(b"s", b'2', 512).bytes(LINKNAME, b"t").alone();
    let entries = read_all(&cat(&[&symlink, &file(b"f", b"x"), &end()])).unwrap();
    assert_eq!(names(&entries), ["s", "f"]);
    assert_eq!(entries[0].0.size, 0);

    // '\0' + trailing slash is a directory, so its size is ignored too.
    let entries = read_all(&cat(&[
        &Hdr::ustar(b"d/", 0, 600).alone(),
        &file(b"f", b"x"),
        &end(),
    ]))
    .unwrap();
    assert_eq!(entries[0].0.kind, EntryKind::Directory);
    assert_eq!(names(&entries), ["d/", "f"]);

    // Negative sizes are fine where there is no data (Go's check is on the
    // data length).
    let entries = read_all(&cat(&[&pax(b'x', &[(b"size", b"-5")]), &dir(b"d"), &end()])).unwrap();
    assert_eq!(entries[0].0.size, 0);
}

// ---- extension header sequencing ----------------------------------------

#[test]
fn extension_sequencing_matches_go() {
    let run = |parts: &[&[u8]]| names(&read_all(&cat(parts)).unwrap());
    let hdr = file(b"hdr", b"");
    // A second x replaces the first entirely.
    assert_eq!(
        run(&[
            &pax(b'x', &[(b"path", b"first")]),
            &pax(b'x', &[(b"mtime", b"7")]),
            &hdr,
            &end()
        ]),
        ["hdr"]
    );
    // A g header drops pending x and L metadata.
    assert_eq!(
        run(&[
            &pax(b'x', &[(b"path", b"lost")]),
            &pax(b'g', &[(b"path", b"global")]),
            &hdr,
            &end()
        ]),
        ["hdr"]
    );
    assert_eq!(
        run(&[&gnu_long(b'L', b"lost"), &pax(b'g', &[]), &hdr, &end()]),
        ["hdr"]
    );
    // Invalid values in a g header are not applied, hence not errors.
    assert_eq!(
        run(&[&pax(b'g', &[(b"size", b"abc")]), &hdr, &end()]),
        ["hdr"]
    );
    // GNU long names win over PAX paths, in either order.
    assert_eq!(
        run(&[
            &gnu_long(b'L', b"from-L"),
            &pax(b'x', &[(b"path", b"p")]),
            &hdr,
            &end()
        ]),
        ["from-L"]
    );
    assert_eq!(
        run(&[
            &pax(b'x', &[(b"path", b"p")]),
            &gnu_long(b'L', b"from-L"),
            &hdr,
            &end()
        ]),
        ["from-L"]
    );
    // Long names are cut at NUL; an empty one does not override.
    assert_eq!(
        run(&[&gnu_long(b'L', b"real\0junk"), &hdr, &end()]),
        ["real"]
    );
    assert_eq!(
        run(&[
            &gnu_long(b'L', b"first"),
            &gnu_long(b'L', b""),
            &hdr,
            &end()
        ]),
        ["hdr"]
    );
    // Empty PAX values keep the header's value.
    assert_eq!(
        run(&[&pax(b'x', &[(b"path", b"p"), (b"path", b"")]), &hdr, &end()]),
        ["hdr"]
    );
    // Metadata pending at the end is dropped, as in Go.
    assert_eq!(
        run(&[&hdr, &pax(b'x', &[(b"path", b"p")]), &end()]),
        ["hdr"]
    );
    assert_eq!(run(&[&hdr, &gnu_long(b'L', b"p")]), ["hdr"]);
}

#[test]
fn pax_fields_apply() {
    let archive = cat(&[
        &pax(
            b'x',
            &[
                (b"path", b"pax/path"),
                (b"linkpath", b"pax/link"),
                (b"uname", b"u"),
                (b"gname", b"g"),
                (b"uid", b"+4294967296"),
                (b"gid", b"0042"),
                (b"mtime", b"-1.5"),
                (b"atime", b"1.000000000001"),
                (b"LIBARCHIVE.xattr.user.x", b"eA=="),
                (b"SCHILY.xattr.user.dup", b"first"),
                (b"SCHILY.xattr.trusted.x", b"a\0b\nc"),
                (b"SCHILY.xattr.user.dup", b"second"),
                (b"SCHILY.xattr.user.overlay.origin", b""),
            ],
        ),
        &Hdr::ustar(b"hdr", b'1', 0).alone(),
        &end(),
    ]);
    let (e, _) = only(&archive);
    assert_eq!(
        (e.path.as_slice(), e.link_name.as_slice()),
        (&b"pax/path"[..], &b"pax/link"[..])
    );
    assert_eq!(
        (e.uname.as_slice(), e.gname.as_slice(), e.uid, e.gid),
        (&b"u"[..], &b"g"[..], 1 << 32, 42)
    );
    assert_eq!((e.mtime, e.mtime_nsec), (-2, 500_000_000));
    assert_eq!(
        e.xattrs,
        vec![
            (b"user.dup".to_vec(), b"second".to_vec()),
            (b"trusted.x".to_vec(), b"a\0b\nc".to_vec()),
            (b"user.overlay.origin".to_vec(), vec![]),
        ]
    );
}

// ---- header formats -------------------------------------------------------

#[test]
fn header_format_variants() {
    let one = |h: &Hdr| only(&cat(&[&h.alone(), &end()])).0;

    let mut h = Hdr::ustar(b"name", b'0', 0);
    h.field(PREFIX, b"pre/fix");
    assert_eq!(one(&h).path, b"pre/fix/name");

    let mut h = Hdr::ustar(b"name", b'0', 0);
    h.field(345..476, &[b'q'; 131])
        .octal(476..488, 5)
        .bytes(508..512, b"tar\0");
    assert_eq!(one(&h).path, [vec![b'q'; 131], b"/name".to_vec()].concat());

    // GNU: valid atime/ctime are not a prefix.
    let mut h = Hdr::gnu(b"name", b'0', 0);
    h.octal(GNU_ATIME, 0o1234).octal(GNU_CTIME, 0o4321);
    assert_eq!(one(&h).path, b"name");
    // ... but Go < 1.8's misplaced prefix is recognised.
    let mut h = Hdr::gnu(b"name", b'0', 0);
    h.field(PREFIX, b"some/prefix");
    assert_eq!(one(&h).path, b"some/prefix/name");
    let mut h = Hdr::gnu(b"name", b'0', 0);
    h.field(PREFIX, &[b'p', 0xe9]);
    assert_eq!(one(&h).path, b"name");

    // V7: user names and device fields are not read.
    let mut h = Hdr::v7(b"old", b'0', 0);
    h.bytes(UNAME, b"ignored").field(DEVMAJOR, b"zz");
    assert_eq!(one(&h).uname, b"");

    // '\0' and '7' are regular files, mode type bits are dropped.
    let mut h = Hdr::ustar(b"f", 0, 0);
    h.octal(MODE, 0o100755);
    let e = one(&h);
    assert_eq!((e.kind, e.mode), (EntryKind::Regular, 0o755));
    assert_eq!(one(&Hdr::ustar(b"c", b'7', 0)).kind, EntryKind::Regular);

    // Signed checksums (old Sun tar) are accepted.
    let mut h = Hdr::ustar(&[b'n', 0xe9, 0xff], b'0', 0);
    h.bytes(UNAME, &[0xff; 20]);
    let e = only(&cat(&[&h.signed_checksum(), &end()])).0;
    assert_eq!(e.path, [b'n', 0xe9, 0xff]);

    // Base-256 ids and times.
    let mut h = Hdr::ustar(b"f", b'0', 0);
    h.base256(UID, 70000)
        .base256(GID, 1 << 40)
        .base256(MTIME, -86400);
    let e = one(&h);
    assert_eq!((e.uid, e.gid, e.mtime), (70000, 1 << 40, -86400));
}

#[test]
fn base256_size_above_8gib() {
    // Only the header is parsed; the 9 GiB body is never materialised.
    let mut h = Hdr::ustar(b"big", b'0', 0);
    h.base256(SIZE, 9 << 30);
    let header = h.checksum();
    let stream = header.as_slice().chain(io::repeat(0).take(9 << 30));
    let mut tr = TarReader::new(stream, Limits::default());
    let e = tr.next_entry().unwrap().unwrap();
    assert_eq!((e.size, e.data_offset), (9 << 30, 512));
    let mut buf = vec![0u8; 256 * 1024];
    assert_eq!(tr.data().read(&mut buf).unwrap(), buf.len());
    assert_eq!(tr.remaining(), (9 << 30) - buf.len() as u64);
}

#[test]
fn eof_variants_are_clean_ends() {
    for (name, bytes) in [
        ("empty", vec![]),
        ("one zero block", vec![0; 512]),
        ("two zero blocks", end()),
        ("no end marker", file(b"a", b"data")),
        (
            "eof in padding",
            file(b"a", b"data")[..512 + 4 + 100].to_vec(),
        ),
        (
            "eof right after data",
            file(b"a", b"data")[..512 + 4].to_vec(),
        ),
        (
            "eof in x padding",
            pax(b'x', &[(b"path", b"p")])[..512 + 30].to_vec(),
        ),
    ] {
        let entries = read_all(&bytes).unwrap_or_else(|e| panic!("{name}: {e}"));
        assert!(entries.len() <= 1, "{name}");
    }
}

// ---- malicious and broken input: exact errors ----------------------------

fn err_of(bytes: &[u8]) -> TarError {
    match read_all(bytes) {
        Ok(v) => panic!("accepted, entries {:?}", names(&v)),
        Err(e) => e,
    }
}

#[test]
fn bad_checksum() {
    let mut a = cat(&[&file(b"a", b"x"), &file(b"b", b"y"), &end()]);
    a[1024] ^= 1; // name of b
    let e = err_of(&a);
    assert!(matches!(e, TarError::BadChecksum { offset: 1024 }), "{e:?}");
    assert_eq!(e.to_string(), "invalid header checksum at offset 1024");
    let mut h = Hdr::ustar(b"a", b'0', 0).checksum();
    h[CHKSUM].copy_from_slice(b"not oct\0");
    assert!(matches!(err_of(&h), TarError::BadChecksum { offset: 0 }));
}

#[test]
fn truncation() {
    assert!(matches!(
        err_of(&file(b"a", b"")[..300]),
        TarError::Truncated { offset: 300 }
    ));
    // Inside data, read through data().
    let a = file(b"a", b"0123456789");
    assert!(matches!(
        err_of(&a[..512 + 5]),
        TarError::Truncated { offset: 517 }
    ));
    // Inside data, skipped by next_entry().
    let mut tr = TarReader::new(&a[..512 + 5], Limits::default());
    tr.next_entry().unwrap().unwrap();
    assert!(matches!(
        tr.next_entry(),
        Err(TarError::Truncated { offset: 517 })
    ));
    assert!(matches!(tr.next_entry(), Err(TarError::Poisoned)));
    // Inside an extension payload.
    let x = pax(b'x', &[(b"path", b"somewhat long path")]);
    assert!(matches!(
        err_of(&x[..512 + 10]),
        TarError::Truncated { offset: 522 }
    ));
    // A partial block after one zero block.
    assert!(matches!(
        err_of(&[0; 612]),
        TarError::Truncated { offset: 612 }
    ));
}

#[test]
fn data_error_is_unexpected_eof_and_poisons() {
    let a = file(b"a", b"0123456789");
    let mut tr = TarReader::new(&a[..512 + 5], Limits::default());
    tr.next_entry().unwrap().unwrap();
    let err = tr.data().read_to_end(&mut Vec::new()).unwrap_err();
    assert_eq!(err.kind(), io::ErrorKind::UnexpectedEof);
    assert!(matches!(
        unwrap_io(err),
        TarError::Truncated { offset: 517 }
    ));
    assert!(matches!(tr.next_entry(), Err(TarError::Poisoned)));
}

#[test]
fn zero_block_then_header_is_invalid() {
    let e = err_of(&cat(&[&[0; 512], &file(b"a", b"x")]));
    assert!(
        matches!(e, TarError::InvalidHeader { offset: 512, .. }),
        "{e:?}"
    );
}

#[test]
fn invalid_numeric_fields() {
    for (range, value) in [
        (UID, &b"128"[..]),
        (GID, b"1 2"),
        (SIZE, b"zz"),
        (MTIME, b"-1"),
        (DEVMAJOR, b"zz"),
    ] {
        let mut h = Hdr::ustar(b"f", b'0', 0);
        h.field(range.clone(), value);
        let e = err_of(&cat(&[&h.alone(), &end()]));
        assert!(
            matches!(e, TarError::InvalidHeader { offset: 0, .. }),
            "{range:?}: {e:?}"
        );
    }
    let mut h = Hdr::ustar(b"f", b'0', 0);
    h.bytes(SIZE, &[0x80, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0]);
    assert!(matches!(
        err_of(&cat(&[&h.alone(), &end()])),
        TarError::InvalidHeader { .. }
    ));
    let mut h = Hdr::ustar(b"name", b'0', 0);
    h.field(476..488, b"xyz").bytes(508..512, b"tar\0");
    assert!(matches!(
        err_of(&cat(&[&h.alone(), &end()])),
        TarError::InvalidHeader { .. }
    ));
}

#[test]
fn negative_sizes() {
    let mut h = Hdr::ustar(b"f", b'0', 0);
    h.base256(SIZE, -1);
    let e = err_of(&cat(&[&h.alone(), &end()]));
    assert!(matches!(
        e,
        TarError::InvalidHeader {
            offset: 0,
            reason: "negative size"
        }
    ));
    // Go checks the raw header before the PAX merge.
    let e = err_of(&cat(&[
        &pax(b'x', &[(b"size", b"1")]),
        &h.with_data(b"x"),
        &end(),
    ]));
    assert!(
        matches!(e, TarError::InvalidHeader { offset: 1024, .. }),
        "{e:?}"
    );
    let e = err_of(&cat(&[
        &pax(b'x', &[(b"size", b"-5")]),
        &file(b"f", b""),
        &end(),
    ]));
    assert!(
        matches!(e, TarError::InvalidHeader { offset: 1024, .. }),
        "{e:?}"
    );
    let mut h = Hdr::ustar(b"PaxHeaders/x", b'x', 0);
    h.base256(SIZE, -1);
    assert!(matches!(
        err_of(&cat(&[&h.alone(), &end()])),
        TarError::InvalidHeader { offset: 0, .. }
    ));
}

#[test]
fn malformed_pax() {
    for payload in [
        &b"20 path=a\n"[..],
        b"4 a=\n",
        b"11 path=ab",
        b"10 pathab\n",
        b"7 =abc\n",
        b"10path=ab\n",
        b"11 path=a\0\n",
        b"8 a\0b=c\n",
        b"11 path=ab\n\0\0\0",
        b"18 GNU.sparse.numbytes=1\n",
    ] {
        let e = err_of(&cat(&[&pax_raw(payload), &file(b"f", b""), &end()]));
        assert!(
            matches!(e, TarError::InvalidPax { offset: 0, .. }),
            "{payload:?}: {e:?}"
        );
    }
    let e = err_of(&cat(&[
        &pax_raw_typed(b'g', b"9 a=b\n"),
        &file(b"f", b""),
        &end(),
    ]));
    assert!(matches!(e, TarError::InvalidPax { offset: 0, .. }), "{e:?}");
    for (k, v) in [
        (&b"mtime"[..], &b".5"[..]),
        (b"atime", b"x"),
        (b"ctime", b"1.2.3"),
        (b"uid", b"1_000"),
        (b"size", b"9223372036854775808"),
    ] {
        let e = err_of(&cat(&[&pax(b'x', &[(k, v)]), &file(b"f", b""), &end()]));
        assert!(
            matches!(e, TarError::InvalidPax { offset: 1024, .. }),
            "{k:?}: {e:?}"
        );
    }
}

#[test]
fn sparse_files_expand_like_go() {
    let regions = vec![
        SparseRegion {
            offset: 0,
            length: 3,
        },
        SparseRegion {
            offset: 10,
            length: 2,
        },
    ];
    for (name, want_name) in [
        ("sparse-0.0", "sparse-v00"),
        ("sparse-0.0-overrides-map-record", "sparse-v00"),
        ("sparse-0.1", "sparse-v01"),
        ("sparse-0.1-no-version", "s"),
        ("sparse-1.0", "sparse-v1"),
        ("sparse-1.0-zero-length-regions", "sparse-v1"),
    ] {
        let bytes = sparse_cases()
            .into_iter()
            .find(|(n, _)| *n == name)
            .unwrap()
            .1;
        let (e, data) = only(&bytes);
        assert_eq!(e.path, want_name.as_bytes(), "{name}");
        assert_eq!((e.kind, e.size), (EntryKind::Regular, 20), "{name}");
        assert_eq!(data, SPARSE_LOGICAL, "{name}");
        assert_eq!(e.sparse.as_ref(), Some(&regions), "{name}");
        let map_len = if name.starts_with("sparse-1.0") {
            512
        } else {
            0
        };
        assert_eq!(e.data_offset, 3 * 512 + map_len, "{name}");
    }

    // Small reads cross hole/data boundaries correctly.
    let archive = sparse_v1(&[(0, 3), (10, 2)], b"20", b"abcde");
    let mut tr = TarReader::new(&archive[..], Limits::default());
    tr.next_entry().unwrap().unwrap();
    let mut got = Vec::new();
    let mut buf = [0u8; 4];
    loop {
        let n = tr.data().read(&mut buf).unwrap();
        if n == 0 {
            break;
        }
        got.extend_from_slice(&buf[..n]);
    }
    assert_eq!(got, SPARSE_LOGICAL);
    assert!(tr.next_entry().unwrap().is_none());

    let many: Vec<(i64, i64)> = (0..100).map(|i| (i * 1000, 1)).collect();
    let (e, data) = only(&sparse_v1(&many, b"100000", &[b'x'; 100]));
    assert_eq!(e.size, 100_000);
    assert_eq!(e.sparse.as_ref().map(Vec::len), Some(100));
    assert_eq!(data.iter().filter(|&&b| b == b'x').count(), 100);
    assert_eq!(data[3000], b'x');
    assert_eq!(e.data_offset, 3 * 512 + 1024);

    let holes = sparse_cases()
        .into_iter()
        .find(|(n, _)| *n == "sparse-all-holes")
        .unwrap()
        .1;
    let (e, data) = only(&holes);
    assert_eq!((e.size, data), (20, vec![0; 20]));
    assert_eq!(e.sparse, Some(vec![]));

    // Unknown versions and lone records are not sparse files (Go agrees).
    for name in [
        "pax-sparse-unknown-version",
        "pax-sparse-name-only",
        "x-sparse-g-file",
    ] {
        let case = cached_corpus().iter().find(|c| c.name == name).unwrap();
        let (e, data) = only(&case.bytes);
        assert_eq!(
            (e.path.as_slice(), data.as_slice(), e.sparse),
            (&b"f"[..], &b"x"[..], None),
            "{name}"
        );
    }
}

#[test]
fn invalid_sparse_files() {
    let by_name = |n: &str| sparse_cases().into_iter().find(|(c, _)| *c == n).unwrap().1;
    for name in [
        "sparse-overlap",
        "sparse-unsorted",
        "sparse-beyond-size",
        "sparse-negative-size",
        "sparse-unreferenced-data",
        "sparse-missing-data",
        "sparse-on-directory",
        "sparse-on-symlink-v1",
    ] {
        let e = err_of(&by_name(name));
        assert!(
            matches!(e, TarError::InvalidHeader { offset: 1024, .. }),
            "{name}: {e:?}"
        );
    }
    for name in [
        "sparse-bad-size",
        "sparse-1.0-map-past-data",
        "sparse-1.0-bad-count",
        "sparse-1.0-count-too-large",
        "sparse-1.0-bad-entry",
        "sparse-0.1-count-mismatch",
        "sparse-0.1-missing-numblocks",
        "sparse-0.1-bad-number",
    ] {
        let e = err_of(&by_name(name));
        assert!(
            matches!(e, TarError::InvalidPax { offset: 1024, .. }),
            "{name}: {e:?}"
        );
    }
    // The in-data map is bounded.
    let many: Vec<(i64, i64)> = (0..100).map(|i| (i * 1000, 1)).collect();
    let l = Limits {
        max_pax_size: 512,
        ..Limits::default()
    };
    let e = read_all_with(&sparse_v1(&many, b"100000", &[b'x'; 100]), l).unwrap_err();
    assert!(
        matches!(
            e,
            TarError::Limit {
                what: "GNU sparse map too large",
                ..
            }
        ),
        "{e:?}"
    );
}

#[test]
fn policy_rejections() {
    let e = err_of(&cat(&[&Hdr::gnu(b"label", b'V', 0).alone(), &end()]));
    assert!(matches!(
        e,
        TarError::UnknownType {
            typeflag: b'V',
            offset: 0
        }
    ));
    assert_eq!(e.to_string(), "unsupported entry type 'V' at offset 0");
    let e = err_of(&cat(&[&Hdr::gnu(b"x", 0xff, 0).alone(), &end()]));
    assert_eq!(e.to_string(), "unsupported entry type '\\xff' at offset 0");
    let e = err_of(&cat(&[&Hdr::gnu(b"sparse", b'S', 0).alone(), &end()]));
    assert!(matches!(e, TarError::Unsupported { offset: 0, .. }));
    let e = err_of(&cat(&[
        &pax(b'x', &[(b"uid", b"-1")]),
        &file(b"f", b""),
        &end(),
    ]));
    assert!(matches!(
        e,
        TarError::OutOfRange {
            offset: 1024,
            what: "negative uid"
        }
    ));
    let mut h = Hdr::ustar(b"dev", b'3', 0);
    h.base256(DEVMAJOR, 1 << 33);
    let e = err_of(&cat(&[&h.alone(), &end()]));
    assert!(matches!(
        e,
        TarError::OutOfRange {
            what: "device major number",
            ..
        }
    ));
    // The same field on a non-device is ignored.
    h.typeflag(b'0');
    assert_eq!(only(&cat(&[&h.alone(), &end()])).0.dev_major, 0);
}

#[test]
fn limits() {
    let l = Limits::default();
    let big = vec![b'a'; (1 << 20) + 1];
    assert!(matches!(
        err_of(&cat(&[&pax_raw(&big), &end()])),
        TarError::Limit { offset: 0, .. }
    ));
    assert!(matches!(
        err_of(&cat(&[&gnu_long(b'L', &big), &end()])),
        TarError::Limit { offset: 0, .. }
    ));

    let three = cat(&[&file(b"a", b""), &file(b"b", b""), &file(b"c", b""), &end()]);
    let e = read_all_with(
        &three,
        Limits {
            max_entries: 2,
            ..l
        },
    )
    .unwrap_err();
    assert!(matches!(
        e,
        TarError::Limit {
            offset: 1024,
            what: "too many entries",
            ..
        }
    ));
    assert_eq!(
        read_all_with(
            &three,
            Limits {
                max_entries: 3,
                ..l
            }
        )
        .unwrap()
        .len(),
        3
    );

    let long = cat(&[&gnu_long(b'L', &[b'p'; 200]), &file(b"x", b""), &end()]);
    let e = read_all_with(
        &long,
        Limits {
            max_path_len: 199,
            ..l
        },
    )
    .unwrap_err();
    assert!(matches!(
        e,
        TarError::Limit {
            what: "path too long",
            ..
        }
    ));
    let e = read_all_with(
        &long,
        Limits {
            max_long_name_size: 100,
            ..l
        },
    )
    .unwrap_err();
    assert!(matches!(e, TarError::Limit { offset: 0, .. }));
    let e = read_all_with(
        &three,
        Limits {
            max_metadata_bytes: 2,
            ..l
        },
    )
    .unwrap_err();
    assert!(matches!(
        e,
        TarError::Limit {
            what: "total metadata size",
            offset: 1024,
            ..
        }
    ));
}

#[test]
fn finish_checks_trailing_bytes() {
    let a = cat(&[&file(b"a", b"x"), &end(), &[0; 9216]]);
    let rest = TarReader::new(&a[..], Limits::default()).finish().unwrap();
    assert!(rest.is_empty());

    let a = cat(&[&file(b"a", b"x"), &end(), &[0; 10], b"garbage"]);
    let e = TarReader::new(&a[..], Limits::default())
        .finish()
        .unwrap_err();
    let offset = (1024 + 1024 + 10) as u64;
    assert!(
        matches!(e, TarError::TrailingGarbage { offset: o } if o == offset),
        "{e:?}"
    );

    // Errors before the end propagate.
    let e = TarReader::new(&file(b"a", b"xyz")[..514], Limits::default())
        .finish()
        .unwrap_err();
    assert!(matches!(e, TarError::Truncated { .. }));
}

#[test]
fn diff_id_covers_the_whole_stream() {
    let a = cat(&[&file(b"a", b"x"), &end(), &[0; 9216]]);
    let mut tr = TarReader::new(crate::DigestReader::new(&a[..]), Limits::default());
    while tr.next_entry().unwrap().is_some() {}
    let (digest, n, _) = tr.finish().unwrap().finish();
    assert_eq!(n, a.len() as u64);
    assert_eq!(digest, crate::Digest::of(&a));
}

#[test]
fn io_errors_carry_offsets() {
    struct Failing;
    impl Read for Failing {
        fn read(&mut self, _: &mut [u8]) -> io::Result<usize> {
            Err(io::Error::other("disk on fire"))
        }
    }
    let mut tr = TarReader::new(Failing, Limits::default());
    let e = tr.next_entry().unwrap_err();
    assert!(matches!(e, TarError::Io { offset: 0, .. }));
    // The cause travels as the error's source (printed once by callers
    // that show the chain), not inside its message.
    let source = std::error::Error::source(&e).map(ToString::to_string);
    assert!(source.is_some_and(|s| s.contains("disk on fire")));
    let io_err: io::Error = TarError::Truncated { offset: 1 }.into();
    assert_eq!(io_err.kind(), io::ErrorKind::UnexpectedEof);
}

#[test]
fn whole_corpus_never_panics_and_agrees_with_expectations() {
    for case in cached_corpus() {
        let result = read_all(&case.bytes);
        if case.stricter {
            let e = result
                .err()
                .unwrap_or_else(|| panic!("{}: accepted", case.name));
            assert!(
                matches!(
                    e,
                    TarError::UnknownType { .. }
                        | TarError::Unsupported { .. }
                        | TarError::OutOfRange { .. }
                ),
                "{}: {e:?}",
                case.name
            );
        }
    }
}

fn cached_corpus() -> &'static [Case] {
    static CORPUS: std::sync::OnceLock<Vec<Case>> = std::sync::OnceLock::new();
    CORPUS.get_or_init(corpus)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2000, ..ProptestConfig::default() })]

    /// Arbitrary bytes: errors are fine, panics and hangs are not.
    #[test]
    fn random_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..4096)) {
        let _ = read_all(&bytes);
        let _ = TarReader::new(&bytes[..], Limits::default()).finish();
    }

    /// Corpus archives with a few bytes flipped: headers stay mostly
    /// plausible, which reaches far deeper than random bytes.
    #[test]
    fn mutated_corpus_never_panics(
        which in 0usize..1000,
        flips in proptest::collection::vec((any::<usize>(), any::<u8>()), 1..8),
    ) {
        let corpus = cached_corpus();
        let mut bytes = corpus[which % corpus.len()].bytes.clone();
        if !bytes.is_empty() {
            for (pos, val) in flips {
                let i = pos % bytes.len();
                bytes[i] = val;
            }
        }
        let _ = read_all(&bytes);
    }
}
