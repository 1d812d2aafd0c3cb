//! [`Registration`]: a source's place in the loop's poll, the one way
//! transports, listeners, connectors and watchers enter and leave it.

use std::cell::Cell;
use std::io;
use std::rc::Rc;

use mio::{Interest, Token};

use crate::error::Result;
use crate::event_loop::{EventLoop, IoSource};

/// A source's place in the loop's poll: its token while it is registered.
///
/// Register once, re-arm any number of times, deregister once (later calls
/// are no-ops). It does not deregister on drop, as tokio's does: the loop's
/// table holds the owner of a registered source (the `IoSource`), so an
/// owner is only dropped once it is out of the poll, or with the loop.
#[derive(Default)]
pub(crate) struct Registration {
    token: Cell<Option<Token>>,
}

impl Registration {
    /// Not registered yet.
    pub(crate) const fn new() -> Registration {
        Registration { token: Cell::new(None) }
    }

    /// Put `io` in `lp`'s poll with `interest`; readiness goes to `owner`.
    pub(crate) fn register<S: mio::event::Source + ?Sized>(
        &self,
        lp: &EventLoop,
        io: &mut S,
        interest: Interest,
        owner: Rc<dyn IoSource>,
    ) -> Result<()> {
        let token = lp.register(io, interest, owner)?;
        self.token.set(Some(token));
        Ok(())
    }

    /// Have the poll report `io`'s readiness again (`EPOLL_CTL_MOD` re-arms
    /// an edge-triggered registration), with `interest`; a no-op once
    /// deregistered.
    pub(crate) fn rearm<S: mio::event::Source + ?Sized>(&self, lp: &EventLoop, io: &mut S, interest: Interest) -> io::Result<()> {
        match self.token.get() {
            Some(t) => lp.reregister(io, t, interest),
            None => Ok(()),
        }
    }

    /// Leave the poll (once): remove `io` from it, or, when the descriptor
    /// is already gone (`None`), only the loop's entry.
    pub(crate) fn deregister<S: mio::event::Source + ?Sized>(&self, lp: &EventLoop, io: Option<&mut S>) {
        let Some(token) = self.token.take() else { return };
        match io {
            Some(io) => lp.deregister(io, token),
            None => lp.forget_token(token),
        }
    }

    /// Whether the source is in the poll.
    pub(crate) fn is_registered(&self) -> bool {
        self.token.get().is_some()
    }
}
