"""`--workers N`: N data-plane processes sharing each listening port with SO_REUSEPORT.

The parent validates the config once, starts the workers, restarts one that dies,
forwards SIGHUP and SIGTERM, and serves the admin port itself: /metrics merges every
worker's metrics with a `worker` label, /readyz is ready when all workers are. Workers
talk to the parent only through their private admin sockets in a 0700 directory.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import shutil
import signal
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Protocol

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import Metric
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.registry import Collector

from dataplane.admin import AdminServer
from dataplane.config import load_file

log = logging.getLogger("wslb.workers")

RESTART_DELAY = 1.0


class WorkerOptions(Protocol):
    """What the worker supervisor reads of the command line (cli.Options has it); declared
    here so this module never imports the command line back."""

    config: Path | None
    workers: int
    admin_host: str
    admin_port: int


async def _ask(path: str, target: str, timeout: float = 2.0) -> tuple[int, bytes]:
    """GET `target` from a worker's admin socket; (status, body), (0, b"") on failure."""
    try:
        async with asyncio.timeout(timeout):
            reader, writer = await asyncio.open_unix_connection(path)
            writer.write(f"GET {target} HTTP/1.1\r\nHost: worker\r\n\r\n".encode())
            data = await reader.read()
            writer.close()
    except (OSError, TimeoutError):
        return 0, b""
    head, _, body = data.partition(b"\r\n\r\n")
    parts = head.split(b" ", 2)
    return (int(parts[1]) if len(parts) > 1 and parts[1].isdigit() else 0), body


class _Merged(Collector):
    def __init__(self, texts: list[tuple[int, str]]) -> None:
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
                    labels = {**sample.labels, "worker": str(worker)}
                    target.add_sample(sample.name, labels, sample.value, sample.timestamp)
        yield from merged.values()


class WorkerSet:
    def __init__(self, options: WorkerOptions, runtime_dir: str, argv: list[str]) -> None:
        self.options = options
        self.runtime_dir = runtime_dir
        self.argv = argv
        self.procs: dict[int, asyncio.subprocess.Process] = {}
        self.stopping = False

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
        )

    async def _supervise(self, index: int) -> None:
        while not self.stopping:
            await self._spawn(index)
            code = await self.procs[index].wait()
            if self.stopping:
                return
            log.error("worker %d exited with %s; restarting", index, code)
            await asyncio.sleep(RESTART_DELAY)

    async def _metrics(self) -> bytes:
        texts: list[tuple[int, str]] = []
        for index in self.procs:
            status, body = await _ask(self._socket(index), "/metrics")
            if status == 200:
                texts.append((index, body.decode()))
        registry = CollectorRegistry()
        registry.register(_Merged(texts))
        return generate_latest(registry)

    async def _ready(self) -> bool:
        answers = [await _ask(self._socket(index), "/readyz") for index in self.procs]
        return bool(answers) and all(status == 200 for status, _ in answers)

    async def run(self) -> int:
        assert self.options.config is not None
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
        admin = _AsyncAdmin(self)
        await admin.start(self.options.admin_host, self.options.admin_port)
        await stop.wait()
        self.stopping = True
        self._forward(signal.SIGTERM)
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
        super().__init__(CollectorRegistry(), lambda: False)
        self.workers = workers

    async def answer(self, head: bytes) -> bytes:
        path = head.split(b"\r\n", 1)[0].split(b" ")
        target = path[1].split(b"?", 1)[0] if len(path) == 3 else b""
        if target == b"/metrics":
            body = await self.workers._metrics()
            self.metrics_text = lambda: body
        elif target == b"/readyz":
            ready = await self.workers._ready()
            self.ready = lambda: ready
        return self._answer(head)
