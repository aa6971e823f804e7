//! `inspect` and `fsck`: read-only views of an image through the bounded
//! reader, safe on untrusted images.

use std::fs::File;
use std::io::Write;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use erofs::format;
use erofs::fsck::{CheckOptions, check};
use erofs::reader::{DeviceReader, Image, Inode};

#[derive(clap::Args)]
pub struct InspectArgs {
    image: PathBuf,
    /// List a directory (default `/`) like `ls -l`, with xattrs.
    #[arg(long, num_args = 0..=1, default_missing_value = "/")]
    ls: Option<PathBuf>,
    /// Write a file's content to stdout.
    #[arg(long)]
    cat: Option<PathBuf>,
    /// Extra device (a tar-index layer's tar, a merged image's layers),
    /// in device-table order. Without it, data is read from the image
    /// as if the devices were appended to it.
    #[arg(long)]
    device: Vec<PathBuf>,
}

#[derive(clap::Args)]
pub struct FsckArgs {
    image: PathBuf,
    /// Extra device, in device-table order.
    #[arg(long)]
    device: Vec<PathBuf>,
    /// Only check structure; skip reading every data extent.
    #[arg(long)]
    no_data: bool,
}

fn open(image: &Path, devices: &[PathBuf]) -> Result<Image<File>> {
    let img = Image::open(image).with_context(|| image.display().to_string())?;
    if devices.is_empty() {
        return Ok(img);
    }
    let readers = devices
        .iter()
        .map(|p| {
            File::open(p)
                .map(|f| Box::new(f) as DeviceReader)
                .with_context(|| format!("opening device {}", p.display()))
        })
        .collect::<Result<Vec<_>>>()?;
    img.with_devices(readers)
        .with_context(|| image.display().to_string())
}

fn lookup(img: &Image<File>, path: &Path) -> Result<Inode> {
    let nid = img
        .lookup(path.as_os_str().as_bytes())?
        .with_context(|| format!("{}: no such entry", path.display()))?;
    Ok(img.inode(nid)?)
}

pub fn inspect(a: InspectArgs) -> Result<()> {
    let img = open(&a.image, &a.device)?;
    if let Some(path) = &a.cat {
        let inode = lookup(&img, path)?;
        if (inode.mode() & format::S_IFMT) != format::S_IFREG {
            bail!("{}: not a regular file", path.display());
        }
        let mut out = std::io::stdout().lock();
        let mut buf = erofs::pagebuf::PageBuf::new(1 << 20);
        let mut pos = 0;
        while pos < inode.size() {
            let n = img.read_data(&inode, pos, &mut buf)?;
            if n == 0 {
                bail!("{}: data ends at {pos} of {}", path.display(), inode.size());
            }
            out.write_all(&buf[..n])?;
            pos += n as u64;
        }
        return Ok(());
    }
    if let Some(path) = &a.ls {
        let dir = lookup(&img, path)?;
        if !dir.is_dir() {
            print_entry(&img, &dir, path.as_os_str().as_bytes())?;
            return Ok(());
        }
        for e in img.read_dir(&dir)? {
            let inode = img.inode(e.nid)?;
            print_entry(&img, &inode, &e.name)?;
        }
        return Ok(());
    }
    let sb = img.superblock();
    println!("block size: {}", img.block_size());
    println!("blocks: {}", sb.blocks);
    println!("inodes: {}", sb.inos);
    println!("root nid: {}", sb.root_nid);
    println!("meta blkaddr: {}", sb.meta_blkaddr);
    println!("epoch: {}.{:09}", sb.epoch, sb.fixed_nsec);
    println!("feature compat: {:#x}", sb.feature_compat);
    println!("feature incompat: {:#x}", sb.feature_incompat);
    println!("uuid: {}", hex::encode(sb.uuid));
    for (i, d) in img.devices().iter().enumerate() {
        let tag_len = d.tag.iter().position(|&b| b == 0).unwrap_or(d.tag.len());
        println!(
            "device {}: blocks {} uniaddr {} tag {:?}",
            i + 1,
            d.blocks,
            d.uniaddr,
            String::from_utf8_lossy(&d.tag[..tag_len])
        );
    }
    Ok(())
}

fn type_char(mode: u16) -> char {
    match mode & format::S_IFMT {
        format::S_IFDIR => 'd',
        format::S_IFLNK => 'l',
        format::S_IFCHR => 'c',
        format::S_IFBLK => 'b',
        format::S_IFIFO => 'p',
        format::S_IFSOCK => 's',
        _ => '-',
    }
}

fn perm_string(mode: u16) -> String {
    let mut s = String::with_capacity(9);
    for (shift, special, set, unset) in [
        (6, 0o4000, 's', 'S'),
        (3, 0o2000, 's', 'S'),
        (0, 0o1000, 't', 'T'),
    ] {
        let bits = (mode >> shift) & 7;
        s.push(if bits & 4 != 0 { 'r' } else { '-' });
        s.push(if bits & 2 != 0 { 'w' } else { '-' });
        s.push(match (bits & 1 != 0, mode & special != 0) {
            (true, true) => set,
            (false, true) => unset,
            (true, false) => 'x',
            (false, false) => '-',
        });
    }
    s
}

fn print_entry(img: &Image<File>, inode: &Inode, name: &[u8]) -> Result<()> {
    let mode = inode.mode();
    let size = match inode.rdev() {
        Some((major, minor)) => format!("{major}, {minor}"),
        None => inode.size().to_string(),
    };
    let (mtime, nsec) = inode.mtime();
    let mut line = format!(
        "{}{} {:>3} {:>5} {:>5} {:>10} {}.{:09} {}",
        type_char(mode),
        perm_string(mode),
        inode.nlink(),
        inode.uid(),
        inode.gid(),
        size,
        mtime,
        nsec,
        String::from_utf8_lossy(name).escape_debug()
    );
    if (mode & format::S_IFMT) == format::S_IFLNK {
        let target = img.symlink_target(inode)?;
        line.push_str(&format!(
            " -> {}",
            String::from_utf8_lossy(&target).escape_debug()
        ));
    }
    println!("{line}");
    for x in inode.xattrs() {
        let value = match std::str::from_utf8(&x.value) {
            Ok(s) if !s.chars().any(char::is_control) => format!("{s:?}"),
            _ => format!("0x{}", hex::encode(&x.value)),
        };
        println!("    {}={}", String::from_utf8_lossy(&x.name), value);
    }
    Ok(())
}

pub fn fsck(a: FsckArgs) -> Result<()> {
    let img = open(&a.image, &a.device)?;
    let opts = CheckOptions {
        // Link counts are part of what we verify: hostile images with
        // wrong counts are refused, not warned about.
        strict_nlink: true,
        read_data: !a.no_data,
        ..CheckOptions::default()
    };
    let report = check(&img, &opts).with_context(|| a.image.display().to_string())?;
    for w in &report.warnings {
        eprintln!("warning: {w}");
    }
    println!(
        "{}: ok: {} inodes ({} dirs, {} files, {} symlinks, {} special), {} file bytes, depth {}",
        a.image.display(),
        report.inodes,
        report.directories,
        report.regular_files,
        report.symlinks,
        report.char_devices + report.block_devices + report.fifos + report.sockets,
        report.file_bytes,
        report.max_depth
    );
    Ok(())
}
