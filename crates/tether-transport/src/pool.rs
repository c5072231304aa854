//! Read buffers that come back once the bytes read into them have been used.
//!
//! A stream of large reads (a command's gigabyte of output in the agent, 64 KiB payloads
//! arriving on a mux link) would otherwise cost a fresh allocation per read; glibc hands
//! such sizes out as new mappings or trims them off the heap's top, so every read paid
//! page faults and an unmap. Here buffers circulate: the [`Bytes`] made of a buffer owns
//! it, and dropping the last clone (once the data was written or read) returns the buffer
//! to its pool.

use bytes::Bytes;
use std::sync::{Arc, Mutex};

/// Spare buffers, all of one size, shared by clones of the pool.
#[derive(Clone)]
pub struct Pool {
    spare: Arc<Mutex<Vec<Vec<u8>>>>,
    size: usize,
    keep: usize,
}

impl std::fmt::Debug for Pool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pool")
            .field("size", &self.size)
            .field("keep", &self.keep)
            .finish_non_exhaustive()
    }
}

impl Pool {
    /// Buffers of `size` bytes; at most `keep` idle ones are kept.
    pub fn new(size: usize, keep: usize) -> Pool {
        Pool {
            spare: Arc::default(),
            size,
            keep,
        }
    }

    /// An empty buffer with room for the pool's size: a returned one if any, else a
    /// fresh one. Read into its spare capacity (`read_buf`): nothing is zeroed, and a
    /// short read touches only the pages it fills.
    pub fn take(&self) -> Vec<u8> {
        let spare = self.spare.lock().unwrap_or_else(|e| e.into_inner()).pop();
        spare.unwrap_or_else(|| Vec::with_capacity(self.size))
    }

    /// `buf`'s contents as [`Bytes`]; `buf` comes back to the pool when the last clone of
    /// them is dropped.
    pub fn freeze(&self, buf: Vec<u8>) -> Bytes {
        Bytes::from_owner(Lent {
            buf,
            home: self.clone(),
        })
    }

    /// Returns a buffer to the pool (one taken and not frozen; frozen ones come back by
    /// themselves). One of another size, or beyond `keep`, is freed instead.
    pub fn put(&self, mut buf: Vec<u8>) {
        let mut spare = self.spare.lock().unwrap_or_else(|e| e.into_inner());
        if spare.len() < self.keep && buf.capacity() == self.size {
            buf.clear();
            spare.push(buf);
        }
    }

    /// The size of the pool's buffers.
    pub fn size(&self) -> usize {
        self.size
    }

    /// Idle buffers held now.
    #[cfg(test)]
    fn idle(&self) -> usize {
        self.spare.lock().unwrap().len()
    }
}

/// A buffer lent out as the contents of a `Bytes`.
struct Lent {
    buf: Vec<u8>,
    home: Pool,
}

impl AsRef<[u8]> for Lent {
    fn as_ref(&self) -> &[u8] {
        &self.buf
    }
}

impl Drop for Lent {
    fn drop(&mut self) {
        self.home.put(std::mem::take(&mut self.buf));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dropped_bytes_return_its_buffer_and_the_next_take_reuses_it() {
        let pool = Pool::new(64, 2);
        let mut buf = pool.take();
        assert_eq!((buf.len(), buf.capacity()), (0, 64));
        buf.extend_from_slice(b"abc");
        let ptr = buf.as_ptr();
        let bytes = pool.freeze(buf);
        assert_eq!(&bytes[..], b"abc");
        let clone = bytes.slice(1..);
        drop(bytes);
        assert_eq!(pool.idle(), 0, "a clone still holds the buffer");
        assert_eq!(&clone[..], b"bc");
        drop(clone);
        assert_eq!(pool.idle(), 1);
        let again = pool.take();
        assert_eq!((again.as_ptr(), again.len()), (ptr, 0));
    }

    #[test]
    fn no_more_than_keep_idle_buffers_are_held() {
        let pool = Pool::new(16, 2);
        let frames: Vec<Bytes> = (0..5).map(|_| pool.freeze(pool.take())).collect();
        drop(frames);
        assert_eq!(pool.idle(), 2);
    }
}
