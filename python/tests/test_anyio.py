"""anyio on ferroloop: `anyio.run(main, backend="asyncio",
backend_options={"loop_factory": ferroloop.new_event_loop})`. The running loop is
the factory's; a TCP echo through anyio's create_tcp_listener (sock_accept,
connect_accepted_socket underneath) and connect_tcp (create_connection),
concurrent clients, a megabyte each way with a half-close; a UDP echo; a
subprocess and a worker thread. Every test runs on stock asyncio too (the
``flavor`` fixture), as the oracle."""

from __future__ import annotations

import gc
import sys

import pytest

anyio = pytest.importorskip("anyio")
from anyio.abc import SocketAttribute  # noqa: E402


def run_on(flavor, func):
    try:
        return anyio.run(func, backend="asyncio", backend_options={"loop_factory": flavor.new_event_loop})
    finally:
        # anyio.run's closed loop lives on in a reference cycle; ferroloop's keeps
        # its descriptors until it is freed (test_loop_api.py::
        # test_close_releases_the_loops_descriptors). Freed here, as the `loop`
        # fixture frees its loop, not in a later test that counts descriptors.
        gc.collect()


def assert_loop_is(flavor):
    import asyncio

    module = type(asyncio.get_running_loop()).__module__
    assert module.startswith("ferroloop" if flavor.is_ferroloop else "asyncio"), module


async def _echo_handler(stream):
    async with stream:
        try:
            while True:
                await stream.send(await stream.receive())
        except anyio.EndOfStream:
            pass


async def _echo_client(port, payload):
    async with await anyio.connect_tcp("127.0.0.1", port) as client:
        assert client.extra(SocketAttribute.remote_port) == port
        received = bytearray()

        async def send_all():
            view = memoryview(payload)
            for i in range(0, len(view), 65536):
                await client.send(view[i : i + 65536])
            await client.send_eof()

        async with anyio.create_task_group() as tg:
            tg.start_soon(send_all)
            try:
                while True:
                    received += await client.receive()
            except anyio.EndOfStream:
                pass
        return bytes(received)


def test_anyio_tcp_echo(flavor):
    payloads = [bytes([i]) * (1 << 20) + b"end%d" % i for i in range(4)]

    async def main():
        assert_loop_is(flavor)
        with anyio.fail_after(30):
            listener = await anyio.create_tcp_listener(local_host="127.0.0.1", local_port=0)
            port = listener.extra(SocketAttribute.local_port)
            results = {}

            async def client(i):
                results[i] = await _echo_client(port, payloads[i])

            async with listener, anyio.create_task_group() as server_tg:
                server_tg.start_soon(listener.serve, _echo_handler)
                async with anyio.create_task_group() as tg:
                    for i in range(len(payloads)):
                        tg.start_soon(client, i)
                server_tg.cancel_scope.cancel()
            return results

    results = run_on(flavor, main)
    assert [results[i] == payloads[i] for i in range(len(payloads))] == [True] * len(payloads)


def test_anyio_udp_echo(flavor):
    async def main():
        assert_loop_is(flavor)
        with anyio.fail_after(20):
            async with await anyio.create_udp_socket(local_host="127.0.0.1") as server:
                port = server.extra(SocketAttribute.local_port)

                async def serve():
                    async for data, addr in server:
                        await server.sendto(b"echo:" + data, *addr)

                async with anyio.create_task_group() as tg:
                    tg.start_soon(serve)
                    async with await anyio.create_connected_udp_socket("127.0.0.1", port) as client:
                        answers = []
                        for text in (b"one", b"two", b"x" * 1000):
                            await client.send(text)
                            answers.append(await client.receive())
                    tg.cancel_scope.cancel()
                return answers

    assert run_on(flavor, main) == [b"echo:one", b"echo:two", b"echo:" + b"x" * 1000]


def test_anyio_subprocess_and_thread(flavor):
    async def main():
        assert_loop_is(flavor)
        with anyio.fail_after(20):
            result = await anyio.run_process(
                [sys.executable, "-c", "import sys; sys.stdout.write(sys.stdin.read().upper()); sys.exit(3)"],
                input=b"through a pipe", check=False,
            )
            in_thread = await anyio.to_thread.run_sync(lambda: sum(range(1000)))
            return result.returncode, result.stdout, in_thread

    assert run_on(flavor, main) == (3, b"THROUGH A PIPE", 499500)
