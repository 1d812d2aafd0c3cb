//! The write buffer of a stream transport: a queue of chunks drained with
//! `writev`. Small writes are appended to the last chunk so that a burst of
//! tiny writes costs neither one allocation nor one iovec each.

use std::collections::VecDeque;
use std::io::{self, IoSlice};

/// Chunks at most this long receive appended writes.
const COALESCE_LIMIT: usize = 64 * 1024;
/// Writes at most this long are appended rather than queued as a new chunk.
const SMALL_WRITE: usize = 16 * 1024;
/// iovecs passed to one `writev` call.
const MAX_IOVECS: usize = 64;

#[derive(Default)]
pub(crate) struct WriteBuffer {
    chunks: VecDeque<Vec<u8>>,
    /// Bytes of the front chunk already written.
    head: usize,
    len: usize,
}

impl WriteBuffer {
    pub(crate) fn len(&self) -> usize {
        self.len
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub(crate) fn clear(&mut self) {
        self.chunks.clear();
        self.head = 0;
        self.len = 0;
    }

    /// Queue a copy of `data`.
    pub(crate) fn push(&mut self, data: &[u8]) {
        if data.is_empty() {
            return;
        }
        self.len += data.len();
        if data.len() <= SMALL_WRITE {
            // Never append to the front chunk once part of it is written:
            // `head` indexes into it.
            let appendable = self.chunks.len() > 1 || self.head == 0;
            if let Some(last) = self.chunks.back_mut() {
                if appendable && last.len() + data.len() <= COALESCE_LIMIT {
                    last.extend_from_slice(data);
                    return;
                }
            }
        }
        self.chunks.push_back(data.to_vec());
    }

    /// Queue an owned chunk without copying it.
    pub(crate) fn push_owned(&mut self, data: Vec<u8>) {
        if data.is_empty() {
            return;
        }
        if data.len() <= SMALL_WRITE {
            self.push(&data);
            return;
        }
        self.len += data.len();
        self.chunks.push_back(data);
    }

    /// Write as much as one system call takes. Returns the bytes written
    /// and the bytes offered (a short write means the socket is full).
    pub(crate) fn write_to<W: io::Write>(&mut self, mut w: W) -> io::Result<(usize, usize)> {
        let offered;
        let n = if self.chunks.len() == 1 {
            offered = self.len;
            w.write(&self.chunks[0][self.head..])?
        } else {
            let mut iov: [IoSlice<'_>; MAX_IOVECS] = [IoSlice::new(&[]); MAX_IOVECS];
            let mut count = 0;
            for (i, c) in self.chunks.iter().take(MAX_IOVECS).enumerate() {
                iov[i] = IoSlice::new(if i == 0 { &c[self.head..] } else { &c[..] });
                count += 1;
            }
            offered = iov[..count].iter().map(|s| s.len()).sum();
            w.write_vectored(&iov[..count])?
        };
        self.consume(n);
        Ok((n, offered))
    }

    fn consume(&mut self, mut n: usize) {
        self.len -= n;
        while n > 0 {
            let front = self.chunks.front().expect("consumed more than buffered").len() - self.head;
            if n >= front {
                n -= front;
                self.head = 0;
                self.chunks.pop_front();
            } else {
                self.head += n;
                n = 0;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A writer that accepts at most `cap` bytes per call.
    struct Trickle {
        out: Vec<u8>,
        cap: usize,
    }
    impl io::Write for Trickle {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            let n = buf.len().min(self.cap);
            self.out.extend_from_slice(&buf[..n]);
            Ok(n)
        }
        fn write_vectored(&mut self, bufs: &[IoSlice<'_>]) -> io::Result<usize> {
            let mut total = 0;
            for b in bufs {
                let n = self.write(&b[..b.len().min(self.cap - total)])?;
                total += n;
                if total == self.cap {
                    break;
                }
            }
            Ok(total)
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn order_is_kept_across_partial_writes() {
        let mut b = WriteBuffer::default();
        let mut expected = Vec::new();
        for i in 0..200u32 {
            let chunk: Vec<u8> = (0..(i * 37 % 20000)).map(|j| (i + j) as u8).collect();
            expected.extend_from_slice(&chunk);
            if i % 3 == 0 {
                b.push_owned(chunk);
            } else {
                b.push(&chunk);
            }
        }
        assert_eq!(b.len(), expected.len());
        let mut w = Trickle { out: Vec::new(), cap: 7777 };
        while !b.is_empty() {
            b.write_to(&mut w).unwrap();
        }
        assert_eq!(w.out, expected);
    }

    #[test]
    fn append_after_partial_write_keeps_head() {
        let mut b = WriteBuffer::default();
        b.push(b"hello ");
        let mut w = Trickle { out: Vec::new(), cap: 3 };
        b.write_to(&mut w).unwrap();
        b.push(b"world");
        while !b.is_empty() {
            b.write_to(&mut w).unwrap();
        }
        assert_eq!(w.out, b"hello world");
    }
}
