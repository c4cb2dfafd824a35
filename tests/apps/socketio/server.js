// A Socket.IO server as an app would run it: one per backend port, each with its own
// sessions (like two pods). Listens on $SOCKETIO_HOST (default 127.0.0.1) at <port> (0: the
// kernel picks) and reports on stdout, one JSON object a line: {"event":"listening",
// "port":N} first, then every session opened, upgraded or refused, so a test sees which
// backend served what.
// `echo` events are acknowledged with the message, this backend's name and the transport.
// GET / is a page that runs Socket.IO's browser client against its own origin.
// Usage: node server.js <name> [port]
"use strict";
const http = require("node:http");
const { Server } = require("socket.io");

const name = process.argv[2] || `socketio-${process.pid}`;
const port = Number(process.argv[3] || 0);
// Loopback unless told otherwise (a pod listens on every address: SOCKETIO_HOST=0.0.0.0).
const host = process.env.SOCKETIO_HOST || "127.0.0.1";
const report = (event) => process.stdout.write(JSON.stringify({ backend: name, ...event }) + "\n");

// GET / is a page whose script is Socket.IO's own browser client (served by the server at
// /socket.io/socket.io.js, same origin): a browser connects with its default transports and
// its own cookie handling, echoes `count` (query) messages and resolves `window.result`.
const PAGE = `<!doctype html>
<html><head><meta charset="utf-8"><title>socket.io peer</title></head><body>
<script src="/socket.io/socket.io.js"></script>
<script>
window.result = new Promise((resolve) => {
  const count = Number(new URLSearchParams(location.search).get("count") || 3);
  const result = { connected: false, transports: [], acks: [], errors: [] };
  const socket = io({ reconnection: false, timeout: 5000 });
  const done = () => {
    result.transport = socket.io.engine ? socket.io.engine.transport.name : null;
    socket.close();
    resolve(result);
  };
  const deadline = setTimeout(() => { result.errors.push("gave up after 10 s"); done(); }, 10000);
  socket.io.on("open", () => {
    result.transports.push(socket.io.engine.transport.name);
    socket.io.engine.on("upgrade", (transport) => result.transports.push(transport.name));
  });
  socket.on("connect_error", (err) => {
    result.errors.push(err.message + " " + (err.description ?? ""));
    clearTimeout(deadline);
    done();
  });
  socket.on("connect", async () => {
    result.connected = true;
    const engine = socket.io.engine;
    if (engine.transport.name !== "websocket") {
      await new Promise((upgraded) => engine.once("upgrade", upgraded));
    }
    for (let n = 1; n <= count; n++) {
      result.acks.push(await socket.timeout(5000).emitWithAck("echo", "message " + n));
    }
    clearTimeout(deadline);
    done();
  });
});
</script></body></html>
`;

const server = http.createServer((req, res) => {
  // Socket.IO answers its own path (/socket.io/); this is everything else.
  const path = req.url.split("?")[0];
  if (path === "/") {
    res.writeHead(200, { "Content-Type": "text/html; charset=utf-8" }).end(PAGE);
  } else if (path === "/healthz") {
    res.writeHead(200, { "Content-Type": "text/plain" }).end("ok\n");
  } else {
    res.writeHead(404, { "Content-Type": "text/plain" }).end("not found\n");
  }
});
const io = new Server(server);

// Engine.IO refusals: a request naming a session this server does not hold is answered
// 400 {"code":1,"message":"Session ID unknown"}: what a client sees when its requests
// are spread over backends without stickiness.
io.engine.on("connection_error", (err) => {
  report({ event: "connection_error", code: err.code, message: err.message, url: err.req.url });
});
// An Engine.IO session opened by a handshake (before any Socket.IO packet).
io.engine.on("connection", (conn) => {
  report({ event: "open", sid: conn.id, transport: conn.transport.name });
});
io.on("connection", (socket) => {
  report({ event: "connection", sid: socket.conn.id, transport: socket.conn.transport.name });
  socket.conn.on("upgrade", (transport) => {
    report({ event: "upgrade", sid: socket.conn.id, transport: transport.name });
  });
  socket.on("echo", (message, ack) => {
    if (typeof ack === "function") {
      ack({ message, backend: name, transport: socket.conn.transport.name });
    }
  });
});

server.listen(port, host, () => report({ event: "listening", port: server.address().port }));
for (const signal of ["SIGTERM", "SIGINT"]) {
  process.on(signal, () => io.close(() => process.exit(0)));
}
