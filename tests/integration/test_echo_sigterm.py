"""The demo echo backend's SIGTERM behaviour, as a process: by default it says goodbye with
1001; with --hold-on-sigterm it stops accepting but keeps open connections until the peer
closes them (the backend the e2e drain test needs, so that only a draining load balancer
produces a 1001)."""

from __future__ import annotations

import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator

import pytest
from websockets.exceptions import ConnectionClosed, InvalidStatus
from websockets.sync.client import connect

pytestmark = pytest.mark.integration

LISTENING = re.compile(r"listening on 127\.0\.0\.1:(\d+)")


def start(*extra: str) -> tuple[subprocess.Popen[str], int]:
    """Run the echo backend on port 0; return it and the port it logged."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "dataplane.echo", "--port", "0", "--name", "e", *extra],
        stderr=subprocess.PIPE,
        text=True,
    )
    assert proc.stderr is not None
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        line = proc.stderr.readline()
        found = LISTENING.search(line)
        if found:
            return proc, int(found.group(1))
    proc.kill()
    raise AssertionError("the echo backend did not log its port within 20 s")


@pytest.fixture
def processes() -> Iterator[list[subprocess.Popen[str]]]:
    started: list[subprocess.Popen[str]] = []
    yield started
    for proc in started:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)


def test_sigterm_closes_open_connections_with_1001(
    processes: list[subprocess.Popen[str]],
) -> None:
    proc, port = start()
    processes.append(proc)
    with connect(f"ws://127.0.0.1:{port}/", open_timeout=5) as ws:
        ws.send("hi")
        assert ws.recv(timeout=5) == "hi"
        ws.send("peer")  # the address the backend sees: here, the client itself
        assert ws.recv(timeout=5) == "127.0.0.1"
        proc.send_signal(signal.SIGTERM)
        with pytest.raises(ConnectionClosed):
            ws.recv(timeout=10)
        assert ws.close_code == 1001
    assert proc.wait(10) == 0


def test_hold_on_sigterm_keeps_open_connections_and_refuses_new_ones(
    processes: list[subprocess.Popen[str]],
) -> None:
    proc, port = start("--hold-on-sigterm")
    processes.append(proc)
    url = f"ws://127.0.0.1:{port}/"
    with connect(url, open_timeout=5) as ws:
        ws.send("before")
        assert ws.recv(timeout=5) == "before"
        proc.send_signal(signal.SIGTERM)

        def refused() -> bool:
            try:
                connect(url, open_timeout=2).close()
            except OSError:
                return True
            except InvalidStatus:  # accepted just before the close: 503, try again
                return False
            except ConnectionClosed:  # reset in the backlog as the listener closed: try again
                return False
            return False

        deadline = time.monotonic() + 10
        while not refused():
            assert time.monotonic() < deadline, "still accepting 10 s after SIGTERM"
            time.sleep(0.05)
        for n in range(5):  # the held connection still echoes
            ws.send(f"after {n}")
            assert ws.recv(timeout=5) == f"after {n}"
        assert proc.poll() is None
    # the peer closed the last connection: the backend exits by itself
    assert proc.wait(10) == 0
