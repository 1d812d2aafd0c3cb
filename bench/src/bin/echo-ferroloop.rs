//! Echo server on ferroloop's Rust face, written the way the crate's docs
//! show: a `Protocol` whose `data_received` writes the bytes back, or (with
//! `--mode buffered`) a buffered protocol that hands the transport its own
//! 64 KiB buffer in `get_buffer` and echoes it in `buffer_updated`.
//!
//! `echo-ferroloop [--mode protocol|buffered] [--tcp 127.0.0.1:0 | --unix PATH]`

use ferroloop::{Address, EventLoop, Protocol, Server, ServerOptions, Transport};
use ferroloop_bench::{announce, die, raise_nofile, unlink_stale, Args, Endpoint};

#[derive(Default)]
struct Echo {
    t: Option<Transport>,
}

impl Protocol for Echo {
    fn connection_made(&mut self, t: Transport) {
        self.t = Some(t);
    }

    fn data_received(&mut self, data: &[u8]) {
        if let Some(t) = &self.t {
            let _ = t.write(data);
        }
    }
}

const BUFFER: usize = 64 * 1024;

struct EchoBuffered {
    t: Option<Transport>,
    buf: Box<[u8]>,
}

impl Protocol for EchoBuffered {
    fn connection_made(&mut self, t: Transport) {
        self.t = Some(t);
    }

    fn get_buffer(&mut self, _size_hint: usize) -> Option<&mut [u8]> {
        Some(&mut self.buf)
    }

    fn buffer_updated(&mut self, nbytes: usize) {
        if let Some(t) = &self.t {
            let _ = t.write(&self.buf[..nbytes]);
        }
    }
}

fn serve<P: Protocol, F: Fn() -> P + 'static>(lp: &EventLoop, ep: &Endpoint, factory: F) -> ferroloop::Result<Server> {
    let opts = ServerOptions { backlog: 1024, ..ServerOptions::default() };
    match ep {
        Endpoint::Tcp(a) => {
            let server = lp.run_until_complete(&lp.create_server(factory, a.ip().to_string(), a.port(), opts))?;
            let bound = server.sockets()[0].address.clone();
            if let Some(Address::Inet(b)) = bound {
                announce(&Endpoint::Tcp(b));
            }
            Ok(server)
        }
        Endpoint::Unix(p) => {
            unlink_stale(p);
            let l = std::os::unix::net::UnixListener::bind(p)?;
            let server = lp.create_server_from_unix_listener(factory, l, opts)?;
            announce(ep);
            Ok(server)
        }
    }
}

fn main() -> ferroloop::Result<()> {
    let args = Args::parse(&[]);
    raise_nofile();
    let ep = Endpoint::from_args(&args, "127.0.0.1:0");
    let lp = EventLoop::new()?;
    let server = match args.get("mode").unwrap_or("protocol") {
        "protocol" => serve(&lp, &ep, Echo::default)?,
        "buffered" => serve(&lp, &ep, || EchoBuffered { t: None, buf: vec![0u8; BUFFER].into_boxed_slice() })?,
        m => die(&format!("--mode: expected protocol or buffered, got {m:?}")),
    };
    for sig in [libc::SIGTERM, libc::SIGINT] {
        let l2 = lp.clone();
        lp.add_signal_handler(sig, move || l2.stop())?;
    }
    lp.run_forever()?;
    server.close();
    server.abort_clients();
    lp.run_until_complete(&server.wait_closed())?;
    if let Endpoint::Unix(p) = &ep {
        unlink_stale(p);
    }
    lp.close()
}
