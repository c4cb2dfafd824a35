"""`--workers N`: N data-plane processes sharing each listening port with SO_REUSEPORT.

The parent validates the config once, starts the workers, restarts one that dies,
forwards SIGHUP and SIGTERM, and serves the admin port itself: /metrics merges every
worker's metrics with a `worker` label (and the parent's own, such as the config
channel's state, without one), /readyz is ready when all workers are. Workers talk to the
parent only through their private admin sockets in a 0700 directory.

In controller mode the parent holds the one config session (the controller counts one
node per pod) and is its `apply` target: a snapshot goes to every worker with
`PUT /config` on its socket, and the parent acks only when all of them applied it; a
refusal is raised with the worker's own error, and workers that had taken the snapshot
are put back on the previous one. A worker that restarts is given the last applied
snapshot before it counts as up.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import shutil
import signal
import sys
import time
from collections.abc import Awaitable, Callable, Coroutine, Iterator
from pathlib import Path
from typing import Any, Protocol

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import Metric
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.registry import Collector

from dataplane.admin import AdminServer, Apply, render_metrics
from dataplane.config import load_file
from lbwire.errors import ConfigError, FieldProblem
from lbwire.snapshot import Snapshot, parse_snapshot

log = logging.getLogger("wslb.workers")

RESTART_DELAY = 1.0
START_TIMEOUT = 30.0  # a worker's admin socket answers within this after it is spawned
PUSH_TIMEOUT = 90.0  # a worker applies a snapshot (binds, loads certificates) within this


class WorkerOptions(Protocol):
    """What the worker supervisor reads of the command line (cli.Options has it); declared
    here so this module never imports the command line back."""

    config: Path | None
    workers: int
    admin_host: str | None
    admin_port: int


async def _request(
    path: str, head: str, body: bytes = b"", timeout: float = 2.0
) -> tuple[int, bytes]:
    """One request on a worker's admin socket; (status, body), (0, b"") on failure."""
    try:
        async with asyncio.timeout(timeout):
            reader, writer = await asyncio.open_unix_connection(path)
            writer.write(head.encode() + body)
            data = await reader.read()
            writer.close()
    except (OSError, TimeoutError):
        return 0, b""
    answer, _, content = data.partition(b"\r\n\r\n")
    parts = answer.split(b" ", 2)
    return (int(parts[1]) if len(parts) > 1 and parts[1].isdigit() else 0), content


async def _ask(path: str, target: str, timeout: float = 2.0) -> tuple[int, bytes]:
    """GET `target` from a worker's admin socket; (status, body), (0, b"") on failure."""
    return await _request(path, f"GET {target} HTTP/1.1\r\nHost: worker\r\n\r\n", timeout=timeout)


# ---------------------------------------------------------------------------- PUT /config


def snapshot_receiver(apply: Callable[[Snapshot], Awaitable[None]]) -> Apply:
    """A worker's side of `PUT /config`: the body is a snapshot in its wire form; 200, or
    422 with the refusal's source and field problems (so the parent can nack with them)."""

    async def receive(body: bytes) -> tuple[int, bytes]:
        try:
            try:
                raw = json.loads(body)
            except ValueError as exc:
                problem = FieldProblem("(root)", f"not JSON: {exc}")
                raise ConfigError("snapshot from the parent", [problem]) from None
            snapshot = parse_snapshot(raw, "snapshot from the parent")
            await apply(snapshot)
        except ConfigError as exc:
            problems = [{"path": p.path, "message": p.message} for p in exc.problems]
            return 422, json.dumps({"source": exc.source, "problems": problems}).encode()
        return 200, json.dumps({"version": snapshot.version}).encode()

    return receive


def _refusal(worker: int, status: int, body: bytes) -> ConfigError:
    """The ConfigError a worker answered with (its own source and fields)."""
    try:
        data: Any = json.loads(body)
        problems = [FieldProblem(str(p["path"]), str(p["message"])) for p in data["problems"]]
        return ConfigError(f"{data['source']} (worker {worker})", problems)
    except (ValueError, KeyError, TypeError):
        return ConfigError(
            f"worker {worker}", [FieldProblem("(root)", f"answered HTTP {status}: {body[:200]!r}")]
        )


# ---------------------------------------------------------------------------- metrics merge


class _Merged(Collector):
    """Families of several expositions; `worker` None adds no label (the parent's own)."""

    def __init__(self, texts: list[tuple[int | None, str]]) -> None:
        self.texts = texts

    def collect(self) -> Iterator[Metric]:
        merged: dict[str, Metric] = {}
        for worker, text in self.texts:
            for family in text_string_to_metric_families(text):
                target = merged.get(family.name)
                if target is None:
                    target = merged[family.name] = Metric(
                        family.name, family.documentation, family.type, family.unit
                    )
                for sample in family.samples:
                    labels = dict(sample.labels)
                    if worker is not None:
                        labels["worker"] = str(worker)
                    target.add_sample(sample.name, labels, sample.value, sample.timestamp)
        yield from merged.values()


# ---------------------------------------------------------------------------- supervisor


class WorkerSet:
    def __init__(self, options: WorkerOptions, runtime_dir: str, argv: list[str]) -> None:
        self.options = options
        self.runtime_dir = runtime_dir
        self.argv = argv
        self.procs: dict[int, asyncio.subprocess.Process] = {}
        self.stopping = False
        self.registry = CollectorRegistry()  # the parent's own series (no worker label)
        # Controller mode: the snapshot every worker serves, and which workers have it.
        self.current: Snapshot | None = None
        self._current_body = b""
        self.synced: set[int] = set()
        self._all_synced = asyncio.Event()
        self._lock = asyncio.Lock()

    def _socket(self, index: int) -> str:
        return os.path.join(self.runtime_dir, f"worker-{index}.sock")

    async def _spawn(self, index: int) -> None:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self._socket(index))
        self.procs[index] = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "dataplane.cli",
            *self.argv,
            "--admin-socket",
            self._socket(index),
            "--worker-index",
            str(index),
        )

    async def _supervise(self, index: int) -> None:
        while not self.stopping:
            await self._spawn(index)
            await self._sync(index)
            code = await self.procs[index].wait()
            self.synced.discard(index)
            if self.stopping:
                return
            log.error("worker %d exited with %s; restarting", index, code)
            await asyncio.sleep(RESTART_DELAY)

    async def _sync(self, index: int) -> None:
        """Once the worker's socket answers, give it the snapshot in force (controller mode)."""
        proc = self.procs.get(index)
        deadline = time.monotonic() + START_TIMEOUT
        while (await _ask(self._socket(index), "/healthz"))[0] != 200:
            if (proc is not None and proc.returncode is not None) or time.monotonic() > deadline:
                return  # it died or hangs: the supervisor restarts or the probes see it
            await asyncio.sleep(0.05)
        async with self._lock:
            if self.current is not None:
                error = await self._push(index, self._current_body)
                if error is not None:
                    log.error("worker %d refused the snapshot in force: %s", index, error)
            self.synced.add(index)
            if len(self.synced) == self.options.workers:
                self._all_synced.set()

    async def _push(self, index: int, body: bytes) -> ConfigError | None:
        head = (
            "PUT /config HTTP/1.1\r\nHost: worker\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\n\r\n"
        )
        status, answer = await _request(self._socket(index), head, body, timeout=PUSH_TIMEOUT)
        if status == 200:
            return None
        proc = self.procs.get(index)
        if status == 0 and (proc is None or proc.returncode is not None):
            return None  # it died: restarted, it is given the snapshot in force
        return _refusal(index, status, answer)

    async def apply(self, snapshot: Snapshot) -> None:
        """Every worker applies `snapshot`, or ConfigError (the first worker's refusal) and
        all of them keep the previous one. The config client's apply target."""
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(START_TIMEOUT):
                await self._all_synced.wait()
        body = json.dumps(snapshot.to_wire()).encode()
        async with self._lock:
            indexes = sorted(self.synced)
            errors = await asyncio.gather(*(self._push(index, body) for index in indexes))
            refused = [error for error in errors if error is not None]
            if refused:
                took = [index for index, error in zip(indexes, errors, strict=True) if not error]
                if self.current is not None and took:
                    await asyncio.gather(*(self._push(i, self._current_body) for i in took))
                raise refused[0]
            self.current, self._current_body = snapshot, body

    async def _metrics(self, accept: str = "") -> tuple[bytes, str]:
        texts: list[tuple[int | None, str]] = [(None, generate_latest(self.registry).decode())]
        for index in self.procs:
            status, body = await _ask(self._socket(index), "/metrics")
            if status == 200:
                texts.append((index, body.decode()))
        registry = CollectorRegistry()
        registry.register(_Merged(texts))
        return render_metrics(registry, accept)

    async def _ready(self) -> bool:
        answers = [await _ask(self._socket(index), "/readyz") for index in self.procs]
        return bool(answers) and all(status == 200 for status, _ in answers)

    async def run(
        self, session: Callable[[asyncio.Event], Coroutine[Any, Any, None]] | None = None
    ) -> int:
        """Supervise the workers until SIGTERM/SIGINT; `session` (the config channel in
        controller mode) runs beside them until then."""
        if self.options.config is not None:
            load_file(self.options.config)  # refuse a bad config before starting anything
        os.chmod(self.runtime_dir, 0o700)
        loop = asyncio.get_running_loop()
        stop = asyncio.Event()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        loop.add_signal_handler(signal.SIGHUP, self._forward, signal.SIGHUP)
        supervisors = [
            loop.create_task(self._supervise(index)) for index in range(self.options.workers)
        ]
        channel = loop.create_task(session(stop)) if session is not None else None
        admin = _AsyncAdmin(self)
        await admin.start(self.options.admin_host, self.options.admin_port)
        await stop.wait()
        self.stopping = True
        self._forward(signal.SIGTERM)
        if channel is not None:
            await channel  # closes the session with 1001 (the workers drain meanwhile)
        await asyncio.gather(*(proc.wait() for proc in self.procs.values()))
        for task in supervisors:
            task.cancel()
        await admin.close()
        shutil.rmtree(self.runtime_dir, ignore_errors=True)
        return 0

    def _forward(self, sig: int) -> None:
        for proc in self.procs.values():
            if proc.returncode is None:
                proc.send_signal(sig)


class _AsyncAdmin(AdminServer):
    """The parent's admin server: answers from the workers' admin sockets."""

    def __init__(self, workers: WorkerSet) -> None:
        super().__init__(workers.registry, lambda: False)
        self.workers = workers

    async def metrics(self, accept: str) -> tuple[bytes, str]:
        return await self.workers._metrics(accept)

    async def is_ready(self) -> bool:
        return await self.workers._ready()
