#!/usr/bin/env bash
# Runs the spec's example programs for `make demo`, the way a person would.
#
#   scripts/demo.sh run CMD [ARG...]
#       run one program to completion
#   scripts/demo.sh pair PORT 'SERVER CMD' 'CLIENT CMD'
#       start the server in the background, wait until PORT accepts connections
#       (TCP; `udp/PORT`: until a UDP socket is bound to PORT), run the client,
#       then send the server SIGINT (Ctrl+C) and wait for it to exit
#   scripts/demo.sh python-examples DIR 'PYTHON CMD'
#       every DIR/*.py under PYTHON CMD: NAME_server.py with NAME_client.py as a
#       pair on the spec's port (TCP 8888; UDP 9999 for udp_* names), any other
#       script with `run`
#
# Commands given as one string are split on spaces (paths with spaces are not
# supported). A pair prints the client's output live, then the server's.
# Every program has a time limit, so a hang fails the demo instead of stalling it.
set -euo pipefail

RUN_LIMIT=${DEMO_RUN_LIMIT:-60}    # seconds for one program
PORT_WAIT=${DEMO_PORT_WAIT:-30}    # seconds for a server to listen
STOP_WAIT=${DEMO_STOP_WAIT:-10}    # seconds for a server to exit after SIGINT
export PYTHONUNBUFFERED=1          # Python servers' lines appear as they are printed

server_pid=""
server_log=""
cleanup() {
    if [ -n "$server_pid" ] && kill -0 "$server_pid" 2>/dev/null; then
        kill -KILL "$server_pid" 2>/dev/null || true
        { wait "$server_pid"; } 2>/dev/null || true   # no "Killed" job notice
    fi
    if [ -n "$server_log" ]; then rm -f "$server_log"; fi
}
trap cleanup EXIT

banner() { printf '\n==> %s\n' "$*"; }

# Is a socket listening on TCP port $1 (IPv4 or IPv6)? With `udp/PORT`: is a
# UDP socket bound to PORT (state 07, unconnected)? Read from /proc, so that
# checking does not open a connection or send a datagram the server would print.
listening() {
    local hex proto=tcp state=0A port=$1 files=()
    case $port in udp/*) proto=udp; state=07; port=${port#udp/} ;; esac
    hex=$(printf '%04X' "$port")
    for f in /proc/net/$proto /proc/net/${proto}6; do [ -r "$f" ] && files+=("$f"); done
    awk -v port=":$hex" -v state="$state" 'substr($2, length($2) - 4) == port && $4 == state { found = 1 } END { exit !found }' "${files[@]}"
}

run() {
    banner "${1##*/}${2:+ ${*:2}}"
    timeout "$RUN_LIMIT" "$@"
}

pair() {
    local port=$1 server=$2 client=$3 rc
    # Program names without their directories, arguments kept.
    local s_prog=${server%% *} c_prog=${client%% *}
    local s_name=${s_prog##*/}${server#"$s_prog"} c_name=${c_prog##*/}${client#"$c_prog"}
    banner "$s_name (in the background) + $c_name"
    if listening "$port"; then
        echo "demo: port $port is already in use; stop whatever listens there and retry" >&2
        return 1
    fi

    # The server's transcript is kept aside and shown after it stops, as the spec
    # shows the two programs' outputs: two interleaved live streams would be
    # printed in an order that depends on scheduling.
    server_log=$(mktemp)
    # A background job of a non-interactive shell starts with SIGINT ignored;
    # restore the default so that the server sees our SIGINT as a terminal's Ctrl+C.
    # shellcheck disable=SC2086  # the command string is split on purpose
    env --default-signal=INT $server >"$server_log" 2>&1 &
    server_pid=$!

    local deadline=$((SECONDS + PORT_WAIT))
    until listening "$port"; do
        if ! kill -0 "$server_pid" 2>/dev/null; then
            wait "$server_pid" && rc=0 || rc=$?
            server_pid=""
            echo "demo: the server exited (status $rc) before listening on port $port:" >&2
            cat "$server_log" >&2
            return 1
        fi
        if [ "$SECONDS" -ge "$deadline" ]; then
            echo "demo: nothing listens on port $port after ${PORT_WAIT}s" >&2
            return 1
        fi
        sleep 0.05
    done

    echo "--- $c_name"
    # The spec's UDP client races with its server: when the reply comes back
    # before run_until_complete() returns, connection_lost's loop.stop() ends
    # that run instead of run_forever(), which then waits forever (on stock
    # asyncio as on ferroloop, in about a third of the runs here). A client
    # that hangs is stopped and run again, a few times.
    local attempts=1 limit=$RUN_LIMIT
    case $port in udp/*) attempts=5; limit=${DEMO_UDP_CLIENT_LIMIT:-5} ;; esac
    while :; do
        # shellcheck disable=SC2086
        timeout "$limit" $client && rc=0 || rc=$?
        attempts=$((attempts - 1))
        [ "$rc" = 124 ] && [ "$attempts" -gt 0 ] || break
        echo "demo: the client did not exit within ${limit}s (the UDP example's own race, see scripts/demo.sh); running it again" >&2
    done
    if [ "$rc" != 0 ]; then
        echo "demo: the client failed (status $rc)" >&2
        return 1
    fi

    kill -INT "$server_pid"
    deadline=$((SECONDS + STOP_WAIT))
    while kill -0 "$server_pid" 2>/dev/null && [ "$SECONDS" -lt "$deadline" ]; do sleep 0.05; done
    if kill -0 "$server_pid" 2>/dev/null; then
        echo "demo: the server did not exit within ${STOP_WAIT}s of SIGINT" >&2
        return 1
    fi
    wait "$server_pid" && rc=0 || rc=$?
    server_pid=""
    echo "--- $s_name (sent SIGINT after the client finished; exit status $rc)"
    cat "$server_log"
    [ "$rc" = 0 ] || { echo "demo: the server failed" >&2; return 1; }
}

python_examples() {
    local dir=$1 py=$2 f base
    for f in "$dir"/*.py; do
        [ -e "$f" ] || continue
        base=${f%.py}
        case $base in
            *_server)
                if [ -f "${base%_server}_client.py" ]; then
                    local port=8888
                    case ${base##*/} in udp_*) port=udp/9999 ;; esac
                    pair "$port" "$py $f" "$py ${base%_server}_client.py"
                    continue
                fi
                ;;
            *_client)
                [ -f "${base%_client}_server.py" ] && continue
                ;;
        esac
        # shellcheck disable=SC2086
        run $py "$f"
    done
}

cmd=${1:-}
shift || true
case $cmd in
    run) run "$@" ;;
    pair) pair "$@" ;;
    python-examples) python_examples "$@" ;;
    *) echo "usage: $0 run CMD... | pair PORT 'SERVER' 'CLIENT' | python-examples DIR 'PYTHON'" >&2; exit 2 ;;
esac
