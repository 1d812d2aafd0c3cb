# ferroloop: asyncio's transports and protocols on a Rust engine.
#
#   make demo         build, then run the spec's examples with their transcripts
#   make test         every test: cargo's, then pytest's (once python/tests exists)
#   make deps         Debian packages the tests use, and the .venv for the Python side
#   make conformance  CPython's test_asyncio against ferroloop (once the Python face has it)
#   make test-versions the Python face on CPython 3.12 (pyenv, where present) and 3.13,
#                     3.14, 3.15 (a Debian sid chroot made by scripts/sid-chroot.sh):
#                     pytest, then that version's test_asyncio against its stock asyncio;
#                     CI runs it after `make test`
#   make faults       the fault suite (python/faults): ferroloop, asyncio and uvloop servers
#                     under many connections, resets, churn, a signal storm, a slow reader;
#                     QUICK=1 for smaller counts (CI)
#   make dist         wheels for CPython 3.11-3.15 and an sdist in dist/, each checked without Rust
#   make clean        remove build products (distclean: the .venv too)
#
# Needs only cargo and CPython 3.11 with pip; `deps` installs the rest.

SHELL := bash
.SHELLFLAGS := -eu -o pipefail -c
.DEFAULT_GOAL := demo
# The demos listen on fixed ports: never run two recipes at once, even under -j.
.NOTPARALLEL:

CARGO   ?= cargo
PYTHON  ?= python3
VENV    := .venv
PY      := $(VENV)/bin/python
EXAMPLES := target/release/examples

APT_PACKAGES := socat openssl curl
PY_PACKAGES  := 'maturin>=1.5,<2' pytest pytest-timeout aiohttp uvloop uvicorn httptools websockets \
                gunicorn uvicorn-worker hypercorn 'pytest-asyncio>=1.4' anyio
# Per-test limit for pytest (pytest-timeout); a hung test fails instead of hanging CI.
PYTEST_FLAGS ?= --timeout=120

SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
# The stamp's name carries a checksum of the package list: editing the list reinstalls.
VENV_STAMP := $(VENV)/.stamp-$(shell echo "$(PY_PACKAGES)" | cksum | cut -d' ' -f1)

.PHONY: deps apt-deps venv build demo demo-rust demo-python develop test test-rust test-python test-conformance test-versions \
        conformance doc clean distclean dist faults

# ---------------------------------------------------------------------------- deps

deps: apt-deps venv

# Installs only what is missing, so a re-run costs a few dpkg-query calls. apt-get
# update runs first when the package lists are empty, and again if an install fails.
apt-deps:
	@missing=""; \
	for p in $(APT_PACKAGES); do \
	  dpkg-query -W -f='$${Status}' $$p 2>/dev/null | grep -q "install ok installed" || missing="$$missing $$p"; \
	done; \
	if [ -z "$$missing" ]; then echo "deps: Debian packages present ($(APT_PACKAGES))"; exit 0; fi; \
	echo "deps: installing$$missing"; \
	apt_install() { $(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends $$missing; }; \
	apt_update() { $(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get update -q; }; \
	if ! ls /var/lib/apt/lists/*_Packages >/dev/null 2>&1; then apt_update; fi; \
	apt_install || { apt_update && apt_install; }

venv: $(VENV_STAMP)

$(VENV_STAMP):
	@rm -f $(VENV)/.stamp-*
	@[ -x $(PY) ] || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q $(PY_PACKAGES)
	@touch $@

# ---------------------------------------------------------------------------- build

build:
	$(CARGO) build --release --examples -p ferroloop

# Build the Python face (crates/ferroloop-py + python/ferroloop) into the .venv.
# Only meaningful once pyproject.toml exists.
develop: venv
	@if [ -f pyproject.toml ]; then \
	  VIRTUAL_ENV=$(abspath $(VENV)) PATH="$(abspath $(VENV))/bin:$$PATH" $(VENV)/bin/maturin develop --release -q; \
	else echo "develop: no pyproject.toml yet: the Python face is not built"; fi

# ---------------------------------------------------------------------------- demo

# The spec's examples, run the way a person would: the echo server in the
# background, the client once the port accepts, then Ctrl+C (SIGINT) for the server.
demo: build demo-rust demo-python

demo-rust: build
	@scripts/demo.sh pair 8888 "$(EXAMPLES)/tcp_echo_server" "$(EXAMPLES)/tcp_echo_client"
	@scripts/demo.sh pair udp/9999 "$(EXAMPLES)/udp_echo_server" "$(EXAMPLES)/udp_echo_client"
	@scripts/demo.sh run $(EXAMPLES)/register_open_socket
	@scripts/demo.sh run $(EXAMPLES)/flow_control_echo
	@mkdir -p target/tls-demo && openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 1 \
	  -subj /CN=localhost -addext subjectAltName=DNS:localhost -addext basicConstraints=critical,CA:FALSE \
	  -keyout target/tls-demo/key.pem -out target/tls-demo/cert.pem 2>/dev/null
	@scripts/demo.sh pair 8443 "$(EXAMPLES)/tls_echo_server target/tls-demo/cert.pem target/tls-demo/key.pem 8443" \
	  "$(EXAMPLES)/tls_echo_client target/tls-demo/cert.pem 8443"

# Hook for the Python face: Python examples are added by the Python face.
# Runs examples/python/*.py under ferroloop (`python -m ferroloop script.py`), if the
# directory exists; a `NAME_server.py` runs in the background for its `NAME_client.py`.
demo-python:
	@if [ -d examples/python ]; then \
	  $(MAKE) --no-print-directory develop; \
	  scripts/demo.sh python-examples examples/python "$(PY) -m ferroloop"; \
	else echo "demo-python: no examples/python yet"; fi

# ---------------------------------------------------------------------------- test

test: deps test-rust test-python test-conformance

# Debug build: the whole suite (with its 1000-connection stress test) takes well
# under a minute, less than a release build would.
test-rust:
	$(CARGO) test --workspace --no-fail-fast

# pytest exits 5 when it collects nothing: that is not a failure of the code.
test-python:
	@if [ -d python/tests ]; then \
	  $(MAKE) --no-print-directory develop; \
	  rc=0; $(PY) -m pytest $(PYTEST_FLAGS) python/tests || rc=$$?; \
	  if [ $$rc = 5 ]; then echo "test-python: no tests collected in python/tests"; rc=0; fi; \
	  exit $$rc; \
	else echo "test-python: no python/tests yet (the Python face adds them)"; fi

# CPython's test_asyncio on ferroloop: every test of the committed baseline
# (python/conformance/baseline.json) must still pass.
test-conformance: develop
	$(PY) python/conformance/run.py --check

# Every other current CPython (docs/python-versions.md): 3.12 from pyenv where it
# exists, 3.13-3.15 from a Debian sid chroot (scripts/sid-chroot.sh makes it, about a
# minute). Per version: build into .venv-X.Y, pytest, then run.py --compare.
PY_VERSIONS ?= 3.12 3.13 3.14 3.15

test-versions: apt-deps
	PY_VERSIONS="$(PY_VERSIONS)" PY_PACKAGES="$(subst ',,$(PY_PACKAGES))" PYTEST_FLAGS="$(PYTEST_FLAGS)" scripts/test-versions.sh

faults: develop
	$(PY) python/faults/run.py $(if $(QUICK),--quick)

conformance:
	@if [ -f python/conformance/run.py ]; then \
	  $(MAKE) --no-print-directory develop; \
	  $(PY) python/conformance/run.py; \
	else echo "conformance: the Python face is not built yet (no python/conformance/run.py)"; fi

doc:
	$(CARGO) doc -p ferroloop --no-deps

# ---------------------------------------------------------------------------- clean

clean:
	$(CARGO) clean
	rm -rf dist build python/ferroloop/*.so
	find . -name __pycache__ -type d -not -path './$(VENV)/*' -prune -exec rm -rf {} +

distclean: clean
	rm -rf $(VENV) .venv-*

# ---------------------------------------------------------------------------- bench

# Benchmarks against tokio, a raw mio loop, uvloop, asyncio and rloop (bench/run.py):
# the full matrix in about 16 minutes (10 for the echo cells, 6 for the server cells:
# uvicorn, aiohttp, websockets, churn; wrk is apt-installed when missing), QUICK=1 for
# a 3-minute subset. Writes
# bench/results/ (JSON, latest.md, latest.png); see docs/benchmarks.md. No timing is
# ever asserted in `test`; `python3 bench/run.py --smoke` checks correctness only.
.PHONY: bench
bench:
	QUICK="$(QUICK)" $(PYTHON) bench/run.py

# ---------------------------------------------------------------------------- dist

# A wheel per CPython (3.11, 3.12 here; 3.13-3.15 in the sid chroot of
# scripts/sid-chroot.sh), manylinux-tagged through zig, and an sdist, all in dist/;
# each wheel is installed in a fresh venv with no cargo on PATH and runs the spec's
# "register an open socket" example. A summary table at the end; see scripts/dist.sh.
dist:
	scripts/dist.sh
