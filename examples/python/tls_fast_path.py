"""TLS echo on ferroloop's fast path: ``ssl=ferroloop.TLSContext`` (rustls).

The server's records are encrypted and decrypted in Rust; one client uses
the fast path too, the other Python's own ``ssl.SSLContext`` (asyncio's
SSLProtocol over ferroloop's transport). The certificate is made for the
demo with the openssl command.

    python -m ferroloop examples/python/tls_fast_path.py
"""

import asyncio
import os
import ssl
import subprocess
import tempfile

import ferroloop


def make_certificate(directory):
    cert, key = os.path.join(directory, "cert.pem"), os.path.join(directory, "key.pem")
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
         "-days", "1", "-subj", "/CN=localhost", "-addext", "subjectAltName=DNS:localhost",
         "-addext", "basicConstraints=critical,CA:FALSE", "-keyout", key, "-out", cert],
        check=True, capture_output=True,
    )
    return cert, key


class EchoServerProtocol(asyncio.Protocol):
    def connection_made(self, transport):
        self.transport = transport
        tls = transport.get_extra_info("ssl_object")
        print(f"Server: connection over {tls.version()}, cipher {tls.cipher()[0]}, "
              f"ALPN {tls.selected_alpn_protocol()!r}")

    def data_received(self, data):
        self.transport.write(data)

    def eof_received(self):
        return False


async def client(name, port, ssl_context):
    reader, writer = await asyncio.open_connection("localhost", port, ssl=ssl_context)
    message = f"Hello over TLS from the {name} client!"
    writer.write(message.encode())
    echoed = (await reader.readexactly(len(message))).decode()
    print(f"{name} client: sent {message!r}, got {echoed!r} back "
          f"({writer.get_extra_info('cipher')[1]}, peer {writer.get_extra_info('peercert')['subject']})")
    writer.close()
    await writer.wait_closed()


async def main():
    loop = asyncio.get_running_loop()
    print(f"Event loop: {type(loop).__module__}.{type(loop).__name__}")
    with tempfile.TemporaryDirectory() as d:
        cert, key = make_certificate(d)
        server_ctx = ferroloop.TLSContext.server(cert, key, alpn_protocols=["echo/1"])
        server = await loop.create_server(EchoServerProtocol, "127.0.0.1", 0, ssl=server_ctx)
        port = server.sockets[0].getsockname()[1]

        await client("ferroloop.TLSContext", port, ferroloop.TLSContext.client(cafile=cert, alpn_protocols=["echo/1"]))
        await client("ssl.SSLContext", port, ssl.create_default_context(cafile=cert))

        server.close()
        await server.wait_closed()


ferroloop.run(main())
