//! Shared helpers for the `erofs-snapshotter` integration tests: tool and
//! privilege checks, mount guards, a tree snapshot/diff used as the
//! comparison oracle, the edge-case corpus, and a byte-level tar builder
//! for hand-crafted (and malicious) archives.
//!
//! Every test binary includes this module with `mod common;` and uses
//! only part of it.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::{BTreeMap, HashMap};
use std::ffi::{CString, OsStr, OsString};
use std::fs::{self, File};
use std::io::{self, Read, Write};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};

use rustix::fs::{AtFlags, CWD, FileType, Mode, Timestamps, XattrFlags};
use rustix::mount::{MountFlags, UnmountFlags};
use sha2::{Digest, Sha256};

// ---------------------------------------------------------------------------
// Environment: tools, privileges, temporary directories, commands.
// ---------------------------------------------------------------------------

/// The binary under test.
pub fn bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_erofs-snapshotter"))
}

fn on_ci() -> bool {
    std::env::var_os("CI").is_some_and(|v| !v.is_empty())
}

/// A missing prerequisite: fatal on CI (tests must fail loudly there),
/// a loud skip elsewhere. Returns false so callers can `return`.
pub fn missing(what: &str) -> bool {
    if on_ci() {
        panic!("prerequisite missing on CI: {what} (tests must not be skipped on CI)");
    }
    eprintln!();
    eprintln!("**********************************************************************");
    eprintln!("SKIPPED: {what}");
    eprintln!("**********************************************************************");
    false
}

/// Whether `cmd` is an executable on `$PATH` (or an existing path).
pub fn have(cmd: &str) -> bool {
    if cmd.contains('/') {
        return is_executable(Path::new(cmd));
    }
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path).any(|d| is_executable(&d.join(cmd)))
}

fn is_executable(p: &Path) -> bool {
    fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

/// True when every command is available; see [`missing`].
pub fn require(cmds: &[&str]) -> bool {
    let absent: Vec<&str> = cmds.iter().copied().filter(|c| !have(c)).collect();
    if absent.is_empty() {
        true
    } else {
        missing(&format!(
            "required command(s) not found on PATH: {}",
            absent.join(", ")
        ))
    }
}

/// Effective uid 0? (`/proc/self` is owned by the caller's effective ids.)
pub fn is_root() -> bool {
    fs::metadata("/proc/self").is_ok_and(|m| m.uid() == 0)
}

/// True when running as root with the kernel filesystems the mount tests
/// need; see [`missing`].
pub fn require_root() -> bool {
    if !is_root() {
        return missing("test needs root (mount(2), mknod, chown, trusted.* xattrs)");
    }
    true
}

/// Root plus `erofs` (and `overlay` when asked) in /proc/filesystems.
pub fn require_root_and_fs(fss: &[&str]) -> bool {
    if !require_root() {
        return false;
    }
    let known = fs::read_to_string("/proc/filesystems").unwrap_or_default();
    for f in fss {
        if !known
            .lines()
            .any(|l| l.split_whitespace().last() == Some(f))
        {
            return missing(&format!("kernel filesystem {f:?} not in /proc/filesystems"));
        }
    }
    true
}

/// A fresh temporary directory under `$TMPDIR` (or /tmp).
pub fn tempdir() -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix("erofs-snapshotter-it.")
        .tempdir()
        .expect("creating a temporary directory")
}

/// What a finished command did.
#[derive(Debug)]
pub struct Ran {
    pub what: String,
    pub status: ExitStatus,
    pub stdout: String,
    pub stderr: String,
}

impl Ran {
    pub fn success(&self) -> bool {
        self.status.success()
    }

    /// Panics with the full command output unless it succeeded.
    pub fn ok(self) -> Ran {
        if !self.status.success() {
            panic!(
                "command failed ({}): {}\n--- stdout ---\n{}\n--- stderr ---\n{}",
                self.status, self.what, self.stdout, self.stderr
            );
        }
        self
    }

    /// Panics with the full command output if it succeeded.
    pub fn failed(self) -> Ran {
        if self.status.success() {
            panic!(
                "command unexpectedly succeeded: {}\n--- stdout ---\n{}\n--- stderr ---\n{}",
                self.what, self.stdout, self.stderr
            );
        }
        self
    }
}

fn describe(cmd: &Command) -> String {
    let mut s = cmd.get_program().to_string_lossy().into_owned();
    for a in cmd.get_args() {
        s.push(' ');
        s.push_str(&a.to_string_lossy());
    }
    s
}

/// Run to completion with stdin closed, capturing output.
pub fn run(cmd: &mut Command) -> Ran {
    let what = describe(cmd);
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("spawning {what}: {e}"));
    Ran {
        what,
        status: out.status,
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// Run with `input` file as stdin.
pub fn run_with_stdin(cmd: &mut Command, input: &Path) -> Ran {
    let what = format!("{} < {}", describe(cmd), input.display());
    let f = File::open(input).unwrap_or_else(|e| panic!("opening {}: {e}", input.display()));
    let out = cmd
        .stdin(Stdio::from(f))
        .output()
        .unwrap_or_else(|e| panic!("spawning {what}: {e}"));
    Ran {
        what,
        status: out.status,
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// `bash -c SCRIPT _ ARGS...` with pipefail, arguments as `$1...`.
pub fn bash(script: &str, args: &[&OsStr]) -> Ran {
    let mut cmd = Command::new("bash");
    cmd.arg("-c")
        .arg(format!("set -euo pipefail\n{script}"))
        .arg("bash");
    for a in args {
        cmd.arg(a);
    }
    run(&mut cmd)
}

/// `erofs-snapshotter ARGS...`.
pub fn cli<I, S>(args: I) -> Ran
where
    I: IntoIterator<Item = S>,
    S: AsRef<OsStr>,
{
    let mut cmd = Command::new(bin());
    cmd.args(args);
    run(&mut cmd)
}

/// `erofs-snapshotter convert [FLAGS] INPUT OUTPUT`, unchecked.
pub fn convert(input: &Path, output: &Path, flags: &[&str]) -> Ran {
    let mut cmd = Command::new(bin());
    cmd.arg("convert").args(flags).arg(input).arg(output);
    run(&mut cmd)
}

/// `convert` that must succeed and produce the output file.
pub fn convert_ok(input: &Path, output: &Path, flags: &[&str]) -> Ran {
    let r = convert(input, output, flags).ok();
    assert!(
        output.is_file(),
        "convert reported success but {} is not a file\nstdout:\n{}",
        output.display(),
        r.stdout
    );
    r
}

/// The `diffid: sha256:<hex>` line of a convert run.
pub fn diffid_of(r: &Ran) -> Option<String> {
    r.stdout
        .lines()
        .find_map(|l| l.strip_prefix("diffid: "))
        .map(|s| s.trim().to_string())
}

/// Hex SHA-256 of a stream.
pub fn sha256_reader(r: &mut dyn Read) -> io::Result<String> {
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = match r.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        h.update(&buf[..n]);
    }
    Ok(hex::encode(h.finalize()))
}

pub fn sha256_file(p: &Path) -> String {
    let mut f = File::open(p).unwrap_or_else(|e| panic!("opening {}: {e}", p.display()));
    sha256_reader(&mut f).unwrap_or_else(|e| panic!("reading {}: {e}", p.display()))
}

pub fn sha256_bytes(b: &[u8]) -> String {
    hex::encode(Sha256::digest(b))
}

// ---------------------------------------------------------------------------
// Tar creation and extraction with GNU tar (the oracle).
// ---------------------------------------------------------------------------

/// `tar --xattrs --xattrs-include='*' --numeric-owner --format=pax -C dir
/// -cf out .` (sorted by name so the archive, and which name of a hard
/// link carries the data, is deterministic).
pub fn gnu_tar_create(dir: &Path, out: &Path) {
    run(Command::new("tar")
        .env("LC_ALL", "C")
        .args([
            "--xattrs",
            "--xattrs-include=*",
            "--numeric-owner",
            "--format=pax",
            "--sort=name",
            "-C",
        ])
        .arg(dir)
        .arg("-cf")
        .arg(out)
        .arg("."))
    .ok();
}

/// `tar -x --xattrs --xattrs-include='*' --numeric-owner -p` into `dest`.
pub fn gnu_tar_extract(tar: &Path, dest: &Path) {
    fs::create_dir_all(dest).unwrap();
    run(Command::new("tar")
        .env("LC_ALL", "C")
        .args([
            "-x",
            "--xattrs",
            "--xattrs-include=*",
            "--numeric-owner",
            "-p",
            "-f",
        ])
        .arg(tar)
        .arg("-C")
        .arg(dest))
    .ok();
}

// ---------------------------------------------------------------------------
// Mount guards.
// ---------------------------------------------------------------------------

/// A mount that is undone when dropped (also while unwinding from a failed
/// assertion): plain unmount, then a lazy (DETACH) one if that fails.
#[derive(Debug)]
pub struct Mount {
    target: PathBuf,
}

impl Mount {
    /// Mount an EROFS image read-only. mount(2) with a regular file as
    /// source gives a file-backed mount (Linux 6.12+); no loop device is
    /// involved (mount(8) would set one up).
    pub fn erofs(image: &Path, target: &Path) -> io::Result<Mount> {
        Mount::erofs_with(image, target, None)
    }

    /// As [`Mount::erofs`] with mount data, e.g. `device=/path/blob`.
    pub fn erofs_with(image: &Path, target: &Path, data: Option<&str>) -> io::Result<Mount> {
        fs::create_dir_all(target)?;
        let data = data
            .map(CString::new)
            .transpose()
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
        rustix::mount::mount(image, target, "erofs", MountFlags::RDONLY, data.as_deref())?;
        Ok(Mount {
            target: target.to_path_buf(),
        })
    }

    /// A read-only overlayfs of `lowers`, topmost first (no upper layer).
    pub fn overlay(lowers: &[&Path], target: &Path) -> io::Result<Mount> {
        fs::create_dir_all(target)?;
        let mut opts = b"lowerdir=".to_vec();
        for (i, l) in lowers.iter().enumerate() {
            if i > 0 {
                opts.push(b':');
            }
            let b = l.as_os_str().as_bytes();
            if b.iter().any(|c| matches!(c, b':' | b',' | b'\\')) {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidInput,
                    "overlay lower path with ':', ',' or '\\'",
                ));
            }
            opts.extend_from_slice(b);
        }
        let data =
            CString::new(opts).map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
        rustix::mount::mount(
            "overlay",
            target,
            "overlay",
            MountFlags::RDONLY,
            data.as_c_str(),
        )?;
        Ok(Mount {
            target: target.to_path_buf(),
        })
    }

    /// An EROFS image with extra devices (a merged image's layers, oldest
    /// first), file-backed, through the new mount API with one `device=`
    /// parameter each: mount(2)'s one-page option string cannot name
    /// hundreds of layers.
    pub fn erofs_devices(image: &Path, devices: &[PathBuf], target: &Path) -> io::Result<Mount> {
        fs::create_dir_all(target)?;
        let opts = sys::ErofsOptions {
            devices: devices.to_vec(),
            ..Default::default()
        };
        let kind = sys::mount_erofs(image, target, &opts).map_err(io::Error::other)?;
        let m = Mount {
            target: target.to_path_buf(),
        };
        if kind != sys::MountKind::FileBacked {
            return Err(io::Error::other(format!(
                "expected a file-backed mount, got {kind:?}"
            )));
        }
        Ok(m)
    }

    /// A read-only overlayfs of any number of `lowers` (topmost first, up
    /// to overlayfs's 500), one `lowerdir+` each on Linux 6.8+.
    pub fn overlay_many(lowers: &[PathBuf], target: &Path) -> io::Result<Mount> {
        fs::create_dir_all(target)?;
        sys::mount_overlay(target, lowers, None, &[]).map_err(io::Error::other)?;
        Ok(Mount {
            target: target.to_path_buf(),
        })
    }

    pub fn path(&self) -> &Path {
        &self.target
    }

    /// The mount's source as /proc/self/mountinfo shows it.
    pub fn source(&self) -> Option<String> {
        let info = fs::read_to_string("/proc/self/mountinfo").ok()?;
        let target = self.target.to_string_lossy().into_owned();
        // Fields: id parent maj:min root mountpoint opts... - fstype source superopts
        info.lines().rev().find_map(|l| {
            let fields: Vec<&str> = l.split(' ').collect();
            if fields.get(4).copied() != Some(target.as_str()) {
                return None;
            }
            let dash = fields.iter().position(|f| *f == "-")?;
            fields.get(dash + 2).map(|s| (*s).to_string())
        })
    }
}

impl Drop for Mount {
    fn drop(&mut self) {
        if rustix::mount::unmount(&self.target, UnmountFlags::empty()).is_ok() {
            return;
        }
        if let Err(e) = rustix::mount::unmount(&self.target, UnmountFlags::DETACH) {
            eprintln!("warning: could not unmount {}: {e}", self.target.display());
        }
    }
}

/// Mount `image` (file-backed) at `target`, panicking with context on
/// failure, and check that the kernel really sees the image file as the
/// source (a loop device would show `/dev/loopN`).
pub fn mount_erofs(image: &Path, target: &Path) -> Mount {
    let m = Mount::erofs(image, target).unwrap_or_else(|e| {
        panic!(
            "mount(2) erofs {} on {}: {e}",
            image.display(),
            target.display()
        )
    });
    if let Some(src) = m.source() {
        assert!(
            !src.starts_with("/dev/loop"),
            "expected a file-backed mount, got source {src}"
        );
    }
    m
}

// ---------------------------------------------------------------------------
// Tree snapshots and diffs.
// ---------------------------------------------------------------------------

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Dir,
    File,
    Symlink,
    CharDev,
    BlockDev,
    Fifo,
    Socket,
    Unknown,
}

/// Everything about one entry that a layer can express.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EntryInfo {
    pub kind: Kind,
    /// Permission bits including setuid/setgid/sticky (`mode & 0o7777`).
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    pub mtime: i64,
    pub mtime_nsec: i64,
    /// Size of regular files and symlinks; 0 for directories (their size
    /// is a property of the filesystem, not of the layer) and specials.
    pub size: u64,
    pub sha256: Option<String>,
    pub symlink: Option<Vec<u8>>,
    /// (major, minor) of character and block devices.
    pub rdev: Option<(u32, u32)>,
    /// All xattrs, sorted by name.
    pub xattrs: Vec<(Vec<u8>, Vec<u8>)>,
    /// For non-directories with nlink > 1: the smallest relative path
    /// sharing the same inode within the tree.
    pub link_group: Option<Vec<u8>>,
    pub nlink: u64,
}

/// Relative paths (root is `.`) to entries.
pub type Snapshot = BTreeMap<Vec<u8>, EntryInfo>;

pub fn show(p: &[u8]) -> String {
    p.escape_ascii().to_string()
}

fn show_short(v: &[u8]) -> String {
    if v.len() > 48 {
        format!("{}…({} bytes)", v[..48].escape_ascii(), v.len())
    } else {
        v.escape_ascii().to_string()
    }
}

fn list_xattrs(p: &Path) -> Vec<(Vec<u8>, Vec<u8>)> {
    let mut names = vec![0u8; 1 << 16];
    let len = match rustix::fs::llistxattr(p, &mut names[..]) {
        Ok(n) => n,
        Err(rustix::io::Errno::NOTSUP) => return Vec::new(),
        Err(e) => panic!("llistxattr {}: {e}", p.display()),
    };
    let mut out = Vec::new();
    for name in names[..len].split(|&b| b == 0).filter(|n| !n.is_empty()) {
        let mut value = vec![0u8; 1 << 16];
        let n = rustix::fs::lgetxattr(p, OsStr::from_bytes(name), &mut value[..])
            .unwrap_or_else(|e| panic!("lgetxattr {} {}: {e}", p.display(), show(name)));
        value.truncate(n);
        out.push((name.to_vec(), value));
    }
    out.sort();
    out
}

/// Walk `root` without following symlinks and record every entry.
pub fn snapshot(root: &Path) -> Snapshot {
    let mut out = Snapshot::new();
    let mut inodes: HashMap<(u64, u64), Vec<Vec<u8>>> = HashMap::new();
    let mut stack: Vec<(PathBuf, Vec<u8>)> = vec![(root.to_path_buf(), b".".to_vec())];
    while let Some((path, rel)) = stack.pop() {
        let md =
            fs::symlink_metadata(&path).unwrap_or_else(|e| panic!("lstat {}: {e}", path.display()));
        let ft = md.file_type();
        let kind = if ft.is_dir() {
            Kind::Dir
        } else if ft.is_file() {
            Kind::File
        } else if ft.is_symlink() {
            Kind::Symlink
        } else if ft.is_char_device() {
            Kind::CharDev
        } else if ft.is_block_device() {
            Kind::BlockDev
        } else if ft.is_fifo() {
            Kind::Fifo
        } else if ft.is_socket() {
            Kind::Socket
        } else {
            Kind::Unknown
        };
        let mut info = EntryInfo {
            kind,
            mode: md.mode() & 0o7777,
            uid: md.uid(),
            gid: md.gid(),
            mtime: md.mtime(),
            mtime_nsec: md.mtime_nsec(),
            size: match kind {
                Kind::File | Kind::Symlink => md.size(),
                _ => 0,
            },
            sha256: None,
            symlink: None,
            rdev: None,
            xattrs: list_xattrs(&path),
            link_group: None,
            nlink: md.nlink(),
        };
        match kind {
            Kind::File => info.sha256 = Some(sha256_file(&path)),
            Kind::Symlink => {
                let t = fs::read_link(&path)
                    .unwrap_or_else(|e| panic!("readlink {}: {e}", path.display()));
                info.symlink = Some(t.into_os_string().into_vec());
            }
            Kind::CharDev | Kind::BlockDev => {
                let d = md.rdev();
                info.rdev = Some((rustix::fs::major(d), rustix::fs::minor(d)));
            }
            Kind::Dir => {
                for ent in fs::read_dir(&path)
                    .unwrap_or_else(|e| panic!("readdir {}: {e}", path.display()))
                {
                    let ent = ent.unwrap_or_else(|e| panic!("readdir {}: {e}", path.display()));
                    let name = ent.file_name().into_vec();
                    let child_rel = if rel == b"." {
                        name.clone()
                    } else {
                        let mut r = rel.clone();
                        r.push(b'/');
                        r.extend_from_slice(&name);
                        r
                    };
                    stack.push((ent.path(), child_rel));
                }
            }
            _ => {}
        }
        if kind != Kind::Dir && md.nlink() > 1 {
            inodes
                .entry((md.dev(), md.ino()))
                .or_default()
                .push(rel.clone());
        }
        out.insert(rel, info);
    }
    for paths in inodes.into_values() {
        let canonical = paths.iter().min().cloned();
        for p in paths {
            if let Some(e) = out.get_mut(&p) {
                e.link_group.clone_from(&canonical);
            }
        }
    }
    out
}

/// What [`diff`] may disregard.
#[derive(Debug, Clone, Default)]
pub struct DiffOpts {
    /// All metadata of the root directory (`.`); its children still count.
    pub ignore_root: bool,
    /// Modification times of directories.
    pub ignore_dir_mtime: bool,
    /// Link counts of directories.
    pub ignore_dir_nlink: bool,
    /// Entries (and everything below them) to leave out entirely.
    pub ignore_paths: Vec<Vec<u8>>,
    /// Xattrs whose name starts with one of these.
    pub ignore_xattr_prefixes: Vec<Vec<u8>>,
    /// Single fields to disregard: (path, field) with `None` for every
    /// path. Fields: type, mode, owner, mtime, size, content, symlink,
    /// rdev, xattrs, link_group, nlink.
    pub ignore_fields: Vec<(Option<Vec<u8>>, &'static str)>,
}

impl DiffOpts {
    fn field_ignored(&self, p: &[u8], field: &str) -> bool {
        self.ignore_fields
            .iter()
            .any(|(q, f)| *f == field && q.as_deref().is_none_or(|q| q == p))
    }

    fn path_ignored(&self, p: &[u8]) -> bool {
        self.ignore_paths
            .iter()
            .any(|i| p == i.as_slice() || (p.starts_with(i) && p.get(i.len()) == Some(&b'/')))
    }

    fn xattrs<'a>(&self, x: &'a [(Vec<u8>, Vec<u8>)]) -> BTreeMap<&'a [u8], &'a [u8]> {
        x.iter()
            .filter(|(k, _)| !self.ignore_xattr_prefixes.iter().any(|p| k.starts_with(p)))
            .map(|(k, v)| (k.as_slice(), v.as_slice()))
            .collect()
    }
}

/// Human-readable differences between two snapshots (`a` and `b`).
pub fn diff(a: &Snapshot, b: &Snapshot, opts: &DiffOpts) -> Vec<String> {
    let mut out = Vec::new();
    for (p, ea) in a {
        if opts.path_ignored(p) {
            continue;
        }
        match b.get(p) {
            None => out.push(format!("{}: only in A ({:?})", show(p), ea.kind)),
            Some(eb) => diff_entry(p, ea, eb, opts, &mut out),
        }
    }
    for (p, eb) in b {
        if !opts.path_ignored(p) && !a.contains_key(p) {
            out.push(format!("{}: only in B ({:?})", show(p), eb.kind));
        }
    }
    out
}

fn diff_entry(p: &[u8], a: &EntryInfo, b: &EntryInfo, opts: &DiffOpts, out: &mut Vec<String>) {
    let path = show(p);
    if p == b"." && opts.ignore_root {
        return;
    }
    let check = |field: &str| !opts.field_ignored(p, field);
    if a.kind != b.kind && check("type") {
        out.push(format!("{path}: type {:?} vs {:?}", a.kind, b.kind));
        return;
    }
    let is_dir = a.kind == Kind::Dir;
    if a.mode != b.mode && check("mode") {
        out.push(format!("{path}: mode {:o} vs {:o}", a.mode, b.mode));
    }
    if (a.uid, a.gid) != (b.uid, b.gid) && check("owner") {
        out.push(format!(
            "{path}: owner {}:{} vs {}:{}",
            a.uid, a.gid, b.uid, b.gid
        ));
    }
    if !(is_dir && opts.ignore_dir_mtime)
        && (a.mtime, a.mtime_nsec) != (b.mtime, b.mtime_nsec)
        && check("mtime")
    {
        out.push(format!(
            "{path}: mtime {}.{:09} vs {}.{:09}",
            a.mtime, a.mtime_nsec, b.mtime, b.mtime_nsec
        ));
    }
    if a.size != b.size && check("size") {
        out.push(format!("{path}: size {} vs {}", a.size, b.size));
    }
    if a.sha256 != b.sha256 && check("content") {
        out.push(format!(
            "{path}: content sha256 {:?} vs {:?}",
            a.sha256, b.sha256
        ));
    }
    if a.symlink != b.symlink && check("symlink") {
        out.push(format!(
            "{path}: symlink target {:?} vs {:?}",
            a.symlink.as_deref().map(show_short),
            b.symlink.as_deref().map(show_short)
        ));
    }
    if a.rdev != b.rdev && check("rdev") {
        out.push(format!("{path}: rdev {:?} vs {:?}", a.rdev, b.rdev));
    }
    if check("xattrs") {
        let (xa, xb) = (opts.xattrs(&a.xattrs), opts.xattrs(&b.xattrs));
        for (k, va) in &xa {
            match xb.get(k) {
                None => out.push(format!(
                    "{path}: xattr {} only in A (value {})",
                    show(k),
                    show_short(va)
                )),
                Some(vb) if vb != va => out.push(format!(
                    "{path}: xattr {} value {} vs {}",
                    show(k),
                    show_short(va),
                    show_short(vb)
                )),
                Some(_) => {}
            }
        }
        for (k, vb) in &xb {
            if !xa.contains_key(k) {
                out.push(format!(
                    "{path}: xattr {} only in B (value {})",
                    show(k),
                    show_short(vb)
                ));
            }
        }
    }
    if a.link_group != b.link_group && check("link_group") {
        out.push(format!(
            "{path}: hard-link group {:?} vs {:?}",
            a.link_group.as_deref().map(show),
            b.link_group.as_deref().map(show)
        ));
    }
    if a.nlink != b.nlink && !(is_dir && opts.ignore_dir_nlink) && check("nlink") {
        out.push(format!("{path}: nlink {} vs {}", a.nlink, b.nlink));
    }
}

/// Panics listing (up to 50) differences between the two snapshots.
pub fn assert_same(
    what: &str,
    a_name: &str,
    a: &Snapshot,
    b_name: &str,
    b: &Snapshot,
    opts: &DiffOpts,
) {
    let d = diff(a, b, opts);
    if d.is_empty() {
        return;
    }
    let mut msg = format!(
        "{what}: {} difference(s) between A = {a_name} ({} entries) and B = {b_name} ({} entries):\n",
        d.len(),
        a.len(),
        b.len()
    );
    for line in d.iter().take(50) {
        msg.push_str("  ");
        msg.push_str(line);
        msg.push('\n');
    }
    if d.len() > 50 {
        msg.push_str(&format!("  ... and {} more\n", d.len() - 50));
    }
    panic!("{msg}");
}

/// Every relative path in a snapshot containing `needle` in a component.
pub fn paths_with_component_prefix(s: &Snapshot, prefix: &[u8]) -> Vec<String> {
    s.keys()
        .filter(|p| p.split(|&b| b == b'/').any(|c| c.starts_with(prefix)))
        .map(|p| show(p))
        .collect()
}

// ---------------------------------------------------------------------------
// Corpus generation.
// ---------------------------------------------------------------------------

/// Default mtime of corpus entries.
pub const T_DEFAULT: i64 = 1_600_000_000;

/// Deterministic pseudo-random bytes (xorshift64*), different per seed, so
/// no two corpus files share blocks by accident.
pub fn pattern(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        out.extend_from_slice(&x.wrapping_mul(0x2545_F491_4F6C_DD1D).to_le_bytes());
    }
    out.truncate(len);
    out
}

fn os(b: &[u8]) -> &OsStr {
    OsStr::from_bytes(b)
}

fn mkdir(p: &Path, mode: u32) {
    fs::create_dir_all(p).unwrap_or_else(|e| panic!("mkdir {}: {e}", p.display()));
    chmod(p, mode);
}

fn chmod(p: &Path, mode: u32) {
    fs::set_permissions(p, fs::Permissions::from_mode(mode))
        .unwrap_or_else(|e| panic!("chmod {}: {e}", p.display()));
}

fn write(p: &Path, data: &[u8], mode: u32) {
    fs::write(p, data).unwrap_or_else(|e| panic!("write {}: {e}", p.display()));
    chmod(p, mode);
}

fn symlink(target: &[u8], p: &Path) {
    std::os::unix::fs::symlink(os(target), p)
        .unwrap_or_else(|e| panic!("symlink {}: {e}", p.display()));
}

fn mknod(p: &Path, ft: FileType, mode: u32, major: u32, minor: u32) {
    rustix::fs::mknodat(
        CWD,
        p,
        ft,
        Mode::from_raw_mode(mode),
        rustix::fs::makedev(major, minor),
    )
    .unwrap_or_else(|e| panic!("mknod {}: {e}", p.display()));
    chmod(p, mode);
}

fn lchown(p: &Path, uid: u32, gid: u32) {
    std::os::unix::fs::lchown(p, Some(uid), Some(gid))
        .unwrap_or_else(|e| panic!("chown {}: {e}", p.display()));
}

fn lsetxattr(p: &Path, name: &str, value: &[u8]) {
    rustix::fs::lsetxattr(p, name, value, XattrFlags::empty())
        .unwrap_or_else(|e| panic!("setxattr {} {name}: {e}", p.display()));
}

/// Set the modification (and access) time without following symlinks.
pub fn set_mtime(p: &Path, sec: i64, nsec: i64) {
    let ts = rustix::fs::Timespec {
        tv_sec: sec,
        tv_nsec: nsec,
    };
    rustix::fs::utimensat(
        CWD,
        p,
        &Timestamps {
            last_access: ts,
            last_modification: ts,
        },
        AtFlags::SYMLINK_NOFOLLOW,
    )
    .unwrap_or_else(|e| panic!("utimensat {}: {e}", p.display()));
}

/// All paths under `root` (including it), deepest first, so setting times
/// in this order never disturbs a directory already stamped.
fn all_paths_deepest_first(root: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(p) = stack.pop() {
        if fs::symlink_metadata(&p).is_ok_and(|m| m.is_dir()) {
            for e in fs::read_dir(&p).unwrap() {
                stack.push(e.unwrap().path());
            }
        }
        out.push(p);
    }
    out.sort_by_key(|p| std::cmp::Reverse(p.components().count()));
    out
}

/// Stamp every entry with [`T_DEFAULT`] except those in `special`.
fn stamp_times(root: &Path, special: &[(PathBuf, i64, i64)]) {
    for p in all_paths_deepest_first(root) {
        let (s, ns) = special
            .iter()
            .find(|(q, _, _)| *q == p)
            .map_or((T_DEFAULT, 0), |(_, s, ns)| (*s, *ns));
        set_mtime(&p, s, ns);
    }
}

/// A valid VFS_CAP_REVISION_2 `security.capability` value granting
/// CAP_NET_BIND_SERVICE (permitted + effective). The kernel validates the
/// value, so it cannot be arbitrary bytes.
pub const CAP_NET_BIND_SERVICE_V2: [u8; 20] = [
    0x01, 0x00, 0x00, 0x02, // magic_etc: revision 2 | effective
    0x00, 0x04, 0x00, 0x00, // permitted[0]: bit 10
    0x00, 0x00, 0x00, 0x00, // inheritable[0]
    0x00, 0x00, 0x00, 0x00, // permitted[1]
    0x00, 0x00, 0x00, 0x00, // inheritable[1]
];

/// Name of the 400-entry directory's entries: 30 bytes each.
pub fn big_dir_name(i: usize) -> String {
    format!("entry-{i:024}")
}

/// Relative path of the file at the bottom of the 60-level deep path.
pub fn deep_path() -> String {
    let mut s = "deep".to_string();
    for i in 0..60 {
        s.push_str(&format!("/level{i:02}"));
    }
    s.push_str("/leaf");
    s
}

/// Populate `dir` (created if needed) with the edge-case checklist; see
/// the comments for each group. Needs root (devices, chown, trusted.*).
/// Deterministic: all contents, modes, owners and times are fixed.
pub fn make_edge_tree(dir: &Path) {
    mkdir(dir, 0o755);
    let mut times: Vec<(PathBuf, i64, i64)> = Vec::new();

    // File sizes around block boundaries (4 KiB blocks; 512-byte tar blocks).
    let sizes = dir.join("sizes");
    mkdir(&sizes, 0o755);
    write(&sizes.join("empty"), b"", 0o644);
    for (i, n) in [
        1usize,
        511,
        512,
        4095,
        4096,
        4097,
        8191,
        12288,
        (1 << 20) + 3,
    ]
    .into_iter()
    .enumerate()
    {
        write(
            &sizes.join(format!("s{n}")),
            &pattern(n, 100 + i as u64),
            0o644,
        );
    }
    // Two files with the same content (data must not be shared wrongly).
    write(&sizes.join("dup1"), &pattern(5000, 7), 0o644);
    write(&sizes.join("dup2"), &pattern(5000, 7), 0o644);
    // A file of all zeros (a writer may leave holes).
    write(&sizes.join("zeros"), &vec![0u8; 3 * 4096 + 17], 0o644);

    // Names.
    let names = dir.join("names");
    mkdir(&names, 0o755);
    write(&names.join("L".repeat(255)), b"longest name", 0o644);
    write(&names.join(os(b"\xff\xfe")), b"not utf-8", 0o644);
    write(&names.join(os(b"caf\xe9")), b"latin-1", 0o644);
    for n in [
        "!a",
        "+b",
        "-c",
        ".hidden",
        "a",
        "A",
        "z z",
        "tab\there",
        "new\nline",
    ] {
        write(&names.join(n), n.as_bytes(), 0o644);
    }
    mkdir(&names.join("emptydir"), 0o755);

    // A directory spanning several blocks: 400 entries, 30-byte names.
    let big = dir.join("big_dir");
    mkdir(&big, 0o755);
    for i in 0..400 {
        let p = big.join(big_dir_name(i));
        if i % 50 == 0 {
            mkdir(&p, 0o755);
        } else {
            write(&p, format!("{i}").as_bytes(), 0o644);
        }
        // One xattr shared by many inodes (EROFS can share xattr bodies).
        if i % 8 == 1 {
            lsetxattr(&p, "user.shared", b"the same value on many files");
        }
    }

    // A 60-level deep path (names longer than ustar's 100+155 bytes).
    let deep = dir.join(deep_path());
    mkdir(deep.parent().unwrap(), 0o755);
    write(&deep, b"deep leaf", 0o644);

    // Symlinks.
    let sl = dir.join("symlinks");
    mkdir(&sl, 0o755);
    write(&sl.join("target"), b"symlink target", 0o644);
    symlink(b"target", &sl.join("short"));
    symlink(b"/etc/passwd", &sl.join("absolute"));
    symlink(b"does/not/exist", &sl.join("dangling"));
    symlink("a/".repeat(2000).as_bytes(), &sl.join("long4000"));
    let mut max = "b/".repeat(2047);
    max.push('b');
    assert_eq!(max.len(), 4095);
    symlink(max.as_bytes(), &sl.join("max4095"));
    symlink(b"x", &sl.join("one_byte"));
    times.push((sl.join("short"), 1_700_000_001, 5));

    // Hard links: two names in one directory, a third in another.
    let hl = dir.join("hardlinks");
    mkdir(&hl, 0o755);
    write(&hl.join("one"), &pattern(10_000, 3), 0o640);
    fs::hard_link(hl.join("one"), hl.join("two")).unwrap();
    mkdir(&dir.join("other"), 0o755);
    fs::hard_link(hl.join("one"), dir.join("other/three")).unwrap();
    // An empty file with two names.
    write(&hl.join("empty_a"), b"", 0o600);
    fs::hard_link(hl.join("empty_a"), hl.join("empty_b")).unwrap();

    // Special files.
    let sp = dir.join("special");
    mkdir(&sp, 0o755);
    mknod(&sp.join("fifo"), FileType::Fifo, 0o644, 0, 0);
    mknod(&sp.join("null"), FileType::CharacterDevice, 0o666, 1, 3);
    mknod(&sp.join("sda"), FileType::BlockDevice, 0o660, 8, 0);
    mknod(
        &sp.join("bigdev"),
        FileType::CharacterDevice,
        0o600,
        300,
        70000,
    );

    // Xattrs.
    let xa = dir.join("xattrs");
    mkdir(&xa, 0o755);
    lsetxattr(&xa, "user.on_dir", b"dir value");
    write(&xa.join("binary"), b"b", 0o644);
    let all: Vec<u8> = (0..=255u8).collect();
    lsetxattr(&xa.join("binary"), "user.all_bytes", &all);
    write(&xa.join("empty_value"), b"e", 0o644);
    lsetxattr(&xa.join("empty_value"), "user.empty", b"");
    write(&xa.join("trusted"), b"t", 0o644);
    lsetxattr(&xa.join("trusted"), "trusted.test", b"trusted value");
    write(&xa.join("many"), b"m", 0o644);
    for i in 0..20 {
        lsetxattr(
            &xa.join("many"),
            &format!("user.m{i:02}"),
            &pattern(i * 7, 900 + i as u64),
        );
    }
    symlink(b"binary", &xa.join("symlink"));
    lsetxattr(&xa.join("symlink"), "trusted.on_symlink", b"s");
    write(&xa.join("cap"), b"#!/bin/true\n", 0o755);
    write(&xa.join("big_value"), b"v", 0o644);
    lsetxattr(&xa.join("big_value"), "user.big", &pattern(3000, 77));

    // Ownership beyond 16 bits.
    let ids = dir.join("ids");
    mkdir(&ids, 0o755);
    write(&ids.join("big"), b"big ids", 0o644);
    lchown(&ids.join("big"), 100_000, 200_000);
    mkdir(&ids.join("bigdir"), 0o750);
    lchown(&ids.join("bigdir"), 100_000, 200_000);
    write(&ids.join("small"), b"ids 1:2", 0o644);
    lchown(&ids.join("small"), 1, 2);
    // Beyond the 7-digit octal ustar field: PAX uid/gid records.
    write(&ids.join("huge"), b"huge ids", 0o644);
    lchown(&ids.join("huge"), 3_000_000, 4_294_967_294);
    symlink(b"big", &ids.join("symlink_owned"));
    lchown(&ids.join("symlink_owned"), 65_536, 65_537);

    // Permission bits (after chown, which clears setuid/setgid).
    let modes = dir.join("modes");
    mkdir(&modes, 0o755);
    write(&modes.join("suid"), b"suid", 0o4755);
    write(&modes.join("sgid"), b"sgid", 0o2755);
    write(&modes.join("all_special"), b"ugs", 0o7777);
    write(&modes.join("none"), b"no permissions", 0o000);
    mkdir(&modes.join("sticky"), 0o1777);
    mkdir(&modes.join("private"), 0o700);
    mkdir(&modes.join("sgid_dir"), 0o2775);

    // File capabilities last among the xattrs: chown and writes clear them.
    lsetxattr(
        &xa.join("cap"),
        "security.capability",
        &CAP_NET_BIND_SERVICE_V2,
    );

    // Times.
    let tm = dir.join("times");
    mkdir(&tm, 0o755);
    for (name, s, ns) in [
        ("zero", 0i64, 0i64),
        ("negative", -100, 0),
        ("nsec", 1_700_000_000, 123_456_789),
        ("future", 1 << 33, 0),
        ("max_nsec", 1_234_567_890, 999_999_999),
        // -99.75 s: PAX writes "mtime=-99.75"; sec -100 + 0.25 s.
        ("negative_nsec", -100, 250_000_000),
    ] {
        write(&tm.join(name), name.as_bytes(), 0o644);
        times.push((tm.join(name), s, ns));
    }
    mkdir(&tm.join("dir_nsec"), 0o755);
    times.push((tm.join("dir_nsec"), 1_650_000_000, 1));

    // A distinctive root (the tar's `./` member must become the image root).
    chmod(dir, 0o750);
    lsetxattr(dir, "user.root", b"root xattr");
    times.push((dir.to_path_buf(), 1_600_000_123, 456));

    stamp_times(dir, &times);
}

/// A small tree for the lower layer of the whiteout tests.
pub fn make_whiteout_lower(dir: &Path) {
    mkdir(dir, 0o755);
    for (p, data) in [
        ("a/gone", "lower a/gone"),
        ("a/stay", "lower a/stay"),
        ("b/old", "lower b/old"),
        ("c/x", "lower c/x"),
        ("rootfile", "lower rootfile"),
        ("lowerfile", "lower lowerfile"),
        ("d/e/f", "lower d/e/f"),
        ("d/e/g", "lower d/e/g"),
    ] {
        let path = dir.join(p);
        mkdir(path.parent().unwrap(), 0o755);
        write(&path, data.as_bytes(), 0o644);
    }
    stamp_times(dir, &[]);
}

/// A layer with OCI whiteouts, hand-built as a PAX tar:
/// `a/.wh.gone`, `b/.wh..wh..opq` + `b/kept`, `c/x` + `c/.wh.x` (same
/// layer: x survives), `.wh.rootfile`, `d/e/.wh.f` (`d/e` implicit) and
/// `n/.wh.ghost` + `n/real` (`n` in no lower layer).
pub fn make_whiteout_tar(path: &Path) {
    let mut t = TarBuilder::new();
    t.dir("./");
    t.dir("a/");
    t.file("a/.wh.gone", b"");
    t.dir("b/");
    t.file("b/.wh..wh..opq", b"");
    t.file("b/kept", b"upper b/kept");
    t.dir("c/");
    // PAX records on an ordinary member: sub-second mtime and an xattr.
    t.pax(&[
        ("mtime", b"1600000000.25"),
        ("SCHILY.xattr.user.note", b"upper"),
    ]);
    t.entry(&Header::new(b"c/x", typeflag::FILE, 9), b"upper c/x");
    t.file("c/.wh.x", b"");
    t.file(".wh.rootfile", b"");
    t.dir("d/");
    t.file("d/e/.wh.f", b"");
    // A directory no lower layer has: its whiteout must still be hidden
    // by overlayfs (that is what trusted.overlay.origin is for).
    t.dir("n/");
    t.file("n/.wh.ghost", b"");
    t.file("n/real", b"upper n/real");
    fs::write(path, t.finish()).unwrap();
}

// ---------------------------------------------------------------------------
// Byte-level tar builder.
// ---------------------------------------------------------------------------

/// ustar type flags.
pub mod typeflag {
    pub const FILE: u8 = b'0';
    pub const HARDLINK: u8 = b'1';
    pub const SYMLINK: u8 = b'2';
    pub const CHAR: u8 = b'3';
    pub const BLOCK: u8 = b'4';
    pub const DIR: u8 = b'5';
    pub const FIFO: u8 = b'6';
    pub const PAX: u8 = b'x';
    pub const PAX_GLOBAL: u8 = b'g';
}

/// One ustar header's fields. Names longer than the fields are cut; use
/// PAX records for long names.
#[derive(Debug, Clone)]
pub struct Header {
    pub name: Vec<u8>,
    pub mode: u32,
    pub uid: u64,
    pub gid: u64,
    /// The size written in the header (may differ from the data written,
    /// for malformed archives).
    pub size: u64,
    pub mtime: u64,
    pub typeflag: u8,
    pub linkname: Vec<u8>,
    pub devmajor: u32,
    pub devminor: u32,
}

impl Header {
    pub fn new(name: &[u8], typeflag: u8, size: u64) -> Header {
        Header {
            name: name.to_vec(),
            mode: if typeflag == typeflag::DIR {
                0o755
            } else {
                0o644
            },
            uid: 0,
            gid: 0,
            size,
            mtime: T_DEFAULT as u64,
            typeflag,
            linkname: Vec::new(),
            devmajor: 0,
            devminor: 0,
        }
    }

    /// The 512-byte ustar header block with a correct checksum.
    pub fn block(&self) -> [u8; 512] {
        let mut b = [0u8; 512];
        put_bytes(&mut b[0..100], &self.name);
        put_octal(&mut b[100..108], u64::from(self.mode));
        put_octal(&mut b[108..116], self.uid);
        put_octal(&mut b[116..124], self.gid);
        put_octal(&mut b[124..136], self.size);
        put_octal(&mut b[136..148], self.mtime);
        b[156] = self.typeflag;
        put_bytes(&mut b[157..257], &self.linkname);
        b[257..263].copy_from_slice(b"ustar\0");
        b[263..265].copy_from_slice(b"00");
        put_bytes(&mut b[265..297], b"root");
        put_bytes(&mut b[297..329], b"root");
        put_octal(&mut b[329..337], u64::from(self.devmajor));
        put_octal(&mut b[337..345], u64::from(self.devminor));
        set_checksum(&mut b);
        b
    }
}

fn put_bytes(field: &mut [u8], v: &[u8]) {
    let n = v.len().min(field.len());
    field[..n].copy_from_slice(&v[..n]);
}

/// Zero-padded octal with a trailing NUL, as GNU tar writes it.
fn put_octal(field: &mut [u8], v: u64) {
    let s = format!("{v:0width$o}", width = field.len() - 1);
    assert!(
        s.len() < field.len(),
        "{v} does not fit an octal field of {}",
        field.len()
    );
    field[..s.len()].copy_from_slice(s.as_bytes());
    field[s.len()] = 0;
}

/// Recompute the checksum of a header block (after editing it).
pub fn set_checksum(b: &mut [u8; 512]) {
    b[148..156].copy_from_slice(b"        ");
    let sum: u32 = b.iter().map(|&c| u32::from(c)).sum();
    let s = format!("{sum:06o}\0 ");
    b[148..156].copy_from_slice(s.as_bytes());
}

/// PAX extended header records (`LEN KEY=VALUE\n`, LEN counting itself).
pub fn pax_records(records: &[(&str, &[u8])]) -> Vec<u8> {
    let mut out = Vec::new();
    for (k, v) in records {
        let body = k.len() + v.len() + 3; // ' ', '=', '\n'
        let mut len = body + 1;
        while len != body + len.to_string().len() {
            len = body + len.to_string().len();
        }
        out.extend_from_slice(len.to_string().as_bytes());
        out.push(b' ');
        out.extend_from_slice(k.as_bytes());
        out.push(b'=');
        out.extend_from_slice(v);
        out.push(b'\n');
    }
    out
}

/// Builds an archive block by block.
#[derive(Debug, Default, Clone)]
pub struct TarBuilder {
    pub buf: Vec<u8>,
}

impl TarBuilder {
    pub fn new() -> TarBuilder {
        TarBuilder::default()
    }

    /// Append raw bytes (no padding).
    pub fn raw(&mut self, b: &[u8]) -> &mut Self {
        self.buf.extend_from_slice(b);
        self
    }

    /// Pad to the next 512-byte boundary with zeros.
    pub fn pad(&mut self) -> &mut Self {
        let rem = self.buf.len() % 512;
        if rem != 0 {
            self.buf.resize(self.buf.len() + 512 - rem, 0);
        }
        self
    }

    /// A header and its data, padded.
    pub fn entry(&mut self, h: &Header, data: &[u8]) -> &mut Self {
        self.buf.extend_from_slice(&h.block());
        self.buf.extend_from_slice(data);
        self.pad()
    }

    /// A PAX extended header (typeflag 'x') for the next entry.
    pub fn pax(&mut self, records: &[(&str, &[u8])]) -> &mut Self {
        let body = pax_records(records);
        let h = Header::new(b"./PaxHeaders/x", typeflag::PAX, body.len() as u64);
        self.entry(&h, &body)
    }

    /// An entry whose name goes into a PAX `path` record when it does not
    /// fit (or is not ASCII), as GNU tar --format=pax does.
    pub fn entry_long(&mut self, mut h: Header, data: &[u8]) -> &mut Self {
        let mut recs: Vec<(&str, Vec<u8>)> = Vec::new();
        if h.name.len() > 100 || !h.name.is_ascii() {
            recs.push(("path", h.name.clone()));
            h.name = h.name[..h.name.len().min(100)].to_vec();
        }
        if h.linkname.len() > 100 || !h.linkname.is_ascii() {
            recs.push(("linkpath", h.linkname.clone()));
            h.linkname = h.linkname[..h.linkname.len().min(100)].to_vec();
        }
        if !recs.is_empty() {
            let r: Vec<(&str, &[u8])> = recs.iter().map(|(k, v)| (*k, v.as_slice())).collect();
            self.pax(&r);
        }
        self.entry(&h, data)
    }

    pub fn file(&mut self, name: &str, data: &[u8]) -> &mut Self {
        self.entry_long(
            Header::new(name.as_bytes(), typeflag::FILE, data.len() as u64),
            data,
        )
    }

    pub fn file_bytes(&mut self, name: &[u8], data: &[u8]) -> &mut Self {
        self.entry_long(Header::new(name, typeflag::FILE, data.len() as u64), data)
    }

    pub fn dir(&mut self, name: &str) -> &mut Self {
        self.entry_long(Header::new(name.as_bytes(), typeflag::DIR, 0), b"")
    }

    pub fn symlink(&mut self, name: &str, target: &[u8]) -> &mut Self {
        let mut h = Header::new(name.as_bytes(), typeflag::SYMLINK, 0);
        h.mode = 0o777;
        h.linkname = target.to_vec();
        self.entry_long(h, b"")
    }

    pub fn hardlink(&mut self, name: &str, target: &str) -> &mut Self {
        let mut h = Header::new(name.as_bytes(), typeflag::HARDLINK, 0);
        h.linkname = target.as_bytes().to_vec();
        self.entry_long(h, b"")
    }

    /// Two zero blocks.
    pub fn end(&mut self) -> &mut Self {
        self.buf.extend_from_slice(&[0u8; 1024]);
        self
    }

    /// End-of-archive appended; the archive bytes.
    pub fn finish(&mut self) -> Vec<u8> {
        self.end();
        std::mem::take(&mut self.buf)
    }
}

/// Path of `rel` (bytes, `/`-separated) below `root`.
pub fn join_rel(root: &Path, rel: &[u8]) -> PathBuf {
    root.join(OsString::from_vec(rel.to_vec()))
}

/// Write `bytes` to `path`.
pub fn write_bytes(path: &Path, bytes: &[u8]) {
    let mut f = File::create(path).unwrap_or_else(|e| panic!("create {}: {e}", path.display()));
    f.write_all(bytes).unwrap();
}

/// Names of all entries in `dir` (not recursive).
pub fn dir_names(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("readdir {}: {e}", dir.display()))
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

/// Guard against vacuous comparisons: a snapshot of the edge tree (or of
/// anything that must equal it) really holds the checklist's hard cases.
pub fn check_edge_snapshot(what: &str, s: &Snapshot) {
    let mut bad = Vec::new();
    let get = |p: &[u8]| s.get(p);
    let x = |p: &[u8], name: &[u8]| {
        s.get(p)
            .and_then(|e| e.xattrs.iter().find(|(k, _)| k == name))
            .map(|(_, v)| v.clone())
    };
    if s.len() < 480 {
        bad.push(format!("only {} entries", s.len()));
    }
    let expect = |bad: &mut Vec<String>, ok: bool, msg: &str| {
        if !ok {
            bad.push(msg.to_string());
        }
    };
    expect(
        &mut bad,
        get(b"special/bigdev").and_then(|e| e.rdev) == Some((300, 70000)),
        "special/bigdev 300:70000",
    );
    expect(
        &mut bad,
        get(b"special/sda").is_some_and(|e| e.kind == Kind::BlockDev && e.rdev == Some((8, 0))),
        "special/sda block 8:0",
    );
    expect(
        &mut bad,
        get(b"special/null").and_then(|e| e.rdev) == Some((1, 3)),
        "special/null 1:3",
    );
    expect(
        &mut bad,
        get(b"special/fifo").is_some_and(|e| e.kind == Kind::Fifo),
        "special/fifo",
    );
    expect(
        &mut bad,
        x(b"xattrs/cap", b"security.capability").as_deref() == Some(&CAP_NET_BIND_SERVICE_V2[..]),
        "xattrs/cap security.capability",
    );
    expect(
        &mut bad,
        x(b"xattrs/binary", b"user.all_bytes").is_some_and(|v| v.len() == 256),
        "xattrs/binary user.all_bytes",
    );
    expect(
        &mut bad,
        x(b"xattrs/empty_value", b"user.empty").is_some_and(|v| v.is_empty()),
        "user.empty",
    );
    expect(
        &mut bad,
        get(b"xattrs/many").is_some_and(|e| e.xattrs.len() == 20),
        "xattrs/many: 20 xattrs",
    );
    expect(
        &mut bad,
        x(b"xattrs/symlink", b"trusted.on_symlink").is_some(),
        "xattrs/symlink trusted xattr",
    );
    expect(
        &mut bad,
        x(b"xattrs", b"user.on_dir").is_some(),
        "xattrs dir xattr",
    );
    expect(
        &mut bad,
        x(b"xattrs/trusted", b"trusted.test").is_some(),
        "trusted.test",
    );
    expect(
        &mut bad,
        get(b"times/negative").is_some_and(|e| e.mtime == -100),
        "times/negative",
    );
    expect(
        &mut bad,
        get(b"times/nsec").is_some_and(|e| (e.mtime, e.mtime_nsec) == (1_700_000_000, 123_456_789)),
        "times/nsec",
    );
    expect(
        &mut bad,
        get(b"times/future").is_some_and(|e| e.mtime == 1 << 33),
        "times/future",
    );
    expect(
        &mut bad,
        get(b"times/zero").is_some_and(|e| e.mtime == 0),
        "times/zero",
    );
    expect(
        &mut bad,
        get(b"times/negative_nsec").is_some_and(|e| (e.mtime, e.mtime_nsec) == (-100, 250_000_000)),
        "times/negative_nsec",
    );
    expect(
        &mut bad,
        get(b"ids/huge").is_some_and(|e| (e.uid, e.gid) == (3_000_000, 4_294_967_294)),
        "ids/huge 3000000:4294967294",
    );
    expect(
        &mut bad,
        x(b"xattrs/big_value", b"user.big").is_some_and(|v| v.len() == 3000),
        "user.big",
    );
    expect(
        &mut bad,
        get(b"ids/big").is_some_and(|e| (e.uid, e.gid) == (100_000, 200_000)),
        "ids/big 100000:200000",
    );
    expect(
        &mut bad,
        get(b"modes/suid").is_some_and(|e| e.mode == 0o4755),
        "modes/suid 4755",
    );
    expect(
        &mut bad,
        get(b"modes/all_special").is_some_and(|e| e.mode == 0o7777),
        "modes/all_special 7777",
    );
    expect(
        &mut bad,
        get(b"modes/sticky").is_some_and(|e| e.mode == 0o1777),
        "modes/sticky 1777",
    );
    expect(
        &mut bad,
        get(b"other/three")
            .is_some_and(|e| e.nlink == 3 && e.link_group.as_deref() == Some(b"hardlinks/one")),
        "other/three hard link",
    );
    expect(
        &mut bad,
        get(b"symlinks/max4095").is_some_and(|e| e.size == 4095),
        "symlinks/max4095",
    );
    expect(
        &mut bad,
        get(b"symlinks/long4000").is_some_and(|e| e.size == 4000),
        "symlinks/long4000",
    );
    let long_name = format!("names/{}", "L".repeat(255));
    expect(
        &mut bad,
        get(long_name.as_bytes()).is_some(),
        "255-byte name",
    );
    expect(&mut bad, get(b"names/\xff\xfe").is_some(), "non-UTF-8 name");
    expect(&mut bad, get(b"names/caf\xe9").is_some(), "Latin-1 name");
    expect(
        &mut bad,
        get(deep_path().as_bytes()).is_some(),
        "60-level deep path",
    );
    expect(
        &mut bad,
        get(b"sizes/s1048579").is_some_and(|e| e.size == (1 << 20) + 3),
        "sizes/s1048579",
    );
    expect(
        &mut bad,
        s.keys().filter(|k| k.starts_with(b"big_dir/")).count() == 400,
        "big_dir with 400 entries",
    );
    assert!(
        bad.is_empty(),
        "{what}: edge tree snapshot lacks: {}",
        bad.join(", ")
    );
}
