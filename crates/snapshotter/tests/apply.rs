//! The differ's Apply on real blobs: each accepted media type gives the
//! right diffID and a readable `layer.erofs`; every bad blob gives an error
//! that names it and leaves nothing behind in the snapshot directory.
//! (The gRPC path through containerd's content store is covered by the
//! containerd end-to-end tests.)
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

use layer::digest::Digest;
use proto::errdefs::chain;
use snapshotter::differ::{self, ApplyError, ApplyOptions, Blob};
use snapshotter::durability;

const TAR: &str = "application/vnd.oci.image.layer.v1.tar";
const GZIP: &str = "application/vnd.oci.image.layer.v1.tar+gzip";
const ZSTD: &str = "application/vnd.oci.image.layer.v1.tar+zstd";

fn layer_tar(files: &[(&str, &[u8])]) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    for (name, data) in files {
        let mut h = tar::Header::new_gnu();
        h.set_size(data.len() as u64);
        h.set_mode(0o644);
        h.set_mtime(1_700_000_000);
        h.set_entry_type(tar::EntryType::Regular);
        b.append_data(&mut h, name, *data).unwrap();
    }
    b.into_inner().unwrap()
}

fn gzip(data: &[u8]) -> Vec<u8> {
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    e.write_all(data).unwrap();
    e.finish().unwrap()
}

fn zstd(data: &[u8]) -> Vec<u8> {
    zstd::encode_all(data, 3).unwrap()
}

fn blob(media_type: &str, bytes: &[u8]) -> Blob {
    Blob {
        namespace: "default".into(),
        media_type: media_type.into(),
        digest: Digest::of(bytes).to_string(),
        size: bytes.len() as u64,
    }
}

fn apply(
    dir: &Path,
    b: &Blob,
    bytes: Vec<u8>,
    opts: &ApplyOptions,
) -> Result<differ::Applied, ApplyError> {
    differ::apply(dir, b, Box::new(std::io::Cursor::new(bytes)), opts)
}

fn entries(dir: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    v.sort();
    v
}

fn read(image: &Path, path: &str) -> Vec<u8> {
    let img = erofs::reader::Image::open(image).unwrap();
    let nid = img.lookup(path.as_bytes()).unwrap().expect(path);
    let inode = img.inode(nid).unwrap();
    img.read_all(&inode, 1 << 20).unwrap()
}

#[test]
fn every_compression_gives_the_same_layer_and_diff_id() {
    let tar = layer_tar(&[("etc/hello", b"world\n"), ("usr/bin/tool", &[7u8; 10_000])]);
    let diff_id = Digest::of(&tar).to_string();
    let mut images = Vec::new();
    for (mt, bytes) in [(TAR, tar.clone()), (GZIP, gzip(&tar)), (ZSTD, zstd(&tar))] {
        let dir = tempfile::tempdir().unwrap();
        let b = blob(mt, &bytes);
        let applied = apply(dir.path(), &b, bytes, &ApplyOptions::default()).unwrap();
        assert_eq!(applied.media_type, TAR);
        assert_eq!(applied.digest, diff_id, "{mt}");
        assert_eq!(applied.size, tar.len() as u64);
        assert_eq!(applied.timings.tar_bytes, tar.len() as u64);
        assert_eq!(applied.timings.blob_bytes, b.size);
        assert_eq!(applied.timings.entries, 2);
        let image = dir.path().join("layer.erofs");
        assert_eq!(
            entries(dir.path()),
            std::slice::from_ref(&image),
            "only the image is left"
        );
        assert_eq!(read(&image, "etc/hello"), b"world\n");
        assert_eq!(read(&image, "usr/bin/tool"), vec![7u8; 10_000]);
        images.push(fs::read(&image).unwrap());
    }
    // Deferred (layer_sync = "deferred"): the same image, not fsynced,
    // and the directory records the blob until a Syncer has fsynced it.
    let dir = tempfile::tempdir().unwrap();
    let gz = gzip(&tar);
    let b = blob(GZIP, &gz);
    let opts = ApplyOptions {
        defer_sync: true,
        ..Default::default()
    };
    let applied = apply(dir.path(), &b, gz, &opts).unwrap();
    assert!(applied.deferred);
    assert_eq!(applied.timings.fsync, std::time::Duration::ZERO);
    let mut record = [0u8; 4096];
    let n = rustix::fs::getxattr(dir.path(), durability::PENDING, &mut record[..]).unwrap();
    let record = durability::Record::parse(std::str::from_utf8(&record[..n]).unwrap()).unwrap();
    assert_eq!(record.digest, b.digest);
    assert_eq!(record.media_type, GZIP);
    assert_eq!(record.namespace, "default");
    assert_eq!(record.diff_id, applied.digest);
    assert_eq!(record.boot_id, durability::boot_id().unwrap());
    let syncer = durability::Syncer::start(Box::new(|_| {}), Default::default()).unwrap();
    syncer.submit(dir.path().to_path_buf());
    syncer.wait();
    assert!(matches!(
        durability::scan(dir.path()).unwrap(),
        durability::State::Durable
    ));
    images.push(fs::read(dir.path().join("layer.erofs")).unwrap());
    // Same tar, same image bytes, whatever the compression.
    assert!(images.windows(2).all(|w| w[0] == w[1]));
}

#[test]
fn tar_index_layers_hold_the_tar() {
    let tar = layer_tar(&[("a/b", b"tar-indexed\n")]);
    let dir = tempfile::tempdir().unwrap();
    let bytes = gzip(&tar);
    let b = blob(GZIP, &bytes);
    apply(
        dir.path(),
        &b,
        bytes,
        &ApplyOptions {
            tar_index: true,
            ..Default::default()
        },
    )
    .unwrap();
    let image = dir.path().join("layer.erofs");
    let img = erofs::reader::Image::open(&image).unwrap();
    assert_eq!(img.superblock().blkszbits, 9);
    drop(img);
    // The raw tar follows the index in the same file.
    let raw = fs::read(&image).unwrap();
    assert!(raw.windows(tar.len()).any(|w| w == tar.as_slice()));
    assert_eq!(read(&image, "a/b"), b"tar-indexed\n");
}

#[test]
fn native_erofs_layers_are_checked_and_kept_as_they_are() {
    let src = tempfile::tempdir().unwrap();
    fs::write(src.path().join("f"), "native\n").unwrap();
    let img_file = src.path().join("img");
    {
        let out = fs::File::create(&img_file).unwrap();
        let mut w =
            erofs::writer::ImageWriter::new(out, erofs::writer::WriterOptions::default()).unwrap();
        let tree_dir = src.path().join("tree");
        fs::create_dir(&tree_dir).unwrap();
        fs::write(tree_dir.join("f"), "native\n").unwrap();
        let (t, _) = layer::dir::read_dir_tree(&tree_dir, &mut w).unwrap();
        w.finish(&t).unwrap();
    }
    let bytes = fs::read(&img_file).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let b = blob(differ::MEDIA_TYPE_EROFS, &bytes);
    let applied = apply(dir.path(), &b, bytes.clone(), &ApplyOptions::default()).unwrap();
    assert_eq!(applied.digest, b.digest);
    assert_eq!(applied.media_type, differ::MEDIA_TYPE_EROFS);
    assert_eq!(fs::read(dir.path().join("layer.erofs")).unwrap(), bytes);

    // zstd-compressed: the decompressed image's descriptor comes back.
    let dir = tempfile::tempdir().unwrap();
    let z = zstd(&bytes);
    let bz = blob("application/vnd.erofs.layer.v1.erofs+zstd", &z);
    let applied = apply(dir.path(), &bz, z, &ApplyOptions::default()).unwrap();
    assert_eq!(applied.digest, b.digest);
    assert_eq!(applied.size, bytes.len() as u64);

    // A corrupted image is refused by fsck and never lands.
    let mut bad = bytes.clone();
    bad[1024 + 12] = 30; // blkszbits
    let dir = tempfile::tempdir().unwrap();
    let bb = blob(differ::MEDIA_TYPE_EROFS, &bad);
    let err = apply(dir.path(), &bb, bad, &ApplyOptions::default()).unwrap_err();
    assert!(
        matches!(err, ApplyError::Fsck { .. } | ApplyError::ReadImage { .. }),
        "{err:?}"
    );
    assert!(entries(dir.path()).is_empty());
}

/// Apply `bytes` described by `b` and expect an error; the directory must
/// stay empty.
fn refused(b: &Blob, bytes: Vec<u8>) -> ApplyError {
    let dir = tempfile::tempdir().unwrap();
    let err = apply(dir.path(), b, bytes, &ApplyOptions::default()).unwrap_err();
    assert!(
        entries(dir.path()).is_empty(),
        "{err}: left {:?}",
        entries(dir.path())
    );
    err
}

#[test]
fn bad_blobs_are_refused_and_leave_nothing() {
    let tar = layer_tar(&[("f", b"data")]);
    let gz = gzip(&tar);

    // A digest of other bytes.
    let mut b = blob(GZIP, &gz);
    b.digest = Digest::of(b"other").to_string();
    let err = refused(&b, gz.clone());
    assert!(matches!(err, ApplyError::DigestMismatch { .. }), "{err:?}");
    assert!(err.to_string().contains(&b.digest), "{err}");

    // A size that does not match.
    let mut b = blob(GZIP, &gz);
    b.size += 1;
    let err = refused(&b, gz.clone());
    assert!(matches!(err, ApplyError::SizeMismatch { .. }), "{err:?}");

    // Compression other than the media type says.
    let z = zstd(&tar);
    let err = refused(&blob(GZIP, &z), z);
    assert!(
        matches!(
            err,
            ApplyError::CompressionMismatch {
                expected: layer::Compression::Gzip,
                found: layer::Compression::Zstd,
                ..
            }
        ),
        "{err:?}"
    );

    // Corruption inside the deflate stream: the gzip CRC or the inflater.
    let mut bad = gz.clone();
    let mid = bad.len() / 2;
    bad[mid] ^= 0xff;
    let err = refused(&blob(GZIP, &bad), bad);
    assert!(matches!(err, ApplyError::Convert { .. }), "{err:?}");

    // Truncated.
    let cut = gz[..gz.len() - 10].to_vec();
    let err = refused(&blob(GZIP, &cut), cut);
    assert!(matches!(err, ApplyError::Convert { .. }), "{err:?}");

    // A hostile entry name, named in the error.
    let mut evil = layer_tar(&[("placeholder/x", b"x")]);
    evil[..13].copy_from_slice(b"../escape/x\0\0");
    let h = tar::Header::from_byte_slice(&evil[..512]);
    let mut h = h.clone();
    h.set_cksum();
    evil[..512].copy_from_slice(h.as_bytes());
    let err = refused(&blob(TAR, &evil), evil);
    let msg = chain(&err);
    assert!(msg.contains("../escape/x"), "{msg}");

    // Media types we do not handle.
    for mt in [
        "application/vnd.oci.image.layer.v1.tar+gzip+encrypted",
        "application/vnd.oci.image.layer.v1.tar+lz4",
        "text/plain",
    ] {
        let err = refused(&blob(mt, &gz), gz.clone());
        assert!(
            matches!(err, ApplyError::Encrypted(_) | ApplyError::MediaType(_)),
            "{mt}: {err:?}"
        );
        assert!(err.to_string().contains(mt), "{err}");
    }
}
