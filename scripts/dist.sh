#!/usr/bin/env bash
# `make dist`: a wheel of the Python face per CPython 3.11-3.15 and an sdist,
# in dist/, each wheel proved to install and run on a machine without Rust.
#
#   scripts/dist.sh                  everything (DIST_VERSIONS="3.11 3.14": some)
#   scripts/dist.sh one X.Y PYTHON   build and check one version where it runs
#                                    (the main run calls it on the host or in the chroot)
#
# Interpreters: 3.11 and 3.12 on the host (PATH, then pyenv; absent: skipped, said
# so), 3.13-3.15 in the Debian sid chroot of scripts/sid-chroot.sh (made if missing).
# Tags: maturin links with zig (the ziglang package) against an old glibc, so
# the wheel gets $MANYLINUX (default manylinux_2_28) although the host has glibc
# 2.36 and sid 2.4x. Without zig, maturin's own audit would give the tag of the
# glibc symbols the build machine pulled in (manylinux_2_34 here) or refuse
# 2_28. If the zig build fails, a build without zig (maturin picks the lowest
# tag its audit accepts), then a plain linux_x86_64 one, is tried; the table
# says which tag each wheel got and why.
# The check: a fresh venv of that version, run with PATH=/usr/bin:/bin (no cargo,
# no rustc), `pip install --no-index` of the wheel, then the spec's "register an
# open socket" example under `python -m ferroloop`; it must print "Received: abc".
# Build venvs (maturin + ziglang, ~450 MB each) and cargo's objects stay in target/dist
# (host) and target/sid/dist (chroot: objects built against sid's glibc must never
# meet the host's); not target/ or target/sid themselves, where a concurrent `maturin
# develop` replaces target/maturin/lib_ferroloop.so under a build (seen: it broke one).
# Idempotent. Exit status non-zero if a version that exists failed.
set -euo pipefail

ROOT_DIR=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT_DIR"
VERSIONS=${DIST_VERSIONS:-3.11 3.12 3.13 3.14 3.15}
MANYLINUX=${MANYLINUX:-manylinux_2_28}
SDIST_BUILD=${SDIST_BUILD:-1}          # 0: skip building a wheel from the sdist
EXAMPLE=examples/python/register_open_socket.py
EXPECTED="Received: abc"
RESULTS=$ROOT_DIR/target/dist/results  # "version|wheel|tag|status|note" lines
CHROOT_SCRIPT=scripts/sid-chroot.sh

log() { printf 'dist: %s\n' "$*" >&2; }
record() { printf '%s|%s|%s|%s|%s\n' "${@//|//}" >>"$RESULTS"; }

# A venv with maturin (and zig if it installs) for building; kept between runs.
build_venv() { # $1: interpreter, $2: venv directory
    "$2/bin/python" -c pass 2>/dev/null || { rm -rf "$2"; "$1" -m venv "$2"; }
    [ -x "$2/bin/maturin" ] || "$2/bin/python" -m pip install -q 'maturin>=1.5,<2'
    "$2/bin/python" -c 'import ziglang' 2>/dev/null || "$2/bin/python" -m pip install -q ziglang \
        || log "ziglang did not install: no zig builds (no manylinux_2_28 tag)"
}

# The environment of the checks: no cargo/rustc on PATH, pip's settings kept.
clean_env() {
    local pipvars
    mapfile -t pipvars < <(env | grep '^PIP_' || true)
    env -i PATH=/usr/bin:/bin HOME="$HOME" LANG=C.UTF-8 "${pipvars[@]}" "$@"
}

# Installs wheel $2 in a fresh venv of interpreter $1 and runs the example.
# Prints a note; returns non-zero on failure.
check_wheel() {
    local py=$1 whl=$2 tmp rc=0 note="python -m ferroloop"
    tmp=$(mktemp -d)
    if clean_env sh -c 'command -v cargo || command -v rustc' >/dev/null; then
        echo "cargo/rustc on the check's PATH"; rm -rf "$tmp"; return 1
    fi
    clean_env "$py" -m venv "$tmp/venv" && clean_env "$tmp/venv/bin/python" -m pip install -q --no-index "$whl" >&2 \
        || { echo "pip install --no-index failed"; rm -rf "$tmp"; return 1; }
    # Run from the temporary directory: only the installed ferroloop can be imported.
    cd "$tmp"
    clean_env timeout 60 venv/bin/python -m ferroloop "$ROOT_DIR/$EXAMPLE" >out 2>err || rc=$?
    if [ $rc != 0 ] && grep -q 'no current event loop' err; then
        # 3.14 made asyncio.get_event_loop() raise without a current loop,
        # whatever the policy: until `python -m ferroloop` sets one, set it here.
        note="python -m ferroloop fails on 3.14+ (get_event_loop): ran via set_event_loop"
        rc=0
        clean_env timeout 60 venv/bin/python -c 'import asyncio, ferroloop, runpy, sys
asyncio.set_event_loop(ferroloop.new_event_loop())
runpy.run_path(sys.argv[1], run_name="__main__")' "$ROOT_DIR/$EXAMPLE" >out 2>err || rc=$?
    fi
    clean_env venv/bin/python -c 'import ferroloop, sys; assert ferroloop.__file__.startswith(sys.prefix)' \
        || { rc=1; note="ferroloop not imported from the venv"; }
    [ $rc = 0 ] && [ "$(cat out)" = "$EXPECTED" ] || { note="example: exit $rc, output '$(head -c 200 out)' $(tail -n1 err)"; rc=1; }
    cd "$ROOT_DIR"; rm -rf "$tmp"
    echo "$note"; return $rc
}

# Builds and checks one version, where this runs (host or chroot); records a line.
one() {
    local v=$1 py=$2 base=${DIST_BASE:-$ROOT_DIR/target}/dist t0=$SECONDS venv out whl tag why="" attempt log_file note
    py=$("$py" -c 'import sys; print(sys.executable)')  # past pyenv's shims
    venv=$base/build-venv out=$base/out-$v
    export CARGO_TARGET_DIR=$base/cargo
    build_venv "$py" "$venv"
    export PATH="$venv/bin:$PATH"   # maturin finds zig as `python3 -m ziglang`
    # Attempts in order of preference; the first that builds wins.
    for attempt in "--zig --compatibility $MANYLINUX" "" "--compatibility linux"; do
        rm -rf "$out"; log_file=$out.log
        log "$v: maturin build --release --strip $attempt"
        # shellcheck disable=SC2086
        if maturin build --release --strip $attempt -i "$py" --out "$out" >"$log_file" 2>&1; then
            case $attempt in
                --zig*) why="${why}zig, $MANYLINUX" ;;
                "") why="${why}no zig: the tag maturin's audit accepts for the glibc it needs" ;;
                *) why="${why}plain linux tag" ;;
            esac
            break
        fi
        why="${why}'${attempt:-no zig}' failed: $(grep -E 'Caused by|error' "$log_file" | tail -n1 | sed 's/^ *//'); "
        log "$v: $why"
    done
    whl=$(ls "$out"/*.whl 2>/dev/null | head -n1 || true)
    if [ -z "$whl" ]; then record "$v" "-" "-" FAILED "no build: $why"; return 1; fi
    mv -f "$whl" "$ROOT_DIR/dist/"; whl=$ROOT_DIR/dist/$(basename "$whl")
    tag=$(basename "$whl" .whl | cut -d- -f5-)
    # Exactly one extension, of this version, in the wheel (none left over by `maturin develop`).
    "$py" - "$whl" "cpython-${v/./}-" <<'EOF' || { record "$v" "$(basename "$whl")" "$tag" FAILED "wrong extension in wheel"; return 1; }
import sys, zipfile
sos = [n for n in zipfile.ZipFile(sys.argv[1]).namelist() if n.endswith(".so")]
sys.exit(not (len(sos) == 1 and sys.argv[2] in sos[0]))
EOF
    log "$v: $(basename "$whl"): installing and running the example without Rust"
    if note=$(check_wheel "$py" "$whl"); then
        record "$v" "$(basename "$whl")" "$tag" OK "$why; $note; $((SECONDS - t0)) s"
    else
        record "$v" "$(basename "$whl")" "$tag" FAILED "$why; $note"; return 1
    fi
}

host_python() { # prints an interpreter of version $1 on the host
    local c
    for c in "$(command -v "python$1" || true)" "${PYENV_ROOT:-$HOME/.pyenv}"/versions/"$1"*/bin/"python$1"; do
        [ -n "$c" ] && [ -x "$c" ] && "$c" -c pass 2>/dev/null && { echo "$c"; return 0; }
    done
    return 1
}

if [ "${1:-}" = one ]; then shift; one "$@"; exit; fi

start=$SECONDS
mkdir -p dist target/dist
rm -f dist/ferroloop-*.whl dist/ferroloop-*.tar.gz "$RESULTS"

# The sdist: built with the host's build venv, checked for the crates and the package.
build_venv "$(host_python 3.11 || command -v python3)" target/dist/build-venv
target/dist/build-venv/bin/maturin sdist --out dist >target/dist/sdist.log 2>&1 || { cat target/dist/sdist.log; exit 1; }
sdist=$(ls dist/ferroloop-*.tar.gz)
missing=""; listing=$(tar tzf "$sdist")
for f in pyproject.toml Cargo.toml Cargo.lock crates/ferroloop/Cargo.toml crates/ferroloop/src/lib.rs \
         crates/ferroloop-py/Cargo.toml crates/ferroloop-py/src/lib.rs python/ferroloop/__init__.py python/ferroloop/__main__.py; do
    grep -qx "[^/]*/$f" <<<"$listing" || missing="$missing $f"
done
! grep -q '\.so$' <<<"$listing" || missing="$missing (and it carries a .so)"
if [ -n "$missing" ]; then record sdist "$(basename "$sdist")" - FAILED "missing:$missing"
elif [ "$SDIST_BUILD" = 0 ]; then record sdist "$(basename "$sdist")" - OK "contents checked; build skipped (SDIST_BUILD=0)"
else
    # pip builds it as a user would (maturin from the index, cargo on PATH), then the same check.
    log "sdist: pip wheel $(basename "$sdist") (3.11, cargo present)"
    rm -rf target/dist/sdist-wheel
    py311=$(host_python 3.11 || command -v python3)
    if CARGO_TARGET_DIR=$ROOT_DIR/target/dist/sdist-cargo target/dist/build-venv/bin/python -m pip wheel -q --no-deps --no-cache-dir \
           --no-binary ferroloop -w target/dist/sdist-wheel "$sdist" >target/dist/sdist.log 2>&1; then
        whl=$(ls target/dist/sdist-wheel/*.whl)
        if note=$(check_wheel "$("$py311" -c 'import sys; print(sys.executable)')" "$ROOT_DIR/$whl"); then
            record sdist "$(basename "$sdist")" "$(basename "$whl" .whl | cut -d- -f5-)" OK "contents checked; pip built $(basename "$whl"); $note; $((SECONDS - start)) s"
        else record sdist "$(basename "$sdist")" - FAILED "its wheel: $note"; fi
    else record sdist "$(basename "$sdist")" - FAILED "pip wheel failed: $(tail -n1 target/dist/sdist.log)"; fi
fi

chroot_ready=""
for v in $VERSIONS; do
    case $v in
        3.11|3.12)
            if py=$(host_python "$v"); then
                bash "$0" one "$v" "$py" || true
            else
                log "$v: no python$v on this machine: skipped"; record "$v" - - skipped "no interpreter"
            fi ;;
        *)
            if [ -z "$chroot_ready" ]; then
                chroot_ready=no
                SID_PYTHONS="3.13 3.14 3.15" "$CHROOT_SCRIPT" ensure && chroot_ready=yes
            fi
            if [ "$chroot_ready" != yes ]; then record "$v" - - FAILED "no sid chroot"; continue; fi
            if [ "$("$CHROOT_SCRIPT" python "$v" || true)" != present ]; then
                log "$v: not in the sid chroot: skipped"; record "$v" - - skipped "not in the chroot"; continue
            fi
            "$CHROOT_SCRIPT" run env DIST_BASE="$ROOT_DIR/target/sid" \
                bash scripts/dist.sh one "$v" "/usr/bin/python$v" || true ;;
    esac
done

echo
printf '%-7s %-62s %-24s %s\n' version wheel tag "install + example"
failed=0
while IFS='|' read -r v whl tag status note; do
    printf '%-7s %-62s %-24s %s\n' "$v" "$whl" "$tag" "$status"
    printf '          %s\n' "$note"
    [ "$status" != FAILED ] || failed=1
done <"$RESULTS"
for v in $VERSIONS; do grep -q "^$v|" "$RESULTS" || { echo "$v: no result (build or chroot run aborted)"; failed=1; }; done
echo "dist: $((SECONDS - start)) s; in dist/: $(cd dist && ls ferroloop-* | tr '\n' ' ')"
exit $failed
