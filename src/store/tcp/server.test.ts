/** `createTCPStoreServer` / `TCPStoreServer`: binding, options, lifecycle, stats, events and limits. */

import assert from "node:assert/strict";
import { once } from "node:events";
import { connect, createServer, type Socket } from "node:net";
import { afterEach, describe, it } from "node:test";
import { setTimeout as delay } from "node:timers/promises";
import { recordingLogger } from "../../../test/helpers/recording-logger.js";
import { ErrorCode } from "../../errors.js";
import { encodeRequest } from "./encode.js";
import { type Request, VALIDATION_MAGIC } from "./protocol.js";
import { createTCPStoreServer, type TCPStoreServer, type TCPStoreServerOptions } from "./server.js";

const servers: TCPStoreServer[] = [];
const sockets: Socket[] = [];

async function start(options: TCPStoreServerOptions = {}): Promise<TCPStoreServer> {
  const server = await createTCPStoreServer({ port: 0, ...options });
  servers.push(server);
  return server;
}

/** Opens a socket; a v2 one has sent VALIDATE. */
async function open(server: TCPStoreServer, v2 = true, host = "127.0.0.1"): Promise<Socket> {
  const socket = connect({ port: server.port, host });
  socket.on("error", () => {});
  sockets.push(socket);
  await once(socket, "connect");
  if (v2) socket.write(encodeRequest("v2", { type: "validate", magic: VALIDATION_MAGIC }));
  return socket;
}

/** Sends `req` (v2) and reads `n` reply bytes. */
async function call(socket: Socket, req: Request, n: number): Promise<Buffer> {
  socket.write(encodeRequest("v2", req));
  let buf = Buffer.alloc(0);
  while (buf.length < n) {
    const [chunk] = (await once(socket, "data")) as [Buffer];
    buf = Buffer.concat([buf, chunk]);
  }
  return buf;
}

const text = (v: Uint8Array | undefined): string | undefined =>
  v === undefined ? undefined : Buffer.from(v).toString("latin1");

async function until(cond: () => boolean): Promise<void> {
  for (let i = 0; i < 1000 && !cond(); i++) await delay(2);
  assert.ok(cond());
}

afterEach(async () => {
  for (const s of sockets.splice(0)) s.destroy();
  await Promise.all(servers.splice(0).map((s) => s.close()));
});

describe("createTCPStoreServer", () => {
  it("binds 127.0.0.1 by default and reports the port it got for port 0", async () => {
    const server = await start();
    assert.equal(server.host, "127.0.0.1");
    assert.ok(server.port > 0);
    const socket = await open(server);
    assert.equal(socket.remoteAddress, "127.0.0.1");
  });

  it("rejects with RDZV_CONNECTION naming host:port when the port is in use", async () => {
    const server = await start();
    await assert.rejects(createTCPStoreServer({ port: server.port }), (err: Error & { code: string }) => {
      assert.equal(err.code, ErrorCode.Connection);
      assert.match(err.message, new RegExp(`127\\.0\\.0\\.1:${server.port}`));
      assert.match(err.message, /EADDRINUSE/);
      return true;
    });
  });

  it("rejects bad options with RDZV_INVALID_ARGUMENT", async () => {
    for (const options of [
      { port: -1 },
      { port: 70000 },
      { port: 1.5 },
      { host: "" },
      { limits: { maxKeyBytes: 0 } },
      { limits: { maxConnections: Number.NaN } },
    ]) {
      await assert.rejects(createTCPStoreServer(options), { code: ErrorCode.InvalidArgument });
    }
  });

  it("binds IPv6 loopback, and '::' accepts IPv4 clients too", async (t) => {
    const probe = createServer();
    const hasV6 = await new Promise<boolean>((resolve) => {
      probe.once("error", () => resolve(false));
      probe.listen({ host: "::1", port: 0 }, () => probe.close(() => resolve(true)));
    });
    if (!hasV6) {
      t.skip("no IPv6 loopback on this host");
      return;
    }
    const v6 = await start({ host: "::1" });
    const s6 = await open(v6, true, "::1");
    assert.equal((await call(s6, { type: "ping", nonce: 1 }, 4)).readUInt32LE(0), 1);
    const any = await start({ host: "::" });
    const s4 = await open(any, true, "127.0.0.1");
    assert.equal((await call(s4, { type: "ping", nonce: 2 }, 4)).readUInt32LE(0), 2);
  });
});

describe("TCPStoreServer", () => {
  it("close() is idempotent, destroys connections and keeps the data", async () => {
    const server = await start();
    const socket = await open(server);
    await call(socket, { type: "add", key: "/n", delta: 3n }, 8);
    const closed = once(socket, "close");
    const first = server.close();
    assert.equal(server.close(), first);
    await first;
    await closed;
    assert.equal(text(server.engine.get("/n")), "3");
    await assert.rejects(open(server));
  });

  it("runs on-disconnect sets when the server closes, and disposes with await using", async () => {
    let engineAfter: TCPStoreServer["engine"] | undefined;
    {
      await using server = await createTCPStoreServer({ port: 0 });
      engineAfter = server.engine;
      const socket = await open(server);
      sockets.push(socket);
      await call(socket, { type: "onDisconnectSet", key: "/left", value: Buffer.from("yes") }, 1);
    }
    assert.equal(text(engineAfter.get("/left")), "yes");
  });

  it("counts connections, ops, keys, waiters and dialects", async () => {
    const server = await start();
    const a = await open(server);
    const b = await open(server, false);
    await call(a, { type: "set", key: "/k", value: Buffer.from("v") }, 0);
    await call(a, { type: "get", key: "/k" }, 9);
    b.write(encodeRequest("v1", { type: "wait", keys: ["/never"] }));
    await until(() => server.stats().waiters === 1);
    const stats = server.stats();
    assert.equal(stats.connections, 2);
    assert.equal(stats.connectionsTotal, 2);
    assert.equal(stats.keys, 1);
    assert.deepEqual(stats.dialects, { v1: 1, v2: 1 });
    assert.equal(stats.opsByType.validate, 1);
    assert.equal(stats.opsByType.set, 1);
    assert.equal(stats.opsByType.get, 1);
    assert.equal(stats.opsByType.wait, 1);
    assert.equal(stats.protocolErrors, 0);
    b.destroy();
    await until(() => server.stats().connections === 1);
    assert.equal(server.stats().waiters, 0);
    assert.deepEqual(server.stats().dialects, { v1: 0, v2: 1 });
    assert.equal(server.stats().connectionsTotal, 2);
  });

  it("emits connection, protocolError and disconnect, and logs the reason", async () => {
    const logger = recordingLogger();
    const server = await start({ logger });
    const events: string[] = [];
    server.on("connection", (e) => events.push(`connection ${e.id} ${e.remote.startsWith("127.0.0.1:")}`));
    server.on("protocolError", (e) => events.push(`protocolError ${e.id} ${/opcode/.test(e.reason)}`));
    server.on("disconnect", (e) => events.push(`disconnect ${e.id}`));
    const socket = await open(server);
    socket.write(Buffer.from([0x7f]));
    await once(socket, "close");
    await until(() => events.length === 3);
    assert.deepEqual(events, ["connection 1 true", "protocolError 1 true", "disconnect 1"]);
    assert.equal(server.stats().protocolErrors, 1);
    assert.equal(logger.warnings.length, 1);
    assert.match(String(logger.warnings[0]!.fields?.reason), /unknown v2 opcode 0x7f/);
  });

  it("accepts and immediately closes connections past maxConnections, with one warning a minute", async () => {
    const logger = recordingLogger();
    const server = await start({ logger, limits: { maxConnections: 2 } });
    const a = await open(server);
    const b = await open(server);
    const extra = await open(server);
    await once(extra, "close");
    assert.equal(server.stats().connections, 2);
    assert.equal(server.stats().connectionsTotal, 2);
    assert.match(logger.warnings[0]!.message, /rejecting/);
    assert.equal(logger.warnings[0]!.fields?.reason, "maxConnections reached");
    // A flood at the limit is counted, not logged line by line (before: one warning per connection).
    for (let i = 0; i < 20; i++) await once(await open(server), "close");
    assert.equal(server.stats().rejected, 21);
    assert.equal(logger.warnings.length, 1);
    a.destroy();
    await until(() => server.stats().connections === 1);
    const c = await open(server);
    assert.equal((await call(c, { type: "ping", nonce: 5 }, 4)).readUInt32LE(0), 5);
    assert.equal((await call(b, { type: "ping", nonce: 6 }, 4)).readUInt32LE(0), 6);
  });

  it("wakes a remote WAIT when in-process code writes to the engine", async () => {
    const server = await start();
    const socket = await open(server);
    socket.write(encodeRequest("v2", { type: "wait", keys: ["/local"] }));
    await until(() => server.stats().waiters === 1);
    const reply = once(socket, "data");
    server.engine.set("/local", Buffer.from("x"));
    assert.deepEqual((await reply)[0], Buffer.from([0]));
  });

  it("stops handling a connection's requests while its peer does not read the replies", async () => {
    const server = await start();
    const socket = await open(server);
    const big = new Uint8Array(1 << 20).fill(7);
    await call(socket, { type: "set", key: "/big", value: big }, 0);
    socket.pause();
    const gets = 32;
    socket.write(
      Buffer.concat(Array.from({ length: gets }, () => encodeRequest("v2", { type: "get", key: "/big" }))),
    );
    await delay(100);
    assert.ok(server.stats().opsByType.get! < gets, `handled ${server.stats().opsByType.get} GETs unread`);
    let received = 0;
    socket.on("data", (chunk: Buffer) => {
      received += chunk.length;
    });
    socket.resume();
    await until(() => received === gets * (8 + big.length));
    assert.equal(server.stats().opsByType.get, gets);
  });

  it("serves a thousand concurrent connections without per-connection state leaks", async () => {
    const server = await start();
    const all = await Promise.all(Array.from({ length: 1000 }, () => open(server)));
    await Promise.all(all.map((s) => call(s, { type: "add", key: "/count", delta: 1n }, 8)));
    assert.equal(text(server.engine.get("/count")), "1000");
    for (const s of all) s.destroy();
    await until(() => server.stats().connections === 0);
    assert.equal(server.stats().connectionsTotal, 1000);
  });
});
