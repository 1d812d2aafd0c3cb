//! I/O registration: sources in the poll (`register`, `reregister`,
//! `deregister`, `forget_token`) and the file descriptors watched with
//! `add_reader`/`add_writer` ([`FdWatch`]).

use std::cell::{Cell, RefCell};
use std::io;
use std::os::fd::RawFd;
use std::rc::Rc;

use mio::unix::SourceFd;
use mio::{Interest, Token};

use super::{EventLoop, IoSource, Readiness};
use crate::error::{Error, Result};
use crate::sys;

/// A file descriptor watched with `add_reader`/`add_writer`.
pub(super) struct FdWatch {
    fd: RawFd,
    /// A duplicate of `fd` registered in its place when `fd` itself is
    /// already in the poll (a transport on a borrowed descriptor, watched
    /// during asyncio's native `sendfile`). Closed with the watch.
    alias: RefCell<Option<std::os::fd::OwnedFd>>,
    token: Cell<Token>,
    reader: RefCell<Option<Rc<dyn Fn()>>>,
    writer: RefCell<Option<Rc<dyn Fn()>>>,
}

impl FdWatch {
    /// The descriptor registered in the poll: `fd`, or its alias.
    fn poll_fd(&self) -> RawFd {
        use std::os::fd::AsRawFd;
        self.alias.borrow().as_ref().map(|a| a.as_raw_fd()).unwrap_or(self.fd)
    }

    fn interest(&self) -> Option<Interest> {
        match (self.reader.borrow().is_some(), self.writer.borrow().is_some()) {
            (true, true) => Some(Interest::READABLE | Interest::WRITABLE),
            (true, false) => Some(Interest::READABLE),
            (false, true) => Some(Interest::WRITABLE),
            (false, false) => None,
        }
    }
}

impl IoSource for FdWatch {
    fn on_ready(self: Rc<Self>, lp: &EventLoop, ready: Readiness) {
        let hup = ready.error || ready.read_closed || ready.write_closed;
        if ready.readable || hup {
            let cb = self.reader.borrow().clone();
            if let Some(cb) = cb {
                lp.guarded("Exception in reader callback", || cb());
            }
        }
        if ready.writable || hup {
            let cb = self.writer.borrow().clone();
            if let Some(cb) = cb {
                lp.guarded("Exception in writer callback", || cb());
            }
        }
        // mio is edge-triggered; asyncio's readers are level-triggered. Re-arm:
        // EPOLL_CTL_MOD reports the descriptor again if it is still ready.
        let still = lp.inner.watches.borrow().get(&self.fd).map(|w| Rc::ptr_eq(w, &self)).unwrap_or(false);
        if still {
            if let Some(interest) = self.interest() {
                let fd = self.poll_fd();
                if lp.inner.with_registry(|r| r.reregister(&mut SourceFd(&fd), self.token.get(), interest)).is_err() {
                    // The descriptor was closed behind our back: forget it.
                    lp.drop_watch(self.fd);
                }
            }
        }
    }
}

impl EventLoop {
    // ----- registration (crate-internal) ---------------------------------

    pub(crate) fn register<S: mio::event::Source + ?Sized>(
        &self,
        io: &mut S,
        interest: Interest,
        owner: Rc<dyn IoSource>,
    ) -> Result<Token> {
        self.check_closed()?;
        let gen = self.inner.generation.get().wrapping_add(1);
        self.inner.generation.set(gen);
        let key = self.inner.sources.borrow_mut().insert((gen, owner));
        let token = Token(key | ((gen as usize) << 32));
        if let Err(e) = self.inner.with_registry(|r| r.register(io, token, interest)) {
            self.inner.sources.borrow_mut().remove(key);
            return Err(e.into());
        }
        Ok(token)
    }

    pub(crate) fn reregister<S: mio::event::Source + ?Sized>(
        &self,
        io: &mut S,
        token: Token,
        interest: Interest,
    ) -> io::Result<()> {
        self.inner.with_registry(|r| r.reregister(io, token, interest))
    }

    /// Remove a source. The slab entry is dropped after the borrow ends.
    pub(crate) fn deregister<S: mio::event::Source + ?Sized>(&self, io: &mut S, token: Token) {
        let _ = self.inner.with_registry(|r| r.deregister(io));
        self.forget_token(token);
    }

    /// Drop the slab entry of `token` (when the socket is already closed).
    pub(crate) fn forget_token(&self, token: Token) {
        let key = token.0 & 0xffff_ffff;
        let gen = (token.0 >> 32) as u32;
        let removed = {
            let mut sources = self.inner.sources.borrow_mut();
            match sources.get(key) {
                Some((g, _)) if *g == gen => Some(sources.remove(key)),
                _ => None,
            }
        };
        drop(removed);
    }

    // ----- fd watchers ---------------------------------------------------

    /// Call `f` whenever `fd` is readable (level-triggered, as asyncio's
    /// `add_reader`). Replaces a previous reader of `fd`.
    pub fn add_reader(&self, fd: RawFd, f: Rc<dyn Fn()>) -> Result<()> {
        self.set_watch(fd, Some(Some(f)), None)
    }

    /// Call `f` whenever `fd` is writable (asyncio's `add_writer`).
    pub fn add_writer(&self, fd: RawFd, f: Rc<dyn Fn()>) -> Result<()> {
        self.set_watch(fd, None, Some(Some(f)))
    }

    /// Stop watching `fd` for reading; true if it was watched.
    pub fn remove_reader(&self, fd: RawFd) -> bool {
        let had = self.inner.watches.borrow().get(&fd).map(|w| w.reader.borrow().is_some()).unwrap_or(false);
        if had {
            let _ = self.set_watch(fd, Some(None), None);
        }
        had
    }

    /// Stop watching `fd` for writing; true if it was watched.
    pub fn remove_writer(&self, fd: RawFd) -> bool {
        let had = self.inner.watches.borrow().get(&fd).map(|w| w.writer.borrow().is_some()).unwrap_or(false);
        if had {
            let _ = self.set_watch(fd, None, Some(None));
        }
        had
    }

    /// Whether `fd` has a reader (`true`) or writer (`false`) installed.
    pub fn has_watch(&self, fd: RawFd, reader: bool) -> bool {
        self.inner
            .watches
            .borrow()
            .get(&fd)
            .map(|w| if reader { w.reader.borrow().is_some() } else { w.writer.borrow().is_some() })
            .unwrap_or(false)
    }

    fn set_watch(
        &self,
        fd: RawFd,
        reader: Option<Option<Rc<dyn Fn()>>>,
        writer: Option<Option<Rc<dyn Fn()>>>,
    ) -> Result<()> {
        self.check_closed()?;
        let existing = self.inner.watches.borrow().get(&fd).cloned();
        let (watch, is_new) = match existing {
            Some(w) => (w, false),
            None => (
                Rc::new(FdWatch {
                    fd,
                    alias: RefCell::new(None),
                    token: Cell::new(Token(0)),
                    reader: RefCell::new(None),
                    writer: RefCell::new(None),
                }),
                true,
            ),
        };
        let old_r = reader.map(|r| std::mem::replace(&mut *watch.reader.borrow_mut(), r));
        let old_w = writer.map(|w| std::mem::replace(&mut *watch.writer.borrow_mut(), w));
        let result = match (watch.interest(), is_new) {
            (None, true) => Ok(()),
            (None, false) => {
                self.drop_watch(fd);
                Ok(())
            }
            (Some(interest), true) => {
                let mut r = self.register(&mut SourceFd(&fd), interest, watch.clone());
                if matches!(&r, Err(Error::Io(e)) if e.kind() == io::ErrorKind::AlreadyExists) {
                    // `fd` is in the poll already (a transport drives it):
                    // watch a duplicate of it instead.
                    match sys::dup_cloexec(fd) {
                        Ok(dup) => {
                            *watch.alias.borrow_mut() = Some(dup);
                            r = self.register(&mut SourceFd(&watch.poll_fd()), interest, watch.clone());
                        }
                        Err(e) => r = Err(e.into()),
                    }
                }
                match r {
                    Ok(token) => {
                        watch.token.set(token);
                        self.inner.watches.borrow_mut().insert(fd, watch.clone());
                        Ok(())
                    }
                    Err(e) => Err(e),
                }
            }
            (Some(interest), false) => self
                .reregister(&mut SourceFd(&watch.poll_fd()), watch.token.get(), interest)
                .map_err(Error::from),
        };
        drop((old_r, old_w));
        result
    }

    fn drop_watch(&self, fd: RawFd) {
        let w = self.inner.watches.borrow_mut().remove(&fd);
        if let Some(w) = w {
            self.deregister(&mut SourceFd(&w.poll_fd()), w.token.get());
        }
    }
}

#[cfg(test)]
mod tests {
    use std::os::fd::{AsRawFd, OwnedFd};

    use super::*;

    struct Inert;

    impl IoSource for Inert {
        fn on_ready(self: Rc<Self>, _lp: &EventLoop, _ready: Readiness) {}
    }

    fn noop() -> Rc<dyn Fn()> {
        Rc::new(|| {})
    }

    /// A pipe whose read end (returned first, with its descriptor) is
    /// registered in `lp` for an inert source under the returned token.
    fn registered_pipe(lp: &EventLoop) -> ((OwnedFd, OwnedFd), RawFd, Token) {
        let ends = sys::process::pipe().unwrap();
        let fd = ends.0.as_raw_fd();
        let token = lp.register(&mut SourceFd(&fd), Interest::READABLE, Rc::new(Inert)).unwrap();
        (ends, fd, token)
    }

    #[test]
    fn a_watch_polls_for_what_its_callbacks_need() {
        let w = FdWatch {
            fd: 0,
            alias: RefCell::new(None),
            token: Cell::new(Token(0)),
            reader: RefCell::new(None),
            writer: RefCell::new(None),
        };
        assert_eq!(w.interest(), None);
        *w.reader.borrow_mut() = Some(noop());
        assert_eq!(w.interest(), Some(Interest::READABLE));
        *w.writer.borrow_mut() = Some(noop());
        assert_eq!(w.interest(), Some(Interest::READABLE | Interest::WRITABLE));
        *w.reader.borrow_mut() = None;
        assert_eq!(w.interest(), Some(Interest::WRITABLE));
        assert_eq!(w.poll_fd(), 0, "no alias: the descriptor itself");
    }

    #[test]
    fn a_reused_slot_gets_a_new_token_and_stale_tokens_forget_nothing() {
        let lp = EventLoop::new().unwrap();
        let (_pipe, fd, first) = registered_pipe(&lp);
        assert_eq!(lp.registered_sources(), 1);
        lp.deregister(&mut SourceFd(&fd), first);
        assert_eq!(lp.registered_sources(), 0);

        let second = lp.register(&mut SourceFd(&fd), Interest::READABLE, Rc::new(Inert)).unwrap();
        assert_eq!(first.0 & 0xffff_ffff, second.0 & 0xffff_ffff, "the slab slot is reused");
        assert_ne!(first, second, "with a new generation");
        lp.forget_token(first);
        assert_eq!(lp.registered_sources(), 1, "the stale token leaves the new source");
        lp.forget_token(second);
        assert_eq!(lp.registered_sources(), 0);
        lp.forget_token(second);
        assert_eq!(lp.registered_sources(), 0);
    }

    #[test]
    fn readers_and_writers_come_and_go_independently_on_one_watch() {
        let lp = EventLoop::new().unwrap();
        let (_r, w) = sys::process::pipe().unwrap();
        let fd = w.as_raw_fd();
        lp.add_writer(fd, noop()).unwrap();
        lp.add_reader(fd, noop()).unwrap();
        assert!(lp.has_watch(fd, true) && lp.has_watch(fd, false));
        assert_eq!(lp.registered_sources(), 1, "one registration for both");

        assert!(lp.remove_reader(fd));
        assert!(!lp.remove_reader(fd), "already removed");
        assert!(!lp.has_watch(fd, true) && lp.has_watch(fd, false));
        assert_eq!(lp.registered_sources(), 1);

        assert!(lp.remove_writer(fd));
        assert!(!lp.has_watch(fd, false));
        assert_eq!(lp.registered_sources(), 0);
        assert!(lp.inner.watches.borrow().is_empty());
    }

    #[test]
    fn a_descriptor_already_in_the_poll_is_watched_through_a_duplicate() {
        let lp = EventLoop::new().unwrap();
        let (_pipe, fd, token) = registered_pipe(&lp);
        lp.add_reader(fd, noop()).unwrap();
        {
            let watches = lp.inner.watches.borrow();
            let watch = &watches[&fd];
            assert!(watch.alias.borrow().is_some());
            assert_ne!(watch.poll_fd(), fd);
        }
        assert_eq!(lp.registered_sources(), 2);
        assert!(lp.has_watch(fd, true));
        assert!(lp.remove_reader(fd));
        assert_eq!(lp.registered_sources(), 1, "the transport's registration stays");
        lp.deregister(&mut SourceFd(&fd), token);
        assert_eq!(lp.registered_sources(), 0);
    }
}
