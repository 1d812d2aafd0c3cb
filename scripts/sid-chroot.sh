#!/usr/bin/env bash
# A Debian sid chroot with the CPythons this machine's Debian does not have
# (3.13, 3.14, 3.15: interpreter, venv, headers, and the test suite that
# carries test_asyncio), for the version matrix (`make test-versions`).
#
#   scripts/sid-chroot.sh ensure        make or update the chroot (idempotent)
#   scripts/sid-chroot.sh run CMD...    run CMD inside it, in the project's copy
#                                       at the same path, as the current user
#   scripts/sid-chroot.sh python X.Y    print "present" if pythonX.Y is in it
#
# The mirror is read from this machine's own apt sources (never written in
# the repository). The host's CA bundle and pip configuration are copied in,
# and the host's cargo and rustup homes, /proc, /dev and /sys are bind-mounted
# while a command runs, so maturin builds the extension inside with the
# host's toolchain. The chroot lives in $SID_CHROOT (default
# /var/lib/ferroloop/sid-chroot: outside the work tree, so that no `rm -rf`
# of build products can walk into its bind mounts).
set -euo pipefail

ROOT_DIR=$(cd "$(dirname "$0")/.." && pwd)
CHROOT=${SID_CHROOT:-/var/lib/ferroloop/sid-chroot}
VERSIONS=${SID_PYTHONS:-3.13 3.14 3.15}
EXTRA_PACKAGES="ca-certificates gcc libc6-dev socat openssl curl procps"
APT_OPTS=(-o Acquire::Check-Valid-Until=false -o Acquire::Retries=3 -q -y --no-install-recommends)

log() { printf 'sid-chroot: %s\n' "$*" >&2; }

# The Debian archive this machine's apt uses: the first URI of a source whose
# suite is a Debian release (deb822 .sources first, then one-line lists).
mirror() {
    local uri
    uri=$(awk '
        /^URIs:/ { uris = $2 }
        /^Suites:/ { for (i = 2; i <= NF; i++) if ($i !~ /-(security|updates|backports)$/) ok = 1 }
        /^$/ { if (ok && uris != "" && uris !~ /security/) { print uris; exit } ok = 0; uris = "" }
        END { if (ok && uris != "" && uris !~ /security/) print uris }
    ' /etc/apt/sources.list.d/*.sources 2>/dev/null | head -n1)
    if [ -z "$uri" ]; then
        uri=$(awk '$1 == "deb" && $0 !~ /security/ { for (i = 2; i <= NF; i++) if ($i ~ /^[a-z]+:\/\//) { print $i; exit } }' \
            /etc/apt/sources.list /etc/apt/sources.list.d/*.list 2>/dev/null | head -n1)
    fi
    [ -n "$uri" ] || { log "no Debian mirror in this machine's apt sources"; exit 1; }
    echo "$uri"
}

packages() {
    local v out=""
    for v in $VERSIONS; do out="$out python$v python$v-venv python$v-dev libpython$v-testsuite"; done
    echo "$out $EXTRA_PACKAGES"
}

mounted() { mountpoint -q "$1"; }

mount_all() {
    local d
    for d in proc sys dev dev/pts; do
        mkdir -p "$CHROOT/$d"
        mounted "$CHROOT/$d" || mount --bind "/$d" "$CHROOT/$d"
    done
    # The host's Rust toolchain, cargo registry cache and the project itself,
    # at the same paths as on the host.
    for d in "${CARGO_HOME:-$HOME/.cargo}" "${RUSTUP_HOME:-$HOME/.rustup}" "$ROOT_DIR"; do
        [ -d "$d" ] || continue
        mkdir -p "$CHROOT$d"
        mounted "$CHROOT$d" || mount --bind "$d" "$CHROOT$d"
    done
}

copy_host_config() {
    mkdir -p "$CHROOT/etc/ssl/certs"
    cp -f /etc/resolv.conf "$CHROOT/etc/resolv.conf" 2>/dev/null || true
    # The host's CA bundle (pip and curl inside trust what the host trusts).
    if [ -f /etc/ssl/certs/ca-certificates.crt ]; then
        mkdir -p "$CHROOT/usr/local/share/host-ca"
        cp -f /etc/ssl/certs/ca-certificates.crt "$CHROOT/usr/local/share/host-ca/ca-certificates.crt"
    fi
    [ -f /etc/pip.conf ] && cp -f /etc/pip.conf "$CHROOT/etc/pip.conf"
    if [ -d "$HOME/.config/pip" ]; then
        mkdir -p "$CHROOT$HOME/.config"
        cp -rf "$HOME/.config/pip" "$CHROOT$HOME/.config/"
    fi
    if [ -f "$HOME/.pip/pip.conf" ]; then mkdir -p "$CHROOT$HOME/.pip"; cp -f "$HOME/.pip/pip.conf" "$CHROOT$HOME/.pip/"; fi
    return 0
}

ensure() {
    local pkgs stamp
    pkgs=$(packages)
    stamp="$CHROOT/.ferroloop-stamp"
    if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$pkgs" ]; then
        copy_host_config
        log "present ($CHROOT)"
        return 0
    fi
    if ! command -v debootstrap >/dev/null; then
        log "installing debootstrap"
        DEBIAN_FRONTEND=noninteractive apt-get install "${APT_OPTS[@]}" debootstrap \
            || { DEBIAN_FRONTEND=noninteractive apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install "${APT_OPTS[@]}" debootstrap; }
    fi
    local m
    m=$(mirror)
    if [ ! -x "$CHROOT/usr/bin/apt-get" ]; then
        log "debootstrap sid into $CHROOT"
        rm -rf "$CHROOT"
        mkdir -p "$(dirname "$CHROOT")"
        debootstrap --variant=minbase --include="$(echo $pkgs | tr ' ' ',')" sid "$CHROOT" "$m" >&2 \
            || { log "debootstrap failed (log: $CHROOT/debootstrap/debootstrap.log)"; exit 1; }
    else
        log "installing into the existing chroot: $pkgs"
        copy_host_config
        SID_IN_NS=1 unshare --mount --propagation private "$0" _run_ns / \
            bash -c "apt-get ${APT_OPTS[*]} update || true; DEBIAN_FRONTEND=noninteractive apt-get ${APT_OPTS[*]} install $pkgs" >&2
    fi
    copy_host_config
    echo "$pkgs" >"$stamp"
    log "ready: $(for v in $VERSIONS; do chroot "$CHROOT" python$v -VV 2>/dev/null | head -n1 | tr '\n' ' '; done)"
}

run_in() {
    [ -x "$CHROOT/usr/bin/apt-get" ] || { log "no chroot at $CHROOT (run: $0 ensure)"; exit 1; }
    copy_host_config
    # A mount namespace of its own: the bind mounts exist only for this
    # command and vanish with it (two runs at once do not unmount each
    # other's /proc, and nothing is left mounted after a kill).
    SID_IN_NS=1 exec unshare --mount --propagation private "$0" _run_ns "$PWD" "$@"
}

run_ns() {
    local dir=$1
    shift
    mount_all
    exec chroot "$CHROOT" env -i HOME="$HOME" PATH="${CARGO_HOME:-$HOME/.cargo}/bin:/usr/local/bin:/usr/bin:/bin" \
        ${RUSTUP_HOME:+RUSTUP_HOME=$RUSTUP_HOME} ${CARGO_HOME:+CARGO_HOME=$CARGO_HOME} \
        RUSTUP_AUTO_INSTALL=0 TERM=dumb LANG=C.UTF-8 \
        PIP_CERT=/usr/local/share/host-ca/ca-certificates.crt \
        SSL_CERT_FILE=/usr/local/share/host-ca/ca-certificates.crt \
        REQUESTS_CA_BUNDLE=/usr/local/share/host-ca/ca-certificates.crt \
        PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_DEFAULT_TIMEOUT=180 \
        ${PIP_INDEX_URL:+PIP_INDEX_URL=$PIP_INDEX_URL} ${PIP_EXTRA_INDEX_URL:+PIP_EXTRA_INDEX_URL=$PIP_EXTRA_INDEX_URL} \
        ${CI:+CI=$CI} \
        bash -c 'cd "$0" && exec "$@"' "$dir" "$@"
}

case "${1:-}" in
    ensure) ensure ;;
    run) shift; run_in "$@" ;;
    _run_ns) shift; [ -n "${SID_IN_NS:-}" ] || exit 2; run_ns "$@" ;;
    python) [ -x "$CHROOT/usr/bin/python$2" ] && echo present ;;
    mirror) mirror ;;
    *) echo "usage: $0 ensure | run CMD... | python X.Y" >&2; exit 2 ;;
esac
