//! Child processes and pipes: `pidfd_open`, `waitpid`, `kill`, `pipe2`,
//! `O_NONBLOCK`. Each `unsafe` block says why it is sound.

use std::io;
use std::os::fd::{FromRawFd, OwnedFd, RawFd};

/// A pid file descriptor for child `pid` (Linux 5.3+): it becomes readable
/// when the process exits, so the loop can poll it with its other sources.
/// Fails with `ENOSYS` on older kernels (or `EPERM` under some seccomp
/// filters): the caller then falls back to `SIGCHLD`.
pub fn pidfd_open(pid: u32) -> io::Result<OwnedFd> {
    let pid = libc::pid_t::try_from(pid).map_err(|_| io::Error::from_raw_os_error(libc::ESRCH))?;
    // SAFETY: pidfd_open(2) takes a pid and a flags word (0) and returns a new
    // descriptor (close-on-exec by definition) or -1; no memory is passed.
    let rc = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0 as libc::c_uint) };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `rc` is a descriptor the kernel just created for us; nothing
    // else owns it.
    Ok(unsafe { OwnedFd::from_raw_fd(rc as RawFd) })
}

/// Reap child `pid` if it has exited, without blocking (`waitpid(pid,
/// WNOHANG)`). `Ok(None)`: still running. `Ok(Some(code))`: it exited, with
/// Python's return-code convention (the exit status, or `-signal` when a
/// signal killed it). `Err(ECHILD)`: not our child, or already reaped.
pub fn try_reap(pid: u32) -> io::Result<Option<i32>> {
    let pid = libc::pid_t::try_from(pid).map_err(|_| io::Error::from_raw_os_error(libc::ECHILD))?;
    loop {
        let mut status: libc::c_int = 0;
        // SAFETY: `status` is a valid, writable c_int for the duration of the
        // call; waitpid(2) writes at most that int.
        let rc = unsafe { libc::waitpid(pid, &mut status, libc::WNOHANG) };
        if rc < 0 {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(e);
        }
        if rc == 0 {
            return Ok(None);
        }
        return Ok(Some(returncode(status)));
    }
}

/// Wait for child `pid` to exit and reap it (a blocking `waitpid(pid, 0)`).
/// `Err(ECHILD)`: not our child, or reaped by someone else.
pub fn reap_blocking(pid: u32) -> io::Result<i32> {
    let pid = libc::pid_t::try_from(pid).map_err(|_| io::Error::from_raw_os_error(libc::ECHILD))?;
    loop {
        let mut status: libc::c_int = 0;
        // SAFETY: `status` is a valid, writable c_int for the duration of the
        // call; waitpid(2) writes at most that int.
        let rc = unsafe { libc::waitpid(pid, &mut status, 0) };
        if rc < 0 {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(e);
        }
        return Ok(returncode(status));
    }
}

/// Python's `waitstatus_to_exitcode`: exit status, or `-signal`.
fn returncode(status: libc::c_int) -> i32 {
    if libc::WIFSIGNALED(status) {
        -libc::WTERMSIG(status)
    } else if libc::WIFEXITED(status) {
        libc::WEXITSTATUS(status)
    } else {
        // Stopped/continued are not reported without WUNTRACED/WCONTINUED.
        status
    }
}

/// Send signal `sig` to process `pid` (`kill(2)`); `ESRCH` if it is gone.
pub fn kill(pid: u32, sig: i32) -> io::Result<()> {
    let pid = libc::pid_t::try_from(pid).map_err(|_| io::Error::from_raw_os_error(libc::ESRCH))?;
    if pid <= 0 {
        // kill(0 or negative) would signal process groups: never what is meant here.
        return Err(io::Error::from_raw_os_error(libc::ESRCH));
    }
    // SAFETY: kill(2) takes two integers and touches no memory of ours.
    let rc = unsafe { libc::kill(pid, sig) };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// A new pipe `(read end, write end)`, both close-on-exec.
pub fn pipe() -> io::Result<(OwnedFd, OwnedFd)> {
    let mut fds: [libc::c_int; 2] = [-1, -1];
    // SAFETY: `fds` is a valid, writable array of two ints, as pipe2(2) requires.
    let rc = unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: pipe2 succeeded, so both entries are descriptors it just
    // created; each is wrapped exactly once.
    Ok(unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) })
}

/// Put `fd` in non-blocking mode (`O_NONBLOCK`, a flag of the open file
/// description, so shared with duplicates of `fd`, as Python's
/// `os.set_blocking(fd, False)`).
pub fn set_nonblocking(fd: RawFd) -> io::Result<()> {
    // SAFETY: fcntl(F_GETFL) reads the descriptor's flags; no memory is passed.
    let flags = unsafe { libc::fcntl(fd, libc::F_GETFL) };
    if flags < 0 {
        return Err(io::Error::last_os_error());
    }
    if flags & libc::O_NONBLOCK != 0 {
        return Ok(());
    }
    // SAFETY: as above, F_SETFL with an integer argument.
    let rc = unsafe { libc::fcntl(fd, libc::F_SETFL, flags | libc::O_NONBLOCK) };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn returncode_convention() {
        // exit(7): status 7 << 8; killed by SIGKILL: status 9.
        assert_eq!(returncode(7 << 8), 7);
        assert_eq!(returncode(libc::SIGKILL), -libc::SIGKILL);
    }

    #[test]
    fn kill_refuses_process_groups() {
        assert_eq!(kill(0, 0).unwrap_err().raw_os_error(), Some(libc::ESRCH));
    }
}
