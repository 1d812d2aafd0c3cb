#!/usr/bin/env bash
# The Python face on every current CPython: build the extension, run the
# pytest suite, then `run.py --compare` (that version's own test_asyncio on
# stock asyncio and on ferroloop; fails on a test stock passes and ferroloop
# does not, but for the by-design list).
#
#   scripts/test-versions.sh [X.Y ...]     default: 3.12 3.13 3.14 3.15
#
# Where each interpreter comes from:
#   3.12       a pyenv build on this machine where one exists, else skipped
#              (Debian sid no longer packages 3.12);
#   3.13-3.15  the Debian sid chroot of scripts/sid-chroot.sh (made here when
#              missing: about a minute).
# Each version has its own venv, .venv-X.Y; the chroot's builds use their own
# cargo target directory (target/sid), since objects compiled against sid's
# newer glibc must not be linked on the host.
#
# STEPS (default "pytest compare") picks what runs after the build.
# Exit status: non-zero if any version failed; a summary line per version.
set -uo pipefail

ROOT_DIR=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT_DIR"
VERSIONS=${*:-${PY_VERSIONS:-3.12 3.13 3.14 3.15}}
STEPS=${STEPS:-pytest compare}
PY_PACKAGES=${PY_PACKAGES:-maturin>=1.5,<2 pytest pytest-timeout aiohttp uvloop uvicorn httptools websockets gunicorn uvicorn-worker hypercorn pytest-asyncio>=1.4 anyio}
PYTEST_FLAGS=${PYTEST_FLAGS:---timeout=120}
CHROOT_SCRIPT=scripts/sid-chroot.sh

summary=()
failed=0

host_python() {
    local v=$1 c
    for c in "$(command -v "python$v" || true)" "${PYENV_ROOT:-$HOME/.pyenv}"/versions/"$v"*/bin/"python$v"; do
        if [ -n "$c" ] && [ -x "$c" ] && "$c" -c pass 2>/dev/null; then echo "$c"; return 0; fi
    done
    return 1
}

# The commands for one version, run on the host or inside the chroot.
# $1: the interpreter, $2: the venv, $3: the cargo target directory.
one_version() {
    cat <<EOF
set -euo pipefail
py=$1; venv=$2
export CARGO_TARGET_DIR=$3
[ -x \$venv/bin/python ] || "\$py" -m venv \$venv
echo "test-versions: \$(\$venv/bin/python -VV | head -n1) in \$venv"
# pip's own resolver picks versions that exist for this interpreter. When the
# whole set cannot install (a package without a wheel or a build for this
# version), each package on its own: the tests of one that is missing skip,
# saying which import failed.
if ! \$venv/bin/python -m pip install -q $(printf "'%s' " $PY_PACKAGES); then
  for pkg in $(printf "'%s' " $PY_PACKAGES); do
    \$venv/bin/python -m pip install -q "\$pkg" || echo "test-versions: \$pkg does not install on \$py: its tests skip"
  done
fi
VIRTUAL_ENV=\$PWD/\$venv PATH="\$PWD/\$venv/bin:\$PATH" \$venv/bin/maturin develop --release -q
rc=0
for step in $STEPS; do
  case \$step in
    pytest) \$venv/bin/python -m pytest $PYTEST_FLAGS -q -p no:cacheprovider python/tests || rc=1 ;;
    compare) \$venv/bin/python python/conformance/run.py --compare || rc=1 ;;
  esac
done
exit \$rc
EOF
}

for v in $VERSIONS; do
    start=$SECONDS
    rc=0
    # 3.13 on: the chroot's interpreter (its current release), even where a
    # host build (an older patch release under pyenv) exists.
    case $v in
        3.11|3.12) py=$(host_python "$v") ;;
        *) py= ;;
    esac
    if [ -n "$py" ]; then
        bash -c "$(one_version "$py" ".venv-$v" "$ROOT_DIR/target")" || rc=$?
        where="host $py"
    else
        case $v in
            3.11|3.12)
                echo "test-versions: no python$v here: skipped"
                summary+=("$v skipped (no interpreter)")
                continue ;;
        esac
        SID_PYTHONS="3.13 3.14 3.15" "$CHROOT_SCRIPT" ensure || { summary+=("$v FAILED (no chroot)"); failed=1; continue; }
        "$CHROOT_SCRIPT" run bash -c "$(one_version "/usr/bin/python$v" ".venv-$v" "$ROOT_DIR/target/sid")" || rc=$?
        where="sid chroot"
    fi
    if [ $rc = 0 ]; then
        summary+=("$v passed ($where, $((SECONDS - start)) s)")
    else
        summary+=("$v FAILED ($where, $((SECONDS - start)) s)")
        failed=1
    fi
done

echo
echo "test-versions summary:"
for line in "${summary[@]}"; do echo "  $line"; done
exit $failed
