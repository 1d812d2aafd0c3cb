#!/usr/bin/env python3
"""CPython's own test_asyncio files, run against ferroloop next to stock asyncio.

The test files are imported from the interpreter's installed stdlib
(``test.test_asyncio.test_events`` ...); nothing is copied into this repo.
In the ferroloop run, every way those tests make a loop yields a ferroloop
loop: the policy is ``ferroloop.EventLoopPolicy()``, and
``asyncio.SelectorEventLoop`` (and the default policy's loop factory) is a
subclass of ``ferroloop.Loop`` that accepts and ignores a ``selector``.

Each test file runs in its own subprocess (per-test watchdog, per-file time
budget, restart after a crash or hang, the culprit marked ``hang``/``crash``).

    run.py                    both sides; a table per file; the differences
    run.py --check            ferroloop only, the baseline tests only; exit 1
                              if a test of baseline.json no longer passes
    run.py --update-baseline  run, then write baseline.json (ferroloop passes)
    run.py --report           print, from the last results, the tests stock
                              asyncio passes and ferroloop does not
    run.py --compare          both sides, nothing saved; exit 1 if ferroloop
                              fails a test stock asyncio passes (for other
                              Python versions, whose test sets differ from
                              the baseline's: `make test-versions`)
    run.py --files test_streams,test_server --side ferroloop -v
    run.py --side ferroloop --tests 'test_ssl.TestSSL.test_create_server_ssl_1'
                              a few tests (ids or globs); printed, not saved

Test ids are ``file.Class.method`` (``test_events.EPollEventLoopTests.test_
create_server``). Outcomes: pass, fail, error, skip, excluded (in
excluded.txt: not run on ferroloop), hang (no progress for --test-timeout
seconds: faulthandler dumps the stacks and the file restarts after it),
crash (the process died in it, e.g. a segfault: the file restarts after it).

Results go to python/conformance/results/{stock,ferroloop}.json (and a log
per file and side). Exclusions (tests of selector-loop internals, which
cannot apply to a loop that is not a selector loop) are in excluded.txt;
flaky.txt lists tests that run and count as usual but never enter the
baseline (so that `make test` does not fail at random).
"""

from __future__ import annotations

import argparse
import fnmatch
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import traceback
from concurrent.futures import ThreadPoolExecutor

HERE = os.path.dirname(os.path.abspath(__file__))
EXCLUDED_PATH = os.path.join(HERE, "excluded.txt")
FLAKY_PATH = os.path.join(HERE, "flaky.txt")  # run and reported, never put in the baseline
BASELINE_PATH = os.path.join(HERE, "baseline.json")
RESULTS_DIR = os.path.join(HERE, "results")
PACKAGE = "test.test_asyncio."

SIDES = ("stock", "ferroloop")

# Differences from stock asyncio that are ferroloop's design, not bugs
# (REPORT.md): `run.py --compare` does not fail on them.
BY_DESIGN = {
    "test_subprocess.GenericWatcherTests.test_create_subprocess_fails_with_inactive_watcher":
        "children are watched by the engine's pidfd watcher; asyncio's deprecated child watchers are not consulted",
}

# Several files define the same mixin once per selector class; the loop under
# test has no selector, so only one variant runs (on both sides, so that the
# test ids and counts compare one to one).
KEPT_VARIANT = "EPollEventLoopTests"
DROPPED_VARIANTS = ("SelectEventLoopTests", "PollEventLoopTests", "KqueueEventLoopTests", "DevpollEventLoopTests")


class FileSpec:
    def __init__(self, name, classes=None, note="", real_test_loop=False):
        self.name = name
        self.classes = classes  # None: every class of the module
        self.note = note
        # test_utils.TestCase.new_test_loop() without a time generator (no
        # virtual clock in use) makes a real loop, on both sides; see
        # child_adapt_module.
        self.real_test_loop = real_test_loop


FILES = [
    FileSpec("test_events"),
    FileSpec("test_ssl"),
    FileSpec("test_sendfile"),
    FileSpec("test_sock_lowlevel"),
    FileSpec("test_sslproto"),
    FileSpec("test_streams"),
    FileSpec("test_subprocess"),
    FileSpec(
        "test_base_events",
        classes=["BaseEventLoopWithSelectorTests", "RunningLoopTests", "BaseLoopSockSendfileTests"],
        note="public-API classes only: BaseEventTests, BaseEventLoopTests and TestSelectorUtils "
        "test asyncio's own BaseEventLoop/helpers with mocks and never make the loop under test",
    ),
    FileSpec(
        "test_unix_events",
        classes=[
            "SelectorEventLoopSignalTests",
            "SelectorEventLoopUnixSocketTests",
            "SelectorEventLoopUnixSockSendfileTests",
            "TestFunctional",
        ],
        note="loop classes only: the pipe transport, child watcher and policy classes test "
        "asyncio.unix_events' own classes over mocks and never make the loop under test",
    ),
    FileSpec("test_server"),
    FileSpec("test_buffered_proto"),
    FileSpec("test_protocols"),
    FileSpec("test_context"),
    FileSpec(
        "test_tasks",
        real_test_loop=True,
        note="new_test_loop() without a time generator is a real loop on both sides (the stdlib's "
        "TestLoop, a BaseEventLoop with a virtual clock, would never touch the loop under test); "
        "the tests that drive TestLoop's virtual clock (new_test_loop(gen)) still run on TestLoop",
    ),
    FileSpec(
        "test_futures",
        real_test_loop=True,
        note="new_test_loop() is a real loop on both sides, as in test_tasks",
    ),
    FileSpec("test_futures2"),
    FileSpec("test_locks"),
    FileSpec("test_queues"),
    FileSpec("test_timeouts"),
    FileSpec("test_taskgroups"),
    FileSpec("test_waitfor"),
    FileSpec("test_threads"),
    # Not run: test_runners and test_pep492 build a bare asyncio.BaseEventLoop()
    # over a mocked _selector, test_transports tests asyncio.Transport itself;
    # none of them makes the loop under test (test_selector_events, the
    # selector loop's internals, does not apply).
]
FILES_BY_NAME = {f.name: f for f in FILES}

DEFAULT_FILE_TIMEOUT = 300.0  # seconds per file and side, restarts included
DEFAULT_TEST_TIMEOUT = 45.0  # seconds per test (faulthandler watchdog)
MAX_RESTARTS = 25  # crashes/hangs tolerated per file before it is marked crashed

LIVE = set()  # process (group) ids of the running children

OUTCOMES = ("pass", "fail", "error", "skip", "xfail", "xpass", "excluded", "hang", "crash")


# --------------------------------------------------------------------------- ids, exclusions


def short_id(test_id: str) -> str:
    """``test.test_asyncio.test_x.Cls.test_y`` -> ``test_x.Cls.test_y``;
    ``setUpClass (test.test_asyncio.test_x.Cls)`` -> ``test_x.Cls.setUpClass``."""
    if " (" in test_id and test_id.endswith(")"):
        what, _, where = test_id[:-1].partition(" (")
        test_id = f"{where}.{what}"
    if test_id.startswith(PACKAGE):
        test_id = test_id[len(PACKAGE):]
    return test_id


def load_patterns(path):
    """``pattern  # reason`` lines -> [(pattern, reason)]."""
    patterns = []
    if not os.path.exists(path):
        return patterns
    with open(path, encoding="utf-8") as f:
        for line in f:
            text, _, reason = line.partition("#")
            text = text.strip()
            if text:
                patterns.append((text, reason.strip()))
    return patterns


def match_patterns(test_id, patterns):
    for pattern, reason in patterns:
        if fnmatch.fnmatchcase(test_id, pattern):
            return pattern, reason
    return None


def file_sha256(path):
    import hashlib

    try:
        with open(path, "rb") as f:
            return hashlib.sha256(f.read()).hexdigest()[:16]
    except OSError:
        return "?"


def git_head():
    try:
        out = subprocess.run(["git", "-C", HERE, "rev-parse", "--short", "HEAD"], capture_output=True,
                             text=True, timeout=10)
        return out.stdout.strip() or "?"
    except (OSError, subprocess.SubprocessError):
        return "?"


# --------------------------------------------------------------------------- child side


def child_install_ferroloop():
    """Make every way the stdlib tests create a loop produce a ferroloop loop."""
    import asyncio
    import asyncio.unix_events

    import ferroloop

    class FerroloopSelectorEventLoop(ferroloop.Loop):
        """ferroloop.Loop where the tests ask for asyncio.SelectorEventLoop(selector)."""

        def __init__(self, selector=None):
            super().__init__()

    asyncio.SelectorEventLoop = FerroloopSelectorEventLoop
    asyncio.unix_events.SelectorEventLoop = FerroloopSelectorEventLoop
    # asyncio.set_event_loop_policy(None) (every file's tearDownModule, some
    # tests) falls back to DefaultEventLoopPolicy: its factory too.
    asyncio.unix_events._UnixDefaultEventLoopPolicy._loop_factory = FerroloopSelectorEventLoop
    # ferroloop's install without its 3.14+ deprecation warning (nor asyncio's).
    ferroloop._install()
    return FerroloopSelectorEventLoop


def child_count_loops(counts):
    """Count the loops made, by kind: a sanity check that the run is on the
    loop it claims to be on."""
    import asyncio.base_events
    import asyncio.selector_events

    def wrap(cls, key):
        orig = cls.__init__

        def __init__(self, *args, **kwargs):
            counts[key] = counts.get(key, 0) + 1
            orig(self, *args, **kwargs)

        cls.__init__ = __init__

    wrap(asyncio.selector_events.BaseSelectorEventLoop, "stock_selector_loops")
    try:
        import ferroloop

        wrap(ferroloop.Loop, "ferroloop_loops")
        real = (asyncio.selector_events.BaseSelectorEventLoop, ferroloop.Loop)
    except ImportError:
        real = (asyncio.selector_events.BaseSelectorEventLoop,)

    # Any other BaseEventLoop (test_utils.TestLoop, a bare BaseEventLoop over
    # mocks): a test that runs on one of these does not test the loop under test.
    base_init = asyncio.base_events.BaseEventLoop.__init__

    def __init__(self, *args, **kwargs):
        if not isinstance(self, real):
            counts["other_loops"] = counts.get("other_loops", 0) + 1
        base_init(self, *args, **kwargs)

    asyncio.base_events.BaseEventLoop.__init__ = __init__


def child_adapt_module(mod, spec, side, loop_cls):
    """Per-file adjustments that keep the test code as is."""
    if spec.real_test_loop:
        # test_tasks and test_futures make their loops with
        # test_utils.TestCase.new_test_loop(), asyncio's TestLoop: a
        # BaseEventLoop of its own with a virtual clock, never the loop under
        # test. Without a time generator the virtual clock is not used (any
        # timer would end TestLoop's one-shot generator), so the test runs
        # the same on a real loop: asyncio.new_event_loop(), the policy's
        # loop, a selector loop on the stock side and ferroloop on the
        # other. With a generator, TestLoop stays, on both sides.
        import asyncio
        from test.test_asyncio import utils as test_utils

        orig_new_test_loop = test_utils.TestCase.new_test_loop

        def new_test_loop(self, gen=None, _orig=orig_new_test_loop):
            if gen is not None:
                return _orig(self, gen)
            loop = asyncio.new_event_loop()
            self.set_event_loop(loop)
            return loop

        test_utils.TestCase.new_test_loop = new_test_loop
    if side == "ferroloop" and spec.name == "test_base_events":
        # BaseLoopSockSendfileTests builds a bare BaseSelectorEventLoop (a loop
        # without native sendfile) to test the fallback; the ferroloop
        # counterpart is a ferroloop loop (it has no native sendfile either).
        import asyncio.selector_events
        from unittest import mock

        cls = mod.BaseLoopSockSendfileTests
        orig_setup = cls.setUp

        def setUp(self, _orig=orig_setup):
            with mock.patch.object(asyncio.selector_events, "BaseSelectorEventLoop", loop_cls):
                _orig(self)

        cls.setUp = setUp


def iter_tests(suite):
    import unittest

    for item in suite:
        if isinstance(item, unittest.TestSuite):
            yield from iter_tests(item)
        else:
            yield item


def child_main(args):
    import faulthandler
    import unittest

    out = open(args.out, "a", buffering=1, encoding="utf-8")

    def emit(**record):
        out.write(json.dumps(record) + "\n")

    faulthandler.enable(file=sys.stderr, all_threads=True)
    spec = FILES_BY_NAME[args.file]
    counts = {}
    loop_cls = None
    if args.side == "ferroloop":
        loop_cls = child_install_ferroloop()
        import ferroloop

        ext = getattr(ferroloop._loop._ferroloop, "__file__", "?")
        emit(event="meta", ferroloop=os.path.dirname(ferroloop.__file__), extension=ext,
             extension_sha256=file_sha256(ext))
    child_count_loops(counts)

    skip_ids = set()
    if args.skip:
        with open(args.skip, encoding="utf-8") as f:
            skip_ids = set(json.load(f))
    only_ids = None
    if args.only:
        with open(args.only, encoding="utf-8") as f:
            only_ids = set(json.load(f))
        only_pats = [(p, "") for p in only_ids if any(c in p for c in "*?[")]
    excluded = load_patterns(EXCLUDED_PATH) if args.side == "ferroloop" else []

    modname = PACKAGE + spec.name
    try:
        mod = __import__(modname, fromlist=["*"])
        child_adapt_module(mod, spec, args.side, loop_cls)
        suite = unittest.defaultTestLoader.loadTestsFromModule(mod)
    except BaseException:
        emit(event="end", id=f"{spec.name}.<import>", outcome="error", detail=traceback.format_exc(), time=0)
        emit(event="done", counts=counts)
        return 0

    selected = unittest.TestSuite()
    has_kept_variant = hasattr(mod, KEPT_VARIANT)
    for test in iter_tests(suite):
        tid = short_id(test.id())
        cls_name = type(test).__name__
        if has_kept_variant and cls_name in DROPPED_VARIANTS:
            continue
        if "Proactor" in cls_name:  # Windows-only classes: skipped on both sides anyway
            continue
        if spec.classes is not None and cls_name not in spec.classes:
            continue
        if tid in skip_ids:
            continue
        if only_ids is not None and tid not in only_ids and not match_patterns(tid, only_pats):
            continue
        hit = match_patterns(tid, excluded)
        if hit is not None:
            emit(event="end", id=tid, outcome="excluded", detail=hit[1], time=0)
            continue
        selected.addTest(test)

    class Result(unittest.TestResult):
        def __init__(self):
            super().__init__()
            self.buffer = True
            self._t0 = 0.0
            self._sub_failure = None

        def startTest(self, test):
            super().startTest(test)
            self._t0 = time.monotonic()
            self._sub_failure = None
            emit(event="start", id=short_id(test.id()))
            print(f"--- {short_id(test.id())}", file=sys.__stderr__, flush=True)
            faulthandler.dump_traceback_later(args.test_timeout, exit=True, file=sys.__stderr__)

        def stopTest(self, test):
            faulthandler.cancel_dump_traceback_later()
            if self._sub_failure is not None:
                self._record(test, *self._sub_failure)
            super().stopTest(test)

        def _record(self, test, outcome, detail=""):
            self._sub_failure = None
            emit(event="end", id=short_id(test.id()), outcome=outcome, detail=detail[-6000:],
                 time=round(time.monotonic() - self._t0, 3))

        def _tb(self, test, err):
            return self._exc_info_to_string(err, test)

        def addSuccess(self, test):
            super().addSuccess(test)
            self._record(test, "pass")

        def addFailure(self, test, err):
            super().addFailure(test, err)
            self._record(test, "fail", self._tb(test, err))

        def addError(self, test, err):
            super().addError(test, err)
            if isinstance(test, unittest.TestCase):
                self._record(test, "error", self._tb(test, err))
            else:  # setUpClass/tearDownModule: an _ErrorHolder
                emit(event="end", id=short_id(test.id()), outcome="error", detail=self._tb(test, err)[-6000:], time=0)

        def addSkip(self, test, reason):
            super().addSkip(test, reason)
            if isinstance(test, unittest.TestCase):
                self._record(test, "skip", reason)
            else:
                emit(event="end", id=short_id(test.id()), outcome="skip", detail=reason, time=0)

        def addExpectedFailure(self, test, err):
            super().addExpectedFailure(test, err)
            self._record(test, "xfail", self._tb(test, err))

        def addUnexpectedSuccess(self, test):
            super().addUnexpectedSuccess(test)
            self._record(test, "xpass")

        def addSubTest(self, test, subtest, err):
            super().addSubTest(test, subtest, err)
            if err is None:
                return
            kind = "fail" if issubclass(err[0], test.failureException) else "error"
            if self._sub_failure is None or (self._sub_failure[0] == "fail" and kind == "error"):
                self._sub_failure = (kind, f"{subtest.id()}\n" + self._tb(test, err))

    result = Result()
    selected.run(result)
    emit(event="done", counts=counts)
    out.close()
    # Threads left behind by a test must not keep the process alive.
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


# --------------------------------------------------------------------------- parent side


def read_records(path):
    records = []
    if os.path.exists(path):
        with open(path, encoding="utf-8") as f:
            for line in f:
                line = line.strip()
                if not line:
                    continue
                try:
                    records.append(json.loads(line))
                except ValueError:
                    pass  # a torn last line from a killed child
    return records


def tail(path, nbytes=6000, start=0):
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            size = f.tell()
            f.seek(max(start, size - nbytes))
            return f.read().decode("utf-8", "replace")
    except OSError:
        return ""


def run_file(spec, side, opts, only_ids=None, tag=""):
    """Run one test file on one side, restarting after crashes and hangs.

    Returns {"status", "tests": {id: {...}}, "restarts", "counts", "seconds"}."""
    os.makedirs(RESULTS_DIR, exist_ok=True)
    stem = f"{side}.{spec.name}{tag}"
    # The working files are private to this run (two runs at once must not
    # mix their records); the log is copied to results/ at the end.
    workdir = tempfile.mkdtemp(prefix=f"flconf-{side}-{spec.name}-")
    final_log = os.path.join(RESULTS_DIR, stem + ".log")
    log_path = os.path.join(workdir, "log.txt")
    jsonl = os.path.join(workdir, "records.jsonl")
    tests = {}
    counts = {}
    meta = {}
    status = "ok"
    restarts = 0
    t_start = time.monotonic()
    deadline = t_start + opts.file_timeout
    only_path = None
    if only_ids is not None:
        only_path = os.path.join(workdir, "only.json")
        with open(only_path, "w", encoding="utf-8") as f:
            json.dump(sorted(only_ids), f)
    try:
        while True:
            skip_path = os.path.join(workdir, "skip.json")
            with open(skip_path, "w", encoding="utf-8") as f:
                json.dump(sorted(tests), f)
            cmd = [
                sys.executable, os.path.abspath(__file__), "--child",
                "--side", side, "--file", spec.name, "--out", jsonl, "--skip", skip_path,
                "--test-timeout", str(opts.test_timeout),
            ]
            if only_path:
                cmd += ["--only", only_path]
            env = dict(os.environ)
            env.pop("PYTHONASYNCIODEBUG", None)
            env["PYTHONFAULTHANDLER"] = "1"
            start_lines = len(read_records(jsonl))
            with open(log_path, "ab") as log:
                log.write(f"\n===== {side} {spec.name} (start {restarts}) =====\n".encode())
                log.flush()
                log_offset = log.tell()
                proc = subprocess.Popen(cmd, cwd=workdir, stdin=subprocess.DEVNULL, stdout=log, stderr=log, env=env,
                                        start_new_session=True)
                LIVE.add(proc.pid)
                timed_out = False
                try:
                    proc.wait(timeout=max(1.0, deadline - time.monotonic()))
                except subprocess.TimeoutExpired:
                    timed_out = True
                    try:
                        os.killpg(proc.pid, 9)
                    except ProcessLookupError:
                        pass
                    proc.wait()
                # Whatever the test left behind in the session (servers, children).
                try:
                    os.killpg(proc.pid, 9)
                except (ProcessLookupError, PermissionError):
                    pass
                LIVE.discard(proc.pid)
            records = read_records(jsonl)[start_lines:]
            running = None
            done = False
            progressed = False
            for rec in records:
                ev = rec.get("event")
                if ev == "start":
                    running = rec["id"]
                elif ev == "end":
                    progressed = True
                    tests[rec["id"]] = {k: rec[k] for k in ("outcome", "detail", "time") if k in rec}
                    if rec["id"] == running:
                        running = None
                elif ev == "done":
                    done = True
                    for k, v in rec.get("counts", {}).items():
                        counts[k] = counts.get(k, 0) + v
                elif ev == "meta":
                    meta.update({k: v for k, v in rec.items() if k != "event"})
            if done:
                break
            log_tail = tail(log_path, start=log_offset)
            if timed_out:
                why, outcome = f"file time budget of {opts.file_timeout:.0f} s exhausted", "hang"
            elif "Timeout (" in log_tail:
                why, outcome = f"no progress for {opts.test_timeout:.0f} s (faulthandler watchdog)", "hang"
            else:
                rc = proc.returncode
                why = f"process died (signal {-rc})" if rc is not None and rc < 0 else f"process exited {rc}"
                outcome = "crash"
            if running is not None:
                tests[running] = {"outcome": outcome, "detail": why + "\n" + log_tail[-3000:], "time": None}
            else:
                tests[f"{spec.name}.<process>#{restarts}"] = {"outcome": "crash", "detail": why + "\n" + log_tail[-3000:], "time": None}
            restarts += 1
            if timed_out:
                status = "timeout"
                break
            if restarts > MAX_RESTARTS:
                status = "crashed"
                break
            if running is None and not progressed:
                status = "crashed"  # dies before its first test: restarting cannot help
                break
            status = "restarted"
    finally:
        try:
            shutil.copyfile(log_path, final_log + ".tmp")
            os.replace(final_log + ".tmp", final_log)
        except OSError:
            pass
        shutil.rmtree(workdir, ignore_errors=True)
    return {"status": status, "restarts": restarts, "log": final_log, "counts": counts, "meta": meta,
            "seconds": round(time.monotonic() - t_start, 1), "tests": tests}


def run_side_files(specs, sides, opts, only=None, tag=""):
    """Run (file, side) jobs in parallel; returns {side: {file: result}}."""
    jobs = [(spec, side) for spec in specs for side in sides]
    results = {side: {} for side in sides}

    def job(item):
        spec, side = item
        only_ids = None
        if only is not None:
            only_ids = {t for t in only if fnmatch.fnmatchcase(spec.name, t.split(".", 1)[0])}
            if not only_ids:
                return spec, side, None
        res = run_file(spec, side, opts, only_ids=only_ids, tag=tag)
        if not opts.quiet:
            c = tally(res["tests"])
            extra = ""
            if res["status"] != "ok":
                extra = f" [{res['status']}, {res['restarts']} restart(s); log: {os.path.relpath(res['log'])}]"
            print(f"  {side:9} {spec.name:20} {res['seconds']:6.1f} s  pass {c['pass']:3}  "
                  f"not passing {sum(c.values()) - c['pass'] - c['skip'] - c['excluded']:3}{extra}", flush=True)
        return spec, side, res

    pool = ThreadPoolExecutor(max_workers=opts.jobs)
    try:
        for spec, side, res in pool.map(job, jobs):
            if res is not None:
                results[side][spec.name] = res
    except KeyboardInterrupt:
        # The children run in their own sessions (so that a test's leftovers
        # can be killed with them): Ctrl+C does not reach them by itself.
        pool.shutdown(wait=False, cancel_futures=True)
        for pid in list(LIVE):
            try:
                os.killpg(pid, 9)
            except (ProcessLookupError, PermissionError):
                pass
        raise
    pool.shutdown()
    return results


def tally(tests):
    c = {k: 0 for k in OUTCOMES}
    for t in tests.values():
        c[t["outcome"]] = c.get(t["outcome"], 0) + 1
    return c


def save_results(results, opts):
    os.makedirs(RESULTS_DIR, exist_ok=True)
    for side, files in results.items():
        path = os.path.join(RESULTS_DIR, f"{side}.json")
        tmp = f"{path}.{os.getpid()}.tmp"
        doc = {
            "side": side,
            "python": sys.version,
            "executable": sys.executable,
            "when": time.strftime("%Y-%m-%d %H:%M:%S"),
            "kept_variant": KEPT_VARIANT,
            "git_head": git_head(),
            "extension_sha256": sorted({r.get("meta", {}).get("extension_sha256", "?") for r in files.values()})
            if side == "ferroloop" else None,
            "files": files,
        }
        with open(tmp, "w", encoding="utf-8") as f:
            json.dump(doc, f, indent=1, sort_keys=True)
        os.replace(tmp, path)
        if not opts.quiet:
            print(f"wrote {os.path.relpath(path)}")


def load_results(side):
    path = os.path.join(RESULTS_DIR, f"{side}.json")
    with open(path, encoding="utf-8") as f:
        return json.load(f)["files"]


def print_table(results, specs):
    stock = results.get("stock", {})
    ferro = results.get("ferroloop", {})
    print()
    print(f"Selector variants: only {KEPT_VARIANT} runs, on both sides "
          f"({', '.join(DROPPED_VARIANTS)} dropped: the loop under test has no selector; "
          f"the Windows-only Proactor* classes are dropped too).")
    for spec in specs:
        if spec.note:
            print(f"{spec.name}: {spec.note}.")
    print()
    head = (f"{'file':20} | {'stock asyncio':^23} | {'ferroloop':^47} |")
    sub = (f"{'':20} | {'pass':>5} {'fail':>5} {'err':>5} {'skip':>5} | {'pass':>5} {'fail':>5} {'err':>5} "
           f"{'skip':>5} {'excl':>5} {'hang':>5} {'crash':>5} | status")
    print(head)
    print(sub)
    print("-" * len(sub))
    tot_s = {k: 0 for k in OUTCOMES}
    tot_f = {k: 0 for k in OUTCOMES}

    def cols(c, full):
        fail = c["fail"] + c["xpass"]
        s = f"{c['pass']:5} {fail:5} {c['error']:5} {c['skip'] + c['xfail']:5}"
        if full:
            s += f" {c['excluded']:5} {c['hang']:5} {c['crash']:5}"
        return s

    for spec in specs:
        if spec.name not in stock and spec.name not in ferro:
            continue
        cs = tally(stock[spec.name]["tests"]) if spec.name in stock else None
        cf = tally(ferro[spec.name]["tests"]) if spec.name in ferro else None
        for c, tot in ((cs, tot_s), (cf, tot_f)):
            if c:
                for k in OUTCOMES:
                    tot[k] += c[k]
        status = []
        for side, res in (("stock", stock.get(spec.name)), ("ferroloop", ferro.get(spec.name))):
            if res and res["status"] != "ok":
                status.append(f"{side}: {res['status']}")
        s_cols = cols(cs, False) if cs else f"{'-':>23}"
        f_cols = cols(cf, True) if cf else f"{'-':>47}"
        print(f"{spec.name:20} | {s_cols} | {f_cols} | {', '.join(status) or 'ok'}")
    print("-" * len(sub))
    s_tot = cols(tot_s, False) if stock else f"{'-':>23}"
    f_tot = cols(tot_f, True) if ferro else f"{'-':>47}"
    print(f"{'total':20} | {s_tot} | {f_tot} |")

    shas = sorted({r.get("meta", {}).get("extension_sha256") for r in ferro.values()} - {None})
    if shas:
        print(f"ferroloop extension under test (sha256 prefix): {', '.join(shas)}"
              + ("  <- CHANGED DURING THE RUN" if len(shas) > 1 else ""))
    for side, files in (("stock", stock), ("ferroloop", ferro)):
        made = {}
        for res in files.values():
            for k, v in res.get("counts", {}).items():
                made[k] = made.get(k, 0) + v
        if made:
            print(f"loops made on the {side} side: " + ", ".join(f"{k}={v}" for k, v in sorted(made.items())))


def regressions(results):
    """Tests stock asyncio passes and ferroloop does not (excluded ones aside)."""
    out = []
    stock = results.get("stock", {})
    ferro = results.get("ferroloop", {})
    for fname, fres in ferro.items():
        sres = stock.get(fname, {}).get("tests", {})
        for tid, t in sorted(fres["tests"].items()):
            if t["outcome"] in ("pass", "skip", "excluded", "xfail"):
                continue
            s = sres.get(tid)
            if s is None or s["outcome"] == "pass":
                out.append((tid, t))
    return out


_EXC_LINE = re.compile(r"^(?:[A-Za-z_][\w.]*\.)?[A-Z]\w*(?:Error|Exception|Warning|Exit|Interrupt|Failure|Timeout)\b")


def key_line(detail):
    """The line of a traceback that says what went wrong (the exception)."""
    detail = detail or ""
    for marker in ("\nStdout:\n", "\nStderr:\n"):  # output unittest appends
        detail = detail.split(marker, 1)[0]
    lines = [l for l in detail.splitlines() if l.strip()]
    if lines and not lines[0].startswith("Traceback") and "Traceback" not in detail[:200]:
        return lines[0][:300]  # hang/crash/skip: the first line says why
    for l in reversed(lines):
        if _EXC_LINE.match(l):
            return l[:300]
    return lines[-1][:300] if lines else ""


def print_test(tid, t, verbose):
    print(f"  {t['outcome']:6} {tid}")
    if verbose:
        print("      " + (t.get("detail") or "").rstrip().replace("\n", "\n      "))
    else:
        print(f"         {key_line(t.get('detail', ''))}")


def print_regressions(results, verbose=False):
    regs = regressions(results)
    print()
    print(f"Tests stock asyncio passes and ferroloop does not: {len(regs)}")
    for tid, t in regs:
        print_test(tid, t, verbose)


def print_failures(side, files, verbose=False):
    bad = [(tid, t) for res in files.values() for tid, t in sorted(res["tests"].items())
           if t["outcome"] not in ("pass", "skip", "excluded", "xfail")]
    print()
    print(f"Tests not passing on {side}: {len(bad)}")
    for tid, t in bad:
        print_test(tid, t, verbose)


# --------------------------------------------------------------------------- check / baseline


def read_baseline():
    with open(BASELINE_PATH, encoding="utf-8") as f:
        return json.load(f)


def write_baseline(ferro, names=None):
    """baseline.json = the ferroloop passes of this run, minus flaky.txt.
    With ``names`` (a partial run), the other files' entries are kept."""
    flaky = load_patterns(FLAKY_PATH)
    passing = {tid for res in ferro.values() for tid, t in res["tests"].items()
               if t["outcome"] == "pass" and not match_patterns(tid, flaky)}
    if names is not None:
        try:
            passing |= {t for t in read_baseline() if t.split(".", 1)[0] not in names}
        except FileNotFoundError:
            pass
    with open(BASELINE_PATH, "w", encoding="utf-8") as f:
        json.dump(sorted(passing), f, indent=0)
        f.write("\n")
    print(f"wrote {os.path.relpath(BASELINE_PATH)}: {len(passing)} passing tests (flaky.txt left out)")


def ferroloop_tests(results):
    """The ferroloop side's tests of ``results``, all files: {test id: result}."""
    return {tid: t for res in results["ferroloop"].values() for tid, t in res["tests"].items()}


def retry_once(specs, opts, got, lost, tag):
    """One retry of the tests of ``lost`` that failed or errored in ``got``
    (not of hangs and crashes), in fresh processes: a test that passes on the
    retry is reported as flaky, not as a regression. Returns the rest."""
    again = [t for t in lost if got.get(t, {}).get("outcome") in ("fail", "error")]
    if not again:
        return lost
    print(f"retrying {len(again)} failed test(s) once", flush=True)
    retry = run_side_files(specs, ["ferroloop"], opts, only=set(again), tag=tag)
    got2 = ferroloop_tests(retry)
    flaky = {t for t in again if got2.get(t, {}).get("outcome") == "pass"}
    for t in sorted(flaky):
        print(f"FLAKY (failed, then passed on retry): {t}")
    return [t for t in lost if t not in flaky]


def do_compare(opts, specs):
    """Both sides on this interpreter, nothing saved: 1 if ferroloop fails a
    test that stock asyncio passes, unless by design (BY_DESIGN) or flaky
    (passes when retried once)."""
    t0 = time.monotonic()
    print(f"conformance --compare on Python {sys.version.split()[0]}: "
          f"{', '.join(s.name for s in specs)} ({opts.jobs} jobs)", flush=True)
    results = run_side_files(specs, list(SIDES), opts, only=None, tag=".compare")
    print_table(results, specs)
    regs = [tid for tid, _ in regressions(results)]
    known = [t for t in regs if t in BY_DESIGN]
    lost = [t for t in regs if t not in BY_DESIGN]
    got = ferroloop_tests(results)
    lost = retry_once(specs, opts, got, lost, tag=".compare-retry")
    for t in known:
        print(f"by design: {t} ({BY_DESIGN[t]})")
    elapsed = time.monotonic() - t0
    if lost:
        print(f"\n{len(lost)} test(s) stock asyncio passes and ferroloop does not:")
        for t in lost:
            r = got.get(t, {})
            print(f"  {r.get('outcome', 'missing'):8} {t}\n           {key_line(r.get('detail', ''))}")
        print(f"conformance --compare: FAILED ({elapsed:.0f} s)")
        return 1
    n = sum(1 for t in got.values() if t["outcome"] == "pass")
    print(f"conformance --compare: OK, {n} tests pass on ferroloop, no difference but by design ({elapsed:.0f} s)")
    return 0


def do_check(opts, specs):
    try:
        baseline = set(read_baseline())
    except FileNotFoundError:
        print(f"conformance --check: no {os.path.relpath(BASELINE_PATH)}; make one with run.py --update-baseline")
        return 2
    names = {s.name for s in specs}
    baseline = {t for t in baseline if t.split(".", 1)[0] in names}
    t0 = time.monotonic()
    print(f"conformance --check: {len(baseline)} baseline tests on ferroloop ({opts.jobs} jobs)", flush=True)
    results = run_side_files(specs, ["ferroloop"], opts, only=baseline, tag=".check")
    got = ferroloop_tests(results)
    lost = sorted(t for t in baseline if got.get(t, {}).get("outcome") != "pass")
    lost = retry_once(specs, opts, got, lost, tag=".retry")
    if lost:
        print(f"\n{len(lost)} baseline test(s) no longer pass on ferroloop:")
        for t in lost:
            r = got.get(t)
            if r is None:
                fres = results["ferroloop"].get(t.split(".", 1)[0], {})
                why = f"its file {fres['status']}" if fres.get("status") in ("crashed", "timeout") else \
                    "renamed or excluded?"
                print(f"  missing  {t}  (not run: {why})")
            else:
                print(f"  {r['outcome']:8} {t}\n           {key_line(r.get('detail', ''))}")
        print(f"conformance --check: FAILED ({time.monotonic() - t0:.0f} s)")
        return 1
    print(f"conformance --check: OK, all {len(baseline)} baseline tests pass ({time.monotonic() - t0:.0f} s)")
    return 0


# --------------------------------------------------------------------------- main


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--check", action="store_true", help="ferroloop only, baseline tests only; non-zero if one fails")
    p.add_argument("--update-baseline", action="store_true", help="write baseline.json from this run's ferroloop passes")
    p.add_argument("--report", action="store_true", help="print the differences from the last saved results, run nothing")
    p.add_argument("--compare", action="store_true",
                   help="both sides, nothing saved; non-zero if ferroloop fails a test stock passes (not by design)")
    p.add_argument("--side", choices=("both",) + SIDES, default="both")
    p.add_argument("--files", help="comma-separated subset of: " + ",".join(f.name for f in FILES))
    p.add_argument("--tests", help="comma-separated test ids or globs (e.g. 'test_ssl.*.test_create_server_ssl_1')")
    p.add_argument("--jobs", "-j", type=int, default=max(1, min(os.cpu_count() or 1, 4)))
    p.add_argument("--file-timeout", type=float, default=DEFAULT_FILE_TIMEOUT)
    p.add_argument("--test-timeout", type=float, default=DEFAULT_TEST_TIMEOUT)
    p.add_argument("--verbose", "-v", action="store_true", help="full tracebacks in the lists of failures")
    p.add_argument("--quiet", "-q", action="store_true")
    # Internal: one file in this process.
    p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--file", help=argparse.SUPPRESS)
    p.add_argument("--out", help=argparse.SUPPRESS)
    p.add_argument("--skip", help=argparse.SUPPRESS)
    p.add_argument("--only", help=argparse.SUPPRESS)
    opts = p.parse_args(argv)

    if opts.child:
        return child_main(opts)

    specs = FILES
    if opts.files:
        names = [n.strip() for n in opts.files.split(",") if n.strip()]
        unknown = [n for n in names if n not in FILES_BY_NAME]
        if unknown:
            p.error(f"unknown file(s): {', '.join(unknown)}")
        specs = [FILES_BY_NAME[n] for n in names]

    if opts.report:
        results = {}
        for side in SIDES:
            try:
                names = {s.name for s in specs}
                results[side] = {k: v for k, v in load_results(side).items() if k in names}
            except FileNotFoundError:
                pass
        print_table(results, specs)
        print_regressions(results, verbose=opts.verbose)
        return 0

    if opts.check:
        return do_check(opts, specs)
    if opts.compare:
        return do_compare(opts, specs)

    sides = list(SIDES) if opts.side == "both" else [opts.side]
    if opts.update_baseline and "ferroloop" not in sides:
        p.error("--update-baseline needs the ferroloop side")
    t0 = time.monotonic()
    print(f"conformance: {', '.join(s.name for s in specs)} on {' and '.join(sides)} ({opts.jobs} jobs)", flush=True)
    only = None
    if opts.tests:
        only = {t.strip() for t in opts.tests.split(",") if t.strip()}
        specs = [s for s in specs if any(fnmatch.fnmatchcase(s.name, t.split(".", 1)[0]) for t in only)]
    results = run_side_files(specs, sides, opts, only=only, tag=".sel" if only else "")
    if only is not None:
        pass  # a selection of tests: printed, not saved
    elif not opts.files:
        save_results(results, opts)
    else:
        # A partial run must not clobber the full results: merge into them.
        merged = {}
        for side in sides:
            try:
                merged[side] = load_results(side)
            except FileNotFoundError:
                merged[side] = {}
            merged[side].update(results[side])
        save_results(merged, opts)
    print_table(results, specs)
    if "stock" in results and "ferroloop" in results:
        print_regressions(results, verbose=opts.verbose)
    else:
        for side, files in results.items():
            print_failures(side, files, verbose=opts.verbose)
    if opts.update_baseline:
        if only is not None:
            print("--update-baseline ignored with --tests")
        else:
            write_baseline(results["ferroloop"], names={s.name for s in specs} if opts.files else None)
    print(f"conformance: done in {time.monotonic() - t0:.0f} s")
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt:
        print("\ninterrupted", file=sys.stderr)
        os._exit(130)
