//! Echo server on tokio's `current_thread` runtime (one thread, like an
//! asyncio loop), written the idiomatic way: one task per connection that
//! reads into a 64 KiB buffer and `write_all`s what it read.
//!
//! `echo-tokio [--tcp 127.0.0.1:0 | --unix PATH]`

use ferroloop_bench::{announce, raise_nofile, unlink_stale, Args, Endpoint};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, UnixListener};
use tokio::signal::unix::{signal, SignalKind};

const BUFFER: usize = 64 * 1024;

async fn echo<S: AsyncRead + AsyncWrite + Unpin>(mut s: S) {
    let mut buf = vec![0u8; BUFFER];
    loop {
        let n = match s.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        if s.write_all(&buf[..n]).await.is_err() {
            return;
        }
    }
}

async fn serve(ep: Endpoint) -> std::io::Result<()> {
    match ep {
        Endpoint::Tcp(a) => {
            let l = TcpListener::bind(a).await?;
            announce(&Endpoint::Tcp(l.local_addr()?));
            loop {
                let (s, _) = l.accept().await?;
                let _ = s.set_nodelay(true);
                tokio::spawn(echo(s));
            }
        }
        Endpoint::Unix(p) => {
            unlink_stale(&p);
            let l = UnixListener::bind(&p)?;
            announce(&Endpoint::Unix(p));
            loop {
                let (s, _) = l.accept().await?;
                tokio::spawn(echo(s));
            }
        }
    }
}

fn main() -> std::io::Result<()> {
    let args = Args::parse(&[]);
    raise_nofile();
    let ep = Endpoint::from_args(&args, "127.0.0.1:0");
    let rt = tokio::runtime::Builder::new_current_thread().enable_io().build()?;
    let unix_path = match &ep {
        Endpoint::Unix(p) => Some(p.clone()),
        Endpoint::Tcp(_) => None,
    };
    rt.block_on(async move {
        let mut term = signal(SignalKind::terminate())?;
        let mut int = signal(SignalKind::interrupt())?;
        tokio::select! {
            r = serve(ep) => r,
            _ = term.recv() => Ok(()),
            _ = int.recv() => Ok(()),
        }
    })?;
    if let Some(p) = unix_path {
        unlink_stale(&p);
    }
    Ok(())
}
