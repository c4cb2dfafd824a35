// A Socket.IO server as an app would run it: one per backend port, each with its own
// sessions (like two pods). Listens on 127.0.0.1:<port> (0: the kernel picks) and reports
// on stdout, one JSON object a line: {"event":"listening","port":N} first, then every
// session opened, upgraded or refused, so a test sees which backend served what.
// `echo` events are acknowledged with the message, this backend's name and the transport.
// Usage: node server.js <name> [port]
"use strict";
const http = require("node:http");
const { Server } = require("socket.io");

const name = process.argv[2] || `socketio-${process.pid}`;
const port = Number(process.argv[3] || 0);
const report = (event) => process.stdout.write(JSON.stringify({ backend: name, ...event }) + "\n");

const server = http.createServer((req, res) => {
  // Socket.IO answers its own path (/socket.io/); this is everything else.
  const ok = req.url === "/healthz";
  res.writeHead(ok ? 200 : 404, { "Content-Type": "text/plain" }).end(ok ? "ok\n" : "not found\n");
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

server.listen(port, "127.0.0.1", () => report({ event: "listening", port: server.address().port }));
for (const signal of ["SIGTERM", "SIGINT"]) {
  process.on(signal, () => io.close(() => process.exit(0)));
}
