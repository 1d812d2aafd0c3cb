//! Pipe transports: `connect_read_pipe` / `connect_write_pipe` on pipes,
//! sockets given as pipes and `/dev/null`, checked against asyncio's
//! `_UnixReadPipeTransport` / `_UnixWritePipeTransport` behaviour.

mod common;

use std::cell::{Cell, RefCell};
use std::io::{Read, Write};
use std::os::fd::OwnedFd;
use std::os::unix::net::UnixStream;
use std::rc::Rc;
use std::thread;

use common::*;
use ferroloop::{Error, EventLoop, ExtraInfo, Protocol, Transport, TransportKind};

fn os_pipe() -> (std::io::PipeReader, std::io::PipeWriter) {
    std::io::pipe().expect("pipe")
}

// ---------------------------------------------------------------------------
// read pipes

#[test]
fn read_pipe_delivers_data_then_eof_then_lost() {
    let lp = EventLoop::new().unwrap();
    let (r, mut w) = os_pipe();
    let log = Rc::new(RefCell::new(Log::default()));
    let l2 = log.clone();
    let (t, _p) = complete(&lp, &lp.connect_read_pipe(move || Recorder::with_log(l2), OwnedFd::from(r)), 5.0).unwrap();
    assert_eq!(t.kind(), TransportKind::ReadPipe);
    assert!(matches!(t.get_extra_info("pipe"), Some(ExtraInfo::Fd(_))));
    assert_eq!(t.get_extra_info("socket"), None);
    assert_eq!(t.get_extra_info("peername"), None);
    assert!(!t.can_write_eof());
    assert!(t.is_reading());
    assert!(matches!(t.write(b"x"), Err(Error::InvalidState(_))), "a read pipe cannot write");

    w.write_all(b"hello ").unwrap();
    must(&lp, 5.0, "first bytes", || log.borrow().data.len() == 6);
    w.write_all(b"world").unwrap();
    drop(w);
    must(&lp, 5.0, "connection_lost", || log.borrow().is_lost());
    let log = log.borrow();
    assert_contract(&log, true, true);
    assert_eq!(log.data, b"hello world");
    assert_eq!(log.kinds(), ["made", "data", "eof", "lost"]);
    assert!(log.lost_error().is_none());
    assert!(t.is_closing());
    assert_eq!(t.socket_fd(), None, "the pipe is closed after connection_lost");
}

#[test]
fn read_pipe_eof_received_return_value_is_ignored() {
    // asyncio's read pipe closes after eof_received whatever it returns.
    let lp = EventLoop::new().unwrap();
    let (r, w) = os_pipe();
    let log = Rc::new(RefCell::new(Log::default()));
    let l2 = log.clone();
    let fut = lp.connect_read_pipe(move || Recorder::with_log(l2).on_eof(|_| true), OwnedFd::from(r));
    let (t, _p) = complete(&lp, &fut, 5.0).unwrap();
    drop(w);
    must(&lp, 5.0, "connection_lost", || log.borrow().is_lost());
    assert_eq!(log.borrow().kinds(), ["made", "eof", "lost"]);
    assert!(t.is_closing());
}

#[test]
fn read_pipe_close_before_eof() {
    let lp = EventLoop::new().unwrap();
    let (r, mut w) = os_pipe();
    let log = Rc::new(RefCell::new(Log::default()));
    let l2 = log.clone();
    let (t, _p) = complete(&lp, &lp.connect_read_pipe(move || Recorder::with_log(l2), OwnedFd::from(r)), 5.0).unwrap();
    t.close();
    assert!(t.is_closing());
    assert!(!t.is_reading());
    assert!(!log.borrow().is_lost(), "connection_lost comes from the ready queue, not from close()");
    must(&lp, 5.0, "connection_lost", || log.borrow().is_lost());
    assert_eq!(log.borrow().kinds(), ["made", "lost"]);
    // The read end is closed: the writer now gets EPIPE.
    let e = w.write_all(b"x").unwrap_err();
    assert_eq!(e.kind(), std::io::ErrorKind::BrokenPipe);
}

#[test]
fn read_pipe_pause_stops_delivery_and_resume_delivers_the_rest() {
    let lp = EventLoop::new().unwrap();
    let (r, mut w) = os_pipe();
    let want = pattern(1 << 20, 7);
    let want2 = want.clone();
    let writer = thread::spawn(move || {
        w.write_all(&want2).unwrap();
    });
    let log = Rc::new(RefCell::new(Log::default()));
    let l2 = log.clone();
    let paused_once = Rc::new(Cell::new(false));
    let p2 = paused_once.clone();
    let fut = lp.connect_read_pipe(
        move || {
            Recorder::with_log(l2.clone()).on_data(move |t, _| {
                if !p2.get() && l2.borrow().data.len() >= 100_000 {
                    p2.set(true);
                    t.pause_reading();
                    assert!(!t.is_reading());
                }
            })
        },
        OwnedFd::from(r),
    );
    let (t, _p) = complete(&lp, &fut, 5.0).unwrap();
    must(&lp, 10.0, "the pause", || paused_once.get());
    let at_pause = log.borrow().data.len();
    run_for(&lp, 0.3);
    assert_eq!(log.borrow().data.len(), at_pause, "data delivered while paused");
    t.resume_reading();
    assert!(t.is_reading());
    must(&lp, 20.0, "all data and EOF", || log.borrow().is_lost());
    writer.join().unwrap();
    let log = log.borrow();
    assert_contract(&log, true, true);
    assert_bytes_eq(&log.data, &want, "read pipe data");
}

#[test]
fn socket_given_as_read_pipe() {
    let lp = EventLoop::new().unwrap();
    let (a, mut b) = UnixStream::pair().unwrap();
    let log = Rc::new(RefCell::new(Log::default()));
    let l2 = log.clone();
    let (_t, _p) = complete(&lp, &lp.connect_read_pipe(move || Recorder::with_log(l2), OwnedFd::from(a)), 5.0).unwrap();
    b.write_all(b"over a socket").unwrap();
    b.shutdown(std::net::Shutdown::Write).unwrap();
    must(&lp, 5.0, "connection_lost", || log.borrow().is_lost());
    assert_eq!(log.borrow().data, b"over a socket");
    assert_eq!(log.borrow().kinds(), ["made", "data", "eof", "lost"]);
}

#[test]
fn regular_files_are_refused_with_asyncios_messages() {
    let lp = EventLoop::new().unwrap();
    let path = std::env::temp_dir().join(format!("ferroloop-pipes-{}", std::process::id()));
    let f = std::fs::File::create(&path).unwrap();
    let f2 = f.try_clone().unwrap();
    std::fs::remove_file(&path).unwrap();
    let r = lp.connect_read_pipe(Recorder::new, OwnedFd::from(f));
    match r.take_result() {
        Some(Err(Error::InvalidArgument(m))) => assert_eq!(m, "Pipe transport is for pipes/sockets only."),
        other => panic!("expected InvalidArgument, got {other:?}"),
    }
    let w = lp.connect_write_pipe(Recorder::new, OwnedFd::from(f2));
    match w.take_result() {
        Some(Err(Error::InvalidArgument(m))) => {
            assert_eq!(m, "Pipe transport is only for pipes, sockets and character devices")
        }
        other => panic!("expected InvalidArgument, got {other:?}"),
    }
    assert_eq!(lp.registered_sources(), 0);
}

// ---------------------------------------------------------------------------
// write pipes

/// Writes `data` through a write pipe as fast as flow control allows, then
/// `write_eof`.
struct Pump {
    data: Rc<Vec<u8>>,
    sent: usize,
    chunk: usize,
    paused: bool,
    t: Option<Transport>,
    log: Shared<Log>,
}

impl Pump {
    fn pump(&mut self) {
        let t = self.t.clone().unwrap();
        while !self.paused && self.sent < self.data.len() {
            let end = (self.sent + self.chunk).min(self.data.len());
            t.write(&self.data[self.sent..end]).unwrap();
            self.sent = end;
        }
        if self.sent == self.data.len() {
            t.write_eof().unwrap();
        }
    }
}

impl Protocol for Pump {
    fn connection_made(&mut self, t: Transport) {
        self.log.borrow_mut().events.push(Ev::Made);
        self.t = Some(t);
        self.pump();
    }
    fn pause_writing(&mut self) {
        let n = self.t.as_ref().unwrap().get_write_buffer_size();
        self.log.borrow_mut().events.push(Ev::Pause(n));
        self.paused = true;
    }
    fn resume_writing(&mut self) {
        let n = self.t.as_ref().unwrap().get_write_buffer_size();
        self.log.borrow_mut().events.push(Ev::Resume(n));
        self.paused = false;
        if self.sent < self.data.len() {
            self.pump();
        }
    }
    fn connection_lost(&mut self, exc: Option<Error>) {
        self.log.borrow_mut().events.push(Ev::Lost(exc));
    }
}

#[test]
fn write_pipe_large_transfer_with_flow_control_and_write_eof() {
    let lp = EventLoop::new().unwrap();
    let (mut r, w) = os_pipe();
    let data = Rc::new(pattern(4 << 20, 11));
    let want = (*data).clone();
    let reader = thread::spawn(move || {
        let mut got = Vec::new();
        r.read_to_end(&mut got).unwrap();
        got
    });
    let log = Rc::new(RefCell::new(Log::default()));
    let (l2, d2) = (log.clone(), data.clone());
    let fut = lp.connect_write_pipe(
        move || Pump { data: d2, sent: 0, chunk: 100_000, paused: false, t: None, log: l2 },
        OwnedFd::from(w),
    );
    let (t, _p) = complete(&lp, &fut, 5.0).unwrap();
    assert_eq!(t.kind(), TransportKind::WritePipe);
    assert!(t.can_write_eof());
    assert!(!t.is_reading());
    assert!(matches!(t.get_extra_info("pipe"), Some(ExtraInfo::Fd(_))));
    must(&lp, 30.0, "connection_lost after the flush", || log.borrow().is_lost());
    let got = reader.join().unwrap();
    assert_bytes_eq(&got, &want, "write pipe data");
    let log = log.borrow();
    assert_contract(&log, true, true);
    assert!(log.lost_error().is_none());
    assert!(!log.pauses().is_empty(), "4 MiB through a 64 KiB pipe must pause the writer");
    assert!(log.pauses().iter().all(|&n| n > 65536), "pause only strictly over the high-water mark");
    assert!(log.resumes().iter().all(|&n| n <= 16384), "resume at or below the low-water mark");
}

#[test]
fn write_pipe_reader_closing_is_seen_while_idle() {
    // asyncio watches the write end for readability: the reader's close
    // ends the transport with connection_lost(None) when nothing is queued.
    let lp = EventLoop::new().unwrap();
    let (r, w) = os_pipe();
    let log = Rc::new(RefCell::new(Log::default()));
    let l2 = log.clone();
    let (t, _p) = complete(&lp, &lp.connect_write_pipe(move || Recorder::with_log(l2), OwnedFd::from(w)), 5.0).unwrap();
    t.write(b"some bytes").unwrap();
    assert_eq!(t.get_write_buffer_size(), 0);
    run_for(&lp, 0.05);
    assert!(!log.borrow().is_lost());
    drop(r);
    must(&lp, 5.0, "connection_lost", || log.borrow().is_lost());
    assert!(log.borrow().lost_error().is_none());
    assert_eq!(log.borrow().kinds(), ["made", "lost"]);
}

#[test]
fn write_pipe_reader_closing_with_queued_data_is_a_broken_pipe() {
    let lp = EventLoop::new().unwrap();
    let (r, w) = os_pipe();
    let log = Rc::new(RefCell::new(Log::default()));
    let l2 = log.clone();
    let (t, _p) = complete(&lp, &lp.connect_write_pipe(move || Recorder::with_log(l2), OwnedFd::from(w)), 5.0).unwrap();
    t.write(&pattern(1 << 20, 3)).unwrap();
    assert!(t.get_write_buffer_size() > 0, "1 MiB cannot fit in a pipe");
    run_for(&lp, 0.05);
    drop(r);
    must(&lp, 5.0, "connection_lost", || log.borrow().is_lost());
    let err = log.borrow().lost_error().expect("an error");
    assert_eq!(err.io_kind(), Some(std::io::ErrorKind::BrokenPipe), "{err}");
    assert_eq!(err.errno(), Some(libc::EPIPE));
    assert_eq!(t.get_write_buffer_size(), 0);
}

#[test]
fn socket_given_as_write_pipe_sees_the_peer_close() {
    let lp = EventLoop::new().unwrap();
    let (a, mut b) = UnixStream::pair().unwrap();
    let log = Rc::new(RefCell::new(Log::default()));
    let l2 = log.clone();
    let (t, _p) = complete(&lp, &lp.connect_write_pipe(move || Recorder::with_log(l2), OwnedFd::from(a)), 5.0).unwrap();
    t.write(b"ping").unwrap();
    let mut buf = [0u8; 4];
    b.read_exact(&mut buf).unwrap();
    assert_eq!(&buf, b"ping");
    drop(b);
    must(&lp, 5.0, "connection_lost", || log.borrow().is_lost());
    assert!(log.borrow().lost_error().is_none());
}

#[test]
fn write_pipe_close_flushes_then_drops_later_writes() {
    let lp = EventLoop::new().unwrap();
    let (mut r, w) = os_pipe();
    let log = Rc::new(RefCell::new(Log::default()));
    let l2 = log.clone();
    let (t, _p) = complete(&lp, &lp.connect_write_pipe(move || Recorder::with_log(l2), OwnedFd::from(w)), 5.0).unwrap();
    let big = pattern(300_000, 5);
    t.write(&big).unwrap();
    t.close();
    assert!(t.is_closing());
    // asyncio's write pipe drops writes once closing; no error.
    t.write(b"dropped").unwrap();
    t.writelines([&b"also"[..], &b"dropped"[..]]).unwrap();
    let reader = thread::spawn(move || {
        let mut got = Vec::new();
        r.read_to_end(&mut got).unwrap();
        got
    });
    must(&lp, 10.0, "connection_lost", || log.borrow().is_lost());
    assert_bytes_eq(&reader.join().unwrap(), &big, "flushed data");
    assert!(log.borrow().lost_error().is_none());
}

#[test]
fn write_pipe_abort_drops_the_queue() {
    let lp = EventLoop::new().unwrap();
    let (mut r, w) = os_pipe();
    let log = Rc::new(RefCell::new(Log::default()));
    let l2 = log.clone();
    let (t, _p) = complete(&lp, &lp.connect_write_pipe(move || Recorder::with_log(l2), OwnedFd::from(w)), 5.0).unwrap();
    t.write(&pattern(1 << 20, 9)).unwrap();
    let queued = t.get_write_buffer_size();
    assert!(queued > 0);
    t.abort();
    assert_eq!(t.get_write_buffer_size(), 0);
    must(&lp, 5.0, "connection_lost", || log.borrow().is_lost());
    assert!(log.borrow().lost_error().is_none());
    let mut got = Vec::new();
    r.read_to_end(&mut got).unwrap();
    assert_eq!(got.len(), (1 << 20) - queued, "only what was written before abort arrives");
}

#[test]
fn write_pipe_to_dev_null() {
    // /dev/null cannot be polled (epoll refuses it); asyncio writes to it
    // all the same, since every write completes at once.
    let lp = EventLoop::new().unwrap();
    let f = std::fs::OpenOptions::new().write(true).open("/dev/null").unwrap();
    let log = Rc::new(RefCell::new(Log::default()));
    let l2 = log.clone();
    let (t, _p) = complete(&lp, &lp.connect_write_pipe(move || Recorder::with_log(l2), OwnedFd::from(f)), 5.0).unwrap();
    t.write(&pattern(1 << 20, 1)).unwrap();
    assert_eq!(t.get_write_buffer_size(), 0);
    t.write_eof().unwrap();
    must(&lp, 5.0, "connection_lost", || log.borrow().is_lost());
    assert!(log.borrow().lost_error().is_none());
}

#[test]
fn write_pipe_limits_pause_and_resume() {
    let lp = EventLoop::new().unwrap();
    let (mut r, w) = os_pipe();
    let log = Rc::new(RefCell::new(Log::default()));
    let l2 = log.clone();
    let (t, _p) = complete(&lp, &lp.connect_write_pipe(move || Recorder::with_log(l2), OwnedFd::from(w)), 5.0).unwrap();
    t.set_write_buffer_limits(Some(1000), None).unwrap();
    assert_eq!(t.get_write_buffer_limits(), (250, 1000));
    t.write(&pattern(200_000, 2)).unwrap();
    assert_eq!(log.borrow().pauses().len(), 1, "pause_writing once over the high mark");
    let reader = thread::spawn(move || {
        let mut got = vec![0u8; 200_000];
        r.read_exact(&mut got).unwrap();
        got
    });
    must(&lp, 10.0, "resume_writing", || log.borrow().resumes().len() == 1);
    assert_bytes_eq(&reader.join().unwrap(), &pattern(200_000, 2), "data");
    t.close();
    must(&lp, 5.0, "connection_lost", || log.borrow().is_lost());
    assert_contract(&log.borrow(), true, true);
}
