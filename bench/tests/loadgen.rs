//! The load generator against the Rust echo servers: every byte verified, in
//! a single run and in `--commands` mode (several windows on the same
//! connections, as `bench/run.py` interleaves them). Correctness only: no
//! timing is asserted.

use std::io::{BufRead, BufReader, Write};
use std::process::{Child, Command, Stdio};

/// An echo server on a free port, stopped on drop.
struct Server {
    child: Child,
    endpoint: String,
}

impl Server {
    fn start(exe: &str, mode: &str) -> Server {
        let mut child = Command::new(exe)
            .args(["--mode", mode, "--tcp", "127.0.0.1:0"])
            .stdout(Stdio::piped())
            .spawn()
            .expect("the echo server starts");
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap()).read_line(&mut line).unwrap();
        let endpoint = line.trim().strip_prefix("LISTENING tcp:").unwrap_or_else(|| panic!("not a LISTENING line: {line:?}")).to_string();
        Server { child, endpoint }
    }

    fn pid(&self) -> String {
        self.child.id().to_string()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A JSON number field of one loadgen report line.
fn field(json: &str, key: &str) -> f64 {
    let pat = format!("\"{key}\": ");
    let at = json.find(&pat).unwrap_or_else(|| panic!("no {key} in {json}")) + pat.len();
    let rest = &json[at..];
    let end = rest.find([',', '}']).unwrap();
    rest[..end].trim().parse().unwrap_or_else(|_| panic!("{key} is not a number in {json}"))
}

fn within(v: f64, lo: f64, hi: f64, json: &str) {
    assert!((lo..=hi).contains(&v), "{v} not in [{lo}, {hi}]: {json}");
}

fn loadgen(args: &[&str]) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_loadgen"));
    c.args(args);
    c
}

#[test]
fn a_run_echoes_every_byte_and_counts_the_messages() {
    for mode in ["protocol", "buffered"] {
        let srv = Server::start(env!("CARGO_BIN_EXE_echo-ferroloop"), mode);
        let out = loadgen(&["--tcp", &srv.endpoint, "--conns", "8", "--size", "1000", "--depth", "2", "--messages", "2000", "--warmup", "0", "--server-pid", &srv.pid()])
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        let json = String::from_utf8(out.stdout).unwrap();
        assert!(json.contains("\"ok\": true"), "{json}");
        let messages = field(&json, "messages");
        assert!(messages >= 2000.0, "{json}");
        // A message is counted when its last byte is back; the window's
        // edges may cut into the messages in flight (8 connections x 2).
        within(field(&json, "bytes"), (messages - 16.0) * 1000.0, (messages + 16.0) * 1000.0, &json);
        // Every byte sent came back verified: the prime message, then what
        // the window and the drain echoed.
        assert!(field(&json, "verified_bytes") >= field(&json, "bytes") + 8.0 * 1000.0, "{json}");
        assert!(field(&json, "server_sched_us") > 0.0, "{json}");
    }
}

#[test]
fn command_mode_measures_one_window_per_run_on_the_same_connections() {
    let srv = Server::start(env!("CARGO_BIN_EXE_echo-mio"), "protocol");
    let mut child = loadgen(&["--tcp", &srv.endpoint, "--conns", "4", "--size", "100", "--duration", "0.05", "--warmup", "0.01", "--commands", "--server-pid", &srv.pid()])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let ready = lines.next().unwrap().unwrap();
    assert!(ready.contains("\"ready\": true"), "{ready}");
    let mut verified = Vec::new();
    for _ in 0..3 {
        writeln!(stdin, "run").unwrap();
        let json = lines.next().unwrap().unwrap();
        assert!(json.contains("\"ok\": true"), "{json}");
        assert!(field(&json, "messages") > 0.0, "{json}");
        let messages = field(&json, "messages");
        within(field(&json, "bytes"), (messages - 4.0) * 100.0, (messages + 4.0) * 100.0, &json);
        verified.push(field(&json, "verified_bytes"));
    }
    // The connections carry on from window to window: what they verified
    // only grows.
    assert!(verified.windows(2).all(|w| w[1] > w[0]), "{verified:?}");
    writeln!(stdin, "quit").unwrap();
    drop(stdin);
    assert!(child.wait().unwrap().success());
    assert!(lines.next().is_none());
}

#[test]
fn command_mode_rejects_an_unknown_command() {
    let srv = Server::start(env!("CARGO_BIN_EXE_echo-mio"), "protocol");
    let mut child = loadgen(&["--tcp", &srv.endpoint, "--duration", "0.05", "--warmup", "0", "--commands"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    writeln!(child.stdin.as_mut().unwrap(), "jump").unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("unknown command"), "{}", String::from_utf8_lossy(&out.stderr));
}
