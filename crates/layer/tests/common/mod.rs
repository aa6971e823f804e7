//! Test kit shared by the unit tests (included from `src/lib.rs` with
//! `#[path]`) and the integration tests (`mod common;`): a raw tar header
//! builder for archives no well-behaved writer produces, and the adversarial
//! corpus the Go differential test runs.
//!
//! Only `std` and the `tar` crate (a dev-dependency) are used, so the same
//! file compiles inside and outside the crate.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::ops::Range;

pub const BLOCK: usize = 512;

pub const NAME: Range<usize> = 0..100;
pub const MODE: Range<usize> = 100..108;
pub const UID: Range<usize> = 108..116;
pub const GID: Range<usize> = 116..124;
pub const SIZE: Range<usize> = 124..136;
pub const MTIME: Range<usize> = 136..148;
pub const CHKSUM: Range<usize> = 148..156;
pub const TYPEFLAG: usize = 156;
pub const LINKNAME: Range<usize> = 157..257;
pub const MAGIC: Range<usize> = 257..263;
pub const VERSION: Range<usize> = 263..265;
pub const UNAME: Range<usize> = 265..297;
pub const GNAME: Range<usize> = 297..329;
pub const DEVMAJOR: Range<usize> = 329..337;
pub const DEVMINOR: Range<usize> = 337..345;
pub const PREFIX: Range<usize> = 345..500;
pub const GNU_ATIME: Range<usize> = 345..357;
pub const GNU_CTIME: Range<usize> = 357..369;

/// A raw header block under construction.
#[derive(Clone)]
pub struct Hdr(pub [u8; BLOCK]);

impl Hdr {
    /// A ustar header (`ustar\0` `00`) with mode 0644, ids 0, mtime 0.
    pub fn ustar(name: &[u8], typeflag: u8, size: u64) -> Self {
        let mut h = Hdr([0; BLOCK]);
        h.bytes(NAME, name)
            .octal(MODE, 0o644)
            .octal(UID, 0)
            .octal(GID, 0)
            .octal(SIZE, size)
            .octal(MTIME, 0)
            .bytes(MAGIC, b"ustar\0")
            .bytes(VERSION, b"00")
            .octal(DEVMAJOR, 0)
            .octal(DEVMINOR, 0);
        h.0[TYPEFLAG] = typeflag;
        h
    }

    /// A GNU header (`ustar ` ` \0`).
    pub fn gnu(name: &[u8], typeflag: u8, size: u64) -> Self {
        let mut h = Self::ustar(name, typeflag, size);
        h.bytes(MAGIC, b"ustar ").bytes(VERSION, b" \0");
        h
    }

    /// A V7 header: no magic, so user/group names and device numbers are
    /// not read at all.
    pub fn v7(name: &[u8], typeflag: u8, size: u64) -> Self {
        let mut h = Self::ustar(name, typeflag, size);
        h.bytes(MAGIC, &[0; 6]).bytes(VERSION, &[0; 2]);
        h
    }

    /// Overwrites the start of `range` with `value` (rest unchanged).
    pub fn bytes(&mut self, range: Range<usize>, value: &[u8]) -> &mut Self {
        assert!(value.len() <= range.len(), "field overflow");
        self.0[range.start..range.start + value.len()].copy_from_slice(value);
        self
    }

    /// Replaces the whole field with `value` padded with NULs.
    pub fn field(&mut self, range: Range<usize>, value: &[u8]) -> &mut Self {
        self.0[range.clone()].fill(0);
        self.bytes(range, value)
    }

    /// Zero-padded octal with a trailing NUL, like Go and GNU tar write it.
    pub fn octal(&mut self, range: Range<usize>, value: u64) -> &mut Self {
        let width = range.len() - 1;
        let s = format!("{value:0width$o}");
        assert!(s.len() <= width, "octal overflow");
        self.field(range, s.as_bytes())
    }

    /// Base-256: high bit set, big-endian two's complement.
    pub fn base256(&mut self, range: Range<usize>, value: i64) -> &mut Self {
        let len = range.len();
        let fill = if value < 0 { 0xff } else { 0x00 };
        self.0[range.clone()].fill(fill);
        let be = value.to_be_bytes();
        self.0[range.end - 8..range.end].copy_from_slice(&be);
        self.0[range.start] = if value < 0 { 0xff } else { 0x80 };
        assert!(len >= 8);
        self
    }

    pub fn typeflag(&mut self, t: u8) -> &mut Self {
        self.0[TYPEFLAG] = t;
        self
    }

    /// The unsigned checksum, written as six octal digits, NUL, space.
    pub fn checksum(&self) -> [u8; BLOCK] {
        let mut b = self.0;
        b[CHKSUM].fill(b' ');
        let sum: u32 = b.iter().map(|&c| u32::from(c)).sum();
        b[CHKSUM].copy_from_slice(format!("{sum:06o}\0 ").as_bytes());
        b
    }

    /// The signed checksum (bytes as i8), for old Sun tar compatibility.
    pub fn signed_checksum(&self) -> [u8; BLOCK] {
        let mut b = self.0;
        b[CHKSUM].fill(b' ');
        let sum: i64 = b.iter().map(|&c| i64::from(c as i8)).sum();
        assert!(sum >= 0);
        b[CHKSUM].copy_from_slice(format!("{sum:06o}\0 ").as_bytes());
        b
    }

    /// Header with checksum, followed by `data` and padding.
    pub fn with_data(&self, data: &[u8]) -> Vec<u8> {
        let mut out = self.checksum().to_vec();
        out.extend_from_slice(data);
        out.extend(std::iter::repeat_n(0u8, pad(data.len())));
        out
    }

    /// Header with checksum and no data.
    pub fn alone(&self) -> Vec<u8> {
        self.checksum().to_vec()
    }
}

pub fn pad(len: usize) -> usize {
    (BLOCK - len % BLOCK) % BLOCK
}

/// A PAX record with its self-including decimal length.
pub fn pax_record(key: &[u8], value: &[u8]) -> Vec<u8> {
    let body = key.len() + value.len() + 3; // ' ', '=', '\n'
    let mut n = body + 1;
    while n.to_string().len() + body != n {
        n = n.to_string().len() + body;
    }
    let mut r = format!("{n} ").into_bytes();
    r.extend_from_slice(key);
    r.push(b'=');
    r.extend_from_slice(value);
    r.push(b'\n');
    r
}

pub fn pax_payload(records: &[(&[u8], &[u8])]) -> Vec<u8> {
    records.iter().flat_map(|(k, v)| pax_record(k, v)).collect()
}

/// An `x` (or `g`) header with its payload.
pub fn pax(typeflag: u8, records: &[(&[u8], &[u8])]) -> Vec<u8> {
    let payload = pax_payload(records);
    Hdr::ustar(b"PaxHeaders/x", typeflag, payload.len() as u64).with_data(&payload)
}

/// An `x` header with a raw (possibly malformed) payload.
pub fn pax_raw(payload: &[u8]) -> Vec<u8> {
    pax_raw_typed(b'x', payload)
}

/// An `x` or `g` header with a raw (possibly malformed) payload.
pub fn pax_raw_typed(typeflag: u8, payload: &[u8]) -> Vec<u8> {
    Hdr::ustar(b"PaxHeaders/x", typeflag, payload.len() as u64).with_data(payload)
}

/// A GNU `L` or `K` header with its payload.
pub fn gnu_long(typeflag: u8, name: &[u8]) -> Vec<u8> {
    Hdr::gnu(b"././@LongLink", typeflag, name.len() as u64).with_data(name)
}

pub fn file(name: &[u8], data: &[u8]) -> Vec<u8> {
    Hdr::ustar(name, b'0', data.len() as u64).with_data(data)
}

pub fn dir(name: &[u8]) -> Vec<u8> {
    Hdr::ustar(name, b'5', 0).alone()
}

pub fn end() -> Vec<u8> {
    vec![0; 2 * BLOCK]
}

pub fn cat(parts: &[&[u8]]) -> Vec<u8> {
    parts.concat()
}

/// One archive of the corpus.
pub struct Case {
    pub name: &'static str,
    pub bytes: Vec<u8>,
    /// We deliberately reject this archive although Go accepts it (see the
    /// "Deliberate deviations" section of the `tar` module docs).
    pub stricter: bool,
}

fn case(name: &'static str, bytes: Vec<u8>) -> Case {
    Case {
        name,
        bytes,
        stricter: false,
    }
}

fn stricter(name: &'static str, bytes: Vec<u8>) -> Case {
    Case {
        name,
        bytes,
        stricter: true,
    }
}

/// A well-formed archive from the `tar` crate covering every entry kind,
/// GNU long names/links, PAX xattrs, non-UTF-8 names and 255-byte
/// components.
pub fn tar_crate_archive() -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    let long_component = "c".repeat(255);
    let long_path = format!("deep/{}/{}", "d".repeat(120), "file-with-a-long-name");

    let mut h = tar::Header::new_gnu();
    h.set_entry_type(tar::EntryType::Regular);
    h.set_mode(0o4755);
    h.set_uid(1000);
    h.set_gid(1001);
    h.set_mtime(1_700_000_000);
    h.set_size(5);
    h.set_username("alice").unwrap();
    h.set_groupname("staff").unwrap();
    b.append_data(&mut h, "dir/child.txt", &b"hello"[..])
        .unwrap();

    // Directory after its children.
    let mut h = tar::Header::new_ustar();
    h.set_entry_type(tar::EntryType::Directory);
    h.set_mode(0o1777);
    h.set_size(0);
    b.append_data(&mut h, "dir/", std::io::empty()).unwrap();

    let mut h = tar::Header::new_gnu();
    h.set_entry_type(tar::EntryType::Regular);
    h.set_mode(0o644);
    h.set_size(3);
    b.append_data(&mut h, &long_path, &b"abc"[..]).unwrap();
    b.append_data(&mut h, format!("dir/{long_component}"), &b"xyz"[..])
        .unwrap();

    let mut h = tar::Header::new_gnu();
    h.set_entry_type(tar::EntryType::Symlink);
    h.set_size(0);
    b.append_link(&mut h, "dir/link", "../target").unwrap();
    b.append_link(&mut h, "dir/longlink", "t/".repeat(80))
        .unwrap();

    let mut h = tar::Header::new_gnu();
    h.set_entry_type(tar::EntryType::Link);
    h.set_size(0);
    b.append_link(&mut h, "dir/hard", "dir/child.txt").unwrap();

    for (name, kind, major, minor) in [
        ("dev/null", tar::EntryType::Char, 1, 3),
        ("dev/sda", tar::EntryType::Block, 8, 0),
        ("dev/big", tar::EntryType::Char, 0o7777777, 0o7777777),
        ("run/fifo", tar::EntryType::Fifo, 0, 0),
    ] {
        let mut h = tar::Header::new_ustar();
        h.set_entry_type(kind);
        h.set_device_major(major).unwrap();
        h.set_device_minor(minor).unwrap();
        h.set_size(0);
        b.append_data(&mut h, name, std::io::empty()).unwrap();
    }

    // PAX xattrs: an empty value (BuildKit), binary values, capabilities.
    let all_bytes: Vec<u8> = (0..=255).collect();
    b.append_pax_extensions([
        ("SCHILY.xattr.user.overlay.origin", &b""[..]),
        (
            "SCHILY.xattr.security.capability",
            &[1, 0, 0, 2, 0, 0x20, 0, 0][..],
        ),
        ("SCHILY.xattr.user.binary", &all_bytes[..]),
        ("mtime", &b"1700000000.123456789"[..]),
    ])
    .unwrap();
    let mut h = tar::Header::new_ustar();
    h.set_entry_type(tar::EntryType::Regular);
    h.set_size(4);
    b.append_data(&mut h, "bin/ping", &b"ping"[..]).unwrap();

    // Non-UTF-8 name via raw header bytes (the tar crate wants paths).
    let mut raw = b.into_inner().unwrap();
    raw.truncate(raw.len() - 2 * BLOCK); // drop its end marker
    raw.extend(file(
        &[b'l', b'a', b't', b'i', b'n', 0xe9, b'-', 0xff],
        b"latin1",
    ));
    raw.extend(end());
    raw
}

/// TARmageddon (CVE-2025-62518): PAX size N, ustar size 0. The N data bytes
/// contain a complete header and end marker that a reader honouring the
/// ustar size would "see" as the next entries.
pub fn tarmageddon() -> Vec<u8> {
    let smuggled = cat(&[&file(b"smuggled", b"evil"), &end()]);
    cat(&[
        &pax(b'x', &[(b"size", smuggled.len().to_string().as_bytes())]),
        &Hdr::ustar(b"carrier", b'0', 0).with_data(&smuggled),
        &file(b"after", b"ok"),
        &end(),
    ])
}

/// CVE-2026-33055: PAX size smaller than a non-zero ustar size; PAX wins.
pub fn pax_size_overrides_nonzero_ustar() -> Vec<u8> {
    let mut out = pax(b'x', &[(b"size", b"10")]);
    out.extend(Hdr::ustar(b"a", b'0', 1000).checksum());
    out.extend(b"0123456789");
    out.extend(vec![0u8; pad(10)]);
    out.extend(file(b"b", b"bb"));
    out.extend(end());
    out
}

/// GHSA-3pv8-6f4r-ffg2: `x → L → file`. The PAX size belongs to the file,
/// not to the `L` header in between.
pub fn pax_then_longname_then_file() -> Vec<u8> {
    let long = "n/".repeat(70) + "file";
    cat(&[
        &pax(b'x', &[(b"size", b"5")]),
        &gnu_long(b'L', long.as_bytes()),
        &Hdr::gnu(b"short", b'0', 0).with_data(b"12345"),
        &file(b"next", b""),
        &end(),
    ])
}

/// The full corpus for the Go differential test.
pub fn corpus() -> Vec<Case> {
    let mut v = vec![
        case("tar-crate", tar_crate_archive()),
        case("tarmageddon", tarmageddon()),
        case(
            "pax-size-overrides-nonzero-ustar",
            pax_size_overrides_nonzero_ustar(),
        ),
        case("x-L-file", pax_then_longname_then_file()),
        case("empty", vec![]),
        case("only-end", end()),
        case("one-zero-block", vec![0; BLOCK]),
        case("no-end-marker", file(b"a", b"data")),
        case(
            "eof-in-padding",
            file(b"a", b"data")[..BLOCK + 4 + 100].to_vec(),
        ),
        case(
            "eof-right-after-data",
            file(b"a", b"data")[..BLOCK + 4].to_vec(),
        ),
        case("truncated-header", file(b"a", b"")[..300].to_vec()),
        case(
            "truncated-data",
            file(b"a", b"0123456789")[..BLOCK + 5].to_vec(),
        ),
        case("zero-then-nonzero", cat(&[&[0; BLOCK], &file(b"a", b"x")])),
        case("zero-then-partial", cat(&[&[0; BLOCK], &[0; 100]])),
        case(
            "trailing-garbage",
            cat(&[&file(b"a", b"x"), &end(), b"garbage"]),
        ),
        case(
            "trailing-zeros",
            cat(&[&file(b"a", b"x"), &end(), &[0; 8192]]),
        ),
        case("bad-checksum", {
            let mut a = file(b"a", b"x");
            a[0] ^= 1;
            a
        }),
        case("signed-checksum", {
            let mut h = Hdr::ustar(&[b'n', 0xe9, 0xff], b'0', 0);
            h.bytes(UNAME, &[0xff; 20]);
            cat(&[&h.signed_checksum(), &end()])
        }),
        case("checksum-with-leading-spaces", {
            let h = Hdr::ustar(b"a", b'0', 0);
            let mut b = h.checksum();
            let sum = std::str::from_utf8(&b[CHKSUM][..6])
                .unwrap()
                .trim_start_matches('0')
                .to_string();
            let field = format!("{sum:>7} ");
            b[CHKSUM].copy_from_slice(field.as_bytes());
            cat(&[&b, &end()])
        }),
        case(
            "regA-file-and-dir",
            cat(&[
                &Hdr::ustar(b"f", 0, 1).with_data(b"x"),
                &Hdr::ustar(b"d/", 0, 0).alone(),
                &end(),
            ]),
        ),
        case(
            "regA-dir-with-size",
            cat(&[
                &Hdr::ustar(b"d/", 0, 600).alone(),
                &file(b"f", b"x"),
                &end(),
            ]),
        ),
        case(
            "contiguous-file",
            cat(&[&Hdr::ustar(b"c", b'7', 3).with_data(b"abc"), &end()]),
        ),
        // Header-only types carry no data whatever their size says: the next
        // header starts right after them.
        case(
            "symlink-with-size",
            cat(&[
                &Hdr::ustar(b"s", b'2', 512).bytes(LINKNAME, b"t").alone(),
                &file(b"f", b"x"),
                &end(),
            ]),
        ),
        case("dir-with-huge-base256-size", {
            let mut h = Hdr::ustar(b"d", b'5', 0);
            h.base256(SIZE, 9 << 30);
            cat(&[&h.alone(), &end()])
        }),
        case(
            "dir-with-negative-pax-size",
            cat(&[&pax(b'x', &[(b"size", b"-5")]), &dir(b"d"), &end()]),
        ),
        case(
            "file-negative-pax-size",
            cat(&[&pax(b'x', &[(b"size", b"-5")]), &file(b"f", b""), &end()]),
        ),
        case("file-negative-base256-size", {
            let mut h = Hdr::ustar(b"f", b'0', 0);
            h.base256(SIZE, -1);
            cat(&[&h.alone(), &end()])
        }),
        case("negative-base256-size-pax-override", {
            let mut h = Hdr::ustar(b"f", b'0', 0);
            h.base256(SIZE, -1);
            cat(&[&pax(b'x', &[(b"size", b"1")]), &h.with_data(b"x"), &end()])
        }),
        case("base256-fields", {
            let mut h = Hdr::ustar(b"f", b'0', 0);
            h.base256(SIZE, 3)
                .base256(UID, 70000)
                .base256(GID, 1 << 40)
                .base256(MTIME, -86400);
            cat(&[&h.with_data(b"abc"), &end()])
        }),
        case("base256-overflow", {
            let mut h = Hdr::ustar(b"f", b'0', 0);
            h.bytes(SIZE, &[0x80, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0]);
            cat(&[&h.alone(), &end()])
        }),
        case("octal-padding-variants", {
            let mut h = Hdr::ustar(b"f", b'0', 0);
            h.field(MODE, b" 755 \0")
                .field(UID, b"   12  ")
                .field(GID, &[0, 0, b'7', 0])
                .field(SIZE, b"00000000003 ");
            h.field(MTIME, b"12345670123");
            cat(&[&h.with_data(b"abc"), &end()])
        }),
        case("octal-embedded-nul", {
            let mut h = Hdr::ustar(b"f", b'0', 0);
            h.field(UID, b"12\x0034");
            cat(&[&h.alone(), &end()])
        }),
        case("octal-invalid-digit", {
            let mut h = Hdr::ustar(b"f", b'0', 0);
            h.field(UID, b"128");
            cat(&[&h.alone(), &end()])
        }),
        case("octal-embedded-space", {
            let mut h = Hdr::ustar(b"f", b'0', 0);
            h.field(GID, b"1 2");
            cat(&[&h.alone(), &end()])
        }),
        case("devmajor-invalid-on-regular-file", {
            let mut h = Hdr::ustar(b"f", b'0', 0);
            h.field(DEVMAJOR, b"zz");
            cat(&[&h.alone(), &end()])
        }),
        case("devmajor-invalid-on-v7", {
            let mut h = Hdr::v7(b"f", b'0', 0);
            h.field(DEVMAJOR, b"zz").bytes(UNAME, b"ignored");
            cat(&[&h.alone(), &end()])
        }),
        case("mode-with-type-bits", {
            let mut h = Hdr::ustar(b"f", b'0', 0);
            h.octal(MODE, 0o100755);
            cat(&[&h.alone(), &end()])
        }),
        case("ustar-prefix", {
            let mut h = Hdr::ustar(b"name", b'0', 0);
            h.field(PREFIX, &[b'p'; 155]);
            cat(&[&h.alone(), &end()])
        }),
        case("star-prefix", {
            let mut h = Hdr::ustar(b"name", b'0', 0);
            h.field(345..476, &[b'q'; 131])
                .octal(476..488, 5)
                .octal(488..500, 6)
                .bytes(508..512, b"tar\0");
            cat(&[&h.alone(), &end()])
        }),
        case("star-bad-atime", {
            let mut h = Hdr::ustar(b"name", b'0', 0);
            h.field(476..488, b"xyz").bytes(508..512, b"tar\0");
            cat(&[&h.alone(), &end()])
        }),
        case("gnu-times-not-prefix", {
            let mut h = Hdr::gnu(b"name", b'0', 0);
            h.octal(GNU_ATIME, 0o1234).octal(GNU_CTIME, 0o4321);
            cat(&[&h.alone(), &end()])
        }),
        case("gnu-buggy-go17-prefix", {
            let mut h = Hdr::gnu(b"name", b'0', 0);
            h.field(PREFIX, b"some/prefix");
            cat(&[&h.alone(), &end()])
        }),
        case("gnu-buggy-prefix-non-ascii", {
            let mut h = Hdr::gnu(b"name", b'0', 0);
            h.field(PREFIX, &[b'p', 0xe9]);
            cat(&[&h.alone(), &end()])
        }),
        case("gnu-magic-wrong-version-is-v7", {
            let mut h = Hdr::gnu(b"name", b'0', 0);
            h.bytes(VERSION, b"00")
                .field(PREFIX, b"notaprefix")
                .bytes(UNAME, b"x");
            cat(&[&h.alone(), &end()])
        }),
        case(
            "v7",
            cat(&[&Hdr::v7(b"old", b'0', 2).with_data(b"v7"), &end()]),
        ),
        case("long-name-and-link", {
            let name = vec![b'a'; 300];
            let link = vec![b'b'; 300];
            cat(&[
                &gnu_long(b'L', &name),
                &gnu_long(b'K', &link),
                &Hdr::gnu(b"x", b'1', 0).bytes(LINKNAME, b"y").alone(),
                &end(),
            ])
        }),
        case(
            "long-name-with-nul",
            cat(&[&gnu_long(b'L', b"real\0junk"), &file(b"short", b""), &end()]),
        ),
        case(
            "long-name-empty",
            cat(&[
                &gnu_long(b'L', b"first"),
                &gnu_long(b'L', b""),
                &file(b"short", b""),
                &end(),
            ]),
        ),
        case(
            "L-then-x-path",
            cat(&[
                &gnu_long(b'L', b"from-L"),
                &pax(b'x', &[(b"path", b"from-pax")]),
                &file(b"hdr", b""),
                &end(),
            ]),
        ),
        case(
            "x-x-file",
            cat(&[
                &pax(b'x', &[(b"path", b"first")]),
                &pax(b'x', &[(b"mtime", b"7")]),
                &file(b"hdr", b""),
                &end(),
            ]),
        ),
        case(
            "x-g-file",
            cat(&[
                &pax(b'x', &[(b"path", b"lost")]),
                &pax(b'g', &[(b"path", b"global")]),
                &file(b"hdr", b""),
                &end(),
            ]),
        ),
        case(
            "L-g-file",
            cat(&[
                &gnu_long(b'L', b"lost"),
                &pax(b'g', &[(b"comment", b"x")]),
                &file(b"hdr", b""),
                &end(),
            ]),
        ),
        case(
            "g-with-bad-values",
            cat(&[
                &pax(b'g', &[(b"size", b"abc"), (b"mtime", b"x")]),
                &file(b"f", b""),
                &end(),
            ]),
        ),
        case(
            "g-malformed",
            cat(&[&pax_raw_typed(b'g', b"9 a=b\n"), &file(b"f", b""), &end()]),
        ),
        case(
            "dangling-x-at-end",
            cat(&[&file(b"f", b""), &pax(b'x', &[(b"path", b"p")]), &end()]),
        ),
        case(
            "dangling-L-at-eof",
            cat(&[&file(b"f", b""), &gnu_long(b'L', b"p")]),
        ),
        case(
            "pax-empty-values-keep-header",
            cat(&[
                &pax(
                    b'x',
                    &[
                        (b"path", b""),
                        (b"size", b""),
                        (b"uid", b""),
                        (b"mtime", b""),
                    ],
                ),
                &Hdr::ustar(b"hdr", b'0', 1).with_data(b"x"),
                &end(),
            ]),
        ),
        case(
            "pax-path-then-empty-path",
            cat(&[
                &pax(b'x', &[(b"path", b"p"), (b"path", b"")]),
                &file(b"hdr", b""),
                &end(),
            ]),
        ),
        case(
            "pax-all-fields",
            cat(&[
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
                        (b"ctime", b"-0.25"),
                        (b"comment", b"whatever"),
                        (b"hdrcharset", b"BINARY"),
                        (b"LIBARCHIVE.xattr.user.x", b"eA=="),
                    ],
                ),
                &Hdr::ustar(b"hdr", b'1', 0).alone(),
                &end(),
            ]),
        ),
        case(
            "pax-mtime-variants",
            cat(&[
                &pax(b'x', &[(b"mtime", b"-0.5")]),
                &file(b"a", b""),
                &pax(b'x', &[(b"mtime", b"1.")]),
                &file(b"b", b""),
                &pax(b'x', &[(b"mtime", b"12.3456789999")]),
                &file(b"c", b""),
                &pax(b'x', &[(b"mtime", b"-9223372036854775808.5")]),
                &file(b"d", b""),
                &end(),
            ]),
        ),
        case(
            "pax-mtime-invalid",
            cat(&[&pax(b'x', &[(b"mtime", b".5")]), &file(b"a", b""), &end()]),
        ),
        case(
            "pax-mtime-two-dots",
            cat(&[
                &pax(b'x', &[(b"mtime", b"1.2.3")]),
                &file(b"a", b""),
                &end(),
            ]),
        ),
        case(
            "pax-atime-invalid",
            cat(&[
                &pax(b'x', &[(b"atime", b"yesterday")]),
                &file(b"a", b""),
                &end(),
            ]),
        ),
        case(
            "pax-uid-invalid",
            cat(&[&pax(b'x', &[(b"uid", b"1_000")]), &file(b"a", b""), &end()]),
        ),
        case(
            "pax-size-overflow",
            cat(&[
                &pax(b'x', &[(b"size", b"9223372036854775808")]),
                &file(b"a", b""),
                &end(),
            ]),
        ),
        case(
            "pax-xattrs",
            cat(&[
                &pax(
                    b'x',
                    &[
                        (b"SCHILY.xattr.user.overlay.origin", b""),
                        (b"SCHILY.xattr.user.dup", b"first"),
                        (b"SCHILY.xattr.trusted.x", b"a\0b\nc"),
                        (b"SCHILY.xattr.user.dup", b"second"),
                        (b"SCHILY.xattr.", b"empty-name"),
                    ],
                ),
                &file(b"f", b""),
                &end(),
            ]),
        ),
        case(
            "pax-record-length-plus",
            cat(&[&pax_raw(b"+11 path=a\n"), &file(b"f", b""), &end()]),
        ),
        case(
            "pax-record-length-leading-zero",
            cat(&[&pax_raw(b"011 path=a\n"), &file(b"f", b""), &end()]),
        ),
        case(
            "pax-record-too-long",
            cat(&[&pax_raw(b"20 path=a\n"), &file(b"f", b""), &end()]),
        ),
        case(
            "pax-record-too-short",
            cat(&[&pax_raw(b"4 a=\n"), &file(b"f", b""), &end()]),
        ),
        case(
            "pax-record-no-newline",
            cat(&[&pax_raw(b"11 path=ab"), &file(b"f", b""), &end()]),
        ),
        case(
            "pax-record-no-equals",
            cat(&[&pax_raw(b"10 pathab\n"), &file(b"f", b""), &end()]),
        ),
        case(
            "pax-record-empty-key",
            cat(&[&pax_raw(b"7 =abc\n"), &file(b"f", b""), &end()]),
        ),
        case(
            "pax-record-no-space",
            cat(&[&pax_raw(b"10path=ab\n"), &file(b"f", b""), &end()]),
        ),
        case(
            "pax-record-nul-in-path",
            cat(&[&pax_raw(b"11 path=a\0\n"), &file(b"f", b""), &end()]),
        ),
        case(
            "pax-record-nul-in-key",
            cat(&[&pax_raw(b"8 a\0b=c\n"), &file(b"f", b""), &end()]),
        ),
        case(
            "pax-record-nul-padding",
            cat(&[&pax_raw(b"11 path=ab\n\0\0\0"), &file(b"f", b""), &end()]),
        ),
        case("pax-too-large", {
            let big = vec![b'a'; (1 << 20) + 1];
            cat(&[&pax_raw(&big), &file(b"f", b""), &end()])
        }),
        case("pax-negative-header-size", {
            let mut out = pax(b'x', &[(b"path", b"p")]);
            let mut h = Hdr::ustar(b"PaxHeaders/x", b'x', 0);
            h.base256(SIZE, -1);
            out.splice(0..BLOCK, h.checksum());
            cat(&[&out, &file(b"f", b""), &end()])
        }),
        case(
            "truncated-pax-payload",
            pax(b'x', &[(b"path", b"somewhat long path")])[..BLOCK + 10].to_vec(),
        ),
        case(
            "pax-then-eof-in-padding",
            pax(b'x', &[(b"path", b"p")])[..BLOCK + 30].to_vec(),
        ),
        case("non-utf8-and-255-byte-names", {
            let mut n = vec![b'd', b'/'];
            n.extend(vec![0xfe; 255]);
            cat(&[&pax(b'x', &[(b"path", &n)]), &file(b"ignored", b""), &end()])
        }),
        case("many-small-files", {
            let mut out = Vec::new();
            for i in 0..200 {
                out.extend(file(format!("f{i}").as_bytes(), &vec![i as u8; i * 7]));
            }
            out.extend(end());
            out
        }),
        stricter(
            "unknown-typeflag-V",
            cat(&[
                &Hdr::gnu(b"label", b'V', 0).alone(),
                &file(b"f", b""),
                &end(),
            ]),
        ),
        stricter(
            "unknown-typeflag-D",
            cat(&[&Hdr::gnu(b"dumpdir", b'D', 4).with_data(b"Yabc"), &end()]),
        ),
        stricter(
            "unknown-typeflag-A",
            cat(&[&Hdr::ustar(b"vendor", b'A', 1).with_data(b"z"), &end()]),
        ),
        stricter(
            "gnu-sparse-S",
            cat(&[&Hdr::gnu(b"sparse", b'S', 0).alone(), &end()]),
        ),
        case(
            "pax-sparse-unknown-version",
            cat(&[
                &pax(
                    b'x',
                    &[(b"GNU.sparse.major", b"9"), (b"GNU.sparse.map", b"0,1")],
                ),
                &file(b"f", b"x"),
                &end(),
            ]),
        ),
        case(
            "pax-sparse-name-only",
            cat(&[
                &pax(b'x', &[(b"GNU.sparse.name", b"renamed")]),
                &file(b"f", b"x"),
                &end(),
            ]),
        ),
        case(
            "x-sparse-g-file",
            cat(&[
                &pax(
                    b'x',
                    &[(b"GNU.sparse.map", b"0,1"), (b"GNU.sparse.numblocks", b"1")],
                ),
                &pax(b'g', &[]),
                &file(b"f", b"x"),
                &end(),
            ]),
        ),
        stricter(
            "pax-uid-negative",
            cat(&[&pax(b'x', &[(b"uid", b"-1")]), &file(b"f", b""), &end()]),
        ),
        stricter("device-major-too-large", {
            let mut h = Hdr::ustar(b"dev", b'3', 0);
            h.base256(DEVMAJOR, 1 << 33);
            cat(&[&h.alone(), &end()])
        }),
        case("device-major-large-on-file-ignored", {
            let mut h = Hdr::ustar(b"f", b'0', 0);
            h.base256(DEVMAJOR, 1 << 33);
            cat(&[&h.alone(), &end()])
        }),
        case(
            "pax-sparse-offset-misordered",
            cat(&[
                &pax(b'x', &[(b"GNU.sparse.numbytes", b"1")]),
                &file(b"f", b""),
                &end(),
            ]),
        ),
        case(
            "g-sparse-offset-misordered",
            cat(&[
                &pax(b'g', &[(b"GNU.sparse.numbytes", b"1")]),
                &file(b"f", b""),
                &end(),
            ]),
        ),
    ];
    v.extend(
        sparse_cases()
            .into_iter()
            .map(|(name, bytes)| case(name, bytes)),
    );
    // Every case with a valid end marker, also with the marker stripped.
    let stripped: Vec<Case> = v
        .iter()
        .filter(|c| c.bytes.len() > 2 * BLOCK && c.bytes.ends_with(&end()))
        .map(|c| Case {
            name: c.name,
            bytes: c.bytes[..c.bytes.len() - 2 * BLOCK].to_vec(),
            stricter: c.stricter,
        })
        .collect();
    v.extend(stripped);
    v
}

/// A PAX-format GNU sparse file: the `x` records, a regular file header
/// named `name` whose stored data is `stored`, and the end marker.
pub fn sparse_file(records: &[(&[u8], &[u8])], name: &[u8], stored: &[u8]) -> Vec<u8> {
    cat(&[&pax(b'x', records), &file(name, stored), &end()])
}

/// The 1.0 format's in-data map: decimal lines padded to whole blocks.
pub fn sparse_map_1x0(entries: &[(i64, i64)]) -> Vec<u8> {
    let mut m = format!("{}\n", entries.len()).into_bytes();
    for (o, l) in entries {
        m.extend(format!("{o}\n{l}\n").into_bytes());
    }
    let padded = m.len() + pad(m.len());
    m.resize(padded, 0);
    m
}

/// Logical content shared by the valid sparse cases: "abc" at 0, "de" at 10,
/// size 20.
pub const SPARSE_LOGICAL: &[u8] = b"abc\0\0\0\0\0\0\0de\0\0\0\0\0\0\0\0";

const V1: [(&[u8], &[u8]); 2] = [(b"GNU.sparse.major", b"1"), (b"GNU.sparse.minor", b"0")];

/// A 1.0-format sparse file with the given map, logical size and data.
pub fn sparse_v1(entries: &[(i64, i64)], size: &[u8], data: &[u8]) -> Vec<u8> {
    let stored = cat(&[&sparse_map_1x0(entries), data]);
    sparse_file(
        &[
            V1[0],
            V1[1],
            (b"GNU.sparse.name", b"sparse-v1"),
            (b"GNU.sparse.realsize", size),
        ],
        b"GNUSparseFile.0/sparse-v1",
        &stored,
    )
}

/// Sparse archives, valid and invalid, in all three PAX formats.
pub fn sparse_cases() -> Vec<(&'static str, Vec<u8>)> {
    let v00: [(&[u8], &[u8]); 5] = [
        (b"GNU.sparse.numblocks", b"2"),
        (b"GNU.sparse.offset", b"0"),
        (b"GNU.sparse.numbytes", b"3"),
        (b"GNU.sparse.offset", b"10"),
        (b"GNU.sparse.numbytes", b"2"),
    ];
    let v01 =
        |numblocks: &'static [u8], map: &'static [u8]| -> Vec<(&'static [u8], &'static [u8])> {
            vec![
                (b"GNU.sparse.major", b"0"),
                (b"GNU.sparse.minor", b"1"),
                (b"GNU.sparse.name", b"sparse-v01"),
                (b"GNU.sparse.realsize", b"20"),
                (b"GNU.sparse.numblocks", numblocks),
                (b"GNU.sparse.map", map),
            ]
        };
    let many: Vec<(i64, i64)> = (0..100).map(|i| (i * 1000, 1)).collect();
    let v1_records: [(&[u8], &[u8]); 3] = [V1[0], V1[1], (b"GNU.sparse.realsize", b"3")];
    vec![
        (
            "sparse-0.0",
            sparse_file(
                &[&[(&b"GNU.sparse.size"[..], &b"20"[..])][..], &v00].concat(),
                b"sparse-v00",
                b"abcde",
            ),
        ),
        (
            "sparse-0.0-overrides-map-record",
            sparse_file(
                &[
                    &[
                        (&b"GNU.sparse.map"[..], &b"0,5"[..]),
                        (b"GNU.sparse.size", b"20"),
                    ][..],
                    &v00,
                    &[(b"GNU.sparse.map", b"0,5")],
                ]
                .concat(),
                b"sparse-v00",
                b"abcde",
            ),
        ),
        (
            "sparse-0.1",
            sparse_file(
                &v01(b"2", b"0,3,10,2"),
                b"GNUSparseFile.0/sparse-v01",
                b"abcde",
            ),
        ),
        (
            "sparse-0.1-no-version",
            sparse_file(
                &[
                    (b"GNU.sparse.size", b"20"),
                    (b"GNU.sparse.numblocks", b"2"),
                    (b"GNU.sparse.map", b"0,3,10,2"),
                ],
                b"s",
                b"abcde",
            ),
        ),
        ("sparse-1.0", sparse_v1(&[(0, 3), (10, 2)], b"20", b"abcde")),
        (
            "sparse-1.0-two-block-map",
            sparse_v1(&many, b"100000", &[b'x'; 100]),
        ),
        (
            "sparse-1.0-zero-length-regions",
            sparse_v1(&[(0, 0), (0, 3), (5, 0), (10, 2), (20, 0)], b"20", b"abcde"),
        ),
        (
            "sparse-all-holes",
            sparse_file(&v01(b"0", b""), b"holes", b""),
        ),
        (
            "sparse-no-size-record",
            sparse_file(
                &[(b"GNU.sparse.numblocks", b"1"), (b"GNU.sparse.map", b"1,4")],
                b"s",
                b"abcd",
            ),
        ),
        (
            "sparse-name-beats-long-name",
            cat(&[
                &gnu_long(b'L', b"from-L"),
                &sparse_file(
                    &[
                        (b"GNU.sparse.name", b"from-sparse"),
                        (b"GNU.sparse.size", b"5"),
                        (b"GNU.sparse.numblocks", b"1"),
                        (b"GNU.sparse.map", b"0,5"),
                    ],
                    b"hdr",
                    b"abcde",
                ),
            ]),
        ),
        (
            "sparse-overlap",
            sparse_v1(&[(0, 5), (3, 2)], b"20", b"abcdefg"),
        ),
        (
            "sparse-unsorted",
            sparse_v1(&[(10, 2), (0, 3)], b"20", b"abcde"),
        ),
        (
            "sparse-beyond-size",
            sparse_v1(&[(0, 3), (19, 2)], b"20", b"abcde"),
        ),
        ("sparse-negative-size", sparse_v1(&[(0, 3)], b"-1", b"abc")),
        ("sparse-bad-size", sparse_v1(&[(0, 3)], b"2O", b"abc")),
        (
            "sparse-unreferenced-data",
            sparse_v1(&[(0, 3), (10, 2)], b"20", b"abcdef"),
        ),
        (
            "sparse-missing-data",
            sparse_v1(&[(0, 3), (10, 2)], b"20", b"abcd"),
        ),
        (
            "sparse-1.0-map-past-data",
            sparse_file(&v1_records, b"s", b"1\n0\n3\nabc"),
        ),
        (
            "sparse-1.0-bad-count",
            sparse_file(&v1_records, b"s", &cat(&[b"-1\n", &[0; 509], b"abc"])),
        ),
        (
            "sparse-1.0-count-too-large",
            sparse_file(&v1_records, b"s", &cat(&[b"99\n0\n3\n", &[0; 504], b"abc"])),
        ),
        (
            "sparse-1.0-bad-entry",
            sparse_file(&v1_records, b"s", &cat(&[b"1\n0\nx3\n", &[0; 505], b"abc"])),
        ),
        (
            "sparse-0.1-count-mismatch",
            sparse_file(&v01(b"3", b"0,3,10,2"), b"s", b"abcde"),
        ),
        (
            "sparse-0.1-missing-numblocks",
            sparse_file(
                &[
                    (b"GNU.sparse.realsize", b"20"),
                    (b"GNU.sparse.map", b"0,3,10,2"),
                ],
                b"s",
                b"abcde",
            ),
        ),
        (
            "sparse-0.1-bad-number",
            sparse_file(&v01(b"2", b"0,3,1O,2"), b"s", b"abcde"),
        ),
        (
            "sparse-on-directory",
            cat(&[
                &pax(
                    b'x',
                    &[(b"GNU.sparse.numblocks", b"1"), (b"GNU.sparse.map", b"0,0")],
                ),
                &dir(b"d"),
                &end(),
            ]),
        ),
        (
            "sparse-on-symlink-v1",
            cat(&[
                &pax(b'x', &V1),
                &Hdr::ustar(b"l", b'2', 0).bytes(LINKNAME, b"t").alone(),
                &end(),
            ]),
        ),
    ]
}
