//! `convert`: one layer or directory into one image, written to a
//! temporary file beside the output and renamed into place only on
//! success, so a failed conversion never leaves a partial image.

use std::fs::File;
use std::io::{IsTerminal, Read};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use erofs::writer::{ImageWriter, WriterOptions};
use layer::compression;
use layer::convert::{ConvertOptions, ConvertReport, stream_chunks};

#[derive(clap::Args)]
pub struct Args {
    /// A tar, tar.gz or tar.zst file (detected by content), `-` for stdin,
    /// or a directory.
    input: PathBuf,
    /// The image to write.
    output: PathBuf,
    /// Store file tails inline after their inodes (smaller images; such
    /// layers cannot be merged into VM-mode metadata images).
    #[arg(long)]
    inline: bool,
    /// Write a tar index: 512-byte-block metadata followed by the raw tar,
    /// which holds the file data.
    #[arg(long)]
    tar_index: bool,
    /// Volume UUID (32 hex digits, dashes allowed). Default: derived from
    /// the layer's diffID, or all zeros for a directory.
    #[arg(long)]
    uuid: Option<String>,
    /// Refuse layers with more entries than this.
    #[arg(long, default_value_t = 1_000_000)]
    max_entries: u64,
}

fn parse_uuid(s: &str) -> Result<[u8; 16]> {
    let hex: String = s.chars().filter(|c| *c != '-').collect();
    let bytes = hex::decode(&hex).with_context(|| format!("--uuid {s}: not hex"))?;
    bytes
        .try_into()
        .map_err(|_| anyhow::anyhow!("--uuid {s}: need 16 bytes"))
}

/// Counts bytes read, for the progress bar.
struct Counting<R> {
    inner: R,
    count: Arc<AtomicU64>,
}

impl<R: Read> Read for Counting<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.count.fetch_add(n as u64, Ordering::Relaxed);
        Ok(n)
    }
}

/// A progress bar over the compressed input on a terminal; nothing
/// otherwise. Dropping it stops the bar.
struct Progress {
    stop: Option<std::sync::mpsc::Sender<()>>,
    handle: Option<std::thread::JoinHandle<()>>,
}

impl Progress {
    fn start(total: Option<u64>, count: Arc<AtomicU64>) -> Progress {
        if !std::io::stderr().is_terminal() {
            return Progress {
                stop: None,
                handle: None,
            };
        }
        let (tx, rx) = std::sync::mpsc::channel::<()>();
        let handle = std::thread::spawn(move || {
            let bar = match total {
                Some(t) => indicatif::ProgressBar::new(t),
                None => indicatif::ProgressBar::new_spinner(),
            };
            if let Ok(style) = indicatif::ProgressStyle::with_template(
                "{spinner} {bytes}/{total_bytes} {bytes_per_sec} {wide_bar} {eta}",
            ) {
                bar.set_style(style);
            }
            while rx.recv_timeout(Duration::from_millis(100)).is_err() {
                bar.set_position(count.load(Ordering::Relaxed));
            }
            bar.finish_and_clear();
        });
        Progress {
            stop: Some(tx),
            handle: Some(handle),
        }
    }
}

impl Drop for Progress {
    fn drop(&mut self) {
        self.stop.take();
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
    }
}

fn secs(d: Duration) -> String {
    format!("{:.3}s", d.as_secs_f64())
}

pub fn run(args: Args) -> Result<()> {
    let uuid = args.uuid.as_deref().map(parse_uuid).transpose()?;
    let out_dir = match args.output.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let tmp = tempfile::Builder::new()
        .prefix(".convert-")
        .tempfile_in(&out_dir)
        .with_context(|| format!("creating a temporary file in {}", out_dir.display()))?;
    let start = Instant::now();
    let is_dir = args.input != Path::new("-") && args.input.is_dir();
    if is_dir {
        if args.tar_index {
            bail!(
                "--tar-index needs a tar input, {} is a directory",
                args.input.display()
            );
        }
        let file = tmp.reopen()?;
        let mut writer = ImageWriter::new(
            file,
            WriterOptions {
                inline_data: args.inline,
                uuid: uuid.unwrap_or_default(),
                ..Default::default()
            },
        )?;
        let (tree, stats) = layer::dir::read_dir_tree(&args.input, &mut writer)
            .with_context(|| format!("reading {}", args.input.display()))?;
        let (_, summary) = writer.finish(&tree)?;
        println!("entries: {}", stats.entries);
        if stats.dropped_xattrs > 0 {
            println!(
                "dropped xattrs (namespace not storable): {}",
                stats.dropped_xattrs
            );
        }
        print_summary(&summary);
    } else {
        let (source, total): (Box<dyn Read + Send>, Option<u64>) = if args.input == Path::new("-") {
            (Box::new(std::io::stdin()), None)
        } else {
            let f = File::open(&args.input)
                .with_context(|| format!("opening {}", args.input.display()))?;
            let len = f.metadata().ok().map(|m| m.len());
            (Box::new(f), len)
        };
        let count = Arc::new(AtomicU64::new(0));
        let progress = Progress::start(total, count.clone());
        let counted = Counting {
            inner: source,
            count,
        };
        let (compression, decoded) =
            compression::open_reader(counted).context("reading the layer's first bytes")?;
        // Two threads, one reading (and inflating), one parsing and
        // writing; the diffID is hashed by whichever of them is waiting.
        let (pipe, producer) = layer::pipeline::spawn("inflate", decoded, true)?;
        let opts = ConvertOptions {
            inline_data: args.inline,
            compute_diff_id: false,
            tar_index: args.tar_index,
            limits: layer::tar::Limits {
                max_entries: args.max_entries,
                ..Default::default()
            },
            ..Default::default()
        };
        let waited = pipe.wait_clock();
        let streamed = stream_chunks(pipe, tmp.reopen()?, &out_dir, &opts);
        let inflate = producer
            .join()
            .map_err(|_| anyhow::anyhow!("inflate thread panicked"))?;
        drop(progress);
        let (_, report) = streamed
            .and_then(|s| s.finish(uuid, inflate.digest))
            .with_context(|| format!("converting {}", args.input.display()))?;
        let timings = Timings {
            inflate: inflate.busy,
            hash: inflate.hashing,
            convert: report.convert.saturating_sub(waited.get()),
            metadata: report.finish,
        };
        print_report(compression.name(), &report, &timings);
    }
    tmp.persist(&args.output)
        .with_context(|| format!("renaming into {}", args.output.display()))?;
    println!("total: {}", secs(start.elapsed()));
    Ok(())
}

fn print_summary(s: &erofs::writer::Summary) {
    println!(
        "inodes: {} (dirs {}, files {}, symlinks {}, special {})",
        s.inodes, s.directories, s.regular_files, s.symlinks, s.special_files
    );
    println!("file bytes: {}", s.file_bytes);
    println!("metadata bytes: {}", s.metadata_bytes);
    println!("image bytes: {}", s.image_bytes);
}

/// Each stage's own time: reading and inflating, the diffID (on either
/// thread), parsing and writing file data (not counting waits for the
/// inflate thread), metadata.
struct Timings {
    inflate: Duration,
    hash: Duration,
    convert: Duration,
    metadata: Duration,
}

fn print_report(compression: &str, r: &ConvertReport, t: &Timings) {
    if let Some(d) = &r.diff_id {
        println!("diffid: {d}");
    }
    println!("compression: {compression}");
    println!("tar bytes: {}", r.tar_bytes);
    println!(
        "entries: {} (whiteouts {}, opaque dirs {})",
        r.entries, r.whiteouts, r.opaque_dirs
    );
    if r.dropped_xattrs > 0 {
        println!(
            "dropped xattrs (namespace not storable): {}",
            r.dropped_xattrs
        );
    }
    print_summary(&r.summary);
    println!(
        "timings: inflate {} hash {} convert {} metadata {}",
        secs(t.inflate),
        secs(t.hash),
        secs(t.convert),
        secs(t.metadata)
    );
}
