//! Interoperability with peers nobody here wrote: stock Python asyncio
//! (python3, protocols API) as a client and as a server, and socat.

mod common;

use std::io::{Read, Write};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use common::*;
use ferroloop::{ConnectOptions, EventLoop};

const SIZE: usize = 1 << 20;

/// Wait for a child with a timeout; kill it and fail if it hangs.
fn wait_output(mut child: Child, secs: u64) -> (bool, String, String) {
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        if let Some(_status) = child.try_wait().unwrap() {
            break;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let out = child.wait_with_output().unwrap();
            panic!(
                "child timed out after {secs}s\nstdout: {}\nstderr: {}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    let out = child.wait_with_output().unwrap();
    (out.status.success(), String::from_utf8_lossy(&out.stdout).into_owned(), String::from_utf8_lossy(&out.stderr).into_owned())
}

fn python3_available() -> bool {
    Command::new("python3").arg("-c").arg("import asyncio").status().map(|s| s.success()).unwrap_or(false)
}

const PY_CLIENT: &str = r#"
import asyncio, random, sys

async def one(loop, port, seed, size):
    payload = random.Random(seed).randbytes(size)
    done = loop.create_future()

    class Client(asyncio.Protocol):
        def connection_made(self, transport):
            self.buf = bytearray()
            transport.write(payload)
            transport.write_eof()          # half-close: the echo still arrives

        def data_received(self, data):
            self.buf += data

        def eof_received(self):
            return False

        def connection_lost(self, exc):
            if not done.done():
                done.set_result((bytes(self.buf), exc))

    await loop.create_connection(Client, '127.0.0.1', port)
    buf, exc = await asyncio.wait_for(done, 30)
    if exc is not None:
        return f"connection {seed}: connection_lost({exc!r})"
    if buf != payload:
        first = next((i for i, (a, b) in enumerate(zip(buf, payload)) if a != b), None)
        return f"connection {seed}: got {len(buf)} bytes, want {len(payload)}, first difference at {first}"
    return None

async def main(port, count, size):
    loop = asyncio.get_running_loop()
    errors = [e for e in await asyncio.gather(*(one(loop, port, s, size) for s in range(count))) if e]
    if errors:
        print("FAILED", *errors, sep="\n")
        sys.exit(1)
    print(f"OK {count} x {size}")

asyncio.run(main(int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])))
"#;

#[test]
fn python_asyncio_client_against_the_rust_echo_server() {
    if !python3_available() {
        panic!("python3 with asyncio is required for this test");
    }
    let mut server = EchoServerThread::start(100);
    for (count, size) in [(1usize, SIZE), (20, SIZE / 4)] {
        let before = server.stats.bytes.load(Ordering::Relaxed);
        let child = Command::new("python3")
            .args(["-c", PY_CLIENT, &server.port().to_string(), &count.to_string(), &size.to_string()])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let (ok, out, err) = wait_output(child, 60);
        assert!(ok, "python client failed:\n{out}\n{err}");
        assert_eq!(out.trim(), format!("OK {count} x {size}"), "{err}");
        assert_eq!(server.stats.bytes.load(Ordering::Relaxed) - before, count * size);
    }
    // Every connection closed cleanly on the server side.
    let deadline = Instant::now() + Duration::from_secs(10);
    while server.stats.lost_ok.load(Ordering::Relaxed) < 21 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(10));
    }
    assert_eq!(server.stats.lost_ok.load(Ordering::Relaxed), 21);
    assert!(server.stats.errors.lock().unwrap().is_empty());
    server.stop();
}

const PY_SERVER: &str = r#"
import asyncio, sys

class Echo(asyncio.Protocol):
    def connection_made(self, transport):
        self.transport = transport
    def data_received(self, data):
        self.transport.write(data)
    def eof_received(self):
        return False                       # close once the echo is flushed

async def main():
    loop = asyncio.get_running_loop()
    server = await loop.create_server(Echo, '127.0.0.1', 0)
    print(server.sockets[0].getsockname()[1], flush=True)
    # Serve until stdin closes.
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    await reader.read()

asyncio.run(main())
"#;

#[test]
fn rust_client_against_a_python_asyncio_echo_server() {
    if !python3_available() {
        panic!("python3 with asyncio is required for this test");
    }
    let mut child = Command::new("python3")
        .args(["-c", PY_SERVER])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    {
        let out = child.stdout.as_mut().unwrap();
        let mut b = [0u8; 1];
        while out.read(&mut b).unwrap() == 1 && b[0] != b'\n' {
            line.push(b[0] as char);
        }
    }
    let port: u16 = line.trim().parse().unwrap_or_else(|_| panic!("python server printed {line:?}"));

    let lp = EventLoop::new().unwrap();
    let payload = pattern(SIZE, 31);
    let p2 = payload.clone();
    let rec = Recorder::new().on_made(move |t| {
        t.write(&p2).unwrap();
        t.write_eof().unwrap();
    });
    let log = rec.log.clone();
    let f = lp.create_connection(move || rec, "127.0.0.1", port, ConnectOptions::default());
    complete(&lp, &f, 10.0).unwrap();
    must(&lp, 30.0, "echo and EOF from the python server", || log.borrow().is_lost());
    assert_bytes_eq(&log.borrow().data, &payload, "echo from python asyncio");
    assert!(log.borrow().lost_error().is_none());
    assert_contract(&log.borrow(), true, true);

    drop(child.stdin.take()); // stop the server
    let (ok, _out, err) = wait_output(child, 20);
    assert!(ok, "python server failed: {err}");
}

#[test]
fn socat_client_against_the_rust_echo_server() {
    let have_socat = Command::new("socat").arg("-V").stdout(Stdio::null()).stderr(Stdio::null()).status().is_ok();
    if !have_socat {
        println!("SKIPPED: socat not installed");
        return;
    }
    let mut server = EchoServerThread::start(100);
    let payload = pattern(SIZE, 32);
    let mut child = Command::new("socat")
        .args(["-t", "10", "-", &format!("TCP:127.0.0.1:{}", server.port())])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    let p2 = payload.clone();
    let writer = std::thread::spawn(move || {
        stdin.write_all(&p2).unwrap();
        // Dropping stdin: socat half-closes the TCP connection.
    });
    let mut stdout = child.stdout.take().unwrap();
    let reader = std::thread::spawn(move || {
        let mut v = Vec::new();
        stdout.read_to_end(&mut v).unwrap();
        v
    });
    let (ok, _, err) = wait_output(child, 30);
    writer.join().unwrap();
    let got = reader.join().unwrap();
    assert!(ok, "socat failed: {err}");
    assert_bytes_eq(&got, &payload, "echo through socat");
    assert_eq!(server.stats.bytes.load(Ordering::Relaxed), SIZE);
    server.stop();
}

#[test]
fn interleave_matches_asyncios_interleave_addrinfos() {
    // resolve::interleave against asyncio.base_events._interleave_addrinfos
    // (what create_connection(happy_eyeballs_delay=..., interleave=n) uses).
    if !python3_available() {
        panic!("python3 with asyncio is required for this test");
    }
    use std::net::SocketAddr;
    let cases: Vec<(Vec<&str>, usize)> = vec![
        (vec!["[::1]:1", "[::2]:1", "[::3]:1", "10.0.0.1:1", "10.0.0.2:1"], 1),
        (vec!["[::1]:1", "[::2]:1", "[::3]:1", "10.0.0.1:1", "10.0.0.2:1"], 2),
        (vec!["[::1]:1", "[::2]:1", "[::3]:1", "10.0.0.1:1", "10.0.0.2:1"], 5),
        (vec!["10.0.0.1:1", "[::1]:1", "10.0.0.2:1", "10.0.0.3:1", "[::2]:1"], 1),
        (vec!["10.0.0.1:1", "[::1]:1", "10.0.0.2:1", "10.0.0.3:1", "[::2]:1"], 3),
        (vec!["10.0.0.1:1", "10.0.0.2:1"], 1),
        (vec!["[::1]:1"], 2),
    ];
    let script = r#"
import socket, sys
from asyncio.base_events import _interleave_addrinfos
for line in sys.stdin.read().splitlines():
    n, *addrs = line.split()
    infos = []
    for a in addrs:
        host, port = a.rsplit(':', 1)
        fam = socket.AF_INET6 if host.startswith('[') else socket.AF_INET
        infos.append((fam, socket.SOCK_STREAM, 6, '', (host, int(port))))
    out = _interleave_addrinfos(infos, int(n))
    print(' '.join(f"{i[4][0]}:{i[4][1]}" for i in out))
"#;
    let input: String = cases.iter().map(|(a, n)| format!("{n} {}\n", a.join(" "))).collect();
    let mut child = Command::new("python3")
        .args(["-c", script])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(input.as_bytes()).unwrap();
    let (ok, out, err) = wait_output(child, 30);
    assert!(ok, "{err}");
    for ((addrs, n), line) in cases.iter().zip(out.lines()) {
        let parsed: Vec<SocketAddr> = addrs.iter().map(|a| a.parse().unwrap()).collect();
        let ours: Vec<String> = ferroloop::resolve::interleave(parsed, *n).iter().map(|a| a.to_string()).collect();
        assert_eq!(ours.join(" "), line, "interleave({addrs:?}, {n})");
    }
    assert_eq!(out.lines().count(), cases.len());
}
