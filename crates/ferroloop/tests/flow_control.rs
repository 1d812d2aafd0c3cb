//! Write flow control through a real TCP connection whose peer does not read
//! (16 MiB written, so the socket fills and the transport buffers the rest),
//! compared with stock asyncio (python3.11 selector_events/transports):
//! `_maybe_pause_protocol` calls `pause_writing` when size > high (strictly),
//! `_maybe_resume_protocol` calls `resume_writing` when size <= low, and
//! `set_write_buffer_limits` only calls `_maybe_pause_protocol`.

mod common;

use std::cell::Cell;
use std::io::Read;
use std::rc::Rc;

use common::*;
use ferroloop::{Error, EventLoop};

const BIG: usize = 16 << 20;

/// With limits high enough never to pause, write `BIG` bytes and let the
/// socket fill; returns the payload and the bytes left in the transport.
fn fill(lp: &EventLoop, t: &ferroloop::Transport, seed: u64) -> (Vec<u8>, usize) {
    t.set_write_buffer_limits(Some(1 << 40), None).unwrap();
    let payload = pattern(BIG, seed);
    t.write(&payload).unwrap();
    run_for(lp, 0.1); // let the kernel take what it takes
    let b = t.get_write_buffer_size();
    assert!(b > 0, "the socket took all {BIG} bytes; cannot test flow control");
    (payload, b)
}

/// Start reading at the peer, wait for `resume_writing`, close, and check
/// the peer got `want` byte-exact.
fn drain_and_check(lp: &EventLoop, t: &ferroloop::Transport, log: &Shared<Log>, peer: std::net::TcpStream, want: &[u8]) {
    let reader = spawn_reader(peer);
    must(lp, 20.0, "resume_writing", || log.borrow().count("resume") == 1);
    t.close();
    must(lp, 20.0, "connection_lost", || log.borrow().is_lost());
    let (got, err) = reader.join().unwrap();
    assert!(err.is_none(), "peer read error: {err:?}");
    assert_bytes_eq(&got, want, "peer received");
    assert!(log.borrow().lost_error().is_none());
    assert_contract(&log.borrow(), true, true);
}

#[test]
fn default_write_buffer_limits_are_asyncios() {
    let lp = EventLoop::new().unwrap();
    let (t, _log, _peer) = connect_std_peer(&lp, Recorder::new());
    assert_eq!(t.get_write_buffer_limits(), (16384, 65536));
    assert_eq!(t.get_write_buffer_size(), 0);
    assert!(!t.is_writing_paused());
    // Only high: low = high // 4. Only low: high = 4 * low.
    t.set_write_buffer_limits(Some(1000), None).unwrap();
    assert_eq!(t.get_write_buffer_limits(), (250, 1000));
    t.set_write_buffer_limits(None, Some(100)).unwrap();
    assert_eq!(t.get_write_buffer_limits(), (100, 400));
    t.set_write_buffer_limits(None, None).unwrap();
    assert_eq!(t.get_write_buffer_limits(), (16384, 65536));
    t.set_write_buffer_limits(Some(0), None).unwrap();
    assert_eq!(t.get_write_buffer_limits(), (0, 0));
}

#[test]
fn invalid_limits_are_rejected_with_asyncios_message() {
    // python3.11: ValueError('high (1) must be >= low (2) must be >= 0'), etc.;
    // the limits are left unchanged.
    let lp = EventLoop::new().unwrap();
    let (t, _log, _peer) = connect_std_peer(&lp, Recorder::new());
    t.set_write_buffer_limits(Some(4000), Some(1000)).unwrap();
    let cases: [(Option<i64>, Option<i64>, &str); 3] = [
        (Some(1), Some(2), "high (1) must be >= low (2) must be >= 0"),
        (Some(-1), None, "high (-1) must be >= low (-1) must be >= 0"),
        (None, Some(-1), "high (-4) must be >= low (-1) must be >= 0"),
    ];
    for (h, l, msg) in cases {
        match t.set_write_buffer_limits_signed(h, l) {
            Err(Error::InvalidArgument(m)) => assert_eq!(m, msg),
            other => panic!("({h:?}, {l:?}): expected InvalidArgument, got {other:?}"),
        }
        assert_eq!(t.get_write_buffer_limits(), (1000, 4000), "limits changed by a failed call");
    }
    match t.set_write_buffer_limits(Some(1), Some(2)) {
        Err(e @ Error::InvalidArgument(_)) => assert_eq!(e.to_string(), "high (1) must be >= low (2) must be >= 0"),
        other => panic!("expected InvalidArgument, got {other:?}"),
    }
}

#[test]
fn pause_once_strictly_over_high_then_resume_once_at_or_below_low() {
    let lp = EventLoop::new().unwrap();
    let (t, log, peer) = connect_std_peer(&lp, Recorder::new());
    let (mut want, b) = fill(&lp, &t, 1);
    assert_eq!(log.borrow().count("pause"), 0);

    // Buffer size equal to high: no pause (asyncio: size > high).
    t.set_write_buffer_limits(Some(b), None).unwrap();
    assert_eq!(t.get_write_buffer_limits(), (b / 4, b));
    assert_eq!(log.borrow().count("pause"), 0, "paused at size == high");
    assert!(!t.is_writing_paused());

    // One byte over: pause, synchronously, with the buffer at high + 1.
    t.write(b"y").unwrap();
    assert_eq!(log.borrow().pauses(), vec![b + 1]);
    assert!(t.is_writing_paused());
    // More writes while paused: no second pause.
    t.write(b"z").unwrap();
    t.writelines([&b"1"[..], &b"2"[..]]).unwrap();
    t.write_owned(b"3".to_vec()).unwrap();
    want.extend_from_slice(b"yz123");
    run_for(&lp, 0.1);
    assert_eq!(log.borrow().count("pause"), 1);
    assert_eq!(log.borrow().count("resume"), 0, "resumed although the peer reads nothing");

    let low = t.get_write_buffer_limits().0;
    drain_and_check(&lp, &t, &log, peer, &want);
    let l = log.borrow();
    assert_eq!(l.pauses().len(), 1);
    let r = l.resumes();
    assert_eq!(r.len(), 1);
    assert!(r[0] <= low, "resume_writing at size {} > low {low}", r[0]);
    assert_eq!(l.kinds(), ["made", "pause", "resume", "lost"]);
}

#[test]
fn high_zero_pauses_whenever_the_buffer_is_non_empty() {
    let lp = EventLoop::new().unwrap();
    let (t, log, mut peer) = connect_std_peer(&lp, Recorder::new());
    t.set_write_buffer_limits(Some(0), None).unwrap();
    assert_eq!(t.get_write_buffer_limits(), (0, 0));

    // Sent at once: the buffer stays empty, no pause.
    t.write(b"hello").unwrap();
    assert_eq!(t.get_write_buffer_size(), 0);
    assert_eq!(log.borrow().count("pause"), 0);
    let mut five = [0u8; 5];
    peer.read_exact(&mut five).unwrap();
    assert_eq!(&five, b"hello");

    // Anything left in the buffer is over high=0.
    let payload = pattern(BIG, 2);
    t.write(&payload).unwrap();
    let l = log.borrow().pauses();
    assert_eq!(l.len(), 1);
    assert!(l[0] > 0);
    drain_and_check(&lp, &t, &log, peer, &payload);
    assert_eq!(log.borrow().resumes(), vec![0], "low=0 resumes only when the buffer is empty");
}

#[test]
fn low_zero_resumes_only_when_the_buffer_is_empty() {
    let lp = EventLoop::new().unwrap();
    let (t, log, peer) = connect_std_peer(&lp, Recorder::new());
    t.set_write_buffer_limits(Some(65536), Some(0)).unwrap();
    assert_eq!(t.get_write_buffer_limits(), (0, 65536));
    let payload = pattern(BIG, 3);
    t.write(&payload).unwrap();
    assert_eq!(log.borrow().count("pause"), 1);
    run_for(&lp, 0.05);
    drain_and_check(&lp, &t, &log, peer, &payload);
    assert_eq!(log.borrow().resumes(), vec![0]);
}

#[test]
fn raising_limits_while_paused_does_not_resume() {
    // asyncio's set_write_buffer_limits calls only _maybe_pause_protocol:
    // python3.11 with B buffered, paused, then set_write_buffer_limits(
    // high=10*B, low=5*B): no resume_writing until the next write drains.
    let lp = EventLoop::new().unwrap();
    let (t, log, peer) = connect_std_peer(&lp, Recorder::new());
    let payload = pattern(BIG, 4);
    t.write(&payload).unwrap(); // default limits
    assert_eq!(log.borrow().count("pause"), 1);
    run_for(&lp, 0.1);
    let b = t.get_write_buffer_size();
    assert!(b > 65536);
    t.set_write_buffer_limits(Some(b * 10), Some(b * 5)).unwrap();
    assert_eq!(log.borrow().count("resume"), 0, "set_write_buffer_limits must not resume");
    assert!(t.is_writing_paused());
    run_for(&lp, 0.1);
    assert_eq!(log.borrow().count("resume"), 0);
    // Lowering again while paused: no second pause.
    t.set_write_buffer_limits(Some(16), None).unwrap();
    assert_eq!(log.borrow().count("pause"), 1);
    t.set_write_buffer_limits(Some(b * 10), Some(b * 5)).unwrap();
    // The first drain after the peer reads resumes (size <= the new low).
    drain_and_check(&lp, &t, &log, peer, &payload);
    assert_eq!(log.borrow().kinds(), ["made", "pause", "resume", "lost"]);
}

#[test]
fn lowering_limits_below_the_buffer_pauses_at_once() {
    let lp = EventLoop::new().unwrap();
    let (t, log, peer) = connect_std_peer(&lp, Recorder::new());
    let (payload, b) = fill(&lp, &t, 5);
    assert_eq!(log.borrow().count("pause"), 0);
    t.set_write_buffer_limits(Some(1024), None).unwrap();
    assert_eq!(log.borrow().pauses(), vec![b], "pause_writing is called inside set_write_buffer_limits");
    assert!(t.is_writing_paused());
    drain_and_check(&lp, &t, &log, peer, &payload);
    assert!(log.borrow().resumes()[0] <= 256);
}

#[test]
fn pause_from_a_write_inside_a_protocol_method_is_delivered_after_it_returns() {
    // ferroloop never re-enters a protocol (protocol.rs): the flow state
    // changes at once (is_writing_paused), pause_writing follows right after
    // data_received returns. (asyncio calls pause_writing from inside write().)
    let lp = EventLoop::new().unwrap();
    let rec = Recorder::new();
    let log = rec.log.clone();
    let l2 = log.clone();
    let payload = pattern(BIG, 6);
    let p2 = payload.clone();
    let rec = rec.on_data(move |t, _| {
        t.write(&p2).unwrap();
        let paused = t.is_writing_paused();
        l2.borrow_mut().note(&format!("paused-inside={paused}"));
    });
    let (t, log, mut peer) = connect_std_peer(&lp, rec);
    std::io::Write::write_all(&mut peer, b"go").unwrap();
    must(&lp, 10.0, "pause_writing", || log.borrow().count("pause") == 1);
    assert_eq!(log.borrow().kinds(), ["made", "data", "note:paused-inside=true", "pause"]);
    drain_and_check(&lp, &t, &log, peer, &payload);
}

/// Bytes lent through `write_lent`, recording what happened while lent.
struct Lent {
    data: Vec<u8>,
    log: Shared<Log>,
    calls: std::cell::Cell<usize>,
    pauses_while_lent: std::cell::Cell<usize>,
}

impl Lent {
    fn new(data: Vec<u8>, log: &Shared<Log>) -> Lent {
        Lent { data, log: log.clone(), calls: Default::default(), pauses_while_lent: Default::default() }
    }
}

impl ferroloop::LentBytes for Lent {
    fn lend<R>(&self, f: impl FnOnce(&[u8]) -> R) -> R {
        self.calls.set(self.calls.get() + 1);
        let r = f(&self.data);
        self.pauses_while_lent.set(self.log.borrow().count("pause"));
        r
    }
}

#[test]
fn write_lent_reads_the_bytes_once_and_tells_the_protocol_afterwards() {
    let lp = EventLoop::new().unwrap();
    let (t, log, peer) = connect_std_peer(&lp, Recorder::new());
    let lent = Lent::new(pattern(BIG, 7), &log);
    t.write_lent(&lent).unwrap();
    assert_eq!(lent.calls.get(), 1);
    assert_eq!(lent.pauses_while_lent.get(), 0, "pause_writing ran while the bytes were lent");
    // The socket took part of it; the rest was copied into the queue.
    let queued = t.get_write_buffer_size();
    assert!(queued > 0 && queued < BIG, "queued {queued}");
    assert_eq!(log.borrow().pauses(), vec![queued]);
    // Queued behind the first write: read inside `lend` and copied.
    let tail = Lent::new(b"tail".to_vec(), &log);
    t.write_lent(&tail).unwrap();
    assert_eq!(tail.calls.get(), 1);
    assert_eq!(t.get_write_buffer_size(), queued + 4);
    let mut want = lent.data.clone();
    want.extend_from_slice(b"tail");
    drop((lent, tail));
    drain_and_check(&lp, &t, &log, peer, &want);
}

#[test]
fn a_producer_inside_data_received_stops_at_the_high_water_mark() {
    // The Rust pattern for asyncio's "write while not paused": the protocol
    // cannot be re-entered, so it polls is_writing_paused(), which changes
    // inside the write that crosses the mark. The peer never reads.
    let lp = EventLoop::new().unwrap();
    let rec = Recorder::new();
    let log = rec.log.clone();
    let l2 = log.clone();
    let chunk = vec![7u8; 1 << 20];
    let rec = rec.on_data(move |t, _| {
        let mut writes = 0;
        while !t.is_writing_paused() && writes < 50 {
            t.write(&chunk).unwrap();
            writes += 1;
        }
        l2.borrow_mut().note(&format!("writes={writes} buffered={}", t.get_write_buffer_size()));
    });
    let (t, log, mut peer) = connect_std_peer(&lp, rec);
    std::io::Write::write_all(&mut peer, b"go").unwrap();
    must(&lp, 10.0, "pause_writing", || log.borrow().count("pause") == 1);
    let note = log.borrow().kinds().into_iter().find(|k| k.starts_with("note:writes=")).unwrap();
    let fields: Vec<usize> = note
        .trim_start_matches("note:")
        .split(' ')
        .map(|f| f.split('=').nth(1).unwrap().parse().unwrap())
        .collect();
    assert!(fields[0] < 10, "{note}");
    assert!(fields[1] <= 64 * 1024 + (1 << 20), "{note}");
    t.abort();
    drop(log);
}

#[test]
fn a_pause_hook_is_told_inside_the_write() {
    // What a binding whose protocols can be re-entered installs (the Python
    // face): the hook runs before write() returns, the protocol is not told.
    struct Hook(Rc<Cell<usize>>);
    impl ferroloop::PauseHook for Hook {
        fn pause_writing(&self) {
            self.0.set(self.0.get() + 1);
        }
    }
    let lp = EventLoop::new().unwrap();
    let (t, log, _peer) = connect_std_peer(&lp, Recorder::new());
    let calls = Rc::new(Cell::new(0));
    assert!(t.set_pause_hook(Some(Rc::new(Hook(calls.clone())))));
    t.set_write_buffer_limits(Some(1000), None).unwrap();
    t.write(&vec![1u8; 8 << 20]).unwrap();
    assert_eq!(calls.get(), 1, "told inside write()");
    run_for(&lp, 0.1);
    assert_eq!(log.borrow().count("pause"), 0, "the protocol is not told too");
    t.abort();
}
