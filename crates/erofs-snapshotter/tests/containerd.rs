//! The daemon behind a real containerd: a two-layer OCI image (with a
//! file whiteout, a directory whiteout and an opaque directory) built
//! here, imported into a private containerd that has our daemon as a
//! proxy snapshotter, unpacked by containerd's walking differ into the
//! mounts we return, converted to EROFS at Commit, and run with runc.
//! Then everything is removed again and nothing may be left mounted.
//!
//! Needs root, containerd 2.x (`containerd`, `ctr`,
//! `containerd-shim-runc-v2` on PATH or in /opt/containerd/usr/bin, as
//! scripts/setup.sh installs it), runc, /bin/busybox (a static one) and
//! fsck.erofs. Skipped loudly without them, failed on CI.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;
#[allow(dead_code)]
#[path = "common/oci.rs"]
mod oci;

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::fs;
use std::io::{Read, Seek};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::*;

/// The proxy plugin's name. Not `erofs`: containerd ≥ 2.1 has a built-in
/// snapshotter of that name, and registering a proxy plugin with the same
/// id makes containerd panic at start-up ("plugin: id already
/// registered").
const SNAPSHOTTER: &str = "erofs-snapshotter";
/// containerd namespace of everything this test creates.
const NS: &str = "erofs-it";
const IMAGE: &str = "localhost/erofs-test:1";
/// containerd's fixed runtime directory (shim sockets go to `s/`).
const RUN_DIR: &str = "/run/containerd";
/// Where scripts/setup.sh unpacks containerd.
const CONTAINERD_DIR: &str = "/opt/containerd/usr/bin";

/// `name` on PATH, else in [`CONTAINERD_DIR`] or /usr/sbin (runc).
fn find_tool(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain([PathBuf::from(CONTAINERD_DIR), PathBuf::from("/usr/sbin")])
        .map(|d| d.join(name))
        .find(|p| have(&p.to_string_lossy()))
}

/// Where the tools are, and the PATH containerd runs with.
struct Tools {
    containerd: PathBuf,
    ctr: PathBuf,
    /// PATH for containerd: the directory with the shim first, and runc.
    path: OsString,
}

/// All tools, or None after reporting what is missing (a failure on CI).
fn prereqs() -> Option<Tools> {
    if !require_root_and_fs(&["erofs", "overlay"]) {
        return None;
    }
    let names = [
        "containerd",
        "ctr",
        "containerd-shim-runc-v2",
        "runc",
        "fsck.erofs",
    ];
    let found: Vec<Option<PathBuf>> = names.iter().map(|n| find_tool(n)).collect();
    let absent: Vec<&str> = names
        .iter()
        .zip(&found)
        .filter(|(_, f)| f.is_none())
        .map(|(n, _)| *n)
        .collect();
    if !absent.is_empty() {
        missing(&format!(
            "containerd test needs {} (on PATH or in {CONTAINERD_DIR}; run scripts/setup.sh)",
            absent.join(", ")
        ));
        return None;
    }
    if !have("/bin/busybox") {
        missing("containerd test needs a static /bin/busybox (busybox-static)");
        return None;
    }
    let found: Vec<PathBuf> = found.into_iter().map(Option::unwrap).collect();
    let mut dirs: Vec<PathBuf> = Vec::new();
    // The shim's and runc's directories first, then the inherited PATH.
    for p in [&found[2], &found[3], &found[0]] {
        let d = p.parent().unwrap().to_path_buf();
        if !dirs.contains(&d) {
            dirs.push(d);
        }
    }
    let inherited = std::env::var_os("PATH").unwrap_or_default();
    dirs.extend(std::env::split_paths(&inherited));
    Some(Tools {
        containerd: found[0].clone(),
        ctr: found[1].clone(),
        path: std::env::join_paths(dirs).unwrap(),
    })
}

/// Run with a deadline, output captured through files (so nothing a
/// command leaves behind can block the reader), killed when late.
fn run_timeout(cmd: &mut Command, timeout: Duration) -> Ran {
    let mut what = cmd.get_program().to_string_lossy().into_owned();
    for a in cmd.get_args() {
        what.push(' ');
        what.push_str(&a.to_string_lossy());
    }
    let out = tempfile::tempfile().unwrap();
    let err = tempfile::tempfile().unwrap();
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(out.try_clone().unwrap())
        .stderr(err.try_clone().unwrap())
        .spawn()
        .unwrap_or_else(|e| panic!("spawning {what}: {e}"));
    let deadline = Instant::now() + timeout;
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("timed out after {timeout:?}: {what}");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let read = |mut f: fs::File| {
        let mut s = String::new();
        f.rewind().unwrap();
        f.read_to_string(&mut s).unwrap();
        s
    };
    Ran {
        what,
        status,
        stdout: read(out),
        stderr: read(err),
    }
}

/// Mount points at or below `dir`, in mount order.
fn mounts_under(dir: &Path) -> Vec<String> {
    let text = fs::read_to_string("/proc/self/mountinfo").unwrap();
    let dir = dir.to_string_lossy().into_owned();
    let below = format!("{dir}/");
    text.lines()
        .filter_map(|l| l.split(' ').nth(4))
        .filter(|mp| *mp == dir || mp.starts_with(&below))
        .map(str::to_string)
        .collect()
}

fn signal(pid: i32, sig: rustix::process::Signal) {
    if let Some(p) = rustix::process::Pid::from_raw(pid) {
        let _ = rustix::process::kill_process(p, sig);
    }
}

/// SIGTERM, then SIGKILL if it has not exited within `grace`; reaped.
fn stop(child: &mut Child, grace: Duration) {
    if child.try_wait().ok().flatten().is_some() {
        return;
    }
    signal(child.id() as i32, rustix::process::Signal::TERM);
    let deadline = Instant::now() + grace;
    while Instant::now() < deadline {
        if child.try_wait().ok().flatten().is_some() {
            return;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = child.kill();
    let _ = child.wait();
}

/// Our daemon and a private containerd using it, both in `dir`; torn
/// down on drop (also when a test fails), printing their logs then.
struct Cluster {
    dir: PathBuf,
    ctr: PathBuf,
    sock: PathBuf,
    snap_root: PathBuf,
    snapd: Option<Child>,
    containerd: Option<Child>,
    /// /run/containerd did not exist before: the directory shims put
    /// their sockets in (`s/`, fixed in containerd) is ours to remove.
    own_run_dir: bool,
    torn_down: bool,
}

impl Cluster {
    fn start(dir: &Path, tools: &Tools) -> Cluster {
        let sock = dir.join("ctd.sock");
        let snap_sock = dir.join("snap.sock");
        let snap_root = dir.join("snap");
        let mut c = Cluster {
            dir: dir.to_path_buf(),
            ctr: tools.ctr.clone(),
            sock: sock.clone(),
            snap_root: snap_root.clone(),
            snapd: None,
            containerd: None,
            own_run_dir: !Path::new(RUN_DIR).exists(),
            torn_down: false,
        };

        let log = fs::File::create(dir.join("snapshotter.log")).unwrap();
        c.snapd = Some(
            Command::new(bin())
                .arg("serve")
                .arg("--root")
                .arg(&snap_root)
                .arg("--address")
                .arg(&snap_sock)
                .stdin(Stdio::null())
                .stdout(log.try_clone().unwrap())
                .stderr(log)
                .spawn()
                .expect("starting erofs-snapshotter serve"),
        );
        let deadline = Instant::now() + Duration::from_secs(30);
        while !snap_sock.exists() {
            if let Some(s) = c.snapd.as_mut().unwrap().try_wait().unwrap() {
                panic!("erofs-snapshotter serve exited: {s}");
            }
            assert!(
                Instant::now() < deadline,
                "{} never appeared",
                snap_sock.display()
            );
            std::thread::sleep(Duration::from_millis(20));
        }

        let config = dir.join("containerd.toml");
        fs::write(&config, containerd_config(dir, &snap_sock)).unwrap();
        let log = fs::File::create(dir.join("containerd.log")).unwrap();
        c.containerd = Some(
            Command::new(&tools.containerd)
                .arg("--config")
                .arg(&config)
                .args(["--log-level", "debug"])
                .env("PATH", &tools.path)
                .stdin(Stdio::null())
                .stdout(log.try_clone().unwrap())
                .stderr(log)
                .spawn()
                .expect("starting containerd"),
        );
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Some(s) = c.containerd.as_mut().unwrap().try_wait().unwrap() {
                panic!("containerd exited: {s}");
            }
            if sock.exists() && c.ctr_raw(&["version"]).success() {
                break;
            }
            assert!(Instant::now() < deadline, "containerd never answered");
            std::thread::sleep(Duration::from_millis(100));
        }
        c
    }

    /// `ctr -a SOCK -n NS ARGS...`, unchecked.
    fn ctr_raw(&self, args: &[&str]) -> Ran {
        let mut cmd = Command::new(&self.ctr);
        cmd.arg("-a").arg(&self.sock).args(["-n", NS]).args(args);
        run_timeout(&mut cmd, Duration::from_secs(120))
    }

    /// `ctr …` that must succeed.
    fn ctr(&self, args: &[&str]) -> Ran {
        self.ctr_raw(args).ok()
    }

    /// Snapshots in our snapshotter as containerd lists them:
    /// key → (parent, kind).
    fn snapshots(&self) -> BTreeMap<String, (String, String)> {
        let r = self.ctr(&["snapshots", "--snapshotter", SNAPSHOTTER, "ls"]);
        r.stdout
            .lines()
            .skip(1)
            .filter_map(|l| {
                let f: Vec<&str> = l.split_whitespace().collect();
                match f.as_slice() {
                    [key, kind] => Some((key.to_string(), (String::new(), kind.to_string()))),
                    [key, parent, kind] => {
                        Some((key.to_string(), (parent.to_string(), kind.to_string())))
                    }
                    _ => None,
                }
            })
            .collect()
    }

    /// Snapshot directories in our root (`snapshots/<id>`).
    fn snapshot_dirs(&self) -> Vec<PathBuf> {
        let mut v: Vec<PathBuf> = fs::read_dir(self.snap_root.join("snapshots"))
            .unwrap()
            .map(|e| e.unwrap().path())
            .collect();
        v.sort();
        v
    }

    /// Stop everything and unmount whatever is left under the directory.
    /// Returns the mounts that were still there once both processes had
    /// stopped (which a correct shutdown leaves none of).
    fn teardown(&mut self) -> Vec<String> {
        if self.torn_down {
            return Vec::new();
        }
        self.torn_down = true;
        let ctd_alive = self
            .containerd
            .as_mut()
            .is_some_and(|c| c.try_wait().ok().flatten().is_none());
        if ctd_alive {
            // Containers left by a failed test, so their shims exit.
            let tasks = self.ctr_raw(&["tasks", "ls", "-q"]);
            for t in tasks.stdout.split_whitespace() {
                let _ = self.ctr_raw(&["tasks", "kill", "-s", "SIGKILL", t]);
                let _ = self.ctr_raw(&["tasks", "rm", "-f", t]);
            }
            let ctrs = self.ctr_raw(&["containers", "ls", "-q"]);
            for c in ctrs.stdout.split_whitespace() {
                let _ = self.ctr_raw(&["containers", "rm", c]);
            }
        }
        if let Some(c) = self.containerd.as_mut() {
            stop(c, Duration::from_secs(10));
        }
        self.kill_our_shims();
        if let Some(c) = self.snapd.as_mut() {
            stop(c, Duration::from_secs(10));
        }
        let left = mounts_under(&self.dir);
        for mp in left.iter().rev() {
            let p = Path::new(mp);
            if rustix::mount::unmount(p, rustix::mount::UnmountFlags::empty()).is_err()
                && let Err(e) = rustix::mount::unmount(p, rustix::mount::UnmountFlags::DETACH)
            {
                eprintln!("warning: could not unmount {mp}: {e}");
            }
        }
        // Empty cgroups runc left for the namespace (v1 and v2 layouts).
        if let Ok(entries) = fs::read_dir("/sys/fs/cgroup") {
            for e in entries.flatten() {
                let _ = fs::remove_dir(e.path().join(NS));
            }
        }
        let _ = fs::remove_dir(Path::new("/sys/fs/cgroup").join(NS));
        if self.own_run_dir {
            let run = Path::new(RUN_DIR);
            for d in [
                run.join("s"),
                run.join("runc").join(NS),
                run.join("runc"),
                run.into(),
            ] {
                let _ = fs::remove_dir(d);
            }
        }
        left
    }

    /// Shims started by our containerd (they outlive it by design):
    /// found by their `-address` argument, killed by pid.
    fn kill_our_shims(&self) {
        let sock = self.sock.to_string_lossy().into_owned();
        let mut pids = Vec::new();
        for e in fs::read_dir("/proc").into_iter().flatten().flatten() {
            let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<i32>().ok()) else {
                continue;
            };
            let Ok(cmdline) = fs::read(e.path().join("cmdline")) else {
                continue;
            };
            let args: Vec<&[u8]> = cmdline.split(|&b| b == 0).collect();
            let is_shim = args
                .first()
                .is_some_and(|a| a.ends_with(b"containerd-shim-runc-v2"));
            let ours = args
                .windows(2)
                .any(|w| w[0] == b"-address" && w[1] == sock.as_bytes());
            if is_shim && ours {
                pids.push(pid);
            }
        }
        for &pid in &pids {
            eprintln!("killing leftover shim {pid}");
            signal(pid, rustix::process::Signal::KILL);
        }
        let deadline = Instant::now() + Duration::from_secs(10);
        while pids
            .iter()
            .any(|p| Path::new(&format!("/proc/{p}")).exists())
            && Instant::now() < deadline
        {
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn dump_logs(&self) {
        let snap = fs::read_to_string(self.dir.join("snapshotter.log")).unwrap_or_default();
        eprintln!("===== erofs-snapshotter serve log =====\n{snap}");
        let ctd = fs::read_to_string(self.dir.join("containerd.log")).unwrap_or_default();
        let lines: Vec<&str> = ctd.lines().collect();
        let from = lines.len().saturating_sub(2000);
        eprintln!(
            "===== containerd log (last {} of {} lines) =====",
            lines.len() - from,
            lines.len()
        );
        for l in &lines[from..] {
            eprintln!("{l}");
        }
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        if std::thread::panicking() {
            self.dump_logs();
        }
        let left = self.teardown();
        if !left.is_empty() {
            eprintln!("unmounted leftovers: {left:?}");
        }
    }
}

/// containerd 2.x configuration: everything below `dir`, no CRI (nor the
/// plugins CRI brings along) and no NRI socket, our daemon as a proxy
/// snapshotter, and an unpack entry for it so that `ctr images import`
/// (through the transfer service) unpacks with the walking differ.
fn containerd_config(dir: &Path, snap_sock: &Path) -> String {
    let d = dir.display();
    format!(
        r#"version = 3
root = "{d}/ctd-root"
state = "{d}/ctd-state"
disabled_plugins = [
  "io.containerd.grpc.v1.cri",
  "io.containerd.cri.v1.runtime",
  "io.containerd.cri.v1.images",
  "io.containerd.nri.v1.nri",
]

[grpc]
  address = "{d}/ctd.sock"

[ttrpc]
  address = "{d}/ctd.sock.ttrpc"

[debug]
  address = ""

[metrics]
  address = ""

[plugins."io.containerd.internal.v1.opt"]
  path = "{d}/opt"

[[plugins."io.containerd.transfer.v1.local".unpack_config]]
  platform = "linux/{arch}"
  snapshotter = "{SNAPSHOTTER}"
  differ = "walking"

[proxy_plugins.{SNAPSHOTTER}]
  type = "snapshot"
  address = "{sock}"
"#,
        arch = oci::goarch(),
        sock = snap_sock.display(),
    )
}

fn write(path: &Path, data: &str) {
    fs::create_dir_all(path.parent().unwrap()).unwrap();
    fs::write(path, data).unwrap();
}

/// Layer 1: busybox and files that layer 2 deletes or hides.
/// Layer 2: a changed file, a file whiteout, a directory whiteout, an
/// opaque directory.
fn build_layers(dir: &Path) -> (PathBuf, PathBuf) {
    let l1 = dir.join("layer1");
    let l2 = dir.join("layer2");
    fs::create_dir_all(l1.join("bin")).unwrap();
    fs::copy("/bin/busybox", l1.join("bin/busybox")).unwrap();
    for app in ["sh", "echo", "cat", "ls"] {
        std::os::unix::fs::symlink("busybox", l1.join("bin").join(app)).unwrap();
    }
    write(&l1.join("etc/motd"), "motd from layer 1\n");
    write(&l1.join("etc/doomed"), "deleted by layer 2\n");
    write(
        &l1.join("var/gone-dir/file"),
        "deleted with its directory\n",
    );
    write(&l1.join("var/kept"), "kept\n");
    write(&l1.join("opt/old/a"), "hidden by the opaque directory\n");
    write(&l1.join("opt/old/b"), "hidden by the opaque directory\n");
    fs::create_dir_all(l1.join("tmp")).unwrap();
    fs::set_permissions(l1.join("tmp"), fs::Permissions::from_mode(0o1777)).unwrap();

    write(&l2.join("etc/motd"), "motd from layer 2\n");
    write(&l2.join("etc/.wh.doomed"), "");
    write(&l2.join("var/.wh.gone-dir"), "");
    write(&l2.join("opt/old/.wh..wh..opq"), "");
    write(&l2.join("opt/old/new"), "new\n");
    (l1, l2)
}

#[test]
fn import_and_run_with_containerd() {
    let Some(tools) = prereqs() else {
        return;
    };
    let started = Instant::now();
    let tmp = tempdir();
    let dir = tmp.path();

    let (l1, l2) = build_layers(dir);
    let image_tar = dir.join("image.tar");
    let spec = oci::ImageSpec::new(IMAGE, &["/bin/sh"]);
    let built = oci::build_archive(&spec, &[&l1, &l2], &image_tar).unwrap();

    let mut c = Cluster::start(dir, &tools);
    let t_ready = started.elapsed();

    // Import through the transfer service; it unpacks into our snapshotter.
    c.ctr(&[
        "images",
        "import",
        "--snapshotter",
        SNAPSHOTTER,
        image_tar.to_str().unwrap(),
    ]);
    let images = c.ctr(&["images", "ls", "-q"]).stdout;
    assert!(
        images.lines().any(|l| l.trim() == IMAGE),
        "imported image not named {IMAGE}: {images:?}"
    );
    let snaps = c.snapshots();
    let expect: BTreeMap<String, (String, String)> = [
        (
            built.chain_ids[0].clone(),
            (String::new(), "Committed".to_string()),
        ),
        (
            built.chain_ids[1].clone(),
            (built.chain_ids[0].clone(), "Committed".to_string()),
        ),
    ]
    .into();
    assert_eq!(snaps, expect, "snapshots after import");
    // Stat and Usage through containerd's metadata layer.
    let info = c.ctr(&[
        "snapshots",
        "--snapshotter",
        SNAPSHOTTER,
        "info",
        &built.chain_ids[1],
    ]);
    assert!(
        info.stdout.contains(&built.chain_ids[0]) && info.stdout.contains(r#""Kind": "Committed""#),
        "snapshot info: {}",
        info.stdout
    );
    let usage = c.ctr(&["snapshots", "--snapshotter", SNAPSHOTTER, "usage"]);
    for id in &built.chain_ids {
        assert!(
            usage.stdout.contains(id.as_str()),
            "usage: {}",
            usage.stdout
        );
    }

    // Each layer is one EROFS image that both fscks accept; the uppers
    // they came from are emptied.
    let dirs = c.snapshot_dirs();
    assert_eq!(dirs.len(), 2, "snapshot directories: {dirs:?}");
    let mut whiteout_seen = false;
    let mut opaque_seen = false;
    for d in &dirs {
        let blob = d.join("layer.erofs");
        assert!(blob.is_file(), "{} missing", blob.display());
        run(Command::new(find_tool("fsck.erofs").unwrap()).arg(&blob)).ok();
        cli(["fsck".as_ref(), blob.as_os_str()]).ok();
        assert!(
            fs::read_dir(d.join("fs")).unwrap().next().is_none(),
            "{}/fs not emptied after commit",
            d.display()
        );
        let etc = cli([
            "inspect".as_ref(),
            "--ls".as_ref(),
            "/etc".as_ref(),
            blob.as_os_str(),
        ]);
        // The walking differ deletes `doomed` in the overlay; the upper
        // gets a 0:0 character device, which the image keeps.
        whiteout_seen |= etc.success()
            && etc
                .stdout
                .lines()
                .any(|l| l.starts_with('c') && l.contains(" 0, 0 ") && l.ends_with(" doomed"));
        let old = cli([
            "inspect".as_ref(),
            "--ls".as_ref(),
            "/opt/old".as_ref(),
            blob.as_os_str(),
        ]);
        opaque_seen |= old.success() && old.stdout.contains("trusted.overlay.opaque");
    }
    assert!(
        whiteout_seen,
        "no 0:0 whiteout for /etc/doomed in any layer"
    );
    assert!(opaque_seen, "no opaque /opt/old in any layer");
    let t_import = started.elapsed();

    // Run: layer 2's motd, the deleted file and directory absent, the
    // opaque directory showing only layer 2's entry.
    let fifo = dir.join("fifo");
    let runc_root = dir.join("runc");
    let run_args = |id: &str, script: &str| -> Vec<String> {
        [
            "run",
            "--rm",
            "--snapshotter",
            SNAPSHOTTER,
            "--fifo-dir",
            fifo.to_str().unwrap(),
            "--runc-root",
            runc_root.to_str().unwrap(),
            IMAGE,
            id,
            "/bin/sh",
            "-c",
            script,
        ]
        .iter()
        .map(|s| s.to_string())
        .collect()
    };
    let args = run_args(
        "t1",
        "cat /etc/motd; ls /etc/doomed 2>&1; ls /var; ls /opt/old; echo ok",
    );
    let r = c.ctr(&args.iter().map(String::as_str).collect::<Vec<_>>());
    eprintln!("container t1 output:\n{}", r.stdout);
    assert_eq!(
        r.stdout,
        "motd from layer 2\n\
         ls: /etc/doomed: No such file or directory\n\
         kept\n\
         new\n\
         ok\n"
    );
    let t_run = started.elapsed();

    // The rootfs is writable (the overlay upper of an active snapshot).
    let args = run_args("t2", "echo written > /etc/new-file && cat /etc/new-file");
    let r = c.ctr(&args.iter().map(String::as_str).collect::<Vec<_>>());
    assert_eq!(r.stdout, "written\n");

    // Remove the image (with a synchronous GC), then whatever is left,
    // children first; our root must end up empty and unmounted.
    c.ctr(&["images", "rm", "--sync", IMAGE]);
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let snaps = c.snapshots();
        if snaps.is_empty() {
            break;
        }
        assert!(Instant::now() < deadline, "snapshots never went: {snaps:?}");
        let parents: Vec<&String> = snaps.values().map(|(p, _)| p).collect();
        for key in snaps.keys().filter(|k| !parents.contains(k)) {
            let _ = c.ctr_raw(&["snapshots", "--snapshotter", SNAPSHOTTER, "rm", key]);
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    // containerd removes backend snapshots in its GC, asynchronously.
    let deadline = Instant::now() + Duration::from_secs(60);
    while !c.snapshot_dirs().is_empty() || !mounts_under(&c.snap_root).is_empty() {
        assert!(
            Instant::now() < deadline,
            "left in our root: {:?}, mounted: {:?}",
            c.snapshot_dirs(),
            mounts_under(&c.snap_root)
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let left = c.teardown();
    assert!(left.is_empty(), "mounts left after shutdown: {left:?}");
    eprintln!(
        "timing: ready {:.1?}, imported {:.1?}, ran {:.1?}, total {:.1?}",
        t_ready,
        t_import,
        t_run,
        started.elapsed()
    );
}
