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

    /// A writer that follows a script, one step per call: `Some(n)` takes
    /// up to `n` bytes (0: writes nothing), `None` would block. It records
    /// how many slices each call was offered.
    struct Scripted {
        out: Vec<u8>,
        steps: VecDeque<Option<usize>>,
        slices: Vec<usize>,
    }

    impl Scripted {
        fn new(steps: &[Option<usize>]) -> Self {
            Scripted { out: Vec::new(), steps: steps.iter().copied().collect(), slices: Vec::new() }
        }
    }

    impl io::Write for Scripted {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            self.write_vectored(&[IoSlice::new(buf)])
        }
        fn write_vectored(&mut self, bufs: &[IoSlice<'_>]) -> io::Result<usize> {
            self.slices.push(bufs.len());
            let Some(mut cap) = self.steps.pop_front().expect("an unscripted write") else {
                return Err(io::ErrorKind::WouldBlock.into());
            };
            let before = self.out.len();
            for b in bufs {
                let n = b.len().min(cap);
                self.out.extend_from_slice(&b[..n]);
                cap -= n;
            }
            Ok(self.out.len() - before)
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    fn bytes(n: usize, seed: u8) -> Vec<u8> {
        (0..n).map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed)).collect()
    }

    #[test]
    fn a_large_owned_chunk_is_queued_without_a_copy_and_a_small_one_coalesces() {
        let mut b = WriteBuffer::default();
        let big = bytes(SMALL_WRITE + 1, 1);
        let ptr = big.as_ptr();
        b.push_owned(big);
        assert_eq!(b.chunks.len(), 1);
        assert_eq!(b.chunks[0].as_ptr(), ptr, "the same allocation");
        b.push_owned(bytes(10, 2));
        b.push(b"xyz");
        assert_eq!(b.chunks.len(), 1, "small writes are appended to the last chunk");
        assert_eq!(b.len(), SMALL_WRITE + 14);
        b.push_owned(Vec::new());
        b.push(b"");
        assert_eq!(b.len(), SMALL_WRITE + 14, "empty writes are ignored");
        assert_eq!(b.chunks.len(), 1);
    }

    #[test]
    fn small_writes_coalesce_up_to_the_limit() {
        let mut b = WriteBuffer::default();
        let piece = bytes(SMALL_WRITE, 3);
        for _ in 0..COALESCE_LIMIT / SMALL_WRITE {
            b.push(&piece);
        }
        assert_eq!(b.chunks.len(), 1);
        assert_eq!(b.chunks[0].len(), COALESCE_LIMIT);
        b.push(b"!");
        assert_eq!(b.chunks.len(), 2, "a full chunk takes no more");
        b.push(&bytes(SMALL_WRITE + 1, 4));
        assert_eq!(b.chunks.len(), 3, "a large copy is a chunk of its own");
        assert_eq!(b.len(), COALESCE_LIMIT + 1 + SMALL_WRITE + 1);
    }

    #[test]
    fn partial_writes_cross_chunk_boundaries_with_exact_accounting() {
        let mut b = WriteBuffer::default();
        let (x, y, z) = (bytes(20_000, 5), bytes(30_000, 6), bytes(40_000, 7));
        b.push_owned(x.clone());
        b.push_owned(y.clone());
        b.push_owned(z.clone());
        assert_eq!(b.chunks.len(), 3);
        let total = 90_000;
        // Into y, exactly to the end of y, then the rest.
        let mut w = Scripted::new(&[Some(25_000), Some(25_000), Some(40_000)]);
        assert_eq!(b.write_to(&mut w).unwrap(), (25_000, total));
        assert_eq!((b.len(), b.head, b.chunks.len()), (total - 25_000, 5_000, 2));
        assert_eq!(b.write_to(&mut w).unwrap(), (25_000, total - 25_000));
        assert_eq!((b.len(), b.head, b.chunks.len()), (40_000, 0, 1), "the boundary leaves no empty chunk");
        assert_eq!(b.write_to(&mut w).unwrap(), (40_000, 40_000), "one chunk: a plain write");
        assert!(b.is_empty() && b.chunks.is_empty());
        assert_eq!(w.slices, [3, 2, 1]);
        assert_eq!(w.out, [x, y, z].concat());
    }

    #[test]
    fn a_small_write_after_a_partial_one_is_not_appended_to_the_front_chunk() {
        let mut b = WriteBuffer::default();
        b.push(b"abcdef");
        let mut w = Scripted::new(&[Some(2), Some(100)]);
        assert_eq!(b.write_to(&mut w).unwrap(), (2, 6));
        b.push(b"gh");
        assert_eq!(b.chunks.len(), 2, "head indexes the front chunk");
        b.push(b"ij");
        assert_eq!(b.chunks.len(), 2, "but the new last chunk takes appends");
        assert_eq!(b.write_to(&mut w).unwrap(), (8, 8));
        assert_eq!(w.out, b"abcdefghij");
    }

    #[test]
    fn would_block_and_other_errors_leave_the_buffer_as_it_was() {
        let mut b = WriteBuffer::default();
        b.push_owned(bytes(SMALL_WRITE + 5, 8));
        b.push(b"tail");
        assert_eq!(b.chunks.len(), 1, "appended to the owned chunk: nothing written yet");
        let mut w = Scripted::new(&[Some(10), None, Some(0), Some(usize::MAX)]);
        b.write_to(&mut w).unwrap();
        let err = b.write_to(&mut w).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::WouldBlock);
        assert_eq!((b.len(), b.head), (SMALL_WRITE + 9 - 10, 10));
        assert_eq!(b.write_to(&mut w).unwrap(), (0, SMALL_WRITE - 1), "a write of 0 consumes nothing");
        assert_eq!((b.len(), b.head, b.chunks.len()), (SMALL_WRITE - 1, 10, 1));
        assert_eq!(b.write_to(&mut w).unwrap(), (SMALL_WRITE - 1, SMALL_WRITE - 1));
        assert!(b.is_empty());
        let mut want = bytes(SMALL_WRITE + 5, 8);
        want.extend_from_slice(b"tail");
        assert_eq!(w.out, want);
    }

    #[test]
    fn one_call_offers_at_most_max_iovecs_chunks() {
        let mut b = WriteBuffer::default();
        let n = MAX_IOVECS + 6;
        for i in 0..n {
            b.push_owned(bytes(SMALL_WRITE + 1, i as u8));
        }
        assert_eq!(b.len(), n * (SMALL_WRITE + 1));
        let mut w = Scripted::new(&[Some(usize::MAX), Some(usize::MAX)]);
        assert_eq!(b.write_to(&mut w).unwrap(), (MAX_IOVECS * (SMALL_WRITE + 1), MAX_IOVECS * (SMALL_WRITE + 1)));
        assert_eq!(b.chunks.len(), 6);
        assert_eq!(b.write_to(&mut w).unwrap().0, 6 * (SMALL_WRITE + 1));
        assert_eq!(w.slices, [MAX_IOVECS, 6]);
        assert_eq!(w.out, (0..n).flat_map(|i| bytes(SMALL_WRITE + 1, i as u8)).collect::<Vec<_>>());
    }

    #[test]
    fn clear_forgets_a_partly_written_queue() {
        let mut b = WriteBuffer::default();
        b.push_owned(bytes(SMALL_WRITE + 1, 9));
        b.push(b"more");
        let mut w = Scripted::new(&[Some(3), Some(100)]);
        b.write_to(&mut w).unwrap();
        b.clear();
        assert!(b.is_empty() && b.chunks.is_empty());
        assert_eq!((b.len(), b.head), (0, 0));
        b.push(b"fresh");
        assert_eq!(b.write_to(&mut w).unwrap(), (5, 5), "written from its start");
        assert_eq!(&w.out[3..], b"fresh");
    }
}
