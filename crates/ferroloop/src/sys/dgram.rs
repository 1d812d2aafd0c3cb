//! Batched datagram I/O: `recvmmsg(2)` and `sendmmsg(2)`.
//!
//! One system call receives up to [`MAX_BATCH`] datagrams, each into its own
//! slot of the caller's buffer, with its sender's address. A batch that comes
//! back short means the socket is drained (a new datagram raises a new
//! readiness edge), which saves the final `EAGAIN` call a `recvfrom` loop
//! needs: one system call per readiness event instead of two for a lone datagram.
//!
//! One system call also sends up to [`MAX_BATCH`] queued datagrams, each to
//! its own address, when a transport's send queue drains.

use std::io;
use std::mem::{size_of, zeroed};
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6};
use std::os::fd::RawFd;

/// Most datagrams received per call.
pub const MAX_BATCH: usize = 16;

/// One datagram of a batch: its length in its slot, its sender, and whether
/// it was longer than the slot (`MSG_TRUNC`: the rest is lost).
#[derive(Clone, Copy, Debug)]
pub struct Received {
    /// Bytes at the start of the slot.
    pub len: usize,
    /// The sender (`None` if the kernel gave no IPv4/IPv6 address).
    pub addr: Option<SocketAddr>,
    /// The datagram did not fit in its slot.
    pub truncated: bool,
}

/// Receive up to `min(buf.len() / slot, MAX_BATCH)` datagrams from the
/// non-blocking IPv4/IPv6 datagram socket `fd`: datagram `i` lands at
/// `buf[i * slot..]`. Fills `out` (cleared first); `WouldBlock` when none waits.
pub fn recv_batch(fd: RawFd, buf: &mut [u8], slot: usize, out: &mut Vec<Received>) -> io::Result<()> {
    out.clear();
    let n = buf.len().checked_div(slot).unwrap_or(0).min(MAX_BATCH);
    if n == 0 {
        return Err(io::Error::from(io::ErrorKind::InvalidInput));
    }
    // SAFETY: all-zero bytes are a valid value of these plain C structs
    // (null pointers, zero lengths).
    let mut names: [libc::sockaddr_storage; MAX_BATCH] = unsafe { zeroed() };
    // SAFETY: as above.
    let mut iovs: [libc::iovec; MAX_BATCH] = unsafe { zeroed() };
    // SAFETY: as above.
    let mut hdrs: [libc::mmsghdr; MAX_BATCH] = unsafe { zeroed() };
    let base = buf.as_mut_ptr();
    for i in 0..n {
        // The slots are disjoint and inside `buf` (i * slot + slot <= n * slot <= buf.len()).
        iovs[i].iov_base = base.wrapping_add(i * slot).cast();
        iovs[i].iov_len = slot;
        hdrs[i].msg_hdr.msg_name = (&mut names[i] as *mut libc::sockaddr_storage).cast();
        hdrs[i].msg_hdr.msg_namelen = size_of::<libc::sockaddr_storage>() as libc::socklen_t;
        hdrs[i].msg_hdr.msg_iov = &mut iovs[i];
        hdrs[i].msg_hdr.msg_iovlen = 1;
    }
    let rc = loop {
        // SAFETY: `hdrs[..n]` are initialised headers whose name and iovec
        // pointers refer to `names`, `iovs` and disjoint slots of `buf`, all
        // alive and exclusively borrowed for the duration of the call; the
        // kernel writes at most `msg_namelen` bytes of address and `iov_len`
        // bytes of data through them. A null timeout means none.
        let rc = unsafe {
            libc::recvmmsg(fd, hdrs.as_mut_ptr(), n as libc::c_uint, libc::MSG_DONTWAIT, std::ptr::null_mut())
        };
        if rc >= 0 {
            break rc as usize;
        }
        let e = io::Error::last_os_error();
        if e.kind() != io::ErrorKind::Interrupted {
            return Err(e);
        }
    };
    for i in 0..rc {
        let h = &hdrs[i];
        out.push(Received {
            len: (h.msg_len as usize).min(slot),
            addr: inet_address(&names[i], h.msg_hdr.msg_namelen),
            truncated: h.msg_hdr.msg_flags & libc::MSG_TRUNC != 0,
        });
    }
    Ok(())
}

/// Send `msgs` (at most [`MAX_BATCH`] are used) on the non-blocking
/// datagram socket `fd` in one `sendmmsg(2)`: datagram `i` is `msgs[i].0`,
/// to `msgs[i].1` (`None`: the connected peer). Returns how many datagrams,
/// from the front, the kernel took (at least one); an error is that of the
/// first datagram, which was not sent (`WouldBlock` when the socket is full).
/// An error on a later datagram ends the batch early: sending from there
/// again reports it.
pub fn send_batch(fd: RawFd, msgs: &[(&[u8], Option<&socket2::SockAddr>)]) -> io::Result<usize> {
    let n = msgs.len().min(MAX_BATCH);
    if n == 0 {
        return Ok(0);
    }
    // SAFETY: all-zero bytes are a valid value of these plain C structs
    // (null pointers, zero lengths).
    let mut iovs: [libc::iovec; MAX_BATCH] = unsafe { zeroed() };
    // SAFETY: as above.
    let mut hdrs: [libc::mmsghdr; MAX_BATCH] = unsafe { zeroed() };
    for (i, (data, addr)) in msgs[..n].iter().enumerate() {
        iovs[i].iov_base = data.as_ptr() as *mut libc::c_void;
        iovs[i].iov_len = data.len();
        if let Some(a) = addr {
            hdrs[i].msg_hdr.msg_name = a.as_ptr() as *mut libc::c_void;
            hdrs[i].msg_hdr.msg_namelen = a.len();
        }
        hdrs[i].msg_hdr.msg_iov = &mut iovs[i];
        hdrs[i].msg_hdr.msg_iovlen = 1;
    }
    loop {
        // SAFETY: `hdrs[..n]` are initialised headers whose iovecs point at
        // the callers' datagrams and whose names point at the callers'
        // addresses (or are null), all borrowed for the duration of the call;
        // the kernel only reads them (it writes `msg_len` into `hdrs`).
        let rc = unsafe {
            libc::sendmmsg(fd, hdrs.as_mut_ptr(), n as libc::c_uint, libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL)
        };
        if rc > 0 {
            return Ok(rc as usize);
        }
        let e = if rc == 0 { io::Error::from(io::ErrorKind::WouldBlock) } else { io::Error::last_os_error() };
        if e.kind() != io::ErrorKind::Interrupted {
            return Err(e);
        }
    }
}

/// An IPv4/IPv6 socket address from what the kernel wrote.
fn inet_address(ss: &libc::sockaddr_storage, len: libc::socklen_t) -> Option<SocketAddr> {
    let len = len as usize;
    match ss.ss_family as libc::c_int {
        libc::AF_INET if len >= size_of::<libc::sockaddr_in>() => {
            // SAFETY: the family says the storage holds a sockaddr_in, which
            // fits in (and is less aligned than) a sockaddr_storage; the
            // kernel wrote at least its size (checked).
            let sin = unsafe { &*(ss as *const libc::sockaddr_storage).cast::<libc::sockaddr_in>() };
            Some(SocketAddr::V4(SocketAddrV4::new(
                Ipv4Addr::from(u32::from_be(sin.sin_addr.s_addr)),
                u16::from_be(sin.sin_port),
            )))
        }
        libc::AF_INET6 if len >= size_of::<libc::sockaddr_in6>() => {
            // SAFETY: as above, for a sockaddr_in6.
            let sin6 = unsafe { &*(ss as *const libc::sockaddr_storage).cast::<libc::sockaddr_in6>() };
            Some(SocketAddr::V6(SocketAddrV6::new(
                Ipv6Addr::from(sin6.sin6_addr.s6_addr),
                u16::from_be(sin6.sin6_port),
                u32::from_be(sin6.sin6_flowinfo),
                sin6.sin6_scope_id,
            )))
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::UdpSocket;
    use std::os::fd::AsRawFd;

    #[test]
    fn batch_of_datagrams_with_addresses_then_would_block() {
        let rx = UdpSocket::bind("127.0.0.1:0").unwrap();
        rx.set_nonblocking(true).unwrap();
        let tx = UdpSocket::bind("127.0.0.1:0").unwrap();
        for i in 0..5u8 {
            tx.send_to(&vec![i; 10 + i as usize], rx.local_addr().unwrap()).unwrap();
        }
        let mut buf = vec![0u8; 64 * 1024];
        let mut out = Vec::new();
        recv_batch(rx.as_raw_fd(), &mut buf, 4096, &mut out).unwrap();
        assert_eq!(out.len(), 5, "a short batch: the socket is drained");
        for (i, r) in out.iter().enumerate() {
            assert_eq!(r.len, 10 + i);
            assert_eq!(r.addr, Some(tx.local_addr().unwrap()));
            assert!(!r.truncated);
            assert!(buf[i * 4096..i * 4096 + r.len].iter().all(|b| *b == i as u8));
        }
        let e = recv_batch(rx.as_raw_fd(), &mut buf, 4096, &mut out).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::WouldBlock);
        // A datagram longer than its slot is flagged.
        tx.send_to(&[1u8; 100], rx.local_addr().unwrap()).unwrap();
        recv_batch(rx.as_raw_fd(), &mut buf, 64, &mut out).unwrap();
        assert_eq!((out[0].len, out[0].truncated), (64, true));
    }

    #[test]
    fn one_call_sends_a_batch_each_to_its_address_then_would_block() {
        let (a, b) = (UdpSocket::bind("127.0.0.1:0").unwrap(), UdpSocket::bind("127.0.0.1:0").unwrap());
        let tx = UdpSocket::bind("127.0.0.1:0").unwrap();
        let (to_a, to_b) = (socket2::SockAddr::from(a.local_addr().unwrap()), socket2::SockAddr::from(b.local_addr().unwrap()));
        let msgs: [(&[u8], Option<&socket2::SockAddr>); 3] = [(b"one", Some(&to_a)), (b"two", Some(&to_b)), (b"three", Some(&to_a))];
        assert_eq!(send_batch(tx.as_raw_fd(), &msgs).unwrap(), 3);
        let mut buf = [0u8; 16];
        for (sock, want) in [(&a, &b"one"[..]), (&a, b"three"), (&b, b"two")] {
            let (n, from) = sock.recv_from(&mut buf).unwrap();
            assert_eq!((&buf[..n], from), (want, tx.local_addr().unwrap()));
        }
        assert_eq!(send_batch(tx.as_raw_fd(), &[]).unwrap(), 0);
        // A Unix datagram peer that is not read fills up: WouldBlock, nothing lost.
        let (s, r) = std::os::unix::net::UnixDatagram::pair().unwrap();
        let msgs: Vec<(&[u8], Option<&socket2::SockAddr>)> = vec![(&[7u8; 1000][..], None); MAX_BATCH];
        let mut sent = 0;
        let e = loop {
            match send_batch(s.as_raw_fd(), &msgs) {
                Ok(n) => sent += n,
                Err(e) => break e,
            }
            assert!(sent < 1_000_000);
        };
        assert_eq!(e.kind(), io::ErrorKind::WouldBlock);
        r.set_nonblocking(true).unwrap();
        let mut got = 0;
        while r.recv(&mut [0u8; 2000]).is_ok() {
            got += 1;
        }
        assert_eq!(got, sent);
    }
}
