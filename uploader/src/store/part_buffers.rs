//! Part buffers that go back into use once their upload is done.
//!
//! Every part (and every single-PUT object) is gathered into one contiguous buffer, because its
//! checksum header must be known before its first byte is sent. A fresh 8 MiB buffer is fresh
//! memory: the kernel maps and zeroes each of its 2,048 pages on first touch, and glibc hands
//! buffers this large back to the kernel when they are freed. perf over the uploader bench put
//! that (`clear_page_erms` and the page-fault path) at about a third of the uploader's CPU, more
//! than the SHA-256 of the payload. Reusing a handful of buffers removes it; at most one per
//! concurrent upload and 64 MiB in all are kept idle, so the memory they hold stays bounded.

use std::sync::{Arc, Mutex, PoisonError};

use bytes::{Bytes, BytesMut};

/// Idle buffers are memory the uploader holds while it has nothing to send; this bounds it.
pub const MAX_IDLE_BYTES: usize = 64 << 20;

/// Up to this part size, a buffer for a shorter body is still reserved at the full part size.
const MAX_SPECULATIVE_RESERVE: usize = 64 << 20;

#[derive(Clone, Debug)]
pub struct PartBuffers {
    free: Arc<Mutex<Vec<BytesMut>>>,
    /// The capacity of a pooled buffer (the part size).
    buffer_size: usize,
    max_buffers: usize,
}

impl PartBuffers {
    /// A pool of buffers of `buffer_size` bytes that keeps at most `max_buffers` idle ones, and
    /// never more than [`MAX_IDLE_BYTES`] in all (none at all for parts larger than that).
    pub fn new(buffer_size: usize, max_buffers: usize) -> PartBuffers {
        PartBuffers {
            free: Arc::new(Mutex::new(Vec::new())),
            buffer_size,
            max_buffers: max_buffers.min(MAX_IDLE_BYTES / buffer_size.max(1)),
        }
    }

    /// An empty buffer that holds `len` bytes without growing.
    pub fn take(&self, len: usize) -> BytesMut {
        if len <= self.buffer_size {
            if let Some(buf) = self.lock().pop() {
                return buf;
            }
            // Part-sized, so that it can be pooled afterwards: reserving costs address space
            // only (pages are touched as the buffer fills). Not for huge parts, though: a small
            // single PUT must not reserve gigabytes.
            if self.buffer_size <= MAX_SPECULATIVE_RESERVE {
                return BytesMut::with_capacity(self.buffer_size);
            }
        }
        // Sized to fit; kept afterwards only if it is part-sized (or not much larger).
        BytesMut::with_capacity(len)
    }

    /// Hands a part's bytes back once nothing else refers to them; a part still shared (or
    /// sliced, or of another size) is simply dropped.
    pub fn give_back(&self, part: Bytes) {
        let Ok(mut buf) = part.try_into_mut() else {
            return;
        };
        // `try_into_mut` may yield a view that starts inside the allocation (a slice); only a
        // buffer whose whole capacity is usable again is worth keeping.
        if buf.capacity() < self.buffer_size || buf.capacity() > self.buffer_size.saturating_mul(2)
        {
            return;
        }
        buf.clear();
        let mut free = self.lock();
        let idle_bytes: usize = free.iter().map(BytesMut::capacity).sum();
        if free.len() < self.max_buffers
            && idle_bytes.saturating_add(buf.capacity()) <= MAX_IDLE_BYTES
        {
            free.push(buf);
        }
    }

    /// Idle buffers held right now.
    pub fn idle(&self) -> usize {
        self.lock().len()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<BytesMut>> {
        // The list is only pushed to and popped from; a panic elsewhere cannot leave it torn.
        self.free.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_returned_part_is_handed_out_again_without_a_new_allocation() {
        let pool = PartBuffers::new(1024, 2);
        let mut buf = pool.take(1024);
        assert!(buf.capacity() >= 1024);
        buf.extend_from_slice(&[7u8; 1024]);
        let ptr = buf.as_ptr();
        pool.give_back(buf.freeze());
        assert_eq!(pool.idle(), 1);
        let again = pool.take(100);
        assert_eq!(again.as_ptr(), ptr, "the same memory is reused");
        assert!(again.is_empty());
        assert!(again.capacity() >= 1024);
        assert_eq!(pool.idle(), 0);
    }

    #[test]
    fn shared_parts_are_not_taken_back() {
        let pool = PartBuffers::new(64, 2);
        let mut buf = pool.take(64);
        buf.extend_from_slice(&[1u8; 64]);
        let part = buf.freeze();
        let still_sending = part.clone();
        pool.give_back(part);
        assert_eq!(pool.idle(), 0, "another holder still reads these bytes");
        assert_eq!(still_sending.len(), 64);
        pool.give_back(still_sending);
        assert_eq!(pool.idle(), 1);
    }

    #[test]
    fn the_pool_keeps_at_most_max_buffers_and_only_part_sized_ones() {
        let pool = PartBuffers::new(64, 2);
        for _ in 0..4 {
            let mut buf = BytesMut::with_capacity(64);
            buf.extend_from_slice(b"x");
            pool.give_back(buf.freeze());
        }
        assert_eq!(pool.idle(), 2);

        let pool = PartBuffers::new(64, 4);
        pool.give_back(BytesMut::with_capacity(16).freeze());
        pool.give_back(BytesMut::with_capacity(1024).freeze());
        assert_eq!(pool.idle(), 0, "too small or far too large to keep");
        let big = pool.take(1000);
        assert!(big.capacity() >= 1000);
    }

    #[test]
    fn idle_buffers_never_hold_more_than_max_idle_bytes() {
        let part = 16 << 20;
        let pool = PartBuffers::new(part, 16);
        for _ in 0..16 {
            let mut buf = BytesMut::with_capacity(part);
            buf.extend_from_slice(b"x");
            pool.give_back(buf.freeze());
        }
        assert_eq!(pool.idle() * part, MAX_IDLE_BYTES);
        // Buffers somewhat larger than a part (a single PUT under a larger multipart threshold)
        // count with their real size.
        let pool = PartBuffers::new(part, 16);
        for _ in 0..16 {
            pool.give_back(BytesMut::with_capacity(part + part / 2).freeze());
        }
        assert_eq!(pool.idle(), 2, "3 × 24 MiB would pass 64 MiB");
        // Parts larger than the cap are never kept.
        let pool = PartBuffers::new(MAX_IDLE_BYTES * 2, 4);
        pool.give_back(BytesMut::with_capacity(MAX_IDLE_BYTES * 2).freeze());
        assert_eq!(pool.idle(), 0);
    }

    #[test]
    fn a_small_body_does_not_reserve_a_huge_part() {
        // part_size may be configured up to 5 GiB; a 10 KB object must not reserve that much.
        let pool = PartBuffers::new(1 << 30, 4);
        let buf = pool.take(10_000);
        assert!(buf.capacity() >= 10_000);
        assert!(buf.capacity() < 1 << 20, "{}", buf.capacity());
        // With the default part size a short body gets a whole part, so it can be pooled.
        let pool = PartBuffers::new(8 << 20, 4);
        assert!(pool.take(10_000).capacity() >= 8 << 20);
    }
}
