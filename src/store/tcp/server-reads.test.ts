/**
 * Direct reads (server-reads.ts) on real loopback sockets: the bytes arrive intact and in order even as
 * the shared read buffer is reused, pause/resume and end/close behave, the listener's connection count is
 * settled; and the store server works the same with direct reads off (RDZV_STREAM_READS=1).
 */

import assert from "node:assert/strict";
import { once } from "node:events";
import { connect, createServer, type Server, type Socket } from "node:net";
import { afterEach, describe, it } from "node:test";
import { TcpFixtures } from "../../../test/helpers/tcp-fixtures.js";
import { directReads } from "./server-reads.js";

const fx = new TcpFixtures();
const servers: Server[] = [];
afterEach(async () => {
  await fx.cleanup();
  for (const s of servers.splice(0)) await new Promise<void>((done) => s.close(() => done()));
});

/** A listener with pauseOnConnect whose accepted sockets go through `directReads`. */
async function listen(onChunk: (chunk: Buffer) => void) {
  const accepted: Socket[] = [];
  const server = createServer({ pauseOnConnect: true }, (s) => {
    const moved = directReads(s, onChunk);
    assert.ok(moved, "directReads fell back to stream reads on this Node: its socket internals changed");
    accepted.push(moved);
  });
  servers.push(server);
  server.listen(0, "127.0.0.1");
  await once(server, "listening");
  const port = (server.address() as { port: number }).port;
  return { server, port, accepted };
}

describe("direct reads", () => {
  it("delivers every byte in order, each chunk a copy that later reads do not overwrite", async () => {
    const chunks: Buffer[] = [];
    const { port } = await listen((c) => chunks.push(c));
    const client = connect({ port, host: "127.0.0.1" });
    await once(client, "connect");
    // More than the shared 64 KiB buffer, in writes of many sizes.
    const payload = Buffer.alloc(300_000);
    for (let i = 0; i < payload.length; i++) payload[i] = (i * 7 + (i >> 9)) & 0xff;
    for (let at = 0, n = 1; at < payload.length; at += n, n = (n * 5 + 3) % 70_000) {
      client.write(payload.subarray(at, at + n));
    }
    while (chunks.reduce((a, c) => a + c.length, 0) < payload.length)
      await new Promise((r) => setTimeout(r, 5));
    assert.ok(chunks.length > 1);
    assert.ok(Buffer.concat(chunks).equals(payload));
    client.destroy();
  });

  it("stops reading while paused and reads again on resume; 'end' and 'close' come when the peer ends", async () => {
    const chunks: Buffer[] = [];
    const { port, accepted } = await listen((c) => chunks.push(c));
    const client = connect({ port, host: "127.0.0.1" });
    await once(client, "connect");
    client.write("one");
    while (chunks.length === 0) await new Promise((r) => setTimeout(r, 5));
    const socket = accepted[0]!;
    socket.pause();
    client.write("two");
    await new Promise((r) => setTimeout(r, 100));
    assert.equal(Buffer.concat(chunks).toString(), "one");
    socket.resume();
    while (Buffer.concat(chunks).toString() !== "onetwo") await new Promise((r) => setTimeout(r, 5));
    socket.write("reply");
    const [reply] = (await once(client, "data")) as [Buffer];
    assert.equal(reply.toString(), "reply");
    const ended = once(socket, "end");
    const closed = once(socket, "close");
    client.end();
    await ended;
    await closed;
  });

  it("leaves the listener's connection count settled, so close() completes", async () => {
    const { server, port, accepted } = await listen(() => {});
    const client = connect({ port, host: "127.0.0.1" });
    await once(client, "connect");
    while (accepted.length === 0) await new Promise((r) => setTimeout(r, 5));
    const count = await new Promise<number>((done) => server.getConnections((_e, n) => done(n)));
    assert.equal(count, 0);
    client.destroy();
    accepted[0]!.destroy();
  });

  it("with RDZV_STREAM_READS=1 leaves the socket as it is, still paused, for stream reads", async () => {
    fx.env("RDZV_STREAM_READS", "1");
    const got: Buffer[] = [];
    const server = createServer({ pauseOnConnect: true }, (s) => {
      assert.equal(
        directReads(s, () => assert.fail("no direct read expected")),
        undefined,
      );
      s.on("data", (c: Buffer) => got.push(c));
      s.resume();
    });
    servers.push(server);
    server.listen(0, "127.0.0.1");
    await once(server, "listening");
    const client = connect({ port: (server.address() as { port: number }).port, host: "127.0.0.1" });
    await once(client, "connect");
    client.write("abc");
    while (Buffer.concat(got).toString() !== "abc") await new Promise((r) => setTimeout(r, 5));
    client.destroy();
  });

  it("the store server serves the same with direct reads off (RDZV_STREAM_READS=1)", async () => {
    fx.env("RDZV_STREAM_READS", "1");
    const server = await fx.server();
    await fx.exchange(server);
    assert.equal(server.stats().connections, 2);
  });
});
