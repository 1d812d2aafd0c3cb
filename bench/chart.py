"""Draw the chart of a benchmark results file (run by bench/run.py in bench/.venv).

    python chart.py RESULTS.json OUT.png
"""

import json
import sys

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

COLORS = {
    "ferroloop": "#d9480f",
    "uvloop": "#1c7ed6",
    "asyncio": "#868e96",
    "rloop": "#2f9e44",
    "tokio": "#7048e8",
    "mio": "#212529",
}
HATCH = {"protocol": "", "buffered": "//", "streams": "..", "": ""}


def impl_of(key):
    """The loop of a key: ``py:uvloop/protocol`` -> uvloop; a server cell's key is the loop."""
    return key.split(":", 1)[-1].split("/")[0]


def mode_of(key):
    rest = key.split(":", 1)[-1]
    return rest.split("/")[1] if "/" in rest else ""


def value(res, cid, key, field="server_us_per_msg"):
    e = res["cells"].get(cid, {}).get("servers", {}).get(key) or {}
    s = e.get("summary") or {}
    if field == "server_us_per_msg" and field not in s:  # a file from before the headline field
        field = "server_cpu_us_per_msg"
    return s.get(field)


def bars(ax, res, cells, keys, title, ylabel="server CPU µs / message"):
    n = len(keys)
    width = 0.8 / max(n, 1)
    for i, key in enumerate(keys):
        xs, ys = [], []
        for j, c in enumerate(cells):
            v = value(res, c["cell"]["id"], key)
            x = j - 0.4 + width * (i + 0.5)
            if v is not None:
                xs.append(x)
                ys.append(v)
            elif key in c["servers"]:
                e = c["servers"][key]
                why = "n/a" if e.get("unsupported") else "FAIL"
                ax.text(x, 0, why, rotation=90, ha="center", va="bottom", fontsize=7, color="#c92a2a")
        ax.bar(xs, ys, width, label=key.split(":", 1)[-1], color=COLORS.get(impl_of(key), "#999"),
               hatch=HATCH.get(mode_of(key), ""), edgecolor="white", linewidth=0.3)
    ax.set_xticks(range(len(cells)))
    ax.set_xticklabels([c["cell"]["label"] for c in cells])
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize=7, ncol=4 if n > 6 else 2)


SERVER_KINDS = ("http", "ws", "churn")


def server_bars(ax, res, cells):
    """The server cells (bench/servers.py): CPU per request, per message or
    per connection, one bar per loop (their keys are the loops' names)."""
    loops = []
    for c in cells:
        for k in c["servers"]:
            if k not in loops:
                loops.append(k)
    bars(ax, res, cells, loops, "Real servers: uvicorn, aiohttp, websockets, connection churn (lower is better)",
         ylabel="server CPU µs / request (ws: message, churn: connection)")


def main():
    src, dst = sys.argv[1], sys.argv[2]
    res = json.load(open(src))
    cells = list(res["cells"].values())
    pcells = [c for c in cells if c["cell"]["kind"] == "pingpong"]
    keys = []
    for c in cells:
        for k in c["servers"]:
            if k not in keys:
                keys.append(k)
    py = [k for k in keys if k.startswith("py:")]
    rs = [k for k in keys if k.startswith("rs:")]
    scells = [c for c in cells if c["cell"]["kind"] in SERVER_KINDS]

    if not pcells and scells:
        # Only the server cells were run (--cells srv-).
        fig, ax = plt.subplots(figsize=(15, 5))
        server_bars(ax, res, scells)
        fig.suptitle(f"ferroloop server cells, {res['started']}, ferroloop {res['machine']['git']}", fontsize=11)
        fig.tight_layout(rect=(0, 0, 1, 0.95))
        fig.savefig(dst, dpi=80)
        return

    rows = 4 if scells else 3
    fig = plt.figure(figsize=(15, 14 + 4 * (rows - 3)))
    gs = fig.add_gridspec(rows, 2, height_ratios=[1.1, 1, 1, 1][:rows])
    ax = fig.add_subplot(gs[0, :])
    bars(ax, res, pcells, py, "Python face: server CPU per message (lower is better)")
    bars(fig.add_subplot(gs[1, 0]), res, pcells, rs, "Rust face: server CPU per message")

    # Scaling with the number of connections (100 B ping-pong over TCP).
    ax = fig.add_subplot(gs[1, 1])
    scale = sorted(
        (c for c in pcells if c["cell"]["size"] == 100 and c["cell"]["transport"] == "tcp"),
        key=lambda c: c["cell"]["conns"],
    )
    for key in rs + [k for k in py if mode_of(k) == "protocol"]:
        pts = [(c["cell"]["conns"], value(res, c["cell"]["id"], key)) for c in scale]
        pts = [p for p in pts if p[1] is not None]
        if pts:
            ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=key,
                    color=COLORS.get(impl_of(key), "#999"), linestyle="-" if key.startswith("py:") else "--")
    ax.set_xscale("log")
    ax.set_xlabel("connections (100 B ping-pong)")
    ax.set_ylabel("server CPU µs / message")
    ax.set_title("CPU per message from 1 to 1,000 connections")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)

    for pos, kind, field, label, scale_by in (
        (gs[2, 0], "bulk", "mb_per_s", "MB/s", 1),
        (gs[2, 1], "idle", "rss_per_conn_bytes", "KiB RSS per idle connection", 1 / 1024),
    ):
        ax = fig.add_subplot(pos)
        sel = [c for c in cells if c["cell"]["kind"] == kind]
        if not sel:
            ax.set_axis_off()
            continue
        c = sel[0]
        ks = [k for k in keys if k in c["servers"]]
        raw = [value(res, c["cell"]["id"], k, field) for k in ks]
        vals = [v * scale_by if v is not None else 0 for v in raw]
        ax.barh(range(len(ks)), vals, color=[COLORS.get(impl_of(k), "#999") for k in ks],
                hatch=None)
        for i, k in enumerate(ks):
            if raw[i] is None:
                why = "n/a" if c["servers"][k].get("unsupported") else "FAIL (see latest.md)"
                ax.text(0, i, f" {why}", va="center", fontsize=7, color="#c92a2a")
            else:
                ax.text(vals[i], i, f" {vals[i]:,.0f}" if vals[i] >= 10 else f" {vals[i]:.1f}", va="center",
                        fontsize=7)
        ax.set_yticks(range(len(ks)))
        ax.set_yticklabels(ks, fontsize=7)
        ax.invert_yaxis()
        ax.set_xlabel(label)
        ax.set_title(c["cell"]["label"])
        ax.grid(axis="x", alpha=0.3)

    if scells:
        server_bars(fig.add_subplot(gs[3, :]), res, scells)

    m = res["machine"]
    fig.suptitle(f"ferroloop benchmarks, {res['started']}, {m['cpu']} ({m['cores']} cores), ferroloop {m['git']}"
                 + (" — QUICK subset" if res["config"]["quick"] else ""), fontsize=11)
    fig.tight_layout(rect=(0, 0, 1, 0.97))
    fig.savefig(dst, dpi=80)


if __name__ == "__main__":
    main()
