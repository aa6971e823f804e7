//! A minimal OCI image builder: layer directories become gzip'd tar
//! blobs, plus an image config, a manifest, `index.json` and `oci-layout`,
//! all packed into one OCI archive tar that `ctr images import` accepts.
//!
//! Layers are taken as they are on disk, so an OCI whiteout is simply an
//! empty file named `.wh.<name>` in a layer directory. Used by the
//! containerd integration test and, through `examples/oci_image.rs`, by
//! `scripts/demo.sh`; it returns errors instead of panicking so that it
//! can serve both.

use std::fs::{self, File};
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

pub const MEDIA_INDEX: &str = "application/vnd.oci.image.index.v1+json";
pub const MEDIA_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
pub const MEDIA_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
pub const MEDIA_LAYER_GZIP: &str = "application/vnd.oci.image.layer.v1.tar+gzip";

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

fn descriptor(media: &str, digest: &str, size: usize) -> String {
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

/// The uncompressed tar of a layer directory (ownership, modes and
/// mtimes as on disk; symlinks as symlinks).
pub fn layer_tar(dir: &Path) -> io::Result<Vec<u8>> {
    let mut b = tar::Builder::new(Vec::new());
    b.follow_symlinks(false);
    b.mode(tar::HeaderMode::Complete);
    for rel in walk(dir)? {
        b.append_path_with_name(dir.join(&rel), &rel)?;
    }
    b.into_inner()
}

fn gzip(data: &[u8]) -> io::Result<Vec<u8>> {
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    e.write_all(data)?;
    e.finish()
}

/// Build an OCI archive at `out` from `layers` (bottom first).
pub fn build_archive(spec: &ImageSpec, layers: &[&Path], out: &Path) -> io::Result<BuiltImage> {
    let mut blobs: Vec<(String, Vec<u8>)> = Vec::new();
    let mut layer_descs = Vec::new();
    let mut built = BuiltImage {
        manifest: String::new(),
        config: String::new(),
        layers: Vec::new(),
        diff_ids: Vec::new(),
        chain_ids: Vec::new(),
    };
    for dir in layers {
        let tar = layer_tar(dir)?;
        let diff_id = sha256_digest(&tar);
        let gz = gzip(&tar)?;
        let digest = sha256_digest(&gz);
        layer_descs.push(descriptor(MEDIA_LAYER_GZIP, &digest, gz.len()));
        let chain = match built.chain_ids.last() {
            None => diff_id.clone(),
            Some(prev) => sha256_digest(format!("{prev} {diff_id}").as_bytes()),
        };
        built.chain_ids.push(chain);
        built.diff_ids.push(diff_id);
        built.layers.push(digest.clone());
        blobs.push((digest, gz));
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
    let manifest = format!(
        "{{\"schemaVersion\":2,\"mediaType\":{},\"config\":{},\"layers\":[{}]}}",
        js(MEDIA_MANIFEST),
        descriptor(MEDIA_CONFIG, &built.config, config.len()),
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
    blobs.push((built.config.clone(), config.into_bytes()));
    blobs.push((built.manifest.clone(), manifest.into_bytes()));

    let mut ar = tar::Builder::new(io::BufWriter::new(File::create(out)?));
    add_entry(&mut ar, "oci-layout", br#"{"imageLayoutVersion":"1.0.0"}"#)?;
    add_entry(&mut ar, "blobs/", b"")?;
    add_entry(&mut ar, "blobs/sha256/", b"")?;
    for (digest, data) in &blobs {
        let hex = digest.trim_start_matches("sha256:");
        add_entry(&mut ar, &format!("blobs/sha256/{hex}"), data)?;
    }
    add_entry(&mut ar, "index.json", index.as_bytes())?;
    ar.into_inner()?
        .into_inner()
        .map_err(|e| e.into_error())?
        .sync_all()?;
    Ok(built)
}

/// A file (or, for a name ending in `/`, a directory) in the archive.
fn add_entry<W: Write>(ar: &mut tar::Builder<W>, name: &str, data: &[u8]) -> io::Result<()> {
    let mut h = tar::Header::new_ustar();
    h.set_size(data.len() as u64);
    if name.ends_with('/') {
        h.set_mode(0o755);
        h.set_entry_type(tar::EntryType::Directory);
    } else {
        h.set_mode(0o644);
        h.set_entry_type(tar::EntryType::Regular);
    }
    h.set_mtime(0);
    ar.append_data(&mut h, name, data)
}
