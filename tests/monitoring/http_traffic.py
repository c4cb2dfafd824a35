"""Known plain HTTP traffic for the scrape tests: a listener whose default group is a real
keep-alive HTTP backend and whose rule `gone` points at a port nothing listens on, and a
session through it with a fixed count of each outcome."""

from __future__ import annotations

from typing import Any

from tests.integration.conftest import free_port, listener
from tests.integration.http_backend import Client, HttpBackend, get

OK_REQUESTS = 5  # GET /items answered 200 by the backend, one keep-alive connection
HEAD_REQUESTS = 1  # HEAD /items, same connection
GONE_REQUESTS = 1  # GET /gone/x: the rule's only endpoint refuses, answered 502


def http_listener(name: str, backend: HttpBackend) -> dict[str, Any]:
    """`name` proxies to `backend`; `/gone` takes a rule whose endpoint refuses the dial
    (no retries, so one request is one `connect` error and one 502)."""
    return listener(
        name,
        backends={"endpoints": [backend.endpoint]},
        limits={"connectRetries": 0},
        rules=[
            {
                "name": "gone",
                "match": {"path": "/gone", "pathType": "Prefix"},
                "backends": {"endpoints": [{"address": "127.0.0.1", "port": free_port()}]},
            }
        ],
    )


async def http_session(port: int) -> None:
    """OK_REQUESTS GETs and a HEAD on one keep-alive connection, then GONE_REQUESTS on a
    second; every status is checked, so a proxy that answers otherwise fails here."""
    client = await Client.connect(port)
    try:
        for _ in range(OK_REQUESTS):
            client.send(get("/items"))
            assert (await client.answer()).status == 200
        client.send(b"HEAD /items HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        assert (await client.answer("HEAD")).status == 200
    finally:
        client.close()
    for _ in range(GONE_REQUESTS):
        client = await Client.connect(port)
        try:
            client.send(get("/gone/x"))
            assert (await client.answer()).status == 502
        finally:
            client.close()
