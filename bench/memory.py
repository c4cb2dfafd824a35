"""What one idle tunnel costs the data plane in memory, attributed by tracemalloc.

A diagnosis, not a measurement for the table: it runs the data plane's `Runtime` in this
process (uvloop) with tracemalloc on, lets the load client open N idle WebSocket
connections through it to the picows echo backend, and compares snapshots: the Python
and C (PyMem) allocations alive per connection, by source line. Kernel socket buffers are
not in RSS and not here. Writes `bench/results/profile/idle-memory.md`.

With `--http` the connections are keep-alive HTTP instead: each sends one GET (the C
client, `bench/httpload.c`), reads the 1 KiB answer and stays idle; writes
`bench/results/profile/idle-http-memory.md`.

Run: `python -m bench.memory [N] [--http]` (default 2000).
"""

from __future__ import annotations

import asyncio
import json
import linecache
import subprocess
import sys
import tempfile
import tracemalloc
from pathlib import Path

from bench.harness import LOAD_CPU, Backend, http_client, pinned, python
from bench.procstat import raise_nofile, rss_kib
from bench.proxies import REPO, free_port

OUT = REPO / "bench" / "results" / "profile" / "idle-memory.md"
OUT_HTTP = REPO / "bench" / "results" / "profile" / "idle-http-memory.md"


def config_text(port: int, backend_port: int) -> str:
    return f"""
version: memory
loadBalancer: {{limits: {{maxConnections: 1000000, newConnectionsPerSecond: 1000000}}}}
listeners:
  - name: ws
    address: 127.0.0.1
    port: {port}
    idleTimeoutSeconds: 3600
    limits: {{maxConnections: 1000000, newConnectionsPerSecond: 1000000}}
    backends: {{endpoints: [{{address: 127.0.0.1, port: {backend_port}}}]}}
"""


async def measure(count: int, backend_port: int, http: bool = False) -> str:
    from dataplane.config import load_file
    from dataplane.runtime import Runtime

    port = free_port()
    path = Path(tempfile.mkdtemp(prefix="wslb-memory-")) / "wslb.yaml"
    path.write_text(config_text(port, backend_port))
    runtime = Runtime()
    await runtime.apply(load_file(path))
    url = f"ws://127.0.0.1:{port}/"

    async def hold(n: int) -> tuple[asyncio.subprocess.Process, dict[str, object]]:
        shape = ["--connections", str(n), "--hold", "120"]
        if http:
            command = [str(http_client()), "idle", "--port", str(port), *shape]
        else:
            command = [python(), "-m", "bench.loadgen", "idle", "--url", url, *shape]
        client = await asyncio.create_subprocess_exec(
            *pinned(LOAD_CPU, *command), stdin=subprocess.PIPE, stdout=subprocess.PIPE, cwd=REPO
        )
        assert client.stdout is not None
        ready = json.loads(await client.stdout.readline())
        await asyncio.sleep(1.0)
        return client, ready

    async def release(client: asyncio.subprocess.Process) -> None:
        assert client.stdin is not None
        client.stdin.write(b"close\n")
        await client.stdin.drain()
        await client.wait()

    warm, _ = await hold(200)  # first connections warm caches and lazy imports
    await release(warm)
    await asyncio.sleep(1.0)
    tracemalloc.start(8)
    before = tracemalloc.take_snapshot()
    rss_before = rss_kib_self()
    client, ready = await hold(count)
    after = tracemalloc.take_snapshot()
    rss_after = rss_kib_self()
    opened = int(str(ready["open"]))
    await release(client)
    tracemalloc.stop()
    await runtime.shutdown(0)

    stats = after.compare_to(before, "lineno")
    traced = sum(stat.size_diff for stat in stats)
    lines = [
        f"# wslb: memory per idle {'keep-alive HTTP' if http else 'WebSocket'} connection "
        "(tracemalloc)",
        "",
        f"{opened} idle connections through one data-plane Runtime (in-process, uvloop).",
        f"RSS grew {(rss_after - rss_before) / opened:.2f} KiB per connection (tracemalloc "
        "itself adds overhead to RSS here);",
        f"traced allocations alive grew {traced / opened / 1024:.2f} KiB per connection.",
        "",
        "| bytes per connection | objects per connection | where | line |",
        "|---|---|---|---|",
    ]
    for stat in stats[:25]:
        if stat.size_diff <= 0:
            continue
        frame = stat.traceback[0]
        where = f"{_short(frame.filename)}:{frame.lineno}"
        code = linecache.getline(frame.filename, frame.lineno).strip().replace("|", "\\|")
        lines.append(
            f"| {stat.size_diff / opened:.0f} | {stat.count_diff / opened:.2f} | `{where}` "
            f"| `{code[:70]}` |"
        )
    return "\n".join(lines) + "\n"


def rss_kib_self() -> int:
    import os

    return rss_kib(os.getpid())


def _short(filename: str) -> str:
    for prefix in (str(REPO) + "/", sys.prefix + "/lib/python3.11/", sys.prefix + "/"):
        if filename.startswith(prefix):
            return filename[len(prefix) :]
    return filename.split("site-packages/")[-1]


def main(argv: list[str] | None = None) -> None:
    args = argv if argv is not None else sys.argv[1:]
    http = "--http" in args
    args = [arg for arg in args if arg != "--http"]
    count = int(args[0]) if args else 2000
    raise_nofile()
    backend = Backend(kind="go")
    try:
        import uvloop

        text = uvloop.run(measure(count, backend.port, http))
    finally:
        backend.stop()
    out = OUT_HTTP if http else OUT
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text)
    print(text)


if __name__ == "__main__":
    main()
