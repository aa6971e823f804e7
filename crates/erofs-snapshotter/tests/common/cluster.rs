//! Our daemon and a private containerd 2.x that has it as a proxy
//! snapshotter (and, when asked, as a proxy differ on the same socket),
//! everything below one test directory; plus the tools and teardown that
//! go with it. Shared by the containerd tests; each declares it with
//! `#[path = "common/cluster.rs"] mod cluster;`.

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::fs;
use std::io::{Read, Seek};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::common::{Ran, bin, cli, have, missing, require_root_and_fs, run};

/// Our snapshotter's proxy plugin name. Not `erofs`: containerd ≥ 2.1 has
/// a built-in snapshotter of that name, and registering a proxy plugin
/// with the same id makes containerd panic at start-up ("plugin: id
/// already registered").
pub const SNAPSHOTTER: &str = "erofs-snapshotter";
/// Our differ's proxy plugin name (same socket as the snapshotter).
pub const DIFFER: &str = "erofs-snapshotter-diff";
/// containerd's fixed runtime directory (shim sockets go to `s/`).
const RUN_DIR: &str = "/run/containerd";
/// Where scripts/setup.sh unpacks containerd.
const CONTAINERD_DIR: &str = "/opt/containerd/usr/bin";
/// Deadline of any one `ctr` command: pulls of the 1 GB image included.
const CTR_TIMEOUT: Duration = Duration::from_secs(900);

/// `name` on PATH, else in [`CONTAINERD_DIR`] or /usr/sbin (runc).
pub fn find_tool(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain([PathBuf::from(CONTAINERD_DIR), PathBuf::from("/usr/sbin")])
        .map(|d| d.join(name))
        .find(|p| have(&p.to_string_lossy()))
}

/// Where the tools are, and the PATH containerd runs with.
pub struct Tools {
    containerd: PathBuf,
    ctr: PathBuf,
    /// PATH for containerd: the directory with the shim first, and runc.
    path: OsString,
}

/// All tools, or None after reporting what is missing (a failure on CI).
/// `extra` are further commands the calling test needs.
pub fn prereqs(extra: &[&str]) -> Option<Tools> {
    if !require_root_and_fs(&["erofs", "overlay"]) {
        return None;
    }
    let mut names = vec![
        "containerd",
        "ctr",
        "containerd-shim-runc-v2",
        "runc",
        "fsck.erofs",
    ];
    names.extend(extra);
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
pub fn run_timeout(cmd: &mut Command, timeout: Duration) -> Ran {
    let out = tempfile::tempfile().unwrap();
    let mut ran = run_timeout_to(cmd, timeout, out.try_clone().unwrap());
    ran.stdout = read_back(out);
    ran
}

/// [`run_timeout`] with standard output going to `out` (for binary
/// output); the result's `stdout` is empty.
pub fn run_timeout_to(cmd: &mut Command, timeout: Duration, out: fs::File) -> Ran {
    let mut what = cmd.get_program().to_string_lossy().into_owned();
    for a in cmd.get_args() {
        what.push(' ');
        what.push_str(&a.to_string_lossy());
    }
    let err = tempfile::tempfile().unwrap();
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(out)
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
    Ran {
        what,
        status,
        stdout: String::new(),
        stderr: read_back(err),
    }
}

/// Everything written to a temporary file.
fn read_back(mut f: fs::File) -> String {
    let mut s = String::new();
    f.rewind().unwrap();
    f.read_to_string(&mut s).unwrap();
    s
}

/// Mount points at or below `dir`, in mount order.
pub fn mounts_under(dir: &Path) -> Vec<String> {
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
pub fn stop(child: &mut Child, grace: Duration) {
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

/// Which snapshotter and differ the transfer service unpacks with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Our snapshotter and our differ.
    Ours,
    /// Our snapshotter, containerd's walking differ writing into the
    /// overlay upper we return (converted at Commit).
    OursWalking,
    /// containerd's own overlayfs snapshotter and walking differ.
    Overlayfs,
    /// containerd's built-in EROFS snapshotter and differ (mkfs.erofs).
    Erofs,
}

impl Mode {
    pub fn snapshotter(self) -> &'static str {
        match self {
            Mode::Ours | Mode::OursWalking => SNAPSHOTTER,
            Mode::Overlayfs => "overlayfs",
            Mode::Erofs => "erofs",
        }
    }

    pub fn differ(self) -> &'static str {
        match self {
            Mode::Ours => DIFFER,
            Mode::OursWalking | Mode::Overlayfs => "walking",
            Mode::Erofs => "erofs",
        }
    }
}

/// How to start a [`Cluster`].
#[derive(Debug, Clone)]
pub struct Options {
    /// containerd namespace of the test's images and containers; one per
    /// test, so that tests running at the same time never share a cgroup.
    pub namespace: String,
    pub mode: Mode,
    /// Further `erofs-snapshotter serve` arguments.
    pub daemon_args: Vec<String>,
    /// The daemon's configuration file, if any (TOML).
    pub daemon_config: Option<String>,
    /// The transfer service's `max_concurrent_unpacks` (containerd ≥ 2.2;
    /// older versions ignore it).
    pub max_concurrent_unpacks: Option<u32>,
    /// Advertise `rebase` for our snapshotter (parallel unpack, 2.2+).
    pub rebase: bool,
}

impl Options {
    pub fn new(namespace: &str, mode: Mode) -> Options {
        Options {
            namespace: namespace.to_string(),
            mode,
            daemon_args: Vec::new(),
            daemon_config: None,
            max_concurrent_unpacks: None,
            rebase: false,
        }
    }
}

/// Our daemon and a private containerd using it, both in `dir`; torn
/// down on drop (also when a test fails), printing their logs then.
pub struct Cluster {
    dir: PathBuf,
    ctr: PathBuf,
    sock: PathBuf,
    pub snap_root: PathBuf,
    pub opts: Options,
    snapd: Option<Child>,
    containerd: Option<Child>,
    /// /run/containerd did not exist before: the directory shims put
    /// their sockets in (`s/`, fixed in containerd) is ours to remove.
    own_run_dir: bool,
    torn_down: bool,
}

impl Cluster {
    pub fn start(dir: &Path, tools: &Tools, opts: Options) -> Cluster {
        let sock = dir.join("ctd.sock");
        let snap_sock = dir.join("snap.sock");
        let snap_root = dir.join("snap");
        let mut c = Cluster {
            dir: dir.to_path_buf(),
            ctr: tools.ctr.clone(),
            sock: sock.clone(),
            snap_root: snap_root.clone(),
            opts,
            snapd: None,
            containerd: None,
            own_run_dir: !Path::new(RUN_DIR).exists(),
            torn_down: false,
        };

        c.spawn_daemon();

        let config = dir.join("containerd.toml");
        fs::write(&config, containerd_config(dir, &snap_sock, &c.opts)).unwrap();
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

    /// Start our daemon on the cluster's root and socket, and wait for
    /// its socket.
    fn spawn_daemon(&mut self) {
        let snap_sock = self.dir.join("snap.sock");
        let mut cmd = Command::new(bin());
        cmd.arg("serve")
            .arg("--root")
            .arg(&self.snap_root)
            .arg("--address")
            .arg(&snap_sock)
            // Where our differ reads layer blobs (dialled when it applies
            // one, so containerd may start later).
            .arg("--containerd-address")
            .arg(&self.sock)
            .args(&self.opts.daemon_args);
        if let Some(config) = &self.opts.daemon_config {
            let path = self.dir.join("snapshotter.toml");
            fs::write(&path, config).unwrap();
            cmd.arg("--config").arg(path);
        }
        let log = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join("snapshotter.log"))
            .unwrap();
        self.snapd = Some(
            cmd.stdin(Stdio::null())
                .stdout(log.try_clone().unwrap())
                .stderr(log)
                .spawn()
                .expect("starting erofs-snapshotter serve"),
        );
        let deadline = Instant::now() + Duration::from_secs(30);
        while !snap_sock.exists() {
            if let Some(s) = self.snapd.as_mut().unwrap().try_wait().unwrap() {
                panic!("erofs-snapshotter serve exited: {s}");
            }
            assert!(
                Instant::now() < deadline,
                "{} never appeared",
                snap_sock.display()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Stop our daemon (SIGTERM, as at a node's shutdown), run `between`
    /// on its root, and start it again; containerd keeps running. Its
    /// log goes on in the same file.
    pub fn restart_daemon(&mut self, between: impl FnOnce(&Path)) {
        if let Some(mut d) = self.snapd.take() {
            stop(&mut d, Duration::from_secs(30));
        }
        between(&self.snap_root);
        let _ = fs::remove_file(self.dir.join("snap.sock"));
        self.spawn_daemon();
    }

    fn ctr_command(&self, ns: &str, args: &[&str]) -> Command {
        let mut cmd = Command::new(&self.ctr);
        cmd.arg("-a").arg(&self.sock).args(["-n", ns]).args(args);
        cmd
    }

    /// `ctr -a SOCK -n NS ARGS...` in namespace `ns`, unchecked.
    pub fn ctr_in(&self, ns: &str, args: &[&str]) -> Ran {
        run_timeout(&mut self.ctr_command(ns, args), CTR_TIMEOUT)
    }

    /// `ctr …` in the test's namespace that must succeed, its standard
    /// output (a layer blob, say) written to `out`.
    pub fn ctr_to(&self, args: &[&str], out: &Path) -> Ran {
        let mut cmd = self.ctr_command(&self.opts.namespace, args);
        run_timeout_to(&mut cmd, CTR_TIMEOUT, fs::File::create(out).unwrap()).ok()
    }

    /// `ctr …` in the test's namespace, unchecked.
    pub fn ctr_raw(&self, args: &[&str]) -> Ran {
        self.ctr_in(&self.opts.namespace, args)
    }

    /// `ctr …` that must succeed.
    pub fn ctr(&self, args: &[&str]) -> Ran {
        self.ctr_raw(args).ok()
    }

    /// `ctr images pull --plain-http --snapshotter S REF` in `ns` through
    /// the transfer service (which unpacks per `unpack_config`); must
    /// succeed. Returns how long it took.
    pub fn pull(&self, ns: &str, reference: &str) -> Duration {
        let t = Instant::now();
        self.ctr_in(
            ns,
            &[
                "images",
                "pull",
                "--plain-http",
                "--snapshotter",
                self.opts.mode.snapshotter(),
                reference,
            ],
        )
        .ok();
        t.elapsed()
    }

    /// `ctr run --rm` of `image` in `ns` as container `id`, running
    /// `argv`; unchecked.
    pub fn run_in(&self, ns: &str, image: &str, id: &str, argv: &[&str]) -> Ran {
        self.run_with(ns, &["--rm"], image, id, argv)
    }

    /// `ctr run FLAGS…` of `image` in `ns` as container `id`, running
    /// `argv`; unchecked.
    pub fn run_with(&self, ns: &str, flags: &[&str], image: &str, id: &str, argv: &[&str]) -> Ran {
        let fifo = self.dir.join("fifo");
        let runc_root = self.dir.join("runc");
        let mut args = vec!["run"];
        args.extend(flags);
        args.extend([
            "--snapshotter",
            self.opts.mode.snapshotter(),
            "--fifo-dir",
            fifo.to_str().unwrap(),
            "--runc-root",
            runc_root.to_str().unwrap(),
            image,
            id,
        ]);
        args.extend(argv);
        self.ctr_in(ns, &args)
    }

    /// `sh -c script` in a container of `image` in the test's namespace;
    /// must succeed. Returns its stdout.
    pub fn sh(&self, image: &str, id: &str, script: &str) -> String {
        self.run_in(&self.opts.namespace, image, id, &["/bin/sh", "-c", script])
            .ok()
            .stdout
    }

    /// Snapshots in the mode's snapshotter as containerd lists them in
    /// `ns`: key → (parent, kind).
    pub fn snapshots_in(&self, ns: &str) -> BTreeMap<String, (String, String)> {
        let r = self
            .ctr_in(
                ns,
                &[
                    "snapshots",
                    "--snapshotter",
                    self.opts.mode.snapshotter(),
                    "ls",
                ],
            )
            .ok();
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

    /// [`Cluster::snapshots_in`] the test's namespace.
    pub fn snapshots(&self) -> BTreeMap<String, (String, String)> {
        self.snapshots_in(&self.opts.namespace)
    }

    /// Snapshot directories in our root (`snapshots/<id>`).
    pub fn snapshot_dirs(&self) -> Vec<PathBuf> {
        let mut v: Vec<PathBuf> = fs::read_dir(self.snap_root.join("snapshots"))
            .unwrap()
            .map(|e| e.unwrap().path())
            .collect();
        v.sort();
        v
    }

    /// Every snapshot directory in our root holds a `layer.erofs` that
    /// both fscks accept, and an empty `fs/` (the layer went into the
    /// image, whether our differ wrote it or Commit converted an upper).
    /// Returns the images.
    pub fn layer_images(&self) -> Vec<PathBuf> {
        let dirs = self.snapshot_dirs();
        let fsck = find_tool("fsck.erofs").unwrap();
        dirs.iter()
            .map(|d| {
                let blob = d.join("layer.erofs");
                assert!(blob.is_file(), "{} missing", blob.display());
                run(Command::new(&fsck).arg(&blob)).ok();
                cli(["fsck".as_ref(), blob.as_os_str()]).ok();
                assert!(
                    fs::read_dir(d.join("fs")).unwrap().next().is_none(),
                    "{}/fs not empty",
                    d.display()
                );
                blob
            })
            .collect()
    }

    /// What our daemon printed so far.
    pub fn daemon_log(&self) -> String {
        fs::read_to_string(self.dir.join("snapshotter.log")).unwrap_or_default()
    }

    /// Stop everything and unmount whatever is left under the directory.
    /// Returns the mounts that were still there once both processes had
    /// stopped (which a correct shutdown leaves none of).
    pub fn teardown(&mut self) -> Vec<String> {
        if self.torn_down {
            return Vec::new();
        }
        self.torn_down = true;
        let ctd_alive = self
            .containerd
            .as_mut()
            .is_some_and(|c| c.try_wait().ok().flatten().is_none());
        let mut namespaces = vec![self.opts.namespace.clone()];
        if ctd_alive {
            let listed = self.ctr_raw(&["namespaces", "ls", "-q"]).stdout;
            namespaces.extend(listed.split_whitespace().map(str::to_string));
            namespaces.sort();
            namespaces.dedup();
            // Containers left by a failed test, so their shims exit.
            for ns in &namespaces {
                let tasks = self.ctr_in(ns, &["tasks", "ls", "-q"]);
                for t in tasks.stdout.split_whitespace() {
                    let _ = self.ctr_in(ns, &["tasks", "kill", "-s", "SIGKILL", t]);
                    let _ = self.ctr_in(ns, &["tasks", "rm", "-f", t]);
                }
                let ctrs = self.ctr_in(ns, &["containers", "ls", "-q"]);
                for c in ctrs.stdout.split_whitespace() {
                    let _ = self.ctr_in(ns, &["containers", "rm", c]);
                }
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
        // Empty cgroups runc left for the namespaces (v1 and v2 layouts).
        for ns in &namespaces {
            if let Ok(entries) = fs::read_dir("/sys/fs/cgroup") {
                for e in entries.flatten() {
                    let _ = fs::remove_dir(e.path().join(ns));
                }
            }
            let _ = fs::remove_dir(Path::new("/sys/fs/cgroup").join(ns));
        }
        if self.own_run_dir {
            let run = Path::new(RUN_DIR);
            let mut dirs = vec![run.join("s")];
            dirs.extend(namespaces.iter().map(|ns| run.join("runc").join(ns)));
            dirs.extend([run.join("runc"), run.into()]);
            for d in dirs {
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
        eprintln!(
            "===== erofs-snapshotter serve log =====\n{}",
            self.daemon_log()
        );
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

/// What `ctr snapshots ls` shows after unpacking layers with these chain
/// IDs: each committed, its parent the one below.
pub fn committed_chain(chain_ids: &[String]) -> BTreeMap<String, (String, String)> {
    let parents = std::iter::once(String::new()).chain(chain_ids.iter().cloned());
    chain_ids
        .iter()
        .zip(parents)
        .map(|(id, parent)| (id.clone(), (parent, "Committed".to_string())))
        .collect()
}

/// The configuration `scripts/containerd-config.sh` writes for `opts`
/// (shared with bench/pull.sh): everything below `dir`, our daemon as
/// proxy snapshotter (and differ), one unpack entry for the mode.
fn containerd_config(dir: &Path, snap_sock: &Path, opts: &Options) -> String {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../scripts/containerd-config.sh");
    let mut cmd = Command::new("bash");
    cmd.arg(script)
        .arg(dir)
        .arg(snap_sock)
        .args([opts.mode.snapshotter(), opts.mode.differ()]);
    if let Some(n) = opts.max_concurrent_unpacks {
        cmd.args(["--max-concurrent-unpacks", &n.to_string()]);
    }
    if opts.rebase {
        cmd.arg("--rebase");
    }
    run(&mut cmd).ok().stdout
}
