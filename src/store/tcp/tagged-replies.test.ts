/**
 * rdzv's async-wait extension at the byte level: golden bytes of TAGGED_REPLIES / WAIT_ASYNC / GET_ASYNC /
 * CANCEL_ASYNC and of the `WaitDone` and `GetDone` frames, the tagged `ReplyDecoder` over arbitrary streams split
 * anywhere, and a real server's tagged reply stream seen through a raw socket.
 */

import assert from "node:assert/strict";
import { connect, type Socket } from "node:net";
import { afterEach, describe, it } from "node:test";
import fc from "fast-check";
import { encodeI64Reply, encodeRequest, encodeU8Reply, encodeU32Reply, encodeValueReply } from "./encode.js";
import { MAX_FAILED_REASON_BYTES, ReplyTag, type Request, VALIDATION_MAGIC } from "./protocol.js";
import { type Reply, ReplyDecoder, type ReplyShape } from "./reply-decoder.js";
import { createTCPStoreServer, type TCPStoreServer } from "./server.js";
import { encodeFailed, encodeGetDone, encodeWaitDone } from "./server-async-waits.js";

const hex = (s: string): Buffer => Buffer.from(s.replace(/\s+/g, ""), "hex");

describe("async-wait extension: encoding", () => {
  it("golden bytes", () => {
    assert.deepEqual(encodeRequest("v2", { type: "taggedReplies" }), hex("43"));
    assert.deepEqual(
      encodeRequest("v2", { type: "waitAsync", id: 7, keys: ["a"] }),
      hex("44 07000000 0100000000000000 0100000000000000 61"),
    );
    assert.deepEqual(encodeRequest("v2", { type: "cancelAsync", id: 0x01020304 }), hex("45 04030201"));
    assert.deepEqual(encodeWaitDone(0xfffffffe), hex("01 FEFFFFFF"));
    assert.deepEqual(
      encodeRequest("v2", { type: "getAsync", id: 9, key: "ab" }),
      hex("46 09000000 0200000000000000 6162"),
    );
    assert.deepEqual(encodeGetDone(3, Buffer.from("hi")), hex("02 03000000 0200000000000000 6869"));
    assert.deepEqual(encodeGetDone(4, new Uint8Array(0)), hex("02 04000000 0000000000000000"));
    assert.deepEqual(encodeFailed("no"), hex("03 0200000000000000 6e6f"));
    assert.equal(encodeFailed("x".repeat(5000)).length, 9 + MAX_FAILED_REASON_BYTES);
    assert.throws(() => encodeRequest("v1", { type: "getAsync", id: 1, key: "k" }), /v1 TCPStore protocol/);
    assert.throws(() => encodeRequest("v1", { type: "waitAsync", id: 1, keys: [] }), /v1 TCPStore protocol/);
  });

  it("a tagged decoder rejects an unknown tag and an in-order reply nobody asked for", () => {
    const d = new ReplyDecoder();
    d.tagged = true;
    d.push(hex("07"));
    assert.throws(() => d.next({ kind: "u8" }), /unknown reply tag 7/);
    const e = new ReplyDecoder();
    e.tagged = true;
    e.push(hex("00 01"));
    assert.throws(() => e.next(undefined), /no request pending/);
    const f = new ReplyDecoder();
    f.tagged = true;
    f.push(encodeFailed("why"));
    assert.throws(() => f.next(undefined), /no request pending/);
    const g = new ReplyDecoder();
    g.tagged = true;
    g.push(
      hex(
        `03 ${(MAX_FAILED_REASON_BYTES + 1)
          .toString(16)
          .padStart(4, "0")
          .replace(/(..)(..)/, "$2$1")}000000000000`,
      ),
    );
    assert.throws(() => g.next({ kind: "i64" }), /failure reason length/);
  });

  interface Item {
    buf: Buffer;
    /** The in-order shape a client expects; undefined for a WaitDone or GetDone frame. */
    shape: ReplyShape | undefined;
    expected: Reply;
  }
  const tagged = (buf: Buffer): Buffer => Buffer.concat([Buffer.from([ReplyTag.InOrder]), buf]);
  const item: fc.Arbitrary<Item> = fc.oneof<fc.Arbitrary<Item>[]>(
    fc.nat({ max: 0xffffffff }).map((id) => ({
      buf: encodeWaitDone(id),
      shape: undefined,
      expected: { kind: "waitDone", value: id },
    })),
    fc.tuple(fc.nat({ max: 0xffffffff }), fc.uint8Array({ maxLength: 24 })).map(([id, v]) => ({
      buf: encodeGetDone(id, v),
      shape: undefined,
      expected: { kind: "getDone", value: id, data: v },
    })),
    fc.nat({ max: 255 }).map((v) => ({
      buf: tagged(encodeU8Reply(v)),
      shape: { kind: "u8" },
      expected: { kind: "u8", value: v },
    })),
    fc.nat({ max: 0xffffffff }).map((v) => ({
      buf: tagged(encodeU32Reply(v)),
      shape: { kind: "u32" },
      expected: { kind: "u32", value: v },
    })),
    fc.bigInt({ min: -(2n ** 63n), max: 2n ** 63n - 1n }).map((v) => ({
      buf: tagged(encodeI64Reply(v)),
      shape: { kind: "i64" },
      expected: { kind: "i64", value: v },
    })),
    fc.uint8Array({ maxLength: 24 }).map((v) => ({
      buf: tagged(encodeValueReply(v)),
      shape: { kind: "value" },
      expected: { kind: "value", value: v },
    })),
    fc.string({ maxLength: 24 }).map((reason) => ({
      buf: encodeFailed(reason),
      shape: { kind: "i64" },
      expected: { kind: "failed", value: Buffer.from(reason, "utf8").toString("utf8") },
    })),
  );

  it("round trip: in-order replies, Failed, WaitDone and GetDone frames interleaved, split anywhere", () => {
    fc.assert(
      fc.property(
        fc.array(item, { minLength: 1, maxLength: 12 }),
        fc.array(fc.nat(), { maxLength: 10 }),
        (items, at) => {
          const stream = Buffer.concat(items.map((i) => i.buf));
          const points = [...new Set(at.map((p) => p % (stream.length + 1)))].sort((x, y) => x - y);
          const shapes = items.flatMap((i) => (i.shape === undefined ? [] : [i.shape]));
          const decoder = new ReplyDecoder();
          decoder.tagged = true;
          const out: Reply[] = [];
          let inOrder = 0;
          let start = 0;
          for (const p of [...points, stream.length]) {
            decoder.push(stream.subarray(start, Math.max(start, p)));
            start = Math.max(start, p);
            for (let r = decoder.next(shapes[inOrder]); r !== undefined; r = decoder.next(shapes[inOrder])) {
              out.push(r);
              if (r.kind !== "waitDone" && r.kind !== "getDone") inOrder++;
            }
          }
          assert.deepEqual(
            out,
            items.map((i) => i.expected),
          );
          assert.equal(decoder.bufferedBytes, 0);
        },
      ),
      { numRuns: 300 },
    );
  });
});

/** A raw v2 socket that reads exact byte counts. */
async function raw(port: number): Promise<{
  send(...reqs: Request[]): void;
  read(n: number): Promise<Buffer>;
  closed: Promise<void>;
  socket: Socket;
}> {
  const socket = connect({ port, host: "127.0.0.1", noDelay: true });
  await new Promise<void>((resolve, reject) => {
    socket.once("connect", resolve);
    socket.once("error", reject);
  });
  socket.on("error", () => {});
  let buf = Buffer.alloc(0);
  let wake: (() => void) | undefined;
  socket.on("data", (chunk: Buffer) => {
    buf = Buffer.concat([buf, chunk]);
    wake?.();
  });
  const closed = new Promise<void>((resolve) => socket.on("close", () => resolve()));
  const send = (...reqs: Request[]): void => {
    socket.write(Buffer.concat(reqs.map((r) => encodeRequest("v2", r))));
  };
  send({ type: "validate", magic: VALIDATION_MAGIC });
  const read = async (n: number): Promise<Buffer> => {
    while (buf.length < n) {
      if (socket.closed) throw new Error(`closed after ${buf.length} of ${n} bytes`);
      await new Promise<void>((resolve) => {
        wake = resolve;
        socket.once("close", resolve);
      });
    }
    const out = buf.subarray(0, n);
    buf = buf.subarray(n);
    return out;
  };
  return { send, read, closed, socket };
}

describe("async-wait extension: server", () => {
  let server: TCPStoreServer | undefined;
  const sockets: Socket[] = [];
  afterEach(async () => {
    for (const s of sockets.splice(0)) s.destroy();
    await server?.close();
    server = undefined;
  });
  const open = async (): Promise<Awaited<ReturnType<typeof raw>>> => {
    server ??= await createTCPStoreServer({ port: 0 });
    const c = await raw(server.port);
    sockets.push(c.socket);
    return c;
  };

  it("tags every reply after TAGGED_REPLIES; completions come between them, in order of events", async () => {
    const c = await open();
    const other = await open();
    c.send(
      { type: "add", key: "n", delta: 1n },
      { type: "taggedReplies" },
      { type: "waitAsync", id: 5, keys: ["x", "y"] },
      { type: "waitAsync", id: 6, keys: ["n"] },
      { type: "add", key: "n", delta: 1n },
    );
    // Untagged ADD reply, untagged ACK, WaitDone(6) at once (n exists), tagged ADD reply.
    assert.deepEqual(await c.read(8 + 1 + 5 + 9), hex(`0100000000000000 00 0106000000 00 0200000000000000`));
    // A WAIT_ASYNC made true by the connection's own request: the request's reply comes first.
    c.send({ type: "waitAsync", id: 7, keys: ["z"] }, { type: "add", key: "z", delta: 3n });
    assert.deepEqual(await c.read(9 + 5), hex("00 0300000000000000 0107000000"));
    other.send(
      { type: "set", key: "x", value: Buffer.from("1") },
      { type: "set", key: "y", value: Buffer.from("2") },
    );
    assert.deepEqual(await c.read(5), hex("0105000000"));
    // CANCEL_ASYNC: 01 when it dropped a pending wait, 00 when nothing of that id was pending.
    c.send({ type: "waitAsync", id: 8, keys: ["never"] });
    c.send({ type: "cancelAsync", id: 8 }, { type: "cancelAsync", id: 8 });
    assert.deepEqual(await c.read(4), hex("00 01 00 00"));
    assert.equal(server!.stats().waiters, 0);
  });

  it("GET_ASYNC: the value at once when the key exists, else when it is created; cancellable", async () => {
    const c = await open();
    const other = await open();
    c.send(
      { type: "taggedReplies" },
      { type: "set", key: "k", value: Buffer.from("v1") },
      { type: "getAsync", id: 1, key: "k" },
      { type: "getAsync", id: 2, key: "later" },
      { type: "ping", nonce: 5 },
    );
    // ACK; GetDone(1, "v1") at once; the PING is not held back by the pending GET_ASYNC of id 2.
    assert.deepEqual(await c.read(1 + 15 + 5), hex("00 02 01000000 0200000000000000 7631 00 05000000"));
    // The value as created, even when it changes right after (in the same chunk of the other client).
    other.send(
      { type: "set", key: "later", value: Buffer.from("abc") },
      { type: "set", key: "later", value: Buffer.from("changed") },
    );
    assert.deepEqual(await c.read(16), hex("02 02000000 0300000000000000 616263"));
    // An id is one id space with WAIT_ASYNC; CANCEL_ASYNC drops a pending GET_ASYNC.
    c.send(
      { type: "getAsync", id: 3, key: "never" },
      { type: "cancelAsync", id: 3 },
      { type: "cancelAsync", id: 3 },
    );
    assert.deepEqual(await c.read(4), hex("00 01 00 00"));
    assert.equal(server!.stats().waiters, 0);
    c.send({ type: "getAsync", id: 4, key: "never" }, { type: "waitAsync", id: 4, keys: ["x"] });
    await c.closed;
    const untagged = await open();
    untagged.send({ type: "getAsync", id: 1, key: "k" });
    await untagged.closed;
    assert.equal(server!.stats().protocolErrors, 2);
  });

  it("answers a failed ADD on a tagged connection with a Failed frame and keeps the connection", async () => {
    const c = await open();
    c.send(
      { type: "set", key: "s", value: Buffer.from("abc") },
      { type: "taggedReplies" },
      { type: "waitAsync", id: 1, keys: ["later"] },
      { type: "add", key: "s", delta: 1n },
      { type: "add", key: "n", delta: 2n },
    );
    const reason = Buffer.from('the stored value "abc" is not an integer');
    const failed = Buffer.concat([hex(`03 ${reason.length.toString(16)}00000000000000`), reason]);
    assert.deepEqual(
      await c.read(1 + failed.length + 9),
      Buffer.concat([hex("00"), failed, hex("00 0200000000000000")]),
    );
    const other = await open();
    other.send({ type: "set", key: "later", value: Buffer.from("1") }, { type: "get", key: "s" });
    assert.deepEqual(await c.read(5), hex("01 01000000"), "the pending WAIT_ASYNC survived");
    assert.deepEqual(await other.read(11), hex("0300000000000000 616263"), "the value is unchanged");
    assert.equal(server!.stats().protocolErrors, 0);
  });

  it("keeps many waits outstanding on one connection and drops them when it closes", async () => {
    const c = await open();
    c.send({ type: "taggedReplies" });
    await c.read(1);
    for (let id = 0; id < 100; id++) c.send({ type: "waitAsync", id, keys: [`k${id}`] });
    c.send({ type: "ping", nonce: 9 });
    assert.deepEqual(await c.read(5), hex("00 09000000"), "PING is not held back by the waits");
    assert.equal(server!.stats().waiters, 100);
    c.socket.destroy();
    await c.closed;
    for (let i = 0; i < 50 && server!.stats().waiters > 0; i++) await new Promise((r) => setTimeout(r, 10));
    assert.equal(server!.stats().waiters, 0);
  });

  it("closes a connection that sends WAIT_ASYNC untagged or reuses a pending id", async () => {
    const a = await open();
    a.send({ type: "waitAsync", id: 1, keys: ["k"] });
    await a.closed;
    const b = await open();
    b.send(
      { type: "taggedReplies" },
      { type: "waitAsync", id: 1, keys: ["k"] },
      { type: "waitAsync", id: 1, keys: ["k"] },
    );
    assert.deepEqual(await b.read(1), hex("00"));
    await b.closed;
    assert.equal(server!.stats().protocolErrors, 2);
  });
});
