//! Run a child, stream its output as it comes, read its exit code: the
//! spec's "loop.subprocess_exec() and SubprocessProtocol" example on the
//! Rust face.
//!
//! Run: `cargo run --example subprocess`. The child prints three lines a
//! tenth of a second apart and exits with status 3; this prints:
//!
//! ```text
//! [stdout] line 1
//! [stdout] line 2
//! [stderr] warning on stderr
//! [stdout] line 3
//! process exited
//! exit code: 3
//! ```

use ferroloop::{EventLoop, SubprocessOptions, SubprocessProtocol, SubprocessTransport};

#[derive(Default)]
struct Stream {
    transport: Option<SubprocessTransport>,
}

impl SubprocessProtocol for Stream {
    fn connection_made(&mut self, transport: SubprocessTransport) {
        // Nothing to send: close the child's stdin at once.
        if let Some(stdin) = transport.get_pipe_transport(0) {
            stdin.close();
        }
        self.transport = Some(transport);
    }

    fn pipe_data_received(&mut self, fd: i32, data: &[u8]) {
        let name = if fd == 1 { "stdout" } else { "stderr" };
        for line in String::from_utf8_lossy(data).lines() {
            println!("[{name}] {line}");
        }
    }

    fn process_exited(&mut self) {
        println!("process exited");
    }
}

fn main() -> ferroloop::Result<()> {
    let lp = EventLoop::new()?;
    let script = "for i in 1 2 3; do echo line $i; sleep 0.1; \
                  [ $i = 2 ] && echo warning on stderr >&2; done; exit 3";
    let (transport, _protocol) =
        lp.run_until_complete(&lp.subprocess_shell(Stream::default, script, SubprocessOptions::default()))?;
    // Completes after connection_lost: the child exited and its pipes closed.
    let code = lp.run_until_complete(&transport.wait())?;
    println!("exit code: {code}");
    lp.close()
}
