//! The floor: a minimal hand-written mio echo loop, as an epoll design can
//! hardly beat. Edge-triggered; on readable, read until `WouldBlock` into one
//! loop-wide 256 KiB buffer and write each chunk back at once. Only what the
//! kernel does not take is copied into a per-connection queue; while a queue
//! is non-empty the connection is not read (back-pressure), and the writable
//! edge drains it. No timers, no callbacks, no protocol objects.
//!
//! `echo-mio [--tcp 127.0.0.1:0 | --unix PATH]`

use std::io::{self, Read, Write};
use std::os::fd::AsRawFd;

use ferroloop_bench::{announce, raise_nofile, termination_signalfd, unlink_stale, Args, Endpoint};
use mio::event::Source;
use mio::net::{TcpListener, TcpStream, UnixListener, UnixStream};
use mio::unix::SourceFd;
use mio::{Events, Interest, Poll, Token};

const LISTENER: Token = Token(usize::MAX - 1);
const SIGNAL: Token = Token(usize::MAX - 2);
const READ_BUF: usize = 256 * 1024;

enum Listener {
    Tcp(TcpListener),
    Unix(UnixListener),
}

enum Stream {
    Tcp(TcpStream),
    Unix(UnixStream),
}

impl Stream {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Stream::Tcp(s) => s.read(buf),
            Stream::Unix(s) => s.read(buf),
        }
    }
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Stream::Tcp(s) => s.write(buf),
            Stream::Unix(s) => s.write(buf),
        }
    }
    fn source(&mut self) -> &mut dyn Source {
        match self {
            Stream::Tcp(s) => s,
            Stream::Unix(s) => s,
        }
    }
}

struct Conn {
    s: Stream,
    /// Bytes the kernel did not take yet; while non-empty, reading stops.
    pending: Vec<u8>,
}

/// Write `data`, queueing what the kernel does not take. `Err` means the connection is dead.
fn write_out(c: &mut Conn, mut data: &[u8]) -> io::Result<()> {
    while !data.is_empty() {
        match c.s.write(data) {
            Ok(n) => data = &data[n..],
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                c.pending.extend_from_slice(data);
                return Ok(());
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// Flush the queue; `Ok(true)` when it is empty afterwards.
fn flush(c: &mut Conn) -> io::Result<bool> {
    let mut off = 0;
    while off < c.pending.len() {
        match c.s.write(&c.pending[off..]) {
            Ok(n) => off += n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    c.pending.drain(..off);
    Ok(c.pending.is_empty())
}

/// Read until `WouldBlock` (or a short read), echoing each chunk. `Ok(false)`: close.
fn on_readable(c: &mut Conn, buf: &mut [u8]) -> io::Result<bool> {
    while c.pending.is_empty() {
        match c.s.read(buf) {
            Ok(0) => return Ok(false),
            Ok(n) => {
                write_out(c, &buf[..n])?;
                if n < buf.len() {
                    // A short read means the socket is drained (saves a syscall).
                    return Ok(true);
                }
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(true),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(true)
}

fn main() -> io::Result<()> {
    let args = Args::parse(&[]);
    raise_nofile();
    let ep = Endpoint::from_args(&args, "127.0.0.1:0");
    let sigfd = termination_signalfd()?;
    let mut poll = Poll::new()?;
    let mut listener = match &ep {
        Endpoint::Tcp(a) => {
            let l = TcpListener::bind(*a)?;
            announce(&Endpoint::Tcp(l.local_addr()?));
            Listener::Tcp(l)
        }
        Endpoint::Unix(p) => {
            unlink_stale(p);
            let l = UnixListener::bind(p)?;
            announce(&ep);
            Listener::Unix(l)
        }
    };
    match &mut listener {
        Listener::Tcp(l) => poll.registry().register(l, LISTENER, Interest::READABLE)?,
        Listener::Unix(l) => poll.registry().register(l, LISTENER, Interest::READABLE)?,
    }
    poll.registry().register(&mut SourceFd(&sigfd.as_raw_fd()), SIGNAL, Interest::READABLE)?;

    let mut conns: Vec<Option<Conn>> = Vec::new();
    let mut free: Vec<usize> = Vec::new();
    // From a page boundary, as the engine's own (see `PageAligned`).
    let mut aligned = ferroloop_bench::PageAligned::new(READ_BUF);
    let buf = aligned.bytes();
    let mut events = Events::with_capacity(1024);
    'run: loop {
        if let Err(e) = poll.poll(&mut events, None) {
            if e.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(e);
        }
        for ev in events.iter() {
            match ev.token() {
                SIGNAL => break 'run,
                LISTENER => loop {
                    let accepted = match &listener {
                        Listener::Tcp(l) => l.accept().map(|(s, _)| {
                            let _ = s.set_nodelay(true);
                            Stream::Tcp(s)
                        }),
                        Listener::Unix(l) => l.accept().map(|(s, _)| Stream::Unix(s)),
                    };
                    match accepted {
                        Ok(s) => {
                            let id = free.pop().unwrap_or_else(|| {
                                conns.push(None);
                                conns.len() - 1
                            });
                            let mut c = Conn { s, pending: Vec::new() };
                            poll.registry().register(c.s.source(), Token(id), Interest::READABLE | Interest::WRITABLE)?;
                            conns[id] = Some(c);
                        }
                        Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                        Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                        Err(e) => {
                            eprintln!("accept: {e}");
                            break;
                        }
                    }
                },
                Token(id) => {
                    let Some(c) = conns.get_mut(id).and_then(Option::as_mut) else { continue };
                    let mut alive = true;
                    if ev.is_writable() && !c.pending.is_empty() {
                        match flush(c) {
                            // Drained: reading resumes (the readable edge may be long gone).
                            Ok(true) => alive = on_readable(c, buf).unwrap_or(false),
                            Ok(false) => {}
                            Err(_) => alive = false,
                        }
                    }
                    if alive && (ev.is_readable() || ev.is_read_closed()) {
                        alive = on_readable(c, buf).unwrap_or(false);
                    }
                    if alive && ev.is_error() {
                        alive = false;
                    }
                    if !alive {
                        let mut c = conns[id].take().expect("present");
                        let _ = poll.registry().deregister(c.s.source());
                        free.push(id);
                    }
                }
            }
        }
    }
    if let Endpoint::Unix(p) = &ep {
        unlink_stale(p);
    }
    Ok(())
}
