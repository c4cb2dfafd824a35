"""The demo echo backend's page: HTTP and WebSocket from one origin, through one listener.

Served by `wslb-echo` on GET `/`. Its script fetches `/api/info` (which backend answered the
HTTP request, and the X-Forwarded-* fields it saw), then opens a WebSocket to its own origin
(`ws://` on an http page, `wss://` on https) at `/ws`, sends a message and `whoami`, and
shows the echo and the backend that relayed it. `window.demoResult` is a promise of the same
facts, and `document.title` ends in "ok" or "failed", for headless browsers in the tests.

No external resources; a strict Content-Security-Policy allows exactly this page's inline
script and style (by hash) and connections to its own origin. Must not import anything
but the standard library: the echo backend imports it.
"""

from __future__ import annotations

import base64
import hashlib

STYLE = """
body { font: 16px/1.5 system-ui, sans-serif; max-width: 44rem; margin: 2rem auto; padding: 0 1rem; }
code, output { font-family: ui-monospace, monospace; }
.ok { color: #17622a; } .failed { color: #a01616; }
#log { border-left: 3px solid #ccc; padding-left: 0.75rem; min-height: 1.5rem; }
"""

SCRIPT = """
"use strict";
const wsUrl = (location.protocol === "https:" ? "wss://" : "ws://") + location.host + "/ws";
const show = (id, text, cls) => {
  const node = document.getElementById(id);
  node.textContent = text;
  if (cls) node.className = cls;
};
const addLog = (text) => {
  const line = document.createElement("div");
  line.textContent = text;
  document.getElementById("log").append(line);
};

async function info() {
  const response = await fetch("/api/info", {cache: "no-store"});
  if (!response.ok) throw new Error(`GET /api/info answered HTTP ${response.status}`);
  return response.json();
}

// One WebSocket: send `messages` once open, resolve with the answers, close with 1000;
// reject when it closes early or stays silent for 5 s.
function talk(messages) {
  return new Promise((resolve, reject) => {
    const ws = new WebSocket(wsUrl);
    const answers = [];
    const timer = setTimeout(() => {
      reject(new Error(`no echo from ${wsUrl} within 5 s`));
      ws.close();
    }, 5000);
    ws.onopen = () => messages.forEach((message) => ws.send(message));
    ws.onmessage = (event) => {
      answers.push(event.data);
      if (answers.length === messages.length) ws.close(1000, "done");
    };
    ws.onclose = (event) => {
      clearTimeout(timer);
      if (answers.length === messages.length) resolve(answers);
      else reject(new Error(`WebSocket closed with ${event.code} after ${answers.length} answers`));
    };
  });
}

window.demoResult = (async () => {
  const result = {page: location.href, wsUrl, ok: false};
  show("ws-url", wsUrl);
  try {
    result.http = await info();
    show("http", `GET /api/info answered by ${result.http.name}` +
      ` (X-Forwarded-Proto: ${result.http.forwardedProto ?? "none"})`, "ok");
    result.sent = `hello over ${wsUrl.split(":")[0]}`;
    [result.echo, result.wsBackend] = await talk([result.sent, "whoami"]);
    result.ok = result.echo === result.sent;
    show("ws", `sent "${result.sent}", echoed "${result.echo}" by ${result.wsBackend}`,
      result.ok ? "ok" : "failed");
  } catch (error) {
    result.error = String(error);
    show("status", result.error, "failed");
  }
  document.title = `wslb demo: ${result.ok ? "ok" : "failed"}`;
  if (result.ok) show("status", "HTTP and WebSocket answered through one listener", "ok");
  return result;
})();

document.getElementById("send").addEventListener("submit", async (event) => {
  event.preventDefault();
  const text = document.getElementById("message").value;
  try {
    const [echo] = await talk([text]);
    addLog(`echo: ${echo}`);
  } catch (error) {
    addLog(String(error));
  }
});
"""

HTML = f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>wslb demo</title>
<link rel="icon" href="data:,">
<style>{STYLE}</style></head>
<body>
<h1>wslb demo</h1>
<p>This page, <code>/api/info</code> and the WebSocket <output id="ws-url"></output>
all come through one listener of the load balancer.</p>
<p>HTTP: <output id="http">…</output></p>
<p>WebSocket: <output id="ws">…</output></p>
<p><strong><output id="status">…</output></strong></p>
<form id="send"><input id="message" value="hello" aria-label="message">
<button>Send over WebSocket</button></form>
<div id="log"></div>
<script>{SCRIPT}</script>
</body></html>
"""


def _sha256(text: str) -> str:
    return "'sha256-" + base64.b64encode(hashlib.sha256(text.encode()).digest()).decode() + "'"


# connect-src 'self' covers ws:// and wss:// to the page's own host and port (CSP Level 3).
SECURITY_HEADERS = {
    "Content-Security-Policy": (
        f"default-src 'none'; script-src {_sha256(SCRIPT)}; style-src {_sha256(STYLE)};"
        " connect-src 'self'; img-src data:; base-uri 'none'; form-action 'none';"
        " frame-ancestors 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
}
