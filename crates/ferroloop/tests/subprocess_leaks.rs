//! 1,000 children through the subprocess transport leave no descriptor and
//! no zombie behind. Alone in its binary: descriptors are counted for the
//! whole process, which other tests running in parallel would disturb.

mod common;

use std::collections::HashSet;

use common::*;
use ferroloop::{EventLoop, Stdio, SubprocessOptions, SubprocessProtocol, SubprocessTransport};

fn open_fds() -> HashSet<String> {
    std::fs::read_dir("/proc/self/fd")
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect()
}

/// Children of this process still in the process table (running or zombie).
fn child_pids() -> Vec<u32> {
    let me = std::process::id().to_string();
    let mut out = Vec::new();
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        let Ok(pid) = name.parse::<u32>() else { continue };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else { continue };
        // pid (comm) state ppid ...: comm may hold spaces, so split after ')'.
        let Some(rest) = stat.rsplit_once(')').map(|(_, r)| r) else { continue };
        let fields: Vec<&str> = rest.split_whitespace().collect();
        if fields.get(1) == Some(&me.as_str()) {
            out.push(pid);
        }
    }
    out
}

#[derive(Default)]
struct Quiet {
    out: usize,
}

impl SubprocessProtocol for Quiet {
    fn connection_made(&mut self, t: SubprocessTransport) {
        if let Some(stdin) = t.get_pipe_transport(0) {
            stdin.write(b"x").unwrap();
            stdin.close();
        }
    }
    fn pipe_data_received(&mut self, _fd: i32, data: &[u8]) {
        self.out += data.len();
    }
}

#[test]
fn a_thousand_spawns_leave_no_fd_and_no_zombie() {
    let lp = EventLoop::new().unwrap();
    // Warm up: the loop's own descriptors (epoll, waker) exist before counting.
    let (t, _) = complete(&lp, &lp.subprocess_exec(Quiet::default, "true", [""; 0], SubprocessOptions::default()), 10.0).unwrap();
    complete(&lp, &t.wait(), 10.0).unwrap();
    drop(t);
    let fds_before = open_fds();
    let sources_before = lp.registered_sources();

    let mut total_out = 0;
    for batch in 0..20 {
        let mut waits = Vec::new();
        for i in 0..50 {
            // Mix the stdio kinds so that every path closes what it opened.
            let opts = match i % 4 {
                0 => SubprocessOptions::default(),
                1 => SubprocessOptions { stderr: Stdio::Stdout, ..Default::default() },
                2 => SubprocessOptions { stdin: Stdio::Null, stdout: Stdio::Null, stderr: Stdio::Null, ..Default::default() },
                _ => SubprocessOptions { stdin: Stdio::Inherit, stderr: Stdio::Null, ..Default::default() },
            };
            let fut = lp.subprocess_exec(Quiet::default, "cat", [""; 0], opts);
            waits.push(fut);
        }
        for fut in waits {
            let (t, p) = complete(&lp, &fut, 30.0).unwrap_or_else(|e| panic!("batch {batch}: {e}"));
            let rc = complete(&lp, &t.wait(), 30.0).unwrap();
            assert_eq!(rc, 0);
            total_out += p.borrow().out;
        }
    }
    assert!(total_out >= 500, "the piped children echoed their byte ({total_out})");
    assert_eq!(lp.registered_sources(), sources_before, "every pipe and pidfd is deregistered");
    let fds_after = open_fds();
    let leaked: Vec<_> = fds_after.difference(&fds_before).collect();
    assert!(leaked.is_empty(), "descriptors leaked: {leaked:?}");
    assert_eq!(child_pids(), Vec::<u32>::new(), "children left in the process table (zombies)");
}
