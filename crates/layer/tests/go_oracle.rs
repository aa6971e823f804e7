//! Differential test against Go's `archive/tar`, the reader containerd
//! unpacks layers with.
//!
//! Builds `tests/go-tar-oracle` (stdlib only, offline) and runs it and our
//! reader over the adversarial corpus from `tests/common` plus deterministic
//! mutations of it. Both print one line per entry (name, link, type, mode,
//! ids, times, devices, xattrs, data length and SHA-256) and the outputs must
//! be identical, except that:
//!
//! * both may fail at the same point (error messages differ), and
//! * we may fail with a *policy* error (unknown type, sparse file, value out
//!   of range) where Go accepts: those are documented deliberate rejections.
//!
//! We must never accept an entry Go rejects or list an entry differently:
//! that is exactly the parser differential behind TARmageddon.
//!
//! Go is looked up in `$LAYER_GO`, `/opt/go124/usr/lib/go-1.24/bin/go`, then
//! `go` on `PATH`. Without Go the test fails under CI (`CI` set) and is
//! skipped loudly otherwise.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;
#[path = "common/go.rs"]
mod go;

use std::io::Read;

use common::{BLOCK, CHKSUM, Case, Hdr, corpus, end, pax, sparse_map_1x0};
use go::{entry_line, oracle_or_skip, run_go};
use layer::tar::{Limits, TarError, TarReader};

/// Errors that are our deliberate policy, not Go's `ErrHeader`.
fn is_policy(e: &TarError) -> bool {
    matches!(
        e,
        TarError::UnknownType { .. } | TarError::Unsupported { .. } | TarError::OutOfRange { .. }
    )
}

/// Our reader's view, in the oracle's output format.
fn run_rust(bytes: &[u8]) -> Vec<String> {
    let mut tr = TarReader::new(bytes, Limits::default());
    let mut out = Vec::new();
    loop {
        let e = match tr.next_entry() {
            Ok(Some(e)) => e,
            Ok(None) => {
                out.push("END".to_owned());
                return out;
            }
            Err(e) => {
                out.push(format!(
                    "ERROR {}{e}",
                    if is_policy(&e) { "policy: " } else { "" }
                ));
                return out;
            }
        };
        let mut data = Vec::new();
        if let Err(err) = tr.data().read_to_end(&mut data) {
            out.push(format!("ERROR data: {err}"));
            return out;
        }
        out.push(entry_line(&e, &data));
    }
}

#[derive(Debug, PartialEq)]
enum Verdict {
    Same,
    BothRejected,
    WeRejectedByPolicy,
}

fn compare(name: &str, go: &[String], ours: &[String]) -> Result<Verdict, String> {
    let n = go.len().max(ours.len());
    for i in 0..n {
        let (g, r) = (go.get(i), ours.get(i));
        if g == r {
            continue;
        }
        let verdict = match (g, r) {
            (_, Some(r)) if r.starts_with("ERROR policy:") => Verdict::WeRejectedByPolicy,
            (Some(g), Some(r)) if g.starts_with("ERROR") && r.starts_with("ERROR") => {
                Verdict::BothRejected
            }
            _ => {
                return Err(format!(
                    "{name}: outputs differ at line {i}\n  go:   {g:?}\n  ours: {r:?}\nfull go:\n{}\nfull ours:\n{}",
                    go.join("\n"),
                    ours.join("\n")
                ));
            }
        };
        return Ok(verdict);
    }
    Ok(Verdict::Same)
}

/// xorshift64*: deterministic mutations without a dependency.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
}

const INTERESTING: &[u8] = b"\x00 0157xgLKS/\n=9+-\x80\xff.";

/// Flips bytes, mostly inside 512-byte blocks' header fields, and usually
/// repairs the block checksum so the mutation reaches the field parsers.
fn mutate(rng: &mut Rng, bytes: &[u8]) -> Vec<u8> {
    let mut b = bytes.to_vec();
    if b.is_empty() {
        return b;
    }
    for _ in 0..1 + rng.below(4) {
        let i = rng.below(b.len());
        b[i] = if rng.below(2) == 0 {
            INTERESTING[rng.below(INTERESTING.len())]
        } else {
            rng.next() as u8
        };
        let start = i / BLOCK * BLOCK;
        if rng.below(5) != 0 && start + BLOCK <= b.len() && !(CHKSUM).contains(&(i % BLOCK)) {
            let block = &mut b[start..start + BLOCK];
            block[CHKSUM].fill(b' ');
            let sum: u32 = block.iter().map(|&c| u32::from(c)).sum();
            block[CHKSUM].copy_from_slice(format!("{sum:06o}\0 ").as_bytes());
        }
    }
    if rng.below(10) == 0 {
        let cut = rng.below(b.len());
        b.truncate(cut);
    }
    b
}

const KEYS: &[&[u8]] = &[
    b"path",
    b"linkpath",
    b"size",
    b"uid",
    b"mtime",
    b"atime",
    b"uname",
    b"GNU.sparse.major",
    b"GNU.sparse.minor",
    b"GNU.sparse.name",
    b"GNU.sparse.size",
    b"GNU.sparse.realsize",
    b"GNU.sparse.numblocks",
    b"GNU.sparse.map",
    b"GNU.sparse.offset",
    b"GNU.sparse.numbytes",
    b"SCHILY.xattr.user.a",
    b"LIBARCHIVE.xattr.user.a",
    b"comment",
];
const VALUES: &[&[u8]] = &[
    b"",
    b"0",
    b"1",
    b"2",
    b"-1",
    b"+3",
    b"5",
    b"20",
    b"1.5",
    b"-0.5",
    b"0,3,10,2",
    b"0,3",
    b"0,5",
    b",",
    b"abc",
    b"a/b/",
    b"9223372036854775807",
    b"00",
    b" 1",
    b"1,",
    b"10,2",
];

/// Structure-aware random archives: one file entry with random PAX records
/// (weighted towards the size and GNU sparse keys, whose interplay is the
/// subtle part) and random stored data, sometimes a well-formed 1.0 map.
/// Byte flips rarely produce valid PAX records; this reaches the merge and
/// sparse logic directly.
fn structured(rng: &mut Rng) -> Vec<u8> {
    let records: Vec<(&[u8], &[u8])> = (0..rng.below(7))
        .map(|_| (KEYS[rng.below(KEYS.len())], VALUES[rng.below(VALUES.len())]))
        .collect();
    let flags = b"00000\x00572";
    let typeflag = flags[rng.below(flags.len())];
    let mut data = if rng.below(3) == 0 {
        let entries: Vec<(i64, i64)> = (0..rng.below(3))
            .map(|i| (i as i64 * 10, rng.below(4) as i64))
            .collect();
        sparse_map_1x0(&entries)
    } else {
        Vec::new()
    };
    data.extend((0..[0, 2, 3, 5, 6, 512][rng.below(6)]).map(|i| b'a' + (i % 26) as u8));
    let mut out = pax(b'x', &records);
    let name: &[u8] = [&b"f"[..], b"d/", b"a/b"][rng.below(3)];
    out.extend(Hdr::ustar(name, typeflag, data.len() as u64).with_data(&data));
    out.extend(Hdr::ustar(b"next", b'0', 1).with_data(b"n"));
    out.extend(end());
    out
}

#[test]
fn matches_go_archive_tar() {
    let Some(oracle) = oracle_or_skip("the archive/tar differential test") else {
        return;
    };

    let cases = corpus();
    let mut failures = Vec::new();
    let mut stats = [0usize; 3];
    for Case {
        name,
        bytes,
        stricter,
    } in &cases
    {
        let (g, r) = (run_go(&oracle, bytes), run_rust(bytes));
        match compare(name, &g, &r) {
            Err(msg) => failures.push(msg),
            Ok(v) => {
                if *stricter != (v == Verdict::WeRejectedByPolicy) {
                    failures.push(format!("{name}: expected stricter={stricter}, got {v:?}\n  go:   {g:?}\n  ours: {r:?}"));
                }
            }
        }
    }

    let per_case: usize = std::env::var("LAYER_ORACLE_MUTATIONS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(6);
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    for Case { name, bytes, .. } in cases.iter().filter(|c| c.bytes.len() <= 64 * 1024) {
        for k in 0..per_case {
            let m = mutate(&mut rng, bytes);
            let (g, r) = (run_go(&oracle, &m), run_rust(&m));
            match compare(&format!("{name} mutation {k}"), &g, &r) {
                Err(msg) => failures.push(format!("{msg}\ninput (hex): {}", hex::encode(&m))),
                Ok(v) => stats[v as usize] += 1,
            }
        }
    }
    let structured_count: usize = std::env::var("LAYER_ORACLE_STRUCTURED")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(300);
    for k in 0..structured_count {
        let m = structured(&mut rng);
        let (g, r) = (run_go(&oracle, &m), run_rust(&m));
        match compare(&format!("structured {k}"), &g, &r) {
            Err(msg) => failures.push(format!("{msg}\ninput (hex): {}", hex::encode(&m))),
            Ok(v) => stats[v as usize] += 1,
        }
    }
    eprintln!(
        "go oracle: {} corpus cases; mutated and structured: {} identical, {} both rejected, {} rejected by policy",
        cases.len(),
        stats[0],
        stats[1],
        stats[2]
    );
    assert!(
        failures.is_empty(),
        "{} divergences from Go:\n\n{}",
        failures.len(),
        failures.join("\n\n")
    );
}
