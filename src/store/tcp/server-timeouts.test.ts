/**
 * Reaping stalled connections: a slow-loris trickling a frame, a peer that never reads its replies, and
 * (opt-in) idle connections are closed; connections parked in a WAIT and clients that make progress are
 * not. Short timeouts and generous test deadlines: nothing here asserts how fast anything happens.
 */

import assert from "node:assert/strict";
import { once } from "node:events";
import { connect, type Socket } from "node:net";
import { afterEach, describe, it } from "node:test";
import { setTimeout as delay } from "node:timers/promises";
import { HOST, TcpFixtures } from "../../../test/helpers/tcp-fixtures.js";
import { ErrorCode } from "../../errors.js";
import { connectTCPStore } from "./client.js";
import { encodeRequest } from "./encode.js";
import { type Request, VALIDATION_MAGIC } from "./protocol.js";
import {
  createTCPStoreServer,
  DEFAULT_SERVER_TIMEOUTS,
  type TCPStoreServer,
  type TCPStoreServerOptions,
} from "./server.js";

const fx = new TcpFixtures();
afterEach(() => fx.cleanup());
const start = (options: TCPStoreServerOptions) => fx.server(options);

/** A raw v2 socket (VALIDATE sent) with a promise of its close. */
async function open(server: TCPStoreServer): Promise<{ socket: Socket; closed: Promise<unknown> }> {
  const socket = connect({ host: HOST, port: server.port });
  socket.on("error", () => {});
  fx.defer(() => socket.destroy());
  const closed = new Promise((resolve) => socket.once("close", resolve));
  await once(socket, "connect");
  socket.write(encodeRequest("v2", { type: "validate", magic: VALIDATION_MAGIC }));
  return { socket, closed };
}

const frame = (req: Request): Buffer => encodeRequest("v2", req);

describe("TCPStoreServer timeouts", () => {
  it("defaults: 30 s for an incomplete request, no idle timeout, keep-alive after 60 s", () => {
    assert.deepEqual(DEFAULT_SERVER_TIMEOUTS, {
      incompleteRequestMs: 30_000,
      idleMs: 0,
      keepAliveMs: 60_000,
    });
  });

  it("rejects bad timeouts with RDZV_INVALID_ARGUMENT naming the field", async () => {
    for (const timeouts of [{ idleMs: -1 }, { incompleteRequestMs: 1.5 }, { keepAliveMs: Number.NaN }]) {
      await assert.rejects(createTCPStoreServer({ port: 0, timeouts }), (err: Error & { code?: string }) => {
        assert.equal(err.code, ErrorCode.InvalidArgument);
        assert.match(err.message, new RegExp(`timeouts\\.${Object.keys(timeouts)[0]}`));
        return true;
      });
    }
  });

  it("reaps a slow-loris trickling one frame forever, and serves everyone else meanwhile", {
    timeout: 20_000,
  }, async () => {
    const server = await start({ timeouts: { incompleteRequestMs: 300 } });
    const store = await connectTCPStore({ host: HOST, port: server.port, timeoutMs: 10_000 });
    fx.defer(() => store.close());
    const { socket, closed } = await open(server);
    const bytes = frame({ type: "set", key: "/slow", value: Buffer.alloc(1000, 1) });
    let sent = 0;
    const trickle = setInterval(() => {
      if (sent < bytes.length - 1 && !socket.destroyed) socket.write(bytes.subarray(sent, ++sent));
    }, 50);
    fx.defer(() => clearInterval(trickle));
    await store.set("busy", "yes");
    assert.equal(Buffer.from(await store.get("busy")).toString(), "yes");
    await closed;
    const stats = server.stats();
    assert.equal(stats.reaped, 1);
    assert.equal(stats.protocolErrors, 0, "a stall is not bad input");
    assert.equal(server.engine.get("/slow"), undefined);
    assert.equal(await store.add("after", 1), 1);
  });

  it("does not reap a client that keeps completing its requests, however it cuts them", {
    timeout: 20_000,
  }, async () => {
    const server = await start({ timeouts: { incompleteRequestMs: 2000 } });
    const { socket } = await open(server);
    socket.on("data", () => {});
    for (let i = 0; i < 20; i++) {
      const bytes = frame({ type: "add", key: "/steady", delta: 1n });
      socket.write(bytes.subarray(0, 5));
      await delay(20);
      socket.write(bytes.subarray(5));
    }
    const deadline = Date.now() + 10_000;
    while (server.engine.get("/steady")?.toString() !== "20" && Date.now() < deadline) await delay(10);
    assert.equal(Buffer.from(server.engine.get("/steady") ?? []).toString(), "20");
    assert.equal(server.stats().reaped, 0);
    assert.ok(!socket.destroyed);
  });

  it("does not reap a connection parked in a WAIT, even with half a request queued behind it", {
    timeout: 20_000,
  }, async () => {
    const server = await start({ timeouts: { incompleteRequestMs: 200, idleMs: 200 } });
    const { socket, closed } = await open(server);
    const replies: Buffer[] = [];
    socket.on("data", (chunk: Buffer) => replies.push(chunk));
    socket.write(frame({ type: "wait", keys: ["/later"] }));
    const half = frame({ type: "get", key: "/later" });
    socket.write(half.subarray(0, 4));
    await delay(1000); // five timeouts long: parked, so neither clock runs
    assert.equal(server.stats().reaped, 0);
    assert.ok(!socket.destroyed);
    server.engine.set("/later", Buffer.from("v"));
    // The WAIT is answered; the half GET behind it now stalls, and is reaped.
    await closed;
    assert.deepEqual(Buffer.concat(replies), Buffer.from([0]));
    assert.equal(server.stats().reaped, 1);
  });

  it("reaps a peer that does not read its replies", { timeout: 20_000 }, async () => {
    const server = await start({
      limits: { maxValueBytes: 1 << 20 },
      timeouts: { incompleteRequestMs: 300 },
    });
    server.engine.set("/big", Buffer.alloc(1 << 20, 7));
    const { socket } = await open(server);
    // A paused socket never reads the server's close either: watch the server's side.
    const gone = once(server, "disconnect");
    socket.pause();
    socket.write(Buffer.concat(Array.from({ length: 64 }, () => frame({ type: "get", key: "/big" }))));
    const [{ reason }] = (await gone) as [{ reason: string }];
    assert.match(reason, /did not read its replies/);
    assert.equal(server.stats().reaped, 1);
  });

  it("reaps idle connections only when asked to (idleMs)", { timeout: 20_000 }, async () => {
    const quiet = await start({ timeouts: { idleMs: 0 } });
    const kept = await open(quiet);
    const server = await start({ timeouts: { idleMs: 300 } });
    const { closed } = await open(server);
    const neverSpoke = connect({ host: HOST, port: server.port });
    neverSpoke.on("error", () => {});
    fx.defer(() => neverSpoke.destroy());
    await Promise.all([closed, once(neverSpoke, "close")]);
    assert.equal(server.stats().reaped, 2);
    while (server.stats().connections > 0) await delay(10); // the server's own close events may lag
    assert.ok(!kept.socket.destroyed, "no idle timeout by default");
    assert.equal(quiet.stats().reaped, 0);
  });

  it("does not reap a connection that keeps sending within idleMs (its reads are dated by the sweep)", {
    timeout: 20_000,
  }, async () => {
    const server = await start({ timeouts: { idleMs: 400 } });
    const { socket, closed } = await open(server);
    socket.resume(); // reads (and drops) the replies, so that the server's close reaches 'close'
    // 15 pings 100 ms apart: 1.5 s in all, never 400 ms without a read.
    for (let i = 0; i < 15; i++) {
      socket.write(frame({ type: "ping", nonce: i }));
      await delay(100);
    }
    assert.ok(!socket.destroyed, "an active connection was reaped as idle");
    assert.equal(server.stats().reaped, 0);
    // Once it stops, it is idle: reaped.
    await closed;
    assert.equal(server.stats().reaped, 1);
  });

  it("an rdzv client reconnects after its idle main connection was reaped", { timeout: 20_000 }, async () => {
    const server = await start({ timeouts: { idleMs: 200 } });
    const store = await connectTCPStore({ host: HOST, port: server.port, timeoutMs: 10_000 });
    fx.defer(() => store.close());
    await store.set("k", "v");
    const [err] = (await once(store, "disconnect")) as [Error & { code?: string }];
    assert.equal(err.code, ErrorCode.Connection);
    assert.equal(Buffer.from(await store.get("k")).toString(), "v");
  });
});
