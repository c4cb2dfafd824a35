// A Socket.IO client with its default transports: HTTP long-polling first, then the
// upgrade to websocket. `withCredentials: true` keeps cookies between its requests, as a
// browser does (and as Socket.IO's docs ask of Node clients behind a sticky load balancer).
// Connects once (no reconnection), waits for the upgrade, sends `count` echo events and
// prints one JSON line with what happened, then exits: 0 when every echo came back over
// websocket, 1 otherwise. Bounded by `seconds` in all.
// An https:// url is verified against the PEM file named by $WSLB_TEST_CA (a self-signed
// test certificate), never by turning verification off.
// Usage: node client.js <url> [count] [seconds]
"use strict";
const fs = require("node:fs");
const { io } = require("socket.io-client");

const url = process.argv[2];
const count = Number(process.argv[3] || 3);
const seconds = Number(process.argv[4] || 10);
const result = { url, connected: false, transports: [], acks: [], errors: [] };

function finish(code) {
  const engine = socket.io.engine;
  result.transport = engine && engine.transport ? engine.transport.name : null;
  const jar = engine && engine._cookieJar; // private; only reported, to explain failures
  result.cookies = jar ? Array.from(jar.cookies, ([cookie]) => cookie) : null;
  process.stdout.write(JSON.stringify(result) + "\n", () => process.exit(code));
  socket.close();
}

const options = { withCredentials: true, reconnection: false, timeout: seconds * 1000 };
if (process.env.WSLB_TEST_CA) options.ca = fs.readFileSync(process.env.WSLB_TEST_CA);
const socket = io(url, options);
const deadline = setTimeout(() => {
  result.errors.push({ message: `gave up after ${seconds} s` });
  finish(1);
}, seconds * 1000);

socket.io.on("open", () => {
  result.transports.push(socket.io.engine.transport.name);
  socket.io.engine.on("upgrade", (transport) => result.transports.push(transport.name));
});
socket.on("connect_error", (err) => {
  // A transport error carries the HTTP status in `description` (400, 426...).
  result.errors.push({ message: err.message, description: err.description ?? null });
  clearTimeout(deadline);
  finish(1);
});
socket.on("connect", async () => {
  result.connected = true;
  const engine = socket.io.engine;
  if (engine.transport.name !== "websocket") {
    await new Promise((resolve) => engine.once("upgrade", resolve));
  }
  for (let n = 1; n <= count; n++) {
    try {
      result.acks.push(await socket.timeout(seconds * 1000).emitWithAck("echo", `message ${n}`));
    } catch (err) {
      result.errors.push({ message: `echo ${n}: ${err.message}` });
    }
  }
  clearTimeout(deadline);
  const ok = result.acks.length === count && result.errors.length === 0;
  finish(ok && engine.transport.name === "websocket" ? 0 : 1);
});
socket.on("disconnect", (reason) => result.errors.push({ message: `disconnect: ${reason}` }));
