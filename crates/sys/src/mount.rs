//! Mounting and unmounting: EROFS layers, overlayfs stacks, bind mounts.
//!
//! EROFS: [`mount_erofs`] mounts an image *file* read-only. Linux ≥ 6.12
//! mounts the file directly ("file-backed"); older kernels answer
//! `ENOTBLK`, and we then put a loop device in front of the file (and of
//! every extra `device=` file) and mount that, like containerd's EROFS
//! mount handler. Unlike containerd we do not remember the `ENOTBLK` in a
//! process-global flag (containerd.md §8): the daemon decides once at
//! start-up with [`crate::probe::kernel_supports_file_backed_erofs`] and
//! passes [`ErofsOptions::force_loop`]; without it each mount simply tries
//! the file first, which costs one failed syscall on old kernels.
//!
//! Overlay: [`mount_overlay`] must stack 128+ layers, whose `lowerdir=a:b:…`
//! string is longer than the page `mount(2)` accepts. On Linux ≥ 6.8 each
//! layer is one `fsconfig(lowerdir+, path)` call, so there is no total
//! limit; older kernels get the single `lowerdir=` string through
//! `mount(2)` and a clear `E2BIG` error when it does not fit.
//!
//! Both use the new mount API (`fsopen`…`move_mount`, see `fsctx`) where
//! it exists, and fall back to `mount(2)` on kernels older than 5.2.

use std::ffi::{CString, OsString};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use rustix::fs::{FileType, StatVfsMountFlags};
use rustix::io::Errno;
use rustix::mount::{MountAttrFlags, MountFlags, UnmountFlags};

use crate::error::{Error, Result};
use crate::fsctx::{FsContext, MAX_FSCONFIG_VALUE};
use crate::loopdev::attach_loop;

/// How an EROFS image was mounted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MountKind {
    /// The image file itself (Linux ≥ 6.12).
    FileBacked,
    /// Through autoclear loop devices, which vanish at unmount.
    Loop,
    /// `source` was already a block device (a loop or dm-verity device the
    /// caller set up); mounted as is.
    BlockDevice,
}

/// Options of [`mount_erofs`].
#[derive(Debug, Clone, Default)]
pub struct ErofsOptions {
    /// Extra devices of a multi-device image, in device-table order (one
    /// `device=` option each): the layer blobs a merged metadata image
    /// points into. Files, or block devices when `source` is one.
    pub devices: Vec<PathBuf>,
    /// Further EROFS options, `key=value` or a bare flag. `ro` and `loop`
    /// (as found in containerd mount specs) are accepted and ignored: the
    /// mount is always read-only and the loop decision is ours.
    pub extra: Vec<String>,
    /// Skip the file-backed attempt and go straight to loop devices: for
    /// kernels the start-up probe found without file-backed support, and
    /// to test the fallback on kernels that have it.
    pub force_loop: bool,
}

/// Mounts the EROFS image `source` read-only on `target` (an existing
/// directory) and says how. See the module docs for the file-backed → loop
/// fallback. Extra devices given as files get loop devices of their own in
/// loop mode; all of them are autoclear, so unmounting `target` is the only
/// clean-up there is.
pub fn mount_erofs(source: &Path, target: &Path, opts: &ErofsOptions) -> Result<MountKind> {
    let extra: Vec<&str> = opts
        .extra
        .iter()
        .map(String::as_str)
        .filter(|o| !matches!(*o, "ro" | "loop"))
        .collect();

    match file_type(source, "stat erofs image")? {
        FileType::RegularFile => {}
        FileType::BlockDevice => {
            erofs(source, &opts.devices, target, &extra, None)?;
            return Ok(MountKind::BlockDevice);
        }
        _ => {
            return Err(Error::invalid(
                "mount erofs",
                source,
                "not a regular file or a block device",
                // Not ENOTBLK: that errno means "no file-backed mounts here".
                Errno::INVAL,
            ));
        }
    }

    if !opts.force_loop {
        match erofs(source, &opts.devices, target, &extra, None) {
            Ok(()) => return Ok(MountKind::FileBacked),
            // No file-backed mounts in this kernel (< 6.12, or built
            // without CONFIG_EROFS_FS_BACKED_BY_FILE).
            Err(e) if e.errno() == Errno::NOTBLK => {}
            Err(e) => return Err(e),
        }
    }

    // Our descriptors keep the devices attached until the mount holds them;
    // dropping them at return (or on any error) hands them to autoclear.
    let main = attach_loop(source, true, false)?;
    let mut held = Vec::with_capacity(opts.devices.len());
    let mut devices = Vec::with_capacity(opts.devices.len());
    for dev in &opts.devices {
        if file_type(dev, "stat erofs device")? == FileType::BlockDevice {
            devices.push(dev.clone());
        } else {
            let lo = attach_loop(dev, true, false)?;
            devices.push(lo.path().to_owned());
            held.push(lo);
        }
    }
    erofs(main.path(), &devices, target, &extra, Some(source))?;
    Ok(MountKind::Loop)
}

fn file_type(path: &Path, op: &'static str) -> Result<FileType> {
    let st = rustix::fs::stat(path).map_err(|e| Error::sys(op, path, e))?;
    Ok(FileType::from_raw_mode(st.st_mode))
}

/// One EROFS mount of `source` (file or block device) with `device=`s;
/// `image` is the file behind a loop device `source`, for messages.
fn erofs(
    source: &Path,
    devices: &[PathBuf],
    target: &Path,
    extra: &[&str],
    image: Option<&Path>,
) -> Result<()> {
    let what = match image {
        Some(image) => format!("{} (via {})", image.display(), source.display()),
        None => source.display().to_string(),
    };
    // fsconfig refuses values over 255 bytes; mount(2) takes paths up to
    // PATH_MAX. We keep the real paths (rather than /proc/self/fd/N) because
    // mountinfo shows the source, and restart re-discovery reads it.
    let fits = source.as_os_str().len() <= MAX_FSCONFIG_VALUE
        && devices
            .iter()
            .all(|d| d.as_os_str().len() <= MAX_FSCONFIG_VALUE)
        && extra.iter().all(|o| o.len() <= MAX_FSCONFIG_VALUE);
    if fits {
        match FsContext::open("erofs", what.clone(), target) {
            Ok(mut ctx) => {
                // SB_RDONLY before the superblock exists: a block device is
                // then opened read-only (a read-only loop device refuses
                // write opens).
                ctx.set_flag("ro")?;
                ctx.set_string("source", source.as_os_str().as_bytes())?;
                for dev in devices {
                    ctx.set_string("device", dev.as_os_str().as_bytes())?;
                }
                for opt in extra {
                    ctx.set_option(opt)?;
                }
                return ctx.attach(MountAttrFlags::MOUNT_ATTR_RDONLY);
            }
            Err(e) if e.errno() == Errno::NOSYS => {}
            Err(e) => return Err(e),
        }
    }

    let mut data: Vec<u8> = Vec::new();
    for dev in devices {
        let bytes = dev.as_os_str().as_bytes();
        if bytes.contains(&b',') {
            return Err(Error::invalid(
                "mount erofs",
                dev,
                "a ',' in a device= path cannot be passed through mount(2)",
                Errno::INVAL,
            ));
        }
        push_opt(&mut data, b"device=", bytes);
    }
    for opt in extra {
        push_opt(&mut data, opt.as_bytes(), b"");
    }
    let data = mount_data(data, "mount erofs", target)?;
    rustix::mount::mount(source, target, "erofs", MountFlags::RDONLY, data.as_c_str()).map_err(
        |errno| Error::Mount {
            fs: "erofs",
            what,
            target: target.to_owned(),
            step: "mount(2)".to_owned(),
            errno,
            kernel_log: String::new(),
        },
    )
}

/// Mounts the ext4 filesystem image `image` read-write on `target`
/// through an autoclear loop device: the size-limited writable layer of a
/// snapshot. Unmounting `target` is the only clean-up there is.
pub fn mount_ext4_image(image: &Path, target: &Path) -> Result<()> {
    // Direct I/O: the upper's data is cached once, by ext4, not a second
    // time by the loop device's backing file.
    let dev = attach_loop(image, false, true)?;
    let what = image.display().to_string();
    let mut ctx = FsContext::open("ext4", what, target)?;
    ctx.set_string("source", dev.path().as_os_str().as_bytes())?;
    ctx.attach(MountAttrFlags::empty())
    // `dev` closes here; autoclear keeps the device while it is mounted.
}

/// Appends `,key` + `value` (no comma before the first option).
fn push_opt(data: &mut Vec<u8>, key: &[u8], value: &[u8]) {
    if !data.is_empty() {
        data.push(b',');
    }
    data.extend_from_slice(key);
    data.extend_from_slice(value);
}

/// A `mount(2)` data string: NUL-free and shorter than a page. The kernel
/// reads at most one page of it, so a longer string would be cut, possibly
/// in the middle of a layer path; we refuse it instead, with the size.
fn mount_data(data: Vec<u8>, op: &'static str, target: &Path) -> Result<CString> {
    let page = rustix::param::page_size();
    if data.len() >= page {
        return Err(Error::invalid(
            op,
            target,
            format!(
                "the option string is {} bytes, more than mount(2) accepts ({} incl. NUL)",
                data.len(),
                page
            ),
            Errno::TOOBIG,
        ));
    }
    CString::new(data)
        .map_err(|_| Error::invalid(op, target, "a NUL byte in the options", Errno::INVAL))
}

/// Escapes a path for overlayfs's `upperdir=`/`workdir=`/`lowerdir=`
/// values: overlayfs splits `lowerdir` at `:` (and `::` marks data-only
/// layers), `mount(2)` splits options at `,`, and `\` escapes either; the
/// kernel removes one `\` before any character. Also what a containerd
/// mount spec's `lowerdir=` must hold.
pub fn overlay_escape(path: &Path) -> OsString {
    let bytes = path.as_os_str().as_bytes();
    let mut out = Vec::with_capacity(bytes.len() + 4);
    for &b in bytes {
        if matches!(b, b'\\' | b':' | b',') {
            out.push(b'\\');
        }
        out.push(b);
    }
    OsString::from_vec(out)
}

/// How [`overlay`] passes the layers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum OverlayApi {
    /// `lowerdir+` when the kernel has it, else `Legacy`.
    Auto,
    /// One `lowerdir=` string through `mount(2)` (kernels < 6.8); chosen
    /// explicitly only by the tests of that path.
    #[cfg_attr(not(test), allow(dead_code))]
    Legacy,
}

/// Mounts overlayfs on `target`. `lowerdirs[0]` is the top layer (as in
/// `lowerdir=top:…:bottom`). With `upper = Some((upperdir, workdir))` the
/// mount is writable; without, at least two lower layers are needed
/// (overlayfs refuses one). `extra_opts` are overlay options, `key=value`
/// or bare flags (`index=off`, `userxattr`, `volatile`…).
///
/// Any number of layers works on Linux ≥ 6.8 (up to overlayfs's 500). On
/// older kernels the whole option string must fit in a page, else `E2BIG`.
/// Paths may contain `:` and `,` (they are escaped where the kernel splits
/// on them). A layer path of 256 bytes or more is passed as
/// `/proc/self/fd/N`, which is then what mountinfo shows for it.
pub fn mount_overlay(
    target: &Path,
    lowerdirs: &[PathBuf],
    upper: Option<(&Path, &Path)>,
    extra_opts: &[String],
) -> Result<()> {
    overlay(target, lowerdirs, upper, extra_opts, OverlayApi::Auto)
}

pub(crate) fn overlay(
    target: &Path,
    lowerdirs: &[PathBuf],
    upper: Option<(&Path, &Path)>,
    extra_opts: &[String],
    api: OverlayApi,
) -> Result<()> {
    if lowerdirs.is_empty() {
        return Err(Error::invalid(
            "mount overlay",
            target,
            "no lower directory",
            Errno::INVAL,
        ));
    }
    if api == OverlayApi::Auto && lowerdir_plus_cached() {
        overlay_fsconfig(target, lowerdirs, upper, extra_opts)
    } else {
        overlay_legacy(target, lowerdirs, upper, extra_opts)
    }
}

/// Whether overlayfs takes `lowerdir+`, asked once per process: a kernel
/// capability cannot change while we run (unlike containerd's `forceloop`,
/// this caches what the kernel can do, not that one mount failed).
fn lowerdir_plus_cached() -> bool {
    static PLUS: OnceLock<bool> = OnceLock::new();
    *PLUS.get_or_init(|| crate::probe::overlay_supports_lowerdir_plus().unwrap_or(false))
}

fn overlay_fsconfig(
    target: &Path,
    lowerdirs: &[PathBuf],
    upper: Option<(&Path, &Path)>,
    extra_opts: &[String],
) -> Result<()> {
    let what = format!("({} layers)", lowerdirs.len());
    let mut ctx = FsContext::open("overlay", what, target)?;
    // What mountinfo shows as the source, as with `mount -t overlay overlay`.
    ctx.set_string("source", b"overlay")?;
    for dir in lowerdirs {
        // lowerdir+ takes one path and does no unescaping.
        ctx.set_path("lowerdir+", dir, dir.as_os_str().as_bytes())?;
    }
    if let Some((upperdir, workdir)) = upper {
        // upperdir/workdir values are unescaped by overlayfs.
        ctx.set_path("upperdir", upperdir, overlay_escape(upperdir).as_bytes())?;
        ctx.set_path("workdir", workdir, overlay_escape(workdir).as_bytes())?;
    }
    for opt in extra_opts {
        ctx.set_option(opt)?;
    }
    ctx.attach(MountAttrFlags::empty())
}

fn overlay_legacy(
    target: &Path,
    lowerdirs: &[PathBuf],
    upper: Option<(&Path, &Path)>,
    extra_opts: &[String],
) -> Result<()> {
    // containerd's order: workdir, upperdir, lowerdir, then the rest.
    let mut data = Vec::new();
    if let Some((upperdir, workdir)) = upper {
        push_opt(&mut data, b"workdir=", overlay_escape(workdir).as_bytes());
        push_opt(&mut data, b"upperdir=", overlay_escape(upperdir).as_bytes());
    }
    let mut lower = Vec::new();
    for (i, dir) in lowerdirs.iter().enumerate() {
        if i > 0 {
            lower.push(b':');
        }
        lower.extend_from_slice(overlay_escape(dir).as_bytes());
    }
    push_opt(&mut data, b"lowerdir=", &lower);
    for opt in extra_opts {
        push_opt(&mut data, opt.as_bytes(), b"");
    }
    let data = mount_data(data, "mount overlay", target)?;
    rustix::mount::mount(
        "overlay",
        target,
        "overlay",
        MountFlags::empty(),
        data.as_c_str(),
    )
    .map_err(|errno| Error::Mount {
        fs: "overlay",
        what: format!("({} layers)", lowerdirs.len()),
        target: target.to_owned(),
        step: "mount(2)".to_owned(),
        errno,
        kernel_log: String::new(),
    })
}

/// Bind-mounts `src` on `target` (not recursive: submounts of `src` are
/// not carried over). With `read_only`, the bind is then remounted
/// read-only, keeping the source's nosuid/nodev/noexec, which the kernel
/// would otherwise refuse to drop in a user namespace; if that fails the
/// bind is undone, so a read-only request never leaves a writable mount.
pub fn mount_bind(src: &Path, target: &Path, read_only: bool) -> Result<()> {
    let fail = |step: &str, errno| Error::Mount {
        fs: "bind",
        what: src.display().to_string(),
        target: target.to_owned(),
        step: step.to_owned(),
        errno,
        kernel_log: String::new(),
    };
    rustix::mount::mount_bind(src, target).map_err(|e| fail("mount --bind", e))?;
    if !read_only {
        return Ok(());
    }
    let remount = rustix::fs::statvfs(target).and_then(|vfs| {
        let mut flags = MountFlags::BIND | MountFlags::RDONLY;
        for (have, keep) in [
            (StatVfsMountFlags::NOSUID, MountFlags::NOSUID),
            (StatVfsMountFlags::NODEV, MountFlags::NODEV),
            (StatVfsMountFlags::NOEXEC, MountFlags::NOEXEC),
        ] {
            if vfs.f_flag.contains(have) {
                flags |= keep;
            }
        }
        rustix::mount::mount_remount(target, flags, "")
    });
    if let Err(e) = remount {
        let _ = rustix::mount::unmount(target, UnmountFlags::DETACH | UnmountFlags::NOFOLLOW);
        return Err(fail("remount read-only", e));
    }
    Ok(())
}

/// Unmounts `target` (never following a symlink there). If it is busy and
/// `detach_on_busy`, detaches it instead (`MNT_DETACH`): gone from the
/// namespace now, released when its last user goes. `EINVAL` in the error
/// means `target` was not a mount point.
pub fn unmount(target: &Path, detach_on_busy: bool) -> Result<()> {
    match rustix::mount::unmount(target, UnmountFlags::NOFOLLOW) {
        Ok(()) => Ok(()),
        Err(Errno::BUSY) if detach_on_busy => {
            rustix::mount::unmount(target, UnmountFlags::NOFOLLOW | UnmountFlags::DETACH)
                .map_err(|e| Error::sys("umount (detach)", target, e))
        }
        Err(e) => Err(Error::sys("umount", target, e)),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
    use super::*;
    use crate::testutil::{Cleanup, require_root};

    #[test]
    fn escape_covers_every_separator() {
        let e = overlay_escape(Path::new("/a:b,c\\d::e"));
        assert_eq!(e.as_bytes(), b"/a\\:b\\,c\\\\d\\:\\:e");
        assert_eq!(overlay_escape(Path::new("/plain")).as_bytes(), b"/plain");
    }

    /// The pre-6.8 path (one `lowerdir=` string through mount(2)), forced
    /// on this kernel: escaping must survive both the option split at ','
    /// and the layer split at ':'.
    #[test]
    fn legacy_overlay_with_escaped_paths() {
        if !require_root() {
            return;
        }
        let t = Cleanup::new();
        let lowers: Vec<PathBuf> = ["l:1", "l,2", "l\\3", "l::4"]
            .iter()
            .enumerate()
            .map(|(i, n)| {
                let d = t.mkdir(n);
                std::fs::write(d.join(format!("f{i}")), n.as_bytes()).unwrap();
                std::fs::write(d.join("top"), n.as_bytes()).unwrap();
                d
            })
            .collect();
        let upper = t.mkdir("u:p,per");
        let work = t.mkdir("w:o,rk");
        let merged = t.mkdir("merged");
        overlay(
            &merged,
            &lowers,
            Some((&upper, &work)),
            &["index=off".to_owned()],
            OverlayApi::Legacy,
        )
        .unwrap();
        t.mounted(&merged);
        assert_eq!(std::fs::read(merged.join("top")).unwrap(), b"l:1");
        assert_eq!(std::fs::read(merged.join("f3")).unwrap(), b"l::4");
        std::fs::write(merged.join("new"), "x").unwrap();
        assert!(upper.join("new").exists());
        unmount(&merged, false).unwrap();
        t.assert_no_mounts();
    }

    #[test]
    fn legacy_overlay_refuses_more_than_a_page() {
        if !require_root() {
            return;
        }
        let t = Cleanup::new();
        let lowers: Vec<PathBuf> = (0..40)
            .map(|i| t.mkdir(format!("{}{i:03}", "z".repeat(120))))
            .collect();
        let merged = t.mkdir("merged");
        let err = overlay(&merged, &lowers, None, &[], OverlayApi::Legacy).unwrap_err();
        assert_eq!(err.errno(), Errno::TOOBIG, "{err}");
        assert!(err.to_string().contains("bytes"), "{err}");
        t.assert_no_mounts();
        // The same layers through lowerdir+ (where the kernel has it).
        if crate::probe::overlay_supports_lowerdir_plus().unwrap() {
            overlay(&merged, &lowers, None, &[], OverlayApi::Auto).unwrap();
            t.mounted(&merged);
            unmount(&merged, false).unwrap();
        }
        t.assert_no_mounts();
    }
}
