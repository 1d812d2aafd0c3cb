"""Pipe transports, subprocesses and child watching, on both loops.

Every test runs on stock asyncio (the oracle) and on ferroloop (the
``loop``/``flavor`` fixtures of conftest). ferroloop's pipe transports are
the engine's; its subprocess transport is asyncio's own
``BaseSubprocessTransport`` over them, with the child's exit from the
engine's pidfd watcher.
"""

from __future__ import annotations

import asyncio
import gc
import io
import os
import signal
import socket
import stat
import subprocess
import sys
import threading
import time

import pytest

from conftest import run

PY = sys.executable


def pattern(n, seed):
    """``n`` deterministic bytes, different per ``seed``."""
    block = (seed.to_bytes(4, "little") + bytes(range(256))) * (1 + n // 260)
    return bytes(block[:n])


class PipeRecorder(asyncio.Protocol):
    """Records a read pipe protocol's calls."""

    def __init__(self, loop):
        self.events = []
        self.data = bytearray()
        self.transport = None
        self.done = loop.create_future()

    def connection_made(self, transport):
        self.transport = transport
        self.events.append("made")

    def data_received(self, data):
        assert data
        if not self.events or self.events[-1] != "data":
            self.events.append("data")
        self.data += data

    def eof_received(self):
        self.events.append("eof")

    def connection_lost(self, exc):
        self.events.append(("lost", exc))
        self.done.set_result(exc)


class WriteRecorder(asyncio.BaseProtocol):
    def __init__(self, loop):
        self.events = []
        self.transport = None
        self.done = loop.create_future()

    def connection_made(self, transport):
        self.transport = transport
        self.events.append("made")

    def pause_writing(self):
        self.events.append(("pause", self.transport.get_write_buffer_size()))

    def resume_writing(self):
        self.events.append(("resume", self.transport.get_write_buffer_size()))

    def connection_lost(self, exc):
        self.events.append(("lost", exc))
        self.done.set_result(exc)


def _reader_thread(fd, out):
    def body():
        with open(fd, "rb", buffering=0, closefd=True) as f:
            while True:
                chunk = f.read(65536)
                if not chunk:
                    return
                out.append(chunk)

    t = threading.Thread(target=body, daemon=True)
    t.start()
    return t


# ----------------------------------------------------------------------------- read pipes


def test_read_pipe_data_eof_lost(loop):
    r, w = os.pipe()
    pipe = open(r, "rb", buffering=0)

    async def main():
        t, p = await loop.connect_read_pipe(lambda: PipeRecorder(loop), pipe)
        assert isinstance(t, asyncio.ReadTransport)
        assert t.get_extra_info("pipe") is pipe
        assert t.get_extra_info("socket") is None
        assert t.is_reading()
        assert not t.is_closing()
        assert p.events == ["made"]
        os.write(w, b"hello ")
        os.write(w, b"world")
        os.close(w)
        exc = await p.done
        assert exc is None
        return t, p

    t, p = run(loop, main())
    assert bytes(p.data) == b"hello world"
    assert p.events == ["made", "data", "eof", ("lost", None)]
    assert t.is_closing()
    assert pipe.closed, "the transport closes the pipe object after connection_lost"


def test_read_pipe_large_and_small_writes_arrive_in_order(loop):
    """A read pipe's reads switch between the loop's buffer (small) and a bytes of their own (large): the
    bytes come in order, and each chunk delivered stays as it was."""
    r, w = os.pipe()
    pipe = open(r, "rb", buffering=0)
    pattern = bytes(range(251)) * 2000
    writes = [pattern[:70_000], b"x", pattern[:200_000], pattern[5:105], pattern[:40_000]]

    async def main():
        t, p = await loop.connect_read_pipe(lambda: PipeRecorder(loop), pipe)
        kept = []
        orig = p.data_received

        def data_received(data):
            kept.append((data, bytes(bytearray(data))))
            orig(data)

        p.data_received = data_received
        for chunk in writes:
            await loop.run_in_executor(None, _write_all, w, chunk)
            await asyncio.sleep(0.01)
        os.close(w)
        assert await p.done is None
        return p, kept

    p, kept = run(loop, main())
    assert bytes(p.data) == b"".join(writes)
    assert all(d == snap for d, snap in kept)


def _write_all(fd, data):
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


def test_read_pipe_data_received_exception_is_reported_and_reading_goes_on(loop):
    # asyncio's read pipe transport calls data_received unguarded: the
    # exception reaches the exception handler as a callback's, the pipe
    # stays open and later data still arrives.
    r, w = os.pipe()
    errors = []
    loop.set_exception_handler(lambda lp, ctx: errors.append(ctx))

    class Flaky(PipeRecorder):
        def __init__(self, loop):
            super().__init__(loop)
            self.first = loop.create_future()

        def data_received(self, data):
            super().data_received(data)
            if len(self.data) == 3:
                self.first.set_result(None)
                raise ValueError("boom")

    async def main():
        t, p = await loop.connect_read_pipe(lambda: Flaky(loop), open(r, "rb", buffering=0))
        os.write(w, b"abc")
        await p.first
        await asyncio.sleep(0.05)
        assert not t.is_closing()
        os.write(w, b"def")
        os.close(w)
        assert await p.done is None
        return p

    p = run(loop, main())
    assert bytes(p.data) == b"abcdef"
    assert p.events == ["made", "data", "eof", ("lost", None)]
    assert len(errors) == 1
    assert isinstance(errors[0]["exception"], ValueError)
    assert errors[0]["message"].startswith("Exception in callback")


def test_read_pipe_pause_and_resume(loop):
    r, w = os.pipe()
    want = pattern(1 << 20, 1)
    writer = threading.Thread(target=lambda: (os.write(w, want) and None, os.close(w)), daemon=True)

    async def main():
        p = PipeRecorder(loop)
        paused = loop.create_future()

        def data_received(data, orig=p.data_received):
            orig(data)
            if not paused.done() and len(p.data) >= 100_000:
                p.transport.pause_reading()
                assert not p.transport.is_reading()
                paused.set_result(len(p.data))

        p.data_received = data_received
        t, _ = await loop.connect_read_pipe(lambda: p, open(r, "rb", buffering=0))
        writer.start()
        at_pause = await paused
        await asyncio.sleep(0.3)
        assert len(p.data) == at_pause, "data delivered while reading is paused"
        t.resume_reading()
        assert t.is_reading()
        await p.done
        return p

    p = run(loop, main())
    writer.join()
    assert bytes(p.data) == want


def test_read_pipe_close_without_eof(loop):
    r, w = os.pipe()

    async def main():
        t, p = await loop.connect_read_pipe(lambda: PipeRecorder(loop), open(r, "rb", buffering=0))
        t.close()
        assert t.is_closing()
        assert p.events == ["made"], "connection_lost is not called from inside close()"
        await p.done
        return p

    p = run(loop, main())
    assert p.events == ["made", ("lost", None)]
    with pytest.raises(BrokenPipeError):
        os.write(w, b"x")
    os.close(w)


def test_pipe_transports_refuse_regular_files(loop, tmp_path):
    path = tmp_path / "regular"
    path.write_bytes(b"x")

    async def main():
        with open(path, "rb") as f:
            with pytest.raises(ValueError, match=r"^Pipe transport is for pipes/sockets only\.$"):
                await loop.connect_read_pipe(asyncio.Protocol, f)
        with open(path, "wb") as f:
            with pytest.raises(ValueError, match="^Pipe transport is only for pipes, sockets and character devices$"):
                await loop.connect_write_pipe(asyncio.BaseProtocol, f)

    run(loop, main())


# ----------------------------------------------------------------------------- write pipes


def test_write_pipe_flow_control_and_write_eof(loop):
    r, w = os.pipe()
    chunks = []
    data = pattern(1 << 20, 2)

    async def main():
        t, p = await loop.connect_write_pipe(lambda: WriteRecorder(loop), open(w, "wb", buffering=0))
        assert isinstance(t, asyncio.WriteTransport)
        assert t.can_write_eof()
        assert t.get_write_buffer_limits() == (16384, 65536)
        with pytest.raises(ValueError, match=r"high \(1\) must be >= low \(2\) must be >= 0"):
            t.set_write_buffer_limits(high=1, low=2)
        t.write(data)
        assert t.get_write_buffer_size() > 0, "1 MiB does not fit in a pipe"
        assert p.events[-1][0] == "pause"
        reader = _reader_thread(r, chunks)
        t.write_eof()
        assert t.is_closing()
        t.write(b"dropped")  # writes after write_eof/close are dropped, no error
        exc = await p.done
        assert exc is None
        return reader, p

    reader, p = run(loop, main())
    reader.join(10)
    assert b"".join(chunks) == data
    assert p.events[0] == "made"
    assert p.events[-1] == ("lost", None)
    assert [e[0] for e in p.events[1:-1]] == ["pause", "resume"]


def test_write_pipe_reader_gone_idle_and_busy(loop):
    async def idle():
        r, w = os.pipe()
        t, p = await loop.connect_write_pipe(lambda: WriteRecorder(loop), open(w, "wb", buffering=0))
        t.write(b"fits")
        os.close(r)
        assert await p.done is None  # nothing queued: a clean close, as asyncio

    async def busy():
        r, w = os.pipe()
        t, p = await loop.connect_write_pipe(lambda: WriteRecorder(loop), open(w, "wb", buffering=0))
        t.write(pattern(1 << 20, 3))
        await asyncio.sleep(0.05)
        os.close(r)
        exc = await p.done
        assert isinstance(exc, BrokenPipeError)
        assert t.get_write_buffer_size() == 0

    run(loop, idle())
    run(loop, busy())


def test_write_pipe_abort(loop):
    r, w = os.pipe()

    async def main():
        t, p = await loop.connect_write_pipe(lambda: WriteRecorder(loop), open(w, "wb", buffering=0))
        t.write(pattern(1 << 20, 4))
        queued = t.get_write_buffer_size()
        t.abort()
        assert t.get_write_buffer_size() == 0
        assert await p.done is None
        return queued

    queued = run(loop, main())
    got = b""
    while True:
        chunk = os.read(r, 1 << 20)
        if not chunk:
            break
        got += chunk
    os.close(r)
    assert len(got) == (1 << 20) - queued


def test_sockets_as_pipes(loop):
    a, b = socket.socketpair()
    c, d = socket.socketpair()

    async def main():
        rt, rp = await loop.connect_read_pipe(lambda: PipeRecorder(loop), a)
        wt, wp = await loop.connect_write_pipe(lambda: WriteRecorder(loop), c)
        b.sendall(b"via socket")
        b.shutdown(socket.SHUT_WR)
        await rp.done
        wt.write(b"ping")
        got = await loop.run_in_executor(None, d.recv, 10)
        d.close()  # the write side sees its peer go
        assert await wp.done is None
        return rp, got

    rp, got = run(loop, main())
    assert bytes(rp.data) == b"via socket"
    assert got == b"ping"
    b.close()


def test_pty_both_ways(loop):
    import tty

    master, slave = os.openpty()
    tty.setraw(slave)
    slave_w = os.dup(slave)

    async def main():
        rt, rp = await loop.connect_read_pipe(lambda: PipeRecorder(loop), io.open(slave, "rb", 0))
        wt, wp = await loop.connect_write_pipe(lambda: WriteRecorder(loop), io.open(slave_w, "wb", 0))
        wt.write(b"to master")
        got = b""
        while len(got) < 9:
            got += await loop.run_in_executor(None, os.read, master, 100)
        os.write(master, b"to slave")
        while len(rp.data) < 8:
            await asyncio.sleep(0.01)
        rt.close()
        wt.close()
        await rp.done
        await wp.done
        return got, rp

    got, rp = run(loop, main())
    os.close(master)
    assert got == b"to master"
    assert bytes(rp.data) == b"to slave"


# ----------------------------------------------------------------------------- subprocesses


class SubRecorder(asyncio.SubprocessProtocol):
    def __init__(self, loop):
        self.events = []
        self.out = {1: bytearray(), 2: bytearray()}
        self.transport = None
        self.done = loop.create_future()

    def connection_made(self, transport):
        self.transport = transport
        self.events.append("made")

    def pipe_data_received(self, fd, data):
        assert data
        self.out[fd] += data
        if self.events[-1] != f"data{fd}":
            self.events.append(f"data{fd}")

    def pipe_connection_lost(self, fd, exc):
        self.events.append((f"pipe_lost{fd}", exc))

    def process_exited(self):
        self.events.append(("exited", self.transport.get_returncode()))

    def connection_lost(self, exc):
        self.events.append(("lost", exc))
        self.done.set_result(None)


def test_subprocess_protocol_life(loop):
    async def main():
        t, p = await loop.subprocess_exec(lambda: SubRecorder(loop), "cat")
        assert isinstance(t, asyncio.SubprocessTransport)
        assert p.events == ["made"]
        assert isinstance(t.get_extra_info("subprocess"), subprocess.Popen)
        assert t.get_pid() == t.get_extra_info("subprocess").pid
        assert t.get_returncode() is None
        stdin = t.get_pipe_transport(0)
        assert isinstance(stdin, asyncio.WriteTransport)
        assert isinstance(t.get_pipe_transport(1), asyncio.ReadTransport)
        assert isinstance(t.get_pipe_transport(2), asyncio.ReadTransport)
        assert t.get_pipe_transport(3) is None
        stdin.write(b"round trip")
        stdin.write_eof()
        await p.done
        return t, p

    t, p = run(loop, main())
    assert bytes(p.out[1]) == b"round trip"
    assert p.events[0] == "made"
    assert p.events[-1] == ("lost", None)
    middle = p.events[1:-1]
    assert sorted(e for e in middle if isinstance(e, tuple) and e[0].startswith("pipe_lost")) == [
        ("pipe_lost0", None),
        ("pipe_lost1", None),
        ("pipe_lost2", None),
    ]
    assert [e for e in middle if isinstance(e, tuple) and e[0] == "exited"] == [("exited", 0)]
    assert t.get_returncode() == 0
    with pytest.raises(ProcessLookupError):
        t.kill()
    t.close()


def test_create_subprocess_exec_communicate_large(loop):
    data = pattern(4 << 20, 5)

    async def main():
        proc = await asyncio.create_subprocess_exec(
            "cat", stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE
        )
        out, err = await proc.communicate(data)
        return proc.returncode, out, err

    rc, out, err = run(loop, main(), timeout=60)
    assert rc == 0
    assert out == data
    assert err == b""


def test_create_subprocess_shell_streams_and_exit_code(loop):
    async def main():
        proc = await asyncio.create_subprocess_shell(
            "echo out; echo err >&2; exit 3", stdout=subprocess.PIPE, stderr=subprocess.PIPE
        )
        out = await proc.stdout.read()
        err = await proc.stderr.read()
        return out, err, await proc.wait()

    assert run(loop, main()) == (b"out\n", b"err\n", 3)


def test_stderr_to_stdout_devnull_and_files(loop, tmp_path):
    out_file = tmp_path / "out.txt"

    async def main():
        proc = await asyncio.create_subprocess_shell(
            "echo one; echo two >&2", stdout=subprocess.PIPE, stderr=subprocess.STDOUT
        )
        both, _ = await proc.communicate()
        proc2 = await asyncio.create_subprocess_exec(
            "cat", stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL
        )
        empty, _ = await proc2.communicate()
        with open(out_file, "wb") as f:
            proc3 = await asyncio.create_subprocess_shell("echo to-file", stdout=f)
            await proc3.wait()
        with open(out_file, "rb") as f:
            proc4 = await asyncio.create_subprocess_exec("cat", stdin=f, stdout=subprocess.PIPE)
            back, _ = await proc4.communicate()
        return both, empty, back

    both, empty, back = run(loop, main())
    assert both == b"one\ntwo\n"
    assert empty == b""
    assert back == b"to-file\n"


@pytest.mark.parametrize(
    "how, expected",
    [("kill", -signal.SIGKILL), ("terminate", -signal.SIGTERM), ("send_signal", -signal.SIGHUP)],
)
def test_kill_terminate_send_signal(loop, how, expected):
    async def main():
        proc = await asyncio.create_subprocess_exec("sleep", "30")
        if how == "send_signal":
            proc.send_signal(signal.SIGHUP)
        else:
            getattr(proc, how)()
        return await proc.wait()

    assert run(loop, main()) == expected


def test_transport_close_kills_a_running_child(loop):
    async def main():
        t, p = await loop.subprocess_exec(lambda: SubRecorder(loop), "sleep", "30")
        t.close()
        await p.done
        return t.get_returncode(), p

    rc, p = run(loop, main())
    assert rc == -signal.SIGKILL  # asyncio's BaseSubprocessTransport.close() kills
    assert p.events[-1] == ("lost", None)


def test_invalid_arguments(loop):
    async def main():
        errors = []
        for coro in (
            loop.subprocess_exec(asyncio.SubprocessProtocol, "true", universal_newlines=True),
            loop.subprocess_exec(asyncio.SubprocessProtocol, "true", bufsize=4096),
            loop.subprocess_exec(asyncio.SubprocessProtocol, "true", shell=True),
            loop.subprocess_exec(asyncio.SubprocessProtocol, "true", text=True),
            loop.subprocess_shell(asyncio.SubprocessProtocol, ["ls", "-l"]),
            loop.subprocess_shell(asyncio.SubprocessProtocol, "true", shell=False),
            asyncio.create_subprocess_exec("true", text=True),
        ):
            with pytest.raises(ValueError) as info:
                await coro
            errors.append(str(info.value))
        with pytest.raises(FileNotFoundError):
            await asyncio.create_subprocess_exec("/nonexistent/ferroloop-test")
        return errors

    assert run(loop, main()) == [
        "universal_newlines must be False",
        "bufsize must be 0",
        "shell must be False",
        "text must be False",
        "cmd must be a string",
        "shell must be True",
        "text must be False",
    ]


def test_popen_keyword_arguments(loop, tmp_path):
    r, w = os.pipe()
    os.write(w, b"via pass_fds")
    os.close(w)

    async def main():
        proc = await asyncio.create_subprocess_exec(
            PY,
            "-c",
            "import os, sys; print(os.getcwd()); print(os.environ['FERRO']); "
            f"print(os.read({r}, 100).decode()); print(os.getsid(0) == os.getpid()); "
            "print(oct(os.umask(0)))",
            stdout=subprocess.PIPE,
            cwd=str(tmp_path),
            env={"FERRO": "loop", "PATH": os.environ.get("PATH", "")},
            pass_fds=(r,),
            start_new_session=True,
            umask=0o027,
        )
        out, _ = await proc.communicate()
        return out.decode().splitlines(), proc.returncode

    lines, rc = run(loop, main())
    os.close(r)
    assert rc == 0
    assert lines == [str(tmp_path), "loop", "via pass_fds", "True", "0o27"]


def test_output_of_a_child_that_already_exited_is_not_lost(loop):
    async def main():
        proc = await asyncio.create_subprocess_exec(
            PY, "-c", "import sys; sys.stdout.buffer.write(b'x' * 60000)", stdout=subprocess.PIPE
        )
        # Do not read until the child is gone.
        while True:
            try:
                with open(f"/proc/{proc.pid}/stat") as f:
                    state = f.read().rsplit(")", 1)[1].split()[0]
            except OSError:  # already reaped
                break
            if state == "Z":
                break
            await asyncio.sleep(0.01)
        out = await proc.stdout.read()
        return out, await proc.wait()

    out, rc = run(loop, main())
    assert (len(out), rc) == (60000, 0)


def test_child_closes_stdout_early_and_runs_on(loop):
    async def main():
        t, p = await loop.subprocess_shell(
            lambda: SubRecorder(loop), "echo early; exec 1>&-; sleep 0.3; exit 4", stdin=None
        )
        while ("pipe_lost1", None) not in p.events:
            await asyncio.sleep(0.01)
        running = t.get_returncode()
        await p.done
        return running, p

    running, p = run(loop, main())
    assert running is None
    assert bytes(p.out[1]) == b"early\n"
    exited = next(e for e in p.events if isinstance(e, tuple) and e[0] == "exited")
    assert exited == ("exited", 4)
    assert p.events.index(("pipe_lost1", None)) < p.events.index(exited)


def test_child_killed_mid_write(loop):
    async def main():
        proc = await asyncio.create_subprocess_exec("yes", "ferroloop", stdout=subprocess.PIPE)
        got = await proc.stdout.readexactly(100_000)
        proc.kill()
        rest = await proc.stdout.read()
        return got, rest, await proc.wait()

    got, rest, rc = run(loop, main())
    assert rc == -signal.SIGKILL
    assert (got + rest).startswith(b"ferroloop\n" * 10_000)


def test_stdin_broken_pipe(loop):
    async def main():
        proc = await asyncio.create_subprocess_exec(
            PY, "-c", "import os, time; os.close(0); time.sleep(0.3)", stdin=subprocess.PIPE
        )
        proc.stdin.write(b"x" * (1 << 20))
        with pytest.raises((BrokenPipeError, ConnectionResetError)):
            await proc.stdin.drain()
        return await proc.wait()

    assert run(loop, main()) == 0


def test_reader_paused_with_output_larger_than_the_pipe(loop):
    data = pattern(2 << 20, 6)

    async def main():
        t, p = await loop.subprocess_exec(lambda: SubRecorder(loop), "cat")
        stdout = t.get_pipe_transport(1)
        stdout.pause_reading()
        t.get_pipe_transport(0).write(data)
        t.get_pipe_transport(0).write_eof()
        await asyncio.sleep(0.3)
        assert len(p.out[1]) == 0
        assert t.get_returncode() is None, "cat blocks on its full stdout"
        stdout.resume_reading()
        await p.done
        return p

    p = run(loop, main(), timeout=60)
    assert bytes(p.out[1]) == data


def test_many_concurrent_children_echo_byte_exact(loop):
    n, size = 200, 1 << 20

    async def one(i):
        data = pattern(size, 1000 + i)
        proc = await asyncio.create_subprocess_exec("cat", stdin=subprocess.PIPE, stdout=subprocess.PIPE)
        out, _ = await proc.communicate(data)
        return out == data and proc.returncode == 0

    async def main():
        return await asyncio.gather(*(one(i) for i in range(n)))

    results = run(loop, main(), timeout=120)
    assert results == [True] * n


def _children_of_me():
    me = str(os.getpid())
    out = []
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if fields[1] == me:
            out.append((int(name), fields[0]))
    return out


def test_thousand_spawns_leave_no_fd_and_no_zombie(loop):
    async def batch(k):
        procs = []
        for i in range(k):
            kind = i % 3
            if kind == 0:
                procs.append(asyncio.create_subprocess_exec("true"))
            elif kind == 1:
                procs.append(asyncio.create_subprocess_exec("cat", stdin=subprocess.PIPE, stdout=subprocess.PIPE))
            else:
                procs.append(
                    asyncio.create_subprocess_exec(
                        "cat", stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.STDOUT
                    )
                )
        for proc in await asyncio.gather(*procs):
            await proc.communicate(b"x" if proc.stdin else None)
            assert proc.returncode == 0

    run(loop, batch(10))  # warm-up: the loop's own descriptors, executor threads
    gc.collect()
    before = set(os.listdir("/proc/self/fd"))

    async def main():
        for _ in range(20):
            await batch(50)

    run(loop, main(), timeout=120)
    gc.collect()
    time.sleep(0.1)
    leaked = set(os.listdir("/proc/self/fd")) - before
    assert not leaked, f"descriptors leaked: {sorted(leaked)}"
    assert _children_of_me() == []


def test_subprocess_on_a_loop_in_another_thread(flavor):
    result = {}

    def body():
        async def main():
            proc = await asyncio.create_subprocess_shell("echo threaded; exit 5", stdout=subprocess.PIPE)
            out, _ = await proc.communicate()
            return out, proc.returncode

        lp = flavor.new_event_loop()
        try:
            result["value"] = lp.run_until_complete(asyncio.wait_for(main(), 20))
        except BaseException as exc:  # pragma: no cover - reported below
            result["error"] = exc
        finally:
            lp.close()

    th = threading.Thread(target=body)
    th.start()
    th.join(30)
    assert "error" not in result, result.get("error")
    assert result["value"] == (b"threaded\n", 5)


# ----------------------------------------------------------------------------- asyncio's documentation examples


def test_doc_example_run_shell_commands(loop, capsys):
    # asyncio-subprocess.rst: "run" with create_subprocess_shell, two commands at once.
    async def run_cmd(cmd):
        proc = await asyncio.create_subprocess_shell(cmd, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
        stdout, stderr = await proc.communicate()
        print(f"[{cmd!r} exited with {proc.returncode}]")
        if stdout:
            print(f"[stdout]\n{stdout.decode()}")
        if stderr:
            print(f"[stderr]\n{stderr.decode()}")

    async def main():
        await asyncio.gather(run_cmd("ls /zzz"), run_cmd('sleep 0.2; echo "hello"'))

    run(loop, main())
    out = capsys.readouterr().out
    assert out.startswith("['ls /zzz' exited with 2]\n[stderr]\nls: cannot access '/zzz': No such file or directory\n")
    assert out.endswith("""['sleep 0.2; echo "hello"' exited with 0]\n[stdout]\nhello\n\n""")


def test_doc_example_get_date_with_streams(loop):
    # asyncio-subprocess.rst: read a child's stdout line by line.
    async def get_date():
        code = "import datetime; print(datetime.datetime.now())"
        proc = await asyncio.create_subprocess_exec(PY, "-c", code, stdout=asyncio.subprocess.PIPE)
        data = await proc.stdout.readline()
        line = data.decode("ascii").rstrip()
        await proc.wait()
        return line, proc.returncode

    line, rc = run(loop, get_date())
    assert rc == 0
    assert line[:4].isdigit() and line[4] == "-", line


def test_doc_example_subprocess_protocol(loop):
    # asyncio-protocol.rst: "loop.subprocess_exec() and SubprocessProtocol" (DateProtocol).
    class DateProtocol(asyncio.SubprocessProtocol):
        def __init__(self, exit_future):
            self.exit_future = exit_future
            self.output = bytearray()
            self.pipe_closed = False
            self.exited = False

        def pipe_connection_lost(self, fd, exc):
            self.pipe_closed = True
            self.check_for_exit()

        def pipe_data_received(self, fd, data):
            self.output.extend(data)

        def process_exited(self):
            self.exited = True
            self.check_for_exit()

        def check_for_exit(self):
            if self.pipe_closed and self.exited:
                self.exit_future.set_result(True)

    async def get_date():
        lp = asyncio.get_running_loop()
        code = "import datetime; print(datetime.datetime.now())"
        exit_future = asyncio.Future(loop=lp)
        transport, protocol = await lp.subprocess_exec(
            lambda: DateProtocol(exit_future), PY, "-c", code, stdin=None, stderr=None
        )
        await exit_future
        transport.close()
        data = bytes(protocol.output)
        return data.decode("ascii").rstrip()

    date = run(loop, get_date())
    assert date[:4].isdigit() and date[4] == "-" and ":" in date, date


# ----------------------------------------------------------------------------- ferroloop specifics


def test_ferroloop_watches_children_without_asyncios_watcher(flavor, loop):
    if not flavor.is_ferroloop:
        pytest.skip("ferroloop's engine watcher")
    # The engine's pidfd watcher, not asyncio's threaded watcher: no thread
    # is started to wait for the child.
    async def main():
        threads = threading.active_count()
        proc = await asyncio.create_subprocess_exec("sleep", "0.2")
        during = threading.active_count()
        return threads, during, await proc.wait()

    threads, during, rc = run(loop, main())
    assert rc == 0
    assert during == threads


@pytest.mark.skipif(sys.version_info < (3, 14), reason="the loop owns its child watcher from 3.14")
@pytest.mark.parametrize("pidfd", [True, False], ids=["pidfd", "threaded"])
def test_loop_child_watcher_3_14(flavor, monkeypatch, pidfd):
    """3.14+: a new loop's ``_watcher`` is asyncio's pidfd watcher where
    pidfds can be used, else its threaded one, which then waits for the
    child (a thread per child) and reaps it on the loop's thread."""
    from asyncio import unix_events

    if pidfd and not unix_events.can_use_pidfd():
        pytest.skip("no pidfd here")
    monkeypatch.setattr(unix_events, "can_use_pidfd", lambda: pidfd)
    lp = flavor.new_event_loop()
    try:
        expected = unix_events._PidfdChildWatcher if pidfd else unix_events._ThreadedChildWatcher
        assert type(lp._watcher) is expected

        async def main():
            # The child waits for its stdin to close, so that it is alive
            # while the watcher is looked at (a thread per live child).
            proc = await asyncio.create_subprocess_exec(
                PY, "-c", "import sys; sys.stdin.read(); sys.exit(3)", stdin=asyncio.subprocess.PIPE
            )
            waiting = pidfd or proc.pid in lp._watcher._threads
            proc.stdin.close()
            return waiting, await proc.wait()

        assert lp.run_until_complete(asyncio.wait_for(main(), 20)) == (True, 3)
    finally:
        lp.close()


def test_ferroloop_reaped_elsewhere_reports_popens_returncode(flavor, loop):
    if not flavor.is_ferroloop:
        pytest.skip("ferroloop's engine watcher")

    async def main():
        t, p = await loop.subprocess_exec(lambda: SubRecorder(loop), "sh", "-c", "exit 6", stdin=None)
        popen = t.get_extra_info("subprocess")
        popen.wait()  # reaps the child before the engine does
        await p.done
        return t.get_returncode()

    assert run(loop, main()) == 6


def test_ferroloop_pipe_repr(flavor, loop):
    r, w = os.pipe()

    async def main():
        t, p = await loop.connect_read_pipe(lambda: PipeRecorder(loop), open(r, "rb", buffering=0))
        text = repr(t)
        t.close()
        await p.done
        return text, repr(t)

    before, after = run(loop, main())
    os.close(w)
    assert f"fd={r}" in before
    assert "closed" in after


def test_pipe_and_subprocess_lifetimes_under_gc_pressure(flavor):
    # Frequent cyclic collections while pipe transports and subprocesses come
    # and go (transport <-> protocol cycles, engine-owned references): a
    # lifetime bug would crash the forked child, not pass quietly.
    from conftest import run_isolated

    def body(lp):
        async def main():
            for i in range(30):
                r, w = os.pipe()
                rt, rp = await lp.connect_read_pipe(lambda: PipeRecorder(lp), open(r, "rb", buffering=0))
                wt, wp = await lp.connect_write_pipe(lambda: WriteRecorder(lp), open(w, "wb", buffering=0))
                wt.write(b"x" * (i * 1000 + 1))
                wt.close()
                await rp.done
                await wp.done
                assert len(rp.data) == i * 1000 + 1
                del rt, rp, wt, wp
                if i % 5 == 0:
                    proc = await asyncio.create_subprocess_exec(
                        "cat", stdin=subprocess.PIPE, stdout=subprocess.PIPE
                    )
                    out, _ = await proc.communicate(b"y" * 10000)
                    assert out == b"y" * 10000
                gc.collect()

        lp.run_until_complete(asyncio.wait_for(main(), 30))

    run_isolated(flavor, body, gc_threshold=1)
