"""Smoke test of the benchmark harness (bench/), not a benchmark: nothing here is timed.

`make bench` is not part of `make test`; this keeps its parts from rotting. It runs the
picows echo backend, the data plane (1 worker) and the load client for about a second
per mode and checks that the client measured something and read the proxy's CPU time.
No HAProxy or nginx is needed.
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("picows", reason="picows is in the bench extra: pip install -e '.[bench]'")

# Imported after the skip: bench/ needs picows.
from bench.harness import Backend, load
from bench.proxies import Wslb

pytestmark = pytest.mark.integration

WINDOW = ["--duration", "1", "--warmup", "0.2"]


@pytest.fixture(scope="module")
def wslb(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Wslb, Backend]]:
    from dataplane.certs import self_signed

    workdir: Path = tmp_path_factory.mktemp("bench-smoke")
    cert_pem, key_pem = self_signed(["127.0.0.1"])
    cert, key = workdir / "tls.crt", workdir / "tls.key"
    cert.write_text(cert_pem)
    key.write_text(key_pem)
    backend = Backend(cpu=None)
    proxy = Wslb(workdir, backend.port, cert, key, cpu=None)
    try:
        proxy.start()
        yield proxy, backend
    finally:
        proxy.stop()
        backend.stop()


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
