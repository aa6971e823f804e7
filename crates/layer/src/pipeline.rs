//! The stages of a conversion and what they hand each other: one thread
//! reads (and inflates) the layer into page-aligned chunks, which the
//! parsing-and-writing thread then takes without copying. The stream's
//! sha256 is hashed by whichever of the two would otherwise wait (see
//! [`crate::pipe`]). On two cores this keeps inflate, the slowest stage,
//! running without pause.

use std::io::{self, BufRead, Read};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, SyncSender, sync_channel};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use erofs::pagebuf::PageBuf;

use crate::digest::Digest;
use crate::pipe::{HASH_BACKLOG, Pipe};

/// Size of the buffers handed between the stages.
const CHUNK: usize = 1 << 20;
/// Buffers in flight: enough to absorb jitter, small enough for the
/// memory budget.
const DEPTH: usize = 4;

/// A piece of the stream, shared read-only by the stages that need it
/// (parsing and writing, hashing) so none has to copy it. Its buffer goes
/// back to whoever made it when the last holder drops it.
#[derive(Clone)]
pub struct Chunk {
    buf: Arc<ChunkBuf>,
    start: usize,
    end: usize,
}

struct ChunkBuf {
    /// Page-aligned where the chunk was read into, so the kernel's copy
    /// into it runs at full speed (see [`erofs::pagebuf`]).
    bytes: PageBuf,
    home: Option<SyncSender<PageBuf>>,
}

impl Drop for ChunkBuf {
    fn drop(&mut self) {
        if let Some(home) = &self.home {
            // A full or closed home just means the buffer is freed.
            let _ = home.try_send(std::mem::take(&mut self.bytes));
        }
    }
}

impl Chunk {
    /// A chunk of the first `end` bytes of `bytes`, which go back to
    /// `home` when it is dropped.
    fn with_home(bytes: PageBuf, end: usize, home: Option<SyncSender<PageBuf>>) -> Chunk {
        Chunk {
            buf: Arc::new(ChunkBuf { bytes, home }),
            start: 0,
            end,
        }
    }

    /// The chunk from byte `from` on (clamped to its length).
    pub fn tail(&self, from: usize) -> Chunk {
        let mut c = self.clone();
        c.start = (c.start + from).min(c.end);
        c
    }
}

impl std::fmt::Debug for Chunk {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Chunk").field("len", &self.len()).finish()
    }
}

impl From<Vec<u8>> for Chunk {
    fn from(bytes: Vec<u8>) -> Chunk {
        let end = bytes.len();
        Chunk::with_home(bytes.into(), end, None)
    }
}

impl std::ops::Deref for Chunk {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        &self.buf.bytes[self.start..self.end]
    }
}

/// A stream handed out in shared chunks rather than copied into the
/// caller's buffer.
pub trait ChunkSource {
    /// The next non-empty piece of the stream, `None` at its end.
    fn next_chunk(&mut self) -> io::Result<Option<Chunk>>;
}

impl<S: ChunkSource + ?Sized> ChunkSource for Box<S> {
    fn next_chunk(&mut self) -> io::Result<Option<Chunk>> {
        (**self).next_chunk()
    }
}

/// Chunks of any reader: one copy, into buffers that are then shared.
pub struct ReadChunks<R> {
    inner: R,
    home: SyncSender<PageBuf>,
    returned: Receiver<PageBuf>,
    /// An error that came after bytes worth handing out first.
    pending: Option<io::Error>,
    /// Size of the next read: small at first, so a small input costs
    /// little, doubling up to [`CHUNK`] while reads fill it.
    size: usize,
}

impl<R: Read> ReadChunks<R> {
    pub fn new(inner: R) -> Self {
        let (home, returned) = sync_channel(2 * DEPTH + 2);
        ReadChunks {
            inner,
            home,
            returned,
            pending: None,
            size: CHUNK / 16,
        }
    }
}

impl<R: Read> ChunkSource for ReadChunks<R> {
    fn next_chunk(&mut self) -> io::Result<Option<Chunk>> {
        if let Some(e) = self.pending.take() {
            return Err(e);
        }
        let mut buf = match self.returned.try_recv() {
            Ok(b) if b.len() >= self.size => b,
            _ => PageBuf::new(self.size),
        };
        let (filled, result) = fill(&mut self.inner, &mut buf[..self.size]);
        if filled == self.size {
            self.size = (self.size * 2).min(CHUNK);
        }
        if filled == 0 {
            return result.map(|()| None);
        }
        // Bytes read before an error are handed out; the error comes
        // with the next call, as a reader would report it.
        self.pending = result.err();
        Ok(Some(Chunk::with_home(buf, filled, Some(self.home.clone()))))
    }
}

/// Read into `buf` until it is full, the input ends or fails.
fn fill(src: &mut dyn Read, buf: &mut [u8]) -> (usize, io::Result<()>) {
    let mut filled = 0;
    loop {
        match src.read(&mut buf[filled..]) {
            Ok(0) => return (filled, Ok(())),
            Ok(n) => {
                filled += n;
                if filled == buf.len() {
                    return (filled, Ok(()));
                }
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return (filled, Err(e)),
        }
    }
}

/// What the producer thread measured.
#[derive(Debug, Clone, Copy, Default)]
pub struct ProducerStats {
    /// Time spent inside the source's `read` (inflate plus input I/O).
    pub busy: Duration,
    /// Bytes produced.
    pub bytes: u64,
    /// sha256 of everything produced, when asked for.
    pub digest: Option<Digest>,
    /// Time that sha256 took, on both threads together.
    pub hashing: Duration,
}

/// The consuming end: the producer's chunks, as a [`ChunkSource`] or
/// (copying) as a `Read`.
pub struct PipeReader {
    pipe: Arc<Pipe>,
    cur: Option<Chunk>,
    pos: usize,
    done: bool,
    waited: WaitClock,
}

/// Time the consumer spent on an empty pipe, waiting or hashing for the
/// producer: subtracted from a stage's wall time it gives the time the
/// stage itself took, which is what per-stage timings report.
#[derive(Debug, Clone, Default)]
pub struct WaitClock(Arc<AtomicU64>);

impl WaitClock {
    pub fn get(&self) -> Duration {
        Duration::from_nanos(self.0.load(Ordering::Relaxed))
    }

    fn add(&self, d: Duration) {
        let nanos = u64::try_from(d.as_nanos()).unwrap_or(u64::MAX);
        self.0.fetch_add(nanos, Ordering::Relaxed);
    }
}

impl PipeReader {
    /// A handle on this reader's blocked time that outlives moving the
    /// reader into a decoder or another thread.
    pub fn wait_clock(&self) -> WaitClock {
        self.waited.clone()
    }

    fn receive(&mut self) -> io::Result<Option<Chunk>> {
        if self.done {
            return Ok(None);
        }
        let start = Instant::now();
        let received = self.pipe.recv();
        self.waited.add(start.elapsed());
        match received {
            Some(Ok(chunk)) => Ok(Some(chunk)),
            Some(Err(e)) => {
                self.done = true;
                Err(e)
            }
            None => {
                self.done = true;
                Ok(None)
            }
        }
    }
}

impl Drop for PipeReader {
    fn drop(&mut self) {
        self.pipe.abandon();
    }
}

/// Closes the pipe when the producer thread ends, however it ends: a
/// reader must never wait for a producer that panicked.
struct Closing(Arc<Pipe>);

impl Drop for Closing {
    fn drop(&mut self) {
        self.0.close();
    }
}

impl ChunkSource for PipeReader {
    fn next_chunk(&mut self) -> io::Result<Option<Chunk>> {
        // What a `Read` caller left of the current chunk comes first.
        if let Some(cur) = self.cur.take()
            && self.pos < cur.len()
        {
            return Ok(Some(cur.tail(std::mem::take(&mut self.pos))));
        }
        self.pos = 0;
        self.receive()
    }
}

impl BufRead for PipeReader {
    fn fill_buf(&mut self) -> io::Result<&[u8]> {
        while self.cur.as_ref().is_none_or(|c| self.pos == c.len()) {
            // The old chunk is dropped first so its buffer can go home.
            self.cur = None;
            self.pos = 0;
            match self.receive()? {
                Some(c) => self.cur = Some(c),
                None => return Ok(&[]),
            }
        }
        Ok(self.cur.as_ref().map_or(&[][..], |c| &c[self.pos..]))
    }

    fn consume(&mut self, n: usize) {
        let len = self.cur.as_ref().map_or(0, |c| c.len());
        self.pos = (self.pos + n).min(len);
    }
}

impl Read for PipeReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let avail = self.fill_buf()?;
        let n = buf.len().min(avail.len());
        buf[..n].copy_from_slice(&avail[..n]);
        self.consume(n);
        Ok(n)
    }
}

/// Start reading `src` on its own thread. The thread ends at end of input,
/// on the first error (passed to the reader), or when the reader is
/// dropped. With `hash`, the sha256 of what it produces comes with its
/// stats, hashed between their own work by this thread and the reader's.
///
/// `name` names the thread (what profilers and `top -H` show).
pub fn spawn(
    name: &str,
    src: Box<dyn Read + Send>,
    hash: bool,
) -> io::Result<(PipeReader, JoinHandle<ProducerStats>)> {
    let pipe = Arc::new(Pipe::new(DEPTH, hash));
    // Room for every buffer that can be out at once (queued, with the
    // consumer, with the producer, waiting to be hashed), so none is
    // freed and allocated again.
    let (home, returned) = sync_channel::<PageBuf>(DEPTH + HASH_BACKLOG + 3);
    let closing = Closing(pipe.clone());
    let handle = std::thread::Builder::new()
        .name(name.into())
        .spawn(move || {
            let mut src = src;
            let mut stats = ProducerStats::default();
            loop {
                let mut buf = returned.try_recv().unwrap_or_else(|_| PageBuf::new(CHUNK));
                let start = Instant::now();
                let (filled, result) = fill(&mut src, &mut buf);
                stats.busy += start.elapsed();
                stats.bytes += filled as u64;
                let chunk = (filled > 0).then(|| Chunk::with_home(buf, filled, Some(home.clone())));
                if chunk.is_some_and(|c| !closing.0.send(Ok(c))) {
                    break;
                }
                if let Err(e) = result {
                    closing.0.send(Err(e));
                    break;
                }
                if filled == 0 {
                    break;
                }
            }
            closing.0.close();
            if let Some((digest, took)) = closing.0.finish_hash() {
                stats.digest = Some(digest);
                stats.hashing = took;
            }
            stats
        })?;
    Ok((
        PipeReader {
            pipe,
            cur: None,
            pos: 0,
            done: false,
            waited: WaitClock::default(),
        },
        handle,
    ))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn passes_bytes_through_in_order() {
        let data: Vec<u8> = (0..5_000_000u32).map(|i| (i % 251) as u8).collect();
        let (mut r, h) = spawn("test", Box::new(io::Cursor::new(data.clone())), true).unwrap();
        let mut out = Vec::new();
        r.read_to_end(&mut out).unwrap();
        assert_eq!(out, data);
        let stats = h.join().unwrap();
        assert_eq!(stats.bytes, data.len() as u64);
        assert_eq!(stats.digest, Some(Digest::of(&data)));
    }

    struct Failing;
    impl Read for Failing {
        fn read(&mut self, _: &mut [u8]) -> io::Result<usize> {
            Err(io::Error::new(io::ErrorKind::InvalidData, "corrupt"))
        }
    }

    #[test]
    fn producer_errors_reach_the_reader() {
        let (mut r, h) = spawn("test", Box::new(Failing), false).unwrap();
        let err = r.read_to_end(&mut Vec::new()).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidData);
        h.join().unwrap();
    }

    #[test]
    fn chunks_and_reads_mix() {
        let data: Vec<u8> = (0..3_000_000u32).map(|i| (i % 253) as u8).collect();
        let (mut r, h) = spawn("test", Box::new(io::Cursor::new(data.clone())), false).unwrap();
        let mut out = vec![0; 1000];
        r.read_exact(&mut out).unwrap();
        while let Some(c) = r.next_chunk().unwrap() {
            out.extend_from_slice(&c);
        }
        assert_eq!(out, data);
        assert!(r.fill_buf().unwrap().is_empty());
        h.join().unwrap();
    }

    #[test]
    fn read_chunks_hands_out_bytes_before_an_error() {
        let mut c = ReadChunks::new(io::Cursor::new(b"abc".to_vec()).chain(Failing));
        assert_eq!(&c.next_chunk().unwrap().unwrap()[..], b"abc");
        let err = c.next_chunk().unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidData);
    }

    /// The kernel copies into page-aligned memory 3x faster here (see
    /// `erofs::pagebuf`): every chunk a read fills must start on a page.
    #[test]
    fn chunks_start_on_a_page() {
        let data = vec![5u8; 3 * CHUNK + 100];
        let aligned = |c: &Chunk| c.as_ptr().addr().is_multiple_of(erofs::pagebuf::ALIGN);
        let mut chunks = ReadChunks::new(io::Cursor::new(data.clone()));
        let mut n = 0;
        while let Some(c) = chunks.next_chunk().unwrap() {
            assert!(aligned(&c));
            n += c.len();
        }
        assert_eq!(n, data.len());
        let (mut r, h) = spawn("test", Box::new(io::Cursor::new(data)), false).unwrap();
        while let Some(c) = r.next_chunk().unwrap() {
            assert!(aligned(&c));
        }
        h.join().unwrap();
    }

    #[test]
    fn dropping_the_reader_stops_the_producer() {
        let (r, h) = spawn("test", Box::new(io::repeat(7)), false).unwrap();
        drop(r);
        h.join().unwrap();
    }
}
