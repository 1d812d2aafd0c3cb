//! Operating-system calls the engine makes outside mio and socket2.
//!
//! Contract: every `unsafe` block of the crate lives in this module, each with
//! a `// SAFETY:` comment saying why it is sound. The rest of the crate calls
//! the safe functions below.

pub mod dgram;
mod held;
pub mod process;
pub mod signal;

pub(crate) use held::Held;

use std::io;
use std::os::fd::{FromRawFd, OwnedFd, RawFd};

/// Seconds on the monotonic clock (`CLOCK_MONOTONIC`), the clock behind
/// Python's `time.monotonic()`, so that loop times agree across both faces.
pub fn monotonic() -> f64 {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: `ts` is a valid, writable timespec; CLOCK_MONOTONIC always exists on Linux.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    debug_assert_eq!(rc, 0);
    ts.tv_sec as f64 + ts.tv_nsec as f64 * 1e-9
}

/// Resolution of the monotonic clock in seconds (asyncio's `clock_resolution`).
pub fn monotonic_resolution() -> f64 {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: `ts` is a valid, writable timespec.
    let rc = unsafe { libc::clock_getres(libc::CLOCK_MONOTONIC, &mut ts) };
    if rc != 0 {
        return 1e-9;
    }
    ts.tv_sec as f64 + ts.tv_nsec as f64 * 1e-9
}

/// A socket object on a descriptor the caller keeps owning. It is wrapped in
/// `ManuallyDrop` so that dropping it never closes `fd`: whoever unwraps it
/// takes on the duty of never letting it close the descriptor (the stream
/// transport forgets it instead of dropping it).
pub fn borrow_socket(fd: RawFd) -> io::Result<std::mem::ManuallyDrop<socket2::Socket>> {
    if fd < 0 {
        return Err(io::Error::from_raw_os_error(libc::EBADF));
    }
    // SAFETY: the Socket is never dropped (ManuallyDrop, and the transport
    // forgets it), so it never closes a descriptor it does not own; it is only
    // used for system calls on `fd`, which fail with EBADF if `fd` is not open.
    let sock = std::mem::ManuallyDrop::new(unsafe { socket2::Socket::from_raw_fd(fd) });
    // Fails (EBADF/ENOTSOCK) unless `fd` is an open socket.
    sock.r#type()?;
    Ok(sock)
}

/// Duplicate a file descriptor (close-on-exec); the copy is owned by the caller.
pub fn dup_cloexec(fd: RawFd) -> io::Result<OwnedFd> {
    // SAFETY: F_DUPFD_CLOEXEC creates a new descriptor; it does not touch memory.
    let rc = unsafe { libc::fcntl(fd, libc::F_DUPFD_CLOEXEC, 0) };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `rc` is a descriptor fcntl just created; nothing else owns it.
    Ok(unsafe { OwnedFd::from_raw_fd(rc) })
}
