//! The images the pull tests and `bench/pull.sh` pull, as OCI layout
//! directories, each with what a container started from it must see.
//!
//! - `whiteouts`: three small layers deleting files and directories with
//!   whiteouts, recreating a deleted directory, and hiding lower content
//!   with opaque directories (one of them across two lower layers);
//! - `many`: 42 generated layers adding, changing and deleting files;
//! - `small`: the debootstrap minbase rootfs as one layer;
//! - `large`: the ≥ 1 GB benchmark layer of `scripts/bench-layer.sh`.
//!
//! The generated images come with a model of their merged view, computed
//! from the layers' operations; the rootfs ones with the rootfs itself.
//! The expensive ones are cached below `.cache/images` (git-ignored).
//! Uses only `oci.rs` (no test helpers), so that the `test_images`
//! example can build the same images for the benchmark.

use std::collections::BTreeMap;
use std::fs;
use std::io;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use crate::oci::{self, BuiltImage, Compression, ImageSpec, Layer};

/// An image on disk and what to check in a container started from it.
pub struct TestImage {
    /// Repository name in the test registry.
    pub name: String,
    /// OCI layout directory.
    pub layout: PathBuf,
    pub built: BuiltImage,
    pub check: Check,
}

/// What a container must see: `list` roots are compared entry by entry
/// (kind and path), files below the `sum` roots by their SHA-256 too.
pub struct Check {
    pub list: Vec<String>,
    pub sum: Vec<String>,
    /// Path → `d`, `l`, `f` or, below a `sum` root, the file's hex SHA-256.
    pub expected: BTreeMap<String, String>,
}

impl Check {
    /// A `sh` script printing what [`Check::compare`] reads: one `K PATH`
    /// line per entry, `HEX  PATH` per summed file (sha256sum's format).
    pub fn script(&self) -> String {
        let list = self.list.join(" ");
        let mut s = String::from("set -e\n");
        for kind in ["d", "l", "f"] {
            s.push_str(&format!("find {list} -type {kind} | sed 's|^|{kind} |'\n"));
        }
        if !self.sum.is_empty() {
            s.push_str(&format!(
                "find {} -type f -exec sha256sum {{}} +\n",
                self.sum.join(" ")
            ));
        }
        s.push_str("echo check-done\n");
        s
    }

    /// The differences between the script's output and the expectation,
    /// at most 40 of them, or None.
    pub fn compare(&self, output: &str) -> Option<String> {
        let mut seen: BTreeMap<String, String> = BTreeMap::new();
        let mut done = false;
        for line in output.lines() {
            if line == "check-done" {
                done = true;
            } else if let Some((k, p)) = line.split_once(' ')
                && k.len() == 1
            {
                seen.entry(p.to_string()).or_insert_with(|| k.to_string());
            } else if let Some((hex, p)) = line.split_once("  ") {
                seen.insert(p.to_string(), hex.to_string());
            } else {
                return Some(format!("unexpected output line {line:?}"));
            }
        }
        if !done {
            return Some("the check script did not finish".into());
        }
        self.differences(&seen)
    }

    /// [`Check::compare`] for a tree seen from the host (a mounted image):
    /// what the script would print there, computed by walking it.
    pub fn compare_tree(&self, root: &Path) -> io::Result<Option<String>> {
        let list: Vec<&str> = self.list.iter().map(String::as_str).collect();
        let sum: Vec<&str> = self.sum.iter().map(String::as_str).collect();
        let seen = rootfs_check(root, &list, &sum)?.expected;
        Ok(self.differences(&seen))
    }

    /// What `seen` (path → kind or hash) lacks, has in addition or has
    /// differently from the expectation, at most 40 of them, or None.
    fn differences(&self, seen: &BTreeMap<String, String>) -> Option<String> {
        let mut diffs = Vec::new();
        for (p, want) in &self.expected {
            match seen.get(p) {
                None => diffs.push(format!("missing {p} ({want})")),
                Some(got) if got != want => diffs.push(format!("{p}: want {want}, got {got}")),
                Some(_) => {}
            }
        }
        for (p, got) in seen {
            if !self.expected.contains_key(p) {
                diffs.push(format!("unexpected {p} ({got})"));
            }
        }
        let n = diffs.len();
        if n == 0 {
            return None;
        }
        diffs.truncate(40);
        Some(format!("{n} differences:\n  {}", diffs.join("\n  ")))
    }
}

/// `.cache/images` of the workspace.
pub fn cache_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../.cache/images")
}

fn hex_sha256(path: &Path) -> io::Result<String> {
    Ok(oci::sha256_file(path)?
        .trim_start_matches("sha256:")
        .to_string())
}

// ---------------------------------------------------------------------------
// Generated images: layers as operations, and the model of the merged view.
// ---------------------------------------------------------------------------

/// One change a layer makes (paths relative, without a leading `/`).
enum Op {
    File(String, Vec<u8>),
    /// A copy of a host file (busybox).
    HostFile(String, PathBuf),
    Symlink(String, String),
    Dir(String, u32),
    /// `.wh.<name>`: the path and everything below it is deleted.
    Whiteout(String),
    /// `.wh..wh..opq`: the lower layers' entries below the directory are
    /// hidden.
    Opaque(String),
}

/// Busybox applets the check script and the tests use.
const APPLETS: &[&str] = &[
    "sh",
    "cat",
    "echo",
    "find",
    "ls",
    "sed",
    "sha256sum",
    "sort",
    "true",
    "xargs",
];

fn busybox_ops() -> Vec<Op> {
    let mut ops = vec![Op::HostFile("bin/busybox".into(), "/bin/busybox".into())];
    ops.extend(
        APPLETS
            .iter()
            .map(|a| Op::Symlink(format!("bin/{a}"), "busybox".into())),
    );
    ops.push(Op::Dir("tmp".into(), 0o1777));
    ops
}

/// Path → kind or hash, as [`Check::expected`] spells it (without the
/// leading `/`).
type Model = BTreeMap<String, String>;

fn remove_below(model: &mut Model, dir: &str) {
    let prefix = format!("{dir}/");
    model.retain(|p, _| !p.starts_with(&prefix));
}

fn add_parents(model: &mut Model, path: &str) {
    let mut at = 0;
    while let Some(i) = path[at..].find('/') {
        model.insert(path[..at + i].to_string(), "d".into());
        at += i + 1;
    }
}

/// Write one layer directory and apply it to the model: deletions first
/// (they only concern lower layers), then additions.
fn apply(ops: &[Op], dir: &Path, model: &mut Model) -> io::Result<()> {
    let on_disk = |p: &str| dir.join(p);
    let make_parent =
        |p: &Path| -> io::Result<()> { fs::create_dir_all(p.parent().unwrap_or(dir)) };
    for op in ops {
        match op {
            Op::Whiteout(p) => {
                model.remove(p);
                remove_below(model, p);
                add_parents(model, p);
                let (parent, name) = p.rsplit_once('/').unwrap_or(("", p));
                let wh = dir.join(parent).join(format!(".wh.{name}"));
                make_parent(&wh)?;
                fs::write(wh, "")?;
            }
            Op::Opaque(p) => {
                remove_below(model, p);
                add_parents(model, p);
                model.insert(p.clone(), "d".into());
                fs::create_dir_all(on_disk(p))?;
                fs::write(on_disk(p).join(".wh..wh..opq"), "")?;
            }
            _ => {}
        }
    }
    for op in ops {
        let (path, kind) = match op {
            Op::File(p, data) => {
                make_parent(&on_disk(p))?;
                fs::write(on_disk(p), data)?;
                (p, "f")
            }
            Op::HostFile(p, src) => {
                make_parent(&on_disk(p))?;
                fs::copy(src, on_disk(p))?;
                (p, "f")
            }
            Op::Symlink(p, target) => {
                make_parent(&on_disk(p))?;
                std::os::unix::fs::symlink(target, on_disk(p))?;
                (p, "l")
            }
            Op::Dir(p, mode) => {
                fs::create_dir_all(on_disk(p))?;
                fs::set_permissions(on_disk(p), fs::Permissions::from_mode(*mode))?;
                (p, "d")
            }
            Op::Whiteout(_) | Op::Opaque(_) => continue,
        };
        add_parents(model, path);
        model.insert(path.clone(), kind.into());
    }
    Ok(())
}

/// Build a generated image's layers in `work` and its layout in
/// `work/layout`; `roots` (top-level directories) are checked, every
/// file below them by its hash.
fn generated(
    name: &str,
    layers: &[Vec<Op>],
    compression: Compression,
    roots: &[&str],
    work: &Path,
) -> io::Result<TestImage> {
    let mut model = Model::new();
    let mut built_layers: Vec<Layer> = Vec::new();
    for (i, ops) in layers.iter().enumerate() {
        let dir = work.join(format!("layer{}", i + 1));
        fs::create_dir_all(&dir)?;
        apply(ops, &dir, &mut model)?;
        let blob = work.join(format!("layer{}.blob", i + 1));
        built_layers.push(oci::layer_from_dir(&dir, compression, &blob)?);
    }
    let mut expected = BTreeMap::new();
    for (p, kind) in &model {
        if !roots
            .iter()
            .any(|r| p == r || p.starts_with(&format!("{r}/")))
        {
            continue;
        }
        let v = if kind == "f" {
            // Hashed from the layer that last wrote it: the highest one.
            let layer = (1..=layers.len())
                .rev()
                .map(|i| work.join(format!("layer{i}")).join(p))
                .find(|f| f.symlink_metadata().is_ok())
                .ok_or_else(|| io::Error::other(format!("{p} in no layer")))?;
            hex_sha256(&layer)?
        } else {
            kind.clone()
        };
        expected.insert(format!("/{p}"), v);
    }
    let roots: Vec<String> = roots.iter().map(|r| format!("/{r}")).collect();
    let spec = ImageSpec::new(&format!("localhost/{name}:1"), &["/bin/sh"]);
    let layout = work.join("layout");
    let built = oci::write_layout(&spec, &built_layers, &layout)?;
    Ok(TestImage {
        name: name.to_string(),
        layout,
        built,
        check: Check {
            list: roots.clone(),
            sum: roots,
            expected,
        },
    })
}

fn file(p: &str, data: &str) -> Op {
    Op::File(p.into(), data.as_bytes().to_vec())
}

/// Three layers of whiteouts and opaque directories (see the module
/// documentation), in `work`.
pub fn whiteouts(compression: Compression, work: &Path) -> io::Result<TestImage> {
    let mut l1 = busybox_ops();
    l1.extend([
        file("etc/motd", "motd from layer 1\n"),
        file("etc/doomed", "deleted by layer 2\n"),
        file("var/gone-dir/file", "deleted with its directory\n"),
        file("var/gone-dir/sub/deep", "deleted with its directory\n"),
        file("var/kept", "kept\n"),
        file("opt/old/a", "hidden by the opaque directory\n"),
        file("opt/old/sub/b", "hidden by the opaque directory\n"),
        file(
            "usr/share/keep/one",
            "hidden by layer 3's opaque directory\n",
        ),
        file("srv/a/x", "deleted by layer 2\n"),
    ]);
    let l2 = vec![
        file("etc/motd", "motd from layer 2\n"),
        Op::Whiteout("etc/doomed".into()),
        Op::Whiteout("var/gone-dir".into()),
        Op::Opaque("opt/old".into()),
        file("opt/old/new", "new\n"),
        file(
            "usr/share/keep/mid",
            "hidden by layer 3's opaque directory\n",
        ),
        Op::Whiteout("srv/a".into()),
        file("srv/b/y", "deleted by layer 3\n"),
    ];
    let l3 = vec![
        file("var/gone-dir/back", "a deleted directory made again\n"),
        file("opt/old/newer", "newer\n"),
        Op::Opaque("usr/share/keep".into()),
        file("usr/share/keep/two", "two\n"),
        Op::Whiteout("srv/b".into()),
        file("srv/c", "c\n"),
    ];
    let name = match compression {
        Compression::Gzip => "whiteouts",
        Compression::Zstd => "whiteouts-zstd",
    };
    generated(
        name,
        &[l1, l2, l3],
        compression,
        &["etc", "var", "opt", "usr", "srv"],
        work,
    )
}

/// `len` deterministic pseudo-random bytes (xorshift64*) for `seed`.
fn noise(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    (0..len)
        .map(|_| {
            x ^= x >> 12;
            x ^= x << 25;
            x ^= x >> 27;
            (x.wrapping_mul(0x2545_f491_4f6c_dd1d) >> 56) as u8
        })
        .collect()
}

/// Layers in the `many` image.
pub const MANY_LAYERS: usize = 42;

/// [`MANY_LAYERS`] layers: each adds a directory and a file of its own
/// and rewrites a shared file; every 5th deletes an earlier layer's
/// directory, every 7th one of the base files, every 9th makes a shared
/// directory opaque, every 11th changes an earlier layer's file.
pub fn many(work: &Path) -> io::Result<TestImage> {
    let mut l1 = busybox_ops();
    for f in 1..=8 {
        l1.push(Op::File(
            format!("data/base/f{f}"),
            noise(3000 * f, f as u64),
        ));
    }
    l1.push(file("data/opq/from-1", "1\n"));
    let mut layers = vec![l1];
    for i in 2..=MANY_LAYERS {
        let mut ops = vec![
            Op::File(
                format!("data/layer-{i}/file"),
                noise(1000 * i + i, 100 + i as u64),
            ),
            file("data/counter", &format!("{i}\n")),
        ];
        if i % 5 == 0 {
            ops.push(Op::Whiteout(format!("data/layer-{}", i - 3)));
        }
        if i % 7 == 0 {
            ops.push(Op::Whiteout(format!("data/base/f{}", i / 7)));
        }
        if i % 9 == 0 {
            ops.push(Op::Opaque("data/opq".into()));
            ops.push(file(&format!("data/opq/from-{i}"), &format!("{i}\n")));
        } else if i % 3 == 0 {
            ops.push(file(&format!("data/opq/add-{i}"), &format!("{i}\n")));
        }
        if i % 11 == 0 {
            ops.push(Op::File(
                format!("data/layer-{}/file", i - 1),
                noise(777, 1000 + i as u64),
            ));
        }
        layers.push(ops);
    }
    generated("many", &layers, Compression::Gzip, &["data"], work)
}

// ---------------------------------------------------------------------------
// Rootfs images, cached.
// ---------------------------------------------------------------------------

/// The expectation for a rootfs directory on the host: `list` roots by
/// kind, files below `sum` roots (or `sum` files) by hash.
fn rootfs_check(rootfs: &Path, list: &[&str], sum: &[&str]) -> io::Result<Check> {
    let mut expected = BTreeMap::new();
    let mut stack: Vec<String> = list.iter().map(|s| s.to_string()).collect();
    while let Some(p) = stack.pop() {
        let host = rootfs.join(p.trim_start_matches('/'));
        let ft = host.symlink_metadata()?.file_type();
        let summed = sum
            .iter()
            .any(|s| p == *s || p.starts_with(&format!("{s}/")));
        let v = if ft.is_dir() {
            for e in fs::read_dir(&host)? {
                let name = e?.file_name();
                stack.push(format!("{p}/{}", name.to_string_lossy()));
            }
            "d".to_string()
        } else if ft.is_symlink() {
            "l".to_string()
        } else if ft.is_file() && summed {
            hex_sha256(&host)?
        } else if ft.is_file() {
            "f".to_string()
        } else {
            // Device nodes and fifos: none of the three `find` kinds.
            continue;
        };
        expected.insert(p, v);
    }
    Ok(Check {
        list: list.iter().map(|s| s.to_string()).collect(),
        sum: sum.iter().map(|s| s.to_string()).collect(),
        expected,
    })
}

/// Bumped when the layout written for cached images changes.
const CACHE_VERSION: u32 = 1;

/// The layout `cache_dir()/<name>-v<N>`, made by `build` into a
/// temporary directory and renamed into place (so an interrupted build
/// leaves nothing that looks finished). `stamp` says what the image was
/// built from; a different stamp rebuilds it. The digests are kept in a
/// `built` file next to index.json.
fn cached_layout(
    name: &str,
    stamp: &str,
    build: impl FnOnce(&Path) -> io::Result<BuiltImage>,
) -> io::Result<(PathBuf, BuiltImage)> {
    let cache = cache_dir();
    let layout = cache.join(format!("{name}-v{CACHE_VERSION}"));
    if fs::read_to_string(layout.join("stamp")).is_ok_and(|s| s == stamp)
        && let Some(built) = load_built(&layout.join("built"))
    {
        return Ok((layout, built));
    }
    fs::create_dir_all(&cache)?;
    let tmp = cache.join(format!(".{name}.tmp.{}", std::process::id()));
    let _ = fs::remove_dir_all(&tmp);
    let built = build(&tmp)?;
    fs::write(tmp.join("built"), save_built(&built))?;
    fs::write(tmp.join("stamp"), stamp)?;
    let _ = fs::remove_dir_all(&layout);
    // A concurrent build of the same image may have won the race; its
    // result is as good as ours.
    if fs::rename(&tmp, &layout).is_err() {
        let _ = fs::remove_dir_all(&tmp);
    }
    Ok((layout, built))
}

fn save_built(b: &BuiltImage) -> String {
    let mut s = format!("{}\n{}\n", b.manifest, b.config);
    for i in 0..b.layers.len() {
        s.push_str(&format!(
            "{} {} {}\n",
            b.layers[i], b.diff_ids[i], b.chain_ids[i]
        ));
    }
    s
}

fn load_built(path: &Path) -> Option<BuiltImage> {
    let text = fs::read_to_string(path).ok()?;
    let mut lines = text.lines();
    let mut b = BuiltImage {
        manifest: lines.next()?.to_string(),
        config: lines.next()?.to_string(),
        layers: Vec::new(),
        diff_ids: Vec::new(),
        chain_ids: Vec::new(),
    };
    for l in lines {
        let f: Vec<&str> = l.split(' ').collect();
        let [layer, diff, chain] = f.as_slice() else {
            return None;
        };
        b.layers.push(layer.to_string());
        b.diff_ids.push(diff.to_string());
        b.chain_ids.push(chain.to_string());
    }
    Some(b)
}

/// What a rootfs directory was at a point in time, for cache stamps:
/// its path and its mtime (a rebuilt rootfs is a new directory).
fn dir_stamp(dir: &Path) -> io::Result<String> {
    let m = fs::metadata(dir)?.modified()?;
    let secs = m
        .duration_since(std::time::UNIX_EPOCH)
        .map_err(io::Error::other)?
        .as_secs();
    Ok(format!("{} {secs}", dir.display()))
}

/// The minbase rootfs (scripts/corpus.sh) as one gzip layer.
pub fn small(minbase: &Path) -> io::Result<TestImage> {
    let (layout, built) = cached_layout("small", &dir_stamp(minbase)?, |out| {
        fs::create_dir_all(out)?;
        let blob = out.join("layer.blob");
        let layer = oci::layer_from_dir(minbase, Compression::Gzip, &blob)?;
        let spec = ImageSpec::new("localhost/small:1", &["/bin/sh"]);
        let built = oci::write_layout(&spec, &[layer], out)?;
        fs::remove_file(blob)?;
        Ok(built)
    })?;
    Ok(TestImage {
        name: "small".into(),
        layout,
        built,
        check: rootfs_check(minbase, &["/etc", "/usr"], &["/etc", "/usr/bin"])?,
    })
}

/// The benchmark layer of `scripts/bench-layer.sh` (its cache directory
/// holds `rootfs/`, `layer.tar` and `layer.tar.gz`) as a one-layer image.
/// The blob is hard-linked, not copied.
pub fn large(bench: &Path) -> io::Result<TestImage> {
    let gz = bench.join("layer.tar.gz");
    let rootfs = bench.join("rootfs");
    let (layout, built) = cached_layout("large", &dir_stamp(&gz)?, |out| {
        let diff_id = oci::sha256_file(&bench.join("layer.tar"))?;
        let layer = Layer::prebuilt(&gz, oci::MEDIA_LAYER_GZIP, &diff_id)?;
        let spec = ImageSpec::new("localhost/large:1", &["/bin/sh"]);
        oci::write_layout(&spec, &[layer], out)
    })?;
    let tf = "/usr/local/lib/python3.11/dist-packages/tensorflow";
    Ok(TestImage {
        name: "large".into(),
        layout,
        built,
        check: rootfs_check(
            &rootfs,
            &["/etc", "/usr"],
            &[
                "/etc",
                &format!("{tf}/libtensorflow_cc.so.2"),
                &format!("{tf}/python/ops"),
            ],
        )?,
    })
}
