//! Making layer images durable after Apply has answered.
//!
//! Waiting for the disk before answering Apply costs a pull up to a
//! second per gigabyte, yet nothing needs the bytes on disk until the
//! machine loses power. So in the default `deferred` mode the differ
//! renames the image into place without an fsync, after tagging the
//! snapshot directory with a [`Record`] of the blob (the [`PENDING`]
//! xattr). Commit queues the image, and a background thread fsyncs it
//! and then drops the tag, once snapshot activity pauses ([`Pacing`]).
//! Not earlier, and with no early writeback while the image is written:
//! on ext4 (data=ordered) every fsync on the filesystem, our store's and
//! containerd's included, waits for image data that is allocated and
//! being written, but not for data the kernel has not allocated yet.
//!
//! The record names the boot it was written in, which tells the next
//! start what happened:
//!
//! * same boot (the daemon restarted): the page cache still holds the
//!   image as written, so it is just fsynced again;
//! * another boot: the image may be torn. The record moves to a durable
//!   [`LOST`] file, nothing mounts the layer, and the differ rebuilds it
//!   from the blob the record names (conversion is deterministic, so the
//!   image comes back byte for byte).
//!
//! An xattr rather than a file because it is metadata: journaled with the
//! directory and ordered before the image's rename, so no crash shows the
//! image without its whole record (a small file's data could still be in
//! the page cache when its name reaches the disk). And containerd's
//! Commit, whose store transaction is fsynced, makes both durable before
//! the layer is ever used.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Condvar, Mutex, OnceLock};
use std::time::{Duration, Instant};

use crate::layout::BLOB;

/// The xattr on a snapshot directory whose image is not known to be on
/// disk yet.
pub const PENDING: &str = "user.erofs-snapshotter.pending";
/// Beside `layer.erofs` when a crash may have torn it: the record of the
/// blob to rebuild it from, plus why a rebuild failed, if one did.
pub const LOST: &str = "layer.lost";

/// What the differ wrote, enough to write it again.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    /// `/proc/sys/kernel/random/boot_id` when the image was written.
    pub boot_id: String,
    /// The containerd namespace the blob was read in.
    pub namespace: String,
    pub digest: String,
    pub media_type: String,
    pub size: u64,
    /// What Apply returned: a rebuild must give the same.
    pub diff_id: String,
    pub tar_index: bool,
    /// Why the last rebuild failed (only in [`LOST`]).
    pub failure: Option<String>,
}

impl Record {
    pub fn to_text(&self) -> String {
        let mut s = format!(
            "boot_id={}\nnamespace={}\ndigest={}\nmedia_type={}\nsize={}\ndiff_id={}\ntar_index={}\n",
            self.boot_id,
            self.namespace,
            self.digest,
            self.media_type,
            self.size,
            self.diff_id,
            self.tar_index
        );
        if let Some(f) = &self.failure {
            // One line, whatever the error said.
            s.push_str(&format!("failure={}\n", f.replace('\n', " ")));
        }
        s
    }

    /// `None` for anything incomplete: a record a crash cut short.
    pub fn parse(text: &str) -> Option<Record> {
        let field = |name: &str| {
            text.lines()
                .find_map(|l| l.strip_prefix(name)?.strip_prefix('='))
                .map(str::to_string)
        };
        Some(Record {
            boot_id: field("boot_id").filter(|b| !b.is_empty())?,
            namespace: field("namespace")?,
            digest: field("digest").filter(|d| !d.is_empty())?,
            media_type: field("media_type")?,
            size: field("size")?.parse().ok()?,
            diff_id: field("diff_id")?,
            tar_index: field("tar_index")?.parse().ok()?,
            failure: field("failure"),
        })
    }
}

/// This boot's id: differs after every reboot, crash or not.
pub fn boot_id() -> io::Result<String> {
    static ID: OnceLock<String> = OnceLock::new();
    if let Some(id) = ID.get() {
        return Ok(id.clone());
    }
    let id = fs::read_to_string("/proc/sys/kernel/random/boot_id")?
        .trim()
        .to_string();
    Ok(ID.get_or_init(|| id).clone())
}

/// Tag snapshot directory `dir` as holding an image not yet on disk.
/// `Ok(false)` where the filesystem keeps no xattrs: the caller must
/// then fsync before answering.
pub fn mark_pending(dir: &Path, record: &Record) -> io::Result<bool> {
    match rustix::fs::setxattr(
        dir,
        PENDING,
        record.to_text().as_bytes(),
        rustix::fs::XattrFlags::empty(),
    ) {
        Ok(()) => Ok(true),
        Err(e) if e == rustix::io::Errno::NOTSUP || e == rustix::io::Errno::PERM => Ok(false),
        Err(e) => Err(e.into()),
    }
}

/// Whether `dir` holds an image not yet known to be on disk.
pub fn is_pending(dir: &Path) -> bool {
    matches!(pending_record(dir), Ok(Some(_)))
}

fn pending_record(dir: &Path) -> io::Result<Option<String>> {
    let mut buf = [0u8; 4096];
    match rustix::fs::getxattr(dir, PENDING, &mut buf[..]) {
        Ok(n) => Ok(Some(
            String::from_utf8_lossy(&buf[..n.min(buf.len())]).into_owned(),
        )),
        Err(e) if e == rustix::io::Errno::NODATA || e == rustix::io::Errno::NOTSUP => Ok(None),
        Err(e) => Err(e.into()),
    }
}

/// Drop the [`PENDING`] record (the image is durable, or gone).
pub fn clear_pending(dir: &Path) -> io::Result<()> {
    match rustix::fs::removexattr(dir, PENDING) {
        Err(e) if e != rustix::io::Errno::NODATA && e != rustix::io::Errno::NOENT => Err(e.into()),
        _ => Ok(()),
    }
}

/// Write a small file through a temporary file in `dir` and a rename,
/// fsynced first, so that the name never shows an empty file after a
/// crash.
pub(crate) fn write_file_durably(dir: &Path, path: &Path, bytes: &[u8]) -> io::Result<()> {
    use std::io::Write as _;
    use std::os::unix::fs::PermissionsExt as _;
    let mut tmp = tempfile::Builder::new()
        .prefix(crate::layout::TEMP_PREFIX)
        .tempfile_in(dir)?;
    tmp.write_all(bytes)?;
    tmp.as_file()
        .set_permissions(fs::Permissions::from_mode(0o644))?;
    tmp.as_file().sync_all()?;
    tmp.persist(path).map_err(|e| e.error)?;
    Ok(())
}

/// Write the [`LOST`] file for `dir`, durably (the directory too):
/// nothing may mount the image until a rebuild removes it.
pub fn write_lost(dir: &Path, text: &str) -> io::Result<()> {
    write_file_durably(dir, &dir.join(LOST), text.as_bytes())?;
    fs::File::open(dir)?.sync_all()
}

/// The record of a lost image, if `dir` holds one (`Some(None)` for a
/// record that cannot be read back).
pub fn lost(dir: &Path) -> io::Result<Option<Option<Record>>> {
    match fs::read_to_string(dir.join(LOST)) {
        Ok(text) => Ok(Some(Record::parse(&text))),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e),
    }
}

/// What the start-up scan makes of a snapshot directory.
#[derive(Debug, PartialEq, Eq)]
pub enum State {
    /// The image is on disk (or there is none).
    Durable,
    /// Written in this boot; still to be fsynced.
    Pending,
    /// Possibly torn by a crash.
    Lost(Option<Record>),
}

/// Classify `dir` (a snapshot directory) at start-up, turning a pending
/// record from an earlier boot into a lost one.
pub fn scan(dir: &Path) -> io::Result<State> {
    if let Some(record) = lost(dir)? {
        return Ok(State::Lost(record));
    }
    let Some(text) = pending_record(dir)? else {
        return Ok(State::Durable);
    };
    let record = Record::parse(&text);
    if let Some(r) = &record
        && r.boot_id == boot_id()?
    {
        return Ok(State::Pending);
    }
    write_lost(dir, &text)?;
    clear_pending(dir)?;
    Ok(State::Lost(record))
}

/// One fsynced layer, for the log and the metrics.
#[derive(Debug, Clone)]
pub struct Synced {
    pub dir: PathBuf,
    /// Time the fsync itself took.
    pub sync: std::time::Duration,
    /// From queueing to durable: how long a crash could have cost it.
    pub lag: std::time::Duration,
    pub error: Option<String>,
}

struct Job {
    dir: PathBuf,
    queued: Instant,
}

/// When the background fsyncs run. Writing a gigabyte out takes the disk
/// seconds, and on ext4 (data=ordered) every fsync on the filesystem
/// meanwhile waits for what is in flight: containerd's own metadata
/// commits at the end of a pull and at container creation would. So the
/// syncer waits for a pause in snapshot activity, but never longer than
/// `max_delay` (the kernel's own writeback starts after 30 s anyway).
#[derive(Debug, Clone, Copy, Default)]
pub struct Pacing {
    /// Time without snapshot activity before an fsync starts; zero syncs
    /// at once.
    pub idle: Duration,
    pub max_delay: Duration,
}

/// The longest an image waits for a pause, as the kernel's
/// `dirty_expire_centisecs` default.
pub const MAX_DELAY: Duration = Duration::from_secs(30);

/// Snapshot activity, shared between the syncer and its users.
#[derive(Default)]
struct Activity {
    epoch: OnceLock<Instant>,
    /// Nanoseconds after `epoch` of the last activity.
    last: AtomicU64,
    /// Operations in progress (an Apply can take longer than `idle`).
    busy: AtomicUsize,
    /// Stopping: no more waiting for pauses.
    draining: AtomicBool,
}

impl Activity {
    fn now(&self) -> u64 {
        let epoch = *self.epoch.get_or_init(Instant::now);
        u64::try_from(epoch.elapsed().as_nanos()).unwrap_or(u64::MAX)
    }

    fn touch(&self) {
        self.last.store(self.now(), Ordering::Relaxed);
    }

    /// Whether an fsync queued at `queued` may start now.
    fn may_sync(&self, pacing: &Pacing, queued: Instant) -> bool {
        if self.draining.load(Ordering::Relaxed) || queued.elapsed() >= pacing.max_delay {
            return true;
        }
        let idle =
            Duration::from_nanos(self.now().saturating_sub(self.last.load(Ordering::Relaxed)));
        self.busy.load(Ordering::Relaxed) == 0 && idle >= pacing.idle
    }
}

/// Counts as snapshot activity until dropped.
pub struct Busy(Arc<Activity>);

impl Drop for Busy {
    fn drop(&mut self) {
        self.0.touch();
        self.0.busy.fetch_sub(1, Ordering::Relaxed);
    }
}

/// The background thread that fsyncs images in the order they were
/// written (the disk is the bottleneck; one at a time keeps each layer's
/// window short).
pub struct Syncer {
    tx: Mutex<Option<mpsc::Sender<Job>>>,
    thread: Mutex<Option<std::thread::JoinHandle<()>>>,
    /// Jobs queued and not yet done, to wait for.
    outstanding: Arc<(Mutex<usize>, Condvar)>,
    activity: Arc<Activity>,
}

pub type OnSynced = Box<dyn Fn(&Synced) + Send>;

/// How often a waiting syncer looks for a pause.
const POLL: Duration = Duration::from_millis(50);

impl Syncer {
    pub fn start(on_synced: OnSynced, pacing: Pacing) -> io::Result<Syncer> {
        let (tx, rx) = mpsc::channel::<Job>();
        let outstanding = Arc::new((Mutex::new(0usize), Condvar::new()));
        let count = outstanding.clone();
        let activity = Arc::new(Activity::default());
        activity.touch();
        let seen = activity.clone();
        let thread = std::thread::Builder::new()
            .name("layer-sync".into())
            .spawn(move || {
                for job in rx {
                    while !seen.may_sync(&pacing, job.queued) {
                        std::thread::sleep(POLL);
                    }
                    let start = Instant::now();
                    let error = make_durable(&job.dir).err();
                    on_synced(&Synced {
                        sync: start.elapsed(),
                        lag: job.queued.elapsed(),
                        error: error.map(|e| e.to_string()),
                        dir: job.dir,
                    });
                    let (n, done) = &*count;
                    let mut n = n.lock().unwrap_or_else(|p| p.into_inner());
                    *n = n.saturating_sub(1);
                    done.notify_all();
                }
            })?;
        Ok(Syncer {
            tx: Mutex::new(Some(tx)),
            thread: Mutex::new(Some(thread)),
            outstanding,
            activity,
        })
    }

    /// Snapshot activity happened: postpone fsyncs by the idle time.
    pub fn touch(&self) {
        self.activity.touch();
    }

    /// Snapshot activity for as long as the guard lives.
    pub fn busy(&self) -> Busy {
        self.activity.busy.fetch_add(1, Ordering::Relaxed);
        Busy(self.activity.clone())
    }

    /// Queue `dir`'s image (with its [`PENDING`] record) for an fsync.
    pub fn submit(&self, dir: PathBuf) {
        let tx = self.tx.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(tx) = tx.as_ref() {
            let (n, _) = &*self.outstanding;
            *n.lock().unwrap_or_else(|p| p.into_inner()) += 1;
            if tx
                .send(Job {
                    dir,
                    queued: Instant::now(),
                })
                .is_err()
            {
                *n.lock().unwrap_or_else(|p| p.into_inner()) -= 1;
            }
        }
    }

    /// Wait until everything queued so far is durable.
    pub fn wait(&self) {
        let (n, done) = &*self.outstanding;
        let mut n = n.lock().unwrap_or_else(|p| p.into_inner());
        while *n > 0 {
            n = done.wait(n).unwrap_or_else(|p| p.into_inner());
        }
    }

    /// Finish the queue without waiting for pauses and stop the thread
    /// (at shutdown, so that a clean stop leaves no record behind).
    pub fn stop(&self) {
        self.activity.draining.store(true, Ordering::Relaxed);
        self.tx.lock().unwrap_or_else(|p| p.into_inner()).take();
        if let Some(t) = self.thread.lock().unwrap_or_else(|p| p.into_inner()).take() {
            let _ = t.join();
        }
    }
}

impl Drop for Syncer {
    fn drop(&mut self) {
        self.stop();
    }
}

/// fsync the image and its directory, then drop the record. A snapshot
/// removed in the meantime is not an error. An fsync that fails leaves
/// the data in doubt, so the record turns lost.
fn make_durable(dir: &Path) -> io::Result<()> {
    let image = dir.join(BLOB);
    let synced = fs::File::open(&image)
        .and_then(|f| f.sync_all())
        .and_then(|()| fs::File::open(dir)?.sync_all());
    match synced {
        Ok(()) => clear_pending(dir),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => {
            if let Ok(Some(text)) = pending_record(dir) {
                let _ = write_lost(dir, &text);
            }
            Err(io::Error::new(
                e.kind(),
                format!("fsync of {}: {e}", image.display()),
            ))
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    fn record() -> Record {
        Record {
            boot_id: boot_id().unwrap(),
            namespace: "default".into(),
            digest: format!("sha256:{}", "a".repeat(64)),
            media_type: "application/vnd.oci.image.layer.v1.tar+gzip".into(),
            size: 42,
            diff_id: format!("sha256:{}", "b".repeat(64)),
            tar_index: false,
            failure: None,
        }
    }

    #[test]
    fn records_round_trip_and_torn_ones_are_refused() {
        let r = record();
        assert_eq!(Record::parse(&r.to_text()), Some(r.clone()));
        let failed = Record {
            failure: Some("no\nsuch blob".into()),
            ..r.clone()
        };
        let parsed = Record::parse(&failed.to_text()).unwrap();
        assert_eq!(parsed.failure.as_deref(), Some("no such blob"));
        let text = r.to_text();
        for cut in [0, 10, text.len() / 2, text.len() - 2] {
            assert_eq!(Record::parse(&text[..cut]), None, "cut at {cut}");
        }
    }

    #[test]
    fn scan_tells_restart_from_crash() {
        let d = tempfile::tempdir().unwrap();
        fs::write(d.path().join(BLOB), b"image").unwrap();
        assert_eq!(scan(d.path()).unwrap(), State::Durable);

        assert!(mark_pending(d.path(), &record()).unwrap());
        assert_eq!(scan(d.path()).unwrap(), State::Pending);

        let other = Record {
            boot_id: "another-boot".into(),
            ..record()
        };
        assert!(mark_pending(d.path(), &other).unwrap());
        assert_eq!(scan(d.path()).unwrap(), State::Lost(Some(other.clone())));
        assert_eq!(pending_record(d.path()).unwrap(), None);
        // Stays lost until rebuilt.
        assert_eq!(scan(d.path()).unwrap(), State::Lost(Some(other)));
        assert!(lost(d.path()).unwrap().is_some());
    }

    #[test]
    fn syncer_drops_records_and_tolerates_removed_snapshots() {
        let d = tempfile::tempdir().unwrap();
        let a = d.path().join("1");
        fs::create_dir(&a).unwrap();
        fs::write(a.join(BLOB), b"image").unwrap();
        assert!(mark_pending(&a, &record()).unwrap());
        let seen = Arc::new(Mutex::new(Vec::new()));
        let log = seen.clone();
        let syncer = Syncer::start(
            Box::new(move |s| {
                log.lock().unwrap().push(s.error.clone());
            }),
            Pacing::default(),
        )
        .unwrap();
        syncer.submit(a.clone());
        syncer.submit(d.path().join("gone"));
        syncer.wait();
        assert_eq!(pending_record(&a).unwrap(), None);
        assert!(a.join(BLOB).exists());
        assert_eq!(*seen.lock().unwrap(), vec![None, None]);
        syncer.stop();
        // After stop, submissions are dropped rather than blocking.
        syncer.submit(a);
        syncer.wait();
    }

    #[test]
    fn syncs_wait_for_a_pause_but_not_forever() {
        let d = tempfile::tempdir().unwrap();
        fs::write(d.path().join(BLOB), b"image").unwrap();
        let pacing = Pacing {
            idle: Duration::from_millis(300),
            max_delay: Duration::from_secs(2),
        };
        let lags = Arc::new(Mutex::new(Vec::new()));
        let log = lags.clone();
        let syncer =
            Syncer::start(Box::new(move |s| log.lock().unwrap().push(s.lag)), pacing).unwrap();

        // Activity just now: the fsync waits for the idle time.
        syncer.touch();
        syncer.submit(d.path().to_path_buf());
        syncer.wait();
        let lag = lags.lock().unwrap()[0];
        assert!(lag >= Duration::from_millis(250), "{lag:?}");

        // Busy all along: only the maximum delay lets it through.
        let busy = syncer.busy();
        syncer.submit(d.path().to_path_buf());
        syncer.wait();
        let lag = lags.lock().unwrap()[1];
        assert!(lag >= Duration::from_secs(2), "{lag:?}");
        drop(busy);

        // Stopping drains at once.
        let busy = syncer.busy();
        syncer.submit(d.path().to_path_buf());
        let start = Instant::now();
        syncer.stop();
        assert!(start.elapsed() < Duration::from_secs(1));
        assert_eq!(lags.lock().unwrap().len(), 3);
        drop(busy);
    }
}
