"""A third-party conformance suite grades the same echo server directly and through wslb.

The grader is kosoku (PyPI): Autobahn|Testsuite's own case files under a Rust runner, since
Autobahn's release runs only on Python 2. Two echo servers, each graded directly and through
wslb: websockets' own server, and one on wsproto that answers each message before it parses
the next (tests/apps/conformance/wsproto_echo.py says why). Issue 13 §3: when wslb fails a
connection for a client's protocol error, what the backend already answered still reaches
the client before the Close, so every case must get the verdict through the load balancer
that it gets directly; against the wsproto server, 3.2-3.4, 4.1.3-4.1.5 and 4.2.3-4.2.5 are
graded OK only if the echo of the valid message before the bad frame arrives.

Graded: framing (1.x), pings (2.x), RSV bits (3.x), reserved opcodes (4.x), fragmentation
(5.x), UTF-8 (6.x), close codes and the closing handshake (7.x), auto-fragmentation (10.x).
Not graded: 9.x (limits and performance, minutes of bulk traffic) and 12.x/13.x
(permessage-deflate). Autobahn has no case with an unmasked client frame;
tests/integration/test_close_paths.py covers that.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from websockets.asyncio.server import ServerConnection, serve
from websockets.exceptions import ConnectionClosedError

from tests.apps.conformance import wsproto_echo
from tests.integration.conftest import listener, snapshot, url

pytestmark = pytest.mark.integration

GRADE = Path(__file__).resolve().parents[1] / "apps" / "conformance" / "grade.py"
CASES = ("1.*", "2.*", "3.*", "4.*", "5.*", "6.*", "7.*", "10.*")
#: kosoku 0.1.0 has 247 cases in these groups; fewer means a glob matched nothing.
CASE_COUNT = 247
#: One run takes ~11 s on this machine; the bound is for a stuck case, not a slow one.
RUN_TIMEOUT = 50.0

Verdicts = dict[str, dict[str, Any]]


async def echo_handler(connection: ServerConnection) -> None:
    with contextlib.suppress(ConnectionClosedError):  # the cases' protocol errors end it
        async for message in connection:
            await connection.send(message)


async def grade(target: str) -> Verdicts:
    """kosoku's verdict for every case in CASES against `target`, keyed by case id."""
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        str(GRADE),
        target,
        *CASES,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        out, err = await asyncio.wait_for(process.communicate(), RUN_TIMEOUT)
    except TimeoutError:
        process.kill()
        await process.wait()
        raise AssertionError(f"kosoku did not finish within {RUN_TIMEOUT}s on {target}") from None
    assert process.returncode == 0, f"grade.py exited {process.returncode}: {err.decode()}"
    lines = [json.loads(line) for line in out.decode().splitlines()]
    return {line["id"]: line for line in lines}


def verdict(case: dict[str, Any]) -> tuple[str, str]:
    return case["behavior"], case["behaviorClose"]


def table(direct: Verdicts, through: Verdicts, ids: list[str]) -> str:
    rows = [f"{'case':<8} {'direct':<28} through wslb"]
    for case_id in ids:
        a, b = direct.get(case_id), through.get(case_id)
        left = f"{verdict(a)} {a['remoteCloseCode']}" if a else "missing"
        right = f"{verdict(b)} {b['remoteCloseCode']}" if b else "missing"
        rows.append(f"{case_id:<8} {left:<28} {right}")
    return "\n".join(rows)


def races(case: dict[str, Any]) -> bool:
    """The case accepts two answers (echo then fail: OK; fail at once: NON-STRICT), and
    which one a server gives depends on how the client's frames fall into its reads."""
    return "NON-STRICT" in case["accepts"]


@pytest.fixture(params=["wsproto", "websockets"])
async def echo(request: pytest.FixtureRequest) -> AsyncIterator[tuple[str, int]]:
    """A third-party echo server on 127.0.0.1: (its name, its port)."""
    if request.param == "websockets":
        async with serve(echo_handler, "127.0.0.1", 0) as server:
            yield request.param, server.sockets[0].getsockname()[1]
    else:
        plain = await wsproto_echo.start_echo()
        yield request.param, plain.sockets[0].getsockname()[1]
        plain.close()


async def test_autobahn_cases_grade_the_same_through_wslb_as_directly(
    echo: tuple[str, int], dataplane: Any
) -> None:
    """Same verdict and same echoed events per case. The one allowance: websockets'
    server answers the two-answer cases (3.2-3.4, 4.1.3-4.1.5, 4.2.3-4.2.5, 5.15, 6.4.x,
    7.1.6) either way from run to run, directly too; there both runs must pass with the
    same close verdict and code. The wsproto server always answers first, so it gets no
    allowance: on it, an echo lost before wslb's Close fails the test."""
    name, port = echo
    endpoint = {"address": "127.0.0.1", "port": port}
    runtime = await dataplane(snapshot(listener(backends={"endpoints": [endpoint]})))

    direct = await grade(f"ws://127.0.0.1:{port}/")
    through = await grade(url(runtime))

    assert len(direct) == CASE_COUNT, sorted(direct)
    assert sorted(through) == sorted(direct)
    unrun = [i for i in direct if "ERROR" in (direct[i]["behavior"], through[i]["behavior"])]
    assert unrun == [], "cases that could not run:\n" + table(direct, through, unrun)
    if name == "wsproto":  # a strict server: what lets its run show a lost answer
        lenient = [i for i in direct if direct[i]["behavior"] not in ("OK", "INFORMATIONAL")]
        assert lenient == [], "the wsproto server is not strict:\n" + table(direct, direct, lenient)
    exact = [i for i in direct if name == "wsproto" or not races(direct[i])]
    differ = [i for i in exact if verdict(direct[i]) != verdict(through[i])]
    assert differ == [], "verdicts differ:\n" + table(direct, through, differ)
    lost = [i for i in exact if direct[i]["received"] != through[i]["received"]]
    assert lost == [], "echoed events differ:\n" + table(direct, through, lost)
    racing = [i for i in direct if i not in exact]
    passing = {"OK", "NON-STRICT", "INFORMATIONAL"}
    for case_id in racing:
        a, b = direct[case_id], through[case_id]
        assert {a["behavior"], b["behavior"]} <= passing, table(direct, through, [case_id])
        assert a["behaviorClose"] == b["behaviorClose"], table(direct, through, [case_id])
        assert a["remoteCloseCode"] == b["remoteCloseCode"], table(direct, through, [case_id])
