"""The data plane's side of the config channel: dial the controller, apply, ack or nack.

Static stability: the last applied snapshot is persisted to the state directory and
applied at start, so a data plane that restarts while the controller is unreachable
serves what it served before. Each pushed snapshot goes through the same
validate-then-swap path as a YAML reload (`Runtime.apply`); a refused one is nacked
with the fields and listeners at fault, and the old config keeps serving. The
connection is retried with capped exponential backoff and jitter. With `--workers N` the
parent of the workers holds the one session and is the apply target (workers.py). The
channel's state (connected, last ack and nack) is kept in a ChannelState for /metrics.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import random
import re
import ssl
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidStatus

from dataplane.process_metrics import ChannelState
from lbwire.errors import ConfigError, ProtocolError
from lbwire.messages import (
    MAX_MESSAGE_BYTES,
    SUBPROTOCOL,
    Ack,
    Hello,
    Nack,
    NackError,
    SnapshotMessage,
    decode,
    encode,
)
from lbwire.snapshot import Snapshot, parse_snapshot

log = logging.getLogger("wslb.config_client")

STATE_FILE = "snapshot.json"
_LISTENER_INDEX = re.compile(r"^listeners\[(\d+)\]")


@dataclass
class ClientSettings:
    url: str
    """Base URL of the config server, e.g. wss://wslb-config.wslb-system.svc:9443."""
    load_balancer: str
    """namespace/name of the LoadBalancer this data plane serves."""
    node: str
    """This data plane's name (the pod name); one session per node."""
    token_file: Path
    """Read at every connect, so a rotated token is picked up."""
    ca_file: Path | None = None
    """CA of the config server; None only for plain ws:// in tests."""
    state_dir: Path | None = None
    """Where the last applied snapshot is kept (an emptyDir survives container restarts)."""
    backoff_min: float = 0.5
    """First retry delay; doubles up to backoff_max, with jitter, so a controller
    restart is not met by every data plane at the same instant."""
    backoff_max: float = 15.0


class Applier(Protocol):
    """Where snapshots go: the Runtime, or the parent of `--workers N` (every worker)."""

    async def apply(self, snapshot: Snapshot) -> None:
        """Serve `snapshot`, or raise ConfigError and keep serving the previous one."""


class ConfigClient:
    def __init__(
        self, settings: ClientSettings, runtime: Applier, channel: ChannelState | None = None
    ) -> None:
        self.settings = settings
        self.runtime = runtime
        self.channel = channel if channel is not None else ChannelState()
        """Connected state and last ack/nack times, for /metrics."""
        self.connected = asyncio.Event()
        self.applied_version: str | None = None
        self.applied_digest: str | None = None

    # ------------------------------------------------------------------ persistence

    def _state_path(self) -> Path | None:
        if self.settings.state_dir is None:
            return None
        return self.settings.state_dir / STATE_FILE

    async def restore(self) -> bool:
        """Apply the persisted snapshot, if any; True when it now serves."""
        path = self._state_path()
        if path is None or not path.exists():
            return False
        try:
            snapshot = parse_snapshot(json.loads(path.read_text()), str(path))
            await self.runtime.apply(snapshot)
        except (ConfigError, ValueError, OSError) as exc:
            log.error("persisted snapshot %s not usable: %s", path, exc)
            return False
        self.applied_version = snapshot.version
        self.applied_digest = snapshot.digest()
        log.info(
            "serving persisted snapshot version %s until the controller answers", snapshot.version
        )
        return True

    def _persist(self, snapshot: Snapshot) -> None:
        path = self._state_path()
        if path is None:
            return
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_suffix(".tmp")
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)  # keys inside
            with os.fdopen(fd, "w") as handle:
                json.dump(snapshot.to_wire(), handle)
            os.replace(tmp, path)
        except OSError as exc:
            log.error("cannot persist snapshot to %s: %s", path, exc)

    # ------------------------------------------------------------------ connection

    def _ssl_context(self) -> ssl.SSLContext | None:
        if not self.settings.url.startswith("wss://"):
            return None
        cafile = str(self.settings.ca_file) if self.settings.ca_file else None
        context = ssl.create_default_context(cafile=cafile)
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        return context

    def _url(self) -> str:
        return f"{self.settings.url.rstrip('/')}/v1/loadbalancers/{self.settings.load_balancer}"

    async def run(self, stop: asyncio.Event) -> None:
        """Keep a session with the controller until `stop` is set."""
        delay = self.settings.backoff_min
        while not stop.is_set():
            try:
                token = self.settings.token_file.read_text().strip()
                async with connect(
                    self._url(),
                    ssl=self._ssl_context(),
                    subprotocols=[SUBPROTOCOL],  # type: ignore[list-item]
                    additional_headers={"Authorization": f"Bearer {token}"},
                    max_size=MAX_MESSAGE_BYTES,
                    open_timeout=10,
                    proxy=None,
                ) as connection:
                    delay = self.settings.backoff_min
                    self.connected.set()
                    self.channel.connected(True)
                    await self._session(connection, stop)
            except InvalidStatus as exc:
                log.error("controller refused us: HTTP %d", exc.response.status_code)
            except (OSError, TimeoutError, InvalidHandshake, ConnectionClosed) as exc:
                log.warning("config channel unavailable: %s", exc or type(exc).__name__)
            except Exception:
                # A bug must not end the channel for good: log it and reconnect.
                log.exception("config channel failed unexpectedly; reconnecting")
            finally:
                self.connected.clear()
                self.channel.connected(False)
            if stop.is_set():
                break
            pause = delay * random.uniform(0.5, 1.0)
            delay = min(delay * 2, self.settings.backoff_max)
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(pause):
                    await stop.wait()

    async def _session(self, connection: ClientConnection, stop: asyncio.Event) -> None:
        hello = Hello(
            node=self.settings.node,
            load_balancer=self.settings.load_balancer,
            last_applied_version=self.applied_version,
            last_applied_digest=self.applied_digest,
        )
        await connection.send(encode(hello))
        closer = asyncio.get_running_loop().create_task(self._close_on(stop, connection))
        try:
            async for text in connection:
                try:
                    message = decode(text)
                except ProtocolError as exc:
                    log.warning("controller sent a bad message: %s", exc)
                    continue
                if isinstance(message, SnapshotMessage):
                    reply = await self.apply(message)
                    await connection.send(encode(reply))
        finally:
            closer.cancel()

    async def _close_on(self, stop: asyncio.Event, connection: ClientConnection) -> None:
        await stop.wait()
        await connection.close(1001, "data plane shutting down")

    async def apply(self, message: SnapshotMessage) -> Ack | Nack:
        """Validate and swap; the reply to send."""
        try:
            snapshot = parse_snapshot(message.snapshot, f"snapshot version {message.version}")
        except ConfigError as exc:
            listeners = _listeners_named(message.snapshot, exc.fields)
            return self._nack(message, "InvalidConfig", str(exc), listeners)
        if snapshot.digest() != message.digest:
            return self._nack(message, "DigestMismatch", "digest does not match the content")
        try:
            await self.runtime.apply(snapshot)
        except ConfigError as exc:
            listeners = _listeners_named(message.snapshot, exc.fields)
            return self._nack(message, "ApplyFailed", str(exc), listeners)
        self.applied_version = snapshot.version
        self.applied_digest = message.digest
        self._persist(snapshot)
        log.info("applied snapshot version %s from the controller", snapshot.version)
        self.channel.acked()
        return Ack(version=message.version, nonce=message.nonce)

    def _nack(
        self, message: SnapshotMessage, reason: str, text: str, listeners: list[str] | None = None
    ) -> Nack:
        log.error("refused snapshot version %s: %s", message.version, text)
        self.channel.nacked()
        return Nack(
            nonce=message.nonce,
            applied_version=self.applied_version,
            error=NackError(reason=reason, message=text[:1000], listeners=listeners or []),
        )


def _listeners_named(raw: dict[str, Any], fields: list[str]) -> list[str]:
    """Names of the listeners that the failing field paths point into."""
    items = raw.get("listeners")
    names: list[str] = []
    for field in fields:
        match = _LISTENER_INDEX.match(field)
        if match and isinstance(items, list) and int(match.group(1)) < len(items):
            item = items[int(match.group(1))]
            name = item.get("name") if isinstance(item, dict) else None
            if isinstance(name, str) and name not in names:
                names.append(name)
    return names
