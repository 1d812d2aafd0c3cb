//! The subprocess transport: real children (`cat`, `sh`, `sleep`, `yes`),
//! their pipes, exit codes, signals, the protocol's order of events, the
//! pidfd watcher and its SIGCHLD fallback.

mod common;

use std::cell::RefCell;
use std::rc::Rc;
use std::time::Duration;

use common::*;
use ferroloop::{
    ChildWatcher, Error, EventLoop, Stdio, SubprocessOptions, SubprocessProtocol, SubprocessTransport, TransportKind,
};

/// One subprocess protocol event.
#[derive(Debug, Clone, PartialEq)]
enum Sev {
    Made,
    Data(i32, usize),
    PipeLost(i32, Option<i32>),
    Exited(Option<i32>),
    Lost,
    Pause,
    Resume,
}

/// Records every call; optional expected output is checked chunk by chunk
/// (no need to keep megabytes around).
#[derive(Default)]
struct Rec {
    t: Option<SubprocessTransport>,
    events: Vec<Sev>,
    out: [Vec<u8>; 3],
    keep: bool,
    expect_out: Option<Rc<Vec<u8>>>,
    checked: usize,
    mismatch: Option<usize>,
    on_data: Option<DataHook>,
    on_made: Option<MadeHook>,
}

type DataHook = Box<dyn FnMut(&SubprocessTransport, i32, usize)>;
type MadeHook = Box<dyn FnMut(&SubprocessTransport)>;

impl Rec {
    fn new() -> Self {
        Rec { keep: true, ..Default::default() }
    }

    fn kinds(&self) -> Vec<String> {
        let mut out: Vec<String> = Vec::new();
        for e in &self.events {
            let k = match e {
                Sev::Made => "made".to_string(),
                Sev::Data(fd, _) => format!("data{fd}"),
                Sev::PipeLost(fd, _) => format!("pipe_lost{fd}"),
                Sev::Exited(_) => "exited".to_string(),
                Sev::Lost => "lost".to_string(),
                Sev::Pause => "pause".to_string(),
                Sev::Resume => "resume".to_string(),
            };
            if k.starts_with("data") && out.last() == Some(&k) {
                continue;
            }
            out.push(k);
        }
        out
    }

    fn pos(&self, e: &Sev) -> usize {
        self.events.iter().position(|x| x == e).unwrap_or_else(|| panic!("no {e:?} in {:?}", self.kinds()))
    }

    fn lost(&self) -> bool {
        self.events.contains(&Sev::Lost)
    }

    fn returncode(&self) -> Option<i32> {
        self.events.iter().find_map(|e| if let Sev::Exited(rc) = e { Some(*rc) } else { None }).flatten()
    }

    /// The asyncio contract: made first, lost last and once, exited once,
    /// each piped fd lost once, no data on a fd after its pipe_lost.
    #[track_caller]
    fn assert_contract(&self, piped: &[i32]) {
        let k = self.kinds();
        assert_eq!(self.events.first(), Some(&Sev::Made), "{k:?}");
        assert_eq!(self.events.last(), Some(&Sev::Lost), "{k:?}");
        assert_eq!(self.events.iter().filter(|e| **e == Sev::Lost).count(), 1, "{k:?}");
        assert_eq!(self.events.iter().filter(|e| matches!(e, Sev::Exited(_))).count(), 1, "{k:?}");
        for fd in 0..3 {
            let lost: Vec<usize> = (0..self.events.len())
                .filter(|&i| matches!(self.events[i], Sev::PipeLost(f, _) if f == fd))
                .collect();
            assert_eq!(lost.len(), usize::from(piped.contains(&fd)), "pipe_lost({fd}) count: {k:?}");
            if let Some(&i) = lost.first() {
                assert!(
                    !self.events[i..].iter().any(|e| matches!(e, Sev::Data(f, _) if *f == fd)),
                    "data on fd {fd} after its pipe_connection_lost: {k:?}"
                );
            }
        }
        assert!(self.mismatch.is_none(), "output differs at byte {:?}", self.mismatch);
    }
}

impl SubprocessProtocol for Rec {
    fn connection_made(&mut self, t: SubprocessTransport) {
        self.events.push(Sev::Made);
        if let Some(f) = self.on_made.as_mut() {
            f(&t);
        }
        self.t = Some(t);
    }
    fn pipe_data_received(&mut self, fd: i32, data: &[u8]) {
        assert!(!data.is_empty());
        self.events.push(Sev::Data(fd, data.len()));
        if fd == 1 {
            if let Some(want) = &self.expect_out {
                let end = self.checked + data.len();
                if self.mismatch.is_none() && (end > want.len() || want[self.checked..end] != *data) {
                    self.mismatch = Some(self.checked);
                }
                self.checked = end;
            }
        }
        if self.keep {
            self.out[fd as usize].extend_from_slice(data);
        }
        if let Some(f) = self.on_data.as_mut() {
            f(self.t.as_ref().unwrap(), fd, data.len());
        }
    }
    fn pipe_connection_lost(&mut self, fd: i32, exc: Option<Error>) {
        self.events.push(Sev::PipeLost(fd, exc.and_then(|e| e.errno())));
    }
    fn process_exited(&mut self) {
        let rc = self.t.as_ref().unwrap().get_returncode();
        self.events.push(Sev::Exited(rc));
    }
    fn connection_lost(&mut self, exc: Option<Error>) {
        assert!(exc.is_none());
        self.events.push(Sev::Lost);
    }
    fn pause_writing(&mut self) {
        self.events.push(Sev::Pause);
    }
    fn resume_writing(&mut self) {
        self.events.push(Sev::Resume);
    }
}

fn opts() -> SubprocessOptions {
    SubprocessOptions::default()
}

fn exec(lp: &EventLoop, rec: Rec, prog: &str, args: &[&str], o: SubprocessOptions) -> (SubprocessTransport, Rc<RefCell<Rec>>) {
    complete(lp, &lp.subprocess_exec(move || rec, prog, args, o), 10.0).expect("subprocess_exec")
}

fn shell(lp: &EventLoop, rec: Rec, cmd: &str, o: SubprocessOptions) -> (SubprocessTransport, Rc<RefCell<Rec>>) {
    complete(lp, &lp.subprocess_shell(move || rec, cmd, o), 10.0).expect("subprocess_shell")
}

/// Whether `pid` is gone from the process table (reaped, not a zombie).
fn reaped(pid: u32) -> bool {
    !std::path::Path::new(&format!("/proc/{pid}")).exists()
}

#[test]
fn cat_echoes_stdin_and_the_events_come_in_asyncios_order() {
    let lp = EventLoop::new().unwrap();
    let (t, p) = exec(&lp, Rec::new(), "cat", &[], opts());
    assert!(t.get_pid() > 0);
    assert_eq!(t.get_returncode(), None);
    let stdin = t.get_pipe_transport(0).expect("stdin piped");
    assert_eq!(stdin.kind(), TransportKind::WritePipe);
    assert_eq!(t.get_pipe_transport(1).unwrap().kind(), TransportKind::ReadPipe);
    assert_eq!(t.get_pipe_transport(2).unwrap().kind(), TransportKind::ReadPipe);
    assert!(t.get_pipe_transport(3).is_none());
    assert!(t.get_pipe_transport(-1).is_none());

    stdin.write(b"Python The Winner").unwrap();
    must(&lp, 5.0, "echo", || p.borrow().out[1] == b"Python The Winner");
    assert_eq!(t.get_returncode(), None, "cat is still running");
    stdin.write_eof().unwrap();
    let rc = complete(&lp, &t.wait(), 10.0).unwrap();
    assert_eq!(rc, 0);
    assert_eq!(t.get_returncode(), Some(0));
    let p = p.borrow();
    p.assert_contract(&[0, 1, 2]);
    assert_eq!(p.returncode(), Some(0));
    assert_eq!(p.out[2], b"");
    assert!(reaped(t.get_pid()), "the child was reaped");
    // After connection_lost, signals fail as asyncio's ProcessLookupError.
    assert_eq!(t.kill().unwrap_err().errno(), Some(libc::ESRCH));
}

#[test]
fn exit_codes_and_unpiped_streams() {
    let lp = EventLoop::new().unwrap();
    let o = SubprocessOptions { stdin: Stdio::Null, stdout: Stdio::Null, stderr: Stdio::Null, ..opts() };
    let (t, p) = shell(&lp, Rec::new(), "exit 7", o);
    for fd in 0..3 {
        assert!(t.get_pipe_transport(fd).is_none());
    }
    assert_eq!(complete(&lp, &t.wait(), 10.0).unwrap(), 7);
    assert_eq!(p.borrow().kinds(), ["made", "exited", "lost"]);
    assert_eq!(p.borrow().returncode(), Some(7));
    t.close(); // after the end: does nothing
    assert!(t.is_closing());

    let (t, p) = exec(&lp, Rec::new(), "false", &[], SubprocessOptions { stdin: Stdio::Inherit, ..opts() });
    assert!(t.get_pipe_transport(0).is_none());
    assert_eq!(complete(&lp, &t.wait(), 10.0).unwrap(), 1);
    p.borrow().assert_contract(&[1, 2]);
}

#[test]
fn missing_program_fails_the_future_with_enoent() {
    let lp = EventLoop::new().unwrap();
    let before = lp.registered_sources();
    let r = complete(&lp, &lp.subprocess_exec(Rec::new, "/nonexistent/ferroloop-test", [""; 0], opts()), 5.0);
    match r {
        Err(e) => assert_eq!(e.errno(), Some(libc::ENOENT), "{e}"),
        Ok(_) => panic!("spawning a missing program succeeded"),
    }
    assert_eq!(lp.registered_sources(), before, "nothing left registered");
}

#[test]
fn kill_terminate_and_send_signal() {
    let lp = EventLoop::new().unwrap();
    for (sig, expected) in [(None, -libc::SIGKILL), (Some(libc::SIGTERM), -libc::SIGTERM), (Some(libc::SIGHUP), -libc::SIGHUP)] {
        let (t, p) = exec(&lp, Rec::new(), "sleep", &["30"], opts());
        match sig {
            None => t.kill().unwrap(),
            Some(libc::SIGTERM) => t.terminate().unwrap(),
            Some(s) => t.send_signal(s).unwrap(),
        }
        assert_eq!(complete(&lp, &t.wait(), 10.0).unwrap(), expected);
        p.borrow().assert_contract(&[0, 1, 2]);
        assert_eq!(p.borrow().returncode(), Some(expected));
    }
}

#[test]
fn signals_after_exit_but_before_connection_lost_do_nothing() {
    let lp = EventLoop::new().unwrap();
    let rec = Rec::new();
    // Keep stdout open in a grandchild so connection_lost waits after the exit.
    let (t, p) = shell(&lp, rec, "sleep 0.5 & exit 3", SubprocessOptions { stdin: Stdio::Null, ..opts() });
    must(&lp, 10.0, "exit", || t.get_returncode().is_some());
    assert_eq!(t.get_returncode(), Some(3));
    assert!(!p.borrow().lost(), "stdout is still held by the grandchild");
    t.kill().unwrap();
    t.send_signal(libc::SIGTERM).unwrap();
    must(&lp, 10.0, "connection_lost", || p.borrow().lost());
    let p = p.borrow();
    p.assert_contract(&[1, 2]);
    assert!(p.pos(&Sev::Exited(Some(3))) < p.pos(&Sev::PipeLost(1, None)));
}

#[test]
fn close_terminates_a_running_child_and_closes_the_pipes() {
    let lp = EventLoop::new().unwrap();
    let (t, p) = exec(&lp, Rec::new(), "sleep", &["30"], opts());
    t.close();
    assert!(t.is_closing());
    assert_eq!(complete(&lp, &t.wait(), 10.0).unwrap(), -libc::SIGTERM);
    p.borrow().assert_contract(&[0, 1, 2]);
    for fd in 0..3 {
        assert!(t.get_pipe_transport(fd).unwrap().is_closing());
    }
}

#[test]
fn large_output_is_byte_exact() {
    let lp = EventLoop::new().unwrap();
    let data = Rc::new(pattern(8 << 20, 21));
    let mut rec = Rec::new();
    rec.keep = false;
    rec.expect_out = Some(data.clone());
    let (t, p) = exec(&lp, rec, "cat", &[], opts());
    let stdin = t.get_pipe_transport(0).unwrap();
    stdin.write(&data).unwrap();
    stdin.close();
    assert_eq!(complete(&lp, &t.wait(), 60.0).unwrap(), 0);
    let p = p.borrow();
    p.assert_contract(&[0, 1, 2]);
    assert_eq!(p.checked, data.len());
    assert!(p.events.contains(&Sev::Pause), "8 MiB queued on stdin pauses the protocol");
    assert!(p.events.contains(&Sev::Resume));
}

#[test]
fn output_larger_than_the_pipe_with_the_reader_paused() {
    let lp = EventLoop::new().unwrap();
    let data = Rc::new(pattern(3 << 20, 33));
    let mut rec = Rec::new();
    rec.keep = false;
    rec.expect_out = Some(data.clone());
    let paused = Rc::new(std::cell::Cell::new(false));
    let p2 = paused.clone();
    rec.on_data = Some(Box::new(move |t, fd, _| {
        if fd == 1 && !p2.get() {
            p2.set(true);
            t.get_pipe_transport(1).unwrap().pause_reading();
        }
    }));
    let (t, p) = exec(&lp, rec, "cat", &[], opts());
    let stdin = t.get_pipe_transport(0).unwrap();
    stdin.write(&data).unwrap();
    stdin.write_eof().unwrap();
    must(&lp, 10.0, "first output", || paused.get());
    let seen = p.borrow().checked;
    run_for(&lp, 0.3);
    assert_eq!(p.borrow().checked, seen, "no output while stdout is paused");
    assert_eq!(t.get_returncode(), None, "cat blocks on its full stdout");
    t.get_pipe_transport(1).unwrap().resume_reading();
    assert_eq!(complete(&lp, &t.wait(), 30.0).unwrap(), 0);
    let p = p.borrow();
    p.assert_contract(&[0, 1, 2]);
    assert_eq!(p.checked, data.len());
}

#[test]
fn child_closing_stdout_early_but_running_on() {
    let lp = EventLoop::new().unwrap();
    let (t, p) = shell(&lp, Rec::new(), "echo early; exec 1>&-; sleep 0.3; exit 3", opts());
    must(&lp, 10.0, "stdout closed", || p.borrow().events.contains(&Sev::PipeLost(1, None)));
    assert_eq!(t.get_returncode(), None, "the child runs on after closing stdout");
    assert!(!p.borrow().lost());
    assert_eq!(complete(&lp, &t.wait(), 10.0).unwrap(), 3);
    let p = p.borrow();
    p.assert_contract(&[0, 1, 2]);
    assert_eq!(p.out[1], b"early\n");
    assert!(p.pos(&Sev::PipeLost(1, None)) < p.pos(&Sev::Exited(Some(3))));
}

#[test]
fn child_killed_mid_write_and_stdin_broken_pipe() {
    let lp = EventLoop::new().unwrap();
    let mut rec = Rec::new();
    rec.keep = false;
    let (t, p) = exec(&lp, rec, "yes", &["ferroloop"], opts());
    must(&lp, 10.0, "output", || p.borrow().events.iter().filter(|e| matches!(e, Sev::Data(1, _))).count() > 3);
    t.kill().unwrap();
    must(&lp, 10.0, "exit", || t.get_returncode().is_some());
    assert_eq!(t.get_returncode(), Some(-libc::SIGKILL));
    // Writing to the dead child's stdin: EPIPE on write, or the reader-gone
    // check; either way the stdin pipe is lost, with a broken pipe if the
    // write saw it.
    let stdin = t.get_pipe_transport(0).unwrap();
    let _ = stdin.write(&pattern(1 << 20, 4));
    assert_eq!(complete(&lp, &t.wait(), 10.0).unwrap(), -libc::SIGKILL);
    let p = p.borrow();
    p.assert_contract(&[0, 1, 2]);
    let stdin_lost = p.events.iter().find_map(|e| if let Sev::PipeLost(0, errno) = e { Some(*errno) } else { None });
    assert!(matches!(stdin_lost, Some(None) | Some(Some(libc::EPIPE))), "{stdin_lost:?}");
}

#[test]
fn stdin_broken_pipe_is_reported_on_its_pipe() {
    let lp = EventLoop::new().unwrap();
    // We queue 1 MiB on stdin; the child closes stdin without reading.
    let (t, p) = shell(&lp, Rec::new(), "sleep 0.2; exec 0<&-; sleep 0.3", opts());
    let stdin = t.get_pipe_transport(0).unwrap();
    stdin.write(&pattern(1 << 20, 4)).unwrap();
    assert!(stdin.get_write_buffer_size() > 0);
    assert_eq!(complete(&lp, &t.wait(), 10.0).unwrap(), 0);
    let p = p.borrow();
    p.assert_contract(&[0, 1, 2]);
    assert!(p.events.contains(&Sev::PipeLost(0, Some(libc::EPIPE))), "{:?}", p.events);

    // With nothing queued, the reader going away is a clean close (asyncio).
    let (t, p) = shell(&lp, Rec::new(), "exec 0<&-; sleep 0.3", opts());
    must(&lp, 10.0, "stdin lost", || p.borrow().events.iter().any(|e| matches!(e, Sev::PipeLost(0, _))));
    assert!(p.borrow().events.contains(&Sev::PipeLost(0, None)), "{:?}", p.borrow().events);
    assert_eq!(t.get_returncode(), None);
    assert_eq!(complete(&lp, &t.wait(), 10.0).unwrap(), 0);
    p.borrow().assert_contract(&[0, 1, 2]);
}

#[test]
fn stderr_to_stdout_and_fds() {
    let lp = EventLoop::new().unwrap();
    let o = SubprocessOptions { stderr: Stdio::Stdout, ..opts() };
    let (t, p) = shell(&lp, Rec::new(), "echo out; echo err >&2", o);
    assert!(t.get_pipe_transport(2).is_none());
    assert_eq!(complete(&lp, &t.wait(), 10.0).unwrap(), 0);
    assert_eq!(p.borrow().out[1], b"out\nerr\n");
    p.borrow().assert_contract(&[0, 1]);

    // stdout to a descriptor (one end of a pipe we read ourselves), stderr with it.
    let (mut r, w) = std::io::pipe().unwrap();
    let o = SubprocessOptions { stdout: Stdio::Fd(w.into()), stderr: Stdio::Stdout, ..opts() };
    let (t, p) = shell(&lp, Rec::new(), "echo to-fd; echo err-to-fd >&2", o);
    assert!(t.get_pipe_transport(1).is_none());
    assert_eq!(complete(&lp, &t.wait(), 10.0).unwrap(), 0);
    let mut got = String::new();
    std::io::Read::read_to_string(&mut r, &mut got).unwrap();
    assert_eq!(got, "to-fd\nerr-to-fd\n", "our copy of the write end was closed after the spawn");
    p.borrow().assert_contract(&[0]);

    // Stdio::Stdout anywhere but stderr is refused.
    let o = SubprocessOptions { stdout: Stdio::Stdout, ..opts() };
    assert!(matches!(complete(&lp, &lp.subprocess_exec(Rec::new, "true", [""; 0], o), 5.0), Err(Error::InvalidArgument(_))));
}

#[test]
fn cwd_env_and_stderr() {
    let lp = EventLoop::new().unwrap();
    let o = SubprocessOptions {
        cwd: Some("/".into()),
        env: Some(vec![("FERRO".into(), "loop".into())]),
        ..opts()
    };
    let (t, p) = shell(&lp, Rec::new(), "pwd; echo $FERRO; echo oops >&2; exit 4", o);
    assert_eq!(complete(&lp, &t.wait(), 10.0).unwrap(), 4);
    let p = p.borrow();
    assert_eq!(p.out[1], b"/\nloop\n");
    assert_eq!(p.out[2], b"oops\n");
}

#[test]
fn process_group() {
    let lp = EventLoop::new().unwrap();
    let o = SubprocessOptions { process_group: Some(0), ..opts() };
    // Field 5 of /proc/<pid>/stat is the process group.
    let (t, p) = shell(&lp, Rec::new(), "cut -d' ' -f5 /proc/$$/stat", o);
    assert_eq!(complete(&lp, &t.wait(), 10.0).unwrap(), 0);
    let pgid: u32 = String::from_utf8_lossy(&p.borrow().out[1]).trim().parse().expect("a pgid");
    assert_eq!(pgid, t.get_pid(), "the child leads its own group");
}

#[test]
fn a_child_that_exits_before_connection_made() {
    let lp = EventLoop::new().unwrap();
    let fut = lp.subprocess_shell(Rec::new, "echo quick", opts());
    // Let the child finish before the loop runs at all.
    std::thread::sleep(Duration::from_millis(200));
    let (t, p) = complete(&lp, &fut, 10.0).unwrap();
    assert_eq!(complete(&lp, &t.wait(), 10.0).unwrap(), 0);
    let p = p.borrow();
    p.assert_contract(&[0, 1, 2]);
    assert_eq!(p.out[1], b"quick\n");
}

#[test]
fn stdin_flow_control_reaches_the_subprocess_protocol() {
    let lp = EventLoop::new().unwrap();
    // The child never reads: 1 MiB stays queued on stdin.
    let (t, p) = exec(&lp, Rec::new(), "sleep", &["30"], opts());
    let stdin = t.get_pipe_transport(0).unwrap();
    stdin.write(&pattern(1 << 20, 8)).unwrap();
    assert_eq!(p.borrow().events.last(), Some(&Sev::Pause));
    assert!(stdin.is_writing_paused());
    t.kill().unwrap();
    assert_eq!(complete(&lp, &t.wait(), 10.0).unwrap(), -libc::SIGKILL);
    p.borrow().assert_contract(&[0, 1, 2]);
}

#[test]
fn writes_from_inside_the_protocol_are_not_reentrant() {
    // connection_made writes 1 MiB to stdin: pause_writing arrives after
    // connection_made returns, not inside it.
    let lp = EventLoop::new().unwrap();
    let mut rec = Rec::new();
    rec.keep = false;
    let data = Rc::new(pattern(1 << 20, 12));
    rec.expect_out = Some(data.clone());
    rec.on_made = Some(Box::new(move |t| {
        let stdin = t.get_pipe_transport(0).unwrap();
        stdin.write(&data).unwrap();
        stdin.write_eof().unwrap();
    }));
    let (t, p) = exec(&lp, rec, "cat", &[], opts());
    assert_eq!(complete(&lp, &t.wait(), 30.0).unwrap(), 0);
    let p = p.borrow();
    p.assert_contract(&[0, 1, 2]);
    assert_eq!(p.events[1], Sev::Pause, "pause_writing right after connection_made: {:?}", p.kinds());
    assert_eq!(p.checked, 1 << 20);
}

#[test]
fn many_concurrent_children_echo_byte_exact() {
    let lp = EventLoop::new().unwrap();
    const N: usize = 200;
    const SIZE: usize = 1 << 20;
    let mut running = Vec::new();
    for i in 0..N {
        let data = Rc::new(pattern(SIZE, 1000 + i as u64));
        let mut rec = Rec::new();
        rec.keep = false;
        rec.expect_out = Some(data.clone());
        rec.on_made = Some(Box::new(move |t| {
            let stdin = t.get_pipe_transport(0).unwrap();
            stdin.write(&data).unwrap();
            stdin.write_eof().unwrap();
        }));
        let fut = lp.subprocess_exec(move || rec, "cat", [""; 0], SubprocessOptions { stderr: Stdio::Null, ..opts() });
        running.push(fut);
    }
    let mut done = Vec::new();
    for fut in running {
        let (t, p) = complete(&lp, &fut, 60.0).unwrap();
        done.push((t.wait(), t, p));
    }
    for (w, t, p) in &done {
        assert_eq!(complete(&lp, w, 120.0).unwrap(), 0);
        let p = p.borrow();
        p.assert_contract(&[0, 1]);
        assert_eq!(p.checked, SIZE, "child {} echoed {} bytes", t.get_pid(), p.checked);
        assert!(reaped(t.get_pid()));
    }
}

#[test]
fn sigchld_fallback_watches_and_reaps() {
    // The only test of this binary that catches a signal (SIGCHLD): signal
    // wake-ups are process-wide. Other tests' children also raise SIGCHLD;
    // this loop only ever waits for its own pids.
    let lp = EventLoop::new().unwrap();
    lp.set_child_watcher(ChildWatcher::Sigchld);
    assert_eq!(lp.child_watcher(), ChildWatcher::Sigchld);
    let (t1, p1) = shell(&lp, Rec::new(), "exit 5", opts());
    let (t2, p2) = shell(&lp, Rec::new(), "sleep 0.2; echo late; exit 6", opts());
    let (t3, p3) = exec(&lp, Rec::new(), "sleep", &["30"], opts());
    t3.terminate().unwrap();
    assert_eq!(complete(&lp, &t1.wait(), 10.0).unwrap(), 5);
    assert_eq!(complete(&lp, &t2.wait(), 10.0).unwrap(), 6);
    assert_eq!(complete(&lp, &t3.wait(), 10.0).unwrap(), -libc::SIGTERM);
    for (t, p) in [(&t1, &p1), (&t2, &p2), (&t3, &p3)] {
        p.borrow().assert_contract(&[0, 1, 2]);
        assert!(reaped(t.get_pid()));
    }
    assert_eq!(p2.borrow().out[1], b"late\n");
    lp.close().unwrap();
}

#[test]
fn a_loop_on_another_thread_watches_its_children() {
    let h = std::thread::spawn(|| {
        let lp = EventLoop::new().unwrap();
        let (t, p) = shell(&lp, Rec::new(), "echo from-thread; exit 9", opts());
        let rc = complete(&lp, &t.wait(), 10.0).unwrap();
        let out = p.borrow().out[1].clone();
        (rc, out)
    });
    let (rc, out) = h.join().unwrap();
    assert_eq!(rc, 9);
    assert_eq!(out, b"from-thread\n");
}

#[test]
fn a_panicking_protocol_is_reported_and_the_child_still_reaped() {
    struct Bad;
    impl SubprocessProtocol for Bad {
        fn pipe_data_received(&mut self, _fd: i32, _data: &[u8]) {
            panic!("boom in pipe_data_received");
        }
    }
    let lp = EventLoop::new().unwrap();
    let reports = record_exceptions(&lp);
    let (t, _p) = complete(&lp, &lp.subprocess_shell(|| Bad, "echo x", opts()), 10.0).unwrap();
    assert_eq!(complete(&lp, &t.wait(), 10.0).unwrap(), 0);
    let r = reports.borrow();
    assert_eq!(r.len(), 1, "{r:?}");
    assert!(r[0].message.contains("pipe_data_received"), "{}", r[0].message);
    assert!(reaped(t.get_pid()));
}

#[test]
fn watch_child_on_its_own() {
    // A child started outside the loop (std::process), watched and reaped by it.
    let lp = EventLoop::new().unwrap();
    let reports = record_exceptions(&lp);
    let child = std::process::Command::new("sh").args(["-c", "exit 12"]).spawn().unwrap();
    let pid = child.id();
    let got = Rc::new(RefCell::new(None));
    let g2 = got.clone();
    lp.watch_child(pid, move |rc| *g2.borrow_mut() = Some(rc)).unwrap();
    must(&lp, 10.0, "the exit", || got.borrow().is_some());
    assert_eq!(*got.borrow(), Some(Some(12)));
    assert!(reaped(pid));

    // Reaped by someone else first: the callback gets None.
    let mut child2 = std::process::Command::new("true").spawn().unwrap();
    child2.wait().unwrap();
    let got2 = Rc::new(RefCell::new(None));
    let g3 = got2.clone();
    lp.watch_child(child2.id(), move |rc| *g3.borrow_mut() = Some(rc)).unwrap();
    must(&lp, 10.0, "the report", || got2.borrow().is_some());
    assert_eq!(*got2.borrow(), Some(None));

    // A panicking callback is reported, the loop runs on.
    let child3 = std::process::Command::new("true").spawn().unwrap();
    lp.watch_child(child3.id(), |_| panic!("boom in the watcher")).unwrap();
    must(&lp, 10.0, "the report", || !reports.borrow().is_empty());
    assert_eq!(reports.borrow()[0].message, "Exception in child watcher callback");
    assert!(reaped(child3.id()));
    drop(child);
}
