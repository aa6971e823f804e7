//! A minimal OCI image builder: layer directories (or ready-made layer
//! blobs) plus an image config, a manifest, `index.json` and `oci-layout`,
//! written either as an OCI layout directory (what `skopeo copy oci:DIR`
//! pushes to a registry) or packed into one OCI archive tar that
//! `ctr images import` accepts.
//!
//! Layers are taken as they are on disk, so an OCI whiteout is simply an
//! empty file named `.wh.<name>` in a layer directory. Layer tars are
//! streamed into their compressor, never held in memory, so a rootfs of
//! any size can become a layer. Used by the containerd integration tests
//! and, through `examples/oci_image.rs` and `examples/test_images.rs`, by
//! `scripts/demo.sh` and `bench/pull.sh`; it returns errors instead of
//! panicking so that it can serve all of them.

use std::fs::{self, File};
use std::io::{self, BufWriter, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};

use sha2::{Digest, Sha256};

pub const MEDIA_INDEX: &str = "application/vnd.oci.image.index.v1+json";
pub const MEDIA_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
pub const MEDIA_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
pub const MEDIA_LAYER_GZIP: &str = "application/vnd.oci.image.layer.v1.tar+gzip";
pub const MEDIA_LAYER_ZSTD: &str = "application/vnd.oci.image.layer.v1.tar+zstd";

/// What goes into the image besides its layers.
#[derive(Debug, Clone)]
pub struct ImageSpec {
    /// Full reference, e.g. `localhost/erofs-test:1`; becomes the image
    /// name in containerd.
    pub name: String,
    /// `config.Cmd`.
    pub cmd: Vec<String>,
    /// `config.Env`.
    pub env: Vec<String>,
}

impl ImageSpec {
    pub fn new(name: &str, cmd: &[&str]) -> ImageSpec {
        ImageSpec {
            name: name.to_string(),
            cmd: cmd.iter().map(|s| s.to_string()).collect(),
            env: vec!["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin".into()],
        }
    }
}

/// How a layer blob is compressed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Compression {
    Gzip,
    /// By the `zstd` command (scripts/setup.sh installs it): the tests
    /// need no zstd encoder of their own for the one image that uses it.
    Zstd,
}

impl Compression {
    pub fn media_type(self) -> &'static str {
        match self {
            Compression::Gzip => MEDIA_LAYER_GZIP,
            Compression::Zstd => MEDIA_LAYER_ZSTD,
        }
    }
}

/// A compressed layer blob on disk and what a manifest and a config say
/// about it.
#[derive(Debug, Clone)]
pub struct Layer {
    pub blob: PathBuf,
    pub media_type: &'static str,
    /// `sha256:<hex>` of the blob.
    pub digest: String,
    pub size: u64,
    /// `sha256:<hex>` of the uncompressed tar.
    pub diff_id: String,
}

impl Layer {
    /// A blob made elsewhere, whose uncompressed tar has `diff_id`.
    pub fn prebuilt(blob: &Path, media_type: &'static str, diff_id: &str) -> io::Result<Layer> {
        Ok(Layer {
            blob: blob.to_path_buf(),
            media_type,
            digest: sha256_file(blob)?,
            size: fs::metadata(blob)?.len(),
            diff_id: diff_id.to_string(),
        })
    }
}

/// Digests of what was built (`sha256:<hex>`).
#[derive(Debug, Clone)]
pub struct BuiltImage {
    pub manifest: String,
    pub config: String,
    /// Per layer: the compressed blob's digest.
    pub layers: Vec<String>,
    /// Per layer: the uncompressed tar's digest.
    pub diff_ids: Vec<String>,
    /// Per layer: the chain ID (what containerd names the committed
    /// snapshot of the layer stack up to and including it).
    pub chain_ids: Vec<String>,
}

/// GOARCH of the host, as image configs and containerd spell it.
pub fn goarch() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        "x86" => "386",
        "powerpc64" => "ppc64le",
        other => other,
    }
}

fn sha256_digest(b: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(b)))
}

/// `sha256:<hex>` of a file's contents.
pub fn sha256_file(path: &Path) -> io::Result<String> {
    let mut f = File::open(path)?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f.read(&mut buf)?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    Ok(format!("sha256:{}", hex::encode(h.finalize())))
}

/// A JSON string literal.
fn js(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if (c as u32) < 0x20 => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

fn js_array(items: &[String]) -> String {
    let v: Vec<String> = items.iter().map(|s| js(s)).collect();
    format!("[{}]", v.join(","))
}

fn descriptor(media: &str, digest: &str, size: u64) -> String {
    format!(
        "{{\"mediaType\":{},\"digest\":{},\"size\":{size}}}",
        js(media),
        js(digest)
    )
}

/// Entries of `dir`, recursively, relative and sorted (parents before
/// their children), without following symlinks.
fn walk(dir: &Path) -> io::Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    let mut stack = vec![PathBuf::new()];
    while let Some(rel) = stack.pop() {
        let mut names: Vec<_> = fs::read_dir(dir.join(&rel))?
            .map(|e| e.map(|e| e.file_name()))
            .collect::<io::Result<_>>()?;
        names.sort();
        let mut subdirs = Vec::new();
        for n in names {
            let r = rel.join(&n);
            if fs::symlink_metadata(dir.join(&r))?.is_dir() {
                subdirs.push(r.clone());
            }
            out.push(r);
        }
        // Each directory is listed before its children.
        stack.extend(subdirs.into_iter().rev());
    }
    Ok(out)
}

/// Passes bytes on and hashes them: the layer's diffID is the digest of
/// the tar before compression.
struct HashingWriter<W> {
    inner: W,
    hash: Sha256,
}

impl<W: Write> Write for HashingWriter<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hash.update(&buf[..n]);
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

/// Where a layer's tar goes: into a compressor that writes the blob.
enum Compressor {
    Gzip(Box<flate2::write::GzEncoder<BufWriter<File>>>),
    Zstd(Child, ChildStdin),
}

impl Compressor {
    fn new(compression: Compression, out: &Path) -> io::Result<Compressor> {
        let file = File::create(out)?;
        Ok(match compression {
            Compression::Gzip => Compressor::Gzip(Box::new(flate2::write::GzEncoder::new(
                BufWriter::new(file),
                flate2::Compression::default(),
            ))),
            Compression::Zstd => {
                let mut child = Command::new("zstd")
                    .args(["-q", "-3", "-c", "-"])
                    .stdin(Stdio::piped())
                    .stdout(file)
                    .spawn()
                    .map_err(|e| io::Error::new(e.kind(), format!("running zstd: {e}")))?;
                let stdin = child
                    .stdin
                    .take()
                    .ok_or_else(|| io::Error::other("zstd without stdin"))?;
                Compressor::Zstd(child, stdin)
            }
        })
    }

    /// Flush everything to the blob file and sync it.
    fn finish(self) -> io::Result<()> {
        match self {
            Compressor::Gzip(e) => e
                .finish()?
                .into_inner()
                .map_err(|e| e.into_error())?
                .sync_all(),
            Compressor::Zstd(mut child, stdin) => {
                drop(stdin);
                let status = child.wait()?;
                if status.success() {
                    Ok(())
                } else {
                    Err(io::Error::other(format!("zstd failed: {status}")))
                }
            }
        }
    }
}

impl Write for Compressor {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Compressor::Gzip(e) => e.write(buf),
            Compressor::Zstd(_, stdin) => stdin.write(buf),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        match self {
            Compressor::Gzip(e) => e.flush(),
            Compressor::Zstd(_, stdin) => stdin.flush(),
        }
    }
}

/// The layer blob of directory `dir` (ownership, modes and mtimes as on
/// disk; symlinks as symlinks; device nodes and fifos as such), written
/// to `out`.
pub fn layer_from_dir(dir: &Path, compression: Compression, out: &Path) -> io::Result<Layer> {
    let sink = HashingWriter {
        inner: Compressor::new(compression, out)?,
        hash: Sha256::new(),
    };
    let mut b = tar::Builder::new(sink);
    b.follow_symlinks(false);
    b.mode(tar::HeaderMode::Complete);
    for rel in walk(dir)? {
        let path = dir.join(&rel);
        let ft = fs::symlink_metadata(&path)?.file_type();
        if ft.is_file() || ft.is_dir() || ft.is_symlink() {
            b.append_path_with_name(path, &rel)?;
        } else {
            append_special(&mut b, &path, &rel)?;
        }
    }
    let sink = b.into_inner()?;
    let diff_id = format!("sha256:{}", hex::encode(sink.hash.finalize()));
    sink.inner.finish()?;
    Layer::prebuilt(out, compression.media_type(), &diff_id)
}

/// A device node or fifo under its archive name: tar's own
/// `append_path_with_name` names these by their host path.
fn append_special<W: Write>(b: &mut tar::Builder<W>, path: &Path, rel: &Path) -> io::Result<()> {
    use std::os::unix::fs::{FileTypeExt, MetadataExt};
    let st = fs::symlink_metadata(path)?;
    let ft = st.file_type();
    let kind = if ft.is_char_device() {
        tar::EntryType::Char
    } else if ft.is_block_device() {
        tar::EntryType::Block
    } else if ft.is_fifo() {
        tar::EntryType::Fifo
    } else {
        return Err(io::Error::other(format!(
            "{}: cannot be archived",
            path.display()
        )));
    };
    let mut h = tar::Header::new_gnu();
    h.set_metadata_in_mode(&st, tar::HeaderMode::Complete);
    h.set_entry_type(kind);
    h.set_size(0);
    let dev = st.rdev();
    h.set_device_major(rustix::fs::major(dev))?;
    h.set_device_minor(rustix::fs::minor(dev))?;
    b.append_data(&mut h, rel, io::empty())
}

/// Config, manifest and index of an image of `layers` (bottom first).
struct Metadata {
    built: BuiltImage,
    config: String,
    manifest: String,
    index: String,
}

fn metadata(spec: &ImageSpec, layers: &[Layer]) -> Metadata {
    let mut built = BuiltImage {
        manifest: String::new(),
        config: String::new(),
        layers: Vec::new(),
        diff_ids: Vec::new(),
        chain_ids: Vec::new(),
    };
    for l in layers {
        let chain = match built.chain_ids.last() {
            None => l.diff_id.clone(),
            Some(prev) => sha256_digest(format!("{prev} {}", l.diff_id).as_bytes()),
        };
        built.chain_ids.push(chain);
        built.diff_ids.push(l.diff_id.clone());
        built.layers.push(l.digest.clone());
    }
    let history: Vec<String> = (0..layers.len())
        .map(|i| format!("{{\"created_by\":{}}}", js(&format!("layer {}", i + 1))))
        .collect();
    let config = format!(
        "{{\"architecture\":{},\"os\":\"linux\",\"config\":{{\"Env\":{},\"Cmd\":{}}},\
         \"rootfs\":{{\"type\":\"layers\",\"diff_ids\":{}}},\"history\":[{}]}}",
        js(goarch()),
        js_array(&spec.env),
        js_array(&spec.cmd),
        js_array(&built.diff_ids),
        history.join(",")
    );
    built.config = sha256_digest(config.as_bytes());
    let layer_descs: Vec<String> = layers
        .iter()
        .map(|l| descriptor(l.media_type, &l.digest, l.size))
        .collect();
    let manifest = format!(
        "{{\"schemaVersion\":2,\"mediaType\":{},\"config\":{},\"layers\":[{}]}}",
        js(MEDIA_MANIFEST),
        descriptor(MEDIA_CONFIG, &built.config, config.len() as u64),
        layer_descs.join(",")
    );
    built.manifest = sha256_digest(manifest.as_bytes());
    let index = format!(
        "{{\"schemaVersion\":2,\"mediaType\":{},\"manifests\":[{{\"mediaType\":{},\
         \"digest\":{},\"size\":{},\"platform\":{{\"architecture\":{},\"os\":\"linux\"}},\
         \"annotations\":{{\"org.opencontainers.image.ref.name\":{}}}}}]}}",
        js(MEDIA_INDEX),
        js(MEDIA_MANIFEST),
        js(&built.manifest),
        manifest.len(),
        js(goarch()),
        js(&spec.name)
    );
    Metadata {
        built,
        config,
        manifest,
        index,
    }
}

const OCI_LAYOUT: &[u8] = br#"{"imageLayoutVersion":"1.0.0"}"#;

fn blob_name(digest: &str) -> String {
    format!("blobs/sha256/{}", digest.trim_start_matches("sha256:"))
}

/// Write an OCI layout directory `out` (created) for `layers` (bottom
/// first). Layer blobs are hard-linked when they are on the same
/// filesystem, else copied.
pub fn write_layout(spec: &ImageSpec, layers: &[Layer], out: &Path) -> io::Result<BuiltImage> {
    let m = metadata(spec, layers);
    fs::create_dir_all(out.join("blobs/sha256"))?;
    for l in layers {
        let dest = out.join(blob_name(&l.digest));
        if !dest.exists() && fs::hard_link(&l.blob, &dest).is_err() {
            fs::copy(&l.blob, &dest)?;
        }
    }
    fs::write(out.join(blob_name(&m.built.config)), &m.config)?;
    fs::write(out.join(blob_name(&m.built.manifest)), &m.manifest)?;
    fs::write(out.join("oci-layout"), OCI_LAYOUT)?;
    fs::write(out.join("index.json"), &m.index)?;
    Ok(m.built)
}

/// The layers of the image [`write_layout`] wrote to `layout` as `built`,
/// all of `media_type`, to build another image on top of them.
pub fn layout_layers(
    layout: &Path,
    built: &BuiltImage,
    media_type: &'static str,
) -> io::Result<Vec<Layer>> {
    built
        .layers
        .iter()
        .zip(&built.diff_ids)
        .map(|(digest, diff_id)| {
            Layer::prebuilt(&layout.join(blob_name(digest)), media_type, diff_id)
        })
        .collect()
}

/// Pack OCI layout directory `layout` into the OCI archive `out`
/// (`ctr images import`'s input): `oci-layout`, the blobs, `index.json`.
pub fn pack_layout(layout: &Path, out: &Path) -> io::Result<()> {
    let mut ar = tar::Builder::new(BufWriter::new(File::create(out)?));
    add_entry(&mut ar, "oci-layout", OCI_LAYOUT)?;
    add_entry(&mut ar, "blobs/", b"")?;
    add_entry(&mut ar, "blobs/sha256/", b"")?;
    let mut blobs: Vec<_> = fs::read_dir(layout.join("blobs/sha256"))?
        .map(|e| e.map(|e| e.file_name()))
        .collect::<io::Result<_>>()?;
    blobs.sort();
    for name in blobs {
        let path = layout.join("blobs/sha256").join(&name);
        let mut h = entry_header(fs::metadata(&path)?.len(), false);
        let name = format!("blobs/sha256/{}", name.to_string_lossy());
        ar.append_data(&mut h, name, File::open(&path)?)?;
    }
    add_entry(&mut ar, "index.json", &fs::read(layout.join("index.json"))?)?;
    ar.into_inner()?
        .into_inner()
        .map_err(|e| e.into_error())?
        .sync_all()
}

/// Build an OCI archive at `out` from layer directories (bottom first),
/// gzip-compressed; the layout is staged next to `out` meanwhile.
pub fn build_archive(spec: &ImageSpec, layers: &[&Path], out: &Path) -> io::Result<BuiltImage> {
    let parent = out.parent().unwrap_or(Path::new("."));
    let staging = tempfile::Builder::new()
        .prefix(".oci-layout.")
        .tempdir_in(parent)?;
    let mut built_layers = Vec::new();
    for (i, dir) in layers.iter().enumerate() {
        let blob = staging.path().join(format!("layer{i}"));
        built_layers.push(layer_from_dir(dir, Compression::Gzip, &blob)?);
    }
    let layout = staging.path().join("layout");
    let built = write_layout(spec, &built_layers, &layout)?;
    pack_layout(&layout, out)?;
    Ok(built)
}

fn entry_header(size: u64, dir: bool) -> tar::Header {
    let mut h = tar::Header::new_ustar();
    h.set_size(size);
    if dir {
        h.set_mode(0o755);
        h.set_entry_type(tar::EntryType::Directory);
    } else {
        h.set_mode(0o644);
        h.set_entry_type(tar::EntryType::Regular);
    }
    h.set_mtime(0);
    h
}

/// A file (or, for a name ending in `/`, a directory) in the archive.
fn add_entry<W: Write>(ar: &mut tar::Builder<W>, name: &str, data: &[u8]) -> io::Result<()> {
    let mut h = entry_header(data.len() as u64, name.ends_with('/'));
    ar.append_data(&mut h, name, data)
}
