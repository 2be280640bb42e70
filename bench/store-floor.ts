/**
 * The "Node floor" of the store benchmark: the least a Node.js TCPStore server can do per request. It
 * parses just the v2 requests the benchmark sends (VALIDATE, PING, SET, GET, ADD, CHECK, WAIT, GETNUMKEYS),
 * stores nothing and answers at once (GET returns a constant 64-byte value, WAIT and CHECK "ready"), with
 * the same socket handling as rdzv's server (direct reads and writes, one write per chunk, TCP_NODELAY). rdzv's
 * server measured against it shows what the store costs beyond Node's own I/O; never use it for anything
 * else.
 */

import { createServer, type Server } from "node:net";
import { KvEngine } from "../src/store/kv-engine.js";
import { encodeRequest } from "../src/store/tcp/encode.js";
import { VALIDATION_MAGIC } from "../src/store/tcp/protocol.js";
import { RequestDecoder } from "../src/store/tcp/request-decoder.js";
import { directReads } from "../src/store/tcp/server-reads.js";
import { PendingReplies } from "../src/store/tcp/server-replies.js";
import { directWriter, type ReplyWriter, streamWriter } from "../src/store/tcp/server-writes.js";

const VALUE_REPLY = Buffer.concat([Buffer.from([64, 0, 0, 0, 0, 0, 0, 0]), Buffer.alloc(64, 0x76)]);
const ZERO_I64 = Buffer.alloc(8);
const READY = Buffer.from([0]);

/** Length of the frame at `at` in `buf` and its reply, or undefined when incomplete. Throws on unknown ops. */
function frame(buf: Buffer, at: number): { end: number; reply: Buffer | undefined } | undefined {
  const left = buf.length - at;
  const u64 = (p: number): number | undefined =>
    p + 8 <= buf.length ? Number(buf.readBigUInt64LE(p)) : undefined;
  const str = (p: number): number | undefined => {
    const n = u64(p);
    return n === undefined || p + 8 + n > buf.length ? undefined : p + 8 + n;
  };
  const op = buf[at]!;
  switch (op) {
    case 0x00: // VALIDATE
      return left < 5 ? undefined : { end: at + 5, reply: undefined };
    case 0x0d: // PING
      return left < 5 ? undefined : { end: at + 5, reply: Buffer.from(buf.subarray(at + 1, at + 5)) };
    case 0x07: // GETNUMKEYS
      return { end: at + 1, reply: ZERO_I64 };
    case 0x01: {
      // SET key value
      const k = str(at + 1);
      const v = k === undefined ? undefined : str(k);
      return v === undefined ? undefined : { end: v, reply: undefined };
    }
    case 0x03: {
      const k = str(at + 1);
      return k === undefined ? undefined : { end: k, reply: VALUE_REPLY };
    }
    case 0x04: {
      const k = str(at + 1);
      return k === undefined || k + 8 > buf.length ? undefined : { end: k + 8, reply: ZERO_I64 };
    }
    case 0x05:
    case 0x06: {
      const n = u64(at + 1);
      let p: number | undefined = at + 9;
      for (let i = 0; n !== undefined && p !== undefined && i < n; i++) p = str(p);
      return n === undefined || p === undefined ? undefined : { end: p, reply: READY };
    }
    default:
      throw new Error(`floor server: opcode ${op} is not part of the benchmark`);
  }
}

/** Starts the floor server on `host`, port 0. */
export function startFloorServer(host: string): Promise<Server> {
  const server = createServer({ noDelay: true, pauseOnConnect: true }, (accepted) => {
    let pending: Buffer | undefined;
    const onChunk = (chunk: Buffer): void => {
      const buf = pending === undefined ? chunk : Buffer.concat([pending, chunk]);
      const replies: Buffer[] = [];
      let at = 0;
      try {
        for (let f = at < buf.length ? frame(buf, at) : undefined; f !== undefined; ) {
          if (f.reply !== undefined) replies.push(f.reply);
          at = f.end;
          f = at < buf.length ? frame(buf, at) : undefined;
        }
      } catch {
        socket.destroy();
        return;
      }
      pending = at < buf.length ? buf.subarray(at) : undefined;
      if (replies.length > 0) writer.write(replies.length === 1 ? replies[0]! : Buffer.concat(replies));
    };
    // Reads as rdzv's server does: direct (onread) where Node allows it, else as a stream.
    const direct = directReads(accepted, onChunk);
    const socket = direct ?? accepted;
    // Writes as rdzv's server does: to the handle directly where Node allows it (no backpressure here).
    const writer: ReplyWriter = directWriter(socket, () => {}) ?? streamWriter(socket, () => {});
    socket.on("error", () => {});
    socket.setNoDelay(true);
    if (direct === undefined) socket.on("data", onChunk).resume();
  });
  return new Promise((resolve) => server.listen(0, host, () => resolve(server)));
}

/** What `storeWorkPerRequest` needs of an engine (an older `KvEngine` included, see bench/kv-stall.ts). */
export type WorkEngine = Pick<KvEngine, "set" | "get" | "add">;

/**
 * Microseconds of store work per request, without sockets: decoding the frame, running it on a `KvEngine`
 * (or `engine`) and encoding the reply, as rdzv's server does for each ADD / GET (median of 5 runs of `n`).
 * The keys are `/k` and `/n` unless `keySuffix` is appended to both.
 */
export function storeWorkPerRequest(
  n = 200_000,
  engine: WorkEngine = new KvEngine(),
  keySuffix = "",
): { add: number; get: number } {
  engine.set(`/k${keySuffix}`, Buffer.alloc(64, 0x76));
  const decoder = new RequestDecoder();
  decoder.push(encodeRequest("v2", { type: "validate", magic: VALIDATION_MAGIC }));
  decoder.next();
  const out = new PendingReplies();
  const frames = {
    add: encodeRequest("v2", { type: "add", key: `/n${keySuffix}`, delta: 1n }),
    get: encodeRequest("v2", { type: "get", key: `/k${keySuffix}` }),
  };
  const measure = (f: Buffer): number => {
    const runs: number[] = [];
    for (let rep = 0; rep < 5; rep++) {
      const started = performance.now();
      for (let i = 0; i < n; i++) {
        decoder.push(Buffer.from(f)); // a fresh chunk, as from a socket
        const req = decoder.next();
        if (req?.type === "add") out.i64(engine.add(req.key, req.delta));
        else if (req?.type === "get") out.value(engine.get(req.key) ?? new Uint8Array(0));
        out.clear();
      }
      runs.push(((performance.now() - started) * 1000) / n);
    }
    return runs.sort((a, b) => a - b)[2]!;
  };
  return { add: measure(frames.add), get: measure(frames.get) };
}
