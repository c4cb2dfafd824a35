"""Standalone mode reloads when a certificate or key file that the config names changes,
as it does for the config file itself, and live connections stay."""

from __future__ import annotations

import asyncio
import os
import ssl
import time
from pathlib import Path
from typing import Any

import pytest
from websockets.asyncio.client import connect

from dataplane.certs import self_signed
from tests.integration.conftest import listener, snapshot

pytestmark = pytest.mark.integration


def write_atomically(path: Path, text: str) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


async def test_changed_certificate_file_is_served_to_new_connections_only(
    backends: Any, dataplane_process: Any, tmp_path: Path
) -> None:
    (backend,) = await backends(1)
    old_cert, old_key = self_signed(["127.0.0.1"])
    new_cert, new_key = self_signed(["127.0.0.1"])
    cert_file, key_file = tmp_path / "tls.crt", tmp_path / "tls.key"
    write_atomically(cert_file, old_cert)
    write_atomically(key_file, old_key)
    config = snapshot(
        listener(
            "wss",
            protocol="HTTPS",
            tls={"certificates": [{"certificateFile": "tls.crt", "privateKeyFile": "tls.key"}]},
            backends={"endpoints": [backend.endpoint]},
        )
    )
    proc = dataplane_process(config)
    await proc.wait_ready()
    wss = f"wss://127.0.0.1:{config['listeners'][0]['port']}/"
    old_ctx = ssl.create_default_context(cadata=old_cert)
    new_ctx = ssl.create_default_context(cadata=new_cert)
    held = await connect(wss, ssl=old_ctx, ping_interval=None)

    write_atomically(key_file, new_key)
    write_atomically(cert_file, new_cert)

    async def serves_new() -> bool:
        try:
            async with connect(wss, ssl=new_ctx, ping_interval=None, open_timeout=2):
                return True
        except ssl.SSLCertVerificationError:
            return False

    # The watcher looks once a second: poll with a deadline.
    deadline = time.monotonic() + 10
    ok = await serves_new()
    while not ok and time.monotonic() < deadline:
        await asyncio.sleep(0.2)
        ok = await serves_new()
    assert ok, proc.log()
    await held.send("old certificate, same connection")
    assert await held.recv() == "old certificate, same connection"
    await held.close()
    assert "certificate file changed" in proc.log()
