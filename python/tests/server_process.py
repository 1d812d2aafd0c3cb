"""A server started as its user starts it (a command line, in its own
process), for the tests of the servers people run on ferroloop
(test_gunicorn.py, test_hypercorn.py): its output is read as it comes, so
that a test can wait for a line (the address it listens on, a shutdown
step) and see all of it at the end."""

from __future__ import annotations

import http.client
import os
import re
import signal
import subprocess
import sys
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
APPS = os.path.join(HERE, "apps")


class ServerProcess:
    def __init__(self, argv, cwd=None, env=None):
        self.argv = argv
        self.proc = subprocess.Popen(
            argv, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, bufsize=1,
            # Its own process group: the clean-up kills the server's workers too.
            start_new_session=True,
        )
        self._lines = []
        self._cond = threading.Condition()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self):
        for line in self.proc.stdout:
            with self._cond:
                self._lines.append(line)
                self._cond.notify_all()
        with self._cond:
            self._lines.append(None)  # end of output
            self._cond.notify_all()

    @property
    def output(self):
        with self._cond:
            return "".join(line for line in self._lines if line is not None)

    def wait_for(self, pattern, timeout=30, count=1):
        """The ``count``-th match of ``pattern`` (a regex) in the output, line by line;
        fails when the process ends or ``timeout`` seconds pass first."""
        rx = re.compile(pattern)
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                matches = [m for m in (rx.search(line) for line in self._lines if line is not None) if m]
                if len(matches) >= count:
                    return matches[count - 1]
                ended = self._lines and self._lines[-1] is None
                left = deadline - time.monotonic()
                if ended or left <= 0:
                    why = "the process ended" if ended else f"{timeout}s passed"
                    raise AssertionError(
                        f"{why} before {pattern!r} (x{count}) in the output of {self.argv}:\n{self.output}"
                    )
                self._cond.wait(left)

    def stop(self, sig=signal.SIGTERM, timeout=30):
        """Send ``sig``, wait for the exit (SIGKILL after ``timeout`` seconds):
        (exit status, whole output)."""
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self._kill_group()
            raise AssertionError(f"{self.argv} did not exit {timeout}s after {sig!r}:\n{self.output}")
        finally:
            self._reader.join(10)
        return self.proc.returncode, self.output

    def kill(self):
        """Clean-up for a test that failed before stop(): nothing is left running."""
        self._kill_group()
        self._reader.join(10)

    def _kill_group(self):
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.proc.wait()


def python_env(**extra):
    """The environment for a server process: this interpreter's, with the test
    apps importable."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (APPS, env.get("PYTHONPATH")) if p)
    env.update(extra)
    return env


PYTHON = sys.executable


def assert_served_by_ferroloop(port):
    """The app (apps/asgi_app.py) answers GET /loop with its running loop's class."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.request("GET", "/loop")
        r = conn.getresponse()
        assert (r.status, r.read()) == (200, b"ferroloop._loop.Loop")
    finally:
        conn.close()
