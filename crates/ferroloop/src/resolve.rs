//! Name resolution off the loop thread.
//!
//! IP literals and "all interfaces" are answered at once; names are looked up
//! with the system resolver (`getaddrinfo`) on a helper thread, whose answer
//! comes back through the loop's thread-safe queue. The loop never blocks.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, ToSocketAddrs};

use crate::error::{Error, Result};
use crate::event_loop::EventLoop;
use crate::future::LoopFuture;

/// An address family filter (asyncio's `family=` argument).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Family {
    /// IPv4 only (`AF_INET`).
    V4,
    /// IPv6 only (`AF_INET6`).
    V6,
}

impl Family {
    pub(crate) fn matches(self, a: &SocketAddr) -> bool {
        match self {
            Family::V4 => a.is_ipv4(),
            Family::V6 => a.is_ipv6(),
        }
    }
}

/// Parse an IP literal (`"127.0.0.1"`, `"::1"`, `"[::1]"`).
pub(crate) fn parse_ip(host: &str) -> Option<IpAddr> {
    let h = host.strip_prefix('[').and_then(|h| h.strip_suffix(']')).unwrap_or(host);
    h.parse().ok()
}

/// Addresses for `host:port`. `None` means every interface (`AI_PASSIVE`):
/// `0.0.0.0` and `::`.
pub(crate) fn resolve(lp: &EventLoop, host: Option<&str>, port: u16) -> LoopFuture<Vec<SocketAddr>> {
    let Some(host) = host else {
        return LoopFuture::ready(Ok(vec![
            SocketAddr::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), port),
            SocketAddr::new(IpAddr::V6(Ipv6Addr::UNSPECIFIED), port),
        ]));
    };
    if host.is_empty() {
        return resolve(lp, None, port);
    }
    if let Some(ip) = parse_ip(host) {
        return LoopFuture::ready(Ok(vec![SocketAddr::new(ip, port)]));
    }
    let fut = LoopFuture::new();
    let key = lp.inner_resolutions_insert(fut.clone());
    let remote = lp.remote();
    let host = host.to_string();
    let spawned = std::thread::Builder::new().name("ferroloop-resolve".into()).spawn(move || {
        let result = (host.as_str(), port).to_socket_addrs().map(|it| dedup(it.collect())).map_err(|e| {
            Error::Resolve { host: host.clone(), message: e.to_string() }
        });
        let _ = remote.call_soon_threadsafe_with_loop(move |lp: &EventLoop| {
            if let Some(fut) = lp.inner_resolutions_remove(key) {
                fut.set(result);
            }
        });
    });
    if let Err(e) = spawned {
        if let Some(fut) = lp.inner_resolutions_remove(key) {
            fut.set(Err(Error::Io(e)));
        }
    }
    fut
}

fn dedup(addrs: Vec<SocketAddr>) -> Vec<SocketAddr> {
    let mut out: Vec<SocketAddr> = Vec::with_capacity(addrs.len());
    for a in addrs {
        if !out.contains(&a) {
            out.push(a);
        }
    }
    out
}

/// Resolve several hosts and concatenate the answers (duplicates removed).
pub(crate) fn resolve_all(lp: &EventLoop, hosts: Vec<Option<String>>, port: u16) -> LoopFuture<Vec<SocketAddr>> {
    let out = LoopFuture::new();
    let futs: Vec<_> = hosts.iter().map(|h| resolve(lp, h.as_deref(), port)).collect();
    let remaining = std::rc::Rc::new(std::cell::Cell::new(futs.len()));
    if futs.is_empty() {
        out.set(Ok(Vec::new()));
        return out;
    }
    let futs = std::rc::Rc::new(futs);
    for f in futs.iter() {
        let (out, remaining, futs) = (out.clone(), remaining.clone(), futs.clone());
        f.add_done_callback(move || {
            remaining.set(remaining.get() - 1);
            if remaining.get() > 0 {
                return;
            }
            let mut all = Vec::new();
            for f in futs.iter() {
                match f.take_result() {
                    Some(Ok(v)) => all.extend(v),
                    Some(Err(e)) => {
                        out.set(Err(e));
                        return;
                    }
                    None => {}
                }
            }
            out.set(Ok(dedup(all)));
        });
    }
    out
}

/// Reorder addresses as RFC 8305 and asyncio's `interleave` do: the first
/// `first_family_count` addresses of the first family, then one of each
/// family in turn.
pub fn interleave(addrs: Vec<SocketAddr>, first_family_count: usize) -> Vec<SocketAddr> {
    let mut groups: Vec<Vec<SocketAddr>> = Vec::new();
    for a in addrs {
        match groups.iter_mut().find(|g| g[0].is_ipv4() == a.is_ipv4()) {
            Some(g) => g.push(a),
            None => groups.push(vec![a]),
        }
    }
    let mut out = Vec::new();
    if first_family_count > 1 && !groups.is_empty() {
        let n = (first_family_count - 1).min(groups[0].len());
        out.extend(groups[0].drain(..n));
    }
    let mut iters: Vec<_> = groups.into_iter().map(|g| g.into_iter()).collect();
    loop {
        let mut any = false;
        for it in iters.iter_mut() {
            if let Some(a) = it.next() {
                out.push(a);
                any = true;
            }
        }
        if !any {
            return out;
        }
    }
}

impl EventLoop {
    /// Resolve `host:port` without blocking the loop (asyncio's `getaddrinfo`
    /// for stream sockets). `None` means all interfaces.
    pub fn getaddrinfo(&self, host: Option<&str>, port: u16) -> Result<LoopFuture<Vec<SocketAddr>>> {
        self.check_closed()?;
        Ok(resolve(self, host, port))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn a(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    #[test]
    fn interleave_alternates_families() {
        let addrs = vec![a("[::1]:1"), a("[::2]:1"), a("[::3]:1"), a("10.0.0.1:1"), a("10.0.0.2:1")];
        assert_eq!(
            interleave(addrs.clone(), 1),
            vec![a("[::1]:1"), a("10.0.0.1:1"), a("[::2]:1"), a("10.0.0.2:1"), a("[::3]:1")]
        );
        assert_eq!(
            interleave(addrs, 2),
            vec![a("[::1]:1"), a("[::2]:1"), a("10.0.0.1:1"), a("[::3]:1"), a("10.0.0.2:1")]
        );
    }

    #[test]
    fn literals() {
        assert_eq!(parse_ip("[::1]"), Some("::1".parse().unwrap()));
        assert_eq!(parse_ip("127.0.0.1"), Some("127.0.0.1".parse().unwrap()));
        assert_eq!(parse_ip("localhost"), None);
    }
}
