//! The TLS transport's [`TransportOps`]: what the application's
//! [`Transport`](crate::Transport) does on a TLS connection (the plaintext side).

use std::os::fd::RawFd;
use std::rc::Rc;

use crate::error::{Error, Result};
use crate::event_loop::EventLoop;
use crate::protocol::ProtocolRef;
use crate::transport::core::slot::{FlowHost, PauseHook};
use crate::transport::tls::transport::TlsInner;
use crate::transport::tls::TlsInfo;
use crate::transport::{Address, ExtraInfo, LentBytes, TransportKind, TransportOps};

impl TlsInner {
    /// Give the session as much of `data` as it takes (with its unlimited
    /// buffer, see session.rs, all of it); the bytes taken.
    fn encrypt_plaintext(&self, data: &[u8]) -> usize {
        let mut off = 0;
        while off < data.len() {
            let n = self.session.borrow_mut().write_plaintext(&data[off..]);
            if n == 0 {
                break;
            }
            off += n;
        }
        off
    }

    pub(crate) fn info(&self) -> TlsInfo {
        self.session.borrow().info()
    }
}

impl TransportOps for TlsInner {
    fn get_loop(&self) -> EventLoop {
        self.lp.clone()
    }

    fn close(self: &Rc<Self>) {
        if !self.st.borrow_mut().begin_close() {
            return;
        }
        self.pending.borrow_mut().clear();
        self.start_shutdown();
    }

    fn is_closing(&self) -> bool {
        self.st.borrow().is_closing()
    }

    fn abort(self: &Rc<Self>) {
        self.st.borrow_mut().closing = true;
        self.cancel_timer();
        if let Some(raw) = self.raw() {
            raw.abort();
        }
    }

    fn close_socket(self: &Rc<Self>) {
        self.st.borrow_mut().lose();
        self.cancel_timer();
        if let Some(raw) = self.raw() {
            raw.close_socket();
        }
        self.release();
    }

    fn write(self: &Rc<Self>, data: &[u8]) -> Result<()> {
        if data.is_empty() || self.refuse_write() {
            return Ok(());
        }
        let mut off = 0;
        while off < data.len() {
            let n = self.session.borrow_mut().write_plaintext(&data[off..]);
            off += n;
            self.flush();
            if n == 0 {
                break;
            }
        }
        self.maybe_pause();
        Ok(())
    }

    /// `write` of bytes lent for this call (see [`Transport::write_lent`]):
    /// they are encrypted while lent (the session takes all plaintext at
    /// once; nothing else runs meanwhile), and the ciphertext is sent and
    /// the protocol told (`pause_writing`, a dropped-write warning) only
    /// once `data` is dropped.
    ///
    /// [`Transport::write_lent`]: crate::Transport::write_lent
    fn write_lent<B: LentBytes>(self: &Rc<Self>, data: B) -> Result<()> {
        let open = !self.st.borrow().is_closing();
        let (len, rest) = data.lend(|b| {
            if !open || b.is_empty() {
                return (b.len(), None);
            }
            let off = self.encrypt_plaintext(b);
            (b.len(), (off < b.len()).then(|| b[off..].to_vec()))
        });
        drop(data);
        if len == 0 || self.refuse_write() {
            return Ok(());
        }
        self.flush();
        match rest {
            // What the session did not take: the copying path.
            Some(rest) => self.write(&rest),
            None => {
                self.maybe_pause();
                Ok(())
            }
        }
    }

    fn writelines<'a, I: IntoIterator<Item = &'a [u8]>>(self: &Rc<Self>, chunks: I) -> Result<()> {
        for c in chunks {
            if c.is_empty() || self.refuse_write() {
                continue;
            }
            self.encrypt_plaintext(c);
        }
        self.flush();
        self.maybe_pause();
        Ok(())
    }

    fn write_eof(self: &Rc<Self>) -> Result<()> {
        Err(Error::state("SSL doesn't support half-closes"))
    }

    fn can_write_eof(&self) -> bool {
        false
    }

    fn kind(&self) -> TransportKind {
        TransportKind::Stream
    }

    fn pause_reading(&self) {
        if !self.st.borrow_mut().pause_app() {
            return;
        }
        if let Some(raw) = self.raw() {
            raw.pause_reading();
        }
    }

    fn resume_reading(self: &Rc<Self>) {
        if !self.st.borrow_mut().resume_app() {
            return;
        }
        if let Some(raw) = self.raw() {
            raw.resume_reading();
        }
        self.schedule_pump();
    }

    fn is_reading(&self) -> bool {
        self.st.borrow().is_reading()
    }

    fn get_write_buffer_size(&self) -> usize {
        self.raw().map(|r| r.get_write_buffer_size()).unwrap_or(0)
    }

    fn get_write_buffer_limits(&self) -> (usize, usize) {
        self.st.borrow().flow.limits()
    }

    fn set_write_buffer_limits_signed(self: &Rc<Self>, high: Option<i64>, low: Option<i64>) -> Result<()> {
        self.st.borrow_mut().flow.set_limits(high, low)?;
        let (low, high) = self.st.borrow().flow.limits();
        if let Some(raw) = self.raw() {
            raw.set_write_buffer_limits(Some(high), Some(low))?;
        }
        self.maybe_pause();
        Ok(())
    }

    fn is_writing_paused(&self) -> bool {
        self.st.borrow().flow.is_paused()
    }

    fn get_extra_info(&self, name: &str) -> Option<ExtraInfo> {
        match name {
            "peercert" => self.session.borrow().peer_cert().map(ExtraInfo::Bytes),
            "cipher" => self
                .session
                .borrow()
                .cipher()
                .map(|(name, protocol, bits)| ExtraInfo::Cipher { name, protocol, bits }),
            "alpn_protocol" => self.info().alpn_protocol.map(ExtraInfo::Bytes),
            "server_hostname" => self.info().server_name.map(ExtraInfo::Text),
            "sslcontext" => Some(ExtraInfo::TlsConfig(self.session.borrow().config())),
            "ssl_object" => Some(ExtraInfo::Tls(self.info())),
            "compression" => None,
            _ => self.raw().and_then(|r| r.get_extra_info(name)),
        }
    }

    fn peername(&self) -> Option<Address> {
        self.raw().and_then(|r| r.peername())
    }

    fn sockname(&self) -> Option<Address> {
        self.raw().and_then(|r| r.sockname())
    }

    fn socket_fd(&self) -> Option<RawFd> {
        self.raw().and_then(|r| r.socket_fd())
    }

    fn on_drained<F: FnOnce(Result<()>) + 'static>(&self, f: F) {
        match self.raw() {
            Some(r) => r.on_drained(f),
            None => f(Err(Error::state("Connection is closed by peer"))),
        }
    }

    fn set_protocol(&self, protocol: ProtocolRef) {
        let old = self.slot.replace(Some(protocol));
        drop(old);
    }

    fn get_protocol(&self) -> Option<ProtocolRef> {
        self.slot.get()
    }

    fn is_lost(&self) -> bool {
        self.st.borrow().lost
    }

    fn write_owned(self: &Rc<Self>, data: Vec<u8>) -> Result<()> {
        TransportOps::write(self, &data)
    }

    /// The hook is for stream transports: a TLS transport's protocol is
    /// told of `pause_writing` from the loop.
    fn set_pause_hook(&self, _hook: Option<Rc<dyn PauseHook>>) -> bool {
        false
    }
}
