"""Grade one WebSocket server with kosoku, the Autobahn|Testsuite cases under a Rust runner.

Run as its own process (`python grade.py URL CASE...`): kosoku puts its Python 2 era shims
(packages named `autobahn`, `autobahntestsuite`, a `pkg_resources` stand-in) first on
`sys.path`, which must not leak into the test process. Prints one JSON object per case on
stdout: the id, both verdicts, the close code the server sent, the messages it echoed and the
verdicts the case accepts (several where a conformant server may answer in more than one way).
Exit status 2 with a one-line message when kosoku is not installed.
"""

from __future__ import annotations

import asyncio
import json
import sys
from typing import Any
from urllib.parse import urlsplit


def event(item: Any) -> Any:
    """A received event as JSON: kosoku reports payloads as bytes or str."""
    if isinstance(item, bytes):
        return item.hex()
    if isinstance(item, list | tuple):
        return [event(part) for part in item]
    return item


async def grade(url: str, cases: list[str]) -> list[dict[str, Any]]:
    import kosoku

    try:
        results = await kosoku.run_fuzzingclient(url, cases)
    except kosoku.FailureError as failure:  # some cases failed: still every case's result
        results = failure.results
    return [
        {
            "id": result.case_id,
            "behavior": result.behavior.value,
            "behaviorClose": result.behavior_close.value,
            "remoteCloseCode": result.remote_close_code,
            "received": event(result.received),
            "accepts": sorted(result.expected or {}),  # none when the case could not run
        }
        for result in results
    ]


def is_ws_url(text: str) -> bool:
    url = urlsplit(text)
    try:
        return url.scheme == "ws" and bool(url.hostname) and url.port is not None
    except ValueError:  # a port that is no number
        return False


def main() -> None:
    if len(sys.argv) < 3:
        sys.exit("usage: grade.py ws://HOST:PORT/ CASE [CASE...]  (case ids or * globs)")
    try:
        import kosoku  # noqa: F401
    except ImportError:
        print(
            "kosoku is not installed: it is in the dev extra (make venv installs it)",
            file=sys.stderr,
        )
        sys.exit(2)
    if not is_ws_url(sys.argv[1]):
        # kosoku 0.1.0 aborts the interpreter on a URL it cannot parse: check it first.
        sys.exit(f"grade.py: {sys.argv[1]!r} is not a ws://HOST:PORT/ URL")
    try:
        lines = asyncio.run(grade(sys.argv[1], sys.argv[2:]))
    except ValueError as error:  # a case id or glob that names no case
        sys.exit(f"grade.py: {error}")
    for line in lines:
        print(json.dumps(line, sort_keys=True))


if __name__ == "__main__":
    main()
