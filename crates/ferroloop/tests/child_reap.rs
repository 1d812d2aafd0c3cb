//! A child still running when its loop closes is reaped once it exits (no
//! zombie for the life of the process), with either child watcher.

use std::process::Command;
use std::time::{Duration, Instant};

use ferroloop::{ChildWatcher, EventLoop};

/// The process state letter of `pid` ('Z' for a zombie), or None once gone.
fn state(pid: u32) -> Option<char> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    stat.rsplit_once(')')?.1.split_whitespace().next()?.chars().next()
}

fn check(watcher: ChildWatcher) {
    let child = Command::new("sleep").arg("0.3").spawn().expect("spawn sleep");
    let pid = child.id();
    let lp = EventLoop::new().unwrap();
    lp.set_child_watcher(watcher);
    lp.watch_child(pid, |_| panic!("the loop is closed before the child exits")).unwrap();
    // One turn of the loop, so that the watch is in place and running.
    let stop = lp.clone();
    lp.call_later(0.02, move || stop.stop()).unwrap();
    lp.run_forever().unwrap();
    lp.close().unwrap();
    drop(lp);
    assert!(matches!(state(pid), Some('S') | Some('R')), "the child still runs: {:?}", state(pid));
    let deadline = Instant::now() + Duration::from_secs(10);
    while state(pid).is_some() {
        assert!(Instant::now() < deadline, "child {pid} left as {:?} after its loop closed", state(pid));
        std::thread::sleep(Duration::from_millis(20));
    }
    drop(child);
}

#[test]
fn pidfd_watched_child_outliving_its_loop_is_reaped() {
    check(ChildWatcher::Auto);
}

#[test]
fn sigchld_watched_child_outliving_its_loop_is_reaped() {
    check(ChildWatcher::Sigchld);
}
