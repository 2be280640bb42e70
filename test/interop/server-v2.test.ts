/**
 * rdzv's TCP store server driven by real PyTorch 2.x clients (`torch.distributed.TCPStore`, v2 dialect:
 * VALIDATE + PING, CANCEL_WAIT, queues, list_keys, barrier, clone): PyTorch's own store test cases
 * (test/py/suite.py), then cross-language cases with rdzv's TS client.
 */

import assert from "node:assert/strict";
import { after, before, describe, it } from "node:test";
import { setTimeout as delay } from "node:timers/promises";
import { connectTCPStore, type TCPStore } from "../../src/store/tcp/client.js";
import { createTCPStoreServer, type TCPStoreServer } from "../../src/store/tcp/server.js";
import {
  assertApiCovered,
  findTorch2,
  type PyAgent,
  reportSuite,
  runDriver,
  type SuiteResult,
  startAgent,
  td,
} from "../helpers/torch.js";

const HOST = "127.0.0.1";
const EVERY_BYTE = Buffer.from(Array.from({ length: 256 }, (_, i) => i));
const text = (v: unknown): string => Buffer.from(v as Uint8Array).toString();

describe("rdzv server driven by PyTorch 2.x clients (v2)", () => {
  let server: TCPStoreServer;
  /** The suite gets a server of its own, so that its traffic never shows in `server.stats()`. */
  let suiteServer: TCPStoreServer;
  let ts: TCPStore;
  let py: PyAgent;
  let suite: Promise<SuiteResult>;

  before(async () => {
    const torch = await findTorch2();
    [server, suiteServer] = await Promise.all([
      createTCPStoreServer({ host: HOST, port: 0 }),
      createTCPStoreServer({ host: HOST, port: 0 }),
    ]);
    suite = runDriver<SuiteResult>(torch, "suite.py", [HOST, String(suiteServer.port), "suite/"], 120_000);
    suite.catch(() => {});
    [py, ts] = await Promise.all([
      startAgent(torch),
      connectTCPStore({ host: HOST, port: server.port, timeoutMs: 10_000 }),
    ]);
    await py.open("s", HOST, server.port);
  });

  after(async () => {
    await Promise.all([py?.close(), ts?.close()]);
    await Promise.all([server?.close(), suiteServer?.close()]);
  });

  it("handshakes with VALIDATE + PING on one connection per store, and clone() adds one", async () => {
    const before = server.stats();
    await py.open("hs", HOST, server.port, 10, { world_size: 3 });
    const mid = server.stats();
    assert.equal(mid.connections - before.connections, 1, "one connection per 2.x TCPStore");
    assert.equal(mid.dialects.v2 - before.dialects.v2, 1);
    assert.equal((mid.opsByType.ping ?? 0) - (before.opsByType.ping ?? 0), 1, "one PING");
    const init = text(server.engine.get("init/"));
    await py.clone("hs", "hs2");
    const after = server.stats();
    assert.equal(after.connections - mid.connections, 1, "clone() opens one connection");
    assert.equal(text(server.engine.get("init/")), init, "clone() does not add to init/");
    await py.ok("hs2", "set", "hs/clone", "c");
    assert.equal(text(await ts.get("hs/clone")), "c");
  });

  it("reads in Python what the TS client wrote (every 2.x read op)", async () => {
    await ts.set("x/bin", EVERY_BYTE);
    await ts.set("x/utf8", "héllo ✓");
    await ts.set("x/empty", new Uint8Array(0));
    await ts.add("x/counter", 41);
    await ts.append("x/app", "po");
    await ts.append("x/app", "tato");
    await ts.multiSet(["x/m1", "x/m2"], ["one", EVERY_BYTE]);
    await ts.queuePush("x/q", "first");
    await ts.queuePush("x/q", EVERY_BYTE);
    // The writes above have no reply: a PING round trip proves the server applied them all before Python
    // (on another connection) reads them without waiting (check, queue_len, list_keys).
    await ts.ping();
    assert.deepEqual(await py.ok("s", "get", "x/bin"), EVERY_BYTE);
    assert.equal(text(await py.ok("s", "get", "x/utf8")), "héllo ✓");
    assert.deepEqual(await py.ok("s", "get", "x/empty"), Buffer.alloc(0));
    assert.equal(await py.ok("s", "add", "x/counter", 1), 42);
    assert.equal(text(await py.ok("s", "get", "x/app")), "potato");
    assert.deepEqual(await py.ok("s", "multi_get", ["x/m2", "x/m1"]), [EVERY_BYTE, Buffer.from("one")]);
    assert.equal(await py.ok("s", "check", ["x/m1", "x/q"]), true);
    assert.equal(await py.ok("s", "queue_len", "x/q"), 2);
    assert.equal(text(await py.ok("s", "queue_pop", "x/q")), "first");
    assert.deepEqual(await py.ok("s", "queue_pop", "x/q", false), EVERY_BYTE);
    const empty = await py.call("s", "queue_pop", ["x/q"], { block: false });
    assert.ok(!empty.ok && empty.error.type === "QueueEmptyError", JSON.stringify(empty));
    const keys = (await py.ok("s", "list_keys")) as string[];
    for (const k of ["x/bin", "x/utf8", "x/counter", "x/app", "x/m1", "x/m2"]) assert.ok(keys.includes(k), k);
    assert.ok(!keys.includes("init/") && !keys.includes("x/q"), "list_keys hides init/ and queues");
  });

  it("reads in the TS client what Python wrote", async () => {
    await py.ok("s", "set", "y/bin", EVERY_BYTE);
    await py.ok("s", "multi_set", ["y/m1", "y/m2"], ["1", "2"]);
    await py.ok("s", "append", "y/app", "ab");
    await py.ok("s", "queue_push", "y/q", "qv");
    await py.prefix("s", "y/pfx", "ps");
    await py.ok("ps", "set", "inner", "p");
    assert.deepEqual(Buffer.from(await ts.get("y/bin")), EVERY_BYTE);
    assert.deepEqual((await ts.multiGet(["y/m2", "y/m1"])).map(text), ["2", "1"]);
    assert.equal(text(await ts.get("y/app")), "ab");
    assert.equal(await ts.queueLen("y/q"), 1);
    assert.equal(text(await ts.queuePop("y/q")), "qv");
    assert.equal(text(await ts.get("y/pfx/inner")), "p");
    assert.ok((await ts.listKeys()).includes("y/m1"));
    await ts.set("y/pfx/fromts", "t");
    await ts.ping();
    assert.deepEqual(((await py.ok("ps", "list_keys")) as string[]).sort(), ["fromts", "inner"]);
  });

  it("wakes blocked Python get, wait, multi_get, queue_pop and barrier when the TS client acts", async () => {
    const names = ["g", "w", "mg", "qp", "b"];
    await Promise.all(names.map((n) => py.open(n, HOST, server.port)));
    const waiting = server.stats().waiters;
    const calls = [
      py.call("g", "get", ["wake/get"]),
      py.call("w", "wait", [["wake/w"]]),
      py.call("mg", "multi_get", [["wake/m1", "wake/m2"]]),
      py.call("qp", "queue_pop", ["wake/q"]),
      py.call("b", "barrier", ["wake/b", 2]),
    ];
    await delay(400);
    assert.equal(server.stats().waiters - waiting, 5, "all five Python calls are parked");
    await ts.set("wake/get", "g");
    await ts.add("wake/w", 1);
    await ts.multiSet(["wake/m1", "wake/m2"], ["1", "2"]);
    await ts.queuePush("wake/q", "q");
    await ts.barrier("wake/b", 2, { timeoutMs: 5000 });
    const replies = await Promise.all(calls);
    for (const [i, r] of replies.entries()) {
      assert.ok(r.ok, `${names[i]}: ${JSON.stringify(r)}`);
      assert.ok(r.ms >= 350, `${names[i]} returned after ${r.ms} ms, before the TS client acted`);
    }
    const values = replies.map((r) => (r.ok ? r.value : undefined));
    assert.equal(text(values[0]), "g");
    assert.deepEqual((values[2] as Buffer[]).map(text), ["1", "2"]);
    assert.equal(text(values[3]), "q");
  });

  it("wakes blocked TS get, queuePop and barrier when Python acts", async () => {
    const get = ts.get("wake2/get", { timeoutMs: 5000 });
    const pop = ts.queuePop("wake2/q", { timeoutMs: 5000 });
    const barrier = ts.barrier("wake2/b", 2, { timeoutMs: 5000 });
    await delay(200);
    await py.ok("s", "set", "wake2/get", "from python");
    await py.ok("s", "queue_push", "wake2/q", "pushed");
    await py.ok("s", "barrier", "wake2/b", 2);
    assert.equal(text(await get), "from python");
    assert.equal(text(await pop), "pushed");
    await barrier;
  });

  it("cancels a timed-out Python wait and barrier (CANCEL_WAIT) and keeps the client usable", async () => {
    await py.open("cw", HOST, server.port);
    const before = server.stats();
    const wait = await py.call("cw", "wait", [["cw/never"], td(0.2)]);
    assert.ok(!wait.ok && wait.error.type === "DistStoreError", JSON.stringify(wait));
    assert.match(wait.error.message, /wait timeout after 200ms, keys: \/cw\/never/);
    const barrier = await py.call("cw", "barrier", ["cw/b", 2, td(0.2)]);
    assert.ok(!barrier.ok, JSON.stringify(barrier));
    assert.match(barrier.error.message, /barrier timeout after 200ms, key: \/?cw\/b/);
    const now = server.stats();
    assert.equal(now.waiters, before.waiters, "both waits were cancelled on the server");
    assert.equal((now.opsByType.cancelWait ?? 0) - (before.opsByType.cancelWait ?? 0), 2);
    await ts.set("cw/never", "late");
    assert.equal(text(await py.ok("cw", "get", "cw/never")), "late");
    assert.equal(await py.ok("cw", "add", "cw/n", 3), 3);
    await ts.barrier("cw/b", 2, { timeoutMs: 1000 });
    assert.equal(text(await py.ok("cw", "get", "cw/b")), "2", "the timed-out party still counted");
  });

  it("passes PyTorch's own TCPStore cases (2.x API)", async (t) => {
    const result = await suite;
    assert.equal(result.flavor, "v2");
    await reportSuite(t, result);
  });

  it("exercises every public TCPStore method and property of PyTorch 2.x against the server", async () => {
    assertApiCovered(await suite);
  });

  it("counts world_size clients in the init/ counter (spec §1.6)", async () => {
    const { init_adds } = await suite;
    const initOf = (s: TCPStoreServer): number => Number(Buffer.from(s.engine.get("init/") ?? []).toString());
    assert.equal(initOf(suiteServer), init_adds, "one ADD init/ 1 per client built with world_size");
    const before = initOf(server);
    await py.open("ws", HOST, server.port, 10, { world_size: 4 });
    assert.equal(initOf(server), before + 1);
    assert.equal(await py.ok("ws", "num_keys"), server.stats().keys, "num_keys counts init/ too");
  });
});
