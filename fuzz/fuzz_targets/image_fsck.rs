//! Arbitrary bytes as an EROFS image: `Image::new`, `fsck::check` (with
//! data reads) and a bounded walk of the tree through the reader API
//! (`read_dir`, `lookup`, `read_all`, `symlink_target`, `extents`). None of
//! it may panic, hang or allocate without bound.
//!
//! Differential property: when `check` accepts the image (strict link
//! counts), walking it must not fail; an accepted image the reader cannot
//! read means fsck missed a rule (or the reader refuses something valid),
//! and the target panics.
#![no_main]

use std::collections::HashSet;

use erofs::fsck::{CheckOptions, check};
use erofs::reader::{Image, ReadError};
use libfuzzer_sys::fuzz_target;

/// Inodes visited by the walk at most.
const MAX_INODES: usize = 4096;
/// Bytes per file read by the walk at most.
const FILE_LIMIT: u64 = 1 << 20;

/// Visit every inode reachable from the root (bounded), reading directories,
/// file data and symlink targets. Returns the first reader error.
fn walk(image: &Image<Vec<u8>>) -> Result<(), ReadError> {
    let mut seen = HashSet::new();
    let mut stack = vec![(image.root_nid(), Vec::<u8>::new())];
    while let Some((nid, path)) = stack.pop() {
        if !seen.insert(nid) || seen.len() > MAX_INODES {
            continue;
        }
        let inode = image.inode(nid)?;
        for ext in image.extents(&inode).take(64) {
            ext?;
        }
        if inode.is_dir() {
            for entry in image.read_dir(&inode)? {
                if entry.name == b"." || entry.name == b".." {
                    continue;
                }
                let mut child = path.clone();
                child.push(b'/');
                child.extend_from_slice(&entry.name);
                if path.len() < 64 {
                    // Resolving the path again must land on the same inode.
                    let found = image.lookup(&child)?;
                    assert_eq!(found, Some(entry.nid), "lookup disagrees with read_dir");
                }
                stack.push((entry.nid, child));
            }
        } else if inode.file_type() == erofs::format::FT_SYMLINK {
            image.symlink_target(&inode)?;
        } else if inode.file_type() == erofs::format::FT_REG_FILE {
            match image.read_all(&inode, FILE_LIMIT) {
                Ok(_) | Err(ReadError::TooLarge { .. }) => {}
                Err(e) => return Err(e),
            }
        }
    }
    Ok(())
}

fuzz_target!(|data: &[u8]| {
    let Ok(image) = Image::new(data.to_vec()) else {
        return;
    };
    let opts = CheckOptions {
        strict_nlink: true,
        read_data: true,
        max_inodes: Some(1 << 16),
        max_data_read: Some(64 << 20),
        ..CheckOptions::default()
    };
    let accepted = check(&image, &opts);
    let walked = walk(&image);
    if let (Ok(_), Err(e)) = (&accepted, &walked) {
        panic!("fsck accepted the image but walking it fails: {e}");
    }
});
