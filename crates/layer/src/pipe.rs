//! The bounded queue between a pipeline's two threads, and the stream
//! hash (the diffID, or a blob's digest) that they share.
//!
//! The hash has no thread of its own. The producer queues every chunk
//! for hashing as it sends it; whichever thread is then about to wait
//! (the producer on a full queue, the consumer on an empty one) hashes
//! the next piece instead. A piece is small, so a thread that finds the
//! other one hashing waits for a fraction of a millisecond before it can
//! take the next piece or its own work. On two cores this keeps both
//! threads busy: a third, hashing thread would take turns with them, and
//! whenever the scheduler left it out the other two would stall on it.

use std::collections::VecDeque;
use std::io;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Condvar, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use sha2::{Digest as _, Sha256};

use crate::digest::Digest;
use crate::pipeline::Chunk;

/// Bytes hashed at a time: about 0.15 ms, the longest one thread waits
/// for the other to put the hasher down.
const PIECE: usize = 256 << 10;

/// Chunks queued for hashing past which nothing more is sent until the
/// hash catches up: it may lag this far behind while both threads have
/// work of their own, and no further, since queued chunks are memory.
pub(crate) const HASH_BACKLOG: usize = 8;

/// What the pipe hands the consumer.
pub(crate) type Message = io::Result<Chunk>;

/// One producer thread's chunks to one consumer thread, at most `depth`
/// in the queue, with the sha256 of all of them when asked for.
pub(crate) struct Pipe {
    depth: usize,
    state: Mutex<State>,
    /// Signalled on every change of `state`; with two threads there is
    /// never more than one waiter to wake.
    changed: Condvar,
    hash_nanos: AtomicU64,
}

struct State {
    queue: VecDeque<Message>,
    /// The producer has ended (end of input, an error, or a panic).
    closed: bool,
    /// The consumer is gone: nothing more is wanted.
    abandoned: bool,
    /// The consumer found the queue empty and is waiting or hashing.
    starved: bool,
    hash: Option<HashQueue>,
}

struct HashQueue {
    /// Out of the state while a thread hashes with it.
    hasher: Option<Sha256>,
    /// Chunks not yet hashed; the first may be partly hashed already.
    backlog: VecDeque<Chunk>,
}

/// A lock whose holder panicked: nothing in `State` is left half-changed
/// by a panic (hashing happens outside the lock), so its state is sound.
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl State {
    /// Whether a hashing piece is there for the taking.
    fn hash_ready(&self) -> bool {
        self.hash
            .as_ref()
            .is_some_and(|h| h.hasher.is_some() && !h.backlog.is_empty())
    }

    fn backlog(&self) -> usize {
        self.hash.as_ref().map_or(0, |h| h.backlog.len())
    }
}

impl Pipe {
    pub(crate) fn new(depth: usize, hash: bool) -> Pipe {
        let depth = depth.max(1);
        Pipe {
            depth,
            state: Mutex::new(State {
                queue: VecDeque::with_capacity(depth),
                closed: false,
                abandoned: false,
                starved: false,
                hash: hash.then(|| HashQueue {
                    hasher: Some(Sha256::new()),
                    backlog: VecDeque::with_capacity(HASH_BACKLOG + 1),
                }),
            }),
            changed: Condvar::new(),
            hash_nanos: AtomicU64::new(0),
        }
    }

    fn wait<'a>(&self, st: MutexGuard<'a, State>) -> MutexGuard<'a, State> {
        self.changed
            .wait(st)
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// Hash the next piece, with the lock dropped meanwhile. Only called
    /// when [`State::hash_ready`].
    fn hash_piece<'a>(&'a self, mut st: MutexGuard<'a, State>) -> MutexGuard<'a, State> {
        let Some(h) = st.hash.as_mut() else {
            return st;
        };
        let (Some(mut hasher), Some(front)) = (h.hasher.take(), h.backlog.pop_front()) else {
            return st;
        };
        let n = front.len().min(PIECE);
        if n < front.len() {
            h.backlog.push_front(front.tail(n));
        }
        drop(st);
        let start = Instant::now();
        hasher.update(&front[..n]);
        let nanos = u64::try_from(start.elapsed().as_nanos()).unwrap_or(u64::MAX);
        self.hash_nanos.fetch_add(nanos, Ordering::Relaxed);
        // Dropped outside the lock: its buffer may go home.
        drop(front);
        let mut st = lock(&self.state);
        if let Some(h) = st.hash.as_mut() {
            h.hasher = Some(hasher);
        }
        self.changed.notify_all();
        st
    }

    /// Producer: queue `m` for the consumer (and a chunk for hashing),
    /// hashing while the queue is full. False when the consumer is gone.
    pub(crate) fn send(&self, m: Message) -> bool {
        let mut st = lock(&self.state);
        if let (Ok(c), Some(h)) = (&m, st.hash.as_mut()) {
            h.backlog.push_back(c.clone());
        }
        loop {
            if st.abandoned {
                return false;
            }
            // Past the backlog's limit the hash goes first, whatever the
            // queue: buffers held for hashing are memory.
            if st.backlog() <= HASH_BACKLOG && st.queue.len() < self.depth {
                st.queue.push_back(m);
                self.changed.notify_all();
                return true;
            }
            // A starved consumer has nothing else to do: the hash is its
            // to take. Were the producer to take the next piece as soon
            // as it put the last one down, the consumer, waking a moment
            // later, would find the hasher gone again.
            st = if st.hash_ready() && !st.starved {
                self.hash_piece(st)
            } else {
                // The chunk just queued for hashing may be what a waiting
                // consumer needs to hear of.
                self.changed.notify_all();
                self.wait(st)
            };
        }
    }

    /// Consumer: the next message, hashing while the queue is empty;
    /// `None` once the producer has ended and the queue is drained.
    pub(crate) fn recv(&self) -> Option<Message> {
        let mut st = lock(&self.state);
        loop {
            if let Some(m) = st.queue.pop_front() {
                st.starved = false;
                self.changed.notify_all();
                return Some(m);
            }
            if st.closed {
                st.starved = false;
                return None;
            }
            st.starved = true;
            st = if st.hash_ready() {
                self.hash_piece(st)
            } else {
                self.wait(st)
            };
        }
    }

    /// Producer: no more messages.
    pub(crate) fn close(&self) {
        lock(&self.state).closed = true;
        self.changed.notify_all();
    }

    /// Consumer: gone; what is queued is dropped, so its buffers go home
    /// and a producer waiting for room gives up.
    pub(crate) fn abandon(&self) {
        let queued = {
            let mut st = lock(&self.state);
            st.abandoned = true;
            std::mem::take(&mut st.queue)
        };
        drop(queued);
        self.changed.notify_all();
    }

    /// Producer, after its last message: hash what is left, then the
    /// digest and the time all hashing took, by both threads. `None` for
    /// a pipe made without a hash.
    pub(crate) fn finish_hash(&self) -> Option<(Digest, Duration)> {
        let mut st = lock(&self.state);
        loop {
            let h = st.hash.as_mut()?;
            if h.hasher.is_some() && h.backlog.is_empty() {
                let hasher = h.hasher.take()?;
                let took = Duration::from_nanos(self.hash_nanos.load(Ordering::Relaxed));
                return Some((Digest::from_bytes(hasher.finalize().into()), took));
            }
            st = if st.hash_ready() {
                self.hash_piece(st)
            } else {
                self.wait(st)
            };
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use std::sync::Arc;

    use super::*;

    fn chunks(data: &[u8], size: usize) -> Vec<Chunk> {
        data.chunks(size).map(|c| Chunk::from(c.to_vec())).collect()
    }

    /// Chunks pass in order and the digest is that of all of them,
    /// however the hashing was shared out.
    #[test]
    fn passes_chunks_and_hashes_them_in_order() {
        let data: Vec<u8> = (0..7_000_000u32).map(|i| (i % 251) as u8).collect();
        for (depth, size) in [(1, 1 << 20), (4, 300_000), (2, 1 << 19)] {
            let pipe = Arc::new(Pipe::new(depth, true));
            let producer = {
                let pipe = pipe.clone();
                let chunks = chunks(&data, size);
                std::thread::spawn(move || {
                    for c in chunks {
                        assert!(pipe.send(Ok(c)));
                    }
                    pipe.close();
                    pipe.finish_hash().unwrap().0
                })
            };
            let mut out = Vec::new();
            while let Some(m) = pipe.recv() {
                out.extend_from_slice(&m.unwrap());
            }
            assert_eq!(out, data);
            assert_eq!(producer.join().unwrap(), Digest::of(&data));
        }
    }

    /// Each side in turn slower than the other, in bursts, with the
    /// backlog over its limit at times: every way the hash can change
    /// hands, and still every byte once, in order.
    #[test]
    fn hashing_changes_hands_without_losing_order() {
        let data: Vec<u8> = (0..3_000_000u32).map(|i| (i * 7 % 253) as u8).collect();
        let pause = |i: usize, phase: usize| {
            if (i / 40) % 2 == phase {
                std::thread::sleep(Duration::from_micros(200));
            }
        };
        let pipe = Arc::new(Pipe::new(2, true));
        let producer = {
            let pipe = pipe.clone();
            let chunks = chunks(&data, 5_000);
            std::thread::spawn(move || {
                for (i, c) in chunks.into_iter().enumerate() {
                    pause(i, 0);
                    assert!(pipe.send(Ok(c)));
                }
                pipe.close();
                pipe.finish_hash().unwrap().0
            })
        };
        let mut out = Vec::new();
        let mut i = 0;
        while let Some(m) = pipe.recv() {
            pause(i, 1);
            i += 1;
            out.extend_from_slice(&m.unwrap());
        }
        assert_eq!(out, data);
        assert_eq!(producer.join().unwrap(), Digest::of(&data));
    }

    /// The consumer never taking a chunk must not stop the hash: the
    /// producer hashes its backlog itself before it gives up.
    #[test]
    fn a_gone_consumer_releases_the_producer() {
        let pipe = Arc::new(Pipe::new(2, true));
        let producer = {
            let pipe = pipe.clone();
            std::thread::spawn(move || {
                let mut sent = 0;
                while pipe.send(Ok(Chunk::from(vec![1u8; 1000]))) {
                    sent += 1;
                }
                pipe.close();
                sent
            })
        };
        assert!(pipe.recv().is_some());
        pipe.abandon();
        assert!(producer.join().unwrap() >= 1);
    }

    #[test]
    fn without_a_hash_there_is_no_digest() {
        let pipe = Pipe::new(2, false);
        assert!(pipe.send(Ok(Chunk::from(vec![1, 2, 3]))));
        pipe.close();
        assert!(pipe.finish_hash().is_none());
        assert_eq!(&pipe.recv().unwrap().unwrap()[..], &[1, 2, 3]);
        assert!(pipe.recv().is_none());
    }
}
