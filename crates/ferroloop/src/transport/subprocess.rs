//! The subprocess transport: asyncio's `subprocess_exec` / `subprocess_shell`,
//! `SubprocessTransport` and `SubprocessProtocol`.
//!
//! A child is started with [`std::process::Command`]; each of its standard
//! streams may be a pipe to the loop, inherited, `/dev/null`, a descriptor, or
//! (for stderr) the same as stdout. Piped streams are ordinary pipe
//! transports ([`crate::transport::pipe`]): the child's stdin is a write pipe
//! transport, its stdout and stderr are read pipe transports, each available
//! through [`SubprocessTransport::get_pipe_transport`]. The child's exit is
//! watched by the loop ([`crate::child`]: a pidfd in the poll, `SIGCHLD` as
//! the fallback), which reaps it.
//!
//! The protocol's life, as asyncio's:
//!
//! ```text
//! connection_made
//!   [pipe_data_received(fd, data) | pipe_connection_lost(fd, exc) | process_exited] *
//!   connection_lost(None)     -- once the process exited AND every pipe is closed
//! ```
//!
//! `process_exited` comes exactly once; output the child wrote before exiting
//! may still arrive after it (`pipe_data_received` until that pipe's
//! `pipe_connection_lost`). `connection_lost` is last, from the ready queue.
//! Events that happen before `connection_made` (a child that exits at once)
//! are held and delivered right after it, in order.
//!
//! [`SubprocessTransport::close`] closes the pipes and, if the child is still
//! running, asks it to stop with `SIGTERM`, as the spec describes
//! (`terminate()`). Stock asyncio (3.11) sends `SIGKILL` there; the Python
//! face, which uses asyncio's own `BaseSubprocessTransport` over these pipe
//! transports and this child watcher, therefore kills.
//!
//! ```no_run
//! use ferroloop::{EventLoop, SubprocessOptions, SubprocessProtocol, SubprocessTransport};
//!
//! #[derive(Default)]
//! struct Collect { out: Vec<u8>, code: Option<i32>, t: Option<SubprocessTransport> }
//! impl SubprocessProtocol for Collect {
//!     fn connection_made(&mut self, t: SubprocessTransport) { self.t = Some(t); }
//!     fn pipe_data_received(&mut self, _fd: i32, data: &[u8]) { self.out.extend_from_slice(data); }
//!     fn process_exited(&mut self) { self.code = self.t.as_ref().unwrap().get_returncode(); }
//! }
//!
//! let lp = EventLoop::new().unwrap();
//! let (t, proto) = lp
//!     .run_until_complete(&lp.subprocess_exec(Collect::default, "echo", ["hello"], SubprocessOptions::default()))
//!     .unwrap();
//! let code = lp.run_until_complete(&t.wait()).unwrap();
//! assert_eq!((code, &proto.borrow().out[..]), (0, &b"hello\n"[..]));
//! ```

use std::cell::{Cell, RefCell};
use std::ffi::{OsStr, OsString};
use std::fmt;
use std::fs::File;
use std::io;
use std::os::fd::OwnedFd;
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::Command;
use std::rc::Rc;

use crate::error::{Error, Result};
use crate::event_loop::EventLoop;
use crate::future::LoopFuture;
use crate::protocol::{Protocol, ProtocolRef};
use crate::transport::core::slot::{ProtocolSlot, SlotHost};
use crate::sys;
use crate::transport::Transport;

/// The protocol of a subprocess transport (asyncio's `SubprocessProtocol`).
///
/// Every method has an empty default. Methods are never re-entered: an
/// event caused by a call the protocol makes (a `write` to the child's stdin
/// that crosses the high-water mark, say) is delivered after the current
/// method returns.
pub trait SubprocessProtocol: 'static {
    /// The child runs and its pipes are connected; keep `transport`.
    fn connection_made(&mut self, transport: SubprocessTransport) {
        let _ = transport;
    }

    /// The child wrote `data` (never empty) to its stdout (`fd` 1) or stderr (`fd` 2).
    fn pipe_data_received(&mut self, fd: i32, data: &[u8]) {
        let _ = (fd, data);
    }

    /// The pipe of the child's `fd` (0, 1 or 2) closed: `None` at end of
    /// file or after `close`, `Some(error)` after an error (writing to a
    /// stdin the child closed gives a broken pipe).
    fn pipe_connection_lost(&mut self, fd: i32, exc: Option<Error>) {
        let _ = (fd, exc);
    }

    /// The child exited; [`SubprocessTransport::get_returncode`] has its code.
    fn process_exited(&mut self) {}

    /// Last call: the child exited and every pipe is closed. Always `None`.
    fn connection_lost(&mut self, exc: Option<Error>) {
        let _ = exc;
    }

    /// The stdin pipe's buffer went over its high-water mark.
    fn pause_writing(&mut self) {}

    /// The stdin pipe's buffer drained to its low-water mark.
    fn resume_writing(&mut self) {}
}

/// How a subprocess transport holds its protocol.
pub type SubprocessProtocolRef = Rc<RefCell<dyn SubprocessProtocol>>;

/// What `subprocess_exec`/`subprocess_shell` complete with.
pub type SubprocessConnection<P> = (SubprocessTransport, Rc<RefCell<P>>);

/// Where one of the child's standard streams goes (`subprocess.PIPE`, ...).
#[derive(Debug, Default)]
pub enum Stdio {
    /// A pipe to the loop: a pipe transport on this side (`subprocess.PIPE`).
    #[default]
    Pipe,
    /// The parent's own stream (`None` in asyncio).
    Inherit,
    /// `/dev/null` (`subprocess.DEVNULL`).
    Null,
    /// This descriptor (a file, a socket, one end of a pipe...).
    Fd(OwnedFd),
    /// stderr only: wherever stdout goes (`subprocess.STDOUT`).
    Stdout,
}

/// Options of [`EventLoop::subprocess_exec`] and [`EventLoop::subprocess_shell`].
/// The default pipes all three streams, as asyncio's loop methods do.
#[derive(Debug, Default)]
pub struct SubprocessOptions {
    /// The child's stdin.
    pub stdin: Stdio,
    /// The child's stdout.
    pub stdout: Stdio,
    /// The child's stderr.
    pub stderr: Stdio,
    /// Working directory of the child.
    pub cwd: Option<PathBuf>,
    /// The child's whole environment; `None` inherits the parent's.
    pub env: Option<Vec<(OsString, OsString)>>,
    /// Put the child in this process group (0: a new group led by the child).
    pub process_group: Option<i32>,
}

/// A protocol event, held while it cannot be delivered.
pub(crate) enum Call {
    Data(i32, Vec<u8>),
    PipeLost(i32, Option<Error>),
    Exited,
    PauseWriting,
    ResumeWriting,
    Lost,
}

struct SubprocInner {
    lp: EventLoop,
    pid: u32,
    /// The protocol, and the events raised while it was busy in one of its
    /// methods (see `transport::core::slot`).
    slot: ProtocolSlot<dyn SubprocessProtocol, Call>,
    pipes: RefCell<[Option<Transport>; 3]>,
    /// Pipes whose transport has not delivered `connection_lost` yet.
    connected: Cell<[bool; 3]>,
    returncode: Cell<Option<i32>>,
    closed: Cell<bool>,
    /// `connection_lost` is scheduled.
    finished: Cell<bool>,
    /// `connection_lost` was delivered (asyncio's `_proc is None`).
    lost: Cell<bool>,
    /// Events before `connection_made` (`None` once it was delivered).
    pending: RefCell<Option<Vec<Call>>>,
    waiters: RefCell<Vec<LoopFuture<i32>>>,
    on_made: RefCell<Option<OnMade>>,
}

/// Completes the `subprocess_exec`/`subprocess_shell` future.
type OnMade = Box<dyn FnOnce(Result<SubprocessTransport>)>;

/// A running (or finished) child process, asyncio's `SubprocessTransport`.
///
/// A cheap, clonable handle; the protocol receives one in `connection_made`.
#[derive(Clone)]
pub struct SubprocessTransport {
    inner: Rc<SubprocInner>,
}

impl fmt::Debug for SubprocessTransport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SubprocessTransport")
            .field("pid", &self.inner.pid)
            .field("returncode", &self.inner.returncode.get())
            .field("closed", &self.inner.closed.get())
            .finish()
    }
}

impl SubprocessTransport {
    /// The child's process id.
    pub fn get_pid(&self) -> u32 {
        self.inner.pid
    }

    /// The exit code (or `-signal`) once the child exited, else `None`.
    pub fn get_returncode(&self) -> Option<i32> {
        self.inner.returncode.get()
    }

    /// The pipe transport of the child's `fd`: 0 (stdin, a write pipe), 1
    /// (stdout) or 2 (stderr), both read pipes; `None` if that stream is
    /// not piped (or for any other `fd`).
    pub fn get_pipe_transport(&self, fd: i32) -> Option<Transport> {
        let i = usize::try_from(fd).ok().filter(|&i| i < 3)?;
        self.inner.pipes.borrow()[i].clone()
    }

    /// Send `sig` to the child. Does nothing once the child exited; fails
    /// with `ESRCH` (asyncio's `ProcessLookupError`) after `connection_lost`.
    pub fn send_signal(&self, sig: i32) -> Result<()> {
        self.inner.send_signal(sig)
    }

    /// `SIGTERM` the child.
    pub fn terminate(&self) -> Result<()> {
        self.send_signal(libc::SIGTERM)
    }

    /// `SIGKILL` the child.
    pub fn kill(&self) -> Result<()> {
        self.send_signal(libc::SIGKILL)
    }

    /// Close every pipe and, if the child still runs, `terminate` it (see
    /// the module documentation). `connection_lost` follows once the child
    /// exited. Closing twice does nothing.
    pub fn close(&self) {
        self.inner.close(libc::SIGTERM)
    }

    /// Whether [`SubprocessTransport::close`] was called.
    pub fn is_closing(&self) -> bool {
        self.inner.closed.get()
    }

    /// A future of the return code, completed right after `connection_lost`
    /// (asyncio's `_wait()`).
    pub fn wait(&self) -> LoopFuture<i32> {
        if self.inner.lost.get() {
            return LoopFuture::ready(Ok(self.inner.returncode.get().unwrap_or(255)));
        }
        let f = LoopFuture::new();
        self.inner.waiters.borrow_mut().push(f.clone());
        f
    }

    /// Switch the protocol; later events go to `protocol`.
    pub fn set_protocol(&self, protocol: SubprocessProtocolRef) {
        let old = self.inner.slot.replace(Some(protocol));
        drop(old);
    }

    /// The current protocol (`None` after `connection_lost`).
    pub fn get_protocol(&self) -> Option<SubprocessProtocolRef> {
        self.inner.slot.get()
    }

    /// The loop this transport runs on.
    pub fn get_loop(&self) -> EventLoop {
        self.inner.lp.clone()
    }
}

/// The protocol of one of the child's pipes: forwards to the subprocess.
struct PipeProto {
    sub: Rc<SubprocInner>,
    fd: i32,
}

impl Protocol for PipeProto {
    fn data_received(&mut self, data: &[u8]) {
        self.sub.data(self.fd, data);
    }

    fn connection_lost(&mut self, exc: Option<Error>) {
        self.sub.pipe_lost(self.fd, exc);
    }

    fn pause_writing(&mut self) {
        self.sub.call(Call::PauseWriting);
    }

    fn resume_writing(&mut self) {
        self.sub.call(Call::ResumeWriting);
    }
}

impl SubprocInner {
    fn transport(self: &Rc<Self>) -> SubprocessTransport {
        SubprocessTransport { inner: self.clone() }
    }

    /// Deliver `c` now, or hold it (before `connection_made`, or while the
    /// protocol is busy).
    fn call(self: &Rc<Self>, c: Call) {
        if let Some(p) = self.pending.borrow_mut().as_mut() {
            p.push(c);
            return;
        }
        self.notify(c);
    }

    /// Pipe data: delivered without a copy when the protocol is free.
    fn data(self: &Rc<Self>, fd: i32, data: &[u8]) {
        let hold = self.pending.borrow().is_some() || self.slot.must_queue();
        if hold {
            self.call(Call::Data(fd, data.to_vec()));
        } else {
            self.with_protocol("pipe_data_received", |p| p.pipe_data_received(fd, data));
        }
    }

    fn deliver_connection_made(self: &Rc<Self>) {
        let t = self.transport();
        self.with_protocol("connection_made", move |p| p.connection_made(t));
        let pending = self.pending.borrow_mut().take().unwrap_or_default();
        for c in pending {
            self.call(c);
        }
        let on_made = self.on_made.borrow_mut().take();
        if let Some(cb) = on_made {
            cb(Ok(self.transport()));
        }
    }

    fn deliver_connection_lost(self: &Rc<Self>) {
        if self.lost.replace(true) {
            return;
        }
        self.deliver_lost(self.slot.take(), |p| p.connection_lost(None));
        let rc = self.returncode.get().unwrap_or(255);
        let waiters = std::mem::take(&mut *self.waiters.borrow_mut());
        for w in waiters {
            w.set(Ok(rc));
        }
        self.slot.clear_notes();
    }

    fn pipe_lost(self: &Rc<Self>, fd: i32, exc: Option<Error>) {
        let mut c = self.connected.get();
        if let Some(slot) = usize::try_from(fd).ok().and_then(|i| c.get_mut(i)) {
            *slot = false;
        }
        self.connected.set(c);
        self.call(Call::PipeLost(fd, exc));
        self.try_finish();
    }

    fn exited(self: &Rc<Self>, rc: Option<i32>) {
        let rc = rc.unwrap_or_else(|| {
            self.lp.warn(&format!(
                "child process pid {} exit status already read:  will report returncode 255",
                self.pid
            ));
            255
        });
        self.returncode.set(Some(rc));
        self.call(Call::Exited);
        self.try_finish();
    }

    fn try_finish(self: &Rc<Self>) {
        if self.finished.get() || self.returncode.get().is_none() || self.connected.get().iter().any(|&c| c) {
            return;
        }
        self.finished.set(true);
        self.call(Call::Lost);
    }

    fn send_signal(&self, sig: i32) -> Result<()> {
        if self.lost.get() {
            return Err(Error::Io(io::Error::from_raw_os_error(libc::ESRCH)));
        }
        if self.returncode.get().is_some() {
            return Ok(());
        }
        // The child is ours and only our watcher reaps it, on this thread:
        // until then its pid cannot be reused, even if it already exited.
        match sys::process::kill(self.pid, sig) {
            Err(e) if e.raw_os_error() == Some(libc::ESRCH) => Ok(()),
            r => r.map_err(Error::Io),
        }
    }

    fn close(&self, sig: i32) {
        if self.closed.replace(true) {
            return;
        }
        let pipes: Vec<Transport> = self.pipes.borrow().iter().flatten().cloned().collect();
        for t in pipes {
            t.close();
        }
        if self.returncode.get().is_none() && !self.lost.get() {
            let _ = sys::process::kill(self.pid, sig);
        }
    }
}

impl SlotHost for SubprocInner {
    type Proto = dyn SubprocessProtocol;
    type Note = Call;
    const REPORT_SUFFIX: &'static str = " of a subprocess transport";

    fn slot(&self) -> &ProtocolSlot<dyn SubprocessProtocol, Call> {
        &self.slot
    }

    fn event_loop(&self) -> &EventLoop {
        &self.lp
    }

    fn deliver_note(self: &Rc<Self>, c: Call) {
        match c {
            Call::Data(fd, data) => {
                self.with_protocol("pipe_data_received", |p| p.pipe_data_received(fd, &data));
            }
            Call::PipeLost(fd, exc) => {
                self.with_protocol("pipe_connection_lost", |p| p.pipe_connection_lost(fd, exc));
            }
            Call::Exited => {
                self.with_protocol("process_exited", |p| p.process_exited());
            }
            Call::PauseWriting => {
                self.with_protocol("pause_writing", |p| p.pause_writing());
            }
            Call::ResumeWriting => {
                self.with_protocol("resume_writing", |p| p.resume_writing());
            }
            Call::Lost => {
                // Never from inside another callback: from the ready queue.
                let me = self.clone();
                self.lp.schedule(Box::new(move || me.deliver_connection_lost()));
            }
        }
    }
}

/// The child's end and the loop's end of one standard stream.
fn plan_stream(fd: i32, how: Stdio) -> Result<(Option<std::process::Stdio>, Option<OwnedFd>, Option<OwnedFd>)> {
    // (what the child gets, the loop's end, the child's end when we need to keep it)
    Ok(match how {
        Stdio::Pipe => {
            let (r, w) = sys::process::pipe()?;
            if fd == 0 {
                (Some(r.into()), Some(w), None)
            } else {
                (None, Some(r), Some(w))
            }
        }
        Stdio::Inherit => (Some(std::process::Stdio::inherit()), None, None),
        Stdio::Null => (Some(std::process::Stdio::null()), None, None),
        Stdio::Fd(f) => (None, None, Some(f)),
        Stdio::Stdout => return Err(Error::invalid("Stdio::Stdout is only valid for stderr")),
    })
}

/// Start `cmd` with `opts` and make its transport.
fn spawn(
    lp: &EventLoop,
    mut cmd: Command,
    opts: SubprocessOptions,
    protocol: SubprocessProtocolRef,
    on_made: OnMade,
) -> Result<SubprocessTransport> {
    lp.check_closed()?;
    let SubprocessOptions { stdin, stdout, stderr, cwd, env, process_group } = opts;
    let mut ours: [Option<OwnedFd>; 3] = [None, None, None];

    let (child_in, loop_in, _) = plan_stream(0, stdin)?;
    ours[0] = loop_in;
    if let Some(s) = child_in {
        cmd.stdin(s);
    }

    let stderr_to_stdout = matches!(stderr, Stdio::Stdout);
    let (child_out, loop_out, keep_out) = match stdout {
        // stderr goes where stdout goes: hold stdout's target as a descriptor.
        Stdio::Inherit if stderr_to_stdout => (None, None, Some(sys::dup_cloexec(1)?)),
        Stdio::Null if stderr_to_stdout => (None, None, Some(File::options().write(true).open("/dev/null")?.into())),
        other => plan_stream(1, other)?,
    };
    ours[1] = loop_out;
    match keep_out {
        Some(fd) => {
            if stderr_to_stdout {
                cmd.stderr(fd.try_clone()?);
            }
            cmd.stdout(fd);
        }
        None => {
            if let Some(s) = child_out {
                cmd.stdout(s);
            }
        }
    }
    if !stderr_to_stdout {
        let (child_err, loop_err, keep_err) = plan_stream(2, stderr)?;
        ours[2] = loop_err;
        if let Some(fd) = keep_err {
            cmd.stderr(fd);
        } else if let Some(s) = child_err {
            cmd.stderr(s);
        }
    }
    if let Some(dir) = cwd {
        cmd.current_dir(dir);
    }
    if let Some(vars) = env {
        cmd.env_clear();
        cmd.envs(vars);
    }
    if let Some(pg) = process_group {
        cmd.process_group(pg);
    }

    let child = cmd.spawn()?;
    // Close the child's ends here, or the child's EOF would never show.
    drop(cmd);
    let pid = child.id();
    // std's `Child` neither waits nor kills when dropped: the loop reaps it.
    drop(child);

    let inner = Rc::new(SubprocInner {
        lp: lp.clone(),
        pid,
        slot: ProtocolSlot::new(Some(protocol)),
        pipes: RefCell::new([None, None, None]),
        connected: Cell::new([false; 3]),
        returncode: Cell::new(None),
        closed: Cell::new(false),
        finished: Cell::new(false),
        lost: Cell::new(false),
        pending: RefCell::new(Some(Vec::new())),
        waiters: RefCell::new(Vec::new()),
        on_made: RefCell::new(Some(on_made)),
    });

    let me = inner.clone();
    if let Err(e) = lp.watch_child(pid, move |rc| me.exited(rc)) {
        let _ = sys::process::kill(pid, libc::SIGKILL);
        return Err(e);
    }

    for (i, end) in ours.into_iter().enumerate() {
        let Some(end) = end else { continue };
        let proto: ProtocolRef = Rc::new(RefCell::new(PipeProto { sub: inner.clone(), fd: i as i32 }));
        let made = if i == 0 {
            lp.create_write_pipe_transport(end, proto)
        } else {
            lp.create_read_pipe_transport(end, proto)
        };
        match made {
            Ok(t) => {
                inner.pipes.borrow_mut()[i] = Some(t);
                let mut c = inner.connected.get();
                c[i] = true;
                inner.connected.set(c);
            }
            Err(e) => {
                // The watcher reaps the killed child; the protocol never starts.
                inner.on_made.borrow_mut().take();
                inner.close(libc::SIGKILL);
                return Err(e);
            }
        }
    }

    // After the pipes' own connection_made (scheduled as they were made).
    let me = inner.clone();
    lp.schedule(Box::new(move || me.deliver_connection_made()));
    Ok(inner.transport())
}

fn start<P: SubprocessProtocol>(lp: &EventLoop, cmd: Command, opts: SubprocessOptions, protocol: P) -> LoopFuture<SubprocessConnection<P>> {
    let out = LoopFuture::new();
    let proto = Rc::new(RefCell::new(protocol));
    let dyn_proto: SubprocessProtocolRef = proto.clone();
    let out2 = out.clone();
    let on_made = Box::new(move |r: Result<SubprocessTransport>| out2.set(r.map(|t| (t, proto))));
    if let Err(e) = spawn(lp, cmd, opts, dyn_proto, on_made) {
        out.set(Err(e));
    }
    out
}

impl EventLoop {
    /// Run `program` with `args` (not including the program name) and a
    /// protocol made by `factory` (asyncio's `subprocess_exec`). The future
    /// completes after `connection_made`, or with the error of the start
    /// (`ENOENT` for a missing program, ...).
    pub fn subprocess_exec<P, F, I, S>(
        &self,
        factory: F,
        program: impl AsRef<OsStr>,
        args: I,
        opts: SubprocessOptions,
    ) -> LoopFuture<SubprocessConnection<P>>
    where
        P: SubprocessProtocol,
        F: FnOnce() -> P,
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        let mut cmd = Command::new(program);
        cmd.args(args);
        start(self, cmd, opts, factory())
    }

    /// Run `cmd` with `/bin/sh -c` (asyncio's `subprocess_shell`).
    pub fn subprocess_shell<P, F>(&self, factory: F, cmd: impl AsRef<OsStr>, opts: SubprocessOptions) -> LoopFuture<SubprocessConnection<P>>
    where
        P: SubprocessProtocol,
        F: FnOnce() -> P,
    {
        let mut c = Command::new("/bin/sh");
        c.arg("-c").arg(cmd);
        start(self, c, opts, factory())
    }
}
