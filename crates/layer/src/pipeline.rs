//! Two-stage pipeline: one thread reads and inflates the compressed layer,
//! the calling thread hashes, parses and writes. On two cores this keeps
//! inflate, the slowest stage, running without pause.

use std::io::{self, Read};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, SyncSender, sync_channel};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use sha2::{Digest as _, Sha256};

use crate::digest::Digest;

/// Size of the buffers handed between the stages.
const CHUNK: usize = 1 << 20;
/// Buffers in flight: enough to absorb jitter, small enough for the
/// memory budget.
const DEPTH: usize = 4;

/// What the producer thread measured.
#[derive(Debug, Clone, Copy, Default)]
pub struct ProducerStats {
    /// Time spent inside the decoder's `read` (inflate plus input I/O),
    /// hashing included when the producer hashes.
    pub busy: Duration,
    /// Uncompressed bytes produced.
    pub bytes: u64,
    /// sha256 of everything produced, when asked for.
    pub digest: Option<Digest>,
}

/// The consuming end: a `Read` over the producer's buffers.
pub struct PipeReader {
    rx: Receiver<io::Result<Vec<u8>>>,
    recycle: SyncSender<Vec<u8>>,
    cur: Vec<u8>,
    pos: usize,
    done: bool,
    waited: WaitClock,
}

/// Time the consumer spent blocked on an empty pipe: subtracted from a
/// stage's wall time it gives the time the stage itself took, which is
/// what per-stage timings report.
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
}

impl Read for PipeReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        while self.pos == self.cur.len() {
            if self.done {
                return Ok(0);
            }
            let start = Instant::now();
            let received = self.rx.recv();
            self.waited.add(start.elapsed());
            match received {
                Ok(Ok(chunk)) => {
                    let old = std::mem::replace(&mut self.cur, chunk);
                    self.pos = 0;
                    // The producer may be gone; then the buffer is dropped.
                    let _ = self.recycle.try_send(old);
                }
                Ok(Err(e)) => {
                    self.done = true;
                    return Err(e);
                }
                Err(_) => self.done = true,
            }
        }
        let n = buf.len().min(self.cur.len() - self.pos);
        buf[..n].copy_from_slice(&self.cur[self.pos..self.pos + n]);
        self.pos += n;
        Ok(n)
    }
}

/// Start reading `src` on its own thread. The thread ends at end of input,
/// on the first error (passed to the reader), or when the reader is
/// dropped. With `hash`, the producer also computes the sha256 of what it
/// produces: worth it when it has time to spare (uncompressed input),
/// while with compressed input inflate alone keeps it busy and the
/// consumer should hash.
///
/// `name` names the thread (what profilers and `top -H` show).
pub fn spawn(
    name: &str,
    src: Box<dyn Read + Send>,
    hash: bool,
) -> io::Result<(PipeReader, JoinHandle<ProducerStats>)> {
    let (tx, rx) = sync_channel::<io::Result<Vec<u8>>>(DEPTH);
    let (recycle_tx, recycle_rx) = sync_channel::<Vec<u8>>(DEPTH + 2);
    let handle = std::thread::Builder::new()
        .name(name.into())
        .spawn(move || {
            let mut src = src;
            let mut hasher = hash.then(Sha256::new);
            let mut stats = ProducerStats::default();
            let finish = |mut stats: ProducerStats, hasher: Option<Sha256>| {
                stats.digest = hasher.map(|h| Digest::from_bytes(h.finalize().into()));
                stats
            };
            loop {
                let mut buf = recycle_rx.try_recv().unwrap_or_default();
                buf.resize(CHUNK, 0);
                let mut filled = 0;
                let start = Instant::now();
                let result = loop {
                    match src.read(&mut buf[filled..]) {
                        Ok(0) => break Ok(()),
                        Ok(n) => {
                            filled += n;
                            if filled == buf.len() {
                                break Ok(());
                            }
                        }
                        Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                        Err(e) => break Err(e),
                    }
                };
                if let Some(h) = &mut hasher {
                    h.update(&buf[..filled]);
                }
                stats.busy += start.elapsed();
                stats.bytes += filled as u64;
                buf.truncate(filled);
                let end = filled == 0;
                if filled > 0 && tx.send(Ok(buf)).is_err() {
                    return finish(stats, hasher);
                }
                if let Err(e) = result {
                    let _ = tx.send(Err(e));
                    return finish(stats, hasher);
                }
                if end {
                    return finish(stats, hasher);
                }
            }
        })?;
    Ok((
        PipeReader {
            rx,
            recycle: recycle_tx,
            cur: Vec::new(),
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
    fn dropping_the_reader_stops_the_producer() {
        let (r, h) = spawn("test", Box::new(io::repeat(7)), false).unwrap();
        drop(r);
        h.join().unwrap();
    }
}
