//! Shared bits of the benchmark binaries: a tiny `--key value` argument
//! parser, the listen-address convention every echo server follows, and the
//! few OS helpers (file-descriptor limit, reading another process's CPU time
//! and RSS from `/proc`).
//!
//! Every echo server (Rust or Python) takes `--tcp HOST:PORT` (port 0 picks a
//! free port) or `--unix PATH`, and prints one line `LISTENING tcp:HOST:PORT`
//! or `LISTENING unix:PATH` on stdout once it accepts connections. It exits
//! cleanly (status 0) on SIGTERM or SIGINT, so that tools such as callgrind
//! can write their results.

use std::collections::HashMap;
use std::fs;
use std::io::{self, Write};

/// `--key value` and `--flag` arguments.
pub struct Args {
    values: HashMap<String, String>,
    flags: Vec<String>,
}

impl Args {
    /// Parse `std::env::args()`. `flags` lists the options that take no value.
    pub fn parse(flags: &[&str]) -> Args {
        let mut values = HashMap::new();
        let mut seen_flags = Vec::new();
        let mut it = std::env::args().skip(1);
        while let Some(a) = it.next() {
            let Some(key) = a.strip_prefix("--") else {
                die(&format!("unexpected argument {a:?}"));
            };
            if let Some((k, v)) = key.split_once('=') {
                values.insert(k.to_string(), v.to_string());
            } else if flags.contains(&key) {
                seen_flags.push(key.to_string());
            } else {
                let v = it.next().unwrap_or_else(|| die(&format!("--{key} needs a value")));
                values.insert(key.to_string(), v);
            }
        }
        Args { values, flags: seen_flags }
    }

    /// The value of `--key`, if given.
    pub fn get(&self, key: &str) -> Option<&str> {
        self.values.get(key).map(String::as_str)
    }

    /// The value of `--key` parsed as `T`, or `default`.
    pub fn num<T: std::str::FromStr>(&self, key: &str, default: T) -> T {
        match self.get(key) {
            None => default,
            Some(v) => v.parse().unwrap_or_else(|_| die(&format!("--{key}: cannot parse {v:?}"))),
        }
    }

    /// Whether `--flag` was given.
    pub fn flag(&self, key: &str) -> bool {
        self.flags.iter().any(|f| f == key)
    }
}

/// Print `msg` and exit with status 2.
/// A zeroed buffer of `len` bytes starting at a page boundary: the bytes of
/// `mem[start..start + len]`. A large `vec!` is a mapping of its own whose
/// bytes start 16 bytes into a page, and the kernel's copy into such a
/// buffer costs 2-3× that into an aligned one (4 KiB aliasing,
/// docs/benchmarks.md change 21): a floor server reads into an aligned one.
pub struct PageAligned {
    mem: Box<[u8]>,
    start: usize,
    len: usize,
}

impl PageAligned {
    /// `len` zeroed bytes from a page boundary.
    pub fn new(len: usize) -> Self {
        let mem = vec![0u8; len + 4096].into_boxed_slice();
        let start = mem.as_ptr().align_offset(4096).min(4096);
        PageAligned { mem, start, len }
    }

    /// The buffer.
    pub fn bytes(&mut self) -> &mut [u8] {
        &mut self.mem[self.start..self.start + self.len]
    }
}

pub fn die(msg: &str) -> ! {
    eprintln!("error: {msg}");
    std::process::exit(2)
}

/// Where a server listens or a client connects.
#[derive(Clone, Debug)]
pub enum Endpoint {
    /// A TCP address (`host:port`).
    Tcp(std::net::SocketAddr),
    /// A Unix socket path.
    Unix(String),
}

impl Endpoint {
    /// From `--tcp HOST:PORT` or `--unix PATH`; `default_tcp` when neither is given.
    pub fn from_args(args: &Args, default_tcp: &str) -> Endpoint {
        if let Some(p) = args.get("unix") {
            return Endpoint::Unix(p.to_string());
        }
        let s = args.get("tcp").unwrap_or(default_tcp);
        Endpoint::Tcp(s.parse().unwrap_or_else(|_| die(&format!("--tcp: not an address: {s:?}"))))
    }
}

/// Announce the listening address on stdout (the driver waits for this line).
pub fn announce(ep: &Endpoint) {
    let line = match ep {
        Endpoint::Tcp(a) => format!("LISTENING tcp:{a}"),
        Endpoint::Unix(p) => format!("LISTENING unix:{p}"),
    };
    let mut out = io::stdout().lock();
    let _ = writeln!(out, "{line}");
    let _ = out.flush();
}

/// Remove a stale Unix socket file before binding.
pub fn unlink_stale(path: &str) {
    let _ = fs::remove_file(path);
}

/// The open-file limit every benchmark process asks for (10,000 connections
/// need it, with room for a server that holds more than one fd per connection).
pub const NOFILE_WANTED: u64 = 65_536;

/// Raise `RLIMIT_NOFILE` to [`NOFILE_WANTED`] (possible as root, or where
/// the hard limit allows), else the soft limit to the hard limit. Returns the
/// soft limit in force.
pub fn raise_nofile() -> u64 {
    // SAFETY: getrlimit/setrlimit only read/write the struct we pass.
    unsafe {
        let mut rl = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut rl) != 0 {
            return 0;
        }
        if rl.rlim_max < NOFILE_WANTED {
            let want = libc::rlimit { rlim_cur: NOFILE_WANTED as _, rlim_max: NOFILE_WANTED as _ };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &want) == 0 {
                return NOFILE_WANTED;
            }
        }
        rl.rlim_cur = rl.rlim_max;
        libc::setrlimit(libc::RLIMIT_NOFILE, &rl);
        rl.rlim_cur
    }
}

/// Number of open file descriptors of `pid` (entries of `/proc/<pid>/fd`).
pub fn fd_count(pid: u32) -> io::Result<usize> {
    Ok(fs::read_dir(format!("/proc/{pid}/fd"))?.count())
}

/// Clock ticks per second for `/proc/<pid>/stat` times.
pub fn clock_ticks() -> u64 {
    // SAFETY: sysconf has no memory effects.
    let t = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if t > 0 {
        t as u64
    } else {
        100
    }
}

/// CPU time of a process, all threads: utime+stime from `/proc/<pid>/stat`
/// (clock ticks, converted to microseconds), and the sum over its threads of
/// `/proc/<pid>/task/*/schedstat` (nanoseconds on CPU, a finer cross-check).
#[derive(Clone, Copy, Debug, Default)]
pub struct CpuSample {
    /// utime+stime in microseconds (resolution one clock tick, usually 10 ms).
    pub stat_us: f64,
    /// utime alone (user space), microseconds.
    pub user_us: f64,
    /// Time on CPU from schedstat, microseconds (0 when unavailable).
    pub sched_us: f64,
}

/// Read the CPU time of `pid`.
pub fn cpu_sample(pid: u32) -> io::Result<CpuSample> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // Fields after the command name, which is in parentheses and may hold spaces.
    let rest = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
    let f: Vec<&str> = rest.split_whitespace().collect();
    // rest[0] is field 3 (state); utime is field 14, stime field 15.
    let utime: u64 = f.get(11).and_then(|v| v.parse().ok()).unwrap_or(0);
    let stime: u64 = f.get(12).and_then(|v| v.parse().ok()).unwrap_or(0);
    let tick_us = 1e6 / clock_ticks() as f64;
    let stat_us = (utime + stime) as f64 * tick_us;
    let user_us = utime as f64 * tick_us;
    let mut sched_ns = 0u64;
    if let Ok(dir) = fs::read_dir(format!("/proc/{pid}/task")) {
        for e in dir.flatten() {
            if let Ok(s) = fs::read_to_string(e.path().join("schedstat")) {
                sched_ns += s.split_whitespace().next().and_then(|v| v.parse().ok()).unwrap_or(0);
            }
        }
    }
    Ok(CpuSample { stat_us, user_us, sched_us: sched_ns as f64 / 1e3 })
}

/// Resident set size of `pid` in KiB (`VmRSS` of `/proc/<pid>/status`).
pub fn rss_kib(pid: u32) -> io::Result<u64> {
    let s = fs::read_to_string(format!("/proc/{pid}/status"))?;
    for line in s.lines() {
        if let Some(v) = line.strip_prefix("VmRSS:") {
            return Ok(v.trim().trim_end_matches("kB").trim().parse().unwrap_or(0));
        }
    }
    Ok(0)
}

/// Block SIGTERM and SIGINT in this thread and return a non-blocking
/// signalfd that becomes readable when one arrives (for the raw mio loop).
pub fn termination_signalfd() -> io::Result<std::os::fd::OwnedFd> {
    use std::os::fd::FromRawFd;
    // SAFETY: the sigset is initialised by sigemptyset before use; signalfd
    // returns a new descriptor that we own (checked for -1).
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, libc::SIGTERM);
        libc::sigaddset(&mut set, libc::SIGINT);
        if libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut()) != 0 {
            return Err(io::Error::last_os_error());
        }
        let fd = libc::signalfd(-1, &set, libc::SFD_NONBLOCK | libc::SFD_CLOEXEC);
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(std::os::fd::OwnedFd::from_raw_fd(fd))
    }
}

/// The byte pattern a load generator sends: `period` bytes without short
/// periods (xorshift), followed by its first `tail` bytes again, so that any
/// `tail`-byte slice from an offset below `period` is one contiguous slice.
pub fn pattern(period: usize, tail: usize) -> Vec<u8> {
    let mut x: u32 = 0x9E37_79B9;
    let mut p: Vec<u8> = (0..period)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            (x >> 24) as u8
        })
        .collect();
    let head: Vec<u8> = p.iter().copied().cycle().take(tail).collect();
    p.extend_from_slice(&head);
    p
}

/// The `p` quantile (0 to 1) of sorted nanosecond latencies, in microseconds (NaN when empty).
pub fn percentile(sorted: &[u64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let k = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[k] as f64 / 1e3
}

/// This process's CPU time (user + system), microseconds.
pub fn rusage_self_us() -> f64 {
    // SAFETY: getrusage writes only into the struct we pass.
    unsafe {
        let mut ru: libc::rusage = std::mem::zeroed();
        libc::getrusage(libc::RUSAGE_SELF, &mut ru);
        let tv = |t: libc::timeval| t.tv_sec as f64 * 1e6 + t.tv_usec as f64;
        tv(ru.ru_utime) + tv(ru.ru_stime)
    }
}

/// A JSON number with three decimals, or `null` for NaN and infinities.
pub fn num_or_null(v: f64) -> String {
    if v.is_finite() {
        format!("{v:.3}")
    } else {
        "null".into()
    }
}

/// The server-CPU fields of a measured window's JSON report (no braces):
/// the server's CPU time between samples `a` and `b` (utime+stime, utime,
/// schedstat), the same per message, the server's utilisation, and the
/// client's (`client_us` of its own CPU time over the window).
pub fn cpu_fields(a: Option<CpuSample>, b: Option<CpuSample>, msgs: f64, elapsed: f64, client_us: f64) -> String {
    let (cpu, user, sched) = match (a, b) {
        (Some(a), Some(b)) => (b.stat_us - a.stat_us, b.user_us - a.user_us, b.sched_us - a.sched_us),
        _ => (f64::NAN, f64::NAN, f64::NAN),
    };
    format!(
        concat!(
            "\"server_cpu_us\": {}, \"server_user_us\": {}, \"server_sched_us\": {}, \"server_cpu_us_per_msg\": {}, ",
            "\"server_sched_us_per_msg\": {}, \"server_util\": {}, \"client_util\": {}"
        ),
        num_or_null(cpu),
        num_or_null(user),
        num_or_null(sched),
        num_or_null(cpu / msgs),
        num_or_null(sched / msgs),
        num_or_null(cpu / (elapsed * 1e6)),
        num_or_null(client_us / (elapsed * 1e6)),
    )
}
