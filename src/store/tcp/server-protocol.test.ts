/**
 * The TCP store server on the wire: raw sockets sending hand-built frames (the raw-socket cases of the
 * protocol design note, 1-18, in both dialects, plus isolation, wait and extension cases; see
 * docs/tcpstore-compat.md).
 */

import assert from "node:assert/strict";
import { connect, type Socket } from "node:net";
import { afterEach, beforeEach, describe, it } from "node:test";
import { setTimeout as delay } from "node:timers/promises";
import { encodeRequest } from "./encode.js";
import { type Dialect, EXTENSION_PROBE_KEY, type Request, VALIDATION_MAGIC } from "./protocol.js";
import { createTCPStoreServer, type ServerLimits, type TCPStoreServer } from "./server.js";

/** A client speaking raw bytes, reading exact byte counts back. */
class RawClient {
  #buf: Buffer = Buffer.alloc(0);
  #wake: (() => void) | undefined;
  #ended = false;
  readonly closed: Promise<void>;

  private constructor(
    readonly socket: Socket,
    readonly dialect: Dialect,
  ) {
    socket.on("data", (chunk: Buffer) => {
      this.#buf = Buffer.concat([this.#buf, chunk]);
      this.#wake?.();
    });
    socket.on("error", () => {});
    this.closed = new Promise((resolve) =>
      socket.on("close", () => {
        this.#ended = true;
        this.#wake?.();
        resolve();
      }),
    );
  }

  /** Connects; a v2 client sends VALIDATE first. */
  static async open(port: number, dialect: Dialect, host = "127.0.0.1"): Promise<RawClient> {
    const socket = connect({ port, host, noDelay: true });
    await new Promise<void>((resolve, reject) => {
      socket.once("connect", resolve);
      socket.once("error", reject);
    });
    const client = new RawClient(socket, dialect);
    if (dialect === "v2") client.send({ type: "validate", magic: VALIDATION_MAGIC });
    return client;
  }

  send(req: Request | Buffer | readonly number[]): void {
    if (Buffer.isBuffer(req)) this.socket.write(req);
    else if (Array.isArray(req)) this.socket.write(Buffer.from(req));
    else this.socket.write(encodeRequest(this.dialect, req as Request));
  }

  async read(n: number, timeoutMs = 2000): Promise<Buffer> {
    const deadline = Date.now() + timeoutMs;
    while (this.#buf.length < n) {
      if (this.#ended) throw new Error(`connection closed after ${this.#buf.length} of ${n} bytes`);
      const left = deadline - Date.now();
      if (left <= 0) throw new Error(`timed out with ${this.#buf.length} of ${n} bytes`);
      await new Promise<void>((resolve) => {
        const timer = setTimeout(resolve, left);
        this.#wake = () => {
          clearTimeout(timer);
          resolve();
        };
      });
      this.#wake = undefined;
    }
    const out = this.#buf.subarray(0, n);
    this.#buf = this.#buf.subarray(n);
    return out;
  }

  async u8(): Promise<number> {
    return (await this.read(1))[0]!;
  }

  async i64(): Promise<bigint> {
    return (await this.read(8)).readBigInt64LE(0);
  }

  async value(): Promise<string> {
    const n = Number((await this.read(8)).readBigUInt64LE(0));
    return (await this.read(n)).toString("latin1");
  }

  /** Asserts that nothing arrives for `ms`. */
  async silent(ms = 40): Promise<void> {
    await delay(ms);
    assert.equal(this.#buf.length, 0, `unexpected bytes ${this.#buf.toString("hex")}`);
  }

  /** Asserts that the server closes the connection. */
  async expectClosed(timeoutMs = 2000): Promise<void> {
    let timer: NodeJS.Timeout | undefined;
    const timeout = new Promise<never>((_, reject) => {
      timer = setTimeout(() => reject(new Error("the server did not close the connection")), timeoutMs);
    });
    try {
      await Promise.race([this.closed, timeout]);
    } finally {
      clearTimeout(timer);
    }
  }

  /** Bytes received and not read yet. */
  get buffered(): number {
    return this.#buf.length;
  }

  get isClosed(): boolean {
    return this.#ended;
  }

  close(): void {
    this.socket.destroy();
  }
}

const b = (s: string): Buffer => Buffer.from(s, "latin1");
const hex = (s: string): Buffer => Buffer.from(s.replace(/\s+/g, ""), "hex");
const le64 = (n: number): string => {
  const buf = Buffer.alloc(8);
  buf.writeBigInt64LE(BigInt(n));
  return buf.toString("hex");
};

let server: TCPStoreServer;
let clients: RawClient[] = [];

async function startServer(limits?: Partial<ServerLimits>): Promise<void> {
  await server?.close();
  server = await createTCPStoreServer({ port: 0, ...(limits === undefined ? {} : { limits }) });
}

async function client(dialect: Dialect): Promise<RawClient> {
  const c = await RawClient.open(server.port, dialect);
  clients.push(c);
  return c;
}

/** Waits until the server counts `n` pending waits (registration happens on the server's schedule). */
async function untilWaiters(n: number): Promise<void> {
  for (let i = 0; i < 1000 && server.stats().waiters !== n; i++) await delay(2);
  assert.equal(server.stats().waiters, n);
}

beforeEach(async () => {
  server = await createTCPStoreServer({ port: 0 });
});

afterEach(async () => {
  for (const c of clients) c.close();
  clients = [];
  await server.close();
});

describe("TCPStoreServer handshake and dialect detection (§7.2 1-5)", () => {
  it("v2: VALIDATE gets no reply and PING echoes the nonce (golden bytes from 2.13)", async () => {
    const c = await client("v1"); // raw bytes only
    c.send(hex("00 CE F7 85 3C 0D 45 49 00 00"));
    assert.deepEqual(await c.read(4), hex("45 49 00 00"));
    await c.silent();
    assert.equal(server.stats().dialects.v2, 1);
  });

  it("v2: VALIDATE and PING arriving one byte at a time", async () => {
    const c = await client("v1");
    for (const byte of hex("00 CE F7 85 3C 0D EF BE AD DE")) {
      c.send([byte]);
      await delay(1);
    }
    assert.deepEqual(await c.read(4), hex("EF BE AD DE"));
  });

  it("v1: a connection that never sends a byte stays open", async () => {
    const idle = await client("v1");
    await delay(80);
    assert.equal(idle.isClosed, false);
    assert.equal(server.stats().connections, 1);
    idle.send([0x06]);
    assert.equal(await idle.i64(), 0n);
  });

  it("v1: GETNUMKEYS (06) is answered from one byte", async () => {
    const c = await client("v1");
    c.send([0x06]);
    assert.equal(await c.i64(), 0n);
    assert.equal(server.stats().dialects.v1, 1);
  });

  it("a wrong magic is read as a v1 SET with a ~1 GB key and closes", async () => {
    const c = await client("v1");
    c.send(hex("00 CE F7 85 3D 00 00 00 00"));
    await c.expectClosed();
    assert.equal(server.stats().protocolErrors, 1);
  });

  it("a v2 PING before VALIDATE closes (it is an unknown v1 opcode)", async () => {
    const c = await client("v1");
    c.send(hex("0D 01 02 03 04"));
    await c.expectClosed();
  });

  it("a second VALIDATE closes", async () => {
    const c = await client("v2");
    c.send({ type: "validate", magic: VALIDATION_MAGIC });
    await c.expectClosed();
  });

  for (const dialect of ["v1", "v2"] as const) {
    it(`${dialect}: an unknown opcode closes only that connection`, async () => {
      const good = await client(dialect);
      good.send({ type: "set", key: "/k", value: b("v") });
      const bad = await client(dialect);
      bad.send([0x2a]);
      await bad.expectClosed();
      good.send({ type: "get", key: "/k" });
      assert.equal(await good.value(), "v");
    });
  }
});

describe("TCPStoreServer framing (§7.2 6-7)", () => {
  for (const dialect of ["v1", "v2"] as const) {
    it(`${dialect}: SET then GET sent one byte at a time`, async () => {
      const c = await client(dialect);
      const bytes = Buffer.concat([
        encodeRequest(dialect, { type: "set", key: "/k1", value: b("v1") }),
        encodeRequest(dialect, { type: "get", key: "/k1" }),
      ]);
      for (const byte of bytes) c.send([byte]);
      assert.equal(await c.value(), "v1");
    });

    it(`${dialect}: SET, ADD and GET pipelined in one segment reply in order`, async () => {
      const c = await client(dialect);
      c.send(
        Buffer.concat([
          encodeRequest(dialect, { type: "set", key: "/a", value: b("x") }),
          encodeRequest(dialect, { type: "add", key: "/n", delta: 5n }),
          encodeRequest(dialect, { type: "get", key: "/a" }),
          encodeRequest(dialect, { type: "add", key: "/n", delta: 2n }),
        ]),
      );
      assert.equal(await c.i64(), 5n);
      assert.equal(await c.value(), "x");
      assert.equal(await c.i64(), 7n);
    });
  }

  it("a stalled half-message on one connection does not block another", async () => {
    const stalled = await client("v1");
    const full = encodeRequest("v1", { type: "set", key: "/stall", value: b("value") });
    stalled.send(full.subarray(0, 12));
    const other = await client("v2");
    other.send({ type: "add", key: "/c", delta: 1n });
    assert.equal(await other.i64(), 1n);
    stalled.send(full.subarray(12));
    stalled.send({ type: "get", key: "/stall" });
    assert.equal(await stalled.value(), "value");
  });

  it("v1 golden bytes: set, delete_key twice, num_keys (§3.3, §3.4)", async () => {
    const c = await client("v1");
    c.send(hex("00 03 00 00 00 00 00 00 00 2F 6B 31 02 00 00 00 00 00 00 00 76 31"));
    c.send(hex("06"));
    assert.deepEqual(await c.read(8), hex("01 00 00 00 00 00 00 00"));
    c.send(hex("08 03 00 00 00 00 00 00 00 2F 6B 31"));
    assert.deepEqual(await c.read(8), hex("01 00 00 00 00 00 00 00"));
    c.send(hex("08 03 00 00 00 00 00 00 00 2F 6B 31"));
    assert.deepEqual(await c.read(8), hex("00 00 00 00 00 00 00 00"));
    c.send(hex(`03 04 00 00 00 00 00 00 00 2F 63 6E 74 FE FF FF FF FF FF FF FF`));
    assert.deepEqual(await c.read(8), hex("FE FF FF FF FF FF FF FF"));
    c.send(hex("01 04 00 00 00 00 00 00 00 2F 63 73 31 00 00 00 00 00 00 00 00 01 00 00 00 00 00 00 00 78"));
    assert.deepEqual(await c.read(9), hex("01 00 00 00 00 00 00 00 78"));
    c.send(
      hex(
        "05 02 00 00 00 00 00 00 00 04 00 00 00 00 00 00 00 2F 63 6E 74 04 00 00 00 00 00 00 00 2F 63 73 31",
      ),
    );
    assert.deepEqual(await c.read(1), hex("00"));
  });

  it("v2 golden bytes: wait then get (§3.3)", async () => {
    const c = await client("v2");
    c.send(hex("01 03 00 00 00 00 00 00 00 2F 6B 31 02 00 00 00 00 00 00 00 76 31"));
    c.send(hex("06 01 00 00 00 00 00 00 00 03 00 00 00 00 00 00 00 2F 6B 31"));
    assert.deepEqual(await c.read(1), hex("00"));
    c.send(hex("03 03 00 00 00 00 00 00 00 2F 6B 31"));
    assert.deepEqual(await c.read(10), hex("02 00 00 00 00 00 00 00 76 31"));
  });
});

describe("TCPStoreServer commands (§7.2 8, 11-15)", () => {
  for (const dialect of ["v1", "v2"] as const) {
    it(`${dialect}: WAIT n=0 and CHECK n=0 return 00; CHECK [present, missing] returns 01`, async () => {
      const c = await client(dialect);
      c.send({ type: "wait", keys: [] });
      assert.equal(await c.u8(), 0);
      c.send({ type: "check", keys: [] });
      assert.equal(await c.u8(), 0);
      c.send({ type: "set", key: "/p", value: b("1") });
      c.send({ type: "check", keys: ["/p", "/missing"] });
      assert.equal(await c.u8(), 1);
      c.send({ type: "check", keys: ["/p"] });
      assert.equal(await c.u8(), 0);
    });

    it(`${dialect}: COMPARE_SET semantics table`, async () => {
      const c = await client(dialect);
      c.send({ type: "compareSet", key: "/cs", expected: b("wrong_old_value"), desired: b("new") });
      assert.equal(await c.value(), "wrong_old_value");
      c.send({ type: "check", keys: ["/cs"] });
      assert.equal(await c.u8(), 1);
      c.send({ type: "compareSet", key: "/cs", expected: b(""), desired: b("first") });
      assert.equal(await c.value(), "first");
      c.send({ type: "compareSet", key: "/cs", expected: b("nope"), desired: b("second") });
      assert.equal(await c.value(), "first");
      c.send({ type: "compareSet", key: "/cs", expected: b("first"), desired: b("second") });
      assert.equal(await c.value(), "second");
      c.send({ type: "get", key: "/cs" });
      assert.equal(await c.value(), "second");
    });

    it(`${dialect}: ADD parses like stoll, wraps at 64 bits, starts new keys at 0`, async () => {
      const c = await client(dialect);
      c.send({ type: "set", key: "/n", value: b("5abc") });
      c.send({ type: "add", key: "/n", delta: 1n });
      assert.equal(await c.i64(), 6n);
      c.send({ type: "add", key: "/neg", delta: -5n });
      assert.equal(await c.i64(), -5n);
      c.send({ type: "get", key: "/neg" });
      assert.equal(await c.value(), "-5");
      c.send({ type: "set", key: "/max", value: b(" +9223372036854775807") });
      c.send({ type: "add", key: "/max", delta: 1n });
      assert.equal(await c.i64(), -(2n ** 63n));
    });

    it(`${dialect}: ADD on a non-number closes only that connection and changes nothing`, async () => {
      const other = await client(dialect);
      const c = await client(dialect);
      c.send({ type: "set", key: "/s", value: b("abc") });
      c.send({ type: "add", key: "/s", delta: 1n });
      await c.expectClosed();
      other.send({ type: "get", key: "/s" });
      assert.equal(await other.value(), "abc");
      assert.equal(server.stats().protocolErrors, 1);
    });

    it(`${dialect}: GET of a missing key replies an empty value`, async () => {
      const c = await client(dialect);
      c.send({ type: "get", key: "/nothing" });
      assert.deepEqual(await c.read(8), Buffer.alloc(8));
      c.send({ type: "getNumKeys" });
      assert.equal(await c.i64(), 0n);
    });

    it(`${dialect}: DELETE_KEY returns 1 then 0 and wakes no waiter`, async () => {
      const waiter = await client(dialect);
      const c = await client(dialect);
      waiter.send({ type: "wait", keys: ["/d"] });
      c.send({ type: "set", key: "/x", value: b("") });
      c.send({ type: "deleteKey", key: "/x" });
      assert.equal(await c.i64(), 1n);
      c.send({ type: "deleteKey", key: "/x" });
      assert.equal(await c.i64(), 0n);
      c.send({ type: "deleteKey", key: "/d" });
      assert.equal(await c.i64(), 0n);
      await waiter.silent();
      c.send({ type: "set", key: "/d", value: b("1") });
      c.send({ type: "deleteKey", key: "/d" });
      assert.equal(await c.i64(), 1n);
      assert.equal(await waiter.u8(), 0);
    });
  }

  it("v2: APPEND creates then concatenates; MULTI_SET / MULTI_GET in request order", async () => {
    const c = await client("v2");
    c.send({ type: "append", key: "/p", value: b("po") });
    c.send({ type: "append", key: "/p", value: b("tato") });
    c.send({ type: "append", key: "/empty", value: b("") });
    c.send({ type: "multiSet", keys: ["/m1", "/m2"], values: [b("one"), b("two")] });
    c.send({ type: "multiGet", keys: ["/m2", "/p", "/missing", "/m1", "/empty"] });
    assert.equal(await c.value(), "two");
    assert.equal(await c.value(), "potato");
    assert.equal(await c.value(), "");
    assert.equal(await c.value(), "one");
    assert.equal(await c.value(), "");
    c.send({ type: "getNumKeys" });
    assert.equal(await c.i64(), 4n);
  });

  it("v2: a get parked on a key created by COMPARE_SET is woken", async () => {
    const waiter = await client("v2");
    const c = await client("v2");
    waiter.send({ type: "wait", keys: ["/rdzv"] });
    await untilWaiters(1);
    c.send({ type: "compareSet", key: "/rdzv", expected: b(""), desired: b("state") });
    assert.equal(await c.value(), "state");
    assert.equal(await waiter.u8(), 0);
  });

  it("v2: queues: push, push, len 2, FIFO pops, empty pop, check", async () => {
    const c = await client("v2");
    c.send({ type: "queueLen", key: "/q" });
    assert.equal(await c.i64(), 0n);
    c.send({ type: "check", keys: ["/q"] });
    assert.equal(await c.u8(), 1);
    c.send({ type: "queuePush", key: "/q", value: b("1") });
    c.send({ type: "queuePush", key: "/q", value: b("2") });
    c.send({ type: "queueLen", key: "/q" });
    assert.equal(await c.i64(), 2n);
    c.send({ type: "check", keys: ["/q"] });
    assert.equal(await c.u8(), 0);
    c.send({ type: "queuePop", key: "/q" });
    assert.deepEqual(await c.read(17), hex(`${le64(2)} ${le64(1)} 31`));
    c.send({ type: "queuePop", key: "/q" });
    assert.deepEqual(await c.read(17), hex(`${le64(1)} ${le64(1)} 32`));
    c.send({ type: "queuePop", key: "/q" });
    assert.deepEqual(await c.read(8), Buffer.alloc(8));
    c.send({ type: "getNumKeys" });
    assert.equal(await c.i64(), 0n);
  });

  it("v2: a queue push wakes one waiter at a time", async () => {
    const w1 = await client("v2");
    const w2 = await client("v2");
    const c = await client("v2");
    w1.send({ type: "wait", keys: ["/q"] });
    w2.send({ type: "wait", keys: ["/q"] });
    await untilWaiters(2);
    c.send({ type: "queuePush", key: "/q", value: b("a") });
    // Which of the two registered first depends on socket scheduling; exactly one is woken.
    for (let i = 0; i < 1000 && w1.buffered + w2.buffered === 0; i++) await delay(2);
    const [first, second] = w1.buffered > 0 ? [w1, w2] : [w2, w1];
    assert.equal(await first.u8(), 0);
    await second.silent();
    c.send({ type: "queuePush", key: "/q", value: b("b") });
    assert.equal(await second.u8(), 0);
  });

  it("v2: LIST_KEYS returns raw keys, init/ included", async () => {
    const c = await client("v2");
    c.send({ type: "add", key: "init/", delta: 1n });
    assert.equal(await c.i64(), 1n);
    c.send({ type: "set", key: "/a", value: b("1") });
    c.send({ type: "set", key: "/b\u00ff", value: b("2") });
    c.send({ type: "listKeys" });
    const n = await c.i64();
    const keys: string[] = [];
    for (let i = 0n; i < n; i++) keys.push(await c.value());
    assert.deepEqual(keys.sort(), ["/a", "/b\u00ff", "init/"]);
  });

  it("v2: CHECK reports the extension probe key as present, and only there", async () => {
    const c = await client("v2");
    c.send({ type: "check", keys: [EXTENSION_PROBE_KEY] });
    assert.equal(await c.u8(), 0);
    c.send({ type: "getNumKeys" });
    assert.equal(await c.i64(), 0n);
    c.send({ type: "get", key: EXTENSION_PROBE_KEY });
    assert.equal(await c.value(), "");
  });
});

describe("TCPStoreServer waits, cancels and barriers (§7.2 9-10, 16-17)", () => {
  for (const dialect of ["v1", "v2"] as const) {
    it(`${dialect}: two connections waiting on one key are both woken by one SET`, async () => {
      const w1 = await client(dialect);
      const w2 = await client(dialect);
      const c = await client(dialect);
      w1.send({ type: "wait", keys: ["/k"] });
      w2.send({ type: "wait", keys: ["/k"] });
      await untilWaiters(2);
      c.send({ type: "set", key: "/k", value: b("v") });
      assert.equal(await w1.u8(), 0);
      assert.equal(await w2.u8(), 0);
      assert.equal(server.stats().waiters, 0);
    });

    it(`${dialect}: a wait on two keys is woken only after both exist`, async () => {
      const w = await client(dialect);
      const c = await client(dialect);
      w.send({ type: "wait", keys: ["/a", "/b"] });
      c.send({ type: "set", key: "/a", value: b("1") });
      await w.silent();
      c.send({ type: "add", key: "/b", delta: 1n });
      assert.equal(await c.i64(), 1n);
      assert.equal(await w.u8(), 0);
    });

    it(`${dialect}: a disconnect while waiting leaves the server healthy`, async () => {
      const w = await client(dialect);
      w.send({ type: "wait", keys: ["/gone"] });
      await untilWaiters(1);
      w.close();
      await untilWaiters(0);
      const c = await client(dialect);
      c.send({ type: "set", key: "/gone", value: b("x") });
      c.send({ type: "get", key: "/gone" });
      assert.equal(await c.value(), "x");
    });
  }

  it("v1: a request behind a pending WAIT drops the stale wait (§4.5)", async () => {
    const c = await client("v1");
    const other = await client("v1");
    c.send({ type: "wait", keys: ["/late"] });
    await untilWaiters(1);
    // The client timed out and moved on: no stale 00 may reach it later.
    c.send({ type: "set", key: "/mine", value: b("1") });
    c.send({ type: "get", key: "/mine" });
    assert.equal(await c.value(), "1");
    other.send({ type: "set", key: "/late", value: b("x") });
    await c.silent();
    c.send({ type: "get", key: "/late" });
    assert.equal(await c.value(), "x");
    assert.equal(server.stats().waiters, 0);
  });

  it("v2: CANCEL_WAIT with nothing pending returns 01", async () => {
    const c = await client("v2");
    c.send({ type: "cancelWait" });
    assert.equal(await c.u8(), 1);
  });

  it("v2: CANCEL_WAIT after a pending WAIT returns only 01 and drops the wait", async () => {
    const c = await client("v2");
    const other = await client("v2");
    c.send({ type: "wait", keys: ["/never"] });
    await untilWaiters(1);
    c.send({ type: "cancelWait" });
    assert.equal(await c.u8(), 1);
    assert.equal(server.stats().waiters, 0);
    other.send({ type: "set", key: "/never", value: b("x") });
    await c.silent();
    c.send({ type: "get", key: "/never" });
    assert.equal(await c.value(), "x");
  });

  it("v2: a wait answered just before the cancel gives 00 then 01", async () => {
    const c = await client("v2");
    const other = await client("v2");
    c.send({ type: "wait", keys: ["/soon"] });
    other.send({ type: "set", key: "/soon", value: b("x") });
    assert.equal(await c.u8(), 0);
    c.send({ type: "cancelWait" });
    assert.equal(await c.u8(), 1);
  });

  it("v2: WAIT and CANCEL_WAIT in one segment reply 01 only", async () => {
    const c = await client("v2");
    c.send(
      Buffer.concat([
        encodeRequest("v2", { type: "wait", keys: ["/never"] }),
        encodeRequest("v2", { type: "cancelWait" }),
        encodeRequest("v2", { type: "getNumKeys" }),
      ]),
    );
    assert.equal(await c.u8(), 1);
    assert.equal(await c.i64(), 0n);
  });

  it("v2: requests pipelined behind a pending wait are answered after it, in order", async () => {
    const c = await client("v2");
    const other = await client("v2");
    c.send(
      Buffer.concat([
        encodeRequest("v2", { type: "wait", keys: ["/go"] }),
        encodeRequest("v2", { type: "get", key: "/go" }),
        encodeRequest("v2", { type: "ping", nonce: 7 }),
      ]),
    );
    await c.silent(30);
    other.send({ type: "set", key: "/go", value: b("now") });
    assert.equal(await c.u8(), 0);
    assert.equal(await c.value(), "now");
    assert.equal((await c.read(4)).readUInt32LE(0), 7);
  });

  it("v2: thousands of requests behind a pending wait pause reading, then all reply in order", async () => {
    const c = await client("v2");
    const other = await client("v2");
    const pings = Array.from({ length: 3000 }, (_, i) => encodeRequest("v2", { type: "ping", nonce: i }));
    c.send(Buffer.concat([encodeRequest("v2", { type: "wait", keys: ["/go"] }), ...pings]));
    await c.silent(30);
    assert.ok(server.stats().opsByType.ping! < 3000);
    other.send({ type: "set", key: "/go", value: b("") });
    assert.equal(await c.u8(), 0);
    const replies = await c.read(4 * 3000);
    for (let i = 0; i < 3000; i++) assert.equal(replies.readUInt32LE(4 * i), i);
  });

  it("v2: a CANCEL_WAIT behind queued requests cancels the wait; they still reply in order", async () => {
    const c = await client("v2");
    c.send(
      Buffer.concat([
        encodeRequest("v2", { type: "wait", keys: ["/never"] }),
        encodeRequest("v2", { type: "ping", nonce: 9 }),
        encodeRequest("v2", { type: "cancelWait" }),
      ]),
    );
    assert.equal((await c.read(4)).readUInt32LE(0), 9);
    assert.equal(await c.u8(), 1);
    await c.silent();
  });

  it("v2: a 2-party BARRIER releases both and leaves the counter at 2", async () => {
    const p1 = await client("v2");
    const p2 = await client("v2");
    p1.send({ type: "barrier", key: "/bar", worldSize: 2n });
    await untilWaiters(1);
    p2.send({ type: "barrier", key: "/bar", worldSize: 2n });
    assert.equal(await p2.u8(), 0);
    assert.equal(await p1.u8(), 0);
    p1.send({ type: "get", key: "/bar" });
    assert.equal(await p1.value(), "2");
    p1.send({ type: "barrier", key: "/bar1", worldSize: 1n });
    assert.equal(await p1.u8(), 0);
    assert.equal(server.stats().waiters, 0);
  });

  it("v2: CANCEL_WAIT cancels a parked BARRIER without decrementing", async () => {
    const p1 = await client("v2");
    const p2 = await client("v2");
    p1.send({ type: "barrier", key: "/bar", worldSize: 3n });
    await untilWaiters(1);
    p1.send({ type: "cancelWait" });
    assert.equal(await p1.u8(), 1);
    assert.equal(server.stats().waiters, 0);
    p2.send({ type: "barrier", key: "/bar", worldSize: 2n });
    assert.equal(await p2.u8(), 0);
    await p1.silent();
  });

  it("v2: a WAIT on a barrier key is woken by the first arrival", async () => {
    const w = await client("v2");
    const p = await client("v2");
    w.send({ type: "wait", keys: ["/bar"] });
    p.send({ type: "barrier", key: "/bar", worldSize: 5n });
    assert.equal(await w.u8(), 0);
    await p.silent();
  });
});

describe("TCPStoreServer v1 WATCH_KEY", () => {
  it("registers with 03 and pushes created/updated/deleted notifications", async () => {
    const watcher = await client("v1");
    const c = await client("v1");
    watcher.send({ type: "watchKey", key: "/wk" });
    assert.equal(await watcher.u8(), 3);
    c.send(hex("00 03 00 00 00 00 00 00 00 2F 77 6B 02 00 00 00 00 00 00 00 76 31"));
    assert.deepEqual(
      await watcher.read(1 + 11 + 8 + 10),
      hex("01 03 00 00 00 00 00 00 00 2F 77 6B 00 00 00 00 00 00 00 00 02 00 00 00 00 00 00 00 76 31"),
    );
    c.send({ type: "compareSet", key: "/wk", expected: b("v1"), desired: b("v2") });
    assert.equal(await c.value(), "v2");
    assert.equal(await watcher.u8(), 0);
    assert.equal(await watcher.value(), "/wk");
    assert.equal(await watcher.value(), "v1");
    assert.equal(await watcher.value(), "v2");
    c.send({ type: "compareSet", key: "/wk", expected: b("zz"), desired: b("v3") });
    await c.value();
    c.send({ type: "deleteKey", key: "/wk" });
    assert.equal(await c.i64(), 1n);
    assert.equal(await watcher.u8(), 2);
    assert.equal(await watcher.value(), "/wk");
    assert.equal(await watcher.value(), "v2");
    assert.equal(await watcher.value(), "");
    c.send({ type: "deleteKey", key: "/wk" });
    await c.i64();
    c.send({ type: "add", key: "/other", delta: 1n });
    await c.i64();
    await watcher.silent();
  });

  it("a watcher on the same connection gets the ADD reply before the notification", async () => {
    const c = await client("v1");
    c.send({ type: "watchKey", key: "/n" });
    assert.equal(await c.u8(), 3);
    c.send({ type: "add", key: "/n", delta: 4n });
    assert.equal(await c.i64(), 4n);
    assert.equal(await c.u8(), 1);
    assert.equal(await c.value(), "/n");
    assert.equal(await c.value(), "");
    assert.equal(await c.value(), "4");
  });

  it("watchers are dropped on disconnect", async () => {
    const watcher = await client("v1");
    watcher.send({ type: "watchKey", key: "/wk" });
    await watcher.u8();
    watcher.close();
    await watcher.closed;
    await delay(10);
    const c = await client("v1");
    c.send({ type: "set", key: "/wk", value: b("x") });
    c.send({ type: "getNumKeys" });
    assert.equal(await c.i64(), 1n);
  });
});

describe("TCPStoreServer on-disconnect extension", () => {
  it("sets the registered keys when the connection closes, waking waiters", async () => {
    const node = await client("v2");
    const observer = await client("v2");
    node.send({ type: "onDisconnectSet", key: "/dead/1", value: b("first") });
    assert.equal(await node.u8(), 0);
    node.send({ type: "onDisconnectSet", key: "/dead/1", value: b("replaced") });
    assert.equal(await node.u8(), 0);
    node.send({ type: "onDisconnectSet", key: "/dead/2", value: b("gone") });
    assert.equal(await node.u8(), 0);
    node.send({ type: "onDisconnectSet", key: "/dead/3", value: b("cleared") });
    assert.equal(await node.u8(), 0);
    node.send({ type: "onDisconnectClear", key: "/dead/3" });
    assert.equal(await node.u8(), 0);
    observer.send({ type: "wait", keys: ["/dead/1", "/dead/2"] });
    await untilWaiters(1);
    node.close();
    assert.equal(await observer.u8(), 0);
    observer.send({ type: "multiGet", keys: ["/dead/1", "/dead/2"] });
    assert.equal(await observer.value(), "replaced");
    assert.equal(await observer.value(), "gone");
    observer.send({ type: "check", keys: ["/dead/3"] });
    assert.equal(await observer.u8(), 1);
  });

  it("also fires when the server closes the connection for bad input", async () => {
    const node = await client("v2");
    node.send({ type: "onDisconnectSet", key: "/dead", value: b("1") });
    assert.equal(await node.u8(), 0);
    node.send([0x3f]);
    await node.expectClosed();
    assert.deepEqual(server.engine.get("/dead"), new Uint8Array(b("1")));
  });

  it("is not a v1 command", async () => {
    const c = await client("v1");
    c.send([0x40]);
    await c.expectClosed();
  });
});

describe("TCPStoreServer isolation and limits (§7.2 18)", () => {
  it("a garbage-sending client is closed; another client's keys are intact and it keeps working", async () => {
    const good = await client("v2");
    good.send({ type: "set", key: "/keep", value: b("safe") });
    good.send({ type: "getNumKeys" });
    assert.equal(await good.i64(), 1n);
    const bad = await client("v1");
    bad.send(Buffer.from("GET / HTTP/1.1\r\nHost: x\r\n\r\n"));
    await bad.expectClosed();
    good.send({ type: "get", key: "/keep" });
    assert.equal(await good.value(), "safe");
    good.send({ type: "add", key: "/n", delta: 1n });
    assert.equal(await good.i64(), 1n);
  });

  it("replies produced before the bad message are still delivered", async () => {
    const c = await client("v2");
    c.send(Buffer.concat([encodeRequest("v2", { type: "getNumKeys" }), Buffer.from([0x99])]));
    assert.equal(await c.i64(), 0n);
    await c.expectClosed();
  });

  it("oversized key, value and key count close the connection before the data arrives", async () => {
    await startServer({ maxKeyBytes: 16, maxValueBytes: 32, maxKeysPerRequest: 4 });
    const key = await client("v2");
    key.send(hex(`01 ${le64(17)}`));
    await key.expectClosed();
    const value = await client("v2");
    value.send(hex(`01 ${le64(1)} 41 ${le64(1e12)}`));
    await value.expectClosed();
    const count = await client("v1");
    count.send(hex(`05 ${le64(5)}`));
    await count.expectClosed();
    const huge = await client("v1");
    huge.send(hex("02 FF FF FF FF FF FF FF FF"));
    await huge.expectClosed();
    assert.equal(server.stats().protocolErrors, 4);
    const ok = await client("v2");
    ok.send({ type: "set", key: "k".repeat(16), value: b("v".repeat(32)) });
    ok.send({ type: "wait", keys: ["a", "b", "c", "k".repeat(16)] });
    await ok.silent(20);
    ok.send({ type: "cancelWait" });
    assert.equal(await ok.u8(), 1);
  });

  it("maxWaitersPerConnection bounds the keys of one WAIT", async () => {
    await startServer({ maxWaitersPerConnection: 2 });
    const c = await client("v2");
    c.send({ type: "wait", keys: ["/a", "/b"] });
    await c.silent(10);
    c.send({ type: "cancelWait" });
    assert.equal(await c.u8(), 1);
    c.send({ type: "wait", keys: ["/a", "/b", "/c"] });
    await c.expectClosed();
  });
});
