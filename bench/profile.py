"""Where the data plane spends its CPU under each benchmark load (py-spy, sampling).

A separate pass from the measurements (a sampler perturbs what it samples): for each
test it starts the echo backend and wslb (pinned as in `bench.harness`), runs the load
client, and records wslb with `py-spy record --format raw` for a few seconds. It writes
the collapsed stacks (`bench/results/profile/<test>.txt`, not kept in git) and a summary
of self and inclusive time by function (`bench/results/profile/<test>.md`; with C frames:
`<test>-native.md`).

Run: `python -m bench.profile [handshake echo bulk wss http]` (needs `pip install py-spy`;
`http` is the keep-alive GET load of the HTTP row, from the C client).
Settings: BENCH_PROFILE_SECONDS (default 8), BENCH_PROFILE_NATIVE=1 (C frames too).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

from bench.harness import LOAD_CPU, PROXY_CPU, Backend, Settings, http_client, pinned, python
from bench.proxies import REPO, Wslb

OUT = REPO / "bench" / "results" / "profile"


def frame_name(frame: str) -> str:
    """'data_received (dataplane/tunnel.py:123)' -> 'data_received (dataplane/tunnel.py)'."""
    frame = re.sub(r":\d+\)$", ")", frame)
    return frame.replace(str(REPO) + "/", "").replace(sys.prefix + "/", "")


def summarize(collapsed: Path, test: str) -> str:
    own: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()
    total = 0
    for line in collapsed.read_text().splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        frames = [frame_name(f) for f in stack.split(";")]
        # py-spy puts the thread first; the leaf last.
        frames = [f for f in frames if not f.startswith("process ") and not f.startswith("thread ")]
        if not frames:
            continue
        total += count
        own[frames[-1]] += count
        for name in set(frames):
            inclusive[name] += count
    lines = [
        f"# wslb profile: {test}",
        "",
        f"{total} busy samples (py-spy; idle time in the event loop's poll is not sampled).",
        "",
        "## Self time (top 25)",
        "",
        "| share | function |",
        "|---|---|",
    ]
    for name, count in own.most_common(25):
        lines.append(f"| {count / max(total, 1):.1%} | `{name}` |")
    lines += ["", "## Inclusive time (top 30)", "", "| share | function |", "|---|---|"]
    for name, count in inclusive.most_common(30):
        lines.append(f"| {count / max(total, 1):.1%} | `{name}` |")
    return "\n".join(lines) + "\n"


def load_command(test: str, wslb: Wslb, settings: Settings, seconds: float) -> list[str]:
    timing = ["--duration", str(seconds + 2), "--warmup", "0.5"]
    if test == "http":
        shape = ["--port", str(wslb.http_port), "--connections", str(settings.http_connections)]
        return [str(http_client()), "get", *shape, *timing]
    return [python(), "-m", "bench.loadgen", *load_args(test, wslb, settings, timing)]


def load_args(test: str, wslb: Wslb, settings: Settings, timing: list[str]) -> list[str]:
    if test in ("handshake", "wss"):
        url = wslb.wss_url if test == "wss" else wslb.ws_url
        shape = ["--connections", str(settings.handshake_connections)]
        return ["handshake", "--url", url, *shape, *timing]
    if test == "echo":
        shape = ["--connections", str(settings.echo_connections)]
        return ["echo", "--url", wslb.ws_url, *shape, *timing]
    shape = [
        "--connections", str(settings.bulk_connections),
        "--size", str(settings.bulk_size), "--window", str(settings.bulk_window),
    ]  # fmt: skip
    return ["bulk", "--url", wslb.ws_url, *shape, *timing]


def profile(test: str, seconds: float, native: bool) -> Path:
    from dataplane.certs import self_signed

    workdir = Path(tempfile.mkdtemp(prefix="wslb-profile-"))
    cert_pem, key_pem = self_signed(["127.0.0.1"])
    cert, key = workdir / "tls.crt", workdir / "tls.key"
    cert.write_text(cert_pem)
    key.write_text(key_pem)
    settings = Settings.from_env()
    backend = Backend(kind="go")
    wslb = Wslb(workdir, backend.port, cert, key, PROXY_CPU)
    OUT.mkdir(parents=True, exist_ok=True)
    stem = f"{test}-native" if native else test
    collapsed = OUT / f"{stem}.txt"
    try:
        wslb.start()
        command = load_command(test, wslb, settings, seconds)
        client = subprocess.Popen(
            pinned(LOAD_CPU, *command), cwd=REPO, stdout=subprocess.PIPE, text=True
        )
        time.sleep(1.0)
        spy = [
            "py-spy", "record", "--pid", str(wslb.pids()[0]), "--duration", str(int(seconds)),
            "--rate", "250", "--format", "raw", "--nonblocking", "--output", str(collapsed),
        ]  # fmt: skip
        if native:  # C frames need the sampled process stopped for each sample
            spy = [arg for arg in spy if arg != "--nonblocking"] + ["--native"]
        subprocess.run(
            pinned(LOAD_CPU, *spy), check=True, capture_output=True, timeout=seconds + 60
        )
        out, _ = client.communicate(timeout=seconds + 60)
        print(f"{test}: load {out.strip()[:200]}", file=sys.stderr)
    finally:
        wslb.stop()
        backend.stop()
        shutil.rmtree(workdir, ignore_errors=True)
    summary = OUT / f"{stem}.md"
    summary.write_text(
        summarize(collapsed, f"{test} ({'Python and C' if native else 'Python'} frames)")
    )
    return summary


def main(argv: list[str] | None = None) -> None:
    tests = (argv if argv is not None else sys.argv[1:]) or ["handshake", "echo", "bulk", "wss"]
    if shutil.which("py-spy") is None:
        raise SystemExit("py-spy is not installed: pip install py-spy")
    seconds = float(os.environ.get("BENCH_PROFILE_SECONDS", "8"))
    native = os.environ.get("BENCH_PROFILE_NATIVE", "") not in ("", "0")
    for test in tests:
        print(f"wrote {profile(test, seconds, native).relative_to(REPO)}", file=sys.stderr)


if __name__ == "__main__":
    main()
