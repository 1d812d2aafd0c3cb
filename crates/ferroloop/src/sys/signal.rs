//! Process signal handlers that wake the loop: a `sigaction` handler writes
//! the signal number to a pipe the loop polls (the self-pipe trick).

use std::io;
use std::os::fd::RawFd;
use std::sync::atomic::{AtomicI32, Ordering};

/// Write end of the wake-up pipe, or -1.
static WAKE_FD: AtomicI32 = AtomicI32::new(-1);

extern "C" fn on_signal(sig: libc::c_int) {
    let fd = WAKE_FD.load(Ordering::Relaxed);
    if fd < 0 {
        return;
    }
    let byte = sig as u8;
    // SAFETY: errno is saved and restored around write(2), which is
    // async-signal-safe; `byte` outlives the call. A full pipe drops the byte,
    // which is harmless: the loop is already due to wake up.
    unsafe {
        let errno = *libc::__errno_location();
        libc::write(fd, &byte as *const u8 as *const libc::c_void, 1);
        *libc::__errno_location() = errno;
    }
}

/// Direct signal wake-ups to `fd` (the pipe's write end); -1 turns them off.
pub fn set_wake_fd(fd: RawFd) {
    WAKE_FD.store(fd, Ordering::Relaxed);
}

/// Turn wake-ups off if they still go to `fd` (whose owner is closing it:
/// a later descriptor with the same number must not receive signal bytes).
pub fn clear_wake_fd(fd: RawFd) {
    let _ = WAKE_FD.compare_exchange(fd, -1, Ordering::Relaxed, Ordering::Relaxed);
}

/// Whether `sig` is a valid signal number that may be caught.
pub fn check_catchable(sig: i32) -> Result<(), &'static str> {
    if sig < 1 || sig >= 65 {
        return Err("out of range");
    }
    if sig == libc::SIGKILL || sig == libc::SIGSTOP {
        return Err("cannot be caught");
    }
    Ok(())
}

/// Catch `sig` with the wake-up handler (restarting interrupted system calls,
/// as asyncio's `siginterrupt(sig, False)`).
pub fn catch(sig: i32) -> io::Result<()> {
    // SAFETY: a zeroed sigaction is a valid initial value; we fill in the
    // handler (an `extern "C" fn(c_int)`, the signature sa_handler expects),
    // an empty mask and flags before passing it to sigaction(2).
    unsafe {
        let mut sa: libc::sigaction = std::mem::zeroed();
        sa.sa_sigaction = on_signal as extern "C" fn(libc::c_int) as libc::sighandler_t;
        libc::sigemptyset(&mut sa.sa_mask);
        sa.sa_flags = libc::SA_RESTART;
        if libc::sigaction(sig, &sa, std::ptr::null_mut()) != 0 {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(())
}

/// Give `sig` back its default disposition.
pub fn restore_default(sig: i32) -> io::Result<()> {
    // SAFETY: as in `catch`, with SIG_DFL as the handler.
    unsafe {
        let mut sa: libc::sigaction = std::mem::zeroed();
        sa.sa_sigaction = libc::SIG_DFL;
        libc::sigemptyset(&mut sa.sa_mask);
        if libc::sigaction(sig, &sa, std::ptr::null_mut()) != 0 {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(())
}
