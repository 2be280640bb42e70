/**
 * TCPStore client: pipelining, wait connections and CANCEL_WAIT, reconnects, failures, dialects and
 * extensions, against rdzv's server and against scripted servers that answer exactly as a test says.
 * (Every Store method's semantics are in test/store-behaviour.test.ts.)
 */

import assert from "node:assert/strict";
import { once } from "node:events";
import { createServer, type Server, type Socket } from "node:net";
import { after, describe, it } from "node:test";
import fc from "fast-check";
import { ErrorCode, type RendezvousError } from "../../errors.js";
import { connectTCPStore, TCPStore } from "./client.js";
import { RequestWriter } from "./client-encode.js";
import { encodeRequest } from "./encode.js";
import { AUTH_PROBE_KEY, type Dialect, EXTENSION_PROBE_KEY, type Request } from "./protocol.js";
import { RequestDecoder } from "./request-decoder.js";
import { createTCPStoreServer, type TCPStoreServer } from "./server.js";

const text = (bytes: Uint8Array): string => Buffer.from(bytes).toString("utf8");
const sleep = (ms: number): Promise<void> => new Promise((resolve) => setTimeout(resolve, ms));
const HOST = "127.0.0.1";

/** Resolves once `condition()` holds (polled every 5 ms); fails after 5 s. */
async function until(condition: () => boolean, what: string): Promise<void> {
  const deadline = Date.now() + 5000;
  while (!condition()) {
    assert.ok(Date.now() < deadline, `timed out waiting until ${what}`);
    await sleep(5);
  }
}

async function rejectsWithCode(promise: Promise<unknown>, code: string): Promise<RendezvousError> {
  let caught: unknown;
  await assert.rejects(promise, (err: unknown) => {
    caught = err;
    assert.equal((err as { code?: unknown }).code, code, String(err));
    return true;
  });
  return caught as RendezvousError;
}

/** Resources to release after the current describe block. */
const cleanups: (() => Promise<unknown>)[] = [];
after(async () => {
  for (const c of cleanups.reverse()) await c().catch(() => {});
});

async function server(port = 0): Promise<TCPStoreServer> {
  const s = await createTCPStoreServer({ port });
  cleanups.push(() => s.close());
  return s;
}

async function client(
  srv: { port: number },
  options: Partial<ConstructorParameters<typeof TCPStore>[0]> = {},
) {
  const store = await connectTCPStore({ host: HOST, port: srv.port, timeoutMs: 5000, ...options });
  cleanups.push(() => store.close());
  return store;
}

/** A port nothing listens on (just released by a listener). */
async function freePort(): Promise<number> {
  const s = createServer();
  await new Promise<void>((resolve) => s.listen(0, HOST, resolve));
  const { port } = s.address() as { port: number };
  await new Promise<void>((resolve) => s.close(() => resolve()));
  return port;
}

/**
 * A scripted v2 server: VALIDATE is swallowed, PING echoed and the extension probe answered NOT_READY;
 * every other request goes to `answer`, which writes whatever bytes it likes.
 */
async function scriptedServer(answer: (req: Request, socket: Socket) => void) {
  const sockets = new Set<Socket>();
  const requests: Request[] = [];
  const srv: Server = createServer((socket) => {
    sockets.add(socket);
    socket.on("close", () => sockets.delete(socket));
    socket.on("error", () => {});
    const decoder = new RequestDecoder();
    socket.on("data", (chunk) => {
      decoder.push(chunk);
      for (let req = decoder.next(); req !== undefined; req = decoder.next()) {
        requests.push(req);
        if (req.type === "validate") continue;
        if (req.type === "ping") socket.write(Buffer.from(new Uint32Array([req.nonce]).buffer));
        // The handshake's probes: answered "absent", as a PyTorch server does.
        else if (req.type === "check" && [EXTENSION_PROBE_KEY, AUTH_PROBE_KEY].includes(req.keys[0]!)) {
          socket.write(Buffer.from([1]));
        } else answer(req, socket);
      }
    });
  });
  await new Promise<void>((resolve) => srv.listen(0, HOST, resolve));
  const close = async (): Promise<void> => {
    for (const s of sockets) s.destroy();
    await new Promise<void>((resolve) => srv.close(() => resolve()));
  };
  cleanups.push(close);
  return { port: (srv.address() as { port: number }).port, sockets, requests, close };
}

describe("TCPStore pipelining", () => {
  it("resolves 10k concurrent adds correctly on one connection", async () => {
    const srv = await server();
    const store = await client(srv);
    const results = await Promise.all(Array.from({ length: 10_000 }, () => store.add("counter", 1)));
    assert.deepEqual(
      results.sort((a, b) => a - b),
      Array.from({ length: 10_000 }, (_, i) => i + 1),
    );
    assert.equal(srv.stats().connectionsTotal, 1);
  });

  it("keeps mixed pipelined requests and replies in order", async () => {
    const srv = await server();
    const store = await client(srv);
    const ops: Promise<unknown>[] = [];
    for (let i = 0; i < 2000; i++) {
      ops.push(store.set(`k${i}`, `v${i}`));
      ops.push(store.get(`k${i}`).then(text));
      ops.push(store.check([`k${i}`]));
    }
    const out = await Promise.all(ops);
    for (let i = 0; i < 2000; i++) {
      assert.equal(out[3 * i + 1], `v${i}`);
      assert.equal(out[3 * i + 2], true);
    }
  });

  it("reads big replies on several connections at once intact (one read buffer shared by all)", async () => {
    const srv = await server();
    const stores = await Promise.all([client(srv), client(srv), client(srv)]);
    const values = stores.map((_, s) => {
      const v = Buffer.alloc(700_000 + s * 1001);
      for (let i = 0; i < v.length; i++) v[i] = (i * (s + 3) + (i >> 10)) & 0xff;
      return v;
    });
    await Promise.all(stores.map((st, s) => st.set(`big${s}`, values[s]!)));
    // Interleaved reads of each connection's replies, over and over.
    const got = await Promise.all(
      Array.from({ length: 12 }, (_, i) =>
        stores[i % 3]!.get(`big${i % 3}`).then((b) => [i % 3, b] as const),
      ),
    );
    for (const [s, b] of got) assert.ok(Buffer.from(b).equals(values[s]!), `value ${s} arrived corrupted`);
  });

  it("sends user keys with PyTorch's leading '/', UTF-8 encoded", async () => {
    const srv = await server();
    const store = await client(srv);
    await store.set("k", "v");
    await store.set("ключ", "v");
    await store.numKeys();
    assert.equal(text(srv.engine.get("/k")!), "v");
    assert.equal(text(srv.engine.get(Buffer.from("/ключ", "utf8").toString("latin1"))!), "v");
    srv.engine.set("no-slash", new Uint8Array(0));
    assert.deepEqual((await store.listKeys()).sort(), ["k", "ключ"]);
  });
});

describe("TCPStore client encoder", () => {
  const key = fc.string({
    unit: fc.integer({ min: 0, max: 255 }).map((c) => String.fromCharCode(c)),
    maxLength: 20,
  });
  const value = fc.uint8Array({ maxLength: 64 });
  const keys = fc.array(key, { maxLength: 5 });
  const request: fc.Arbitrary<Request> = fc.oneof(
    fc.record({
      type: fc.constantFrom("set", "append", "queuePush", "onDisconnectSet" as const),
      key,
      value,
    }),
    fc.record({ type: fc.constant("compareSet" as const), key, expected: value, desired: value }),
    fc.record({
      type: fc.constantFrom(
        "get",
        "deleteKey",
        "queuePop",
        "queueLen",
        "onDisconnectClear",
        "watchKey" as const,
      ),
      key,
    }),
    fc.record({
      type: fc.constant("add" as const),
      key,
      delta: fc.bigInt({ min: -(2n ** 63n), max: 2n ** 63n - 1n }),
    }),
    fc.record({
      type: fc.constant("barrier" as const),
      key,
      worldSize: fc.bigInt({ min: 1n, max: 2n ** 40n }),
    }),
    fc.record({ type: fc.constantFrom("check", "wait", "multiGet" as const), keys }),
    fc.array(fc.tuple(key, value), { maxLength: 5 }).map((pairs) => ({
      type: "multiSet" as const,
      keys: pairs.map((p) => p[0]),
      values: pairs.map((p) => p[1]),
    })),
    fc.record({ type: fc.constantFrom("getNumKeys", "cancelWait", "listKeys" as const) }),
    fc.record({ type: fc.constant("ping" as const), nonce: fc.nat({ max: 0xffffffff }) }),
  );

  it("accumulates requests back to back, growing from a tiny buffer, and writes nothing for a failed one", () => {
    fc.assert(
      fc.property(
        fc.constantFrom<Dialect>("v1", "v2"),
        fc.array(request, { maxLength: 20 }),
        (dialect, reqs) => {
          // One-shot encodings (`encodeRequest`, checked against golden bytes and the decoder) concatenated
          // must equal one writer's batch: the writer keeps earlier requests intact while it grows.
          const writer = new RequestWriter(1);
          const expected: Buffer[] = [];
          for (const req of reqs) {
            let bytes: Buffer;
            try {
              bytes = encodeRequest(dialect, req);
            } catch (err) {
              assert.throws(() => writer.write(dialect, req), { code: (err as RendezvousError).code });
              continue;
            }
            writer.write(dialect, req);
            expected.push(bytes);
          }
          assert.deepEqual(writer.take(), Buffer.concat(expected));
          assert.equal(writer.length, 0);
        },
      ),
    );
  });

  it("grows past its initial buffer (1 MiB value)", () => {
    const writer = new RequestWriter();
    const big = new Uint8Array(1024 * 1024).fill(7);
    writer.write("v2", { type: "set", key: "/big", value: big });
    writer.write("v2", { type: "getNumKeys" });
    assert.deepEqual(
      writer.take(),
      Buffer.concat([encodeRequest("v2", { type: "set", key: "/big", value: big }), Buffer.from([7])]),
    );
  });
});

describe("TCPStore connecting", () => {
  it("fails with RDZV_CONNECTION naming host:port when nothing listens", async () => {
    const port = await freePort();
    const err = await rejectsWithCode(
      connectTCPStore({ host: HOST, port, connectTimeoutMs: 200 }),
      ErrorCode.Connection,
    );
    assert.match(err.message, new RegExp(`${HOST}:${port}`));
    assert.ok(err.cause !== undefined);
  });

  it("keeps retrying until the server appears", { timeout: 10_000 }, async () => {
    const port = await freePort();
    const connecting = connectTCPStore({ host: HOST, port, timeoutMs: 5000 });
    await sleep(150);
    const srv = await server(port);
    const store = await connecting;
    cleanups.push(() => store.close());
    await store.set("k", "v");
    assert.equal(text(await store.get("k")), "v");
    assert.ok(srv.stats().connectionsTotal >= 1);
  });

  it("validates options eagerly with RDZV_INVALID_ARGUMENT", async () => {
    const bad = [
      { host: "", port: 1 },
      { host: HOST, port: 0 },
      { host: HOST, port: 70_000 },
      { host: HOST, port: 1, timeoutMs: -1 },
      { host: HOST, port: 1, connectTimeoutMs: Number.NaN },
      { host: HOST, port: 1, dialect: "v3" as Dialect },
      { host: HOST, port: 1, worldSize: 0 },
    ];
    for (const options of bad) {
      assert.throws(
        () => new TCPStore(options),
        { code: ErrorCode.InvalidArgument },
        JSON.stringify(options),
      );
    }
    await rejectsWithCode(connectTCPStore({ host: HOST, port: -1 }), ErrorCode.InvalidArgument);
  });

  it("sends ADD init/ 1 once when worldSize is given (not on clone, not with waitForWorkers false)", async () => {
    const srv = await server();
    const a = await client(srv, { worldSize: 2 });
    assert.equal(text(srv.engine.get("init/")!), "1");
    const clone = await a.clone();
    cleanups.push(() => clone.close());
    await client(srv, { worldSize: 2, waitForWorkers: false });
    await client(srv);
    assert.equal(text(srv.engine.get("init/")!), "1");
    await client(srv, { worldSize: 2 });
    assert.equal(text(srv.engine.get("init/")!), "2");
    assert.equal(await a.numKeys(), 1);
  });

  it("clone() opens a new connection to the same data", async () => {
    const srv = await server();
    const store = await client(srv);
    await store.set("shared", "yes");
    const clone = await store.clone();
    cleanups.push(() => clone.close());
    assert.equal(text(await clone.get("shared")), "yes");
    assert.equal(clone.timeoutMs, store.timeoutMs);
    assert.equal(srv.stats().connections, 2);
  });
});

describe("TCPStore connection loss", () => {
  it("rejects a pending wait with RDZV_CONNECTION when the server goes away", {
    timeout: 10_000,
  }, async () => {
    const srv = await server();
    const store = await client(srv, { timeoutMs: 60_000, connectTimeoutMs: 300 });
    const pending = rejectsWithCode(store.get("never"), ErrorCode.Connection);
    const pendingWait = rejectsWithCode(store.wait(["never", "ever"]), ErrorCode.Connection);
    const disconnected = once(store, "disconnect");
    await sleep(30);
    await srv.close();
    await pending;
    await pendingWait;
    const [err] = (await disconnected) as [RendezvousError];
    assert.equal(err.code, ErrorCode.Connection);
    // Nothing comes back: later calls fail within the connect budget.
    await rejectsWithCode(store.add("x", 1), ErrorCode.Connection);
    await rejectsWithCode(store.get("x"), ErrorCode.Connection);
  });

  it("reconnects transparently after the server restarts on the same port", { timeout: 10_000 }, async () => {
    const first = await server();
    const store = await client(first);
    await store.set("before", "1");
    const disconnected = once(store, "disconnect");
    await first.close();
    await disconnected;
    const second = await server(first.port);
    await store.set("after", "2");
    assert.equal(text(await store.get("after")), "2");
    assert.equal(await store.check(["before"]), false);
    assert.equal(second.stats().dialects.v2, 1);
  });

  it("reports add on a non-numeric value as RDZV_STORE naming the key; the connection's other calls carry on", async () => {
    const srv = await server();
    const store = await client(srv);
    const other = await client(srv);
    let disconnects = 0;
    store.on("disconnect", () => disconnects++);
    await store.set("word", "abc");
    await store.setOnDisconnect("gone", "1");
    const waiting = store.get("later");
    const [failed, added, set] = await Promise.allSettled([
      store.add("word", 1),
      store.add("n", 1),
      store.set("x", "y"),
    ]);
    assert.equal(failed.status, "rejected");
    const err = (failed as PromiseRejectedResult).reason as RendezvousError;
    assert.equal(err.code, ErrorCode.Store, String(err));
    assert.equal(err.message, 'add "word": the stored value "abc" is not an integer');
    assert.deepEqual([added.status, set.status], ["fulfilled", "fulfilled"]);
    assert.equal((added as PromiseFulfilledResult<number>).value, 1);
    // The pending get, the on-disconnect key and the connection itself are untouched; the value too.
    await other.set("later", "now");
    assert.equal(text(await waiting), "now");
    assert.equal(await other.check(["gone"]), false);
    assert.equal(text(await other.get("word")), "abc");
    assert.equal(disconnects, 0);
    assert.equal(srv.stats().protocolErrors, 0);
  });

  it("without tagged replies (v1, asyncWaits: false) an add on a non-numeric value closes the connection, then reconnects", async () => {
    const srv = await server();
    for (const [i, options] of [{ dialect: "v1" as const }, { asyncWaits: false }].entries()) {
      const store = await client(srv, options);
      let disconnects = 0;
      store.on("disconnect", () => disconnects++);
      await store.set("word", "abc");
      const err = await rejectsWithCode(store.add("word", 1), ErrorCode.Connection);
      assert.match(
        err.message,
        /closed the connection while a reply to add \/word was pending \(likely because/,
      );
      assert.equal(await store.add(`n${i}`, 1), 1);
      assert.equal(disconnects, 1);
    }
  });

  it("a set resolves once the server handled it: one over the server's limit rejects", async () => {
    const srv = await createTCPStoreServer({ port: 0, limits: { maxValueBytes: 1024 } });
    cleanups.push(() => srv.close());
    for (const dialect of ["v2", "v1"] as const) {
      const store = await client(srv, { dialect });
      // The server refuses the value by closing the connection; SET has no reply of its own, and the
      // set resolved once written (nothing stored, nothing said).
      const err = await rejectsWithCode(
        store.set(`big-${dialect}`, new Uint8Array(4096)),
        ErrorCode.Connection,
      );
      assert.match(err.message, /closed the connection/);
      assert.equal(await store.check([`big-${dialect}`]), false);
      // A set that resolved is in the store for every other client at once.
      await store.set(`small-${dialect}`, "v");
      const other = await client(srv, { dialect });
      assert.equal(await other.check([`small-${dialect}`]), true);
      // Sets still in flight when the store closes resolve as before (they were written).
      const late = store.set(`late-${dialect}`, "x");
      await store.close();
      await late;
    }
  });

  it("drops a main connection whose server stops answering (watchdog), and reconnects", {
    timeout: 10_000,
  }, async () => {
    let answer = false;
    const fake = await scriptedServer((req, socket) => {
      if (req.type === "getNumKeys" && answer) socket.write(Buffer.from([9, 0, 0, 0, 0, 0, 0, 0]));
    });
    const store = await client(fake, { timeoutMs: 200 });
    let disconnects = 0;
    store.on("disconnect", () => disconnects++);
    await rejectsWithCode(store.numKeys(), ErrorCode.Timeout);
    assert.equal(disconnects, 1);
    // A call's own timeout abandons its reply; the watchdog then drops the connection all the same.
    await rejectsWithCode(store.numKeys({ timeoutMs: 50 }), ErrorCode.Timeout);
    await until(() => disconnects === 2, "the watchdog drops the second connection");
    answer = true;
    assert.equal(await store.numKeys(), 9);
  });
});

describe("TCPStore blocking calls", () => {
  it("runs concurrent blocking calls on their own connections and keeps at most 2 idle", async () => {
    const srv = await server();
    const store = await client(srv, { asyncWaits: false });
    const other = await client(srv);
    const gets = Array.from({ length: 5 }, (_, i) => store.get(`b${i}`));
    await until(() => srv.stats().waiters === 5, "5 waits are parked");
    assert.equal(store.waitConnections, 5);
    assert.equal(await store.add("not-blocked", 1), 1);
    await other.multiSet(
      gets.map((_, i) => `b${i}`),
      gets.map((_, i) => `${i}`),
    );
    assert.deepEqual((await Promise.all(gets)).map(text), ["0", "1", "2", "3", "4"]);
    await until(() => store.waitConnections === 2, "3 wait connections are closed");
    await store.set("present", "1");
    await store.get("present");
    assert.equal(store.waitConnections, 2);
  });

  it("v2: a timed-out wait is cancelled with CANCEL_WAIT and its connection reused", async () => {
    const srv = await server();
    const store = await client(srv, { asyncWaits: false });
    await rejectsWithCode(store.get("x", { timeoutMs: 50 }), ErrorCode.Timeout);
    await until(() => srv.stats().waiters === 0, "the wait is cancelled");
    await sleep(50); // the WAIT_CANCELED reply is on its way back
    const pending = store.get("x");
    await until(() => srv.stats().waiters === 1, "the wait is parked");
    await store.set("x", "x");
    assert.equal(text(await pending), "x");
    assert.equal(srv.stats().connectionsTotal, 2);
  });

  it("v2: consumes the STOP_WAITING that crosses a CANCEL_WAIT (reply 00 01)", async () => {
    let waits = 0;
    const fake = await scriptedServer((req, socket) => {
      if (req.type === "check") socket.write(Buffer.from([1]));
      if (req.type === "wait" && ++waits > 1) socket.write(Buffer.from([0]));
      if (req.type === "cancelWait") socket.write(Buffer.from([0, 1]));
      if (req.type === "get") socket.write(Buffer.from([1, 0, 0, 0, 0, 0, 0, 0, 0x7a]));
    });
    const store = await client(fake);
    await rejectsWithCode(store.wait(["k"], { timeoutMs: 30 }), ErrorCode.Timeout);
    await until(() => fake.requests.some((r) => r.type === "cancelWait"), "CANCEL_WAIT arrives");
    await sleep(50); // its reply is on its way back
    assert.equal(text(await store.get("k")), "z");
    assert.equal(fake.requests.filter((r) => r.type === "validate").length, 2);
  });

  it("v2: an aborted barrier is cancelled; barriers release together", async () => {
    const srv = await server();
    const a = await client(srv);
    const b = await client(srv);
    const controller = new AbortController();
    const aborted = a.barrier("bar1", 3, { signal: controller.signal });
    await sleep(20);
    controller.abort();
    await rejectsWithCode(aborted, ErrorCode.Aborted);
    await rejectsWithCode(a.barrier("bar2", 2, { timeoutMs: 30 }), ErrorCode.Timeout);
    await Promise.all([a.barrier("bar3", 2), b.barrier("bar3", 2)]);
    assert.equal(text(await a.get("bar3")), "2");
  });

  it("v1: a timed-out wait closes its connection instead (no desync), and the client goes on", async () => {
    const srv = await server();
    const store = await client(srv, { dialect: "v1" });
    await rejectsWithCode(store.get("x", { timeoutMs: 50 }), ErrorCode.Timeout);
    assert.equal(store.waitConnections, 0);
    await store.set("x", "x");
    assert.equal(text(await store.get("x")), "x");
    const pending = store.get("y");
    await until(() => srv.stats().waiters === 1, "the wait is parked");
    await store.set("y", "y");
    assert.equal(text(await pending), "y");
    await until(() => srv.stats().connections === 2, "the timed-out wait connection is gone");
    assert.equal(srv.stats().connectionsTotal, 3);
  });

  it("close() rejects pending calls with RDZV_RESOURCE_CLOSED, and later calls too", async () => {
    const srv = await server();
    const store = await client(srv);
    const pending = rejectsWithCode(store.get("never"), ErrorCode.ResourceClosed);
    await sleep(20);
    await store.close();
    await pending;
    await rejectsWithCode(store.set("k", "v"), ErrorCode.ResourceClosed);
    await rejectsWithCode(store.clone(), ErrorCode.ResourceClosed);
    assert.equal(store.closed, true);
  });

  it("a signal that already fired rejects any call with RDZV_ABORTED", async () => {
    const srv = await server();
    const store = await client(srv);
    const signal = AbortSignal.abort();
    await rejectsWithCode(store.set("k", "v", { signal }), ErrorCode.Aborted);
    await rejectsWithCode(store.add("k", 1, { signal }), ErrorCode.Aborted);
    await rejectsWithCode(store.barrier("k", 2, { signal }), ErrorCode.Aborted);
    assert.equal(await store.add("k", 1), 1);
  });
});

describe("TCPStore dialects and extensions", () => {
  it("v1 refuses v2-only commands with RDZV_INVALID_ARGUMENT", async () => {
    const srv = await server();
    const store = await client(srv, { dialect: "v1" });
    assert.equal(store.hasExtensions, false);
    for (const call of [
      () => store.append("k", "v"),
      () => store.listKeys(),
      () => store.queuePush("q", "v"),
      () => store.queuePop("q"),
      () => store.queueLen("q"),
      () => store.barrier("b", 1),
      () => store.ping(),
      () => store.setOnDisconnect("k", "v"),
    ]) {
      await rejectsWithCode(call(), ErrorCode.InvalidArgument);
    }
    await store.multiSet(["a", "b"], ["1", "2"]);
    assert.deepEqual((await store.multiGet(["b", "a"])).map(text), ["2", "1"]);
  });

  it("ping() round-trips on v2", async () => {
    const srv = await server();
    const store = await client(srv);
    await store.ping();
  });

  it("on-disconnect keys are set by rdzv's server when the connection closes", async () => {
    const srv = await server();
    const a = await client(srv);
    const b = await client(srv);
    assert.equal(a.hasExtensions, true);
    await a.setOnDisconnect("gone/a", "dead");
    await a.setOnDisconnect("gone/b", "dead");
    await a.clearOnDisconnect("gone/b");
    assert.equal(await b.check(["gone/a"]), false);
    await a.close();
    assert.equal(text(await b.get("gone/a")), "dead");
    assert.equal(await b.check(["gone/b"]), false);
  });

  it("extensions are refused against a server without them", async () => {
    const fake = await scriptedServer(() => {});
    const store = await client(fake);
    assert.equal(store.hasExtensions, false);
    await rejectsWithCode(store.setOnDisconnect("k", "v"), ErrorCode.InvalidArgument);
    await rejectsWithCode(store.clearOnDisconnect("k"), ErrorCode.InvalidArgument);
  });
});
