/**
 * rdzv's TCP store server driven by real PyTorch 1.13 clients (`torch.distributed.TCPStore`, v1 dialect):
 * PyTorch's own store test cases (test/py/suite.py), then cross-language cases with rdzv's TS client.
 */

import assert from "node:assert/strict";
import { after, before, describe, it } from "node:test";
import { setTimeout as delay } from "node:timers/promises";
import { connectTCPStore, type TCPStore } from "../../src/store/tcp/client.js";
import { createTCPStoreServer, type TCPStoreServer } from "../../src/store/tcp/server.js";
import {
  assertApiCovered,
  findTorch1,
  type PyAgent,
  reportSuite,
  runDriver,
  type SuiteResult,
  startAgent,
  td,
} from "../helpers/torch.js";

const HOST = "127.0.0.1";
const EVERY_BYTE = Buffer.from(Array.from({ length: 256 }, (_, i) => i));

/** v1 has no CANCEL_WAIT: a key set by someone else right after a client's wait timed out desyncs it. */
const V1_KNOWN = {
  wait_timeout_then_key_set_elsewhere:
    "inherent to the v1 protocol: no CANCEL_WAIT, the stale reply is on the wire",
};

describe("rdzv server driven by PyTorch 1.13 clients (v1)", () => {
  let server: TCPStoreServer;
  /** The suite gets a server of its own, so that its traffic never shows in `server.stats()`. */
  let suiteServer: TCPStoreServer;
  let ts: TCPStore;
  let py: PyAgent;
  let suite: Promise<SuiteResult>;

  before(async () => {
    const torch = await findTorch1();
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

  it("keeps 1.13's idle callback connection open next to its store connection", async () => {
    // The TS client's connection and both of "s" (whose second one may still be on its way in).
    for (let i = 0; i < 100 && server.stats().connections < 3; i++) await delay(20);
    const before = server.stats();
    assert.equal(before.connections, 3, "the TS client and a 1.13 TCPStore connected");
    await py.open("two", HOST, server.port);
    assert.equal(await py.ok("two", "add", "two/alive", 1), 1);
    await delay(300);
    const now = server.stats();
    assert.equal(now.connections - before.connections, 2, "a 1.13 TCPStore opens 2 connections");
    assert.equal(now.dialects.v1 - before.dialects.v1, 1, "only the store connection has spoken");
    assert.equal(await py.ok("two", "add", "two/alive", 1), 2);
  });

  it("reads in Python what the TS client wrote", async () => {
    await ts.set("x/bin", EVERY_BYTE);
    await ts.set("x/utf8", "héllo ✓");
    await ts.set("x/empty", new Uint8Array(0));
    await ts.add("x/counter", 41);
    await ts.compareSet("x/cas", "", "created");
    assert.deepEqual(await py.ok("s", "get", "x/bin"), EVERY_BYTE);
    assert.deepEqual(await py.ok("s", "get", "x/utf8"), Buffer.from("héllo ✓"));
    assert.deepEqual(await py.ok("s", "get", "x/empty"), Buffer.alloc(0));
    assert.equal(await py.ok("s", "add", "x/counter", 1), 42);
    assert.deepEqual(await py.ok("s", "compare_set", "x/cas", "created", "swapped"), Buffer.from("swapped"));
    assert.equal(await py.ok("s", "delete_key", "x/empty"), true);
    assert.equal(await ts.check(["x/empty"]), false);
  });

  it("reads in the TS client what Python wrote", async () => {
    await py.ok("s", "set", "y/bin", EVERY_BYTE);
    await py.ok("s", "set", "y/ключ", "значение");
    await py.ok("s", "add", "y/counter", -7);
    assert.deepEqual(Buffer.from(await ts.get("y/bin")), EVERY_BYTE);
    assert.equal(Buffer.from(await ts.get("y/ключ")).toString(), "значение");
    assert.equal(await ts.add("y/counter", 0), -7);
    assert.equal(Buffer.from(await ts.compareSet("y/counter", "-7", "8")).toString(), "8");
    assert.deepEqual(await py.ok("s", "get", "y/counter"), Buffer.from("8"));
    assert.equal(await ts.deleteKey("y/bin"), true);
    assert.equal(await py.ok("s", "delete_key", "y/bin"), false);
  });

  it("wakes a blocked 1.13 get and wait when the TS client sets the keys", async () => {
    await py.open("getter", HOST, server.port);
    await py.open("waiter", HOST, server.port);
    const got = py.call("getter", "get", ["wake/get"]);
    const waited = py.call("waiter", "wait", [["wake/w1", "wake/w2"]]);
    await delay(300);
    assert.ok(server.stats().waiters >= 2, "both Python calls are parked on the server");
    await ts.set("wake/get", "from ts");
    await ts.add("wake/w1", 1);
    await delay(100);
    await ts.append("wake/w2", "x");
    const [g, w] = await Promise.all([got, waited]);
    assert.ok(g.ok, JSON.stringify(g));
    assert.deepEqual(g.value, Buffer.from("from ts"));
    assert.ok(g.ms >= 250, `get returned after ${g.ms} ms, before the set`);
    assert.ok(w.ok && w.ms >= 350, `wait returned after ${w.ms} ms, before its second key`);
  });

  it("wakes a blocked TS get when Python sets the key", async () => {
    const pending = ts.get("wake/ts", { timeoutMs: 5000 });
    await delay(200);
    await py.ok("s", "set", "wake/ts", "from python");
    assert.equal(Buffer.from(await pending).toString(), "from python");
  });

  it("keeps a 1.13 client in sync after its wait timed out (stale registration dropped, spec §4.5)", async () => {
    await py.open("late", HOST, server.port);
    const waiters = server.stats().waiters;
    const timedOut = await py.call("late", "wait", [["late/k"], td(0.3)]);
    assert.ok(!timedOut.ok && /Socket Timeout/.test(timedOut.error.message), JSON.stringify(timedOut));
    assert.equal(await py.ok("late", "add", "late/n", 5), 5);
    assert.equal(server.stats().waiters, waiters, "the timed-out wait is no longer registered");
    await ts.set("late/k", "set after the timeout");
    assert.deepEqual(await py.ok("late", "get", "late/k"), Buffer.from("set after the timeout"));
    assert.equal(await py.ok("late", "add", "late/n", 1), 6);
    await py.ok("late", "set_timeout", td(0.2));
    const getTimedOut = await py.call("late", "get", ["late/missing"]);
    assert.ok(!getTimedOut.ok, "get of a missing key times out");
    await py.ok("late", "set_timeout", td(10));
    // The client's next request must reach the server before the key appears: with no CANCEL_WAIT in v1,
    // a key set in between makes the server answer the dead wait (see V1_KNOWN).
    assert.equal(await py.ok("late", "num_keys"), server.stats().keys);
    await ts.set("late/missing", "now here");
    assert.deepEqual(await py.ok("late", "get", "late/missing"), Buffer.from("now here"));
  });

  it("passes PyTorch's own TCPStore cases (1.13 API)", async (t) => {
    const result = await suite;
    assert.equal(result.flavor, "v1");
    await reportSuite(t, result, V1_KNOWN);
  });

  it("exercises every public TCPStore method and property of PyTorch 1.13 against the server", async () => {
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
