/**
 * Direct writes (server-writes.ts) on real loopback sockets: this Node gives them (a test fails when its
 * internals change and the server would fall back); bytes arrive intact and in order whether the kernel
 * takes a write at once or later; a write the kernel could not take asks the caller to wait, and the drain
 * callback comes once the peer reads; end() after pending writes delivers them all before EOF; a write to
 * a reset peer destroys the socket with an error naming it; writes after destroy are dropped. And the
 * store server serves the same with RDZV_STREAM_WRITES=1.
 */

import assert from "node:assert/strict";
import { once } from "node:events";
import { connect, createServer, type Server, type Socket } from "node:net";
import { afterEach, describe, it } from "node:test";
import { TcpFixtures } from "../../../test/helpers/tcp-fixtures.js";
import { encodeRequest } from "./encode.js";
import { VALIDATION_MAGIC } from "./protocol.js";
import { directWriter, type ReplyWriter } from "./server-writes.js";

const fx = new TcpFixtures();
const servers: Server[] = [];
const sockets: Socket[] = [];
afterEach(async () => {
  await fx.cleanup();
  for (const s of sockets.splice(0)) s.destroy();
  for (const s of servers.splice(0)) await new Promise<void>((done) => s.close(() => done()));
});

/** A connected pair: `server` is the accepted side with a direct writer, `client` the peer (paused). */
async function pair() {
  let drains = 0;
  const accepted = new Promise<Socket>((resolve) => {
    const server = createServer({ pauseOnConnect: true }, resolve);
    servers.push(server);
    server.listen(0, "127.0.0.1");
  });
  await once(servers.at(-1)!, "listening");
  const port = (servers.at(-1)!.address() as { port: number }).port;
  const client = connect({ port, host: "127.0.0.1" });
  client.pause();
  sockets.push(client);
  const server = await accepted;
  sockets.push(server);
  server.on("error", () => {});
  const writer = directWriter(server, () => drains++);
  assert.ok(writer, "directWriter fell back to stream writes on this Node: its socket internals changed");
  return { server, client, writer: writer as ReplyWriter, drains: () => drains };
}

/** Reads from `client` until `n` bytes arrived. */
async function readAll(client: Socket, n: number): Promise<Buffer> {
  const chunks: Buffer[] = [];
  let got = 0;
  client.on("data", (c: Buffer) => {
    chunks.push(c);
    got += c.length;
  });
  client.resume();
  while (got < n) await new Promise((r) => setTimeout(r, 5));
  return Buffer.concat(chunks);
}

function pattern(n: number, seed: number): Buffer {
  const b = Buffer.alloc(n);
  for (let i = 0; i < n; i++) b[i] = (i * 31 + seed * 7 + (i >> 11)) & 0xff;
  return b;
}

describe("direct writes", () => {
  it("deliver every byte in order; a write the kernel cannot take yet asks to wait, then drains once", async () => {
    const { client, writer, drains } = await pair();
    const sent: Buffer[] = [];
    let waited = false;
    // The peer reads nothing yet: the kernel's buffers fill and later writes complete asynchronously.
    for (let i = 0; i < 80; i++) {
      const buf = pattern(1 + ((i * 7919) % 200_000), i);
      const parts = i % 3 === 0 ? [buf.subarray(0, 5), buf.subarray(5)] : [buf];
      sent.push(buf);
      const ok = parts.length === 1 ? writer.write(buf) : writer.writev(parts);
      if (!ok) waited = true;
    }
    assert.ok(waited, "8 MB to a peer that does not read should have filled the kernel's buffers");
    assert.equal(drains(), 0);
    const total = sent.reduce((a, b) => a + b.length, 0);
    const got = await readAll(client, total);
    assert.ok(got.equals(Buffer.concat(sent)));
    while (drains() === 0) await new Promise((r) => setTimeout(r, 5));
    assert.equal(drains(), 1);
    assert.equal(writer.write(Buffer.from("more")), true);
  });

  it("end() after pending writes delivers them all before the end of the stream", async () => {
    const { server, client, writer } = await pair();
    // Until the kernel takes no more: the rest is pending when end() is called.
    const sent: Buffer[] = [];
    for (let more = true; more; ) {
      sent.push(pattern(1_000_000, sent.length));
      more = writer.write(sent.at(-1)!);
    }
    const payload = Buffer.concat(sent);
    server.end();
    const chunks: Buffer[] = [];
    client.on("data", (c: Buffer) => chunks.push(c));
    const ended = once(client, "end");
    client.resume();
    await ended;
    assert.ok(Buffer.concat(chunks).equals(payload));
  });

  it("a write to a peer that reset destroys the socket with an error naming it", async () => {
    const { server, client, writer } = await pair();
    client.resetAndDestroy();
    const failed = new Promise((closed) => server.on("close", closed));
    const errors: NodeJS.ErrnoException[] = [];
    server.on("error", (e: NodeJS.ErrnoException) => errors.push(e));
    // The reset may take a moment to arrive; keep writing until the kernel reports it.
    for (let i = 0; i < 200 && !server.destroyed; i++) {
      writer.write(Buffer.from("after reset"));
      await new Promise((r) => setTimeout(r, 5));
    }
    await failed;
    assert.equal(errors.length, 1);
    assert.match(errors[0]!.code ?? "", /^(EPIPE|ECONNRESET)$/);
    assert.match(errors[0]!.message, /^write (EPIPE|ECONNRESET)$/);
  });

  it("drops writes after the socket was destroyed", async () => {
    const { server, writer, drains } = await pair();
    server.destroy();
    assert.equal(writer.write(Buffer.from("late")), true);
    assert.equal(writer.writev([Buffer.from("la"), Buffer.from("te")]), true);
    assert.equal(drains(), 0);
  });

  it("with RDZV_STREAM_WRITES=1 gives no direct writer", async () => {
    fx.env("RDZV_STREAM_WRITES", "1");
    const socket = connect({ port: 9, host: "127.0.0.1" });
    socket.on("error", () => {});
    sockets.push(socket);
    assert.equal(
      directWriter(socket, () => {}),
      undefined,
    );
  });

  it("the store server serves the same with direct writes off (RDZV_STREAM_WRITES=1)", async () => {
    fx.env("RDZV_STREAM_WRITES", "1");
    const server = await fx.server();
    await fx.exchange(server);
    // Replies bigger than the kernel's buffers, to a peer reading late: the stream's drain path.
    const big = pattern(4_000_000, 3);
    const raw = connect({ port: server.port, host: "127.0.0.1" });
    sockets.push(raw);
    await once(raw, "connect");
    raw.pause();
    raw.write(encodeRequest("v2", { type: "validate", magic: VALIDATION_MAGIC }));
    raw.write(encodeRequest("v2", { type: "set", key: "/big", value: big }));
    for (let i = 0; i < 4; i++) raw.write(encodeRequest("v2", { type: "get", key: "/big" }));
    await new Promise((r) => setTimeout(r, 100));
    const got = await readAll(raw, 4 * (8 + big.length));
    for (let i = 0; i < 4; i++) {
      const at = i * (8 + big.length);
      assert.equal(got.readUInt32LE(at), big.length);
      assert.ok(got.subarray(at + 8, at + 8 + big.length).equals(big));
    }
  });
});
