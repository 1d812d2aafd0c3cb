//! The life of a stream transport and its protocol: the state machine,
//! half-close, reset, abort, close, protocol switching, pause/resume reading,
//! panics in protocol methods, buffered protocols, write ordering.

mod common;

use std::cell::{Cell, RefCell};
use std::io::Write;
use std::net::Shutdown;
use std::rc::Rc;
use std::time::Duration;

use common::*;
use ferroloop::{protocol_ref, Error, EventLoop, Protocol, ServerOptions, Transport};

// ---------------------------------------------------------------------------
// the state machine

#[test]
fn full_exchange_follows_the_state_machine() {
    let lp = EventLoop::new().unwrap();
    let (t, log, mut peer) = connect_std_peer(&lp, Recorder::new().on_data(|t, d| t.write(d).unwrap()));
    for i in 0..20u64 {
        let msg = pattern(1000 + i as usize * 3000, i);
        peer.write_all(&msg).unwrap();
        let back = pump_read_exact(&lp, &peer, msg.len());
        assert_bytes_eq(&back, &msg, "echo");
        peer.set_nonblocking(false).unwrap();
    }
    peer.shutdown(Shutdown::Write).unwrap();
    must(&lp, 10.0, "connection_lost", || log.borrow().is_lost());
    assert!(t.is_closing());
    assert!(log.borrow().lost_error().is_none());
    assert_eq!(log.borrow().kinds(), ["made", "data", "eof", "lost"]);
    // Nothing after connection_lost, whatever happens next.
    let _ = peer.write_all(b"late");
    run_for(&lp, 0.1);
    assert_contract(&log.borrow(), true, true);
    assert!(t.get_protocol().is_none(), "the transport drops its protocol after connection_lost");
    assert!(t.socket_fd().is_none());
}

#[test]
fn close_inside_data_received_delivers_connection_lost_later() {
    // asyncio: close() with an empty buffer does call_soon(_call_connection_lost).
    let lp = EventLoop::new().unwrap();
    let rec = Recorder::new();
    let l2 = rec.log.clone();
    let rec = rec.on_data(move |t, _| {
        t.close();
        assert!(t.is_closing());
        assert!(!t.is_reading());
        l2.borrow_mut().note("close returned");
    });
    let (t, log, mut peer) = connect_std_peer(&lp, rec);
    peer.write_all(b"first").unwrap();
    must(&lp, 10.0, "connection_lost", || log.borrow().is_lost());
    assert_eq!(log.borrow().kinds(), ["made", "data", "note:close returned", "lost"]);
    assert_eq!(log.borrow().data, b"first");
    let _ = peer.write_all(b"more data after close");
    run_for(&lp, 0.1);
    assert_contract(&log.borrow(), true, true);
    assert!(log.borrow().lost_error().is_none());
    // The peer sees EOF.
    let rest = pump_read_to_eof(&lp, &peer);
    assert!(rest.is_empty());
    // close() again, abort() after close: nothing more happens.
    t.close();
    t.abort();
    run_for(&lp, 0.05);
    assert_eq!(log.borrow().count("lost"), 1);
}

#[test]
fn close_inside_connection_made_delivers_lost_later() {
    // The transport is handed out by create_connection only after
    // connection_made; a server-side close from connection_made itself:
    let lp = EventLoop::new().unwrap();
    let (t, log, peer) = connect_std_peer(&lp, Recorder::new().on_made(|t| t.close()));
    must(&lp, 10.0, "connection_lost", || log.borrow().is_lost());
    assert_eq!(log.borrow().kinds(), ["made", "lost"]);
    assert!(t.is_closing());
    assert!(pump_read_to_eof(&lp, &peer).is_empty());
}

#[test]
fn eof_arriving_together_with_the_last_data_is_not_lost() {
    // Data and FIN reach the socket before the loop polls: one edge-triggered
    // event, a short read of the data, and the EOF must still be read.
    // (Engine bug found by this test, fixed in transport/stream/: the
    // short-read-means-drained shortcut dropped the EOF behind the data.)
    let lp = EventLoop::new().unwrap();
    let (_t, log, mut peer) = connect_std_peer(&lp, Recorder::new());
    run_for(&lp, 0.05); // the first read attempt has run and found nothing
    peer.write_all(b"hello").unwrap();
    peer.shutdown(Shutdown::Write).unwrap();
    std::thread::sleep(Duration::from_millis(50));
    must(&lp, 5.0, "eof_received and connection_lost", || log.borrow().is_lost());
    assert_eq!(log.borrow().kinds(), ["made", "data", "eof", "lost"]);
    assert_eq!(log.borrow().data, b"hello");

    // The same with the peer closing completely, and with a reset.
    for reset in [false, true] {
        let (_t, log, mut peer) = connect_std_peer(&lp, Recorder::new());
        run_for(&lp, 0.05);
        peer.write_all(b"bye").unwrap();
        if reset {
            socket2::SockRef::from(&peer).set_linger(Some(Duration::ZERO)).unwrap();
        }
        drop(peer);
        std::thread::sleep(Duration::from_millis(50));
        must(&lp, 5.0, "connection_lost", || log.borrow().is_lost());
        let l = log.borrow();
        if reset {
            // Linux discards the queued data on RST: the error is what counts.
            assert_eq!(l.lost_error().and_then(|e| e.errno()), Some(libc::ECONNRESET), "{:?}", l.kinds());
        } else {
            assert_eq!(l.kinds(), ["made", "data", "eof", "lost"]);
            assert_eq!(l.data, b"bye");
        }
        assert_contract(&l, true, true);
    }
}

#[test]
fn a_client_that_sends_and_closes_before_it_is_accepted_is_served() {
    // Data and FIN wait in the accepted socket before the transport exists
    // (HTTP/1.0 clients, health checks): one readiness edge announces both.
    // The server does not answer: a write of its own could bring a fresh
    // edge and hide a lost EOF.
    let lp = EventLoop::new().unwrap();
    let logs: Shared<Vec<Shared<Log>>> = Rc::new(RefCell::new(Vec::new()));
    let l2 = logs.clone();
    let factory = move || {
        let r = Recorder::new();
        l2.borrow_mut().push(r.log.clone());
        r
    };
    let opts = ServerOptions { start_serving: false, ..Default::default() };
    let server = complete(&lp, &lp.create_server(factory, "127.0.0.1", 0, opts), 10.0).unwrap();
    let addr = match &server.sockets()[0].address {
        Some(ferroloop::Address::Inet(a)) => *a,
        other => panic!("{other:?}"),
    };
    let mut clients = Vec::new();
    for i in 0..5u8 {
        let mut c = std::net::TcpStream::connect(addr).unwrap();
        c.write_all(&[b'a' + i; 10]).unwrap();
        c.shutdown(Shutdown::Write).unwrap();
        clients.push(c);
    }
    std::thread::sleep(Duration::from_millis(50));
    server.start_serving().unwrap();
    must(&lp, 5.0, "every early client served to the end", || {
        logs.borrow().len() == 5 && logs.borrow().iter().all(|l| l.borrow().is_lost())
    });
    for l in logs.borrow().iter() {
        let l = l.borrow();
        assert_eq!(l.kinds(), ["made", "data", "eof", "lost"]);
        assert_eq!(l.data.len(), 10);
    }
    for c in &clients {
        assert!(pump_read_to_eof(&lp, c).is_empty());
    }
    server.close();
}

#[test]
fn peer_reset_while_our_buffer_is_full_is_an_error() {
    let lp = EventLoop::new().unwrap();
    let reports = record_exceptions(&lp);
    let (t, log, peer) = connect_std_peer(&lp, Recorder::new());
    t.write(&pattern(16 << 20, 19)).unwrap();
    run_for(&lp, 0.05);
    assert!(t.get_write_buffer_size() > 0);
    socket2::SockRef::from(&peer).set_linger(Some(Duration::ZERO)).unwrap();
    drop(peer);
    must(&lp, 10.0, "connection_lost", || log.borrow().is_lost());
    let err = log.borrow().lost_error().expect("an error after a reset");
    assert!(
        [Some(libc::ECONNRESET), Some(libc::EPIPE)].contains(&err.errno()),
        "expected ECONNRESET or EPIPE, got {err:?}"
    );
    assert_eq!(t.get_write_buffer_size(), 0);
    assert_contract(&log.borrow(), true, true);
    assert!(reports.borrow().is_empty(), "{:?}", reports.borrow());
}

// ---------------------------------------------------------------------------
// half-close

#[test]
fn write_eof_half_closes_and_data_still_arrives() {
    let lp = EventLoop::new().unwrap();
    let (t, log, mut peer) = connect_std_peer(&lp, Recorder::new());
    assert!(t.can_write_eof());
    t.write(b"request").unwrap();
    t.write_eof().unwrap();
    t.write_eof().unwrap(); // twice: nothing
    let got = pump_read_to_eof(&lp, &peer);
    assert_eq!(got, b"request");
    assert!(!t.is_closing(), "write_eof does not close");
    peer.set_nonblocking(false).unwrap();
    peer.write_all(b"response").unwrap();
    must(&lp, 10.0, "data after write_eof", || log.borrow().data == b"response");
    peer.shutdown(Shutdown::Write).unwrap();
    must(&lp, 10.0, "connection_lost", || log.borrow().is_lost());
    assert_eq!(log.borrow().kinds(), ["made", "data", "eof", "lost"]);
    assert!(log.borrow().lost_error().is_none());
    assert_contract(&log.borrow(), true, true);
}

#[test]
fn write_eof_flushes_the_buffer_first() {
    let lp = EventLoop::new().unwrap();
    let (t, log, peer) = connect_std_peer(&lp, Recorder::new());
    let payload = pattern(16 << 20, 11);
    t.write(&payload).unwrap();
    assert!(t.get_write_buffer_size() > 0);
    t.write_eof().unwrap();
    let reader = spawn_reader(peer.try_clone().unwrap());
    must(&lp, 20.0, "buffer flushed", || t.get_write_buffer_size() == 0);
    let (got, err) = reader.join().unwrap();
    assert!(err.is_none());
    assert_bytes_eq(&got, &payload, "peer received before EOF");
    assert!(!log.borrow().is_lost());
    let mut peer = peer;
    peer.write_all(b"still open").unwrap();
    must(&lp, 10.0, "reply", || log.borrow().data == b"still open");
    t.close();
    must(&lp, 10.0, "lost", || log.borrow().is_lost());
    assert_contract(&log.borrow(), true, true);
}

#[test]
fn write_after_write_eof_is_invalid_state() {
    // asyncio: RuntimeError('Cannot call write() after write_eof()').
    let lp = EventLoop::new().unwrap();
    let (t, _log, _peer) = connect_std_peer(&lp, Recorder::new());
    t.write_eof().unwrap();
    for r in [t.write(b"x"), t.write_owned(b"x".to_vec()), t.writelines([&b"a"[..], &b"b"[..]])] {
        match r {
            Err(Error::InvalidState(m)) => assert_eq!(m, "Cannot call write() after write_eof()"),
            other => panic!("expected InvalidState, got {other:?}"),
        }
    }
    // Even an empty write is refused, as in asyncio (the check comes first).
    assert!(matches!(t.write(b""), Err(Error::InvalidState(_))));
}

#[test]
fn eof_received_true_keeps_the_transport_open() {
    let lp = EventLoop::new().unwrap();
    let (t, log, mut peer) = connect_std_peer(&lp, Recorder::new().on_eof(|_| true));
    peer.write_all(b"last words").unwrap();
    peer.shutdown(Shutdown::Write).unwrap();
    must(&lp, 10.0, "eof_received", || log.borrow().got_eof());
    run_for(&lp, 0.1);
    assert!(!log.borrow().is_lost(), "eof_received returned true: the transport must stay open");
    assert!(!t.is_closing());
    // Half-open: we can still write and the peer receives it.
    t.write(b"reply after your EOF").unwrap();
    let got = pump_read_exact(&lp, &peer, 20);
    assert_eq!(got, b"reply after your EOF");
    t.close();
    must(&lp, 10.0, "connection_lost", || log.borrow().is_lost());
    assert!(pump_read_to_eof(&lp, &peer).is_empty());
    assert_eq!(log.borrow().kinds(), ["made", "data", "eof", "lost"]);
    assert!(log.borrow().lost_error().is_none());
    assert_contract(&log.borrow(), true, true);
}

#[test]
fn eof_received_false_closes_the_transport() {
    let lp = EventLoop::new().unwrap();
    let (t, log, peer) = connect_std_peer(&lp, Recorder::new().on_eof(|_| false));
    peer.shutdown(Shutdown::Write).unwrap();
    must(&lp, 10.0, "connection_lost", || log.borrow().is_lost());
    assert!(t.is_closing());
    assert_eq!(log.borrow().kinds(), ["made", "eof", "lost"]);
    assert!(log.borrow().lost_error().is_none());
    assert!(pump_read_to_eof(&lp, &peer).is_empty(), "peer sees our EOF");
}

// ---------------------------------------------------------------------------
// reset, abort, close

#[test]
fn peer_reset_gives_connection_lost_with_econnreset() {
    let lp = EventLoop::new().unwrap();
    let reports = record_exceptions(&lp);
    let (t, log, peer) = connect_std_peer(&lp, Recorder::new());
    socket2::SockRef::from(&peer).set_linger(Some(Duration::ZERO)).unwrap();
    drop(peer); // RST
    must(&lp, 10.0, "connection_lost", || log.borrow().is_lost());
    let err = log.borrow().lost_error().expect("connection_lost(Some(error)) after a reset");
    assert!(matches!(err, Error::Io(_)), "{err:?}");
    assert_eq!(err.errno(), Some(libc::ECONNRESET), "{err}");
    assert_eq!(err.io_kind(), Some(std::io::ErrorKind::ConnectionReset));
    assert!(t.is_closing());
    assert_contract(&log.borrow(), true, true);
    // asyncio logs OS errors such as resets only in debug mode.
    assert!(reports.borrow().is_empty(), "{:?}", reports.borrow());
}

#[test]
fn abort_with_a_full_buffer_drops_the_data() {
    let lp = EventLoop::new().unwrap();
    let (t, log, peer) = connect_std_peer(&lp, Recorder::new());
    let payload = pattern(16 << 20, 12);
    t.write(&payload).unwrap();
    run_for(&lp, 0.05);
    assert!(t.get_write_buffer_size() > 0);
    assert_eq!(log.borrow().count("pause"), 1);
    t.abort();
    assert_eq!(t.get_write_buffer_size(), 0, "abort drops the buffer at once");
    assert!(t.is_closing());
    assert!(!log.borrow().is_lost(), "connection_lost comes from the ready queue, not from abort()");
    must(&lp, 10.0, "connection_lost", || log.borrow().is_lost());
    assert!(log.borrow().lost_error().is_none());
    // asyncio (python3.11): [('pause', ...), ('lost', None)] - no resume.
    assert_eq!(log.borrow().kinds(), ["made", "pause", "lost"]);
    let (got, _err) = spawn_reader(peer).join().unwrap();
    assert!(got.len() < payload.len(), "the peer received everything although abort() dropped the buffer");
    assert_bytes_eq(&got, &payload[..got.len()], "what the peer received is a prefix");
    // Writes after the connection is lost are dropped, never an error.
    for _ in 0..10 {
        t.write(b"dropped").unwrap();
    }
    assert_eq!(t.get_write_buffer_size(), 0);
}

#[test]
fn close_flushes_the_buffer_before_connection_lost() {
    let lp = EventLoop::new().unwrap();
    let (t, log, peer) = connect_std_peer(&lp, Recorder::new());
    let payload = pattern(16 << 20, 13);
    t.write(&payload).unwrap();
    t.close();
    assert!(t.is_closing());
    assert!(!t.is_reading());
    run_for(&lp, 0.1);
    assert!(!log.borrow().is_lost(), "connection_lost before the buffer was flushed");
    assert!(t.get_write_buffer_size() > 0);
    let reader = spawn_reader(peer);
    must(&lp, 20.0, "connection_lost", || log.borrow().is_lost());
    assert!(log.borrow().lost_error().is_none());
    let (got, err) = reader.join().unwrap();
    assert!(err.is_none(), "{err:?}");
    assert_bytes_eq(&got, &payload, "peer received after close()");
    // asyncio resumes writing while draining a closing transport too.
    assert_eq!(log.borrow().kinds(), ["made", "pause", "resume", "lost"]);
    assert_contract(&log.borrow(), true, true);
}

// ---------------------------------------------------------------------------
// set_protocol, pause_reading

#[test]
fn set_protocol_inside_data_received_switches_later_events() {
    let lp = EventLoop::new().unwrap();
    let second = Recorder::new();
    let log2 = second.log.clone();
    let second_ref = protocol_ref(second);
    let sr = second_ref.clone();
    let l2 = log2.clone();
    let first = Recorder::new().on_data(move |t, _| {
        adopt_transport(&l2, t);
        t.set_protocol(sr.clone());
    });
    let (t, log1, mut peer) = connect_std_peer(&lp, first);
    peer.write_all(b"one").unwrap();
    must(&lp, 10.0, "first data", || log1.borrow().data == b"one");
    assert!(Rc::ptr_eq(&t.get_protocol().unwrap(), &second_ref));
    peer.write_all(b"two").unwrap();
    must(&lp, 10.0, "second data", || log2.borrow().data == b"two");
    peer.shutdown(Shutdown::Write).unwrap();
    must(&lp, 10.0, "lost", || log2.borrow().is_lost());
    assert_eq!(log1.borrow().kinds(), ["made", "data"]);
    assert_eq!(log1.borrow().data, b"one");
    assert_eq!(log2.borrow().kinds(), ["data", "eof", "lost"]);
    assert_contract(&log2.borrow(), false, true);
    assert!(t.get_protocol().is_none());
}

#[test]
fn pause_reading_inside_data_received_holds_data_until_resume() {
    let lp = EventLoop::new().unwrap();
    let rec = Recorder::new();
    let l2 = rec.log.clone();
    let rec = rec.on_data(move |t, _| {
        if l2.borrow().data_calls() == 1 {
            assert!(t.is_reading());
            t.pause_reading();
            t.pause_reading(); // twice: nothing
            assert!(!t.is_reading());
        }
    });
    let (t, log, peer) = connect_std_peer(&lp, rec);
    let payload = pattern(4 << 20, 14);
    let writer = spawn_writer(peer.try_clone().unwrap(), payload.clone());
    must(&lp, 10.0, "first data", || log.borrow().data_calls() == 1);
    run_for(&lp, 0.2);
    assert_eq!(log.borrow().data_calls(), 1, "data_received while reading is paused");
    assert!(!log.borrow().got_eof(), "eof_received while reading is paused");
    assert!(!t.is_reading());
    let first_len = log.borrow().data.len();
    assert!(first_len < payload.len());
    t.resume_reading();
    assert!(t.is_reading());
    t.resume_reading(); // twice: nothing
    must(&lp, 20.0, "lost", || log.borrow().is_lost());
    writer.join().unwrap().unwrap();
    assert_bytes_eq(&log.borrow().data, &payload, "data after resume_reading");
    assert!(log.borrow().data_calls() > 1);
    assert_contract(&log.borrow(), true, true);
    assert!(!t.is_reading(), "a closed transport is not reading");
    t.resume_reading(); // on a closed transport: nothing
    t.pause_reading();
}

#[test]
fn pause_and_resume_reading_on_every_chunk() {
    let lp = EventLoop::new().unwrap();
    let paused = Rc::new(Cell::new(false));
    let violations = Rc::new(Cell::new(0));
    let (p2, v2) = (paused.clone(), violations.clone());
    let rec = Recorder::new().on_data(move |t, _| {
        if p2.get() {
            v2.set(v2.get() + 1);
        }
        t.pause_reading();
        p2.set(true);
        let (t2, p3) = (t.clone(), p2.clone());
        t.get_loop()
            .call_soon(move || {
                p3.set(false);
                t2.resume_reading();
            })
            .unwrap();
    });
    let (_t, log, peer) = connect_std_peer(&lp, rec);
    let payload = pattern(3 << 20, 15);
    let writer = spawn_writer(peer.try_clone().unwrap(), payload.clone());
    must(&lp, 20.0, "lost", || log.borrow().is_lost());
    writer.join().unwrap().unwrap();
    assert_eq!(violations.get(), 0, "data_received while paused");
    assert_bytes_eq(&log.borrow().data, &payload, "data");
    assert!(log.borrow().data_calls() > 3);
    assert_contract(&log.borrow(), true, true);
}

#[test]
fn pause_reading_inside_connection_made_delays_all_data() {
    // asyncio 3.11: _add_reader is skipped while not is_reading().
    let lp = EventLoop::new().unwrap();
    let (t, log, mut peer) = connect_std_peer(&lp, Recorder::new().on_made(|t| t.pause_reading()));
    peer.write_all(b"early bytes").unwrap();
    peer.shutdown(Shutdown::Write).unwrap();
    run_for(&lp, 0.1);
    assert_eq!(log.borrow().kinds(), ["made"]);
    t.resume_reading();
    must(&lp, 10.0, "lost", || log.borrow().is_lost());
    assert_eq!(log.borrow().kinds(), ["made", "data", "eof", "lost"]);
    assert_eq!(log.borrow().data, b"early bytes");
}

#[test]
fn set_protocol_to_a_buffered_protocol_mid_stream() {
    // What asyncio's SSLProtocol does: a plain protocol hands the transport
    // over to a buffered one; the next reads go through get_buffer.
    let lp = EventLoop::new().unwrap();
    let (buffered, got, events) = Buffered::new(vec![4096], false);
    let next = protocol_ref(buffered);
    let rec = Recorder::new().on_data(move |t, _| t.set_protocol(next.clone()));
    let (_t, log, mut peer) = connect_std_peer(&lp, rec);
    peer.write_all(b"hello").unwrap();
    must(&lp, 10.0, "first data", || log.borrow().data == b"hello");
    let rest = pattern(1 << 20, 20);
    let writer = spawn_writer(peer, rest.clone());
    must(&lp, 20.0, "lost", || events.borrow().last().map(|s| s.starts_with("lost")).unwrap_or(false));
    writer.join().unwrap().unwrap();
    assert_bytes_eq(&got.borrow(), &rest, "buffered protocol after set_protocol");
    assert_eq!(*events.borrow(), ["updated", "eof", "lost"]);
    assert_eq!(log.borrow().kinds(), ["made", "data"]);
}

#[test]
fn peer_eof_while_our_buffer_is_full_closes_after_flushing() {
    // eof_received returns false: close(), which still flushes the buffer.
    let lp = EventLoop::new().unwrap();
    let (t, log, peer) = connect_std_peer(&lp, Recorder::new());
    let payload = pattern(16 << 20, 23);
    t.write(&payload).unwrap();
    peer.shutdown(Shutdown::Write).unwrap();
    must(&lp, 10.0, "eof_received", || log.borrow().got_eof());
    assert!(t.is_closing());
    run_for(&lp, 0.05);
    assert!(!log.borrow().is_lost());
    let reader = spawn_reader(peer);
    must(&lp, 20.0, "lost", || log.borrow().is_lost());
    let (got, _) = reader.join().unwrap();
    assert_bytes_eq(&got, &payload, "flushed after the peer's EOF");
    assert_eq!(log.borrow().kinds(), ["made", "pause", "eof", "resume", "lost"]);
    assert!(log.borrow().lost_error().is_none());
}

#[test]
fn abort_after_close_drops_the_pending_flush() {
    let lp = EventLoop::new().unwrap();
    let (t, log, peer) = connect_std_peer(&lp, Recorder::new());
    let payload = pattern(16 << 20, 24);
    t.write(&payload).unwrap();
    t.close();
    run_for(&lp, 0.05);
    assert!(!log.borrow().is_lost());
    t.abort();
    assert_eq!(t.get_write_buffer_size(), 0);
    must(&lp, 10.0, "lost", || log.borrow().is_lost());
    assert!(log.borrow().lost_error().is_none());
    let (got, _) = spawn_reader(peer).join().unwrap();
    assert!(got.len() < payload.len());
    assert_eq!(log.borrow().count("lost"), 1);
}

// ---------------------------------------------------------------------------
// panics

#[test]
fn panic_in_data_received_aborts_only_that_connection() {
    let lp = EventLoop::new().unwrap();
    let reports = record_exceptions(&lp);
    let server_logs: Shared<Vec<Shared<Log>>> = Rc::new(RefCell::new(Vec::new()));
    let sl = server_logs.clone();
    let factory = move || {
        let r = Recorder::new().on_data(|t, d| {
            if d.starts_with(b"panic") {
                panic!("panic requested by the peer");
            }
            t.write(d).unwrap();
        });
        sl.borrow_mut().push(r.log.clone());
        r
    };
    let server = complete(&lp, &lp.create_server(factory, "127.0.0.1", 0, ServerOptions::default()), 10.0).unwrap();
    let port = match &server.sockets()[0].address {
        Some(ferroloop::Address::Inet(a)) => a.port(),
        other => panic!("{other:?}"),
    };
    let connect = |lp: &EventLoop| {
        let f = lp.create_connection(Recorder::new, "127.0.0.1", port, Default::default());
        let (t, p) = complete(lp, &f, 10.0).unwrap();
        let log = p.borrow().log.clone();
        (t, log)
    };
    let (ta, la) = connect(&lp);
    let (tb, lb) = connect(&lp);
    must(&lp, 10.0, "two accepted", || server_logs.borrow().len() == 2);
    tb.write(b"before").unwrap();
    must(&lp, 10.0, "echo before", || lb.borrow().data == b"before");

    ta.write(b"panic now").unwrap();
    must(&lp, 10.0, "client A closed", || la.borrow().is_lost());
    let reps = reports.borrow().clone();
    assert_eq!(reps.len(), 1, "{reps:?}");
    assert_eq!(reps[0].message, "Fatal error: protocol.data_received() call failed.");
    match &reps[0].error {
        Some(Error::Panic(m)) => assert_eq!(m, "panic requested by the peer"),
        other => panic!("expected Error::Panic, got {other:?}"),
    }
    // The server side of A: connection_lost(Some(Error::Panic)).
    let server_a = server_logs.borrow()[0].clone();
    must(&lp, 10.0, "server side of A lost", || server_a.borrow().is_lost());
    match server_a.borrow().lost_error() {
        Some(Error::Panic(m)) => assert_eq!(m, "panic requested by the peer"),
        other => panic!("expected connection_lost(Some(Error::Panic)), got {other:?}"),
    }
    assert_contract(&server_a.borrow(), true, true);
    assert_eq!(la.borrow().kinds(), ["made", "eof", "lost"]);

    // B and new connections are still served.
    tb.write(b" after").unwrap();
    must(&lp, 10.0, "echo after", || lb.borrow().data == b"before after");
    let (tc, lc) = connect(&lp);
    tc.write(b"new").unwrap();
    must(&lp, 10.0, "echo on a new connection", || lc.borrow().data == b"new");
    assert_eq!(reports.borrow().len(), 1);
    assert!(server.is_serving());
    server.close();
    server.abort_clients();
    must(&lp, 10.0, "clients lost", || lb.borrow().is_lost() && lc.borrow().is_lost());
}

#[test]
fn panic_in_connection_made_and_connection_lost_are_reported() {
    let lp = EventLoop::new().unwrap();
    let reports = record_exceptions(&lp);
    let rec = Recorder::new().on_lost(|_| panic!("lost boom"));
    let (t, log, peer) = connect_std_peer(&lp, rec);
    drop(peer);
    must(&lp, 10.0, "connection_lost", || log.borrow().is_lost() || !reports.borrow().is_empty());
    run_for(&lp, 0.05);
    assert!(t.is_closing());
    let reps = reports.borrow().clone();
    assert_eq!(reps.len(), 1, "{reps:?}");
    assert_eq!(reps[0].message, "Exception in protocol.connection_lost()");

    // connection_made panics: reported, connection aborted, connection_lost(Some(Panic)).
    let lp = EventLoop::new().unwrap();
    let reports = record_exceptions(&lp);
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let rec = Recorder::new().on_made(|_| panic!("made boom"));
    let log = rec.log.clone();
    let f = lp.create_connection(move || rec, "127.0.0.1", listener.local_addr().unwrap().port(), Default::default());
    let r = complete(&lp, &f, 10.0);
    assert!(r.is_err(), "create_connection must fail when connection_made panics");
    must(&lp, 10.0, "connection_lost", || log.borrow().is_lost());
    assert!(matches!(log.borrow().lost_error(), Some(Error::Panic(m)) if m == "made boom"));
    assert_eq!(reports.borrow()[0].message, "Fatal error: protocol.connection_made() call failed.");
}

// ---------------------------------------------------------------------------
// buffered protocols

struct Buffered {
    buf: Vec<u8>,
    /// Buffer sizes handed out, cycling (exercises many short reads).
    sizes: Vec<usize>,
    next: usize,
    last_len: usize,
    got: Shared<Vec<u8>>,
    events: Shared<Vec<String>>,
    empty: bool,
    /// A buffer was handed out and neither filled nor returned yet.
    lent: bool,
}

impl Buffered {
    fn new(sizes: Vec<usize>, empty: bool) -> (Self, Shared<Vec<u8>>, Shared<Vec<String>>) {
        let got = Rc::new(RefCell::new(Vec::new()));
        let events = Rc::new(RefCell::new(Vec::new()));
        let max = sizes.iter().copied().max().unwrap_or(1);
        let b = Buffered {
            buf: vec![0; max],
            sizes,
            next: 0,
            last_len: 0,
            got: got.clone(),
            events: events.clone(),
            empty,
            lent: false,
        };
        (b, got, events)
    }
}

impl Protocol for Buffered {
    fn connection_made(&mut self, _t: Transport) {
        self.events.borrow_mut().push("made".into());
    }
    fn data_received(&mut self, _data: &[u8]) {
        self.events.borrow_mut().push("data_received!".into());
    }
    fn get_buffer(&mut self, size_hint: usize) -> Option<&mut [u8]> {
        assert!(size_hint > 0);
        assert!(!self.lent, "get_buffer while the last buffer was neither filled nor returned");
        if self.empty {
            return Some(&mut self.buf[..0]);
        }
        let n = self.sizes[self.next % self.sizes.len()];
        self.next += 1;
        self.last_len = n;
        self.lent = true;
        Some(&mut self.buf[..n])
    }
    fn buffer_unused(&mut self) {
        assert!(self.lent, "buffer_unused without a buffer handed out");
        self.lent = false;
    }
    fn buffer_updated(&mut self, nbytes: usize) {
        assert!(self.lent, "buffer_updated without a buffer handed out");
        self.lent = false;
        assert!(nbytes > 0 && nbytes <= self.last_len, "buffer_updated({nbytes}) for a buffer of {}", self.last_len);
        self.got.borrow_mut().extend_from_slice(&self.buf[..nbytes]);
        let mut ev = self.events.borrow_mut();
        if ev.last().map(|s| s != "updated").unwrap_or(true) {
            ev.push("updated".into());
        }
    }
    fn eof_received(&mut self) -> bool {
        assert!(!self.lent, "eof_received while the buffer of the read that found EOF is not returned");
        self.events.borrow_mut().push("eof".into());
        false
    }
    fn connection_lost(&mut self, exc: Option<Error>) {
        assert!(!self.lent, "connection_lost while a buffer is not returned");
        self.events.borrow_mut().push(match exc {
            None => "lost".into(),
            Some(e) => format!("lost:{e:?}"),
        });
    }
}

fn run_buffered(sizes: Vec<usize>, seed: u64) {
    let lp = EventLoop::new().unwrap();
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let (proto, got, events) = Buffered::new(sizes, false);
    let f = lp.create_connection(move || proto, "127.0.0.1", listener.local_addr().unwrap().port(), Default::default());
    let (t, _p) = complete(&lp, &f, 10.0).unwrap();
    let (peer, _) = listener.accept().unwrap();
    let payload = pattern(1 << 20, seed);
    let writer = spawn_writer(peer, payload.clone());
    must(&lp, 20.0, "lost", || events.borrow().last().map(|s| s.starts_with("lost")).unwrap_or(false));
    writer.join().unwrap().unwrap();
    assert_bytes_eq(&got.borrow(), &payload, "buffered protocol received");
    assert_eq!(*events.borrow(), ["made", "updated", "eof", "lost"]);
    assert!(t.is_closing());
}

#[test]
fn buffered_protocol_receives_1mib_byte_exact() {
    run_buffered(vec![64 * 1024], 16);
}

#[test]
fn buffered_protocol_with_small_and_odd_buffers() {
    run_buffered(vec![1, 7, 1000, 4096, 65537, 3], 17);
}

#[test]
fn get_buffer_returning_an_empty_buffer_is_fatal() {
    // asyncio: RuntimeError('get_buffer() returned an empty buffer'), reported
    // as 'Fatal error: protocol.get_buffer() call failed.', then
    // connection_lost(exc).
    let lp = EventLoop::new().unwrap();
    let reports = record_exceptions(&lp);
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let (proto, got, events) = Buffered::new(vec![16], true);
    let f = lp.create_connection(move || proto, "127.0.0.1", listener.local_addr().unwrap().port(), Default::default());
    let (t, _p) = complete(&lp, &f, 10.0).unwrap();
    let (mut peer, _) = listener.accept().unwrap();
    peer.write_all(b"some data").unwrap();
    must(&lp, 10.0, "lost", || events.borrow().last().map(|s| s.starts_with("lost")).unwrap_or(false));
    assert!(got.borrow().is_empty());
    let ev = events.borrow().clone();
    assert_eq!(ev.len(), 2, "{ev:?}");
    assert_eq!(ev[0], "made");
    assert!(ev[1].starts_with("lost:InvalidState"), "{ev:?}");
    let reps = reports.borrow().clone();
    assert_eq!(reps.len(), 1, "{reps:?}");
    assert_eq!(reps[0].message, "Fatal error: protocol.get_buffer() call failed.");
    match &reps[0].error {
        Some(Error::InvalidState(m)) => assert_eq!(m, "get_buffer() returned an empty buffer"),
        other => panic!("{other:?}"),
    }
    assert!(t.is_closing());
}

// ---------------------------------------------------------------------------
// write ordering

#[test]
fn write_writelines_and_write_owned_keep_byte_order() {
    let lp = EventLoop::new().unwrap();
    let (t, log, peer) = connect_std_peer(&lp, Recorder::new());
    let sizes = pattern(4000, 18);
    let mut k = 0usize;
    let mut next_size = |max: usize| {
        k += 2;
        let v = u16::from_le_bytes([sizes[k % 4000], sizes[(k + 1) % 4000]]) as usize;
        v * max / 65536
    };
    let expected = Rc::new(RefCell::new(Vec::new()));
    let mut seed = 100u64;

    // One mixed operation: write, write_owned or writelines of 0..6 chunks
    // (empty chunks included).
    let op = {
        let expected = expected.clone();
        move |t: &Transport, which: usize, sizes: &[usize], seed: u64| {
            let chunks: Vec<Vec<u8>> = sizes.iter().enumerate().map(|(i, &n)| pattern(n, seed * 16 + i as u64)).collect();
            for c in &chunks {
                expected.borrow_mut().extend_from_slice(c);
            }
            match which % 3 {
                0 => {
                    for c in &chunks {
                        t.write(c).unwrap();
                    }
                }
                1 => {
                    for c in chunks {
                        t.write_owned(c).unwrap();
                    }
                }
                _ => t.writelines(chunks.iter().map(|c| &c[..])).unwrap(),
            }
        }
    };

    // Buffer empty: one big writelines that the socket cannot take at once
    // (a partial writev, the rest queued across chunk boundaries).
    op(&t, 2, &[3 << 20, 1, 2 << 20, 0, 5 << 20], 1);
    assert!(t.get_write_buffer_size() > 0);
    // Phase 1: a burst while the buffer is non-empty.
    for i in 0..300 {
        let n = (i % 6) + 1;
        let s: Vec<usize> = (0..n).map(|_| next_size(if i % 10 == 0 { 200_000 } else { 20_000 })).collect();
        seed += 1;
        op(&t, i, &s, seed);
    }
    // Phase 2: from timers while the peer drains, so the buffer is sometimes
    // empty (direct write/writev paths) and sometimes not.
    let reader = spawn_reader(peer);
    let done = Rc::new(Cell::new(0));
    for i in 0..300usize {
        let n = (i % 5) + 1;
        let s: Vec<usize> = (0..n).map(|_| next_size(if i % 7 == 0 { 300_000 } else { 3_000 })).collect();
        seed += 1;
        let (t2, op2, d2, s2) = (t.clone(), op.clone(), done.clone(), seed);
        lp.call_later(0.001 * (i as f64 / 3.0), move || {
            op2(&t2, i, &s, s2);
            d2.set(d2.get() + 1);
        })
        .unwrap();
    }
    must(&lp, 20.0, "phase 2 writes", || done.get() == 300);
    t.write_eof().unwrap();
    must(&lp, 20.0, "the peer to read up to EOF", || reader.is_finished());
    let (got, err) = reader.join().unwrap();
    assert!(err.is_none(), "{err:?}");
    assert_bytes_eq(&got, &expected.borrow(), "peer received");
    t.close();
    must(&lp, 10.0, "lost", || log.borrow().is_lost());
    assert_contract(&log.borrow(), true, true);
}

#[test]
fn writelines_with_thousands_of_chunks_keeps_order() {
    // More chunks than one writev takes (1024 in ferroloop, IOV_MAX on Linux).
    // (Engine bug found by this test, fixed in transport/stream/: with an
    // empty buffer, writelines wrote the first 1024 chunks and queued the
    // rest with no writable edge to come, so they were never sent.)
    let lp = EventLoop::new().unwrap();
    let (t, log, peer) = connect_std_peer(&lp, Recorder::new());
    let data = pattern(3000 * 10, 25);
    let chunks: Vec<&[u8]> = (0..3000).map(|i| &data[i * 10..i * 10 + 1 + i % 10]).collect();
    let want: Vec<u8> = chunks.concat();
    t.writelines(chunks.iter().copied()).unwrap();
    let big = pattern(8 << 20, 26);
    let big_chunks: Vec<&[u8]> = big.chunks(4096).collect();
    t.writelines(big_chunks.iter().copied()).unwrap();
    t.writelines(chunks.iter().copied()).unwrap();
    let want = [&want[..], &big[..], &want[..]].concat();
    t.write_eof().unwrap();
    let reader = spawn_reader(peer);
    must(&lp, 20.0, "peer EOF", || reader.is_finished());
    let (got, _) = reader.join().unwrap();
    assert_bytes_eq(&got, &want, "writelines");
    t.close();
    must(&lp, 10.0, "lost", || log.borrow().is_lost());
}

/// One side of a hand-over chain: plain (`data_received`) or buffered
/// (`get_buffer`); after `switch_after` bytes it hands the transport to a
/// fresh protocol of the other kind. Every byte goes to `got`.
struct Alternating {
    buffered: bool,
    switch_after: usize,
    seen: usize,
    buf: Vec<u8>,
    t: Option<Transport>,
    got: Shared<Vec<u8>>,
    /// (plain reads, buffered reads)
    reads: Shared<(usize, usize)>,
    lost: Shared<bool>,
}

impl Alternating {
    fn next(&mut self) {
        if self.seen < self.switch_after {
            return;
        }
        let other = Alternating {
            buffered: !self.buffered,
            switch_after: self.switch_after,
            seen: 0,
            buf: vec![0; 1000],
            t: self.t.clone(),
            got: self.got.clone(),
            reads: self.reads.clone(),
            lost: self.lost.clone(),
        };
        if let Some(t) = &self.t {
            t.set_protocol(protocol_ref(other));
        }
    }
}

impl Protocol for Alternating {
    fn connection_made(&mut self, t: Transport) {
        self.t = Some(t);
    }
    fn data_received(&mut self, data: &[u8]) {
        assert!(!self.buffered, "data_received on a buffered protocol");
        self.reads.borrow_mut().0 += 1;
        self.got.borrow_mut().extend_from_slice(data);
        self.seen += data.len();
        self.next();
    }
    fn get_buffer(&mut self, _size_hint: usize) -> Option<&mut [u8]> {
        if self.buffered {
            Some(&mut self.buf)
        } else {
            None
        }
    }
    fn buffer_updated(&mut self, nbytes: usize) {
        assert!(self.buffered, "buffer_updated on a plain protocol");
        self.reads.borrow_mut().1 += 1;
        self.got.borrow_mut().extend_from_slice(&self.buf[..nbytes]);
        self.seen += nbytes;
        self.next();
    }
    fn connection_lost(&mut self, _exc: Option<Error>) {
        *self.lost.borrow_mut() = true;
        self.t = None;
    }
}

#[test]
fn set_protocol_back_and_forth_between_plain_and_buffered_keeps_every_byte() {
    // The transport remembers that a protocol is plain (its get_buffer said
    // None) until set_protocol replaces it; each hand-over must be noticed.
    let lp = EventLoop::new().unwrap();
    let got = Rc::new(RefCell::new(Vec::new()));
    let reads = Rc::new(RefCell::new((0, 0)));
    let lost = Rc::new(RefCell::new(false));
    let first = Alternating {
        buffered: false,
        switch_after: 3000,
        seen: 0,
        buf: Vec::new(),
        t: None,
        got: got.clone(),
        reads: reads.clone(),
        lost: lost.clone(),
    };
    let (a, mut b) = std::os::unix::net::UnixStream::pair().unwrap();
    let _t = lp.create_transport(ferroloop::StreamSocket::from(a), protocol_ref(first)).unwrap();
    // Chunk by chunk, each received before the next is sent: many reads.
    let payload = pattern(210_000, 31);
    for (i, chunk) in payload.chunks(700).enumerate() {
        b.write_all(chunk).unwrap();
        let want = (i * 700 + chunk.len()).min(payload.len());
        must(&lp, 20.0, "chunk", || got.borrow().len() >= want);
    }
    b.shutdown(Shutdown::Both).unwrap();
    must(&lp, 20.0, "lost", || *lost.borrow());
    assert_bytes_eq(&got.borrow(), &payload, "bytes across protocol hand-overs");
    let (plain, buffered) = *reads.borrow();
    assert!(plain > 10 && buffered > 10, "both kinds read: {plain} plain, {buffered} buffered");
}
