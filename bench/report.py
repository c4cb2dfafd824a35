"""BENCHMARKS.md and the plot from the raw results of `bench.harness`.

Owns presentation only: medians over rounds, ratios to HAProxy, the targets of issue 13
(per core at least 0.8x HAProxy on WS handshakes, 1.0x on small messages, 1.5x on bulk, 0.9x
on WSS handshakes; at most 3 KiB per idle WS and 16 KiB per idle WSS connection) and of
issue 10 (at least 0.5x HAProxy per core on keep-alive HTTP GETs), a PNG plot, and the
hand-written analysis in `bench/NOTES.md`, copied in verbatim, and the config-propagation results of
`bench.propagation` (`bench/results/propagation.md`) if present. It measures nothing.

Run: `python -m bench.report [results.json] [--out BENCHMARKS.md] [--plot plot.png]`.
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.proxies import REPO

PROXY_ORDER = ("wslb", "haproxy", "nginx", "floor")
LABELS = {
    "wslb": "wslb (1 worker)",
    "haproxy": "HAProxy (nbthread 1)",
    "nginx": "nginx (1 worker)",
    "floor": "bare uvloop relay (floor)",
}
NOTES = REPO / "bench" / "NOTES.md"
PROPAGATION = REPO / "bench" / "results" / "propagation.md"
BUSY_LOAD = 0.5
X = "\u00d7"  # the multiplication sign of ratios


@dataclass(frozen=True)
class Metric:
    key: str  # test name in the results
    title: str
    unit: str
    field: str  # derived field holding the per-CPU-second figure
    target: float | None  # minimum ratio to HAProxy


METRICS = (
    Metric(
        "handshake",
        "WS handshakes (open + close)",
        "per proxy CPU-second",
        "per_proxy_cpu_second",
        0.8,
    ),
    Metric("echo", "64 B message round trips", "per proxy CPU-second", "per_proxy_cpu_second", 1.0),
    Metric(
        "bulk",
        "bulk echo, 64 KiB messages",
        "MB per proxy CPU-second",
        "mb_per_proxy_cpu_second",
        1.5,
    ),
    Metric(
        "wss",
        "WSS handshakes (TLS 1.3, ECDSA P-256)",
        "per proxy CPU-second",
        "per_proxy_cpu_second",
        0.9,
    ),
    Metric(
        "http",
        "HTTP keep-alive GETs, 1 KiB body",
        "per proxy CPU-second",
        "per_proxy_cpu_second",
        0.5,
    ),
)
# results key -> the most KiB per idle connection (issue 13); keep-alive HTTP has none
IDLE_TARGETS_KIB = {"idle": 3.0, "idle_wss": 16.0}
# results key, what is held idle
IDLE_ROWS = (
    ("idle", "WS"),
    ("idle_wss", "WSS"),
    ("idle_http", "keep-alive HTTP"),
)
LATENCY_TITLES = {"echo": "64 B round-trip latency", "http": "HTTP GET latency"}


def median_of(results: dict[str, Any], test: str, proxy: str, field: str) -> float | None:
    values = [
        m["derived"][field]
        for m in results["measurements"]
        if m["test"] == test and m["proxy"] == proxy and field in m["derived"]
    ]
    return statistics.median(values) if values else None


def fmt(value: float | None, digits: int = 0) -> str:
    if value is None:
        return "—"
    if digits == 0:
        return f"{value:,.0f}"
    return f"{value:,.{digits}f}"


def verdict(ratio: float | None, target: float) -> str:
    if ratio is None:
        return "not measured"
    if ratio <= 0:
        return "**missed**: nothing completed (see the errors in the load table)"
    if ratio >= target:
        return f"met (≥{target:.1f}{X})"
    short = (target - ratio) / target
    return f"**missed** by {short:.0%} (needs {target / ratio:.2f}{X} its figure)"


def proxies_in(results: dict[str, Any]) -> list[str]:
    seen = {m["proxy"] for m in results["measurements"]} | set(results.get("idle", {}))
    return [p for p in PROXY_ORDER if p in seen]


def summary_table(results: dict[str, Any]) -> list[str]:
    proxies = proxies_in(results)
    head = "| measurement | unit | " + " | ".join(LABELS[p] for p in proxies)
    head += " | wslb ÷ HAProxy | target |"
    lines = [head, "|" + "---|" * (len(proxies) + 4)]
    for metric in METRICS:
        values = {p: median_of(results, metric.key, p, metric.field) for p in proxies}
        if all(v is None for v in values.values()):
            continue
        ratio = _ratio(values.get("wslb"), values.get("haproxy"))
        digits = 1 if metric.key == "bulk" else 0
        cells = " | ".join(fmt(values[p], digits) for p in proxies)
        target = verdict(ratio, metric.target) if metric.target else ""
        lines.append(
            f"| {metric.title} | {metric.unit} | {cells} | {fmt(ratio, 2)}{X} | {target} |"
        )
        if metric.key in LATENCY_TITLES:
            for field, name in (("p50_us", "p50"), ("p99_us", "p99")):
                lat = {p: median_of(results, metric.key, p, field) for p in proxies}
                cells = " | ".join(fmt(lat[p]) for p in proxies)
                r = _ratio(lat.get("wslb"), lat.get("haproxy"))
                lines.append(
                    f"| {LATENCY_TITLES[metric.key]} {name} | µs (lower is better) | {cells} "
                    f"| {fmt(r, 2)}{X} | |"
                )
    for key, kind in IDLE_ROWS:
        idle = results.get(key, {})
        if not idle:
            continue
        kib = {p: idle[p]["kib_per_connection"] if p in idle else None for p in proxies}
        cells = " | ".join(fmt(kib[p], 2) for p in proxies)
        ratio = _ratio(kib.get("wslb"), kib.get("haproxy"))
        wslb = kib.get("wslb")
        limit = IDLE_TARGETS_KIB.get(key)
        if limit is None:
            target = "(no target)"
        elif wslb is None:
            target = "not measured"
        elif wslb <= limit:
            target = f"met (≤{limit:.0f} KiB)"
        else:
            over = (wslb - limit) / limit
            target = f"**missed**: {over:.1%} over {limit:.0f} KiB"
        n = max(v["connections"] for v in idle.values())
        lines.append(
            f"| RSS per idle {kind} connection ({n:,} held) | KiB (lower is better) | {cells} "
            f"| {fmt(ratio, 2)}{X} | {target} |"
        )
    return lines


def load_table(results: dict[str, Any]) -> list[str]:
    """What the load achieved: absolute rates and how busy each CPU was."""
    proxies = proxies_in(results)
    lines = [
        "| measurement | proxy | rate (per wall second) | proxy CPU busy | of which kernel "
        "| CPU 0 busy (load client + backend) | errors |",
        "|---|---|---|---|---|---|---|",
    ]
    for metric in METRICS:
        for proxy in proxies:
            rows = [
                m
                for m in results["measurements"]
                if m["test"] == metric.key and m["proxy"] == proxy
            ]
            if not rows:
                continue
            rate = statistics.median(
                m["derived"]["mb_per_second" if metric.key == "bulk" else "rate"] for m in rows
            )
            unit = " MB/s" if metric.key == "bulk" else "/s"
            busy = statistics.median(m["derived"]["proxy_cpu_share"] for m in rows)
            kernel = statistics.median(m["derived"].get("proxy_kernel_share", 0.0) for m in rows)
            load = statistics.median(m["derived"]["load_cpu_share"] for m in rows)
            errors: dict[str, int] = {}
            for m in rows:
                for name, count in m["load"]["errors"].items():
                    errors[name] = errors.get(name, 0) + count
            error_text = ", ".join(f"{k} {v}" for k, v in errors.items()) or "0"
            lines.append(
                f"| {metric.title} | {proxy} | {fmt(rate, 1 if metric.key == 'bulk' else 0)}"
                f"{unit} | {busy:.0%} | {kernel:.0%} | {load:.0%} | {error_text} |"
            )
    for key, kind in IDLE_ROWS:
        lines += _idle_rows(results.get(key, {}), kind, proxies)
    return lines


def _idle_rows(idle: dict[str, Any], kind: str, proxies: list[str]) -> list[str]:
    lines = []
    for proxy in proxies:
        if proxy in idle:
            item = idle[proxy]
            lines.append(
                f"| idle {kind} connections | {proxy} | {item['connections']:,} open "
                f"(RSS {item['rss_before_kib']:,} → {item['rss_after_kib']:,} KiB, "
                f"{item['proxy_fds']:,} fds) | | | | "
                f"{', '.join(f'{k} {v}' for k, v in item['errors'].items()) or '0'} |"
            )
    return lines


def cost_table(results: dict[str, Any]) -> list[str]:
    """Proxy CPU per operation split into user space and kernel (medians over rounds)."""
    proxies = proxies_in(results)
    lines = [
        "| operation | " + " | ".join(f"{p}: user + kernel = total" for p in proxies) + " |",
        "|---|" + "---|" * len(proxies),
    ]
    names = {
        "handshake": "WS handshake",
        "echo": "64 B round trip",
        "bulk": "64 KiB message echoed",
        "wss": "WSS handshake",
        "http": "HTTP GET (1 KiB answer)",
    }
    for test, title in names.items():
        cells = []
        for proxy in proxies:
            rows = [
                m
                for m in results["measurements"]
                if m["test"] == test and m["proxy"] == proxy and m["load"]["count"] > 0
            ]
            if not rows:
                cells.append("—")
                continue
            total = statistics.median(
                m["load"]["cpu_seconds"]["proxy"] / m["load"]["count"] * 1e6 for m in rows
            )
            kernel = statistics.median(
                m["load"]["cpu_seconds"].get("proxy_system", 0.0) / m["load"]["count"] * 1e6
                for m in rows
            )
            cells.append(f"{total - kernel:,.1f} + {kernel:,.1f} = {total:,.1f} µs")
        if any(cell != "—" for cell in cells):
            lines.append(f"| {title} | " + " | ".join(cells) + " |")
    return lines


def _ratio(value: float | None, base: float | None) -> float | None:
    if value is None or base is None or base == 0:
        return None
    return value / base


def plot(results: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    proxies = proxies_in(results)
    colors = {"wslb": "#2b6cb0", "haproxy": "#718096", "nginx": "#38a169", "floor": "#d69e2e"}
    panels: list[tuple[str, str, dict[str, float | None]]] = []
    for metric in METRICS:
        values = {p: median_of(results, metric.key, p, metric.field) for p in proxies}
        if any(v is not None for v in values.values()):
            panels.append((metric.title, metric.unit, values))
    lat = {p: median_of(results, "echo", p, "p99_us") for p in proxies}
    if any(v is not None for v in lat.values()):
        panels.append(("64 B round-trip latency p99", "µs (lower is better)", lat))
    for key, kind in IDLE_ROWS:
        idle = results.get(key, {})
        if idle:
            kib = {p: idle[p]["kib_per_connection"] if p in idle else None for p in proxies}
            panels.append((f"RSS per idle {kind} connection", "KiB (lower is better)", kib))
    columns = 3
    rows = (len(panels) + columns - 1) // columns
    figure, axes = plt.subplots(rows, columns, figsize=(4.2 * columns, 3.4 * rows), squeeze=False)
    for index, (title, unit, values) in enumerate(panels):
        ax = axes[index // columns][index % columns]
        names = [p for p in proxies if values.get(p) is not None]
        heights = [float(values[p] or 0.0) for p in names]
        bars = ax.bar(names, heights, color=[colors[p] for p in names])
        base = values.get("haproxy")
        for bar, height in zip(bars, heights, strict=True):
            label = f"{height:,.1f}" if height < 100 else f"{height:,.0f}"
            if base:
                label += f"\n{height / base:.2f}{X}"
            ax.annotate(
                label,
                (bar.get_x() + bar.get_width() / 2, height),
                ha="center",
                va="bottom",
                fontsize=8,
            )
        ax.set_title(title, fontsize=9)
        ax.set_ylabel(unit, fontsize=8)
        ax.set_ylim(0, max([*heights, 1.0]) * 1.3)
        ax.tick_params(labelsize=8)
    for index in range(len(panels), rows * columns):
        axes[index // columns][index % columns].axis("off")
    figure.suptitle("wslb vs HAProxy vs nginx, one core each (ratios are to HAProxy)", fontsize=10)
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=110)
    plt.close(figure)


METHOD = """\
## How it is measured

- **One run, same conditions.** `make bench` (`bench/run.sh` → `python -m bench.harness`)
  starts one echo backend, then wslb, HAProxy and nginx side by side, and measures them in
  turn, interleaved test by test (with `BENCH_REPEAT` > 1, round by round), so drift in the
  machine's load hits all three alike.
- **Pinning.** Each proxy runs on CPU 1 (`taskset -c 1`); the load client and the echo
  backend share CPU 0. The machine has two cores.
- **Proxies.** wslb: `wslb-dataplane --workers 1` (uvloop) as the image ships it: Debian's
  python3.11 with the mypyc-compiled wheel, built into `bench/.build/wslb-venv` as the
  Dockerfile builds it (`bench/image_build.py`; `BENCH_WSLB=checkout` runs the checkout's
  own package instead, for A/B work; the header says which ran). HAProxy: `nbthread 1`,
  `mode http`, tunnel after the 101. nginx: `worker_processes 1`, `proxy_http_version 1.1`
  with `Upgrade`/`Connection` passed. All three add the same forwarding headers as wslb
  (X-Forwarded-For/-Proto/-Port, X-Real-IP), have no health checks, write one access-log
  line per WS and WSS connection to their standard output, a file (wslb's default line;
  HAProxy's `option httplog` to `log stdout`; nginx's `combined` to /dev/stdout;
  `BENCH_ACCESS_LOG=off` runs all three without; the header says which), and
  serve WSS with the same self-signed ECDSA P-256 certificate (`dataplane.certs`). Configs
  are written by `bench/proxies.py`.
- **Backend.** One echo backend for all three: `bench/echo-go` (Go, standard library,
  `GOMAXPROCS=1`; built on first use) or, where Go is missing, `bench/echo_fast.py`
  (picows on uvloop). Either echoes each frame and answers a Close, then closes TCP
  first. This run used: **{backend}**.
- **Load client.** `bench/loadgen.py` on uvloop. Handshakes use a raw asyncio Protocol (a
  fresh `Sec-WebSocket-Key`, the 101, a masked Close, then the server's Close and TCP close
  complete the cycle); messages use picows connections. After a warm-up, the measurement
  window opens; completions inside it are counted.
- **Per second of proxy CPU.** At the window's start and end the client reads utime +
  stime of the proxy's process tree from `/proc/PID/stat` (nginx: master + worker); each
  figure is completions ÷ proxy CPU seconds. The client and backend share one core and
  cannot saturate a C proxy, so absolute rates mostly measure CPU 0; the per-CPU figure is
  what the targets compare. The load table shows how busy each CPU was.
- **Tests.** *Handshakes*: 32 concurrent loops of connect → upgrade → Close → server
  closes. *Small messages*: 64 connections, one 64-byte binary message in flight each
  (ping-pong); latency is the client's send-to-echo time. *Bulk*: 4 connections, 4
  messages of 64 KiB in flight each; MB counts the payload echoed back to the client (each
  byte crosses the proxy twice). *WSS*: the handshake loop over TLS 1.3 (client offers no
  session, so every handshake is full; key exchange X25519 by default, certificate ECDSA
  P-256). *Idle RSS*: 200 connections opened and closed to warm up, VmRSS of the proxy tree
  read, then N idle WS connections opened and held, read again after 1 s;
  (after - before) / N. The same over WSS (TLS sessions held by the proxy).
- **HTTP.** A third port on each proxy proxies plain HTTP/1.1 to the same backend, which
  answers every request with 200 and a fixed 1 KiB body. All three keep client
  connections alive for an hour with no cap on requests per connection, keep idle
  backend connections for reuse (wslb's pool and nginx's `keepalive` at 16 per backend,
  HAProxy's default `http-reuse safe`), and add the same headers (Via, X-Forwarded-*,
  X-Real-IP); no proxy logs on this port (issue 10's conditions). The
  client is `bench/httpload.c` (C, epoll, one thread; built with `cc` on first use):
  *GETs*: {http_connections} keep-alive connections, one GET in flight on each, the next sent
  when a whole response (status 200, body read to its Content-Length) is in; latency is
  send-to-last-byte. No more client connections than the 16 idle backend connections
  wslb and nginx keep: with more, both close and redial backend connections in steady
  state (nginx measured 29 µs per request with 64 clients against 14 with 16).
  *Idle RSS*: as for WS, but each connection sends one GET, reads the answer and then
  stays open and idle; they are opened 200 at a time. The proxy holds a keep-alive client
  connection each, plus the backend connections it kept: at most 16 in wslb and nginx,
  as many as HAProxy chose to keep in HAProxy (see its fd count). Run the HTTP rows
  alone with `BENCH_TESTS=http,idle-http` (see `bench/NOTES.md`).
- **The floor** (optional, `BENCH_PROXIES=wslb,haproxy,nginx,floor`): `bench/floor.py`, a
  bare uvloop TCP relay with one backend connection per client and no parsing, on the
  WS and HTTP ports (no WSS): what any proxy on uvloop pays before doing any work.
"""


def access_log_sentence(settings: dict[str, Any]) -> str:
    """How the proxies logged in this run (older results files did not say: wslb logged each
    WS and WSS connection, its default, and HAProxy and nginx nothing)."""
    chosen = settings.get("access_log")
    if chosen is None:
        return (
            "Access log: wslb's on for WS and WSS (its default), HAProxy's and nginx's off; "
            "every proxy's off on the HTTP port."
        )
    if chosen:
        return (
            "Access log: every proxy writes a line per WS and WSS connection to its standard "
            "output (a file), and none on the HTTP port."
        )
    return "Access log: off in every proxy (`BENCH_ACCESS_LOG=off`)."


def render(results: dict[str, Any], plot_path: Path, out: Path) -> str:
    info = results["machine"]
    settings = results["settings"]
    load_start = info.get("loadavg_start", [0, 0, 0])
    load_end = info.get("loadavg_end", [0, 0, 0])
    foreign = info.get("foreign_cpu_cores")
    busy = load_start[0] > BUSY_LOAD or (foreign is not None and foreign > BUSY_LOAD)
    rel_plot = (
        plot_path.relative_to(out.parent) if plot_path.is_relative_to(out.parent) else plot_path
    )
    parts = [
        "# Benchmarks: the data plane against HAProxy and nginx",
        "",
        "Generated by `make bench` (`bench/report.py`; do not edit by hand — the analysis "
        "comes from `bench/NOTES.md`). Raw results: "
        f"`{_rel(Path(settings['out']))}`.",
        "",
        f"Run {info['date_utc']} UTC on {info['cpus']} {X} {info['cpu'] or 'unknown CPU'}, "
        f"kernel {info['kernel']}, {info['openssl']}; load client on Python {info['python']}, "
        f"uvloop {info['uvloop']}; {', '.join(info.get('versions', {}).values())}.",
        "",
        wslb_ran(info),
        "",
        f"{settings['duration']:g} s per measurement after {settings['warmup']:g} s warm-up, "
        f"{settings['repeat']} round(s); the whole run took {info['elapsed_seconds']:.0f} s. "
        + access_log_sentence(settings),
        "",
    ]
    others = (
        f"other work used {foreign:.2f} of the 2 cores on average during the run"
        if foreign is not None
        else f"{load_end[0]:.2f} at the end, this run's own processes included"
    )
    if busy:
        parts += [
            f"> **The machine was busy** (load average {load_start[0]:.2f} at the start; "
            f"{others}). Ratios measured in the same run still mean something; absolute "
            "rates and latencies less so.",
            "",
        ]
    else:
        parts += [
            f"The machine was quiet at the start (load average {load_start[0]:.2f}; {others}).",
            "",
        ]
    if settings.get("quick"):
        parts += ["> Quick mode (`BENCH_QUICK=1`): short windows, for development only.", ""]
    parts += [
        "## Results (per second of proxy CPU; medians over rounds)",
        "",
        *summary_table(results),
        "",
        f"![wslb, HAProxy and nginx per core]({rel_plot})",
        "",
        "## What the load achieved",
        "",
        *load_table(results),
        "",
        "Proxy CPU per operation (user space + kernel; from utime and stime):",
        "",
        *cost_table(results),
        "",
        METHOD.format(
            backend=info.get("backend", "picows"),
            http_connections=settings.get("http_connections", 16),
        ),
    ]
    if NOTES.exists():
        parts += [NOTES.read_text().rstrip(), ""]
    if PROPAGATION.exists():
        # Written by `python -m bench.propagation` (its own run); one level down here.
        text = PROPAGATION.read_text().rstrip()
        parts += [re.sub(r"^(#+) ", r"#\1 ", text, flags=re.MULTILINE), ""]
    return "\n".join(parts) + "\n"


def wslb_ran(info: dict[str, Any]) -> str:
    """The header's sentence on what ran as wslb: its build, interpreter and compiled modules
    as that interpreter loaded them (bench/harness.py's wslb_build)."""
    revision = info.get("wslb_revision", "unknown")
    if "wslb" not in info:  # results from before the image's build was measured
        return f"wslb at {revision}, {info.get('wslb_build', 'build not recorded')}."
    return f"**wslb** at {revision}: {info['wslb']['summary']}."


def _rel(path: Path) -> str:
    try:
        return str(path.resolve().relative_to(REPO))
    except ValueError:
        return str(path)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("results", nargs="?", default=str(REPO / "bench/results/results.json"))
    parser.add_argument("--out", default=str(REPO / "BENCHMARKS.md"))
    parser.add_argument("--plot", default=str(REPO / "bench/results/plot.png"))
    args = parser.parse_args(argv)
    results = json.loads(Path(args.results).read_text())
    plot_path, out = Path(args.plot).resolve(), Path(args.out).resolve()
    plot(results, plot_path)
    out.write_text(render(results, plot_path, out))
    print(f"wrote {_rel(out)} and {_rel(plot_path)}")


if __name__ == "__main__":
    main()
