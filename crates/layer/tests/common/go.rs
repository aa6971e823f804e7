//! Go's `archive/tar` as a test oracle: locating Go, building
//! `tests/go-tar-oracle` and running it, plus our reader's view of an
//! archive in the oracle's line format. Integration tests include this
//! with `#[path = "common/go.rs"] mod go;` (it uses the `layer` crate, so
//! the unit tests' shared kit cannot hold it).
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use layer::Digest;
use layer::tar::Entry;

pub const DEBIAN_GO: &str = "/opt/go124/usr/lib/go-1.24/bin/go";

/// Go from `$LAYER_GO`, [`DEBIAN_GO`], then `go` on `PATH`.
pub fn find_go() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("LAYER_GO") {
        return Some(PathBuf::from(p));
    }
    if Path::new(DEBIAN_GO).exists() {
        return Some(PathBuf::from(DEBIAN_GO));
    }
    let ok = Command::new("go")
        .arg("version")
        .output()
        .is_ok_and(|o| o.status.success());
    ok.then(|| PathBuf::from("go"))
}

/// The oracle binary, or `None` (after a loud message) when Go is missing
/// outside CI; under CI (`CI` set) a missing Go fails the test.
pub fn oracle_or_skip(what: &str) -> Option<PathBuf> {
    let Some(go) = find_go() else {
        assert!(
            std::env::var_os("CI").is_none(),
            "Go toolchain required for {what} under CI"
        );
        eprintln!("\n!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!");
        eprintln!("!! SKIPPED: Go not found (LAYER_GO, {DEBIAN_GO}, PATH).");
        eprintln!("!! {what} did NOT run.");
        eprintln!("!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!\n");
        return None;
    };
    Some(build_oracle(&go))
}

pub fn build_oracle(go: &Path) -> PathBuf {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/go-tar-oracle");
    let tmp = Path::new(env!("CARGO_TARGET_TMPDIR"));
    let bin = tmp.join("go-tar-oracle");
    let mut cmd = Command::new(go);
    cmd.current_dir(&src)
        .args(["build", "-o"])
        .arg(&bin)
        .arg(".")
        // Offline and reproducible: no toolchain downloads, no module proxy.
        .env("GOTOOLCHAIN", "local")
        .env("GOPROXY", "off")
        .env("GOFLAGS", "-mod=mod")
        .env("GOENV", "off")
        .env("GOTELEMETRY", "off")
        .env("GOCACHE", tmp.join("go-cache"))
        .env("GOPATH", tmp.join("go-path"));
    // Debian's relocated toolchain needs GOROOT next to its bin directory.
    if let Some(root) = go
        .parent()
        .and_then(Path::parent)
        .filter(|r| r.join("src").exists())
    {
        cmd.env("GOROOT", root);
    }
    let out = cmd.output().expect("running go build");
    assert!(
        out.status.success(),
        "go build failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    bin
}

/// The oracle's lines for an uncompressed archive.
pub fn run_go(oracle: &Path, bytes: &[u8]) -> Vec<String> {
    let mut child = Command::new(oracle)
        .env("GODEBUG", "tarinsecurepath=1")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawning oracle");
    let mut stdin = child.stdin.take().unwrap();
    let input = bytes.to_vec();
    // Write from a thread: the oracle may stop reading early (error or end
    // marker) and its stdout pipe must be drained concurrently.
    let writer = std::thread::spawn(move || {
        let _ = stdin.write_all(&input);
    });
    let out = child.wait_with_output().unwrap();
    writer.join().unwrap();
    assert!(
        out.status.success(),
        "oracle crashed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(str::to_owned)
        .collect()
}

/// Hex, or `-` for empty, as the oracle prints names and values.
pub fn hx(b: &[u8]) -> String {
    if b.is_empty() {
        "-".to_owned()
    } else {
        hex::encode(b)
    }
}

/// One entry of our reader in the oracle's line format.
pub fn entry_line(e: &Entry, data: &[u8]) -> String {
    let mut xattrs: Vec<String> = e
        .xattrs
        .iter()
        .map(|(k, v)| format!("{}={}", hx(k), hx(v)))
        .collect();
    xattrs.sort();
    format!(
        "{:02x} {} {} {} {} {:o} {} {} {} {} {}.{:09} {} {} [{}]",
        e.kind.typeflag(),
        hx(&e.path),
        hx(&e.link_name),
        data.len(),
        Digest::of(data).hex(),
        e.mode,
        e.uid,
        e.gid,
        hx(&e.uname),
        hx(&e.gname),
        e.mtime,
        e.mtime_nsec,
        e.dev_major,
        e.dev_minor,
        xattrs.join(","),
    )
}
