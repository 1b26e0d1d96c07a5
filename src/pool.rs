//! Byte buffers used again. A chunk's messages fill a buffer of about 300 KiB that lives until
//! the writer has copied the last of them; glibc gives memory of that size back to the kernel
//! when it is freed, so a fresh buffer per chunk cost a page fault for every 4 KiB written
//! (`perf record -e page-faults` on `send`: 60 % of its faults, about a tenth of its CPU time).
//! A [`Bytes`] made by [`BufferPool::freeze`] gives its buffer back when its last slice is
//! dropped, and [`BufferPool::take`] hands it out again, its pages already mapped.

use std::sync::{Arc, Mutex};

use bytes::Bytes;

/// A buffer larger than this is not kept (one chunk of huge alerts must not pin its memory).
const MAX_KEPT_CAPACITY: usize = 2 * 1024 * 1024;

/// Spare buffers; clones share them.
#[derive(Clone, Debug)]
pub struct BufferPool {
    spare: Arc<Mutex<Vec<Vec<u8>>>>,
    keep: usize,
}

impl BufferPool {
    /// Keeps at most `keep` spare buffers.
    pub fn new(keep: usize) -> BufferPool {
        BufferPool {
            spare: Arc::new(Mutex::new(Vec::with_capacity(keep))),
            keep,
        }
    }

    /// An empty buffer with room for at least `capacity` bytes, a spare one if there is.
    pub fn take(&self, capacity: usize) -> Vec<u8> {
        let spare = self.lock().pop();
        match spare {
            Some(mut buf) => {
                buf.reserve(capacity);
                buf
            }
            None => Vec::with_capacity(capacity),
        }
    }

    /// Keeps `buf` for [`take`](Self::take), unless enough are kept or it is too large.
    pub fn give_back(&self, mut buf: Vec<u8>) {
        if buf.capacity() == 0 || buf.capacity() > MAX_KEPT_CAPACITY {
            return;
        }
        buf.clear();
        let mut spare = self.lock();
        if spare.len() < self.keep {
            spare.push(buf);
        }
    }

    /// `buf` as `Bytes` that give it back to this pool once the last of them is dropped.
    pub fn freeze(&self, buf: Vec<u8>) -> Bytes {
        Bytes::from_owner(Pooled {
            buf,
            pool: self.clone(),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<Vec<u8>>> {
        // A list of buffers cannot be left half-changed by a panic.
        self.spare.lock().unwrap_or_else(|e| e.into_inner())
    }
}

struct Pooled {
    buf: Vec<u8>,
    pool: BufferPool,
}

impl AsRef<[u8]> for Pooled {
    fn as_ref(&self) -> &[u8] {
        &self.buf
    }
}

impl Drop for Pooled {
    fn drop(&mut self) {
        self.pool.give_back(std::mem::take(&mut self.buf));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_buffer_comes_back_when_its_last_slice_is_dropped() {
        let pool = BufferPool::new(2);
        let mut buf = pool.take(1000);
        buf.extend_from_slice(b"hello world");
        let at = buf.as_ptr();
        let all = pool.freeze(buf);
        let (hello, world) = (all.slice(0..5), all.slice(6..11));
        drop(all);
        assert_eq!((&hello[..], &world[..]), (&b"hello"[..], &b"world"[..]));
        drop(hello);
        // Still in use: a new buffer.
        let other = pool.take(10);
        assert_ne!(other.as_ptr(), at);
        drop(world);
        let again = pool.take(500);
        assert_eq!(again.as_ptr(), at, "the same allocation");
        assert!(again.is_empty() && again.capacity() >= 1000);
    }

    #[test]
    fn keeps_no_more_than_it_was_told_and_nothing_huge() {
        let pool = BufferPool::new(2);
        for _ in 0..5 {
            pool.give_back(Vec::with_capacity(100));
        }
        pool.give_back(Vec::with_capacity(MAX_KEPT_CAPACITY + 1));
        pool.give_back(Vec::new());
        assert_eq!(pool.lock().len(), 2);
        assert!(pool.lock().iter().all(|b| b.capacity() == 100));
        // A spare smaller than asked grows to the size asked.
        assert!(pool.take(4096).capacity() >= 4096);
    }
}
