"""Smoke test of the benchmark harness (bench/), not a benchmark: nothing here is timed.

`make bench` is not part of `make test`; this keeps its parts from rotting. It runs the
picows echo backend, the data plane (1 worker) and the load client for about a second
per mode and checks that the client measured something and read the proxy's CPU time; and
the HTTP rows' C keep-alive client through the data plane in front of the Go backend (it
completes GETs with no error and no reopened connection, and holds idle keep-alive
connections; it fails on a data plane that answers plain GETs with 426). No HAProxy or
nginx is needed. The data plane is the image's build, as `make bench` runs it (Debian's
python3.11 and the mypyc-compiled wheel in bench/.build/wslb-venv, built on first use:
about 90 s here, longer on a cold pip cache, hence this module's timeout); one test checks
that this build, not the checkout's package, is what runs, and one that BENCH_WSLB=checkout
runs the checkout's.
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
from bench import image_build
from bench.harness import Backend, http_client, load, wslb_build
from bench.proxies import REPO, Wslb

# The first module fixture builds the image's venv (bench/image_build.py) when it is stale.
pytestmark = [pytest.mark.integration, pytest.mark.timeout(900)]

WINDOW = ["--duration", "1", "--warmup", "0.2"]


@contextlib.contextmanager
def serving(
    workdir: Path, backend: Backend, build: str = "image"
) -> Iterator[tuple[Wslb, Backend]]:
    """wslb as the bench runs it (WS, WSS and HTTP ports) in front of `backend`; `build` is
    BENCH_WSLB (the default: the image's build)."""
    from dataplane.certs import self_signed

    cert_pem, key_pem = self_signed(["127.0.0.1"])
    cert, key = workdir / "tls.crt", workdir / "tls.key"
    cert.write_text(cert_pem)
    key.write_text(key_pem)
    with pytest.MonkeyPatch.context() as env:
        env.setenv("BENCH_WSLB", build)
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


def test_wslb_runs_the_image_build_not_the_checkouts_package(
    wslb: tuple[Wslb, Backend],
) -> None:
    """The running data plane is Debian's python3.11 (the image's interpreter) loading the
    compiled wheel from bench/.build/wslb-venv: every module of setup.py's COMPILED, and no
    extension from the checkout (whatever `make compiled` left there)."""
    proxy, _ = wslb
    ran = wslb_build(proxy)  # also fails when the process mapped files the probe did not see
    venv = image_build.BUILD / "wslb-venv"
    (pid,) = proxy.pids()
    assert Path(f"/proc/{pid}/exe").resolve() == image_build.interpreter().resolve(), ran
    assert Path(ran["base_executable"]) == image_build.interpreter().resolve(), ran
    assert ran["build"] == "image" and Path(ran["executable"]).is_relative_to(venv), ran
    assert ran["compiled"] == sorted(image_build.compiled_modules(REPO)), ran
    assert ran["mapped"], ran
    assert all(Path(path).is_relative_to(venv) for path in ran["mapped"]), ran
    assert "Debian's" in ran["summary"] or not ran["debian_package"], ran


def test_bench_wslb_checkout_runs_the_checkouts_package(tmp_path: Path) -> None:
    """For A/B work on uncommitted code: this Python, the repository's dataplane/."""
    with serving(tmp_path, Backend(cpu=None), build="checkout") as (proxy, _):
        ran = wslb_build(proxy)
        (pid,) = proxy.pids()
        assert Path(f"/proc/{pid}/exe").resolve() == Path(sys.executable).resolve(), ran
        assert ran["build"] == "checkout", ran
        assert Path(proxy.build_info()["package_dir"]) == REPO / "dataplane", ran
        assert run("handshake", proxy.ws_url, proxy)["count"] > 0


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
