//! `merge`: the VM-mode metadata image (fsmeta) over a chain of layer
//! images, and optionally the VMDK descriptor and layers.manifest that
//! present fsmeta and layers to a VM as one disk. Every output is written
//! to a temporary file beside it and renamed into place only on success.

use std::fs::{File, Permissions};
use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use erofs::merge::MergeError;

#[derive(clap::Args)]
pub struct Args {
    /// The merged metadata image to write.
    #[arg(long)]
    out: PathBuf,
    /// Also write a VMDK descriptor of the disk "fsmeta, then the layers"
    /// (absolute paths, so it can be moved).
    #[arg(long)]
    vmdk: Option<PathBuf>,
    /// Also write the layers' absolute paths, one a line, oldest first.
    #[arg(long)]
    manifest: Option<PathBuf>,
    /// Layer images, oldest first (4 KiB blocks, no inline data).
    #[arg(required = true)]
    layers: Vec<PathBuf>,
}

fn secs(d: Duration) -> String {
    format!("{:.3}s", d.as_secs_f64())
}

fn parent_dir(p: &Path) -> &Path {
    match p.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    }
}

/// A temporary file beside `path`, readable by all like the layers it
/// describes (temporary files start 0600).
fn temp_beside(path: &Path) -> Result<tempfile::NamedTempFile> {
    let tmp = tempfile::Builder::new()
        .prefix(".merge-")
        .tempfile_in(parent_dir(path))
        .with_context(|| format!("creating a temporary file beside {}", path.display()))?;
    tmp.as_file()
        .set_permissions(Permissions::from_mode(0o644))
        .with_context(|| format!("chmod of the temporary file for {}", path.display()))?;
    Ok(tmp)
}

/// Write `bytes` to `path` through a temporary file in the same directory.
fn write_atomically(path: &Path, bytes: &[u8]) -> Result<()> {
    let mut tmp = temp_beside(path)?;
    tmp.write_all(bytes)
        .with_context(|| format!("writing {}", path.display()))?;
    tmp.persist(path)
        .with_context(|| format!("renaming into {}", path.display()))?;
    Ok(())
}

fn absolute(p: &Path) -> Result<PathBuf> {
    std::fs::canonicalize(p).with_context(|| format!("resolving {}", p.display()))
}

pub fn run(args: Args) -> Result<()> {
    let start = Instant::now();
    let files = args
        .layers
        .iter()
        .map(|p| File::open(p).with_context(|| format!("opening layer {}", p.display())))
        .collect::<Result<Vec<_>>>()?;
    let opened = start.elapsed();

    let tmp = temp_beside(&args.out)?;
    let (_, summary) = erofs::merge::build(&files, tmp.reopen()?).map_err(|e| {
        // Name the layer by its path; the library only knows its index.
        let layer = match &e {
            MergeError::Incompatible { layer, .. }
            | MergeError::Read { layer, .. }
            | MergeError::DirectoryCycle { layer, .. }
            | MergeError::Tree { layer, .. } => args.layers.get(*layer),
            _ => None,
        };
        match layer {
            Some(p) => anyhow::Error::new(e).context(format!("merging {}", p.display())),
            None => anyhow::Error::new(e).context("merging"),
        }
    })?;
    tmp.persist(&args.out)
        .with_context(|| format!("renaming into {}", args.out.display()))?;

    let described = Instant::now();
    if args.vmdk.is_some() || args.manifest.is_some() {
        let layers = args
            .layers
            .iter()
            .zip(&files)
            .map(|(p, f)| {
                let len = f
                    .metadata()
                    .with_context(|| format!("stat {}", p.display()))?
                    .len();
                Ok((absolute(p)?, len))
            })
            .collect::<Result<Vec<_>>>()?;
        if let Some(vmdk) = &args.vmdk {
            let text =
                erofs::vmdk::descriptor(&absolute(&args.out)?, summary.image.image_bytes, &layers)?;
            write_atomically(vmdk, text.as_bytes())?;
        }
        if let Some(manifest) = &args.manifest {
            let paths: Vec<&PathBuf> = layers.iter().map(|(p, _)| p).collect();
            write_atomically(manifest, erofs::vmdk::layers_manifest(&paths)?.as_bytes())?;
        }
    }

    let s = &summary.image;
    println!("layers: {}", summary.layers);
    println!(
        "inodes: {} (dirs {}, files {}, symlinks {}, special {})",
        s.inodes, s.directories, s.regular_files, s.symlinks, s.special_files
    );
    println!("hidden layer entries: {}", summary.hidden);
    println!("image bytes: {}", s.image_bytes);
    println!(
        "timings: open {} read {} write {} describe {}",
        secs(opened),
        secs(summary.read_time),
        secs(summary.write_time),
        secs(described.elapsed())
    );
    println!("total: {}", secs(start.elapsed()));
    Ok(())
}
