"""The HTTP rows of `make bench` work through the data plane: the C keep-alive client completes
GETs through wslb with the Go backend (no error, no reopened connection), and holds idle
keep-alive connections (the memory row). Fails on a data plane that answers GETs with 426."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from bench.harness import Backend, http_client, load
from bench.proxies import Wslb


@pytest.fixture(scope="module")
def wslb_go(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Wslb, Backend]]:
    from dataplane.certs import self_signed

    workdir: Path = tmp_path_factory.mktemp("bench-smoke-http")
    cert_pem, key_pem = self_signed(["127.0.0.1"])
    cert, key = workdir / "tls.crt", workdir / "tls.key"
    cert.write_text(cert_pem)
    key.write_text(key_pem)
    backend = Backend(cpu=None, kind="go")
    assert backend.kind == "go", "the HTTP rows need Go (bench/echo-go)"
    proxy = Wslb(workdir, backend.port, cert, key, cpu=None)
    try:
        proxy.start()
        yield proxy, backend
    finally:
        proxy.stop()
        backend.stop()


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
