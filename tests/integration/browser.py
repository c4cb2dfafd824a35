"""Debian's Chromium, headless, driven over the Chrome DevTools Protocol (CDP).

No browser-automation dependency: the DevTools endpoint is itself a WebSocket, so the
`websockets` client the project already has speaks CDP. `Chromium.start()` launches the
browser with `--remote-debugging-port=0` and reads the port it picked from
`DevToolsActivePort`; `Chromium.page(url)` opens a fresh tab (`Target.createTarget`),
attaches to it with a flat session, navigates to `url` and waits for its load event;
`Page.evaluate` runs JS with `awaitPromise` and returns the value.

`PageServer` serves one tiny HTML page from a loopback HTTP server, so the page has a
real origin (`http://127.0.0.1:<port>`) that the browser sends in its WebSocket upgrade.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import itertools
import json
import os
import shutil
import signal
import subprocess
import tempfile
import threading
import time
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from websockets.asyncio.client import ClientConnection, connect

CHROMIUM = Path("/usr/bin/chromium")

# Flags for root in a closed network (machine notes): no sandbox (root), no GPU, and no
# background traffic, which would otherwise be refused many times over and slow the start.
HEADLESS_FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--no-default-browser-check",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-extensions",
    "--disable-dev-shm-usage",
    "--metrics-recording-only",
    "--password-store=basic",
    "--use-mock-keychain",
)

# The page every browser test runs in. `wsTalk(url, messages)` opens one WebSocket, sends
# `messages` once open ({text} or {bytes: [..]}, the latter as an ArrayBuffer), closes with
# 1000 once as many answers came back, and resolves with what the page saw: the answers,
# whether `onerror` fired, and the close event's code, reason and wasClean.
PAGE_HTML = """<!doctype html>
<html><head><meta charset="utf-8"><title>wslb browser test</title></head>
<body><p>wslb browser test page</p>
<script>
window.wsTalk = (url, messages) => new Promise((resolve) => {
  const started = performance.now();
  const answers = [];
  let errored = false;
  let opened = false;
  const ws = new WebSocket(url);
  ws.binaryType = "arraybuffer";
  ws.onopen = () => {
    opened = true;
    for (const m of messages) {
      ws.send(m.bytes !== undefined ? new Uint8Array(m.bytes).buffer : m.text);
    }
  };
  ws.onmessage = (event) => {
    answers.push(typeof event.data === "string"
      ? {text: event.data}
      : {bytes: Array.from(new Uint8Array(event.data))});
    if (messages.length > 0 && answers.length === messages.length) ws.close(1000, "done");
  };
  ws.onerror = () => { errored = true; };
  ws.onclose = (event) => resolve({
    opened, answers, errored, protocol: ws.protocol, extensions: ws.extensions,
    code: event.code, reason: event.reason, wasClean: event.wasClean,
    seconds: (performance.now() - started) / 1000,
  });
});
</script></body></html>
"""


def spki_sha256_base64(cert_pem: str) -> str:
    """base64(SHA-256(SubjectPublicKeyInfo)): what --ignore-certificate-errors-spki-list takes."""
    cert = x509.load_pem_x509_certificate(cert_pem.encode())
    spki = cert.public_key().public_bytes(Encoding.DER, PublicFormat.SubjectPublicKeyInfo)
    return base64.b64encode(hashlib.sha256(spki).digest()).decode()


class PageServer:
    """Serves PAGE_HTML at every path on 127.0.0.1, from a thread."""

    def __init__(self) -> None:
        html = PAGE_HTML.encode()

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                if self.path == "/favicon.ico":
                    self.send_response(204)
                    self.end_headers()
                    return
                self.send_response(200)
                self.send_header("Content-Type", "text/html; charset=utf-8")
                self.send_header("Content-Length", str(len(html)))
                self.end_headers()
                self.wfile.write(html)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()

    @property
    def origin(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)


class CdpError(Exception):
    pass


@dataclass
class Cdp:
    """One CDP connection to the browser endpoint; commands carry an optional sessionId."""

    ws: ClientConnection
    _ids: itertools.count[int] = field(default_factory=lambda: itertools.count(1))
    _pending: dict[int, asyncio.Future[dict[str, Any]]] = field(default_factory=dict)
    _events: dict[tuple[str | None, str], list[asyncio.Future[dict[str, Any]]]] = field(
        default_factory=dict
    )
    _reader: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._reader = asyncio.create_task(self._read())

    async def _read(self) -> None:
        try:
            async for raw in self.ws:
                message = json.loads(raw)
                if "id" in message:
                    future = self._pending.pop(message["id"], None)
                    if future is not None and not future.done():
                        if "error" in message:
                            future.set_exception(CdpError(message["error"]))
                        else:
                            future.set_result(message.get("result", {}))
                    continue
                key = (message.get("sessionId"), message.get("method", ""))
                for waiter in self._events.pop(key, []):
                    if not waiter.done():
                        waiter.set_result(message.get("params", {}))
        finally:
            for future in self._pending.values():
                if not future.done():
                    future.set_exception(CdpError("DevTools connection closed"))

    async def send(
        self, method: str, params: dict[str, Any] | None = None, session: str | None = None
    ) -> dict[str, Any]:
        ident = next(self._ids)
        message: dict[str, Any] = {"id": ident, "method": method, "params": params or {}}
        if session is not None:
            message["sessionId"] = session
        future: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._pending[ident] = future
        await self.ws.send(json.dumps(message))
        return await future

    def expect(self, method: str, session: str | None = None) -> asyncio.Future[dict[str, Any]]:
        """A future for the next `method` event; create it before the command that causes it."""
        future: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._events.setdefault((session, method), []).append(future)
        return future

    async def close(self) -> None:
        await self.ws.close()
        if self._reader is not None:
            with contextlib.suppress(Exception):
                await self._reader


@dataclass
class Page:
    cdp: Cdp
    session: str

    async def evaluate(self, expression: str, timeout: float = 10.0) -> Any:
        """Evaluate `expression` in the page, await it if it is a promise, return its value."""
        async with asyncio.timeout(timeout):
            result = await self.cdp.send(
                "Runtime.evaluate",
                {"expression": expression, "awaitPromise": True, "returnByValue": True},
                self.session,
            )
        if "exceptionDetails" in result:
            raise CdpError(result["exceptionDetails"])
        return result["result"].get("value")

    async def ws_talk(
        self, url: str, messages: Sequence[str | bytes] = (), timeout: float = 10.0
    ) -> dict[str, Any]:
        """Run the page's `wsTalk`: the browser's own WebSocket, as a web app would use it."""
        wire = [{"bytes": list(m)} if isinstance(m, bytes) else {"text": m} for m in messages]
        value = await self.evaluate(
            f"wsTalk({json.dumps(url)}, {json.dumps(wire)})", timeout=timeout
        )
        answers: list[str | bytes] = [
            bytes(a["bytes"]) if "bytes" in a else a["text"] for a in value["answers"]
        ]
        value["answers"] = answers
        return dict(value)


@dataclass
class Chromium:
    proc: subprocess.Popen[bytes]
    user_data_dir: Path
    devtools_url: str

    @classmethod
    def start(cls, *extra_args: str, timeout: float = 30.0) -> Chromium:
        user_data_dir = Path(tempfile.mkdtemp(prefix="wslb-chromium-"))
        log = (user_data_dir.parent / f"{user_data_dir.name}.log").open("wb")
        proc = subprocess.Popen(
            [
                str(CHROMIUM),
                *HEADLESS_FLAGS,
                f"--user-data-dir={user_data_dir}",
                "--remote-debugging-address=127.0.0.1",
                "--remote-debugging-port=0",
                *extra_args,
                "about:blank",
            ],
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its own process group: teardown kills the helpers too
        )
        log.close()
        browser = cls(proc, user_data_dir, "")
        active = user_data_dir / "DevToolsActivePort"
        deadline = time.monotonic() + timeout
        try:
            while True:
                if proc.poll() is not None:
                    raise RuntimeError(f"chromium exited {proc.returncode}:\n{browser.log()}")
                lines = active.read_text().split() if active.exists() else []
                if len(lines) >= 2:
                    browser.devtools_url = f"ws://127.0.0.1:{lines[0]}{lines[1]}"
                    return browser
                if time.monotonic() > deadline:
                    raise RuntimeError(f"no DevToolsActivePort after {timeout}s:\n{browser.log()}")
                time.sleep(0.05)
        except BaseException:
            browser.stop()
            raise

    def log(self) -> str:
        path = self.user_data_dir.parent / f"{self.user_data_dir.name}.log"
        return path.read_text(errors="replace") if path.exists() else ""

    @contextlib.asynccontextmanager
    async def page(
        self, url: str, ready: str = "typeof wsTalk === 'function'"
    ) -> AsyncIterator[Page]:
        """A new tab showing `url` (load event seen, the JS expression `ready` true), closed on
        exit. A page that never gets ready fails with what it shows (say, a 426 error page)."""
        cdp = Cdp(await connect(self.devtools_url, max_size=None, ping_interval=None))
        cdp.start()
        try:
            target = (await cdp.send("Target.createTarget", {"url": "about:blank"}))["targetId"]
            try:
                attached = await cdp.send(
                    "Target.attachToTarget", {"targetId": target, "flatten": True}
                )
                session = attached["sessionId"]
                await cdp.send("Page.enable", session=session)
                loaded = cdp.expect("Page.loadEventFired", session)
                navigated = await cdp.send("Page.navigate", {"url": url}, session)
                if navigated.get("errorText"):
                    raise CdpError(f"navigating to {url}: {navigated['errorText']}")
                page = Page(cdp, session)
                try:
                    async with asyncio.timeout(10):
                        await loaded
                        # a late load event of the first about:blank must not fool us
                        while not await page.evaluate(
                            f"location.href === {json.dumps(url)} && ({ready})"
                        ):
                            await asyncio.sleep(0.05)
                except TimeoutError:
                    shown = await page.evaluate("document.title + ': ' + document.body?.innerText")
                    raise CdpError(
                        f"{url} not ready ({ready}) within 10 s; it shows {shown!r}"
                    ) from None
                yield page
            finally:
                with contextlib.suppress(Exception):
                    await cdp.send("Target.closeTarget", {"targetId": target})
        finally:
            await cdp.close()

    def stop(self) -> None:
        """Kill the browser's process group by its PID, then remove its profile and log."""
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        # helpers (zygote, renderers) may outlive the browser by a moment: sweep the group
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        shutil.rmtree(self.user_data_dir, ignore_errors=True)
        (self.user_data_dir.parent / f"{self.user_data_dir.name}.log").unlink(missing_ok=True)
