//! Helpers shared by the examples: print values the way Python's `repr` does,
//! so that the transcripts match the spec's Python examples line for line.

#![allow(dead_code)]

use ferroloop::Address;

/// Python's `repr()` of a `str`.
pub fn repr(s: &str) -> String {
    let quote = if s.contains('\'') && !s.contains('"') { '"' } else { '\'' };
    let mut out = String::with_capacity(s.len() + 2);
    out.push(quote);
    for c in s.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if c == quote => {
                out.push('\\');
                out.push(c)
            }
            c if (c as u32) < 0x20 || c as u32 == 0x7f => out.push_str(&format!("\\x{:02x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push(quote);
    out
}

/// Python's `repr()` of a socket address tuple, e.g. `('127.0.0.1', 8888)`.
pub fn addr_repr(a: &Address) -> String {
    match a {
        Address::Inet(std::net::SocketAddr::V4(v4)) => format!("('{}', {})", v4.ip(), v4.port()),
        Address::Inet(std::net::SocketAddr::V6(v6)) => {
            format!("('{}', {}, {}, {})", v6.ip(), v6.port(), v6.flowinfo(), v6.scope_id())
        }
        Address::Unix(p) => repr(p),
    }
}
