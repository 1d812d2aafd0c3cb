"""Address resolution for ferroloop's servers and connections: a numeric
host needs no ``getaddrinfo`` (as asyncio: it resolves nothing then, so a
patched ``loop.getaddrinfo`` is not called either); any other name goes
through the loop's public ``getaddrinfo`` (the default executor)."""

from __future__ import annotations

import itertools
import socket

try:
    import ssl as _ssl
except ImportError:  # pragma: no cover - CPython without ssl
    _ssl = None

_HAS_IPV6 = hasattr(socket, "AF_INET6")


def check_ssl_socket(sock):
    """asyncio's refusal of an ``ssl.SSLSocket`` (its I/O would bypass TLS)."""
    if _ssl is not None and isinstance(sock, _ssl.SSLSocket):
        raise TypeError("Socket cannot be of type SSLSocket")


def numeric_addrinfo(host, port, family, type, proto, flowinfo=0, scopeid=0):
    """The one addrinfo tuple of a numeric ``host``, or None when ``host``
    (or ``port``, a service name) needs a real lookup."""
    if host is None or proto not in (0, socket.IPPROTO_TCP, socket.IPPROTO_UDP):
        return None
    if type == socket.SOCK_STREAM:
        proto = socket.IPPROTO_TCP
    elif type == socket.SOCK_DGRAM:
        proto = socket.IPPROTO_UDP
    else:
        return None
    if port is None or port == b"" or port == "":
        port = 0
    else:
        try:
            port = int(port)
        except (TypeError, ValueError):
            return None  # a service name: getaddrinfo knows it
    if family == socket.AF_UNSPEC:
        families = (socket.AF_INET, socket.AF_INET6) if _HAS_IPV6 else (socket.AF_INET,)
    else:
        families = (family,)
    if isinstance(host, bytes):
        host = host.decode("idna")
    if "%" in host:
        return None  # a zone index ('::1%lo'): inet_pton refuses it
    for af in families:
        try:
            socket.inet_pton(af, host)
        except OSError:
            continue
        if _HAS_IPV6 and af == socket.AF_INET6:
            return af, type, proto, "", (host, port, flowinfo, scopeid)
        return af, type, proto, "", (host, port)
    return None


async def ensure_resolved(loop, address, *, family=0, type=socket.SOCK_STREAM, proto=0, flags=0):
    """The addrinfo list of ``address`` (``(host, port, ...)``)."""
    host, port = address[:2]
    info = numeric_addrinfo(host, port, family, type, proto, *address[2:])
    if info is not None:
        return [info]
    return await loop.getaddrinfo(host, port, family=family, type=type, proto=proto, flags=flags)


def interleave_addrinfos(addrinfos, first_family_count=1):
    """``addrinfos`` reordered to alternate families (RFC 8305), the first
    family's first ``first_family_count`` addresses first."""
    by_family = {}
    for info in addrinfos:
        by_family.setdefault(info[0], []).append(info)
    lists = list(by_family.values())
    out = []
    if first_family_count > 1 and lists:
        out.extend(lists[0][: first_family_count - 1])
        del lists[0][: first_family_count - 1]
    out.extend(info for info in itertools.chain.from_iterable(itertools.zip_longest(*lists)) if info is not None)
    return out
