/**
 * rdzv's TS client against PyTorch's own master TCPStore servers: 2.x with libuv and with the legacy
 * backend (v2 client), and 1.13 (v1 client). The master process is remote-controlled, so Python reads what
 * the TS client wrote and wakes its blocked calls.
 */

import assert from "node:assert/strict";
import { after, before, describe, it } from "node:test";
import { setTimeout as delay } from "node:timers/promises";
import { ErrorCode } from "../../src/errors.js";
import { connectTCPStore, type TCPStore } from "../../src/store/tcp/client.js";
import { findTorch1, findTorch2, type PyAgent, startTorchServer } from "../helpers/torch.js";

const HOST = "127.0.0.1";
const EVERY_BYTE = Buffer.from(Array.from({ length: 256 }, (_, i) => i));
const text = (v: unknown): string => Buffer.from(v as Uint8Array).toString();
const hasCode = (code: string) => (err: unknown) => (err as { code?: string }).code === code;

type Master = PyAgent & { port: number };

interface Target {
  name: string;
  dialect: "v1" | "v2";
  /** PyTorch's libuv backend: queues, and COMPARE_SET wakes waiters. */
  libuv: boolean;
  master: () => Master;
}

let libuv: Master;
let legacy: Master;
let torch1: Master;

before(async () => {
  const [t1, t2] = await Promise.all([findTorch1(), findTorch2()]);
  [libuv, legacy, torch1] = await Promise.all([
    startTorchServer(t2, { useLibuv: true }),
    startTorchServer(t2, { useLibuv: false }),
    startTorchServer(t1),
  ]);
});

after(async () => {
  await Promise.all([libuv?.close(), legacy?.close(), torch1?.close()]);
});

const TARGETS: Target[] = [
  { name: "PyTorch 2.x libuv server, v2 client", dialect: "v2", libuv: true, master: () => libuv },
  { name: "PyTorch 2.x legacy server, v2 client", dialect: "v2", libuv: false, master: () => legacy },
  { name: "PyTorch 1.13 server, v1 client", dialect: "v1", libuv: false, master: () => torch1 },
];

for (const target of TARGETS) {
  describe(target.name, () => {
    let py: Master;
    let ts: TCPStore;
    const connect = (extra: { worldSize?: number } = {}) =>
      connectTCPStore({ host: HOST, port: py.port, timeoutMs: 5000, dialect: target.dialect, ...extra });

    before(async () => {
      py = target.master();
      ts = await connect();
    });
    after(() => ts?.close());

    it("set/get/add/deleteKey/numKeys round-trip with Python", async () => {
      await ts.set("c/bin", EVERY_BYTE);
      await ts.set("c/utf8", "héllo ✓");
      await ts.set("c/empty", "");
      assert.deepEqual(await py.ok("master", "get", "c/bin"), EVERY_BYTE);
      assert.equal(text(await py.ok("master", "get", "c/utf8")), "héllo ✓");
      assert.deepEqual(await py.ok("master", "get", "c/empty"), Buffer.alloc(0));
      await py.ok("master", "set", "c/py", EVERY_BYTE);
      assert.deepEqual(Buffer.from(await ts.get("c/py")), EVERY_BYTE);
      assert.deepEqual(Buffer.from(await ts.get("c/empty")), Buffer.alloc(0));
      assert.equal(await ts.add("c/n", 5), 5);
      assert.equal(await ts.add("c/n", -7), -2);
      assert.equal(await py.ok("master", "add", "c/n", 0), -2);
      assert.equal(text(await ts.get("c/n")), "-2");
      const keys = await ts.numKeys();
      assert.equal(keys, await py.ok("master", "num_keys"));
      assert.equal(await ts.deleteKey("c/n"), true);
      assert.equal(await ts.deleteKey("c/n"), false);
      assert.equal(await ts.numKeys(), keys - 1);
      assert.equal(await ts.check(["c/bin", "c/py"]), true);
      assert.equal(await ts.check(["c/bin", "c/n"]), false);
    });

    it("compareSet: all four PyTorch cases", async () => {
      assert.equal(text(await ts.compareSet("cs", "wrong_old", "new")), "wrong_old");
      assert.equal(text(await ts.compareSet("cs", "", "first")), "first");
      assert.equal(text(await ts.compareSet("cs", "wrong", "x")), "first");
      assert.equal(text(await ts.compareSet("cs", "first", "second")), "second");
      assert.equal(text(await py.ok("master", "get", "cs")), "second");
    });

    it("multiSet/multiGet (v1: emulated per key)", async () => {
      await ts.multiSet(["m/1", "m/2"], ["one", EVERY_BYTE]);
      assert.deepEqual(
        (await ts.multiGet(["m/2", "m/1"])).map((v) => Buffer.from(v)),
        [EVERY_BYTE, Buffer.from("one")],
      );
      assert.equal(text(await py.ok("master", "get", "m/1")), "one");
    });

    it("a blocked get and wait are woken by a Python set", async () => {
      const got = ts.get("wake/get");
      const waited = ts.wait(["wake/w1", "wake/w2"]);
      await delay(200);
      await py.ok("master", "set", "wake/get", "from python");
      await py.ok("master", "add", "wake/w1", 1);
      await py.ok("master", "set", "wake/w2", "2");
      assert.equal(text(await got), "from python");
      await waited;
    });

    it("a timed-out wait leaves the store usable, even when the key appears afterwards", async () => {
      await assert.rejects(ts.wait(["late/k"], { timeoutMs: 200 }), hasCode(ErrorCode.Timeout));
      await assert.rejects(ts.get("late/k", { timeoutMs: 200 }), hasCode(ErrorCode.Timeout));
      await py.ok("master", "set", "late/k", "late");
      await delay(50);
      assert.equal(text(await ts.get("late/k")), "late");
      assert.equal(await ts.add("late/n", 2), 2);
      await ts.wait(["late/k"], { timeoutMs: 200 });
    });

    it("counts a worldSize client in init/ (spec §1.6)", async () => {
      const before = (await py.ok("master", "num_keys")) as number;
      const withWorld = await connect({ worldSize: 4 });
      try {
        await withWorld.set("ws/k", "v");
        // A SET has no reply: a CHECK on the same connection proves the server applied it before Python's
        // num_keys (on another connection, which the server may serve first) reads the count.
        await withWorld.check(["ws/k"]);
        const after = (await py.ok("master", "num_keys")) as number;
        // The first worldSize client creates init/ (the master was built without world_size).
        assert.equal(after - before, 2, "init/ and ws/k");
        const clone = await withWorld.clone();
        await clone.set("ws/k2", "v");
        await clone.check(["ws/k2"]);
        assert.equal((await py.ok("master", "num_keys")) as number, after + 1, "clone() adds no init/");
        await clone.close();
      } finally {
        await withWorld.close();
      }
    });

    if (target.dialect === "v2") {
      it("append, listKeys, ping, clone, barrier (v2)", async () => {
        await ts.append("v2/app", "po");
        await ts.append("v2/app", "tato");
        assert.equal(text(await py.ok("master", "get", "v2/app")), "potato");
        await ts.ping();
        const keys = await ts.listKeys();
        assert.ok(keys.includes("v2/app") && keys.includes("c/bin"), keys.join(","));
        assert.ok(!keys.includes("init/"));
        assert.equal(ts.hasExtensions, false, "a PyTorch server has no rdzv extensions");
        const clone = await ts.clone();
        try {
          const pending = clone.get("v2/clone");
          await delay(100);
          await ts.set("v2/clone", "c");
          assert.equal(text(await pending), "c");
        } finally {
          await clone.close();
        }
        const pyBarrier = py.call("master", "barrier", ["v2/b", 2]);
        await ts.barrier("v2/b", 2);
        assert.ok((await pyBarrier).ok);
        await assert.rejects(ts.barrier("v2/b2", 2, { timeoutMs: 200 }), hasCode(ErrorCode.Timeout));
        assert.equal(await ts.add("v2/after", 1), 1);
      });
    }

    if (target.libuv) {
      it("queues: push/pop/len, non-blocking empty, blocking pop woken by Python (libuv)", async () => {
        await ts.queuePush("q", "1");
        await ts.queuePush("q", EVERY_BYTE);
        assert.equal(await ts.queueLen("q"), 2);
        assert.equal(text(await py.ok("master", "queue_pop", "q")), "1");
        assert.deepEqual(Buffer.from(await ts.queuePop("q")), EVERY_BYTE);
        await assert.rejects(ts.queuePop("q", { block: false }), hasCode(ErrorCode.QueueEmpty));
        const popped = ts.queuePop("q");
        await delay(200);
        await py.ok("master", "queue_push", "q", "woken");
        assert.equal(text(await popped), "woken");
        await assert.rejects(ts.queuePop("q", { timeoutMs: 200 }), hasCode(ErrorCode.Timeout));
      });

      it("an rdzv client with an auth token cannot use a PyTorch server (connection error naming AUTH)", async () => {
        await assert.rejects(
          connectTCPStore({
            host: HOST,
            port: py.port,
            timeoutMs: 1000,
            authToken: "t",
            connectTimeoutMs: 1000,
          }),
          (err: Error & { code?: string }) => err.code === ErrorCode.Connection && /AUTH/.test(err.message),
        );
        assert.equal(await ts.add("auth/after", 1), 1, "the server kept serving");
      });

      it("a get parked on a key is woken by Python's compare_set (libuv)", async () => {
        const pending = ts.get("cs/wake");
        await delay(200);
        await py.ok("master", "compare_set", "cs/wake", "", "made");
        assert.equal(text(await pending), "made");
      });
    } else if (target.dialect === "v2") {
      it("a queue op on the legacy backend drops the connection; the next call reconnects", async () => {
        await assert.rejects(ts.queueLen("q"), hasCode(ErrorCode.Connection));
        await ts.set("after/queue", "ok");
        assert.equal(text(await ts.get("after/queue")), "ok");
      });
    } else {
      it("v2-only calls reject without touching the wire (v1)", async () => {
        const v2Only = [
          () => ts.append("x", "y"),
          () => ts.listKeys(),
          () => ts.queuePush("q", "v"),
          () => ts.queueLen("q"),
          () => ts.barrier("b", 1),
          () => ts.ping(),
        ];
        for (const call of v2Only) await assert.rejects(call(), hasCode(ErrorCode.InvalidArgument));
        assert.equal(await ts.add("v1/after", 1), 1);
      });

      it("a v2 client cannot talk to a 1.13 server (connection error, not a hang)", async () => {
        await assert.rejects(
          connectTCPStore({ host: HOST, port: py.port, timeoutMs: 1000, connectTimeoutMs: 1000 }),
          hasCode(ErrorCode.Connection),
        );
      });
    }
  });
}
