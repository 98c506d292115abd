"use strict";
/*
 * The Node.js peer of the load benchmark (docs/benchmarks.md): socket.io 4 on Node's http server with
 * @socket.io/redis-adapter over node-redis 4, run the way a Node team would run it.
 *
 * Auth is bench/peer_socketio.py's: the token (Socket.IO connect auth {"token": T}, or ?token=T) is
 * `<user_id>.<hmac>` (HMAC-SHA256 of the user id with the shared secret, first 32 hex digits); a good
 * token joins room `user:<user_id>`, a bad one is refused (CONNECT_ERROR "unauthorized"). Producers
 * publish in the Socket.IO Redis emitter's format (bench/producer.py, "node") on
 * `<key>#/#user:<id>#`, which the adapter's psubscribe to `<key>#/#*` receives.
 *
 * Settings: pingInterval 25 s / pingTimeout 20 s (python-engineio's defaults, as the python peer runs),
 * no permessage-deflate, no HTTP compression, listen backlog 8192 (the kernel caps it at somaxconn),
 * the first HTTP request of each connection dropped once the connection is up (socket.io's "memory
 * usage" advice), ws's bufferutil add-on when installed ("performance tuning"). Nothing is logged per
 * connection or per message.
 *
 *   node bench/peer_node/server.js --port 8091 --redis-url redis://127.0.0.1:6379/3 --secret s3cret
 *   PORT=8091 REDIS_URL=redis://127.0.0.1:6379/3 SECRET=s3cret node bench/peer_node/server.js
 *
 * GET /healthz answers "ok" once the adapter's Redis clients are connected and the port listens.
 */

const crypto = require("node:crypto");
const fs = require("node:fs");
const http = require("node:http");
const { parseArgs } = require("node:util");

const { Server } = require("socket.io");
const { createAdapter } = require("@socket.io/redis-adapter");
const { createClient } = require("redis");

const { values: opts } = parseArgs({
  options: {
    host: { type: "string", default: process.env.HOST || "127.0.0.1" },
    port: { type: "string", default: process.env.PORT },
    "redis-url": { type: "string", default: process.env.REDIS_URL || "redis://127.0.0.1:6379/0" },
    secret: { type: "string", default: process.env.SECRET },
    key: { type: "string", default: process.env.SIO_KEY || "socket.io" }, // the adapter's channel prefix
    backlog: { type: "string", default: process.env.BACKLOG || "8192" },
    "min-open-files": { type: "string", default: process.env.MIN_OPEN_FILES || "12000" },
  },
});
if (!opts.port || !opts.secret) {
  console.error("usage: node server.js --port P --redis-url URL --secret S [--host H] [--key socket.io]");
  process.exit(2);
}

function makeToken(secret, userId) {
  const mac = crypto.createHmac("sha256", secret).update(userId).digest("hex").slice(0, 32);
  return `${userId}.${mac}`;
}

function userOf(secret, token) {
  if (typeof token !== "string" || !token.includes(".")) return null;
  const userId = token.slice(0, token.lastIndexOf("."));
  const expected = Buffer.from(makeToken(secret, userId));
  const given = Buffer.from(token);
  return expected.length === given.length && crypto.timingSafeEqual(expected, given) ? userId : null;
}

/** The soft open-file limit of this process (Node has no setrlimit: the parent must raise it). */
function openFileLimit() {
  try {
    const line = fs.readFileSync("/proc/self/limits", "utf8").split("\n").find((l) => l.startsWith("Max open files"));
    const soft = line && line.split(/\s+/)[3];
    return soft === "unlimited" ? Infinity : Number(soft);
  } catch {
    return NaN;
  }
}

async function main() {
  const limit = openFileLimit();
  if (limit < Number(opts["min-open-files"])) {
    // one descriptor per socket: 10,000 sockets need ~10,000 (`ulimit -n` before starting node)
    console.warn(`WARNING open-file limit ${limit} is under ${opts["min-open-files"]}; raise it with ulimit -n`);
  }

  const pubClient = createClient({ url: opts["redis-url"] });
  const subClient = pubClient.duplicate();
  for (const [name, client] of [["pub", pubClient], ["sub", subClient]]) {
    client.on("error", (err) => console.error(`ERROR redis ${name} client: ${err.message}`));
  }
  await Promise.all([pubClient.connect(), subClient.connect()]);

  let ready = false;
  const httpServer = http.createServer((req, res) => {
    if (req.url === "/healthz") {
      res.writeHead(ready ? 200 : 503, { "content-type": "text/plain" });
      res.end(ready ? "ok" : "starting");
      return;
    }
    res.writeHead(404).end();
  });

  const io = new Server(httpServer, {
    adapter: createAdapter(pubClient, subClient, { key: opts.key }),
    pingInterval: 25000,
    pingTimeout: 20000,
    perMessageDeflate: false,
    httpCompression: false,
    cors: { origin: "*" },
    serveClient: false,
  });

  // Keep only the ?token= of the upgrade request, then let the request object go (a few KiB a socket).
  io.engine.on("connection", (rawSocket) => {
    const query = rawSocket.request && rawSocket.request._query;
    rawSocket.queryToken = query ? query.token : undefined;
    rawSocket.request = null;
  });

  io.use((socket, next) => {
    const auth = socket.handshake.auth;
    const token = auth && typeof auth === "object" && auth.token !== undefined ? auth.token : socket.conn.queryToken;
    const userId = userOf(opts.secret, token);
    if (userId === null) {
      next(new Error("unauthorized"));
      return;
    }
    socket.data.userId = userId;
    next();
  });
  io.on("connection", (socket) => {
    socket.join(`user:${socket.data.userId}`);
  });

  await new Promise((resolve, reject) => {
    httpServer.once("error", reject);
    httpServer.listen({ host: opts.host, port: Number(opts.port), backlog: Number(opts.backlog) }, resolve);
  });
  ready = true;
  console.log(`socket.io ${require("socket.io/package.json").version} (node ${process.version}) on ` +
              `http://${opts.host}:${opts.port}, redis adapter key ${opts.key}, open-file limit ${limit}`);

  const shutdown = () => {
    io.close();
    Promise.allSettled([pubClient.quit(), subClient.quit()]).finally(() => process.exit(0));
    setTimeout(() => process.exit(0), 3000).unref();
  };
  process.on("SIGTERM", shutdown);
  process.on("SIGINT", shutdown);
}

main().catch((err) => {
  console.error(`ERROR startup failed: ${err && err.stack ? err.stack : err}`);
  process.exit(1);
});
