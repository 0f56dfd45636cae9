// The Node baseline of `voxgate bench relay` (path `node`): the same shape as
// voxgate.benchmarking.raw_relay, on Node's `ws`. For each client connection it dials the
// upstream (same path and query, same Authorization header) and forwards every message as it
// came in both directions, text as text and binary as binary; no compression, no parsing.
//
//   node relay.mjs --upstream ws://127.0.0.1:<port>      # prints "PORT <n>" once it listens
import { WebSocket, WebSocketServer } from "ws";

const args = process.argv.slice(2);
const option = (name, fallback) => {
  const i = args.indexOf(name);
  return i >= 0 && i + 1 < args.length ? args[i + 1] : fallback;
};
const upstream = option("--upstream", "").replace(/\/$/, "");
if (!upstream) {
  console.error("usage: node relay.mjs --upstream ws://host:port [--host h] [--port n]");
  process.exit(2);
}
const host = option("--host", "127.0.0.1");
const port = Number(option("--port", "0"));

const server = new WebSocketServer({ host, port, perMessageDeflate: false, maxPayload: 0, backlog: 4096 });

server.on("connection", (client, request) => {
  const headers = {};
  if (request.headers.authorization) headers.Authorization = request.headers.authorization;
  const up = new WebSocket(upstream + request.url, { headers, perMessageDeflate: false, maxPayload: 0 });
  const early = []; // client messages that arrive before the upstream is open
  client.on("message", (data, isBinary) => {
    if (up.readyState === WebSocket.OPEN) up.send(data, { binary: isBinary });
    else early.push([data, isBinary]);
  });
  up.on("open", () => {
    for (const [data, isBinary] of early) up.send(data, { binary: isBinary });
    early.length = 0;
  });
  up.on("message", (data, isBinary) => {
    if (client.readyState === WebSocket.OPEN) client.send(data, { binary: isBinary });
  });
  const closeBoth = () => {
    if (client.readyState === WebSocket.OPEN) client.close();
    if (up.readyState === WebSocket.OPEN || up.readyState === WebSocket.CONNECTING) up.terminate();
  };
  client.on("close", closeBoth);
  up.on("close", closeBoth);
  client.on("error", closeBoth);
  up.on("error", closeBoth);
});

server.on("listening", () => {
  process.stdout.write(`PORT ${server.address().port}\n`);
});

const stop = () => {
  for (const ws of server.clients) ws.terminate();
  server.close(() => process.exit(0));
  setTimeout(() => process.exit(0), 2000).unref();
};
process.on("SIGINT", stop);
process.on("SIGTERM", stop);
