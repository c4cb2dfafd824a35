"""Debian's Prometheus as a test server: a scrape config and rule file in a temporary
directory, a free loopback port, the HTTP API, and a stop that kills its process group.

Shared by the loopback test (tests/monitoring/test_live_prometheus.py) and the kind test
(tests/e2e/test_monitoring.py); holds no test logic.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import yaml

T = TypeVar("T")

PROMETHEUS = shutil.which("prometheus") or "/usr/bin/prometheus"
#: Why a test needing it is skipped when it is missing.
MISSING = "prometheus not found: install Debian's prometheus package (hack/ci-packages.sh does)"


def available() -> bool:
    return Path(PROMETHEUS).exists()


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class Prometheus:
    proc: subprocess.Popen[bytes]
    port: int
    workdir: Path

    def get(self, path: str, **params: str) -> Any:
        query = f"?{urllib.parse.urlencode(params)}" if params else ""
        with urllib.request.urlopen(f"http://127.0.0.1:{self.port}{path}{query}", timeout=5) as r:
            return json.loads(r.read())

    def query(self, promql: str) -> list[dict[str, Any]]:
        data = self.get("/api/v1/query", query=promql)
        assert data["status"] == "success", data
        return list(data["data"]["result"])

    def alerts(self) -> list[dict[str, Any]]:
        return list(self.get("/api/v1/alerts")["data"]["alerts"])

    def rules(self) -> list[dict[str, Any]]:
        groups = self.get("/api/v1/rules")["data"]["groups"]
        return [rule for group in groups for rule in group["rules"]]

    def log(self) -> str:
        return (self.workdir / "prometheus.log").read_text(errors="replace")

    def poll(self, check: Callable[[], T | None], what: str, timeout: float = 60) -> T:
        """Call `check` until it returns something truthy; fail with the log at the deadline
        or as soon as Prometheus exits."""
        deadline = time.monotonic() + timeout
        last: Any = None
        while True:
            try:
                last = check()
            except (urllib.error.URLError, ConnectionError, TimeoutError) as error:
                last = error
            if last and not isinstance(last, Exception):
                return last  # type: ignore[no-any-return]
            if self.proc.poll() is not None:
                raise AssertionError(f"prometheus exited {self.proc.returncode}:\n{self.log()}")
            if time.monotonic() > deadline:
                raise AssertionError(f"{what} within {timeout}s; last: {last!r}\n{self.log()}")
            time.sleep(0.25)

    def stop(self) -> None:
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        shutil.rmtree(self.workdir, ignore_errors=True)


def start(
    scrape_configs: list[dict[str, Any]], rules: dict[str, Any], interval: str = "1s"
) -> Prometheus:
    """Prometheus on a free loopback port, scraping and evaluating every `interval`."""
    workdir = Path(tempfile.mkdtemp(prefix="wslb-prometheus-"))
    (workdir / "rules.yaml").write_text(yaml.safe_dump(rules, sort_keys=False))
    config = {
        "global": {
            "scrape_interval": interval,
            "scrape_timeout": interval,
            "evaluation_interval": interval,
        },
        "rule_files": ["rules.yaml"],
        "scrape_configs": scrape_configs,
    }
    (workdir / "prometheus.yml").write_text(yaml.safe_dump(config))
    port = _free_port()
    with (workdir / "prometheus.log").open("wb") as log:
        proc = subprocess.Popen(
            [
                PROMETHEUS,
                f"--config.file={workdir / 'prometheus.yml'}",
                f"--storage.tsdb.path={workdir / 'data'}",
                f"--web.listen-address=127.0.0.1:{port}",
                "--storage.tsdb.retention.time=1h",
                "--log.level=warn",
            ],
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=workdir,
            start_new_session=True,
        )
    return Prometheus(proc, port, workdir)
