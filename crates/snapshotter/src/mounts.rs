//! The mounts a snapshot hands to containerd, as pure functions of its
//! kind, its parents and the layout (containerd.md section 2.1, the
//! "self-mount" shape that every client and containerd 2.0/2.1 accept).

use std::path::PathBuf;

use crate::layout::Layout;
use crate::store::Kind;

/// One mount in containerd's `types.Mount` shape.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MountSpec {
    pub kind: String,
    pub source: PathBuf,
    pub options: Vec<String>,
}

/// Why a snapshot has no mounts.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum MountError {
    #[error("committed snapshots have no mounts; create a view")]
    Committed,
    #[error(
        "an active snapshot without parent already holds a layer image; only a view can show it"
    )]
    ActiveWithBlob,
}

/// Mounts for snapshot `id` whose parents (immediate parent first) are
/// committed and, in self-mount mode, mounted at `Layout::lower`.
///
/// * no parent: a bind mount of the upper (rw for active, ro for a view);
/// * a view of one parent: that layer's image, mounted by the client;
/// * otherwise: overlay with the parents' mount points as lowers (top
///   first), plus `fs/` and `work/` for an active snapshot.
///
/// `block`: the snapshot's upper lives in its ext4 image (`rw/upper`).
/// `ovl_options` come last, after containerd's own order (workdir,
/// upperdir, lowerdir).
pub fn mounts(
    layout: &Layout,
    id: u64,
    kind: Kind,
    parents: &[u64],
    block: bool,
    ovl_options: &[String],
) -> Result<Vec<MountSpec>, MountError> {
    let ro = read_only(kind)?;
    let Some(&top) = parents.first() else {
        return Ok(vec![bind_mount(layout.upper(id, block && !ro), ro)]);
    };
    if ro && parents.len() == 1 {
        // A single layer needs no overlay; "loop" lets clients without
        // file-backed EROFS mount it too.
        return Ok(vec![erofs_mount(layout, top)]);
    }
    let lowers: Vec<String> = parents
        .iter()
        .map(|p| layout.lower(*p).to_string_lossy().into_owned())
        .collect();
    let lowerdir = format!("lowerdir={}", lowers.join(":"));
    Ok(vec![MountSpec {
        kind: "overlay".into(),
        source: "overlay".into(),
        options: overlay_options(layout, id, ro, block, lowerdir, ovl_options),
    }])
}

/// Whether a snapshot of `kind` is mounted read-only; committed ones are
/// not mounted at all.
fn read_only(kind: Kind) -> Result<bool, MountError> {
    match kind {
        Kind::Committed => Err(MountError::Committed),
        Kind::View => Ok(true),
        Kind::Active => Ok(false),
    }
}

fn bind_mount(source: PathBuf, ro: bool) -> MountSpec {
    MountSpec {
        kind: "bind".into(),
        source,
        options: vec![if ro { "ro" } else { "rw" }.into(), "rbind".into()],
    }
}

/// Overlay options in containerd's order: workdir, upperdir (writable
/// snapshots only), lowerdir, then the configured extras.
fn overlay_options(
    layout: &Layout,
    id: u64,
    ro: bool,
    block: bool,
    lowerdir: String,
    ovl_options: &[String],
) -> Vec<String> {
    let mut options = Vec::new();
    if !ro {
        options.push(format!("workdir={}", layout.workdir(id, block).display()));
        options.push(format!("upperdir={}", layout.upper(id, block).display()));
    }
    options.push(lowerdir);
    options.extend(ovl_options.iter().cloned());
    options
}

/// Mounts for containerd ≥ 2.2's mount manager (containerd.md sections
/// 2.2 and 2.3): layer images are returned as `erofs` mounts for the
/// manager to perform, and the overlay refers to them through templates.
/// Nothing is mounted by the daemon. With `quota` (an active snapshot of
/// `default_size` bytes), the manager also creates and formats
/// `rwlayer.img` (`mkfs/ext4`, mount 0) and the upper and work directories
/// live inside it.
pub fn manager_mounts(
    layout: &Layout,
    id: u64,
    kind: Kind,
    parents: &[u64],
    own_blob: bool,
    quota: Option<u64>,
    ovl_options: &[String],
) -> Result<Vec<MountSpec>, MountError> {
    let ro = read_only(kind)?;
    let quota = quota.filter(|_| !ro);
    if parents.is_empty() && own_blob {
        // A staged layer: only viewable as itself.
        if !ro {
            return Err(MountError::ActiveWithBlob);
        }
        return Ok(vec![erofs_mount(layout, id)]);
    }
    if let Some(size) = quota {
        return Ok(manager_block_mounts(layout, id, parents, size, ovl_options));
    }
    if parents.is_empty() {
        return Ok(vec![bind_mount(layout.fs(id), ro)]);
    }
    if ro && parents.len() == 1 {
        return Ok(vec![erofs_mount(layout, parents[0])]);
    }
    let mut out: Vec<MountSpec> = parents.iter().map(|p| erofs_mount(layout, *p)).collect();
    out.push(MountSpec {
        kind: "format/mkdir/overlay".into(),
        source: "overlay".into(),
        options: overlay_options(
            layout,
            id,
            ro,
            false,
            lowerdir(0, parents.len()),
            ovl_options,
        ),
    });
    Ok(out)
}

/// VM mode (vm-mode.md section 2): nothing for the host to mount, raw
/// files for a VM runtime to attach as disks. Lowers are one `erofs`
/// mount: the layer itself, or with `merged` the chain's fsmeta with
/// `device=` options oldest first; without `merged` (a chain that cannot
/// be merged), one `erofs` mount per layer, newest first as overlay
/// stacks them. An active snapshot adds its ext4 writable layer, last.
pub fn vm_mounts(
    layout: &Layout,
    id: u64,
    kind: Kind,
    parents: &[u64],
    merged: bool,
) -> Result<Vec<MountSpec>, MountError> {
    let ro = read_only(kind)?;
    let mut out = match parents {
        [] if ro => vec![bind_mount(layout.fs(id), true)],
        [] => Vec::new(),
        [top, ..] if merged && parents.len() > 1 => {
            let mut options = vec!["ro".to_string(), "loop".to_string()];
            options.extend(
                parents
                    .iter()
                    .rev()
                    .map(|p| format!("device={}", layout.blob(*p).display())),
            );
            vec![MountSpec {
                kind: "erofs".into(),
                source: layout.fsmeta(*top),
                options,
            }]
        }
        _ => parents.iter().map(|p| erofs_mount(layout, *p)).collect(),
    };
    if !ro {
        out.push(MountSpec {
            kind: "ext4".into(),
            source: layout.rwlayer(id),
            options: vec!["rw".into(), "loop".into()],
        });
    }
    Ok(out)
}

/// `lowerdir=` over `count` layer mounts starting at mount `first`.
fn lowerdir(first: usize, count: usize) -> String {
    if count == 1 {
        format!("lowerdir={{{{ mount {first} }}}}")
    } else {
        format!("lowerdir={{{{ overlay {first} {} }}}}", first + count - 1)
    }
}

/// Section 2.3: mount 0 is the ext4 image the manager formats on first
/// use; the upper (and work) directory are made inside it.
fn manager_block_mounts(
    layout: &Layout,
    id: u64,
    parents: &[u64],
    size: u64,
    ovl_options: &[String],
) -> Vec<MountSpec> {
    let mut out = vec![MountSpec {
        kind: "mkfs/ext4".into(),
        source: layout.rwlayer(id),
        options: vec![
            "X-containerd.mkfs.fs=ext4".into(),
            format!("X-containerd.mkfs.size={size}"),
            "rw".into(),
            "loop".into(),
        ],
    }];
    if parents.is_empty() {
        out.push(MountSpec {
            kind: "format/mkdir/bind".into(),
            source: "{{ mount 0 }}/upper".into(),
            options: vec![
                "X-containerd.mkdir.path={{ mount 0 }}/upper:0755".into(),
                "rw".into(),
                "rbind".into(),
            ],
        });
        return out;
    }
    out.extend(parents.iter().map(|p| erofs_mount(layout, *p)));
    let mut options = vec![
        "X-containerd.mkdir.path={{ mount 0 }}/upper:0755".to_string(),
        "X-containerd.mkdir.path={{ mount 0 }}/work:0755".to_string(),
        "workdir={{ mount 0 }}/work".to_string(),
        "upperdir={{ mount 0 }}/upper".to_string(),
        lowerdir(1, parents.len()),
    ];
    options.extend(ovl_options.iter().cloned());
    out.push(MountSpec {
        kind: "format/mkdir/overlay".into(),
        source: "overlay".into(),
        options,
    });
    out
}

/// One option (or source) of a `format/` mount as containerd's mount
/// manager expands it, given the mount points of the mounts before it:
/// `{{ mount N }}` is the N-th mount point, `{{ overlay A B }}` mount points
/// A to B joined with `:` in that order (so A is the top layer; A > B counts
/// down). Text without templates comes back unchanged. None for anything
/// the manager would refuse: an unknown or malformed template, an index out
/// of range, or a mount point that is not UTF-8.
///
/// The daemon never calls this; it is the other half of
/// [`manager_mounts`], for the tests that perform those mounts.
pub fn expand_template(opt: &str, points: &[PathBuf]) -> Option<String> {
    let point = |i: usize| points.get(i)?.to_str();
    let mut out = String::new();
    let mut rest = opt;
    while let Some(start) = rest.find("{{") {
        let len = rest[start..].find("}}")?;
        let words: Vec<&str> = rest[start + 2..start + len].split_whitespace().collect();
        out.push_str(&rest[..start]);
        match words.as_slice() {
            ["mount", n] => out.push_str(point(n.parse().ok()?)?),
            ["overlay", a, b] => {
                let (a, b): (usize, usize) = (a.parse().ok()?, b.parse().ok()?);
                let range: Vec<usize> = if a <= b {
                    (a..=b).collect()
                } else {
                    (b..=a).rev().collect()
                };
                let dirs: Option<Vec<&str>> = range.into_iter().map(point).collect();
                out.push_str(&dirs?.join(":"));
            }
            _ => return None,
        }
        rest = &rest[start + len + 2..];
    }
    out.push_str(rest);
    Some(out)
}

fn erofs_mount(layout: &Layout, id: u64) -> MountSpec {
    MountSpec {
        kind: "erofs".into(),
        source: layout.blob(id),
        options: vec!["ro".into(), "loop".into()],
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn l() -> Layout {
        Layout::new("/r")
    }

    #[test]
    fn no_parent() {
        let m = mounts(&l(), 5, Kind::Active, &[], false, &[]).unwrap();
        assert_eq!(m[0].kind, "bind");
        assert_eq!(m[0].source, PathBuf::from("/r/snapshots/5/fs"));
        assert_eq!(m[0].options, ["rw", "rbind"]);
        let m = mounts(&l(), 5, Kind::View, &[], false, &[]).unwrap();
        assert_eq!(m[0].options, ["ro", "rbind"]);
    }

    #[test]
    fn single_parent_view_is_the_layer() {
        let m = mounts(&l(), 5, Kind::View, &[2], false, &[]).unwrap();
        assert_eq!(
            m,
            [MountSpec {
                kind: "erofs".into(),
                source: "/r/snapshots/2/layer.erofs".into(),
                options: vec!["ro".into(), "loop".into()],
            }]
        );
    }

    #[test]
    fn active_overlay_order() {
        let m = mounts(&l(), 9, Kind::Active, &[4, 2], false, &["index=off".into()]).unwrap();
        assert_eq!(m[0].kind, "overlay");
        assert_eq!(
            m[0].options,
            [
                "workdir=/r/snapshots/9/work",
                "upperdir=/r/snapshots/9/fs",
                "lowerdir=/r/mounts/4:/r/mounts/2",
                "index=off"
            ]
        );
    }

    #[test]
    fn size_limited_upper_lives_in_the_ext4_image() {
        let m = mounts(&l(), 9, Kind::Active, &[4], true, &[]).unwrap();
        assert_eq!(
            m[0].options,
            [
                "workdir=/r/snapshots/9/rw/work",
                "upperdir=/r/snapshots/9/rw/upper",
                "lowerdir=/r/mounts/4"
            ]
        );
        let m = mounts(&l(), 9, Kind::Active, &[], true, &[]).unwrap();
        assert_eq!(m[0].source, PathBuf::from("/r/snapshots/9/rw/upper"));
    }

    #[test]
    fn multi_parent_view_is_read_only_overlay() {
        let m = mounts(&l(), 9, Kind::View, &[4, 2], false, &[]).unwrap();
        assert_eq!(m[0].options, ["lowerdir=/r/mounts/4:/r/mounts/2"]);
    }

    fn strings(m: &MountSpec) -> Vec<&str> {
        m.options.iter().map(String::as_str).collect()
    }

    /// The table of containerd.md section 2.2, row by row.
    #[test]
    fn mount_manager_shapes() {
        let l = l();
        let m = manager_mounts(&l, 5, Kind::Active, &[], false, None, &[]).unwrap();
        assert_eq!(
            (m[0].kind.as_str(), strings(&m[0])),
            ("bind", vec!["rw", "rbind"])
        );
        let m = manager_mounts(&l, 5, Kind::View, &[], true, None, &[]).unwrap();
        assert_eq!(m, [erofs_mount(&l, 5)]);
        assert_eq!(
            manager_mounts(&l, 5, Kind::Active, &[], true, None, &[]),
            Err(MountError::ActiveWithBlob)
        );
        let m = manager_mounts(&l, 5, Kind::View, &[2], false, None, &[]).unwrap();
        assert_eq!(m, [erofs_mount(&l, 2)]);
        let m = manager_mounts(
            &l,
            5,
            Kind::View,
            &[4, 2],
            false,
            None,
            &["index=off".into()],
        )
        .unwrap();
        assert_eq!(m[..2], [erofs_mount(&l, 4), erofs_mount(&l, 2)]);
        assert_eq!(m[2].kind, "format/mkdir/overlay");
        assert_eq!(strings(&m[2]), ["lowerdir={{ overlay 0 1 }}", "index=off"]);
        let m = manager_mounts(&l, 9, Kind::Active, &[4], false, None, &[]).unwrap();
        assert_eq!(m[0], erofs_mount(&l, 4));
        assert_eq!(
            strings(&m[1]),
            [
                "workdir=/r/snapshots/9/work",
                "upperdir=/r/snapshots/9/fs",
                "lowerdir={{ mount 0 }}"
            ]
        );
        let m = manager_mounts(&l, 9, Kind::Active, &[4, 3, 2], false, None, &[]).unwrap();
        assert_eq!(m.len(), 4);
        assert_eq!(m[0].source, PathBuf::from("/r/snapshots/4/layer.erofs"));
        assert_eq!(strings(&m[3])[2], "lowerdir={{ overlay 0 2 }}");
    }

    #[test]
    fn templates_expand_like_the_mount_manager() {
        let p: Vec<PathBuf> = ["/m/0", "/m/1", "/m/2"].map(PathBuf::from).into();
        let e = |o: &str| expand_template(o, &p);
        assert_eq!(e("index=off").as_deref(), Some("index=off"));
        assert_eq!(
            e("lowerdir={{ mount 1 }}").as_deref(),
            Some("lowerdir=/m/1")
        );
        assert_eq!(e("lowerdir={{mount 0}}").as_deref(), Some("lowerdir=/m/0"));
        assert_eq!(
            e("lowerdir={{ overlay 0 2 }}").as_deref(),
            Some("lowerdir=/m/0:/m/1:/m/2")
        );
        assert_eq!(
            e("lowerdir={{ overlay 2 1 }}").as_deref(),
            Some("lowerdir=/m/2:/m/1")
        );
        assert_eq!(
            e("x={{ mount 2 }}:{{ overlay 1 1 }}/y").as_deref(),
            Some("x=/m/2:/m/1/y")
        );
        for bad in [
            "{{ mount 3 }}",
            "{{ overlay 0 3 }}",
            "{{ overlay 3 0 }}",
            "{{ mount -1 }}",
            "{{ mount x }}",
            "{{ mount }}",
            "{{ source 0 }}",
            "lowerdir={{ mount 0",
        ] {
            assert_eq!(e(bad), None, "{bad}");
        }
    }

    /// What manager_mounts writes expands to its layer mounts, top first.
    #[test]
    fn manager_templates_name_the_layers_top_first() {
        let m = manager_mounts(&l(), 9, Kind::View, &[4, 3, 2], false, None, &[]).unwrap();
        let (ovl, layers) = m.split_last().unwrap();
        let images: Vec<PathBuf> = layers.iter().map(|l| l.source.clone()).collect();
        let lowerdir = expand_template(&ovl.options[0], &images).unwrap();
        assert_eq!(
            lowerdir,
            "lowerdir=/r/snapshots/4/layer.erofs:/r/snapshots/3/layer.erofs:\
             /r/snapshots/2/layer.erofs"
        );
        let m = manager_mounts(&l(), 9, Kind::Active, &[4], false, None, &[]).unwrap();
        assert_eq!(
            expand_template(&m[1].options[2], &[PathBuf::from("/m/0")]).as_deref(),
            Some("lowerdir=/m/0")
        );
    }

    /// The table of containerd.md section 2.3 (block mode).
    #[test]
    fn mount_manager_block_shapes() {
        let l = l();
        let m = manager_mounts(&l, 5, Kind::Active, &[], false, Some(1 << 20), &[]).unwrap();
        assert_eq!(m[0].kind, "mkfs/ext4");
        assert_eq!(m[0].source, PathBuf::from("/r/snapshots/5/rwlayer.img"));
        assert_eq!(
            strings(&m[0]),
            [
                "X-containerd.mkfs.fs=ext4",
                "X-containerd.mkfs.size=1048576",
                "rw",
                "loop"
            ]
        );
        assert_eq!(m[1].kind, "format/mkdir/bind");
        assert_eq!(m[1].source, PathBuf::from("{{ mount 0 }}/upper"));
        let m = manager_mounts(
            &l,
            9,
            Kind::Active,
            &[4, 2],
            false,
            Some(1 << 20),
            &["index=off".into()],
        )
        .unwrap();
        assert_eq!(m.len(), 4);
        assert_eq!(m[1], erofs_mount(&l, 4));
        assert_eq!(
            strings(&m[3]),
            [
                "X-containerd.mkdir.path={{ mount 0 }}/upper:0755",
                "X-containerd.mkdir.path={{ mount 0 }}/work:0755",
                "workdir={{ mount 0 }}/work",
                "upperdir={{ mount 0 }}/upper",
                "lowerdir={{ overlay 1 2 }}",
                "index=off"
            ]
        );
        let m = manager_mounts(&l, 9, Kind::Active, &[4], false, Some(1 << 20), &[]).unwrap();
        assert_eq!(strings(&m[2])[4], "lowerdir={{ mount 1 }}");
        // Views never get an image of their own.
        let m = manager_mounts(&l, 9, Kind::View, &[4, 2], false, Some(1 << 20), &[]).unwrap();
        assert_eq!(m.len(), 3);
    }

    #[test]
    fn committed_has_no_mounts() {
        assert_eq!(
            mounts(&l(), 1, Kind::Committed, &[], false, &[]),
            Err(MountError::Committed)
        );
    }
}
