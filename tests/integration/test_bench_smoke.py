"""Smoke test of the benchmark harness (bench/), not a benchmark: nothing here is timed.

`make bench` is not part of `make test`; this keeps its parts from rotting. It runs the
picows echo backend, the data plane (1 worker) and the load client for about a second
per mode and checks that the client measured something and read the proxy's CPU time; and
the HTTP rows' C keep-alive client through the data plane in front of the Go backend (it
completes GETs with no error and no reopened connection, and holds idle keep-alive
connections; it fails on a data plane that answers plain GETs with 426). No HAProxy or
nginx is needed.
"""

from __future__ import annotations

import contextlib
import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("picows", reason="picows is in the bench extra: pip install -e '.[bench]'")

# Imported after the skip: bench/ needs picows.
from bench.harness import Backend, http_client, load
from bench.proxies import Wslb

pytestmark = pytest.mark.integration

WINDOW = ["--duration", "1", "--warmup", "0.2"]


@contextlib.contextmanager
def serving(workdir: Path, backend: Backend) -> Iterator[tuple[Wslb, Backend]]:
    """wslb as the bench runs it (WS, WSS and HTTP ports) in front of `backend`."""
    from dataplane.certs import self_signed

    cert_pem, key_pem = self_signed(["127.0.0.1"])
    cert, key = workdir / "tls.crt", workdir / "tls.key"
    cert.write_text(cert_pem)
    key.write_text(key_pem)
    proxy = Wslb(workdir, backend.port, cert, key, cpu=None)
    try:
        proxy.start()
        yield proxy, backend
    finally:
        proxy.stop()
        backend.stop()


@pytest.fixture(scope="module")
def wslb(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Wslb, Backend]]:
    with serving(tmp_path_factory.mktemp("bench-smoke"), Backend(cpu=None)) as pair:
        yield pair


@pytest.fixture(scope="module")
def wslb_go(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Wslb, Backend]]:
    """In front of the Go backend: the only one that answers plain HTTP requests."""
    backend = Backend(cpu=None, kind="go")
    assert backend.kind == "go", "the HTTP rows need Go (bench/echo-go)"
    with serving(tmp_path_factory.mktemp("bench-smoke-http"), backend) as pair:
        yield pair


def run(mode: str, url: str, proxy: Wslb, *extra: str) -> dict[str, Any]:
    args = [mode, "--url", url, "--connections", "4", *WINDOW, *extra]
    return load(args, {"proxy": proxy.pids()}, timeout=30, cpu=None)


def test_load_client_measures_handshakes_through_the_data_plane(
    wslb: tuple[Wslb, Backend],
) -> None:
    proxy, _ = wslb
    result = run("handshake", proxy.ws_url, proxy)
    assert result["count"] > 0, result
    assert result["errors"] == {}, result
    assert result["cpu_seconds"]["proxy"] > 0, result


def test_load_client_measures_round_trips_and_latency(wslb: tuple[Wslb, Backend]) -> None:
    proxy, _ = wslb
    result = run("echo", proxy.ws_url, proxy, "--size", "64")
    assert result["count"] > 0, result
    assert result["bytes"] == 64 * result["count"], result
    assert 0 < result["latency_us"]["p50"] <= result["latency_us"]["p99"], result


def test_load_client_completes_wss_handshakes(wslb: tuple[Wslb, Backend]) -> None:
    proxy, _ = wslb
    result = run("handshake", proxy.wss_url, proxy)
    assert result["count"] > 0, result


def test_echo_backend_is_a_module_that_starts() -> None:
    """The backend prints READY <port> (the harness waits for that line)."""
    process = subprocess.Popen(
        [sys.executable, "-m", "bench.echo_fast", "--port", "0"],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert process.stdout is not None
        word, port = process.stdout.readline().split()
        assert word == "READY" and int(port) > 0
    finally:
        process.terminate()
        process.wait(10)


def test_http_client_measures_keep_alive_gets_through_the_data_plane(
    wslb_go: tuple[Wslb, Backend],
) -> None:
    proxy, _ = wslb_go
    args = ["get", "--port", str(proxy.http_port), "--connections", "4", "--duration", "1"]
    result = load([*args, "--warmup", "0.2"], {"proxy": proxy.pids()}, timeout=30, cpu=None)
    assert result["count"] > 0, result
    assert result["errors"] == {}, result  # a 426 or any other status would be counted here
    assert result["opened"] == 4, result  # keep-alive: no connection was reopened
    assert result["bytes"] >= 1024 * result["count"], result
    assert result["cpu_seconds"]["proxy"] > 0, result
    assert 0 < result["latency_us"]["p50"] <= result["latency_us"]["p99"], result


def test_http_client_holds_idle_keep_alive_connections(wslb_go: tuple[Wslb, Backend]) -> None:
    proxy, _ = wslb_go
    command = [str(http_client()), "idle", "--port", str(proxy.http_port), "--connections", "50"]
    done = subprocess.run(
        [*command, "--hold", "5"], input="close\n", capture_output=True, text=True, timeout=60
    )
    ready, final = (json.loads(line) for line in done.stdout.splitlines())
    assert ready["open"] == 50 and ready["errors"] == {}, done.stdout
    assert final["count"] == 50, done.stdout  # all still open when released
